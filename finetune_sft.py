"""
Supervised fine-tuning (SFT): teach a pretrained model (a train.py run) to answer. It learns
from chat or instruction records, and the loss counts only the assistant's tokens.

    python finetune_sft.py config/sft_poems.py                     # full fine-tuning of out-poems
    python finetune_sft.py config/sft_poems.py --lora_rank=8 --learning_rate=1e-3   # LoRA adapters only
    python finetune_sft.py config/sft_poems.py --init_from=resume  # continue a stopped run
    torchrun --standalone --nproc_per_node=2 finetune_sft.py config/sft_poems.py
    python sample.py --out_dir=out-sft-poems --chat

Data: one file of chat records ({"messages": [{"role": ..., "content": ...}, ...]}) or Alpaca
records ({"instruction", "input", "output"}), as JSONL or a JSON array. Every example is put in
the one chat template (chat_data.py), tokenized once into a cache of memmaps, and drawn whole into
batches padded to their longest example. The base run's tokenizer comes along; when it has no
chat tokens (gpt2) they are added, the vocabulary grows, and the new checkpoint's tokenizer
knows them, so sample.py and resume need no flag.

Read top to bottom like train.py: settings, setup, the starting model, data, the loop, the end.
The run machinery (device and DDP, the log: training.py; checkpoints and resume: checkpoint.py) is shared.
"""
import json
import os
import time
from dataclasses import asdict

import cli  # first: it makes errors (even a Ctrl-C during the slow torch import) one line
from cli import die
import training
from configurator import check_ranges, configure
import numpy as np
import torch

import chat_data
import scoring
import tokenizer
from checkpoint import clear_run, load_model, restore_run, resume_notes, save_run, start_run
from model import GPT, ModelConfig, add_lora, grow_vocab

# ----------------------------------------------------------------------------- settings
# run
out_dir = 'out-sft'
init_from = 'base'        # 'base' (base_dir's checkpoint), 'resume' (out_dir's) or 'hf:<folder>' (Hugging Face weights)
base_dir = 'out'          # the out_dir of the train.py run to fine-tune
base_ckpt = 'ckpt.pt'     # its ckpt.pt (latest) or best.pt (lowest val loss)
overwrite = False         # allow a new run to replace the run already in out_dir
seed = 1337
# data
data_file = 'data/sft.jsonl'  # chat records (.jsonl) or Alpaca records (.jsonl, or .json: one JSON array)
data_url = ''             # download data_file from here when it is missing ('' = never)
cache_dir = ''            # where the tokenized examples go; '' = data/sft-<data_file's name>/
val_fraction = 0.05       # share of the records held out for validation (never trained on)
skip_bad_lines = False    # skip (and count) bad records instead of stopping at the first
batch_size = 16           # examples per micro-step, padded to the longest of them
block_size = 0            # tokens an example may have as input; longer ones are cut. 0 = the model's context
gradient_accumulation_steps = 1  # micro-steps per optimizer step, summed over all processes
# what trains
dropout = 0.0
lora_rank = 0             # 0 = full fine-tuning; 8 = LoRA adapters of rank 8, everything else frozen
lora_alpha = 16.0         # the adapters' output is scaled by lora_alpha / lora_rank
lora_dropout = 0.0
lora_targets = ('qkv', 'o_proj', 'up_proj', 'down_proj')  # the Linear layers given adapters; LLaMA also has gate_proj
# optimizer: AdamW, warmup then cosine, as in train.py
learning_rate = 1e-4      # a fine-tune moves trained weights: ~10x below pretraining (LoRA: ~1e-3)
min_lr = 1e-5
max_iters = 500
warmup_iters = 20
lr_decay_iters = 0        # 0 = max_iters
weight_decay = 0.0        # decay would pull the pretrained weights toward 0, not toward the base
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0           # 0 = off
skip_nonfinite = False    # skip (and count) steps whose loss is NaN/inf instead of stopping
# eval, logging, checkpoints
eval_interval = 100       # also at iter 0: the base model's loss on the replies
eval_iters = 20           # batches per split per eval (val: its first examples, in file order)
eval_tasks = ''           # question files (.jsonl, as eval.py --tasks), comma-separated: zero-shot accuracy at each eval, logged
log_interval = 10
keep_last_n = 1
sample_prompt = ''        # a user message answered at the end ('' = no sample)
sample_system = ''        # the system prompt for that sample ('' = none); sample.py --chat uses it too, unless told otherwise
sample_tokens = 200
wandb_log = False         # also send the log to Weights & Biases (pip install wandb)
wandb_project = 'nanolm'
wandb_run_name = ''
swanlab_log = False       # also send the log to SwanLab (pip install swanlab)
swanlab_project = 'nanolm'
swanlab_run_name = ''
# system
device = 'auto'           # 'auto' = cuda > mps > cpu
dtype = 'auto'            # 'auto' = bfloat16 on GPUs that have it, float16 + GradScaler on older ones, float32 on CPU/MPS
compile = False           # torch.compile the model (example lengths vary: expect a few recompiles)
fsdp = False              # under torchrun: shard parameters, gradients and optimizer state (FSDP2) instead of DDP
gradient_checkpointing = False  # recompute each block's activations (and the loss, in chunks) in backward: less memory, more compute
dist_timeout = 600        # seconds a process waits for the others in a collective before the job fails
peak_flops = 0.0          # for MFU; 0 = a known GPU's spec sheet, or a measured matmul on CPU/MPS
config = configure(globals())


