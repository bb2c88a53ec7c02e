"""
SentencePiece-style BPE as Hugging Face's tokenizer.json writes it (Llama 2, TinyLlama, Mistral):
spaces become '▁', a '▁' goes before the text, characters missing from the vocabulary fall back
to byte tokens <0x00>..<0xFF>, and pieces merge pair by pair, the pair listed first in `merges`
first. tiktoken cannot do this (its BPE runs over bytes, never over characters with a byte
fallback), so this is our own small encoder, written to give the ids the tokenizers package gives.

    spec = {'kind': 'sp', 'json': <the text of tokenizer.json>, 'eot': '</s>', 'bos': '<s>'}
    tok = tokenizer.load(spec)   # tokenizer.py hands 'sp' specs to load() here

'special' in the spec adds tokens the file does not have ({name: id}, e.g. the chat tokens that
finetune_sft.py adds); hf.tokenizer_files writes them into tokenizer.json's added_tokens.

The spec keeps tokenizer.json whole, so a checkpoint carries it and export writes it back unchanged.
What this file reads in tokenizer.json, and refuses anything else in (a ValueError naming the field):
  model          BPE: vocab, merges, byte_fallback, unk_token, fuse_unk, ignore_merges
  normalizer     none, or Prepend / Replace (plain strings) / NFC..NFKD, alone or in a Sequence
  pre_tokenizer  none, or Metaspace (prepend_scheme always / first / never, split true / false)
  decoder        Metaspace, or a Sequence of Replace, ByteFallback, Fuse, Strip
  added_tokens   matched in the raw text by encode_special (never by encode), longest first
Encoding speed (pure Python, with a cache of pieces between '▁'s): see notes/tokenizers.md.
"""
import heapq
import json
import re
import unicodedata
from types import SimpleNamespace

SPACE = '\u2581'  # '▁', SentencePiece's stand-in for a space


def _fail(field, value, why):
    raise ValueError(f"tokenizer.json: {field}={json.dumps(value)[:80]} {why}; refused rather than approximated")


def _steps(node, field):
    """A normalizer / pre_tokenizer / decoder node -> the list of its steps (a Sequence's, or itself)."""
    if not node:
        return []
    key = {'normalizer': 'normalizers', 'pre_tokenizer': 'pretokenizers', 'decoder': 'decoders'}[field]
    return node.get(key, []) if node.get('type') == 'Sequence' else [node]


def _normalizer(node):
    """-> normalize(segment) for the steps we reproduce exactly."""
    fns = []
    for s in _steps(node, 'normalizer'):
        t = s.get('type')
        if t == 'Prepend':  # unconditional, but only on a non-empty segment (Llama 2's legacy form)
            fns.append(lambda x, p=s['prepend']: p + x if x else x)
        elif t == 'Replace' and 'String' in s.get('pattern', {}):
            fns.append(lambda x, a=s['pattern']['String'], b=s['content']: x.replace(a, b))
        elif t in ('NFC', 'NFD', 'NFKC', 'NFKD'):
            fns.append(lambda x, f=t: unicodedata.normalize(f, x))
        else:
            _fail('normalizer', s, 'is not one we reproduce (Prepend, Replace of a string, NFC/NFD/NFKC/NFKD)')

    def normalize(x):
        for f in fns:
            x = f(x)
        return x
    return normalize


def _metaspace(node):
    """-> (prepend scheme, split) of a Metaspace pre-tokenizer, or (None, False) without one."""
    steps = _steps(node, 'pre_tokenizer')
    if not steps:
        return None, False
    s = steps[0]
    if len(steps) > 1 or s.get('type') != 'Metaspace' or s.get('replacement', SPACE) != SPACE:
        _fail('pre_tokenizer', node, "is not a Metaspace('▁') alone (a byte-level one goes to tiktoken instead)")
    # older files say add_prefix_space instead of prepend_scheme
    scheme = s.get('prepend_scheme') or ('always' if s.get('add_prefix_space', True) else 'never')
    if scheme not in ('always', 'first', 'never'):
        _fail('pre_tokenizer.prepend_scheme', scheme, 'is not always, first or never')
    return scheme, bool(s.get('split', True))


