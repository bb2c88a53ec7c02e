"""
Measure a model: perplexity and bits per byte on a text, accuracy on multiple-choice questions.
Loads what sample.py loads (a run's checkpoint, or a Hugging Face folder):

    python eval.py --out_dir=out-verdict --text=data/verdict.txt
    python eval.py --init_from=hf:gpt2-folder --text=wiki.txt,notes.jsonl --stride=512
    python eval.py --out_dir=out --tasks=hellaswag_val.jsonl,arc_easy.jsonl --json=results.json
    python eval.py --out_dir=out --tasks=mmlu_test.jsonl --dev=mmlu_dev.jsonl --shots=5
    python eval.py --out_dir=out --lm_eval=hellaswag        # any lm-evaluation-harness task (pip install lm-eval)

Text: each file is one stream of tokens, read in windows of block_size tokens that start every
`stride` tokens; each window scores only the tokens the last one did not (scoring.text_windows).
Questions: scored as lm-evaluation-harness scores them, acc and acc_norm (scoring.score_questions).
The numbers are computed in scoring.py; this file reads settings, loads, and prints.
"""
import json as jsonlib  # 'json' is the setting
import os
import sys
import time

import cli  # first: one-line errors, even during the torch import
from cli import die
import training
from configurator import configure
import torch

import scoring
import tokenizer
from checkpoint import load_model

# ----------------------------------------------------------------------------- settings
out_dir = 'out'           # where train.py wrote ckpt.pt
init_from = ''            # '' = out_dir's checkpoint; 'hf:<folder>' = a Hugging Face model folder
ckpt = 'ckpt.pt'          # ckpt.pt (latest) or best.pt (lowest val loss)
text = ''                 # text files to score (.txt, or .jsonl with a "text" field), comma-separated
stride = 0                # text: a window starts every `stride` tokens; 0 = half the window
block_size = 0            # text and questions: the window, in tokens; 0 = the model's context
bos = True                # text: begin with the prefix token (BOS, else end-of-text), its first token scored too; False = as HF's guide (not scored)
tasks = ''                # question files (.jsonl), comma-separated
dev = ''                  # --shots: the examples come from this .jsonl ('' = the question file, without the question asked)
shots = 0                 # examples shown before each question
fewshot = 'first'         # 'first' = the first `shots` of dev (as lm-eval's MMLU/C-Eval/CMMLU); 'random' = drawn, seeded
seed = 1234               # fewshot='random': question i draws with random.Random(seed + i)
limit = 0                 # questions per file: the first `limit`; 0 = all
lm_eval = ''              # lm-evaluation-harness task names, comma-separated (pip install lm-eval)
lm_eval_args = ''         # more for lm-eval: e.g. 'num_fewshot=5,limit=100'
batch_size = 8            # windows / choices scored at once
json = ''                 # also write the numbers to this .json file
device = 'auto'           # 'auto' = cuda > mps > cpu
dtype = 'auto'            # 'auto' = bfloat16 on GPUs that have it, float16 on older ones, float32 elsewhere
configure(globals())
# -----------------------------------------------------------------------------
json_path = json

bad = [f"{k}={v!r} (needs {need})" for k, v, ok, need in [
    ('stride', stride, stride >= 0, '>= 0; 0 = half the window'), ('block_size', block_size, block_size >= 0, '>= 0'),
    ('shots', shots, shots >= 0, '>= 0'), ('limit', limit, limit >= 0, '>= 0; 0 = all'),
    ('batch_size', batch_size, batch_size >= 1, '>= 1'), ('fewshot', fewshot, fewshot in ('first', 'random'), "'first' or 'random'")]
    if not ok]
if bad:
    die(', '.join(bad))
if not (text or tasks or lm_eval):
    die("nothing to measure: give --text=FILE (perplexity, bits per byte), --tasks=FILE.jsonl (questions) "
        "or --lm_eval=TASKS")
if dev and not shots:
    die("--dev gives few-shot examples: set --shots=K too (or drop --dev)")
if json_path and os.path.isdir(json_path):
    die(f"--json={json_path} is a folder; give a file name")

# Read every input before the model loads: a bad line stops us in a second, not after the load.
texts, question_sets, dev_set = {}, {}, None
try:
    for path in [p.strip() for p in text.split(',') if p.strip()]:
        texts[path] = scoring.read_text(path)
    for path in [p.strip() for p in tasks.split(',') if p.strip()]:
        question_sets[path] = scoring.read_questions(path, limit)
    if dev:
        dev_set = scoring.read_questions(dev)
except (ValueError, OSError) as e:
    die(str(e))

if lm_eval:
    import harness  # needs lm-eval: one line saying so when it is missing, before the model loads

env = training.init_run(device, dtype)
device = env.device
model, tok_spec, ck = load_model(out_dir, ckpt, init_from)
model.to(device)
if tok_spec is None:
    die(f"{out_dir}/{ckpt} has no tokenizer in it (made by something other than train.py?); it cannot read text")
