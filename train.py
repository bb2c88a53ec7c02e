"""
Pretrain a GPT-2- or LLaMA-style model. One process:

    python train.py config/train_verdict.py --max_iters=2000

Several GPUs (or CPU processes, with gloo) on one machine:

    torchrun --standalone --nproc_per_node=4 train.py config/train_verdict.py

Resume a stopped run (Ctrl-C, SIGTERM, a crash, or a finished run with more --max_iters):

    python train.py config/train_verdict.py --init_from=resume

Every global below is a setting: change it in a config/*.py file or with --key=value.
"""
import json
import math
import os
import random
import shlex
import signal
import sys
import time
from dataclasses import asdict
from contextlib import nullcontext

import configurator  # first: it makes errors (even a Ctrl-C during the slow torch import) one line
from configurator import configure, die, resolve_device
import numpy as np
import torch
import torch.distributed as dist

import tokenizer
from model import GPT, ModelConfig, make_config, measure_flops, save_checkpoint, load_checkpoint

# ----------------------------------------------------------------------------- settings
# run
out_dir = 'out'
init_from = 'scratch'     # 'scratch' or 'resume' (from out_dir/ckpt.pt)
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
# optimizer: AdamW with a linear warmup, then a cosine decay down to min_lr
learning_rate = 1e-3
min_lr = 1e-4
max_iters = 2000
warmup_iters = 100
lr_decay_iters = 0        # 0 = max_iters
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0           # 0 = off
skip_nonfinite = False    # skip (and count) steps whose loss is NaN/inf instead of stopping
# eval, logging, checkpoints
eval_interval = 250
eval_iters = 20           # batches per split per eval
log_interval = 10
keep_last_n = 1           # keep this many latest checkpoints (ckpt.pt plus ckpt_<iter>.pt); best.pt always
sample_prompt = '\n'      # text for the short sample printed at the end ('' = no sample)
sample_tokens = 200
# system
device = 'auto'           # 'auto' = cuda > mps > cpu; or 'cpu', 'cuda', 'cuda:1', 'mps'
dtype = 'auto'            # 'auto' = bfloat16 where the GPU has it, float16 + GradScaler on older GPUs (T4), float32 on CPU/MPS
compile = False           # torch.compile the model (faster on recent GPUs; slow to start)
peak_flops = 0.0          # for MFU; 0 = a known GPU's spec sheet, or a measured matmul on CPU/MPS
config = configure(globals())
# ----------------------------------------------------------------------------- setup

ddp = 'RANK' in os.environ  # launched by torchrun
rank, local_rank, world = (int(os.environ['RANK']), int(os.environ['LOCAL_RANK']), int(os.environ['WORLD_SIZE'])) if ddp else (0, 0, 1)
master = rank == 0
say = print if master else (lambda *a, **k: None)

if ddp and device in ('auto', 'cuda'):
    device = f'cuda:{local_rank}' if torch.cuda.is_available() else 'cpu'
device, device_type, dtype = resolve_device(device, dtype)
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
if min_lr > learning_rate:
    die(f"min_lr={min_lr} is above learning_rate={learning_rate}; the cosine decays from learning_rate down to min_lr")
if dtype == 'float16' and device_type != 'cuda':
    die("dtype=float16 needs a CUDA GPU (it relies on GradScaler); use bfloat16 or float32 here")
if ddp:
    dist.init_process_group(backend='nccl' if device_type == 'cuda' else 'gloo')
    if device_type == 'cuda':
        torch.cuda.set_device(device)
if device_type == 'cuda':
    torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls on Ampere+: ~free speed, fine for training
    torch.backends.cudnn.allow_tf32 = True
ptdtype = getattr(torch, dtype)
autocast = nullcontext() if dtype == 'float32' else torch.autocast(device_type=device_type, dtype=ptdtype)
# fp16 gradients underflow without loss scaling; bf16 and fp32 need none (enabled=False is a no-op).
scaler = torch.amp.GradScaler(device_type, enabled=(dtype == 'float16'))

