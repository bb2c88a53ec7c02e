"""What only a GPU exercises: bf16 autocast, fp16 with a GradScaler (and the step it skips on inf),
torch.compile (and CUDA graphs), the KV cache, SDPA's flash kernel, checkpoints moving between a GPU
and the CPU, a NaN loss stopping the run, and DDP / FSDP2 over NCCL with one process.
Every test skips, saying why, where torch sees no CUDA device (CI); on a GPU machine:

    python -m pytest -q tests/test_gpu.py

Tolerances: bf16 keeps 8 bits of mantissa, so a loss computed in it agrees with float32 to ~1e-2
relative; kernels that only reorder float32 sums agree to ~1e-5 (TF32 matmuls: ~1e-3)."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, TINY, run
from checkpoint import load_checkpoint
from model import GPT, make_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)")

BASE = [*TINY, '--dropout=0.0', '--max_iters=8', '--eval_interval=4', '--sample_prompt=', '--warmup_iters=2', '--compile=False']


def tiny(arch='llama', **kw):
    torch.manual_seed(0)
    cfg = make_config(arch, **{**dict(n_layer=2, n_head=4, n_embd=128, block_size=64, vocab_size=256), **kw})
    return GPT(cfg).cuda()


def batch(model, b=4):
    g = torch.Generator(device='cuda').manual_seed(1)
    return (torch.randint(model.cfg.vocab_size, (b, model.cfg.block_size), device='cuda', generator=g) for _ in range(2))


def log_rows(out):
    return [json.loads(line) for line in open(out / 'log.jsonl')]


@pytest.mark.parametrize('arch', ['gpt2', 'llama'])
def test_bf16_autocast_is_close_to_float32(arch):
    model = tiny(arch)
    x, y = batch(model)
    _, ref = model(x, y)
    with torch.autocast('cuda', dtype=torch.bfloat16):
        logits, loss = model(x, y)
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32  # the loss is taken in float32
    assert loss.item() == pytest.approx(ref.item(), rel=2e-2)


def test_fp16_grad_scaler_steps_and_skips_a_step_on_inf():
    model = tiny()
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95))
    scaler = torch.amp.GradScaler('cuda', init_scale=2.0 ** 10)
    x, y = batch(model)

    def step(poison=False):
        with torch.autocast('cuda', dtype=torch.float16):
            _, loss = model(x, y)
        scaler.scale(loss).backward()
        if poison:  # an overflow in fp16's gradients, as a too-large scale produces
            model.wte.weight.grad[0, 0] = float('inf')
        # train.py's step: unscale, clip, step (the scaler skips it on inf), update the scale, zero the grads
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    before = [p.detach().clone() for p in model.parameters()]
    step()
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))  # the step moved the weights
    assert scaler.get_scale() == 2.0 ** 10
    before = [p.detach().clone() for p in model.parameters()]
    step(poison=True)
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))  # skipped: nothing moved
    assert scaler.get_scale() == 2.0 ** 9  # and the scale halved
    assert all(p.grad is None for p in model.parameters())  # the gradients were cleared for the next step


def test_compiled_model_matches_eager():
    model = tiny()
    x, y = batch(model)
    _, ref = model(x, y)
    ref.backward()
    ref_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    _, loss = torch.compile(model)(x, y)
    loss.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-4)
    for g, r in zip((p.grad for p in model.parameters()), ref_grads):
        assert torch.allclose(g, r, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize('arch,kv', [('gpt2', 0), ('llama', 2)])
def test_kv_cache_generates_what_no_cache_does(arch, kv):
    model = tiny(arch, n_kv_head=kv).eval()
    prompt = torch.randint(256, (2, 9), device='cuda', generator=torch.Generator(device='cuda').manual_seed(2))
    with torch.no_grad():
        a = model.generate(prompt, 40, temperature=0, use_cache=True)
        b = model.generate(prompt, 40, temperature=0, use_cache=False)
        # and the logits of the last token, from the cache and from the whole sequence
        cache = model.new_cache(2, 'cuda', torch.float32)
        model(a[:, :30], cache=cache)
        cached, _ = model(a[:, 30:31], cache=cache, pos=30)
        whole, _ = model(a[:, :31])
    assert torch.equal(a, b)
    assert torch.allclose(cached[:, -1], whole[:, -1], atol=1e-4)


def test_sdpa_flash_kernel_matches_the_math_one():
    from torch.nn.attention import SDPBackend, sdpa_kernel
    model = tiny(n_embd=256)  # head size 64: flash attention's
    x, y = batch(model)
    losses = {}
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.MATH):
        with sdpa_kernel(backend), torch.autocast('cuda', dtype=torch.bfloat16):
            _, losses[backend] = model(x, y)  # (flash raises if it cannot run this case: no silent fallback)
            losses[backend].backward()
    assert losses[SDPBackend.FLASH_ATTENTION].item() == pytest.approx(losses[SDPBackend.MATH].item(), rel=1e-2)


@pytest.mark.slow
def test_gpu_checkpoint_resumes_on_cpu_and_back(char_data, tmp_path):
    gpu, cpu = tmp_path / 'gpu', tmp_path / 'cpu'
    run('train.py', *BASE, '--device=cuda', f'--data_dir={char_data}', f'--out_dir={gpu}')
    assert load_checkpoint(gpu / 'ckpt.pt')['iter_num'] == 8
    # every step has its row, the last one too
    assert [r['iter'] for r in log_rows(gpu) if 'loss' in r] == list(range(8))
    p = run('train.py', *BASE, '--device=cpu', '--init_from=resume', '--max_iters=12', f'--data_dir={char_data}', f'--out_dir={gpu}')
    assert 'resuming from' in p.stdout and load_checkpoint(gpu / 'ckpt.pt')['iter_num'] == 12
    run('train.py', *BASE, '--device=cpu', '--dtype=float32', f'--data_dir={char_data}', f'--out_dir={cpu}')
    run('train.py', *BASE, '--device=cuda', '--init_from=resume', '--max_iters=12', f'--data_dir={char_data}', f'--out_dir={cpu}')
    rows = log_rows(cpu)
    assert [r['iter'] for r in rows if 'loss' in r] == list(range(12)) and rows[-1]['iter'] == 12
    s = run('sample.py', f'--out_dir={cpu}', '--device=cpu', '--start=the', '--num_samples=1', '--max_new_tokens=5')
    assert s.stdout.startswith('the')


@pytest.mark.slow
def test_nonfinite_loss_on_a_gpu_stops_the_run(char_data, tmp_path):
    out = tmp_path / 'out'
    run('train.py', *BASE, '--device=cuda', '--dtype=float32', f'--data_dir={char_data}', f'--out_dir={out}')
    before = (out / 'ckpt.pt').read_bytes()
    bad = ['--init_from=resume', '--max_iters=30', '--learning_rate=1e30', '--warmup_iters=0', '--grad_clip=0', '--dtype=float32']
    p = run('train.py', *BASE, *bad, '--device=cuda', f'--data_dir={char_data}', f'--out_dir={out}', check=False)
    assert p.returncode == 1 and 'error: loss is nan at iter' in p.stderr and 'Traceback' not in p.stderr
    assert (out / 'ckpt.pt').read_bytes() == before


@pytest.mark.slow
def test_cuda_graphs_train_and_evaluate(char_data, tmp_path):
    """compile_mode=reduce-overhead: the compiled step replays as CUDA graphs (the loss is read before
    the next replay overwrites the graph's output); evals on the whole val split
    (a shorter last batch: another graph) and the checkpoint still work, and it learns as the plain
    compiled run does (the same tokens, bf16: rounding apart)."""
    args = [*BASE, '--compile=True', '--eval_full_val=True', f'--data_dir={char_data}']
    run('train.py', *args, '--device=cuda', '--compile_mode=reduce-overhead', f'--out_dir={tmp_path / "graphs"}')
    run('train.py', *args, '--device=cuda', f'--out_dir={tmp_path / "plain"}')
    a, b = (log_rows(tmp_path / d) for d in ('graphs', 'plain'))
    assert [r['iter'] for r in a if 'loss' in r] == list(range(8))
    la, lb = ([r.get('loss', r.get('val_loss')) for r in rows] for rows in (a, b))
    assert la == pytest.approx(lb, rel=2e-2)


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize('mode', ['ddp', 'fsdp'])
def test_one_process_over_nccl_trains_as_without_torchrun(char_data, tmp_path, mode):
    """torchrun with one process: the process group is NCCL's, the model is wrapped (DDP or FSDP2),
    and the run is the plain run's (the same tokens; float32, so only kernel order differs)."""
    plain, dist = tmp_path / 'plain', tmp_path / 'dist'
    args = [*BASE, '--dtype=float32', f'--data_dir={char_data}']
    run('train.py', *args, '--device=cuda', f'--out_dir={plain}')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nnodes=1', '--nproc_per_node=1', '--rdzv-backend=c10d',
           f'--rdzv-endpoint=127.0.0.1:{free_port()}', str(ROOT / 'train.py'), *args, f'--fsdp={mode == "fsdp"}', f'--out_dir={dist}']
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert p.returncode == 0, p.stderr[-3000:]
    assert 'cuda:0 float32 x1' in p.stdout
    la, lb = ([r['loss'] for r in log_rows(o) if 'loss' in r] for o in (plain, dist))
    assert la == pytest.approx(lb, rel=1e-3)
    wa, wb = load_checkpoint(plain / 'ckpt.pt')['model'], load_checkpoint(dist / 'ckpt.pt')['model']
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], rtol=1e-3, atol=1e-4) for k in wa)
