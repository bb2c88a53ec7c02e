"""Never lose a run, end to end (all slow): exact resume after a stop between evals, a Ctrl-C or
SIGTERM (alone, under torchrun, in both training scripts), kill -9 during checkpoint writes, NaN
handling, extending a finished run. Signals land where a stand-in run waits for them (conftest's
start_paused), never after a guessed time. Checkpoint files themselves: tests/test_checkpoint.py."""
import os
import random
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import RESUME_RUN as RUN, ROOT, log_rows, losses, run, start_paused, train, wait_for
from checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

@pytest.fixture(scope='module')
def reference(char_data, tmp_path_factory):
    """The uninterrupted run every other run is compared with."""
    out = tmp_path_factory.mktemp('ref') / 'out'
    train(char_data, out)
    return losses(out)


def stop_at(script, args, it, out, sig, **kw):
    """Run `script args`, stopped by `sig` at iteration `it` (a stand-in run waits there for the
    signal); -> (returncode, stdout, stderr)."""
    marker = out.parent / f'{out.name}.paused'
    proc = start_paused(script, args, it, marker, **kw)
    try:
        wait_for(Path(f'{marker}.0').exists, proc, what=f'iteration {it}')
        if kw.get('start_new_session'):
            os.killpg(proc.pid, sig)  # as a terminal's Ctrl-C: to torchrun and every worker
        else:
            proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
    return proc.returncode, stdout, stderr


def test_stop_and_resume_is_the_same_run(char_data, tmp_path, reference):
    out = tmp_path / 'out'
    train(char_data, out, '--max_iters=40')  # (a stop between evals: see the signal tests)
    with open(out / 'log.jsonl', 'a') as f:  # a line cut short by kill -9, and lines edited by hand: history only
        f.write('oops}\n{"garbage}\n[1, 2]\n{"iter": 41, "lo')
    p = train(char_data, out, '--init_from=resume')
    assert 'resuming from' in p.stdout and 'max_iters 40 -> 60' in p.stdout
    assert losses(out) == reference  # every per-iteration loss and every val loss, exactly


@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_and_resumes_exactly(char_data, tmp_path, reference, sig):
    out = tmp_path / 'my run ü'  # the printed resume command must survive a space and non-ASCII
    at = random.Random(sig).randint(5, 45)
    code, stdout, stderr = stop_at('train.py', [*RUN, f'--data_dir={char_data}', f'--out_dir={out}'], at, out, sig)
    assert code == 128 + sig, stderr
    assert 'Traceback' not in stderr and '--init_from=resume' in stdout
    stopped_at = load_checkpoint(out / 'ckpt.pt')['iter_num']
    assert stopped_at == max(losses(out)[0]) + 1 == at + 1  # the checkpoint holds the step that had just finished
    cmd = shlex.split(stdout.split('Resume with: ')[1].splitlines()[0])  # run exactly what the user is told to run
    assert cmd[0] == 'python' and cmd[-1] == '--init_from=resume'
    subprocess.run([sys.executable, *cmd[1:]], cwd=ROOT, check=True, capture_output=True, timeout=300)
    assert losses(out) == reference


# A stand-in train.py whose checkpoint writes, from iteration PAUSE_AT on, stop halfway through the
# temp file and wait there (PAUSE_MARKER says so): a kill -9 then lands in the middle of a write.
HALF_WRITE = """import io, os, runpy, sys, time
sys.path.insert(0, {root!r})
import torch
save, at, marker = torch.save, int(os.environ['PAUSE_AT']), os.environ['PAUSE_MARKER']
def half_then_wait(obj, f, *a, **k):
    if str(getattr(f, 'name', '')).endswith('ckpt.pt.tmp') and obj.get('iter_num', 0) >= at:
        buf = io.BytesIO()
        save(obj, buf, *a, **k)
        f.write(buf.getvalue()[:len(buf.getvalue()) // 2])
        f.flush()
        open(marker, 'w').close()
        time.sleep(600)  # until the test's kill -9
    return save(obj, f, *a, **k)
torch.save = half_then_wait
sys.argv[0] = {script!r}
runpy.run_path({script!r}, run_name='__main__')
"""


