"""Hugging Face folders both ways (hf.py, export.py): tiny random models built with transformers
load here with the same logits and greedy tokens; our checkpoints exported load in transformers
with the same logits and tokenizer ids; tokenizer.json <-> tiktoken; refusals. All offline."""
import json
import os
import sys
from dataclasses import asdict

import pytest
import torch

from conftest import run, shared_file
import hf
import tokenizer
from model import GPT, make_config

SAMPLES = {
    'english': "Hello world! It's a test, isn't it?  Spaces   and\ttabs\n\nnew lines, THE END.",
    'chinese': "床前明月光，疑是地上霜。举头望明月，低头思故乡。",
    'code': "def f(x):\n    return x ** 2  # square\n\nfor i in range(10):\n    print(f(i), {'a': [1, 2]})",
    'emoji': "emoji 🎉🚀 and 👨\u200d👩\u200d👧 family, café naïve 12345 3.14159 ½ Ⅻ e\u0301 (e + accent)",
}
CHAT = [{'role': 'system', 'content': 'be brief'}, {'role': 'user', 'content': 'hi 你好'},
        {'role': 'assistant', 'content': 'hello!'}]
QWEN_PAT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
CORPUS = ' '.join(SAMPLES.values()) + " the cat sat on the mat; 春眠不觉晓，处处闻啼鸟。 return self.x + 42\n"


def need(package):
    return pytest.importorskip(package, reason=f'needs {package} (optional; pip install {package})')


def hf_tokenizer(folder, shape='split', vocab=400):
    """Train a tiny byte-level BPE with the tokenizers package and save folder/tokenizer.json.
    shape: the pre-tokenizer of Qwen2 / Llama 3 ('split', with NFC), GPT-2 ('bytelevel') or SmolLM ('digits')."""
    tk = need('tokenizers')
    pre = tk.pre_tokenizers
    t = tk.Tokenizer(tk.models.BPE())
    if shape == 'split':
        t.normalizer = tk.normalizers.NFC()
        t.pre_tokenizer = pre.Sequence([pre.Split(tk.Regex(QWEN_PAT), 'isolated'),
                                        pre.ByteLevel(add_prefix_space=False, use_regex=False)])
    elif shape == 'bytelevel':
        t.pre_tokenizer = pre.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        t.pre_tokenizer = pre.Sequence([pre.Digits(individual_digits=True), pre.ByteLevel(add_prefix_space=False)])
    t.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(vocab_size=vocab, special_tokens=['<|endoftext|>', '<|im_start|>', '<|im_end|>'],
                                     initial_alphabet=pre.ByteLevel.alphabet(), show_progress=False)
    t.train_from_iterator([CORPUS] * 20, trainer)
    os.makedirs(folder, exist_ok=True)
    t.save(os.path.join(folder, 'tokenizer.json'))
    return t