def check_settings():
    """Every setting's range, before anything is loaded or written: one line names what is wrong.
    check_ranges does the checks every training script shares (configurator.py)."""
    check_ranges(config, at_least_1=('batch_size', 'gradient_accumulation_steps', 'eval_interval', 'eval_iters',
                                     'log_interval', 'keep_last_n'),
                 not_negative=('max_iters', 'warmup_iters', 'lr_decay_iters', 'learning_rate', 'min_lr', 'weight_decay',
                               'grad_clip', 'sample_tokens', 'block_size', 'lora_rank', 'lora_alpha', 'lora_dropout'),
                 folders={'out_dir': 'out-sft'})
    if lora_dropout >= 1:
        die(f"lora_dropout={lora_dropout} must be below 1: the share of each adapter's input dropped (0 = none)")
    if not 0 < val_fraction < 1:
        die(f"val_fraction={val_fraction} must be above 0 and below 1: the run needs val records (0.05 holds out 5% of them)")
    if init_from not in ('base', 'resume') and not init_from.startswith('hf:'):
        die(f"init_from={init_from!r} must be 'base' (the train.py run in base_dir), 'resume' or 'hf:<folder>'")
    if fsdp and lora_rank:
        die("fsdp=True with LoRA is not supported (the adapters are small: use DDP, the default under torchrun)")


check_settings()
# ----------------------------------------------------------------------------- setup
env = training.init_run(device, dtype, dist_timeout)  # (no width given: float32 on a CPU unless asked)
say, device = env.say, env.device
scaler = torch.amp.GradScaler(env.device_type, enabled=(env.dtype == 'float16'))
accum = training.split_accum(gradient_accumulation_steps, env)  # micro-steps per process, as in train.py

# ----------------------------------------------------------------------------- the starting model
ckpt, old_run = start_run(out_dir, 'resume' if init_from == 'resume' else 'scratch', overwrite)
lora = {'rank': lora_rank, 'alpha': lora_alpha, 'targets': list(lora_targets)} if lora_rank else None
if ckpt is not None:  # resume: the run's own (grown) model, tokenizer and adapters
    if ckpt.get('lora') != lora:
        die(f"{out_dir}/ckpt.pt was trained with lora={ckpt.get('lora')}, now lora={lora}; resume with the run's own lora_* settings")
    mcfg = ModelConfig.from_dict({**ckpt['model_config'], 'dropout': dropout})
    tok_spec, new_from, base_model = ckpt['tokenizer'], ckpt.get('new_tokens_from'), ckpt.get('base_model', '')
    raw_model = GPT(mcfg)