def test_kill_9_during_checkpoint_writes_never_corrupts(char_data, tmp_path, reference):
    """Checkpoint at every iteration and SIGKILL the run again and again: at chosen iterations,
    and (every other time) in the middle of a checkpoint's temp file (a stand-in run waits there).
    After every kill the checkpoint on disk loads; the run resumed after all the kills equals the
    reference run loss for loss."""
    out = tmp_path / 'out'
    half_write = tmp_path / 'half_write_train.py'
    half_write.write_text(HALF_WRITE.format(root=str(ROOT), script=str(ROOT / 'train.py')))
    rng = random.Random(0)
    args = [*RUN, f'--data_dir={char_data}', f'--out_dir={out}', '--eval_interval=1', '--eval_iters=1', '--keep_last_n=2']
    for n, target in enumerate(sorted(rng.sample(range(3, 55), 6))):
        resume = ['--init_from=resume'] if (out / 'ckpt.pt').exists() else []
        marker = tmp_path / f'kill{n}'
        if n % 2:  # in the middle of a checkpoint write
            proc = subprocess.Popen([sys.executable, str(half_write), *args, *resume], cwd=ROOT, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, env={**os.environ, 'PAUSE_AT': str(target), 'PAUSE_MARKER': str(marker)})
            wait_for(marker.exists, proc, what=f'a checkpoint write at iter {target}')
            assert (out / 'ckpt.pt.tmp').exists()
        else:  # at an iteration
            proc = start_paused('train.py', [*args, *resume], target, marker)
            wait_for(Path(f'{marker}.0').exists, proc, what=f'iteration {target}')
        proc.kill()
        proc.communicate()
        ck = load_checkpoint(out / 'ckpt.pt')
        assert 0 < ck['iter_num'] <= target + 1 and set(ck['model']) == set(torch.load(out / 'ckpt.pt', weights_only=True)['model'])
    train(char_data, out, '--eval_interval=1', '--eval_iters=1', '--keep_last_n=2', '--init_from=resume')
    assert losses(out)[0] == reference[0]
    assert len([f for f in os.listdir(out) if f.startswith('ckpt_')]) == 2


def test_extending_a_finished_run_keeps_the_lr_schedule(char_data, tmp_path):
    out = tmp_path / 'out'
    args = ['--lr_decay_iters=0', '--warmup_iters=2', '--learning_rate=1e-2', '--min_lr=1e-3']
    train(char_data, out, *args, '--max_iters=20')
    p = train(char_data, out, *args, '--max_iters=30', '--init_from=resume')
    assert 'the LR still decays to min_lr at iter 20' in p.stdout
    lrs = {r['iter']: r['lr'] for r in log_rows(out) if 'lr' in r}
    assert lrs[19] > 1e-3 and all(lrs[i] == pytest.approx(1e-3) for i in range(20, 30))  # no jump back up


def test_stop_on_the_last_step_still_finishes(char_data, tmp_path):
    """A Ctrl-C during the last step saves at max_iters; the resume must still do the final
    eval and best.pt rather than say there is nothing left to do."""
    out = tmp_path / 'out'
    stop_at('train.py', [*RUN, f'--data_dir={char_data}', f'--out_dir={out}', '--max_iters=200', '--lr_decay_iters=200'],
            20, out, signal.SIGINT)
    stopped_at = load_checkpoint(out / 'ckpt.pt')['iter_num']
    p = train(char_data, out, f'--max_iters={stopped_at}', '--lr_decay_iters=200', '--init_from=resume')
    assert 'already at iter' not in p.stdout and f'eval {stopped_at}:' in p.stdout
    assert losses(out)[1].get(stopped_at) is not None and load_checkpoint(out / 'ckpt.pt')['last_eval'] == stopped_at
    p = train(char_data, out, f'--max_iters={stopped_at}', '--lr_decay_iters=200', '--init_from=resume')
    assert 'already at iter' in p.stdout  # now there is nothing left to do