def randomize(model):
    """Larger random weights, and biases and norm gains that are neither 0 nor 1, so that every
    logit depends on every tensor and greedy decoding does not repeat one token."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3) if p.dim() >= 2 else p.add_(0.1 * torch.randn_like(p))  # gains ~1, biases ~0
    return model


def assert_same_model(theirs, ours, vocab):
    """float32 logits within 1e-4; 32 greedy tokens equal (ours with the KV cache)."""
    x = torch.randint(0, vocab, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (theirs(x).logits - ours(x)[0]).abs().max().item()
    assert diff < 1e-4, diff
    prompt = x[:1, :5]
    a = theirs.generate(prompt, max_new_tokens=32, do_sample=False, pad_token_id=0, eos_token_id=None)
    b = ours.generate(prompt, 32, temperature=0, use_cache=True)
    assert torch.equal(a, b)
    assert len(set(b[0, 5:].tolist())) > 3  # not one token repeated: the comparison means something
    return diff


HF_CONFIGS = {
    'gpt2': lambda tf: tf.GPT2Config(vocab_size=448, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                     bos_token_id=0, eos_token_id=0),
    # GQA, untied head, llama3 rope scaling (theta and original length picked so that frequencies fall
    # in all three of its bands: kept, blended, slowed)
    'llama': lambda tf: tf.LlamaConfig(vocab_size=448, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                       rms_norm_eps=1e-5, rope_theta=500.0, tie_word_embeddings=False,
                                       rope_scaling={'rope_type': 'llama3', 'factor': 8.0, 'low_freq_factor': 1.0,
                                                     'high_freq_factor': 4.0, 'original_max_position_embeddings': 32}),
    'qwen2': lambda tf: tf.Qwen2Config(vocab_size=448, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                       tie_word_embeddings=True),
}


@pytest.mark.parametrize('arch', sorted(HF_CONFIGS))
def test_load_hf_matches_transformers(arch, tmp_path):
    tf = need('transformers')
    need('safetensors')
    model = randomize(tf.AutoModelForCausalLM.from_config(HF_CONFIGS[arch](tf)))
    if arch == 'qwen2':
        model = model.to(torch.bfloat16)  # bf16 files load into float32
    model.save_pretrained(tmp_path)
    hf_tokenizer(tmp_path)
    theirs = tf.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    if arch == 'gpt2':  # as openai-community/gpt2 stores it: no 'transformer.' prefix, causal-mask buffers
        from safetensors.torch import load_file, save_file
        weights = {k.removeprefix('transformer.'): v for k, v in load_file(str(tmp_path / 'model.safetensors')).items()}
        weights.update({f'h.{i}.attn.bias': torch.ones(1, 1, 64, 64).tril() for i in range(2)})
        save_file(weights, str(tmp_path / 'model.safetensors'))
    cfg, state, spec = hf.load_hf(str(tmp_path))
    assert all(v.dtype == torch.float32 for v in state.values())
    assert cfg.qkv_bias == (arch == 'qwen2') and cfg.n_kv_head == (4 if arch == 'gpt2' else 2)
    ours = GPT(cfg).eval()
    ours.load_state_dict(state)
    assert_same_model(theirs, ours, 448)
    theirs_tok = need('tokenizers').Tokenizer.from_file(str(tmp_path / 'tokenizer.json'))
    assert tokenizer.load(spec).encode(SAMPLES['code']) == theirs_tok.encode(SAMPLES['code']).ids


def checkpoint(arch, spec, vocab_size=640, **kw):
    cfg = make_config(arch, block_size=64, vocab_size=vocab_size, n_layer=2, n_head=4, n_embd=32, **kw)
    model = randomize(GPT(cfg)).eval()
    return model, {'model': model.state_dict(), 'model_config': asdict(cfg), 'tokenizer': spec, 'config': {}}


@pytest.fixture(scope='module')
def bpe_spec():
    return tokenizer.bpe_spec(tokenizer.train_bpe([CORPUS * 3], 600))


def chat_ids(theirs, add_generation_prompt):
    r = theirs.apply_chat_template(CHAT, tokenize=True, add_generation_prompt=add_generation_prompt)
    return list(r['input_ids'] if hasattr(r, 'keys') else r)


def chatml(messages, add_generation_prompt):
    return ''.join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages) + \
        ('<|im_start|>assistant\n' if add_generation_prompt else '')


EXPORTS = {
    'gpt2': ('gpt2', {}, 'GPT2LMHeadModel'),
    'gpt2-no-bias': ('gpt2', {'bias': False}, 'GPT2LMHeadModel'),
    'llama-gqa-rope-scaling': ('llama', dict(n_kv_head=2, rope_theta=500.0, rope_scaling_factor=8.0,
                                             rope_original_max_pos=32), 'LlamaForCausalLM'),
    'qwen2-style': ('llama', dict(qkv_bias=True, tie_embeddings=True), 'LlamaForCausalLM'),  # + zero o_proj bias
}


@pytest.mark.parametrize('name', sorted(EXPORTS))
def test_export_matches_transformers(name, tmp_path, bpe_spec):
    tf = need('transformers')
    need('safetensors')
    arch, kw, cls = EXPORTS[name]
    ours, ck = checkpoint(arch, bpe_spec, **kw)
    hf.export_hf(ck, tmp_path)
    theirs = tf.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert type(theirs).__name__ == cls
    assert_same_model(theirs, ours, 640)
    # the tokenizer: same ids on every sample, and the chat template gives what our ChatML gives
    tok, theirs_tok = tokenizer.load(bpe_spec), tf.AutoTokenizer.from_pretrained(tmp_path)
    for text in SAMPLES.values():
        assert theirs_tok.encode(text, add_special_tokens=False) == tok.encode(text)
        assert theirs_tok.decode(tok.encode(text)) == text
    for gen in (False, True):
        assert chat_ids(theirs_tok, gen) == tok.encode_special(chatml(CHAT, gen))


def test_export_sft_gpt2_grown_vocabulary(tmp_path):
    """An SFT checkpoint: GPT-2's tokenizer plus <|im_start|>, <|im_end|> at 50257, 50258."""
    tf = need('transformers')
    need('safetensors')
    shared_file('tiktoken_cache')
    extra = {'<|im_start|>': 50257, '<|im_end|>': 50258}
    ours, ck = checkpoint('gpt2', {'kind': 'tiktoken', 'name': 'gpt2', 'extra_special': extra}, vocab_size=50259)
    assert hf.export_hf(ck, tmp_path) == ['model.safetensors', 'config.json', 'merges.txt', 'tokenizer.json',
                                          'tokenizer_config.json', 'vocab.json']
    theirs = tf.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    x = torch.randint(0, 50259, (2, 16))
    with torch.no_grad():
        assert (theirs(x).logits - ours(x)[0]).abs().max().item() < 1e-4
    gpt2 = tokenizer.load({'kind': 'tiktoken', 'name': 'gpt2'}).enc
    import tiktoken
    sft = tiktoken.Encoding('gpt2-chat', pat_str=gpt2._pat_str, mergeable_ranks=gpt2._mergeable_ranks,
                            special_tokens={**gpt2._special_tokens, **extra})
    theirs_tok = tf.AutoTokenizer.from_pretrained(tmp_path)
    for gen in (False, True):
        assert chat_ids(theirs_tok, gen) == sft.encode(chatml(CHAT, gen), allowed_special='all')
    for text in SAMPLES.values():
        assert theirs_tok.encode(text, add_special_tokens=False) == gpt2.encode_ordinary(text)
    # read back here: GPT-2's ranks with two more specials, as a bpe spec
    spec = hf.read_tokenizer(tmp_path)
    assert spec['kind'] == 'bpe' and spec['special'] == {'<|endoftext|>': 50256, **extra}


