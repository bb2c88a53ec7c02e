"""
Classification fine-tuning: put a linear head on a pretrained model (a train.py or
finetune_sft.py run, or Hugging Face weights) and train it on labelled text: spam or not,
sentiment, topic, who wrote it.

    python finetune_cls.py config/cls_example.py --data=reviews.csv --text_column=review --label_column=sentiment
    python finetune_cls.py --out_dir=out-cls --classify="You won a free prize, call now"
    python finetune_cls.py --out_dir=out-cls --classify=FILE:messages.txt    # one text per line
    python finetune_cls.py config/cls_example.py --init_from=resume          # continue a stopped run

How it classifies: a text's tokens, then end-of-text, go through the trunk; the final hidden
state of that last token (attention is causal, so it is the one position that has read the
whole text) goes through one Linear layer, `score` (C -> number of labels; the name Hugging
Face gives it). Batches are padded on the right: no real token sees the padding after it, so
a text gets the same answer alone or in any batch, with no attention mask.

Data: .csv / .tsv with a header row, or .jsonl; text_column and label_column name the fields.
Labels are strings or integers; the sorted set of the training labels maps them to ids and is
saved in the checkpoint. val and test come from their own files or a stratified split of `data`.

Read top to bottom like train.py: settings, setup, --classify, data, model, the loop, the end
(the test report). Reading, splitting, batching and scoring are in cls_data.py; the run
machinery (device, signals, the log: training.py and cli.py; checkpoints, resume: checkpoint.py).
One process, no torchrun: a classifier is a small job for a CPU, a Mac or one GPU.

Why one file over 400 lines: like train.py it is read top to bottom, and its extra length is
the --classify mode and the test report a user asked for in the same command.
"""
import json
import math
import os
import time
from dataclasses import asdict

import cli  # first: it makes errors (even a Ctrl-C during the slow torch import) one line
from cli import die
import training
from configurator import check_ranges, configure
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import cls_data
import tokenizer
from checkpoint import clear_run, load_checkpoint, load_model, restore_run, resume_notes, save_run, start_run
from model import GPT, ModelConfig, add_lora

# ----------------------------------------------------------------------------- settings
# run
out_dir = 'out-cls'
init_from = 'base'        # 'base' (base_dir's checkpoint), 'resume' (out_dir's) or 'hf:<folder>' (Hugging Face weights)
base_dir = 'out'          # the out_dir of the train.py / finetune_sft.py run whose model becomes the trunk
base_ckpt = 'ckpt.pt'     # its ckpt.pt (latest) or best.pt (lowest val loss)
random_trunk = False      # re-initialise the trunk (same shape and tokenizer): what the head gets without pretraining
overwrite = False         # allow a new run to replace the run already in out_dir
seed = 1337               # also decides the split of `data` into train / val / test
classify = ''             # classify and exit: 'a text', or FILE:path (one text per line), with out_dir's classify_ckpt
classify_ckpt = 'best.pt' # best.pt (lowest val loss) or ckpt.pt (the latest)
# data
data = ''                 # labelled examples: .csv / .tsv (with a header row) or .jsonl
val_data = ''             # a file of its own for validation; '' = split val_frac off data
test_data = ''            # a file of its own for the final test; '' = split test_frac off data
text_column = 'text'      # the field holding the text (a CSV/TSV column, or a JSONL key)
label_column = 'label'
val_frac = 0.1            # share of each label split off data for val (stratified, seeded)
test_frac = 0.1           # and for test (0 and no test_data: the final report is on val)
skip_bad_lines = False    # skip (and count) bad rows instead of stopping at the first
block_size = 0            # tokens a text may take, end-of-text included; 0 = the model's context
truncation = 'keep_end'   # a longer text keeps its last tokens ('keep_end') or its first ('keep_start')
batch_size = 16           # texts per micro-step, padded to the longest of them
gradient_accumulation_steps = 1
# what trains: the head always; of the trunk, 'head' = nothing, 'last' = the last n_last blocks and
# the final norm, 'all' = everything, 'lora' = LoRA adapters (model.py's) on lora_targets
trainable = 'all'
n_last = 1
lora_rank = 8
lora_alpha = 16.0         # the adapters' output is scaled by lora_alpha / lora_rank
lora_dropout = 0.0
lora_targets = ('qkv', 'o_proj', 'up_proj', 'down_proj')
dropout = 0.0
class_weights = False     # weight the loss by n / (classes * count of the class): rare classes count as much as common ones
# optimizer: AdamW, warmup then cosine, as in train.py
learning_rate = 3e-4      # 'all' and 'last': ~3e-4 moves trained weights gently; 'head' and 'lora' take ~1e-3 to 3e-3
min_lr = 3e-5
max_iters = 300
warmup_iters = 20
lr_decay_iters = 0        # 0 = max_iters
weight_decay = 0.0        # decay would pull the pretrained weights toward 0, not toward the base
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0           # 0 = off
# eval, logging, checkpoints
eval_interval = 50        # also at iter 0: the untrained head's loss and accuracy
eval_examples = 500       # texts per split at each eval (a fixed random sample; 0 = all)
log_interval = 10
keep_last_n = 1
wandb_log = False         # also send the log to Weights & Biases (pip install wandb)
wandb_project = 'nanolm'
wandb_run_name = ''
swanlab_log = False       # also send the log to SwanLab (pip install swanlab)
swanlab_project = 'nanolm'
swanlab_run_name = ''
# system
device = 'auto'           # 'auto' = cuda > mps > cpu
dtype = 'auto'            # 'auto' = bfloat16 on GPUs that have it, float16 + GradScaler on older ones, float32 on CPU/MPS
config = configure(globals())


