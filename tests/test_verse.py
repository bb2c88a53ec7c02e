"""bench.py poems: the share of replies to poem requests that are verse ended by <|im_end|>, on the
records finetune_sft.py held out (the same split) or on a file of titles."""
import json

import pytest

from bench import verse_kind
from conftest import run


@pytest.mark.parametrize('text,kind', [
    ('床前明月光，疑是地上霜。\n舉頭望明月，低頭思故鄉。', 5),
    ('朝辭白帝彩雲間，千里江陵一日還。\n兩岸猿聲啼不住，輕舟已過萬重山。', 7),
    ('秦川雄帝宅，函谷壯皇居。', 0),                               # one line is not a poem
    ('床前明月光，疑是地上霜。\n舉頭望明月，低頭思故鄉歸。', 0),     # a 6-character clause
    ('床前明月光，疑是地上霜。\n朝辭白帝彩雲間，千里江陵一日還。', 0),  # 5 and 7 mixed
    ('床前明月光，疑是地上霜。\n舉頭望明月，低頭思故', 0),           # a clause left open (cut)
    ('the cat sees，the dog runs。\nthe sea is，the sky is。', 0),   # not 5 or 7 characters
])
def test_verse_kind(text, kind):
    assert verse_kind(text) == kind


@pytest.mark.slow
def test_poems_counts_the_held_out_records_and_the_titles_given(sft_base, tmp_path):
    base, chats = sft_base
    out = tmp_path / 'sft'
    run('finetune_sft.py', '--batch_size=8', '--learning_rate=3e-3', '--warmup_iters=5', '--eval_iters=4', '--max_iters=10',
        '--eval_interval=10', '--val_fraction=0.1', f'--base_dir={base}', f'--data_file={chats}', f'--cache_dir={tmp_path / "cache"}',
        f'--out_dir={out}', '--sample_system=you answer.')
    held_out = json.loads((tmp_path / 'cache' / 'meta.json').read_text())['examples']['val']
    p = run('bench.py', 'poems', f'--out_dir={out}', f'--json={tmp_path / "h.json"}', f'--replies={tmp_path / "h.jsonl"}')
    row = json.loads((tmp_path / 'h.json').read_text())['rows'][0]
    assert row['requests'] == held_out > 0 and 'verse %' in p.stdout
    replies = [json.loads(line) for line in open(tmp_path / 'h.jsonl')]
    assert len(replies) == held_out and sum(r['ended'] for r in replies) == row['ended by <|im_end|>']
    assert row['verse'] == sum(r['verse'] > 0 for r in replies) == row['5-char'] + row['7-char']
    assert all(r['verse'] == 0 or r['ended'] for r in replies)  # verse counts only when <|im_end|> closed it
    (tmp_path / 'titles.txt').write_text('春夜\n\n秋思\n望月\n')
    run('bench.py', 'poems', f'--out_dir={out}', f'--titles={tmp_path / "titles.txt"}', f'--replies={tmp_path / "t.jsonl"}')
    asked = [json.loads(line)['request'] for line in open(tmp_path / 't.jsonl')]
    assert asked == ['请以《春夜》为题，写一首诗。', '请以《秋思》为题，写一首诗。', '请以《望月》为题，写一首诗。']
    p = run('bench.py', 'poems', f'--out_dir={out}', f'--titles={tmp_path / "none.txt"}', check=False)
    assert p.returncode == 1 and p.stderr.startswith('error: titles file') and 'Traceback' not in p.stderr
