"""
Turn text into token files for training: data/<name>/train.bin, val.bin and meta.json.

    python prepare.py shakespeare_char          # known datasets: verdict, shakespeare, shakespeare_char
    python prepare.py mytext --input notes.txt  # any local text file (gpt2 tokens by default)
    python prepare.py poems --input 'poems/**/*.jsonl.gz' --tokenizer=bpe --vocab_size=8192
    python prepare.py poems --input tang-poems.jsonl --tokenizer=bpe --han_chars   # a token per Chinese character
    python prepare.py more --input more.jsonl --tokenizer=data/poems   # reuse the bpe trained above
    python prepare.py mytok --input 'corpus/*.txt' --vocab_size=16384 --tokenizer_only  # just a bpe, in data/mytok/

Inputs (--input a b, or --input a --input b): files, quoted globs or folders. .txt is a
document per file (--split_blocks: per blank-line-separated block), .jsonl a document per line
(field --text_field); .gz of either is read directly. Documents are joined with the tokenizer's
end-of-text token; val takes whole documents at random (--val_fraction or --val_docs, --seed),
or the last --val_fraction of the tokens of a one-document corpus. Tokenizers: gpt2,
cl100k_base, o200k_base (tiktoken), char, bpe (trained here, see tokenizer.py) or the folder of
a bpe trained before. train.bin / val.bin are token ids without a header (uint16, or uint32
over 65,535 ids); meta.json records the tokenizer, so train.py and sample.py need no flag:
    tok, meta = dataset.load_meta('data/poems')   # (dataset.py: the folder's format)
    np.memmap('data/poems/train.bin', dtype=meta['dtype'], mode='r')

The stages, top to bottom in prepare(): find the inputs -> pass 1 (count documents; train the
bpe or collect the characters) -> pick the val documents -> pass 2 (encode with --workers
processes into temp files, streamed in ~1 MB pieces: memory stays bounded) -> commit (renames,
meta.json last). A failed or interrupted run (bad input, a full disk, Ctrl-C, SIGTERM) says so
in one line, removes its temp files and leaves the previous dataset as it was.

Why one file over 400 lines: it is one pipeline (read, count, split, encode, commit), and the
stages pass temp files and counts to each other; read top to bottom it is one story.
"""
import cli  # first: from here on a Ctrl-C is one line, even during the slow imports below

import argparse
import codecs
import contextlib
import glob
import gzip
import json
import os
import random
import shlex
import signal
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np

import tokenizer
from dataset import KNOWN, fetch, load_meta
from cli import atomic_write, bad_line, die, end_progress, parse_json_object, progress

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


# ----------------------------------------------------------------------------- the dataset folder

def saved_bpe(path):
    """--tokenizer=<folder>: the bpe its meta.json names when it holds a dataset (not tokenizer
    files an older dataset left there), else the one saved in it. Returned with its ranks inlined."""
    p = Path(path)
    if not (p / 'meta.json').is_file():
        return tokenizer.read_spec(p)
    spec = load_meta(p)[1]['tokenizer']
    if spec['kind'] != 'bpe':
        name = spec.get('name', spec['kind'])
        raise ValueError(f'{path} holds a dataset made with --tokenizer={name}, not a trained bpe; '
                         f'pass --tokenizer={name} itself, or the folder of a bpe')
    return tokenizer.portable_spec(spec, base_dir=p)


@contextlib.contextmanager
def output_folder(ds):
    """Make ds (and missing parents) for writing; on the way out remove those it made if still empty."""
    made = [p for p in (ds, *ds.parents) if not p.exists()]
    try:
        ds.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        die(f'cannot make the folder {ds}/: {cli.write_error(ds, e)}')
    try:
        yield
    finally:
        for d in made:  # deepest first
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()


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
        try:
            with (gzip.open(path, 'rb') if path.endswith('.gz') else open(path, 'rb')) as f:
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
        except (OSError, EOFError) as e:  # unreadable, or a truncated or corrupt .gz
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
    """One raw .jsonl line -> its text, or a ValueError saying what is wrong with the line."""
    obj = parse_json_object(raw.decode('utf-8', 'nanolm_count'))
    text = obj.get(text_field)
    if text_field in obj and not isinstance(text, str):
        raise ValueError(f'field {text_field!r} is {json.dumps(text)[:30]}, not a string')
    if not isinstance(text, str):
        raise ValueError(f"no text field {text_field!r} (it has: {', '.join(list(obj)[:8])}); choose one with --text_field")
    return text


