"""SentencePiece-style tokenizer.json (Llama 2, TinyLlama, Mistral) through sp_tokenizer.py: ids and
decoded text exactly as the tokenizers package gives them, for the legacy form (Prepend + Replace
normalizer) and Metaspace pre-tokenizers (prepend_scheme first / always / never, split or not);
the spec survives a checkpoint and export; a tiny Llama with it samples; what we do not reproduce is
refused in one line. Test tokenizers are trained here on made-up text. All offline."""
import json
import os

import pytest
import torch

from conftest import run
import hf
import tokenizer

SP = '\u2581'
TRAIN = ("the cat sat on the mat. The quick brown fox jumps over the lazy dog! it's 42, isn't it?\n"
         "床前明月光，疑是地上霜。举头望明月，低头思故乡。 hello world, hello there; 春眠不觉晓\n"
         "    indented code(x) = x ** 2  # square\n\ttabs\tand  double  spaces ... ok 🎉\n")
HELD_OUT = [
    "Hello world! The cat and the dog.",
    "  leading spaces, trailing spaces   ",
    "multiple     spaces\n\nand\nnew lines\n",
    "床前明月光，低头思故乡。你好，世界！",  # some characters never seen in training: byte fallback
    "emoji 🎉🚀 and 👨\u200d👩\u200d👧 family, café naïve Ω 𝔘 ½",
    "\tTabs\tand the quick brown fox   ",
    " ", "", "\n", "x", "▁already▁has▁the▁marker",
]
WITH_SPECIALS = ["<s>hello world</s>", "hi </s> there<s>", "<unk> the cat</s>\n<s> 猫"]


def need(package):
    return pytest.importorskip(package, reason=f'needs {package} (optional; pip install {package})')


def sp_tokenizer_json(folder, form='legacy', split_train=True, vocab=300):
    """Train a tiny SentencePiece-style BPE with the tokenizers package and write folder/tokenizer.json
    laid out as Llama 2's: <unk> <s> </s>, then <0x00>..<0xFF>, then the learned pieces; byte fallback;
    a TemplateProcessing that puts <s> first. form: 'legacy' (Prepend + Replace normalizer, Llama 2 /
    TinyLlama / Mistral) or (prepend_scheme, split) of a Metaspace pre-tokenizer, e.g. ('first', False)."""
    tk = need('tokenizers')
    t = tk.Tokenizer(tk.models.BPE(unk_token='<unk>'))
    t.pre_tokenizer = tk.pre_tokenizers.Metaspace(prepend_scheme='always', split=split_train)
    # limit_alphabet leaves rare characters out, so byte fallback is exercised on the training text too
    trainer = tk.trainers.BpeTrainer(vocab_size=vocab, special_tokens=['<unk>', '<s>', '</s>'], limit_alphabet=60,
                                     show_progress=False)
    t.train_from_iterator([TRAIN] * 10, trainer)
    trained = json.loads(t.to_str())
    learned = sorted((i, s) for s, i in trained['model']['vocab'].items() if i >= 3)
    vocab_ = {'<unk>': 0, '<s>': 1, '</s>': 2, **{f'<0x{b:02X}>': 3 + b for b in range(256)}}
    vocab_.update({s: 259 + k for k, (_, s) in enumerate(learned)})
    tj = trained
    tj['model'].update(vocab=vocab_, byte_fallback=True, fuse_unk=True)
    tj['added_tokens'] = [{'id': i, 'content': s, 'single_word': False, 'lstrip': False, 'rstrip': False,
                           'normalized': False, 'special': True} for i, s in enumerate(['<unk>', '<s>', '</s>'])]
    tj['post_processor'] = {'type': 'TemplateProcessing', 'single': [{'SpecialToken': {'id': '<s>', 'type_id': 0}},
                            {'Sequence': {'id': 'A', 'type_id': 0}}], 'pair': [{'Sequence': {'id': 'A', 'type_id': 0}}],
                            'special_tokens': {'<s>': {'id': '<s>', 'ids': [1], 'tokens': ['<s>']}}}
    strip = [{'type': 'Replace', 'pattern': {'String': SP}, 'content': ' '}, {'type': 'ByteFallback'},
             {'type': 'Fuse'}, {'type': 'Strip', 'content': ' ', 'start': 1, 'stop': 0}]
    if form == 'legacy':
        tj['normalizer'] = {'type': 'Sequence', 'normalizers': [{'type': 'Prepend', 'prepend': SP},
                            {'type': 'Replace', 'pattern': {'String': ' '}, 'content': SP}]}
        tj['pre_tokenizer'] = None
        tj['decoder'] = {'type': 'Sequence', 'decoders': strip}
    else:
        scheme, split = form
        tj['normalizer'] = None
        tj['pre_tokenizer'] = {'type': 'Metaspace', 'replacement': SP, 'prepend_scheme': scheme, 'split': split}
        tj['decoder'] = {'type': 'Metaspace', 'replacement': SP, 'prepend_scheme': scheme, 'split': split}
    os.makedirs(folder, exist_ok=True)
    text = json.dumps(tj, ensure_ascii=False)
    with open(os.path.join(folder, 'tokenizer.json'), 'w', encoding='utf-8') as f:
        f.write(text)
    with open(os.path.join(folder, 'tokenizer_config.json'), 'w', encoding='utf-8') as f:
        json.dump({'bos_token': '<s>', 'eos_token': '</s>', 'unk_token': '<unk>', 'add_bos_token': True}, f)
    return tk.Tokenizer.from_str(text)


