"""Supervised fine-tuning: the chat template and its loss mask, Alpaca records, bad records,
new tokens, LoRA, and short finetune_sft.py runs that sample.py --chat can talk to."""
import json
import os
import subprocess
import sys

import pytest
import torch

import chat_data
import tokenizer
from checkpoint import load_checkpoint, load_model, save_checkpoint
from conftest import ROOT, SHARED, TINY, make_text, run, shared_file
from model import GPT, add_lora, grow_vocab, make_config, merge_lora

SFT = ['--batch_size=8', '--learning_rate=3e-3', '--warmup_iters=5', '--eval_iters=4', '--log_interval=10',
       '--peak_flops=1e12', '--val_fraction=0.1']


def sft(base, chats, out, *args, check=True):
    return run('finetune_sft.py', *SFT, f'--base_dir={base}', f'--data_file={chats}', f'--cache_dir={out}-cache',
               f'--out_dir={out}', *args, check=check)


def val_losses(out):
    return {r['iter']: r['val_loss'] for r in map(json.loads, open(out / 'log.jsonl')) if 'val_loss' in r}


@pytest.fixture(scope='module')
def tok(tmp_path_factory):
    """A tokenizer of sft_base's kind: a 300-token bpe (which reserves the chat tokens) on the same
    text, trained here in this process (no training run needed for the template's tests)."""
    import prepare
    d = tmp_path_factory.mktemp('tok')
    (d / 'tiny.txt').write_text(make_text())
    prepare.prepare('tinybpe', input=[str(d / 'tiny.txt')], vocab_size=300, tokenizer_only=True, out_dir=str(d), quiet=True)
    return tokenizer.load(tokenizer.read_spec(d / 'tinybpe'))


CONVERSATION = [{'role': 'system', 'content': 'be brief.'},
                {'role': 'user', 'content': 'what does the cat see?'}, {'role': 'assistant', 'content': 'the cat sees the sea.'},
                {'role': 'user', 'content': 'and then?'}, {'role': 'assistant', 'content': 'it finds\nan open door!'}]


def test_mask_is_exactly_the_assistant_spans(tok, tmp_path):
    """Token by token against the text: a token counts iff it lies in an assistant turn's content
    or is the <|im_end|> closing it; and the targets the loss sees are those tokens, shifted by one."""
    ids, mask = chat_data.encode_chat(tok, CONVERSATION)
    text = ''.join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in CONVERSATION)
    assert tok.decode(ids) == text
    spans, at = [], 0  # character spans of what the model must write
    for m in CONVERSATION:
        at += len(f"<|im_start|>{m['role']}\n")
        if m['role'] == 'assistant':
            spans.append((at, at + len(m['content']) + len('<|im_end|>')))
        at += len(m['content']) + len('<|im_end|>\n')
    expected = []
    for i in range(len(ids)):
        a, b = len(tok.decode(ids[:i])), len(tok.decode(ids[:i + 1]))
        expected.append(int(any(s <= a and b <= e for s, e in spans)))
    assert mask == expected and sum(mask) > 10

    # through the cache and the batch maker finetune_sft.py uses
    (tmp_path / 'one.jsonl').write_text(json.dumps({'messages': CONVERSATION}) + '\n')
    meta = chat_data.build_cache(str(tmp_path / 'one.jsonl'), tok, {'kind': 'test'}, str(tmp_path / 'c'), 0.5, 0)
    data, _ = chat_data.load_cache(str(tmp_path / 'c'))
    split = data['train' if meta['examples']['train'] else 'val']
    x, y = chat_data.make_batch(split, [0], 1000, pad_id=tok.eot)
    assert x[0].tolist() == ids[:-1]
    for t in range(len(ids) - 1):
        assert y[0, t] == (ids[t + 1] if expected[t + 1] else -100), t
    learned = tok.decode([t for t in y[0].tolist() if t != -100])
    assert learned == 'the cat sees the sea.<|im_end|>it finds\nan open door!<|im_end|>'


