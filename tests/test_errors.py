"""Bad input to train.py and sample.py: one line on stderr that names the problem, a non-zero
exit, no traceback, nothing overwritten. (prepare.py's bad inputs: tests/test_prepare.py.)"""
import shutil

import pytest

from conftest import TINY, run
from checkpoint import load_checkpoint


def assert_one_line_error(p, expected):
    assert p.returncode != 0, p.stdout[-2000:]
    assert 'Traceback' not in p.stderr, p.stderr
    errors = [line for line in p.stderr.splitlines() if line.startswith('error: ')]
    assert len(errors) == 1, p.stderr
    assert expected in errors[0], errors[0]


@pytest.fixture(scope='module')
def trained(char_data, tmp_path_factory):
    out = tmp_path_factory.mktemp('run') / 'out'
    run('train.py', *TINY, f'--data_dir={char_data}', f'--out_dir={out}', '--max_iters=10', '--eval_interval=5', '--sample_prompt=')
    return out


TRAIN_CASES = [
    (['--max_itres=5'], "unknown config key 'max_itres' (did you mean max_iters?)"),
    (['--batch_size=abc'], '--batch_size=abc: expected int'),
    (['--dropout=high'], 'expected float'),
    (['config/no_such_config.py'], "config file 'config/no_such_config.py' not found"),
    (['--dataset=no_such_data'], 'python prepare.py no_such_data --input='),
    (['--block_size=5000'], 'not enough for one block of block_size=5000'),
    (['--n_embd=30', '--n_head=4'], 'n_embd=30 must be divisible by n_head=4'),
    (['--n_head=4', '--n_kv_head=3'], 'divisible by n_kv_head=3'),
    (['--arch=gpt3'], "arch='gpt3' must be one of ['gpt2', 'llama']"),
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
    (['--sample_tokens=-5'], 'sample_tokens must not be negative'),
    (['--device=gpu'], "device='gpu' is not a device"),
    (['--device=cuda'], 'has no CUDA'),
    (['--dtype=float16'], 'float16 needs a CUDA GPU'),
    (['--dtype=fp8'], "dtype='fp8' must be"),
]


@pytest.mark.parametrize('args,expected', TRAIN_CASES, ids=[' '.join(a) for a, _ in TRAIN_CASES])
def test_train_bad_settings(char_data, tmp_path, args, expected):
    p = run('train.py', *TINY, f'--data_dir={char_data}', f'--out_dir={tmp_path / "out"}', '--max_iters=2', *args, check=False)
    assert_one_line_error(p, expected)


def test_config_file_that_raises(char_data, tmp_path):
    bad = tmp_path / 'bad.py'
    bad.write_text("batch_size = 4\nn_layer = undefined_name\n")
    p = run('train.py', bad, *TINY, f'--data_dir={char_data}', check=False)
    assert_one_line_error(p, "NameError: name 'undefined_name' is not defined")


def test_bin_that_does_not_match_its_meta(char_data, tmp_path):
    data = tmp_path / 'data'
    shutil.copytree(char_data / 'tiny', data / 'tiny')
    with open(data / 'tiny' / 'train.bin', 'r+b') as f:  # as an interrupted copy would leave it
        f.truncate(1000)
    p = run('train.py', *TINY, f'--data_dir={data}', f'--out_dir={tmp_path / "out"}', check=False)
    assert_one_line_error(p, 'train.bin has 1,000 bytes but meta.json says')
    with open(data / 'tiny' / 'train.bin', 'r+b') as f:  # an odd size (not whole tokens), and an empty file
        f.truncate(999)
    assert_one_line_error(run('train.py', *TINY, f'--data_dir={data}', f'--out_dir={tmp_path / "out"}', check=False), 'has 999 bytes')
    (data / 'tiny' / 'train.bin').write_bytes(b'')
    assert_one_line_error(run('train.py', *TINY, f'--data_dir={data}', f'--out_dir={tmp_path / "out"}', check=False), 'has 0 bytes')
    shutil.copy(char_data / 'tiny' / 'train.bin', data / 'tiny' / 'train.bin')
    (data / 'tiny' / 'val.bin').unlink()
    p = run('train.py', *TINY, f'--data_dir={data}', f'--out_dir={tmp_path / "out"}', check=False)
    assert_one_line_error(p, 'val.bin is missing; rerun: python prepare.py tiny')