# accumulation is split over processes: the same tokens per optimizer step whatever the world size
accum = max(1, gradient_accumulation_steps // world)
if accum * world != gradient_accumulation_steps:
    say(f"note: gradient_accumulation_steps={gradient_accumulation_steps} over {world} processes -> {accum} each ({accum * world} in all)")
tokens_per_iter = accum * world * batch_size * block_size

# ----------------------------------------------------------------------------- data
ds_dir = os.path.join(data_dir, dataset)
if not os.path.exists(os.path.join(ds_dir, 'meta.json')):
    import prepare
    if dataset not in prepare.KNOWN:
        die(f"dataset '{dataset}' not found in {ds_dir}/ (no meta.json); make it with: python prepare.py {dataset} --input=YOUR_TEXT_FILE")
    if master:
        print(f"{ds_dir}/ is not prepared yet; running: python prepare.py {dataset}" + (f" --out_dir {shlex.quote(data_dir)}" if data_dir != 'data' else ''))
        prepare.prepare_known(dataset, out_dir=data_dir)
    if ddp:
        dist.barrier()
tok, meta = tokenizer.from_meta(ds_dir)
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


def get_batch(split, gen):
    """A random batch: x (B, T) tokens, y (B, T) the same shifted by one (the next tokens)."""
    d = data[split]
    ix = torch.randint(len(d) - block_size, (batch_size,), generator=gen).tolist()
    x = torch.stack([torch.from_numpy(d[i:i + block_size].astype(np.int64)) for i in ix])
    y = torch.stack([torch.from_numpy(d[i + 1:i + 1 + block_size].astype(np.int64)) for i in ix])
    if device_type == 'cuda':  # pinned memory lets the copy overlap with compute
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


# ----------------------------------------------------------------------------- model, optimizer, resume
mcfg = make_config(arch, block_size=block_size, vocab_size=meta['vocab_size'], n_layer=n_layer, n_head=n_head,
                   n_kv_head=n_kv_head, n_embd=n_embd, ffn_hidden=ffn_hidden, dropout=dropout, norm=norm,
                   pos_emb=pos_emb, mlp=mlp, bias=bias, tie_embeddings=tie_embeddings, rope_theta=rope_theta)
ckpt_path = os.path.join(out_dir, 'ckpt.pt')
# the files a run writes here (only these: out_dir may also hold a user's own files)
old_run = [n for n in (os.listdir(out_dir) if os.path.isdir(out_dir) else [])
           if n in ('ckpt.pt', 'best.pt', 'log.jsonl', 'loss.png') or n.startswith('ckpt_') and n.endswith('.pt')]
iter_num, best_val, skipped, last_eval = 0, float('inf'), 0, -1
torch.manual_seed(seed + rank)
sampler = torch.Generator().manual_seed(seed + 1000 * rank)  # training batches: its state is saved
tok_spec = tokenizer.portable_spec(ds_dir)
ckpt = None
if init_from == 'resume':
    if not os.path.exists(ckpt_path):
        die(f"nothing to resume: {ckpt_path} does not exist; start with --init_from=scratch")
    ckpt = load_checkpoint(ckpt_path)
    saved = ModelConfig.from_dict(ckpt['model_config'])
    diff = [f"{k}: checkpoint {v!r}, now {getattr(mcfg, k)!r}" for k, v in asdict(saved).items() if getattr(mcfg, k) != v and k != 'dropout']
    if diff:
        die(f"{ckpt_path} does not match this config ({'; '.join(diff)}); resume with the run's own settings or use a new --out_dir")
    if ckpt.get('tokenizer', tok_spec) != tok_spec:  # (a checkpoint without one is taken at its word)
        die(f"{ckpt_path} was trained with another tokenizer than {ds_dir}/ uses; resume on the run's own dataset")
    mcfg = saved
    mcfg.dropout = dropout
    old = ckpt.get('config', {})
    changed = [f"{k} {old[k]!r} -> {config[k]!r}" for k in ('batch_size', 'gradient_accumulation_steps', 'max_iters', 'learning_rate')
               if k in old and old[k] != config[k]]
    if not lr_decay_iters and old.get('max_iters', max_iters) != max_iters:
        # The cosine ends at max_iters; stretching it now would send the LR back up. Keep the
        # run's own end (after it, min_lr) unless --lr_decay_iters says otherwise.
        lr_decay_iters = config['lr_decay_iters'] = old.get('lr_decay_iters') or old['max_iters']
        changed.append(f"the LR still decays to min_lr at iter {lr_decay_iters} (set --lr_decay_iters to move that)")
    if ckpt.get('world_size', 1) != world:
        changed.append(f"world size {ckpt.get('world_size', 1)} -> {world} (batches are drawn from new random streams)")
    if changed:
        say("resuming with changes: " + ", ".join(changed))
elif init_from != 'scratch':
    die(f"init_from={init_from!r} must be 'scratch' or 'resume'")
elif any(n.endswith('.pt') for n in old_run) and not overwrite:
    die(f"{out_dir}/ already holds a run ({', '.join(sorted(old_run))}); resume it with --init_from=resume, "
        f"choose another --out_dir, or pass --overwrite=True to replace it")

model = GPT(mcfg).to(device)
optimizer = model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2))
if ckpt is not None:
    model.load_state_dict(ckpt['model'])
    # Older or hand-made checkpoints may lack any of the rest: resume with what is there, and say so.
    missing = [k for k in ('optimizer', 'rng', 'iter_num') if k not in ckpt]
    if ckpt.get('optimizer'):
        optimizer.load_state_dict(ckpt['optimizer'])
    if ckpt.get('scaler'):  # empty when saved by a run without fp16 (a disabled GradScaler)
        scaler.load_state_dict(ckpt['scaler'])
    iter_num, best_val = ckpt.get('iter_num', 0), ckpt.get('best_val', float('inf'))
    skipped, last_eval = ckpt.get('skipped', 0), ckpt.get('last_eval', -1)
    rng = ckpt.get('rng')
    if rng and ckpt.get('world_size', 1) == world:
        random.setstate((rng['python'][0], tuple(rng['python'][1]), rng['python'][2]))
        np.random.set_state((rng['numpy'][0], rng['numpy'][1].numpy(), *rng['numpy'][2:]))
        torch.set_rng_state(rng['torch'][rank])
        sampler.set_state(rng['sampler'][rank])
        if device_type == 'cuda' and rng.get('cuda'):
            torch.cuda.set_rng_state(rng['cuda'][rank])
    else:  # another world size, or no saved state: fresh, but still deterministic, streams from here on
        torch.manual_seed(seed + rank + iter_num)
        sampler.manual_seed(seed + 1000 * rank + iter_num)
    if missing:
        say(f"note: {ckpt_path} has no {', '.join(missing)}; those start fresh")
    say(f"resuming from {ckpt_path} at iter {iter_num} (best val loss {best_val:.4f})")
    del ckpt
