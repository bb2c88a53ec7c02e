"""The shared run machinery (cli.py, training.py, checkpoint.py) as the scripts use it: trackers, the log,
atomic writes, signals and exit codes."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, TINY, run

STUB = '''
import json, os
def init(**kw):
    if os.environ.get('STUB_FAIL'):
        raise RuntimeError('could not reach the server')
    open(os.environ['STUB_OUT'], 'a').write(json.dumps({'init': {k: v for k, v in kw.items() if k != 'config'},
                                                        'config_keys': sorted(kw['config'])}) + '\\n')
def log(row, step=None):
    open(os.environ['STUB_OUT'], 'a').write(json.dumps({'log': row, 'step': step}) + '\\n')
'''


@pytest.mark.parametrize('package', ['wandb', 'swanlab'])
def test_log_rows_go_to_the_tracker_when_asked(char_data, tmp_path, package):
    """A stand-in module records what train.py sends: the same rows as log.jsonl, stepped by iter."""
    (tmp_path / 'stub' / package).mkdir(parents=True)
    (tmp_path / 'stub' / package / '__init__.py').write_text(STUB)
    rec = tmp_path / 'rec.jsonl'
    env = {'PYTHONPATH': str(tmp_path / 'stub'), 'STUB_OUT': str(rec)}
    out = tmp_path / 'out'
    run('train.py', *TINY, f'--data_dir={char_data}', f'--out_dir={out}', '--max_iters=6', '--eval_interval=3',
        '--sample_prompt=', f'--{package}_log=True', f'--{package}_project=proj', f'--{package}_run_name=r1', env=env)
    calls = [json.loads(line) for line in rec.read_text().splitlines()]
    name_key = 'name' if package == 'wandb' else 'experiment_name'
    assert calls[0]['init'] == {'project': 'proj', name_key: 'r1'} and 'learning_rate' in calls[0]['config_keys']
    rows = [json.loads(line) for line in (out / 'log.jsonl').read_text().splitlines()]
    assert [c['step'] for c in calls[1:]] == [r['iter'] for r in rows]
    assert [c['log'] for c in calls[1:]] == [{k: v for k, v in r.items() if k != 'iter'} for r in rows]
    # a tracker that cannot start (offline, not logged in) stops the run before it trains, in one line
    p = run('train.py', *TINY, f'--data_dir={char_data}', f'--out_dir={tmp_path / "o2"}', '--max_iters=2',
            f'--{package}_log=True', env={**env, 'STUB_FAIL': '1'}, check=False)
    assert p.returncode == 1 and 'Traceback' not in p.stderr
    assert f'error: could not start {package} (RuntimeError: could not reach the server)' in p.stderr


def test_a_missing_tracker_package_is_one_line(char_data, tmp_path):
    (tmp_path / 'stub' / 'wandb').mkdir(parents=True)  # a package that fails to import, as if not installed
    (tmp_path / 'stub' / 'wandb' / '__init__.py').write_text("raise ImportError('No module named wandb')\n")
    p = run('train.py', *TINY, f'--data_dir={char_data}', f'--out_dir={tmp_path / "o"}', '--max_iters=2', '--wandb_log',
            env={'PYTHONPATH': str(tmp_path / 'stub')}, check=False)
    assert p.returncode == 1 and 'Traceback' not in p.stderr
    assert 'error: wandb_log=True needs the wandb package: pip install wandb' in p.stderr
    assert not (tmp_path / 'o' / 'ckpt.pt').exists()


def test_every_log_row_carries_its_step_time(char_data, tmp_path):
    run('train.py', *TINY, f'--data_dir={char_data}', f'--out_dir={tmp_path}', '--max_iters=5', '--sample_prompt=')
    steps = [r for r in map(json.loads, (tmp_path / 'log.jsonl').read_text().splitlines()) if 'loss' in r]
    assert [r['iter'] for r in steps] == list(range(5)) and all(0 < r['dt'] < 60 for r in steps)


def test_atomic_write_keeps_the_old_file_on_error(tmp_path):
    from cli import atomic_write
    path = tmp_path / 'f.txt'
    path.write_text('old')
    with pytest.raises(ZeroDivisionError):
        with atomic_write(path) as f:
            f.write('new, half')
            1 / 0
    assert path.read_text() == 'old' and not (tmp_path / 'f.txt.tmp').exists()
    with atomic_write(path) as f:
        f.write('new')
    assert path.read_text() == 'new'


def test_a_real_full_disk_is_named(char_data, tmp_path):
    """On a 400 KB tmpfs (needs root and mount; skipped elsewhere) the checkpoint cannot fit."""
    mnt = tmp_path / 'small'
    mnt.mkdir()
    if subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=400k', 'tmpfs', str(mnt)], capture_output=True).returncode:
        pytest.skip('cannot mount a small tmpfs here (needs root)')
    try:
        p = run('train.py', *TINY, '--n_embd=96', f'--data_dir={char_data}', f'--out_dir={mnt / "out"}', '--max_iters=2',
                '--sample_prompt=', check=False)
        assert p.returncode == 1 and 'Traceback' not in p.stderr
        assert f'error: could not write {mnt}/out/ckpt.pt: the disk is full' in p.stderr
        assert not list((mnt / 'out').glob('*.tmp'))
    finally:
        subprocess.run(['umount', str(mnt)])


def test_ctrl_c_during_the_imports_is_one_line(tmp_path):
    """The error hook and the signal rule come first, before torch: a Ctrl-C then is one line, exit 130."""
    p = subprocess.Popen([sys.executable, str(ROOT / 'train.py'), '--max_iters=1', f'--out_dir={tmp_path}'],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    time.sleep(0.6)  # common is imported; torch (about 1.5 s) is still loading
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130 and 'Traceback' not in err and 'interrupted' in err, (p.returncode, err)


def test_bench_reads_the_run_it_measures(char_data, tmp_path):
    """bench.py train: numbers from the run's own log.jsonl; bench.py sample: with and without the cache."""
    p = run('bench.py', 'train', *TINY, f'--data_dir={char_data}', '--max_iters=12', '--eval_interval=6',
            '--target_loss=100', f'--json={tmp_path / "b.json"}')
    row = json.loads((tmp_path / 'b.json').read_text())['rows'][0]
    assert row['steps'] == 12 and row['ms/iter'] > 0 and row['tokens/s'] > 0 and row['peak RSS MB'] > 0
    assert row['s to val<=100.0'] is not None and row['s to val<=100.0'] <= row['train s']
    assert 'ms/iter' in p.stdout.splitlines()[0]
    out = tmp_path / 'run'
    run('train.py', *TINY, f'--data_dir={char_data}', f'--out_dir={out}', '--max_iters=2', '--sample_prompt=')
    run('bench.py', 'sample', f'--out_dir={out}', '--new_tokens=20', f'--json={tmp_path / "s.json"}')
    rows = json.loads((tmp_path / 's.json').read_text())['rows']
    assert [r['kv cache'] for r in rows] == [True, False] and all(r['new tokens'] == 20 and r['tokens/s'] > 0 for r in rows)


def test_bench_prepare_calls_the_code_on_the_files_given(tmp_path):
    from conftest import make_text
    src = tmp_path / 'corpus.txt'
    src.write_text(make_text(2000))
    run('bench.py', 'prepare', src, '--tokenizer=char', '--bpe_vocab=300', f'--json={tmp_path / "p.json"}')
    rows = json.loads((tmp_path / 'p.json').read_text())['rows']
    enc, bpe = [r for r in rows if r['mode'] == 'prepare'], [r for r in rows if r['mode'] == 'bpe']
    assert [r['workers'] for r in enc] == [1, 2] and all(r['MB/s'] > 0 and r['tokens/s'] > 0 for r in enc)
    assert bpe[0]['vocab'] == 300 and bpe[0]['bytes/token'] > 1
