"""The docs do not drift from the code.

- Every `file.py:name` in README.md, README.zh-CN.md and docs/ names a function, class, method
  (`Class.method`) or module-level setting that exists in that file (read with ast, nothing run).
- Every page written twice (X.md and X.zh-CN.md) shows the same commands in the same order, and
  each README links to the other at its top; relative links point at files that exist.
- README.md's file table names every script at the root, in both languages.
- (slow) The commands of README.md and of each guide in docs/guides/ run, as written and in the
  order written, in a fresh copy of the project, with the offline data from ../shared/data.

How a page marks its commands (inside ```bash blocks; a trailing comment's first word):
  # GPU       needs a CUDA GPU             # Mac      needs Apple's MPS
  # network   needs the internet, or what a `# network` line fetched
  # Windows   a Windows shell's syntax     # server   runs until stopped: started, awaited, stopped
  # needs X   an optional package X (skipped where it does not import), or X.py not merged yet
Several: `# server, needs fastapi: then open the page`.
Lines that install (`pip ...`), clone (`git clone`) or run the test suite (`python -m pytest`) are
CI's part (.ci/run installs from the same requirements files and runs the suite) and are skipped
here. A `python X.py` whose script is not in this checkout yet is skipped with that reason.
Long runs get small settings appended (FAST below); `--key=value` always wins, wherever it stands.
"""
import ast
import os
import re
import shlex
import shutil
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from conftest import FORKER

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / 'shared' / 'data'
MARKS = ('GPU', 'Mac', 'network', 'Windows', 'server')


def pages():
    """Every markdown page of the docs: the two READMEs and docs/**."""
    return sorted([ROOT / 'README.md', ROOT / 'README.zh-CN.md'] + list((ROOT / 'docs').rglob('*.md')))


def rel(p):
    return str(Path(p).relative_to(ROOT))


# ----------------------------------------------------------------------------- commands


def split_comment(line):
    """'cmd  # comment' -> ('cmd', 'comment'); a # inside quotes or a word (a#b) is not a comment."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in '"\'':
            quote = ch
        elif ch == '#' and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i + 1:].strip()
    return line.rstrip(), ''


def marks_of(comment):
    """The marks a trailing comment starts with: 'server, needs fastapi: open the page' -> {'server',
    'needs fastapi'}. The part before the first colon counts only when every comma-separated item
    in it is a mark; anything else is a plain comment (no marks)."""
    items = [i.strip() for i in re.split(r'[:：]', comment, maxsplit=1)[0].split(',')]
    ok = all(i in MARKS or re.fullmatch(r'needs [\w.-]+', i) for i in items)
    return set(items) if comment and ok else set()


def bash_blocks(path):
    """The text of each ```bash block of a page, in order."""
    return re.findall(r'^ *```(?:bash|sh)\n(.*?)^ *```', Path(path).read_text(encoding='utf-8'), re.S | re.M)


def commands(path, blocks=None):
    """[(command, marks)] from the ```bash blocks of a page (those numbered in `blocks`, or all), in
    order. Continued lines (ending in a backslash) are joined; comment-only lines are dropped;
    marks: the MARKS a trailing comment starts with."""
    out = []
    for i, block in enumerate(bash_blocks(path)):
        if blocks is not None and i not in blocks:
            continue
        pending = ''
        for raw in block.splitlines():
            line = pending + raw.strip()
            if line.endswith('\\'):
                pending = line[:-1].rstrip() + ' '
                continue
            pending = ''
            cmd, comment = split_comment(line)
            if not cmd:
                continue
            out.append((' '.join(cmd.split()), marks_of(comment)))
    return out


def pairs():
    """(English page, Chinese page) for every page written twice."""
    out = []
    for p in pages():
        if p.name.endswith('.zh-CN.md'):
            en = p.with_name(p.name.replace('.zh-CN.md', '.md'))
            out.append((en, p))
    return out


def test_every_page_is_written_in_both_languages():
    have = set(pages())
    missing = [rel(p) for p in have if not p.name.endswith('.zh-CN.md')
               and p.with_name(p.name[:-3] + '.zh-CN.md') not in have]
    missing += [rel(zh) for en, zh in pairs() if en not in have]
    assert not missing, f"pages without their other language: {missing}"


@pytest.mark.parametrize('en,zh', pairs(), ids=lambda p: rel(p))
def test_same_commands_in_both_languages(en, zh):
    a, b = commands(en), commands(zh)
    for n, (x, y) in enumerate(zip(a, b), 1):
        assert x == y, f"command {n} differs:\n  {rel(en)}: {x}\n  {rel(zh)}: {y}"
    assert len(a) == len(b), f"{rel(en)} shows {len(a)} commands, {rel(zh)} {len(b)}"


def test_readmes_have_commands_and_link_each_other():
    en, zh = ROOT / 'README.md', ROOT / 'README.zh-CN.md'
    assert len(commands(en)) >= 10
    assert 'README.zh-CN.md' in '\n'.join(en.read_text(encoding='utf-8').splitlines()[:5])
    assert 'README.md' in '\n'.join(zh.read_text(encoding='utf-8').splitlines()[:5])


def test_first_screen_sets_a_machine_up():
    """The two set-up commands (quick start; tests) stand in the README's first screen (40 lines)."""
    for path in (ROOT / 'README.md', ROOT / 'README.zh-CN.md'):
        first = '\n'.join(path.read_text(encoding='utf-8').splitlines()[:40])
        assert 'pip install -r requirements.txt &&' in first, path.name
        assert 'pip install -r requirements-dev.txt && python -m pytest' in first, path.name


