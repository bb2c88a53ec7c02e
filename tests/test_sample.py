"""sample.py: bad input is one line (in this process: refused before any generation), and what it
prints as tokens come is exactly the decode of all of them (end to end: slow). Sampling from a trained
run, chat and hf: folders: test_train.py, test_sft.py, test_hf.py."""
import pytest
import torch

from checkpoint import save_checkpoint
from conftest import assert_one_line_error, run, run_here, shared_file
from model import GPT, make_config


SAMPLE_CASES = [
    (['--ckpt=nope.pt'], 'nope.pt not found; train one first'),
    (['--start=FILE:no_such_prompt.txt'], 'prompt file no_such_prompt.txt not found'),
    (['--start=' + 'the cat sees the river. ' * 3], 'the prompt is 72 tokens but the model\'s context is 32'),
    (['--temperature=-1'], 'temperature=-1.0 (needs >= 0; 0 = greedy)'),
    (['--top_p=0', '--num_samples=0'], 'top_p=0.0 (needs 0 < top_p <= 1), num_samples=0 (needs >= 1)'),
    (['--num_sample=2'], "unknown config key 'num_sample' (did you mean num_samples?)"),
    (['--max_new_tokens=ten'], 'expected int'),
]


@pytest.mark.parametrize('args,expected', SAMPLE_CASES, ids=[a[0][:30] for a, _ in SAMPLE_CASES])
def test_sample_bad_input(tiny_run, args, expected):
    p = run_here('sample.py', f'--out_dir={tiny_run}', *args, check=False)
    assert_one_line_error(p, expected)


def test_sample_prompt_file_that_is_not_text(tiny_run, tmp_path):
    (tmp_path / 'prompt.bin').write_bytes(b'ab\xe8\xff\xfe')
    p = run_here('sample.py', f'--out_dir={tiny_run}', f'--start=FILE:{tmp_path / "prompt.bin"}', check=False)
    assert_one_line_error(p, f'prompt file {tmp_path / "prompt.bin"} is not UTF-8 text')


def test_sample_from_a_checkpoint_without_tokenizer(tiny_run, tmp_path):
    import torch
    ck = torch.load(tiny_run / 'ckpt.pt', weights_only=True)
    del ck['tokenizer']
    torch.save(ck, tmp_path / 'ckpt.pt')
    p = run_here('sample.py', f'--out_dir={tmp_path}', check=False)
    assert_one_line_error(p, 'has no tokenizer in it')


def test_sample_without_a_run(tmp_path):
    p = run_here('sample.py', f'--out_dir={tmp_path / "nothing"}', check=False)
    assert_one_line_error(p, 'ckpt.pt not found; train one first')


@pytest.mark.slow
def test_bad_input_in_a_real_process(tiny_run):
    p = run('sample.py', f'--out_dir={tiny_run}', '--temperature=-1', check=False)
    assert_one_line_error(p, 'temperature=-1.0 (needs >= 0; 0 = greedy)')
    assert p.returncode == 1


@pytest.mark.slow
def test_sample_decodes_incrementally_to_the_same_text(tmp_path):
    """sample.py prints each token's text as it comes; with GPT-2's byte-level tokens a character is
    often cut between two tokens. What it prints must be exactly the decode of all the ids."""
    shared_file('tiktoken_cache')
    import tokenizer
    spec = {'kind': 'tiktoken', 'name': 'gpt2'}
    tok = tokenizer.load(spec)
    start = '春眠不觉晓，'
    cfg = make_config('gpt2', block_size=64, vocab_size=tok.n_vocab, n_layer=1, n_head=2, n_embd=16)
    model = GPT(cfg)
    # A rigged model: every position's final state is all ones (ln_f), and only the single-byte tokens
    # of the prompt's characters and ' the' get a large logit, so it samples bytes that make whole
    # characters, cut ones and invalid runs, between whole words.
    picks = sorted({tok.enc.encode_single_token(bytes([b])) for b in start.encode()} | {tok.encode(' the')[0]})
    with torch.no_grad():
        model.ln_f.weight.zero_(), model.ln_f.bias.fill_(1.0), model.wte.weight.zero_()
        model.wte.weight[picks] = 1.0
    save_checkpoint({'model': model.state_dict(), 'model_config': cfg.__dict__, 'iter_num': 0, 'tokenizer': spec}, tmp_path)
    s = run('sample.py', f'--out_dir={tmp_path}', f'--start={start}', '--num_samples=1', '--max_new_tokens=60',
            '--temperature=1.0', '--top_k=0', '--seed=3', '--dtype=float32')
    gen = torch.Generator().manual_seed(3)
    ids = [t.item() for t in model.stream(torch.tensor([tok.encode(start)]), 60, temperature=1.0, top_p=1.0,
                                           stop_tokens={tok.eot}, generator=gen)]
    assert ''.join(tok.decode([t]) for t in ids) != tok.decode(ids)  # characters are cut between tokens
    assert s.stdout == start + tok.decode(ids) + '\n'
