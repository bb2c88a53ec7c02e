"""training.py: what a training run needs around its loop. The device and dtype rule (and a resumed
run keeping its dtype), the LR schedule, log.jsonl (and its trim on resume), loss.png, the trackers
(Weights & Biases / SwanLab), MFU's peak FLOP/s, split_accum and end_sample. Wrapping for DDP/FSDP: tests/test_distributed.py."""
import contextlib
import json
import sys
import types

import pytest
import torch

import training
from conftest import TINY, run

# ----------------------------------------------------------------------------- device and dtype


def test_auto_dtype_on_a_cpu_is_a_rule_of_its_instructions_and_the_width(monkeypatch):
    """Deterministic: the same machine and settings always give the same dtype (no timing probe)."""
    monkeypatch.setattr(training, 'cpu_bf16_flags', lambda: '')
    assert training.resolve_device('cpu', 'auto', 1024)[2] == 'float32' and 'no AVX512-BF16 or AMX' in training.dtype_note
    monkeypatch.setattr(training, 'cpu_bf16_flags', lambda: 'avx512_bf16 amx_bf16')
    w = training.CPU_BF16_WIDTH
    for width, dtype in [(w, 'bfloat16'), (4 * w, 'bfloat16'), (w - 1, 'float32'), (None, 'float32')]:
        assert [training.resolve_device('cpu', 'auto', width)[2] for _ in range(3)] == [dtype] * 3
        assert training.dtype_note.startswith(f'dtype auto: {dtype} (avx512_bf16, amx_bf16;')
    assert training.resolve_device('cpu', 'bfloat16', 128)[2] == 'bfloat16'  # an explicit choice is kept
    assert training.resolve_device('cpu', 'float32', 4 * w)[2] == 'float32'


def test_auto_dtype_follows_the_gpu_generation(monkeypatch):
    from training import resolve_device
    assert resolve_device('cpu', 'auto') == ('cpu', 'cpu', 'float32')
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda *a, **k: True)  # true even on a T4 (emulated)
    for capability, dtype in [((7, 5), 'float16'), ((7, 0), 'float16'), ((8, 0), 'bfloat16'), ((9, 0), 'bfloat16')]:
        monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda device=None, c=capability: c)
        assert resolve_device('cuda', 'auto') == ('cuda', 'cuda', dtype)
    assert resolve_device('cuda:1', 'float32') == ('cuda:1', 'cuda', 'float32')


def cpu_env(dtype):
    env = training.RunEnv()
    env.device = env.device_type = 'cpu'
    training.set_dtype(env, dtype)
    return env


@pytest.mark.parametrize('asked,saved,flags,kept,note', [
    ('auto', 'bfloat16', 'avx512_bf16', 'bfloat16', 'dtype: bfloat16, as the run was started (exact resume'),
    ('auto', 'bfloat16', '', 'float32', 'the run was started in bfloat16, which this cpu cannot run well; continuing in float32'),
    ('auto', 'float16', 'avx512_bf16', 'float32', 'the run was started in float16, which this cpu cannot run well'),
    ('float32', 'bfloat16', 'avx512_bf16', 'float32', 'the run was started in bfloat16; --dtype=float32 continues it in float32 (not bit-exact'),
    ('auto', 'float32', 'avx512_bf16', 'float32', None),  # nothing to say
    ('auto', None, 'avx512_bf16', 'float32', None),  # an older checkpoint without its dtype
])
def test_resume_keeps_the_runs_dtype_under_auto(monkeypatch, asked, saved, flags, kept, note):
    monkeypatch.setattr(training, 'cpu_bf16_flags', lambda: flags)
    env, said = cpu_env('float32'), []
    training.resume_dtype(env, asked, saved, said.append)
    assert env.dtype == kept and env.ptdtype == getattr(torch, kept)
    assert (said == []) if note is None else (len(said) == 1 and note in said[0]), said
    assert (type(env.autocast).__name__ == 'autocast') == (kept != 'float32')