def test_relative_links_resolve():
    bad = []
    for p in pages():
        for target in re.findall(r'\]\(([^)#\s]+)(?:#[^)]*)?\)', p.read_text(encoding='utf-8')):
            if '://' in target or target.startswith('mailto:'):
                continue
            if not (p.parent / target).exists():
                bad.append(f"{rel(p)} -> {target}")
    assert not bad, "links to missing files:\n" + '\n'.join(bad)


def test_file_table_lists_every_script():
    scripts = sorted(p.name for p in ROOT.glob('*.py'))
    for readme in ('README.md', 'README.zh-CN.md'):
        text = (ROOT / readme).read_text(encoding='utf-8')
        missing = [s for s in scripts if f'| `{s}` |' not in text]
        assert not missing, f"{readme}'s file table lacks {missing}"


# ----------------------------------------------------------------------------- file.py:name references

# Scripts other branches are adding now: a reference into one of them is checked once it exists.
PENDING = set()


def names_in(path):
    """Top-level functions, classes, Class.method and module-level assigned names of a .py file."""
    tree = ast.parse(path.read_text(encoding='utf-8'))
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            if isinstance(node, ast.ClassDef):
                names |= {f'{node.name}.{m.name}' for m in node.body if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef))}
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target]):
                names |= {n.id for n in ast.walk(t) if isinstance(n, ast.Name)}
    return names


REF = re.compile(r'`([A-Za-z_][\w/]*\.py):([A-Za-z_][\w.]*)`')


def test_code_references_exist():
    refs, bad, cache = 0, [], {}
    for p in pages():
        for file, name in REF.findall(p.read_text(encoding='utf-8')):
            path = ROOT / file
            if not path.exists():
                if file not in PENDING:
                    bad.append(f"{rel(p)}: `{file}:{name}`: no file {file}")
                continue
            if file not in cache:
                cache[file] = names_in(path)
            refs += 1
            if name not in cache[file]:
                bad.append(f"{rel(p)}: `{file}:{name}`: {file} has no {name}")
    assert not bad, '\n'.join(bad)
    assert refs >= 40, f"only {refs} references to the code: the tour should point into it"


def test_reference_checker_catches_a_wrong_name(tmp_path):
    """The checker itself: a method that is not there is not found."""
    assert 'Attention.forward' in names_in(ROOT / 'model.py')
    assert 'get_batch' in names_in(ROOT / 'train.py') and 'max_iters' in names_in(ROOT / 'train.py')
    assert 'Attention.backward' not in names_in(ROOT / 'model.py')
    page = tmp_path / 'x.md'
    page.write_text('see `model.py:GPT.forwardd` and\n```bash\npython a.py "x # y" \\\n  --b=1   # GPU: big\n# note\n```\n')
    assert REF.findall(page.read_text()) == [('model.py', 'GPT.forwardd')]
    assert commands(page) == [('python a.py "x # y" --b=1', {'GPU'})]
    assert marks_of('server, needs fastapi: then open it') == {'server', 'needs fastapi'}
    assert marks_of('a title in, a poem out') == set() and marks_of('network：需要联网') == {'network'}


# ----------------------------------------------------------------------------- the commands run (slow)

