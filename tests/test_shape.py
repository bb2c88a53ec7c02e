"""The shape the code promises (DEVELOPERS.md, STYLE.md): no import cycle between our modules,
tokenizer.py a library that imports nothing of ours, no function longer than ~60 lines."""
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
    assert graph['tokenizer'] == set(), graph['tokenizer']

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
