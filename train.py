"""
Pretrain a GPT-2- or LLaMA-style model. One process:

    python train.py config/train_verdict.py --max_iters=2000

Several GPUs (or CPU processes, with gloo) on one machine:

    torchrun --standalone --nproc_per_node=4 train.py config/train_verdict.py

Resume a stopped run (Ctrl-C, SIGTERM, a crash, or a finished run with more --max_iters):

    python train.py config/train_verdict.py --init_from=resume

Every global below is a setting: change it in a config/*.py file or with --key=value.
Read top to bottom: settings, setup, data, model, the loop, the end. What every training
script needs around its loop (DDP, signals, checkpoints, the log) is in common.py and
checkpoint.py; the loop itself is written out here.
"""
import json
import math
import os
import shlex
import sys
import time
from dataclasses import asdict

import common  # first: it makes errors (even a Ctrl-C during the slow torch import) one line
from common import die
from configurator import configure
import numpy as np
import torch

import prepare
import tokenizer
from checkpoint import check_resume, clear_run, load_model, restore_run, resume_notes, same_tokenizer, save_run, start_run
from model import GPT, ModelConfig, make_config

# ----------------------------------------------------------------------------- settings
# run
out_dir = 'out'
init_from = 'scratch'     # 'scratch', 'resume' (from out_dir/ckpt.pt) or 'hf:<folder>' (Hugging Face weights)
overwrite = False         # allow a scratch run to replace the run already in out_dir
seed = 1337
# data: data/<dataset>/{train,val}.bin and meta.json, made by prepare.py
dataset = 'verdict'
data_dir = 'data'
batch_size = 8            # sequences per micro-step
block_size = 128          # tokens per sequence (context length)
gradient_accumulation_steps = 1  # micro-steps per optimizer step, summed over all processes
# model (see model.py; None = take it from the arch preset)
arch = 'gpt2'             # 'gpt2' or 'llama'
n_layer = 4
n_head = 4
n_kv_head = 0             # 0 = n_head; fewer for grouped-query attention
n_embd = 128
ffn_hidden = 0            # 0 = the family's default width
dropout = 0.0
norm = None               # 'layernorm' | 'rmsnorm'
pos_emb = None            # 'learned' | 'rope'
mlp = None                # 'gelu' | 'swiglu'
bias = None
tie_embeddings = None
rope_theta = 10000.0
# optimizer: AdamW (or Muon + AdamW) with a linear warmup, then a cosine decay down to min_lr
learning_rate = 1e-3      # AdamW's peak LR
muon = False              # Muon on the matrices inside the blocks, AdamW on the rest (optim.py)
muon_lr = 0.02            # muon=True: the block matrices' peak LR (Muon's steps are normalized: a scale of its own)
min_lr = 1e-4
max_iters = 2000
warmup_iters = 100
lr_decay_iters = 0        # 0 = max_iters
cooldown_frac = 0.0       # > 0: hold the LR after warmup, then decay linearly over this last fraction (warmup-stable-decay)
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0           # 0 = off
skip_nonfinite = False    # skip (and count) steps whose loss is NaN/inf instead of stopping
ema_decay = 0.0           # > 0 (e.g. 0.98): eval, best.pt and sampling use a moving average of the weights (less noisy)
# eval, logging, checkpoints
eval_interval = 250
eval_iters = 20           # batches per split per eval
eval_full_val = False     # val loss on the whole val split (windows of block_size, every token once), not eval_iters batches
log_interval = 10
keep_last_n = 1           # keep this many latest checkpoints (ckpt.pt plus ckpt_<iter>.pt); best.pt always
sample_prompt = '\n'      # text for the short sample printed at the end ('' = no sample)
sample_tokens = 200
wandb_log = False         # also send the log to Weights & Biases (pip install wandb)
wandb_project = 'nanolm'
wandb_run_name = ''
swanlab_log = False       # also send the log to SwanLab (pip install swanlab)
swanlab_project = 'nanolm'
swanlab_run_name = ''
# system
device = 'auto'           # 'auto' = cuda > mps > cpu; or 'cpu', 'cuda', 'cuda:1', 'mps'
dtype = 'auto'            # 'auto' = bfloat16 where the GPU has it, float16 + GradScaler on older GPUs (T4); on a CPU bfloat16
                          # autocast if it has AVX512-BF16/AMX and a probe finds it faster, else float32; float32 on MPS