FORMS = ['legacy', ('first', False), ('always', True), ('first', True), ('never', False)]


@pytest.mark.parametrize('form', FORMS, ids=str)
@pytest.mark.parametrize('split_train', [True, False], ids=['words', 'across-words'])
def test_same_ids_and_text_as_tokenizers(tmp_path, form, split_train):
    """Held-out strings (English, Chinese, emoji, leading / trailing / repeated spaces, new lines,
    characters outside the vocab) get the ids and decoded text of tokenizers, BOS included."""
    ref = sp_tokenizer_json(tmp_path, form, split_train)
    spec = hf.read_tokenizer(tmp_path)
    assert spec['kind'] == 'sp' and spec['eot'] == '</s>' and spec['bos'] == '<s>'
    tok = tokenizer.load(spec)
    assert (tok.n_vocab, tok.eot, tok.bos) == (ref.get_vocab_size(), 2, 1)
    fell_back = False
    for text in HELD_OUT:
        want = ref.encode(text)
        assert [tok.bos] + tok.encode(text) == want.ids, text
        assert tok.encode_special(text) == ref.encode(text, add_special_tokens=False).ids, text
        assert tok.decode(want.ids) == ref.decode(want.ids, skip_special_tokens=False), text
        assert tok.decode(want.ids[1:]) == ref.decode(want.ids[1:]), text
        fell_back |= any(3 <= i < 259 for i in want.ids)
    assert fell_back  # the set did reach the byte tokens
    for text in WITH_SPECIALS:
        ids = ref.encode(text, add_special_tokens=False).ids
        assert tok.encode_special(text) == ids, text
        assert tok.decode(ids) == ref.decode(ids, skip_special_tokens=False), text
        assert tok.special['</s>'] not in tok.encode(text)  # ordinary text never makes special ids


def test_broken_utf8_and_streaming_bytes(tmp_path):
    """A byte run that is not UTF-8 decodes as tokenizers does (one U+FFFD per byte); token_bytes,
    which sample.py streams with, adds up to the decoded text inside a text."""
    ref = sp_tokenizer_json(tmp_path)
    tok = tokenizer.load(hf.read_tokenizer(tmp_path))
    ids = [3 + 0xE4, 3 + 0xB8] + tok.encode(' ok') + [3 + 0xFF]
    assert tok.decode(ids) == ref.decode(ids)
    text = ' the 猫 🎉 cat'
    assert b''.join(tok.token_bytes(i) for i in tok.encode(text)).decode() == ' ' + text