def check_settings():
    """Every setting's range, before anything is loaded or written: one line names what is wrong.
    check_ranges does the checks every training script shares (configurator.py)."""
    check_ranges(config, at_least_1=('batch_size', 'gradient_accumulation_steps', 'eval_interval', 'log_interval',
                                     'keep_last_n', 'n_last', 'lora_rank'),
                 not_negative=('max_iters', 'warmup_iters', 'lr_decay_iters', 'learning_rate', 'min_lr', 'weight_decay',
                               'grad_clip', 'block_size', 'eval_examples'),
                 folders={'out_dir': 'out-cls'})
    if not (0 <= val_frac < 1 and 0 <= test_frac < 1 and val_frac + test_frac < 1):
        die(f"val_frac={val_frac}, test_frac={test_frac}: each in [0, 1), and together below 1 (0.1 holds out 10% of each label)")
    if trainable not in ('head', 'last', 'all', 'lora'):
        die(f"trainable={trainable!r} must be 'head', 'last' (with n_last), 'all' or 'lora'")
    if truncation not in ('keep_end', 'keep_start'):
        die(f"truncation={truncation!r} must be 'keep_end' or 'keep_start'")
    if init_from not in ('base', 'resume') and not init_from.startswith('hf:'):
        die(f"init_from={init_from!r} must be 'base' (the run in base_dir), 'resume' or 'hf:<folder>'")
    if 'RANK' in os.environ:
        die("finetune_cls.py runs in one process; start it with python, not torchrun")


check_settings()
# ----------------------------------------------------------------------------- setup
env = training.init_run(device, dtype)
say, device = env.say, env.device
scaler = torch.amp.GradScaler(env.device_type, enabled=(env.dtype == 'float16'))  # fp16 (T4) needs loss scaling


def head_logits(model, idx, mask):
    """idx, mask (B, T) -> logits (B, K): the head on the final hidden state of each text's last
    real token (its end-of-text)."""
    h, _ = model(idx, hidden=True)                                                    # (B, T, C)
    last = h[torch.arange(idx.size(0), device=idx.device), cls_data.last_index(mask)]  # (B, C)
    return model.score(last)                                                          # (B, K)


@torch.no_grad()
def predict(model, seqs, pad_id):
    """Class probabilities (N, K) on the CPU for N token lists. Texts go in batches of similar
    length (sorted), which wastes little on padding; right padding keeps each answer the same."""
    model.eval()
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    probs = torch.zeros(len(seqs), model.score.out_features)
    for k in range(0, len(order), batch_size):
        ix = order[k:k + batch_size]
        idx, mask = cls_data.pad([seqs[i] for i in ix], pad_id)
        with env.autocast:
            logits = head_logits(model, idx.to(device), mask.to(device))
        probs[ix] = logits.float().softmax(-1).cpu()
    return probs


