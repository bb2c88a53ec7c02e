"""
Tokenizers for nanolm: tiktoken's (gpt2, cl100k_base, o200k_base), a character-level one,
and a byte-level BPE that we train on our own corpus and then run through tiktoken.
A library: it imports nothing of nanolm's, and bad specs or files raise one-line ValueErrors
that the scripts print. prepare.py trains a bpe, writes its files and reads meta.json:

    python prepare.py mytok --input 'corpus/**/*.txt' --vocab_size=8192 --tokenizer_only
    python prepare.py mydata --input more.jsonl --tokenizer=data/mytok

In code:

    import tokenizer
    tok = tokenizer.load({'kind': 'tiktoken', 'name': 'gpt2'})   # or dataset.load_meta(ds_dir)
    ids = tok.encode('hello')            # ordinary text: never produces special ids
    ids = tok.encode_special('<|im_start|>user\nhi<|im_end|>')   # chat specials allowed
    text = tok.decode(ids)

A tokenizer is described by a small JSON "spec" dict, stored in data/<name>/meta.json:
    {"kind": "tiktoken", "name": "gpt2"}
    {"kind": "tiktoken", "name": "gpt2", "extra_special": {"<|im_start|>": 50257, "<|im_end|>": 50258}}
    {"kind": "char", "chars": "\\n !&',-.3:;?ABC..."}    # id i is chars[i]; eot = len(chars)
    {"kind": "bpe", "name": ..., "pat_str": ..., "special": {...}, "ranks_file": "tokenizer.tiktoken"}
    {"kind": "sp", "json": "<a tokenizer.json's text>", "eot": "</s>", "bos": "<s>"}   # Llama 2 style: sp_tokenizer.py
portable_spec() inlines the ranks file ("ranks": its text) so a checkpoint can carry it.
"""
import base64
import codecs
import heapq
import json
import os
import re
import sys
import unicodedata
from collections import Counter, defaultdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import tiktoken

EOT = '<|endoftext|>'
SPECIALS = [EOT, '<|im_start|>', '<|im_end|>']  # reserved at the top of every bpe vocab

# -----------------------------------------------------------------------------
# The pre-split pattern. BPE never merges across the pieces this regex cuts text into.
# Training splits with Python's `re`, encoding with tiktoken's Rust regex; the two must cut
# identically, so we avoid \w, \s and \p{..} (their meaning differs between the engines and
# Python's re has no \p{L}) and write every class as explicit code-point ranges. Code points
# fall into five classes: SPACE, DIGIT, HAN (Chinese characters), PUNCT (punctuation,
# symbols, emoji, controls) and "letter" = everything else. That last one is a
# simplification: Greek, Cyrillic, Arabic, Devanagari (with its combining marks), kana,
# hangul ... all count as letters, and so do a few rare symbols we did not list.
# Ranges of ASCII use regex escapes (\x21); others are the literal characters.
SPACE = r'\t\n\x0b\x0c\r\x20' + '\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000'
HSPACE = r'\t\x0b\x0c\x20' + '\xa0\u1680\u2000-\u200a\u202f\u205f\u3000'  # SPACE minus line breaks
DIGIT = r'0-9' + '\uff10-\uff19'  # ASCII and fullwidth digits
HAN = '\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f'  # CJK ideographs
PUNCT = (r'\x00-\x08\x0e-\x1f\x21-\x2f\x3a-\x40\x5b-\x60\x7b-\x84' +  # ASCII punct, controls
         '\x86-\x9f\xa1-\xbf\xd7\xf7'  # C1 controls, Latin-1 punctuation, × ÷
         '\u200b-\u200f\u2010-\u2027\u202a-\u202e\u2030-\u205e\u2060-\u2bff'  # punct, arrows, math..
         '\u2e00-\u2e7f\u3001-\u303f'  # more punctuation, CJK punctuation 、。「」
         '\ufe00-\ufe6f\uff01-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff65\ufff0-\uffff'  # fullwidth ，
         '\U0001f000-\U0001faff\U000e0000-\U000e007f\U000e0100-\U000e01ef')  # emoji, tags, selectors
LETTER = f'[^{SPACE}{DIGIT}{HAN}{PUNCT}]'

