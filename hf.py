"""
Hugging Face model folders, both ways: start from released weights, and hand what we train to
transformers, vLLM or llama.cpp's HF-to-GGUF converter.

    python sample.py --init_from=hf:path/to/SmolLM2-135M --start="Once upon a time"
    python export.py --out_dir=out-poems --to=hf_out/

  load_hf(src)          HF folder (or hub id) -> (ModelConfig, state_dict in our names, tokenizer spec)
  export_hf(ckpt, out)  one of our checkpoints -> config.json, model.safetensors and the tokenizer
  read_tokenizer(dir)   tokenizer.json (or GPT-2's vocab.json + merges.txt) -> a spec for tokenizer.load

Read: GPT2LMHeadModel, LlamaForCausalLM (also SmolLM, Llama 3.x), Qwen2ForCausalLM (Qwen2, Qwen2.5) and
Qwen3ForCausalLM; written: GPT2LMHeadModel, LlamaForCausalLM or (with qk_norm) Qwen3ForCausalLM. Weights differ from ours by the renames in NAMES; besides
that, GPT-2's Conv1D matrices are stored transposed, and HF's separate q/k/v projections are rows
of our one fused qkv. Whatever in config.json changes the math and is not implemented here is
refused with a ValueError naming the field, never ignored. Tokenizers are read without
transformers: a byte-level BPE becomes a tiktoken encoding; a SentencePiece-style BPE tokenizer.json
(Llama 2, TinyLlama, Mistral) runs in sp_tokenizer.py; tokenizer.model alone is refused.
safetensors files need the safetensors package (pip install safetensors).
The chat template of a Qwen2.5 / Qwen3 folder is recognized (chat_format) and kept in the tokenizer
spec, so chat_data.py formats conversations as the model was trained to read them.

Why one file over 400 lines: the two directions (load and export) share one table of renames
and one config mapping; a fix to a family's names must land in both at once.
"""
import hashlib
import json
import os
import re
from dataclasses import asdict
from pathlib import Path

import torch

import tokenizer
from model import GPT, ModelConfig

# Our module -> theirs, per family ({i} = layer); the .weight and .bias of each map alike. A tuple
# is several of theirs that are one of ours, stacked along rows: q, k, v projections -> our fused qkv.
NAMES = {
    'gpt2': {
        'wte': 'transformer.wte',
        'wpe': 'transformer.wpe',
        'blocks.{i}.ln_1': 'transformer.h.{i}.ln_1',
        'blocks.{i}.attn.qkv': 'transformer.h.{i}.attn.c_attn',
        'blocks.{i}.attn.o_proj': 'transformer.h.{i}.attn.c_proj',
        'blocks.{i}.ln_2': 'transformer.h.{i}.ln_2',
        'blocks.{i}.mlp.up_proj': 'transformer.h.{i}.mlp.c_fc',
        'blocks.{i}.mlp.down_proj': 'transformer.h.{i}.mlp.c_proj',
        'ln_f': 'transformer.ln_f',
        'lm_head': 'lm_head',
    },
    'llama': {  # Llama, Qwen2 and Qwen3 (which differ in which biases and norms exist)
        'wte': 'model.embed_tokens',
        'blocks.{i}.ln_1': 'model.layers.{i}.input_layernorm',
        'blocks.{i}.attn.qkv': tuple(f'model.layers.{{i}}.self_attn.{p}_proj' for p in 'qkv'),
        'blocks.{i}.attn.o_proj': 'model.layers.{i}.self_attn.o_proj',
        'blocks.{i}.attn.q_norm': 'model.layers.{i}.self_attn.q_norm',  # Qwen3 only (qk_norm)
        'blocks.{i}.attn.k_norm': 'model.layers.{i}.self_attn.k_norm',
        'blocks.{i}.ln_2': 'model.layers.{i}.post_attention_layernorm',
        'blocks.{i}.mlp.gate_proj': 'model.layers.{i}.mlp.gate_proj',
        'blocks.{i}.mlp.up_proj': 'model.layers.{i}.mlp.up_proj',
        'blocks.{i}.mlp.down_proj': 'model.layers.{i}.mlp.down_proj',
        'ln_f': 'model.norm',
        'lm_head': 'lm_head',
    },
}
CONV1D = ('c_attn.weight', 'c_proj.weight', 'c_fc.weight')  # GPT-2 stores these (in, out): transposed
IGNORED = re.compile(r'\.attn\.(masked_)?bias$|rotary_emb\.inv_freq$')  # buffers old checkpoints saved
ARCHS = {'GPT2LMHeadModel': 'gpt2', 'LlamaForCausalLM': 'llama', 'Qwen2ForCausalLM': 'qwen2', 'Qwen3ForCausalLM': 'qwen3',
         'gpt2': 'gpt2', 'llama': 'llama', 'qwen2': 'qwen2', 'qwen3': 'qwen3'}  # (model_type when architectures is absent)
# Known and refused by name: their experts have no place in our one MLP per block.
MOE = ('MixtralForCausalLM', 'Qwen2MoeForCausalLM', 'Qwen3MoeForCausalLM', 'qwen2_moe', 'qwen3_moe', 'mixtral')

# config.json fields that change the math: the values we implement (absent = HF's default, the first).
REQUIRED = {
    'gpt2': {'activation_function': ('gelu_new', 'gelu_pytorch_tanh'), 'scale_attn_weights': (True,),
             'scale_attn_by_inverse_layer_idx': (False,), 'add_cross_attention': (False,)},
    'llama': {'hidden_act': ('silu',), 'partial_rotary_factor': (1.0, None)},
    'qwen2': {'hidden_act': ('silu',), 'partial_rotary_factor': (1.0, None), 'use_sliding_window': (False,)},
    'qwen3': {'hidden_act': ('silu',), 'partial_rotary_factor': (1.0, None), 'use_sliding_window': (False,)},
}