# ----------------------------------------------------------------------------- --classify: answer and exit
if classify:
    model, tok_spec, ckpt = load_model(out_dir, classify_ckpt)  # the trunk, LoRA adapters merged; the head is in ckpt
    if 'labels' not in ckpt or 'score.weight' not in ckpt['model']:
        die(f"{out_dir}/{classify_ckpt} is not a classifier (no labels or head in it); train one with finetune_cls.py")
    labels, run = ckpt['labels'], ckpt['config']
    model.score = nn.Linear(model.cfg.n_embd, len(labels), bias=False)
    model.score.weight.data.copy_(ckpt['model']['score.weight'])
    model.to(device)
    tok = tokenizer.load(tok_spec)
    if classify.startswith('FILE:'):
        path = classify[5:]
        if not os.path.isfile(path):
            die(f"file {path} not found (--classify=FILE:path reads one text per line)")
        try:
            with open(path, encoding='utf-8-sig') as f:
                texts = [(f"{path}:{n}", line.rstrip('\r\n')) for n, line in enumerate(f, 1) if line.strip()]
        except UnicodeDecodeError as e:
            die(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8")
    else:
        texts = [('--classify', classify)]
    # (the text rides in the label's slot through encode, which may skip a bad line with --skip_bad_lines)
    encoded, _ = cls_data.encode(tok, [(where, text, text) for where, text in texts], run['block_size'] or model.cfg.block_size,
                                 run['truncation'], skip_bad_lines)
    probs = predict(model, [ids for _, ids, _ in encoded], tok.eot)
    for (_, _, text), p in zip(encoded, probs):
        k = int(p.argmax())
        print(f"{labels[k]}\t{p[k]:.3f}" + (f"\t{text}" if classify.startswith('FILE:') else ''))
    training.leave(0)

# ----------------------------------------------------------------------------- data: read, split, check the labels
if not data:
    die("no data: pass a labelled file with --data=PATH (.csv/.tsv with a header row, or .jsonl)")
counts = {}  # bad rows skipped, with --skip_bad_lines
raw = {'train': cls_data.read_examples(data, text_column, label_column, skip_bad_lines, counts)}
if not raw['train']:
    die(f"{data} holds no examples")
for split, path in (('val', val_data), ('test', test_data)):
    if path:
        raw[split] = cls_data.read_examples(path, text_column, label_column, skip_bad_lines, counts)
carve = [s for s in ('val', 'test') if s not in raw]  # the splits that come out of data
raw['train'], *parts = cls_data.split(raw['train'], [val_frac if s == 'val' else test_frac for s in carve], seed)
raw.update(zip(carve, parts))
labels = cls_data.label_names(label for _, _, label in raw['train'])
if len(labels) < 2:
    die(f"{data}: every training example has the label {labels[0]!r}; a classifier needs two classes or more")
label_id = {name: i for i, name in enumerate(labels)}
for split in ('val', 'test'):
    for where, _, label in raw[split]:
        if label not in label_id:
            die(f"{where}: label {label!r} never occurs in the training data ({', '.join(map(repr, labels[:10]))}); "
                f"the classifier cannot predict it")
if not raw['val']:
    die(f"no validation examples: set val_frac above 0 or give --val_data (now {len(raw['train'])} train examples)")

# ----------------------------------------------------------------------------- model: the trunk, the head, what trains
ckpt, old_run = start_run(out_dir, 'resume' if init_from == 'resume' else 'scratch', overwrite)
lora = {'rank': lora_rank, 'alpha': lora_alpha, 'targets': list(lora_targets)} if trainable == 'lora' else None
torch.manual_seed(seed)  # the random trunk (random_trunk=True) and dropout
if ckpt is not None:  # resume: the run's own trunk, tokenizer, labels and choice of what trains
    if 'labels' not in ckpt:
        die(f"{out_dir}/ckpt.pt is not a finetune_cls.py run (no labels in it); use another --out_dir")
    old = ckpt.get('config', {})
    diff = [f"{k}: {old.get(k)!r} then, {config[k]!r} now" for k in ('trainable', 'n_last', 'lora_rank', 'lora_alpha', 'lora_targets')
            if old.get(k) != config[k] and (k in ('trainable', 'n_last') or lora)]
    if diff or ckpt['labels'] != labels:
        die(f"{out_dir}/ckpt.pt does not match this run ({'; '.join(diff) or 'its labels differ from the data'}); "
            f"resume with the run's own settings and data")
    mcfg, tok_spec, where = ModelConfig.from_dict(ckpt['model_config']), ckpt['tokenizer'], ckpt.get('base')
    mcfg.dropout = dropout
    model = GPT(mcfg)
else:
    where = init_from if init_from.startswith('hf:') else os.path.join(base_dir, base_ckpt)
    try:
        base, tok_spec, _ = load_model(base_dir, base_ckpt, init_from if init_from.startswith('hf:') else '')
    except FileNotFoundError:
        die(f"no checkpoint at {where}: pretrain a model first (python train.py ...) and point --base_dir at its out_dir")
    if tok_spec is None:
        die(f"{where} has no tokenizer in it, so the texts cannot be turned into its tokens")
    mcfg = base.cfg
    mcfg.dropout = dropout
    model = GPT(mcfg)  # a fresh model, so that this run's dropout takes effect; randomly initialised ...
    if not random_trunk:
        model.load_state_dict(base.state_dict())  # ... unless the pretrained weights go in
    del base
if trainable == 'last' and n_last > mcfg.n_layer:
    die(f"n_last={n_last} but the model has {mcfg.n_layer} blocks")
if trainable == 'lora':
    add_lora(model, lora_rank, lora_alpha, lora_dropout, lora_targets)  # freezes everything but the adapters
else:
    model.requires_grad_(trainable == 'all')
    for part in ([*model.blocks[-n_last:], model.ln_f] if trainable == 'last' else []):
        part.requires_grad_(True)
if not mcfg.tie_embeddings:  # the classifier never uses the language-model head: leave it as it was
    model.lm_head.requires_grad_(False)
# The head, attached after the freezing (it always trains). As a submodule it is saved, restored
# and optimized like any other weight; load_model leaves it out for scripts that want the LM.
# It starts at zero: every class equally likely before the first step (loss = ln K).
model.score = nn.Linear(mcfg.n_embd, len(labels), bias=False)
nn.init.zeros_(model.score.weight)
if ckpt is not None:
    model.load_state_dict(ckpt['model'])
model.to(device)

# ----------------------------------------------------------------------------- tokens
tok = tokenizer.load(tok_spec)
block = block_size or mcfg.block_size
if block > mcfg.block_size:
    die(f"block_size={block_size} is more than the model's context ({mcfg.block_size}); use {mcfg.block_size} or less")
examples, notes = {}, []  # split -> (token lists, class ids (N,))
for split in ('train', 'val', 'test'):
    enc, n_cut = cls_data.encode(tok, raw[split], block, truncation, skip_bad_lines, counts)
    examples[split] = ([ids for _, ids, _ in enc], torch.tensor([label_id[label] for _, _, label in enc], dtype=torch.long))
    if n_cut:
        notes.append(f"{split}: {n_cut} of {len(enc)} texts are longer than {block - 1} tokens and were cut ({truncation})")
    if not enc and split != 'test':
        die(f"no usable {split} examples in {data if split == 'train' else val_data or data}")
if counts.get('bad_lines'):
    notes.append(f"{counts['bad_lines']} bad rows skipped (--skip_bad_lines)")
y_train = examples['train'][1]
per_class = torch.bincount(y_train, minlength=len(labels))
if per_class.min() == 0:  # (a label whose every text was a skipped bad row)
    die(f"label {labels[int(per_class.argmin())]!r} has no usable training text left")
majority = int(per_class.argmax())
loss_weight = (len(y_train) / (len(labels) * per_class.float())).to(device) if class_weights else None
# the eval sample: fixed, so that every eval sees the same texts; its own generator leaves training's alone
eval_ix = {s: torch.randperm(len(examples[s][1]), generator=torch.Generator().manual_seed(seed + 7))[:eval_examples or None]
           for s in ('train', 'val')}


def get_batch(ix):
    """Training texts ix -> idx, mask (B, T) and class ids (B,), on the device."""
    idx, mask = cls_data.pad([examples['train'][0][i] for i in ix.tolist()], tok.eot)
    return idx.to(device), mask.to(device), y_train[ix].to(device)


# ----------------------------------------------------------------------------- optimizer, resume
iter_num, best_val, last_eval = 0, float('inf'), -1
if ckpt is not None:
    lr_decay_iters = resume_notes(ckpt, config, 1, say)  # (says what changed)
sampler = torch.Generator().manual_seed(seed)  # which texts come next: its state is the data position
optimizer = model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2))  # trainable parameters only
if ckpt is not None:
    iter_num, best_val, _, last_eval = restore_run(ckpt, env, model, optimizer, scaler, sampler, seed)
    say(f"resuming from {out_dir}/ckpt.pt at iter {iter_num} (best val loss {best_val:.4f})")
    del ckpt


