"""The speed paths do what they say, and change nothing else: gradient checkpointing, bf16 autocast
on a CPU, the KV cache at a GPT-2-small-like depth. (The auto dtype rule: test_training.py; Muon
and the weights' average: test_optim.py; bench.py: test_bench.py.)
No timing assertions here: bench.py measures speed; these tests check behaviour."""

import numpy as np
import pytest
import torch

from conftest import TINY, V, run
from conftest import log_rows as step_log, tiny_model as tiny
from checkpoint import load_checkpoint

@pytest.mark.parametrize('arch', ['gpt2', 'llama'])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(arch, monkeypatch):
    """With dropout on: the recomputation in backward must replay the forward's dropout masks. The
    loss comes in chunks of 20 positions here (5 chunks, the last one shorter), some masked."""
    import model as model_py
    monkeypatch.setattr(model_py, 'LOSS_CHUNK', 20 * V)
    model = tiny(arch, dropout=0.1).train()
    x = torch.randint(V, (3, 32))
    y = x.clone()
    y[0, :7] = -100  # (SFT's masked prompt)
    grads = []
    for ckpt in (False, True):
        model.gradient_checkpointing = ckpt
        model.zero_grad()
        torch.manual_seed(1)
        _, loss = model(x, y)
        loss.backward()
        grads.append((loss.item(), [p.grad.clone() for p in model.parameters()]))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-6)  # (summed in another order)
    for a, b in zip(grads[0][1], grads[1][1]):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
    model.eval()  # (generation and eval never checkpoint: there is no backward)
    assert model(x[:, :5], cache=model.new_cache(3, 'cpu', torch.float32))[0].shape == (3, 5, V)


def test_bf16_autocast_on_cpu_trains_with_float32_weights():
    """Under bf16 autocast the loss stays float32, finite and close to float32's; weights, gradients
    and AdamW's state stay float32."""
    model = tiny('llama').train()
    x = torch.randint(V, (4, 32))
    _, ref = model(x, x)
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        logits, loss = model(x, x)
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    assert torch.isfinite(loss) and abs(loss.item() - ref.item()) < 0.01 * ref.item()
    loss.backward()
    opt.step()
    assert all(p.dtype == p.grad.dtype == torch.float32 for p in model.parameters())
    assert all(v.dtype == torch.float32 for s in opt.state.values() for k, v in s.items() if k != 'step')


@pytest.mark.slow
def test_train_runs_in_bf16_on_a_cpu(char_data, tmp_path):
    p = run('train.py', *TINY, f'--data_dir={char_data}', f'--out_dir={tmp_path}', '--max_iters=4', '--eval_interval=4',
            '--sample_prompt=', '--dtype=bfloat16')
    assert '| cpu bfloat16 x1' in p.stdout
    rows = step_log(tmp_path)
    assert all(np.isfinite(r.get('loss', 0)) for r in rows) and np.isfinite(rows[-1]['val_loss'])
    assert all(v.dtype == torch.float32 for v in load_checkpoint(tmp_path / 'ckpt.pt')['model'].values())


@pytest.mark.parametrize('arch', ['gpt2', 'llama'])
def test_kv_cache_equals_recompute_at_a_gpt2_small_like_shape(arch):
    """GPT-2 small's structure (12 layers, 12 heads) at a tiny width: the logits of every step of a
    cached decode equal a full recompute, and so do the tokens, also past block_size (where the
    window slides and the cache is left)."""
    model = tiny(arch, n_layer=12, n_head=12, n_embd=24, block_size=16).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.3)  # larger than the init: every position's output depends on its context
        prompt = torch.randint(V, (2, 5))
        cached = model.generate(prompt, 16, temperature=0, use_cache=True)
        assert torch.equal(cached, model.generate(prompt, 16, temperature=0, use_cache=False))
        cache = model.new_cache(2, 'cpu', torch.float32)
        model(cached[:, :5], cache=cache)
        for t in range(5, 16):
            step, _ = model(cached[:, t:t + 1], cache=cache, pos=t)
            assert torch.allclose(step[:, -1], model(cached[:, :t + 1])[0][:, -1], atol=1e-4), t
