"""
Measure nanolm the way a user runs it, and print numbers (a table, and JSON to compare commits).
No assertions: benchmarks report, tests check.

    python bench.py train config/train_verdict.py --max_iters=300 --target_loss=3.0
    python bench.py sample --out_dir=out-verdict --new_tokens=200
    python bench.py prepare ../shared/data/tinyshakespeare.txt --tokenizer=gpt2

train    runs train.py itself in a temporary out_dir (arguments after `train` go to it unchanged,
         except --target_loss) and reads log.jsonl: median ms/iter and tokens/s over the steps
         after warm-up, MFU against a matmul timed in this process, peak RSS of the run, time
         to the first eval with val loss <= --target_loss (or train loss, if no eval got there).
sample   generation tokens/s from a checkpoint, with and without the KV cache.
prepare  prepare.py's encode rate (MB/s, tokens/s, peak RSS) on the files given, with 1 and 2
         workers, and BPE training time (--bpe_vocab=4096,16384) beside Hugging Face
         `tokenizers` when that is installed.

--json=FILE (any mode) also writes the rows as JSON.
"""
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import common  # one-line errors
from common import die

ROOT = os.path.dirname(os.path.abspath(__file__))


def take(args, key, default, kind=str):
    """Remove --key=value from args; -> its value (or default)."""
    for a in list(args):
        if a.startswith(f'--{key}='):
            args.remove(a)
            return kind(a.split('=', 1)[1])
    return default