def test_out_dir_with_another_run_is_not_overwritten(char_data, trained, tmp_path):
    out = tmp_path / 'out'
    shutil.copytree(trained, out)
    before = (out / 'ckpt.pt').read_bytes()
    p = run('train.py', *TINY, f'--data_dir={char_data}', f'--out_dir={out}', '--max_iters=3', check=False)
    # the run's files as listed: loss.png is among them when matplotlib is installed
    listed = ', '.join(sorted(f.name for f in out.iterdir()))
    assert listed.startswith('best.pt, ckpt.pt, log.jsonl')
    assert_one_line_error(p, f'already holds a run ({listed}); resume it with --init_from=resume')
    assert (out / 'ckpt.pt').read_bytes() == before
    # --overwrite=True with a setting that fails its checks: the old run must still be all there
    (out / 'my_model.pt').write_bytes(b'a file of the user, not of the run')  # --overwrite must leave it alone
    files = {f.name: f.read_bytes() for f in out.iterdir()}
    for bad in ('--beta2=1.5', '--ffn_hidden=-5', '--n_kv_head=3'):
        p = run('train.py', *TINY, f'--data_dir={char_data}', f'--out_dir={out}', '--overwrite=True', bad, check=False)
        assert p.returncode == 1 and {f.name: f.read_bytes() for f in out.iterdir()} == files, bad
    # a run is a run without its ckpt.pt too: best.pt alone is not overwritten
    only_best = tmp_path / 'only_best'
    shutil.copytree(trained, only_best)
    (only_best / 'ckpt.pt').unlink()
    best = (only_best / 'best.pt').read_bytes()
    p = run('train.py', *TINY, f'--data_dir={char_data}', f'--out_dir={only_best}', '--max_iters=3', check=False)
    assert_one_line_error(p, f"already holds a run ({', '.join(sorted(f.name for f in only_best.iterdir()))})")
    assert (only_best / 'best.pt').read_bytes() == best
    run('train.py', *TINY, f'--data_dir={char_data}', f'--out_dir={out}', '--max_iters=3', '--overwrite=True', '--sample_prompt=',
        '--keep_last_n=3', '--eval_interval=1')
    assert (out / 'ckpt.pt').read_bytes() != before
    # nothing of the old run outlives --overwrite: the kept checkpoints are the new run's, and so is best.pt
    assert sorted(f.name for f in out.glob('*.pt')) == ['best.pt', 'ckpt.pt', 'ckpt_00000001.pt', 'ckpt_00000002.pt', 'ckpt_00000003.pt',
                                                        'my_model.pt']
    assert load_checkpoint(out / 'best.pt')['iter_num'] <= 3


