import pytest

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


def test_auto_dtype_follows_the_gpu_generation(monkeypatch):
    import torch
    from training import resolve_device
    assert resolve_device('cpu', 'auto') == ('cpu', 'cpu', 'float32')
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda *a, **k: True)  # true even on a T4 (emulated)
    for capability, dtype in [((7, 5), 'float16'), ((7, 0), 'float16'), ((8, 0), 'bfloat16'), ((9, 0), 'bfloat16')]:
        monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda device=None, c=capability: c)
        assert resolve_device('cuda', 'auto') == ('cuda', 'cuda', dtype)
    assert resolve_device('cuda:1', 'float32') == ('cuda:1', 'cuda', 'float32')


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