@pytest.mark.parametrize('shape', ['split', 'bytelevel', 'digits'])
def test_tokenizer_json_reads_as_tiktoken(shape, tmp_path):
    """Qwen2 / Llama 3 (regex split, NFC), GPT-2 (ByteLevel's own regex), SmolLM (digits one by one)."""
    theirs = hf_tokenizer(tmp_path, shape)
    spec = hf.read_tokenizer(tmp_path)
    assert spec['kind'] == 'bpe' and spec.get('normalize') == ('NFC' if shape == 'split' else None)
    tok = tokenizer.load(spec)
    assert tok.enc.__class__.__name__ == 'Encoding' and tok.eot == 0
    texts = list(SAMPLES.values()) + ['a  1 22  333\t4444 x1y2 ٣٤ ' * 3, 'nfc: e\u0301 vs \u00e9, ﬁ']
    for text in texts:
        ids = tok.encode(text)
        assert ids == theirs.encode(text, add_special_tokens=False).ids, text
        assert tok.decode(ids) == theirs.decode(ids)
    with_specials = '<|im_start|>user\nhi<|im_end|>\n<|endoftext|>'
    assert tok.encode_special(with_specials) == theirs.encode(with_specials, add_special_tokens=False).ids


def test_gpt2_files_read_as_tiktoken_gpt2(tmp_path):
    cache = shared_file('tiktoken_cache')
    (tmp_path / 'vocab.json').write_bytes((cache / '6c7ea1a7e38e3a7f062df639a5b80947f075ffe6').read_bytes())
    merges = (cache / '6d1cbeee0f20b3d9449abfede4726ed8212e3aee').read_text(encoding='utf-8')
    (tmp_path / 'merges.txt').write_text(merges, encoding='utf-8')
    assert hf.read_tokenizer(tmp_path) == {'kind': 'tiktoken', 'name': 'gpt2'}
    try:  # GPT-2's tokenizer.json (what the hub has too), made from the same two files
        from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
        t = Tokenizer(models.BPE.from_file(str(tmp_path / 'vocab.json'), str(tmp_path / 'merges.txt')))
        t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        t.add_special_tokens([AddedToken('<|endoftext|>', special=True, normalized=False)])
        (tmp_path / 'json').mkdir()
        t.save(str(tmp_path / 'json' / 'tokenizer.json'))
        assert hf.read_tokenizer(tmp_path / 'json') == {'kind': 'tiktoken', 'name': 'gpt2'}
    except ImportError:
        pass
    # one merge moved out of order: no longer what tiktoken's rank order does, refused
    lines = merges.splitlines()
    lines[1], lines[2] = lines[2], lines[1]
    (tmp_path / 'merges.txt').write_text('\n'.join(lines), encoding='utf-8')
    with pytest.raises(ValueError, match='order'):
        hf.read_tokenizer(tmp_path)


