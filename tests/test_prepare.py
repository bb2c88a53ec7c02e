"""Tests for prepare.py: each input kind, the validation split, outputs, a bpe on its own
(--tokenizer_only), meta.json, bad input, a full disk, signals, downloads.

    python -m pytest tests/test_prepare.py -q
"""
import contextlib
import gzip
import json
import re
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import dataset  # noqa: E402
import prepare  # noqa: E402
import tokenizer  # noqa: E402

from conftest import run_here, wait_for  # noqa: E402

SHARED = ROOT / '..' / 'shared' / 'data'
DOCS = [f'document {i}: ' + 'lorem ipsum dolor sit amet, 床前明月光 ' * (1 + i % 4) + '\n' for i in range(40)]


def run(tmp_path, name='ds', **kw):
    """prepare() in this process, char tokenizer unless told; -> (meta, train ids, val ids)."""
    kw.setdefault('tokenizer_name', 'char')
    meta = prepare.prepare(name, out_dir=str(tmp_path / 'data'), quiet=True, **kw)
    d = tmp_path / 'data' / name
    train = np.fromfile(d / 'train.bin', dtype=meta['dtype'])
    val = np.fromfile(d / 'val.bin', dtype=meta['dtype'])
    assert len(train) == meta['train_tokens'] and len(val) == meta['val_tokens']
    return meta, train, val


def docs_of(tmp_path, name, train, val):
    """Decode both splits back into their documents (split at end-of-text)."""
    tok, meta = dataset.load_meta(tmp_path / 'data' / name)
    out = []
    for ids in (train, val):
        text = tok.decode(ids.tolist())
        out.append([d for d in text.split('<|endoftext|>') if d])
    return out


def write_jsonl(path, docs, field='text'):
    opener = gzip.open if str(path).endswith('.gz') else open
    with opener(path, 'wt', encoding='utf-8') as f:
        for d in docs:
            f.write(json.dumps({field: d, 'id': 1}, ensure_ascii=False) + '\n')


def cli(*args, cwd=None, env=None, **kw):
    """prepare.py as a user runs it -> (returncode, stdout, stderr). In this process (conftest.run_here:
    the same argv, exit code and stderr, without a second interpreter's start), unless the test sets
    the environment (then a process of its own)."""
    if env is None and not kw:
        with contextlib.chdir(cwd or ROOT):
            r = run_here('prepare.py', *args)
        return r.returncode, r.stdout, r.stderr
    r = subprocess.run([sys.executable, str(ROOT / 'prepare.py'), *map(str, args)], capture_output=True, text=True,
                       cwd=cwd or ROOT, env={**os.environ, 'NANOLM_DEBUG': '', **(env or {})}, **kw)
    return r.returncode, r.stdout, r.stderr


def assert_one_line_error(code, err, *words):
    assert code != 0
    assert 'Traceback' not in err
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith('error: '), err
    for w in words:
        assert w in lines[0], (w, lines[0])


# ----------------------------------------------------------------------------- input kinds

def test_one_txt_file_is_one_document_split_by_tokens(tmp_path):
    src = tmp_path / 'a.txt'
    src.write_text(''.join(DOCS), encoding='utf-8')
    meta, train, val = run(tmp_path, input=[str(src)])
    assert meta['documents'] == 1 and 'last 0.1' in meta['split']
    total = len(''.join(DOCS))
    assert len(val) == int(total * 0.1) and len(train) + len(val) == total  # char: 1 token a char
    tok, _ = dataset.load_meta(tmp_path / 'data' / 'ds')
    assert tok.decode(train.tolist() + val.tolist()) == ''.join(DOCS)  # no separator in one document
    assert meta['vocab_size'] == len(set(''.join(DOCS))) + 1 and meta['dtype'] == 'uint16'


def test_several_files_glob_and_folder(tmp_path):
    for i, d in enumerate(DOCS):
        sub = tmp_path / 'corpus' / f'part{i % 3}'
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f'{i:02d}.txt').write_text(d, encoding='utf-8')
    meta, train, val = run(tmp_path, input=[str(tmp_path / 'corpus' / '**' / '*.txt')], val_docs=4)
    assert meta['documents'] == 40 and meta['val_documents'] == 4 and meta['train_documents'] == 36
    tr, va = docs_of(tmp_path, 'ds', train, val)
    assert sorted(tr + va) == sorted(DOCS) and len(va) == 4
    eot = meta['eot']
    assert (train == eot).sum() == 36 and (val == eot).sum() == 4  # one separator per document
    meta2, train2, _ = run(tmp_path, name='ds2', input=[str(tmp_path / 'corpus')], val_docs=4)
    assert meta2['documents'] == 40 and np.array_equal(train, train2)  # a folder = all files inside


