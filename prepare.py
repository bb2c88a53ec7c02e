"""
Turn text into token files for training: data/<name>/train.bin, val.bin and meta.json.

    python prepare.py shakespeare_char          # known datasets: verdict, shakespeare, shakespeare_char
    python prepare.py mytext --input notes.txt  # any local text file (gpt2 tokens by default)
    python prepare.py poems --input 'poems/**/*.jsonl.gz' --tokenizer=bpe --vocab_size=8192
    python prepare.py more --input more.jsonl --tokenizer=data/poems   # reuse the bpe trained above

Inputs: files or globs. .txt is one document per file (--split_blocks: one per block of lines
separated by a blank line); .jsonl is one document per line, taken from --text_field; .gz of
either is read directly. Documents are joined with the tokenizer's end-of-text token. The
validation split takes whole documents (--val_fraction or --val_docs, chosen at random with
--seed); a corpus of a single document gives its last --val_fraction of tokens instead.

Tokenizers: gpt2, cl100k_base, o200k_base (tiktoken), char, bpe (trained here on the corpus,
see tokenizer.py) or the path of a bpe trained before. train.bin / val.bin are flat arrays of
token ids without a header (uint16, or uint32 for vocabularies over 65,535); meta.json
records the tokenizer, so train.py and sample.py need no tokenizer flag:
    np.memmap('data/poems/train.bin', dtype=meta['dtype'], mode='r')

Memory stays bounded: input is streamed twice (count, then encode) in pieces of about 1 MB,
encoded by --workers processes, and appended to temp files that are renamed into place only
when everything succeeded (meta.json last), so an interrupted run leaves no dataset that
looks complete. Bad input stops with one line (--debug or NANOLM_DEBUG=1: full traceback).
"""
import argparse
import codecs
import contextlib
import glob
import gzip
import hashlib
import json
import os
import random
import shlex
import signal
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

# Before numpy and tiktoken: importing configurator installs the one-line error hook, so a
# Ctrl-C during those slow imports prints "interrupted", not a traceback.
try:
    from configurator import die as _die
except ImportError:  # used on its own, outside the repo
    def _die(msg, code=1):
        print(f'error: {msg}', file=sys.stderr, flush=True)
        sys.exit(code)

import numpy as np

import tokenizer


def die(msg, code=1):
    end_progress()  # the error gets a line of its own
    _die(msg, code)


_progress = [0.0, False]  # time of the last progress line on stderr, whether one is showing


def progress_due():
    """True at most every 0.5 s: time to rewrite the progress line (with \\r, no newline)."""
    if time.time() - _progress[0] < 0.5:
        return False
    _progress[:] = time.time(), True
    return True


def end_progress():
    if _progress[1]:
        print('\r' + ' ' * 100 + '\r', end='', file=sys.stderr, flush=True)
        _progress[1] = False

# Datasets that need no --input: downloaded once into data/<name>/ and checked by sha256.
KNOWN = {
    'verdict': dict(
        url='https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch02/01_main-chapter-code/the-verdict.txt',
        sha256='b41e41a68f0398a3154ae69e2e4c0e2694e17fe0d66730536837f1b01935b31f',
        file='the-verdict.txt', tokenizer='gpt2'),
    'shakespeare': dict(
        url='https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt',
        sha256='86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed',
        file='input.txt', tokenizer='gpt2'),
}
KNOWN['shakespeare_char'] = dict(KNOWN['shakespeare'], tokenizer='char')

TIKTOKEN_NAMES = ('gpt2', 'cl100k_base', 'o200k_base')
PIECE = 1 << 20  # characters: long documents are read and encoded in pieces of about this size
BATCH = 1 << 20  # characters of text sent to a worker at a time
DEFAULT_VOCAB = 8192  # --tokenizer=bpe
BPE_TRAIN_MB = 32  # the bpe trains on at most this much text, sampled evenly from the corpus
MIN_VAL_TOKENS = 16  # fewer than this makes a useless validation split
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}

# Undecodable bytes become U+FFFD; this error handler counts them on the way.
_bad_bytes = [0]


def _count_and_replace(err):
    _bad_bytes[0] += err.end - err.start
    return '\ufffd', err.end