def evaluate():
    """Loss and accuracy on the fixed eval sample of train and of val."""
    out = {}
    for split in ('train', 'val'):
        seqs, y = examples[split]
        ix = eval_ix[split]
        probs = predict(model, [seqs[i] for i in ix.tolist()], tok.eot)  # (n, K)
        loss = F.nll_loss(probs.clamp_min(1e-12).log(), y[ix], weight=None if loss_weight is None else loss_weight.cpu())
        out[split] = (loss.item(), (probs.argmax(1) == y[ix]).float().mean().item())
    model.train()
    return out


def checkpoint(is_best=False):
    save_run(env, out_dir, model, optimizer, scaler, sampler, keep_last_n, is_best, model_config=asdict(mcfg),
             config=config, tokenizer=tok_spec, labels=labels, lora=lora, base=where,
             iter_num=iter_num, best_val=best_val, last_eval=last_eval)


def eval_and_checkpoint():
    global best_val, last_eval
    (train_loss, train_acc), (val_loss, val_acc) = evaluate().values()
    say(f"eval {iter_num}: train loss {train_loss:.4f} acc {train_acc:.3f} | val loss {val_loss:.4f} acc {val_acc:.3f}")
    log(iter=iter_num, train_loss=train_loss, val_loss=val_loss, train_acc=train_acc, val_acc=val_acc)
    last_eval, is_best, best_val = iter_num, val_loss < best_val, min(best_val, val_loss)
    checkpoint(is_best)


