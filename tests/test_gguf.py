"""GGUF export (gguf_export.py, export.py --to=*.gguf): read back with gguf.GGUFReader, every tensor
and the metadata match the model and its tokenizer, for the GPT-2, Llama and Qwen2 layouts (Qwen3
once hf.py loads it) and each dtype; and, where a llama.cpp checkout is given (LLAMA_CPP_DIR),
the file equals what llama.cpp's own convert_hf_to_gguf.py makes of the same model."""
import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run
import hf
import tokenizer
from model import GPT, make_config
from test_hf import HF_CONFIGS, hf_tokenizer, randomize
from test_sp_tokenizer import sp_tokenizer_json

LAYOUTS = ['gpt2', 'llama', 'qwen2', 'qwen3']
TOKENIZER = {'gpt2': 'bytelevel', 'llama': 'sp', 'qwen2': 'split', 'qwen3': 'split'}


def need(package):
    return pytest.importorskip(package, reason=f'needs {package} (optional; pip install {package})')


def tokenizer_folder(folder, kind):
    """A small trained tokenizer of the kind each family ships: GPT-2's byte-level BPE, Llama 2's
    SentencePiece-style one, Qwen2's byte-level BPE with its own split."""
    if kind == 'sp':
        sp_tokenizer_json(folder)
    else:  # special tokens after the rest, as in GPT-2 and Qwen2 (transformers 5 renumbers them when first)
        hf_tokenizer(folder, shape=kind)
        tj = json.loads((folder / 'tokenizer.json').read_text(encoding='utf-8'))
        n = len(tj['added_tokens'])
        tj['model']['vocab'] = {t: i - n for t, i in tj['model']['vocab'].items() if i >= n}
        m = len(tj['model']['vocab'])
        for a in tj['added_tokens']:
            a['id'] += m
        (folder / 'tokenizer.json').write_text(json.dumps(tj, ensure_ascii=False), encoding='utf-8')
    return hf.read_tokenizer(folder)


def our_checkpoint(tmp_path, layout):
    """A random model of the layout (our GPT, no transformers needed) with its family's tokenizer."""
    spec = tokenizer_folder(tmp_path / 'tok', TOKENIZER[layout])
    extra = dict(qkv_bias=True, bias=False, tie_embeddings=True) if layout == 'qwen2' else \
        dict(head_dim=24, tie_embeddings=False) if layout == 'qwen3' else {}  # head_dim != n_embd / n_head
    arch = {'gpt2': 'gpt2', 'qwen3': 'qwen3'}.get(layout, 'llama')
    cfg = make_config(arch, block_size=64, vocab_size=tokenizer.load(spec).n_vocab + 3, n_layer=2, n_head=4,
                      n_kv_head=None if layout == 'gpt2' else 2, n_embd=64, **extra)
    model = randomize(GPT(cfg)).eval()
    return {'model': model.state_dict(), 'model_config': asdict(cfg), 'tokenizer': spec, 'config': {}}


def read(path):
    gguf = need('gguf')
    r = gguf.GGUFReader(str(path))
    kv = {k: f.contents() for k, f in r.fields.items() if not k.startswith('GGUF.')}
    return kv, {t.name: t for t in r.tensors}


def values(t):
    """A GGUF tensor as float32 numpy, dequantized, in PyTorch's order (out, in)."""
    gguf = need('gguf')
    return gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape([int(x) for x in reversed(t.shape)])


