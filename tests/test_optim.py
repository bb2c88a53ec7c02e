"""optim.py: Muon (its orthogonalized update, each of q, k and v on its own, weight decay on every
matrix, exact resume alone and under DDP) and WeightAverage, the moving average of the weights
(train.py's ema_decay: update, swap in for eval, state; saved, scored, loaded, resumed exactly)."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from checkpoint import load_checkpoint, load_model
from conftest import ROOT, TINY, V, run
from conftest import log_rows as step_log, tiny_model as tiny
from optim import WeightAverage

def test_muon_update_is_orthogonal_and_scaled():
    from optim import muon_adamw, orthogonalize
    g = torch.randn(3, 40, 24)
    s = torch.linalg.svdvals(orthogonalize(g))  # every singular value pushed close to 1
    assert s.min() > 0.5 and s.max() < 1.3
    model = tiny('llama')
    opt = muon_adamw(model, 1e-3, 0.02, 0.1, (0.9, 0.95))
    kinds = {id(p): g['muon'] for g in opt.param_groups for p in g['params']}
    assert all(kinds[id(p)] == (n.startswith('blocks.') and p.dim() == 2) for n, p in model.named_parameters())
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.randint(V, (2, 32)), torch.randint(V, (2, 32)))[1].backward()
    for group in opt.param_groups:
        group['lr'] = 1e-3 * group['lr_scale']
    opt.step()
    for p, b in zip(model.parameters(), before):
        assert not torch.equal(p, b)


def test_weight_decay_shrinks_every_matrix_muons_too():
    """One step with weight_decay=0.5 against one with 0: each matrix (Muon's and AdamW's) ends
    lr * 0.5 * w lower, norms and biases not at all."""
    from optim import muon_adamw
    x, y = torch.randint(V, (2, 32)), torch.randint(V, (2, 32))
    after = {}
    for wd in (0.0, 0.5):
        model = tiny('llama')  # the same weights both times
        opt = muon_adamw(model, 1e-3, 0.02, wd, (0.9, 0.95))
        model(x, y)[1].backward()
        for group in opt.param_groups:
            group['lr'] = 1e-3 * group['lr_scale']
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        opt.step()
        after[wd] = {n: p.detach().clone() for n, p in model.named_parameters()}
    for n, w in before.items():
        lr = 0.02 if n.startswith('blocks.') else 1e-3
        shrink = lr * 0.5 * w if w.dim() == 2 else torch.zeros_like(w)
        torch.testing.assert_close(after[0.0][n] - after[0.5][n], shrink, rtol=1e-3, atol=1e-7)


def test_muon_orthogonalizes_q_k_and_v_each_on_its_own():
    """The fused qkv weight of a grouped-query model (q: 32 rows, k and v: 16 each) steps by three
    orthogonalized matrices, not by one orthogonalized 64-row matrix."""
    from optim import muon_adamw, orthogonalize
    model = tiny('llama', n_kv_head=2)
    opt = muon_adamw(model, 1e-3, 0.02, 0.0, (0.9, 0.95))
    w = model.blocks[0].attn.qkv.weight  # (32 + 16 + 16, 32)
    before = w.detach().clone()
    model(torch.randint(V, (2, 32)), torch.randint(V, (2, 32)))[1].backward()
    g = w.grad.clone()  # the first step's update is the gradient times a constant: orthogonalize ignores it
    for group in opt.param_groups:
        group['lr'] = 1e-3 * group['lr_scale']
    opt.step()
    update = (before - w.detach()) / 0.02  # (64, 32)
    parts = torch.cat([orthogonalize(part[None])[0] for part in g.split([32, 16, 16])])
    # (the iteration magnifies float rounding: 2e-3 apart here, against ~0.5 from the whole matrix's)
    assert (update - parts).abs().max() < 0.01
    assert (update - orthogonalize(g[None])[0]).abs().max() > 0.1


def test_weight_average_updates_swaps_in_and_gives_its_state():
    """update(t): avg += (1 - d) (w - avg), d = min(decay, (1 + t) / (10 + t)); swapped_in() puts the
    average in the model for a `with` block and the live weights back after; state_dict() is the
    average under every name (tied weights too)."""
    model = tiny('gpt2')
    w0 = {k: v.clone() for k, v in model.state_dict().items()}
    ema = WeightAverage(model, 0.9)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(0)  # d = min(0.9, 1/10) = 0.1: 0.9 of the way to the new weights
    live = {k: v.clone() for k, v in model.state_dict().items()}
    with ema.swapped_in():
        inside = {k: v.clone() for k, v in model.state_dict().items()}
    assert all(torch.equal(v, live[k]) for k, v in model.state_dict().items())  # put back exactly
    for k in w0:
        assert torch.allclose(inside[k], w0[k] + 0.9, atol=1e-6), k
    state = ema.state_dict()
    assert state.keys() == model.state_dict().keys() and all(torch.equal(state[k], inside[k]) for k in state)
    ema.update(100)  # d = min(0.9, 101/110) = 0.9
    with ema.swapped_in():
        assert torch.allclose(model.wte.weight, inside['wte.weight'] + 0.1 * (live['wte.weight'] - inside['wte.weight']), atol=1e-6)
    again = WeightAverage(tiny('gpt2'), 0.9, saved=ema.state_dict())  # from a checkpoint: the same average
    assert all(torch.equal(a, b) for a, b in zip(again.avg, ema.avg))


@pytest.mark.slow
def test_muon_resumes_exactly(char_data, tmp_path):
    args = [*TINY, f'--data_dir={char_data}', '--muon=True', '--dropout=0.1', '--max_iters=12', '--lr_decay_iters=12',
            '--eval_interval=6', '--sample_prompt=']
    run('train.py', *args, f'--out_dir={tmp_path / "ref"}')
    run('train.py', *args, f'--out_dir={tmp_path / "two"}', '--max_iters=6')  # (stopped at an eval, as ref evals there)
    run('train.py', *args, f'--out_dir={tmp_path / "two"}', '--init_from=resume')
    strip = lambda rows: [{k: v for k, v in r.items() if k != 'dt'} for r in rows]  # step times differ, nothing else
    assert strip(step_log(tmp_path / 'two')) == strip(step_log(tmp_path / 'ref'))
    ck = torch.load(tmp_path / 'two' / 'ckpt.pt', weights_only=True)  # loads without pickled code
    assert any(g.get('muon') for g in ck['optimizer']['param_groups'])


@pytest.mark.slow
def test_muon_under_ddp_trains_the_same_model_and_resumes(char_data, tmp_path):
    """2 processes x batch 4 = 1 process x batch 8, with Muon; then the DDP run resumes in one process."""
    args = [*TINY, f'--data_dir={char_data}', '--muon=True', '--max_iters=6', '--eval_interval=3', '--sample_prompt=']
    run('train.py', *args, '--batch_size=8', f'--out_dir={tmp_path / "one"}')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', str(ROOT / 'train.py'),
           *args, '--batch_size=4', '--gradient_accumulation_steps=2', f'--out_dir={tmp_path / "two"}', '--max_iters=3']
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert p.returncode == 0, p.stderr[-2000:]
    run('train.py', *args, '--batch_size=8', f'--out_dir={tmp_path / "two"}', '--init_from=resume')
    one, two = ([r['loss'] for r in step_log(tmp_path / d) if 'loss' in r] for d in ('one', 'two'))
    assert two == pytest.approx(one, rel=1e-4)


def full_val(model, data_dir, block_size):
    """Mean loss over the val split, every token once, in windows of block_size: train.py's
    eval_full_val, written out again here."""
    d = torch.from_numpy(np.fromfile(data_dir / 'tiny' / 'val.bin', dtype=np.uint16).astype(np.int64))
    total, n = 0.0, len(d) - 1
    with torch.no_grad():
        for i in range(0, n, block_size):
            x, y = d[i:min(i + block_size, n)][None], d[i + 1:min(i + block_size, n) + 1][None]
            total += model(x, y)[1].item() * y.numel()
    return total / n


@pytest.mark.slow
def test_weight_average_is_scored_saved_and_loaded_and_leaves_training_alone(char_data, tmp_path):
    """ema_decay: the weights step exactly as without it; the log's val loss is the average's, and the
    average is what load_model (sample.py, export) gives. Its first step is checked by hand."""
    args = [*TINY, f'--data_dir={char_data}', '--eval_interval=3', '--eval_full_val=True', '--sample_prompt=']
    run('train.py', *args, '--max_iters=0', f'--out_dir={tmp_path / "init"}')
    run('train.py', *args, '--max_iters=1', '--ema_decay=0.9', f'--out_dir={tmp_path / "one"}')
    w0, one = load_checkpoint(tmp_path / 'init' / 'ckpt.pt')['model'], load_checkpoint(tmp_path / 'one' / 'ckpt.pt')
    # step 0 averages with d = min(0.9, 1/10): 0.1 of the initial weights, 0.9 of the new ones
    for k, w1 in one['model'].items():
        assert torch.allclose(one['ema'][k], 0.1 * w0[k] + 0.9 * w1, atol=1e-6), k
    run('train.py', *args, '--max_iters=9', '--ema_decay=0.9', f'--out_dir={tmp_path / "ema"}')
    run('train.py', *args, '--max_iters=9', f'--out_dir={tmp_path / "plain"}')
    ema, plain = (load_checkpoint(tmp_path / d / 'ckpt.pt') for d in ('ema', 'plain'))
    assert 'ema' not in plain
    assert all(torch.equal(ema['model'][k], v) for k, v in plain['model'].items())  # the same training
    assert not torch.allclose(ema['ema']['wte.weight'], ema['model']['wte.weight'])
    model, _, _ = load_model(tmp_path / 'ema')
    assert all(torch.equal(v, ema['ema'][k]) for k, v in model.state_dict().items())
    vals = [r['val_loss'] for r in step_log(tmp_path / 'ema') if 'val_loss' in r]
    assert vals[-1] == pytest.approx(full_val(model, char_data, 32), rel=1e-5)
    assert vals != [r['val_loss'] for r in step_log(tmp_path / 'plain') if 'val_loss' in r]


@pytest.mark.slow
def test_weight_average_resumes_exactly(char_data, tmp_path):
    args = [*TINY, f'--data_dir={char_data}', '--ema_decay=0.9', '--dropout=0.1', '--max_iters=12',
            '--lr_decay_iters=12', '--eval_interval=6', '--sample_prompt=']
    run('train.py', *args, f'--out_dir={tmp_path / "ref"}')
    run('train.py', *args, f'--out_dir={tmp_path / "two"}', '--max_iters=6')
    run('train.py', *args, f'--out_dir={tmp_path / "two"}', '--init_from=resume')
    strip = lambda rows: [{k: v for k, v in r.items() if k != 'dt'} for r in rows]
    assert strip(step_log(tmp_path / 'two')) == strip(step_log(tmp_path / 'ref'))  # val losses: the average's
    ref, two = (load_checkpoint(tmp_path / d / 'ckpt.pt')['ema'] for d in ('ref', 'two'))
    assert all(torch.equal(two[k], v) for k, v in ref.items())