# GPT-2's pre-split as HF's ByteLevel pre-tokenizer writes it (the same as tiktoken's gpt2).
GPT2_PAT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# HF's Digits(individual_digits) before that (SmolLM, StarCoder) as one regex: every digit is a piece,
# and white space before a digit ends there, as at the end of a text.
DIGITS_PAT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+|\s+(?![^\s\p{N}])|\s+"""
GPT2_RANKS_SHA256 = '306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930'  # of ranks_to_text(gpt2)
CHAT_TEMPLATE = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
                 "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def _need(package, what):
    """Import an optional package, or fail with one line naming it."""
    try:
        return __import__(package, fromlist=['_'])
    except ImportError:
        raise ValueError(f"{what} needs the {package.split('.')[0]} package: pip install {package.split('.')[0]}") from None


def _read_json(path):
    try:
        return json.loads(Path(path).read_text(encoding='utf-8'))
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {path} ({type(e).__name__}: {e})") from None


# ----------------------------------------------------------------------------- config.json <-> ModelConfig

def config_from_hf(hc, where='config.json'):
    """HF config dict -> (ModelConfig, family 'gpt2' | 'llama' | 'qwen2' | 'qwen3')."""
    arch = (hc.get('architectures') or [hc.get('model_type')])[0]
    family = ARCHS.get(arch)
    experts = [k for k in ('num_experts', 'num_local_experts', 'n_routed_experts') if hc.get(k)]
    if arch in MOE or experts:
        raise ValueError(f"{where}: {f'{experts[0]}={hc[experts[0]]}' if experts else f'architectures={arch!r}'}: mixture of "
                         f"experts is not supported (nanolm has one MLP per block); refused")
    if family is None:
        raise ValueError(f"{where}: architecture {arch!r} is not supported (GPT2LMHeadModel, LlamaForCausalLM, "
                         f"Qwen2ForCausalLM, Qwen3ForCausalLM)")

    def refuse(field, why):
        raise ValueError(f"{where}: {field}={hc.get(field)!r} {why}; refused rather than ignored")

    def get(key):
        if key not in hc:
            raise ValueError(f"{where}: no {key} in it")
        return hc[key]
    for field, ok in REQUIRED[family].items():
        if hc.get(field, ok[0]) not in ok:
            refuse(field, f"is not implemented here (only {', '.join(map(repr, ok))})")
    if family == 'gpt2':
        return ModelConfig(
            block_size=get('n_positions'), vocab_size=get('vocab_size'), n_layer=get('n_layer'), n_head=get('n_head'),
            n_embd=get('n_embd'), ffn_hidden=hc.get('n_inner') or 0, norm='layernorm', norm_eps=hc.get('layer_norm_epsilon', 1e-5),
            pos_emb='learned', mlp='gelu', bias=True, tie_embeddings=hc.get('tie_word_embeddings', True)), family
    n_embd, n_head = get('hidden_size'), get('num_attention_heads')
    head_dim = hc.get('head_dim') or 0  # Qwen3 sets its own (128 at every size); absent = hidden_size / heads
    if not isinstance(head_dim, int) or head_dim < 0 or head_dim % 2:
        refuse('head_dim', "is not an even number of dimensions (rope needs pairs)")
    if set(hc.get('layer_types') or ['full_attention']) != {'full_attention'}:
        refuse('layer_types', "asks for sliding-window attention")
    rope_theta, scaling = _rope_from_hf(hc, get, refuse)
    # Qwen2: biases on q, k and v only. Llama: attention_bias puts them on q, k, v and o, mlp_bias on
    # the MLP; attention biases alone are our qkv_bias (the o_proj bias must then be zero: checked later).
    # Qwen3: attention_bias (false in every release) as Llama's, and no mlp_bias field.
    bias = family == 'llama' and bool(hc.get('attention_bias')) and bool(hc.get('mlp_bias'))
    qkv_bias = family == 'qwen2' or bool(hc.get('attention_bias')) and not bias
    if family == 'llama' and hc.get('mlp_bias') and not bias:
        refuse('mlp_bias', "without attention_bias (biases in the MLP only) is not implemented")
    return ModelConfig(
        block_size=get('max_position_embeddings'), vocab_size=get('vocab_size'), n_layer=get('num_hidden_layers'),
        n_head=n_head, n_kv_head=hc.get('num_key_value_heads') or n_head, n_embd=n_embd, head_dim=head_dim,
        ffn_hidden=get('intermediate_size'), qk_norm=family == 'qwen3',
        norm='rmsnorm', norm_eps=hc.get('rms_norm_eps', 1e-6), pos_emb='rope',
        rope_theta=rope_theta, mlp='swiglu', bias=bias,
        qkv_bias=qkv_bias, tie_embeddings=hc.get('tie_word_embeddings', False), **scaling), family


def _rope_from_hf(hc, get, refuse):
    """An HF config's rope -> (rope_theta, ModelConfig's llama3 scaling fields, {} for none); get and
    refuse are config_from_hf's (they name the file). Transformers 5 writes rope_parameters (with
    rope_theta in it); older files rope_scaling + rope_theta."""
    rope_field = 'rope_parameters' if hc.get('rope_parameters') else 'rope_scaling'
    rope = hc.get(rope_field) or {}
    kind = rope.get('rope_type', rope.get('type', 'default'))
    if kind not in ('default', 'llama3') or any(isinstance(v, dict) for v in rope.values()):
        refuse(rope_field, "is a rope scaling we do not implement (only none and 'llama3')")
    if rope.get('partial_rotary_factor') not in (None, 1.0):
        refuse(rope_field, "has a partial_rotary_factor")
    scaling = {}
    if kind == 'llama3':
        if not {'factor', 'low_freq_factor', 'high_freq_factor'} <= set(rope):
            refuse(rope_field, "lacks one of factor, low_freq_factor, high_freq_factor")
        scaling = dict(rope_scaling_factor=float(rope['factor']), rope_low_freq_factor=float(rope['low_freq_factor']),
                       rope_high_freq_factor=float(rope['high_freq_factor']),
                       rope_original_max_pos=int(rope.get('original_max_position_embeddings') or get('max_position_embeddings')))
    return float(rope.get('rope_theta', hc.get('rope_theta', 10000.0))), scaling


def family_of(cfg):
    """The HF class that computes exactly what cfg does: 'gpt2', 'llama' or 'qwen3' (qk_norm); refuses a mix. (Qwen2-style
    q/k/v biases export as Llama's attention_bias with a zero o_proj bias: transformers gives a
    Qwen2 model Qwen2's own pre-tokenizer, whatever tokenizer.json says.)"""
    parts = (cfg.pos_emb, cfg.norm, cfg.mlp)
    if parts == ('learned', 'layernorm', 'gelu'):
        if cfg.n_kv_head != cfg.n_head:
            raise ValueError(f"GPT-2 with grouped-query attention (n_kv_head={cfg.n_kv_head}) has no Hugging Face "
                             f"class; export refused")
        return 'gpt2'
    if parts == ('rope', 'rmsnorm', 'swiglu') and cfg.qk_norm:
        if cfg.bias:
            raise ValueError("qk_norm with bias=True (biases in the MLP too) has no Hugging Face class; export refused")
        return 'qwen3'
    if parts == ('rope', 'rmsnorm', 'swiglu'):
        return 'llama'
    raise ValueError(f"pos_emb={cfg.pos_emb}, norm={cfg.norm}, mlp={cfg.mlp} is neither GPT-2 (learned, layernorm, gelu) "
                     f"nor Llama (rope, rmsnorm, swiglu); no Hugging Face class computes it, export refused")


def config_to_hf(cfg, family, eos_id, bos_id, dtype):
    common = dict(vocab_size=cfg.vocab_size, tie_word_embeddings=cfg.tie_embeddings, bos_token_id=bos_id,
                  eos_token_id=eos_id, torch_dtype=str(dtype).replace('torch.', ''))
    if family == 'gpt2':  # dropout 0: these files are for inference and fine-tuning picks its own
        return dict(architectures=['GPT2LMHeadModel'], model_type='gpt2', n_positions=cfg.block_size, n_ctx=cfg.block_size,
                    n_embd=cfg.n_embd, n_layer=cfg.n_layer, n_head=cfg.n_head, n_inner=cfg.ffn_hidden,
                    activation_function='gelu_new', layer_norm_epsilon=cfg.norm_eps, resid_pdrop=0.0, embd_pdrop=0.0,
                    attn_pdrop=0.0, **common)
    rope_scaling = None if cfg.rope_scaling_factor == 1.0 else dict(
        rope_type='llama3', factor=cfg.rope_scaling_factor, low_freq_factor=cfg.rope_low_freq_factor,
        high_freq_factor=cfg.rope_high_freq_factor, original_max_position_embeddings=cfg.rope_original_max_pos)
    shape = dict(hidden_size=cfg.n_embd, intermediate_size=cfg.ffn_hidden, num_hidden_layers=cfg.n_layer,
                 num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_kv_head, head_dim=cfg.head_dim, hidden_act='silu',
                 max_position_embeddings=cfg.block_size, rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta,
                 rope_scaling=rope_scaling, attention_bias=cfg.bias or cfg.qkv_bias, **common)
    if family == 'qwen3':  # (its attention_bias also puts a bias on o_proj: written as zeros, like Llama's)
        return dict(architectures=['Qwen3ForCausalLM'], model_type='qwen3', use_sliding_window=False, **shape)
    return dict(architectures=['LlamaForCausalLM'], model_type='llama', mlp_bias=cfg.bias, **shape)


# ----------------------------------------------------------------------------- weights

def _read_weights(folder):
    """Every tensor of an HF folder: model.safetensors, pytorch_model.bin, or their shards (*.index.json)."""
    files = []
    for index in ('model.safetensors.index.json', 'pytorch_model.bin.index.json'):
        if (folder / index).is_file():
            files = sorted(set(_read_json(folder / index)['weight_map'].values()))
            break
    else:
        files = [n for n in ('model.safetensors', 'pytorch_model.bin') if (folder / n).is_file()][:1]
    if not files:
        raise ValueError(f"{folder} has no model.safetensors or pytorch_model.bin")
    tensors = {}
    for name in files:
        if name.endswith('.safetensors'):
            tensors.update(_need('safetensors.torch', f"reading {name}").load_file(str(folder / name)))
        else:
            tensors.update(torch.load(folder / name, map_location='cpu', weights_only=True))
    return tensors


def _pairs(family, n_layer):
    """(our tensor name, [their tensor names]) for every tensor NAMES covers."""
    for ours, theirs in NAMES['gpt2' if family == 'gpt2' else 'llama'].items():
        for i in range(n_layer) if '{i}' in ours else [None]:
            for end in ('.weight', '.bias'):
                yield ours.format(i=i) + end, [t.format(i=i) + end for t in (theirs if isinstance(theirs, tuple) else [theirs])]


def state_from_hf(cfg, family, hf, dtype=torch.float32, where='the weights'):
    """Their tensors -> our state_dict, each checked against the shape GPT(cfg) expects."""
    prefix = 'transformer.' if family == 'gpt2' else 'model.'  # absent when saved from GPT2Model / LlamaModel
    hf = {k if k.startswith(prefix) or k == 'lm_head.weight' else prefix + k: v for k, v in hf.items()}
    with torch.device('meta'):  # shapes only, no memory
        want = GPT(cfg).state_dict()
    state = {}
    for ours, names in _pairs(family, cfg.n_layer):
        if ours not in want or (ours == 'lm_head.weight' and cfg.tie_embeddings):
            continue
        missing = [n for n in names if n not in hf]
        if missing:
            raise ValueError(f"{where}: no {missing[0]} (config.json implies it)")
        parts = [hf.pop(n) for n in names]  # popped: what is left at the end is unused
        t = torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]  # q, k, v rows stacked: (nh + 2 nkv) * hs
        if family == 'gpt2' and names[0].endswith(CONV1D):
            t = t.t()  # Conv1D (in, out) -> Linear (out, in)
        if t.shape != want[ours].shape:
            raise ValueError(f"{where}: {names[0]} has shape {tuple(t.shape)}, config.json implies {tuple(want[ours].shape)}")
        state[ours] = t.to(dtype).contiguous()
    if cfg.tie_embeddings:
        state['lm_head.weight'] = state['wte.weight']
        hf.pop('lm_head.weight', None)  # some tied checkpoints store it anyway
    # A bias of zeros computes nothing: dropping it is exact (Llama's o_proj bias when only q/k/v have one).
    extra = sorted(n for n in hf if not IGNORED.search(n) and not (n.endswith('.bias') and not hf[n].any()))
    if extra:
        raise ValueError(f"{where}: {len(extra)} tensor(s) we have no place for, e.g. {extra[0]} "
                         f"(a feature config.json does not declare?); refused rather than ignored")
    return state


