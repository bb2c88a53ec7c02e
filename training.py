"""
What a training run needs around its loop, written once for train.py, finetune_sft.py and
finetune_cls.py (the loops themselves are written out in those scripts):

  device     init_run(): device, dtype and autocast, and under torchrun the process group
  wrapping   wrap_model(): DDP or FSDP2, torch.compile; split_accum() and grad_sync() for accumulation
  stopping   should_stop() (all processes agree), leave_resumable() and leave(); end_sample()
  schedule   cosine_lr(): warmup, then a cosine or a warmup-stable-decay
  MFU        peak_flops(): a GPU's spec sheet, or a matmul timed here
  the log    open_log(): log.jsonl (+ Weights & Biases / SwanLab); plot_log(): loss.png

Checkpoints and resume live in checkpoint.py. torch is imported inside the functions that need
it, so that a script's first import (cli) can make even a Ctrl-C during that import one line.
"""
import json
import math
import os
import sys
import time

import cli
from cli import atomic_write, die

# ----------------------------------------------------------------------------- device, dtype, DDP

def cpu_bf16_flags():
    """This CPU's native bf16 instructions, as /proc/cpuinfo names them ('' when none, or not Linux):
    without AVX512-BF16 or AMX, bf16 matmuls are emulated and run many times slower than float32."""
    try:
        with open('/proc/cpuinfo') as f:
            flags = next((line for line in f if line.startswith('flags')), '').split()
    except OSError:
        return ''
    return ' '.join(name for name in ('avx512_bf16', 'amx_bf16') if name in flags)


dtype_note = ''  # why resolve_device() chose a CPU's dtype under 'auto', for the script to print
CPU_BF16_WIDTH = 256  # 'auto' on a CPU with native bf16: bfloat16 from this n_embd up (see resolve_device)


def resolve_device(device, dtype, width=None):
    """'auto' -> the best this machine has: cuda > mps > cpu; bfloat16 on GPUs that run it
    natively (Ampere and newer), float16 on older ones (T4, V100: needs a GradScaler when
    training), float32 on MPS. On a CPU, bfloat16 autocast when the CPU has native bf16 (AVX512-BF16
    or AMX) and the model is at least CPU_BF16_WIDTH wide, float32 otherwise (and when no width is
    given). A rule, not a timing: the same machine and settings always get the same dtype.
    Explicit choices are checked, not trusted."""
    global dtype_note
    import torch
    if device == 'auto':
        device = 'cuda' if torch.cuda.is_available() else 'mps' if torch.backends.mps.is_available() else 'cpu'
    try:
        kind = torch.device(device).type
    except RuntimeError:
        die(f"device={device!r} is not a device; use 'auto', 'cpu', 'cuda', 'cuda:1' or 'mps'")
    if kind == 'cuda' and not torch.cuda.is_available():
        die(f"device={device} but this machine (or this torch build) has no CUDA; use --device=cpu")
    if kind == 'mps' and not torch.backends.mps.is_available():
        die(f"device={device} but MPS is not available here; use --device=cpu")
    if dtype == 'auto':
        # Compute capability 8.0+ (Ampere) runs bf16 natively; is_bf16_supported() would also say
        # yes on a T4 (emulated, slow), so ask the chosen device for its capability instead.
        native_bf16 = kind == 'cuda' and torch.cuda.get_device_capability(torch.device(device))[0] >= 8
        dtype = 'float32' if kind != 'cuda' else 'bfloat16' if native_bf16 else 'float16'
        flags = cpu_bf16_flags() if kind == 'cpu' else ''
        if kind == 'cpu' and not flags:
            dtype_note = "dtype auto: float32 (this CPU has no AVX512-BF16 or AMX: bf16 would be emulated, many times slower)"
        elif kind == 'cpu':
            # Native bf16 doubles the matmul rate, but autocast adds casts around every matmul, and in a
            # narrow model those casts and the float32 rest of the step are most of the time. Measured
            # (an EPYC with AVX512-BF16): an MLP of width 128 gains 1.45x, a whole speedrun step less,
            # and the numbers of small models move; from width 256 up the matmuls dominate (1.9-2.4x).
            wide = (width or 0) >= CPU_BF16_WIDTH
            dtype = 'bfloat16' if wide else 'float32'
            dtype_note = (f"dtype auto: {dtype} ({flags.replace(' ', ', ')}; n_embd={width} is "
                          f"{'at least' if wide else 'under'} {CPU_BF16_WIDTH}: --dtype=float32 or bfloat16 to choose)")
    if dtype not in ('float32', 'bfloat16', 'float16'):
        die(f"dtype={dtype!r} must be 'auto', 'float32', 'bfloat16' or 'float16'")
    if dtype == 'float16' and kind != 'cuda':
        die("dtype=float16 needs a CUDA GPU (it relies on GradScaler); use bfloat16 or float32 here")
    return device, kind, dtype