compile = None            # torch.compile the model; None = on for CUDA on Linux, off elsewhere (says why)
compile_mode = 'default'  # torch.compile's mode; 'reduce-overhead' replays each step's kernels as CUDA graphs (small models on a GPU)
gradient_checkpointing = False  # recompute each block's activations (and the loss, in chunks) in backward: less memory, more compute
fsdp = False              # under torchrun: shard parameters, gradients and optimizer state (FSDP2) instead of DDP
dist_timeout = 600        # seconds a process waits for the others in a collective before the job fails
peak_flops = 0.0          # for MFU; 0 = a known GPU's spec sheet, or a measured matmul on CPU/MPS
profile = 0               # > 0: run torch.profiler over this many steps (after 10 of warm-up) and write out_dir/profile.txt
config = configure(globals())
# ----------------------------------------------------------------------------- setup

too_small = [f'{k}={config[k]}' for k in ('batch_size', 'block_size', 'gradient_accumulation_steps', 'eval_interval',
                                         'eval_iters', 'log_interval', 'keep_last_n') if config[k] < 1]
if too_small:
    die(f"{', '.join(too_small)}: must be at least 1")
for key in ('out_dir', 'data_dir'):
    if not config[key] or os.path.isfile(config[key]):
        die(f"{key}={config[key]!r} must name a folder, e.g. --out_dir=out-verdict --data_dir=data")
if min(max_iters, warmup_iters, lr_decay_iters, learning_rate, min_lr, weight_decay, grad_clip, sample_tokens) < 0:
    die("max_iters, warmup_iters, lr_decay_iters, learning_rate, min_lr, weight_decay, grad_clip and sample_tokens must not be negative")
if not (0 <= beta1 < 1 and 0 <= beta2 < 1):
    die(f"beta1={beta1}, beta2={beta2}: AdamW's betas must be in [0, 1) (0.9 and 0.95 are usual)")
if not 0 <= cooldown_frac <= 1:
    die(f"cooldown_frac={cooldown_frac} must be in [0, 1]: the fraction of the run spent decaying the LR (0 = a cosine instead)")
if min_lr > learning_rate:
    die(f"min_lr={min_lr} is above learning_rate={learning_rate}; the cosine decays from learning_rate down to min_lr")
if init_from not in ('scratch', 'resume') and not init_from.startswith('hf:'):
    die(f"init_from={init_from!r} must be 'scratch', 'resume' or 'hf:<folder>'")
if fsdp and 'RANK' not in os.environ:
    die("fsdp=True shards the model over several processes: launch with torchrun --nproc_per_node=N train.py ...")
if not 0 <= ema_decay < 1:
    die(f"ema_decay={ema_decay} must be in [0, 1): the share of the average kept at each step (0 = off; 0.98 is ~50 steps)")
if fsdp and ema_decay:
    die("ema_decay > 0 keeps a whole copy of the weights, and FSDP gives each process only a shard; use DDP (fsdp=False)")
if compile_mode not in ('default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs'):
    die(f"compile_mode={compile_mode!r} must be 'default', 'reduce-overhead' (CUDA graphs), 'max-autotune' or 'max-autotune-no-cudagraphs'")
if fsdp and muon:
    die("muon=True orthogonalizes whole matrices, and FSDP gives each process only a shard of each; use DDP (fsdp=False)")

env = common.init_run(device, dtype, dist_timeout, width=n_embd)  # device, dtype, and the process group under torchrun
say, device = env.say, env.device
if env.dtype_note:
    say(env.dtype_note)
