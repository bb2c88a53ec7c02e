"""
The chat templates, and the chat data of supervised fine-tuning. finetune_sft.py trains
with them and sample.py --chat talks with them, so a model is always spoken to as it was taught.

ChatML, one block per message; the model writes a reply after `<|im_start|>assistant\\n`
and ends it with `<|im_end|>`:

    <|im_start|>system\\n你是一位唐代诗人。<|im_end|>\\n
    <|im_start|>user\\n请以《春夜》为题，写一首诗。<|im_end|>\\n
    <|im_start|>assistant\\n（the poem）<|im_end|>\\n

Which variant is the tokenizer's: tok.chat, from its spec's 'chat' (hf.py recognizes a released
model's chat_template and stores it there; a fine-tuned checkpoint keeps its base's):
  chatml    the above (nanolm's own models, and any folder whose template we do not recognize)
  qwen2.5   ChatML, with "You are Qwen, created by Alibaba Cloud. ..." when there is no system turn
  qwen3     ChatML with thinking off: the reply is asked for after an empty
            `<think>\\n\\n</think>\\n\\n`, the last reply is written with one too, and earlier
            replies lose their <think> blocks (as Qwen3's template does with enable_thinking=False)

Records: chat ({"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]},
multi-turn) or Alpaca ({"instruction", "input" (optional), "output"}: the user says the
instruction, then a blank line and the input if there is one; the assistant says the output).
A .jsonl file holds one record a line, a .json file one JSON array of them.

The tokenized examples are cached like prepare.py's datasets, as flat files read through
np.memmap, per split: tokens (uint16/uint32), mask (uint8: 1 = a token the loss counts) and
offsets (int64: example i is tokens[offsets[i]:offsets[i+1]]), so a large corpus never sits in RAM.
"""
import hashlib
import json
import os
import random
import re
import time

import numpy as np

from cli import atomic_write, bad_line, die, progress, end_progress, read_jsonl

IM_START, IM_END = '<|im_start|>', '<|im_end|>'
FORMATS = ('chatml', 'qwen2.5', 'qwen3')
QWEN25_SYSTEM = 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.'
EMPTY_THINK = '<think>\n\n</think>\n\n'  # Qwen3 with thinking off: a closed, empty reasoning block
ROLES = ('system', 'user', 'assistant')
CACHE_VERSION = 1  # change it when the template or the cache files change: old caches are rebuilt

# ----------------------------------------------------------------------------- the template


def chat_ids(tok):
    """(id of <|im_start|>, id of <|im_end|>), or ValueError when the tokenizer has no such tokens."""
    missing = [s for s in (IM_START, IM_END) if s not in tok.special]
    if missing:
        raise ValueError(f"its {tok.kind} tokenizer has no {' and '.join(missing)} token")
    return tok.special[IM_START], tok.special[IM_END]


def chat_format(tok):
    fmt = getattr(tok, 'chat', 'chatml')
    if fmt not in FORMATS:
        raise ValueError(f"its tokenizer names the chat format {fmt!r}, which this nanolm does not know ({', '.join(FORMATS)})")
    if fmt == 'qwen3' and not {'<think>', '</think>'} <= set(tok.special):
        raise ValueError("its tokenizer has the qwen3 chat format but no <think> and </think> tokens")
    return fmt


def _qwen3_reply(content, after_last_query, last):
    """Qwen3's template on one assistant turn -> (think block, reply text). A <think>...</think> in
    the content is its reasoning; after the last user turn the last reply (or one with reasoning)
    is written with a think block, empty or not, and every other reply without one."""
    reasoning = ''
    if '</think>' in content:
        reasoning = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n')
        content = content.split('</think>')[-1].lstrip('\n')
    if after_last_query and (last or reasoning):
        return '<think>\n' + reasoning.strip('\n') + '\n</think>\n\n', content.lstrip('\n')
    return '', content