def jsonl_bad_line(where, problem, skip_bad_lines, counts):
    """cli.bad_line (stop, or count and go on), remembering the first line skipped for the summary."""
    bad_line(f'{where[0]}:{where[1]}', problem, skip_bad_lines, counts)
    counts.setdefault('bad_line_example', f'{where[0]}:{where[1]}: {problem}')


def read_texts(paths, text_field='text', split_blocks=False, skip_bad_lines=False, counts=None, keep=None,
               show=None):
    """Yield the text of each document piece (JSONL parsed here), counting documents, bytes and
    characters into counts. keep(): whether to yield the next piece, asked before the costly parse."""
    counts = Counter() if counts is None else counts
    for item, end, where in read_units(paths, split_blocks, counts):
        counts['docs'] += end
        if show:
            show(lambda: f"counting: {counts['bytes'] / 2**20:,.0f} MB, {counts['docs']:,} documents")
        if keep and not keep():
            continue
        if isinstance(item, bytes):
            try:
                item = parse_line(item, text_field)
            except ValueError as e:
                jsonl_bad_line(where, str(e), skip_bad_lines, counts)
                continue
        counts['chars'] += len(item)
        yield item


def report_bad(counts, say):
    if counts['bad_lines']:
        say(f"note: skipped {counts['bad_lines']:,} bad lines (first: {counts['bad_line_example']})")
    if counts['bad_bytes']:
        say(f"note: replaced {counts['bad_bytes']:,} undecodable bytes (not UTF-8) with U+FFFD "
            f"(first in {counts['bad_bytes_file']})")


# ----------------------------------------------------------------------------- the tokenizer (pass 1)

def resolve_tokenizer(name, vocab_size):
    """--tokenizer value -> (kind, spec or None). bpe and char specs are made in pass 1."""
    if vocab_size is not None and name != 'bpe':  # a silent 50,257-token gpt2 dataset otherwise
        die(f'--vocab_size is for --tokenizer=bpe; the {name} tokenizer has its own vocabulary')
    if name in TIKTOKEN_NAMES:
        spec = {'kind': 'tiktoken', 'name': name}
        try:
            tokenizer.load(spec)  # here, not in each worker: one clear line when offline
        except ValueError as e:
            die(str(e))
        return 'tiktoken', spec
    if name in ('char', 'bpe'):
        if name == 'bpe' and (DEFAULT_VOCAB if vocab_size is None else vocab_size) < 256 + len(tokenizer.SPECIALS):
            die(f'--vocab_size={vocab_size} is too small: a byte-level bpe needs at least '
                f'256 + {len(tokenizer.SPECIALS)} (all bytes + the special tokens {", ".join(tokenizer.SPECIALS)})')
        return name, None
    if os.path.exists(name):
        try:
            return 'saved', saved_bpe(name)
        except (OSError, ValueError) as e:
            die(str(e))
    what = f'tokenizer {name} not found' if os.sep in name or '/' in name or name.startswith('.') else \
        f'unknown tokenizer {name!r}'
    die(f"{what}: use one of {', '.join(TIKTOKEN_NAMES)}, char, bpe, or the folder of a bpe trained before "
        f"(it holds tokenizer.json)")


def bpe_sample(paths, mb, seed, counts):
    """keep() for read_texts: an even sample of the corpus, about mb MB (the bpe's time and memory grow with it)."""
    disk = sum(os.path.getsize(p) * (4 if p.endswith('.gz') else 1) for p in paths)  # rough for .gz
    share = min(1.0, mb * 2**20 / max(1, disk))
    rng = random.Random(seed)
    return lambda: counts['chars'] < mb * 2**20 and rng.random() < share


