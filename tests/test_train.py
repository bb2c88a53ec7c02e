"""End-to-end runs of train.py and sample.py on a tiny char dataset (seconds each)."""
import json

import pytest
import torch

from conftest import TINY, run
from checkpoint import load_checkpoint


def losses(out_dir):
    rows = [json.loads(line) for line in open(out_dir / 'log.jsonl')]
    return {r['iter']: r['loss'] for r in rows if 'loss' in r}, {r['iter']: r['val_loss'] for r in rows if 'val_loss' in r}


def train(data, out, *args, check=True):
    return run('train.py', *TINY, f'--data_dir={data}', f'--out_dir={out}', *args, check=check)


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


def test_llama_family_trains_with_one_override(char_data, tmp_path):
    out = tmp_path / 'out'
    train(char_data, out, '--arch=llama', '--n_kv_head=1', '--max_iters=40', '--eval_interval=20')
    ck = load_checkpoint(out / 'ckpt.pt')
    assert ck['model_config']['pos_emb'] == 'rope' and ck['model_config']['mlp'] == 'swiglu' and ck['model_config']['n_kv_head'] == 1
    train_loss, _ = losses(out)
    assert train_loss[39] < train_loss[0]
    run('sample.py', f'--out_dir={out}', '--start=the', '--num_samples=1', '--max_new_tokens=10', '--temperature=0')


def test_lr_schedule_warmup_and_cosine(char_data, tmp_path):
    out = tmp_path / 'out'
    train(char_data, out, '--max_iters=30', '--eval_interval=100', '--warmup_iters=10', '--learning_rate=1e-3',
          '--min_lr=1e-4', '--lr_decay_iters=20', '--sample_prompt=')
    lrs = {r['iter']: r['lr'] for r in map(json.loads, open(out / 'log.jsonl')) if 'lr' in r}
    assert lrs[0] == pytest.approx(1e-3 / 11) and lrs[9] == pytest.approx(1e-3 * 10 / 11)
    assert lrs[10] == pytest.approx(1e-3) and lrs[15] == pytest.approx(1e-4 + 0.5 * 0.9e-3)
    assert lrs[20] == lrs[29] == pytest.approx(1e-4)
    # warmup-stable-decay: held at the peak after the warmup, then linear to min_lr over the last 40%
    train(char_data, tmp_path / 'wsd', '--max_iters=20', '--eval_interval=100', '--warmup_iters=4', '--learning_rate=1e-3',
          '--min_lr=1e-4', '--cooldown_frac=0.4', '--sample_prompt=')
    lrs = {r['iter']: r['lr'] for r in map(json.loads, open(tmp_path / 'wsd' / 'log.jsonl')) if 'lr' in r}
    assert lrs[3] == pytest.approx(1e-3 * 4 / 5) and lrs[4] == lrs[12] == pytest.approx(1e-3)
    assert lrs[16] == pytest.approx(1e-4 + 0.5 * 0.9e-3) and lrs[19] == pytest.approx(1e-4 + 0.125 * 0.9e-3)
    # warmup equal to the decay horizon must not divide by zero (a nanoGPT bug)
    train(char_data, tmp_path / 'o2', '--max_iters=12', '--warmup_iters=12', '--eval_interval=100', '--sample_prompt=')


def test_gradient_accumulation_counts_tokens(char_data, tmp_path):
    p = train(char_data, tmp_path / 'out', '--max_iters=3', '--gradient_accumulation_steps=3', '--eval_interval=100', '--sample_prompt=')
    assert f"{3 * 4 * 32:,} tokens/iter" in p.stdout


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