codecs.register_error('nanolm_count', _count_and_replace)


# ----------------------------------------------------------------------------- inputs

def expand_inputs(patterns):
    """Files, globs ('corpus/**/*.txt') and folders (all files inside) -> sorted list of paths."""
    paths = []
    for pat in patterns:
        if any(c in pat for c in '*?['):
            hits = sorted(p for p in glob.glob(pat, recursive=True) if os.path.isfile(p))
            if not hits:
                die(f"no files match {pat!r} (quote the glob so the shell leaves it to prepare.py)")
            paths += hits
        elif os.path.isdir(pat):
            hits = sorted(str(p) for p in Path(pat).rglob('*') if p.is_file() and not p.name.startswith('.'))
            if not hits:
                die(f'folder {pat} holds no files')
            paths += hits
        elif os.path.isfile(pat):
            paths.append(pat)
        else:
            die(f'input file {pat} not found')
    paths = list(dict.fromkeys(paths))  # drop repeats, keep the order
    for p in paths:  # else a JSON array would be read as one plain-text document, brackets and all
        if p.endswith(('.json', '.json.gz')):
            to = shlex.quote(Path(p).name[:Path(p).name.rindex('.json')] + '.jsonl')  # here, not beside it
            die(f'{p}: prepare.py reads .txt and .jsonl (one JSON object per line), not .json; convert a JSON '
                f'array with: python -c "import gzip,json,sys; p=sys.argv[1]; [print(json.dumps(o)) for o in '
                f"json.load((gzip.open if p.endswith('.gz') else open)(p, 'rb'))]\" {shlex.quote(p)} > {to}")
    return paths


def read_units(paths, split_blocks=False, stats=None):
    """Yield (item, end, where) for each document in the inputs, in order. For .txt, item is
    text: a long document comes in pieces of about PIECE characters cut at line ends, end=True
    on its last piece. For .jsonl, item is the raw bytes of one line, left for parse_line to
    decode in a worker process (JSON parsing costs as much as reading). where = (path, line).
    stats (a Counter) collects bytes read and undecodable bytes in .txt files."""
    stats = Counter() if stats is None else stats
    for path in paths:
        bad_before = _bad_bytes[0]
        with (gzip.open(path, 'rb') if path.endswith('.gz') else open(path, 'rb')) as f:
            try:
                if path.endswith(('.jsonl', '.jsonl.gz')):
                    for lineno, raw in enumerate(f, 1):
                        stats['bytes'] += len(raw)
                        if lineno == 1:
                            raw = raw.removeprefix(codecs.BOM_UTF8)  # some Windows editors start files with one
                        if raw.strip():
                            yield raw, True, (path, lineno)
                else:
                    for text, end in _txt_docs(f, path, split_blocks, stats):
                        yield text, end, (path, 0)
            except (OSError, EOFError) as e:  # e.g. a truncated or corrupt .gz
                die(f'cannot read {path}: {e}')
        if _bad_bytes[0] > bad_before:
            stats['bad_bytes'] += _bad_bytes[0] - bad_before
            stats.setdefault('bad_bytes_file', path)


def _txt_docs(f, path, split_blocks, stats):
    # incremental: copes with characters cut between reads; utf-8-sig: drops a BOM at the start
    decode = codecs.getincrementaldecoder('utf-8-sig')('nanolm_count').decode
    buf, size, started = [], 0, False
    n_bytes = n_bad = 0  # a few bad bytes are replaced and reported; many mean it is not text

    def not_text(why):
        die(f'{path} does not look like text ({why}); leave it out of --input, or convert it to UTF-8')
    for raw in iter(lambda: f.readline(PIECE), b''):  # bounded even for a file with no newline
        if b'\0' in raw:
            not_text('it holds NUL bytes: a binary file, or UTF-16?')
        stats['bytes'] += len(raw)
        n_bytes += len(raw)
        bad_before = _bad_bytes[0]  # counted around decode alone: a .jsonl batch may be encoded
        line = decode(raw)          # in this process between our yields
        n_bad += _bad_bytes[0] - bad_before
        if split_blocks and not line.strip():  # a blank line ends a block
            if buf or started:
                yield ''.join(buf), True
            buf, size, started = [], 0, False
            continue
        buf.append(line)
        size += len(line)
        if size >= PIECE and line.endswith('\n'):
            yield ''.join(buf), False
            buf, size, started = [], 0, True
    buf.append(decode(b'', final=True))
    if n_bad > n_bytes / 10:
        not_text(f'{n_bad:,} of its {n_bytes:,} bytes are not UTF-8')
    if any(buf) or started:
        yield ''.join(buf), True