else:
    hf = init_from.startswith('hf:')
    base_model = init_from if hf else os.path.join(base_dir, base_ckpt)
    try:
        base, tok_spec, _ = load_model(base_dir, base_ckpt, init_from if hf else '', block_size=block_size or None)
    except FileNotFoundError:
        die(f"no checkpoint at {base_model}: pretrain a base first (python train.py config/train_poems.py) "
            f"or point --base_dir at the out_dir of a train.py run")
    if tok_spec is None:
        die(f"{base_model} has no tokenizer in it, so no text can be put in the chat template")
    mcfg = base.cfg
    mcfg.dropout = dropout
    raw_model = GPT(mcfg)  # a fresh model, so that this run's dropout takes effect
    raw_model.load_state_dict(base.state_dict())
    del base
    tok = tokenizer.load(tok_spec)
    if tok.kind == 'char':
        die(f"{base_model} uses the char tokenizer, which has no chat tokens; pretrain the base on data prepared "
            f"with --tokenizer=bpe (it reserves <|im_start|> and <|im_end|>) or gpt2")
    missing = [s for s in (chat_data.IM_START, chat_data.IM_END) if s not in tok.special]
    new_from = None
    if missing:  # gpt2 & co: the chat tokens take the next free ids, and the model gets rows for them
        new_from = tok.n_vocab
        extra = {s: tok.n_vocab + i for i, s in enumerate(missing)}
        field = 'extra_special' if tok_spec['kind'] == 'tiktoken' else 'special'  # (a bpe spec lists all its specials)
        tok_spec = {**tok_spec, field: {**tok_spec.get(field, {}), **extra}}
        grow_vocab(raw_model, tokenizer.load(tok_spec).n_vocab, n_old=new_from)
        say(f"added {', '.join(f'{s} = {i}' for s, i in extra.items())} to the tokenizer of {base_model}; the embedding "
            f"and output rows grow to {mcfg.vocab_size:,}, the new ones starting as the mean of the old")
tok = tokenizer.load(tok_spec)
tasks = scoring.read_eval_tasks(eval_tasks, tok)  # {name: questions}, read now: a bad file stops the run before it trains
if tok.n_vocab > mcfg.vocab_size:
    die(f"the tokenizer has {tok.n_vocab:,} tokens but the model only {mcfg.vocab_size:,} rows")
im_start, im_end = chat_data.chat_ids(tok)
torch.manual_seed(seed)  # the same adapters on every process
if lora:  # only the adapters train, and the rows of tokens added just now (their old rows stay frozen)
    add_lora(raw_model, lora_rank, lora_alpha, lora_dropout, lora_targets)
if ckpt is not None:
    raw_model.load_state_dict(ckpt['model'])
torch.manual_seed(seed + env.rank)  # from here on (dropout) each process has its own stream
raw_model.to(device)
raw_model.gradient_checkpointing = gradient_checkpointing
grown = []  # under LoRA, the embedding matrices whose new rows train
if lora and new_from is not None:
    grown = [raw_model.wte.weight] + ([] if mcfg.tie_embeddings else [raw_model.lm_head.weight])
    for w in grown:
        w.requires_grad_(True)
        keep = (torch.arange(w.size(0), device=device) >= new_from).to(w.dtype)[:, None]  # (V, 1): 1 on the new rows
        w.register_hook(lambda g, keep=keep: g * keep)  # old rows get a zero gradient: Adam leaves them as they are

# ----------------------------------------------------------------------------- data
if not os.path.exists(data_file):
    if not data_url:
        die(f"data file {data_file} not found; pass your chat or Alpaca records with --data_file=PATH")
    if env.master:
        chat_data.download(data_url, data_file, say)
cache_dir = cache_dir or os.path.join('data', 'sft-' + os.path.basename(data_file).split('.')[0])
if env.master:  # tokenized once; later runs (and the other processes) read the cache
    chat_data.build_cache(data_file, tok, tok_spec, cache_dir, val_fraction, seed, skip_bad_lines, say)
if env.ddp:
    torch.distributed.barrier()
data, meta = chat_data.load_cache(cache_dir)
block = block_size or mcfg.block_size
if block > mcfg.block_size:
    die(f"block_size={block_size} is more than the model's context ({mcfg.block_size}); use {mcfg.block_size} or less")
examples, notes = {}, []
for split in ('train', 'val'):
    examples[split], n_cut, n_dropped = chat_data.usable(data[split], block)
    if n_cut or n_dropped:
        notes.append(f"{split}: {n_cut} cut to their first {block + 1} tokens, {n_dropped} dropped (no reply token inside them)")
    if len(examples[split]) == 0:
        die(f"{data_file} gives no {split} examples ({meta['examples'][split]} before the cut); "
            + ("raise val_fraction" if split == 'val' else "lower val_fraction or add records"))


