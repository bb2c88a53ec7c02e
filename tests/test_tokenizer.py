"""Tests for tokenizer.py: the pre-split pattern, the BPE trainer, save/load, char, specials.
(Training a bpe from the command line, meta.json and --tokenizer=<folder>: tests/test_prepare.py.)

    python -m pytest tests/test_tokenizer.py -q
"""
import json
import os
import random
import re
import shutil
import sys
from pathlib import Path

import pytest
import tiktoken

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import tokenizer as T  # noqa: E402

SHARED = ROOT / '..' / 'shared' / 'data'

SAMPLES = {
    'english': "Hello, world! It's 3:45pm -- don't you think we'll be LATE? I'VE seen it.\n\nNew paragraph.",
    'chinese': '床前明月光，疑是地上霜。\n舉頭望明月，低頭思故鄉。 李白《靜夜思》「你好」、世界！',
    'emoji': 'I ❤️ it 👍🏽👨\u200d👩\u200d👧 flags 🇨🇳🇺🇸 ok😀😀 é vs e\u0301 ｆｕｌｌ　width',
    'digits': '1 12 123 1234 12345 3.14159 2024-01-01 ０１２３４５ ٣٤٥ ½ ²',
    'whitespace': 'a  b   c\t\td\r\n\r\ne \n  \n\x0b\x0c x\xa0y\u3000z\u2028w\x85v   \n',
    'mixed': 'GPT模型 trained on 中文text, 日本語のテキスト, 한국어, Русский, العربية, हिन्दी, ελληνικά.',
}


def tiktoken_pieces(pat, text, chunks):
    """How tiktoken cuts `text`, seen through a vocabulary built so that each piece tiktoken
    cuts becomes exactly one token: every prefix of each python chunk, and of each chunk
    joined with the next, is a token. If tiktoken cut the same pieces as python's re, each
    piece merges into the whole chunk; a longer piece would become a joined token, a shorter
    one a prefix: either way the token list differs from the chunk list."""
    vocab = [bytes([i]) for i in range(256)]
    seen = set(vocab)
    for a, b in zip(chunks, chunks[1:] + ['']):
        ab = (a + b).encode()
        for k in range(2, len(ab) + 1):
            if ab[:k] not in seen:
                seen.add(ab[:k])
                vocab.append(ab[:k])
    enc = tiktoken.Encoding('split-test', pat_str=pat, mergeable_ranks={t: i for i, t in enumerate(vocab)},
                            special_tokens={})
    return [enc.decode_single_token_bytes(t) for t in enc.encode_ordinary(text)]


@pytest.mark.parametrize('kind', sorted(SAMPLES))
def test_python_and_tiktoken_split_identically(kind):
    text = SAMPLES[kind]
    chunks = re.findall(T.PAT, text)
    assert ''.join(chunks) == text  # the pattern covers every character
    assert tiktoken_pieces(T.PAT, text, chunks) == [c.encode() for c in chunks]


@pytest.mark.parametrize('kind', sorted(SAMPLES))
def test_han_chars_pattern_splits_the_same_in_both_engines(kind):
    text = SAMPLES[kind]
    chunks = re.findall(T.PAT_HAN_CHARS, text)
    assert ''.join(chunks) == text and tiktoken_pieces(T.PAT_HAN_CHARS, text, chunks) == [c.encode() for c in chunks]


def test_han_chars_bpe_never_merges_characters_into_words():
    """prepare.py --han_chars: a bpe trained on Chinese text gives every frequent character one
    token and never one token to two characters; with PAT, a frequent run becomes one token."""
    text = SAMPLES['chinese'] * 20
    assert re.findall(T.PAT_HAN_CHARS, '床前明月光，疑是') == ['床', '前', '明', '月', '光', '，', '疑', '是']
    words, chars = (T.load(T.bpe_spec(T.train_bpe([text], 2000, pat), pat)) for pat in (T.PAT, T.PAT_HAN_CHARS))
    pieces = [chars.decode([t]) for t in chars.encode(text)]
    assert ''.join(pieces) == text and '明' in pieces and '月' in pieces
    assert all(len(p) == 1 for p in pieces if re.fullmatch(f'[{T.HAN}]+', p))  # each Chinese token: one character
    assert '床前明月光' in [words.decode([t]) for t in words.encode(text)]  # PAT merges runs into words