def test_spec_in_checkpoint_and_export(tmp_path):
    """The spec needs no files (a checkpoint keeps it), tokenizer_files writes tokenizer.json back
    unchanged, and the folder it writes encodes the same in tokenizers and when read again."""
    tk = need('tokenizers')
    sp_tokenizer_json(tmp_path / 'in', ('first', False))
    spec = hf.read_tokenizer(tmp_path / 'in')
    assert tokenizer.portable_spec(spec) == spec
    saved = torch.load(_save(tmp_path / 'ck.pt', {'tokenizer': spec}), weights_only=False)['tokenizer']
    assert saved == spec
    cfg = hf.ModelConfig(vocab_size=600, n_layer=1, n_head=2, n_embd=16, block_size=64, norm='rmsnorm', pos_emb='rope',
                         mlp='swiglu', bias=False)
    files, eot_id, bos_id = hf.tokenizer_files(saved, cfg)
    assert (eot_id, bos_id) == (2, 1)
    assert files['tokenizer.json'] == (tmp_path / 'in' / 'tokenizer.json').read_text(encoding='utf-8')
    out = tmp_path / 'out'
    out.mkdir()
    for name, text in files.items():
        (out / name).write_text(text, encoding='utf-8')
    again = tokenizer.load(hf.read_tokenizer(out))
    ref = tk.Tokenizer.from_file(str(out / 'tokenizer.json'))
    for text in HELD_OUT:
        assert [again.bos] + again.encode(text) == ref.encode(text).ids
    small = hf.ModelConfig(**{**cfg.__dict__, 'vocab_size': 100})
    with pytest.raises(ValueError, match='does not fit the model'):
        hf.tokenizer_files(saved, small)


def _save(path, obj):
    torch.save(obj, path)
    return path


@pytest.mark.parametrize('field, change, match', [
    ('model.type', lambda tj: tj['model'].update(type='Unigram'), 'model.type="Unigram"'),
    ('model.type', lambda tj: tj['model'].update(type='WordPiece'), 'model.type="WordPiece"'),
    ('pre_tokenizer', lambda tj: tj.update(pre_tokenizer={'type': 'Metaspace', 'replacement': '_'}), 'pre_tokenizer='),
    ('normalizer', lambda tj: tj.update(normalizer={'type': 'Sequence', 'normalizers': [
        {'type': 'Prepend', 'prepend': SP}, {'type': 'Lowercase'}]}), 'normalizer='),
    ('decoder', lambda tj: tj.update(decoder={'type': 'WordPiece'}), 'decoder='),
    ('added_tokens', lambda tj: tj['added_tokens'][1].update(lstrip=True), r"added_tokens\['<s>'\].lstrip"),
])
def test_refused_in_one_line(tmp_path, field, change, match):
    sp_tokenizer_json(tmp_path)
    path = tmp_path / 'tokenizer.json'
    tj = json.loads(path.read_text(encoding='utf-8'))
    change(tj)
    path.write_text(json.dumps(tj), encoding='utf-8')
    with pytest.raises(ValueError, match=match) as e:
        hf.read_tokenizer(tmp_path)
    assert '\n' not in str(e.value) and 'refused' in str(e.value)


def tiny_llama_folder(folder):
    """A random LlamaForCausalLM built with transformers, with a SentencePiece-style tokenizer."""
    transformers = need('transformers')
    need('safetensors')
    ref = sp_tokenizer_json(folder)
    cfg = transformers.LlamaConfig(vocab_size=ref.get_vocab_size(), hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=64, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(folder)
    return ref


@pytest.mark.slow
def test_tiny_llama_samples(tmp_path):
    """sample.py loads hf:<folder> of a Llama with a SentencePiece-style tokenizer and decodes."""
    tiny_llama_folder(tmp_path / 'llama')
    r = run('sample.py', f'--init_from=hf:{tmp_path / "llama"}', '--start=the cat 猫', '--max_new_tokens=8',
            '--num_samples=1', '--device=cpu', '--temperature=0')
    assert 'the cat 猫' in r.stdout


def handmade_tokenizer_json(folder, model_type='BPE'):
    """A tokenizer.json written out by hand (no tokenizers package): Llama 2's legacy layout with a
    vocabulary of a few pieces, so pass 1 (without the optional packages) covers sp_tokenizer too."""
    pieces = ['\u2581', 'a', 'b', 'c', '\u2581a', 'bc', '\u2581abc']
    vocab = {'<unk>': 0, '<s>': 1, '</s>': 2, **{f'<0x{b:02X}>': 3 + b for b in range(256)},
             **{p: 259 + i for i, p in enumerate(pieces)}}
    tj = {'added_tokens': [{'id': i, 'content': s, 'special': True} for i, s in enumerate(['<unk>', '<s>', '</s>'])],
          'normalizer': {'type': 'Sequence', 'normalizers': [{'type': 'Prepend', 'prepend': SP},
                         {'type': 'Replace', 'pattern': {'String': ' '}, 'content': SP}]},
          'pre_tokenizer': None, 'post_processor': {'type': 'TemplateProcessing', 'single': [
              {'SpecialToken': {'id': '<s>', 'type_id': 0}}, {'Sequence': {'id': 'A', 'type_id': 0}}]},
          'decoder': {'type': 'Sequence', 'decoders': [{'type': 'Replace', 'pattern': {'String': SP}, 'content': ' '},
                      {'type': 'ByteFallback'}, {'type': 'Fuse'}, {'type': 'Strip', 'content': ' ', 'start': 1, 'stop': 0}]},
          'model': {'type': model_type, 'unk_token': '<unk>', 'fuse_unk': True, 'byte_fallback': True, 'vocab': vocab,
                    'merges': [f'{SP} a', 'b c', f'{SP}a bc']}}
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, 'tokenizer.json'), 'w', encoding='utf-8') as f:
        json.dump(tj, f, ensure_ascii=False)
    return vocab


