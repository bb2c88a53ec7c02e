"""
Benchmark prepare.py and the BPE trainer on this machine; prints numbers, asserts nothing.

    TIKTOKEN_CACHE_DIR=../shared/data/tiktoken_cache python bench_prepare.py
    python bench_prepare.py --mb=200 --workers 1 2 --data=../shared/data

1) builds a JSONL corpus of at least --mb MB in a temp folder from the real files in --data
   (Tang poems, tiny shakespeare in blank-line blocks, the instruction data, The Verdict),
   shuffled and repeated; then runs `prepare.py` on it as a user would, once per worker count,
   and reports encode throughput (MB/s, tokens/s) and peak memory of the whole process tree
   (RSS of the largest process, and the sum of PSS over the tree, sampled every 0.1 s);
2) trains the BPE on tiny shakespeare + the Tang poems for vocab 4,096 and 16,384 and reports
   the time and bytes/token, next to Hugging Face `tokenizers` (Rust) when it is installed
   (pip install tokenizers; benchmark only, never a dependency of nanolm).
"""
import argparse
import json
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
import tokenizer  # noqa: E402


def build_corpus(data, path, mb):
    """Documents from the shared files, shuffled and repeated until the file has mb MB."""
    docs = [json.loads(line)['text'] for line in (data / 'tang-poems.jsonl').open(encoding='utf-8')]
    shak = (data / 'tinyshakespeare.txt').read_text(encoding='utf-8')
    docs += [b for b in shak.split('\n\n') if b.strip()]
    for r in json.loads((data / 'instruction-data.json').read_text(encoding='utf-8')):
        docs.append('\n\n'.join(x for x in (r['instruction'], r['input'], r['output']) if x))
    docs += [p for p in (data / 'the-verdict.txt').read_text(encoding='utf-8').split('\n\n') if p.strip()]
    lines = [json.dumps({'text': d}, ensure_ascii=False) + '\n' for d in docs]
    rng, size = random.Random(0), 0
    with open(path, 'w', encoding='utf-8') as f:
        while size < mb * 2**20:
            rng.shuffle(lines)
            for line in lines:
                f.write(line)
            size = f.tell()
    return len(docs), size


def tree_memory(pid):
    """(largest RSS, sum of PSS) in MB over pid and its descendants, from /proc."""
    kids = {}
    for p in os.listdir('/proc'):
        if p.isdigit():
            try:
                ppid = int(open(f'/proc/{p}/stat').read().rsplit(')', 1)[1].split()[1])
                kids.setdefault(ppid, []).append(int(p))
            except (OSError, IndexError, ValueError):
                pass
    todo, rss, pss = [pid], 0, 0
    while todo:
        p = todo.pop()
        todo += kids.get(p, [])
        try:
            text = open(f'/proc/{p}/smaps_rollup').read()
        except OSError:
            continue
        rss = max(rss, int(re.search(r'^Rss:\s+(\d+)', text, re.M).group(1)))
        pss += int(re.search(r'^Pss:\s+(\d+)', text, re.M).group(1))
    return rss / 1024, pss / 1024


def run_prepare(args):
    """Run prepare.py; -> (stdout, seconds, peak largest RSS MB, peak PSS sum MB)."""
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, str(ROOT / 'prepare.py')] + args, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    peak = [0, 0]

    def sample():
        while proc.poll() is None:
            rss, pss = tree_memory(proc.pid)
            peak[0], peak[1] = max(peak[0], rss), max(peak[1], pss)
            time.sleep(0.1)
    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out = proc.communicate()[0]
    th.join()
    if proc.returncode:
        sys.exit(f'prepare.py failed: {out}')
    return out, time.time() - t0, peak[0], peak[1]