def test_input_given_twice_uses_both(tmp_path):
    """argparse kept only the last --input: a.txt was silently left out."""
    for name in ('a', 'b', 'c'):
        (tmp_path / f'{name}.txt').write_text(DOCS[0] * 3 if name == 'a' else DOCS[1] * 3, encoding='utf-8')
    for n, args in ((2, ['--input', 'a.txt', '--input', 'b.txt']), (3, ['--input', 'a.txt', 'b.txt', '--input', 'c.txt'])):
        code, _, err = cli(f'x{n}', *args, '--tokenizer=char', '--val_docs=1', '--out_dir=data', cwd=tmp_path)
        assert code == 0, err
        meta = json.loads((tmp_path / 'data' / f'x{n}' / 'meta.json').read_text())
        assert meta['documents'] == n and meta['sources'] == ['a.txt', 'b.txt', 'c.txt'][:n]


def test_split_blocks(tmp_path):
    src = tmp_path / 'a.txt'
    src.write_text('\n\n'.join(d.strip() for d in DOCS) + '\n\n  \n', encoding='utf-8')
    meta, train, val = run(tmp_path, input=[str(src)], split_blocks=True, val_docs=5)
    assert meta['documents'] == 40
    tr, va = docs_of(tmp_path, 'ds', train, val)
    assert sorted(d.strip() for d in tr + va) == sorted(d.strip() for d in DOCS)


def test_jsonl_field_and_gz_read_directly(tmp_path):
    write_jsonl(tmp_path / 'a.jsonl', DOCS, field='content')
    write_jsonl(tmp_path / 'a.jsonl.gz', DOCS, field='content')
    with gzip.open(tmp_path / 'b.txt.gz', 'wt', encoding='utf-8') as f:
        f.write(DOCS[0] * 10)
    m1, t1, v1 = run(tmp_path, name='plain', input=[str(tmp_path / 'a.jsonl')], text_field='content')
    m2, t2, v2 = run(tmp_path, name='gz', input=[str(tmp_path / 'a.jsonl.gz')], text_field='content')
    assert m1['documents'] == 40 and np.array_equal(t1, t2) and np.array_equal(v1, v2)
    tr, va = docs_of(tmp_path, 'plain', t1, v1)
    assert sorted(tr + va) == sorted(DOCS)
    m3, t3, v3 = run(tmp_path, name='txtgz', input=[str(tmp_path / 'b.txt.gz')])
    tok, _ = dataset.load_meta(tmp_path / 'data' / 'txtgz')
    assert tok.decode(t3.tolist() + v3.tolist()) == DOCS[0] * 10


def test_a_bom_at_the_start_of_a_file_is_dropped(tmp_path):
    """Windows editors often start UTF-8 files with a BOM: json.loads refused the first line."""
    bom = b'\xef\xbb\xbf'
    (tmp_path / 'a.jsonl').write_bytes(bom + ''.join(json.dumps({'text': d}) + '\n' for d in DOCS).encode())
    (tmp_path / 'b.jsonl.gz').write_bytes(gzip.compress((tmp_path / 'a.jsonl').read_bytes()))
    (tmp_path / 'c.txt').write_bytes(bom + ''.join(DOCS).encode())
    for name, src in (('a', 'a.jsonl'), ('b', 'b.jsonl.gz'), ('c', 'c.txt')):
        meta, train, val = run(tmp_path, name=name, input=[str(tmp_path / src)])
        tok, _ = dataset.load_meta(tmp_path / 'data' / name)
        text = tok.decode(train.tolist() + val.tolist())  # (a .txt is one document: no separator)
        assert sorted(d for d in text.split('<|endoftext|>') if d) == sorted(DOCS if name != 'c' else [''.join(DOCS)])
        assert '\ufeff' not in meta['tokenizer']['chars'] and meta['bad_bytes'] == 0


def test_long_document_read_in_pieces(tmp_path, monkeypatch):
    monkeypatch.setattr(prepare, 'PIECE', 100)  # force many pieces per document
    monkeypatch.setattr(prepare, 'BATCH', 300)
    (tmp_path / 'a.txt').write_text(''.join(DOCS), encoding='utf-8')
    (tmp_path / 'b.txt').write_text('床前明月光' * 500, encoding='utf-8')  # no newline at all
    meta, train, val = run(tmp_path, input=[str(tmp_path / 'a.txt'), str(tmp_path / 'b.txt')], val_docs=1)
    assert meta['documents'] == 2 and meta['bad_bytes'] == 0  # no character cut between pieces
    tr, va = docs_of(tmp_path, 'ds', train, val)
    assert sorted(tr + va) == sorted([''.join(DOCS), '床前明月光' * 500])


# ----------------------------------------------------------------------------- the split

def test_split_is_deterministic_per_seed_and_sized(tmp_path):
    write_jsonl(tmp_path / 'a.jsonl', DOCS)
    inp = [str(tmp_path / 'a.jsonl')]
    m1, t1, v1 = run(tmp_path, name='a', input=inp, seed=1)
    m2, t2, v2 = run(tmp_path, name='b', input=inp, seed=1)
    m3, t3, v3 = run(tmp_path, name='c', input=inp, seed=2)
    assert np.array_equal(t1, t2) and np.array_equal(v1, v2)
    assert m1['val_documents'] == 4 == m3['val_documents']  # round(40 * 0.1)
    assert sorted(docs_of(tmp_path, 'a', t1, v1)[1]) != sorted(docs_of(tmp_path, 'c', t3, v3)[1])
    m4, _, _ = run(tmp_path, name='d', input=inp, val_fraction=0.25)
    assert m4['val_documents'] == 10


