import math

import pytest
import torch

from model import ARCH, GPT, ModelConfig, make_config, sample_next

V = 97


def tiny(arch, **kw):
    kw = {**dict(block_size=24, vocab_size=V, n_layer=2, n_head=4, n_embd=32), **kw}
    torch.manual_seed(0)
    model = GPT(make_config(arch, **kw)).eval()
    # GPT-2's init gives near-uniform logits and greedy decoding repeats one token; larger
    # random weights make every position's output depend on its context.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.3)
    return model


FAMILIES = [('gpt2', {}), ('llama', {}), ('llama', {'n_kv_head': 2}), ('llama', {'n_kv_head': 1, 'tie_embeddings': True})]


@pytest.mark.parametrize('arch,kw', FAMILIES)
def test_forward_shapes_and_loss(arch, kw):
    model = tiny(arch, **kw)
    x = torch.randint(0, V, (3, 10))
    logits, loss = model(x)
    assert logits.shape == (3, 10, V) and loss is None
    logits, _ = model(x, last_only=True)
    assert logits.shape == (3, 1, V)
    logits, loss = model(x, x)
    assert logits.shape == (3, 10, V) and loss.ndim == 0 and math.isfinite(loss.item())
    # -100 targets are ignored: the loss equals the loss over the other positions alone
    y = x.clone()
    y[:, :5] = -100
    _, masked = model(x, y)
    full = torch.nn.functional.cross_entropy(logits[:, 5:].reshape(-1, V), x[:, 5:].reshape(-1))
    assert torch.allclose(masked, full, atol=1e-5)


def test_family_switches_change_the_modules():
    g, l = tiny('gpt2'), tiny('llama', n_kv_head=2)
    assert g.wpe is not None and l.wpe is None
    assert isinstance(g.blocks[0].ln_1, torch.nn.LayerNorm) and not isinstance(l.blocks[0].ln_1, torch.nn.LayerNorm)
    assert g.lm_head.weight is g.wte.weight and l.lm_head.weight is not l.wte.weight
    assert g.blocks[0].attn.qkv.bias is not None and l.blocks[0].attn.qkv.bias is None
    assert hasattr(l.blocks[0].mlp, 'gate_proj') and not hasattr(g.blocks[0].mlp, 'gate_proj')
    hs = 32 // 4
    assert l.blocks[0].attn.qkv.out_features == (4 + 2 * 2) * hs  # q heads + k and v with 2 kv heads
    # one field flipped at a time
    assert make_config('gpt2', pos_emb='rope').pos_emb == 'rope' and make_config('gpt2', pos_emb=None).pos_emb == 'learned'


@pytest.mark.parametrize('arch,kw', FAMILIES)
def test_causal(arch, kw):
    model = tiny(arch, **kw)
    x = torch.randint(0, V, (2, 16))
    before, _ = model(x)
    x2 = x.clone()
    x2[:, 9:] = torch.randint(0, V, (2, 7))
    after, _ = model(x2)
    assert torch.allclose(before[:, :9], after[:, :9], atol=1e-5)
    assert not torch.allclose(before[:, 9:], after[:, 9:], atol=1e-3)


@pytest.mark.parametrize('arch,kw', FAMILIES)
def test_kv_cache_equals_recompute(arch, kw):
    model = tiny(arch, **kw)
    prompt = torch.randint(0, V, (2, 5))
    # 40 new tokens: past block_size=24, so the sliding-window path is exercised too
    a = model.generate(prompt, 40, temperature=0, use_cache=True)
    b = model.generate(prompt, 40, temperature=0, use_cache=False)
    assert a.shape == (2, 45)
    assert torch.equal(a, b)
    assert len(set(a[0, 5:].tolist())) > 3  # not one token repeated: the comparison means something


@pytest.mark.parametrize('arch', ['gpt2', 'llama'])
def test_cached_logits_match_full_forward(arch):
    model = tiny(arch, n_kv_head=2 if arch == 'llama' else 0)
    x = torch.randint(0, V, (1, 20))
    full, _ = model(x)
    cache = model.new_cache(1, 'cpu', torch.float32)
    first, _ = model(x[:, :12], cache=cache, pos=0)  # prefill
    chunk, _ = model(x[:, 12:15], cache=cache, pos=12)  # several tokens after a cache: explicit mask
    steps = [model(x[:, t:t + 1], cache=cache, pos=t)[0] for t in range(15, 20)]
    cached = torch.cat([first, chunk, *steps], dim=1)
    assert torch.allclose(full, cached, atol=1e-4)


