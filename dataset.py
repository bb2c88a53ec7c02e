"""
A prepared dataset folder, as prepare.py writes it and every other script reads it:

    data/<name>/train.bin   token ids, no header (uint16, or uint32 over 65,535 ids)
    data/<name>/val.bin     the same for the validation split
    data/<name>/meta.json   the tokenizer (whole, or the name of a tiktoken one), vocab_size, dtype,
                            the token counts, and what was read (sources, documents, bytes)

plus the known datasets that need no --input: downloaded once and checked by sha256. Reading:

    tok, meta = dataset.load_meta('data/shakespeare_char')
    splits = dataset.open_splits('data/shakespeare_char', meta, block_size=64)  # np.memmap each
"""
import hashlib
import os
import shlex
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np

import cli
import tokenizer
from cli import atomic_write, die, parse_json_object

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

META_KEYS = ('tokenizer', 'vocab_size', 'dtype', 'train_tokens', 'val_tokens')  # what train.py needs


def load_meta(ds_dir):
    """-> (tok, meta) for a prepared dataset folder such as data/shakespeare_char. A missing or
    damaged meta.json (or tokenizer file) raises one ValueError line saying to rerun prepare.py."""
    path = Path(ds_dir) / 'meta.json'
    rerun = f'rerun: python prepare.py {Path(ds_dir).resolve().name}'
    try:
        meta = parse_json_object(path.read_text(encoding='utf-8'))
        missing = [k for k in META_KEYS if k not in meta]
        if missing:
            raise ValueError(f'no {", ".join(missing)}')
    except FileNotFoundError:
        raise ValueError(f'{path} not found (not a prepared dataset); {rerun}') from None
    except (OSError, ValueError) as e:  # UnicodeDecodeError is a ValueError
        raise ValueError(f'{path} is damaged ({e}); {rerun}') from None
    if isinstance(meta['tokenizer'], dict) and meta['tokenizer'].get('kind') == 'tiktoken':
        return tokenizer.load(meta['tokenizer']), meta  # its own message when offline: rerunning won't help
    try:
        return tokenizer.load(meta['tokenizer'], base_dir=ds_dir), meta
    except (OSError, ValueError) as e:
        raise ValueError(f'cannot load the tokenizer of {ds_dir}: {e}; {rerun}') from None


def open_splits(ds_dir, meta, block_size):
    """{'train': memmap, 'val': memmap} of a prepared folder, each checked against meta.json (an
    interrupted copy shows as a wrong size) and long enough for one block of block_size + 1 tokens."""
    name = Path(ds_dir).name
    data = {}
    for split in ('train', 'val'):
        path = os.path.join(ds_dir, f'{split}.bin')
        if not os.path.exists(path):
            die(f"{path} is missing; rerun: python prepare.py {name}")
        size, expected = os.path.getsize(path), meta[f'{split}_tokens'] * np.dtype(meta['dtype']).itemsize
        if size != expected:
            die(f"{path} has {size:,} bytes but meta.json says {expected:,} (an interrupted copy?); rerun: python prepare.py {name}")
        data[split] = np.memmap(path, dtype=np.dtype(meta['dtype']), mode='r')
        if len(data[split]) <= block_size:
            die(f"{path} has {len(data[split]):,} tokens, not enough for one block of block_size={block_size}+1; "
                f"use --block_size={max(8, len(data[split]) // 2)} or more data")
    return data


def fetch(name, out_dir='data'):
    """The raw file of a known dataset: data/<name>/<file>, downloaded if it is not there yet."""
    k = KNOWN[name]
    dest = Path(out_dir) / name / k['file']
    if dest.exists():
        return str(dest)  # as nanoGPT: a file already in place is used as it is
    local = f'python prepare.py {name} --input PATH' + ('' if Path(out_dir) == Path('data') else
                                                        f' --out_dir {shlex.quote(str(out_dir))}')
    print(f"downloading {k['url']} -> {dest}")
    cli.interrupt_note = 'while downloading: nothing was saved'
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
    with atomic_write(dest, 'wb') as f:
        f.write(data)
    return str(dest)


def prepare_known(name, data_dir, say=print):
    """train.py --dataset=<a known name> with no folder yet: run `python prepare.py <name>`, the
    command a user would type (a training script imports no command). Its failure is its own one
    line on stderr; we exit with its code."""
    cmd = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), 'prepare.py'), name,
           '--out_dir', data_dir, '--workers=1']
    say(f"{data_dir}/{name}/ is not prepared yet; running: python prepare.py {name}" +
        (f" --out_dir {shlex.quote(data_dir)}" if data_dir != 'data' else ''))
    code = subprocess.run(cmd).returncode
    if code:
        cli.exit_fn(code)