@pytest.mark.parametrize('dtype', ['float32', 'float16', 'bfloat16', 'q8_0'])
@pytest.mark.parametrize('layout', LAYOUTS)
def test_read_back(tmp_path, layout, dtype):
    """Names, shapes and values of every tensor (q, k un-permuted for the llama layout), the
    architecture's metadata from the config, the tokenizer's tokens, types, merges or scores."""
    need('gguf')
    import gguf_export
    ck = our_checkpoint(tmp_path, layout)
    cfg = hf.ModelConfig.from_dict(ck['model_config'])
    n, arch = gguf_export.export_gguf(ck, tmp_path / 'm.gguf', dtype)
    assert arch == layout
    kv, tensors = read(tmp_path / 'm.gguf')
    assert kv['general.architecture'] == arch and len(tensors) == n
    assert (kv[f'{arch}.block_count'], kv[f'{arch}.embedding_length'], kv[f'{arch}.attention.head_count'],
            kv[f'{arch}.context_length'], kv[f'{arch}.feed_forward_length']) == \
        (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.block_size, cfg.ffn_hidden or 4 * cfg.n_embd)
    if arch != 'gpt2':
        assert kv[f'{arch}.attention.head_count_kv'] == cfg.n_kv_head
        assert kv[f'{arch}.rope.freq_base'] == cfg.rope_theta

    # every tensor of ours is there, once, with its values
    state, hs = ck["model"], cfg.head_dim or cfg.n_embd // cfg.n_head
    expect = dict(gguf_export.gguf_tensors(cfg, state, arch))
    assert sorted(expect) == sorted(tensors)
    qkv = state['blocks.0.attn.qkv.weight']  # (nh + 2 nkv) * hs rows: the q rows are the first
    if arch == 'gpt2':
        assert torch.equal(expect['blk.0.attn_qkv.weight'], qkv)
        assert torch.equal(expect['position_embd.weight'], state['wpe.weight'])
    else:
        q = expect['blk.0.attn_q.weight']
        if arch == 'llama':  # un-permute: rows (2i, 2i+1) of a head back to (i, i + hs/2)
            q = q.reshape(cfg.n_head, hs // 2, 2, -1).swapaxes(1, 2).reshape(q.shape)
        assert torch.equal(q, qkv[:cfg.n_head * hs])
    assert torch.equal(expect['token_embd.weight'], state['wte.weight'])
    assert ('output.weight' in tensors) == (not cfg.tie_embeddings)
    tol = {'float32': 0, 'float16': 1e-3, 'bfloat16': 1e-2, 'q8_0': 1e-2}[dtype]
    for name, t in tensors.items():
        want = expect[name].numpy()
        assert [int(x) for x in reversed(t.shape)] == list(want.shape), name
        matrix = want.ndim == 2 and not name.startswith('position_embd')
        assert t.tensor_type.name == ({'float32': 'F32', 'float16': 'F16', 'bfloat16': 'BF16', 'q8_0': 'Q8_0'}[dtype]
                                      if matrix else 'F32'), name
        np.testing.assert_allclose(values(t), want, atol=tol * max(1.0, float(np.abs(want).max())), rtol=0)

    # the tokenizer, id for id
    tok = tokenizer.load(ck['tokenizer'])
    tokens, types = kv['tokenizer.ggml.tokens'], kv['tokenizer.ggml.token_type']
    assert len(tokens) == len(types) == cfg.vocab_size
    assert kv['tokenizer.ggml.eos_token_id'] == tok.eot
    assert tokens[-1] == f'[PAD{cfg.vocab_size - 1}]' and types[-1] == 5  # vocab padded: unused ids
    for s, i in tok.special.items():
        assert tokens[i] == s and types[i] == 3
    if layout == 'llama':
        assert kv['tokenizer.ggml.model'] == 'llama' and kv['tokenizer.ggml.bos_token_id'] == tok.bos
        pieces = {i: t for t, i in json.loads(ck['tokenizer']['json'])['model']['vocab'].items()}
        assert all(tokens[i] == t for i, t in pieces.items())
        assert [tokens[i] for i in tok.encode(' the cat 猫')][:2] == ['\u2581', '\u2581the']  # '▁' for spaces
        scores = kv['tokenizer.ggml.scores']
        assert types[3 + 0x41] == 6 and tokens[3 + 0x41] == '<0x41>'  # byte fallback tokens
        merges = json.loads(ck['tokenizer']['json'])['model']['merges']
        first = ''.join(merges[0].split(' ') if isinstance(merges[0], str) else merges[0])
        last = ''.join(merges[-1].split(' ') if isinstance(merges[-1], str) else merges[-1])
        assert scores[tokens.index(first)] > scores[tokens.index(last)]  # earlier merge, higher score
    else:
        assert kv['tokenizer.ggml.model'] == 'gpt2'
        assert kv['tokenizer.ggml.pre'] == {'gpt2': 'gpt-2', 'qwen2': 'qwen2', 'qwen3': 'qwen2'}[layout]
        merges = kv['tokenizer.ggml.merges']
        assert merges == json.loads(hf.tokenizer_files(ck['tokenizer'], cfg)[0]['tokenizer.json'])['model']['merges']
        chars = hf._byte_chars()
        for i in tok.encode(' the cat 猫'):
            assert bytes(ord(c) if ord(c) < 256 and chars[ord(c)] == c else
                         next(b for b, x in chars.items() if x == c) for c in tokens[i]) == \
                tok.enc.decode_single_token_bytes(i)


def test_chat_template_and_refusals(tmp_path):
    """An SFT checkpoint (ChatML specials) carries its chat template; a char tokenizer, a split
    llama.cpp does not know, or a bad dtype are refused in one line, and nothing is written."""
    need('gguf')
    import gguf_export
    ck = our_checkpoint(tmp_path, 'qwen2')
    gguf_export.export_gguf(ck, tmp_path / 'chat.gguf')
    kv, _ = read(tmp_path / 'chat.gguf')
    assert kv['tokenizer.chat_template'] == hf.CHAT_TEMPLATE  # hf_tokenizer has <|im_start|>, <|im_end|>
    bad = [({**ck, 'tokenizer': {'kind': 'char', 'chars': 'abc'}}, 'float32', 'char'),
           ({**ck, 'tokenizer': tokenizer.bpe_spec(tokenizer.train_bpe(['the cat sat'] * 20, 300))}, 'float32', 'pat_str'),
           (ck, 'int4', 'dtype')]
    for c, dtype, field in bad:
        with pytest.raises(ValueError, match=field) as e:
            gguf_export.export_gguf(c, tmp_path / 'bad.gguf', dtype)
        assert '\n' not in str(e.value)
        assert not (tmp_path / 'bad.gguf').exists()
    # --gguf_pre names a split anyway, for our own BPE
    own = {**ck, 'tokenizer': tokenizer.bpe_spec(tokenizer.train_bpe(['the cat sat'] * 20, 300))}
    own['model_config'] = {**ck['model_config'], 'vocab_size': 303}
    own['model'] = {k: (v[:303] if k in ('wte.weight', 'lm_head.weight') else v) for k, v in ck['model'].items()}
    gguf_export.export_gguf(own, tmp_path / 'own.gguf', pre='gpt-2')
    assert read(tmp_path / 'own.gguf')[0]['tokenizer.ggml.pre'] == 'gpt-2'


@pytest.mark.slow
def test_export_script(tmp_path):
    """export.py --to=*.gguf writes the file, refuses to overwrite it, and says so in one line."""
    need('gguf')
    ck = our_checkpoint(tmp_path, 'llama')
    (tmp_path / 'run').mkdir()
    torch.save(ck, tmp_path / 'run' / 'ckpt.pt')
    r = run('export.py', f'--out_dir={tmp_path / "run"}', f'--to={tmp_path / "m.gguf"}', '--gguf_type=q8_0')
    assert 'llama' in r.stdout and (tmp_path / 'm.gguf').is_file()
    kv, tensors = read(tmp_path / 'm.gguf')
    assert tensors['blk.0.attn_q.weight'].tensor_type.name == 'Q8_0'
    r = run('export.py', f'--out_dir={tmp_path / "run"}', f'--to={tmp_path / "m.gguf"}', check=False)
    assert r.returncode != 0 and r.stderr.strip().startswith('error:') and 'already exists' in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- against llama.cpp

LLAMA_CPP = os.environ.get('LLAMA_CPP_DIR', '')
# llama.cpp names a byte-level BPE's split (tokenizer.ggml.pre) by a hash of how a released tokenizer
# cuts its test text; our small trained tokenizers are none of those, so it is told the name we
# write (argv[1]), and only when it does not recognize the hash. Every other key is its own.
WRAPPER = """
import runpy, sys
name = sys.argv[1]
sys.path[:0] = [sys.argv[2], sys.argv[2] + '/gguf-py']
from conversion import base
recognize = base.TextModel.get_vocab_base_pre
def pre(self, tok):
    try:
        return recognize(self, tok)
    except NotImplementedError:
        return name
base.TextModel.get_vocab_base_pre = pre
sys.argv = [sys.argv[2] + '/convert_hf_to_gguf.py'] + sys.argv[3:]
runpy.run_path(sys.argv[0], run_name='__main__')
"""


def hf_source(folder, layout):
    """A random model of the layout saved by transformers, with its family's tokenizer."""
    tf = need('transformers')
    need('safetensors')
    configs = dict(HF_CONFIGS, qwen3=lambda tf: tf.Qwen3Config(
        vocab_size=448, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, max_position_embeddings=64, tie_word_embeddings=False))
    if layout == 'qwen3' and not hasattr(tf, 'Qwen3Config'):
        pytest.skip('this transformers has no Qwen3')
    if layout == 'gpt2':  # GPT-2's own (transformers 5 renumbers special tokens that come first in a GPT-2 vocab)
        spec = {'kind': 'tiktoken', 'name': 'gpt2'}
        try:
            tokenizer.load(spec)
        except ValueError as e:
            pytest.skip(str(e))
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in hf.tokenizer_files(spec, make_config('gpt2', vocab_size=50257, block_size=64))[0].items():
            (folder / name).write_text(text, encoding='utf-8')
    else:
        spec = tokenizer_folder(folder, TOKENIZER[layout])
    hc = configs[layout](tf)
    hc.vocab_size = tokenizer.load(spec).n_vocab + 3
    randomize(tf.AutoModelForCausalLM.from_config(hc)).save_pretrained(folder)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isfile(os.path.join(LLAMA_CPP, 'convert_hf_to_gguf.py')),
                    reason='no llama.cpp checkout: set LLAMA_CPP_DIR to one (its convert_hf_to_gguf.py, gguf, '
                           'sentencepiece and transformers are needed)')