def test_handmade_without_packages(tmp_path):
    """Merges in their listed order ('▁a' before 'bc', then '▁a'+'bc'), byte fallback for what the
    vocabulary lacks, decode gives the text back; Unigram is refused by name."""
    vocab = handmade_tokenizer_json(tmp_path)
    tok = tokenizer.load(hf.read_tokenizer(tmp_path))
    assert tok.encode('abc abc') == [vocab['\u2581abc'], vocab['\u2581abc']]
    assert tok.encode('cab') == [vocab['\u2581'], vocab['c'], vocab['a'], vocab['b']]  # '▁c' is no piece
    assert tok.encode('é') == [vocab['\u2581']] + [3 + b for b in 'é'.encode()]
    for text in ['abc abc', '  a  b ', 'é猫 abc\n', '']:
        assert tok.decode(tok.encode(text)) == text
    handmade_tokenizer_json(tmp_path, 'Unigram')
    with pytest.raises(ValueError, match='model.type="Unigram"'):
        hf.read_tokenizer(tmp_path)


def test_chat_tokens_added_by_sft(tmp_path):
    """finetune_sft.py adds <|im_start|>, <|im_end|> to a tokenizer without them (spec['special']):
    encode_special finds them, and the exported tokenizer.json has them, with our ChatML template."""
    tk = need('tokenizers')
    sp_tokenizer_json(tmp_path / 'in')
    spec = hf.read_tokenizer(tmp_path / 'in')
    n = tokenizer.load(spec).n_vocab
    spec = {**spec, 'special': {'<|im_start|>': n, '<|im_end|>': n + 1}}
    tok = tokenizer.load(spec)
    text = '<|im_start|>user\nhi 猫<|im_end|>\n'
    assert tok.n_vocab == n + 2 and tok.encode_special(text)[0] == n and n + 1 in tok.encode_special(text)
    assert n not in tok.encode(text)
    cfg = hf.ModelConfig(vocab_size=n + 2, n_layer=1, n_head=2, n_embd=16, block_size=64, norm='rmsnorm', pos_emb='rope',
                         mlp='swiglu', bias=False)
    files, _, _ = hf.tokenizer_files(spec, cfg)
    assert json.loads(files['tokenizer_config.json'])['chat_template'] == hf.CHAT_TEMPLATE
    ref = tk.Tokenizer.from_str(files['tokenizer.json'])
    assert ref.encode(text, add_special_tokens=False).ids == tok.encode_special(text)
    with pytest.raises(ValueError, match="'special'"):
        tokenizer.load({**spec, 'special': {'<|im_start|>': 5}})
    # transformers reads the exported folder to the same ids (the generic tokenizer class runs the file as is)
    AutoTokenizer = need('transformers').AutoTokenizer
    for name, body in files.items():
        (tmp_path / name).write_text(body, encoding='utf-8')
    theirs = AutoTokenizer.from_pretrained(str(tmp_path))
    for s in [text] + HELD_OUT:
        assert theirs(s)['input_ids'] == [tok.bos] + tok.encode_special(s), s