def test_round_trip_without_transformers(tmp_path, bpe_spec):
    """export_hf -> load_hf gives back the same config, weights and tokenizer (no transformers needed)."""
    need('safetensors')
    for arch, kw in [('gpt2', {}), ('llama', dict(n_kv_head=2, qkv_bias=True, rope_scaling_factor=4.0))]:
        ours, ck = checkpoint(arch, bpe_spec, **kw)
        hf.export_hf(ck, tmp_path / arch, dtype='bfloat16')
        cfg, state, spec = hf.load_hf(str(tmp_path / arch), block_size=32)
        assert {**asdict(cfg), 'block_size': 64} == ck['model_config']
        for k, v in ck['model'].items():
            want = v.to(torch.bfloat16).float()[:32 if k == 'wpe.weight' else None]
            assert torch.equal(state[k], want), k
        assert tokenizer.load(spec).encode(SAMPLES['chinese']) == tokenizer.load(bpe_spec).encode(SAMPLES['chinese'])


def write_folder(path, config, tokenizer_json=None):
    path.mkdir(exist_ok=True)
    (path / 'config.json').write_text(json.dumps(config))
    if tokenizer_json is not None:
        (path / 'tokenizer.json').write_text(json.dumps(tokenizer_json))
    return str(path)


LLAMA = dict(architectures=['LlamaForCausalLM'], vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5)


@pytest.mark.parametrize('change,field', [
    ({'hidden_act': 'gelu'}, 'hidden_act'),
    ({'rope_scaling': {'rope_type': 'yarn', 'factor': 4.0}}, 'rope_scaling'),
    ({'rope_parameters': {'rope_type': 'linear', 'factor': 2.0, 'rope_theta': 1e4}}, 'rope_parameters'),
    ({'mlp_bias': True}, 'mlp_bias'),
    ({'head_dim': 7}, 'head_dim'),  # (a head_dim of its own is Qwen3's, tested in test_qwen.py; odd cannot rope)
    ({'architectures': ['MistralForCausalLM']}, 'MistralForCausalLM'),
    ({'architectures': ['Qwen2ForCausalLM'], 'use_sliding_window': True}, 'use_sliding_window'),
    ({'architectures': ['GPT2LMHeadModel'], 'activation_function': 'relu'}, 'activation_function'),
    ({'architectures': ['GPT2LMHeadModel'], 'scale_attn_by_inverse_layer_idx': True}, 'scale_attn_by_inverse_layer_idx'),
])
def test_config_refusals_name_the_field(change, field, tmp_path):
    with pytest.raises(ValueError, match=field) as e:
        hf.load_hf(write_folder(tmp_path, {**LLAMA, **change}))
    assert '\n' not in str(e.value)


