"""
One of our checkpoints -> a GGUF file, the format llama.cpp and Ollama run:

    python export.py --out_dir=out-poems --to=model.gguf                      # float32
    python export.py --out_dir=out-poems --to=model.gguf --dtype=float16      # or bfloat16
    python export.py --out_dir=out-poems --to=model.gguf --gguf_type=q8_0     # 8-bit, ~1/4 of float32
    llama-cli -m model.gguf -p "Once upon a time"                             # (notes/gguf.md: Ollama)

It goes through the Hugging Face form (hf.state_to_hf, hf.config_to_hf, hf.tokenizer_files), then
renames tensors and metadata the way llama.cpp's own convert_hf_to_gguf.py does, so both give the
same file for the same model (tests/test_gguf.py compares them tensor by tensor). Layouts:
  gpt2   GPT-2 (learned positions, LayerNorm, GELU)
  llama  Llama (rope, RMSNorm, SwiGLU); q and k rows permuted for llama.cpp's rope, see _permute
  qwen2  Llama with q/k/v biases and no other bias (Qwen2, Qwen2.5)
  qwen3  Llama with RMSNorm on q and k per head (Qwen3)
The tokenizer goes inside: byte-level BPE as a 'gpt2' vocabulary (tokens, merges, token types, and
the name of llama.cpp's pre-split that is the same as ours), SentencePiece-style as a 'llama' one
(tokens, scores, token types); and the chat template, where the checkpoint has one.
Needs the gguf package (pip install gguf), imported only here.
"""
import json
import re

import torch

import hf
from model import ModelConfig, rope_tables

TYPES = ('float32', 'float16', 'bfloat16', 'q8_0')

# Hugging Face module -> GGUF tensor ({i} = layer); .weight and .bias map alike.
NAMES = {
    'transformer.wte': 'token_embd', 'transformer.wpe': 'position_embd',
    'transformer.h.{i}.ln_1': 'blk.{i}.attn_norm', 'transformer.h.{i}.attn.c_attn': 'blk.{i}.attn_qkv',
    'transformer.h.{i}.attn.c_proj': 'blk.{i}.attn_output', 'transformer.h.{i}.ln_2': 'blk.{i}.ffn_norm',
    'transformer.h.{i}.mlp.c_fc': 'blk.{i}.ffn_up', 'transformer.h.{i}.mlp.c_proj': 'blk.{i}.ffn_down',
    'transformer.ln_f': 'output_norm',
    'model.embed_tokens': 'token_embd', 'model.layers.{i}.input_layernorm': 'blk.{i}.attn_norm',
    'model.layers.{i}.self_attn.q_proj': 'blk.{i}.attn_q', 'model.layers.{i}.self_attn.k_proj': 'blk.{i}.attn_k',
    'model.layers.{i}.self_attn.v_proj': 'blk.{i}.attn_v', 'model.layers.{i}.self_attn.o_proj': 'blk.{i}.attn_output',
    'model.layers.{i}.self_attn.q_norm': 'blk.{i}.attn_q_norm', 'model.layers.{i}.self_attn.k_norm': 'blk.{i}.attn_k_norm',
    'model.layers.{i}.post_attention_layernorm': 'blk.{i}.ffn_norm', 'model.layers.{i}.mlp.gate_proj': 'blk.{i}.ffn_gate',
    'model.layers.{i}.mlp.up_proj': 'blk.{i}.ffn_up', 'model.layers.{i}.mlp.down_proj': 'blk.{i}.ffn_down',
    'model.norm': 'output_norm', 'lm_head': 'output',
}
_RULES = [(re.compile(re.escape(k).replace(r'\{i\}', r'(\d+)') + r'\.(weight|bias)$'), v) for k, v in NAMES.items()]

# Our pre-split regexes -> the name llama.cpp knows the same split by (its tokenizer.ggml.pre).
LLAMA3_PAT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
QWEN2_PAT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
PRE = {hf.GPT2_PAT: 'gpt-2', LLAMA3_PAT: 'llama-bpe', QWEN2_PAT: 'qwen2', hf.DIGITS_PAT: 'smollm'}


def arch_of(cfg):
    """The GGUF architecture that computes what cfg does."""
    if hf.family_of(cfg) == 'gpt2':
        return 'gpt2'
    if getattr(cfg, 'qk_norm', False):
        return 'qwen3'
    if cfg.qkv_bias and not cfg.bias:
        return 'qwen2'
    return 'llama'


