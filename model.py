"""
The nanolm model: one file, one config, two families and two of their descendants.

  GPT-2  learned positions, LayerNorm, GELU MLP, biases, tied embeddings
  LLaMA  RoPE, RMSNorm, SwiGLU MLP, no biases, grouped-query attention, untied embeddings
  Qwen2  LLaMA with biases on q, k, v (qkv_bias) and, in the small sizes, tied embeddings
  Qwen3  LLaMA with an RMSNorm on every q and k head (qk_norm), a head size of its own (head_dim)

Each difference is a plain field of ModelConfig (norm, pos_emb, mlp, bias, tie_embeddings,
n_kv_head, qkv_bias, qk_norm, head_dim), so a reader can flip one at a time; ARCH holds the
presets, SIZES the shapes of released models (GPT-2 124M ... 1.5B, Qwen3-0.6B, ...).
Read top to bottom: norms, rotary embeddings, attention, MLP, block, config, model,
then generation with a KV cache.

Shapes in comments: B batch, T time (tokens), C n_embd, nh heads, nkv key/value heads,
hs head size (head_dim; C // nh unless set), V vocab size.

Why one file over 400 lines: the whole forward pass, both families and generation are what a
reader comes to learn; split, every shape would have to be followed across files.
"""
import math
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F


# The two families. Anything here can still be overridden field by field.
ARCH = {
    'gpt2': dict(norm='layernorm', pos_emb='learned', mlp='gelu', bias=True, tie_embeddings=True),
    'llama': dict(norm='rmsnorm', pos_emb='rope', mlp='swiglu', bias=False, tie_embeddings=False),
    'qwen2': dict(norm='rmsnorm', pos_emb='rope', mlp='swiglu', bias=False, tie_embeddings=True, qkv_bias=True),
    'qwen3': dict(norm='rmsnorm', pos_emb='rope', mlp='swiglu', bias=False, tie_embeddings=True, qk_norm=True),
}

# Shapes of released models, one setting away (train.py --model_size=...): an arch preset plus the
# sizes. vocab_size and block_size are the released model's; a run on other data keeps its own.
SIZES = {
    'gpt2-124m': dict(arch='gpt2', n_layer=12, n_head=12, n_embd=768, vocab_size=50257, block_size=1024),
    'gpt2-355m': dict(arch='gpt2', n_layer=24, n_head=16, n_embd=1024, vocab_size=50257, block_size=1024),
    'gpt2-774m': dict(arch='gpt2', n_layer=36, n_head=20, n_embd=1280, vocab_size=50257, block_size=1024),
    'gpt2-1.5b': dict(arch='gpt2', n_layer=48, n_head=25, n_embd=1600, vocab_size=50257, block_size=1024),
    'smollm2-135m': dict(arch='llama', n_layer=30, n_head=9, n_kv_head=3, n_embd=576, ffn_hidden=1536, vocab_size=49152,
                         block_size=8192, rope_theta=100000.0, tie_embeddings=True),
    'tinyllama-1.1b': dict(arch='llama', n_layer=22, n_head=32, n_kv_head=4, n_embd=2048, ffn_hidden=5632, vocab_size=32000,
                           block_size=2048),
    'qwen2.5-0.5b': dict(arch='qwen2', n_layer=24, n_head=14, n_kv_head=2, n_embd=896, ffn_hidden=4864, vocab_size=151936,
                         block_size=32768, rope_theta=1000000.0, norm_eps=1e-6),
    'qwen3-0.6b': dict(arch='qwen3', n_layer=28, n_head=16, n_kv_head=8, n_embd=1024, head_dim=128, ffn_hidden=3072,
                       vocab_size=151936, block_size=40960, rope_theta=1000000.0, norm_eps=1e-6),
}