tok = tokenizer.load(tok_spec)
window = block_size or model.cfg.block_size
if window > model.cfg.block_size:
    die(f"block_size={window} but the model's context is {model.cfg.block_size}; use a smaller one (or 0)")
step = stride or max(1, window // 2)
if step > window:
    die(f"stride={step} is longer than the window ({window} tokens): tokens between windows would not be scored")
source = init_from or os.path.join(out_dir, ckpt)
n_params = sum(p.numel() for p in model.parameters())
print(f"model: {source} ({n_params / 1e6:.2f}M parameters, context {model.cfg.block_size}, "
      f"tokenizer {tok_spec.get('name', tok_spec['kind'])}), {device}, {env.dtype}")


def show(what):
    """A progress callback: 'what: done/total, tokens/s'."""
    t0 = time.time()
    return lambda done, total: cli.progress(lambda: f"{what}: {done}/{total} ({(time.time() - t0):.0f} s)")


results = {'model': source, 'params': n_params, 'tokenizer': tok_spec.get('name', tok_spec['kind']),
           'settings': {k: globals()[k] for k in ('block_size', 'stride', 'bos', 'shots', 'fewshot', 'seed', 'dev',
                                                  'limit', 'batch_size')} | {'window': window, 'step': step,
                                                                             'device': device, 'dtype': env.dtype},
           'text': {}, 'tasks': {}}

# Encode first and check every text fits one window: still nothing scored, nothing written.
encoded = {}
for path, t in texts.items():
    try:
        ids = ([scoring.prefix_id(tok, tok_spec)] if bos else []) + tok.encode(t)
    except ValueError as e:  # a char vocabulary without a character of this text
        die(f"{path}: {e}")
    if len(ids) < window:
        die(f"{path} is {len(ids)} tokens, shorter than one window ({window}); give a longer text or a smaller --block_size")
    encoded[path] = ids

for path, ids in encoded.items():
    t0 = time.time()
    windows = scoring.text_windows(len(ids), window, step)
    nats, scored = scoring.score_text(model, ids, windows, batch_size, device, env.autocast, show(path))
    cli.end_progress()
    n_bytes, read, dt = len(texts[path].encode('utf-8')), sum(e - b - 1 for b, e, _ in windows), time.time() - t0
    # tokens_per_s: tokens the model read per second (with stride < window it reads some twice)
    results['text'][path] = {'tokens': len(ids), 'scored': scored, 'bytes': n_bytes, **scoring.text_numbers(nats, scored, n_bytes),
                             'read': read, 'seconds': round(dt, 3), 'tokens_per_s': round(read / dt, 1)}

examples = {}
for path, questions in question_sets.items():
    try:
        examples[path] = scoring.fewshot_examples(questions, dev_set, shots, fewshot, seed) if shots else None
    except ValueError as e:
        die(f"{path}: {e}")
for path, questions in question_sets.items():
    t0 = time.time()
    try:
        r = scoring.score_questions(model, tok, tok_spec, questions, examples[path], window, batch_size, device,
                                    env.autocast, show(path))
    except ValueError as e:
        die(f"{path}: {e}")
    cli.end_progress()
    r['tokens_per_s'] = round(r['tokens'] / (time.time() - t0), 1)
    r.pop('lls')
    results['tasks'][path] = r

if lm_eval:
    results['lm_eval'] = harness.run_tasks(model, tok, tok_spec, lm_eval, lm_eval_args, window, batch_size, device, env.autocast)

# ----------------------------------------------------------------------------- the table
if results['text']:
    print(f"\n{'text':<32} {'tokens':>9} {'scored':>9} {'bytes':>10} {'loss':>8} {'ppl':>10} {'bpb':>7} {'tok/s':>8}")
    for path, r in results['text'].items():
        print(f"{path[-32:]:<32} {r['tokens']:>9} {r['scored']:>9} {r['bytes']:>10} {r['loss']:>8.4f} {r['ppl']:>10.3f} "
              f"{r['bpb']:>7.4f} {r['tokens_per_s']:>8.0f}")
    print(f"(windows of {window} tokens every {step}; {'a prefix token first' if bos else 'no prefix token'})")
if results['tasks']:
    print(f"\n{'questions':<32} {'n':>6} {'shots':>5} {'acc':>7} {'±':>6} {'acc_norm':>8} {'±':>6} {'tok/s':>8}")
    for path, r in results['tasks'].items():
        print(f"{path[-32:]:<32} {r['n']:>6} {shots:>5} {r['acc']:>7.4f} {r['acc_stderr']:>6.4f} {r['acc_norm']:>8.4f} "
              f"{r['acc_norm_stderr']:>6.4f} {r['tokens_per_s']:>8.0f}")
if results.get('lm_eval'):
    print("\nlm-evaluation-harness")
    for name, r in results['lm_eval'].items():
        print(f"{name:<32} " + ', '.join(f"{k} {v:.4f}" for k, v in r.items() if isinstance(v, float)))

if json_path:
    with cli.atomic_write(json_path) as f:
        jsonlib.dump(results, f, indent=2, ensure_ascii=False)
    print(f"\nwrote {json_path}", file=sys.stderr)
