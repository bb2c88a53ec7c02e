"""Shared test helpers. Tests run offline: GPT-2's BPE comes from ../shared/data/tiktoken_cache
when that folder exists; tests that need it (or other real data) skip otherwise.

Test files follow the modules (test_cli.py for cli.py, test_training.py for training.py, ...).
Tests that start a script in a subprocess carry @pytest.mark.slow: `pytest -m "not slow"` is the
quick answer. Shared, expensive things are session fixtures here: char_data (a prepared char
dataset), tiny_run (one tiny trained run that many tests read or copy), sft_base.
run() starts a script as `python script args` would, but forked from a helper that imported torch
once (ScriptForker): each run skips 2-4 s of imports. Tests that need a real process of their own
(signals to a process group, torchrun, stand-in packages on PYTHONPATH) use subprocess directly.
No test waits a guessed time: they wait for what a program shows (a line, a file, a stand-in that
blocks until the test signals it: see start_paused)."""
import contextlib
import io
import json
import os
import runpy
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / 'shared' / 'data'
if (SHARED / 'tiktoken_cache').is_dir():
    os.environ.setdefault('TIKTOKEN_CACHE_DIR', str(SHARED / 'tiktoken_cache'))
sys.path.insert(0, str(ROOT))
# One thread for torch, here and in every script the tests start: models this small run as fast on
# one, and on a shared machine a second thread mostly waits at barriers for a core (several times
# slower under load). Set before torch is imported anywhere; a test may still ask for more.
os.environ.setdefault('OMP_NUM_THREADS', '1')


def shared_file(name):
    """Path of a file in ../shared/data, or skip the test that needs it."""
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"needs ../shared/data/{name} (real data, not shipped with the project)")
    return path


