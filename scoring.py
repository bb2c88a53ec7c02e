"""
Scoring a language model: the numbers eval.py prints, and the accuracy train.py and
finetune_sft.py log with eval_tasks=FILE.jsonl. A module, not a command (training scripts import
it; eval.py is the command around it).

  text      mean loss, perplexity and bits per byte over a text, read in sliding windows
            (text_windows, score_text): every token after the first is scored once, with up to
            a window of context, exactly as Hugging Face's perplexity guide does it.
  questions multiple choice, scored as lm-evaluation-harness does: the log-likelihood of each
            choice after the question (encode_pair, loglikelihoods), acc = the likeliest choice
            is the answer, acc_norm = the same after dividing each log-likelihood by the choice's
            length in characters (score_questions). read_questions() reads our own records and the
            fields HellaSwag, ARC, MMLU and C-Eval / CMMLU come with (see to_question).

The model is nanolm's GPT (model.py) and the tokenizer tokenizer.load(spec); nothing here imports
an optional package. Bad input raises a one-line ValueError naming the file and line.
"""
import contextlib
import math
import os
import random
import re

import torch
import torch.nn.functional as F

import cli

LETTERS = 'ABCDEFGHIJ'

# ----------------------------------------------------------------------------- text


def read_text(path):
    """A text file, or a .jsonl of records with a 'text' field, whose texts are joined with a blank
    line ("\\n\\n", as HF's perplexity guide joins WikiText's lines). -> the text."""
    if not os.path.isfile(path):
        raise ValueError(f"text file {path} not found")
    if path.endswith('.jsonl'):
        parts = []
        try:
            for where, rec in cli.read_jsonl(path):
                if not isinstance(rec.get('text'), str):
                    raise ValueError(f"{where}: no 'text' string in this record (keys: {', '.join(rec)[:80]}); "
                                     f"a .jsonl text file needs {{\"text\": ...}} on each line")
                parts.append(rec['text'])
        except UnicodeDecodeError as e:
            raise ValueError(f"text file {path} is not UTF-8 ({e.reason} at byte {e.start}); save it as UTF-8") from None
        text = '\n\n'.join(parts)
    else:
        try:
            with open(path, encoding='utf-8-sig') as f:
                text = f.read()
        except UnicodeDecodeError as e:
            raise ValueError(f"text file {path} is not UTF-8 ({e.reason} at byte {e.start}); save it as UTF-8") from None
    if not text.strip():
        raise ValueError(f"text file {path} is empty: nothing to score")
    return text


def prefix_id(tok, spec):
    """The token a sequence starts from: the tokenizer's beginning-of-sequence token where it adds
    one (Llama's), else end-of-text, which GPT-2 and nanolm put between documents. lm-evaluation-
    harness makes the same choice (its prefix_token_id)."""
    bos = (spec or {}).get('bos')
    return tok.special[bos] if bos in getattr(tok, 'special', {}) else tok.eot


def text_windows(n, block, stride):
    """The sliding windows over n tokens, as in Hugging Face's perplexity guide: windows of up to
    `block` tokens starting every `stride` tokens; each scores only the tokens the previous one did
    not reach, so each token is scored once, after up to block - stride tokens of context (all of
    them before it in the first window). Token 0 has nothing before it and is never scored; with
    stride == block each window's first token is context only (as in the guide).
    -> [(begin, end, first)]: the window is ids[begin:end] and scores ids[first:end]."""
    out, prev_end = [], 0
    for begin in range(0, n, stride):
        end = min(begin + block, n)
        out.append((begin, end, max(prev_end, begin + 1)))
        prev_end = end
        if end == n:
            break
    return out


def rolling_windows(n, block):
    """lm-evaluation-harness's loglikelihood_rolling over n tokens (the first is the prefix token):
    disjoint windows that each predict the next `block` tokens, the first from the prefix token
    on; the last one ends at the text's end and reaches back a whole window for its context.
    -> [(begin, end, first)] as text_windows."""
    out, done = [(0, min(block + 1, n), 1)], min(block + 1, n)
    while done < n:
        end = min(done + block, n)
        out.append((end - block - 1, end, done))
        done = end
    return out