def test_two_workers_give_the_same_files(tmp_path, monkeypatch):
    monkeypatch.setattr(prepare, 'BATCH', 200)  # several batches in flight
    write_jsonl(tmp_path / 'a.jsonl', DOCS)
    _, t1, v1 = run(tmp_path, name='w1', input=[str(tmp_path / 'a.jsonl')], workers=1)
    _, t2, v2 = run(tmp_path, name='w2', input=[str(tmp_path / 'a.jsonl')], workers=2)
    assert np.array_equal(t1, t2) and np.array_equal(v1, v2)
    _, t0, v0 = run(tmp_path, name='w0', input=[str(tmp_path / 'a.jsonl')], workers=0)  # 0: the default
    assert np.array_equal(t1, t0) and np.array_equal(v1, v0)


def test_bpe_dataset_and_reuse(tmp_path):
    write_jsonl(tmp_path / 'a.jsonl', DOCS)
    m1, t1, _ = run(tmp_path, name='a', input=[str(tmp_path / 'a.jsonl')], tokenizer_name='bpe', vocab_size=300)
    d = tmp_path / 'data' / 'a'
    assert (d / 'tokenizer.tiktoken').exists() and m1['tokenizer']['ranks_file'] == 'tokenizer.tiktoken'
    assert m1['vocab_size'] == 300 and m1['eot'] == 297
    m2, t2, _ = run(tmp_path, name='b', input=[str(tmp_path / 'a.jsonl')], tokenizer_name=str(d))
    assert np.array_equal(t1, t2) and (tmp_path / 'data' / 'b' / 'tokenizer.tiktoken').exists()
    # what train.py stores in a checkpoint loads without the dataset
    spec = json.loads(json.dumps(tokenizer.portable_spec(m1, d)))
    tok = tokenizer.load(spec)
    assert tok.decode(t1.tolist()).split('<|endoftext|>')[0] in DOCS


def test_han_chars_bpe_is_recorded_and_reused(tmp_path):
    """--han_chars: the bpe's pattern travels in meta.json (a checkpoint's tokenizer splits as it was
    trained), and only a bpe trained here takes it."""
    write_jsonl(tmp_path / 'a.jsonl', DOCS)
    meta, train, _ = run(tmp_path, name='h', input=[str(tmp_path / 'a.jsonl')], tokenizer_name='bpe', vocab_size=400, han_chars=True)
    tok = tokenizer.load(tokenizer.portable_spec(meta, tmp_path / 'data' / 'h'))
    assert meta['tokenizer']['pat_str'] == tokenizer.PAT_HAN_CHARS
    assert [tok.decode([t]) for t in tok.encode('床前明月光')] == list('床前明月光')
    _, again, _ = run(tmp_path, name='h2', input=[str(tmp_path / 'a.jsonl')], tokenizer_name=str(tmp_path / 'data' / 'h'))
    assert np.array_equal(train, again)
    code, _, err = cli('x', '--input', str(tmp_path / 'a.jsonl'), '--han_chars', f'--out_dir={tmp_path}')
    assert_one_line_error(code, err, '--han_chars shapes the bpe trained here: add --tokenizer=bpe (not --tokenizer=gpt2)')
    assert not (tmp_path / 'x').exists()


def test_reprepared_without_bpe_leaves_no_stale_bpe(tmp_path):
    """A folder that held a bpe dataset and is prepared again with char must not keep the old
    tokenizer files: --tokenizer=<that folder> used them as if they were its tokenizer."""
    write_jsonl(tmp_path / 'a.jsonl', DOCS)
    run(tmp_path, name='a', input=[str(tmp_path / 'a.jsonl')], tokenizer_name='bpe', vocab_size=300)
    d = tmp_path / 'data' / 'a'
    run(tmp_path, name='a', input=[str(tmp_path / 'a.jsonl')])  # char now
    assert sorted(p.name for p in d.iterdir()) == ['meta.json', 'train.bin', 'val.bin']
    code, _, err = cli('b', '--input', str(tmp_path / 'a.jsonl'), f'--tokenizer={d}', f'--out_dir={tmp_path / "data"}')
    assert_one_line_error(code, err, 'holds a dataset made with --tokenizer=char, not a trained bpe')
    assert not (tmp_path / 'data' / 'b').exists()


def test_tiktoken_gpt2_and_uint32(tmp_path):
    if not (SHARED / 'tiktoken_cache').exists():
        pytest.skip('needs ../shared/data/tiktoken_cache for offline GPT-2 / cl100k BPE')
    os.environ.setdefault('TIKTOKEN_CACHE_DIR', str(SHARED / 'tiktoken_cache'))
    write_jsonl(tmp_path / 'a.jsonl', DOCS)
    m, t, _ = run(tmp_path, name='g', input=[str(tmp_path / 'a.jsonl')], tokenizer_name='gpt2')
    assert m['dtype'] == 'uint16' and m['vocab_size'] == 50257 and m['eot'] == 50256
    m, t, _ = run(tmp_path, name='c', input=[str(tmp_path / 'a.jsonl')], tokenizer_name='cl100k_base')
    assert m['dtype'] == 'uint32' and m['vocab_size'] == 100277 and t.max() == 100257  # its eot