@pytest.mark.slow
def test_a_resumed_run_keeps_its_dtype_and_says_so_when_overridden(char_data, tmp_path):
    """Started in bfloat16, resumed with dtype=auto (which picks float32 for this tiny width): the run
    goes on in bfloat16 where the CPU runs it natively, and says what it did either way; an explicit
    --dtype wins and is said to cost exactness."""
    out = tmp_path / 'out'
    args = [*TINY[:-1], f'--data_dir={char_data}', f'--out_dir={out}', '--eval_interval=3', '--sample_prompt=']
    run('train.py', *args, '--max_iters=3', '--dtype=bfloat16')
    assert torch.load(out / 'ckpt.pt', weights_only=True)['dtype'] == 'bfloat16'
    p = run('train.py', *args, '--max_iters=6', '--dtype=auto', '--init_from=resume')
    native = bool(training.cpu_bf16_flags())  # the rule: this machine's instructions
    if native:
        assert 'dtype: bfloat16, as the run was started' in p.stdout and '| cpu bfloat16 x1' in p.stdout
    else:
        assert 'which this cpu cannot run well; continuing in float32' in p.stdout
    assert torch.load(out / 'ckpt.pt', weights_only=True)['dtype'] == ('bfloat16' if native else 'float32')
    p = run('train.py', *args, '--max_iters=9', '--dtype=float32', '--init_from=resume')
    if native:
        assert 'note: the run was started in bfloat16; --dtype=float32 continues it in float32' in p.stdout
    assert '| cpu float32 x1' in p.stdout and torch.load(out / 'ckpt.pt', weights_only=True)['dtype'] == 'float32'

# ----------------------------------------------------------------------------- accumulation, the end sample


def test_split_accum_keeps_the_tokens_per_step_and_says_when_it_cannot():
    said = []
    two = types.SimpleNamespace(world=2, say=said.append)
    assert training.split_accum(4, two) == 2 and said == []
    assert training.split_accum(3, two) == 1 and said == ['note: gradient_accumulation_steps=3 over 2 processes -> 1 each (2 in all)']
    assert training.split_accum(1, types.SimpleNamespace(world=4, say=said.append)) == 1 and said[-1].endswith('(4 in all)')


def test_end_sample_is_seeded_and_leaves_out_the_prompt_and_the_stop_tokens():
    from conftest import tiny_model
    model, env = tiny_model(), types.SimpleNamespace(device='cpu', autocast=contextlib.nullcontext())
    a = training.end_sample(model, [1, 2, 3], 12, env, 5, set())
    assert len(a) == 12 and not model.training  # 12 new tokens, none of the prompt; in eval mode (no dropout)
    assert training.end_sample(model, [1, 2, 3], 12, env, 5, set()) == a  # the seed fixes it
    assert training.end_sample(model, [1, 2, 3], 12, env, 6, set()) != a
    stop = a[3]
    assert training.end_sample(model, [1, 2, 3], 12, env, 5, {stop}) == a[:a.index(stop)]  # ends there, stop token left out


# ----------------------------------------------------------------------------- the LR schedule


def test_cosine_lr_warmup_cosine_and_floor():
    lr = lambda it: training.cosine_lr(it, 1e-3, 1e-4, 10, 20)
    assert lr(0) == pytest.approx(1e-3 / 11) and lr(9) == pytest.approx(1e-3 * 10 / 11)
    assert lr(10) == pytest.approx(1e-3) and lr(15) == pytest.approx(1e-4 + 0.5 * 0.9e-3)
    assert lr(20) == lr(29) == pytest.approx(1e-4)
    # warmup equal to the decay horizon must not divide by zero (a nanoGPT bug)
    assert training.cosine_lr(12, 1e-3, 1e-4, 12, 12) == 1e-4 and training.cosine_lr(11, 1e-3, 1e-4, 12, 12) > 0


def test_cosine_lr_warmup_stable_decay():
    """cooldown_frac: held at the peak after the warmup, then linear to min_lr over the last 40%."""
    lr = lambda it: training.cosine_lr(it, 1e-3, 1e-4, 4, 20, cooldown_frac=0.4)
    assert lr(3) == pytest.approx(1e-3 * 4 / 5) and lr(4) == lr(12) == pytest.approx(1e-3)
    assert lr(16) == pytest.approx(1e-4 + 0.5 * 0.9e-3) and lr(19) == pytest.approx(1e-4 + 0.125 * 0.9e-3)
    assert lr(20) == pytest.approx(1e-4)