raw_model = model
if compile:
    say("compiling the model (takes a minute)...")
    model = torch.compile(model)
if ddp:
    from torch.nn.parallel import DistributedDataParallel as DDP
    model = DDP(model, device_ids=[local_rank] if device_type == 'cuda' else None)

if not peak_flops:
    # dense bf16/fp16 tensor-core peaks; the first name found in the device's name wins (L40S before L4)
    gpu_peaks = {'H100': 989e12, 'A100': 312e12, 'L40S': 362e12, 'L4': 121e12, '4090': 165e12, '3090': 71e12, 'T4': 65e12, 'V100': 125e12}
    name = torch.cuda.get_device_name(device) if device_type == 'cuda' else ''
    peak_flops = next((v for k, v in gpu_peaks.items() if k in name), 0.0) or measure_flops(device, ptdtype)


def get_lr(it):
    """Linear warmup to learning_rate, cosine decay to min_lr at lr_decay_iters, then min_lr."""
    decay_end = lr_decay_iters or max_iters
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it >= decay_end:
        return min_lr
    ratio = (it - warmup_iters) / max(1, decay_end - warmup_iters)  # max(): warmup may equal the decay end
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (learning_rate - min_lr)


@torch.no_grad()
def estimate_loss():
    """Mean loss over eval_iters batches per split. The batches come from a generator reseeded
    every time: every eval sees the same data (comparable numbers) and training's random
    streams are left alone (exact resume)."""
    out = {}
    model.eval()
    for split in ('train', 'val'):
        gen = torch.Generator().manual_seed(seed + 7)
        losses = torch.zeros(eval_iters)
        for k in range(eval_iters):
            x, y = get_batch(split, gen)
            with autocast:
                _, loss = model(x, y)
            losses[k] = loss.item()
        out[split] = losses.mean().item()
    model.train()
    return out


def gather(obj):
    """Every process's obj, as a list indexed by rank (just [obj] without DDP)."""
    if not ddp:
        return [obj]
    objs = [None] * world
    dist.all_gather_object(objs, obj)
    return objs