def test_split_examples():
    split = re.compile(T.PAT).findall
    assert split("don't stop") == ['don', "'t", ' stop']
    assert split('12345') == ['123', '45']
    assert split('床前明月光，疑是') == ['床前明月光', '，', '疑是']  # Chinese runs, punctuation apart
    assert split('a   b') == ['a', '  ', ' b']  # the last space goes with the next word
    assert split('I 👨\u200d👩\u200d👧!') == ['I', ' 👨\u200d👩\u200d👧!']  # a ZWJ emoji stays whole
    assert split('hi\n\nyou') == ['hi', '\n\n', 'you']


def test_merges_on_hand_example():
    # "aaabdaaabac": pairs aa x4 (overlapping), ab x2 ... -> merge aa; then (aa,a) and (a,b)
    # tie at 2 and the lower ids win -> ab; then (aa,ab) occurs twice -> aaab.
    ranks = T.train_bpe(['aaabdaaabac'], 256 + 3 + len(T.SPECIALS), pat_str='[a-z]+')
    merged = sorted((r, t) for t, r in ranks.items() if r >= 256)
    assert merged == [(256, b'aa'), (257, b'ab'), (258, b'aaab')]


def naive_bpe(words_counts, n_merges):
    """Reference trainer: recount every pair before each merge (slow, obviously right)."""
    words = {w: (list(w.encode()), n) for w, n in words_counts.items()}
    tokens = [bytes([i]) for i in range(256)]
    ranks = {t: i for i, t in enumerate(tokens)}
    for _ in range(n_merges):
        stats = {}
        for ids, n in words.values():
            for p in zip(ids, ids[1:]):
                stats[p] = stats.get(p, 0) + n
        if not stats:
            break
        pair = min(stats, key=lambda p: (-stats[p], p))
        merged = tokens[pair[0]] + tokens[pair[1]]
        new = ranks.get(merged)
        if new is None:
            new = len(tokens)
            tokens.append(merged)
            ranks[merged] = new
        for w, (ids, n) in words.items():
            out, j = [], 0
            while j < len(ids):
                if j + 1 < len(ids) and (ids[j], ids[j + 1]) == pair:
                    out.append(new)
                    j += 2
                else:
                    out.append(ids[j])
                    j += 1
            words[w] = (out, n)
    return ranks


def test_incremental_counts_match_a_full_recount():
    rng = random.Random(0)
    # few letters, long repeats: overlapping pairs (aaa), repeated merges, ties
    words = [''.join(rng.choice('aab') for _ in range(rng.randint(2, 12))) for _ in range(300)]
    text = ' '.join(words)
    counts = {}
    for w in re.findall('[a-z]+', text):
        counts[w] = counts.get(w, 0) + 1
    for n_merges in (5, 40, 120):
        ours = T.train_bpe([text], 256 + n_merges + len(T.SPECIALS), pat_str='[a-z]+')
        assert ours == naive_bpe(counts, n_merges)


def test_vocab_size_too_small():
    with pytest.raises(ValueError, match='smaller than 256'):
        T.train_bpe(['hello'], 256)


@pytest.fixture(scope='module')
def small_bpe():
    text = (SAMPLES['english'] + SAMPLES['chinese'] + SAMPLES['mixed']) * 3
    ranks = T.train_bpe([text], 450)
    return T.bpe_spec(ranks)