def parse_line(raw, text_field):
    """One .jsonl line -> (text, None), or (None, what is wrong with it)."""
    try:
        obj = json.loads(raw.decode('utf-8', 'nanolm_count'))
    except ValueError as e:
        return None, f'not valid JSON ({e.msg} at column {e.colno})'
    if isinstance(obj, dict) and text_field in obj and not isinstance(obj[text_field], str):
        return None, f'field {text_field!r} is {json.dumps(obj[text_field])[:30]}, not a string'
    if not isinstance(obj, dict) or not isinstance(obj.get(text_field), str):
        fields = ', '.join(list(obj)[:8]) if isinstance(obj, dict) else type(obj).__name__
        return None, f'no text field {text_field!r} (it has: {fields}); choose one with --text_field'
    return obj[text_field], None


def bad_line(where, problem, skip_bad_lines, stats):
    msg = f'{where[0]}:{where[1]}: {problem}'
    if not skip_bad_lines:
        die(f'{msg}; or pass --skip_bad_lines to skip such lines')
    stats['bad_lines'] += 1
    stats.setdefault('bad_line_example', msg)


def read_texts(paths, text_field='text', split_blocks=False, skip_bad_lines=False, stats=None):
    """(text, end) for each document piece, JSONL parsed here (to count chars, train a bpe)."""
    stats = Counter() if stats is None else stats
    for item, end, where in read_units(paths, split_blocks, stats):
        if isinstance(item, bytes):
            item, problem = parse_line(item, text_field)
            if problem:
                bad_line(where, problem, skip_bad_lines, stats)
                continue
        yield item, end


def doc_texts(paths, text_field='text', split_blocks=False, skip_bad_lines=False, stats=None):
    """Just the texts (for training a tokenizer)."""
    return (t for t, _ in read_texts(paths, text_field, split_blocks, skip_bad_lines, stats))


def report_bad(stats):
    if stats.get('bad_lines'):
        print(f"note: skipped {stats['bad_lines']:,} bad lines (first: {stats['bad_line_example']})")
    if stats.get('bad_bytes'):
        print(f"note: replaced {stats['bad_bytes']:,} undecodable bytes (not UTF-8) with U+FFFD "
              f"(first in {stats['bad_bytes_file']})")


# ----------------------------------------------------------------------------- known datasets

def fetch(name, out_dir='data'):
    """The raw file of a known dataset: data/<name>/<file>, downloaded if it is not there yet."""
    k = KNOWN[name]
    dest = Path(out_dir) / name / k['file']
    if dest.exists():
        return str(dest)  # as nanoGPT: a file already in place is used as it is
    local = f'python prepare.py {name} --input PATH' + ('' if Path(out_dir) == Path('data') else
                                                        f' --out_dir {shlex.quote(str(out_dir))}')
    print(f"downloading {k['url']} -> {dest}")
    try:
        with urllib.request.urlopen(k['url'], timeout=30) as r:
            data = r.read()
    except Exception as e:  # no network, proxy, HTTP error ...
        die(f"could not download {k['url']} ({getattr(e, 'reason', e)}). Get that file and put it at "
            f"{dest}, or pass a local copy: {local}")
    got = hashlib.sha256(data).hexdigest()
    if got != k['sha256']:
        die(f"{k['url']} gave a file with sha256 {got}, expected {k['sha256']}; nothing saved. "
            f"Put the right file at {dest}, or pass a local copy: {local}")
    dest.parent.mkdir(parents=True, exist_ok=True)  # only now: a failed download leaves no empty folder
    tmp = dest.with_name(dest.name + '.tmp')
    tmp.write_bytes(data)
    os.replace(tmp, dest)
    return str(dest)


# ----------------------------------------------------------------------------- encoding (workers)

