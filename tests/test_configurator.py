import pytest

from conftest import run

from configurator import ConfigError, apply_config

DEFAULTS = dict(max_iters=100, learning_rate=1e-3, device='auto', compile=False, norm=None, bias=None, betas=(0.9, 0.95))


def cfg(*args):
    return apply_config(dict(DEFAULTS), list(args))


def test_overrides_parse_as_literals():
    c = cfg('--max_iters=2000', '--learning_rate=3e-4', '--device=cpu', '--compile=True', '--norm=rmsnorm')
    assert c == dict(DEFAULTS, max_iters=2000, learning_rate=3e-4, device='cpu', compile=True, norm='rmsnorm')
    assert cfg('--learning_rate=1')['learning_rate'] == 1.0 and isinstance(cfg('--learning_rate=1')['learning_rate'], float)
    assert cfg('--compile')['compile'] is True and cfg('--compile=false')['compile'] is False
    assert cfg('--device=2024')['device'] == '2024'  # a str setting stays a str
    assert cfg('--betas=[0.8, 0.9]')['betas'] == (0.8, 0.9)
    # a None default ('take it from the preset') still reads true/false as booleans
    assert cfg('--bias=false')['bias'] is False and cfg('--bias=True')['bias'] is True


def test_config_file_then_overrides(tmp_path):
    f = tmp_path / 'c.py'
    f.write_text("import math\nmax_iters = 7\nlearning_rate = 2 * math.pi\n_private = 3\n")
    c = cfg(str(f), '--max_iters=9')
    assert c['max_iters'] == 9 and c['learning_rate'] == pytest.approx(6.283185307)


@pytest.mark.parametrize('args,msg', [
    (['--max_itres=5'], "unknown config key 'max_itres' (did you mean max_iters?)"),
    (['--max_iters=2.5'], 'expected int'),
    (['--max_iters=abc'], 'expected int'),
    (['--compile=maybe'], 'expected bool'),
    (['--max_iters'], 'needs a value'),
    (['nope.txt'], 'neither a config file'),
    (['missing.py'], "config file 'missing.py' not found"),
])
def test_errors_name_the_problem(args, msg):
    with pytest.raises(ConfigError) as e:
        cfg(*args)
    assert msg in str(e.value)


def test_bad_config_files(tmp_path):
    raising = tmp_path / 'raise.py'
    raising.write_text("max_iters = 1 / 0\n")
    with pytest.raises(ConfigError, match='ZeroDivisionError'):
        cfg(str(raising))
    unknown = tmp_path / 'unknown.py'
    unknown.write_text("learning_rat = 1e-3\n")
    with pytest.raises(ConfigError, match="unknown config key 'learning_rat'"):
        cfg(str(unknown))
    wrong = tmp_path / 'wrong.py'
    wrong.write_text("max_iters = 'many'\n")
    with pytest.raises(ConfigError, match='expected int'):
        cfg(str(wrong))


def test_an_override_wins_wherever_it_stands(tmp_path):
    """`python train.py --max_iters=10 config/x.py` used to drop the override silently."""
    f = tmp_path / 'c.py'
    f.write_text("max_iters = 2000\nlearning_rate = 5e-4\n")
    c = cfg('--max_iters=10', str(f))
    assert c['max_iters'] == 10 and c['learning_rate'] == 5e-4


def test_config_files_import_and_read_earlier_settings(tmp_path):
    """A config file may import functions and read the settings before it (as nanoGPT's do)."""
    f = tmp_path / 'c.py'
    f.write_text("from math import sqrt\nimport numpy as np\n"
                 "max_iters = np.int64(20)\nlearning_rate = sqrt(4) * learning_rate\ncompile = np.bool_(True)\n")
    c = cfg(str(f))
    assert c['max_iters'] == 20 and type(c['max_iters']) is int
    assert c['learning_rate'] == pytest.approx(2e-3) and c['compile'] is True
    g = tmp_path / 'g.py'
    g.write_text("max_iters = 300\n")
    h = tmp_path / 'h.py'
    h.write_text("learning_rate = max_iters * 1e-6\n")  # sees g.py's value: files apply in order
    assert cfg(str(g), str(h))['learning_rate'] == pytest.approx(3e-4)


def test_a_float_where_an_int_belongs_is_named_with_its_file(tmp_path):
    f = tmp_path / 'c.py'
    f.write_text("max_iters = 2.5\n")
    with pytest.raises(ConfigError, match=r"max_iters = 2.5 in .*c.py: expected int"):
        cfg(str(f))


@pytest.mark.slow
def test_help_lists_the_settings():
    p = run('train.py', '--help')
    assert 'python train.py config/train_verdict.py' in p.stdout and "out_dir = 'out'" in p.stdout
    assert 'n_kv_head = 0             # 0 = n_head' in p.stdout and 'configure(' not in p.stdout
    p = run('sample.py', '-h')
    assert 'top_p = 1.0' in p.stdout and 'Traceback' not in p.stderr


@pytest.mark.slow
def test_help_piped_into_head_ends_quietly():
    """`python train.py -h | head` used to end in 'Broken pipe' and exit 1."""
    import subprocess
    import sys
    from conftest import ROOT
    p = subprocess.run(f'{sys.executable} {ROOT / "train.py"} -h | head -3; exit ${{PIPESTATUS[0]}}', shell=True,
                       executable='/bin/bash', capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stderr == '' and len(p.stdout.splitlines()) == 3, (p.returncode, p.stderr)


RANGES = dict(batch_size=8, max_iters=100, learning_rate=1e-3, min_lr=1e-4, beta1=0.9, beta2=0.95, peak_flops=0.0,
              fsdp=False, out_dir='out')


@pytest.mark.parametrize('change, msg', [
    (dict(batch_size=0), 'batch_size=0: must be at least 1'),
    (dict(max_iters=-1, learning_rate=-1.0, min_lr=-2.0), 'max_iters=-1, learning_rate=-1.0, min_lr=-2.0: must not be negative'),
    (dict(min_lr=1e-2), 'min_lr=0.01 is above learning_rate=0.001'),
    (dict(beta2=1.0), "beta1=0.9, beta2=1.0: AdamW's betas must be in [0, 1)"),
    (dict(peak_flops=-1.0), 'peak_flops=-1.0 must be a device'),
    (dict(fsdp=True), 'fsdp=True shards the model over several processes: launch with torchrun'),
    (dict(out_dir=''), "out_dir='' must name a folder, e.g. --out_dir=out-x"),
])
def test_check_ranges_names_the_first_wrong_setting(change, msg, capsys, monkeypatch):
    """The checks every training script's check_settings shares: one line, exit 1."""
    from configurator import check_ranges
    monkeypatch.delenv('RANK', raising=False)
    check_ranges(dict(RANGES), ('batch_size',), ('max_iters', 'learning_rate', 'min_lr'), {'out_dir': 'out-x'})  # all good
    with pytest.raises(SystemExit) as e:
        check_ranges(dict(RANGES, **change), ('batch_size',), ('max_iters', 'learning_rate', 'min_lr'), {'out_dir': 'out-x'})
    assert e.value.code == 1 and msg in capsys.readouterr().err


def test_check_ranges_folder_that_is_a_file(tmp_path, capsys):
    from configurator import check_ranges
    f = tmp_path / 'f'
    f.write_text('x')
    with pytest.raises(SystemExit):
        check_ranges(dict(RANGES, out_dir=str(f)), folders={'out_dir': 'out-x'})
    assert f"out_dir='{f}' must name a folder" in capsys.readouterr().err
