"""
Labelled text for finetune_cls.py: read it, split it, turn it into batches, score predictions.

  read_examples   .csv / .tsv (a header row; quoted fields may hold commas, quotes and newlines)
                  or .jsonl -> [(where, text, label)], where = 'file:line'; bad rows follow
                  cli.bad_line's policy (stop naming the row, or --skip_bad_lines)
  label_names     the sorted label set: position = class id
  split           a seeded split that keeps every label's share in each part
  encode          token ids cut to the context by a stated rule, end-of-text appended
  pad, last_index batches of texts of unequal length, and the position the head reads
  scores, report  accuracy, macro-F1, per-class precision / recall / F1, confusion matrix
"""
import csv
import os
import random
import re
import unicodedata
from collections import defaultdict

import numpy as np
import torch

from cli import bad_line, die, read_jsonl

csv.field_size_limit(1 << 28)  # the default (128 KB a field) would refuse a long review


def _csv_records(path, delimiter, columns, skip_bad_lines, counts):
    """Yield (where, {column: value}) per data row of a CSV/TSV file with a header row."""
    with open(path, encoding='utf-8-sig', newline='') as f:  # newline='': quoted fields keep their newlines
        reader = csv.reader(f, delimiter=delimiter, strict=True)
        kind = 'TSV' if delimiter == '\t' else 'CSV'
        try:
            header = [h.strip() for h in next(reader, [])]
            if not header:
                die(f"{path} is empty; expected a header row naming the columns, then one example a row")
            for c in columns:
                if c not in header:
                    die(f"{path}:1: no column {c!r} (the header has {', '.join(map(repr, header))}); "
                        f"name the columns with --text_column=... --label_column=...")
            start = reader.line_num + 1
            for row in reader:
                where, start = f"{path}:{start}", reader.line_num + 1  # a row may span lines: name its first
                if not row:
                    continue
                if len(row) != len(header):
                    bad_line(where, f"{len(row)} fields, the header has {len(header)}", skip_bad_lines, counts)
                    continue
                yield where, dict(zip(header, row))
        except csv.Error as e:
            die(f"{path}:{reader.line_num}: does not parse as {kind} ({e}); a field holding the delimiter, a quote "
                f"or a newline must be in double quotes, with its own quotes doubled (\"\")")