# fp16 gradients underflow without loss scaling; bf16 and fp32 need none (enabled=False is a no-op).
scaler = torch.amp.GradScaler(env.device_type, enabled=(env.dtype == 'float16'))
# accumulation is split over processes: the same tokens per optimizer step whatever the world size
accum = max(1, gradient_accumulation_steps // env.world)
if accum * env.world != gradient_accumulation_steps:
    say(f"note: gradient_accumulation_steps={gradient_accumulation_steps} over {env.world} processes -> {accum} each ({accum * env.world} in all)")
tokens_per_iter = accum * env.world * batch_size * block_size

# ----------------------------------------------------------------------------- data
ds_dir = os.path.join(data_dir, dataset)
if not os.path.exists(os.path.join(ds_dir, 'meta.json')):
    if dataset not in prepare.KNOWN:
        die(f"dataset '{dataset}' not found in {ds_dir}/ (no meta.json); make it with: python prepare.py {dataset} --input=YOUR_TEXT_FILE")
    if env.master:
        say(f"{ds_dir}/ is not prepared yet; running: python prepare.py {dataset}" + (f" --out_dir {shlex.quote(data_dir)}" if data_dir != 'data' else ''))
        prepare.prepare_known(dataset, out_dir=data_dir)
    if env.ddp:
        torch.distributed.barrier()
tok, meta = prepare.load_meta(ds_dir)
tok_spec = tokenizer.portable_spec(meta, ds_dir)  # the tokenizer, whole: it goes into every checkpoint
data = {}
for split in ('train', 'val'):
    path = os.path.join(ds_dir, f'{split}.bin')
    if not os.path.exists(path):
        die(f"{path} is missing; rerun: python prepare.py {dataset}")
    size, expected = os.path.getsize(path), meta[f'{split}_tokens'] * np.dtype(meta['dtype']).itemsize
    if size != expected:
        die(f"{path} has {size:,} bytes but meta.json says {expected:,} (an interrupted copy?); rerun: python prepare.py {dataset}")
    data[split] = np.memmap(path, dtype=np.dtype(meta['dtype']), mode='r')
    if len(data[split]) <= block_size:
        die(f"{path} has {len(data[split]):,} tokens, not enough for one block of block_size={block_size}+1; "
            f"use --block_size={max(8, len(data[split]) // 2)} or more data")


def get_batch(split, gen=None, starts=None):
    """x (B, T) tokens and y (B, T), the same shifted by one (the next tokens), from B windows
    of the split: at `starts`, or at batch_size random places drawn from gen."""
    d = data[split]
    ix = (starts if starts is not None else torch.randint(len(d) - block_size, (batch_size,), generator=gen)).tolist()
    x = torch.stack([torch.from_numpy(d[i:i + block_size].astype(np.int64)) for i in ix])
    y = torch.stack([torch.from_numpy(d[i + 1:i + 1 + block_size].astype(np.int64)) for i in ix])
    if env.device_type == 'cuda':  # pinned memory lets the copy overlap with compute
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


# ----------------------------------------------------------------------------- model, optimizer, resume
mcfg = make_config(arch, block_size=block_size, vocab_size=meta['vocab_size'], n_layer=n_layer, n_head=n_head,
                   n_kv_head=n_kv_head, n_embd=n_embd, ffn_hidden=ffn_hidden, dropout=dropout, norm=norm,
                   pos_emb=pos_emb, mlp=mlp, bias=bias, tie_embeddings=tie_embeddings, rope_theta=rope_theta)
ckpt, old_run = start_run(out_dir, 'resume' if init_from == 'resume' else 'scratch', overwrite)
base_model = init_from if init_from.startswith('hf:') else ckpt.get('base_model', '') if ckpt else ''
if init_from.startswith('hf:'):  # released weights: their architecture replaces the model settings above
    base, base_tok, _ = load_model('', init_from=init_from, block_size=block_size)
    if not same_tokenizer(base_tok, tok_spec):
        die(f"{init_from} has another tokenizer than {ds_dir}/ (prepare the data with the model's tokenizer: gpt2 for GPT-2)")
    mcfg = base.cfg
    mcfg.dropout = dropout
if ckpt is not None:
    if base_model:  # a run that started from released weights: its architecture is the checkpoint's, not the settings'
        mcfg = ModelConfig.from_dict({**ckpt['model_config'], 'dropout': dropout})
    mcfg = check_resume(ckpt, os.path.join(out_dir, 'ckpt.pt'), mcfg, tok_spec)
    changed = resume_notes(ckpt, config, env.world)
    lr_decay_iters = config['lr_decay_iters']
    if changed:
        say("resuming with changes: " + ", ".join(changed))
# Training batches come from one generator, the same on every process (each takes its slice of
# the global batch): its state is the data position, whatever the number of processes.
sampler = torch.Generator().manual_seed(seed)
torch.manual_seed(seed)  # the same initial weights on every process (FSDP shards them as they are)
raw_model = GPT(mcfg)
torch.manual_seed(seed + env.rank)  # from here on (dropout) each process has its own stream
if init_from.startswith('hf:'):
    raw_model.load_state_dict(base.state_dict())
    del base
if ckpt is not None:
    raw_model.load_state_dict(ckpt['model'])
raw_model.to(device)
raw_model.gradient_checkpointing = gradient_checkpointing
if compile is None:  # auto
    compile = env.device_type == 'cuda' and sys.platform == 'linux'
    if not compile:
        say(f"compile: off (auto turns torch.compile on for CUDA on Linux only: on {env.device_type} it is slow to start "
            f"and not known to pay off; --compile=True to try it)")
model = common.wrap_model(raw_model, env, compile, fsdp, compile_mode)  # DDP or FSDP under torchrun, compiled if asked
if muon:  # after FSDP: on the shards
    from optim import muon_adamw
    optimizer = muon_adamw(raw_model, learning_rate, muon_lr, weight_decay, (beta1, beta2))
else:
    optimizer = raw_model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2))