def test_nonfinite_loss_stops_without_touching_the_checkpoint(char_data, tmp_path):
    out = tmp_path / 'out'
    train(char_data, out, '--max_iters=20')
    before = (out / 'ckpt.pt').read_bytes()
    bad = ['--init_from=resume', '--max_iters=40', '--learning_rate=1e30', '--warmup_iters=0', '--grad_clip=0']
    p = train(char_data, out, *bad, check=False)
    assert p.returncode == 1 and 'Traceback' not in p.stderr
    assert 'error: loss is nan at iter' in p.stderr and 'learning_rate' in p.stderr
    assert (out / 'ckpt.pt').read_bytes() == before
    p = train(char_data, out, *bad, '--skip_nonfinite=True')
    skipped = load_checkpoint(out / 'ckpt.pt')['skipped']
    assert 0 < skipped <= 19 and 'step skipped' in p.stdout


def test_ctrl_c_under_torchrun_saves_and_resumes_exactly(char_data, tmp_path):
    """Ctrl-C in a terminal reaches torchrun and both workers (which torchrun also sends
    SIGINT, then SIGTERM): the run still saves once and resumes as if never stopped."""
    def torchrun(out, *args, **kw):
        cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', str(ROOT / 'train.py'),
               *RUN, f'--data_dir={char_data}', f'--out_dir={out}', '--max_iters=40', '--lr_decay_iters=40', *args]
        return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, 'OMP_NUM_THREADS': '1'}, **kw)
    ref = tmp_path / 'ref'
    p = torchrun(ref)
    assert p.wait(timeout=300) == 0, p.communicate()[1][-2000:]
    out = tmp_path / 'out'
    args = [*RUN, f'--data_dir={char_data}', f'--out_dir={out}', '--max_iters=40', '--lr_decay_iters=40']
    marker = tmp_path / 'paused'
    p = start_paused('train.py', args, 15, marker, torchrun=2, start_new_session=True)  # its own process group, like a terminal's job
    try:
        wait_for(lambda: Path(f'{marker}.0').exists() and Path(f'{marker}.1').exists(), p, what='iteration 15 on both ranks')
        os.killpg(p.pid, signal.SIGINT)
        stdout, stderr = p.communicate(timeout=300)
    finally:
        p.kill()
    assert 'Resume with: torchrun --standalone --nproc_per_node=2' in stdout, stderr[-2000:]
    assert load_checkpoint(out / 'ckpt.pt')['world_size'] == 2
    p = torchrun(out, '--init_from=resume')
    assert p.wait(timeout=300) == 0, p.communicate()[1][-2000:]
    assert losses(out) == losses(ref)


def both_scripts_args(script, char_data, sft_base, out):
    """A short run of either training script, with dropout so that resume must restore torch's RNG too."""
    if script == 'train.py':
        return [*RUN, f'--data_dir={char_data}', f'--out_dir={out}', '--max_iters=40', '--lr_decay_iters=40']
    base, chats = sft_base
    return ['--batch_size=8', '--dropout=0.1', '--learning_rate=3e-3', '--warmup_iters=5', '--eval_iters=2', '--eval_interval=20',
            '--max_iters=40', '--peak_flops=1e12', '--sample_prompt=', f'--base_dir={base}', f'--data_file={chats}',
            f'--cache_dir={out}-cache', f'--out_dir={out}']


@pytest.mark.parametrize('script', ['train.py', 'finetune_sft.py'])
def test_both_training_scripts_stop_and_resume_exactly(script, char_data, sft_base, tmp_path):
    """One check for each script that trains: Ctrl-C in the middle, resume with the command the
    run prints, and every per-iteration loss and val loss equals those of a run never stopped."""
    run(script, *both_scripts_args(script, char_data, sft_base, tmp_path / 'ref'))
    out = tmp_path / 'out'
    code, stdout, stderr = stop_at(script, both_scripts_args(script, char_data, sft_base, out), random.Random(script).randint(5, 30),
                                   out, signal.SIGINT)
    assert code == 130 and 'Traceback' not in stderr, stderr
    assert load_checkpoint(out / 'ckpt.pt')['iter_num'] < 40
    cmd = shlex.split(stdout.split('Resume with: ')[1].splitlines()[0])
    subprocess.run([sys.executable, *cmd[1:]], cwd=ROOT, check=True, capture_output=True, timeout=300)
    assert losses(out) == losses(tmp_path / 'ref')