def test_round_trip_and_specials(small_bpe, tmp_path):
    tok = T.load(small_bpe)
    assert tok.n_vocab == 450 and tok.eot == 447
    assert tok.special == {"<|endoftext|>": 447, "<|im_start|>": 448, "<|im_end|>": 449}
    unseen = 'Ünïcödé 𝔘𝔫𝔦 😀 カタカナ 🇯🇵 \x00\x01 tab\there'
    for text in list(SAMPLES.values()) + [unseen]:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert max(ids) < 447  # ordinary text never yields a special id
    chat = '<|im_start|>user\n床前明月光<|im_end|><|endoftext|>'
    assert not set(tok.encode(chat)) & set(tok.special.values())  # the strings stay plain text
    assert tok.decode(tok.encode(chat)) == chat
    ids = tok.encode_special(chat)
    assert ids[0] == 448 and ids[-2:] == [449, 447] and tok.decode(ids) == chat


def save_bpe(spec, folder):
    """The files of a bpe, as prepare.py writes them (atomically; here plainly)."""
    folder.mkdir(parents=True, exist_ok=True)
    stored, files = T.bpe_files(spec)
    for name, text in files.items():
        (folder / name).write_text(text, encoding='utf-8')
    return stored


def test_save_load_and_portable_spec(small_bpe, tmp_path):
    stored = save_bpe(small_bpe, tmp_path / 'tok')
    lines = (tmp_path / 'tok' / 'tokenizer.tiktoken').read_text().splitlines()
    assert len(lines) == 447 and lines[65] == 'QQ== 65'  # tiktoken's "base64(bytes) rank" lines
    assert stored['ranks_file'] == 'tokenizer.tiktoken' and 'ranks' not in stored
    spec = T.read_spec(tmp_path / 'tok')
    assert spec == small_bpe
    # portable: plain JSON data that loads with no files around
    port = T.portable_spec({'tokenizer': stored}, base_dir=tmp_path / 'tok')
    shutil.rmtree(tmp_path / 'tok')
    port = json.loads(json.dumps(port))
    text = SAMPLES['chinese']
    assert T.load(port).encode(text) == T.load(small_bpe).encode(text)


def test_char_tokenizer():
    tok = T.load({'kind': 'char', 'chars': '\n abc明'})
    assert tok.n_vocab == 7 and tok.eot == 6 and tok.special == {'<|endoftext|>': 6}
    assert tok.encode('ab 明\n') == [2, 3, 1, 5, 0]
    assert tok.decode(tok.encode_special('a<|endoftext|>b')) == 'a<|endoftext|>b'
    assert tok.encode_special('a<|endoftext|>b') == [2, 6, 3]
    with pytest.raises(ValueError, match=r"^character\(s\) 'z' 'é' not in this char vocabulary"):
        tok.encode('abzéz')  # sample.py passes prompts through this: name every unseen character


def test_o200k_if_available():
    try:
        tok = T.load({'kind': 'tiktoken', 'name': 'o200k_base'})
    except Exception:
        pytest.skip('o200k_base is not cached here and there is no network')
    assert tok.n_vocab > 65535 and tok.decode(tok.encode('你好 world')) == '你好 world'


def test_tang_bpe_beats_gpt2_and_cl100k():
    """The issue's check: an 8,192-token bpe trained on the Tang poems compresses them at
    least 2x better than gpt2 and better than cl100k_base (bytes per token)."""
    path = SHARED / 'tang-poems.jsonl'
    cache = SHARED / 'tiktoken_cache'
    if not path.exists() or not cache.exists():
        pytest.skip('needs ../shared/data (tang-poems.jsonl and tiktoken_cache)')
    os.environ.setdefault('TIKTOKEN_CACHE_DIR', str(cache))
    texts = [json.loads(line)['text'] for line in path.open(encoding='utf-8')]
    nbytes = sum(len(t.encode()) for t in texts)

    def bpt(tok):
        return nbytes / sum(len(tok.encode(t)) for t in texts)
    ours = bpt(T.load(T.bpe_spec(T.train_bpe(texts, 8192))))
    gpt2 = bpt(T.load({'kind': 'tiktoken', 'name': 'gpt2'}))
    cl100k = bpt(T.load({'kind': 'tiktoken', 'name': 'cl100k_base'}))
    assert ours >= 2 * gpt2 and ours > cl100k, (ours, gpt2, cl100k)


