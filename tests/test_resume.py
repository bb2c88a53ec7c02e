"""Never lose a run: exact resume, signals, kill -9 during checkpoint writes, NaN handling,
checkpoints that load anywhere, and refusals that say what differs."""
import json
import os
import random
import shlex
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, TINY, run
from checkpoint import load_checkpoint

# dropout > 0 so that resuming must restore torch's RNG, not only the batch sampler
RUN = [*TINY, '--batch_size=16', '--dropout=0.1', '--max_iters=60', '--lr_decay_iters=60', '--eval_interval=20',
       '--sample_prompt=']


def log_rows(out):
    return [json.loads(line) for line in open(out / 'log.jsonl')]


def losses(out):
    rows = log_rows(out)
    return ({r['iter']: r['loss'] for r in rows if 'loss' in r}, {r['iter']: r['val_loss'] for r in rows if 'val_loss' in r})


def train(data, out, *args, check=True):
    return run('train.py', *RUN, f'--data_dir={data}', f'--out_dir={out}', *args, check=check)


@pytest.fixture(scope='module')
def reference(char_data, tmp_path_factory):
    """The uninterrupted run every other run is compared with."""
    out = tmp_path_factory.mktemp('ref') / 'out'
    train(char_data, out)
    return losses(out)


def start(data, out, *args):
    return subprocess.Popen([sys.executable, str(ROOT / 'train.py'), *RUN, f'--data_dir={data}', f'--out_dir={out}', *args],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_iter(out, it, proc, timeout=120):
    """Block until the run has logged iteration `it` (or ended)."""
    t0 = time.time()
    while time.time() - t0 < timeout and proc.poll() is None:
        try:
            if any(json.loads(l).get('iter', -1) >= it for l in open(out / 'log.jsonl') if l.strip()):
                return
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.005)


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
    proc = start(char_data, out)
    wait_for_iter(out, random.Random(sig).randint(5, 45), proc)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, stderr
    assert 'Traceback' not in stderr and '--init_from=resume' in stdout
    stopped_at = load_checkpoint(out / 'ckpt.pt')['iter_num']
    assert stopped_at == max(losses(out)[0]) + 1  # the checkpoint holds the step that had just finished
    cmd = shlex.split(stdout.split('Resume with: ')[1].splitlines()[0])  # run exactly what the user is told to run
    assert cmd[0] == 'python' and cmd[-1] == '--init_from=resume'
    subprocess.run([sys.executable, *cmd[1:]], cwd=ROOT, check=True, capture_output=True, timeout=300)
    assert losses(out) == reference


def test_kill_9_during_checkpoint_writes_never_corrupts(char_data, tmp_path, reference):
    """Checkpoint at every iteration and SIGKILL the run again and again: at chosen iterations,
    and (every other time) right while a checkpoint's temp file is being written. After every
    kill the checkpoint on disk loads; the run resumed after all the kills equals the
    reference run loss for loss."""
    out = tmp_path / 'out'
    rng = random.Random(0)
    args = ['--eval_interval=1', '--eval_iters=1', '--keep_last_n=2']
    targets = sorted(rng.sample(range(3, 55), 8))
    in_write = 0
    for n, target in enumerate(targets):
        proc = start(char_data, out, *args, *(['--init_from=resume'] if (out / 'ckpt.pt').exists() else []))
        wait_for_iter(out, target, proc)
        t0 = time.time()
        while n % 2 and proc.poll() is None and time.time() - t0 < 10:
            if (out / 'ckpt.pt.tmp').exists():
                in_write += 1
                break  # kill in the middle of a checkpoint write
        assert proc.poll() is None, f'the run ended before kill {n} at iter {target}: {proc.communicate()}'
        proc.kill()
        proc.communicate()
        ck = load_checkpoint(out / 'ckpt.pt')
        assert 0 < ck['iter_num'] <= 60 and set(ck['model']) == set(torch.load(out / 'ckpt.pt', weights_only=True)['model'])
    assert in_write >= 2, in_write
    train(char_data, out, *args, '--init_from=resume')
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
    proc = start(char_data, out, '--max_iters=200', '--lr_decay_iters=200')
    wait_for_iter(out, 20, proc)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    stopped_at = load_checkpoint(out / 'ckpt.pt')['iter_num']
    p = train(char_data, out, f'--max_iters={stopped_at}', '--lr_decay_iters=200', '--init_from=resume')
    assert 'already at iter' not in p.stdout and f'eval {stopped_at}:' in p.stdout
    assert losses(out)[1].get(stopped_at) is not None and load_checkpoint(out / 'ckpt.pt')['last_eval'] == stopped_at
    p = train(char_data, out, f'--max_iters={stopped_at}', '--lr_decay_iters=200', '--init_from=resume')
    assert 'already at iter' in p.stdout  # now there is nothing left to do