def test_padding_and_the_cut(tok, tmp_path):
    short = [{'role': 'user', 'content': 'hi'}, {'role': 'assistant', 'content': 'hello.'}]
    late = [{'role': 'user', 'content': 'the quiet garden ' * 20}, {'role': 'assistant', 'content': 'yes.'}]
    path = tmp_path / 'd.jsonl'
    path.write_text(''.join(json.dumps({'messages': m}) + '\n' for m in (CONVERSATION, short, late)))
    meta = chat_data.build_cache(str(path), tok, {'kind': 'test'}, str(tmp_path / 'c'), 1e-9, 0)
    assert chat_data.build_cache(str(path), tok, {'kind': 'test'}, str(tmp_path / 'c'), 1e-9, 0, say=None) == meta  # reused
    split = chat_data.load_cache(str(tmp_path / 'c'))[0]['train']
    ids, mask = chat_data.encode_chat(tok, CONVERSATION)
    block = mask.index(1) + 4  # the conversation is cut after its first few reply tokens
    n_short = len(chat_data.encode_chat(tok, short)[0])
    assert n_short < block < len(ids) and chat_data.encode_chat(tok, late)[1].index(1) > block
    keep, n_cut, n_dropped = chat_data.usable(split, block)
    assert keep.tolist() == [0, 1] and n_cut == 1 and n_dropped == 1  # the long one cut, the late reply dropped
    x, y = chat_data.make_batch(split, keep, block, pad_id=tok.eot)
    assert x.shape == (2, block)  # the cut: block_size + 1 tokens -> block_size inputs
    assert x[0].tolist() == ids[:block] and (y[0] != -100).sum() == 5  # reply tokens k..block of the block + 1 kept
    assert (y[1, n_short - 1:] == -100).all() and (x[1, n_short - 1:] == tok.eot).all()  # padding never counts