def bench_train(args):
    import torch
    from checkpoint import load_checkpoint
    from model import GPT, ModelConfig
    target = take(args, 'target_loss', 3.0, float)
    with tempfile.TemporaryDirectory() as out:
        t0 = time.time()
        p = subprocess.run([sys.executable, os.path.join(ROOT, 'train.py'), *args, f'--out_dir={out}', '--sample_prompt='],
                           cwd=ROOT, capture_output=True, text=True)
        wall = time.time() - t0
        if p.returncode:
            die(f"train.py failed ({p.returncode}): {p.stderr.strip().splitlines()[-1] if p.stderr.strip() else ''}")
        peak_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux: KB
        rows = common.read_log(os.path.join(out, 'log.jsonl'))
        ck = load_checkpoint(os.path.join(out, 'ckpt.pt'))
    cfg = ck['config']
    steps = [r for r in rows if 'dt' in r]
    timed = [r['dt'] for r in steps[min(5, len(steps) // 10):]] or [r['dt'] for r in steps]  # skip warm-up steps
    dt = statistics.median(timed)
    tokens = cfg['batch_size'] * cfg['block_size'] * cfg['gradient_accumulation_steps']
    model = GPT(ModelConfig.from_dict(ck['model_config']))
    peak = common.measure_flops('cpu', torch.float32) if ck['config'].get('device', 'auto') in ('auto', 'cpu') else 0
    elapsed, to_target = 0.0, None
    for r in rows:  # training time (the sum of step times) until the first eval at or below target
        elapsed += r.get('dt', 0.0)
        if to_target is None and r.get('val_loss', float('inf')) <= target:
            to_target = elapsed
    evals = [r for r in rows if 'val_loss' in r]
    return [{'mode': 'train', 'steps': len(steps), 'ms/iter': round(dt * 1000, 2), 'tokens/s': round(tokens / dt),
             'mfu %': round(100 * model.flops_per_token() * tokens / dt / peak, 1) if peak else None,
             'peak RSS MB': round(peak_rss_mb), 'train s': round(sum(r['dt'] for r in steps), 1), 'wall s': round(wall, 1),
             'final val': round(evals[-1]['val_loss'], 4) if evals else None, 'best val': round(min(r['val_loss'] for r in evals), 4) if evals else None,
             f's to val<={target}': round(to_target, 1) if to_target is not None else None}]


def bench_sample(args):
    import torch
    from checkpoint import load_model
    out_dir, new = take(args, 'out_dir', 'out'), take(args, 'new_tokens', 200, int)
    prompt = take(args, 'prompt_tokens', 16, int)
    model, _, _ = load_model(out_dir)
    rows = []
    for use_cache in (True, False):
        x = torch.randint(model.cfg.vocab_size, (1, min(prompt, model.cfg.block_size - 1)))
        t0 = time.perf_counter()
        n = sum(1 for _ in model.stream(x, new, temperature=1.0, use_cache=use_cache, generator=torch.Generator().manual_seed(0)))
        dt = time.perf_counter() - t0
        rows.append({'mode': 'sample', 'kv cache': use_cache, 'prompt': x.size(1), 'new tokens': n, 'tokens/s': round(n / dt, 1)})
    return rows


def _peak_rss_mb():
    """The peak RSS of this process or of any child it waited for (the encoding workers), in MB."""
    peak = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return peak / (2**20 if sys.platform == 'darwin' else 2**10)  # bytes on macOS, KB on Linux


def _prepare_once(conn, paths, tokenizer, workers, out_dir):
    """In a forked child, so that the peak memory is this run's alone: prepare the files, timing
    pass 2 (the encoding) on its own through prepare.pass2's own count of seconds."""
    import prepare
    encode = {}
    pass2 = prepare.pass2

    def timed_pass2(*args):
        counts = pass2(*args)
        encode['seconds'] = counts['seconds']
        return counts
    prepare.pass2 = timed_pass2
    t0 = time.time()
    meta = prepare.prepare('bench', input=list(paths), tokenizer_name=tokenizer, workers=workers,
                           out_dir=out_dir, quiet=True)
    conn.send((meta, encode['seconds'], time.time() - t0, _peak_rss_mb()))


def bench_prepare(paths, tokenizer='gpt2', workers=(1, 2)):
    """prepare.py's speed on the files given, once per worker count: encode rate (MB of text and
    tokens per second of pass 2), the whole run's seconds (both passes) and its peak RSS (the
    largest process: the main one, or a worker)."""
    import multiprocessing as mp
    ctx = mp.get_context('fork')
    rows = []
    for w in workers:
        with tempfile.TemporaryDirectory() as out_dir:
            mine, theirs = ctx.Pipe()
            p = ctx.Process(target=_prepare_once, args=(theirs, paths, tokenizer, w, out_dir))
            p.start()
            theirs.close()
            try:
                meta, enc_s, total_s, rss = mine.recv()
            except EOFError:  # prepare.py stopped: its one-line error is already on stderr
                p.join()
                raise SystemExit(p.exitcode or 1) from None
            p.join()
        n_tok = meta['train_tokens'] + meta['val_tokens']
        rows.append({'mode': 'prepare', 'tokenizer': tokenizer, 'workers': w, 'MB': round(meta['text_bytes'] / 2**20, 1),
                     'MB/s': round(meta['text_bytes'] / 2**20 / enc_s, 1), 'tokens/s': round(n_tok / enc_s),
                     'seconds': round(total_s, 1), 'peak RSS MB': round(rss)})
    return rows


def bench_bpe(paths, vocab_sizes=(4096, 16384)):
    """BPE training time and bytes/token on the files given (read as prepare.py reads them), next
    to Hugging Face `tokenizers` (Rust) doing the same job when it is installed (a benchmark only,
    never a dependency of nanolm)."""
    import prepare
    import tokenizer
    texts = list(prepare.read_texts(paths))
    n_bytes = sum(len(t.encode()) for t in texts)
    try:
        import tokenizers
        from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
    except ImportError:
        tokenizers = None
    rows = []
    for v in vocab_sizes:
        t0 = time.time()
        tok = tokenizer.load(tokenizer.bpe_spec(tokenizer.train_bpe(texts, v)))
        row = {'mode': 'bpe', 'vocab': v, 'MB': round(n_bytes / 2**20, 2), 'seconds': round(time.time() - t0, 1),
               'bytes/token': round(n_bytes / sum(len(tok.encode(t)) for t in texts), 3)}
        if tokenizers:  # the same pre-split pattern, then byte-level BPE
            hf = Tokenizer(models.BPE())
            hf.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.Split(Regex(tokenizer.PAT), behavior='isolated'),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
            trainer = trainers.BpeTrainer(vocab_size=v, special_tokens=tokenizer.SPECIALS, show_progress=False,
                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
            t0 = time.time()
            hf.train_from_iterator(texts, trainer)
            row['HF seconds'] = round(time.time() - t0, 1)
            row['HF bytes/token'] = round(n_bytes / sum(len(e.ids) for e in hf.encode_batch(texts)), 3)
        rows.append(row)
    return rows


def prepare_mode(args):
    tok = take(args, 'tokenizer', 'gpt2')
    vocab_sizes = tuple(int(v) for v in take(args, 'bpe_vocab', '4096').split(','))
    paths = [a for a in args if not a.startswith('--')]
    if not paths:
        die("bench.py prepare needs the corpus files to encode, e.g. python bench.py prepare notes.txt")
    return bench_prepare(paths, tok) + bench_bpe(paths, vocab_sizes)


def show(rows):
    keys = list(dict.fromkeys(k for r in rows for k in r))
    cells = [[str(r.get(k, '')) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    print(' | '.join(k.ljust(w) for k, w in zip(keys, widths)))
    print('-+-'.join('-' * w for w in widths))
    for c in cells:
        print(' | '.join(v.ljust(w) for v, w in zip(c, widths)))


if __name__ == '__main__':
    argv = sys.argv[1:]
    modes = {'train': bench_train, 'sample': bench_sample, 'prepare': prepare_mode}
    if not argv or argv[0] not in modes:
        print(__doc__.strip())
        sys.exit(0 if argv[:1] in (['-h'], ['--help']) else 2)
    json_path = take(argv, 'json', '')
    rows = modes[argv[0]](argv[1:])
    show(rows)
    if json_path:
        with common.atomic_write(json_path) as f:
            json.dump({'rows': rows, 'argv': sys.argv[1:], 'time': time.strftime('%Y-%m-%d %H:%M:%S')}, f, indent=1)