def checkpoint(is_best=False):
    """Save everything that decides the rest of the run, so a resumed run is the same run."""
    rng = {'torch': gather(torch.get_rng_state()), 'sampler': gather(sampler.get_state()),
           'cuda': gather(torch.cuda.get_rng_state()) if device_type == 'cuda' else [],
           'python': (lambda s: (s[0], list(s[1]), s[2]))(random.getstate()),
           'numpy': (lambda s: (s[0], torch.from_numpy(s[1].astype(np.int64)), *s[2:]))(np.random.get_state())}
    sums = gather(sum(p.double().sum().item() for p in raw_model.parameters())) if ddp else []
    if len(set(sums)) > 1:  # gradient all-reduce failed somewhere: saving would bless rank 0's copy
        die(f"the {world} processes no longer hold the same weights (parameter sums {sums}); the last checkpoint is untouched")
    if not master:
        return
    state = {'model': raw_model.state_dict(), 'optimizer': optimizer.state_dict(), 'scaler': scaler.state_dict(),
             'model_config': asdict(mcfg), 'config': config, 'tokenizer': tok_spec, 'iter_num': iter_num,
             'best_val': best_val, 'skipped': skipped, 'last_eval': last_eval, 'rng': rng, 'world_size': world}
    save_checkpoint(state, out_dir, keep_last_n=keep_last_n, is_best=is_best)