def _worker(conn, main_end, spec):
    """An encoding process: batches in, token arrays out, over its own pipe. Nothing is shared
    with the other workers (multiprocessing.Pool shares a queue lock and a result pipe: a worker
    killed at the wrong moment left the main process waiting on them forever), so the main
    process can kill us at any time and carry on."""
    for s in _STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)  # Ctrl-C, SIGTERM: the main process's job (it kills us)
    if hasattr(signal, 'pthread_sigmask'):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # blocked by start_workers
    main_end.close()  # (fork) so that recv sees EOF if the main process dies
    try:
        tok = tokenizer.load(spec)
        for job in iter(conn.recv, None):
            try:
                out = _encode_batch(*job, tok=tok)
            except Exception as e:  # re-raised in the main process
                out = e
            conn.send(out)
    except (EOFError, OSError):
        pass  # the main process is gone


@contextlib.contextmanager
def _stop_signals_blocked():
    """Hold Ctrl-C and SIGTERM back (they are delivered when the block ends). No-op on Windows."""
    if not hasattr(signal, 'pthread_sigmask'):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def start_workers(n, spec):
    """-> (processes, connections). Stop signals are blocked while forking, so that a Ctrl-C
    cannot reach a worker before it ignores it; the main process gets it once unblocked."""
    import multiprocessing as mp
    procs, conns = [], []
    with _stop_signals_blocked():
        for _ in range(n):
            mine, theirs = mp.Pipe()
            p = mp.Process(target=_worker, args=(theirs, mine, spec), daemon=True)
            conns.append(mine)
            procs.append(p)
            p.start()
            theirs.close()
    return procs, conns


def _result(conn):
    try:
        r = conn.recv()
    except EOFError:
        raise RuntimeError('an encoding process died (out of memory? try fewer --workers)') from None
    if isinstance(r, BaseException):
        raise r
    return r


def stop_workers(procs):
    for p in procs:
        p.kill()  # they ignore SIGINT and SIGTERM; nothing they hold can block us
    for p in procs:
        p.join(5)


def _encode_batch(batch, dtype, add_eot, text_field, tok):
    """batch: list of (item, end, is_val, where) from read_units -> a dict with the train and
    val token ids, the utf-8 bytes encoded, documents per split and bad lines / bytes."""
    train, val = [], []
    r = Counter()
    bad_before = _bad_bytes[0]
    for item, end, is_val, where in batch:
        if isinstance(item, bytes):  # a raw .jsonl line
            item, problem = parse_line(item, text_field)
            if problem:
                r['bad_lines'] += 1
                r.setdefault('bad_line', (where, problem))
                continue
            if not item:
                continue  # an empty document
        ids = tok.encode(item)
        if end and add_eot:
            ids.append(tok.eot)
        (val if is_val else train).extend(ids)
        r['bytes'] += len(item.encode('utf-8', 'surrogatepass'))
        r['val_docs' if is_val else 'train_docs'] += end
    if _bad_bytes[0] > bad_before:
        r['bad_bytes'] = _bad_bytes[0] - bad_before
        r['bad_bytes_file'] = next(w[0] for _, _, _, w in batch)
    return np.array(train, dtype=dtype), np.array(val, dtype=dtype), r


# ----------------------------------------------------------------------------- the pipeline

def resolve_tokenizer(name, vocab_size):
    """--tokenizer value -> (kind, spec or None). bpe and char specs are made in the count pass."""
    if vocab_size is not None and name != 'bpe':  # a silent 50,257-token gpt2 dataset otherwise
        die(f'--vocab_size is for --tokenizer=bpe; the {name} tokenizer has its own vocabulary')
    if name in TIKTOKEN_NAMES:
        spec = {'kind': 'tiktoken', 'name': name}
        try:
            tokenizer.load(spec)  # here, not in each worker: one clear line when offline
        except ValueError as e:
            die(str(e))
        return 'tiktoken', spec
    if name == 'char':
        return 'char', None
    if name == 'bpe':
        vocab_size = DEFAULT_VOCAB if vocab_size is None else vocab_size
        if vocab_size < 256 + len(tokenizer.SPECIALS):
            die(f'--vocab_size={vocab_size} is too small: a byte-level bpe needs at least '
                f'256 + {len(tokenizer.SPECIALS)} (all bytes + the special tokens {", ".join(tokenizer.SPECIALS)})')
        return 'bpe', None
    if os.path.exists(name):
        try:
            return 'saved', tokenizer.read_spec(name)
        except (OSError, ValueError) as e:
            die(str(e))
    if os.sep in name or '/' in name or name.startswith('.'):
        die(f'tokenizer {name} not found: pass the folder of a bpe trained before (it holds tokenizer.json), '
            f"or one of {', '.join(TIKTOKEN_NAMES)}, char, bpe")
    die(f"unknown tokenizer {name!r}: use one of {', '.join(TIKTOKEN_NAMES)}, char, bpe, "
        f"or the folder of a bpe trained before (it holds tokenizer.json)")