def run(script, *args, cwd=ROOT, check=True, timeout=300, env=None):
    """Run one of the project's scripts the way a user does; return the CompletedProcess. The process
    is forked from a helper that has already imported torch (see ScriptForker): `python script args`
    from there on, without the seconds of import each run would repeat."""
    env = {**os.environ, **(env or {})}
    argv = [str(ROOT / script), *map(str, args)]
    p = FORKER.run(argv, cwd, env, timeout) if FORKER.usable(env) else subprocess.run(
        [sys.executable, *argv], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and p.returncode != 0:
        raise AssertionError(f"{script} {' '.join(map(str, args))} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


# The helper's side. It reads one request a line ({argv, cwd, env, stdin, out, err}), forks, and
# answers the child's pid, then its exit code. The child becomes `python argv...`: the script's folder
# first on sys.path, the request's cwd, environment, stdin (a file, or /dev/null) and Python's own signal
# handlers; the script runs as __main__ and the interpreter exits as after any script (SystemExit,
# an uncaught exception through sys.excepthook, atexit). Nothing of the project is imported before
# the fork, and the helper runs no torch op (no thread pool to break), so every run starts clean.
FORK_HELPER = """import gc, json, os, random, runpy, signal, sys
for name in ('torch', 'torch._dynamo', 'torch.distributed', 'numpy', 'tiktoken'):
    try:
        __import__(name)  # (torch._dynamo: torch imports it at the first optimizer, 1-2 s)
    except ImportError:
        pass
threads = os.environ.get('OMP_NUM_THREADS')
gc.freeze()  # what is here now stays out of every collection: a child's exit does not walk (and copy) torch's objects
while True:
    line = sys.stdin.readline()
    if not line:
        break
    req = json.loads(line)
    pid = os.fork()
    if pid:
        print(json.dumps({'pid': pid}), flush=True)
        print(json.dumps({'code': os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])}), flush=True)
        continue
    for fd, path, flags in ((0, req['stdin'] or os.devnull, os.O_RDONLY), (1, req['out'], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                            (2, req['err'], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
        os.dup2(os.open(path, flags), fd)
    os.chdir(req['cwd'])
    os.environ.clear()
    os.environ.update(req['env'])
    signal.signal(signal.SIGINT, signal.default_int_handler)
    random.seed()
    if 'torch' in sys.modules and os.environ.get('OMP_NUM_THREADS') != threads:
        import torch
        torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS') or os.cpu_count()))
    sys.argv, script = req['argv'], os.path.abspath(req['argv'][0])
    sys.path[0] = os.path.dirname(script)
    runpy.run_path(script, run_name='__main__')
    sys.exit(0)
"""


class ScriptForker:
    """`python script args` for run(), forked from a helper process that imported torch once (each
    fresh interpreter would spend 2-3 s importing torch and torch._dynamo: most of a tiny run).
    Linux only; NANOLM_TEST_FORK=0 turns it off. A request whose PYTHONPATH differs from this
    process's (a stand-in package) gets a real subprocess: the helper's sys.path is set."""

    def __init__(self):
        self.proc, self.lock, self.dir = None, threading.Lock(), None

    def usable(self, env):
        return (sys.platform == 'linux' and os.environ.get('NANOLM_TEST_FORK', '1') != '0'
                and env.get('PYTHONPATH') == os.environ.get('PYTHONPATH'))

    def _reply(self, timeout=None):
        """The helper's next line, as a dict; None after `timeout` s without one."""
        while b'\n' not in self.buf:
            if not select.select([self.proc.stdout], [], [], timeout)[0]:
                return None
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            if not chunk:
                raise RuntimeError('the test helper that forks the scripts died')
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b'\n')
        return json.loads(line)

    def run(self, argv, cwd, env, timeout, input=None):
        """subprocess.run([python, *argv], cwd, env, timeout, input, capture_output=True, text=True), forked."""
        with self.lock:
            if self.proc is None:
                self.dir = tempfile.mkdtemp(prefix='nanolm-fork-')
                self.proc = subprocess.Popen([sys.executable, '-c', FORK_HELPER], stdin=subprocess.PIPE,
                                             stdout=subprocess.PIPE, bufsize=0, cwd=ROOT)
                self.buf = b''
            out, err, stdin = (os.path.join(self.dir, name) for name in ('out', 'err', 'in'))
            if input is not None:
                Path(stdin).write_text(input, encoding='utf-8')
            req = {'argv': argv, 'cwd': str(cwd), 'env': env, 'stdin': stdin if input is not None else '', 'out': out, 'err': err}
            self.proc.stdin.write((json.dumps(req) + '\n').encode())
            pid = self._reply()['pid']
            reply = self._reply(timeout)
            if reply is None:  # as subprocess.run does: kill it, then say so
                os.kill(pid, signal.SIGKILL)
                self._reply()
                raise subprocess.TimeoutExpired(argv, timeout)
            read = lambda p: Path(p).read_text(encoding='utf-8', errors='replace')
            return subprocess.CompletedProcess([sys.executable, *argv], reply['code'], read(out), read(err))

    def close(self):
        if self.proc is not None:
            self.proc.stdin.close()
            self.proc.wait(30)
            shutil.rmtree(self.dir, ignore_errors=True)


FORKER = ScriptForker()


@pytest.fixture(scope='session', autouse=True)
def _close_forker():
    yield
    FORKER.close()


def make_text(n_lines=600, seed=0):
    """Deterministic English-like text with enough structure for a tiny model to learn."""
    import random
    rng = random.Random(seed)
    subjects = ['the cat', 'a dog', 'my friend', 'the old man', 'her sister', 'the king']
    verbs = ['sees', 'likes', 'finds', 'calls', 'follows', 'remembers']
    objects = ['the red ball', 'a small house', 'the river', 'an open door', 'the quiet garden']
    return ''.join(f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}.\n" for _ in range(n_lines))


def assert_one_line_error(p, expected):
    """p (a CompletedProcess) failed with one line on stderr naming the problem, and no traceback."""
    assert p.returncode != 0, p.stdout[-2000:]
    assert 'Traceback' not in p.stderr, p.stderr
    errors = [line for line in p.stderr.splitlines() if line.startswith('error: ')]
    assert len(errors) == 1, p.stderr
    assert expected in errors[0], errors[0]


def run_here(script, *args, check=False):
    """Run one of the project's scripts in this process (runpy), as `python script args` would, and
    return a CompletedProcess (returncode, stdout, stderr). For settings and inputs a script refuses
    before it trains: a subprocess would only add the torch import (seconds) to each case. An
    uncaught exception goes through cli's hook, as it would at the top of a process. The signal
    handlers and sys.argv are put back after. (check: accepted and unused, so that a call to run()
    reads the same; run_here never raises for a non-zero exit.)"""
    import cli
    argv, handlers, debug = sys.argv, [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)], cli.DEBUG
    out, err = io.StringIO(), io.StringIO()
    sys.argv, cli.DEBUG, code = [str(ROOT / script), *map(str, args)], False, 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                runpy.run_path(str(ROOT / script), run_name='__main__')
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
            except Exception as e:  # noqa: BLE001 -- what the process's excepthook would print
                cli._excepthook(type(e), e, e.__traceback__)
                code = 1
    finally:
        sys.argv, cli.DEBUG, cli.stop_signal, cli.interrupt_note = argv, debug, 0, ''
        signal.signal(signal.SIGINT, handlers[0])
        signal.signal(signal.SIGTERM, handlers[1])
    return subprocess.CompletedProcess([script, *args], code, out.getvalue(), err.getvalue())


