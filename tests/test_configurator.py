import pytest

from configurator import ConfigError, apply_config

DEFAULTS = dict(max_iters=100, learning_rate=1e-3, device='auto', compile=False, norm=None, betas=(0.9, 0.95))


def cfg(*args):
    return apply_config(dict(DEFAULTS), list(args))


def test_overrides_parse_as_literals():
    c = cfg('--max_iters=2000', '--learning_rate=3e-4', '--device=cpu', '--compile=True', '--norm=rmsnorm')
    assert c == dict(DEFAULTS, max_iters=2000, learning_rate=3e-4, device='cpu', compile=True, norm='rmsnorm')
    assert cfg('--learning_rate=1')['learning_rate'] == 1.0 and isinstance(cfg('--learning_rate=1')['learning_rate'], float)
    assert cfg('--compile')['compile'] is True and cfg('--compile=false')['compile'] is False
    assert cfg('--device=2024')['device'] == '2024'  # a str setting stays a str
    assert cfg('--betas=[0.8, 0.9]')['betas'] == (0.8, 0.9)


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