if old_run:  # every setting has passed its checks: only now may the old run go
    clear_run(out_dir, old_run)
os.makedirs(out_dir, exist_ok=True)
log = training.open_log(env, out_dir, iter_num, last_eval, config)
cli.catch_stop_signals(say)  # Ctrl-C / SIGTERM: finish the step, save, exit 128 + signal

# ----------------------------------------------------------------------------- the loop
say(f"config: {json.dumps(config)}")
n_all = sum(p.numel() for p in model.parameters())
n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
epochs = max_iters * batch_size * gradient_accumulation_steps / len(y_train)  # texts are drawn at random, with replacement
say(f"model: {where}{' (re-initialised)' if random_trunk else ''}, {n_all / 1e6:.2f}M parameters, {n_train:,} of them "
    f"training ({trainable}{f' {n_last}' if trainable == 'last' else ''}) | data: {len(y_train):,} train / "
    f"{len(examples['val'][1]):,} val / {len(examples['test'][1]):,} test texts, ~{epochs:.1f} epochs | {device} {env.dtype}")
say("labels (train count): " + ', '.join(f"{n} {c}" for n, c in zip(labels, per_class.tolist()))
    + f" | largest / smallest class: {per_class.max().item() / per_class.min().item():.1f}x"
    + ('' if class_weights or per_class.max() < 3 * per_class.min() else ' (imbalanced: consider --class_weights=True)'))