# ----------------------------------------------------------------------------- a bpe on its own, meta.json

def test_tokenizer_only_trains_a_reusable_bpe(tmp_path):
    src = tmp_path / 'a.txt'
    src.write_text(''.join(DOCS), encoding='utf-8')
    code, out, err = cli('tok', '--input', src, '--tokenizer_only', '--vocab_size=300', f'--out_dir={tmp_path / "data"}')
    assert code == 0, err
    d = tmp_path / 'data' / 'tok'
    assert sorted(p.name for p in d.iterdir()) == ['tokenizer.json', 'tokenizer.tiktoken']
    assert 'trained a 300-token bpe' in out and f'--tokenizer={d}' in out
    tok = tokenizer.load(tokenizer.read_spec(d))
    assert tok.n_vocab == 300 and tok.decode(tok.encode(DOCS[3])) == DOCS[3]
    meta, train, _ = run(tmp_path, name='ds', input=[str(src)], tokenizer_name=str(d))  # reused for a dataset
    assert meta['vocab_size'] == 300 and tok.decode(train.tolist()).startswith(DOCS[0][:20])


@pytest.mark.parametrize('args', [['--tokenizer_only'], ['--tokenizer=bpe']])
def test_a_vocab_the_corpus_cannot_reach_is_noted_in_both_paths(tmp_path, args):
    """The dataset path said so; --tokenizer_only (python tokenizer.py before) was silent."""
    src = tmp_path / 'a.txt'
    src.write_text(''.join(DOCS), encoding='utf-8')
    code, out, err = cli('x', '--input', src, *args, '--vocab_size=5000', f'--out_dir={tmp_path}')
    assert code == 0, err
    assert re.search(r'trained a \d+-token bpe in [\d.]+s \(not 5,000: the text ran out of pairs to merge\)', out), out


@pytest.mark.parametrize('args', [['--tokenizer_only'], ['--tokenizer=bpe']])
@pytest.mark.parametrize('content,words', [('', 'no text in the input'),
                                           ('{"text": ""}\n{"text": ""}\n', 'no text to train the bpe on')])
def test_a_bpe_on_no_text_is_one_line(tmp_path, args, content, words):
    """python tokenizer.py on an empty file exited 0 with a 259-token bpe."""
    src = tmp_path / ('e.txt' if not content else 'e.jsonl')
    src.write_text(content)
    code, out, err = cli('x', '--input', src, *args, '--vocab_size=300', f'--out_dir={tmp_path / "data"}')
    assert_one_line_error(code, err, words)
    assert code == 1 and 'trained' not in out and not (tmp_path / 'data').exists()


GOOD_META = {'tokenizer': {'kind': 'char', 'chars': 'ab'}, 'vocab_size': 3, 'dtype': 'uint16',
             'train_tokens': 10, 'val_tokens': 2}  # (load_meta's own tests: test_dataset.py)


def test_tokenizer_folder_with_a_dataset_follows_its_meta_json(tmp_path):
    """--tokenizer=<dataset folder> takes the tokenizer its meta.json names, not tokenizer files
    an older bpe dataset left there (those were used as if they were the dataset's)."""
    (tmp_path / 'a.txt').write_text(''.join(DOCS), encoding='utf-8')
    prepare.prepare('tok', input=[str(tmp_path / 'a.txt')], vocab_size=300, tokenizer_only=True,
                    out_dir=str(tmp_path), quiet=True)
    d = tmp_path / 'tok'
    (d / 'meta.json').write_text(json.dumps(GOOD_META))  # a char dataset over a stale bpe
    with pytest.raises(ValueError, match='made with --tokenizer=char, not a trained bpe'):
        prepare.saved_bpe(d)
    bpe = json.loads((d / 'tokenizer.json').read_text())
    (d / 'meta.json').write_text(json.dumps({**GOOD_META, 'tokenizer': {**bpe, 'name': 'from-meta'}}))
    spec = prepare.saved_bpe(d)
    assert spec['name'] == 'from-meta' and tokenizer.load(spec).n_vocab == 300


def test_offline_message_from_prepare_cli_reads_well(tmp_path, monkeypatch, capsys):
    """prepare.py says it once, without a "ValueError:" prefix, and writes nothing."""
    import tiktoken.load
    import tiktoken.registry

    def offline(url, *a, **k):
        raise ConnectionError('no network')
    monkeypatch.setattr(tiktoken.load, 'read_file', offline)
    monkeypatch.setattr(tiktoken.registry, 'ENCODINGS', {})
    monkeypatch.setenv('TIKTOKEN_CACHE_DIR', str(tmp_path))
    monkeypatch.setattr(sys, 'argv', ['prepare.py', 'x', '--input', __file__, f'--out_dir={tmp_path}'])
    with pytest.raises(SystemExit) as ex:
        prepare.main()
    err = capsys.readouterr().err.strip()
    assert ex.value.code == 1 and len(err.splitlines()) == 1
    assert err.startswith("error: could not load tiktoken's 'gpt2' BPE") and 'ValueError' not in err
    assert list(tmp_path.iterdir()) == []  # nothing written


