"""bench.py: each mode measures what it says from the code it times (numbers from the run's own log,
rows per setting), and prints each kind of row as its own aligned table. No timing assertions:
bench.py measures speed; these tests check what it reports and how."""
import json

import pytest

import bench
from conftest import TINY, run


def assert_aligned_tables(text):
    """Every table in text (header, a -+- rule, rows; tables apart by a blank line) has its column
    separators at the same places in every line. -> the tables, as lists of lines."""
    tables, lines = [], text.split('\nmeasured on:')[0].strip('\n').split('\n')
    for block in '\n'.join(lines).split('\n\n'):
        rows = block.splitlines()
        assert len(rows) >= 3 and set(rows[1]) <= {'-', '+'}, block
        cols = [i for i, c in enumerate(rows[1]) if c == '+']
        for row in [rows[0], *rows[2:]]:
            assert [i for i, c in enumerate(row) if c == '|'] == cols, (row, rows[1])
        tables.append(rows)
    return tables


def test_show_prints_each_kind_of_row_as_its_own_aligned_table(capsys):
    """The peak row of `bench.py step` has other columns than the step rows: a table of its own."""
    rows = [{'mode': 'step', 'grad ckpt': 'False', 'ms/iter': 12.5, 'activations MB': 3.25},
            {'mode': 'step', 'grad ckpt': 'True', 'ms/iter': 1234.75, 'activations MB': 0.5},
            {'mode': 'peak', 'float32 GFLOP/s': 98.1, 'bfloat16 GFLOP/s': 201.77}]
    bench.show(rows)
    tables = assert_aligned_tables(capsys.readouterr().out)
    assert [t[0].split(' | ')[0].strip() for t in tables] == ['mode', 'mode']
    assert [len(t) - 2 for t in tables] == [2, 1]
    assert 'GFLOP/s' not in tables[0][0] and 'ms/iter' not in tables[1][0]
    assert tables[0][3].split('|')[2].strip() == '1234.75'


@pytest.mark.slow
def test_bench_reads_time_to_a_loss_from_a_log(tmp_path):
    rows = [{'iter': 0, 'loss': 4.0, 'dt': 0.5}, {'iter': 1, 'loss': 3.0, 'dt': 0.25}, {'iter': 2, 'val_loss': 2.5},
            {'iter': 2, 'loss': 2.4, 'dt': 0.25}, {'iter': 3, 'val_loss': 1.9}]
    (tmp_path / 'log.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
    run('bench.py', 'log', tmp_path, '--target_loss=2.6,2.0,1.0', f'--json={tmp_path / "b.json"}')
    row = json.loads((tmp_path / 'b.json').read_text())['rows'][0]
    assert row['s to val<=2.6'] == 0.8 and row['s to val<=2.0'] == 1.0 and row['s to val<=1.0'] is None
    assert row['final val'] == 1.9 and row['steps'] == 3


@pytest.mark.slow
def test_bench_step_and_sample_modes_report_their_rows(tmp_path):
    shape = ['--n_layer=1', '--n_head=2', '--n_embd=32', '--block_size=32', '--vocab_size=64']
    p = run('bench.py', 'step', *shape, '--steps=1', '--gradient_checkpointing=False,True', f'--json={tmp_path / "s.json"}',
            f'--profile={tmp_path / "prof"}')
    for ckpt in ('False', 'True'):  # torch.profiler's tables, a file per combination
        table = (tmp_path / f'prof-gradient_checkpointing={ckpt}.txt').read_text()
        assert table.startswith('3 steps profiled') and 'sorted by self_cpu_time_total' in table and 'aten::' in table
    out = json.loads((tmp_path / 's.json').read_text())
    steps = [r for r in out['rows'] if r['mode'] == 'step']
    assert [r['grad ckpt'] for r in steps] == ['False', 'True'] and all(r['ms/iter'] > 0 and 'activations MB' in r for r in steps)
    assert out['machine']['cores'] >= 1 and 'float32 GFLOP/s' in out['rows'][-1]
    tables = assert_aligned_tables(p.stdout)
    assert len(tables) == 2 and 'ms/iter' in tables[0][0] and 'float32 GFLOP/s' in tables[1][0] and 'ms/iter' not in tables[1][0]
    run('bench.py', 'sample', *shape, '--prompt_tokens=4,20', '--new_tokens=8', f'--json={tmp_path / "g.json"}')
    rows = json.loads((tmp_path / 'g.json').read_text())['rows']
    assert [(r['prompt'], r['kv cache']) for r in rows] == [(4, True), (4, False), (20, True), (20, False)]
    assert all(r['new tokens'] == 8 for r in rows) and all(isinstance(rows[i]['cache speedup'], float) for i in (0, 2))


@pytest.mark.slow
def test_bench_reads_the_run_it_measures(char_data, tmp_path):
    """bench.py train: numbers from the run's own log.jsonl; bench.py sample: with and without the cache."""
    p = run('bench.py', 'train', *TINY, f'--data_dir={char_data}', '--max_iters=12', '--eval_interval=6',
            '--target_loss=100', f'--json={tmp_path / "b.json"}')
    row = json.loads((tmp_path / 'b.json').read_text())['rows'][0]
    assert row['steps'] == 12 and row['ms/iter'] > 0 and row['tokens/s'] > 0 and row['peak RSS MB'] > 0
    assert row['s to val<=100.0'] is not None and row['s to val<=100.0'] <= row['train s']
    assert 'ms/iter' in p.stdout.splitlines()[0]
    out = tmp_path / 'run'
    run('train.py', *TINY, f'--data_dir={char_data}', f'--out_dir={out}', '--max_iters=2', '--sample_prompt=')
    run('bench.py', 'sample', f'--out_dir={out}', '--new_tokens=20', f'--json={tmp_path / "s.json"}')
    rows = json.loads((tmp_path / 's.json').read_text())['rows']
    assert [r['kv cache'] for r in rows] == [True, False] and all(r['new tokens'] == 20 and r['tokens/s'] > 0 for r in rows)


@pytest.mark.slow
def test_bench_prepare_calls_the_code_on_the_files_given(tmp_path):
    from conftest import make_text
    src = tmp_path / 'corpus.txt'
    src.write_text(make_text(2000))
    run('bench.py', 'prepare', src, '--tokenizer=char', '--bpe_vocab=300', f'--json={tmp_path / "p.json"}')
    rows = json.loads((tmp_path / 'p.json').read_text())['rows']
    enc, bpe = [r for r in rows if r['mode'] == 'prepare'], [r for r in rows if r['mode'] == 'bpe']
    assert [r['workers'] for r in enc] == [1, 2] and all(r['MB/s'] > 0 and r['tokens/s'] > 0 for r in enc)
    assert bpe[0]['vocab'] == 300 and bpe[0]['bytes/token'] > 1