class RunEnv:
    """Where this process runs: rank and world size under torchrun, device, dtype, autocast.
    A plain record, filled by init_run()."""
    ddp = False
    rank = local_rank = 0
    world = 1
    master = True
    device = device_type = dtype = 'cpu'

    def say(self, *args, **kw):
        """print, on rank 0 only (every rank runs the same script)."""
        if self.master:
            print(*args, **kw, flush=True)


def init_run(device='auto', dtype='auto', timeout=600, width=None):
    """Device and dtype, and under torchrun the process group (nccl on GPUs, gloo on CPUs).
    timeout: seconds a collective may wait for the other processes before it fails, so a hung
    or lost rank ends the job instead of blocking it forever (torch's default is 10-30 min).
    width: the model's n_embd, for 'auto' on a CPU with native bf16 (see resolve_device);
    env.dtype_note says what 'auto' chose and why."""
    import datetime
    import torch
    import torch.distributed as dist
    env = RunEnv()
    env.ddp = 'RANK' in os.environ  # launched by torchrun
    if env.ddp:
        env.rank, env.local_rank, env.world = (int(os.environ[k]) for k in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE'))
        env.master = env.rank == 0
        if device in ('auto', 'cuda'):
            device = f'cuda:{env.local_rank}' if torch.cuda.is_available() else 'cpu'
    env.device, env.device_type, env.dtype = resolve_device(device, dtype, width)
    env.dtype_note = dtype_note if dtype == 'auto' else ''
    if env.ddp:
        dist.init_process_group(backend='nccl' if env.device_type == 'cuda' else 'gloo',
                                timeout=datetime.timedelta(seconds=timeout))
        if env.device_type == 'cuda':
            torch.cuda.set_device(env.device)
        cli.exit_fn = leave  # die() on any rank must not race gloo's threads either
    if env.device_type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls on Ampere+: ~free speed, fine for training
        torch.backends.cudnn.allow_tf32 = True
    set_dtype(env, env.dtype)
    return env


def set_dtype(env, dtype):
    """env.dtype and what follows from it: env.ptdtype (the torch dtype) and env.autocast, the context
    the forward passes run in (float32: none; weights, optimizer state and the loss stay float32 anyway)."""
    import torch
    from contextlib import nullcontext
    env.dtype, env.ptdtype = dtype, getattr(torch, dtype)
    env.autocast = nullcontext() if dtype == 'float32' else torch.autocast(device_type=env.device_type, dtype=env.ptdtype)


def resume_dtype(env, asked, saved, say):
    """On resume, keep the dtype the run was started in (the same numbers as an unbroken run) when
    dtype='auto' and this device runs it; an explicit --dtype wins, and is said to cost exactness."""
    if not saved or saved == env.dtype:
        return
    if asked != 'auto':
        say(f"note: the run was started in {saved}; --dtype={asked} continues it in {asked} (not bit-exact with an unbroken run)")
    elif saved == 'float16' and env.device_type != 'cuda' or saved == 'bfloat16' and env.device_type == 'cpu' and not cpu_bf16_flags():
        say(f"note: the run was started in {saved}, which this {env.device_type} cannot run well; continuing in {env.dtype}")
    else:
        set_dtype(env, saved)
        say(f"dtype: {saved}, as the run was started (exact resume; --dtype=... to change it)")


def check_loss(loss_value, skip_nonfinite, where):
    """A NaN/inf loss stops the run (its last checkpoint untouched), or with skip_nonfinite tells the
    loop to skip the update. where: (iter_num, learning_rate, out_dir) for the message.
    Returns True when this step's update must be skipped."""
    if math.isfinite(loss_value):
        return False
    if not skip_nonfinite:
        it, lr, out_dir = where
        die(f"loss is {loss_value} at iter {it}. Likely causes: learning_rate={lr} too high, fp16 overflow "
            f"(try dtype=bfloat16 or float32), or bad data. The last good checkpoint in {out_dir}/ is untouched; "
            f"--skip_nonfinite=True skips such steps instead")
    return True


def leave_resumable(env, stop, iter_num, out_dir, say):
    """After a stop signal (`stop`, from should_stop) and its checkpoint: print the command that
    resumes the run exactly (this one, with --init_from=resume) and exit 128 + the signal."""
    import shlex
    launcher = f'torchrun --standalone --nproc_per_node={env.world}' if env.ddp else 'python'
    args = shlex.join(a for a in sys.argv if not a.startswith('--init_from='))
    say(f"stopped at iter {iter_num}; checkpoint saved to {out_dir}/ckpt.pt. Resume with: {launcher} {args} --init_from=resume")
    leave(128 + stop)


def leave(code=0):
    """Exit. Under DDP, os._exit after leaving the process group: gloo's worker threads can still be
    releasing the last collective's tensors, and that races with Python's shutdown (SIGABRT,
    'terminate called without an active exception': 3 of 40 torchrun runs on CPU before this).
    DDP keeps the process group alive, so destroying it does not join those threads."""
    import torch.distributed as dist
    if not dist.is_initialized():
        sys.exit(code)
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def wrap_model(model, env, compile=False, fsdp=False, mode='default'):
    """The model the loop calls: under torchrun wrapped in DDP (a full copy per process, gradients
    all-reduced) or sharded with FSDP2 (each process holds 1/world of the parameters, gradients
    and optimizer state: per block, then the root); optionally torch.compile'd (compile=None: on for
    CUDA on Linux, where it is known to pay off). The unwrapped model (checkpoints, generation) is
    still the one passed in: FSDP2 shards it in place."""
    import torch
    if compile is None:
        compile = env.device_type == 'cuda' and sys.platform == 'linux'
        if not compile:
            env.say(f"compile: off (auto turns torch.compile on for CUDA on Linux only: on {env.device_type} it is slow to "
                    f"start and not known to pay off; --compile=True to try it)")
    if fsdp:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
        # On GPUs compute in bf16/fp16 but reduce gradients in fp32; on CPUs everything stays fp32.
        mp = MixedPrecisionPolicy(param_dtype=env.ptdtype, reduce_dtype=torch.float32) if env.device_type == 'cuda' else MixedPrecisionPolicy()
        for block in model.blocks:
            fully_shard(block, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
    if compile:
        env.say("compiling the model (takes a minute)...")
        model = torch.compile(model, mode=None if mode == 'default' else mode)
    if env.ddp and not fsdp:
        from torch.nn.parallel import DistributedDataParallel as DDP
        model = DDP(model, device_ids=[env.local_rank] if env.device_type == 'cuda' else None)
    return model


def grad_sync(model, env, on):
    """Gradient accumulation: reduce gradients across processes only on the last micro-step."""
    if env.ddp:
        if hasattr(model, 'set_requires_gradient_sync'):  # FSDP2
            model.set_requires_gradient_sync(on)
        else:
            model.require_backward_grad_sync = on


def split_accum(steps, env):
    """gradient_accumulation_steps (summed over all processes) -> this process's micro-steps, so that
    an optimizer step sees the same tokens whatever the world size; says so when it does not divide."""
    accum = max(1, steps // env.world)
    if accum * env.world != steps:
        env.say(f"note: gradient_accumulation_steps={steps} over {env.world} processes -> {accum} each ({accum * env.world} in all)")
    return accum


def should_stop(env):
    """The signal to stop on (0: go on), agreed by all processes so that they stop at the same step."""
    if not env.ddp:
        return cli.stop_signal
    import torch
    import torch.distributed as dist
    flag = torch.tensor(cli.stop_signal, device=env.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())


def end_sample(model, ids, n_tokens, env, seed, stop_tokens):
    """The short sample a training script prints at its end: up to n_tokens token ids drawn after
    the prompt `ids` (temperature 0.8, top_k 200, a fixed seed), stop tokens left out."""
    import torch
    model.eval()
    with torch.no_grad(), env.autocast:
        out = model.generate(torch.tensor([ids], device=env.device), n_tokens, temperature=0.8, top_k=200,
                             stop_tokens=stop_tokens, generator=torch.Generator(env.device).manual_seed(seed))
    return [t for t in out[0, len(ids):].tolist() if t not in stop_tokens]


# ----------------------------------------------------------------------------- schedule, FLOPs


def cosine_lr(it, learning_rate, min_lr, warmup_iters, decay_end, cooldown_frac=0.0):
    """Linear warmup to learning_rate, cosine decay to min_lr at decay_end, then min_lr.
    cooldown_frac > 0: warmup-stable-decay instead: learning_rate held after the warmup, then a
    linear decay to min_lr over the last cooldown_frac of decay_end (short runs: see train.py)."""
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it >= decay_end:
        return min_lr
    if cooldown_frac:
        left = (decay_end - it) / max(1.0, cooldown_frac * decay_end)  # 1 where the cooldown starts, 0 at its end
        return min_lr + min(1.0, left) * (learning_rate - min_lr)
    ratio = (it - warmup_iters) / max(1, decay_end - warmup_iters)  # max(): warmup may equal the decay end
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (learning_rate - min_lr)


# Dense bf16/fp16 tensor-core peaks; the first name found in the device's name wins (L40S before L4).
GPU_PEAK_FLOPS = {'H100': 989e12, 'A100': 312e12, 'L40S': 362e12, 'L4': 121e12, '4090': 165e12, '3090': 71e12,
                  'T4': 65e12, 'V100': 125e12}


def peak_flops(env):
    """For MFU: a known GPU's spec sheet, or else a matmul timed on this device now."""
    import torch
    name = torch.cuda.get_device_name(env.device) if env.device_type == 'cuda' else ''
    return next((v for k, v in GPU_PEAK_FLOPS.items() if k in name), 0.0) or measure_flops(env.device, env.ptdtype)


def measure_flops(device='cpu', dtype=None, rounds=10, seconds=0.05, n=1024):
    """Peak FLOP/s where no spec sheet applies (a CPU, a Mac, an unlisted GPU): the best of a few
    timed n x n matmuls (the best, because a busy machine only makes a round slower)."""
    import torch
    a = torch.randn(n, n, device=device, dtype=dtype or torch.float32)
    b = torch.randn(n, n, device=device, dtype=dtype or torch.float32)
    kind = torch.device(device).type
    sync = torch.cuda.synchronize if kind == 'cuda' else torch.mps.synchronize if kind == 'mps' else (lambda: None)
    for _ in range(3):  # warm-up: thread pools, caches, clocks
        a @ b
    best = 0.0
    for _ in range(rounds):
        sync()
        k, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            a @ b
            k += 1
        sync()
        best = max(best, 2 * n ** 3 * k / (time.perf_counter() - t0))
    return best

# ----------------------------------------------------------------------------- the log and the plot


def read_log(path):
    """The rows of a log.jsonl; a line cut short by kill -9 (or edited by hand) is skipped: it is only history."""
    rows = []
    if os.path.exists(path):
        with open(path, encoding='utf-8') as f:
            for line in f:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if isinstance(row, dict) and isinstance(row.get('iter'), int):
                    rows.append(row)
    return rows


def open_log(env, out_dir, iter_num, last_eval, config):
    """Start out_dir/log.jsonl: one JSON row per step and per eval. On resume it is first trimmed
    to where the checkpoint was taken (via a temp file: a kill here must not cost the history), so
    the file always describes exactly one run. Returns log(**row), which also sends the row to
    Weights & Biases / SwanLab when config asks (wandb_log / swanlab_log)."""
    if not env.master:
        return lambda **row: None
    path = os.path.join(out_dir, 'log.jsonl')
    # keep the eval the checkpoint was taken at (logged just before the save), drop what came after
    rows = [r for r in (read_log(path) if iter_num > 0 else [])
            if r['iter'] < iter_num or (r['iter'] == last_eval == iter_num and 'val_loss' in r)]
    with atomic_write(path) as f:
        f.writelines(json.dumps(r) + '\n' for r in rows)
    trackers = start_trackers(config)
    logf = open(path, 'a', encoding='utf-8')

    def log(**row):
        logf.write(json.dumps(row) + '\n')
        logf.flush()
        for send in trackers:
            send(row)
    return log


def start_trackers(config):
    """Weights & Biases / SwanLab, when asked for: both optional packages, imported only then.
    A missing package or a tracker that cannot start stops the run now, in one line, not hours in."""
    trackers = []
    for key, package in (('wandb_log', 'wandb'), ('swanlab_log', 'swanlab')):
        if not config.get(key):
            continue
        try:
            mod = __import__(package)
        except ImportError:
            die(f"{key}=True needs the {package} package: pip install {package} (or drop {key})")
        project, name = config.get(f'{package}_project') or 'nanolm', config.get(f'{package}_run_name') or None
        try:
            if package == 'wandb':
                mod.init(project=project, name=name, config=config)
            else:
                mod.init(project=project, experiment_name=name, config=config)
        except Exception as e:  # no network, not logged in, ...
            die(f"could not start {package} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                f"log in, or set {'WANDB_MODE=offline' if package == 'wandb' else 'SWANLAB_MODE=local'} to log locally")
        trackers.append(lambda row, mod=mod: mod.log({k: v for k, v in row.items() if k != 'iter'}, step=row['iter']))
    return trackers


def plot_log(out_dir):
    """out_dir/loss.png from log.jsonl, when matplotlib is installed. Returns the message to print."""
    log_path = os.path.join(out_dir, 'log.jsonl')
    try:
        import matplotlib
    except ImportError:
        return f"loss history: {log_path} (pip install matplotlib for a plot)"
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    rows = read_log(log_path)
    steps, evals = [r for r in rows if 'loss' in r], [r for r in rows if 'val_loss' in r]
    plt.figure(figsize=(7, 4))
    plt.plot([r['iter'] for r in steps], [r['loss'] for r in steps], lw=0.8, label='train (each step)')
    plt.plot([r['iter'] for r in evals], [r['val_loss'] for r in evals], 'o-', label='val')
    plt.xlabel('iter'), plt.ylabel('loss'), plt.legend(), plt.grid(alpha=0.3)
    accs = [r for r in evals if 'val_acc' in r]
    if accs:  # a classifier (finetune_cls.py): accuracy on a second axis
        ax = plt.gca().twinx()
        for key, style, color in (('train_acc', 's:', 'tab:green'), ('val_acc', 's--', 'tab:red')):
            ax.plot([r['iter'] for r in accs], [r[key] for r in accs], style, color=color, label=key.replace('_acc', ' accuracy'))
        ax.set_ylabel('accuracy'), ax.set_ylim(0, 1.02), ax.legend(loc='center right')
    tasks = sorted({k for r in evals for k in r if k.startswith('acc_') and not k.startswith('acc_norm_')})
    if tasks:  # eval_tasks= (scoring.task_accuracy): each task's accuracy on a second axis
        ax = plt.gca().twinx()
        for k in tasks:
            ax.plot([r['iter'] for r in evals if k in r], [r[k] for r in evals if k in r], 's--', label=k[4:] + ' acc')
        ax.set_ylabel('accuracy'), ax.set_ylim(0, 1.02), ax.legend(loc='center right')
    plt.savefig(os.path.join(out_dir, 'loss.png'), dpi=100, bbox_inches='tight')
    plt.close()
    return f"loss history: {log_path}, plot: {out_dir}/loss.png"