# ----------------------------------------------------------------------------- bad input

def test_missing_file_and_empty_glob(tmp_path):
    code, _, err = cli('x', '--input', str(tmp_path / 'nope.txt'), f'--out_dir={tmp_path}')
    assert_one_line_error(code, err, 'nope.txt', 'not found')
    code, _, err = cli('x', '--input', str(tmp_path / '*.jsonl'), f'--out_dir={tmp_path}')
    assert_one_line_error(code, err, 'no files match')


def test_bad_jsonl_lines(tmp_path):
    src = tmp_path / 'a.jsonl'
    write_jsonl(src, DOCS[:20])
    with open(src, 'a', encoding='utf-8') as f:
        f.write('{"text": "cut off\n')  # line 21
        f.write('{"body": "no text field"}\n')  # line 22
        f.write('[1, 2]\n')  # line 23
    args = ['x', '--input', str(src), '--tokenizer=char', f'--out_dir={tmp_path}']
    code, _, err = cli(*args)
    assert_one_line_error(code, err, 'a.jsonl:21', 'not valid JSON', '--skip_bad_lines')
    code, out, err = cli(*args, '--text_field=body')
    assert_one_line_error(code, err, 'a.jsonl:1', "'body'", 'text')  # names the fields it has
    code, out, err = cli(*args, '--skip_bad_lines')
    assert code == 0, err
    assert 'skipped 3 bad lines' in out and 'a.jsonl:21' in out
    meta = json.loads((tmp_path / 'x' / 'meta.json').read_text())
    assert meta['bad_lines'] == 3 and meta['documents'] == 20


def test_undecodable_bytes_are_counted_and_replaced(tmp_path):
    src = tmp_path / 'a.txt'
    src.write_bytes('good text 明月\n'.encode() + b'bad \xff\xfe bytes \xe6\x98\n' + 'the end. '.encode() * 20)
    code, out, err = cli('x', '--input', str(src), '--tokenizer=char', f'--out_dir={tmp_path}', '--val_fraction=0.5')
    assert code == 0, err
    assert 'replaced 4 undecodable bytes' in out and 'a.txt' in out
    tok, meta = dataset.load_meta(tmp_path / 'x')
    assert meta['bad_bytes'] == 4 and '\ufffd' in meta['tokenizer']['chars']


def test_too_small_for_a_split(tmp_path):
    src = tmp_path / 'a.txt'
    src.write_text('tiny', encoding='utf-8')
    code, _, err = cli('x', '--input', str(src), '--tokenizer=char', f'--out_dir={tmp_path}')
    assert_one_line_error(code, err, 'too small for a validation split')
    write_jsonl(tmp_path / 'b.jsonl', DOCS[:3])
    code, _, err = cli('y', '--input', str(tmp_path / 'b.jsonl'), '--val_docs=3', '--tokenizer=char', f'--out_dir={tmp_path}')
    assert_one_line_error(code, err, 'only 3')
    (tmp_path / 'e.txt').write_text('')
    code, _, err = cli('z', '--input', str(tmp_path / 'e.txt'), '--tokenizer=char', f'--out_dir={tmp_path}')
    assert_one_line_error(code, err, 'no text')


def test_vocab_too_small_and_unknown_tokenizer(tmp_path):
    src = tmp_path / 'a.txt'
    src.write_text(''.join(DOCS), encoding='utf-8')
    code, _, err = cli('x', '--input', str(src), '--tokenizer=bpe', '--vocab_size=200', f'--out_dir={tmp_path}')
    assert_one_line_error(code, err, '--vocab_size=200', '256 + 3')
    code, _, err = cli('x', '--input', str(src), '--tokenizer=gpt3', f'--out_dir={tmp_path}')
    assert_one_line_error(code, err, "'gpt3'", 'char, bpe')
    assert not (tmp_path / 'x').exists()


def test_bad_input_overwrites_nothing(tmp_path):
    write_jsonl(tmp_path / 'a.jsonl', DOCS)
    run(tmp_path, name='x', input=[str(tmp_path / 'a.jsonl')])
    d = tmp_path / 'data' / 'x'
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    with open(tmp_path / 'a.jsonl', 'a') as f:
        f.write('not json\n')
    code, _, err = cli('x', '--input', str(tmp_path / 'a.jsonl'), '--tokenizer=char', f'--out_dir={tmp_path / "data"}')
    assert_one_line_error(code, err, 'a.jsonl:41')
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
    """An input file, a saved bpe and a char dataset 'x' in data/: bad runs must leave it as it is."""
    root = tmp_path_factory.mktemp('bad')
    write_jsonl(root / 'a.jsonl', DOCS)
    prepare.prepare('x', input=[str(root / 'a.jsonl')], tokenizer_name='char', out_dir=str(root / 'data'), quiet=True)
    (root / 'empty_dir').mkdir()
    (root / 'no_tokenizer').mkdir()
    (root / 'garbage_tok').mkdir()
    (root / 'garbage_tok' / 'tokenizer.json').write_text(json.dumps(
        {'kind': 'bpe', 'pat_str': tokenizer.PAT, 'special': {}, 'ranks_file': 'tokenizer.tiktoken'}))
    (root / 'garbage_tok' / 'tokenizer.tiktoken').write_text('this is not a ranks file\n')
    (root / 'numbers.jsonl').write_text('{"text": 5}\n{"text": "ok"}\n')
    (root / 'nulls.jsonl').write_text('{"text": "ok"}\n{"text": null}\n')
    (root / 'a_file').write_text('not a folder')
    (root / 'alpaca.json').write_text(json.dumps([{'instruction': 'Say hi.', 'output': 'Hi!'}] * 20))
    (root / 'random.bin').write_bytes(bytes(range(256)) * 80)  # NUL bytes: not text
    (root / 'latin1.txt').write_bytes('Größe, çà et là, été.\n'.encode('latin-1') * 500)  # 27% not UTF-8
    return root