iter_num, best_val, skipped, last_eval = 0, float('inf'), 0, -1
if ckpt is not None:
    iter_num, best_val, skipped, last_eval = restore_run(ckpt, env, raw_model, optimizer, scaler, sampler, seed)
    say(f"resuming from {out_dir}/ckpt.pt at iter {iter_num} (best val loss {best_val:.4f})")
    if dtype == 'auto' and common.bf16_speedup and ckpt.get('dtype') in ('float32', 'bfloat16') and ckpt['dtype'] != env.dtype:
        # this CPU's bf16 probe (timed, so it can go either way near the line) chose otherwise than when the run began
        common.set_dtype(env, ckpt['dtype'])
        say(f"dtype: {env.dtype}, as the run was started (exact resume)")
peak_flops = peak_flops or common.peak_flops(env)
# The weights' moving average (ema_decay > 0): after every step ema += (1 - d) * (weights - ema), with
# d = min(ema_decay, (1 + t) / (10 + t)) so the first steps don't drag the random init along. The
# optimizer steps the weights as ever; eval, best.pt, the sample and sample.py see the average, which
# smooths out the noise a high LR puts into the weights (the speedrun: README, Performance).
ema = None
if ema_decay:
    saved = ckpt.get('ema') if ckpt is not None else None
    if ckpt is not None and saved is None:
        say("note: the checkpoint has no weight average (ema_decay was 0); it starts from the current weights")
    ema = [(saved[name].to(device) if saved else p.detach()).clone() for name, p in raw_model.named_parameters()]
    live = [p.detach() for p in raw_model.parameters()]  # (the same order as ema)
del ckpt


@torch.no_grad()
def swap_ema():
    """Exchange the weights and their average, in place: twice puts everything back."""
    for p, e in zip(raw_model.parameters(), ema):
        live = p.detach().clone()
        p.copy_(e)
        e.copy_(live)


def ema_state():
    """The average as a whole state_dict (tied weights under both names): what sample.py loads."""
    swap_ema()
    state = {k: v.detach().cpu().clone() for k, v in raw_model.state_dict().items()}
    swap_ema()
    return state


@torch.no_grad()
def full_val_loss():
    """Mean loss over the whole val split, cut into consecutive windows of block_size (the last one
    shorter): every token after the first is predicted exactly once, with the context its window
    gives it. Deterministic, and comparable between runs with the same block_size."""
    d, n = data['val'], len(data['val']) - 1  # n tokens have a next token to predict
    starts = torch.arange(0, n - block_size + 1, block_size)  # the whole windows
    total = 0.0
    for chunk in starts.split(batch_size):
        x, y = get_batch('val', starts=chunk)  # (b, T), (b, T)
        with env.autocast:
            _, loss = model(x, y)
        total += loss.item() * y.numel()
    tail = len(starts) * block_size  # where the tokens the whole windows left over begin
    if tail < n:
        x, y = (torch.from_numpy(d[i:i + n - tail].astype(np.int64))[None].to(device) for i in (tail, tail + 1))  # (1, n - tail)
        with env.autocast:
            _, loss = model(x, y)
        total += loss.item() * y.numel()
    return total / n


@torch.no_grad()
def estimate_loss():
    """Mean loss over eval_iters batches per split. The batches come from a generator reseeded
    every time: every eval sees the same data (comparable numbers) and training's random
    streams are left alone (exact resume). eval_full_val: val over the whole split instead."""
    out = {}
    model.eval()
    for split in ('train', 'val'):
        if split == 'val' and eval_full_val:
            out[split] = full_val_loss()
            continue
        gen = torch.Generator().manual_seed(seed + 7)
        losses = torch.zeros(eval_iters)
        for k in range(eval_iters):
            x, y = get_batch(split, gen)
            with env.autocast:
                _, loss = model(x, y)
            losses[k] = loss.item()
        out[split] = losses.mean().item()
    model.train()
    return out