def wait_for(condition, proc=None, timeout=120, what='the event'):
    """Poll until condition() is true: an event the program shows (a file, a log row). Fails at once
    when proc ends first, and after `timeout` s (a hang, not a slow machine: generous on purpose)."""
    t0 = time.monotonic()
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f'the program ended ({proc.returncode}) before {what}')
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f'no {what} after {timeout} s')
        time.sleep(0.005)


# A stand-in run: the script, with training.cosine_lr (called at the top of every iteration by all
# training scripts) wrapped so that, at iteration PAUSE_AT, it writes PAUSE_MARKER (+ .<rank>) and
# waits for a signal. The test waits for the file and then sends its signal: the stop lands exactly
# there, however fast the machine. Once per out_dir marker: a resumed run does not pause again.
PAUSED = """import os, runpy, sys, time
sys.path.insert(0, {root!r})
import cli, training
lr, at, marker = training.cosine_lr, int(os.environ['PAUSE_AT']), os.environ['PAUSE_MARKER'] + '.' + os.environ.get('RANK', '0')
def cosine_lr(it, *a, **k):
    if it == at and not os.path.exists(marker):
        open(marker, 'w').close()
        t0 = time.monotonic()  # until the test's signal (the script's handler notes it), then this step goes on
        while not cli.stop_signal and time.monotonic() - t0 < 600:
            time.sleep(0.005)
    return lr(it, *a, **k)
training.cosine_lr = cosine_lr
sys.argv[0] = {script!r}
runpy.run_path({script!r}, run_name='__main__')
"""


def paused_script(script, folder):
    """Write the stand-in of `script` (see PAUSED) into folder; returns its path."""
    path = Path(folder) / f'paused_{Path(script).stem}.py'
    path.write_text(PAUSED.format(root=str(ROOT), script=str(ROOT / script)))
    return path


