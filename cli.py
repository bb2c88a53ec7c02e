"""
What every nanolm command needs, whatever it does (no torch here: scripts import this first, so
even a Ctrl-C during the slow torch import is one line):

  errors     die() prints one line and exits 1; uncaught errors print one line too
             (NANOLM_DEBUG=1 or --debug: the full traceback, config errors included)
  progress   a status line on stderr for long work, rewritten in place on a terminal
  signals    one rule for all scripts: Ctrl-C / SIGTERM exit with 128 + the signal
             (130 / 143). Training scripts finish the step and save first.
  files      atomic_write(): a temp file beside the target, renamed into place only when
             complete; a full disk is named and the temp file removed
  bad lines  one policy for malformed JSONL records: stop naming file:line, or skip and count

What a training run needs around its loop (device, dtype, DDP, the LR schedule, the log) is in
training.py.
"""
import contextlib
import errno
import json
import os
import shutil
import signal
import sys
import time
import traceback

DEBUG = os.environ.get('NANOLM_DEBUG', '') not in ('', '0') or '--debug' in sys.argv

# ----------------------------------------------------------------------------- one-line errors

exit_fn = sys.exit  # how die() leaves; under DDP training.init_run() swaps in training.leave(), which avoids a shutdown race


def die(msg, code=1):
    """Bad input or a state we refuse: one line on stderr, exit non-zero, nothing written."""
    if DEBUG:  # the traceback of the error being handled, or else of the call to die()
        traceback.print_exc() if sys.exc_info()[0] else traceback.print_stack()
    end_progress()  # the error gets a line of its own
    print(f"error: {msg}", file=sys.stderr, flush=True)
    exit_fn(code)


def _excepthook(etype, err, tb):
    if DEBUG:
        return sys.__excepthook__(etype, err, tb)
    end_progress()
    if issubclass(etype, KeyboardInterrupt):  # Ctrl-C before our handler was installed (Python exits 130)
        print("\ninterrupted", file=sys.stderr)
    elif issubclass(etype, (ValueError, OSError)):  # our own one-line messages travel as these
        print(f"error: {err}", file=sys.stderr)
    else:  # a bug, or something we did not foresee: still one line, with the way to see more
        print(f"error: {etype.__name__}: {err} (rerun with NANOLM_DEBUG=1 for the traceback)", file=sys.stderr)


sys.excepthook = _excepthook

# ----------------------------------------------------------------------------- progress lines

_progress = {'last': time.time(), 'showing': False}  # from now: quick work shows no status line at all


def progress(text, every=0.5):
    """A status line on stderr at most every `every` s: rewritten in place on a terminal,
    one line each time otherwise (a log file must not get lines run together by \\r).
    text may be a function returning it: hot loops then format only the lines shown."""
    now = time.time()
    if now - _progress['last'] < every:
        return
    _progress['last'] = now
    text = text() if callable(text) else text
    if sys.stderr.isatty():
        print('\r' + text[:100].ljust(100), end='', file=sys.stderr, flush=True)
        _progress['showing'] = True
    else:
        print(text, file=sys.stderr, flush=True)


def end_progress():
    """Clear the status line (on a terminal); the next stage's first line waits `every` s again."""
    _progress['last'] = time.time()
    if _progress['showing']:
        print('\r' + ' ' * 100 + '\r', end='', file=sys.stderr, flush=True)
        _progress['showing'] = False

# ----------------------------------------------------------------------------- signals
# The rule: SIGINT (Ctrl-C) and SIGTERM (Kaggle, Slurm, docker stop) end a script with exit code
# 128 + the signal number. Until a script says otherwise they end it at once (finally blocks
# still run, so temp files are cleaned up); training scripts call catch_stop_signals() to finish
# the current step and save first.

stop_signal = 0  # set by the graceful handler: the signal that asked us to stop
interrupt_note = ''  # what a stop now means, set by a script as it goes (prepare.py: 'while encoding: no dataset was written')


def _interrupt(signum, frame):
    end_progress()
    note = f" {interrupt_note}" if interrupt_note else ''
    print(f"\ninterrupted ({signal.Signals(signum).name}){note}", file=sys.stderr, flush=True)
    raise SystemExit(128 + signum)  # SystemExit: not caught by `except Exception`, but finally blocks run