def state_to_hf(cfg, family, state, dtype):
    """Our state_dict -> their tensors. Where their class has a bias and ours none (GPT-2's layers and
    final norm always have them; Llama's attention_bias includes o_proj), a zero bias computes the same."""
    out, hs = {}, cfg.head_dim
    for ours, names in _pairs(family, cfg.n_layer):
        if ours == 'lm_head.weight' and cfg.tie_embeddings:
            continue  # HF ties it to the embedding itself (and safetensors refuses shared tensors)
        if ours in state:
            t = state[ours]
        elif ours.endswith('.bias') and (family == 'gpt2' and ours.startswith(('blocks.', 'ln_f.'))
                                         or cfg.qkv_bias and ours.endswith('o_proj.bias')):
            t = torch.zeros(state[ours[:-len('bias')] + 'weight'].shape[0])  # (out,) of a Linear or (C,) of a norm
        else:
            continue
        if len(names) == 3:  # our qkv rows -> q (nh*hs), k (nkv*hs), v (nkv*hs)
            parts = t.split([cfg.n_head * hs, cfg.n_kv_head * hs, cfg.n_kv_head * hs], dim=0)
        else:
            parts = [t.t() if family == 'gpt2' and names[0].endswith(CONV1D) else t]
        for name, p in zip(names, parts):
            out[name] = p.detach().to('cpu', dtype).contiguous()
    left = sorted(set(state) - {ours for ours, _ in _pairs(family, cfg.n_layer)})
    if left:
        raise ValueError(f"the checkpoint has {left[0]}, which has no place in a Hugging Face {family} model "
                         f"(LoRA weights must be merged into the base weights first)")
    return out


