"""
Pretrain a GPT-2-, LLaMA- or Qwen-style model:

    python train.py config/train_verdict.py --max_iters=2000                    # one process
    torchrun --standalone --nproc_per_node=4 train.py config/train_verdict.py   # several GPUs (or CPU processes, gloo)
    python train.py config/train_verdict.py --init_from=resume   # go on after Ctrl-C, SIGTERM, a crash, or with more iters

Every global below is a setting: change it in a config/*.py file or with --key=value.
Read top to bottom: settings, setup, data, model, the loop, the end. What every training
script needs around its loop (device and DDP: training.py; checkpoints: checkpoint.py;
errors and signals: cli.py) is written once there; the loop itself is written out here.
"""
import contextlib
import json
import os
import time
from dataclasses import asdict, replace

import cli  # first: it makes errors (even a Ctrl-C during the slow torch import) one line
from cli import die
import training
from configurator import check_ranges, configure
import numpy as np
import torch

import scoring
import tokenizer
from checkpoint import check_resume, clear_run, load_model, restore_run, resume_notes, same_tokenizer, save_run, start_run
from dataset import KNOWN, load_meta, open_splits, prepare_known
from model import GPT, SIZES, ModelConfig, make_config, released_params, size_config
from optim import WeightAverage, muon_adamw

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
arch = 'gpt2'             # 'gpt2', 'llama', 'qwen2' or 'qwen3' (model.py's ARCH)
model_size = ''           # a released model's shape, e.g. gpt2-124m, qwen3-0.6b (model.py's SIZES): sets arch and
                          # every model setting below but dropout; block_size and the vocabulary stay this run's
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
qkv_bias = None           # biases on q, k, v only (Qwen2)
qk_norm = None            # RMSNorm on each q and k head (Qwen3)
head_dim = 0              # 0 = n_embd // n_head
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
eval_tasks = ''           # question files (.jsonl, as eval.py --tasks), comma-separated: zero-shot accuracy at each eval, logged
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
dtype = 'auto'            # 'auto' = bf16 on GPUs that have it, fp16 + GradScaler on older ones (T4); on a CPU bf16 with
                          # AVX512-BF16/AMX and n_embd >= 256, else float32 (training.py:resolve_device); kept on resume
compile = None            # torch.compile the model; None = on for CUDA on Linux, off elsewhere (says why)
compile_mode = 'default'  # torch.compile's mode; 'reduce-overhead' replays each step's kernels as CUDA graphs (small models on a GPU)
gradient_checkpointing = False  # recompute each block's activations (and the loss, in chunks) in backward: less memory, more compute
fsdp = False              # under torchrun: shard parameters, gradients and optimizer state (FSDP2) instead of DDP
dist_timeout = 600        # seconds a process waits for the others in a collective before the job fails
peak_flops = 0.0          # for MFU; 0 = a known GPU's spec sheet, or a measured matmul on CPU/MPS
config = configure(globals())


def check_settings():
    """Every setting's range, before anything is loaded or written: one line names what is wrong.
    check_ranges does the checks every training script shares (configurator.py)."""
    check_ranges(config, at_least_1=('batch_size', 'block_size', 'gradient_accumulation_steps', 'eval_interval', 'eval_iters',
                                     'log_interval', 'keep_last_n'),
                 not_negative=('max_iters', 'warmup_iters', 'lr_decay_iters', 'learning_rate', 'min_lr', 'weight_decay',
                               'grad_clip', 'sample_tokens'),
                 folders={'out_dir': 'out-verdict', 'data_dir': 'data'})
    if not 0 <= cooldown_frac <= 1:
        die(f"cooldown_frac={cooldown_frac} must be in [0, 1]: the fraction of the run spent decaying the LR (0 = a cosine instead)")
    if init_from not in ('scratch', 'resume') and not init_from.startswith('hf:'):
        die(f"init_from={init_from!r} must be 'scratch', 'resume' or 'hf:<folder>'")
    if not 0 <= ema_decay < 1:
        die(f"ema_decay={ema_decay} must be in [0, 1): the share of the average kept at each step (0 = off; 0.98 is ~50 steps)")
    if fsdp and (ema_decay or muon):
        die(f"{'ema_decay > 0 keeps a whole copy of the weights' if ema_decay else 'muon=True orthogonalizes whole matrices'}, "
            "and FSDP gives each process only a shard of them; use DDP (fsdp=False)")
    if model_size and model_size not in SIZES:
        die(f"model_size={model_size!r} must be one of {', '.join(SIZES)} (or '' for the settings below)")
    if compile_mode not in ('default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs'):
        die(f"compile_mode={compile_mode!r} must be 'default', 'reduce-overhead' (CUDA graphs), 'max-autotune' or 'max-autotune-no-cudagraphs'")