def test_keep_last_n_and_best(char_data, tmp_path):
    out = tmp_path / 'out'
    train(char_data, out, '--keep_last_n=2')
    assert sorted(f for f in os.listdir(out) if f.endswith('.pt')) == ['best.pt', 'ckpt.pt', 'ckpt_00000040.pt', 'ckpt_00000060.pt']
    _, val = losses(out)
    assert load_checkpoint(out / 'best.pt')['iter_num'] == min(val, key=val.get)
    assert load_checkpoint(out / 'ckpt.pt')['iter_num'] == 60


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


def test_checkpoints_load_anywhere(char_data, tmp_path):
    out = tmp_path / 'out'
    train(char_data, out, '--max_iters=10')
    ck = torch.load(out / 'ckpt.pt', weights_only=True)
    # as saved by a compiled model inside DDP, by an older nanolm with fewer config fields
    ck['model'] = {f'module._orig_mod.{k}': v for k, v in ck['model'].items()}
    for field in ('rope_theta', 'ffn_hidden', 'norm_eps'):
        del ck['model_config'][field]
    del ck['config']['keep_last_n']
    torch.save(ck, out / 'ckpt.pt')
    assert list(load_checkpoint(out / 'ckpt.pt')['model'])[0] == 'wte.weight'
    s = run('sample.py', f'--out_dir={out}', '--start=the', '--num_samples=1', '--max_new_tokens=5')
    assert s.stdout.startswith('the')
    train(char_data, out, '--init_from=resume', '--max_iters=20')
    assert load_checkpoint(out / 'ckpt.pt')['iter_num'] == 20
    # a bare checkpoint: weights, configs and the iteration only
    ck = torch.load(out / 'ckpt.pt', weights_only=True)
    torch.save({k: ck[k] for k in ('model', 'model_config', 'config', 'iter_num')}, out / 'ckpt.pt')
    p = train(char_data, out, '--init_from=resume', '--max_iters=25')
    assert 'has no optimizer, rng; those start fresh' in p.stdout
    assert load_checkpoint(out / 'ckpt.pt')['iter_num'] == 25


def test_resume_refuses_a_different_model_or_tokenizer(char_data, tmp_path):
    out = tmp_path / 'out'
    train(char_data, out, '--max_iters=5')
    p = train(char_data, out, '--init_from=resume', '--n_layer=3', check=False)
    assert p.returncode == 1 and 'n_layer: checkpoint 2, now 3' in p.stderr and 'Traceback' not in p.stderr
    p = train(char_data, out, '--init_from=resume', '--arch=llama', check=False)
    assert p.returncode == 1 and "norm: checkpoint 'layernorm', now 'rmsnorm'" in p.stderr
    # the same name, another corpus: another char vocabulary
    other = tmp_path / 'data'
    (tmp_path / 'other.txt').write_text('completely different text, with other letters: XYZ QJK!\n' * 200)
    run('prepare.py', 'tiny', '--input', tmp_path / 'other.txt', '--tokenizer=char', '--out_dir', other)
    p = run('train.py', *RUN, f'--data_dir={other}', f'--out_dir={out}', '--init_from=resume', check=False)
    assert p.returncode == 1 and ('tokenizer' in p.stderr or 'vocab_size' in p.stderr)


def test_world_size_change_is_allowed_and_said(char_data, tmp_path):
    out = tmp_path / 'out'
    train(char_data, out, '--max_iters=10')
    ck = torch.load(out / 'ckpt.pt', weights_only=True)
    ck['world_size'] = 2
    torch.save(ck, out / 'ckpt.pt')
    p = train(char_data, out, '--init_from=resume', '--max_iters=15', '--batch_size=8')
    assert 'world size 2 -> 1' in p.stdout and 'batch_size 16 -> 8' in p.stdout


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
    p = torchrun(out, start_new_session=True)  # its own process group, like a terminal's foreground job
    wait_for_iter(out, 15, p)
    os.killpg(p.pid, signal.SIGINT)
    stdout, stderr = p.communicate(timeout=120)
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
    proc = subprocess.Popen([sys.executable, str(ROOT / script), *both_scripts_args(script, char_data, sft_base, out)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_iter(out, random.Random(script).randint(5, 30), proc)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and 'Traceback' not in stderr, stderr
    assert load_checkpoint(out / 'ckpt.pt')['iter_num'] < 40
    cmd = shlex.split(stdout.split('Resume with: ')[1].splitlines()[0])
    subprocess.run([sys.executable, *cmd[1:]], cwd=ROOT, check=True, capture_output=True, timeout=300)
    assert losses(out) == losses(tmp_path / 'ref')