# ----------------------------------------------------------------------------- tokenizers

def _byte_chars():
    """The printable character that stands for each byte in byte-level BPE vocabs (GPT-2's scheme):
    bytes that are visible Latin-1 characters stand for themselves; the others (controls, space,
    0x7f-0xa0, 0xad) take the code points 256, 257, ... in byte order."""
    chars, n = {}, 0
    for b in range(256):
        if 0x21 <= b <= 0x7e or 0xa1 <= b <= 0xac or 0xae <= b <= 0xff:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + n)
            n += 1
    return chars


def _pattern(pre, where):
    """HF pre-tokenizer -> the one regex tiktoken splits with, for the shapes whose split we can reproduce.
    (tiktoken encodes only what the regex matches; these patterns match every character.)"""
    steps = (pre.get('pretokenizers') if pre.get('type') == 'Sequence' else [pre]) if pre else []
    shape = [s.get('type') for s in steps]
    last = steps[-1] if steps else {}
    if shape[-1:] == ['ByteLevel'] and not last.get('add_prefix_space'):
        if shape == ['ByteLevel'] and last.get('use_regex', True):
            return GPT2_PAT
        if shape == ['Digits', 'ByteLevel'] and steps[0].get('individual_digits') and last.get('use_regex', True):
            return DIGITS_PAT
        split = steps[0]
        if (shape == ['Split', 'ByteLevel'] and not last.get('use_regex', True) and 'Regex' in split.get('pattern', {})
                and split.get('behavior') == 'Isolated' and not split.get('invert')):
            return split['pattern']['Regex']
    raise ValueError(f"{where}: pre-tokenizer {' + '.join(map(str, shape)) or 'none'} {json.dumps(pre)[:80]} is not a "
                     f"byte-level split we can reproduce exactly with tiktoken; refused rather than approximated")