check_settings()
# ----------------------------------------------------------------------------- setup
env = training.init_run(device, dtype, dist_timeout, width=n_embd)  # device, dtype, and the process group under torchrun
say, device = env.say, env.device
if env.dtype_note:
    say(env.dtype_note)
# fp16 gradients underflow without loss scaling; bf16 and fp32 need none (enabled=False is a no-op).
scaler = torch.amp.GradScaler(env.device_type, enabled=(env.dtype == 'float16'))
accum = training.split_accum(gradient_accumulation_steps, env)  # micro-steps per process: the same tokens per step for any world size
tokens_per_iter = accum * env.world * batch_size * block_size

# ----------------------------------------------------------------------------- data
ds_dir = os.path.join(data_dir, dataset)
if not os.path.exists(os.path.join(ds_dir, 'meta.json')):
    if dataset not in KNOWN:
        die(f"dataset '{dataset}' not found in {ds_dir}/ (no meta.json); make it with: python prepare.py {dataset} --input=YOUR_TEXT_FILE")
    if env.master:  # a known dataset prepares itself, through the same command a user would type
        prepare_known(dataset, data_dir, say)
    if env.ddp:
        torch.distributed.barrier()
tok, meta = load_meta(ds_dir)
tok_spec = tokenizer.portable_spec(meta, ds_dir)  # the tokenizer, whole: it goes into every checkpoint
tasks = scoring.read_eval_tasks(eval_tasks, tok)  # {name: questions}, read now: a bad file stops the run before it trains
data = open_splits(ds_dir, meta, block_size)  # {'train': np.memmap of token ids, 'val': ...}


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
if model_size:  # a released shape: its preset replaces the model settings, but the run's context and data stay
    mcfg = size_config(model_size, block_size=block_size, vocab_size=meta['vocab_size'], dropout=dropout)
    arch, size = SIZES[model_size]['arch'], SIZES[model_size]
    say(f"model_size={model_size}: {released_params(model_size) / 1e6:.2f}M parameters as released (vocab {size['vocab_size']:,}, "
        f"context {size['block_size']:,}); this run's vocab {meta['vocab_size']:,} and block_size {block_size}")
else:  # the arch's preset, changed by the settings above that name a ModelConfig field (n_layer, n_embd, ...; None: the preset's)
    mcfg = make_config(arch, **{k: v for k, v in config.items() if k in ModelConfig.__dataclass_fields__}, vocab_size=meta['vocab_size'])
ckpt, old_run = start_run(out_dir, 'resume' if init_from == 'resume' else 'scratch', overwrite)
base_model = init_from if init_from.startswith('hf:') else ckpt.get('base_model', '') if ckpt else ''
if init_from.startswith('hf:'):  # released weights: their architecture replaces the model settings above
    base, base_tok, _ = load_model('', init_from=init_from, block_size=block_size)
    if not same_tokenizer(base_tok, tok_spec):
        die(f"{init_from} has another tokenizer than {ds_dir}/ (prepare the data with the model's tokenizer: gpt2 for GPT-2)")
    mcfg = replace(base.cfg, dropout=dropout)
if ckpt is not None:
    if base_model:  # a run that started from released weights: its architecture is the checkpoint's, not the settings'
        mcfg = ModelConfig.from_dict({**ckpt['model_config'], 'dropout': dropout})
    mcfg = check_resume(ckpt, os.path.join(out_dir, 'ckpt.pt'), mcfg, tok_spec)
    lr_decay_iters = resume_notes(ckpt, config, env.world, say)  # (says what changed)
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
model = training.wrap_model(raw_model, env, compile, fsdp, compile_mode)  # DDP or FSDP under torchrun, compiled (None: on CUDA)
optimizer = (muon_adamw(raw_model, learning_rate, muon_lr, weight_decay, (beta1, beta2)) if muon  # (after FSDP: on the shards)
             else raw_model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2)))