def get_batch(split, ix):
    """Examples ix (positions in examples[split]) -> x, y (B, T) on the device, and the number of
    targets the loss counts. T is the longest example's length - 1; see chat_data.make_batch."""
    x, y = chat_data.make_batch(data[split], examples[split][ix], block, tok.eot)
    n = int((y != -100).sum())
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    if env.device_type == 'cuda':
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True), n
    return x.to(device), y.to(device), n


# The eval batches, fixed: val's first examples in order, and a fixed random sample of train.
n_eval = eval_iters * batch_size
eval_ix = {'val': np.arange(min(n_eval, len(examples['val']))),
           'train': torch.randperm(len(examples['train']), generator=torch.Generator().manual_seed(seed + 7))[:n_eval].numpy()}

# ----------------------------------------------------------------------------- optimizer, resume
model = training.wrap_model(raw_model, env, compile, fsdp)  # DDP or FSDP under torchrun, compiled if asked
optimizer = raw_model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), never_decay=grown)
# Training examples come from one generator, the same on every process (each takes its slice of
# the global batch): its state is the data position, whatever the number of processes.
sampler = torch.Generator().manual_seed(seed)
iter_num, best_val, skipped, last_eval = 0, float('inf'), 0, -1
if ckpt is not None:
    lr_decay_iters = resume_notes(ckpt, config, env.world, say)  # (says what changed)
    iter_num, best_val, skipped, last_eval = restore_run(ckpt, env, raw_model, optimizer, scaler, sampler, seed)
    say(f"resuming from {out_dir}/ckpt.pt at iter {iter_num} (best val loss {best_val:.4f})")
    del ckpt
peak_flops = peak_flops or training.peak_flops(env)


@torch.no_grad()
def estimate_loss():
    """Loss per counted token over the fixed eval batches of each split: the replies only,
    masked exactly as in training. Training's random streams are not touched (exact resume)."""
    out = {}
    model.eval()
    for split in ('train', 'val'):
        total, count = 0.0, 0
        for k in range(0, len(eval_ix[split]), batch_size):
            x, y, n = get_batch(split, eval_ix[split][k:k + batch_size])
            with env.autocast:
                _, loss = model(x, y)
            total, count = total + loss.item() * n, count + n
        out[split] = total / count
    model.train()
    return out


def checkpoint(is_best=False):
    save_run(env, out_dir, raw_model, optimizer, scaler, sampler, keep_last_n, is_best, model_config=asdict(mcfg),
             config=config, tokenizer=tok_spec, lora=lora, new_tokens_from=new_from, base_model=base_model,
             iter_num=iter_num, best_val=best_val, skipped=skipped, last_eval=last_eval)


def eval_and_checkpoint():
    global best_val, last_eval
    losses = estimate_loss()
    accs = scoring.task_accuracy(raw_model, tok, tok_spec, tasks, batch_size, device, env.autocast)  # {} without eval_tasks
    say(f"eval {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f} (reply tokens only)"
        + ''.join(f", {k} {v:.3f}" for k, v in accs.items() if k.startswith('acc_') and not k.startswith('acc_norm_')))
    log(iter=iter_num, train_loss=losses['train'], val_loss=losses['val'], **accs)
    last_eval, is_best, best_val = iter_num, losses['val'] < best_val, min(best_val, losses['val'])
    checkpoint(is_best)


if env.master and old_run:  # every setting has passed its checks: only now may the old run go
    clear_run(out_dir, old_run)
if env.master:
    os.makedirs(out_dir, exist_ok=True)
log = training.open_log(env, out_dir, iter_num, last_eval, config)
cli.catch_stop_signals(say)  # Ctrl-C / SIGTERM: finish the step, save, exit 128 + signal