def _read_tokenizer_json(where):
    """tokenizer.json -> (vocab, merges, added tokens, pre-split regex, normalizer, bos, ignore_merges),
    refusing what tiktoken cannot reproduce exactly."""
    tj = _read_json(where)
    m = tj.get('model') or {}
    if m.get('type') != 'BPE':
        raise ValueError(f"{where}: a {m.get('type')} tokenizer (SentencePiece-style) cannot be reproduced exactly "
                         f"by tiktoken; refused")
    for key in ('byte_fallback', 'continuing_subword_prefix', 'end_of_word_suffix', 'dropout'):
        if m.get(key):
            raise ValueError(f"{where}: BPE with {key}={m[key]!r} (SentencePiece-style, e.g. Llama 2 / TinyLlama) is not "
                             f"byte-level; tiktoken cannot reproduce it exactly, refused")
    norm, normalize = tj.get('normalizer') or {}, None
    if norm.get('type') in ('NFC', 'NFD', 'NFKC', 'NFKD'):  # Qwen2: NFC, which unicodedata does the same
        normalize = norm['type']
    elif norm and not (norm.get('type') == 'Sequence' and not norm.get('normalizers')):
        raise ValueError(f"{where}: normalizer {norm.get('type')} changes the text in a way we do not reproduce; refused")
    added = {}
    for a in tj.get('added_tokens', []):
        if a.get('lstrip') or a.get('rstrip') or a.get('single_word'):
            raise ValueError(f"{where}: added token {a['content']!r} strips spaces around it; not reproduced, refused")
        added[a['content']] = a['id']
    bos, post = None, tj.get('post_processor') or {}
    for p in post.get('processors', [post]):  # Llama 3 puts <|begin_of_text|> before every text
        first = (p.get('single') or [{}])[0] if p.get('type') == 'TemplateProcessing' else {}
        bos = bos or first.get('SpecialToken', {}).get('id')
    return (m['vocab'], m['merges'], added, _pattern(tj.get('pre_tokenizer'), where), normalize, bos,
            m.get('ignore_merges', False))


def _ranks(vocab, merges, added, ignore_merges, where):
    """HF vocab + merges -> tiktoken ranks {token bytes: id}. tiktoken merges the adjacent pair whose
    joined bytes have the lowest rank, HF the pair listed first in merges. With rank = id the two
    agree when the ids of merge results rise with the merge order, as in GPT-2, Qwen2, Llama 3 and
    whatever the tokenizers package trains; anything else is refused."""
    to_byte = {c: b for b, c in _byte_chars().items()}
    ranks = {}
    for s, i in vocab.items():
        if s in added:
            continue
        if any(c not in to_byte for c in s):
            raise ValueError(f"{where}: vocab entry {s!r} is not byte-level; refused")
        ranks[bytes(to_byte[c] for c in s)] = i
    if len(ranks) != len(set(ranks.values())) or set(ranks.values()) & set(added.values()):
        raise ValueError(f"{where}: two tokens share an id; refused")
    made, last = set(), -1
    for pair in merges:
        a, b = pair.split(' ') if isinstance(pair, str) else pair
        t = bytes(to_byte[c] for c in a + b) if all(c in to_byte for c in a + b) else None
        if t not in ranks or ranks[t] < last:
            raise ValueError(f"{where}: merge {a} {b} makes {'no token' if t not in ranks else 'an id out of merge order'}; "
                             f"tiktoken would merge differently, refused")
        last = ranks[t]
        made.add(t)
    unmade = [t for t in ranks if len(t) > 1 and t not in made]
    if unmade and not ignore_merges:
        raise ValueError(f"{where}: vocab entry {unmade[0]!r} is made by no merge; tiktoken would use it, refused")
    return ranks


def read_tokenizer(folder, hc=None):
    """An HF tokenizer -> a spec for tokenizer.load(): GPT-2's own -> tiktoken's gpt2; any other
    byte-level BPE -> a 'bpe' spec (ranks from vocab + merges, the model's pre-split regex, its added
    tokens as specials, 'eot' when its end-of-text is not <|endoftext|>, 'normalize', 'bos').
    hc: the model's config.json, for its eos_token_id and vocab_size."""
    folder, hc = Path(folder), hc or {}
    tc = _read_json(folder / 'tokenizer_config.json') if (folder / 'tokenizer_config.json').is_file() else {}
    where = folder / 'tokenizer.json'
    if where.is_file() and _sentencepiece_style(_read_json(where)):
        return _sp_spec(folder, where, tc, hc)
    if where.is_file():
        vocab, merges, added, pat, normalize, bos, ignore_merges = _read_tokenizer_json(where)
    elif (folder / 'vocab.json').is_file() and (folder / 'merges.txt').is_file():  # GPT-2's own files
        where, pat, normalize, bos, ignore_merges = folder / 'vocab.json', GPT2_PAT, None, None, False
        vocab = _read_json(where)
        merges = [line for line in (folder / 'merges.txt').read_text(encoding='utf-8').splitlines()
                  if line and not line.startswith('#version')]
        added = {a['content']: int(i) for i, a in tc.get('added_tokens_decoder', {}).items()}
        added = added or ({tokenizer.EOT: vocab[tokenizer.EOT]} if tokenizer.EOT in vocab else {})
    else:
        sp = ' (tokenizer.model is SentencePiece, which tiktoken cannot reproduce)' if (folder / 'tokenizer.model').exists() else ''
        raise ValueError(f"{folder}: no tokenizer.json, nor vocab.json + merges.txt{sp}")
    ranks = _ranks(vocab, merges, added, ignore_merges, where)
    # End of text: <|endoftext|> where there is one (GPT-2, Qwen2, SmolLM), else the eos (Llama 3's <|end_of_text|>).
    eos = tc.get('eos_token')
    eos_ids = hc.get('eos_token_id') if isinstance(hc.get('eos_token_id'), list) else [hc.get('eos_token_id')]
    by_id = {i: s for s, i in added.items()}
    eot = next((s for s in [tokenizer.EOT, eos.get('content') if isinstance(eos, dict) else eos]
                + [by_id.get(i) for i in eos_ids] if s in added), None)
    if eot is None:
        raise ValueError(f"{where}: no end-of-text token among its special tokens ({', '.join(list(added)[:5])})")
    top = max(list(ranks.values()) + list(added.values()))
    if top >= hc.get('vocab_size', top + 1):
        raise ValueError(f"{where}: token ids go up to {top} but config.json has vocab_size={hc['vocab_size']}")
    text = tokenizer.ranks_to_text(ranks)
    if (pat == GPT2_PAT and added == {tokenizer.EOT: 50256} and not normalize
            and hashlib.sha256(text.encode()).hexdigest() == GPT2_RANKS_SHA256):
        return {'kind': 'tiktoken', 'name': 'gpt2'}
    spec = {'kind': 'bpe', 'name': f'hf-{folder.resolve().name}', 'pat_str': pat, 'special': added, 'ranks': text}
    spec.update({k: v for k, v in [('normalize', normalize), ('bos', bos)] if v})
    if eot != tokenizer.EOT:
        spec['eot'] = eot
    fmt, template = chat_format(folder, tc)
    if fmt:  # kept with the checkpoint: fine-tuning and chat use it, export writes it back
        spec.update(chat=fmt, chat_template=template)
    tokenizer.load(spec)  # fails now, in one line, if tiktoken rejects it (e.g. the regex)
    return spec