iter_num, best_val, skipped, last_eval = 0, float('inf'), 0, -1
if ckpt is not None:
    iter_num, best_val, skipped, last_eval = restore_run(ckpt, env, raw_model, optimizer, scaler, sampler, seed)
    say(f"resuming from {out_dir}/ckpt.pt at iter {iter_num} (best val loss {best_val:.4f})")
    training.resume_dtype(env, dtype, ckpt.get('dtype'), say)  # the run's own dtype, unless --dtype says otherwise
peak_flops = peak_flops or training.peak_flops(env)
if ema_decay and ckpt is not None and 'ema' not in ckpt:
    say("note: the checkpoint has no weight average (ema_decay was 0); it starts from the current weights")
ema = WeightAverage(raw_model, ema_decay, ckpt and ckpt.get('ema')) if ema_decay else None  # evals, best.pt, sample use it
averaged = ema.swapped_in if ema else contextlib.nullcontext  # `with averaged():` the weights to score and sample
del ckpt


@torch.no_grad()
def estimate_loss():
    """Mean loss over eval_iters batches per split. The batches come from a generator reseeded
    every time: every eval sees the same data (comparable numbers) and training's random
    streams are left alone (exact resume). eval_full_val: val over the whole split instead."""
    out = {}
    model.eval()
    for split in ('train', 'val'):
        if split == 'val' and eval_full_val:
            out[split] = scoring.split_loss(model, data['val'], block_size, batch_size, device, env.autocast)
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


def checkpoint(is_best=False):
    save_run(env, out_dir, raw_model, optimizer, scaler, sampler, keep_last_n, is_best, model_config=asdict(mcfg),
             config=config, tokenizer=tok_spec, base_model=base_model, iter_num=iter_num, best_val=best_val, skipped=skipped,
             last_eval=last_eval, dtype=env.dtype, **({'ema': ema.state_dict()} if ema else {}))


def eval_and_checkpoint():
    global best_val, last_eval
    with averaged():  # score the average (if any); training goes on with the weights
        losses = estimate_loss()
        accs = scoring.task_accuracy(raw_model, tok, tok_spec, tasks, batch_size, device, env.autocast)  # {} without eval_tasks
    say(f"eval {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}"
        + ''.join(f", {k} {v:.3f}" for k, v in accs.items() if k.startswith('acc_') and not k.startswith('acc_norm_')))
    log(iter=iter_num, train_loss=losses['train'], val_loss=losses['val'], **accs)
    last_eval, is_best, best_val = iter_num, losses['val'] < best_val, min(best_val, losses['val'])
    checkpoint(is_best)


if env.master and old_run:  # every setting has passed its checks: only now may the old run go
    clear_run(out_dir, old_run)
if env.master:
    os.makedirs(out_dir, exist_ok=True)
log = training.open_log(env, out_dir, iter_num, last_eval, config)  # log.jsonl, trimmed to the checkpoint on resume
cli.catch_stop_signals(say)  # Ctrl-C / SIGTERM: finish the step, save, exit 128 + signal

# ----------------------------------------------------------------------------- the loop
say(f"config: {json.dumps(config)}")
n_all, n_matmul = raw_model.num_params(non_embedding=False), raw_model.num_params()
say(f"model: {arch}, {n_all / 1e6:.2f}M parameters ({n_matmul / 1e6:.2f}M without the embedding tables) | data: {ds_dir} "
    f"{len(data['train']):,} train / {len(data['val']):,} val tokens | {tokens_per_iter:,} tokens/iter | {device} {env.dtype} x{env.world}")
if iter_num >= max_iters and last_eval == iter_num:
    say(f"the run in {out_dir}/ is already at iter {iter_num} >= max_iters={max_iters}; pass a larger --max_iters to train on")