PAT = '|'.join([
    r"'(?:[sdmtSDMT]|ll|ve|re|LL|VE|RE)",  # English contractions: 's 't 're 've 'm 'll 'd
    f"[{HSPACE}{PUNCT}]?{LETTER}+",  # a word, with one leading space or punctuation mark
    f"[{HAN}]+",  # a run of Chinese characters: BPE learns words like 明月 inside it
    f"[{DIGIT}]{{1,3}}",  # numbers in groups of up to three digits
    f"[{HSPACE}]?[{PUNCT}]+[\\r\\n]*",  # punctuation / emoji run, e.g. ' --' or '。\n'
    f"[{SPACE}]*[\\r\\n]+",  # line breaks, with the spaces before them
    f"[{SPACE}]+(?![^{SPACE}])",  # spaces, leaving the last one to the next word
    f"[{SPACE}]+",
])
# prepare.py --han_chars: every Chinese character a piece of its own, so BPE merges a character's
# bytes into one token but never characters into words. For text whose form is counted in
# characters (a Tang poem's lines are 5 or 7 of them): a small model learns to count tokens far
# more easily than to add up the lengths of words. ~1.2x the tokens of PAT on the poems.
PAT_HAN_CHARS = PAT.replace(f"[{HAN}]+", f"[{HAN}]")


# -----------------------------------------------------------------------------
# BPE training

def train_bpe(texts, vocab_size, pat_str=PAT, n_special=len(SPECIALS), max_bytes=None, progress=None):
    """Learn byte-level BPE merges. texts: iterable of str. Returns ranks {token bytes: id},
    ids 0..255 are the single bytes, then one id per merge in the order learned; n_special
    ids are left free at the top for the special tokens. max_bytes: stop reading texts there.
    progress: called now and then with a one-line status (prepare.py passes cli.progress).
    1) split every text with pat_str and count the unique pieces (words);
    2) repeatedly merge the most frequent adjacent pair, updating pair counts only in the
       words that contain it (index pair -> words, and a lazy max-heap of counts)."""
    n_merges = vocab_size - 256 - n_special
    if n_merges < 0:
        raise ValueError(f'vocab_size {vocab_size} is smaller than 256 bytes + {n_special} special tokens')
    words, freq = _count_words(texts, pat_str, max_bytes)
    stats = defaultdict(int)  # (a, b) -> number of times the pair occurs in the corpus
    where = defaultdict(set)  # (a, b) -> indices of words that contain it (may be stale)
    for i, w in enumerate(words):
        for p in zip(w, w[1:]):
            stats[p] += freq[i]
            where[p].add(i)
    heap = [(-c, p) for p, c in stats.items()]
    heapq.heapify(heap)
    tokens = [bytes([i]) for i in range(256)]  # id -> bytes
    ranks = {t: i for i, t in enumerate(tokens)}
    n_done = 0
    while n_done < n_merges and heap:
        negc, pair = heapq.heappop(heap)
        c = stats.get(pair, 0)
        if c != -negc:  # stale entry: the count dropped since it was pushed
            if c > 0:
                heapq.heappush(heap, (-c, pair))
            continue
        merged = tokens[pair[0]] + tokens[pair[1]]
        new = ranks.get(merged)
        if new is None:  # (ab)c and a(bc) make the same bytes: keep one id for them
            new = len(tokens)
            tokens.append(merged)
            ranks[merged] = new
        n_done += 1
        touched = set()  # pairs with the new token, whose counts went up
        for i in where.pop(pair):
            _merge_in_word(words, i, freq[i], pair, new, stats, where, touched)
        del stats[pair]
        for p in touched:
            heapq.heappush(heap, (-stats[p], p))
        if progress and n_done % 100 == 0:
            progress(f'bpe: {n_done:,}/{n_merges:,} merges')
    return ranks


def _count_words(texts, pat_str, max_bytes):
    """-> (words as lists of byte ids, how often each occurs) over the pieces pat_str cuts texts into."""
    split = re.compile(pat_str).findall
    counts = Counter()
    nbytes = 0
    for text in texts:
        counts.update(split(text))
        nbytes += len(text)  # characters, a cheap stand-in for bytes
        if max_bytes and nbytes >= max_bytes:
            break
    words, freq = [], []
    for w, n in counts.items():
        b = w.encode('utf-8', 'replace')
        if len(b) > 1:  # a single byte has no pair to merge
            words.append(list(b))
            freq.append(n)
    return words, freq