def test_offline_without_cache_is_one_clear_error(tmp_path, monkeypatch):
    """No network and no cached GPT-2 BPE: one ValueError line, not requests' HTTPSConnectionPool(...).
    Nothing reaches the network: the download is replaced by one that fails."""
    import requests
    import tiktoken.load
    import tiktoken.registry
    tried = []

    def offline(url, *a, **k):
        tried.append(url)
        raise requests.ConnectionError(f"HTTPSConnectionPool(host='x', port=443): Max retries exceeded with url: {url}")
    monkeypatch.setattr(tiktoken.load, 'read_file', offline)
    monkeypatch.setattr(requests, 'get', offline)  # belt and braces
    monkeypatch.setattr(tiktoken.registry, 'ENCODINGS', {})  # forget encodings loaded by other tests
    monkeypatch.setenv('TIKTOKEN_CACHE_DIR', str(tmp_path))  # an empty cache
    with pytest.raises(ValueError) as e:
        T.load({'kind': 'tiktoken', 'name': 'gpt2'})
    msg = str(e.value)
    assert tried and '\n' not in msg and 'HTTPSConnectionPool' not in msg
    for w in ("tiktoken's 'gpt2' BPE", 'no network', 'TIKTOKEN_CACHE_DIR', str(tmp_path)):
        assert w in msg, (w, msg)
    with pytest.raises(ValueError, match="unknown tiktoken encoding 'gpt3'"):
        T.load({'kind': 'tiktoken', 'name': 'gpt3'})


@pytest.fixture
def saved_bpe(tmp_path):
    ranks = T.train_bpe([SAMPLES['english'] * 3], 300)
    save_bpe(T.bpe_spec(ranks), tmp_path / 'tok')
    return tmp_path / 'tok'


@pytest.mark.parametrize('damage,words', [
    ('missing', ['no tokenizer at']),
    ('empty folder', ['no tokenizer at', 'tokenizer.json']),
    ('garbage ranks', ['tokenizer.tiktoken', 'line 2', 'base64-token rank']),
    ('ranks without single bytes', ['tokenizer.tiktoken', 'not a byte-level BPE']),
    ('ranks file gone', ['tokenizer.json is not a usable tokenizer', 'tokenizer.tiktoken']),
    ('json not json', ['tokenizer.json is not a usable tokenizer']),
    ('json of something else', ['not the tokenizer.json of a bpe']),
])
def test_damaged_saved_tokenizer_is_one_value_error(saved_bpe, damage, words):
    d = saved_bpe
    if damage == 'missing':
        d = d.parent / 'nope'
    elif damage == 'empty folder':
        shutil.rmtree(d)
        d.mkdir()
    elif damage == 'garbage ranks':
        (d / 'tokenizer.tiktoken').write_text('QQ== 65\nnot base64!! x\n')
    elif damage == 'ranks without single bytes':
        (d / 'tokenizer.tiktoken').write_text('QQ== 0\n')
    elif damage == 'ranks file gone':
        (d / 'tokenizer.tiktoken').unlink()
    elif damage == 'json not json':
        (d / 'tokenizer.json').write_text('{"kind": "bpe",')
    else:
        (d / 'tokenizer.json').write_text('{"kind": "char", "chars": "ab"}')
    with pytest.raises(ValueError) as e:
        T.read_spec(d)
    msg = str(e.value)
    assert '\n' not in msg
    for w in words:
        assert w in msg, (w, msg)