@pytest.mark.slow
def test_train_logs_the_schedule_it_steps_with(char_data, tmp_path):
    out = tmp_path / 'out'
    run('train.py', *TINY, f'--data_dir={char_data}', f'--out_dir={out}', '--max_iters=24', '--eval_interval=100',
        '--warmup_iters=4', '--learning_rate=1e-3', '--min_lr=1e-4', '--lr_decay_iters=20', '--sample_prompt=')
    lrs = {r['iter']: r['lr'] for r in map(json.loads, open(out / 'log.jsonl')) if 'lr' in r}
    assert lrs == pytest.approx({it: training.cosine_lr(it, 1e-3, 1e-4, 4, 20) for it in range(24)})
    run('train.py', *TINY, f'--data_dir={char_data}', f'--out_dir={tmp_path / "wsd"}', '--max_iters=20', '--eval_interval=100',
        '--warmup_iters=4', '--learning_rate=1e-3', '--min_lr=1e-4', '--cooldown_frac=0.4', '--sample_prompt=')
    lrs = {r['iter']: r['lr'] for r in map(json.loads, open(tmp_path / 'wsd' / 'log.jsonl')) if 'lr' in r}
    assert lrs == pytest.approx({it: training.cosine_lr(it, 1e-3, 1e-4, 4, 20, 0.4) for it in range(20)})
    assert lrs[4] == lrs[12] == pytest.approx(1e-3)

# ----------------------------------------------------------------------------- the log, the plot, trackers


def test_every_log_row_carries_its_step_time(tiny_run):
    rows = training.read_log(tiny_run / 'log.jsonl')
    steps = [r for r in rows if 'loss' in r]
    assert [r['iter'] for r in steps] == list(range(10)) and all(0 < r['dt'] < 600 for r in steps)
    assert [r['iter'] for r in rows if 'val_loss' in r] == [5, 10]  # TINY_RUN: evals every 5


def test_read_log_skips_lines_cut_short_or_edited(tmp_path):
    (tmp_path / 'log.jsonl').write_text('{"iter": 0, "loss": 4.0}\noops}\n[1, 2]\n{"loss": 1}\n{"iter": 1, "loss": 3.5}\n{"iter": 2, "lo')
    assert training.read_log(tmp_path / 'log.jsonl') == [{'iter': 0, 'loss': 4.0}, {'iter': 1, 'loss': 3.5}]
    assert training.read_log(tmp_path / 'none.jsonl') == []