def test_sampling_options():
    g = torch.Generator().manual_seed(0)
    logits = torch.tensor([[5.0, 4.0, 1.0, 0.0, -1.0]]).repeat(200, 1)
    assert sample_next(logits, temperature=0).eq(0).all()
    top2 = sample_next(logits, top_k=2, generator=g)
    assert set(top2.tolist()) == {0, 1}
    # probs ~ [0.72, 0.26, 0.01, ...]: top_p=0.5 keeps only the first token; 0.9 keeps two
    assert sample_next(logits, top_p=0.5, generator=g).eq(0).all()
    assert set(sample_next(logits, top_p=0.9, generator=g).tolist()) == {0, 1}


def test_stop_tokens_end_generation():
    model = tiny('gpt2')
    prompt = torch.randint(0, V, (1, 4))
    free = model.generate(prompt, 10, temperature=0)
    stop = free[0, 6].item()  # the third generated token
    first = free[0, 4:].tolist().index(stop)
    stopped = model.generate(prompt, 10, temperature=0, stop_tokens={stop})
    assert stopped.shape[1] == 4 + first + 1 and stopped[0, -1].item() == stop


def test_init_scales_residual_projections():
    model = GPT(ModelConfig(n_layer=8, n_embd=64, n_head=4, vocab_size=V, block_size=16))
    std = model.blocks[0].attn.o_proj.weight.std().item()
    assert abs(std - 0.02 / math.sqrt(16)) < 0.002
    assert abs(model.blocks[0].attn.qkv.weight.std().item() - 0.02) < 0.002


def test_optimizer_decays_only_matrices():
    model = tiny('gpt2')
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95))
    decay, no_decay = opt.param_groups
    assert decay['weight_decay'] == 0.1 and no_decay['weight_decay'] == 0.0
    assert opt.defaults['fused']  # one kernel for the whole update, on CPU as on CUDA
    assert all(p.dim() >= 2 for p in decay['params']) and all(p.dim() == 1 for p in no_decay['params'])
    assert sum(p.numel() for g in opt.param_groups for p in g['params']) == sum(p.numel() for p in model.parameters())


def test_param_count_and_flops():
    model = tiny('gpt2')
    total = sum(p.numel() for p in model.parameters())  # tied weights counted once
    assert model.num_params(non_embedding=False) == total
    assert model.num_params() == total - 24 * 32  # position table: a lookup, no FLOPs
    untied = tiny('llama')  # rope, untied: the token table is a lookup too, lm_head is the matmul
    assert untied.num_params() == sum(p.numel() for p in untied.parameters()) - V * 32
    # FLOPs per token by hand: 6 per multiplied weight, plus attention's 12 * L * H * hs * T
    per_layer = 32 * 3 * 32 + 32 * 32 + 32 * 128 * 2 + 3 * 32 + 32 + 128 + 32 + 4 * 32  # qkv, o, mlp, biases, 2 LayerNorms
    assert model.flops_per_token() == 6 * (2 * per_layer + 2 * 32 + V * 32) + 12 * 2 * 4 * 8 * 24
    assert model.estimate_mfu(1000, 2.0, 1e9) == pytest.approx(model.flops_per_token() * 1000 / 2.0 / 1e9)


@pytest.mark.parametrize('bad,msg', [(dict(n_embd=30, n_head=4), 'divisible by n_head'), (dict(bias='false'), 'must be True or False'),
                                     (dict(n_head=4, n_kv_head=3), 'divisible by n_kv_head'),
                                     (dict(norm='batchnorm'), 'norm='), (dict(mlp='relu'), 'mlp=')])
def test_config_errors_are_readable(bad, msg):
    with pytest.raises(ValueError, match=msg):
        ModelConfig(**{**dict(n_embd=32, n_head=4), **bad})
    with pytest.raises(ValueError, match='arch='):
        make_config('gpt3')


def test_old_config_dicts_load_with_defaults():
    cfg = ModelConfig.from_dict({'n_layer': 3, 'n_head': 2, 'n_embd': 16, 'from_the_future': 1})
    assert cfg.n_layer == 3 and cfg.rope_theta == 10000.0 and cfg.n_kv_head == 2
    assert set(ARCH) == {'gpt2', 'llama', 'qwen2', 'qwen3'}
    assert cfg.head_dim == 8 and not cfg.qk_norm  # (fields added later take their defaults)