def eval_and_checkpoint():
    global best_val, last_eval
    losses = estimate_loss()
    say(f"eval {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
    log(iter=iter_num, train_loss=losses['train'], val_loss=losses['val'])
    last_eval, is_best, best_val = iter_num, losses['val'] < best_val, min(best_val, losses['val'])
    checkpoint(is_best)


# The loss history: one JSON line per iteration (and per eval), trimmed on resume to where
# the checkpoint was taken, so the file always describes exactly one run.
log_path = os.path.join(out_dir, 'log.jsonl')
if master and init_from == 'scratch':  # every setting has passed its checks: only now may the old run go
    for name in old_run:
        os.remove(os.path.join(out_dir, name))
if master:
    os.makedirs(out_dir, exist_ok=True)
    rows = []
    if iter_num > 0 and os.path.exists(log_path):
        with open(log_path) as f:
            for line in f:
                try:
                    rows.append(json.loads(line))
                except ValueError:  # a line cut short by kill -9 (or edited by hand): it is only history
                    pass
    # keep the eval the checkpoint was taken at (logged just before the save), drop what came after
    rows = [r for r in rows if isinstance(r, dict) and isinstance(r.get('iter'), int) and
            (r['iter'] < iter_num or (r['iter'] == last_eval == iter_num and 'val_loss' in r))]
    with open(log_path + '.tmp', 'w') as f:  # then rename: a kill here must not cost the history
        f.writelines(json.dumps(r) + '\n' for r in rows)
    os.replace(log_path + '.tmp', log_path)
logf = open(log_path, 'a') if master else None


def log(**row):
    if master:
        logf.write(json.dumps(row) + '\n')
        logf.flush()


def leave(code=0):
    """Exit. Under DDP, os._exit after leaving the process group: gloo's worker threads can still be
    releasing the last collective's tensors, and that races with Python's shutdown (SIGABRT,
    'terminate called without an active exception': 3 of 40 torchrun runs on CPU before this).
    DDP keeps the process group alive, so destroying it does not join those threads."""
    if not (ddp and dist.is_initialized()):
        sys.exit(code)
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


configurator.exit_fn = leave  # die() too, e.g. on a NaN loss

# SIGINT (Ctrl-C) and SIGTERM (Kaggle, Slurm, docker stop) finish the current step, save, and exit.
stop_signal, stop_time = 0, 0.0


def on_signal(signum, frame):
    global stop_signal, stop_time
    if not stop_signal:
        stop_signal, stop_time = signum, time.time()
        say(f"\n{signal.Signals(signum).name}: finishing this step, then saving a checkpoint (Ctrl-C again to quit at once)")
    elif time.time() - stop_time > 2:  # a second Ctrl-C; the last checkpoint on disk is complete
        raise KeyboardInterrupt
    # else: an echo of the same stop (torchrun forwards a Ctrl-C as SIGINT, then SIGTERM): already on it


signal.signal(signal.SIGINT, on_signal)
signal.signal(signal.SIGTERM, on_signal)

# ----------------------------------------------------------------------------- the loop
say(f"config: {json.dumps(config)}")
say(f"model: {arch}, {raw_model.num_params() / 1e6:.2f}M parameters | data: {ds_dir} {len(data['train']):,} train / "
    f"{len(data['val']):,} val tokens | {tokens_per_iter:,} tokens/iter | {device} {dtype} x{world}")
if iter_num >= max_iters and last_eval == iter_num:
    say(f"the run in {out_dir}/ is already at iter {iter_num} >= max_iters={max_iters}; pass a larger --max_iters to train on")
model.train()
start_iter = iter_num
t_start = t0 = time.perf_counter()
while iter_num < max_iters:
    lr = get_lr(iter_num)
    for group in optimizer.param_groups:
        group['lr'] = lr
    if iter_num % eval_interval == 0 and iter_num > 0 and iter_num != last_eval:  # (a resumed run may have done this one)
        eval_and_checkpoint()
        t0 = time.perf_counter()  # don't count eval and saving in this step's time

    loss_sum = torch.zeros((), device=device)
    for micro in range(accum):
        x, y = get_batch('train', sampler)
        if ddp:  # all-reduce the gradients only on the last micro-step
            model.require_backward_grad_sync = micro == accum - 1
        with autocast:
            _, loss = model(x, y)
        scaler.scale(loss / accum).backward()
        loss_sum += loss.detach() / accum
    if ddp:
        dist.all_reduce(loss_sum, op=dist.ReduceOp.AVG)
    loss_value = loss_sum.item()  # one sync per step; it also makes dt honest on GPU
    if not math.isfinite(loss_value):
        if not skip_nonfinite:
            die(f"loss is {loss_value} at iter {iter_num}. Likely causes: learning_rate={learning_rate} too high, "
                f"fp16 overflow (try dtype=bfloat16 or float32), or bad data. The last good checkpoint in {out_dir}/ is untouched; "
                f"--skip_nonfinite=True skips such steps instead")
        skipped += 1
        say(f"iter {iter_num}: loss {loss_value}, step skipped ({skipped} so far)")
        optimizer.zero_grad(set_to_none=True)
    else:
        if grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
    log(iter=iter_num, loss=loss_value, lr=lr)

    t1 = time.perf_counter()
    dt, t0 = t1 - t0, t1
    if iter_num % log_interval == 0:
        mfu = raw_model.estimate_mfu(tokens_per_iter / world, dt, peak_flops)  # per process: peak_flops is one device's
        eta = (max_iters - iter_num - 1) * dt
        say(f"iter {iter_num}: loss {loss_value:.4f} | lr {lr:.2e} | {dt * 1000:.1f} ms | {tokens_per_iter / dt:,.0f} tok/s | "
            f"mfu {mfu * 100:.1f}% | eta {eta / 60:.1f} min")
    iter_num += 1

    stop = stop_signal
    if ddp:  # all processes stop at the same step
        flag = torch.tensor(stop_signal, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        stop = int(flag.item())
    if stop:
        checkpoint()
        launcher = f'torchrun --standalone --nproc_per_node={world}' if ddp else 'python'
        args = shlex.join(a for a in sys.argv if not a.startswith('--init_from='))
        say(f"stopped at iter {iter_num}; checkpoint saved to {ckpt_path}. Resume with: {launcher} {args} --init_from=resume")
        leave(128 + stop)

# ----------------------------------------------------------------------------- the end
finished = iter_num > start_iter or last_eval != iter_num  # (a stop on the last step left its final eval to do)
if finished:
    eval_and_checkpoint()
    say(f"{iter_num - start_iter} iters in {time.perf_counter() - t_start:.1f} s")
if master and finished:
    logf.close()
    try:  # a picture of log.jsonl, when matplotlib is installed
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
        rows = [json.loads(line) for line in open(log_path)]
        steps, evals = [r for r in rows if 'loss' in r], [r for r in rows if 'val_loss' in r]
        plt.figure(figsize=(7, 4))
        plt.plot([r['iter'] for r in steps], [r['loss'] for r in steps], lw=0.8, label='train (each step)')
        plt.plot([r['iter'] for r in evals], [r['val_loss'] for r in evals], 'o-', label='val')
        plt.xlabel('iter'), plt.ylabel('loss'), plt.legend(), plt.grid(alpha=0.3)
        plt.savefig(os.path.join(out_dir, 'loss.png'), dpi=100, bbox_inches='tight')
        say(f"loss history: {log_path}, plot: {out_dir}/loss.png")
    except ImportError:
        say(f"loss history: {log_path} (pip install matplotlib for a plot)")
    if sample_prompt:
        try:
            ids = tok.encode(sample_prompt) or [tok.eot]
        except ValueError as e:  # e.g. a character the char vocabulary has never seen
            say(f"note: sample_prompt cannot be encoded ({e}); sampling from end-of-text instead")
            ids = [tok.eot]
        raw_model.eval()
        with torch.no_grad(), autocast:
            out = raw_model.generate(torch.tensor([ids], device=device), sample_tokens, temperature=0.8, top_k=200, stop_tokens={tok.eot},
                                     generator=torch.Generator(device).manual_seed(seed))
        say("sample:\n" + tok.decode([t for t in out[0].tolist() if t != tok.eot]))
leave(0)
