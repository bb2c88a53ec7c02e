"""
Generate text from a trained checkpoint, streaming tokens to the terminal as they come:

    python sample.py --out_dir=out-verdict --start="I had always thought"
    python sample.py --out_dir=out-verdict --start=FILE:prompt.txt --num_samples=1 --max_new_tokens=500

The tokenizer travels inside the checkpoint, so no dataset or flag is needed to decode.
"""
import os
import sys
from contextlib import nullcontext

from configurator import configure, die, resolve_device  # first: one-line errors, even during the torch import
import torch

import tokenizer
from model import GPT, ModelConfig, load_checkpoint

# ----------------------------------------------------------------------------- settings
out_dir = 'out'           # where train.py wrote ckpt.pt
ckpt = 'ckpt.pt'          # ckpt.pt (latest) or best.pt (lowest val loss)
start = '\n'              # the prompt; FILE:path reads it from a file; '' starts from end-of-text
num_samples = 3
max_new_tokens = 200
temperature = 0.8         # 0 = greedy; below 1 sharper, above 1 more random
top_k = 200               # sample only among the k likeliest tokens; 0 = all
top_p = 1.0               # nucleus sampling: the smallest set with this much probability; 1.0 = off
seed = 1337
device = 'auto'           # 'auto' = cuda > mps > cpu
dtype = 'auto'            # 'auto' = bfloat16 on GPUs that have it, float16 on older ones, float32 elsewhere
configure(globals())
# -----------------------------------------------------------------------------

device, device_type, dtype = resolve_device(device, dtype)
bad = [f"{k}={v!r} (needs {need})" for k, v, ok, need in [
    ('temperature', temperature, temperature >= 0, '>= 0; 0 = greedy'), ('top_p', top_p, 0 < top_p <= 1, '0 < top_p <= 1'),
    ('top_k', top_k, top_k >= 0, '>= 0; 0 = all'), ('max_new_tokens', max_new_tokens, max_new_tokens >= 1, '>= 1'),
    ('num_samples', num_samples, num_samples >= 1, '>= 1')] if not ok]
if bad:
    die(', '.join(bad))

ck = load_checkpoint(os.path.join(out_dir, ckpt))
model = GPT(ModelConfig.from_dict(ck['model_config']))
model.load_state_dict(ck['model'])
model.eval().to(device)
if 'tokenizer' not in ck:
    die(f"{out_dir}/{ckpt} has no tokenizer in it (made by something other than train.py?); it cannot be decoded")
tok = tokenizer.load(ck['tokenizer'])
del ck

if start.startswith('FILE:'):
    path = start[5:]
    if not os.path.isfile(path):
        die(f"prompt file {path} not found")
    try:
        with open(path, encoding='utf-8') as f:
            start = f.read()
    except UnicodeDecodeError as e:
        die(f"prompt file {path} is not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8")
ids = tok.encode(start) if start else [tok.eot]
if not ids:
    ids = [tok.eot]
if len(ids) > model.cfg.block_size:
    die(f"the prompt is {len(ids)} tokens but the model's context is {model.cfg.block_size}; shorten it")
if len(ids) + max_new_tokens > model.cfg.block_size:
    print(f"(note: past {model.cfg.block_size} tokens the model sees only the last {model.cfg.block_size}; "
          f"generation then recomputes the window each step)", file=sys.stderr)

autocast = nullcontext() if dtype == 'float32' else torch.autocast(device_type=device_type, dtype=getattr(torch, dtype))
gen = torch.Generator(device).manual_seed(seed)
for n in range(num_samples):
    x = torch.tensor([ids], dtype=torch.long, device=device)
    new, shown = [], ''
    sys.stdout.write(start)
    with torch.no_grad(), autocast:
        for t in model.stream(x, max_new_tokens, temperature=temperature, top_k=top_k or None, top_p=top_p,
                              stop_tokens={tok.eot}, generator=gen):
            if t.item() == tok.eot:
                break
            new.append(t.item())
            # A token can end in the middle of a UTF-8 character: print only text that is complete.
            text = tok.decode(new)
            if not text.endswith('\ufffd'):
                sys.stdout.write(text[len(shown):])
                sys.stdout.flush()
                shown = text
    sys.stdout.write(tok.decode(new)[len(shown):] + '\n' + ('-' * 40 + '\n' if n < num_samples - 1 else ''))
    sys.stdout.flush()