@pytest.mark.parametrize('args,words', [
    (['--tokenizer={r}/missing_tok'], ['missing_tok not found']),
    (['--tokenizer={r}/no_tokenizer'], ['no tokenizer at', 'tokenizer.json']),
    (['--tokenizer={r}/garbage_tok'], ['garbage_tok/tokenizer.tiktoken', 'line 1']),
    (['--tokenizer=bpe', '--vocab_size=0'], ['--vocab_size=0 is too small']),
    (['--tokenizer=bpe', '--vocab_size=-5'], ['--vocab_size=-5 is too small']),
    (['--tokenizer=char', '--vocab_size=4096'], ['--vocab_size is for --tokenizer=bpe']),
    (['--val_fraction=0'], ['--val_fraction=0.0 must be above 0 and below 1', 'training needs a validation split']),
    (['--val_fraction=1.5'], ['--val_fraction=1.5 must be above 0 and below 1']),
    (['--input={r}/empty_dir'], ['folder', 'empty_dir holds no files']),
    (['--input={r}/numbers.jsonl'], ['numbers.jsonl:1', "field 'text' is 5, not a string"]),
    (['--input={r}/nulls.jsonl'], ['nulls.jsonl:2', "field 'text' is null, not a string"]),
    (['--out_dir={r}/a_file/data'], ['cannot make the folder', 'a_file/data/x/', 'Not a directory']),
    (['--vocab_size=abc'], ["--vocab_size: invalid int value: 'abc'", 'python prepare.py --help']),
    (['--tokeniser=char'], ['unrecognized arguments: --tokeniser=char', 'python prepare.py --help']),
    (['--workers=-2'], ['--workers=-2', '1 or more']),
    (['--tokenizer=bpe', '--bpe_train_mb=0'], ['--bpe_train_mb=0 must be more than 0']),
    (['--tokenizer=bpe', '--bpe_train_mb=-1'], ['--bpe_train_mb=-1 must be more than 0']),
    (['--input={r}/alpaca.json'], ['alpaca.json', 'reads .txt and .jsonl', 'python -c', '> alpaca.jsonl']),
    (['--input={r}/random.bin'], ['random.bin does not look like text', 'NUL bytes']),
    (['--input={r}/latin1.txt'], ['latin1.txt does not look like text', 'bytes are not UTF-8', 'convert it to UTF-8']),
    (['--tokenizer={r}/data/x'], ['data/x holds a dataset made with --tokenizer=char, not a trained bpe']),
    (['--tokenizer_only', '--tokenizer=char'], ['--tokenizer_only trains a bpe: drop --tokenizer=char']),
    (['--tokenizer_only', '--tokenizer=bpe'], ['data/x/ holds a dataset', 'choose another name']),
    (['--tokenizer_only', '--tokenizer=bpe', '--vocab_size=abc'], ["invalid int value: 'abc'", 'prepare.py --help']),
])
def test_bad_cli_input_is_one_line_and_overwrites_nothing(prepared, args, words):
    r = prepared
    d = r / 'data' / 'x'
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    args = [a.format(r=r) for a in args]
    if not any(a.startswith('--input') for a in args):
        args.append(f'--input={r}/a.jsonl')
    if not any(a.startswith('--tokenizer') for a in args):
        args.append('--tokenizer=char')
    if not any(a.startswith('--out_dir') for a in args):
        args.append(f'--out_dir={r}/data')
    code, out, err = cli('x', *args)
    assert_one_line_error(code, err, *words)
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before


def test_cli_usage_errors_are_one_line_and_help_still_works():
    """argparse printed a usage block and its message: 8 lines, no "error:" first."""
    code, _, err = cli()
    assert_one_line_error(code, err, 'required: name', 'python prepare.py --help')
    assert code == 2
    code, out, err = cli('--help')
    assert code == 0 and out.startswith('usage: prepare.py') and '--tokenizer' in out and not err