def _decoder(node):
    """-> decode(list of token strings) -> str, step by step as the tokenizers package chains them."""
    steps = _steps(node, 'decoder')
    for s in steps:
        t = s.get('type')
        ok = (t in ('ByteFallback', 'Fuse') or t == 'Replace' and 'String' in s.get('pattern', {})
              or t == 'Strip' or t == 'Metaspace' and s.get('replacement', SPACE) == SPACE)
        if not ok:
            _fail('decoder', s, 'is not one we reproduce (Metaspace, Replace, ByteFallback, Fuse, Strip)')

    def byte_fallback(toks):
        out, run = [], []  # run: the bytes of consecutive <0xNN> tokens, decoded together
        for t in toks + [None]:
            if t is not None and len(t) == 6 and t.startswith('<0x') and t.endswith('>'):
                try:
                    run.append(int(t[3:5], 16))
                    continue
                except ValueError:
                    pass
            if run:
                try:
                    out.append(bytes(run).decode('utf-8'))
                except UnicodeDecodeError:  # as tokenizers: one U+FFFD per byte of a broken run
                    out.append('\ufffd' * len(run))
                run = []
            if t is not None:
                out.append(t)
        return out

    def strip(toks, c, start, stop):
        out = []
        for t in toks:
            a = 0
            while a < start and a < len(t) and t[a] == c:
                a += 1
            b = len(t)
            while len(t) - b < stop and b > a and t[b - 1] == c:
                b -= 1
            out.append(t[a:b])
        return out

    def decode(toks):
        for s in steps:
            t = s['type']
            if t == 'Replace':
                toks = [x.replace(s['pattern']['String'], s['content']) for x in toks]
            elif t == 'ByteFallback':
                toks = byte_fallback(toks)
            elif t == 'Fuse':
                toks = [''.join(toks)]
            elif t == 'Strip':
                toks = strip(toks, s['content'], s.get('start', 0), s.get('stop', 0))
            else:  # Metaspace: '▁' -> ' ', except in the first token when a '▁' was put before the text
                first = (s.get('prepend_scheme') or ('always' if s.get('add_prefix_space', True) else 'never')) != 'never'
                toks = [x.replace(SPACE, '' if i == 0 and first else ' ') for i, x in enumerate(toks)]
        return ''.join(toks)
    return decode


def _bpe_model(m):
    """tokenizer.json's model -> a plain record of what encoding needs: vocab (piece -> id), merges
    ((left id, right id) -> (rank, id of the merged piece); rank = place in the list), byte_ids
    (the ids of <0x00>..<0xFF>, or None without byte fallback), unk, fuse_unk, ignore_merges."""
    if m.get('type') != 'BPE':
        _fail('model.type', m.get('type'), 'is not supported (BPE only: not Unigram, WordPiece, WordLevel)')
    for key in ('continuing_subword_prefix', 'end_of_word_suffix', 'dropout'):
        if m.get(key):
            _fail(f'model.{key}', m[key], 'is not supported')
    vocab = m['vocab']
    merges = {}
    for rank, pair in enumerate(m.get('merges', [])):
        a, b = pair.split(' ', 1) if isinstance(pair, str) else pair
        if a not in vocab or b not in vocab or a + b not in vocab:
            _fail('model.merges', pair, 'names a piece that is not in the vocab')
        merges.setdefault((vocab[a], vocab[b]), (rank, vocab[a + b]))
    byte_ids = None
    if m.get('byte_fallback'):
        byte_ids = [vocab.get(f'<0x{b:02X}>') for b in range(256)]
        if None in byte_ids:
            _fail('model.byte_fallback', True, f'but the vocab lacks <0x{byte_ids.index(None):02X}>')
    unk = vocab.get(m.get('unk_token')) if m.get('unk_token') else None
    return SimpleNamespace(vocab=vocab, merges=merges, byte_ids=byte_ids, unk=unk,
                           fuse_unk=bool(m.get('fuse_unk')), ignore_merges=bool(m.get('ignore_merges')))


def _added_tokens(tj, spec, vocab):
    """-> {content: id} of the file's added_tokens and the spec's 'special' ones."""
    added = {}
    for a in tj.get('added_tokens') or []:
        for key in ('lstrip', 'rstrip', 'single_word', 'normalized'):
            if a.get(key):
                _fail(f'added_tokens[{a["content"]!r}].{key}', True, 'is not supported')
        added[a['content']] = a['id']
    extra = spec.get('special') or {}  # tokens added after the file, e.g. finetune_sft.py's <|im_start|>, <|im_end|>
    if any(not isinstance(i, int) or i in added.values() or i < len(vocab) for i in extra.values()):
        raise ValueError(f"sp tokenizer spec: 'special' must give new tokens ids of their own above the vocab: {str(extra)[:80]}")
    added.update(extra)
    return added


def _symbols(word, m):
    """A word -> the ids of its characters (unknown ones as bytes, or unk)."""
    vocab, byte_ids, ids, last_unk = m.vocab, m.byte_ids, [], False
    for ch in word:
        i = vocab.get(ch)
        if i is not None:
            ids.append(i)
        elif byte_ids is not None:
            ids += [byte_ids[b] for b in ch.encode('utf-8')]
        elif m.unk is None:
            raise ValueError(f"sp tokenizer: character {ch!r} is not in the vocab and there is no unk_token")
        elif not (m.fuse_unk and last_unk):
            ids.append(m.unk)
        last_unk = i is None and byte_ids is None
    return ids