def test_open_log_trims_to_the_checkpoint_on_resume(tmp_path):
    """Rows after the checkpoint's iteration go (they are redone), the eval it was taken at stays."""
    rows = [{'iter': i, 'loss': 5.0 - i} for i in range(6)] + [{'iter': 4, 'val_loss': 2.0}, {'iter': 6, 'val_loss': 1.0}]
    (tmp_path / 'log.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in sorted(rows, key=lambda r: r['iter'])) + 'cut sho')
    log = training.open_log(cpu_env('float32'), str(tmp_path), 4, 4, {})
    log(iter=4, loss=0.5)
    assert training.read_log(tmp_path / 'log.jsonl') == [*rows[:4], {'iter': 4, 'val_loss': 2.0}, {'iter': 4, 'loss': 0.5}]
    training.open_log(cpu_env('float32'), str(tmp_path), 0, 0, {})  # a new run: an empty log
    assert (tmp_path / 'log.jsonl').read_text() == ''


def test_plot_log_draws_loss_png_or_says_how(tiny_run, tmp_path, monkeypatch):
    (tmp_path / 'log.jsonl').write_bytes((tiny_run / 'log.jsonl').read_bytes())
    with monkeypatch.context() as m:  # (undone before matplotlib is imported for real: sys.modules stays whole)
        m.setitem(sys.modules, 'matplotlib', None)  # as if not installed
        assert training.plot_log(str(tmp_path)) == f'loss history: {tmp_path}/log.jsonl (pip install matplotlib for a plot)'
    assert not (tmp_path / 'loss.png').exists()
    pytest.importorskip('matplotlib')
    assert training.plot_log(str(tmp_path)).endswith(f'plot: {tmp_path}/loss.png')
    assert (tmp_path / 'loss.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_trackers_get_each_row_by_its_step(monkeypatch):
    """In this process with a stand-in package (end to end: test_log_rows_go_to_the_tracker_when_asked)."""
    calls = []
    fake = types.SimpleNamespace(init=lambda **kw: calls.append(('init', kw)), log=lambda row, step: calls.append(('log', row, step)))
    monkeypatch.setitem(sys.modules, 'swanlab', fake)
    send, = training.start_trackers({'swanlab_log': True, 'swanlab_project': 'p', 'wandb_log': False, 'lr': 1})
    send({'iter': 7, 'loss': 1.5})
    assert calls == [('init', {'project': 'p', 'experiment_name': None, 'config': {'swanlab_log': True, 'swanlab_project': 'p',
                                                                                    'wandb_log': False, 'lr': 1}}),
                     ('log', {'loss': 1.5}, 7)]
    assert training.start_trackers({'wandb_log': False}) == []


STUB = '''
import json, os
def init(**kw):
    if os.environ.get('STUB_FAIL'):
        raise RuntimeError('could not reach the server')
    open(os.environ['STUB_OUT'], 'a').write(json.dumps({'init': {k: v for k, v in kw.items() if k != 'config'},
                                                        'config_keys': sorted(kw['config'])}) + '\\n')
def log(row, step=None):
    open(os.environ['STUB_OUT'], 'a').write(json.dumps({'log': row, 'step': step}) + '\\n')
'''


def with_path(folder):
    """Only the stand-in's folder (not tests/without_extras of CI's first pass, which would refuse the stand-in's name)."""
    return {'PYTHONPATH': str(folder)}


@pytest.mark.slow
@pytest.mark.parametrize('package', ['wandb', 'swanlab'])
def test_log_rows_go_to_the_tracker_when_asked(char_data, tmp_path, package):
    """A stand-in module records what train.py sends: the same rows as log.jsonl, stepped by iter."""
    (tmp_path / 'stub' / package).mkdir(parents=True)
    (tmp_path / 'stub' / package / '__init__.py').write_text(STUB)
    rec = tmp_path / 'rec.jsonl'
    env = {**with_path(tmp_path / 'stub'), 'STUB_OUT': str(rec)}
    out = tmp_path / 'out'
    run('train.py', *TINY, f'--data_dir={char_data}', f'--out_dir={out}', '--max_iters=6', '--eval_interval=3',
        '--sample_prompt=', f'--{package}_log=True', f'--{package}_project=proj', f'--{package}_run_name=r1', env=env)
    calls = [json.loads(line) for line in rec.read_text().splitlines()]
    name_key = 'name' if package == 'wandb' else 'experiment_name'
    assert calls[0]['init'] == {'project': 'proj', name_key: 'r1'} and 'learning_rate' in calls[0]['config_keys']
    rows = [json.loads(line) for line in (out / 'log.jsonl').read_text().splitlines()]
    assert [c['step'] for c in calls[1:]] == [r['iter'] for r in rows]
    assert [c['log'] for c in calls[1:]] == [{k: v for k, v in r.items() if k != 'iter'} for r in rows]
    # a tracker that cannot start (offline, not logged in) stops the run before it trains, in one line
    p = run('train.py', *TINY, f'--data_dir={char_data}', f'--out_dir={tmp_path / "o2"}', '--max_iters=2',
            f'--{package}_log=True', env={**env, 'STUB_FAIL': '1'}, check=False)
    assert p.returncode == 1 and 'Traceback' not in p.stderr
    assert f'error: could not start {package} (RuntimeError: could not reach the server)' in p.stderr


@pytest.mark.slow
def test_a_missing_tracker_package_is_one_line(char_data, tmp_path):
    (tmp_path / 'stub' / 'wandb').mkdir(parents=True)  # a package that fails to import, as if not installed
    (tmp_path / 'stub' / 'wandb' / '__init__.py').write_text("raise ImportError('No module named wandb')\n")
    p = run('train.py', *TINY, f'--data_dir={char_data}', f'--out_dir={tmp_path / "o"}', '--max_iters=2', '--wandb_log',
            env=with_path(tmp_path / 'stub'), check=False)
    assert p.returncode == 1 and 'Traceback' not in p.stderr
    assert 'error: wandb_log=True needs the wandb package: pip install wandb' in p.stderr
    assert not (tmp_path / 'o' / 'ckpt.pt').exists()

# ----------------------------------------------------------------------------- MFU


def test_peak_flops_is_measured_on_a_cpu():
    """No timing assertion: a matmul's FLOP/s is positive and finite; the peak of a CPU is measured."""
    flops = training.measure_flops('cpu', rounds=2, seconds=0.01, n=64)
    assert 0 < flops < float('inf')
    assert 0 < training.peak_flops(cpu_env('float32')) < float('inf')
    assert training.GPU_PEAK_FLOPS['H100'] == 989e12


def test_mfu_is_the_models_flops_over_the_peak():
    from model import GPT, make_config
    model = GPT(make_config('gpt2', block_size=32, vocab_size=64, n_layer=2, n_head=2, n_embd=32))
    per_token = model.estimate_mfu(1, 1.0, 1.0)  # FLOPs of one token's forward and backward, over 1 FLOP/s
    assert per_token > 0 and model.estimate_mfu(1000, 2.0, 1e6) == pytest.approx(per_token * 1000 / 2.0 / 1e6)
