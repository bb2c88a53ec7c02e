"""Shared test helpers. Tests run offline: GPT-2's BPE comes from ../shared/data/tiktoken_cache
when that folder exists; tests that need it (or other real data) skip otherwise."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / 'shared' / 'data'
if (SHARED / 'tiktoken_cache').is_dir():
    os.environ.setdefault('TIKTOKEN_CACHE_DIR', str(SHARED / 'tiktoken_cache'))
sys.path.insert(0, str(ROOT))


def shared_file(name):
    """Path of a file in ../shared/data, or skip the test that needs it."""
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"needs ../shared/data/{name} (real data, not shipped with the project)")
    return path


def run(script, *args, cwd=ROOT, check=True, timeout=300, env=None):
    """Run one of the project's scripts the way a user does; return the CompletedProcess."""
    p = subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd, capture_output=True,
                       text=True, timeout=timeout, env={**os.environ, **(env or {})})
    if check and p.returncode != 0:
        raise AssertionError(f"{script} {' '.join(map(str, args))} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def make_text(n_lines=600, seed=0):
    """Deterministic English-like text with enough structure for a tiny model to learn."""
    import random
    rng = random.Random(seed)
    subjects = ['the cat', 'a dog', 'my friend', 'the old man', 'her sister', 'the king']
    verbs = ['sees', 'likes', 'finds', 'calls', 'follows', 'remembers']
    objects = ['the red ball', 'a small house', 'the river', 'an open door', 'the quiet garden']
    return ''.join(f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}.\n" for _ in range(n_lines))


@pytest.fixture(scope='session')
def char_data(tmp_path_factory):
    """A char-level dataset prepared by prepare.py: returns its data_dir (dataset name 'tiny')."""
    d = tmp_path_factory.mktemp('data')
    src = d / 'tiny.txt'
    src.write_text(make_text())
    run('prepare.py', 'tiny', '--input', src, '--tokenizer=char', '--out_dir', d)
    return d


# Settings for a tiny, fast training run (seconds on 2 cores).
TINY = ['--dataset=tiny', '--n_layer=2', '--n_head=2', '--n_embd=32', '--block_size=32', '--batch_size=4',
        '--learning_rate=3e-3', '--warmup_iters=5', '--eval_iters=4', '--log_interval=5', '--peak_flops=1e12',
        '--sample_tokens=20', '--dtype=float32']  # dtype pinned: tests compare numbers across runs


def make_chats(n=240, seed=0):
    """Chat records a tiny model can learn (each subject has its own answers); every third has two turns."""
    import random
    rng = random.Random(seed)
    subjects = ['the cat', 'a dog', 'my friend', 'the old man', 'her sister', 'the king']
    objects = ['the red ball', 'a small house', 'the river', 'an open door', 'the quiet garden', 'the sea']
    out = []
    for i in range(n):
        k = rng.randrange(len(subjects))
        s = subjects[k]
        msgs = [{'role': 'user', 'content': f'what does {s} see?'}, {'role': 'assistant', 'content': f'{s} sees {objects[k]}.'}]
        if i % 3 == 0:
            msgs += [{'role': 'user', 'content': 'and then?'}, {'role': 'assistant', 'content': f'{s} finds {objects[-1 - k]}.'}]
        out.append({'messages': msgs})
    return out


@pytest.fixture(scope='session')
def sft_base(tmp_path_factory):
    """For finetune_sft.py: a tiny base pretrained by train.py on a 300-token bpe (which reserves
    the chat tokens), and a file of chat records. -> (base out_dir, chat .jsonl)."""
    import json
    d = tmp_path_factory.mktemp('sft')
    (d / 'tiny.txt').write_text(make_text())
    run('prepare.py', 'tinybpe', '--input', d / 'tiny.txt', '--tokenizer=bpe', '--vocab_size=300', '--out_dir', d / 'data')
    run('train.py', *TINY, '--dataset=tinybpe', f'--data_dir={d / "data"}', f'--out_dir={d / "base"}', '--block_size=64',
        '--max_iters=30', '--eval_interval=30', '--sample_prompt=')
    chats = d / 'chats.jsonl'
    chats.write_text(''.join(json.dumps(r) + '\n' for r in make_chats()))
    return d / 'base', chats