@dataclass
class ModelConfig:
    block_size: int = 256      # longest sequence the model sees (context length)
    vocab_size: int = 50304    # GPT-2's 50257 rounded up to a multiple of 64 for fast matmuls
    n_layer: int = 6
    n_head: int = 6
    n_kv_head: int = 0         # key/value heads for grouped-query attention; 0 = n_head (plain MHA)
    n_embd: int = 384
    head_dim: int = 0          # size of one attention head; 0 = n_embd // n_head (Qwen3 sets its own: 128)
    ffn_hidden: int = 0        # MLP width; 0 = 4*C for gelu, ~8/3*C (rounded to 64) for swiglu
    dropout: float = 0.0
    norm: str = 'layernorm'    # 'layernorm' | 'rmsnorm'
    norm_eps: float = 1e-5
    pos_emb: str = 'learned'   # 'learned' (GPT-2) | 'rope' (LLaMA)
    rope_theta: float = 10000.0
    mlp: str = 'gelu'          # 'gelu' (GPT-2) | 'swiglu' (LLaMA)
    bias: bool = True          # biases in Linear layers and LayerNorm
    tie_embeddings: bool = True  # lm_head shares its weight with the token embedding
    qkv_bias: bool = False     # biases on q, k, v even when bias=False (Qwen2)
    qk_norm: bool = False      # an RMSNorm over each q and k head before rope (Qwen3)
    # Llama 3.1's long-context rope scaling ('llama3' in Hugging Face configs); factor 1.0 = off
    rope_scaling_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_pos: int = 8192  # the context length the model was pretrained at

    def __post_init__(self):
        # A wrong architecture should fail here, in one readable line, not deep in a matmul.
        bad = [f"{k}={getattr(self, k)}" for k in ('block_size', 'vocab_size', 'n_layer', 'n_head', 'n_embd') if getattr(self, k) < 1]
        bad += [f"{k}={getattr(self, k)}" for k in ('n_kv_head', 'ffn_hidden', 'head_dim') if getattr(self, k) < 0]  # 0 = default
        if bad:
            raise ValueError(f"{', '.join(bad)}: sizes must be positive (n_kv_head=0, ffn_hidden=0 and head_dim=0 mean the default)")
        self.n_kv_head = self.n_kv_head or self.n_head
        checks = [
            (self.head_dim or self.n_embd % self.n_head == 0,
             f"n_embd={self.n_embd} must be divisible by n_head={self.n_head} (or set head_dim)"),
            (self.n_head % self.n_kv_head == 0, f"n_head={self.n_head} must be divisible by n_kv_head={self.n_kv_head}"),
            (self.norm in ('layernorm', 'rmsnorm'), f"norm={self.norm!r} must be 'layernorm' or 'rmsnorm'"),
            (self.pos_emb in ('learned', 'rope'), f"pos_emb={self.pos_emb!r} must be 'learned' or 'rope'"),
            (self.mlp in ('gelu', 'swiglu'), f"mlp={self.mlp!r} must be 'gelu' or 'swiglu'"),
            (0.0 <= self.dropout < 1.0, f"dropout={self.dropout} must be in [0, 1)"),
            (self.rope_theta > 0, f"rope_theta={self.rope_theta} must be positive (10000.0 is usual)"),
            (isinstance(self.bias, bool) and isinstance(self.tie_embeddings, bool),
             f"bias={self.bias!r} and tie_embeddings={self.tie_embeddings!r} must be True or False"),
            (isinstance(self.qkv_bias, bool), f"qkv_bias={self.qkv_bias!r} must be True or False"),
            (self.rope_scaling_factor == 1.0 or (self.rope_scaling_factor > 0 and self.rope_low_freq_factor > 0
                                                 and self.rope_high_freq_factor > self.rope_low_freq_factor),
             "rope scaling needs rope_scaling_factor > 0 and rope_high_freq_factor > rope_low_freq_factor > 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)
        self.head_dim = self.head_dim or self.n_embd // self.n_head
        if self.pos_emb == 'rope' and self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim}: rope needs an even head size")
        if not isinstance(self.qk_norm, bool) or (self.qk_norm and self.norm != 'rmsnorm'):
            raise ValueError(f"qk_norm={self.qk_norm!r} must be True or False, and True only with norm='rmsnorm'")
        if not self.ffn_hidden:
            # SwiGLU has three matrices instead of two, so 2/3 of 4*C keeps the parameter count.
            self.ffn_hidden = 4 * self.n_embd if self.mlp == 'gelu' else 64 * math.ceil(8 * self.n_embd / 3 / 64)

    @classmethod
    def from_dict(cls, d):
        """Build from a saved dict; unknown keys (from a newer version) are dropped, missing ones take defaults."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def make_config(arch='gpt2', **overrides):
    """ModelConfig from a family preset plus any field overrides (None means 'use the preset')."""
    if arch not in ARCH:
        raise ValueError(f"arch={arch!r} must be one of {sorted(ARCH)}")
    return ModelConfig(**{**ARCH[arch], **{k: v for k, v in overrides.items() if v is not None}})


def size_config(name, **overrides):
    """ModelConfig of a SIZES entry (its arch preset, then its shape, then overrides: e.g. the run's
    own vocab_size and block_size)."""
    if name not in SIZES:
        raise ValueError(f"model_size={name!r} must be one of {', '.join(SIZES)}")
    size = dict(SIZES[name])
    return make_config(size.pop('arch'), **{**size, **overrides})


def released_params(name):
    """Parameters of a SIZES entry as released (with its own vocabulary), counted on the meta device:
    nothing is allocated, so a 1.5B shape costs nothing to count."""
    with torch.device('meta'):
        return GPT(size_config(name)).num_params(non_embedding=False)


LOSS_CHUNK = 2 ** 24  # logits a chunk of the loss under gradient checkpointing (64 MB in float32)


# ----------------------------------------------------------------------------- layers

class RMSNorm(nn.Module):
    """LLaMA's norm: scale by 1/rms(x); no mean subtraction, no bias."""
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # Normalize in fp32 even under autocast: the mean of squares overflows fp16 easily.
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def make_norm(cfg, dim=None):
    if cfg.norm == 'rmsnorm':
        return RMSNorm(dim or cfg.n_embd, cfg.norm_eps)
    return nn.LayerNorm(dim or cfg.n_embd, eps=cfg.norm_eps, bias=cfg.bias)


def rope_tables(cfg):
    """cos/sin for rotary embeddings, each (block_size, hs/2)."""
    hs = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, hs, 2).float() / hs))  # (hs/2,)
    if cfg.rope_scaling_factor != 1.0:
        # Llama 3.1: slow the low frequencies (wavelength > original context / low_freq_factor) by
        # the factor, keep the high ones (< original / high_freq_factor), blend those in between.
        wavelen = 2 * math.pi / inv_freq
        mix = ((cfg.rope_original_max_pos / wavelen - cfg.rope_low_freq_factor) /
               (cfg.rope_high_freq_factor - cfg.rope_low_freq_factor)).clamp(0, 1)  # 0 = slowed, 1 = kept
        inv_freq = (1 - mix) * inv_freq / cfg.rope_scaling_factor + mix * inv_freq
    angles = torch.outer(torch.arange(cfg.block_size).float(), inv_freq)        # (block_size, hs/2)
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
    """Rotate pairs (x[i], x[i + hs/2]) by position-dependent angles (the Hugging Face LLaMA layout).
    x (B, nh, T, hs); cos, sin (T, hs/2)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).type_as(x)


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.nh, self.nkv, self.hs = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        # q, k and v come out of one matmul; with GQA k and v have fewer heads than q.
        # nh * hs is C unless head_dim says otherwise (Qwen3-0.6B: 16 heads of 128 on C = 1024).
        self.qkv = nn.Linear(cfg.n_embd, (self.nh + 2 * self.nkv) * self.hs, bias=cfg.bias or cfg.qkv_bias)
        self.o_proj = nn.Linear(self.nh * self.hs, cfg.n_embd, bias=cfg.bias)
        # Qwen3: one RMSNorm (a gain of hs) shared by all heads, applied to each q and k head on its own
        self.q_norm, self.k_norm = (make_norm(cfg, self.hs), make_norm(cfg, self.hs)) if cfg.qk_norm else (None, None)
        self.dropout = cfg.dropout

    def forward(self, x, rope=None, cache=None, pos=0):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split([self.nh * self.hs, self.nkv * self.hs, self.nkv * self.hs], dim=-1)
        q = q.view(B, T, self.nh, self.hs).transpose(1, 2)   # (B, nh, T, hs)
        k = k.view(B, T, self.nkv, self.hs).transpose(1, 2)  # (B, nkv, T, hs)
        v = v.view(B, T, self.nkv, self.hs).transpose(1, 2)  # (B, nkv, T, hs)
        if self.q_norm is not None:  # over the last dim, hs: each head of each token on its own
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            cos, sin = rope
            at = pos.view(B, 1, 1) if torch.is_tensor(pos) else slice(pos, pos + T)  # per row (decode_rows) or (T,)
            q, k = apply_rope(q, cos[at], sin[at]), apply_rope(k, cos[at], sin[at])
        if torch.is_tensor(pos):
            return self.decode_rows(q, k, v, cache, pos)
        if cache is not None:
            # cache = (k_all, v_all), each (B, nkv, block_size, hs): write this step, read everything so far.
            cache[0][:, :, pos:pos + T] = k
            cache[1][:, :, pos:pos + T] = v
            k, v = cache[0][:, :, :pos + T], cache[1][:, :, :pos + T]  # (B, nkv, pos+T, hs)
        if self.nkv != self.nh:
            # Each k/v head serves nh/nkv query heads.
            k = k.repeat_interleave(self.nh // self.nkv, dim=1)  # (B, nh, S, hs)
            v = v.repeat_interleave(self.nh // self.nkv, dim=1)
        # Causal masking: a fresh sequence uses is_causal; one new token may see every cached one;
        # several new tokens after a cache need an explicit mask (is_causal would align it wrongly).
        mask = None
        if pos > 0 and T > 1:
            mask = torch.ones(T, pos + T, dtype=torch.bool, device=x.device).tril(diagonal=pos)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=(pos == 0 and T > 1),
                                           dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, self.nh * self.hs)  # (B, T, nh*hs): heads side by side again
        return F.dropout(self.o_proj(y), self.dropout, self.training)

    def decode_rows(self, q, k, v, cache, pos):
        """GPT.decode_rows's attention: q, k, v (B, nh or nkv, 1, hs), one new token per row, row b at
        position pos[b]; cache (B, nkv, L, hs) holds each row's earlier tokens, zeros after them."""
        B, S = q.size(0), int(pos.max()) + 1
        rows = torch.arange(B, device=q.device)
        cache[0][rows, :, pos], cache[1][rows, :, pos] = k[:, :, 0], v[:, :, 0]  # (B, nkv, hs) into slot pos[b]
        k, v = cache[0][:, :, :S], cache[1][:, :, :S]  # (B, nkv, S, hs)
        if self.nkv != self.nh:
            k, v = k.repeat_interleave(self.nh // self.nkv, dim=1), v.repeat_interleave(self.nh // self.nkv, dim=1)
        seen = (torch.arange(S, device=q.device) <= pos[:, None]).view(B, 1, 1, S)  # a row sees only its own tokens
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=seen)  # (B, nh, 1, hs)
        return self.o_proj(y.transpose(1, 2).reshape(B, 1, -1))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.swiglu = cfg.mlp == 'swiglu'
        if self.swiglu:
            self.gate_proj = nn.Linear(cfg.n_embd, cfg.ffn_hidden, bias=cfg.bias)
        self.up_proj = nn.Linear(cfg.n_embd, cfg.ffn_hidden, bias=cfg.bias)
        self.down_proj = nn.Linear(cfg.ffn_hidden, cfg.n_embd, bias=cfg.bias)
        self.dropout = cfg.dropout

    def forward(self, x):  # (B, T, C) -> (B, T, ffn_hidden) -> (B, T, C)
        h = F.silu(self.gate_proj(x)) * self.up_proj(x) if self.swiglu else F.gelu(self.up_proj(x), approximate='tanh')
        return F.dropout(self.down_proj(h), self.dropout, self.training)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""
    def __init__(self, cfg):
        super().__init__()
        self.ln_1, self.attn = make_norm(cfg), Attention(cfg)
        self.ln_2, self.mlp = make_norm(cfg), MLP(cfg)

    def forward(self, x, rope=None, cache=None, pos=0):
        x = x + self.attn(self.ln_1(x), rope, cache, pos)
        return x + self.mlp(self.ln_2(x))


