"""finetune_cls.py: the head reads the last real token whatever the padding, each `trainable`
choice trains exactly what it says, a short run learns a task the test builds, --classify,
resume after SIGTERM, and bad input as one line naming the file and row."""
import csv
import json
import random
import re
import signal

import pytest
import torch

from conftest import assert_one_line_error, run, start_paused, wait_for
from checkpoint import load_checkpoint, load_model
import cls_data
import tokenizer
from model import GPT, ModelConfig

# Models this small run as fast on one thread, and a second would only fight other processes.
ONE_THREAD = {'OMP_NUM_THREADS': '1'}

PEOPLE, ANIMALS = ['my friend', 'the old man', 'her sister', 'the king'], ['the cat', 'a dog']
VERBS = ['sees', 'likes', 'finds', 'calls', 'follows', 'remembers']
OBJECTS = ['the red ball', 'a small house', 'the river', 'an open door', 'the quiet garden']


def make_task(n, seed=0):
    """(text, label) pairs in the trunk's characters: one or two sentences; 'animal' when one of
    them has an animal for its subject (at either place), else 'person'."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(['animal', 'person'])
        subjects = [rng.choice(PEOPLE) for _ in range(rng.randint(1, 2))]
        if label == 'animal':
            subjects[rng.randrange(len(subjects))] = rng.choice(ANIMALS)
        rows.append(('\n'.join(f"{s} {rng.choice(VERBS)} {rng.choice(OBJECTS)}." for s in subjects), label))
    return rows


def write_csv(path, rows, header=('text', 'label')):
    with open(path, 'w', newline='', encoding='utf-8') as f:  # csv quotes the texts that hold newlines
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture(scope='module')
def trunk(char_data, tmp_path_factory):
    """A tiny pretrained char-level GPT (2 layers, 32 wide, context 96: every text fits) and a labelled CSV."""
    d = tmp_path_factory.mktemp('cls')
    run('train.py', '--dataset=tiny', f'--data_dir={char_data}', f'--out_dir={d / "trunk"}', '--n_layer=2', '--n_head=2',
        '--n_embd=32', '--block_size=96', '--batch_size=8', '--learning_rate=3e-3', '--max_iters=40', '--eval_interval=40',
        '--eval_iters=2', '--warmup_iters=5', '--peak_flops=1e12', '--sample_prompt=', env=ONE_THREAD)
    write_csv(d / 'task.csv', make_task(600))
    return d


def cls_args(d, out, *args):
    return [f'--data={d / "task.csv"}', f'--base_dir={d / "trunk"}', f'--out_dir={out}',
            '--batch_size=8', '--eval_examples=32', '--warmup_iters=5', '--log_interval=50', *args]


def finetune(d, out, *args, **kw):
    return run('finetune_cls.py', *cls_args(d, out, *args), env=ONE_THREAD, **kw)


LEARN = ['--max_iters=200', '--eval_interval=100', '--learning_rate=3e-3', '--min_lr=3e-4', '--dropout=0.1']


@pytest.fixture(scope='module')
def learned(trunk, tmp_path_factory):
    """A full fine-tuning run on the task (dropout on, so that resume must restore torch's RNG too)."""
    out = tmp_path_factory.mktemp('learned') / 'out'
    return out, finetune(trunk, out, *LEARN).stdout


def losses(out):
    """Every number a run logged, by (iter, key)."""
    return {(r['iter'], k): r[k] for r in map(json.loads, open(out / 'log.jsonl'))
            for k in ('loss', 'val_loss', 'val_acc', 'test_acc') if k in r}


def test_last_index_left_and_right_padding():
    seqs = [[5, 6, 7], [8], [1, 2, 3, 4, 5]]
    idx, mask = cls_data.pad(seqs, pad_id=0, side='right')
    assert cls_data.last_index(mask).tolist() == [2, 0, 4]
    assert idx[torch.arange(3), cls_data.last_index(mask)].tolist() == [7, 8, 5]
    idx, mask = cls_data.pad(seqs, pad_id=0, side='left')
    assert cls_data.last_index(mask).tolist() == [4, 4, 4]
    assert idx[:, 0].tolist() == [0, 0, 1]
    # Right padding through a model: each text's last hidden state is the one it has alone.
    torch.manual_seed(0)
    model = GPT(ModelConfig(block_size=16, vocab_size=10, n_layer=2, n_head=2, n_embd=16)).eval()
    idx, mask = cls_data.pad(seqs, pad_id=9)
    with torch.no_grad():
        h, _ = model(idx, hidden=True)  # (B, T, C)
        batched = h[torch.arange(3), cls_data.last_index(mask)]
        alone = torch.stack([model(torch.tensor([s]), hidden=True)[0][0, -1] for s in seqs])
    assert torch.allclose(batched, alone, atol=1e-5)


def test_long_texts_keep_their_end_and_are_counted():
    tok = tokenizer.load({'kind': 'char', 'chars': 'abcdef'})  # ids 0..5; end-of-text = 6
    examples = [('f:1', 'abcdef', 'x'), ('f:2', 'ab', 'y')]
    enc, n_cut = cls_data.encode(tok, examples, block_size=4, truncation='keep_end')
    assert [ids for _, ids, _ in enc] == [[3, 4, 5, 6], [0, 1, 6]] and n_cut == 1
    enc, n_cut = cls_data.encode(tok, examples, block_size=4, truncation='keep_start')
    assert [ids for _, ids, _ in enc] == [[0, 1, 2, 6], [0, 1, 6]] and n_cut == 1


def test_split_is_stratified_and_deterministic():
    examples = [(f'f:{i}', 'x', 'a' if i < 100 else 'b') for i in range(130)]
    rest, val, test = cls_data.split(examples, [0.1, 0.2], seed=3)
    count = lambda part, label: sum(e[2] == label for e in part)
    assert (count(val, 'a'), count(val, 'b'), count(test, 'a'), count(test, 'b')) == (10, 3, 20, 6)
    assert len(rest) + len(val) + len(test) == 130 and not {e[0] for e in rest} & {e[0] for e in val + test}
    assert cls_data.split(examples, [0.1, 0.2], seed=3) == [rest, val, test]
    assert cls_data.label_names(['10', '2', '1']) == ['1', '2', '10']


@pytest.mark.slow
def test_learns_the_task_and_classifies(learned, tmp_path):
    out, stdout = learned
    acc, base = map(float, re.search(r"test \(60 texts\), best.pt: accuracy ([\d.]+).*majority.*accuracy ([\d.]+)", stdout).groups())
    assert acc >= 0.95 and base <= 0.55, stdout[-1500:]
    assert 'confusion matrix' in stdout and 'precision' in stdout and 'were cut' not in stdout
    evals = [r for r in map(json.loads, open(out / 'log.jsonl')) if 'val_loss' in r]
    assert [r['iter'] for r in evals] == [0, 100, 200] and all('train_acc' in r and 'val_acc' in r for r in evals)
    ckpt = load_checkpoint(out / 'best.pt')
    assert ckpt['labels'] == ['animal', 'person'] and ckpt['model']['score.weight'].shape == (2, 32)
    model, spec, _ = load_model(out, 'best.pt')  # the language model, head left out, still loads
    assert spec['kind'] == 'char' and not hasattr(model, 'score')
    p = run('finetune_cls.py', f'--out_dir={out}', '--classify=the cat follows an open door.', env=ONE_THREAD)
    assert p.stdout.split('\t')[0] == 'animal'
    texts = tmp_path / 'texts.txt'
    texts.write_text('a dog sees the river.\n\nmy friend likes the river.\n')
    lines = run('finetune_cls.py', f'--out_dir={out}', f'--classify=FILE:{texts}', env=ONE_THREAD).stdout.splitlines()
    assert [line.split('\t')[0] for line in lines] == ['animal', 'person']
    assert lines[1].endswith('\tmy friend likes the river.') and 0.5 < float(lines[1].split('\t')[1]) <= 1


@pytest.mark.slow
@pytest.mark.parametrize('trainable', ['head', 'last', 'all', 'lora'])
def test_each_choice_trains_what_it_says(trunk, tmp_path, trainable):
    out = tmp_path / 'out'
    # a large LR and weight decay: a frozen weight that was wrongly given to the optimizer would move
    finetune(trunk, out, f'--trainable={trainable}', '--n_last=1', '--max_iters=3', '--eval_interval=100',
             '--learning_rate=1e-2', '--min_lr=1e-3', '--weight_decay=0.1', '--lora_rank=2')
    base = load_checkpoint(trunk / 'trunk' / 'ckpt.pt')['model']
    new = load_checkpoint(out / 'ckpt.pt')['model']
    assert new.pop('score.weight').abs().sum() > 0
    if trainable == 'lora':
        adapters = {k: new.pop(k) for k in list(new) if 'lora_' in k}
        assert adapters and all(v.abs().sum() > 0 for k, v in adapters.items() if 'lora_b' in k)  # B starts at 0
        new = {k.replace('.base.', '.'): v for k, v in new.items()}
    assert new.keys() == base.keys()
    changed = {k for k in base if not torch.equal(base[k], new[k])}
    expected = {'head': set(), 'lora': set(), 'all': set(base),
                'last': {k for k in base if k.startswith(('blocks.1.', 'ln_f.'))}}[trainable]
    assert changed == expected


@pytest.mark.slow
def test_resume_after_sigterm_matches_an_uninterrupted_run(trunk, learned, tmp_path):
    out = tmp_path / 'out'
    marker = tmp_path / 'paused'
    proc = start_paused('finetune_cls.py', cls_args(trunk, out, *LEARN), 30, marker, env=ONE_THREAD)  # waits at iter 30 for the signal
    try:
        wait_for(lambda: (tmp_path / 'paused.0').exists(), proc, what='iteration 30')
        proc.send_signal(signal.SIGTERM)
        stdout, _ = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 143 and 'Resume with:' in stdout, stdout[-1000:]
    assert load_checkpoint(out / 'ckpt.pt')['iter_num'] < 200
    finetune(trunk, out, *LEARN, '--init_from=resume')
    assert losses(out) == losses(learned[0])


BAD = [  # (file name, its contents, extra args, the error)
    ('cols.csv', 'message,label\nthe cat sees the river.,animal\n', [], "cols.csv:1: no column 'text'"),
    ('empty.csv', 'text,label\nthe cat sees the river.,animal\n"",person\n', [], 'empty.csv:3: empty text'),
    ('one.csv', 'text,label\nthe cat sees the river.,animal\na dog likes the river.,animal\n', [],
     "every training example has the label 'animal'"),
    ('quote.csv', 'text,label\nthe cat sees the river.,animal\n"a dog" likes the river,animal\n', [],
     'quote.csv:3: does not parse as CSV'),
    ('fields.tsv', 'text\tlabel\nthe cat sees the river.\tanimal\textra\n', [], 'fields.tsv:2: 3 fields, the header has 2'),
    ('nolabel.jsonl', '{"text": "the cat sees the river.", "label": "animal"}\n{"text": "a dog likes it."}\n', [],
     "nolabel.jsonl:2: no 'label' field"),
    ('val.csv', 'text,label\nthe king sees the river.,person\nthe cat sees the river.,plant\n', ['--val_data'],
     "val.csv:3: label 'plant' never occurs in the training data"),
]


@pytest.mark.slow
@pytest.mark.parametrize('name,content,extra,expected', BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_one_line_naming_file_and_row(trunk, tmp_path, name, content, extra, expected):
    path = tmp_path / name
    path.write_text(content, encoding='utf-8')
    args = [f'--data={path}'] if not extra else [f'--data={trunk / "task.csv"}', f'{extra[0]}={path}']
    p = run('finetune_cls.py', *args, f'--base_dir={trunk / "trunk"}', f'--out_dir={tmp_path / "out"}', check=False, env=ONE_THREAD)
    assert_one_line_error(p, expected)
    assert not (tmp_path / 'out').exists()