@torch.no_grad()
def score_text(model, ids, windows, batch_size=8, device='cpu', autocast=None, progress=None):
    """Sum of -log p over the tokens the windows score (text_windows' [(begin, end, first)]).
    -> (nats, scored tokens). Windows of one length go through the model batch_size at a time;
    progress(done, total) is called after each batch."""
    autocast = autocast or contextlib.nullcontext()
    nats, scored, done = 0.0, 0, 0
    ids = torch.tensor(ids, dtype=torch.long)
    groups = {}  # window length -> windows of that length (all but the last are `block` long)
    for w in windows:
        groups.setdefault(w[1] - w[0], []).append(w)
    for length, ws in groups.items():
        for i in range(0, len(ws), batch_size):
            batch = ws[i:i + batch_size]
            # The model reads window[:-1] and predicts window[1:]; the last token needs no logits.
            x = torch.stack([ids[b:e - 1] for b, e, _ in batch]).to(device)  # (B, length-1)
            y = torch.stack([ids[b + 1:e] for b, e, _ in batch]).to(device)  # (B, length-1)
            for row, (b, e, first) in enumerate(batch):
                y[row, :first - b - 1] = -100  # tokens an earlier window scored: context only
            with autocast:
                logits, _ = model(x)  # (B, length-1, V)
            nats += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=-100, reduction='sum').item()
            scored += int((y != -100).sum())
            done += len(batch)
            if progress:
                progress(done, len(windows))
    return nats, scored


def text_numbers(nats, scored, n_bytes):
    """Mean loss (nats per scored token), perplexity, and bits per byte: all the nats in bits over
    the text's UTF-8 bytes, which does not depend on the tokenizer (a model that cuts text into
    fewer, longer tokens has a higher loss per token but not per byte)."""
    loss = nats / scored
    return {'loss': loss, 'ppl': math.exp(min(loss, 700)), 'bpb': nats / math.log(2) / n_bytes}

# ----------------------------------------------------------------------------- multiple-choice questions


def _hellaswag_clean(text):
    """lm-evaluation-harness's HellaSwag preprocessing: WikiHow's '[title]' marks become '. ', other
    [bracketed] artifacts go, double spaces become one."""
    text = text.strip().replace(' [title]', '. ')
    text = re.sub(r'\[.*?\]', '', text)
    return text.replace('  ', ' ')


def _index(answer, n, letters=False):
    """An answer as an int index (or a letter when letters) -> int, or ValueError."""
    if letters or isinstance(answer, str):
        if isinstance(answer, str) and answer.strip().isdigit() and not letters:
            answer = int(answer)
        elif isinstance(answer, str) and len(answer.strip()) == 1 and answer.strip().upper() in LETTERS:
            answer = LETTERS.index(answer.strip().upper())
        else:
            raise ValueError(f"answer {answer!r} is not {'a letter' if letters else 'an index'}")
    if isinstance(answer, bool) or not isinstance(answer, int):
        raise ValueError(f"answer {answer!r} is not an integer index")
    if not 0 <= answer < n:
        raise ValueError(f"answer {answer} is out of range for {n} choices (0 to {n - 1})")
    return answer