# ----------------------------------------------------------------------------- the model

class GPT(nn.Module):
    gradient_checkpointing = False  # training: keep only each block's input, recompute the rest in backward

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.pos_emb == 'learned' else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = make_norm(cfg)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight  # one (V, C) matrix reads tokens in and writes them out
        if cfg.pos_emb == 'rope':
            cos, sin = rope_tables(cfg)
            # Not saved in checkpoints (persistent=False): they are recomputed from the config.
            self.register_buffer('rope_cos', cos, persistent=False)
            self.register_buffer('rope_sin', sin, persistent=False)
        self.apply(self._init_weights)
        # GPT-2's init: the projections that write into the residual stream get a smaller std,
        # so the stream's variance does not grow with depth (2 writes per layer).
        for name, p in self.named_parameters():
            if name.endswith(('o_proj.weight', 'down_proj.weight')):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    def _init_weights(self, m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding=True):
        """Parameter count. non_embedding leaves out the tables that are only looked up, not
        multiplied: position embeddings, and the token embedding when it is not tied to the
        output layer (tied, it is also the (C, V) matmul at the top, so it counts)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.wpe.weight.numel() if self.wpe is not None else 0
            n -= self.wte.weight.numel() if not self.cfg.tie_embeddings else 0
        return n

    def forward(self, idx, targets=None, cache=None, pos=0, last_only=False, hidden=False):
        """idx (B, T) token ids. Returns (logits, loss).
        targets (B, T): next-token ids; -100 marks positions that do not count (SFT prompts, padding).
        cache: from new_cache(), for generation; pos: index of idx[:, 0] in the sequence.
        last_only: compute logits for the last position only (generation: saves a (T, V) matmul).
        hidden: return the final hidden states (B, T, C) instead of logits, for a head of one's own
        (finetune_cls.py's classifier)."""
        B, T = idx.shape
        if pos + T > self.cfg.block_size:
            raise ValueError(f"sequence of {pos + T} tokens is longer than block_size={self.cfg.block_size}")
        x = self.wte(idx)  # (B, T, C)
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(pos, pos + T, device=idx.device))  # (T, C) broadcast over B
        x = self.drop(x)
        rope = (self.rope_cos, self.rope_sin) if self.wpe is None else None
        for i, block in enumerate(self.blocks):
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                # Saves the (B, T, C) input instead of every activation inside the block (the (B, nh, T, T)
                # attention weights, the (B, T, 4C) MLP) and runs the block again in backward: ~1/3 more
                # compute. The recomputation replays the same dropout masks (the RNG state is saved).
                x = torch.utils.checkpoint.checkpoint(block, x, rope, None, pos, use_reentrant=False)
            else:
                x = block(x, rope, cache[i] if cache is not None else None, pos)
        x = self.ln_f(x)
        if hidden:
            return x, None  # (B, T, C)
        if targets is None:
            return self.lm_head(x[:, [-1]] if last_only else x), None  # (B, 1 or T, V)
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return None, self.chunked_loss(x, targets)
        logits = self.lm_head(x)  # (B, T, V)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-100)
        return logits, loss

    def chunked_loss(self, x, targets):
        """The same mean cross-entropy, with the (B, T, V) logits never whole: at GPT-2's vocabulary they
        are the largest activation there is (1024 x 50304 floats = 206 MB a sequence, and their softmax
        and its gradient as much again). See ChunkedLoss below. No logits are returned."""
        h, t = x.reshape(-1, x.size(-1)), targets.reshape(-1)  # (B*T, C), (B*T,)
        n = max(1, LOSS_CHUNK // self.lm_head.out_features)  # positions a chunk: ~LOSS_CHUNK logits
        kind = h.device.type
        dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else h.dtype
        return ChunkedLoss.apply(h, self.lm_head.weight, t, n, dtype)

    def configure_optimizers(self, weight_decay, learning_rate, betas, never_decay=()):
        """AdamW with weight decay on matrices (embeddings, Linear weights) only: decaying
        biases and norm gains just pulls them toward 0 for no benefit. never_decay: parameters
        left out of decay too (LoRA with new tokens: decay would shrink the frozen old rows)."""
        params = [p for p in self.parameters() if p.requires_grad]
        skip = {id(p) for p in never_decay}
        decay = [p for p in params if p.dim() >= 2 and id(p) not in skip]
        no_decay = [p for p in params if p.dim() < 2 or id(p) in skip]
        groups = [{'params': decay, 'weight_decay': weight_decay}, {'params': no_decay, 'weight_decay': 0.0}]
        # The fused kernel updates every tensor in one pass (on CPU too: 15 -> 5 ms a step for
        # the verdict model); older torch, or a device without one, gets the default instead.
        try:
            return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=True)
        except (RuntimeError, TypeError):
            return torch.optim.AdamW(groups, lr=learning_rate, betas=betas)

    def flops_per_token(self):
        """Training FLOPs per token: 6 per parameter (forward + backward) plus attention scores
        (PaLM appendix B). Embedding lookups cost nothing, but the tied head is a real matmul."""
        c, hs = self.cfg, self.cfg.head_dim
        n = self.num_params(non_embedding=True)
        return 6 * n + 12 * c.n_layer * c.n_head * hs * c.block_size

    def estimate_mfu(self, tokens_per_iter, dt, peak_flops):
        """Model FLOPs utilization: achieved training FLOP/s as a fraction of peak_flops."""
        return self.flops_per_token() * tokens_per_iter / dt / peak_flops

    # ------------------------------------------------------------------------- generation

    def new_cache(self, batch_size, device, dtype, length=None):
        """One (k, v) pair per layer, each (B, nkv, length, hs), filled as tokens arrive. length: the
        most tokens the generation will hold (at most block_size; a 32k-context model need not
        reserve 32k positions for a 300-token answer)."""
        c = self.cfg
        shape = (batch_size, c.n_kv_head, min(length or c.block_size, c.block_size), c.head_dim)
        return [(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))
                for _ in range(c.n_layer)]

    @torch.no_grad()
    def stream(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
               stop_tokens=(), use_cache=True, generator=None):
        """Yield the next token ids (B,) one step at a time, for a prompt idx (B, T).
        temperature 0 means greedy. Stops early once every row has produced a stop token.
        Beyond block_size the window slides: each step then recomputes the last block_size
        tokens (positions shift, so the cache cannot be reused) — exact, but slower."""
        bs = self.cfg.block_size
        cache, pos = None, 0
        done = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
        stop = torch.tensor(sorted(stop_tokens), dtype=idx.dtype, device=idx.device)
        for _ in range(max_new_tokens):
            if use_cache and idx.size(1) <= bs:
                if cache is None:  # prefill: the whole prompt in one forward
                    cache = self.new_cache(idx.size(0), idx.device, self.wte.weight.dtype, idx.size(1) + max_new_tokens)
                logits, _ = self(idx[:, pos:], cache=cache, pos=pos, last_only=True)
                pos = idx.size(1)
            else:
                logits, _ = self(idx[:, -bs:], last_only=True)
            next_id = sample_next(logits[:, -1, :], temperature, top_k, top_p, generator)  # (B,)
            idx = torch.cat([idx, next_id[:, None]], dim=1)
            yield next_id
            done |= torch.isin(next_id, stop)
            if done.all():
                return

    @torch.no_grad()
    def decode_rows(self, idx, cache, pos):
        """One decoding step for sequences of different lengths at once (serve.py's batches): idx (B, 1)
        the next token of each row, pos (B,) its position, cache from new_cache(B, ...) holding row b's
        first pos[b] tokens. -> logits (B, V). stream() is the one-sequence path; this one gives the
        same tokens (tests/test_serve.py), each row masked to its own length."""
        x = self.wte(idx)  # (B, 1, C)
        if self.wpe is not None:
            x = x + self.wpe(pos)[:, None]  # (B, 1, C): each row's own position
        rope = (self.rope_cos, self.rope_sin) if self.wpe is None else None
        for block, layer_cache in zip(self.blocks, cache):
            x = block(x, rope, layer_cache, pos)
        return self.lm_head(self.ln_f(x))[:, -1]  # (B, V)

    def generate(self, idx, max_new_tokens, **kw):
        """Like stream(), but returns the prompt with the new tokens appended: (B, T + new)."""
        return torch.cat([idx] + [t[:, None] for t in self.stream(idx, max_new_tokens, **kw)], dim=1)


