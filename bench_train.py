"""
Measure training speed the way a user runs it: train.py itself, on a real config.
Prints ms/iter, tokens/s and MFU (medians over the logged steps), peak memory, the wall time,
the final losses and the time to reach a given train loss. Numbers, no assertions.

    python bench_train.py config/train_verdict.py --max_iters=300
    python bench_train.py config/train_verdict.py --max_iters=300 --arch=llama --target_loss=4.0

Arguments after the config go to train.py unchanged, except --target_loss (default 3.0).
Runs in a temporary out_dir; the dataset must be prepared (or preparable) as for train.py.
"""
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time

args = sys.argv[1:]
target = 3.0
for a in list(args):
    if a.startswith('--target_loss='):
        target = float(a.split('=', 1)[1])
        args.remove(a)
if not args:
    sys.exit(__doc__)

with tempfile.TemporaryDirectory() as out:
    cmd = [sys.executable, 'train.py', *args, f'--out_dir={out}', '--log_interval=1', '--sample_prompt=']
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"train.py failed:\n{p.stderr[-2000:]}")
    rows = [json.loads(line) for line in open(os.path.join(out, 'log.jsonl'))]

# one line per step: "iter N: loss ... | 93.4 ms | 1,371 tok/s | mfu 46.2% | ..."; skip the first 10 (warm-up)
steps = re.findall(r'iter (\d+): loss \S+ \| lr \S+ \| ([\d.]+) ms \| ([\d,]+) tok/s \| mfu ([\d.]+)%', p.stdout)[10:]
ms = statistics.median(float(s[1]) for s in steps)
tok_s = statistics.median(float(s[2].replace(',', '')) for s in steps)
mfu = statistics.median(float(s[3]) for s in steps)
peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
header = next(line for line in p.stdout.splitlines() if line.startswith('model:'))
losses = [(r['iter'], r['loss']) for r in rows if 'loss' in r]
evals = [r for r in rows if 'val_loss' in r]
# time to target: the first iter whose 20-step running mean of train loss is below it
hit = next((it for i, (it, _) in enumerate(losses) if i >= 19 and sum(l for _, l in losses[i - 19:i + 1]) / 20 < target), None)

print(' '.join(args))
print(header)
print(f"ms/iter {ms:.1f} | tokens/s {tok_s:,.0f} | MFU {mfu:.1f}% (medians over {len(steps)} steps) | peak RSS {peak_mb:,.0f} MB")
print(f"wall time {wall:.1f} s for {len(losses)} iters (including start-up, evals and checkpoints)")
if evals:
    print(f"final: train loss {evals[-1]['train_loss']:.4f}, val loss {evals[-1]['val_loss']:.4f}; "
          f"best val {min(e['val_loss'] for e in evals):.4f}")
print(f"time to train loss < {target} (20-step mean): " +
      (f"iter {hit}, ~{hit * ms / 1000:.0f} s of steps" if hit is not None else "not reached"))