def report(it, loss, lr, dt):
    """A step's row in log.jsonl and, every log_interval, its line. loss: a number, or a 0-dim tensor still
    on the GPU (read here, one step late: see the loop); a non-finite one stops the run."""
    loss_value = loss.item() if torch.is_tensor(loss) else loss
    if torch.is_tensor(loss) and not math.isfinite(loss_value):
        common.stop_nonfinite(loss_value, (it, learning_rate, out_dir))
    log(iter=it, loss=loss_value, lr=lr, dt=round(dt, 6))  # dt: this step's seconds (bench.py reads it)
    if it % log_interval == 0:
        mfu = raw_model.estimate_mfu(tokens_per_iter / env.world, dt, peak_flops)  # per process: peak_flops is one device's
        say(f"iter {it}: loss {loss_value:.4f} | lr {lr:.2e} | {dt * 1000:.1f} ms | {tokens_per_iter / dt:,.0f} tok/s | "
            f"mfu {mfu * 100:.1f}% | eta {(max_iters - it - 1) * dt / 60:.1f} min")


def flush_report():
    """Report the step whose loss is still unread (if any): before an eval, a checkpoint, the end."""
    global pending
    if pending:
        report(*pending)
        pending = None


def checkpoint(is_best=False):
    flush_report()
    save_run(env, out_dir, raw_model, optimizer, scaler, sampler, keep_last_n, is_best, model_config=asdict(mcfg),
             config=config, tokenizer=tok_spec, base_model=base_model, iter_num=iter_num, best_val=best_val, skipped=skipped,
             last_eval=last_eval, dtype=env.dtype, **({'ema': ema_state()} if ema else {}))


