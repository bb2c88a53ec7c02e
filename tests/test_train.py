"""train.py end to end on a tiny char dataset (seconds each: slow), and every setting it refuses:
one line on stderr naming the problem, a non-zero exit, no traceback, nothing overwritten (in this
process: the refusals come before any training, so a subprocess would only add the torch import;
test_refusals_in_a_real_process checks the same in a process of its own)."""
import json
import shutil

import numpy as np
import pytest
import torch

from conftest import TINY, assert_one_line_error, run, run_here
from checkpoint import load_checkpoint, load_model


def losses(out_dir):
    rows = [json.loads(line) for line in open(out_dir / 'log.jsonl')]
    return {r['iter']: r['loss'] for r in rows if 'loss' in r}, {r['iter']: r['val_loss'] for r in rows if 'val_loss' in r}


def train(data, out, *args, check=True):
    return run('train.py', *TINY, f'--data_dir={data}', f'--out_dir={out}', *args, check=check)


TRAIN_CASES = [
    (['--max_itres=5'], "unknown config key 'max_itres' (did you mean max_iters?)"),
    (['--batch_size=abc'], '--batch_size=abc: expected int'),
    (['--dropout=high'], 'expected float'),
    (['config/no_such_config.py'], "config file 'config/no_such_config.py' not found"),
    (['--dataset=no_such_data'], 'python prepare.py no_such_data --input='),
    (['--block_size=5000'], 'not enough for one block of block_size=5000'),
    (['--n_embd=30', '--n_head=4'], 'n_embd=30 must be divisible by n_head=4'),
    (['--n_head=4', '--n_kv_head=3'], 'divisible by n_kv_head=3'),
    (['--arch=gpt3'], "arch='gpt3' must be one of ['gpt2', 'llama', 'qwen2', 'qwen3']"),
    (['--norm=batchnorm'], "norm='batchnorm' must be"),
    (['--init_from=restart'], "init_from='restart' must be"),
    (['--init_from=resume'], 'nothing to resume'),
    (['--eval_interval=0'], 'eval_interval=0: must be at least 1'),
    (['--batch_size=0', '--eval_iters=0'], 'batch_size=0, eval_iters=0: must be at least 1'),
    (['--learning_rate=-1e-3'], 'must not be negative'),
    (['--min_lr=1e-2', '--learning_rate=1e-3'], 'min_lr=0.01 is above learning_rate=0.001'),
    (['--out_dir='], "out_dir='' must name a folder"),
    (['--data_dir='], "data_dir='' must name a folder"),
    (['--n_head=0'], 'n_head=0: sizes must be positive'),
    (['--n_kv_head=-1', '--ffn_hidden=-5'], 'n_kv_head=-1, ffn_hidden=-5: sizes must be positive'),
    (['--arch=llama', '--rope_theta=0'], 'rope_theta=0.0 must be positive'),
    (['--beta2=1.5'], "beta2=1.5: AdamW's betas must be in [0, 1)"),
    (['--ema_decay=1.0'], 'ema_decay=1.0 must be in [0, 1)'),
    (['--sample_tokens=-5'], 'sample_tokens=-5: must not be negative'),
    (['--device=gpu'], "device='gpu' is not a device"),
    (['--device=cuda'], 'has no CUDA'),
    (['--dtype=float16'], 'float16 needs a CUDA GPU'),
    (['--dtype=fp8'], "dtype='fp8' must be"),
]


@pytest.mark.parametrize('args,expected', TRAIN_CASES, ids=[' '.join(a) for a, _ in TRAIN_CASES])
def test_train_bad_settings(char_data, tmp_path, args, expected):
    p = run_here('train.py', *TINY, f'--data_dir={char_data}', f'--out_dir={tmp_path / "out"}', '--max_iters=2', *args, check=False)
    assert_one_line_error(p, expected)


def test_config_file_that_raises(char_data, tmp_path):
    bad = tmp_path / 'bad.py'
    bad.write_text("batch_size = 4\nn_layer = undefined_name\n")
    p = run_here('train.py', bad, *TINY, f'--data_dir={char_data}', check=False)
    assert_one_line_error(p, "NameError: name 'undefined_name' is not defined")