def _merge_in_word(words, i, f, pair, new, stats, where, touched):
    """Rewrite words[i] (occurring f times) with each a,b of pair merged into new, left to right.
    Only the pairs at the edges of a merged occurrence change: (x,a) -> (x,new), (b,y) -> (new,y)."""
    a, b = pair
    w = words[i]
    n, j, out = len(w), 0, []
    while True:
        try:
            k = w.index(a, j)  # the search runs in C
        except ValueError:
            break
        if k + 1 == n or w[k + 1] != b:
            out += w[j:k + 1]
            j = k + 1
            continue
        out += w[j:k]
        if out:  # left edge; out[-1] is new itself when the last merge was just before
            stats[w[k - 1], a] -= f
            p = (out[-1], new)
            stats[p] += f
            where[p].add(i)
            touched.add(p)
        out.append(new)
        j = k + 2
        # right edge, unless another a,b starts there (its left edge covers it)
        if j < n and not (j + 1 < n and w[j] == a and w[j + 1] == b):
            stats[b, w[j]] -= f
            p = (new, w[j])
            stats[p] += f
            where[p].add(i)
            touched.add(p)
    if j:  # (j == 0: stale, this word no longer contains the pair)
        words[i] = out + w[j:]


def ranks_to_text(ranks):
    """tiktoken's .tiktoken format: one 'base64(token bytes) rank' a line, by rank."""
    return ''.join(f'{base64.b64encode(t).decode()} {r}\n' for t, r in sorted(ranks.items(), key=lambda x: x[1]))


def ranks_from_text(text, where='the ranks'):
    """Parse the .tiktoken format; a file that is not one fails with a ValueError naming the line."""
    ranks = {}
    for i, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                tok, rank = line.split()
                ranks[base64.b64decode(tok, validate=True)] = int(rank)
            except ValueError:  # also binascii.Error
                raise ValueError(f"{where}: line {i} is not 'base64-token rank' "
                                 f"(a .tiktoken file made by prepare.py?): {line[:40]!r}") from None
    if not all(bytes([b]) in ranks for b in range(256)) or len(set(ranks.values())) != len(ranks):
        raise ValueError(f'{where}: not a byte-level BPE (it needs all 256 single bytes and distinct ranks)')
    return ranks


def bpe_spec(ranks, pat_str=PAT, name='nanolm-bpe'):
    """A self-contained spec for a freshly trained BPE (ranks inlined)."""
    n = len(ranks)
    return {'kind': 'bpe', 'name': name, 'pat_str': pat_str,
            'special': {s: n + i for i, s in enumerate(SPECIALS)}, 'ranks': ranks_to_text(ranks)}


RANKS_FILE = 'tokenizer.tiktoken'


def bpe_files(spec):
    """A bpe spec with its ranks inlined -> (the spec as stored, naming its ranks file, and
    {file name: text} of the two files that hold it: the ranks and tokenizer.json, the rest).
    read_spec() reads such a folder back; prepare.py writes it."""
    stored = {k: v for k, v in spec.items() if k != 'ranks'}
    stored['ranks_file'] = RANKS_FILE
    return stored, {RANKS_FILE: spec['ranks'], 'tokenizer.json': json.dumps(stored, indent=1)}


# -----------------------------------------------------------------------------
# Loading: spec -> tok with encode / encode_special / decode / n_vocab / eot / special

def load(spec, base_dir=None):
    """spec -> tok. A spec or ranks file that is not what we wrote raises a one-line ValueError.
    tok.chat: the chat format the model was trained with (chat_data.py), the spec's 'chat' or 'chatml';
    tok.bos: the id of the token every text begins with (Llama 2 / 3 add one), or None."""
    tok = _load(spec, base_dir)
    tok.chat = spec.get('chat', 'chatml')
    if getattr(tok, 'bos', None) is None:  # tok.bos: the id every text begins with (Llama 2 / 3), else None
        tok.bos = tok.special.get(spec['bos']) if isinstance(spec.get('bos'), str) else None
    return tok


