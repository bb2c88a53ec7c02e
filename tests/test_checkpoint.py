"""checkpoint.py: one file written atomically (kill -9 or a full disk never costs the previous one),
kept ones and best.pt, loadable anywhere (a compiled or DDP model's names, an older nanolm's fields,
a bare file), a run never silently replaced (start_run), resume refusing another model or
tokenizer (check_resume). The exact resume itself, signals and kill -9: tests/test_resume.py."""
import os
import shutil

import pytest
import torch

from checkpoint import load_checkpoint, run_files, save_checkpoint, start_run, weights
from conftest import RESUME_RUN as RUN, TINY, assert_one_line_error, losses, run, train

def state(it, **kw):
    return {'model': {'w': torch.full((2, 2), float(it))}, 'model_config': {'n_layer': 1}, 'iter_num': it, **kw}


def test_save_keeps_the_last_n_and_best_as_links(tmp_path):
    for it in range(1, 5):
        save_checkpoint(state(it), tmp_path, keep_last_n=2, is_best=it == 2)
    assert run_files(tmp_path) == ['best.pt', 'ckpt.pt', 'ckpt_00000003.pt', 'ckpt_00000004.pt']
    assert load_checkpoint(tmp_path / 'ckpt.pt')['iter_num'] == 4 and load_checkpoint(tmp_path / 'best.pt')['iter_num'] == 2
    assert os.path.samefile(tmp_path / 'ckpt.pt', tmp_path / 'ckpt_00000004.pt')  # a hard link: no second copy on disk
    assert not list(tmp_path.glob('*.tmp'))
    (tmp_path / 'notes.txt').write_text('mine')  # a user's own file is not the run's
    assert 'notes.txt' not in run_files(tmp_path)


def test_load_strips_wrapper_names_and_refuses_what_is_not_a_checkpoint(tmp_path):
    torch.save({**state(3), 'model': {'module._orig_mod.w': torch.ones(1)}, 'ema': {'_orig_mod.w': torch.zeros(1)}}, tmp_path / 'a.pt')
    ck = load_checkpoint(tmp_path / 'a.pt')
    assert list(ck['model']) == ['w'] and list(ck['ema']) == ['w'] and weights(ck) is ck['ema']
    with pytest.raises(FileNotFoundError, match='not found; train one first'):
        load_checkpoint(tmp_path / 'none.pt')
    (tmp_path / 'b.pt').write_bytes((tmp_path / 'a.pt').read_bytes()[:100])
    with pytest.raises(ValueError, match='is not a readable checkpoint: truncated, corrupt or not a torch file'):
        load_checkpoint(tmp_path / 'b.pt')
    torch.save({'weights': 1}, tmp_path / 'c.pt')
    with pytest.raises(ValueError, match='is not a nanolm checkpoint'):
        load_checkpoint(tmp_path / 'c.pt')


def test_start_run_never_silently_replaces_a_run(tmp_path, capsys):
    assert start_run(tmp_path / 'new', 'scratch', False) == (None, [])
    save_checkpoint(state(5), tmp_path)
    (tmp_path / 'log.jsonl').write_text('')
    with pytest.raises(SystemExit):
        start_run(tmp_path, 'scratch', False)
    assert 'already holds a run (ckpt.pt, log.jsonl); resume it with --init_from=resume' in capsys.readouterr().err
    assert start_run(tmp_path, 'scratch', True) == (None, ['ckpt.pt', 'log.jsonl'])  # deleted only later, by clear_run
    assert start_run(tmp_path, 'resume', False)[0]['iter_num'] == 5
    with pytest.raises(SystemExit):
        start_run(tmp_path / 'new', 'resume', False)
    assert 'nothing to resume' in capsys.readouterr().err


@pytest.mark.slow
def test_out_dir_with_another_run_is_not_overwritten(char_data, tiny_run, tmp_path):
    out = tmp_path / 'out'
    shutil.copytree(tiny_run, out)
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
    shutil.copytree(tiny_run, only_best)
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


@pytest.mark.slow
def test_corrupt_checkpoint_on_resume_and_sample(char_data, tiny_run, tmp_path):
    out = tmp_path / 'out'
    shutil.copytree(tiny_run, out)
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