def encode_chat(tok, messages):
    """messages -> (ids, mask), two lists of the same length. mask[i] = 1 where token i is one
    the model must learn to write: the content of every assistant turn and the <|im_end|> that
    closes it (and, for qwen3, a reasoning block written in it). Headers (<|im_start|>role\\n, and
    qwen3's empty think block), system and user turns and the newline after each <|im_end|> are 0.
    Each piece is encoded on its own, the same way for training and chat; the contents as plain text
    (a "<|im_end|>" typed by a user stays text), the template's own pieces with their special tokens."""
    start, end = chat_ids(tok)
    fmt = chat_format(tok)
    if fmt == 'qwen2.5' and (not messages or messages[0]['role'] != 'system'):
        messages = [{'role': 'system', 'content': QWEN25_SYSTEM}] + list(messages)
    last_query = max((i for i, m in enumerate(messages) if m['role'] == 'user'), default=-1)
    ids, mask = [], []
    for i, m in enumerate(messages):
        head, content, think = [start] + tok.encode(m['role'] + '\n'), m['content'], []
        if fmt == 'qwen3' and m['role'] == 'assistant':
            block, content = _qwen3_reply(content, i > last_query, i == len(messages) - 1)
            think = tok.encode_special(block) if block else []
            if block == EMPTY_THINK:  # nothing the model wrote: part of the header, like the generation prompt's
                head, think = head + think, []
        body, tail = think + tok.encode(content) + [end], tok.encode('\n')
        learn = int(m['role'] == 'assistant')
        ids += head + body + tail
        mask += [0] * len(head) + [learn] * len(body) + [0] * len(tail)
    return ids, mask


def prompt_ids(tok, messages):
    """The tokens that ask for the next reply: the conversation so far, then <|im_start|>assistant\\n
    (and for qwen3 the empty think block that keeps thinking off)."""
    start, _ = chat_ids(tok)
    ask = [start] + tok.encode('assistant\n') + (tok.encode_special(EMPTY_THINK) if chat_format(tok) == 'qwen3' else [])
    return encode_chat(tok, messages)[0] + ask


def fit_history(tok, messages, budget):
    """-> (prompt ids, messages dropped). The oldest exchanges (a user turn and the replies after
    it) go first, until the prompt is at most `budget` tokens; a leading system prompt and the
    last message always stay, so the prompt may still be too long (the caller checks)."""
    system = messages[:1] if messages and messages[0]['role'] == 'system' else []
    rest = messages[len(system):]
    dropped = 0
    while True:
        ids = prompt_ids(tok, system + rest)
        if len(ids) <= budget or len(rest) <= 1:
            return ids, dropped
        rest = rest[1:]
        while len(rest) > 1 and rest[0]['role'] != 'user':  # never start on a reply to a dropped question
            rest = rest[1:]
            dropped += 1
        dropped += 1

# ----------------------------------------------------------------------------- records


def to_messages(rec):
    """A chat or Alpaca record -> its list of messages, or ValueError saying what is wrong with it."""
    if not isinstance(rec, dict):
        raise ValueError(f"a JSON {type(rec).__name__}, not an object")
    if 'messages' in rec:
        msgs = rec['messages']
        if not isinstance(msgs, list) or not msgs:
            raise ValueError("'messages' must be a non-empty list of {\"role\": ..., \"content\": ...}")
        for n, m in enumerate(msgs, 1):
            if not isinstance(m, dict) or 'role' not in m or not isinstance(m.get('content'), str):
                raise ValueError(f"message {n} is not an object with a role and a string content")
            if m['role'] not in ROLES:
                raise ValueError(f"message {n} has the unknown role {m['role']!r} (roles: {', '.join(ROLES)})")
            if m['role'] == 'assistant' and not m['content'].strip():
                raise ValueError(f"message {n} is an empty assistant turn")
        if not any(m['role'] == 'assistant' for m in msgs):
            raise ValueError("a conversation with no assistant turn: nothing to learn from")
        return [{'role': m['role'], 'content': m['content']} for m in msgs]
    if 'instruction' in rec or 'output' in rec:
        instruction, inp, output = rec.get('instruction'), rec.get('input') or '', rec.get('output')
        if not isinstance(output, str):
            raise ValueError("an Alpaca record without a string 'output'")
        if not isinstance(instruction, str) or not isinstance(inp, str):
            raise ValueError("an Alpaca record needs a string 'instruction' (and 'input', if any, a string)")
        if not output.strip():
            raise ValueError("an empty 'output' (an empty assistant turn)")
        user = instruction + ('\n\n' + inp if inp.strip() else '')
        return [{'role': 'user', 'content': user}, {'role': 'assistant', 'content': output}]
    raise ValueError(f"neither 'messages' (chat) nor 'instruction'/'output' (Alpaca); it has: {', '.join(list(rec)[:8])}")