def eval_and_checkpoint():
    global best_val, last_eval
    flush_report()
    if ema:
        swap_ema()  # score the average ...
    losses = estimate_loss()
    if ema:
        swap_ema()  # ... and train on the weights
    say(f"eval {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
    log(iter=iter_num, train_loss=losses['train'], val_loss=losses['val'])
    last_eval, is_best, best_val = iter_num, losses['val'] < best_val, min(best_val, losses['val'])
    checkpoint(is_best)


if env.master and old_run:  # every setting has passed its checks: only now may the old run go
    clear_run(out_dir, old_run)
if env.master:
    os.makedirs(out_dir, exist_ok=True)
log = common.open_log(env, out_dir, iter_num, last_eval, config)  # log.jsonl, trimmed to the checkpoint on resume
common.catch_stop_signals(say)  # Ctrl-C / SIGTERM: finish the step, save, exit 128 + signal

# ----------------------------------------------------------------------------- the loop
say(f"config: {json.dumps(config)}")
n_all, n_matmul = raw_model.num_params(non_embedding=False), raw_model.num_params()
say(f"model: {arch}, {n_all / 1e6:.2f}M parameters ({n_matmul / 1e6:.2f}M without the embedding tables) | data: {ds_dir} "
    f"{len(data['train']):,} train / {len(data['val']):,} val tokens | {tokens_per_iter:,} tokens/iter | {device} {env.dtype} x{env.world}")
if iter_num >= max_iters and last_eval == iter_num:
    say(f"the run in {out_dir}/ is already at iter {iter_num} >= max_iters={max_iters}; pass a larger --max_iters to train on")
model.train()
# On a GPU, reading the loss (.item()) waits for the whole step to finish, and the GPU then idles while
# the CPU queues the optimizer, the moving average, the next batch and the next forward. So there, unless
# a non-finite loss must skip its own step (skip_nonfinite), each step's loss is read one step late,
# while the GPU runs the next: a NaN still stops the run, a step later, the last checkpoint untouched.
read_late = env.device_type == 'cuda' and not skip_nonfinite
pending = None  # (iter, loss tensor, lr, dt) of the step whose loss is not read yet
prof = None  # profile > 0: the profiler while it runs
start_iter = iter_num
t_start = t0 = time.perf_counter()
while iter_num < max_iters:
    lr = common.cosine_lr(iter_num, learning_rate, min_lr, warmup_iters, lr_decay_iters or max_iters, cooldown_frac)
    for group in optimizer.param_groups:
        group['lr'] = lr * group.get('lr_scale', 1.0)  # (Muon's groups have their own peak: muon_lr)
    if iter_num % eval_interval == 0 and iter_num > 0 and iter_num != last_eval:  # (a resumed run may have done this one)
        eval_and_checkpoint()
        t0 = time.perf_counter()  # don't count eval and saving in this step's time
    if profile and env.master and iter_num == start_iter + 10:  # where the time goes: after compile and warm-up
        prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU] + (
            [torch.profiler.ProfilerActivity.CUDA] if env.device_type == 'cuda' else []))
        prof.start()

    # The global batch of this step, accum micro-steps x world processes x batch_size windows, is
    # drawn the same on every process; each takes its own column. So 2 processes x batch B see
    # exactly the tokens of 1 process x 2B (or x B with twice the accumulation).
    starts = torch.randint(len(data['train']) - block_size, (accum, env.world, batch_size), generator=sampler)[:, env.rank]
    # forward and backward over accum micro-batches; the gradients add up in .grad.
    loss_sum = torch.zeros((), device=device)
    x, y = get_batch('train', starts=starts[0])  # (B, T), (B, T)
    for micro in range(accum):
        common.grad_sync(model, env, micro == accum - 1)  # all-reduce only on the last micro-step
        with env.autocast:
            _, loss = model(x, y)
        if micro + 1 < accum:  # fetch the next micro-batch now: a GPU is still running the forward just queued
            x, y = get_batch('train', starts=starts[micro + 1])  # (on a CPU this is simply the next thing done)
        scaler.scale(loss / accum).backward()
        loss_sum += loss.detach() / accum
    if env.ddp:
        torch.distributed.all_reduce(loss_sum, op=torch.distributed.ReduceOp.AVG)
    loss_value = None if read_late else loss_sum.item()  # a sync: the CPU waits for the step
    # clip, step, zero the gradients; a NaN/inf loss stops the run, or skips the step (skip_nonfinite)
    if common.optimizer_step(loss_value, model, optimizer, scaler, grad_clip, skip_nonfinite, (iter_num, learning_rate, out_dir)):
        skipped += 1
        say(f"iter {iter_num}: loss {loss_value}, step skipped ({skipped} so far)")
    if ema:  # the average moves (1 - d) of the way to the new weights (all tensors in one launch)
        torch._foreach_lerp_(ema, live, 1 - min(ema_decay, (1 + iter_num) / (10 + iter_num)))

    t1 = time.perf_counter()
    dt, t0 = t1 - t0, t1
    if read_late:
        flush_report()  # the previous step's loss: done by now, or nearly
        pending = (iter_num, loss_sum, lr, dt)
    else:
        report(iter_num, loss_value, lr, dt)
    iter_num += 1
    if prof and iter_num == start_iter + 10 + profile:
        prof.stop()
        common.write_profile(prof, os.path.join(out_dir, 'profile.txt'), profile)
        say(f"profile of {profile} steps: {out_dir}/profile.txt")
        prof = None

    stop = common.should_stop(env)  # every process stops at the same step
    if stop:
        checkpoint()
        common.leave_resumable(env, stop, iter_num, out_dir, say)

# ----------------------------------------------------------------------------- the end
finished = iter_num > start_iter or last_eval != iter_num  # (a stop on the last step left its final eval to do)
if finished:
    eval_and_checkpoint()
    say(f"{iter_num - start_iter} iters in {time.perf_counter() - t_start:.1f} s")
if env.master and finished:
    say(common.plot_log(out_dir))
    if sample_prompt:
        try:
            ids = tok.encode(sample_prompt) or [tok.eot]
        except ValueError as e:  # e.g. a character the char vocabulary has never seen
            say(f"note: sample_prompt cannot be encoded ({e}); sampling from end-of-text instead")
            ids = [tok.eot]
        raw_model.eval()
        if ema:
            swap_ema()  # the sample comes from the weights the last eval scored
        with torch.no_grad(), env.autocast:
            out = raw_model.generate(torch.tensor([ids], device=device), sample_tokens, temperature=0.8, top_k=200,
                                     stop_tokens={tok.eot}, generator=torch.Generator(device).manual_seed(seed))
        say("sample:\n" + tok.decode([t for t in out[0].tolist() if t != tok.eot]))
common.leave(0)