def pass1(paths, kind, spec, s):
    """Count documents and bytes; train the bpe on a sample, or collect the characters (char).
    -> (counts, spec). The vocab note is printed the same way for a dataset and --tokenizer_only."""
    counts = Counter()
    keep = (bpe_sample(paths, s.bpe_train_mb, s.seed, counts) if kind == 'bpe' else
            None if kind == 'char' else lambda: False)  # None: every text; tiktoken and a saved bpe: none, just count
    texts = read_texts(paths, s.text_field, s.split_blocks, s.skip_bad_lines, counts, keep, s.show)
    t0 = time.time()
    end_progress()  # a status line only once this pass has run for a while
    if kind == 'bpe':
        cli.interrupt_note = f'while training the bpe: {s.nothing}'
        pat = tokenizer.PAT_HAN_CHARS if s.han_chars else tokenizer.PAT
        spec = tokenizer.bpe_spec(tokenizer.train_bpe(texts, s.vocab_size, pat, progress=s.show), pat, f'nanolm-bpe-{s.name}')
    elif kind == 'char':
        chars = set()
        for text in texts:
            chars.update(text)
        spec = {'kind': 'char', 'chars': ''.join(sorted(chars))}
    else:
        for _ in texts:
            pass
    end_progress()
    if not counts['docs']:
        die(f"no text in the input ({len(paths)} file(s), {counts['bytes']:,} bytes)")
    if kind == 'bpe':
        if not counts['chars']:
            die(f"no text to train the bpe on: all {counts['docs']:,} documents were empty or bad lines")
        n = tokenizer.load(spec).n_vocab
        s.say(f'trained a {n:,}-token bpe in {time.time() - t0:.1f}s' + ('' if n == s.vocab_size else
              f' (not {s.vocab_size:,}: the text ran out of pairs to merge)'))
    return counts, spec


def save_tokenizer(spec, ds, counts, s):
    """--tokenizer_only: the bpe's two files into ds, each atomically; tokenizer.json, which names
    the other, goes first and comes back last, so a stop midway never pairs old and new."""
    stored, files = tokenizer.bpe_files(spec)
    with output_folder(ds):
        (ds / 'tokenizer.json').unlink(missing_ok=True)
        for fname in (tokenizer.RANKS_FILE, 'tokenizer.json'):
            with atomic_write(ds / fname) as f:
                f.write(files[fname])
    report_bad(counts, s.say)
    s.say(f'{ds}/: {", ".join(files)}; use it with --tokenizer={ds}')
    return stored


# ----------------------------------------------------------------------------- encoding (pass 2)

def token_dtype(n_vocab):
    return np.dtype(np.uint16 if n_vocab <= 65535 else np.uint32)


def pick_val(n_docs, val_fraction, val_docs):
    """How many documents go to val; 0 for a corpus of one document (val gets its tail instead)."""
    if n_docs == 1:
        return 0
    n_val = val_docs if val_docs is not None else max(1, round(n_docs * val_fraction))
    if n_val >= n_docs:
        die(f'asked for {n_val:,} validation documents but the corpus has only {n_docs:,}; '
            f'lower --val_docs / --val_fraction or add data')
    return n_val


def batches(paths, n_docs, n_val, s, counts):
    """Pass 2's input in order: lists of (item, end, is_val, where) of about BATCH characters.
    Which documents go to val: selection sampling picks exactly n_val of n_docs, uniformly at
    random, deciding document by document as they stream past."""
    rng = random.Random(s.seed)
    need, left = n_val, n_docs
    batch, size, is_val = [], 0, None
    for item, end, where in read_units(paths, s.split_blocks, counts):
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


def _encode_batch(batch, dtype, add_eot, text_field, tok):
    """batch from batches() -> (train ids, val ids, a Counter: utf-8 bytes encoded, documents per
    split, bad lines (and the first), undecodable bytes)."""
    train, val = [], []
    r = Counter()
    bad_before = _bad_bytes[0]
    for item, end, is_val, where in batch:
        if isinstance(item, bytes):  # a raw .jsonl line
            try:
                item = parse_line(item, text_field)
            except ValueError as e:  # judged by the main process: cli.bad_line
                r['bad_lines'] += 1
                r.setdefault('bad_line', (where, str(e)))
                continue
            if not item:
                continue  # an empty document
        ids = tok.encode(item)
        if end and add_eot:
            ids.append(tok.eot)
        (val if is_val else train).extend(ids)
        r['text_bytes'] += len(item.encode('utf-8', 'surrogatepass'))
        r['val_docs' if is_val else 'train_docs'] += end
    if _bad_bytes[0] > bad_before:
        r['bad_bytes'] = _bad_bytes[0] - bad_before
        r['bad_bytes_file'] = next(w[0] for _, _, _, w in batch)
    return np.array(train, dtype=dtype), np.array(val, dtype=dtype), r