def prepare(name, input=None, tokenizer_name=None, vocab_size=None, text_field='text', split_blocks=False,
            val_fraction=0.1, val_docs=None, seed=1337, workers=None, skip_bad_lines=False,
            out_dir='data', bpe_train_mb=BPE_TRAIN_MB, quiet=False):
    """Prepare data/<name>/ (see the top of this file). Returns the meta dict."""
    t_start = time.time()
    say = (lambda *a, **k: None) if quiet else print
    if not name or os.sep in name or name in ('.', '..'):
        die(f'dataset name {name!r} must be a plain folder name such as mydata')
    if not 0 < val_fraction < 1:
        die(f'--val_fraction={val_fraction} must be between 0 and 1')
    if val_docs is not None and val_docs < 1:
        die(f'--val_docs={val_docs} must be at least 1')
    if workers is not None and workers < 0:
        die(f'--workers={workers}: give the number of encoding processes (1 or more), or leave it out '
            f'to use all cores for inputs over 8 MB')
    if not bpe_train_mb > 0:
        die(f'--bpe_train_mb={bpe_train_mb:g} must be more than 0 (the MB of text the bpe trains on)')
    if input:
        paths = expand_inputs(input)
    elif name in KNOWN:
        paths = [fetch(name, out_dir)]
    else:
        die(f"unknown dataset {name!r} and no --input: pass your text with --input FILE_OR_GLOB, "
            f"or use one of {', '.join(KNOWN)}")
    tokenizer_name = tokenizer_name or KNOWN.get(name, {}).get('tokenizer', 'gpt2')
    kind, spec = resolve_tokenizer(tokenizer_name, vocab_size)
    vocab_size = DEFAULT_VOCAB if vocab_size is None else vocab_size
    ds = Path(out_dir) / name

    # pass 1: count documents and bytes; collect characters (char) or train the bpe
    stats, chars = Counter(), set()
    total_disk = sum(os.path.getsize(p) * (4 if p.endswith('.gz') else 1) for p in paths)  # rough
    keep = min(1.0, bpe_train_mb * 2**20 / max(1, total_disk))  # share of pieces the bpe sees
    rng = random.Random(seed)
    n_docs = 0

    def scan():
        nonlocal n_docs
        used = 0
        for item, end, where in read_units(paths, split_blocks, stats):
            n_docs += end
            if not quiet and progress_due():
                print(f"\rcounting: {stats['bytes'] / 2**20:,.0f} MB, {n_docs:,} documents", end='',
                      file=sys.stderr, flush=True)
            if kind == 'bpe' and not (used < bpe_train_mb * 2**20 and rng.random() < keep):
                continue
            if kind in ('char', 'bpe'):  # these need the text itself now
                if isinstance(item, bytes):
                    item, problem = parse_line(item, text_field)
                    if problem:
                        bad_line(where, problem, skip_bad_lines, Counter())
                        continue
                if kind == 'char':
                    chars.update(item)
                else:
                    used += len(item)
                    yield item

    _progress[:] = time.time(), False
    if kind == 'bpe':
        t0 = time.time()
        ranks = tokenizer.train_bpe(scan(), vocab_size)
        spec = tokenizer.bpe_spec(ranks, name=f'nanolm-bpe-{name}')
        t_bpe = time.time() - t0
    else:
        for _ in scan():
            pass
    end_progress()
    if kind == 'char':
        spec = {'kind': 'char', 'chars': ''.join(sorted(chars))}
    if n_docs == 0:
        die(f'no text in the input ({len(paths)} file(s), {stats["bytes"]:,} bytes)')
    tok = tokenizer.load(spec)
    if kind == 'bpe':
        say(f'trained a {tok.n_vocab:,}-token bpe in {t_bpe:.1f}s' + ('' if tok.n_vocab == vocab_size else
            f' (not {vocab_size:,}: the text ran out of pairs to merge)'))
    dtype = np.uint16 if tok.n_vocab <= 65535 else np.uint32

    # which documents go to val: selection sampling picks exactly n_val of n_docs, uniformly
    # at random, deciding document by document as they stream past
    one_doc = n_docs == 1
    if one_doc:
        n_val = 0  # the tail of the tokens instead, below
    else:
        n_val = val_docs if val_docs is not None else max(1, round(n_docs * val_fraction))
        if n_val >= n_docs:
            die(f'asked for {n_val:,} validation documents but the corpus has only {n_docs:,}; '
                f'lower --val_docs / --val_fraction or add data')
    workers = workers or (os.cpu_count() if stats['bytes'] > 8 * 2**20 else 1)

    # pass 2: encode into temp files in the dataset folder
    made_dirs = [p for p in (ds, *ds.parents) if not p.exists()]  # removed again on failure
    tmp = {s: ds / f'.{s}.bin.tmp' for s in ('train', 'val')}
    try:
        ds.mkdir(parents=True, exist_ok=True)
        files = {s: open(p, 'wb') for s, p in tmp.items()}
    except OSError as e:
        die(f'cannot write the dataset to {ds}/: {e.strerror or e}')
    counts, bad = Counter(), Counter()  # tokens, bytes, documents; bad lines and bytes
    procs = []  # encoding processes
    committed = False
    try:
        rng = random.Random(seed)
        need, left = n_val, n_docs

        def batches():
            nonlocal need, left
            batch, size, is_val = [], 0, None
            for item, end, where in read_units(paths, split_blocks, bad):
                if is_val is None:  # a new document starts
                    is_val = left > 0 and rng.random() * left < need
                    need -= is_val
                    left -= 1
                batch.append((item, end, is_val, where))
                size += len(item)
                if end:
                    is_val = None
                if size >= BATCH:
                    yield batch
                    batch, size = [], 0
            if batch:
                yield batch

        def write(result):
            tr, va, r = result
            if r['bad_lines']:
                bad_line(*r['bad_line'], skip_bad_lines, bad)
                bad['bad_lines'] += r['bad_lines'] - 1
            if r['bad_bytes']:
                bad['bad_bytes'] += r['bad_bytes']
                bad.setdefault('bad_bytes_file', r['bad_bytes_file'])
            tr.tofile(files['train'])
            va.tofile(files['val'])
            counts.update(train=len(tr), val=len(va), bytes=r['bytes'], train_docs=r['train_docs'],
                          val_docs=r['val_docs'])
            if not quiet and progress_due():
                dt = time.time() - t_enc
                done = bad['bytes'] / max(1, stats['bytes'])  # raw input bytes read so far
                eta = dt / max(done, 1e-9) * (1 - done)
                print(f"\rencoding: {bad['bytes'] / 2**20:,.0f}/{stats['bytes'] / 2**20:,.0f} MB "
                      f"{100 * done:.0f}% | {counts['bytes'] / 2**20 / dt:.1f} MB/s | "
                      f"{(counts['train'] + counts['val']) / 1e6:,.2f}M tokens | ETA {eta:.0f}s  ",
                      end='', file=sys.stderr, flush=True)

        t_enc = time.time()
        add_eot = not one_doc
        if workers <= 1:
            for batch in batches():
                write(_encode_batch(batch, dtype, add_eot, text_field, tok))
        else:
            # round robin, one batch in flight per worker: batch t goes to worker t % workers
            # once its previous result is written, so the output keeps the input's order, memory
            # stays bounded, and a worker is always reading when the main process sends to it
            procs, conns = start_workers(workers, spec)
            t = -1
            for t, batch in enumerate(batches()):
                if t >= workers:
                    write(_result(conns[t % workers]))
                conns[t % workers].send((batch, dtype, add_eot, text_field))
            for t in range(max(0, t + 1 - workers), t + 1):
                write(_result(conns[t % workers]))
            for c in conns:
                c.send(None)
            for p in procs:
                p.join()
        for f in files.values():
            f.close()
        t_enc = time.time() - t_enc
        end_progress()

        if one_doc:  # move the last val_fraction of the tokens from train to val
            n_val_tok = int(counts['train'] * val_fraction)
            if n_val_tok < MIN_VAL_TOKENS or counts['train'] - n_val_tok < MIN_VAL_TOKENS:
                die(f"corpus too small for a validation split: one document of {counts['train']:,} tokens "
                    f"(val would get {n_val_tok}); add text or raise --val_fraction")
            _move_tail(tmp['train'], tmp['val'], counts['train'] - n_val_tok, np.dtype(dtype).itemsize)
            counts['train'] -= n_val_tok
            counts['val'] = n_val_tok
        elif counts['train_docs'] + counts['val_docs'] == 0:
            die(f'no text in the input: all {n_docs:,} lines were bad or empty')
        elif counts['val'] < MIN_VAL_TOKENS:
            die(f"corpus too small for a validation split: the {n_val} validation document(s) hold "
                f"{counts['val']} tokens; add text or raise --val_docs / --val_fraction")

        # commit, with Ctrl-C / SIGTERM held back until it is done: the old dataset (if any)
        # goes, the new one comes, meta.json last (a crash midway leaves no meta.json)
        with _stop_signals_blocked():
            meta_path = ds / 'meta.json'
            if meta_path.exists():
                meta_path.unlink()
                if spec['kind'] != 'bpe':  # the old dataset's bpe would pass for this one's
                    for f in ('tokenizer.json', 'tokenizer.tiktoken'):
                        (ds / f).unlink(missing_ok=True)
            stored = tokenizer.save_bpe(spec, ds) if spec['kind'] == 'bpe' else spec
            os.replace(tmp['train'], ds / 'train.bin')
            os.replace(tmp['val'], ds / 'val.bin')
            n_tok = counts['train'] + counts['val']
            meta = {
                'vocab_size': tok.n_vocab, 'dtype': np.dtype(dtype).name,
                'train_tokens': counts['train'], 'val_tokens': counts['val'], 'tokenizer': stored,
                'eot': tok.eot, 'documents': counts['train_docs'] + counts['val_docs'],
                'train_documents': counts['train_docs'], 'val_documents': counts['val_docs'],
                'split': (f'the last {val_fraction:g} of its tokens' if one_doc
                          else f'{n_val} random documents (seed {seed})'),
                'text_bytes': counts['bytes'], 'bytes_per_token': round(counts['bytes'] / max(1, n_tok), 4),
                'bad_lines': bad['bad_lines'], 'bad_bytes': bad['bad_bytes'],
                'sources': paths[:20] + ([f'... and {len(paths) - 20} more'] if len(paths) > 20 else []),
            }
            tokenizer.write_atomic(meta_path, json.dumps(meta, indent=1))
            committed = True
        # (a Ctrl-C held back during the commit arrives here: after a complete dataset)
    except BaseException as e:
        stop_workers(procs)
        for f in files.values():
            f.close()
        for p in (*tmp.values(), ds / 'meta.json.tmp'):
            if p.exists():
                p.unlink()
        for d in made_dirs:  # deepest first
            if d.exists() and not any(d.iterdir()):
                d.rmdir()
        if isinstance(e, KeyboardInterrupt) and committed:
            raise KeyboardInterrupt(f'{ds}/ was already complete') from None
        raise

    if not quiet:
        report_bad(bad)
        dt = time.time() - t_start
        docs = (f"one document, val = {meta['split']}" if one_doc else
                f"{meta['documents']:,} documents ({counts['train_docs']:,} train / {counts['val_docs']:,} val)")
        print(f"{ds}/: {docs}, {counts['bytes'] / 2**20:,.2f} MB of text\n"
              f"  train.bin {counts['train']:,} tokens, val.bin {counts['val']:,} tokens "
              f"({meta['dtype']}, vocab {tok.n_vocab:,}, tokenizer {tokenizer_name})\n"
              f"  {meta['bytes_per_token']:.2f} bytes/token; encoded at {counts['bytes'] / 2**20 / max(t_enc, 1e-9):.1f} MB/s, "
              f"{n_tok / max(t_enc, 1e-9) / 1e6:.2f}M tokens/s with {workers} worker(s); {dt:.1f}s in all")
    return meta


