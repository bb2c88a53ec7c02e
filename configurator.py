"""
Command-line configuration for nanolm's scripts, nanoGPT style, without argparse:

    python train.py config/train_verdict.py --max_iters=2000 --arch=llama

A script's config is its module-level globals. A path ending in .py is a config file: plain
Python that assigns some of those globals, and that may read the ones set before it
(`lr_decay_iters = max_iters`) and import what it needs. --key=value sets one global, the
value read as a Python literal (2000, 3e-4, True, 'x') and anything that is not a literal
taken as a string (--device=cpu); a bare --flag sets a boolean to True. Config files are
applied first, in order, then every --key=value, wherever it stands on the line: an override
always wins. An unknown key or a value of the wrong type stops the script with one line.
"""
import ast
import difflib
import numbers
import os
import sys
import types

from cli import die  # first: it makes errors (even a Ctrl-C during the slow torch import) one line


class ConfigError(ValueError):
    """Bad configuration: printed as one line, without a traceback."""


def _convert(value, default, where):
    """value (already a Python object) -> the default's type, or ConfigError naming `where`."""
    if (default is None or isinstance(default, bool)) and isinstance(value, str) and value.lower() in ('true', 'false'):
        return value.lower() == 'true'
    if default is None:
        return value
    if isinstance(default, bool):
        if type(value).__name__ in ('bool', 'bool_'):  # also numpy's bool
            return bool(value)
    elif isinstance(default, numbers.Integral):
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)  # also numpy's integers
    elif isinstance(default, float):
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return float(value)
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
    elif isinstance(default, tuple) and isinstance(value, (list, tuple)):
        return tuple(value)
    raise ConfigError(f"{where}: expected {type(default).__name__} (like {default!r}), got {type(value).__name__}")


def _parse_flag(key, raw, default):
    """The text after --key= -> a value of the default's type."""
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw  # not a Python literal: a plain string such as cpu or config/x.py
    if isinstance(default, str) and not isinstance(value, str):
        return raw  # --out_dir=2024 means the string '2024'
    return _convert(value, default, f"--{key}={raw}")


def _unknown(key, known):
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return ConfigError(f"unknown config key '{key}'{hint}; the keys are listed at the top of the script (--help)")


def _apply_file(config, path):
    if os.path.isdir(path):
        raise ConfigError(f"config file '{path}' is a folder; name a .py file in it, e.g. config/train_verdict.py")
    if not os.path.isfile(path):
        raise ConfigError(f"config file '{path}' not found (configs live in config/, e.g. config/train_verdict.py)")
    scope = dict(config)  # a config file may read the settings so far: lr_decay_iters = max_iters
    try:
        with open(path, encoding='utf-8') as f:
            exec(compile(f.read(), path, 'exec'), scope)
    except Exception as e:
        raise ConfigError(f"config file '{path}' failed: {type(e).__name__}: {e}") from e
    for key, value in scope.items():
        if key.startswith('_') or callable(value) or isinstance(value, types.ModuleType):
            continue  # imports and helpers inside a config file are not settings
        if key not in config:
            raise _unknown(key, config)
        if value is not config[key]:
            config[key] = _convert(value, config[key], f"{key} = {value!r} in {path}")


def apply_config(config, args):
    """Update the dict `config` (name -> default value) in place from command-line args:
    config files first (in order), then every --key=value."""
    flags = []
    for arg in args:
        if arg == '--debug':
            continue
        if arg.startswith('--'):
            flags.append(arg)
        elif arg.endswith('.py'):
            _apply_file(config, arg)
        else:
            raise ConfigError(f"argument '{arg}' is neither a config file (.py) nor --key=value")
    for arg in flags:
        key, eq, raw = arg[2:].partition('=')
        if key not in config:
            raise _unknown(key, config)
        if not eq:
            if not isinstance(config[key], bool) and config[key] is not None:
                raise ConfigError(f"--{key} needs a value: --{key}=...")
            raw = 'True'
        config[key] = _parse_flag(key, raw, config[key])
    return config


def configure(scope, args=None):
    """Apply sys.argv to a script's globals. Settings are the globals of plain types defined
    before this call; returns {name: value} of them, for printing and for checkpoints."""
    keys = [k for k, v in scope.items() if not k.startswith('_') and isinstance(v, (bool, int, float, str, tuple, type(None)))]
    config = {k: scope[k] for k in keys}
    args = sys.argv[1:] if args is None else args
    if '--help' in args or '-h' in args:
        _help(scope, keys)
    try:
        apply_config(config, args)
    except ConfigError as e:
        die(str(e))
    scope.update(config)
    return config


def check_ranges(config, at_least_1=(), not_negative=(), folders=None):
    """The checks every training script's check_settings() shares, each script naming its own keys:
    counts of at least 1, sizes and rates not negative, min_lr no higher than learning_rate,
    AdamW's betas in [0, 1), peak_flops not negative, fsdp only under torchrun, and folders
    ({key: an example}) that name a folder. The first wrong one stops the script with one line."""
    for keys, wrong, why in ((at_least_1, lambda v: v < 1, 'must be at least 1'), (not_negative, lambda v: v < 0, 'must not be negative')):
        bad = [f'{k}={config[k]}' for k in keys if wrong(config[k])]
        if bad:
            die(f"{', '.join(bad)}: {why}")
    for key, example in (folders or {}).items():
        if not config[key] or os.path.isfile(config[key]):
            die(f"{key}={config[key]!r} must name a folder, e.g. --{key}={example}")
    if config.get('min_lr', 0) > config.get('learning_rate', 0):
        die(f"min_lr={config['min_lr']} is above learning_rate={config['learning_rate']}; the cosine decays from learning_rate down to min_lr")
    if not all(0 <= config.get(b, 0) < 1 for b in ('beta1', 'beta2')):
        die(f"beta1={config['beta1']}, beta2={config['beta2']}: AdamW's betas must be in [0, 1) (0.9 and 0.95 are usual)")
    if config.get('peak_flops', 0) < 0:
        die(f"peak_flops={config['peak_flops']} must be a device's FLOP/s (e.g. 989e12 for an H100), or 0 to measure or look it up")
    if config.get('fsdp') and 'RANK' not in os.environ:
        script = os.path.basename(sys.argv[0])
        die(f"fsdp=True shards the model over several processes: launch with torchrun --nproc_per_node=N {script} ...")


def _help(scope, keys):
    """--help: the script's docstring, then its settings as the script writes them, with their comments."""
    try:
        with open(scope['__file__'], encoding='utf-8') as f:
            lines = f.read().split('configure(globals())')[0].splitlines()
    except (KeyError, OSError):
        lines = []
    shown = [line for line in lines if line.split('=')[0].strip() in keys or line.startswith('# ') and '----' not in line]
    try:
        print((scope.get('__doc__') or '').strip())
        print("\nSettings and their defaults (change them with --key=value or in a config/*.py file):\n")
        print('\n'.join(shown) if shown else '\n'.join(f"{k} = {scope[k]!r}" for k in keys), flush=True)
    except BrokenPipeError:  # `python train.py -h | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(0)