# ----------------------------------------------------------------------------- the loop
say(f"config: {json.dumps(config)}")
n_all = sum(p.numel() for p in raw_model.parameters())
n_train = sum(p.numel() for p in raw_model.parameters() if p.requires_grad and not any(p is w for w in grown))
n_train += sum((w.size(0) - new_from) * w.size(1) for w in grown)  # of a grown embedding, only the new rows train
epochs = max_iters * batch_size * accum * env.world / len(examples['train'])  # examples are drawn at random, with replacement
say(f"model: {n_all / 1e6:.2f}M parameters, {n_train / 1e6:.3f}M of them training" + (f" (LoRA rank {lora_rank})" if lora else '')
    + f" | data: {len(examples['train']):,} train / {len(examples['val']):,} val examples from {data_file}, "
    f"{100 * meta['counted']['train'] / max(1, meta['tokens']['train']):.0f}% of their tokens count (the replies) | "
    f"~{epochs:.1f} epochs | {device} {env.dtype} x{env.world}")
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
    if iter_num % eval_interval == 0 and iter_num != last_eval:  # iter 0 too: the base model's val loss
        eval_and_checkpoint()
        t0 = time.perf_counter()

    # The global batch of this step (accum x world x batch_size examples) is drawn the same on every
    # process, and each takes its own column, as in train.py. The micro-batches are made first, so
    # that each one's loss can weigh as its share of the reply tokens in the whole global batch:
    # every reply token then counts the same, whatever the length of its example or its batch.
    ix = torch.randint(len(examples['train']), (accum, env.world, batch_size), generator=sampler)[:, env.rank]
    batches = [get_batch('train', ix[micro].numpy()) for micro in range(accum)]
    n_step = torch.tensor(float(sum(n for _, _, n in batches)), device=device)
    if env.ddp:
        torch.distributed.all_reduce(n_step)  # reply tokens in the global batch
    n_step = n_step.item() / env.world  # (DDP averages the gradients over processes: a mean, not a sum)
    loss_sum, n_tokens = torch.zeros((), device=device), 0
    for micro, (x, y, n) in enumerate(batches):
        training.grad_sync(model, env, micro == accum - 1)  # all-reduce only on the last micro-step
        with env.autocast:
            _, loss = model(x, y)  # the mean over this batch's reply tokens
        scaler.scale(loss * (n / n_step)).backward()
        loss_sum += loss.detach() * (n / n_step)
        n_tokens += x.numel()  # padding included: it costs the same compute
    if env.ddp:
        torch.distributed.all_reduce(loss_sum, op=torch.distributed.ReduceOp.AVG)
    loss_value = loss_sum.item()  # one sync per step
    if training.check_loss(loss_value, skip_nonfinite, (iter_num, learning_rate, out_dir)):  # NaN/inf: stop, or skip
        skipped += 1
        say(f"iter {iter_num}: loss {loss_value}, step skipped ({skipped} so far)")
    else:
        if grad_clip:  # clip the true gradients: under fp16 they are scaled up until unscaled
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
    optimizer.zero_grad(set_to_none=True)

    t1 = time.perf_counter()
    dt, t0 = t1 - t0, t1
    log(iter=iter_num, loss=loss_value, lr=lr, dt=round(dt, 6))
    if iter_num % log_interval == 0:
        mfu = raw_model.estimate_mfu(n_tokens, dt, peak_flops)
        say(f"iter {iter_num}: loss {loss_value:.4f} | lr {lr:.2e} | {dt * 1000:.1f} ms | {n_tokens * env.world / dt:,.0f} tok/s | "
            f"mfu {mfu * 100:.1f}% | eta {(max_iters - iter_num - 1) * dt / 60:.1f} min")
    iter_num += 1

    stop = training.should_stop(env)  # every process stops at the same step
    if stop:
        checkpoint()
        training.leave_resumable(env, stop, iter_num, out_dir, say)

# ----------------------------------------------------------------------------- the end
finished = iter_num > start_iter or last_eval != iter_num
if finished:
    eval_and_checkpoint()
    say(f"{iter_num - start_iter} iters in {time.perf_counter() - t_start:.1f} s")
if env.master and finished:
    say(training.plot_log(out_dir))
    if sample_prompt:  # one reply, through the same template sample.py --chat uses
        messages = ([{'role': 'system', 'content': sample_system}] if sample_system else []) + [{'role': 'user', 'content': sample_prompt}]
        reply = training.end_sample(raw_model, chat_data.prompt_ids(tok, messages), sample_tokens, env, seed, {im_end, tok.eot})
        say(f"sample:\n> {sample_prompt}\n{tok.decode(reply)}")
training.leave(0)