def _move_tail(src, dst, start, itemsize, chunk=1 << 24):
    """Copy tokens [start:] of file src to file dst, then cut them off src (bounded memory)."""
    with open(src, 'r+b') as f, open(dst, 'wb') as g:
        f.seek(start * itemsize)
        while True:
            b = f.read(chunk)
            if not b:
                break
            g.write(b)
        f.truncate(start * itemsize)


def prepare_known(name, out_dir='data'):
    """For train.py: prepare a KNOWN dataset with its defaults (in this process, no workers)."""
    return prepare(name, out_dir=out_dir, workers=1)


_stop_signal = [signal.SIGINT]  # for the exit code, 128 + the signal number, as train.py's


def _interrupt(signum, frame):
    _stop_signal[0] = signum
    raise KeyboardInterrupt  # SIGTERM: clean up exactly as for Ctrl-C


@contextlib.contextmanager
def friendly_errors(debug=False):
    """Errors as one line, no traceback (unless --debug or NANOLM_DEBUG=1)."""
    debug = debug or os.environ.get('NANOLM_DEBUG', '') not in ('', '0')
    try:
        yield
    except KeyboardInterrupt as e:
        if debug:
            raise
        end_progress()
        print(f"interrupted: {str(e) or 'no dataset was written'}", file=sys.stderr, flush=True)
        sys.exit(128 + _stop_signal[0])
    except Exception as e:
        if debug:
            raise
        if isinstance(e, (ValueError, OSError)):  # bad input or a file problem: the message says it
            die(str(e))
        die(f'{type(e).__name__}: {e} (rerun with --debug for the traceback)')