# Small settings appended to long runs: the same path, in seconds.
FAST = {
    'train.py': '--max_iters=10 --eval_interval=5 --eval_iters=2 --eval_full_val=False --warmup_iters=5 --log_interval=10 --sample_tokens=20',
    'finetune_sft.py': '--max_iters=10 --eval_interval=5 --eval_iters=2 --warmup_iters=2 --log_interval=5 --sample_tokens=20',
    'finetune_cls.py': '--max_iters=10 --eval_interval=5 --warmup_iters=2 --log_interval=5',
    'sample.py': '--max_new_tokens=20 --num_samples=1',
    'eval.py': '--limit=20',
}
# A page's own extra settings for the test (its model is sized for a GPU): appended after FAST.
PAGE_FAST = {'kaggle.md': {'train.py': '--n_layer=2 --n_head=4 --n_embd=128 --batch_size=4'}}
SKIP_PREFIX = {'pip ': 'installs: CI does it from the same requirements files (.ci/run)',
               'git clone': 'clones the repository: the test runs in a copy of it',
               'python -m pytest': "runs the test suite: CI's own command (.ci/run)"}


def place_offline_data(tmp):
    """The data a user downloads or brings, from ../shared/data, where the pages expect it."""
    need = ['the-verdict.txt', 'instruction-data.json', 'tang-poems.jsonl', 'tang-poems-chat.jsonl', 'tinyshakespeare.txt']
    missing = [n for n in need if not (SHARED / n).exists()] + ([] if (SHARED / 'tiktoken_cache').is_dir() else ['tiktoken_cache'])
    if missing:
        pytest.skip(f"needs ../shared/data/{', '.join(missing)} (real data, not shipped with the project)")
    copies = {'data/verdict/the-verdict.txt': 'the-verdict.txt', 'data/shakespeare_char/input.txt': 'tinyshakespeare.txt',
              'data/instruction-data.json': 'instruction-data.json', 'tang-poems.jsonl': 'tang-poems.jsonl',
              'tang-poems-chat.jsonl': 'tang-poems-chat.jsonl', 'the-verdict.txt': 'the-verdict.txt',
              'instruction-data.json': 'instruction-data.json',
              'kaggle/input/tang-poems/tang-poems.jsonl': 'tang-poems.jsonl',
              'kaggle/input/tang-poems/tang-poems-chat.jsonl': 'tang-poems-chat.jsonl'}
    for dst, src in copies.items():
        (tmp / dst).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SHARED / src, tmp / dst)
    shutil.copytree(SHARED / 'tiktoken_cache', tmp / 'tiktoken_cache')
    (tmp / 'kaggle' / 'working').mkdir(parents=True)


def copy_project(tmp, root):
    """What a clone holds: the scripts, config/, data/README.md and the requirements files. A config
    that names Kaggle's folders gets root's stand-ins for them (as adapt() does for commands)."""
    for p in ROOT.iterdir():
        if p.suffix in ('.py', '.txt', '.html') and p.is_file():
            shutil.copy(p, tmp / p.name)
    shutil.copytree(ROOT / 'config', tmp / 'config')
    for cfg in (tmp / 'config').glob('*.py'):
        cfg.write_text(adapt(cfg.read_text(encoding='utf-8'), root, script_args=False), encoding='utf-8')
    (tmp / 'data').mkdir()
    shutil.copy(ROOT / 'data' / 'README.md', tmp / 'data' / 'README.md')


def adapt(cmd, tmp, page_fast=None, script_args=True):
    """The command as the test runs it: Kaggle's folders inside tmp, small settings appended."""
    cmd = cmd.replace('/kaggle/input', f'{tmp}/kaggle/input').replace('/kaggle/working', f'{tmp}/kaggle/working')
    if not script_args:
        return cmd
    parts = []
    for part in cmd.split(' && '):
        words = part.split()
        script = next((w for w in words if w.endswith('.py')), '')
        if words[:1] in (['python'], ['torchrun']) and Path(script).name in FAST and '--help' not in words:
            part += ' ' + FAST[Path(script).name]
            part += ' ' + (page_fast or {}).get(Path(script).name, '')
        parts.append(part)
    return ' && '.join(parts)


def why_skip(cmd, marks, cwd):
    for m in sorted(marks):
        if not m.startswith('needs '):
            return f"marked {m}"
        need = m.split()[1]
        if need.endswith('.py'):
            if not (cwd / need).exists():
                return f"{need} is not in this checkout yet"
            continue
        try:
            __import__(need)
        except ImportError:
            return f"needs {need} (optional, not installed)"
    for prefix, why in SKIP_PREFIX.items():
        if cmd.startswith(prefix):
            return why
    for part in cmd.split(' && '):
        words = part.split()
        if words[:1] == ['python'] and len(words) > 1 and words[1].endswith('.py') and not (cwd / words[1]).exists():
            return f"{words[1]} is not in this checkout yet"
    return ''