def _sentencepiece_style(tj):
    """Is this tokenizer.json SentencePiece-style (Llama 2, TinyLlama, Mistral): characters with '▁' for
    spaces and a byte fallback, rather than byte-level? Unigram and WordPiece count too (to be refused
    by name in sp_tokenizer)."""
    m, steps = tj.get('model') or {}, json.dumps([tj.get('pre_tokenizer'), tj.get('normalizer')], ensure_ascii=False)
    return m.get('type') != 'BPE' or bool(m.get('byte_fallback')) or '"Metaspace"' in steps or '▁' in steps


def _sp_spec(folder, where, tc, hc):
    """A SentencePiece-style tokenizer.json -> an 'sp' spec that holds the file's text (tokenizer.load
    checks it now, refusing what sp_tokenizer.py does not reproduce with one line naming the field)."""
    text = where.read_text(encoding='utf-8')
    tj = json.loads(text)
    added = {a['content']: a['id'] for a in tj.get('added_tokens') or []}

    def name(field):
        v = tc.get(field)
        return v.get('content') if isinstance(v, dict) else v
    by_id = {i: s for s, i in added.items()}
    eos_ids = hc.get('eos_token_id') if isinstance(hc.get('eos_token_id'), list) else [hc.get('eos_token_id')]
    eot = next((s for s in [name('eos_token'), '</s>'] + [by_id.get(i) for i in eos_ids] if s in added), None)
    post, bos = tj.get('post_processor') or {}, None
    for p in post.get('processors', [post]):  # TemplateProcessing '<s> $A': a BOS before every text
        first = (p.get('single') or [{}])[0] if p.get('type') == 'TemplateProcessing' else {}
        bos = bos or first.get('SpecialToken', {}).get('id')
    if bos is None and tc.get('add_bos_token'):
        bos = name('bos_token')
    spec = {'kind': 'sp', 'name': f'hf-{folder.resolve().name}', 'json': text, 'eot': eot}
    if bos:
        spec['bos'] = bos
    try:  # what sp_tokenizer does not reproduce is refused first, by name; the end of text checked last
        tok = tokenizer.load(spec if eot else {**spec, 'eot': '\0'})
    except (KeyError, TypeError, AttributeError) as e:  # a file not shaped as tokenizer.json
        raise ValueError(f"{where}: not a tokenizer.json we can read ({type(e).__name__}: {e})") from None
    except ValueError as e:
        if eot is None and 'end-of-text' in str(e):
            raise ValueError(f"{where}: no end-of-text token among its added tokens ({', '.join(list(added)[:5])})") from None
        raise ValueError(f"{where}: {e}") from None
    if tok.n_vocab > hc.get('vocab_size', tok.n_vocab):
        raise ValueError(f"{where}: token ids go up to {tok.n_vocab - 1} but config.json has vocab_size={hc['vocab_size']}")
    return spec