def main():
    ap = argparse.ArgumentParser(description='Tokenize text into data/<name>/{train,val}.bin + meta.json',
                                 epilog='known datasets: ' + ', '.join(KNOWN))
    ap.add_argument('name', help='dataset name: the output folder data/<name>/')
    ap.add_argument('--input', nargs='+', help='text files, .jsonl, .gz, globs or folders')
    ap.add_argument('--tokenizer', dest='tokenizer_name',
                    help='gpt2 | cl100k_base | o200k_base | char | bpe | path/to/saved/bpe (default: gpt2)')
    ap.add_argument('--vocab_size', type=int, help=f'for --tokenizer=bpe (default {DEFAULT_VOCAB})')
    ap.add_argument('--text_field', default='text', help='the field of each .jsonl line that holds the text')
    ap.add_argument('--split_blocks', action='store_true', help='.txt: one document per blank-line-separated block')
    ap.add_argument('--val_fraction', type=float, default=0.1)
    ap.add_argument('--val_docs', type=int, help='exact number of validation documents (instead of a fraction)')
    ap.add_argument('--seed', type=int, default=1337)
    ap.add_argument('--workers', type=int, help='encoding processes (default or 0: all cores for inputs over 8 MB)')
    ap.add_argument('--skip_bad_lines', action='store_true', help='count and skip bad .jsonl lines instead of stopping')
    ap.add_argument('--out_dir', default='data')
    ap.add_argument('--bpe_train_mb', type=float, default=BPE_TRAIN_MB, help='train the bpe on at most this much text')
    ap.add_argument('--debug', action='store_true', help='show full tracebacks')
    ap.error = lambda msg: die(f'{msg}; see python prepare.py --help', 2)  # not argparse's usage + message
    args = vars(ap.parse_args())
    debug = args.pop('debug')
    signal.signal(signal.SIGTERM, _interrupt)  # schedulers and Kaggle stop a job with SIGTERM
    with friendly_errors(debug):
        prepare(**args)
        for s in _STOP_SIGNALS:  # the dataset is complete: nothing left to interrupt
            signal.signal(s, signal.SIG_IGN)


if __name__ == '__main__':
    main()
