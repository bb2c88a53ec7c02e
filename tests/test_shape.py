"""The shape the code promises (../shared/STYLE.md and the README's file table): no import cycle between our modules,
tokenizer.py a library that imports nothing of ours but sp_tokenizer.py (which imports nothing of ours),
no function longer than ~60 lines."""
import ast

from conftest import ROOT

OURS = {p.stem for p in ROOT.glob('*.py')}


def imports_of(path):
    """Our modules that a file imports, at any depth (inside functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding='utf-8'))):
        if isinstance(node, ast.Import):
            found |= {a.name.split('.')[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split('.')[0])
    return found & OURS - {path.stem}


def test_no_import_cycle():
    graph = {name: imports_of(ROOT / f'{name}.py') for name in OURS}
    # tokenizer.py may lean on sp_tokenizer.py (the SentencePiece-style reader beside it), and that one on nothing of ours.
    assert graph['tokenizer'] <= {'sp_tokenizer'}, graph['tokenizer']
    assert graph['sp_tokenizer'] == set(), graph['sp_tokenizer']

    def reach(start):
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen
    cycles = [name for name in OURS if name in reach(name)]
    assert not cycles, {name: graph[name] for name in cycles}


def test_no_function_over_60_lines():
    long = []
    for path in sorted(ROOT.glob('*.py')):
        for node in ast.walk(ast.parse(path.read_text(encoding='utf-8'))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60:
                long.append(f"{path.name}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, long


# The commands a user runs; every other .py file is a module they import (its name is a noun).
COMMANDS = {'train', 'sample', 'prepare', 'finetune_sft', 'finetune_cls', 'export', 'bench', 'serve', 'eval'}


def test_no_script_that_trains_or_samples_imports_a_command():
    """A command is run, never imported: what two scripts share lives in a module. (bench.py may
    import prepare.py: timing prepare's passes is its job.)"""
    bad = {name: imports_of(ROOT / f'{name}.py') & COMMANDS for name in OURS if name != 'bench'}
    assert not {k: v for k, v in bad.items() if v}, bad


def test_cli_needs_no_torch():
    """cli.py is imported first by every script so that even a Ctrl-C during the torch import is one line."""
    tree = ast.parse((ROOT / 'cli.py').read_text(encoding='utf-8'))
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not any(str(n).split('.')[0] in ('torch', 'numpy') for n in names), names


def test_long_modules_say_why_at_the_top():
    """About 400 lines at most, unless the module's docstring says why a reader gains from more."""
    long = []
    for path in sorted(ROOT.glob('*.py')):
        text = path.read_text(encoding='utf-8')
        doc = ast.get_docstring(ast.parse(text)) or ''
        if len(text.splitlines()) > 420 and 'Why one file' not in doc:
            long.append(f"{path.name} ({len(text.splitlines())} lines)")
    assert not long, long


def test_readme_file_table_lists_every_py_file():
    readme = (ROOT / 'README.md').read_text(encoding='utf-8')
    missing = [f"{name}.py" for name in sorted(OURS) if f"`{name}.py`" not in readme]
    assert not missing, missing