model.train()
start_iter = iter_num
t_start = t0 = time.perf_counter()
while iter_num < max_iters:
    lr = training.cosine_lr(iter_num, learning_rate, min_lr, warmup_iters, lr_decay_iters or max_iters, cooldown_frac)
    for group in optimizer.param_groups:
        group['lr'] = lr * group.get('lr_scale', 1.0)  # (Muon's groups have their own peak: muon_lr)
    if iter_num % eval_interval == 0 and iter_num > 0 and iter_num != last_eval:  # (a resumed run may have done this one)
        eval_and_checkpoint()
        t0 = time.perf_counter()  # don't count eval and saving in this step's time

    # The global batch of this step, accum micro-steps x world processes x batch_size windows, is
    # drawn the same on every process; each takes its own column. So 2 processes x batch B see
    # exactly the tokens of 1 process x 2B (or x B with twice the accumulation).
    starts = torch.randint(len(data['train']) - block_size, (accum, env.world, batch_size), generator=sampler)[:, env.rank]
    # forward and backward over accum micro-batches; the gradients add up in .grad.
    loss_sum = torch.zeros((), device=device)
    x, y = get_batch('train', starts=starts[0])  # (B, T), (B, T)
    for micro in range(accum):
        training.grad_sync(model, env, micro == accum - 1)  # all-reduce only on the last micro-step
        with env.autocast:
            _, loss = model(x, y)
        if micro + 1 < accum:  # fetch the next micro-batch now: a GPU is still running the forward just queued
            x, y = get_batch('train', starts=starts[micro + 1])  # (on a CPU this is simply the next thing done)
        scaler.scale(loss / accum).backward()
        loss_sum += loss.detach() / accum
    if env.ddp:
        torch.distributed.all_reduce(loss_sum, op=torch.distributed.ReduceOp.AVG)
    loss_value = loss_sum.item()  # one sync per step; it also makes dt honest on GPU
    if training.check_loss(loss_value, skip_nonfinite, (iter_num, learning_rate, out_dir)):  # NaN/inf: stop, or skip
        skipped += 1
        say(f"iter {iter_num}: loss {loss_value}, step skipped ({skipped} so far)")
    else:
        if grad_clip:  # clip the true gradients: under fp16 they are scaled up until unscaled
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)  # (fp16: skipped by the scaler if a gradient overflowed)
        scaler.update()
    optimizer.zero_grad(set_to_none=True)
    if ema:
        ema.update(iter_num)

    t1 = time.perf_counter()
    dt, t0 = t1 - t0, t1
    log(iter=iter_num, loss=loss_value, lr=lr, dt=round(dt, 6))  # dt: this step's seconds (bench.py reads it)
    if iter_num % log_interval == 0:
        mfu = raw_model.estimate_mfu(tokens_per_iter / env.world, dt, peak_flops)  # per process: peak_flops is one device's
        say(f"iter {iter_num}: loss {loss_value:.4f} | lr {lr:.2e} | {dt * 1000:.1f} ms | {tokens_per_iter / dt:,.0f} tok/s | "
            f"mfu {mfu * 100:.1f}% | eta {(max_iters - iter_num - 1) * dt / 60:.1f} min")
    iter_num += 1

    stop = training.should_stop(env)  # every process stops at the same step
    if stop:
        checkpoint()
        training.leave_resumable(env, stop, iter_num, out_dir, say)

# ----------------------------------------------------------------------------- the end
finished = iter_num > start_iter or last_eval != iter_num  # (a stop on the last step left its final eval to do)
if finished:
    eval_and_checkpoint()
    say(f"{iter_num - start_iter} iters in {time.perf_counter() - t_start:.1f} s")
if env.master and finished:
    say(training.plot_log(out_dir))
    if sample_prompt:
        try:
            ids = tok.encode(sample_prompt) or [tok.eot]
        except ValueError as e:  # e.g. a character the char vocabulary has never seen
            say(f"note: sample_prompt cannot be encoded ({e}); sampling from end-of-text instead")
            ids = [tok.eot]
        with averaged():  # the sample comes from the weights the last eval scored
            new = training.end_sample(raw_model, ids, sample_tokens, env, seed, {tok.eot})
        say("sample:\n" + tok.decode([t for t in ids if t != tok.eot] + new))
training.leave(0)
