"""Scale-out on PyTorch's own engine, checked on CPU with gloo: N processes train the same model
as one (DDP and FSDP2), checkpoints move between modes, and a failing rank ends the whole job.

Tolerance: the same tokens reach the same gradients, but summed in another order (all-reduce
over processes instead of one big batch), so losses and weights agree to float32 rounding:
1e-5 relative, stated in the asserts."""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from checkpoint import load_checkpoint
from conftest import ROOT, TINY, run, wait_for

pytestmark = pytest.mark.slow  # every test here starts scripts

BASE = [*TINY, '--dropout=0.0', '--max_iters=8', '--eval_interval=4', '--sample_prompt=', '--warmup_iters=2']


def torchrun(*args, n=2, script='train.py', check=True, timeout=300):
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={n}', str(ROOT / script), *map(str, args)]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    if check:
        assert p.returncode == 0, p.stderr[-3000:]
    return p


def step_losses(out):
    return [r['loss'] for r in map(json.loads, (out / 'log.jsonl').read_text().splitlines()) if 'loss' in r]


def assert_same_run(a, b, rel=1e-5):
    la, lb = step_losses(a), step_losses(b)
    assert len(la) == len(lb) and la == pytest.approx(lb, rel=rel), (la, lb)
    wa, wb = load_checkpoint(a / 'ckpt.pt')['model'], load_checkpoint(b / 'ckpt.pt')['model']
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], rtol=1e-4, atol=1e-5), k


@pytest.fixture(scope='module')
def single(char_data, tmp_path_factory):
    """The reference: 1 process, batch 8 (= 2 x 4), 2 micro-steps per optimizer step."""
    out = tmp_path_factory.mktemp('single') / 'out'
    run('train.py', *BASE, '--batch_size=8', '--gradient_accumulation_steps=2', f'--data_dir={char_data}', f'--out_dir={out}')
    return out


@pytest.mark.parametrize('mode', ['ddp', 'fsdp'])
def test_two_processes_train_the_same_model_as_one(char_data, single, tmp_path, mode):
    """2 processes x batch 4 x 2 micro-steps each (gradient_accumulation_steps=4 in all) = 1 process x
    batch 8 x 2 micro-steps: the same tokens every step, so the same loss every step and the same weights."""
    out = tmp_path / 'out'
    p = torchrun(*BASE, '--batch_size=4', '--gradient_accumulation_steps=4', f'--fsdp={mode == "fsdp"}',
                 f'--data_dir={char_data}', f'--out_dir={out}')
    assert f"{4 * 4 * 32:,} tokens/iter" in p.stdout  # the same as the single run
    assert_same_run(single, out)
    # the checkpoint is a plain one: one process and sample.py load it
    run('sample.py', f'--out_dir={out}', '--num_samples=1', '--max_new_tokens=5')


def test_checkpoints_move_between_modes(char_data, single, tmp_path):
    """Stop at iter 4 in one mode, resume to 8 in another: the same run as never stopping, whatever the modes."""
    for first, second in [('fsdp', 'single'), ('single', 'ddp'), ('ddp', 'fsdp')]:
        out = tmp_path / f'{first}-{second}'
        for mode, extra in ((first, ['--max_iters=4', '--lr_decay_iters=8']), (second, ['--init_from=resume'])):
            args = [*BASE, *extra, f'--data_dir={char_data}', f'--out_dir={out}']
            if mode == 'single':
                run('train.py', *args, '--batch_size=8', '--gradient_accumulation_steps=2')
            else:
                torchrun(*args, '--batch_size=4', '--gradient_accumulation_steps=4', f'--fsdp={mode == "fsdp"}')
        assert_same_run(single, out)


def test_fsdp_needs_torchrun(char_data, tmp_path):
    p = run('train.py', *BASE, '--fsdp=True', f'--data_dir={char_data}', f'--out_dir={tmp_path}', check=False)
    assert p.returncode == 1 and 'Traceback' not in p.stderr and 'error: fsdp=True shards the model over several processes' in p.stderr


FAULTY = """import os, runpy, sys
sys.path.insert(0, {root!r})
import model
forward, calls = model.GPT.forward, [0]
def faulty(self, *a, **k):  # rank 1 fails on its 6th forward: a bug, a bad batch, an OOM...
    calls[0] += 1
    if os.environ['RANK'] == '1' and calls[0] == 6:
        raise RuntimeError('injected fault on rank 1')
    return forward(self, *a, **k)
model.GPT.forward = faulty
sys.argv[0] = {script!r}
runpy.run_path({script!r}, run_name='__main__')
"""


def test_a_rank_that_raises_ends_the_job(char_data, tmp_path):
    script = tmp_path / 'faulty_train.py'
    script.write_text(FAULTY.format(root=str(ROOT), script=str(ROOT / 'train.py')))
    # a job that waited for the lost rank would hang for dist_timeout (an hour here): torchrun's 300 s limit fails it
    p = torchrun(*BASE, '--max_iters=1000', '--dist_timeout=3600', f'--data_dir={char_data}', f'--out_dir={tmp_path / "out"}',
                 script=script, check=False)
    assert p.returncode != 0
    assert 'error: RuntimeError: injected fault on rank 1' in p.stderr


def test_a_killed_rank_ends_the_job(char_data, tmp_path):
    """kill -9 one worker: torchrun stops the others (SIGTERM, then SIGKILL after 30 s) and exits non-zero."""
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', str(ROOT / 'train.py'),
           *BASE, '--max_iters=100000', '--eval_interval=100000', '--dist_timeout=3600', f'--data_dir={char_data}', f'--out_dir={tmp_path / "out"}']
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, 'OMP_NUM_THREADS': '1'})
    workers = lambda: subprocess.run(['pgrep', '-P', str(p.pid)], capture_output=True, text=True).stdout.split()
    wait_for(lambda: (tmp_path / 'out' / 'log.jsonl').exists() and len(workers()) == 2, p, what='both workers training')
    workers = workers()
    os.kill(int(workers[-1]), signal.SIGKILL)
    try:
        p.communicate(timeout=300)  # (a hang fails here: the job would wait dist_timeout, an hour)
    finally:
        p.kill()
    assert p.returncode != 0


def test_ctrl_c_under_fsdp_saves_and_resumes(char_data, single, tmp_path):
    out = tmp_path / 'out'
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', str(ROOT / 'train.py'),
           *BASE, '--max_iters=100000', '--lr_decay_iters=8', '--batch_size=4', '--gradient_accumulation_steps=4', '--fsdp=True',
           f'--data_dir={char_data}', f'--out_dir={out}']
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                         env={**os.environ, 'OMP_NUM_THREADS': '1'})
    wait_for(lambda: (out / 'log.jsonl').exists() and len(step_losses(out)) >= 3, p, what='3 steps')
    os.killpg(p.pid, signal.SIGINT)  # as a terminal's Ctrl-C: to torchrun and both workers
    stdout, stderr = p.communicate(timeout=120)
    assert 'checkpoint saved to' in stdout, stderr[-2000:]
    ck = load_checkpoint(out / 'ckpt.pt')
    assert ck['iter_num'] >= 3 and ck['world_size'] == 2
    run('train.py', *BASE, '--max_iters=8', '--lr_decay_iters=8', '--batch_size=8', '--gradient_accumulation_steps=2',
        f'--data_dir={char_data}', f'--out_dir={out}', '--init_from=resume')
    la, lb = step_losses(single), step_losses(out)
    assert la == pytest.approx(lb, rel=1e-5)