def test_corrupt_checkpoint_on_resume_and_sample(char_data, trained, tmp_path):
    out = tmp_path / 'out'
    shutil.copytree(trained, out)
    data = (out / 'ckpt.pt').read_bytes()
    (out / 'ckpt.pt').write_bytes(data[:len(data) // 2])  # e.g. copied off a full disk
    p = run('train.py', *TINY, f'--data_dir={char_data}', f'--out_dir={out}', '--init_from=resume', check=False)
    assert_one_line_error(p, 'is not a readable checkpoint')
    p = run('sample.py', f'--out_dir={out}', check=False)
    assert_one_line_error(p, 'is not a readable checkpoint')
    for junk in (b'', bytes(range(256)) * 10):  # empty (torch's message is empty too), and not a torch file at all
        (out / 'ckpt.pt').write_bytes(junk)
        p = run('sample.py', f'--out_dir={out}', check=False)
        assert_one_line_error(p, 'is not a readable checkpoint: truncated, corrupt or not a torch file')
        assert 'weights_only' not in p.stderr


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
def test_sample_bad_input(trained, args, expected):
    p = run('sample.py', f'--out_dir={trained}', *args, check=False)
    assert_one_line_error(p, expected)


def test_sample_prompt_file_that_is_not_text(trained, tmp_path):
    (tmp_path / 'prompt.bin').write_bytes(b'ab\xe8\xff\xfe')
    p = run('sample.py', f'--out_dir={trained}', f'--start=FILE:{tmp_path / "prompt.bin"}', check=False)
    assert_one_line_error(p, f'prompt file {tmp_path / "prompt.bin"} is not UTF-8 text')


def test_help_lists_the_settings():
    p = run('train.py', '--help')
    assert 'python train.py config/train_verdict.py' in p.stdout and "out_dir = 'out'" in p.stdout
    assert 'n_kv_head = 0             # 0 = n_head' in p.stdout and 'configure(' not in p.stdout
    p = run('sample.py', '-h')
    assert 'top_p = 1.0' in p.stdout and 'Traceback' not in p.stderr


def test_sample_from_a_checkpoint_without_tokenizer(trained, tmp_path):
    import torch
    ck = torch.load(trained / 'ckpt.pt', weights_only=True)
    del ck['tokenizer']
    torch.save(ck, tmp_path / 'ckpt.pt')
    p = run('sample.py', f'--out_dir={tmp_path}', check=False)
    assert_one_line_error(p, 'has no tokenizer in it')


def test_sample_without_a_run(tmp_path):
    p = run('sample.py', f'--out_dir={tmp_path / "nothing"}', check=False)
    assert_one_line_error(p, 'ckpt.pt not found; train one first')


def test_debug_shows_the_traceback(tmp_path):
    p = run('sample.py', f'--out_dir={tmp_path}', '--debug', check=False)
    assert p.returncode != 0 and 'Traceback' in p.stderr and 'FileNotFoundError' in p.stderr
    p = run('sample.py', f'--out_dir={tmp_path}', check=False, env={'NANOLM_DEBUG': '1'})
    assert 'Traceback' in p.stderr

    p = run('train.py', '--max_itres=5', check=False, env={'NANOLM_DEBUG': '1'})  # config errors too
    assert p.returncode == 1 and 'Traceback' in p.stderr and "unknown config key 'max_itres'" in p.stderr


def test_help_piped_into_head_ends_quietly():
    """`python train.py -h | head` used to end in 'Broken pipe' and exit 1."""
    import subprocess
    import sys
    from conftest import ROOT
    p = subprocess.run(f'{sys.executable} {ROOT / "train.py"} -h | head -3; exit ${{PIPESTATUS[0]}}', shell=True,
                       executable='/bin/bash', capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stderr == '' and len(p.stdout.splitlines()) == 3, (p.returncode, p.stderr)


def test_full_disk_during_a_checkpoint_keeps_the_old_one(char_data, trained, tmp_path):
    """A write that fails (here: a file-size limit, which fails the write like a full disk)
    gives one line, removes the temp file and leaves the previous checkpoint as it was."""
    import resource
    import signal
    import subprocess
    import sys
    from conftest import ROOT
    out = tmp_path / 'out'
    shutil.copytree(trained, out)
    before = {f.name: f.read_bytes() for f in out.iterdir() if f.suffix == '.pt'}
    limit = (out / 'ckpt.pt').stat().st_size // 2

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-large write then fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    p = subprocess.run([sys.executable, str(ROOT / 'train.py'), *TINY, f'--data_dir={char_data}', f'--out_dir={out}',
                        '--init_from=resume', '--max_iters=12', '--sample_prompt='],
                       capture_output=True, text=True, timeout=300, preexec_fn=small_files)
    assert_one_line_error(p, f'could not write {out}/ckpt.pt:')
    assert 'previous version, if any, is intact' in p.stderr
    assert not list(out.glob('*.tmp')), list(out.iterdir())
    assert {f.name: f.read_bytes() for f in out.iterdir() if f.suffix == '.pt'} == before


def test_parameter_count_shows_the_untied_embedding(char_data, tmp_path):
    p = run('train.py', *TINY, '--arch=llama', f'--data_dir={char_data}', f'--out_dir={tmp_path}', '--max_iters=1', '--sample_prompt=')
    import torch
    n = sum(v.numel() for v in torch.load(tmp_path / 'ckpt.pt', weights_only=True)['model'].values())
    assert f'{n / 1e6:.2f}M parameters (' in p.stdout and 'without the embedding tables' in p.stdout