def _load(spec, base_dir=None):
    need = {'tiktoken': ('name',), 'bpe': ('pat_str', 'special'), 'char': ('chars',), 'sp': ('json',)}
    kind = spec.get('kind') if isinstance(spec, dict) else None
    if kind not in need:
        raise ValueError(f'not a tokenizer spec (its kind should be one of {", ".join(need)}): {str(spec)[:80]}')
    missing = [k for k in need[kind] + (() if kind != 'bpe' or 'ranks' in spec else ('ranks_file',)) if k not in spec]
    if missing:
        raise ValueError(f'{kind} tokenizer spec without {", ".join(missing)}')
    if kind == 'sp':  # SentencePiece-style BPE from a Hugging Face tokenizer.json: our own encoder
        import sp_tokenizer
        return sp_tokenizer.load(spec)
    if kind == 'tiktoken':
        enc = _get_encoding(spec['name'])
        if spec.get('extra_special'):  # e.g. chat tokens that finetune_sft.py added after gpt2's 50,257
            extra = spec['extra_special']
            if not isinstance(extra, dict) or any(not isinstance(i, int) or i < enc.n_vocab for i in extra.values()):
                raise ValueError(f"tokenizer spec: extra_special must map names to new ids from {enc.n_vocab} up: {str(extra)[:80]}")
            enc = tiktoken.Encoding(f"{spec['name']}+{len(extra)}", pat_str=enc._pat_str, mergeable_ranks=enc._mergeable_ranks,
                                    special_tokens={**enc._special_tokens, **extra})
        return _wrap_tiktoken(enc)
    if kind == 'bpe':
        if 'ranks' in spec:
            ranks = ranks_from_text(spec['ranks'])
        else:
            path = Path(base_dir or '.') / spec['ranks_file']
            ranks = ranks_from_text(path.read_text(encoding='utf-8', errors='replace'), where=str(path))
        try:
            enc = tiktoken.Encoding(spec.get('name', 'nanolm-bpe'), pat_str=spec['pat_str'],
                                    mergeable_ranks=ranks, special_tokens=spec['special'])
        except Exception as e:  # e.g. a pat_str the regex engine rejects
            raise ValueError(f'bad bpe tokenizer spec: {e}') from None
        # Imported Hugging Face tokenizers may name another end-of-text token (Llama 3's
        # <|end_of_text|>) and NFC-normalize text first (Qwen2): 'eot' and 'normalize' in the spec.
        return _wrap_tiktoken(enc, spec.get('eot', EOT), spec.get('normalize'))
    return _char_tok(spec['chars'])


def _get_encoding(name):
    """tiktoken.get_encoding, failing with one line: its BPE files are downloaded on first use,
    and offline that surfaced as a long HTTPSConnectionPool(...) error from requests."""
    if name not in tiktoken.list_encoding_names():
        raise ValueError(f"unknown tiktoken encoding {name!r} (known: {', '.join(tiktoken.list_encoding_names())})")
    try:
        return tiktoken.get_encoding(name)
    except Exception as e:
        cache = os.environ.get('TIKTOKEN_CACHE_DIR')
        where = f'TIKTOKEN_CACHE_DIR={cache} does not hold them' if cache else 'TIKTOKEN_CACHE_DIR is not set'
        raise ValueError(f"could not load tiktoken's {name!r} BPE ({type(e).__name__}; no network?): download it "
                         f"once with network, or set TIKTOKEN_CACHE_DIR to a folder holding its cached files "
                         f"({where})") from e


def _wrap_tiktoken(enc, eot=EOT, normalize=None):
    special = {s: enc.encode_single_token(s) for s in enc.special_tokens_set}
    if eot not in special:
        raise ValueError(f'tokenizer spec: its end-of-text token {eot!r} is not one of its special tokens')
    norm = (lambda text: unicodedata.normalize(normalize, text)) if normalize else (lambda text: text)
    return SimpleNamespace(
        kind='tiktoken', enc=enc, n_vocab=enc.n_vocab, eot=special[eot], special=special,
        encode=lambda text: enc.encode_ordinary(norm(text)),  # special-token strings stay plain text
        encode_special=lambda text: enc.encode(norm(text), allowed_special='all'),
        decode=enc.decode)