def sample_next(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """Pick one token per row from logits (B, V)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float('-inf'))
    if top_p is not None and top_p < 1.0:
        # Nucleus: keep the smallest set of tokens whose probabilities add up to top_p.
        sorted_logits, order = torch.sort(logits, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) > top_p  # the first token is always kept
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), float('-inf'))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


class ChunkedLoss(torch.autograd.Function):
    """Mean cross-entropy of the logits h @ w.T (h (N, C) hidden states, w (V, C) the output layer,
    t (N,) targets, -100 = not counted), n positions at a time, with its gradients computed in the
    forward pass while each chunk's logits are at hand: d(loss)/d(logits) = softmax - one-hot. So the
    logits are never kept, nor recomputed in backward (recomputing them, as checkpointing each chunk
    would, costs the output layer's matmul again: a third of GPT-2 small's forward). The matmuls run in
    `dtype` (autocast's, or h's own); the gradients add up in float32. Backward only scales them."""

    @staticmethod
    def forward(ctx, h, w, t, n, dtype):
        with torch.autocast(h.device.type, enabled=False):
            wc = w.to(dtype)                                   # (V, C), cast once for every chunk
            grad_h = torch.empty_like(h)                       # (N, C)
            grad_w = torch.zeros(w.shape, dtype=torch.float32, device=w.device) if ctx.needs_input_grad[1] else None
            total = torch.zeros((), dtype=torch.float32, device=h.device)
            for i in range(0, len(t), n):
                hc, tc = h[i:i + n].to(dtype), t[i:i + n]      # (n, C), (n,)
                logits = (hc @ wc.T).float()                   # (n, V)
                total += F.cross_entropy(logits, tc, ignore_index=-100, reduction='sum')
                g = logits.softmax(-1)                         # d(sum of losses)/d(logits): softmax - one-hot,
                counted = tc != -100                           # and 0 on positions that do not count
                g[torch.arange(len(tc), device=g.device), tc.clamp(min=0)] -= 1
                g = (g * counted[:, None]).to(dtype)           # (n, V)
                grad_h[i:i + n] = g @ wc                       # (n, C)
                if grad_w is not None:
                    grad_w += (g.T @ hc).float()               # (V, C)
        count = (t != -100).sum()
        ctx.w_dtype = w.dtype
        ctx.save_for_backward(grad_h, grad_w if grad_w is not None else torch.empty(0), count)
        return total / count  # the mean over counted positions, as F.cross_entropy's

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w, count = ctx.saved_tensors
        scale = grad_out / count
        return grad_h * scale, (grad_w * scale).to(ctx.w_dtype) if ctx.needs_input_grad[1] else None, None, None, None


# ----------------------------------------------------------------------------- fine-tuning: LoRA, new tokens

class LoRALinear(nn.Module):
    """A frozen Linear plus a trainable low-rank update (LoRA, Hu et al. 2021):
    y = base(x) + (alpha / rank) * B(A(x)), A (rank, in), B (out, rank). B starts at zero, so
    before the first step the wrapped model computes exactly what the plain one did."""
    def __init__(self, base, rank, alpha, dropout=0.0):
        super().__init__()
        self.base, self.scale, self.dropout = base, alpha / rank, dropout
        dev = base.weight.device
        self.lora_a = nn.Parameter(torch.randn(rank, base.in_features, device=dev) / math.sqrt(base.in_features))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=dev))

    def forward(self, x):  # (B, T, in) -> (B, T, out), through (B, T, rank)
        h = F.linear(F.dropout(x, self.dropout, self.training), self.lora_a)
        return self.base(x) + F.linear(h, self.lora_b) * self.scale


def add_lora(model, rank, alpha, dropout=0.0, targets=('qkv', 'o_proj', 'up_proj', 'down_proj')):
    """Wrap the Linear layers called `targets` inside the blocks (any of qkv, o_proj, gate_proj,
    up_proj, down_proj; each adapter takes its layer's own widths, e.g. qkv's (nh + 2 nkv) * hs) in LoRALinear, and freeze the rest: afterwards only the adapters
    train. Unfreeze anything else that should (new token rows, a new head) after this call."""
    if rank < 1:
        raise ValueError(f"lora rank={rank} must be at least 1")
    model.requires_grad_(False)
    found = set()
    for parent in list(model.blocks.modules()):
        for name, child in list(parent.named_children()):
            if name in targets and isinstance(child, nn.Linear):
                setattr(parent, name, LoRALinear(child, rank, alpha, dropout))
                found.add(name)
    missing = [t for t in targets if t not in found]
    if missing:
        have = sorted({n.split('.')[-1] for n, m in model.blocks.named_modules() if isinstance(m, nn.Linear)} - {'base'})
        raise ValueError(f"lora targets {', '.join(missing)}: no such projection in this model (it has {', '.join(have)})")
    return model


def merge_lora(model):
    """Fold every adapter into its weight (W += scale * B @ A) and put the plain Linear back:
    the same function, the plain model's parameter names, no extra work per token."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LoRALinear):
                with torch.no_grad():
                    child.base.weight += child.scale * (child.lora_b @ child.lora_a)  # (out, rank) @ (rank, in)
                setattr(parent, name, child.base)
    return model


def grow_vocab(model, new_size, n_old=None):
    """Room for new tokens (chat tokens added to GPT-2's vocabulary): the token embedding and the
    output layer get new_size rows (never fewer than now), and rows n_old..new_size-1 (n_old:
    the current size) start as the mean of rows 0..n_old-1, an "average token" of a sensible
    scale. Old rows are kept as they are, so every old token's logit is unchanged; tied
    embeddings stay one matrix."""
    size, n_old = max(new_size, model.cfg.vocab_size), model.cfg.vocab_size if n_old is None else n_old

    def grown(w):  # (V, C) -> (size, C)
        out = torch.cat([w.detach(), w.detach().new_zeros(size - w.size(0), w.size(1))])
        out[n_old:new_size] = w.detach()[:n_old].mean(0)
        return nn.Parameter(out)
    model.wte.weight = grown(model.wte.weight)
    model.lm_head.weight = model.wte.weight if model.cfg.tie_embeddings else grown(model.lm_head.weight)
    model.wte.num_embeddings = model.lm_head.out_features = model.cfg.vocab_size = size
    return model