def test_interrupt_leaves_no_complete_looking_dataset(tmp_path, monkeypatch):
    write_jsonl(tmp_path / 'a.jsonl', DOCS)
    run(tmp_path, name='x', input=[str(tmp_path / 'a.jsonl')])
    d = tmp_path / 'data' / 'x'
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    monkeypatch.setattr(prepare, 'BATCH', 100)
    calls = []

    def boom(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)
    real = prepare._encode_batch
    monkeypatch.setattr(prepare, '_encode_batch', boom)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, name='x', input=[str(tmp_path / 'a.jsonl')], val_docs=2)
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before  # old dataset intact, no temp files
    monkeypatch.setattr(prepare, '_encode_batch', real)
    with pytest.raises(KeyboardInterrupt):
        monkeypatch.setattr(prepare, '_encode_batch', boom)
        calls.clear()
        run(tmp_path, name='new', input=[str(tmp_path / 'a.jsonl')])
    assert not (tmp_path / 'data' / 'new' / 'meta.json').exists()
    assert not list((tmp_path / 'data' / 'new').glob('*.bin*'))


# A stand-in prepare.py: prepare.main() with read_units (the input, as every pass reads it) wrapped so
# that, at its 50th unit in the stage PAUSE_STAGE (cli.interrupt_note: 'while counting the input',
# 'while encoding', 'while training the bpe'), it writes PAUSE_MARKER and waits for a signal: the
# signal lands in that stage on any machine, however fast.
PAUSED = """import os, sys, time
sys.path.insert(0, {root!r})
import cli, prepare
prepare.BATCH = 200  # (many batches: the workers have work in flight when the signal comes)
real, stage, marker = prepare.read_units, os.environ['PAUSE_STAGE'], os.environ['PAUSE_MARKER']
def read_units(*a, **k):
    for n, unit in enumerate(real(*a, **k)):
        if n == 50 and cli.interrupt_note.startswith(stage) and not os.path.exists(marker):
            open(marker, 'w').close()
            time.sleep(600)  # until the test's signal (the signal rule ends the sleep: exit 128 + signal)
        yield unit
prepare.read_units = read_units
sys.argv[0] = 'prepare.py'
prepare.main()
"""


