"""
The nanolm model: one file, one config, two families.

  GPT-2  learned positions, LayerNorm, GELU MLP, biases, tied embeddings
  LLaMA  RoPE, RMSNorm, SwiGLU MLP, no biases, grouped-query attention, untied embeddings

Each difference is a plain field of ModelConfig (norm, pos_emb, mlp, bias, tie_embeddings,
n_kv_head), so a reader can flip one at a time; ARCH holds the two presets.
Read top to bottom: norms, rotary embeddings, attention, MLP, block, config, model,
then generation with a KV cache.

Shapes in comments: B batch, T time (tokens), C n_embd, nh heads, nkv key/value heads,
hs head size (C // nh), V vocab size.
"""
import glob
import math
import os
import re
import shutil
import time
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F


# The two families. Anything here can still be overridden field by field.
ARCH = {
    'gpt2': dict(norm='layernorm', pos_emb='learned', mlp='gelu', bias=True, tie_embeddings=True),
    'llama': dict(norm='rmsnorm', pos_emb='rope', mlp='swiglu', bias=False, tie_embeddings=False),
}


@dataclass
class ModelConfig:
    block_size: int = 256      # longest sequence the model sees (context length)
    vocab_size: int = 50304    # GPT-2's 50257 rounded up to a multiple of 64 for fast matmuls
    n_layer: int = 6
    n_head: int = 6
    n_kv_head: int = 0         # key/value heads for grouped-query attention; 0 = n_head (plain MHA)
    n_embd: int = 384
    ffn_hidden: int = 0        # MLP width; 0 = 4*C for gelu, ~8/3*C (rounded to 64) for swiglu
    dropout: float = 0.0
    norm: str = 'layernorm'    # 'layernorm' | 'rmsnorm'
    norm_eps: float = 1e-5
    pos_emb: str = 'learned'   # 'learned' (GPT-2) | 'rope' (LLaMA)
    rope_theta: float = 10000.0
    mlp: str = 'gelu'          # 'gelu' (GPT-2) | 'swiglu' (LLaMA)
    bias: bool = True          # biases in Linear layers and LayerNorm
    tie_embeddings: bool = True  # lm_head shares its weight with the token embedding

    def __post_init__(self):
        # A wrong architecture should fail here, in one readable line, not deep in a matmul.
        bad = [f"{k}={getattr(self, k)}" for k in ('block_size', 'vocab_size', 'n_layer', 'n_head', 'n_embd') if getattr(self, k) < 1]
        bad += [f"{k}={getattr(self, k)}" for k in ('n_kv_head', 'ffn_hidden') if getattr(self, k) < 0]  # 0 = default
        if bad:
            raise ValueError(f"{', '.join(bad)}: sizes must be positive (n_kv_head=0 and ffn_hidden=0 mean the default)")
        self.n_kv_head = self.n_kv_head or self.n_head
        checks = [
            (self.n_embd % self.n_head == 0, f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}"),
            (self.n_head % self.n_kv_head == 0, f"n_head={self.n_head} must be divisible by n_kv_head={self.n_kv_head}"),
            (self.pos_emb != 'rope' or (self.n_embd // self.n_head) % 2 == 0, "rope needs an even head size (n_embd // n_head)"),
            (self.norm in ('layernorm', 'rmsnorm'), f"norm={self.norm!r} must be 'layernorm' or 'rmsnorm'"),
            (self.pos_emb in ('learned', 'rope'), f"pos_emb={self.pos_emb!r} must be 'learned' or 'rope'"),
            (self.mlp in ('gelu', 'swiglu'), f"mlp={self.mlp!r} must be 'gelu' or 'swiglu'"),
            (0.0 <= self.dropout < 1.0, f"dropout={self.dropout} must be in [0, 1)"),
            (self.rope_theta > 0, f"rope_theta={self.rope_theta} must be positive (10000.0 is usual)"),
            (isinstance(self.bias, bool) and isinstance(self.tie_embeddings, bool),
             f"bias={self.bias!r} and tie_embeddings={self.tie_embeddings!r} must be True or False"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)
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


def make_norm(cfg):
    if cfg.norm == 'rmsnorm':
        return RMSNorm(cfg.n_embd, cfg.norm_eps)
    return nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps, bias=cfg.bias)


def rope_tables(cfg):
    """cos/sin for rotary embeddings, each (block_size, hs/2)."""
    hs = cfg.n_embd // cfg.n_head
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, hs, 2).float() / hs))  # (hs/2,)
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
        self.nh, self.nkv, self.hs = cfg.n_head, cfg.n_kv_head, cfg.n_embd // cfg.n_head
        # q, k and v come out of one matmul; with GQA k and v have fewer heads than q.
        self.qkv = nn.Linear(cfg.n_embd, (self.nh + 2 * self.nkv) * self.hs, bias=cfg.bias)
        self.o_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = cfg.dropout

    def forward(self, x, rope=None, cache=None, pos=0):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split([self.nh * self.hs, self.nkv * self.hs, self.nkv * self.hs], dim=-1)
        q = q.view(B, T, self.nh, self.hs).transpose(1, 2)   # (B, nh, T, hs)
        k = k.view(B, T, self.nkv, self.hs).transpose(1, 2)  # (B, nkv, T, hs)
        v = v.view(B, T, self.nkv, self.hs).transpose(1, 2)  # (B, nkv, T, hs)
        if rope is not None:
            cos, sin = rope
            q, k = apply_rope(q, cos[pos:pos + T], sin[pos:pos + T]), apply_rope(k, cos[pos:pos + T], sin[pos:pos + T])
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
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C): heads side by side again
        return F.dropout(self.o_proj(y), self.dropout, self.training)


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

    def forward(self, idx, targets=None, cache=None, pos=0, last_only=False):
        """idx (B, T) token ids. Returns (logits, loss).
        targets (B, T): next-token ids; -100 marks positions that do not count (SFT prompts, padding).
        cache: from new_cache(), for generation; pos: index of idx[:, 0] in the sequence.
        last_only: compute logits for the last position only (generation: saves a (T, V) matmul)."""
        B, T = idx.shape
        if pos + T > self.cfg.block_size:
            raise ValueError(f"sequence of {pos + T} tokens is longer than block_size={self.cfg.block_size}")
        x = self.wte(idx)  # (B, T, C)
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(pos, pos + T, device=idx.device))  # (T, C) broadcast over B
        x = self.drop(x)
        rope = (self.rope_cos, self.rope_sin) if self.wpe is None else None
        for i, block in enumerate(self.blocks):
            x = block(x, rope, cache[i] if cache is not None else None, pos)
        x = self.ln_f(x)
        if targets is None:
            return self.lm_head(x[:, [-1]] if last_only else x), None  # (B, 1 or T, V)
        logits = self.lm_head(x)  # (B, T, V)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-100)
        return logits, loss

    def configure_optimizers(self, weight_decay, learning_rate, betas):
        """AdamW with weight decay on matrices (embeddings, Linear weights) only: decaying
        biases and norm gains just pulls them toward 0 for no benefit."""
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
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
        c, hs = self.cfg, self.cfg.n_embd // self.cfg.n_head
        n = self.num_params(non_embedding=True)
        return 6 * n + 12 * c.n_layer * c.n_head * hs * c.block_size

    def estimate_mfu(self, tokens_per_iter, dt, peak_flops):
        """Model FLOPs utilization: achieved training FLOP/s as a fraction of peak_flops."""
        return self.flops_per_token() * tokens_per_iter / dt / peak_flops

    # ------------------------------------------------------------------------- generation

    def new_cache(self, batch_size, device, dtype):
        """One (k, v) pair per layer, each (B, nkv, block_size, hs), filled as tokens arrive."""
        c = self.cfg
        shape = (batch_size, c.n_kv_head, c.block_size, c.n_embd // c.n_head)
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
                    cache = self.new_cache(idx.size(0), idx.device, self.wte.weight.dtype)
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


def measure_flops(device='cpu', dtype=torch.float32, rounds=10, seconds=0.05):
    """Peak FLOP/s for MFU where no spec sheet applies (a CPU, a Mac, an unlisted GPU): the best
    of a few timed square matmuls (the best, because a busy machine only makes a round slower)."""
    a, b = torch.randn(1024, 1024, device=device, dtype=dtype), torch.randn(1024, 1024, device=device, dtype=dtype)
    kind = torch.device(device).type
    sync = torch.cuda.synchronize if kind == 'cuda' else torch.mps.synchronize if kind == 'mps' else (lambda: None)
    for _ in range(3):  # warm-up: thread pools, caches, clocks
        a @ b
    best = 0.0
    for _ in range(rounds):
        sync()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            a @ b
            n += 1
        sync()
        best = max(best, 2 * 1024 ** 3 * n / (time.perf_counter() - t0))
    return best


# ----------------------------------------------------------------------------- checkpoints

def _link_or_copy(src, dst):
    """Make dst name the same bytes as src: a hard link costs no disk; copy where links fail."""
    if os.path.exists(dst):
        os.remove(dst)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def save_checkpoint(state, out_dir, keep_last_n=1, is_best=False):
    """Write state to out_dir/ckpt.pt so that a crash at any moment, even kill -9 halfway
    through, leaves the previous checkpoint whole: write a temp file in the same folder,
    fsync it, then rename it over ckpt.pt (a rename is atomic). With keep_last_n > 1 the
    older ones stay as ckpt_<iter>.pt; best.pt is the one with the lowest val loss."""
    os.makedirs(out_dir, exist_ok=True)
    path, tmp = os.path.join(out_dir, 'ckpt.pt'), os.path.join(out_dir, 'ckpt.pt.tmp')
    if os.path.exists(tmp):
        os.remove(tmp)  # left by a crash; it may share its bytes with a kept checkpoint, so never write into it
    try:
        with open(tmp, 'wb') as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        if keep_last_n > 1:
            _link_or_copy(tmp, os.path.join(out_dir, f"ckpt_{state['iter_num']:08d}.pt"))
        if is_best:
            _link_or_copy(tmp, os.path.join(out_dir, 'best.pt.tmp'))
            os.replace(os.path.join(out_dir, 'best.pt.tmp'), os.path.join(out_dir, 'best.pt'))
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise OSError(f"could not write {path} ({e.strerror or e}); the previous checkpoint is intact") from e
    if hasattr(os, 'O_DIRECTORY'):  # make the renames themselves durable
        fd = os.open(out_dir, os.O_DIRECTORY)
        os.fsync(fd)
        os.close(fd)
    for old in sorted(glob.glob(os.path.join(out_dir, 'ckpt_*.pt')))[:-keep_last_n if keep_last_n > 1 else None]:
        os.remove(old)


def load_checkpoint(path):
    """Load a checkpoint onto the CPU, whatever device wrote it, with the names of the plain
    model (a torch.compile or DDP wrapper adds '_orig_mod.' or 'module.' to every key)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} not found; train one first (python train.py ...) or pass the right --out_dir")
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # (torch's own message would blame weights_only; the file is the problem)
        raise ValueError(f"{path} is not a readable checkpoint: truncated, corrupt or not a torch file ({type(e).__name__}); "
                         f"if best.pt or a ckpt_<iter>.pt sits beside it, copy that over it") from None
    if not isinstance(ckpt, dict) or 'model' not in ckpt or 'model_config' not in ckpt:
        raise ValueError(f"{path} is not a nanolm checkpoint (no model or model_config in it)")
    ckpt['model'] = {re.sub(r'^((_orig_mod|module)\.)+', '', k): v for k, v in ckpt['model'].items()}
    return ckpt