def to_question(rec):
    """A record -> {'context', 'choices', 'answer'} with the prompt lm-evaluation-harness's task
    builds from it. Which format is decided by the fields present:
      ours       context, choices [str], answer (index)         context as is
      HellaSwag  activity_label, ctx_a, ctx_b, endings, label    "{label}: {ctx_a} {Ctx_b}", cleaned
      ARC        question, choices {text, label}, answerKey      "Question: {question}\\nAnswer:"
      MMLU       question, choices [str], answer (index)         "{question}\\nA. ..\\nB. ..\\nAnswer:", choices A, B, ..
      C-Eval     question, A, B, C, D, answer (letter)           "{question}\\nA. ..\\nD. ..\\n答案：", choices A-D
      CMMLU      Question, A, B, C, D, Answer (letter)           the same
    Raises ValueError naming what is missing or wrong."""
    if 'context' in rec or ('choices' in rec and 'question' not in rec):
        context, choices, answer = rec.get('context'), rec.get('choices'), rec.get('answer')
        if not isinstance(context, str):
            raise ValueError("'context' must be a string")
    elif 'endings' in rec:  # HellaSwag
        if all(isinstance(rec.get(k), str) for k in ('activity_label', 'ctx_a', 'ctx_b')):
            context = _hellaswag_clean(rec['activity_label'] + ': ' + rec['ctx_a'] + ' ' + rec['ctx_b'].capitalize())
        elif isinstance(rec.get('ctx'), str):
            context = _hellaswag_clean(rec['ctx'])
        else:
            raise ValueError("a HellaSwag record needs activity_label, ctx_a and ctx_b (or ctx)")
        choices, answer = rec['endings'], rec.get('label')
        if isinstance(choices, list) and all(isinstance(c, str) for c in choices):
            choices = [_hellaswag_clean(c) for c in choices]
    elif isinstance(rec.get('choices'), dict):  # ARC
        if not isinstance(rec.get('question'), str):
            raise ValueError("an ARC record needs a 'question' string")
        ch = rec['choices']
        choices, labels = ch.get('text'), ch.get('label')
        if not isinstance(labels, list) or not isinstance(choices, list) or len(labels) != len(choices):
            raise ValueError("an ARC record's choices need 'text' and 'label' lists of one length")
        if rec.get('answerKey') not in labels:
            raise ValueError(f"answerKey {rec.get('answerKey')!r} is not one of the labels {labels}")
        context, answer = f"Question: {rec['question']}\nAnswer:", labels.index(rec['answerKey'])
    elif 'question' in rec and 'choices' in rec:  # MMLU
        if not isinstance(rec['question'], str) or not isinstance(rec['choices'], list):
            raise ValueError("an MMLU record needs a 'question' string and a 'choices' list")
        if not 1 <= len(rec['choices']) <= len(LETTERS):
            raise ValueError(f"an MMLU record needs 1 to {len(LETTERS)} choices, not {len(rec['choices'])}")
        lines = ''.join(f"\n{LETTERS[i]}. {c}" for i, c in enumerate(rec['choices']))
        context, choices = f"{rec['question'].strip()}{lines}\nAnswer:", list(LETTERS[:len(rec['choices'])])
        answer = rec.get('answer')
    elif ('question' in rec or 'Question' in rec) and 'A' in rec:  # C-Eval, CMMLU
        q = rec.get('question', rec.get('Question'))
        opts = [rec.get(k) for k in 'ABCD']
        if not isinstance(q, str) or not all(isinstance(o, str) for o in opts):
            raise ValueError("a C-Eval / CMMLU record needs a question and A, B, C, D strings")
        context = f"{q.strip()}" + ''.join(f"\n{k}. {o}" for k, o in zip('ABCD', opts)) + "\n答案："
        choices, answer = list('ABCD'), _index(rec.get('answer', rec.get('Answer')), 4, letters=True)
    else:
        raise ValueError(f"not a question record: expected context/choices/answer, or the fields of "
                         f"HellaSwag, ARC, MMLU, C-Eval or CMMLU (keys here: {', '.join(rec)[:80]})")
    if not isinstance(choices, list) or not choices:
        raise ValueError("no choices (needs a non-empty list of strings)")
    if not all(isinstance(c, str) and c for c in choices):
        raise ValueError("every choice must be a non-empty string")
    return {'context': context, 'choices': choices, 'answer': _index(answer, len(choices))}


def read_questions(path, limit=0):
    """A .jsonl file of questions (to_question's formats) -> list of questions. limit: the first n."""
    if not os.path.isfile(path):
        raise ValueError(f"question file {path} not found")
    out = []
    try:
        for where, rec in cli.read_jsonl(path):
            try:
                out.append(to_question(rec))
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
            if limit and len(out) == limit:
                break
    except UnicodeDecodeError as e:
        raise ValueError(f"question file {path} is not UTF-8 ({e.reason} at byte {e.start}); save it as UTF-8") from None
    if not out:
        raise ValueError(f"question file {path} is empty: no questions in it")
    return out


def fewshot_examples(questions, dev, shots, how='first', seed=1234):
    """For each question, the dev questions shown before it. how='first': the first `shots` of dev
    (lm-evaluation-harness's first_n, which MMLU, C-Eval and CMMLU use); 'random': drawn for each
    question by random.Random(seed + its index). dev None: from the question file itself, leaving
    out the question asked (as lm-evaluation-harness does when both come from one split)."""
    out = []
    for i in range(len(questions)):
        pool = dev if dev is not None else questions[:i] + questions[i + 1:]
        if shots > len(pool):
            raise ValueError(f"shots={shots} but only {len(pool)} example questions to draw from; "
                             f"lower --shots or give a bigger --dev file")
        out.append(pool[:shots] if how == 'first' else random.Random(seed + i).sample(pool, shots))
    return out