def start_paused(tmp_path, stage, *args, **kw):
    """prepare.py (the stand-in above) with args, paused in `stage` -> (Popen, its marker file)."""
    script, marker = tmp_path / 'paused_prepare.py', tmp_path / 'paused'
    script.write_text(PAUSED.format(root=str(ROOT)))
    p = subprocess.Popen([sys.executable, str(script), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env={**os.environ, 'NANOLM_DEBUG': '', 'PAUSE_STAGE': stage, 'PAUSE_MARKER': str(marker)}, **kw)
    return p, marker


@pytest.mark.slow
@pytest.mark.parametrize('sig,stage', [('SIGINT', 'while counting the input'), ('SIGINT', 'while encoding'),
                                       ('SIGTERM', 'while encoding'), ('SIGTERM', 'while counting the input')])
def test_ctrl_c_or_sigterm_with_workers_exits_cleanly(tmp_path, sig, stage):
    """Ctrl-C reaches the whole process group (main and workers), as does a scheduler's SIGTERM.
    Once, with multiprocessing.Pool, the main process then hung forever on a lock held by a dead
    worker. Now: exit 128 + the signal number (130, 143), one line, nothing left in the output
    folder, no process left. The signal comes while prepare.py is in `stage` (a stand-in that waits
    there for it: see PAUSED)."""
    import signal
    if not hasattr(os, 'killpg'):
        pytest.skip('needs POSIX process groups')
    write_jsonl(tmp_path / 'a.jsonl', DOCS * 10)
    out = tmp_path / 'out'
    out.mkdir()
    p, marker = start_paused(tmp_path, stage, 'x', '--input', tmp_path / 'a.jsonl', '--workers=2', '--tokenizer=char',
                             f'--out_dir={out}', start_new_session=True)
    try:
        wait_for(marker.exists, p, what=f'prepare.py {stage}')
        os.killpg(p.pid, getattr(signal, sig))
        _, err = p.communicate(timeout=60)  # (a hang fails here)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 128 + getattr(signal, sig), err
    lines = [l.strip() for l in err.replace('\r', '\n').splitlines() if l.strip()]
    # the line says what was going on and what it means
    assert 'Traceback' not in err and lines[-1] == f'interrupted ({sig}) {stage}: no dataset was written', err
    assert sum('interrupted' in l or 'error' in l for l in lines) == 1  # the rest is progress
    assert list(out.iterdir()) == []  # no train.bin, val.bin, meta.json, temp files or folder
    wait_for(lambda: subprocess.run(['pgrep', '-g', str(p.pid)], capture_output=True).returncode == 1, timeout=30,
             what='the end of the worker processes')  # the workers are gone too



def test_progress_lines_do_not_run_together_in_a_log(tmp_path, monkeypatch, capsys):
    """stderr that is not a terminal (a log file, a pipe) gets whole lines, not ones joined by \\r,
    and not too many of them: at most one every 0.5 s. The status lines' clock is a stand-in that
    moves 0.1 s each time it is read, so the lines come however fast this machine is."""
    import cli
    clock = [0.0]

    def tick():
        clock[0] += 0.1
        return clock[0]
    monkeypatch.setattr(cli, 'time', type('FakeTime', (), {'time': staticmethod(tick)}))
    monkeypatch.setattr(prepare, 'BATCH', 200)  # many batches: many calls to progress()
    write_jsonl(tmp_path / 'a.jsonl', DOCS * 20)
    monkeypatch.setattr(sys, 'argv', ['prepare.py', 'x', '--input', str(tmp_path / 'a.jsonl'), '--workers=2', '--tokenizer=char',
                                      f'--out_dir={tmp_path}'])
    prepare.main()  # (this module's prepare: its BATCH is the one set above)
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert '\r' not in err and lines and all(re.match(r'(counting|encoding): ', l) for l in lines), err
    assert any(l.startswith('encoding: ') for l in lines) and len(lines) <= clock[0] / 0.5 + 2, (clock[0], err)


@pytest.mark.slow
def test_ctrl_c_during_the_imports_is_one_line(tmp_path):
    """A Ctrl-C while numpy and tiktoken load (the first second of every run) was a traceback: now
    common is imported first. A stand-in numpy that sends the signal while it is imported."""
    fake = tmp_path / 'fake' / 'numpy'
    fake.mkdir(parents=True)
    (fake / '__init__.py').write_text('import os, signal\nos.kill(os.getpid(), signal.SIGINT)\n')
    code, out, err = cli('x', '--input', 'none.txt', env={'PYTHONPATH': str(tmp_path / 'fake')})
    assert code == 130 and [l for l in err.splitlines() if l.strip()] == ['interrupted (SIGINT)'], (code, err)


@pytest.mark.parametrize('tok,fails', [('char', 'train.bin'), ('bpe', 'train.bin'), ('char', 'meta.json')])
@pytest.mark.slow
def test_full_disk_is_one_line_and_keeps_the_dataset(tmp_path, tok, fails):
    """Writes fail with EFBIG past a file size limit, as with ENOSPC on a full disk: one line,
    no temp files left, the dataset prepared before byte for byte as it was. meta.json: only its
    write fails (padded here), after train.bin and val.bin were written."""
    import resource
    import signal
    write_jsonl(tmp_path / 'a.jsonl', DOCS * (30 if fails == 'train.bin' else 1))
    run(tmp_path, name='x', input=[str(tmp_path / 'a.jsonl')], tokenizer_name='bpe', vocab_size=300)
    d = tmp_path / 'data' / 'x'
    before = {p.name: p.read_bytes() for p in d.iterdir()}

    def small_files():  # in the child, before exec
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 10, 16 << 10))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the signal kills it: the write should fail instead
    args = ['x', '--input', str(tmp_path / 'a.jsonl'), f'--tokenizer={tok}', f'--out_dir={tmp_path / "data"}']
    args += ['--vocab_size=300'] if tok == 'bpe' else []
    code = (f'import sys, prepare; make = prepare.make_meta; sys.argv = {["prepare.py", *args]!r}\n'
            f'prepare.make_meta = lambda *a: dict(make(*a), padding="x" * 20000) if {fails == "meta.json"} else make(*a)\n'
            f'prepare.main()')
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, 'NANOLM_DEBUG': ''}, preexec_fn=small_files)
    words = ([f'cannot write the dataset to {d}/', 'the previous dataset there is intact'] if fails == 'train.bin'
             else [f'could not write {d}/meta.json', 'the previous version, if any, is intact'])
    assert_one_line_error(r.returncode, r.stderr, 'the write failed (File too large)', *words)
    assert not list(tmp_path.rglob('*.tmp'))
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before


@pytest.mark.slow
def test_debug_shows_the_traceback(prepared):
    r = prepared
    args = ['x', '--input', r / 'a.jsonl', f'--tokenizer={r}/garbage_tok', f'--out_dir={r}/data']
    for extra, env in (([], {}), (['--debug'], {}), ([], {'NANOLM_DEBUG': '1'})):
        code, _, err = cli(*args, *extra, env=env)
        assert code == 1 and ('Traceback' in err) == bool(extra or env), err
        assert err.strip().splitlines()[-1].startswith('error: ') and 'garbage_tok/tokenizer.tiktoken' in err


@pytest.mark.slow
def test_ctrl_c_while_training_a_bpe_says_no_tokenizer_was_written(tmp_path):
    """--tokenizer_only writes no dataset, so the line must not say that no dataset was written."""
    import signal
    write_jsonl(tmp_path / 'a.jsonl', DOCS * 10)
    out = tmp_path / 'out'
    p, marker = start_paused(tmp_path, 'while training the bpe', 'tok', '--input', tmp_path / 'a.jsonl', '--tokenizer_only',
                             f'--out_dir={out}')
    try:
        wait_for(marker.exists, p, what='the bpe training')
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
    finally:
        p.kill()
    lines = [l for l in err.splitlines() if l.strip()]
    assert p.returncode == 130 and 'Traceback' not in err, err
    assert lines[-1] == 'interrupted (SIGINT) while training the bpe: no tokenizer was written', lines
    assert not out.exists() or list(out.iterdir()) == []
