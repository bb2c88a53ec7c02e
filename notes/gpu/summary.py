"""The numbers of run_gpu.sh in one table: median step times, and training time (the sum of step
times, evals out; the first, compiling step apart) to nanoGPT's 5,000-iter val loss, 1.4697."""
import json
import re
import statistics
import sys
from pathlib import Path

R = Path(sys.argv[1])
TARGET = 1.4697


def nanogpt(path):
    text = path.read_text() if path.exists() else ''
    dts = [float(m.group(2)) for m in re.finditer(r'^iter (\d+): loss [\d.]+, time ([\d.]+)ms', text, re.M) if int(m.group(1)) >= 10]
    vals = re.findall(r'^step (\d+): train loss ([\d.]+), val loss ([\d.]+)', text, re.M)
    return dts, vals


def nanolm(path):
    if not path.exists():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    steps = [r for r in rows if 'dt' in r]
    med = statistics.median(r['dt'] for r in steps[5:]) * 1000
    elapsed, hit, first = 0.0, None, steps[0]['dt'] if steps else 0
    for r in rows:
        if 'dt' in r and r['iter'] > 0:
            elapsed += r['dt']
        if r.get('val_loss', 9) <= TARGET and hit is None:
            hit = (r['iter'], round(elapsed, 2), round(r['val_loss'], 4))
    vals = [(r['iter'], round(r['val_loss'], 4)) for r in rows if 'val_loss' in r]
    return med, first, hit, vals


for f in ('ng-char.txt', 'ng-char2.txt'):
  dts, vals = nanogpt(R / f)
  if dts:
    med = statistics.median(dts)
    print(f"{f}: nanoGPT char shape: median {med:.2f} ms/iter over {len(dts)} logged iters (min {min(dts):.2f}, max {max(dts):.2f}); "
          f"5,000 iters = {5 * med:.1f} s of steps, a fifth = {med:.2f} s; evals {vals}")
for name in ('nl-before', 'nl-after', 'nl-recipe', 'nl-before2', 'nl-after2', 'nl-graphs2', 'nl-recipe-graphs'):
    r = nanolm(R / f'{name}.jsonl')
    if r:
        med, first, hit, vals = r
        print(f"{name}: median {med:.2f} ms/iter, first (compiling) step {first:.1f} s, to val<={TARGET}: "
              f"{'iter %d after %.2f s of steps (val %.4f)' % hit if hit else 'not reached'}; last evals {vals[-4:]}")
