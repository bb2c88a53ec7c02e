"""The README's recipes run as written: each config in config/ trains a few steps on its real
dataset (from ../shared/data, placed where prepare.py looks before downloading) and samples."""
import shutil

import pytest

from conftest import run, shared_file

pytestmark = pytest.mark.slow  # every test here starts scripts

RAW = {'train_verdict.py': ('verdict', 'the-verdict.txt', 'the-verdict.txt'),
       'train_shakespeare_char.py': ('shakespeare_char', 'tinyshakespeare.txt', 'input.txt')}


@pytest.mark.parametrize('arch', ['gpt2', 'llama'])
@pytest.mark.parametrize('config', sorted(RAW))
def test_config_runs(tmp_path, config, arch):
    dataset, shared_name, local_name = RAW[config]
    raw = shared_file(shared_name)
    if dataset == 'verdict':
        shared_file('tiktoken_cache')  # GPT-2's BPE, offline
    data = tmp_path / 'data'
    (data / dataset).mkdir(parents=True)
    shutil.copy(raw, data / dataset / local_name)  # present, so nothing is downloaded
    out = tmp_path / 'out'
    p = run('train.py', f'config/{config}', f'--arch={arch}', f'--data_dir={data}', f'--out_dir={out}', '--max_iters=6',
            '--eval_interval=3', '--eval_iters=2', '--log_interval=1', '--sample_tokens=10', '--peak_flops=1e12')
    assert f'is not prepared yet; running: python prepare.py {dataset}' in p.stdout
    assert f'model: {arch}' in p.stdout and 'sample:' in p.stdout
    s = run('sample.py', f'--out_dir={out}', '--num_samples=1', '--max_new_tokens=10', '--start=The')
    assert s.stdout.startswith('The')