def serve_and_stop(cmd, cwd, env):
    """A server command: start it, wait for the line with its URL, stop it with SIGTERM."""
    p = subprocess.Popen(cmd, shell=True, executable='/bin/bash', cwd=cwd, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines, seen = [], threading.Event()

    def read():
        for line in p.stdout:
            lines.append(line)
            if 'http://' in line:
                seen.set()
    t = threading.Thread(target=read, daemon=True)
    t.start()
    ok = seen.wait(300)
    os.killpg(p.pid, signal.SIGTERM)
    p.wait(60)
    t.join(10)
    assert ok, f"`{cmd}` never printed its URL:\n{''.join(lines)[-3000:]}"


def run_page(page, tmp, blocks=None):
    copy_project(tmp, tmp)
    place_offline_data(tmp)
    env = {**os.environ, 'PWD': str(tmp), 'TIKTOKEN_CACHE_DIR': str(tmp / 'tiktoken_cache'), 'MPLBACKEND': 'Agg'}
    cwd, ran, skipped = tmp, [], []
    for cmd, marks in commands(page, blocks):
        why = why_skip(cmd, marks - {'server'}, cwd)
        if cmd.startswith('git clone ') and not marks - {'network'} and len(cmd.split()) > 3:
            dest = Path(adapt(cmd.split()[3], tmp))  # the clone's folder: a copy of the project stands in
            dest.mkdir(parents=True, exist_ok=True)
            copy_project(dest, tmp)
        if cmd.startswith('pip ') and ' && ' in cmd and not marks:  # "pip install ... && python ...": run the rest
            cmd = cmd.split(' && ', 1)[1]
            why = why_skip(cmd, marks, cwd)
        if why:
            skipped.append(f"{cmd}   ({why})")
            continue
        env['PWD'] = str(cwd)
        if cmd.startswith('export '):
            key, _, value = cmd[len('export '):].partition('=')
            env[key] = os.path.expandvars(value.strip('"\'').replace('$PWD', str(cwd)))
            ran.append(cmd)
            continue
        if cmd.startswith('cd '):
            cwd = (cwd / os.path.expandvars(adapt(cmd[3:], tmp))).resolve()
            ran.append(cmd)
            continue
        real = adapt(cmd, tmp, PAGE_FAST.get(page.name))
        if 'server' in marks:
            serve_and_stop(real, cwd, env)
        elif FORKER.usable(env) and re.fullmatch(r'python [\w/.-]+\.py( [^|&;<>$`*?(){}\\]*)?', real):
            # `python X.py args`, nothing else for the shell to do: forked as conftest.run does (no torch import)
            p = FORKER.run(shlex.split(real)[1:], cwd, env, 900, input='hello\n')
        else:
            p = subprocess.run(real, shell=True, executable='/bin/bash', cwd=cwd, env=env, input='hello\n',
                               capture_output=True, text=True, timeout=900)
            assert p.returncode == 0, f"{rel(page)}: `{cmd}` failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
        ran.append(cmd)
    print(f"\n{rel(page)}: ran {len(ran)}, skipped {len(skipped)}:\n  " + '\n  '.join(skipped))
    return ran


RUNNABLE = [ROOT / 'README.md'] + sorted(p for p in (ROOT / 'docs' / 'guides').glob('*.md') if not p.name.endswith('.zh-CN.md'))
# The README's bash blocks in groups that need nothing from each other (each group runs in a fresh
# copy, so the two cores share the README's ~100 s): Shakespeare (quick start, install, the first
# run), The Verdict (the whole path, then tuning), the Tang poems.
README_PARTS = [(0, 1, 2, 3), (4, 6, 7), (5,)]
CASES = [(p, None) for p in RUNNABLE[1:]] + [(RUNNABLE[0], part) for part in README_PARTS]


def test_readme_parts_cover_every_block_once():
    assert sorted(i for part in README_PARTS for i in part) == list(range(len(bash_blocks(ROOT / 'README.md'))))


@pytest.mark.slow
@pytest.mark.parametrize('page, blocks', CASES, ids=lambda c: rel(c) if isinstance(c, Path) else f"blocks{''.join(map(str, c or ()))}")
def test_commands_run(page, blocks, tmp_path):
    """Each page's commands, in order, in a fresh copy of the project (CPU; small settings)."""
    ran = run_page(page, tmp_path, blocks)
    assert ran, f"{rel(page)}: no command ran"