def _worker(conn, main_end, spec):
    """An encoding process: batches in, token arrays out, over its own pipe. Nothing is shared
    with the other workers (multiprocessing.Pool shares a queue lock and a result pipe: a worker
    killed at the wrong moment left the main process waiting on them forever), so the main
    process can kill us at any time and carry on. Errors go back to it, never as a traceback here."""
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)  # Ctrl-C, SIGTERM: the main process's job (it kills us)
    if hasattr(signal, 'pthread_sigmask'):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # blocked by encoded() for the fork
    main_end.close()  # (fork) so that recv sees EOF if the main process dies
    try:
        tok = tokenizer.load(spec)
        for job in iter(conn.recv, None):
            conn.send(_encode_batch(*job, tok=tok))
    except (EOFError, OSError):
        pass  # the main process is gone
    except Exception as e:  # re-raised in the main process
        with contextlib.suppress(Exception):
            conn.send(e)


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


def encoded(batches, workers, spec, tok, job):
    """Encode batches, yielding the results in input order: here (one worker), or round robin with
    one batch in flight per worker process: batch t goes to worker t % workers once its previous
    result is taken, so the order is kept, memory stays bounded, and a worker is always reading
    when the main process sends to it. Close this generator to stop the workers."""
    if workers <= 1:
        for batch in batches:
            yield _encode_batch(batch, *job, tok=tok)
        return
    import multiprocessing as mp
    procs, conns = [], []
    try:
        with _stop_signals_blocked():  # a Ctrl-C must not reach a worker before it ignores it
            for _ in range(workers):
                mine, theirs = mp.Pipe()
                procs.append(mp.Process(target=_worker, args=(theirs, mine, spec), daemon=True))
                conns.append(mine)
                procs[-1].start()
                theirs.close()
        t = -1
        try:
            for t, batch in enumerate(batches):
                if t >= workers:
                    yield _result(conns[t % workers])
                conns[t % workers].send((batch, *job))
            for t in range(max(0, t + 1 - workers), t + 1):
                yield _result(conns[t % workers])
        except (EOFError, BrokenPipeError):  # a pipe to a dead worker (a bad input file stops in read_units)
            raise RuntimeError('an encoding process died (out of memory? try fewer --workers)') from None
    finally:
        for p in procs:
            p.kill()  # they ignore SIGINT and SIGTERM; nothing they hold can block us
        for p in procs:
            p.join(5)


def _result(conn):
    r = conn.recv()
    if isinstance(r, BaseException):  # the worker's error, raised here
        raise r
    return r


def pass2(paths, spec, tok, tmp, n_docs, n_val, workers, s):
    """Encode every document into the temp files tmp['train.bin'] and tmp['val.bin']. -> counts:
    tokens and documents per split, utf-8 bytes encoded, bad lines and bytes, seconds."""
    job = (token_dtype(tok.n_vocab), n_docs > 1, s.text_field)  # an end-of-text after each document, unless only one
    counts, t0 = Counter(), time.time()
    cli.interrupt_note = f'while encoding: {s.nothing}'
    end_progress()
    with open(tmp['train.bin'], 'wb') as ftrain, open(tmp['val.bin'], 'wb') as fval, \
            contextlib.closing(encoded(batches(paths, n_docs, n_val, s, counts), workers, spec, tok, job)) as results:
        for train, val, r in results:
            if r['bad_lines']:
                jsonl_bad_line(*r['bad_line'], s.skip_bad_lines, counts)
                counts['bad_lines'] += r['bad_lines'] - 1
            if r['bad_bytes']:
                counts['bad_bytes'] += r['bad_bytes']
                counts.setdefault('bad_bytes_file', r['bad_bytes_file'])
            ftrain.write(train.data)  # not ndarray.tofile: its error on a full disk has no errno
            fval.write(val.data)
            counts.update(train=len(train), val=len(val), text_bytes=r['text_bytes'],
                          train_docs=r['train_docs'], val_docs=r['val_docs'])
            s.show(lambda: (f"encoding: {counts['bytes'] / 2**20:,.0f}/{s.total_bytes / 2**20:,.0f} MB "  # bytes read
                            f"{100 * counts['bytes'] / s.total_bytes:.0f}% | {(counts['train'] + counts['val']) / 1e6:,.2f}M "
                            f"tokens | {counts['text_bytes'] / 2**20 / (time.time() - t0):.1f} MB/s | "
                            f"ETA {(time.time() - t0) * (s.total_bytes / max(1, counts['bytes']) - 1):.0f}s"))
    end_progress()
    counts['seconds'] = time.time() - t0
    return counts