def prompt(question, examples=()):
    """The context of a question after its examples: each example is its context, a space and its
    answer, then a blank line (lm-evaluation-harness's target_delimiter " " and fewshot_delimiter
    "\\n\\n"); the choices are scored as " " + choice after it."""
    return ''.join(f"{ex['context']} {ex['choices'][ex['answer']]}\n\n" for ex in examples) + question['context']


def encode_pair(tok, spec, context, continuation):
    """-> (context ids, continuation ids), cut as lm-evaluation-harness's Hugging Face model does:
    spaces at the end of the context move to the continuation; context + continuation is encoded
    whole and split after the tokens of the context alone (so a merge across the seam counts for
    the continuation); a tokenizer that adds a beginning-of-sequence token (Llama's) gets it in
    front. An empty context is the prefix token (see prefix_id)."""
    if not context:
        cont = tok.encode(continuation)
        first = prefix_id(tok, spec)
        return ([first], cont) if cont[0] != first else (cont[:1], cont[1:])
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    bos = [tok.special[spec['bos']]] if (spec or {}).get('bos') in getattr(tok, 'special', {}) else []
    whole, ctx = bos + tok.encode(context + continuation), bos + tok.encode(context)
    return ctx, whole[len(ctx):]


@torch.no_grad()
def loglikelihoods(model, pairs, block, batch_size=8, device='cpu', autocast=None, progress=None):
    """pairs: [(context ids, continuation ids)] -> [(sum of log p of the continuation, whether it is
    the greedy continuation)]. As lm-evaluation-harness: the model reads (context + continuation)
    without its last token, cut from the left to `block` tokens. Rows are padded on the right
    (causal attention: padding after a row changes none of its logits); longest first, so a batch
    holds rows of similar length."""
    autocast = autocast or contextlib.nullcontext()
    rows = []
    for i, (ctx, cont) in enumerate(pairs):
        if not cont:
            raise ValueError("a choice encodes to no tokens")
        if len(cont) > block:
            raise ValueError(f"a choice of {len(cont)} tokens is longer than the context window ({block})")
        rows.append((i, (ctx + cont)[-(block + 1):][:-1], len(cont), cont))
    rows.sort(key=lambda r: -len(r[1]))
    out = [None] * len(rows)
    for s in range(0, len(rows), batch_size):
        batch = rows[s:s + batch_size]
        T = len(batch[0][1])
        x = torch.zeros(len(batch), T, dtype=torch.long)  # (B, T), padded with 0 on the right
        for r, (_, inp, _, _) in enumerate(batch):
            x[r, :len(inp)] = torch.tensor(inp)
        with autocast:
            logits, _ = model(x.to(device))  # (B, T, V)
        logp = F.log_softmax(logits.float(), dim=-1)
        for r, (i, inp, n, cont) in enumerate(batch):
            lp = logp[r, len(inp) - n:len(inp)]  # (n, V): the positions that predict the continuation
            want = torch.tensor(cont, device=lp.device)
            out[i] = (lp.gather(1, want[:, None]).sum().item(), bool((lp.argmax(-1) == want).all()))
        if progress:
            progress(s + len(batch), len(rows))
    return out