def test_alpaca_records_map_onto_the_template(tok, tmp_path):
    recs = [{'instruction': 'Convert 45 kilometers to meters.', 'input': '', 'output': '45 kilometers is 45000 meters.'},
            {'instruction': 'Edit the following sentence for grammar.', 'input': 'He go to the park.', 'output': 'He goes to the park.'}]
    path = tmp_path / 'alpaca.json'
    path.write_text(json.dumps(recs, indent=4))  # a JSON array, as instruction-data.json is
    got = list(chat_data.read_examples(str(path)))
    assert [w for w, _ in got] == [f'{path}:2', f'{path}:7']
    texts = [tok.decode(chat_data.encode_chat(tok, m)[0]) for _, m in got]
    assert texts[0] == ('<|im_start|>user\nConvert 45 kilometers to meters.<|im_end|>\n'
                        '<|im_start|>assistant\n45 kilometers is 45000 meters.<|im_end|>\n')
    assert texts[1] == ('<|im_start|>user\nEdit the following sentence for grammar.\n\nHe go to the park.<|im_end|>\n'
                        '<|im_start|>assistant\nHe goes to the park.<|im_end|>\n')
    (tmp_path / 'alpaca.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in recs))
    assert [m for _, m in chat_data.read_examples(str(tmp_path / 'alpaca.jsonl'))] == [m for _, m in got]
    # the chat prompt sample.py builds is the training text up to the reply
    prompt = tok.decode(chat_data.prompt_ids(tok, got[0][1][:1]))
    assert texts[0].startswith(prompt) and prompt.endswith('<|im_start|>assistant\n')


BAD = [('[1, 2]', 'a JSON list, not an object'),
       ('{"text": "a poem"}', "neither 'messages' (chat) nor 'instruction'/'output' (Alpaca); it has: text"),
       ('{"instruction": "say hi"}', "an Alpaca record without a string 'output'"),
       ('{"messages": [{"role": "bot", "content": "hi"}]}', "message 1 has the unknown role 'bot'"),
       ('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}]}', 'message 2 is an empty assistant turn'),
       ('{"messages": [{"role": "user", "content": "hi"}]}', 'a conversation with no assistant turn'),
       ('{"messages": "hi"}', "'messages' must be a non-empty list")]


@pytest.mark.parametrize('line,problem', BAD)
def test_bad_records_name_file_and_line(tmp_path, capsys, line, problem):
    good = json.dumps({'messages': CONVERSATION})
    path = tmp_path / 'bad.jsonl'
    path.write_text(f'{good}\n\n{line}\n{good}\n')
    with pytest.raises(SystemExit) as e:
        list(chat_data.read_examples(str(path)))
    err = capsys.readouterr().err.strip()
    assert e.value.code == 1 and err.startswith(f'error: {path}:3: {problem}') and '\n' not in err
    counts = {}
    assert len(list(chat_data.read_examples(str(path), skip_bad_lines=True, counts=counts))) == 2 and counts['bad_lines'] == 1


@pytest.mark.slow
def test_bad_input_to_the_script_is_one_line(sft_base, tmp_path):
    base, chats = sft_base
    p = sft(tmp_path / 'nobase', chats, tmp_path / 'out', check=False)
    assert p.returncode == 1 and p.stderr.strip().count('\n') == 0 and 'no checkpoint at' in p.stderr
    bad = tmp_path / 'bad.json'
    bad.write_text('[\n {"instruction": "a", "output": "b"},\n {"instruction": "c", "output": ""}\n]\n')
    p = sft(base, bad, tmp_path / 'out', check=False)
    assert p.returncode == 1 and p.stderr.strip() == (f"error: {bad}:3: an empty 'output' (an empty assistant turn); "
                                                      f"fix or remove that line, or pass --skip_bad_lines to skip such lines")
    assert not (tmp_path / 'out' / 'ckpt.pt').exists()
    cfg = make_config('gpt2', block_size=8, vocab_size=4, n_layer=1, n_head=1, n_embd=8)  # a char-level base
    save_checkpoint({'model': GPT(cfg).state_dict(), 'model_config': cfg.__dict__, 'tokenizer': {'kind': 'char', 'chars': 'abc'},
                     'iter_num': 0}, tmp_path / 'charbase')
    p = sft(tmp_path / 'charbase', chats, tmp_path / 'out', check=False)
    assert p.returncode == 1 and 'char tokenizer, which has no chat tokens' in p.stderr and p.stderr.count('\n') == 1


@pytest.mark.parametrize('arch', ['gpt2', 'llama'])
def test_grow_vocab_keeps_old_logits(arch):
    torch.manual_seed(0)
    model = GPT(make_config(arch, block_size=16, vocab_size=50, n_layer=2, n_head=2, n_embd=16)).eval()
    x = torch.randint(0, 50, (2, 10))
    before = model(x)[0]
    old_wte = model.wte.weight.detach().clone()
    grow_vocab(model, 52)
    after = model(x)[0]
    assert after.shape == (2, 10, 52) and model.cfg.vocab_size == 52
    assert torch.allclose(after[..., :50], before, atol=1e-6)
    assert torch.equal(model.wte.weight[:50], old_wte) and torch.allclose(model.wte.weight[50], old_wte.mean(0))
    assert (model.lm_head.weight is model.wte.weight) == (arch == 'gpt2')
    x2 = torch.cat([x, torch.tensor([[50], [51]])], 1)  # the new ids can be read as well
    assert model(x2)[0].shape == (2, 11, 52)


def test_lora_merge_gives_the_same_logits():
    torch.manual_seed(0)
    model = GPT(make_config('llama', block_size=16, vocab_size=50, n_layer=2, n_head=4, n_kv_head=2, n_embd=32)).eval()
    plain_keys = set(model.state_dict())
    x = torch.randint(0, 50, (2, 12))
    before = model(x)[0]
    add_lora(model, rank=4, alpha=8.0, targets=('qkv', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'))
    assert torch.allclose(model(x)[0], before, atol=1e-6)  # B starts at zero: the same model at step 0
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(('lora_a', 'lora_b')) for n in trainable) and len(trainable) == 2 * 5 * 2
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith('lora_b'):
                p.normal_(0, 0.1)
    unmerged = model(x)[0]
    assert not torch.allclose(unmerged, before, atol=1e-3)
    merge_lora(model)
    assert set(model.state_dict()) == plain_keys
    assert torch.allclose(model(x)[0], unmerged, atol=1e-5)
    with pytest.raises(ValueError, match='gate_proj'):
        add_lora(GPT(make_config('gpt2', block_size=8, vocab_size=50, n_layer=1, n_head=2, n_embd=16)), 2, 4.0, targets=('gate_proj',))


@pytest.mark.slow
def test_a_short_run_lowers_the_masked_val_loss_and_chats(sft_base, tmp_path):
    base, chats = sft_base
    out = tmp_path / 'out'
    p = sft(base, chats, out, '--max_iters=60', '--eval_interval=30', '--sample_prompt=what does the king see?',
            '--sample_system=be brief.')
    val = val_losses(out)
    assert sorted(val) == [0, 30, 60] and val[60] < 0.6 * val[0], val  # iter 0 is the base model
    assert 'sample:\n> what does the king see?' in p.stdout
    s = run('sample.py', f'--out_dir={out}', '--chat', '--start=what does the king see?', '--num_samples=2', '--max_new_tokens=20')
    assert len(s.stdout.split('-' * 40)) == 2
    assert 'system prompt, as in fine-tuning: be brief.' in s.stderr  # the prompt it was trained with, by default
    s = run('sample.py', f'--out_dir={out}', '--chat', '--start=what does the king see?', '--num_samples=1', '--system=')
    assert 'system prompt' not in s.stderr
    s = subprocess.run([sys.executable, str(ROOT / 'sample.py'), f'--out_dir={out}', '--chat', '--max_new_tokens=20'],
                       input='what does the cat see?\n/reset\nand then?\n', capture_output=True, text=True, timeout=120)
    assert s.returncode == 0 and s.stdout.count('> ') == 4 and 'Traceback' not in s.stderr  # 2 replies, then the end


@pytest.mark.slow
def test_chat_history_and_the_stop_token(sft_base, tok, tmp_path):
    turns = [{'role': 'system', 'content': 'be brief.'}]
    for i in range(6):
        turns += [{'role': 'user', 'content': f'question {i}?'}, {'role': 'assistant', 'content': f'answer {i}.'}]
    turns.append({'role': 'user', 'content': 'last?'})
    full = chat_data.prompt_ids(tok, turns)
    ids, dropped = chat_data.fit_history(tok, turns, len(full) - 1)  # one token too many: the oldest exchange goes
    assert dropped == 2 and ids == chat_data.prompt_ids(tok, turns[:1] + turns[3:])
    ids, dropped = chat_data.fit_history(tok, turns, 10)  # nothing fits: the system prompt and the last message stay
    assert dropped == 12 and ids == chat_data.prompt_ids(tok, [turns[0], turns[-1]])
    # a model that always says <|im_end|>: the reply must stop there, empty
    im_end = tok.special['<|im_end|>']
    cfg = make_config('gpt2', block_size=64, vocab_size=tok.n_vocab, n_layer=1, n_head=2, n_embd=16)
    model = GPT(cfg)
    with torch.no_grad():
        model.ln_f.weight.zero_(), model.ln_f.bias.fill_(1.0)  # every position's final state: all ones
        model.wte.weight.zero_(), model.wte.weight[im_end].fill_(1.0)  # tied: only <|im_end|> gets a logit > 0
    save_checkpoint({'model': model.state_dict(), 'model_config': cfg.__dict__, 'iter_num': 0,
                     'tokenizer': load_checkpoint(sft_base[0] / 'ckpt.pt')['tokenizer']}, tmp_path)
    s = run('sample.py', f'--out_dir={tmp_path}', '--chat', '--start=hi', '--num_samples=1', '--temperature=0')
    assert s.stdout == '\n' and s.stderr == ''


@pytest.fixture(scope='module')
def gpt2_base(tmp_path_factory):
    if not (SHARED / 'tiktoken_cache').is_dir():
        pytest.skip("needs GPT-2's BPE files in ../shared/data/tiktoken_cache")
    d = tmp_path_factory.mktemp('gpt2')
    (d / 'tiny.txt').write_text(make_text(300))
    run('prepare.py', 'tinygpt2', '--input', d / 'tiny.txt', '--tokenizer=gpt2', '--out_dir', d / 'data')
    run('train.py', *TINY, '--dataset=tinygpt2', f'--data_dir={d / "data"}', f'--out_dir={d / "base"}', '--max_iters=4',
        '--eval_interval=4', '--eval_iters=1', '--sample_prompt=')
    return d / 'base'


@pytest.mark.slow
def test_lora_on_gpt2_adds_the_chat_tokens_and_trains_only_adapters(sft_base, gpt2_base, tmp_path):
    _, chats = sft_base
    out = tmp_path / 'out'
    sft(gpt2_base, chats, out, '--lora_rank=4', '--max_iters=8', '--eval_interval=8', '--eval_iters=1', '--batch_size=4',
        '--learning_rate=1e-2', '--weight_decay=0.1')  # decay on: it must still leave the frozen rows alone
    base, ck = load_checkpoint(gpt2_base / 'ckpt.pt'), load_checkpoint(out / 'ckpt.pt')
    assert ck['tokenizer'] == {'kind': 'tiktoken', 'name': 'gpt2', 'extra_special': {'<|im_start|>': 50257, '<|im_end|>': 50258}}
    assert ck['model_config']['vocab_size'] == 50259 and ck['lora']['rank'] == 4
    w = ck['model']['wte.weight']
    assert torch.equal(w[:50257], base['model']['wte.weight'])  # old rows frozen, new ones trained
    assert not torch.allclose(w[50257:], base['model']['wte.weight'].mean(0))
    for k, v in base['model'].items():
        if k != 'wte.weight' and k != 'lm_head.weight':
            assert torch.equal(ck['model'].get(k, ck['model'].get(k.replace('.weight', '.base.weight').replace('.bias', '.base.bias'))), v), k
    # merged (load_model) and unmerged logits agree
    merged, spec, _ = load_model(out)
    unmerged = GPT(merged.cfg)
    add_lora(unmerged, 4, ck['lora']['alpha'], 0.0, ck['lora']['targets'])
    unmerged.load_state_dict(ck['model'])
    x = torch.randint(0, 50259, (2, 20))
    assert torch.allclose(merged(x)[0], unmerged.eval()(x)[0], atol=1e-5)
    s = run('sample.py', f'--out_dir={out}', '--chat', '--start=what does the cat see?', '--max_new_tokens=10')
    assert s.returncode == 0  # no tokenizer flag: the checkpoint's tokenizer knows the chat tokens
    p = run('sample.py', f'--out_dir={gpt2_base}', '--chat', '--start=hi', check=False)
    assert p.returncode == 1 and 'has no <|im_start|> and <|im_end|> token' in p.stderr and 'finetune_sft.py' in p.stderr


@pytest.mark.slow
def test_the_configs_run_on_the_real_data(gpt2_base, tmp_path):
    """The README's path, a few steps each: poems text -> base -> chat records -> a chat; and the
    Alpaca JSON array on a GPT-2-vocabulary base (the file is there, so nothing is downloaded)."""
    poems, chats, alpaca = shared_file('tang-poems.jsonl'), shared_file('tang-poems-chat.jsonl'), shared_file('instruction-data.json')
    data, few = tmp_path / 'data', ['--max_iters=3', '--eval_interval=3', '--eval_iters=1', '--peak_flops=1e12']
    run('prepare.py', 'poems', '--input', poems, '--tokenizer=bpe', '--vocab_size=1024', '--out_dir', data)
    run('train.py', 'config/train_poems.py', f'--data_dir={data}', f'--out_dir={tmp_path / "base"}', '--sample_tokens=5', *few)
    p = run('finetune_sft.py', 'config/sft_poems.py', f'--base_dir={tmp_path / "base"}', f'--data_file={chats}',
            f'--cache_dir={tmp_path / "c1"}', f'--out_dir={tmp_path / "sft"}', '--sample_tokens=5', *few)
    assert '4,7' in p.stdout and 'sample:\n> 请以《春夜》为题，写一首诗。' in p.stdout  # ~4,750 train examples
    s = run('sample.py', f'--out_dir={tmp_path / "sft"}', '--chat', '--start=请以《春夜》为题，写一首诗。', '--num_samples=1',
            '--max_new_tokens=5')
    assert s.returncode == 0
    p = run('finetune_sft.py', 'config/sft_alpaca.py', f'--base_dir={gpt2_base}', f'--data_file={alpaca}',
            f'--cache_dir={tmp_path / "c2"}', f'--out_dir={tmp_path / "alpaca"}', '--sample_tokens=5', *few)
    assert 'added <|im_start|> = 50257, <|im_end|> = 50258' in p.stdout and 'downloading' not in p.stdout
    assert load_checkpoint(tmp_path / 'alpaca' / 'ckpt.pt')['config']['data_url'].startswith('https://raw.githubusercontent.com/rasbt/')


@pytest.mark.slow
@pytest.mark.parametrize('mode', ['ddp', 'fsdp'])
def test_two_processes_train_like_one(sft_base, tmp_path, mode):
    """torchrun, 2 processes x 4 examples x 2 micro-steps each = 1 process x 8 x 2: each reply token
    weighs the same over the whole global batch, so the per-step losses and the final weights agree
    (up to the order of float additions), for DDP and for FSDP."""
    base, chats = sft_base
    args = [*SFT, f'--base_dir={base}', f'--data_file={chats}', f'--cache_dir={tmp_path}/cache', '--max_iters=6',
            '--eval_interval=6', '--eval_iters=1']
    # (2 threads, as before tests ran torch on one: with one, FSDP's weights sit just past the tolerance below -- summation order)
    run('finetune_sft.py', *args, '--batch_size=8', '--gradient_accumulation_steps=2', f'--out_dir={tmp_path / "one"}',
        env={'OMP_NUM_THREADS': '2'})
    p = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                        str(ROOT / 'finetune_sft.py'), *args, '--batch_size=4', '--gradient_accumulation_steps=4',
                        f'--fsdp={mode == "fsdp"}', f'--out_dir={tmp_path / "two"}'],
                       cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert p.returncode == 0, p.stderr[-2000:]
    one, two = ({r['iter']: r['loss'] for r in map(json.loads, open(tmp_path / d / 'log.jsonl')) if 'loss' in r} for d in ('one', 'two'))
    assert sorted(one) == sorted(two) == list(range(6)) and all(abs(one[i] - two[i]) < 1e-4 for i in one), (one, two)
    w1, w2 = (load_checkpoint(tmp_path / d / 'ckpt.pt')['model'] for d in ('one', 'two'))
    assert w1.keys() == w2.keys() and all(torch.allclose(w1[k], w2[k], rtol=1e-4, atol=1e-5) for k in w1)