BPE_JSON = {'normalizer': None, 'pre_tokenizer': {'type': 'ByteLevel', 'add_prefix_space': False, 'use_regex': True},
            'added_tokens': [], 'model': {'type': 'BPE', 'vocab': {}, 'merges': []}}


@pytest.mark.parametrize('change,words', [
    ({'model': {'type': 'Unigram', 'vocab': []}}, 'Unigram'),
    ({'model': {'type': 'BPE', 'byte_fallback': True, 'vocab': {}, 'merges': []}}, 'byte_fallback'),
    ({'normalizer': {'type': 'Lowercase'}}, 'Lowercase'),
    ({'pre_tokenizer': {'type': 'Metaspace', 'replacement': '_'}}, 'Metaspace'),  # ('▁' loads: test_sp_tokenizer.py)
    ({'pre_tokenizer': {'type': 'ByteLevel', 'add_prefix_space': True, 'use_regex': True}}, 'pre-tokenizer'),
])
def test_tokenizer_refusals(change, words, tmp_path):
    with pytest.raises(ValueError, match=words):
        hf.load_hf(write_folder(tmp_path, LLAMA, {**BPE_JSON, **change}))
    with pytest.raises(ValueError, match='no tokenizer.json'):
        hf.read_tokenizer(tmp_path / 'nowhere')


def test_weight_refusals(tmp_path, monkeypatch):
    tf = need('transformers')
    need('safetensors')
    from safetensors.torch import load_file, save_file
    tf.AutoModelForCausalLM.from_config(HF_CONFIGS['qwen2'](tf)).save_pretrained(tmp_path)
    hf_tokenizer(tmp_path)
    weights = load_file(str(tmp_path / 'model.safetensors'))
    # a tensor we would have no place for (an o_proj bias Qwen2 does not have) is refused, not dropped
    save_file({**weights, 'model.layers.0.self_attn.o_proj.bias': torch.ones(32)}, str(tmp_path / 'model.safetensors'))
    with pytest.raises(ValueError, match='o_proj.bias'):
        hf.load_hf(str(tmp_path))
    del weights['model.layers.1.mlp.up_proj.weight']
    save_file(weights, str(tmp_path / 'model.safetensors'))
    with pytest.raises(ValueError, match='up_proj.weight'):
        hf.load_hf(str(tmp_path))
    monkeypatch.setitem(sys.modules, 'safetensors.torch', None)  # as if not installed
    with pytest.raises(ValueError, match='pip install safetensors'):
        hf.load_hf(str(tmp_path))


def test_export_writes_the_weight_average_when_the_run_kept_one(tmp_path, bpe_spec):
    """A train.py run with ema_decay > 0 is scored on its weights' average: that is what gets exported."""
    need('safetensors')
    _, ck = checkpoint('gpt2', bpe_spec)
    ck['ema'] = {k: v + 0.01 for k, v in ck['model'].items()}  # (tied weights stay equal)
    hf.export_hf(ck, tmp_path)
    _, state, _ = hf.load_hf(str(tmp_path))
    assert all(torch.equal(state[k], v) for k, v in ck['ema'].items())
    assert not torch.equal(state['wte.weight'], ck['model']['wte.weight'])


def test_export_refusals(tmp_path, bpe_spec):
    for arch, kw, words in [('gpt2', {'pos_emb': 'rope'}, 'pos_emb=rope'), ('gpt2', {'n_kv_head': 2}, 'n_kv_head=2'),
                            ('llama', {'norm': 'layernorm'}, 'norm=layernorm')]:
        with pytest.raises(ValueError, match=words):
            hf.export_hf(checkpoint(arch, bpe_spec, **kw)[1], tmp_path)
    with pytest.raises(ValueError, match='char'):
        hf.export_hf(checkpoint('gpt2', {'kind': 'char', 'chars': 'ab'})[1], tmp_path)
    ck = checkpoint('llama', bpe_spec)[1]
    ck['model']['blocks.0.attn.qkv.lora_A'] = torch.zeros(4, 32)
    with pytest.raises(ValueError, match='lora_A'):
        hf.export_hf(ck, tmp_path)
    assert not os.listdir(tmp_path)  # nothing written by a refusal