def score_questions(model, tok, spec, questions, examples=None, block=None, batch_size=8, device='cpu',
                    autocast=None, progress=None):
    """acc and acc_norm over questions, exactly as lm-evaluation-harness computes them: acc = 1 when
    the choice with the highest log-likelihood is the answer; acc_norm divides each log-likelihood
    by the choice's length in characters first (first of equals wins, as numpy's argmax). stderr:
    the standard error of each mean (sample standard deviation / sqrt(n)).
    -> {'n', 'acc', 'acc_stderr', 'acc_norm', 'acc_norm_stderr', 'tokens'}, and 'lls' per question."""
    block = block or model.cfg.block_size
    pairs, owner = [], []
    for q_i, q in enumerate(questions):
        ctx = prompt(q, examples[q_i] if examples else ())
        for c in q['choices']:
            pairs.append(encode_pair(tok, spec, ctx, ' ' + c))
            owner.append(q_i)
    res = loglikelihoods(model, pairs, block, batch_size, device, autocast, progress)
    lls = [[] for _ in questions]
    for q_i, (ll, _) in zip(owner, res):
        lls[q_i].append(ll)
    acc = [float(max(range(len(l)), key=lambda j: (l[j], -j)) == q['answer']) for l, q in zip(lls, questions)]
    norm = [[v / len(c) for v, c in zip(l, q['choices'])] for l, q in zip(lls, questions)]
    acc_norm = [float(max(range(len(l)), key=lambda j: (l[j], -j)) == q['answer']) for l, q in zip(norm, questions)]
    n = len(questions)

    def mean_se(v):
        m = sum(v) / n
        return m, (math.sqrt(sum((a - m) ** 2 for a in v) / (n - 1) / n) if n > 1 else float('nan'))
    (a, a_se), (an, an_se) = mean_se(acc), mean_se(acc_norm)
    tokens = sum(min(len(c) + len(k), block) for c, k in pairs)
    return {'n': n, 'acc': a, 'acc_stderr': a_se, 'acc_norm': an, 'acc_norm_stderr': an_se, 'tokens': tokens, 'lls': lls}

# ----------------------------------------------------------------------------- during training


def read_eval_tasks(eval_tasks, tok=None, limit=0):
    """train.py / finetune_sft.py's eval_tasks='a.jsonl,b.jsonl' -> {name (file stem): questions}, read
    once at the start, so a bad file stops the run before it trains (tok: every question is encoded
    once too, so a character a char vocabulary lacks is found now, not at the first eval)."""
    tasks = {}
    for path in [p.strip() for p in str(eval_tasks).split(',') if p.strip()]:
        questions = read_questions(path, limit)
        for i, q in enumerate(questions if tok else ()):
            try:
                tok.encode(prompt(q) + ''.join(' ' + c for c in q['choices']))
            except ValueError as e:
                raise ValueError(f"eval_tasks: {path}, question {i + 1}: {e}") from None
        tasks[os.path.splitext(os.path.basename(path))[0]] = questions
    return tasks


def task_accuracy(model, tok, spec, tasks, batch_size=8, device='cpu', autocast=None):
    """Zero-shot accuracy on each task -> {'acc_<name>': acc, 'acc_norm_<name>': acc_norm}: the fields
    the training scripts add to their eval row in log.jsonl (training.plot_log draws them). Puts the
    model in eval mode and back."""
    if not tasks:
        return {}
    was_training = model.training
    model.eval()
    out = {}
    for name, questions in tasks.items():
        r = score_questions(model, tok, spec, questions, batch_size=batch_size, device=device, autocast=autocast)
        out[f'acc_{name}'], out[f'acc_norm_{name}'] = r['acc'], r['acc_norm']
    model.train(was_training)
    return out


@torch.no_grad()
def split_loss(model, tokens, block_size, batch_size, device, autocast=contextlib.nullcontext()):
    """Mean loss over a whole token split (train.py's eval_full_val), cut into consecutive windows of
    block_size (the last one shorter): every token after the first is predicted exactly once, with
    the context its window gives it. Deterministic, and comparable between runs with one block_size.
    tokens: a 1-D array of ids (the np.memmap of val.bin)."""
    n = len(tokens) - 1  # n tokens have a next token to predict
    total = 0.0
    for start in range(0, n, block_size * batch_size):
        ends = range(start, min(n, start + block_size * batch_size), block_size)
        windows = [(i, min(i + block_size, n)) for i in ends]  # whole windows, the last maybe shorter
        for length in sorted({b - a for a, b in windows}):  # a batch needs one length: whole ones, then the tail
            rows = [a for a, b in windows if b - a == length]
            x = torch.stack([torch.from_numpy(tokens[a:a + length].astype('int64')) for a in rows]).to(device)  # (b, T)
            y = torch.stack([torch.from_numpy(tokens[a + 1:a + 1 + length].astype('int64')) for a in rows]).to(device)
            with autocast:
                _, loss = model(x, y)
            total += loss.item() * y.numel()
    return total / n