def _bpe(word, m):
    """Merge the lowest-ranked adjacent pair until none is left (ties: leftmost first), with a
    linked list over the symbols and a heap of candidate merges, checked when popped."""
    if m.ignore_merges and word in m.vocab:
        return [m.vocab[word]]
    merges = m.merges
    sym = _symbols(word, m)
    n = len(sym)
    nxt, prv = list(range(1, n + 1)), list(range(-1, n - 1))
    heap = [(merges[p][0], k, merges[p][1]) for k, p in enumerate(zip(sym, sym[1:])) if p in merges]
    heapq.heapify(heap)
    while heap:
        _, k, new = heapq.heappop(heap)
        j = nxt[k]
        if sym[k] is None or j >= n or merges.get((sym[k], sym[j]), (0, None))[1] != new:
            continue  # stale: one of the two was merged away since this was pushed
        sym[k], sym[j] = new, None
        nxt[k] = nxt[j]
        if nxt[k] < n:
            prv[nxt[k]] = k
        for a, b in ((prv[k], k), (k, nxt[k])):
            if a >= 0 and b < n and (sym[a], sym[b]) in merges:
                r, t = merges[sym[a], sym[b]]
                heapq.heappush(heap, (r, a, t))
    return [s for s in sym if s is not None]


def _segment_encoder(m, normalize, scheme, split):
    """-> encode_segment(seg, at_start) for one stretch of text between added tokens: normalize,
    put '▁' for spaces, then BPE word by word."""
    # Where the text may be cut into independent words: before a '▁' that no merged piece joins to
    # the character before it. No merge can cross such a cut, so BPE on the words one by one gives
    # what it gives on the whole text, and words repeat, so a cache makes encoding fast.
    joined = {(s[k], s[k + 1]) for s in m.vocab for k in range(len(s) - 1)}
    cut = re.compile(f'(?<=[^{SPACE}])(?={SPACE})')  # before the first '▁' of a run
    cache = {}

    def encode_segment(seg, at_start):
        seg = normalize(seg)
        if not seg:  # nothing to put a '▁' before
            return []
        if scheme is not None:
            seg = seg.replace(' ', SPACE)
            if (scheme == 'always' or scheme == 'first' and at_start) and not seg.startswith(SPACE):
                seg = SPACE + seg
        if split:  # Metaspace(split=True): every '▁' starts a new piece
            words = [w for w in re.split(f'(?={SPACE})', seg) if w]
        else:
            words = []
            for w in cut.split(seg):
                if words and (words[-1][-1], w[0]) in joined:
                    words[-1] += w  # a merged piece joins these two: keep them together
                else:
                    words.append(w)
        ids = []
        for w in words:
            got = cache.get(w)
            if got is None:
                got = _bpe(w, m)
                if len(w) < 64:
                    if len(cache) > 200_000:
                        cache.clear()
                    cache[w] = got
            ids += got
        return ids
    return encode_segment


def load(spec):
    """An 'sp' spec -> tok with encode / encode_special / decode / n_vocab / eot / special / bos."""
    try:
        tj = json.loads(spec['json'])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"sp tokenizer spec: its 'json' is not the text of a tokenizer.json ({e})") from None
    m = _bpe_model(tj.get('model') or {})
    added = _added_tokens(tj, spec, m.vocab)
    normalize = _normalizer(tj.get('normalizer'))
    scheme, split = _metaspace(tj.get('pre_tokenizer'))
    decode_chain = _decoder(tj.get('decoder'))
    pieces = {i: s for s, i in m.vocab.items()}
    pieces.update({i: s for s, i in added.items()})
    n_vocab = max(pieces) + 1
    eot = spec.get('eot', '</s>')
    if eot not in added:
        raise ValueError(f"sp tokenizer spec: its end-of-text token {eot!r} is not one of its added tokens")
    encode_segment = _segment_encoder(m, normalize, scheme, split)
    special_re = re.compile('|'.join(re.escape(s) for s in sorted(added, key=len, reverse=True))) if added else None

    def encode_special(text):
        ids, pos = [], 0
        for mt in special_re.finditer(text) if special_re else []:
            ids += encode_segment(text[pos:mt.start()], pos == 0)
            ids.append(added[mt.group()])
            pos = mt.end()
        return ids + encode_segment(text[pos:], pos == 0)

    def decode(ids):
        return decode_chain([pieces.get(i, '') for i in ids])

    def token_bytes(i):
        """One token's bytes, as it reads in the middle of a text (sample.py streams with it)."""
        s = pieces.get(i, '')
        if m.byte_ids is not None and len(s) == 6 and s.startswith('<0x') and s.endswith('>'):
            return bytes([int(s[3:5], 16)])
        return s.replace(SPACE, ' ').encode('utf-8')

    return SimpleNamespace(kind='sp', n_vocab=n_vocab, eot=added[eot], special=dict(added),
                           bos=added.get(spec.get('bos')), encode=lambda text: encode_segment(text, True),
                           encode_special=encode_special, decode=decode, token_bytes=token_bytes)