def read_examples(path, text_column='text', label_column='label', skip_bad_lines=False, counts=None):
    """-> [(where, text, label)]: label as a string ('3' for 3); a label may be a string or an integer."""
    counts = {} if counts is None else counts
    ext = os.path.splitext(path)[1].lower()
    if ext not in ('.csv', '.tsv', '.jsonl'):
        die(f"{path}: unknown format {ext or '(no extension)'}; give a .csv, .tsv (with a header row) or .jsonl file")
    if not os.path.isfile(path):
        die(f"data file {path} not found")
    if ext == '.jsonl':
        records = read_jsonl(path, skip_bad_lines, counts)
    else:
        records = _csv_records(path, '\t' if ext == '.tsv' else ',', (text_column, label_column), skip_bad_lines, counts)
    out = []
    try:
        for where, rec in records:
            text, label = rec.get(text_column), rec.get(label_column)
            if isinstance(label, str):
                label = label.strip()
            problem = (f"no {text_column!r} field" if text_column not in rec else
                       f"no {label_column!r} field" if label_column not in rec else
                       f"the text is a {type(text).__name__}, not a string" if not isinstance(text, str) else
                       "empty text" if not text.strip() else
                       f"the label {label!r} is neither a string nor an integer" if type(label) not in (str, int) else
                       "empty label" if label == '' else None)
            if problem:
                bad_line(where, problem, skip_bad_lines, counts)
                continue
            out.append((where, text, str(label)))
    except UnicodeDecodeError as e:
        die(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8")
    return out


def label_names(labels):
    """The sorted set of labels, numerically when all are integers ('2' before '10'); position = class id."""
    names = set(labels)
    if all(re.fullmatch(r'-?\d+', n) for n in names):
        return sorted(names, key=int)
    return sorted(names)


def split(examples, fractions, seed):
    """-> [rest, part_1, ...]: part_i takes round(fractions[i] * n) of each label's n examples,
    chosen by a seeded shuffle, and rest keeps at least one of every label. Each part stays
    in file order. The same file and seed always give the same split."""
    rng = random.Random(seed)
    by_label = defaultdict(list)
    for i, (_, _, label) in enumerate(examples):
        by_label[label].append(i)
    parts = [[] for _ in range(len(fractions) + 1)]
    for label in sorted(by_label):
        ix = by_label[label]
        rng.shuffle(ix)
        taken = 0
        for p, frac in enumerate(fractions, 1):
            n = max(0, min(round(len(ix) * frac), len(ix) - 1 - taken))
            parts[p] += ix[taken:taken + n]
            taken += n
        parts[0] += ix[taken:]
    return [[examples[i] for i in sorted(part)] for part in parts]


def encode(tok, examples, block_size, truncation, skip_bad_lines=False, counts=None):
    """-> ([(where, ids, label)], number of texts cut). ids = the text's tokens, then end-of-text:
    the last position, which (attention being causal) is the one that has read the whole text.
    A text of more than block_size - 1 tokens keeps its last (truncation='keep_end') or first
    ('keep_start') block_size - 1 of them."""
    counts = {} if counts is None else counts
    out, n_cut, room = [], 0, block_size - 1
    for where, text, label in examples:
        try:
            ids = tok.encode(text)
        except ValueError as e:  # the char tokenizer meets a character its vocabulary lacks
            bad_line(where, str(e), skip_bad_lines, counts)
            continue
        if len(ids) > room:
            n_cut += 1
            ids = ids[len(ids) - room:] if truncation == 'keep_end' else ids[:room]
        out.append((where, ids + [tok.eot], label))
    return out, n_cut


def pad(seqs, pad_id, side='right'):
    """Token lists of unequal length -> idx (B, T) and mask (B, T), True on real tokens, T the
    longest. finetune_cls.py pads on the right: under a causal mask no real token sees the
    padding after it, so no attention mask is needed. (Left padding would put padding inside
    every shorter text's view.)"""
    T = max(len(s) for s in seqs)
    idx = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), T, dtype=torch.bool)
    for i, s in enumerate(seqs):
        at = slice(0, len(s)) if side == 'right' else slice(T - len(s), T)
        idx[i, at], mask[i, at] = torch.tensor(s, dtype=torch.long), True
    return idx, mask


def last_index(mask):
    """mask (B, T), True on real tokens -> (B,) position of each row's last real token, whichever
    side the padding is on: the first True seen from the right (argmax returns the first maximum)."""
    return mask.size(1) - 1 - mask.flip(1).int().argmax(1)


def scores(y, p, k):
    """True and predicted class ids (numpy int arrays) -> accuracy, macro_f1 (the mean F1 of the
    classes that occur in y or p), per-class precision / recall / f1 / support, and
    confusion (k, k): rows the true class, columns the predicted one."""
    conf = np.bincount(y * k + p, minlength=k * k).reshape(k, k)
    tp, predicted, support = np.diag(conf).astype(float), conf.sum(0), conf.sum(1)
    with np.errstate(divide='ignore', invalid='ignore'):  # a class never predicted: precision 0
        precision = np.nan_to_num(tp / predicted)
        recall = np.nan_to_num(tp / support)
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
    seen = (predicted + support) > 0
    return {'accuracy': tp.sum() / max(1, len(y)), 'macro_f1': float(f1[seen].mean()), 'precision': precision,
            'recall': recall, 'f1': f1, 'support': support, 'confusion': conf}


def _width(s):
    """Columns s takes in a terminal: Chinese characters take two."""
    return sum(2 if unicodedata.east_asian_width(c) in 'WF' else 1 for c in s)


def report(s, names):
    """The per-class table and the confusion matrix, as lines to print."""
    w = max(5, *(_width(n) for n in names))
    cell = max(5, len(str(int(s['confusion'].max()))) + 1)
    lines = ['  ' + 'label' + ' ' * (w - 5) + '  precision  recall     F1  support']
    for i, n in enumerate(names):
        lines.append(f"  {n}{' ' * (w - _width(n))}  {s['precision'][i]:9.3f}  {s['recall'][i]:6.3f}  "
                     f"{s['f1'][i]:5.3f}  {s['support'][i]:7d}")
    lines.append(f"  confusion matrix (rows: true label; columns: predicted, same order {', '.join(map(str, range(len(names))))}):")
    for i, n in enumerate(names):
        lines.append(f"  {i} {n}{' ' * (w - _width(n))} " + ''.join(f"{c:{cell}d}" for c in s['confusion'][i]))
    return lines