def bench_prepare(data, mb, workers, tokenizers_to_try):
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / 'corpus.jsonl'
        t0 = time.time()
        n_docs, size = build_corpus(data, corpus, mb)
        print(f'corpus: {size / 2**20:.0f} MB JSONL ({n_docs:,} distinct documents, shuffled and repeated) '
              f'built in {time.time() - t0:.0f}s')
        for tok in tokenizers_to_try:
            for w in workers:
                out, dt, rss, pss = run_prepare(['bench', '--input', str(corpus), f'--tokenizer={tok}',
                                                 f'--workers={w}', f'--out_dir={tmp}/data'])
                meta = json.loads((Path(tmp) / 'data' / 'bench' / 'meta.json').read_text())
                n_tok = meta['train_tokens'] + meta['val_tokens']
                enc = re.search(r'encoded at ([\d.]+) MB/s, ([\d.]+)M tokens/s', out)
                print(f'  {tok:>6} workers={w}: {n_tok / 1e6:,.1f}M tokens, {meta["bytes_per_token"]:.2f} bytes/token | '
                      f'encode {enc.group(1)} MB/s, {enc.group(2)}M tokens/s | whole run {dt:.0f}s '
                      f'({meta["text_bytes"] / 2**20 / dt:.1f} MB/s) | peak RSS {rss:.0f} MB (largest process), '
                      f'{pss:.0f} MB (PSS, all processes)')
        child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f'  (getrusage: the largest child process peaked at {child:.0f} MB RSS)')


def bench_bpe(data, sizes):
    texts = [(data / 'tinyshakespeare.txt').read_text(encoding='utf-8')]
    texts += [json.loads(line)['text'] for line in (data / 'tang-poems.jsonl').open(encoding='utf-8')]
    nbytes = sum(len(t.encode()) for t in texts)
    print(f'bpe training on tiny shakespeare + Tang poems ({nbytes / 2**20:.2f} MB), bytes/token on the same text:')
    try:
        import tokenizers
        from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
    except ImportError:
        tokenizers = None
    for v in sizes:
        t0 = time.time()
        tok = tokenizer.load(tokenizer.bpe_spec(tokenizer.train_bpe(texts, v)))
        dt = time.time() - t0
        bpt = nbytes / sum(len(tok.encode(t)) for t in texts)
        line = f'  vocab {v:>6,}: nanolm {dt:5.1f}s, {bpt:.3f} bytes/token'
        if tokenizers:
            # the same pre-split pattern, then byte-level BPE: the same job in Rust
            hf = Tokenizer(models.BPE())
            hf.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.Split(Regex(tokenizer.PAT), behavior='isolated'),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
            trainer = trainers.BpeTrainer(vocab_size=v, special_tokens=tokenizer.SPECIALS, show_progress=False,
                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
            t0 = time.time()
            hf.train_from_iterator(texts, trainer)
            hdt = time.time() - t0
            hbpt = nbytes / sum(len(e.ids) for e in hf.encode_batch(texts))
            line += (f' | HF tokenizers {tokenizers.__version__} {hdt:5.1f}s, {hbpt:.3f} bytes/token '
                     f'| nanolm/HF time {dt / hdt:.1f}x')
        print(line)
    if not tokenizers:
        print('  (pip install tokenizers to compare with Hugging Face tokenizers)')


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--data', default=str(ROOT / '..' / 'shared' / 'data'), help='folder with the shared files')
    ap.add_argument('--mb', type=float, default=200)
    ap.add_argument('--workers', type=int, nargs='+', default=[1, 2])
    ap.add_argument('--tokenizers', nargs='+', default=['gpt2'], help='e.g. gpt2 char bpe')
    ap.add_argument('--vocab_sizes', type=int, nargs='+', default=[4096, 16384])
    ap.add_argument('--skip_prepare', action='store_true')
    args = ap.parse_args()
    data = Path(args.data)
    if not (data / 'tang-poems.jsonl').exists():
        sys.exit(f'error: {data} does not hold the shared data files (tang-poems.jsonl, ...); pass --data')
    if 'gpt2' in args.tokenizers and not os.environ.get('TIKTOKEN_CACHE_DIR') and (data / 'tiktoken_cache').exists():
        os.environ['TIKTOKEN_CACHE_DIR'] = str(data / 'tiktoken_cache')  # offline GPT-2 BPE
    print(f'machine: {os.cpu_count()} cores, python {sys.version.split()[0]}')
    if not args.skip_prepare:
        bench_prepare(data, args.mb, args.workers, args.tokenizers)
    bench_bpe(data, args.vocab_sizes)


if __name__ == '__main__':
    main()