def _permute(w, n_head):
    """HF's rope rotates the pairs (i, i + hs/2) of each head, llama.cpp's 'llama' rope the pairs
    (2i, 2i + 1): reorder each head's rows of q or k so that llama.cpp rotates the same pairs.
    w (n_head * hs, ...) -> same shape, rows of each head taken as 0, hs/2, 1, hs/2 + 1, ..."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(cfg, state, arch):
    """Our state_dict -> {GGUF name: float32 tensor}, through the Hugging Face names."""
    family = hf.family_of(cfg)
    out = {}
    for name, t in hf.state_to_hf(cfg, family, state, torch.float32).items():
        rule = next(((m, v) for r, v in _RULES if (m := r.match(name))), None)
        if rule is None:
            raise ValueError(f"the model's tensor {name} has no GGUF name here; export refused")
        m, target = rule
        if family == 'gpt2' and name.endswith(hf.CONV1D):
            t = t.t()  # back from Conv1D's (in, out) to (out, in), as GGUF stores every matrix
        if arch == 'llama' and '.q_proj.' in name:
            t = _permute(t, cfg.n_head)
        if arch == 'llama' and '.k_proj.' in name:
            t = _permute(t, cfg.n_kv_head)
        if arch != 'llama' and name.endswith('o_proj.bias'):
            continue  # the zero bias state_to_hf adds for Llama's attention_bias; Qwen has no o_proj bias
        layer, end = (m.group(1), m.group(2)) if '{i}' in target else (None, m.group(1))  # end: weight | bias
        out[f"{target.format(i=layer)}.{end}"] = t.contiguous()
    if cfg.pos_emb == 'rope' and cfg.rope_scaling_factor != 1.0:
        if arch != 'llama':
            raise ValueError(f"rope_scaling_factor={cfg.rope_scaling_factor} (Llama 3.1's rope scaling) with the {arch} "
                             f"layout has no GGUF form here; export refused")
        # llama.cpp divides each rope frequency by a factor: ours unscaled / ours scaled, read off the
        # angles of position 1 of model.py's own tables.
        cos, sin = rope_tables(ModelConfig.from_dict({**cfg.__dict__, 'block_size': 2}))
        cos0, sin0 = rope_tables(ModelConfig.from_dict({**cfg.__dict__, 'block_size': 2, 'rope_scaling_factor': 1.0}))
        out['rope_freqs.weight'] = torch.atan2(sin0[1], cos0[1]) / torch.atan2(sin[1], cos[1])  # (hs/2,)
    return out


def _vocab(gguf, spec, cfg, files, eot_id, bos_id, pre):
    """-> {key: (value, kind)} of the tokenizer metadata, from the HF files tokenizer_files made."""
    tj, tc = json.loads(files['tokenizer.json']), json.loads(files['tokenizer_config.json'])
    T = gguf.TokenType
    added = {a['id']: a for a in tj.get('added_tokens', [])}
    pieces = {i: s for s, i in tj['model']['vocab'].items()}
    pieces.update({i: a['content'] for i, a in added.items()})
    tokens, types = [], []
    for i in range(cfg.vocab_size):  # ids the tokenizer never makes (vocab padded for speed): unused
        if i not in pieces:
            tokens.append(f'[PAD{i}]')
            types.append(T.UNUSED)
        elif i in added:
            tokens.append(pieces[i])
            types.append(T.CONTROL if added[i].get('special') else T.USER_DEFINED)
        else:
            tokens.append(pieces[i])
            types.append(T.BYTE if spec['kind'] == 'sp' and re.fullmatch(r'<0x[0-9A-F]{2}>', pieces[i]) else T.NORMAL)
    meta = {}
    if spec['kind'] == 'sp':
        # llama.cpp's SentencePiece tokenizer merges the adjacent pair whose joined piece scores
        # highest; the tokenizers package merges the pair listed first in merges: score = -(its place).
        merges = tj['model'].get('merges', [])
        rank = {}
        for r, pair in enumerate(merges):
            rank.setdefault(''.join(pair.split(' ', 1) if isinstance(pair, str) else pair), r)
        scores = [0.0 if types[i] != T.NORMAL else -float(rank.get(tokens[i], len(merges) + i)) for i in range(len(tokens))]
        meta.update({'tokenizer.ggml.model': 'llama', 'tokenizer.ggml.pre': 'default', 'tokenizer.ggml.scores': scores})
        pre_tok = json.dumps([tj.get('normalizer'), tj.get('pre_tokenizer')])
        if '"Prepend"' not in pre_tok and '"prepend_scheme": "never"' in pre_tok:
            meta['tokenizer.ggml.add_space_prefix'] = False  # llama.cpp puts a space before the text unless told
        unk = tj['model'].get('unk_token')
        if unk in tj['model']['vocab']:
            meta['tokenizer.ggml.unknown_token_id'] = tj['model']['vocab'][unk]
    else:
        pat = spec.get('pat_str', hf.GPT2_PAT)
        if pre is None and pat not in PRE:
            raise ValueError("the tokenizer's pre-split pattern (pat_str) is none llama.cpp knows (GPT-2's, Llama 3's, "
                             "Qwen2's, SmolLM's): llama.cpp would cut text differently than training did; pass "
                             "--gguf_pre=NAME (e.g. gpt-2) to write it anyway")
        merges = [m if isinstance(m, str) else ' '.join(m) for m in tj['model']['merges']]
        meta.update({'tokenizer.ggml.model': 'gpt2', 'tokenizer.ggml.pre': pre or PRE[pat], 'tokenizer.ggml.merges': merges})
    meta.update({'tokenizer.ggml.tokens': tokens, 'tokenizer.ggml.token_type': [int(t) for t in types],
                 'tokenizer.ggml.eos_token_id': eot_id})
    if bos_id is not None:
        meta['tokenizer.ggml.bos_token_id'] = bos_id
    for key in ('add_bos_token', 'add_eos_token'):
        if key in tc:
            meta[f'tokenizer.ggml.{key}'] = bool(tc[key])
    if tc.get('chat_template'):
        meta['tokenizer.chat_template'] = tc['chat_template']
    return meta


def export_gguf(ckpt, path, dtype='float32', name='nanolm', pre=None):
    """One of our checkpoints (dict: model, model_config, tokenizer) -> a GGUF file at path.
    dtype: of the matrices, one of TYPES (norms, biases and positions stay float32, as llama.cpp
    wants them; a matrix whose rows do not split into q8_0's blocks of 32 becomes float16).
    pre: tokenizer.ggml.pre to write for a byte-level BPE whose split llama.cpp does not know.
    Everything is checked before the file is opened. Returns (number of tensors, architecture)."""
    gguf = hf._need('gguf', 'writing a GGUF file')
    if dtype not in TYPES:
        raise ValueError(f"dtype={dtype!r} must be one of {', '.join(TYPES)}")
    cfg = ModelConfig.from_dict(ckpt['model_config'])
    arch = arch_of(cfg)
    if 'tokenizer' not in ckpt:
        raise ValueError("the checkpoint has no tokenizer; a GGUF file without one does not run, export refused")
    files, eot_id, bos_id = hf.tokenizer_files(ckpt['tokenizer'], cfg)
    tensors = gguf_tensors(cfg, ckpt.get('ema') or ckpt['model'], arch)
    vocab = _vocab(gguf, ckpt['tokenizer'], cfg, files, eot_id, bos_id, pre)
    hc = hf.config_to_hf(cfg, hf.family_of(cfg), eot_id, bos_id, torch.float32)
    hs = hc.get('head_dim') or cfg.n_embd // cfg.n_head

    w = gguf.GGUFWriter(path, arch)
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(name)
    _add_hparams(w, cfg, arch, hs)
    ftype = {'float32': 'ALL_F32', 'float16': 'MOSTLY_F16', 'bfloat16': 'MOSTLY_BF16', 'q8_0': 'MOSTLY_Q8_0'}[dtype]
    w.add_file_type(getattr(gguf.LlamaFileType, ftype))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for key, value in vocab.items():
        if value != []:  # (a tokenizer without merges)
            w.add_key_value(key, value, _kind(gguf, value))
    n_params = _add_tensors(gguf, w, tensors, dtype)
    w.add_size_label(gguf.size_label(n_params, 0, 0, 0))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return len(tensors), arch


def _add_hparams(w, cfg, arch, hs):
    """The model's shape, in the keys llama.cpp reads for this architecture (hs: the head size)."""
    w.add_block_count(cfg.n_layer)
    w.add_context_length(cfg.block_size)
    w.add_embedding_length(cfg.n_embd)
    w.add_feed_forward_length(cfg.ffn_hidden or 4 * cfg.n_embd)
    w.add_head_count(cfg.n_head)
    if arch == 'gpt2':
        w.add_layer_norm_eps(cfg.norm_eps)
    else:
        w.add_head_count_kv(cfg.n_kv_head)
        w.add_rope_freq_base(cfg.rope_theta)
        w.add_layer_norm_rms_eps(cfg.norm_eps)
        if arch != 'qwen2':  # (Qwen2's head size is always n_embd / n_head; its configs do not say it)
            w.add_key_length(hs)
            w.add_value_length(hs)
        if arch == 'llama':
            w.add_vocab_size(cfg.vocab_size)
            w.add_rope_dimension_count(hs)


def _add_tensors(gguf, w, tensors, dtype):
    """Each tensor in dtype (or float32 / float16 where llama.cpp wants them). -> the number of parameters."""
    want = getattr(gguf.GGMLQuantizationType, {'float32': 'F32', 'float16': 'F16', 'bfloat16': 'BF16', 'q8_0': 'Q8_0'}[dtype])
    n_params = 0
    for tname, t in tensors.items():
        data = t.numpy()
        n_params += data.size
        # as llama.cpp: vectors, norms, biases and learned positions in float32
        qtype = (gguf.GGMLQuantizationType.F32 if data.ndim <= 1 or tname.endswith('_norm.weight')
                 or not tname.endswith('.weight') or tname.startswith('position_embd') else want)
        try:
            q = gguf.quants.quantize(data, qtype)
        except gguf.QuantError:  # q8_0 needs rows of a multiple of 32 values
            qtype = gguf.GGMLQuantizationType.F16
            q = gguf.quants.quantize(data, qtype)
        w.add_tensor(tname, q, raw_dtype=qtype)
    return n_params


def _kind(gguf, value):
    V = gguf.GGUFValueType
    if isinstance(value, bool):
        return V.BOOL
    if isinstance(value, str):
        return V.STRING
    if isinstance(value, int):
        return V.UINT32
    if isinstance(value, float):
        return V.FLOAT32
    return V.ARRAY
