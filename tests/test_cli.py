"""cli.py: what every command needs. One-line errors (die, the excepthook, --debug), the signal
rule (exit 128 + the signal; training scripts finish the step first), atomic writes and a full
disk, the bad-line policy for JSONL, progress lines. In this process where a subprocess adds
nothing; the few that need a real process (a signal during the imports, a real full disk) are slow."""
import os
import signal
import subprocess
import sys

import pytest

import cli
from conftest import ROOT, TINY, run, wait_for


def test_die_is_one_line_and_exits(capsys):
    with pytest.raises(SystemExit) as e:
        cli.die('the thing is wrong; do this instead', code=3)
    assert e.value.code == 3
    assert capsys.readouterr().err == 'error: the thing is wrong; do this instead\n'


@pytest.mark.parametrize('err,line', [
    (ValueError('meta.json is damaged'), 'error: meta.json is damaged'),
    (FileNotFoundError(2, 'No such file or directory'), 'error: [Errno 2] No such file or directory'),
    (KeyError('x'), "error: KeyError: 'x' (rerun with NANOLM_DEBUG=1 for the traceback)"),
    (KeyboardInterrupt(), 'interrupted'),
])
def test_uncaught_errors_are_one_line(capsys, monkeypatch, err, line):
    monkeypatch.setattr(cli, 'DEBUG', False)
    cli._excepthook(type(err), err, None)
    assert [x for x in capsys.readouterr().err.splitlines() if x] == [line]


def test_atomic_write_keeps_the_old_file_on_error(tmp_path):
    path = tmp_path / 'f.txt'
    path.write_text('old')
    with pytest.raises(ZeroDivisionError):
        with cli.atomic_write(path) as f:
            f.write('new, half')
            1 / 0
    assert path.read_text() == 'old' and not (tmp_path / 'f.txt.tmp').exists()
    with cli.atomic_write(path) as f:
        f.write('new')
    assert path.read_text() == 'new' and os.listdir(tmp_path) == ['f.txt']


def test_bad_line_policy_stops_naming_file_and_line_or_skips_and_counts(tmp_path, capsys):
    path = tmp_path / 'a.jsonl'
    path.write_bytes(b'\xef\xbb\xbf{"text": "one"}\n{"text": "cut off\n[1, 2]\n\n{"text": "two"}\n')  # (a BOM first)
    with pytest.raises(SystemExit) as e:
        list(cli.read_jsonl(path))
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.count('\n') == 1
    assert err.startswith(f'error: {path}:2: not valid JSON') and '--skip_bad_lines' in err
    counts = {}
    rows = list(cli.read_jsonl(path, skip_bad_lines=True, counts=counts))
    assert rows == [(f'{path}:1', {'text': 'one'}), (f'{path}:5', {'text': 'two'})] and counts == {'bad_lines': 2}
    with pytest.raises(ValueError, match='a JSON list, not an object'):
        cli.parse_json_object('[1, 2]')


def test_progress_is_whole_lines_at_most_every_interval_off_a_terminal(capsys, monkeypatch):
    """stderr not a terminal (a log, a pipe): whole lines, none joined by \\r, at most one per `every` s."""
    clock = [1000.0]
    monkeypatch.setattr(cli.time, 'time', lambda: clock[0])
    cli.end_progress()  # the next line waits `every` s from now
    shown = []
    for step in range(10):  # 0.2 s apart: with every=0.5, one line in every ~3 calls
        clock[0] += 0.2
        cli.progress(lambda step=step: shown.append(step) or f'encoding: {step}', every=0.5)
    err = capsys.readouterr().err
    assert '\r' not in err and err.splitlines() == [f'encoding: {s}' for s in shown]
    assert shown == [2, 5, 8]  # formatted only when shown (a hot loop's text is a function)


def test_a_signal_ends_a_command_with_128_plus_it(capsys, monkeypatch):
    monkeypatch.setattr(cli, 'interrupt_note', 'while encoding: no dataset was written')
    with pytest.raises(SystemExit) as e:
        cli._interrupt(signal.SIGTERM, None)
    assert e.value.code == 143
    assert capsys.readouterr().err.strip() == 'interrupted (SIGTERM) while encoding: no dataset was written'


def test_training_scripts_finish_the_step_then_stop(monkeypatch):
    """catch_stop_signals: the first signal only sets stop_signal (the loop saves, then exits); a second
    one within 2 s is the same stop (torchrun sends SIGINT, then SIGTERM); one later quits at once."""
    handlers = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)]
    said, clock = [], [50.0]
    monkeypatch.setattr(cli.time, 'time', lambda: clock[0])
    monkeypatch.setattr(cli, 'stop_signal', 0)
    try:
        cli.catch_stop_signals(said.append)
        signal.getsignal(signal.SIGINT)(signal.SIGINT, None)
        assert cli.stop_signal == signal.SIGINT and 'finishing this step, then saving' in said[0]
        clock[0] += 1
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)  # the echo: nothing more
        assert cli.stop_signal == signal.SIGINT and len(said) == 1
        clock[0] += 2
        with pytest.raises(SystemExit) as e:
            signal.getsignal(signal.SIGINT)(signal.SIGINT, None)
        assert e.value.code == 130
    finally:
        signal.signal(signal.SIGINT, handlers[0])
        signal.signal(signal.SIGTERM, handlers[1])


@pytest.mark.slow
def test_ctrl_c_during_the_imports_is_one_line(tmp_path):
    """The error hook and the signal rule come first, before torch: a Ctrl-C then is one line, exit 130.
    A stand-in torch that says it is being imported (a file) and then blocks: the signal lands
    during the imports on any machine."""
    fake = tmp_path / 'fake' / 'torch'
    fake.mkdir(parents=True)
    marker = tmp_path / 'importing'
    (fake / '__init__.py').write_text(f'import time\nopen({str(marker)!r}, "w").close()\ntime.sleep(600)\n')
    p = subprocess.Popen([sys.executable, str(ROOT / 'train.py'), '--max_iters=1', f'--out_dir={tmp_path / "out"}'],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                         env={**os.environ, 'PYTHONPATH': os.pathsep.join([str(tmp_path / 'fake'), os.environ.get('PYTHONPATH', '')])})
    try:
        wait_for(marker.exists, p, what='the torch import')
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 130 and 'Traceback' not in err and 'interrupted (SIGINT)' in err, (p.returncode, err)


@pytest.mark.slow
def test_debug_shows_the_traceback(tmp_path):
    p = run('sample.py', f'--out_dir={tmp_path}', '--debug', check=False)
    assert p.returncode != 0 and 'Traceback' in p.stderr and 'FileNotFoundError' in p.stderr
    p = run('sample.py', f'--out_dir={tmp_path}', check=False, env={'NANOLM_DEBUG': '1'})
    assert 'Traceback' in p.stderr
    p = run('train.py', '--max_itres=5', check=False, env={'NANOLM_DEBUG': '1'})  # config errors too
    assert p.returncode == 1 and 'Traceback' in p.stderr and "unknown config key 'max_itres'" in p.stderr


@pytest.mark.slow
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