def test_bin_that_does_not_match_its_meta(char_data, tmp_path):
    data = tmp_path / 'data'
    shutil.copytree(char_data / 'tiny', data / 'tiny')
    with open(data / 'tiny' / 'train.bin', 'r+b') as f:  # as an interrupted copy would leave it
        f.truncate(1000)
    p = run_here('train.py', *TINY, f'--data_dir={data}', f'--out_dir={tmp_path / "out"}', check=False)
    assert_one_line_error(p, 'train.bin has 1,000 bytes but meta.json says')
    with open(data / 'tiny' / 'train.bin', 'r+b') as f:  # an odd size (not whole tokens), and an empty file
        f.truncate(999)
    assert_one_line_error(run_here('train.py', *TINY, f'--data_dir={data}', f'--out_dir={tmp_path / "out"}', check=False), 'has 999 bytes')
    (data / 'tiny' / 'train.bin').write_bytes(b'')
    assert_one_line_error(run_here('train.py', *TINY, f'--data_dir={data}', f'--out_dir={tmp_path / "out"}', check=False), 'has 0 bytes')
    shutil.copy(char_data / 'tiny' / 'train.bin', data / 'tiny' / 'train.bin')
    (data / 'tiny' / 'val.bin').unlink()
    p = run_here('train.py', *TINY, f'--data_dir={data}', f'--out_dir={tmp_path / "out"}', check=False)
    assert_one_line_error(p, 'val.bin is missing; rerun: python prepare.py tiny')


@pytest.mark.slow
def test_refusals_in_a_real_process(char_data, tmp_path):
    """The same as the in-process cases, as a user meets them: the process's own exit and stderr."""
    for args, expected in TRAIN_CASES[:2] + [(['--n_head=4', '--n_kv_head=3'], 'divisible by n_kv_head=3')]:
        p = run('train.py', *TINY, f'--data_dir={char_data}', f'--out_dir={tmp_path / "out"}', '--max_iters=2', *args, check=False)
        assert_one_line_error(p, expected)
        assert p.returncode == 1 and not (tmp_path / 'out').exists()


@pytest.mark.slow
def test_parameter_count_shows_the_untied_embedding(char_data, tmp_path):
    p = run('train.py', *TINY, '--arch=llama', f'--data_dir={char_data}', f'--out_dir={tmp_path}', '--max_iters=1', '--sample_prompt=')
    import torch
    ck = torch.load(tmp_path / 'ckpt.pt', weights_only=True)
    n = sum(v.numel() for v in ck['model'].values())
    assert f'{n / 1e6:.2f}M parameters (' in p.stdout and 'without the embedding tables' in p.stdout
    # the run's config holds the settings, every one and nothing else (not a name imported before configure())
    settings = {line.split(' = ')[0] for line in run('train.py', '--help').stdout.splitlines() if ' = ' in line and line[0] != '#'}
    assert set(ck['config']) == settings and 'n_layer' in settings


@pytest.mark.slow
def test_loss_goes_down_and_sample_loads(char_data, tmp_path):
    out = tmp_path / 'out'
    p = train(char_data, out, '--max_iters=80', '--eval_interval=40', '--sample_prompt=the ')
    train_loss, val_loss = losses(out)
    assert sorted(train_loss) == list(range(80))
    assert sum(list(train_loss.values())[-10:]) / 10 < 0.7 * sum(list(train_loss.values())[:5]) / 5
    assert val_loss[80] < val_loss[40]
    for word in ('ms', 'tok/s', 'mfu', 'lr'):
        assert word in p.stdout
    assert 'sample:\nthe ' in p.stdout
    ck = load_checkpoint(out / 'ckpt.pt')
    assert ck['iter_num'] == 80 and ck['tokenizer']['kind'] == 'char' and (out / 'best.pt').exists()
    s = run('sample.py', f'--out_dir={out}', '--start=the cat', '--num_samples=2', '--max_new_tokens=30', '--seed=1')
    samples = s.stdout.split('-' * 40)
    assert len(samples) == 2 and all(x.strip().startswith('the cat') for x in samples)
    assert len(samples[0].strip()) > len('the cat') + 10
    # same seed, same text; greedy is deterministic and uses the same model
    assert run('sample.py', f'--out_dir={out}', '--start=the cat', '--num_samples=2', '--max_new_tokens=30', '--seed=1').stdout == s.stdout


@pytest.mark.slow
def test_llama_family_trains_with_one_override(char_data, tmp_path):
    out = tmp_path / 'out'
    train(char_data, out, '--arch=llama', '--n_kv_head=1', '--max_iters=40', '--eval_interval=20')
    ck = load_checkpoint(out / 'ckpt.pt')
    assert ck['model_config']['pos_emb'] == 'rope' and ck['model_config']['mlp'] == 'swiglu' and ck['model_config']['n_kv_head'] == 1
    train_loss, _ = losses(out)
    assert train_loss[39] < train_loss[0]
    run('sample.py', f'--out_dir={out}', '--start=the', '--num_samples=1', '--max_new_tokens=10', '--temperature=0')