def check_split(counts, tmp, n_docs, n_val, itemsize, val_fraction):
    """Refuse a useless split; a one-document corpus moves the last val_fraction of its tokens to val."""
    if n_docs == 1:
        n_val_tok = int(counts['train'] * val_fraction)
        if n_val_tok < MIN_VAL_TOKENS or counts['train'] - n_val_tok < MIN_VAL_TOKENS:
            die(f"corpus too small for a validation split: one document of {counts['train']:,} tokens "
                f"(val would get {n_val_tok}); add text or raise --val_fraction")
        with open(tmp['train.bin'], 'r+b') as f, open(tmp['val.bin'], 'wb') as g:
            f.seek((counts['train'] - n_val_tok) * itemsize)
            for chunk in iter(lambda: f.read(1 << 24), b''):  # bounded memory
                g.write(chunk)
            f.truncate((counts['train'] - n_val_tok) * itemsize)
        counts['train'] -= n_val_tok
        counts['val'] = n_val_tok
    elif counts['train_docs'] + counts['val_docs'] == 0:
        die(f'no text in the input: all {n_docs:,} lines were bad or empty')
    elif counts['val'] < MIN_VAL_TOKENS:
        die(f"corpus too small for a validation split: the {n_val} validation document(s) hold "
            f"{counts['val']} tokens; add text or raise --val_docs / --val_fraction")


# ----------------------------------------------------------------------------- the commit

def write_dataset(ds, paths, spec, n_docs, n_val, workers, s):
    """Pass 2 and the commit. Every file is first written beside the old dataset (if any) under
    its name + '.tmp', as cli.atomic_write names its own; only renames touch the old dataset.
    On any failure, or a signal, the temp files go and the previous dataset stays as it was."""
    tok = tokenizer.load(spec)
    tmp = {name: ds / f'{name}.tmp' for name in ('train.bin', 'val.bin')}
    with output_folder(ds):
        try:
            try:
                counts = pass2(paths, spec, tok, tmp, n_docs, n_val, workers, s)
                check_split(counts, tmp, n_docs, n_val, token_dtype(tok.n_vocab).itemsize, s.val_fraction)
                stored = spec
                if spec['kind'] == 'bpe':  # its files go with the dataset
                    stored, files = tokenizer.bpe_files(spec)
                    for fname, text in files.items():
                        tmp[fname] = ds / f'{fname}.tmp'
                        tmp[fname].write_text(text, encoding='utf-8')
            except OSError as e:  # a full disk, a size limit, a folder we may not write to
                kept = '; the previous dataset there is intact' if (ds / 'meta.json').exists() else ''
                die(f'cannot write the dataset to {ds}/: {cli.write_error(tmp["train.bin"], e)}{kept}')
            meta = make_meta(tok, stored, counts, n_docs, n_val, paths, s)
            commit(ds, tmp, meta)
        finally:
            for p in tmp.values():  # (renamed away after a commit)
                p.unlink(missing_ok=True)
    return counts, meta


def make_meta(tok, stored, counts, n_docs, n_val, paths, s):
    n_tok = counts['train'] + counts['val']
    return {
        'vocab_size': tok.n_vocab, 'dtype': token_dtype(tok.n_vocab).name,
        'train_tokens': counts['train'], 'val_tokens': counts['val'], 'tokenizer': stored,
        'eot': tok.eot, 'documents': counts['train_docs'] + counts['val_docs'],
        'train_documents': counts['train_docs'], 'val_documents': counts['val_docs'],
        'split': (f'the last {s.val_fraction:g} of its tokens' if n_docs == 1
                  else f'{n_val} random documents (seed {s.seed})'),
        'text_bytes': counts['text_bytes'], 'bytes_per_token': round(counts['text_bytes'] / max(1, n_tok), 4),
        'bad_lines': counts['bad_lines'], 'bad_bytes': counts['bad_bytes'],
        'sources': paths[:20] + ([f'... and {len(paths) - 20} more'] if len(paths) > 20 else []),
    }