def _char_tok(chars):
    """Character-level: id i is chars[i]; one extra id, len(chars), is <|endoftext|>, the
    document separator (it never appears in text, so it needs no character)."""
    eot = len(chars)
    # lookup table code point -> id (-1: not in the vocabulary); encode is one numpy gather
    cps = np.array([ord(c) for c in chars], dtype=np.int64)
    lut = np.full(int(cps.max(initial=0)) + 1, -1, dtype=np.int64)
    lut[cps] = np.arange(len(chars))

    def encode(text):
        cp = np.frombuffer(text.encode('utf-32-le', 'surrogatepass'), dtype=np.uint32).astype(np.int64)
        ids = lut[np.minimum(cp, len(lut) - 1)]
        bad = (ids < 0) | (cp >= len(lut))
        if bad.any():  # e.g. a prompt for sample.py with a letter the corpus never had
            unseen = sorted(set(chr(c) for c in cp[bad].tolist()))
            shown = ' '.join(repr(c) for c in unseen[:10]) + (f' and {len(unseen) - 10} more' if len(unseen) > 10 else '')
            raise ValueError(f'character(s) {shown} not in this char vocabulary (the {len(chars)} characters '
                             f'of the text it was prepared from)')
        return ids.tolist()

    def encode_special(text):
        ids = []
        for i, part in enumerate(text.split(EOT)):
            if i:
                ids.append(eot)
            ids += encode(part)
        return ids

    def decode(ids):
        return ''.join(chars[i] if i < eot else EOT for i in ids)

    return SimpleNamespace(kind='char', n_vocab=len(chars) + 1, eot=eot, special={EOT: eot},
                           encode=encode, encode_special=encode_special, decode=decode)


def portable_spec(src, base_dir=None):
    """A spec that needs no files, for a checkpoint. src: a spec, or a meta dict holding one; a bpe's
    ranks file is read from base_dir (the dataset folder)."""
    spec = dict(src.get('tokenizer', src))
    if spec['kind'] == 'bpe' and 'ranks' not in spec:
        spec['ranks'] = (Path(base_dir or '.') / spec.pop('ranks_file')).read_text(encoding='utf-8')
    return spec


def read_spec(path):
    """Spec of a saved bpe: a folder with tokenizer.json (and the ranks file it names), or that
    file itself. Returned with its ranks inlined."""
    p = Path(path)
    if p.is_dir():
        p = p / 'tokenizer.json'
    if not p.exists():
        raise ValueError(f'no tokenizer at {path} (expected a folder with tokenizer.json and '
                         f'tokenizer.tiktoken, made by prepare.py --tokenizer=bpe)')
    try:
        spec = json.loads(p.read_text(encoding='utf-8'))
        if not (isinstance(spec, dict) and spec.get('kind') == 'bpe' and ('ranks' in spec or 'ranks_file' in spec)):
            raise ValueError('not the tokenizer.json of a bpe')
        ranks_path = p.parent / spec.get('ranks_file', '')
        spec = portable_spec(spec, base_dir=p.parent)
    except (OSError, ValueError) as e:
        raise ValueError(f'{p} is not a usable tokenizer ({e})') from None
    ranks_from_text(spec['ranks'], where=str(ranks_path))  # check now, with a message naming the file
    load(spec)
    return spec


def text_decoder(tok):
    """-> feed(id): the text that token completes; feed() at the end: what is left. Each token is
    decoded once as it comes (decoding the whole reply again at every token costs time that grows
    with its length). A token can end inside a UTF-8 character: tiktoken's bytes go through an
    incremental UTF-8 decoder, which holds such a character back until its last byte arrives, so
    the pieces add up to exactly tok.decode(all ids). A char tokenizer's token is one character."""
    if tok.kind not in ('tiktoken', 'sp'):
        return lambda t=None: '' if t is None else tok.decode([t])
    utf8 = codecs.getincrementaldecoder('utf-8')(errors='replace')  # 'replace', as tiktoken's decode
    # SentencePiece-style (sp): a token's bytes with '▁' as a space, <0xNN> as its byte
    token_bytes = tok.token_bytes if tok.kind == 'sp' else tok.enc.decode_single_token_bytes
    return lambda t=None: utf8.decode(b'', final=True) if t is None else utf8.decode(token_bytes(t))


if __name__ == '__main__':  # a module: its command line moved into prepare.py
    sys.exit("error: tokenizer.py is a module, not a command. Train a bpe with: python prepare.py NAME --input FILES "
             "--tokenizer=bpe --vocab_size=8192 --tokenizer_only (see python prepare.py --help)")