def test_hub_id_offline_says_how_to_use_a_folder(tmp_path, monkeypatch):
    try:
        import huggingface_hub.constants as hub
        monkeypatch.setattr(hub, 'HF_HUB_OFFLINE', True)  # no network, and an empty cache
        monkeypatch.setattr(hub, 'HF_HUB_CACHE', str(tmp_path))
        hint = 'hf:DIR'
    except ImportError:
        hint = 'pip install huggingface_hub'
    with pytest.raises(ValueError, match=hint) as e:
        hf.load_hf('openai-community/gpt2')
    assert '\n' not in str(e.value)
    with pytest.raises(ValueError, match='no such folder'):
        hf.load_hf(str(tmp_path / 'not' / 'a' / 'model'))


@pytest.mark.slow
def test_export_script(tmp_path, bpe_spec):
    need('safetensors')
    run_dir = tmp_path / 'out-tiny'
    run_dir.mkdir()
    torch.save(checkpoint('llama', bpe_spec)[1], run_dir / 'ckpt.pt')
    p = run('export.py', f'--out_dir={run_dir}', f'--to={tmp_path / "hf_out"}')
    assert 'convert_hf_to_gguf' in p.stdout
    assert json.loads((tmp_path / 'hf_out' / 'config.json').read_text())['architectures'] == ['LlamaForCausalLM']
    again = run('export.py', f'--out_dir={run_dir}', f'--to={tmp_path / "hf_out"}', check=False)
    assert again.returncode != 0 and again.stderr.startswith('error: ') and '--overwrite' in again.stderr
    missing = run('export.py', f'--out_dir={tmp_path / "nope"}', f'--to={tmp_path / "x"}', check=False)
    assert missing.returncode != 0 and missing.stderr.count('\n') == 1 and 'Traceback' not in missing.stderr


@pytest.mark.slow
def test_scripts_start_from_a_hf_folder(char_data, tmp_path):
    """The README's path: export a run, then train.py --init_from=hf:<folder> continues from exactly
    those weights (its first loss is the exported model's), resumes, and sample.py samples the folder."""
    need('safetensors')
    from conftest import TINY, make_text
    src = tmp_path / 'c.txt'
    src.write_text(make_text(300))
    data = tmp_path / 'data'
    run('prepare.py', 'b', '--input', src, '--tokenizer=bpe', '--vocab_size=300', '--out_dir', data)
    args = [*TINY, '--dataset=b', f'--data_dir={data}', '--sample_prompt=', '--eval_interval=4']
    run('train.py', *args, '--arch=llama', '--n_kv_head=1', f'--out_dir={tmp_path / "base"}', '--max_iters=8')
    run('export.py', f'--out_dir={tmp_path / "base"}', f'--to={tmp_path / "hf_out"}')
    out = tmp_path / 'ft'
    p = run('train.py', *args, f'--init_from=hf:{tmp_path / "hf_out"}', f'--out_dir={out}', '--max_iters=4', '--learning_rate=0', '--min_lr=0')
    assert 'n_kv_head' not in p.stderr
    base = torch.load(tmp_path / 'base' / 'ckpt.pt', weights_only=True)['model']
    ft = torch.load(out / 'ckpt.pt', weights_only=True)
    assert ft['model_config']['n_kv_head'] == 1 and ft['base_model'] == f'hf:{tmp_path / "hf_out"}'
    for k, v in base.items():  # learning_rate=0: the weights are still the exported ones
        assert torch.allclose(ft['model'][k], v), k
    run('train.py', *args, f'--out_dir={out}', '--max_iters=6', '--init_from=resume')  # arch comes from the checkpoint
    s = run('sample.py', f'--init_from=hf:{tmp_path / "hf_out"}', '--start=the cat', '--num_samples=1', '--max_new_tokens=8')
    assert s.stdout.startswith('the cat')