def interrupt_on_signals():
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)


interrupt_on_signals()  # from import on


def catch_stop_signals(say=print):
    """Training: a signal sets stop_signal; the loop saves and exits 128 + stop_signal. A second
    Ctrl-C more than 2 s later quits at once (the last checkpoint on disk is complete); one
    within 2 s is an echo of the same stop (torchrun forwards a Ctrl-C as SIGINT, then SIGTERM)."""
    first = [0.0]

    def handler(signum, frame):
        global stop_signal
        if not stop_signal:
            stop_signal, first[0] = signum, time.time()
            say(f"\n{signal.Signals(signum).name}: finishing this step, then saving a checkpoint (Ctrl-C again to quit at once)")
        elif time.time() - first[0] > 2:
            _interrupt(signum, frame)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)

# ----------------------------------------------------------------------------- files


@contextlib.contextmanager
def atomic_write(path, mode='w'):
    """Open a temp file beside `path` for writing; when the block ends without error it is
    fsynced and renamed over `path` (a rename is atomic), so readers see the old file or the
    new one, never half of one. On any error the temp file is removed and `path` left as it was;
    a failed write (a full disk, a size limit) becomes one OSError line that names the file."""
    tmp = f"{path}.tmp"
    if os.path.exists(tmp):
        os.remove(tmp)  # left by a crash; it may be a hard link of a kept file, so never write into it
    try:
        with open(tmp, mode, **({} if 'b' in mode else {'encoding': 'utf-8'})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        why = write_error(tmp, e)
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if why:
            raise OSError(f"could not write {path}: {why}; the previous version, if any, is intact") from None
        raise


def write_error(path, e):
    """Why writing `path` failed, in words, or None when `e` is not a failed write. torch.save
    reports a full disk as a RuntimeError from its zip writer ('file write failed', or
    '[enforce fail at inline_container.cc] unexpected pos' after a short write)."""
    torch_io = isinstance(e, RuntimeError) and ('write' in str(e) or 'inline_container' in str(e))
    if not (isinstance(e, OSError) or torch_io):
        return None
    try:
        free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
    except OSError:
        free = None
    if getattr(e, 'errno', None) == errno.ENOSPC or (free is not None and free < 16 << 20):
        return f"the disk is full ({(free or 0) / 2**20:.1f} MB free); free some space and run again"
    if getattr(e, 'errno', None) == errno.EFBIG or torch_io:
        return f"the write failed ({getattr(e, 'strerror', None) or 'file too large or disk full'})"
    return e.strerror or str(e)


def fsync_dir(path):
    """Make renames inside a folder durable (a no-op where folders cannot be opened)."""
    if hasattr(os, 'O_DIRECTORY'):
        fd = os.open(path, os.O_DIRECTORY)
        os.fsync(fd)
        os.close(fd)

# ----------------------------------------------------------------------------- bad input lines


def bad_line(where, problem, skip_bad_lines, counts):
    """The one policy for a record we cannot use: stop with 'file:line: problem', or, with
    --skip_bad_lines, count it (counts['bad_lines']) and go on."""
    if not skip_bad_lines:
        die(f"{where}: {problem}; fix or remove that line, or pass --skip_bad_lines to skip such lines")
    counts['bad_lines'] = counts.get('bad_lines', 0) + 1


def parse_json_object(raw):
    """One JSONL line -> dict, or ValueError naming what is wrong with it."""
    try:
        obj = json.loads(raw)
    except ValueError as e:
        raise ValueError(f"not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"a JSON {type(obj).__name__}, not an object")
    return obj


def read_jsonl(path, skip_bad_lines=False, counts=None):
    """Yield (where, record) for each JSON object line of a .jsonl file (blank lines skipped, a
    leading BOM dropped); bad lines follow bad_line()'s policy. where = 'path:line'."""
    counts = {} if counts is None else counts
    with open(path, encoding='utf-8-sig', errors='strict') as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield f"{path}:{n}", parse_json_object(line)
            except ValueError as e:
                bad_line(f"{path}:{n}", str(e), skip_bad_lines, counts)