def chat_format(folder, tc):
    """-> (chat format name for chat_data.py, the template text), from a folder's chat_template
    (tokenizer_config.json's, or chat_template.jinja beside it), for the families whose template
    chat_data.py writes out in plain code: 'qwen3' (the hybrid thinking template, used with thinking
    off) and 'qwen2.5' (ChatML with a default system prompt). Anything else -> (None, None):
    nanolm's own ChatML, as for every model before."""
    template = tc.get('chat_template')
    if isinstance(template, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
        template = next((t.get('template') for t in template if t.get('name') == 'default'), None)
    if not template and (folder / 'chat_template.jinja').is_file():  # where newer transformers save it
        template = (folder / 'chat_template.jinja').read_text(encoding='utf-8')
    if not isinstance(template, str) or '<|im_start|>' not in template:
        return None, None
    if 'enable_thinking' in template and '<think>' in template:
        return 'qwen3', template
    if 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' in template:
        return 'qwen2.5', template
    return None, None


def _merges(ranks):
    """Every split (a, b) of a token into two tokens, in the order of the token's rank: HF's BPE then
    merges exactly the pairs tiktoken merges, in the same order (one merge per token would miss
    pairs like a+bc when the token was learned as ab+c)."""
    out = []
    for t, _ in sorted(ranks.items(), key=lambda x: x[1]):
        out += [(t[:k], t[k:]) for k in range(1, len(t)) if t[:k] in ranks and t[k:] in ranks]
    return out


def _sp_tokenizer_files(spec, cfg):
    """tokenizer_files for a SentencePiece-style spec: its tokenizer.json as it was read (with tokens
    added since), and a tokenizer_config.json."""
    tok = tokenizer.load(spec)
    if tok.n_vocab > cfg.vocab_size:
        raise ValueError(f"the tokenizer (ids up to {tok.n_vocab - 1}) does not fit the model (vocab_size={cfg.vocab_size})")
    bos = spec.get('bos')
    # the generic class: it runs tokenizer.json as written (LlamaTokenizerFast would rebuild its
    # normalizer from its own 'legacy' setting)
    tc = {'tokenizer_class': 'PreTrainedTokenizerFast', 'model_max_length': cfg.block_size,
          'clean_up_tokenization_spaces': False, 'eos_token': spec['eot'], 'bos_token': bos,
          'add_bos_token': bool(bos), 'add_eos_token': False,
          'unk_token': json.loads(spec['json']).get('model', {}).get('unk_token'),
          'added_tokens_decoder': {str(i): {'content': s, 'special': True, 'normalized': False, 'lstrip': False,
                                            'rstrip': False, 'single_word': False}
                                   for s, i in sorted(tok.special.items(), key=lambda x: x[1])}}
    if spec.get('chat_template'):
        tc['chat_template'] = spec['chat_template']
    text = spec['json']
    if spec.get('special'):  # tokens added after the file (finetune_sft.py's chat tokens): into the file
        tj = json.loads(text)
        tj['added_tokens'] = tj.get('added_tokens') or []
        tj['added_tokens'] += [{'id': i, 'content': s, 'single_word': False, 'lstrip': False, 'rstrip': False,
                                'normalized': False, 'special': True} for s, i in sorted(spec['special'].items(), key=lambda x: x[1])]
        text = json.dumps(tj, ensure_ascii=False)
    if '<|im_start|>' in tok.special and '<|im_end|>' in tok.special and not spec.get('chat_template'):
        tc['chat_template'] = CHAT_TEMPLATE  # an SFT checkpoint: our ChatML template
    return {'tokenizer.json': text, 'tokenizer_config.json': json.dumps(tc, indent=2)}, tok.eot, tok.bos


def _pre_tokenizer(pat, byte_level):
    """Our split pattern -> tokenizer.json's pre_tokenizer: GPT-2's split is the byte-level step's own,
    DIGITS_PAT adds digits one by one before it, any other pattern is a Split before a byte-level
    step without a regex of its own."""
    if pat == GPT2_PAT:
        return byte_level
    if pat == DIGITS_PAT:
        return {'type': 'Sequence', 'pretokenizers': [{'type': 'Digits', 'individual_digits': True}, byte_level]}
    return {'type': 'Sequence', 'pretokenizers': [
        {'type': 'Split', 'pattern': {'Regex': pat}, 'behavior': 'Isolated', 'invert': False},
        {**byte_level, 'use_regex': False}]}


def tokenizer_files(spec, cfg):
    """A tokenizer spec -> ({file name: text} for an HF folder, eot id, bos id)."""
    special, normalize = dict(spec.get('special', {})), spec.get('normalize')
    if spec.get('kind') == 'sp':  # SentencePiece-style: its tokenizer.json, as it was read
        return _sp_tokenizer_files(spec, cfg)
    if spec.get('kind') == 'tiktoken' and spec.get('name') == 'gpt2':
        enc = tokenizer.load({'kind': 'tiktoken', 'name': 'gpt2'}).enc
        ranks = {b: enc.encode_single_token(b) for b in enc.token_byte_values()}
        special = {tokenizer.EOT: enc.eot_token, **spec.get('extra_special', {})}  # SFT's <|im_start|>, <|im_end|>
        pat = GPT2_PAT
    elif spec.get('kind') == 'bpe' and 'ranks' in spec:
        ranks, pat = tokenizer.ranks_from_text(spec['ranks']), spec['pat_str']
    else:
        raise ValueError(f"exporting a {spec.get('kind')} tokenizer ({spec.get('name', '')}) is not supported: only "
                         f"tiktoken's gpt2 and our bpe (ranks inline, as in checkpoints) have a Hugging Face form here")
    eot = spec.get('eot', tokenizer.EOT)
    top = max(list(ranks.values()) + list(special.values()))
    if eot not in special or top >= cfg.vocab_size:
        raise ValueError(f"the tokenizer (ids up to {top}, end-of-text {eot!r}) does not fit the model (vocab_size={cfg.vocab_size})")
    chars = _byte_chars()

    def text(b):
        return ''.join(chars[x] for x in b)
    vocab = {text(b): i for b, i in sorted(ranks.items(), key=lambda x: x[1])}
    merges = [f'{text(a)} {text(b)}' for a, b in _merges(ranks)]
    byte_level = {'type': 'ByteLevel', 'add_prefix_space': False, 'trim_offsets': True, 'use_regex': True}
    pre = _pre_tokenizer(pat, byte_level)
    added = [{'id': i, 'content': s, 'single_word': False, 'lstrip': False, 'rstrip': False, 'normalized': False,
              'special': True} for s, i in sorted(special.items(), key=lambda x: x[1])]
    tj = {'version': '1.0', 'truncation': None, 'padding': None, 'added_tokens': added,
          'normalizer': {'type': normalize} if normalize else None, 'pre_tokenizer': pre, 'post_processor': None,
          'decoder': byte_level,
          # ignore_merges: a piece that is a whole token is that token, as in tiktoken
          'model': {'type': 'BPE', 'dropout': None, 'unk_token': None, 'continuing_subword_prefix': None,
                    'end_of_word_suffix': None, 'fuse_unk': False, 'byte_fallback': False, 'ignore_merges': True,
                    'vocab': vocab, 'merges': merges}}
    tc = {'tokenizer_class': 'PreTrainedTokenizerFast', 'model_max_length': cfg.block_size,
          'clean_up_tokenization_spaces': False, 'eos_token': eot, 'bos_token': spec.get('bos', eot),
          'added_tokens_decoder': {str(a['id']): {k: v for k, v in a.items() if k != 'id'} for a in added}}
    if spec.get('chat_template'):  # a released model's own (Qwen2.5, Qwen3), kept through fine-tuning
        tc['chat_template'] = spec['chat_template']
    elif '<|im_start|>' in special and '<|im_end|>' in special:  # an SFT checkpoint: our ChatML template
        tc['chat_template'] = CHAT_TEMPLATE
    files = {'tokenizer.json': json.dumps(tj, ensure_ascii=False), 'tokenizer_config.json': json.dumps(tc, indent=2)}
    if pat == GPT2_PAT:  # GPT-2's two files too, for tools that read only those
        files['vocab.json'] = json.dumps({**vocab, **special}, ensure_ascii=False)
        files['merges.txt'] = '#version: 0.2\n' + '\n'.join(merges) + '\n'
    return files, special[eot], special.get(spec.get('bos', eot))


# ----------------------------------------------------------------------------- the two directions

def _local_folder(src):
    """A local folder, or a hub id downloaded with huggingface_hub (when installed and online)."""
    if os.path.isdir(src):
        return Path(src)
    local = f"download it with network (huggingface-cli download {src} --local-dir DIR) and pass hf:DIR"
    if not re.fullmatch(r'[\w.-]+/[\w.-]+', src):
        raise ValueError(f"hf:{src}: no such folder (hf:<folder> holding config.json and the weights, or hf:<owner>/<name>)")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ValueError(f"hf:{src} is not a local folder; to download it pip install huggingface_hub, or {local}") from None
    try:
        path = Path(snapshot_download(src, allow_patterns=['*.json', '*.safetensors', '*.txt']))
        if not list(path.glob('*.safetensors')):
            path = Path(snapshot_download(src, allow_patterns=['*.json', '*.bin', '*.txt']))
    except Exception as e:
        raise ValueError(f"hf:{src}: no such folder here, and downloading it from the hub failed ({type(e).__name__}: "
                         f"offline, or no such model?); {local}") from None
    return path


def load_hf(src, device='cpu', dtype=torch.float32, block_size=None):
    """-> (ModelConfig, state_dict with our names, tokenizer spec) from an HF folder or hub id.
    dtype: what the weights become (bf16/fp16 files are converted). block_size: a shorter context
    than the model's (e.g. Qwen2.5's 32768 makes a big KV cache); learned positions are cut to it."""
    folder = _local_folder(src)
    if not (folder / 'config.json').is_file():
        raise ValueError(f"{folder}: no config.json (not a Hugging Face model folder)")
    hc = _read_json(folder / 'config.json')
    cfg, family = config_from_hf(hc, where=str(folder / 'config.json'))
    spec = read_tokenizer(folder, hc)
    state = state_from_hf(cfg, family, _read_weights(folder), getattr(torch, dtype) if isinstance(dtype, str) else dtype,
                          where=str(folder))
    if block_size and block_size != cfg.block_size:
        if cfg.pos_emb == 'learned':
            if block_size > cfg.block_size:
                raise ValueError(f"block_size={block_size}: this model learned only {cfg.block_size} positions")
            state['wpe.weight'] = state['wpe.weight'][:block_size].clone()
        cfg = ModelConfig.from_dict({**asdict(cfg), 'block_size': block_size})
    return cfg, {k: v.to(device) for k, v in state.items()}, spec


def export_hf(ckpt, out_folder, dtype=None):
    """One of our checkpoints (dict: model, model_config, tokenizer) -> an HF folder: config.json,
    model.safetensors, tokenizer.json + tokenizer_config.json (+ GPT-2's vocab.json and merges.txt).
    Everything is checked before the first file is written. Returns the names written."""
    cfg = ModelConfig.from_dict(ckpt['model_config'])
    family = family_of(cfg)
    state = ckpt.get('ema') or ckpt['model']  # the weights' average, if the run kept one (train.py's ema_decay)
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype or state['wte.weight'].dtype
    if 'tokenizer' not in ckpt:
        raise ValueError("the checkpoint has no tokenizer; an HF folder without one is of little use, export refused")
    files, eot_id, bos_id = tokenizer_files(ckpt['tokenizer'], cfg)
    tensors = state_to_hf(cfg, family, state, dtype)
    files['config.json'] = json.dumps(config_to_hf(cfg, family, eot_id, bos_id, dtype), indent=2)
    save_file = _need('safetensors.torch', "writing model.safetensors").save_file
    out = Path(out_folder)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / 'model.safetensors'), metadata={'format': 'pt'})
    for name, text in files.items():
        (out / name).write_text(text, encoding='utf-8')
    return ['model.safetensors'] + sorted(files)