def commit(ds, tmp, meta):
    """Swap the new dataset in with Ctrl-C and SIGTERM held back. meta.json's text is written (and
    flushed, so a full disk shows) before the old dataset is touched; then the old meta.json goes,
    the new files are renamed in, and the new meta.json lands last: a crash midway leaves no
    meta.json rather than a mix of old and new. (A file system that reports a full disk only at
    fsync fails at the very end, without a meta.json: prepare again.)"""
    with _stop_signals_blocked(), atomic_write(ds / 'meta.json') as f:
        f.write(json.dumps(meta, indent=1))
        f.flush()
        if (ds / 'meta.json').exists():
            (ds / 'meta.json').unlink()
            for name in ('tokenizer.json', tokenizer.RANKS_FILE):
                if name not in tmp:  # the old dataset's bpe would pass for this one's
                    (ds / name).unlink(missing_ok=True)
        for name, path in tmp.items():
            os.replace(path, ds / name)
        cli.interrupt_note = f'after the commit: {ds}/ is complete'
    cli.fsync_dir(ds)


# ----------------------------------------------------------------------------- the pipeline

def check_settings(s):
    if not s.name or os.sep in s.name or s.name in ('.', '..'):
        die(f'dataset name {s.name!r} must be a plain folder name such as mydata')
    if not 0 < s.val_fraction < 1:
        die(f'--val_fraction={s.val_fraction} must be above 0 and below 1: training needs a validation split '
            f'(0.1 holds out a tenth; --val_docs=N takes exactly N documents)')
    if s.val_docs is not None and s.val_docs < 1:
        die(f'--val_docs={s.val_docs} must be at least 1')
    if s.workers is not None and s.workers < 0:
        die(f'--workers={s.workers}: give the number of encoding processes (1 or more), or leave it out '
            f'to use all cores for inputs over 8 MB')
    if not s.bpe_train_mb > 0:
        die(f'--bpe_train_mb={s.bpe_train_mb:g} must be more than 0 (the MB of text the bpe trains on)')
    if s.tokenizer_only and s.tokenizer_name not in (None, 'bpe'):
        die(f'--tokenizer_only trains a bpe: drop --tokenizer={s.tokenizer_name} (or use --tokenizer=bpe)')
    if s.han_chars and (s.tokenizer_name or ('bpe' if s.tokenizer_only else '')) != 'bpe':
        die(f"--han_chars shapes the bpe trained here: add --tokenizer=bpe (not --tokenizer={s.tokenizer_name or 'gpt2'})")
    if s.tokenizer_only and (Path(s.out_dir) / s.name / 'meta.json').exists():
        die(f'{Path(s.out_dir) / s.name}/ holds a dataset, and its bpe (if it has one) is reused with '
            f'--tokenizer={Path(s.out_dir) / s.name}; --tokenizer_only needs a folder of its own: choose another name')