def start_paused(script, args, at, marker, env=None, torchrun=0, **kw):
    """Popen of `script args` (under torchrun with `torchrun` processes when > 0) that stops at
    iteration `at` until signalled; wait with wait_for(lambda: Path(f'{marker}.0').exists())."""
    stand_in = paused_script(script, Path(marker).parent)
    launch = [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={torchrun}'] if torchrun else [sys.executable]
    env = {**os.environ, 'PAUSE_AT': str(at), 'PAUSE_MARKER': str(marker), **({'OMP_NUM_THREADS': '1'} if torchrun else {}), **(env or {})}
    return subprocess.Popen([*launch, str(stand_in), *map(str, args)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **kw)


@pytest.fixture(scope='session')
def char_data(tmp_path_factory):
    """A char-level dataset prepared by prepare.prepare() (in this process: the command line is
    tested in test_prepare.py): returns its data_dir (dataset name 'tiny')."""
    import prepare
    d = tmp_path_factory.mktemp('data')
    src = d / 'tiny.txt'
    src.write_text(make_text())
    prepare.prepare('tiny', input=[str(src)], tokenizer_name='char', out_dir=str(d), quiet=True, workers=1)
    return d


# Settings for a tiny, fast training run (seconds on 2 cores).
TINY = ['--dataset=tiny', '--n_layer=2', '--n_head=2', '--n_embd=32', '--block_size=32', '--batch_size=4',
        '--learning_rate=3e-3', '--warmup_iters=5', '--eval_iters=4', '--log_interval=5', '--peak_flops=1e12',
        '--sample_tokens=20', '--dtype=float32']  # dtype pinned: tests compare numbers across runs


V = 97  # tiny_model's vocabulary


def tiny_model(arch='gpt2', **kw):
    """A 2-layer, 32-wide model of arch (kw: any other ModelConfig field), the same weights at every call."""
    import torch
    from model import GPT, make_config
    torch.manual_seed(0)
    return GPT(make_config(arch, **{**dict(block_size=32, vocab_size=V, n_layer=2, n_head=4, n_embd=32), **kw}))


def log_rows(out):
    """A run's out/log.jsonl, a dict a line."""
    return [json.loads(line) for line in (Path(out) / 'log.jsonl').read_text().splitlines()]


# A run to stop and resume: dropout > 0, so that resuming must restore torch's RNG, not only the batch sampler
RESUME_RUN = [*TINY, '--batch_size=16', '--dropout=0.1', '--max_iters=60', '--lr_decay_iters=60', '--eval_interval=20',
              '--sample_prompt=']


def losses(out):
    """({iter: train loss}, {iter: val loss}) of a run's log."""
    rows = log_rows(out)
    return ({r['iter']: r['loss'] for r in rows if 'loss' in r}, {r['iter']: r['val_loss'] for r in rows if 'val_loss' in r})


def train(data, out, *args, check=True):
    """train.py with RESUME_RUN's settings on the data folder `data`, into out."""
    return run('train.py', *RESUME_RUN, f'--data_dir={data}', f'--out_dir={out}', *args, check=check)

TINY_RUN = ['--max_iters=10', '--eval_interval=5', '--sample_prompt=']


@pytest.fixture(scope='session')
def tiny_run(char_data, tmp_path_factory):
    """One tiny run of train.py (TINY + TINY_RUN: 10 iterations, evals at 5 and 10), trained once for
    the whole session. Tests read it, or copy it (shutil.copytree) before they change anything."""
    out = tmp_path_factory.mktemp('tiny_run') / 'out'
    run('train.py', *TINY, *TINY_RUN, f'--data_dir={char_data}', f'--out_dir={out}')
    return out


def make_chats(n=240, seed=0):
    """Chat records a tiny model can learn (each subject has its own answers); every third has two turns."""
    import random
    rng = random.Random(seed)
    subjects = ['the cat', 'a dog', 'my friend', 'the old man', 'her sister', 'the king']
    objects = ['the red ball', 'a small house', 'the river', 'an open door', 'the quiet garden', 'the sea']
    out = []
    for i in range(n):
        k = rng.randrange(len(subjects))
        s = subjects[k]
        msgs = [{'role': 'user', 'content': f'what does {s} see?'}, {'role': 'assistant', 'content': f'{s} sees {objects[k]}.'}]
        if i % 3 == 0:
            msgs += [{'role': 'user', 'content': 'and then?'}, {'role': 'assistant', 'content': f'{s} finds {objects[-1 - k]}.'}]
        out.append({'messages': msgs})
    return out


@pytest.fixture(scope='session')
def sft_base(tmp_path_factory):
    """For finetune_sft.py: a tiny base pretrained by train.py on a 300-token bpe (which reserves
    the chat tokens), and a file of chat records. -> (base out_dir, chat .jsonl)."""
    import json
    d = tmp_path_factory.mktemp('sft')
    (d / 'tiny.txt').write_text(make_text())
    run('prepare.py', 'tinybpe', '--input', d / 'tiny.txt', '--tokenizer=bpe', '--vocab_size=300', '--out_dir', d / 'data')
    run('train.py', *TINY, '--dataset=tinybpe', f'--data_dir={d / "data"}', f'--out_dir={d / "base"}', '--block_size=64',
        '--max_iters=30', '--eval_interval=30', '--sample_prompt=')
    chats = d / 'chats.jsonl'
    chats.write_text(''.join(json.dumps(r) + '\n' for r in make_chats()))
    return d / 'base', chats