def read_json_array(path):
    """Yield (where, item) for each item of a file holding one JSON array; where = 'path:line' of
    the item's first character. The file is read whole (use JSONL for a corpus too big for RAM);
    a syntax error stops here whatever skip_bad_lines says: there is no next line to go on from."""
    with open(path, encoding='utf-8-sig') as f:
        text = f.read()
    space = re.compile(r'[ \t\r\n]*')
    decoder = json.JSONDecoder()
    line_at = lambda i: text.count('\n', 0, i) + 1  # noqa: E731
    i = space.match(text).end()
    if not text.startswith('[', i):
        die(f"{path}:{line_at(i)}: a .json file must hold one JSON array of records (or use .jsonl: one object a line)")
    i = space.match(text, i + 1).end()
    while not text.startswith(']', i):
        try:
            item, end = decoder.raw_decode(text, i)
        except ValueError as e:
            die(f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno})")
        yield f"{path}:{line_at(i)}", item
        i = space.match(text, end).end()
        if text.startswith(',', i):
            i = space.match(text, i + 1).end()
        elif not text.startswith(']', i):
            die(f"{path}:{line_at(i)}: expected ',' or ']' after a record")


def read_examples(path, skip_bad_lines=False, counts=None):
    """Yield (where, messages) for each record of a .jsonl or .json file. A bad record stops with
    'file:line: problem', or with skip_bad_lines is counted in counts['bad_lines'] and skipped."""
    counts = {} if counts is None else counts
    records = read_json_array(path) if path.endswith('.json') else read_jsonl(path, skip_bad_lines, counts)
    for where, rec in records:
        try:
            yield where, to_messages(rec)
        except ValueError as e:
            bad_line(where, str(e), skip_bad_lines, counts)

# ----------------------------------------------------------------------------- the file and its cache


def download(url, path, say=print):
    """A records file that is not here yet (config/sft_alpaca.py's), written atomically."""
    import urllib.request
    say(f"downloading {url} -> {path}")
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            body = r.read()
    except Exception as e:  # no network, a proxy, an HTTP error
        die(f"could not download {url} ({getattr(e, 'reason', e)}); get that file and put it at {path}")
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    with atomic_write(path, 'wb') as f:
        f.write(body)



def build_cache(path, tok, tok_spec, cache_dir, val_fraction, seed, skip_bad_lines=False, say=print):
    """Tokenize the records of `path` into cache_dir (see the top of this file), unless the cache
    there was made from this very file, tokenizer and split already. Split: record by record, in
    file order, random.Random(seed).random() < val_fraction puts a record in val. The files are
    written beside their final names and renamed into place, meta.json last. -> meta."""
    st = os.stat(path)
    key = hashlib.sha256(json.dumps([CACHE_VERSION, os.path.abspath(path), st.st_size, st.st_mtime_ns, tok_spec,
                                     val_fraction, seed], sort_keys=True).encode()).hexdigest()
    meta_path = os.path.join(cache_dir, 'meta.json')
    if os.path.exists(meta_path):
        try:
            with open(meta_path, encoding='utf-8') as f:
                meta = json.load(f)
            if meta.get('key') == key:
                return meta
        except ValueError:
            pass  # damaged: rebuild
        os.remove(meta_path)  # the files it describes are about to change
    os.makedirs(cache_dir, exist_ok=True)
    dtype = np.uint16 if tok.n_vocab <= 1 << 16 else np.uint32
    files = {(s, k): open(os.path.join(cache_dir, f"{s}_{k}.bin.tmp"), 'wb')
             for s in ('train', 'val') for k in ('tokens', 'mask', 'offsets')}
    n, pos, counted, counts = {'train': 0, 'val': 0}, {'train': 0, 'val': 0}, {'train': 0, 'val': 0}, {}
    rng, t0 = random.Random(seed), time.time()
    try:
        for s in ('train', 'val'):
            files[s, 'offsets'].write(np.int64(0).tobytes())
        for where, messages in read_examples(path, skip_bad_lines, counts):
            ids, mask = encode_chat(tok, messages)
            s = 'val' if rng.random() < val_fraction else 'train'
            files[s, 'tokens'].write(np.asarray(ids, dtype).tobytes())
            files[s, 'mask'].write(np.asarray(mask, np.uint8).tobytes())
            n[s], pos[s], counted[s] = n[s] + 1, pos[s] + len(ids), counted[s] + sum(mask)
            files[s, 'offsets'].write(np.int64(pos[s]).tobytes())
            if time.time() - t0 > 1:  # a progress line only for a file that takes a while
                progress(f"tokenizing {path}: {n['train'] + n['val']:,} examples")
    finally:
        for f in files.values():
            f.close()
    end_progress()
    for s, k in files:
        os.replace(os.path.join(cache_dir, f"{s}_{k}.bin.tmp"), os.path.join(cache_dir, f"{s}_{k}.bin"))
    meta = {'key': key, 'source': path, 'dtype': np.dtype(dtype).name, 'examples': n, 'tokens': pos, 'counted': counted,
            'bad_lines': counts.get('bad_lines', 0)}
    with atomic_write(meta_path) as f:
        json.dump(meta, f, indent=1)
    say(f"tokenized {path}: {n['train']:,} train + {n['val']:,} val examples, {pos['train'] + pos['val']:,} tokens -> {cache_dir}/"
        + (f" ({counts['bad_lines']:,} bad records skipped)" if counts.get('bad_lines') else ''))
    return meta