for note in notes:
    say(f"note: {note}")
if iter_num >= max_iters and last_eval == iter_num:
    say(f"the run in {out_dir}/ is already at iter {iter_num} >= max_iters={max_iters}; pass a larger --max_iters to train on")
model.train()
start_iter = iter_num
t_start = t0 = time.perf_counter()
while iter_num < max_iters:
    lr = training.cosine_lr(iter_num, learning_rate, min_lr, warmup_iters, lr_decay_iters or max_iters)
    for group in optimizer.param_groups:
        group['lr'] = lr
    if iter_num % eval_interval == 0 and iter_num != last_eval:  # iter 0 too: the untrained head
        eval_and_checkpoint()
        t0 = time.perf_counter()  # don't count eval and saving in this step's time

    # forward and backward over the micro-batches; the gradients add up in .grad
    ix = torch.randint(len(y_train), (gradient_accumulation_steps, batch_size), generator=sampler)
    loss_sum, n_tokens = torch.zeros((), device=device), 0
    for micro in range(gradient_accumulation_steps):
        idx, mask, y = get_batch(ix[micro])  # (B, T), (B, T), (B,)
        with env.autocast:
            logits = head_logits(model, idx, mask)  # (B, K)
        loss = F.cross_entropy(logits.float(), y, weight=loss_weight)
        scaler.scale(loss / gradient_accumulation_steps).backward()
        loss_sum += loss.detach() / gradient_accumulation_steps
        n_tokens += idx.numel()  # padding included: it costs the same compute
    loss_value = loss_sum.item()  # one sync per step
    if not math.isfinite(loss_value):
        die(f"loss is {loss_value} at iter {iter_num}. Likely causes: learning_rate={learning_rate} too high, or fp16 "
            f"overflow (try dtype=bfloat16 or float32). The last good checkpoint in {out_dir}/ is untouched")
    if grad_clip:  # clip the true gradients: unscale them first under fp16
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)

    t1 = time.perf_counter()
    dt, t0 = t1 - t0, t1
    log(iter=iter_num, loss=loss_value, lr=lr, dt=round(dt, 6))
    if iter_num % log_interval == 0:
        say(f"iter {iter_num}: loss {loss_value:.4f} | lr {lr:.2e} | {dt * 1000:.1f} ms | {n_tokens / dt:,.0f} tok/s | "
            f"eta {(max_iters - iter_num - 1) * dt / 60:.1f} min")
    iter_num += 1

    stop = training.should_stop(env)
    if stop:
        checkpoint()
        training.leave_resumable(env, stop, iter_num, out_dir, say)

# ----------------------------------------------------------------------------- the end: the test report
finished = iter_num > start_iter or last_eval != iter_num  # (a stop on the last step left its final eval to do)
if finished:
    eval_and_checkpoint()
    say(f"{iter_num - start_iter} iters in {time.perf_counter() - t_start:.1f} s")
    say(training.plot_log(out_dir))
# The weights val chose (best.pt), measured once on texts that chose nothing.
split = 'test' if len(examples['test'][1]) else 'val'
model.load_state_dict(load_checkpoint(os.path.join(out_dir, 'best.pt'))['model'])
seqs, y = examples[split]
pred = predict(model, seqs, tok.eot).argmax(1).numpy()
got = cls_data.scores(y.numpy(), pred, len(labels))
base_line = cls_data.scores(y.numpy(), np.full(len(y), majority), len(labels))
say(f"{split} ({len(y):,} texts{'' if split == 'test' else ', no test split'}), best.pt: "
    f"accuracy {got['accuracy']:.3f}, macro-F1 {got['macro_f1']:.3f} | majority-class baseline (always "
    f"{labels[majority]!r}): accuracy {base_line['accuracy']:.3f}, macro-F1 {base_line['macro_f1']:.3f}")
say('\n'.join(cls_data.report(got, labels)))
log(iter=iter_num, **{f'{split}_acc': got['accuracy'], f'{split}_macro_f1': got['macro_f1'],
                      'baseline_acc': base_line['accuracy']})
training.leave(0)