@pytest.mark.parametrize('layout, dtype', [(a, d) for a in LAYOUTS for d in ('float32', 'q8_0')]
                         + [('llama', 'float16'), ('llama', 'bfloat16')])
def test_same_as_llama_cpp(tmp_path, layout, dtype):
    """The same model, through our export and through llama.cpp's converter (on our Hugging Face
    export; where that export is another class, e.g. Qwen2 as Llama, on the transformers folder it
    was loaded from): the same tensors, types, values, and architecture and tokenizer keys."""
    need('gguf')
    import gguf_export
    hf_source(tmp_path / 'src', layout)
    try:
        cfg, state, spec = hf.load_hf(str(tmp_path / 'src'))
    except ValueError as e:
        pytest.skip(f'hf.py does not load this layout yet: {e}')
    ck = {'model': state, 'model_config': asdict(cfg), 'tokenizer': spec, 'config': {}}
    hf.export_hf(ck, tmp_path / 'export')
    src_arch = json.loads((tmp_path / 'src' / 'config.json').read_text())['architectures'][0]
    ours_arch = json.loads((tmp_path / 'export' / 'config.json').read_text())['architectures'][0]
    folder = tmp_path / 'export'
    if ours_arch != src_arch:  # (Qwen2 exports as Llama with biases): their model files, our tokenizer files
        for f in (tmp_path / 'src').glob('*'):
            if f.name in ('config.json', 'model.safetensors'):
                (folder / f.name).write_bytes(f.read_bytes())
    _, arch = gguf_export.export_gguf(ck, tmp_path / 'ours.gguf', dtype)
    kv, tensors = read(tmp_path / 'ours.gguf')
    p = subprocess.run([sys.executable, '-c', WRAPPER, kv.get('tokenizer.ggml.pre', 'default'), LLAMA_CPP, str(folder),
                        '--outfile', str(tmp_path / 'theirs.gguf'), '--outtype', {'float32': 'f32', 'float16': 'f16', 'bfloat16': 'bf16'}.get(dtype, dtype)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    kv2, tensors2 = read(tmp_path / 'theirs.gguf')
    assert sorted(tensors) == sorted(tensors2)
    for name, t in tensors.items():
        u = tensors2[name]
        assert (t.tensor_type, list(t.shape)) == (u.tensor_type, list(u.shape)), name
        if name == 'rope_freqs.weight':  # computed: ours from model.py's tables, theirs from the formula
            np.testing.assert_allclose(np.asarray(t.data), np.asarray(u.data), rtol=1e-5)
        else:
            assert np.array_equal(np.asarray(t.data), np.asarray(u.data)), name
    skip = {'general.name', 'general.size_label'}  # theirs from the folder's name
    assert sorted(set(kv) - skip) == sorted(set(kv2) - skip)
    for key in set(kv) - skip:
        if key == 'tokenizer.ggml.scores' and set(kv2[key]) == {-1000.0}:
            continue  # theirs: placeholders (scores come from a tokenizer.model, which an HF folder lacks)
        ours, theirs = kv[key], kv2[key]
        if kv['tokenizer.ggml.model'] == 'llama' and key in ('tokenizer.ggml.tokens', 'tokenizer.ggml.token_type'):
            # without a tokenizer.model their vocabulary stops at the tokenizer's last id; ours is padded
            # to the model's vocab_size with unused [PADn] tokens, as theirs is from a tokenizer.model
            n = len(theirs)
            assert ours[n:] == ([f'[PAD{i}]' for i in range(n, len(ours))] if key.endswith('tokens') else [5] * (len(ours) - n))
            ours = ours[:n]
        assert ours == theirs, key


@pytest.mark.slow
def test_without_gguf_one_line(tmp_path):
    """Without the gguf package, export.py --to=*.gguf says in one line what to install."""
    cfg = make_config('gpt2', block_size=16, vocab_size=8, n_layer=1, n_head=2, n_embd=16)
    (tmp_path / 'run').mkdir()
    torch.save({'model': GPT(cfg).state_dict(), 'model_config': asdict(cfg), 'tokenizer': {'kind': 'char', 'chars': 'abcdefg'},
                'config': {}}, tmp_path / 'run' / 'ckpt.pt')
    absent = str(Path(__file__).parent / 'without_extras')
    r = run('export.py', f'--out_dir={tmp_path / "run"}', f'--to={tmp_path / "m.gguf"}', check=False,
            env={'PYTHONPATH': absent + os.pathsep + os.environ.get('PYTHONPATH', '')})
    assert r.returncode != 0 and r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert 'pip install gguf' in r.stderr and not list(tmp_path.glob('m.gguf*'))


def test_space_prefix_follows_the_tokenizer(tmp_path):
    """llama.cpp puts a space before the text of a SentencePiece vocabulary unless the file says not
    to: said for Metaspace(prepend_scheme='never'), left to its default for Llama 2's legacy form."""
    need('gguf')
    import gguf_export
    cfg = make_config('llama', vocab_size=600, n_layer=1, n_head=2, n_embd=16, block_size=16)
    for form, want in [(('never', False), False), ('legacy', None)]:
        sp_tokenizer_json(tmp_path / str(form), form)
        ck = {'model': GPT(cfg).state_dict(), 'model_config': asdict(cfg), 'tokenizer': hf.read_tokenizer(tmp_path / str(form))}
        gguf_export.export_gguf(ck, tmp_path / 'm.gguf')
        assert read(tmp_path / 'm.gguf')[0].get('tokenizer.ggml.add_space_prefix') is want