@pytest.mark.slow
def test_full_disk_during_a_checkpoint_keeps_the_old_one(char_data, tiny_run, tmp_path):
    """A write that fails (here: a file-size limit, which fails the write like a full disk)
    gives one line, removes the temp file and leaves the previous checkpoint as it was."""
    import resource
    import signal
    import subprocess
    import sys
    from conftest import ROOT
    out = tmp_path / 'out'
    shutil.copytree(tiny_run, out)
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


@pytest.mark.slow
def test_keep_last_n_and_best(char_data, tmp_path):
    out = tmp_path / 'out'
    train(char_data, out, '--keep_last_n=2')
    assert sorted(f for f in os.listdir(out) if f.endswith('.pt')) == ['best.pt', 'ckpt.pt', 'ckpt_00000040.pt', 'ckpt_00000060.pt']
    _, val = losses(out)
    assert load_checkpoint(out / 'best.pt')['iter_num'] == min(val, key=val.get)
    assert load_checkpoint(out / 'ckpt.pt')['iter_num'] == 60


@pytest.mark.slow
def test_checkpoints_load_anywhere(char_data, tmp_path):
    out = tmp_path / 'out'
    train(char_data, out, '--max_iters=10')
    ck = torch.load(out / 'ckpt.pt', weights_only=True)
    # as saved by a compiled model inside DDP, by an older nanolm with fewer config fields
    ck['model'] = {f'module._orig_mod.{k}': v for k, v in ck['model'].items()}
    for field in ('rope_theta', 'ffn_hidden', 'norm_eps'):
        del ck['model_config'][field]
    del ck['config']['keep_last_n']
    torch.save(ck, out / 'ckpt.pt')
    assert list(load_checkpoint(out / 'ckpt.pt')['model'])[0] == 'wte.weight'
    s = run('sample.py', f'--out_dir={out}', '--start=the', '--num_samples=1', '--max_new_tokens=5')
    assert s.stdout.startswith('the')
    train(char_data, out, '--init_from=resume', '--max_iters=20')
    assert load_checkpoint(out / 'ckpt.pt')['iter_num'] == 20
    # a bare checkpoint: weights, configs and the iteration only
    ck = torch.load(out / 'ckpt.pt', weights_only=True)
    torch.save({k: ck[k] for k in ('model', 'model_config', 'config', 'iter_num')}, out / 'ckpt.pt')
    p = train(char_data, out, '--init_from=resume', '--max_iters=25')
    assert 'has no optimizer, rng; those start fresh' in p.stdout
    assert load_checkpoint(out / 'ckpt.pt')['iter_num'] == 25


@pytest.mark.slow
def test_resume_refuses_a_different_model_or_tokenizer(char_data, tmp_path):
    out = tmp_path / 'out'
    train(char_data, out, '--max_iters=5')
    p = train(char_data, out, '--init_from=resume', '--n_layer=3', check=False)
    assert p.returncode == 1 and 'n_layer: checkpoint 2, now 3' in p.stderr and 'Traceback' not in p.stderr
    p = train(char_data, out, '--init_from=resume', '--arch=llama', check=False)
    assert p.returncode == 1 and "norm: checkpoint 'layernorm', now 'rmsnorm'" in p.stderr
    # the same name, another corpus: another char vocabulary
    other = tmp_path / 'data'
    (tmp_path / 'other.txt').write_text('completely different text, with other letters: XYZ QJK!\n' * 200)
    run('prepare.py', 'tiny', '--input', tmp_path / 'other.txt', '--tokenizer=char', '--out_dir', other)
    p = run('train.py', *RUN, f'--data_dir={other}', f'--out_dir={out}', '--init_from=resume', check=False)
    assert p.returncode == 1 and ('tokenizer' in p.stderr or 'vocab_size' in p.stderr)


@pytest.mark.slow
def test_world_size_change_is_allowed_and_said(char_data, tmp_path):
    out = tmp_path / 'out'
    train(char_data, out, '--max_iters=10')
    ck = torch.load(out / 'ckpt.pt', weights_only=True)
    ck['world_size'] = 2
    torch.save(ck, out / 'ckpt.pt')
    p = train(char_data, out, '--init_from=resume', '--max_iters=15', '--batch_size=8')
    assert 'world size 2 -> 1' in p.stdout and 'batch_size 16 -> 8' in p.stdout