def prepare(name, input=None, tokenizer_name=None, vocab_size=None, text_field='text', split_blocks=False,
            val_fraction=0.1, val_docs=None, seed=1337, workers=None, skip_bad_lines=False,
            out_dir='data', bpe_train_mb=BPE_TRAIN_MB, tokenizer_only=False, han_chars=False, quiet=False):
    """Prepare data/<name>/ (see the top of this file) and return its meta dict. tokenizer_only:
    train a bpe into data/<name>/ and return its spec instead."""
    s = SimpleNamespace(**locals())  # the settings, as given
    t_start = time.time()
    check_settings(s)
    ds = Path(out_dir) / name
    s.say, s.show = (lambda *a: None, lambda *a: None) if quiet else (print, progress)
    s.nothing = ('no tokenizer was written' if tokenizer_only else 'no dataset was written' +
                 (f' ({ds}/ is as it was)' if (ds / 'meta.json').exists() else ''))
    try:
        if input:
            paths = expand_inputs(input)
        elif name in KNOWN:
            paths = [fetch(name, out_dir)]
        else:
            die(f"unknown dataset {name!r} and no --input: pass your text with --input FILE_OR_GLOB, "
                f"or use one of {', '.join(KNOWN)}")
        s.tokenizer_name = tokenizer_name or ('bpe' if tokenizer_only else KNOWN.get(name, {}).get('tokenizer', 'gpt2'))
        kind, spec = resolve_tokenizer(s.tokenizer_name, vocab_size)
        s.vocab_size = DEFAULT_VOCAB if vocab_size is None else vocab_size
        cli.interrupt_note = f'while counting the input: {s.nothing}'
        counts, spec = pass1(paths, kind, spec, s)
        if tokenizer_only:
            return save_tokenizer(spec, ds, counts, s)
        n_docs, s.total_bytes = counts['docs'], counts['bytes']
        n_val = pick_val(n_docs, val_fraction, val_docs)
        workers = workers or (os.cpu_count() if s.total_bytes > 8 * 2**20 else 1)
        counts, meta = write_dataset(ds, paths, spec, n_docs, n_val, workers, s)
    finally:
        cli.interrupt_note = ''
    report_bad(counts, s.say)
    docs = (f"one document, val = {meta['split']}" if n_docs == 1 else
            f"{meta['documents']:,} documents ({meta['train_documents']:,} train / {meta['val_documents']:,} val)")
    t, n_tok = max(counts['seconds'], 1e-9), meta['train_tokens'] + meta['val_tokens']
    s.say(f"{ds}/: {docs}, {meta['text_bytes'] / 2**20:,.2f} MB of text\n"
          f"  train.bin {meta['train_tokens']:,} tokens, val.bin {meta['val_tokens']:,} tokens "
          f"({meta['dtype']}, vocab {meta['vocab_size']:,}, tokenizer {s.tokenizer_name})\n"
          f"  {meta['bytes_per_token']:.2f} bytes/token; encoded at {meta['text_bytes'] / 2**20 / t:.1f} MB/s, "
          f"{n_tok / t / 1e6:.2f}M tokens/s with {workers} worker(s); {time.time() - t_start:.1f}s in all")
    return meta


def main():
    ap = argparse.ArgumentParser(description='Tokenize text into data/<name>/{train,val}.bin + meta.json',
                                 epilog='known datasets: ' + ', '.join(KNOWN))
    ap.add_argument('name', help='dataset name: the output folder data/<name>/')
    ap.add_argument('--input', nargs='+', action='extend', help='text files, .jsonl, .gz, globs or folders (repeatable)')
    ap.add_argument('--tokenizer', dest='tokenizer_name',
                    help='gpt2 | cl100k_base | o200k_base | char | bpe | path/to/saved/bpe (default: gpt2)')
    ap.add_argument('--vocab_size', type=int, help=f'for --tokenizer=bpe (default {DEFAULT_VOCAB})')
    ap.add_argument('--tokenizer_only', action='store_true',
                    help='only train a bpe, into data/<name>/ (reuse it with --tokenizer=data/<name>)')
    ap.add_argument('--han_chars', action='store_true',
                    help='--tokenizer=bpe: one token per Chinese character at most, never a word of several (verse)')
    ap.add_argument('--text_field', default='text', help='the field of each .jsonl line that holds the text')
    ap.add_argument('--split_blocks', action='store_true', help='.txt: one document per blank-line-separated block')
    ap.add_argument('--val_fraction', type=float, default=0.1)
    ap.add_argument('--val_docs', type=int, help='exact number of validation documents (instead of a fraction)')
    ap.add_argument('--seed', type=int, default=1337)
    ap.add_argument('--workers', type=int, help='encoding processes (default or 0: all cores for inputs over 8 MB)')
    ap.add_argument('--skip_bad_lines', action='store_true', help='count and skip bad .jsonl lines instead of stopping')
    ap.add_argument('--out_dir', default='data')
    ap.add_argument('--bpe_train_mb', type=float, default=BPE_TRAIN_MB, help='train the bpe on at most this much text')
    ap.add_argument('--debug', action='store_true', help='show full tracebacks (as NANOLM_DEBUG=1)')  # read by cli
    ap.error = lambda msg: die(f'{msg}; see python prepare.py --help', 2)  # not argparse's usage + message
    args = vars(ap.parse_args())
    args.pop('debug')
    prepare(**args)


if __name__ == '__main__':
    main()
