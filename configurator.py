"""
Command-line configuration for nanolm's scripts, nanoGPT style, without argparse:

    python train.py config/train_verdict.py --max_iters=2000 --arch=llama

A script's config is its module-level globals. Arguments are applied left to right:
a path ending in .py is a config file (plain Python that assigns some of those globals);
--key=value sets one global, the value read as a Python literal (2000, 3e-4, True, 'x')
and anything that is not a literal taken as a string (--device=cpu). A bare --flag sets a
boolean to True. An unknown key or a value of the wrong type stops the script with one
line that names it.

Also here, because every script needs them: die() for one-line errors, and an exception
hook that prints uncaught errors as one line (set NANOLM_DEBUG=1 or pass --debug for the
full traceback).
"""
import ast
import difflib
import os
import sys

DEBUG = os.environ.get('NANOLM_DEBUG', '') not in ('', '0') or '--debug' in sys.argv


class ConfigError(Exception):
    """Bad user input: printed as one line, without a traceback."""


exit_fn = sys.exit  # how die() exits; train.py swaps in its own under DDP (see leave() there)


def die(msg, code=1):
    print(f"error: {msg}", file=sys.stderr, flush=True)
    exit_fn(code)


def _excepthook(etype, err, tb):
    if DEBUG:
        return sys.__excepthook__(etype, err, tb)
    if issubclass(etype, KeyboardInterrupt):
        print("\ninterrupted", file=sys.stderr)
        return
    if issubclass(etype, (ConfigError, ValueError, OSError)):
        print(f"error: {err}", file=sys.stderr)
    else:  # a bug, or something we did not foresee: still one line, with the way to see more
        print(f"error: {etype.__name__}: {err} (rerun with NANOLM_DEBUG=1 for the traceback)", file=sys.stderr)


# Installed on import, which the scripts do before importing torch: even a Ctrl-C during that
# slow import is one line.
sys.excepthook = _excepthook


def resolve_device(device, dtype):
    """'auto' -> the best this machine has: cuda > mps > cpu; bfloat16 on GPUs that run it
    natively (Ampere and newer), float16 on older ones (T4, V100: needs a GradScaler when
    training), float32 on CPU and MPS. Explicit choices are checked, not trusted."""
    import torch
    if device == 'auto':
        device = 'cuda' if torch.cuda.is_available() else 'mps' if torch.backends.mps.is_available() else 'cpu'
    try:
        kind = torch.device(device).type
    except RuntimeError:
        die(f"device={device!r} is not a device; use 'auto', 'cpu', 'cuda', 'cuda:1' or 'mps'")
    if kind == 'cuda' and not torch.cuda.is_available():
        die(f"device={device} but this machine (or this torch build) has no CUDA; use --device=cpu")
    if kind == 'mps' and not torch.backends.mps.is_available():
        die(f"device={device} but MPS is not available here; use --device=cpu")
    if dtype == 'auto':
        # Compute capability 8.0+ (Ampere) runs bf16 natively; is_bf16_supported() would also say
        # yes on a T4 (emulated, slow), so ask the chosen device for its capability instead.
        native_bf16 = kind == 'cuda' and torch.cuda.get_device_capability(torch.device(device))[0] >= 8
        dtype = 'float32' if kind != 'cuda' else 'bfloat16' if native_bf16 else 'float16'
    if dtype not in ('float32', 'bfloat16', 'float16'):
        die(f"dtype={dtype!r} must be 'auto', 'float32', 'bfloat16' or 'float16'")
    return device, kind, dtype


def _parse_value(key, raw, default, where=None):
    """Turn the text after --key= into a value of the default's type, or raise ConfigError."""
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw  # not a Python literal: a plain string such as cpu or config/x.py
    if (default is None or isinstance(default, bool)) and isinstance(value, str) and value.lower() in ('true', 'false'):
        value = value.lower() == 'true'
    if default is None or type(value) is type(default):
        return value
    if isinstance(default, float) and type(value) is int:
        return float(value)
    if isinstance(default, str) and not isinstance(value, str):
        return raw  # --out_dir=2024 means the string '2024'
    if isinstance(default, tuple) and isinstance(value, list):
        return tuple(value)
    raise ConfigError(f"{where or f'--{key}={raw}'}: expected {type(default).__name__} (like {default!r}), got {type(value).__name__}")


def _unknown(key, known):
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return ConfigError(f"unknown config key '{key}'{hint}; the keys are listed at the top of the script")


def apply_config(config, args):
    """Update the dict `config` (name -> default value) in place from command-line args."""
    for arg in args:
        if arg == '--debug':
            continue
        if not arg.startswith('--'):
            if not arg.endswith('.py'):
                raise ConfigError(f"argument '{arg}' is neither a config file (.py) nor --key=value")
            if not os.path.isfile(arg):
                raise ConfigError(f"config file '{arg}' not found (configs live in config/, e.g. config/train_verdict.py)")
            scope = {}
            try:
                with open(arg, encoding='utf-8') as f:
                    exec(compile(f.read(), arg, 'exec'), scope)
            except Exception as e:
                raise ConfigError(f"config file '{arg}' failed: {type(e).__name__}: {e}") from e
            for key, value in scope.items():
                if key.startswith('_') or type(value).__name__ in ('module', 'function', 'type'):
                    continue  # imports and helpers inside a config file are not settings
                if key not in config:
                    raise _unknown(key, config)
                config[key] = _parse_value(key, repr(value), config[key], where=f"{key} = {value!r} in {arg}")
            continue
        key, eq, raw = arg[2:].partition('=')
        if key not in config:
            raise _unknown(key, config)
        if not eq:
            if not isinstance(config[key], bool):
                raise ConfigError(f"--{key} needs a value: --{key}=...")
            raw = 'True'
        config[key] = _parse_value(key, raw, config[key])
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


def _help(scope, keys):
    """--help: the script's docstring, then its settings as the script writes them, with their comments."""
    print((scope.get('__doc__') or '').strip())
    print("\nSettings and their defaults (change them with --key=value or in a config/*.py file):\n")
    try:
        with open(scope['__file__'], encoding='utf-8') as f:
            lines = f.read().split('configure(globals())')[0].splitlines()
    except (KeyError, OSError):
        lines = []
    shown = [line for line in lines if line.split('=')[0].strip() in keys or line.startswith('# ') and '----' not in line]
    print('\n'.join(shown) if shown else '\n'.join(f"{k} = {scope[k]!r}" for k in keys))
    sys.exit(0)
