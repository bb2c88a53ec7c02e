"""dataset.py: the dataset folder's format. load_meta (a damaged meta.json says how to fix it),
open_splits (train.bin / val.bin checked against meta.json), the known datasets (a file in place is
used; a download is checked by its sha256; offline, the message says what to run), prepare_known."""
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

import dataset
import prepare
from conftest import SHARED


GOOD_META = {'tokenizer': {'kind': 'char', 'chars': 'ab'}, 'vocab_size': 3, 'dtype': 'uint16',
             'train_tokens': 10, 'val_tokens': 2}


@pytest.mark.parametrize('content,words', [
    (None, ['meta.json not found']),
    ('{"vocab_size": 3,', ['meta.json is damaged']),
    ('[1, 2]', ['meta.json is damaged', 'list']),
    (json.dumps({k: v for k, v in GOOD_META.items() if k not in ('tokenizer', 'dtype')}),
     ['meta.json is damaged', 'tokenizer, dtype']),
    (json.dumps({**GOOD_META, 'tokenizer': {'kind': 'bpe', 'pat_str': 'x', 'special': {}, 'ranks_file': 'gone'}}),
     ['cannot load the tokenizer', 'gone']),
    (json.dumps({**GOOD_META, 'tokenizer': 'char'}), ['cannot load the tokenizer', 'not a tokenizer spec']),
])
def test_damaged_meta_says_rerun_prepare(tmp_path, content, words):
    d = tmp_path / 'mydata'
    d.mkdir()
    if content is not None:
        (d / 'meta.json').write_text(content)
    with pytest.raises(ValueError) as e:
        dataset.load_meta(d)
    msg = str(e.value)
    assert '\n' not in msg and msg.endswith('rerun: python prepare.py mydata'), msg
    for w in words:
        assert w in msg, (w, msg)
    (d / 'meta.json').write_text(json.dumps(GOOD_META))
    tok, meta = dataset.load_meta(d)  # and the good one loads
    assert tok.encode('ab') == [0, 1] and meta['vocab_size'] == 3


# ----------------------------------------------------------------------------- known datasets

class FakeResponse:
    def __init__(self, data):
        self.data = data

    def read(self):
        return self.data

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def test_known_dataset_uses_a_file_already_in_place(tmp_path, monkeypatch):
    def no_network(*a, **k):
        raise AssertionError('must not download')
    monkeypatch.setattr(dataset.urllib.request, 'urlopen', no_network)
    raw = tmp_path / 'data' / 'shakespeare_char' / 'input.txt'
    raw.parent.mkdir(parents=True)
    raw.write_text('First Citizen:\nBefore we proceed any further, hear me speak.\n' * 20)
    meta = prepare.prepare('shakespeare_char', out_dir=str(tmp_path / 'data'), workers=1)
    assert meta['tokenizer']['kind'] == 'char' and meta['train_tokens'] + meta['val_tokens'] == len(raw.read_text())


@pytest.mark.parametrize('out_dir', ['data', 'x/dl'])
def test_known_dataset_without_network_or_file(tmp_path, monkeypatch, capsys, out_dir):
    """The command it suggests must work: with --out_dir when train.py's data_dir is not data/.
    And no empty folder is left behind."""
    import urllib.error

    def offline(*a, **k):
        raise urllib.error.URLError('no network')
    monkeypatch.setattr(dataset.urllib.request, 'urlopen', offline)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        prepare.prepare('verdict', out_dir=out_dir, workers=1)
    assert e.value.code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    for w in ('the-verdict.txt', str(Path(out_dir) / 'verdict'), 'no network'):
        assert w in err
    hint = 'python prepare.py verdict --input PATH' + ('' if out_dir == 'data' else f' --out_dir {out_dir}')
    assert err.endswith(hint), err
    assert list(tmp_path.iterdir()) == []  # no data/verdict/ (or x/dl/verdict/) left empty


def test_download_is_checked_by_sha256(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(dataset.urllib.request, 'urlopen', lambda *a, **k: FakeResponse(b'not the verdict'))
    with pytest.raises(SystemExit):
        dataset.fetch('verdict', out_dir=str(tmp_path))
    assert 'sha256' in capsys.readouterr().err
    assert not (tmp_path / 'verdict').exists()  # nothing saved, not even a folder
    real = SHARED / 'the-verdict.txt'
    if not real.exists():
        pytest.skip('needs ../shared/data/the-verdict.txt for the good download')
    data = real.read_bytes()
    assert hashlib.sha256(data).hexdigest() == dataset.KNOWN['verdict']['sha256']
    monkeypatch.setattr(dataset.urllib.request, 'urlopen', lambda *a, **k: FakeResponse(data))
    path = dataset.fetch('verdict', out_dir=str(tmp_path))
    assert Path(path).read_bytes() == data and Path(path).name == 'the-verdict.txt'


def test_open_splits_checks_each_file_against_meta(char_data, tmp_path, capsys):
    import shutil
    d = tmp_path / 'tiny'
    shutil.copytree(char_data / 'tiny', d)
    _, meta = dataset.load_meta(d)
    data = dataset.open_splits(d, meta, 32)
    assert len(data['train']) == meta['train_tokens'] and len(data['val']) == meta['val_tokens']
    assert data['train'].dtype == np.uint16
    for block_size, words in ((meta['val_tokens'], 'tokens, not enough for one block of block_size='), ):
        with pytest.raises(SystemExit):
            dataset.open_splits(d, meta, block_size)
        assert words in capsys.readouterr().err
    with open(d / 'val.bin', 'r+b') as f:
        f.truncate(10)
    with pytest.raises(SystemExit):
        dataset.open_splits(d, meta, 32)
    assert 'val.bin has 10 bytes but meta.json says' in capsys.readouterr().err
    (d / 'val.bin').unlink()
    with pytest.raises(SystemExit):
        dataset.open_splits(d, meta, 32)
    assert capsys.readouterr().err.strip() == f'error: {d}/val.bin is missing; rerun: python prepare.py tiny'


def test_prepare_known_runs_the_command_a_user_would(monkeypatch, capsys):
    """train.py imports no command: it runs `python prepare.py <name>` and leaves with its exit code."""
    ran = []
    monkeypatch.setattr(dataset.subprocess, 'run', lambda cmd: ran.append(cmd) or type('P', (), {'returncode': 0}))
    said = []
    dataset.prepare_known('verdict', 'my data', say=said.append)
    assert ran[0][0] == sys.executable and ran[0][1].endswith('prepare.py') and ran[0][2:] == ['verdict', '--out_dir', 'my data', '--workers=1']
    assert said == ["my data/verdict/ is not prepared yet; running: python prepare.py verdict --out_dir 'my data'"]
    monkeypatch.setattr(dataset.subprocess, 'run', lambda cmd: type('P', (), {'returncode': 3}))
    with pytest.raises(SystemExit) as e:
        dataset.prepare_known('verdict', 'data', say=said.append)
    assert e.value.code == 3 and said[-1] == 'data/verdict/ is not prepared yet; running: python prepare.py verdict'