def load_cache(cache_dir):
    """-> ({split: (tokens, mask, offsets)} as memmaps, their sizes checked; the cache's meta.json)."""
    with open(os.path.join(cache_dir, 'meta.json'), encoding='utf-8') as f:
        meta = json.load(f)
    out = {}
    for s in ('train', 'val'):
        arrays = []
        for k, dt, size in (('tokens', meta['dtype'], meta['tokens'][s]), ('mask', 'uint8', meta['tokens'][s]),
                            ('offsets', 'int64', meta['examples'][s] + 1)):
            p = os.path.join(cache_dir, f"{s}_{k}.bin")
            if not os.path.exists(p) or os.path.getsize(p) != size * np.dtype(dt).itemsize:
                die(f"{p} is missing or has the wrong size; delete {cache_dir}/ and run again to rebuild it")
            arrays.append(np.memmap(p, dtype=dt, mode='r') if size else np.zeros(0, dt))
        out[s] = tuple(arrays)
    return out, meta


def usable(split, block_size):
    """-> (indices of the examples to train on, how many are cut, how many dropped). The rule:
    an example longer than block_size + 1 tokens keeps its first block_size + 1 (the model sees
    block_size inputs, each predicting the next token); one with no counted token left after
    the cut (its first reply starts too late) is dropped."""
    tokens, mask, offsets = split
    n = len(offsets) - 1
    long = np.nonzero(np.diff(offsets) > block_size + 1)[0]
    drop = [i for i in long.tolist() if not mask[offsets[i] + 1:offsets[i] + block_size + 1].any()]
    return np.setdiff1d(np.arange(n), np.array(drop, dtype=np.int64)), len(long) - len(drop), len(drop)


def make_batch(split, ix, block_size, pad_id):
    """Examples ix of a split -> x, y: int64 arrays (B, T), T = the longest example's length - 1
    (at most block_size). x[b, t] is token t of example b; y[b, t] is token t + 1 when the loss
    counts it (mask[t + 1] = 1), else -100, which the loss skips. Shorter examples are padded at
    the end (x = pad_id, y = -100); causal attention keeps the padding out of the real positions."""
    tokens, mask, offsets = split
    rows = []
    for i in ix:
        s = int(offsets[i])
        e = min(int(offsets[i + 1]), s + block_size + 1)  # the cut (see usable())
        rows.append((tokens[s:e].astype(np.int64), mask[s:e].astype(bool)))
    T = max(len(t) for t, _ in rows) - 1
    x = np.full((len(rows), T), pad_id, dtype=np.int64)
    y = np.full((len(rows), T), -100, dtype=np.int64)
    for b, (t, m) in enumerate(rows):
        x[b, :len(t) - 1] = t[:-1]
        y[b, :len(t) - 1] = np.where(m[1:], t[1:], -100)  # the mask of the token predicted, not of the input
    return x, y
