"""The speed features do what they say, and change nothing else: gradient checkpointing, bf16
autocast on a CPU (and the auto choice), the KV cache, sample.py's incremental decode, the whole-
split val loss, Muon (its update, and exact resume, alone and under DDP), the weights' moving
average (ema_decay), bench.py's modes.
No timing assertions here: bench.py measures speed; these tests check behaviour."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import training
from conftest import ROOT, TINY, run, shared_file
from checkpoint import load_checkpoint, load_model, save_checkpoint
from model import GPT, make_config

V = 97


def tiny(arch='gpt2', **kw):
    torch.manual_seed(0)
    return GPT(make_config(arch, **{**dict(block_size=32, vocab_size=V, n_layer=2, n_head=4, n_embd=32), **kw}))


def step_log(out):
    return [json.loads(line) for line in (out / 'log.jsonl').read_text().splitlines()]


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


def test_auto_dtype_on_a_cpu_is_a_rule_of_its_instructions_and_the_width(monkeypatch):
    """Deterministic: the same machine and settings always give the same dtype (no timing probe)."""
    monkeypatch.setattr(training, 'cpu_bf16_flags', lambda: '')
    assert training.resolve_device('cpu', 'auto', 1024)[2] == 'float32' and 'no AVX512-BF16 or AMX' in training.dtype_note
    monkeypatch.setattr(training, 'cpu_bf16_flags', lambda: 'avx512_bf16 amx_bf16')
    w = training.CPU_BF16_WIDTH
    for width, dtype in [(w, 'bfloat16'), (4 * w, 'bfloat16'), (w - 1, 'float32'), (None, 'float32')]:
        assert [training.resolve_device('cpu', 'auto', width)[2] for _ in range(3)] == [dtype] * 3
        assert training.dtype_note.startswith(f'dtype auto: {dtype} (avx512_bf16, amx_bf16;')
    assert training.resolve_device('cpu', 'bfloat16', 128)[2] == 'bfloat16'  # an explicit choice is kept
    assert training.resolve_device('cpu', 'float32', 4 * w)[2] == 'float32'


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


def test_sample_decodes_incrementally_to_the_same_text(tmp_path):
    """sample.py prints each token's text as it comes; with GPT-2's byte-level tokens a character is
    often cut between two tokens. What it prints must be exactly the decode of all the ids."""
    shared_file('tiktoken_cache')
    import tokenizer
    spec = {'kind': 'tiktoken', 'name': 'gpt2'}
    tok = tokenizer.load(spec)
    start = '春眠不觉晓，'
    cfg = make_config('gpt2', block_size=64, vocab_size=tok.n_vocab, n_layer=1, n_head=2, n_embd=16)
    model = GPT(cfg)
    # A rigged model: every position's final state is all ones (ln_f), and only the single-byte tokens
    # of the prompt's characters and ' the' get a large logit, so it samples bytes that make whole
    # characters, cut ones and invalid runs, between whole words.
    picks = sorted({tok.enc.encode_single_token(bytes([b])) for b in start.encode()} | {tok.encode(' the')[0]})
    with torch.no_grad():
        model.ln_f.weight.zero_(), model.ln_f.bias.fill_(1.0), model.wte.weight.zero_()
        model.wte.weight[picks] = 1.0
    save_checkpoint({'model': model.state_dict(), 'model_config': cfg.__dict__, 'iter_num': 0, 'tokenizer': spec}, tmp_path)
    s = run('sample.py', f'--out_dir={tmp_path}', f'--start={start}', '--num_samples=1', '--max_new_tokens=60',
            '--temperature=1.0', '--top_k=0', '--seed=3', '--dtype=float32')
    gen = torch.Generator().manual_seed(3)
    ids = [t.item() for t in model.stream(torch.tensor([tok.encode(start)]), 60, temperature=1.0, top_p=1.0,
                                           stop_tokens={tok.eot}, generator=gen)]
    assert ''.join(tok.decode([t]) for t in ids) != tok.decode(ids)  # characters are cut between tokens
    assert s.stdout == start + tok.decode(ids) + '\n'


def test_full_val_loss_counts_every_val_token_once(char_data, tmp_path):
    """eval_full_val: the logged val loss is the mean over windows of block_size that cover the val
    split once (the last one shorter), recomputed here independently from the saved model."""
    run('train.py', *TINY, f'--data_dir={char_data}', f'--out_dir={tmp_path}', '--max_iters=3', '--eval_interval=3',
        '--sample_prompt=', '--eval_full_val=True', '--block_size=24')
    logged = [r['val_loss'] for r in step_log(tmp_path) if 'val_loss' in r][-1]
    model = load_model(tmp_path)[0]
    val = torch.from_numpy(np.fromfile(char_data / 'tiny' / 'val.bin', dtype=np.uint16).astype(np.int64))
    n = len(val) - 1
    assert n % 24  # a shorter last window, so that it is checked too
    losses = torch.zeros(n)  # one loss per predicted token
    with torch.no_grad():
        for s in range(0, n, 24):
            e = min(s + 24, n)
            logits, _ = model(val[None, s:e])
            losses[s:e] = torch.nn.functional.cross_entropy(logits[0], val[s + 1:e + 1], reduction='none')
    assert logged == pytest.approx(losses.mean().item(), rel=1e-5)
    assert abs(losses[:n // 24 * 24].mean().item() - logged) > 1e-4  # without the last window it would differ


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


def test_bench_reads_time_to_a_loss_from_a_log(tmp_path):
    rows = [{'iter': 0, 'loss': 4.0, 'dt': 0.5}, {'iter': 1, 'loss': 3.0, 'dt': 0.25}, {'iter': 2, 'val_loss': 2.5},
            {'iter': 2, 'loss': 2.4, 'dt': 0.25}, {'iter': 3, 'val_loss': 1.9}]
    (tmp_path / 'log.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
    run('bench.py', 'log', tmp_path, '--target_loss=2.6,2.0,1.0', f'--json={tmp_path / "b.json"}')
    row = json.loads((tmp_path / 'b.json').read_text())['rows'][0]
    assert row['s to val<=2.6'] == 0.8 and row['s to val<=2.0'] == 1.0 and row['s to val<=1.0'] is None
    assert row['final val'] == 1.9 and row['steps'] == 3


def test_bench_step_and_sample_modes_report_their_rows(tmp_path):
    shape = ['--n_layer=1', '--n_head=2', '--n_embd=32', '--block_size=32', '--vocab_size=64']
    run('bench.py', 'step', *shape, '--steps=1', '--gradient_checkpointing=False,True', f'--json={tmp_path / "s.json"}')
    out = json.loads((tmp_path / 's.json').read_text())
    steps = [r for r in out['rows'] if r['mode'] == 'step']
    assert [r['grad ckpt'] for r in steps] == ['False', 'True'] and all(r['ms/iter'] > 0 and 'activations MB' in r for r in steps)
    assert out['machine']['cores'] >= 1 and 'float32 GFLOP/s' in out['rows'][-1]
    run('bench.py', 'sample', *shape, '--prompt_tokens=4,20', '--new_tokens=8', f'--json={tmp_path / "g.json"}')
    rows = json.loads((tmp_path / 'g.json').read_text())['rows']
    assert [(r['prompt'], r['kv cache']) for r in rows] == [(4, True), (4, False), (20, True), (20, False)]
    assert all(r['new tokens'] == 8 for r in rows) and all(isinstance(rows[i]['cache speedup'], float) for i in (0, 2))
