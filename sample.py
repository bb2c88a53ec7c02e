"""
Generate text from a trained checkpoint, streaming tokens to the terminal as they come:

    python sample.py --out_dir=out-verdict --start="I had always thought"
    python sample.py --out_dir=out-verdict --start=FILE:prompt.txt --num_samples=1 --max_new_tokens=500

Chat with a model fine-tuned by finetune_sft.py, in the template it was trained with (chat_data.py):

    python sample.py --out_dir=out-sft-poems --chat                 # multi-turn, in the terminal
    python sample.py --out_dir=out-sft-poems --chat --start="请以《春夜》为题，写一首诗。"   # one reply
    python sample.py --out_dir=out-sft-poems --chat --system="你是一位唐代诗人。"  # (the fine-tune's own, by default)

The tokenizer travels inside the checkpoint, so no dataset or flag is needed to decode.
"""
import os
import sys

import cli  # first: one-line errors, even during the torch import
from cli import die
import training
from configurator import configure
import torch

import tokenizer
from chat_data import chat_ids, fit_history
from checkpoint import load_model

# ----------------------------------------------------------------------------- settings
out_dir = 'out'           # where train.py wrote ckpt.pt
init_from = ''            # '' = out_dir's checkpoint; 'hf:<folder>' = a Hugging Face model folder
ckpt = 'ckpt.pt'          # ckpt.pt (latest) or best.pt (lowest val loss)
start = '\n'              # the prompt; FILE:path reads it from a file; '' starts from end-of-text
chat = False              # talk in the chat template: multi-turn in the terminal, or one reply to --start
system = None             # --chat: a system prompt, e.g. --system="你是一位唐代诗人。"; default: the one the
                          # fine-tune sampled with (finetune_sft.py's sample_system), as it was trained; '' = none
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

env = training.init_run(device, dtype)
device = env.device
bad = [f"{k}={v!r} (needs {need})" for k, v, ok, need in [
    ('temperature', temperature, temperature >= 0, '>= 0; 0 = greedy'), ('top_p', top_p, 0 < top_p <= 1, '0 < top_p <= 1'),
    ('top_k', top_k, top_k >= 0, '>= 0; 0 = all'), ('max_new_tokens', max_new_tokens, max_new_tokens >= 1, '>= 1'),
    ('num_samples', num_samples, num_samples >= 1, '>= 1')] if not ok]
if bad:
    die(', '.join(bad))

model, tok_spec, ck = load_model(out_dir, ckpt, init_from)
model.to(device)
if tok_spec is None:
    die(f"{out_dir}/{ckpt} has no tokenizer in it (made by something other than train.py?); it cannot be decoded")
tok = tokenizer.load(tok_spec)

if start.startswith('FILE:'):
    path = start[5:]
    if not os.path.isfile(path):
        die(f"prompt file {path} not found")
    try:
        with open(path, encoding='utf-8') as f:
            start = f.read()
    except UnicodeDecodeError as e:
        die(f"prompt file {path} is not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8")
gen = torch.Generator(device).manual_seed(seed)


text_decoder = tokenizer.text_decoder  # (in tokenizer.py: serve.py decodes its streams the same way)


def write_reply(ids, max_new, stop):
    """Stream what follows ids to stdout as it comes, up to a stop token or max_new tokens.
    -> (the new ids, without the stop token; whether a stop token ended them)."""
    x = torch.tensor([ids], dtype=torch.long, device=device)
    new, stopped, feed = [], False, text_decoder(tok)
    with torch.no_grad(), env.autocast:
        for t in model.stream(x, max_new, temperature=temperature, top_k=top_k or None, top_p=top_p,
                              stop_tokens=stop, generator=gen):
            if t.item() in stop:
                stopped = True
                break
            new.append(t.item())
            sys.stdout.write(feed(new[-1]))  # '' while a character is still cut between tokens
            sys.stdout.flush()
    sys.stdout.write(feed())  # a character cut off by the end shows as U+FFFD, as in tok.decode(new)
    sys.stdout.flush()
    return new, stopped


if chat:
    try:
        _, im_end = chat_ids(tok)
    except ValueError as e:
        die(f"{init_from or os.path.join(out_dir, ckpt)} cannot chat: {e}; fine-tune it first (python finetune_sft.py ...)")
    if system is None:
        system = (ck.get('config') or {}).get('sample_system') or ''
        if system:
            print(f"(system prompt, as in fine-tuning: {system} -- --system='' for none)", file=sys.stderr)
    system = str(system)
    block = model.cfg.block_size
    room = min(max_new_tokens, block // 2)  # tokens kept free for the reply: older turns are dropped to make them
    history = [{'role': 'system', 'content': system}] if system else []

    def answer(text):
        """One user turn: stream the reply, keep both in the history; the oldest turns drop out first."""
        messages = history + [{'role': 'user', 'content': text}]
        ids, dropped = fit_history(tok, messages, block - room)
        if len(ids) >= block:
            print(f"(that message takes {len(ids)} tokens in the template, the context is {block}: shorten it)", file=sys.stderr)
            return
        if dropped:
            print(f"(the {dropped} oldest messages no longer fit in the {block}-token context: left out)", file=sys.stderr)
        new, stopped = write_reply(ids, min(max_new_tokens, block - len(ids)), {im_end, tok.eot})
        print()
        if not stopped:
            print("(cut: no <|im_end|> within max_new_tokens or the context)", file=sys.stderr)
        history[:] = messages + [{'role': 'assistant', 'content': tok.decode(new)}]

    if start != '\n':  # one-shot, for scripts: each sample answers --start afresh
        for n in range(num_samples):
            answer(start)
            history[:] = history[:1] if system else []
            if n < num_samples - 1:
                print('-' * 40)
        sys.exit(0)
    try:
        import readline  # noqa: F401 (line editing and history in input(), where Python has it)
    except ImportError:
        pass
    print(f"chatting with {init_from or os.path.join(out_dir, ckpt)}; /reset forgets the conversation, "
          f"/exit or Ctrl-D ends it", file=sys.stderr)
    while True:
        try:
            text = input('> ')
        except EOFError:
            print()
            break
        if text.strip() in ('/exit', '/quit'):
            break
        if text.strip() == '/reset':
            history[:] = history[:1] if system else []
        elif text.strip():
            answer(text)
    sys.exit(0)

ids = tok.encode(start) if start else []
if tok.bos is not None:  # a tokenizer that begins every text with BOS (Llama 2, Llama 3): so the model was trained
    ids = [tok.bos] + ids
if not ids:
    ids = [tok.eot]
if len(ids) > model.cfg.block_size:
    die(f"the prompt is {len(ids)} tokens but the model's context is {model.cfg.block_size}; shorten it")
if len(ids) + max_new_tokens > model.cfg.block_size:
    print(f"(note: past {model.cfg.block_size} tokens the model sees only the last {model.cfg.block_size}; "
          f"generation then recomputes the window each step)", file=sys.stderr)

for n in range(num_samples):
    sys.stdout.write(start)
    write_reply(ids, max_new_tokens, {tok.eot})
    sys.stdout.write('\n' + ('-' * 40 + '\n' if n < num_samples - 1 else ''))
    sys.stdout.flush()