@pytest.mark.slow
def test_gradient_accumulation_counts_tokens(char_data, tmp_path):
    p = train(char_data, tmp_path / 'out', '--max_iters=3', '--gradient_accumulation_steps=3', '--eval_interval=100', '--sample_prompt=')
    assert f"{3 * 4 * 32:,} tokens/iter" in p.stdout


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(char_data, tmp_path):
    import subprocess, sys, os
    from conftest import ROOT
    out = tmp_path / 'out'
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', str(ROOT / 'train.py'),
           *TINY, f'--data_dir={char_data}', f'--out_dir={out}', '--max_iters=20', '--eval_interval=10', '--sample_prompt=',
           '--gradient_accumulation_steps=2']
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert p.returncode == 0, p.stderr[-3000:]
    assert 'x2' in p.stdout and f"{2 * 4 * 32:,} tokens/iter" in p.stdout
    ck = load_checkpoint(out / 'ckpt.pt')
    assert ck['world_size'] == 2 and len(ck['rng']['sampler']) == 1  # one data stream, each rank takes its slice
    assert not torch.equal(ck['rng']['torch'][0], ck['rng']['torch'][1])  # dropout streams differ per rank
    train_loss, _ = losses(out)
    assert len(train_loss) == 20 and train_loss[19] < train_loss[0]
    # a NaN loss under DDP: every rank stops with the one-line error and exit code 1 (not a gloo abort at exit)
    before = (out / 'ckpt.pt').read_bytes()
    nan = ['--init_from=resume', '--max_iters=30', '--lr_decay_iters=30', '--learning_rate=1e30', '--warmup_iters=0', '--grad_clip=0']
    p = subprocess.run(cmd + nan, cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert p.returncode != 0 and 'error: loss is nan at iter' in p.stderr
    assert 'exitcode  : 1 ' in p.stderr and 'terminate called' not in p.stderr, p.stderr[-3000:]
    assert (out / 'ckpt.pt').read_bytes() == before


@pytest.mark.slow
def test_bpe_dataset_samples_with_no_tokenizer_flag(tmp_path):
    from conftest import make_text
    src = tmp_path / 'corpus.txt'
    src.write_text(make_text(400) + '床前明月光，疑是地上霜。举头望明月，低头思故乡。\n' * 50)
    data = tmp_path / 'data'
    run('prepare.py', 'mixed', '--input', src, '--tokenizer=bpe', '--vocab_size=300', '--out_dir', data)
    out = tmp_path / 'out'
    run('train.py', *TINY, '--dataset=mixed', f'--data_dir={data}', f'--out_dir={out}', '--max_iters=60', '--eval_interval=30',
        '--sample_prompt=')
    assert load_checkpoint(out / 'ckpt.pt')['tokenizer']['kind'] == 'bpe'
    (data / 'mixed' / 'tokenizer.tiktoken').unlink()  # sample.py needs only the checkpoint
    s = run('sample.py', f'--out_dir={out}', '--start=床前', '--num_samples=1', '--max_new_tokens=20', '--temperature=0')
    assert s.stdout.startswith('床前') and len(s.stdout.strip()) > 2


@pytest.mark.slow
def test_full_val_loss_counts_every_val_token_once(char_data, tmp_path):
    """eval_full_val: the logged val loss is the mean over windows of block_size that cover the val
    split once (the last one shorter), recomputed here independently from the saved model."""
    run('train.py', *TINY, f'--data_dir={char_data}', f'--out_dir={tmp_path}', '--max_iters=3', '--eval_interval=3',
        '--sample_prompt=', '--eval_full_val=True', '--block_size=24')
    logged = [r['val_loss'] for r in [json.loads(l) for l in open(tmp_path / "log.jsonl")] if 'val_loss' in r][-1]
    model = load_model(tmp_path)[0]
    val = torch.from_numpy(np.fromfile(char_data / 'tiny' / 'val.bin', dtype=np.uint16).astype(np.int64))
    n = len(val) - 1
    assert n % 24  # a shorter last window, so that it is checked too
    losses = torch.zeros(n)  # one loss per predicted token
    with torch.no_grad():
        for s in range(0, n, 24):
            e = min(s + 24, n)
            logits, _ = model(val[None, s:e])
            losses[s:e] = torch.nn.functional.cross_entropy(logits[0], val[s + 1:e + 1], reduction='none')
    assert logged == pytest.approx(losses.mean().item(), rel=1e-5)
    assert abs(losses[:n // 24 * 24].mean().item() - logged) > 1e-4  # without the last window it would differ
