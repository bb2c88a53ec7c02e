"""
Measure nanolm the way a user runs it, and print numbers (a table, and JSON to compare commits).
No assertions: benchmarks report, tests check.

    python bench.py train config/train_shakespeare_char.py --target_loss=1.886,1.6
    python bench.py train config/train_verdict.py --max_iters=50 --dtype=float32,bfloat16 --compile=False,True
    python bench.py step --dtype=float32,bfloat16 --gradient_checkpointing=False,True   # GPT-2 small shape
    python bench.py sample --out_dir=out-verdict --new_tokens=200
    python bench.py sample --n_layer=12 --n_head=12 --n_embd=768 --block_size=1024 --prompt_tokens=200 --new_tokens=500
    python bench.py log out-shakespeare-char --target_loss=1.886,1.6
    python bench.py prepare ../shared/data/tinyshakespeare.txt --tokenizer=gpt2
    python bench.py serve --clients=1,4,8 --new_tokens=64                       # or --out_dir=out-sft-poems
    python bench.py poems --out_dir=out-sft-poems --data_file=tang-poems-chat.jsonl

train    runs train.py itself in a temporary out_dir (arguments after `train` go to it unchanged,
         with --eval_full_val=True unless given) and reads its log.jsonl: median ms/iter and
         tokens/s after warm-up, MFU against a matmul of the run's dtype timed in this process
         (float32 and bfloat16 both measured), the run's peak RSS, training time (the sum of step
         times, evals left out) to the first eval with val loss <= each --target_loss. --dtype,
         --compile and --gradient_checkpointing take comma lists: one run per combination;
         --repeat=N runs the whole list N times in turn (A B A B), so machine load hits all alike.
step     one training step in-process at a model shape, no data or checkpoints (default: GPT-2
         small, 12 layers, 768 wide, block 1024, batch 1; --bias=False as nanoGPT's bench.py):
         ms/iter, tokens/s, MFU (--profile=PREFIX: torch.profiler's tables in PREFIX-*.txt), and memory:
         peak RSS on a CPU (CUDA max allocated on a GPU) and the step's own memory above the
         weights and optimizer state. Each combination runs in a fresh process.
sample   generation tokens/s with and without the KV cache for each --prompt_tokens (comma list),
         from a checkpoint (--out_dir) or from random weights of a shape (--n_layer=... etc.).
log      time to each --target_loss, final val loss and ms/iter, read from a finished run's
         log.jsonl (a folder or the file itself).
serve    serve.py in a child process and 1, 4, 8 (--clients) concurrent streaming clients, each
         sending --requests completions of --new_tokens: time to first token and aggregate tokens/s.
         From --out_dir / --init_from, or random weights of a shape (default 6 layers, 384 wide,
         block 512, GPT-2's vocabulary); --dtype, --device, --ckpt go to serve.py.
prepare  prepare.py's encode rate (MB/s, tokens/s, peak RSS) on the files given, with 1 and 2
         workers, and BPE training time (--bpe_vocab=4096,16384) beside Hugging Face
         `tokenizers` when that is installed.
poems    the share of replies that are verse (every line 5- or 7-character clauses, at least two
         lines, ended by <|im_end|>): to the records finetune_sft.py held out (its data_file,
         val_fraction and seed, read from the checkpoint; --data_file= if it moved), or to the
         titles of --titles=FILE (one a line), one sample each as sample.py --chat draws it
         (--temperature=0.8 --top_k=200 --seed=1337); --replies=FILE writes them as JSON lines.

--json=FILE (any mode) also writes the rows as JSON, with the machine they were measured on.
Under a machine's load compare numbers only within one bench.py call.

Why one file over 400 lines: one command for every measurement, so each table prints in the
same format and machine header, and a user finds every benchmark in one --help.
"""
import itertools
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import cli  # one-line errors
from cli import die
import training

ROOT = os.path.dirname(os.path.abspath(__file__))


def take(args, key, default, kind=str):
    """Remove --key=value from args; -> its value (or default)."""
    for a in list(args):
        if a.startswith(f'--{key}='):
            args.remove(a)
            return kind(a.split('=', 1)[1])
    return default


def take_list(args, key, default, kind=str):
    """Remove --key=a,b,c from args; -> [a, b, c] (or default)."""
    return [kind(v) for v in take(args, key, default).split(',')]


def machine():
    """What the numbers were measured on: CPU model, cores, torch, the bf16 instructions, the load."""
    import platform
    import torch
    cpu = platform.processor()
    try:
        with open('/proc/cpuinfo') as f:
            cpu = next((line.split(':', 1)[1].strip() for line in f if line.startswith('model name')), cpu)
    except OSError:
        pass
    info = {'cpu': cpu, 'cores': os.cpu_count(), 'torch threads': torch.get_num_threads(), 'torch': torch.__version__,
            'bf16 instructions': training.cpu_bf16_flags() or 'none', 'load (1 min)': round(os.getloadavg()[0], 2)}
    if torch.cuda.is_available():
        info['gpu'] = torch.cuda.get_device_name()
    return info


def peak_flops(device='cpu'):
    """Matmul FLOP/s measured now, per dtype: the MFU denominators. Where bf16 is emulated (a CPU without
    AVX512-BF16/AMX) it is ~50x slower, so a smaller matmul measures it in reasonable time."""
    import torch
    kind = device.split(':')[0]
    n = 4096 if kind == 'cuda' else 1024
    out = {'float32': training.measure_flops(device, torch.float32, n=n)}
    emulated = kind == 'cpu' and not training.cpu_bf16_flags()
    out['bfloat16'] = training.measure_flops(device, torch.bfloat16, **(dict(n=256, rounds=2) if emulated else dict(n=n)))
    if kind == 'cuda':
        out['float16'] = training.measure_flops(device, torch.float16, n=n)
    return out


def run_child(cmd, env=None):
    """Run a command to its end; -> (exit code, stdout, stderr, its own peak RSS in MB)."""
    with tempfile.TemporaryFile('w+') as out, tempfile.TemporaryFile('w+') as err:
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=err, text=True, env={**os.environ, **(env or {})})
        _, status, usage = os.wait4(p.pid, 0)  # this child's own rusage (RUSAGE_CHILDREN would be the max of all so far)
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        return p.returncode, out.read(), err.read(), usage.ru_maxrss / (2**20 if sys.platform == 'darwin' else 2**10)


def grid(args, keys):
    """Take the comma lists of `keys` out of args; -> the combinations, each a dict (one: {})."""
    lists = {k: take(args, k, '').split(',') for k in keys if any(a.startswith(f'--{k}=') for a in args)}
    return [dict(zip(lists, combo)) for combo in itertools.product(*lists.values())]


def log_summary(rows, targets):
    """From log.jsonl rows: steps, median ms/iter after warm-up, training time (the sum of step times:
    evals and checkpoints are not in it), final and best val loss, training time to the first eval
    at or below each target."""
    steps = [r for r in rows if 'dt' in r]
    if not steps:
        die("the log has no step rows with a step time (dt); was it written by train.py?")
    timed = [r['dt'] for r in steps[min(5, len(steps) // 10):]] or [r['dt'] for r in steps]  # skip warm-up steps
    out = {'steps': len(steps), 'ms/iter': round(statistics.median(timed) * 1000, 2),
           'train s': round(sum(r['dt'] for r in steps), 1)}
    evals = [r for r in rows if 'val_loss' in r]
    out['final val'] = round(evals[-1]['val_loss'], 4) if evals else None
    out['best val'] = round(min(r['val_loss'] for r in evals), 4) if evals else None
    for target in targets:
        elapsed, to_target = 0.0, None
        for r in rows:  # an eval row comes after the steps it measures
            elapsed += r.get('dt', 0.0)
            if r.get('val_loss', float('inf')) <= target:
                to_target = round(elapsed, 1)
                break
        out[f's to val<={target}'] = to_target
    return out


def bench_log(args):
    targets = take_list(args, 'target_loss', '3.0', float)
    paths = [a for a in args if not a.startswith('--')]
    if len(paths) != 1:
        die("bench.py log needs one run: a folder with log.jsonl (or the file), e.g. python bench.py log out-shakespeare-char")
    path = os.path.join(paths[0], 'log.jsonl') if os.path.isdir(paths[0]) else paths[0]
    if not os.path.isfile(path):
        die(f"{path} not found")
    return [{'mode': 'log', 'run': paths[0], **log_summary(training.read_log(path), targets)}]


def bench_train(args):
    from checkpoint import load_checkpoint
    from model import GPT, ModelConfig
    targets = take_list(args, 'target_loss', '3.0', float)
    repeat = take(args, 'repeat', 1, int)
    combos = grid(args, ('dtype', 'compile', 'gradient_checkpointing'))
    if not any(a.startswith('--eval_full_val=') for a in args):
        args.append('--eval_full_val=True')  # time to a loss on the whole val split, not on a sample of it
    peaks, rows = {}, []
    for rnd, combo in itertools.product(range(repeat), combos):
        with tempfile.TemporaryDirectory() as out:
            t0 = time.time()
            code, stdout, stderr, rss = run_child([sys.executable, os.path.join(ROOT, 'train.py'), *args,
                                                  *(f'--{k}={v}' for k, v in combo.items()), f'--out_dir={out}', '--sample_prompt='])
            wall = time.time() - t0
            if code:
                die(f"train.py failed ({code}): {stderr.strip().splitlines()[-1] if stderr.strip() else ''}")
            log_rows = training.read_log(os.path.join(out, 'log.jsonl'))
            ck = load_checkpoint(os.path.join(out, 'ckpt.pt'))
        cfg, summary = ck['config'], log_summary(log_rows, targets)
        # the dtype and device the run resolved 'auto' to, from its "model: ... | cpu float32 x1" line
        m = re.search(r'\| (\S+) (float32|bfloat16|float16) x(\d+)$', stdout, re.M)
        device, dtype = (m.group(1), m.group(2)) if m else ('cpu', 'float32')
        if device not in peaks:
            peaks[device] = peak_flops(device)
        tokens = cfg['batch_size'] * cfg['block_size'] * cfg['gradient_accumulation_steps']
        dt = summary['ms/iter'] / 1000
        flops = GPT(ModelConfig.from_dict(ck['model_config'])).flops_per_token() * tokens / dt
        rows.append({'mode': 'train', **({'round': rnd + 1} if repeat > 1 else {}), **combo, 'dtype': dtype,
                     'steps': summary.pop('steps'), 'ms/iter': summary.pop('ms/iter'), 'tokens/s': round(tokens / dt),
                     'mfu %': round(100 * flops / peaks[device][dtype], 1), 'peak RSS MB': round(rss), **summary,
                     'wall s': round(wall, 1)})
    return rows + [{'mode': 'peak', 'device': d, **{f'{k} GFLOP/s': round(v / 1e9, 1) for k, v in p.items()}} for d, p in peaks.items()]


# GPT-2 small, the shape `bench.py step` measures unless told otherwise
STEP_SHAPE = dict(arch='gpt2', n_layer=12, n_head=12, n_embd=768, block_size=1024, batch_size=1, vocab_size=50304)


def _memory_now():
    """(current RSS, peak RSS) of this process in bytes, from /proc (Linux); (0, 0) elsewhere."""
    try:
        with open('/proc/self/status') as f:
            kb = dict(line.split(':', 1) for line in f)
        return int(kb['VmRSS'].split()[0]) * 1024, int(kb['VmHWM'].split()[0]) * 1024
    except (OSError, KeyError):
        return 0, 0


def _step_memory(step, kind, dev):
    """Run step() once more and measure it. -> (the step's own bytes, above the weights and optimizer
    state; the process's peak bytes)."""
    import ctypes
    import ctypes.util
    import torch
    # On a GPU torch's allocator counts it; on a CPU the peak RSS of one more step, after telling glibc
    # to hand freed memory back to the system (trim now, big blocks through mmap) so that RSS follows
    # what is allocated.
    if kind == 'cuda':
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        step()
        step_bytes, peak = torch.cuda.max_memory_allocated(dev) - base, torch.cuda.max_memory_allocated(dev)
    else:
        libc = ctypes.CDLL(ctypes.util.find_library('c')) if sys.platform == 'linux' else None
        if libc is not None:
            libc.mallopt(-3, 1 << 16)  # M_MMAP_THRESHOLD: blocks of 64 KB and more are mmapped, and unmapped when freed
            libc.malloc_trim(0)
        base = _memory_now()[0]
        with open('/proc/self/clear_refs', 'w') if libc is not None else open(os.devnull, 'w') as f:
            f.write('5')  # reset the peak RSS (VmHWM) to the current RSS
        step()
        peak = _memory_now()[1]
        step_bytes = peak - base if libc is not None else 0
    return step_bytes, peak


def write_profile(prof, path, steps):
    """torch.profiler's tables for `steps` steps: operations by their own time on the GPU (where there is
    one) and on the CPU, so that launch-bound (CPU) and compute-bound (GPU) steps both show what costs."""
    avg = prof.key_averages()
    has_cuda = any(getattr(e, 'device_time_total', 0) or getattr(e, 'cuda_time_total', 0) for e in avg)
    sorts = (['self_cuda_time_total'] if has_cuda else []) + ['self_cpu_time_total', 'cpu_time_total']
    with cli.atomic_write(path) as f:
        f.write(f"{steps} steps profiled (times are totals over them)\n")
        for key in sorts:
            f.write(f"\nsorted by {key}:\n{avg.table(sort_by=key, row_limit=30, max_name_column_width=70)}\n")


def _step_child(spec):
    """One training-step benchmark in this (fresh) process; prints its numbers as one JSON line."""
    import torch
    from model import GPT, make_config
    dev, dtype = spec['device'], spec.get('dtype', 'float32')
    kind = dev.split(':')[0]
    torch.manual_seed(0)
    cfg = make_config(spec['arch'], **{k: spec[k] for k in ('n_layer', 'n_head', 'n_embd', 'block_size', 'vocab_size')},
                      bias={'True': True, 'False': False}.get(spec.get('bias')))  # None: the arch's own
    model = GPT(cfg).to(dev)
    model.gradient_checkpointing = spec.get('gradient_checkpointing', 'False') == 'True'
    optimizer = model.configure_optimizers(0.1, 3e-4, (0.9, 0.95))
    fwd = torch.compile(model) if spec.get('compile', 'False') == 'True' else model
    scaler = torch.amp.GradScaler(kind, enabled=dtype == 'float16')
    x, y = (torch.randint(cfg.vocab_size, (spec['batch_size'], cfg.block_size), device=dev) for _ in range(2))  # (B, T)
    sync = torch.cuda.synchronize if kind == 'cuda' else (lambda: None)

    def step():
        with torch.autocast(kind, dtype=getattr(torch, dtype), enabled=dtype != 'float32'):
            _, loss = fwd(x, y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        sync()
    t0 = time.perf_counter()
    step()  # warm-up: allocates the optimizer state (and compiles)
    first = time.perf_counter() - t0
    times = []
    for _ in range(spec['steps']):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    step_bytes, peak = _step_memory(step, kind, dev)
    if spec.get('profile'):  # where the time goes, over 3 more steps: torch.profiler's tables into that file
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU] + (
                [torch.profiler.ProfilerActivity.CUDA] if kind == 'cuda' else [])) as prof:
            for _ in range(3):
                step()
        write_profile(prof, spec['profile'], 3)
    grads = sum(p.numel() * p.element_size() for p in model.parameters())
    print(json.dumps({'ms': statistics.median(times) * 1000, 'first': first, 'step MB': step_bytes / 2**20,
                      'grads MB': grads / 2**20, 'peak MB': peak / 2**20, 'flops': model.flops_per_token()}))


def bench_step(args):
    spec = {k: take(args, k, v, type(v)) for k, v in STEP_SHAPE.items()}
    spec.update(device=take(args, 'device', 'cpu'), steps=take(args, 'steps', 3, int), bias=take(args, 'bias', ''))
    profile = take(args, 'profile', '')  # a file name prefix: torch.profiler's tables, one file per combination
    repeat = take(args, 'repeat', 1, int)
    combos = grid(args, ('dtype', 'compile', 'gradient_checkpointing'))
    if args:
        die(f"bench.py step: unknown {' '.join(args)}; it takes --{' --'.join([*STEP_SHAPE, 'bias', 'device', 'steps', 'repeat', 'profile'])}, "
            f"and comma lists for --dtype, --compile, --gradient_checkpointing")
    peaks, rows = peak_flops(spec['device']), []
    tokens = spec['batch_size'] * spec['block_size']
    for rnd, combo in itertools.product(range(repeat), combos):
        prof = {'profile': os.path.abspath(f"{profile}{''.join(f'-{k}={v}' for k, v in combo.items())}.txt")} if profile else {}
        code, out, err, rss = run_child([sys.executable, os.path.abspath(__file__), '_step', json.dumps({**spec, **combo, **prof})])
        if code:
            die(f"bench.py step {combo} failed: {err.strip().splitlines()[-1] if err.strip() else code}")
        r = json.loads(out.strip().splitlines()[-1])
        dtype = combo.get('dtype', 'float32')
        rows.append({'mode': 'step', **({'round': rnd + 1} if repeat > 1 else {}), 'dtype': dtype,
                     'compile': combo.get('compile', 'False'), 'grad ckpt': combo.get('gradient_checkpointing', 'False'),
                     'ms/iter': round(r['ms'], 1), 'tokens/s': round(tokens / r['ms'] * 1000),
                     'mfu %': round(100 * r['flops'] * tokens / (r['ms'] / 1000) / peaks[dtype], 1),
                     'first step s': round(r['first'], 1), 'peak RSS MB' if spec['device'] == 'cpu' else 'max allocated MB':
                     round(rss if spec['device'] == 'cpu' else r['peak MB']), 'step MB': round(r['step MB']),
                     'activations MB': round(r['step MB'] - r['grads MB'])})
    shape = ' '.join(f'{k}={v}' for k, v in spec.items() if k in STEP_SHAPE)
    return rows + [{'mode': 'peak', 'device': spec['device'], 'shape': shape,
                    **{f'{k} GFLOP/s': round(v / 1e9, 1) for k, v in peaks.items()}}]


def bench_sample(args):
    import torch
    from checkpoint import load_model
    from model import GPT, make_config
    out_dir, new = take(args, 'out_dir', ''), take(args, 'new_tokens', 200, int)
    prompts, dtypes = take_list(args, 'prompt_tokens', '16', int), take_list(args, 'dtype', 'float32')
    shape = {k: take(args, k, v, type(v)) for k, v in STEP_SHAPE.items() if k != 'batch_size'}
    if args:
        die(f"bench.py sample: unknown {' '.join(args)}")
    if out_dir:
        model = load_model(out_dir)[0]
    else:  # speed does not depend on the weights: a random model of the shape asked for
        torch.manual_seed(0)
        model = GPT(make_config(shape.pop('arch'), **shape)).eval()
    rows = []
    with torch.no_grad():  # warm-up, untimed: the first call pays for thread pools and allocations
        sum(1 for _ in model.stream(torch.zeros(1, 4, dtype=torch.long), 4))
    for prompt, dtype in itertools.product(prompts, dtypes):
        seconds = {}
        for use_cache in (True, False):
            x = torch.randint(model.cfg.vocab_size, (1, min(prompt, model.cfg.block_size - 1)))  # (1, T)
            t0 = time.perf_counter()
            with torch.no_grad(), torch.autocast('cpu', dtype=getattr(torch, dtype), enabled=dtype != 'float32'):
                n = sum(1 for _ in model.stream(x, new, temperature=1.0, use_cache=use_cache,
                                                generator=torch.Generator().manual_seed(0)))
            dt = seconds[use_cache] = time.perf_counter() - t0
            rows.append({'mode': 'sample', **({'dtype': dtype} if len(dtypes) > 1 else {}), 'kv cache': use_cache,
                         'prompt': x.size(1), 'new tokens': n, 'block': model.cfg.block_size, 'tokens/s': round(n / dt, 1)})
        rows[-2]['cache speedup'] = round(seconds[False] / seconds[True], 1)  # (the same tokens both ways)
    return rows


SERVE_SHAPE = dict(arch='gpt2', n_layer=6, n_head=6, n_embd=384, block_size=512)  # ~30M parameters, GPT-2's vocabulary


def _start_serve(out_dir, init_from, shape, max_batch, serve_args, tmp):
    """serve.py in a child process on a free port (a random model of shape saved in tmp when neither
    out_dir nor init_from is given). -> (the process, its API's URL, the file its stderr goes to)."""
    import torch
    from dataclasses import asdict
    from model import GPT, make_config
    if not (out_dir or init_from):  # speed does not depend on the weights: a random model of the shape asked for
        torch.manual_seed(0)
        cfg = make_config(shape.pop('arch'), vocab_size=50304, **shape)
        out_dir = tmp
        torch.save({'model': GPT(cfg).state_dict(), 'model_config': asdict(cfg), 'config': {},
                    'tokenizer': {'kind': 'tiktoken', 'name': 'gpt2'}}, os.path.join(out_dir, 'ckpt.pt'))
    cmd = [sys.executable, os.path.join(ROOT, 'serve.py'), f'--out_dir={out_dir}', f'--init_from={init_from}', '--port=0',
           f'--max_batch={max_batch}', *serve_args]
    err = open(os.path.join(tmp, 'serve.err'), 'w+')  # read back if it fails
    server = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True)
    for line in server.stdout:  # serve.py prints its URLs once it listens
        if line.startswith('API:'):
            return server, line.split()[1], err
    err.seek(0)
    die(f"serve.py did not start: {err.read().strip()[-500:]}")


async def _stream_completion(client, url, body, ttfts):
    """One streamed completion; appends its time to first text to ttfts. -> the tokens it generated."""
    t0, n = time.perf_counter(), 0
    async with client.stream('POST', url + '/completions', json=body) as r:
        async for line in r.aiter_lines():
            if not line.startswith('data: {'):
                continue
            event = json.loads(line[6:])
            if event.get('usage'):
                n = event['usage']['completion_tokens']
            elif t0 is not None and event['choices'] and event['choices'][0]['text']:  # the first text
                ttfts.append(time.perf_counter() - t0)
                t0 = None
    return n


async def _serve_round(url, body, k, per_client):
    """k clients at once, each sending per_client requests in turn. -> (tokens, seconds, times to first text)."""
    import asyncio
    import httpx
    ttfts = []
    async with httpx.AsyncClient(timeout=600, trust_env=False) as client:
        async def user():
            return sum([await _stream_completion(client, url, body, ttfts) for _ in range(per_client)])
        t0 = time.perf_counter()
        tokens = sum(await asyncio.gather(*(user() for _ in range(k))))
        return tokens, time.perf_counter() - t0, ttfts


def bench_serve(args):
    """serve.py itself in a child process (as a user runs it), then rounds of N concurrent streaming
    clients (asyncio + httpx here): each sends --requests completions in turn, --new_tokens each,
    at temperature 1 with end-of-text as the only stop (a random model rarely writes it). Time to
    first token is from sending a request to its first piece of text; aggregate tokens/s is all
    tokens generated in the round over the round's wall time."""
    import asyncio
    try:
        import httpx
    except ImportError:
        die("bench.py serve needs httpx (and serve.py fastapi, uvicorn): pip install httpx fastapi uvicorn")
    out_dir, init_from = take(args, 'out_dir', ''), take(args, 'init_from', '')
    clients, new = take_list(args, 'clients', '1,4,8', int), take(args, 'new_tokens', 64, int)
    per_client, prompt_len = take(args, 'requests', 3, int), take(args, 'prompt_tokens', 16, int)
    serve_args = [a for a in args if a.split('=')[0] in ('--dtype', '--device', '--max_batch', '--ckpt')]
    shape = {k: take(args, k, v, type(v)) for k, v in SERVE_SHAPE.items()}
    args = [a for a in args if a not in serve_args]
    if args:
        die(f"bench.py serve: unknown {' '.join(args)}")
    tmp = tempfile.TemporaryDirectory()
    server, url, err = _start_serve(out_dir, init_from, shape, max(clients), serve_args, tmp.name)
    body = {'prompt': ' '.join(['the'] * prompt_len),  # one GPT-2 token per word
            'max_tokens': new, 'temperature': 1.0, 'stream': True, 'stream_options': {'include_usage': True}}
    rows = []
    try:
        asyncio.run(_serve_round(url, body, 1, per_client))  # warm-up, untimed
        for k in clients:
            tokens, dt, ttfts = asyncio.run(_serve_round(url, body, k, per_client))
            rows.append({'mode': 'serve', 'clients': k, 'requests': k * per_client, 'tokens': tokens,
                         'ttft median ms': round(1000 * statistics.median(ttfts), 1), 'ttft max ms': round(1000 * max(ttfts), 1),
                         'aggregate tokens/s': round(tokens / dt, 1), 'per client tokens/s': round(tokens / dt / k, 1)})
        for r in rows:
            r['vs 1 client'] = round(r['aggregate tokens/s'] / rows[0]['aggregate tokens/s'], 2)
    except httpx.HTTPError as e:
        err.seek(0)
        die(f"bench.py serve: a request failed ({type(e).__name__}: {e}); serve.py said: {err.read().strip()[-500:] or 'nothing'}")
    finally:
        server.terminate()
        server.wait(30)
        err.close()
        tmp.cleanup()
    return rows


# A reply is verse when every line is made of clauses of one length, 5 or 7 characters, each closed
# by one of these marks (a Tang poem's shape: "床前明月光，疑是地上霜。"), over at least two lines.
CLAUSE = re.compile(r'[^，。？！；]+[，。？！；]')
POEM_REQUEST = '请以《{}》为题，写一首诗。'  # the user turn of the poems chat records (README: poems)


def verse_kind(text):
    """5 or 7 if text is verse of 5- or 7-character clauses (see CLAUSE), else 0."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    sizes = set()
    for line in lines:
        clauses = CLAUSE.findall(line)
        if ''.join(clauses) != line:  # something that is not a closed clause
            return 0
        sizes |= {len(c) - 1 for c in clauses}
    return sizes.pop() if len(lines) >= 2 and len(sizes) == 1 and sizes <= {5, 7} else 0


def _poem_requests(titles, data_file, cfg):
    """bench_poems' requests, each a list of messages: one per title in the titles file, or the records
    finetune_sft.py held out (cfg: the fine-tune's settings)."""
    import random
    import chat_data
    system = cfg.get('sample_system') or ''
    if titles:
        if not os.path.isfile(titles):
            die(f"titles file {titles} not found (one title a line)")
        with open(titles, encoding='utf-8') as f:
            names = [line.strip() for line in f if line.strip()]
        return [([{'role': 'system', 'content': system}] if system else []) + [{'role': 'user', 'content': POEM_REQUEST.format(t)}]
                for t in names]
    # else the held-out records: the split chat.build_cache made, record by record in file order
    if not data_file or not os.path.isfile(data_file):
        die(f"the fine-tune's data file {data_file!r} is not here; pass --data_file=tang-poems-chat.jsonl or --titles=FILE")
    rng, requests = random.Random(cfg.get('seed', 1337)), []
    for _, messages in chat_data.read_examples(data_file):
        if rng.random() < cfg.get('val_fraction', 0.05):
            last = max(i for i, m in enumerate(messages) if m['role'] == 'assistant')
            requests.append(messages[:last])  # the conversation up to the reply to be written
    return requests


def bench_poems(args):
    """The share of replies to poem requests that are verse ended by <|im_end|>. The requests: the
    records finetune_sft.py held out for its val loss (the checkpoint's data_file, val_fraction and
    seed, so the same split), or --titles=FILE (one title a line) asked as POEM_REQUEST with the
    fine-tune's system prompt. One reply each, sampled as sample.py --chat does."""
    import torch
    import chat_data
    import tokenizer
    from checkpoint import load_model
    out_dir, titles = take(args, 'out_dir', 'out-sft-poems'), take(args, 'titles', '')
    ckpt_name, limit = take(args, 'ckpt', 'ckpt.pt'), take(args, 'limit', 0, int)
    temperature, top_k, seed = take(args, 'temperature', 0.8, float), take(args, 'top_k', 200, int), take(args, 'seed', 1337, int)
    max_new, replies_path = take(args, 'max_new_tokens', 200, int), take(args, 'replies', '')
    if not os.path.isfile(os.path.join(out_dir, ckpt_name)):
        die(f"{out_dir}/{ckpt_name} not found: fine-tune first (python finetune_sft.py config/sft_poems.py ...) or pass --out_dir=")
    model, spec, ck = load_model(out_dir, ckpt_name)
    cfg = ck.get('config') or {}
    data_file = take(args, 'data_file', cfg.get('data_file', ''))
    if args:
        die(f"bench.py poems: unknown {' '.join(args)}; it takes --out_dir --titles --data_file --ckpt --limit "
            f"--temperature --top_k --seed --max_new_tokens --replies")
    tok = tokenizer.load(spec)
    try:
        _, im_end = chat_data.chat_ids(tok)
    except ValueError as e:
        die(f"{out_dir}/{ckpt_name} cannot chat: {e}; fine-tune it first (python finetune_sft.py ...)")
    requests = _poem_requests(titles, data_file, cfg)
    requests = requests[:limit] if limit else requests
    if not requests:
        die("no requests: the titles file is empty, or no record was held out")
    block, gen, counts, rows = model.cfg.block_size, torch.Generator().manual_seed(seed), {0: 0, 5: 0, 7: 0}, []
    ended = 0
    t0 = time.time()
    for messages in requests:
        ids = chat_data.prompt_ids(tok, messages)[-(block - 1):]  # (a prompt longer than the context keeps its end)
        new, stopped = [], False
        with torch.no_grad():
            for t in model.stream(torch.tensor([ids]), min(max_new, block - len(ids)), temperature=temperature,
                                  top_k=top_k or None, stop_tokens={im_end, tok.eot}, generator=gen):
                if t.item() in (im_end, tok.eot):
                    stopped = t.item() == im_end
                    break
                new.append(t.item())
        reply = tok.decode(new)
        kind = verse_kind(reply) if stopped else 0
        counts[kind] += 1
        ended += stopped
        rows.append({'request': messages[-1]['content'], 'reply': reply, 'ended': stopped, 'verse': kind})
    if replies_path:
        with cli.atomic_write(replies_path) as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + '\n' for r in rows)
    n = len(requests)
    return [{'mode': 'poems', 'requests': n, 'source': titles or f'{data_file} (held out)', 'ended by <|im_end|>': ended,
             'verse': counts[5] + counts[7], 'verse %': round(100 * (counts[5] + counts[7]) / n, 1),
             '5-char': counts[5], '7-char': counts[7], 'seconds': round(time.time() - t0, 1)}]


def _peak_rss_mb():
    """The peak RSS of this process or of any child it waited for (the encoding workers), in MB."""
    peak = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return peak / (2**20 if sys.platform == 'darwin' else 2**10)  # bytes on macOS, KB on Linux


def _prepare_once(conn, paths, tokenizer, workers, out_dir):
    """In a forked child, so that the peak memory is this run's alone: prepare the files, timing
    pass 2 (the encoding) on its own through prepare.pass2's own count of seconds."""
    import prepare
    encode = {}
    pass2 = prepare.pass2

    def timed_pass2(*args):
        counts = pass2(*args)
        encode['seconds'] = counts['seconds']
        return counts
    prepare.pass2 = timed_pass2
    t0 = time.time()
    meta = prepare.prepare('bench', input=list(paths), tokenizer_name=tokenizer, workers=workers,
                           out_dir=out_dir, quiet=True)
    conn.send((meta, encode['seconds'], time.time() - t0, _peak_rss_mb()))


def bench_prepare(paths, tokenizer='gpt2', workers=(1, 2)):
    """prepare.py's speed on the files given, once per worker count: encode rate (MB of text and
    tokens per second of pass 2), the whole run's seconds (both passes) and its peak RSS (the
    largest process: the main one, or a worker)."""
    import multiprocessing as mp
    ctx = mp.get_context('fork')
    rows = []
    for w in workers:
        with tempfile.TemporaryDirectory() as out_dir:
            mine, theirs = ctx.Pipe()
            p = ctx.Process(target=_prepare_once, args=(theirs, paths, tokenizer, w, out_dir))
            p.start()
            theirs.close()
            try:
                meta, enc_s, total_s, rss = mine.recv()
            except EOFError:  # prepare.py stopped: its one-line error is already on stderr
                p.join()
                raise SystemExit(p.exitcode or 1) from None
            p.join()
        n_tok = meta['train_tokens'] + meta['val_tokens']
        rows.append({'mode': 'prepare', 'tokenizer': tokenizer, 'workers': w, 'MB': round(meta['text_bytes'] / 2**20, 1),
                     'MB/s': round(meta['text_bytes'] / 2**20 / enc_s, 1), 'tokens/s': round(n_tok / enc_s),
                     'seconds': round(total_s, 1), 'peak RSS MB': round(rss)})
    return rows


def bench_bpe(paths, vocab_sizes=(4096, 16384)):
    """BPE training time and bytes/token on the files given (read as prepare.py reads them), next
    to Hugging Face `tokenizers` (Rust) doing the same job when it is installed (a benchmark only,
    never a dependency of nanolm)."""
    import prepare
    import tokenizer
    texts = list(prepare.read_texts(paths))
    n_bytes = sum(len(t.encode()) for t in texts)
    try:
        import tokenizers
        from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
    except ImportError:
        tokenizers = None
    rows = []
    for v in vocab_sizes:
        t0 = time.time()
        tok = tokenizer.load(tokenizer.bpe_spec(tokenizer.train_bpe(texts, v)))
        row = {'mode': 'bpe', 'vocab': v, 'MB': round(n_bytes / 2**20, 2), 'seconds': round(time.time() - t0, 1),
               'bytes/token': round(n_bytes / sum(len(tok.encode(t)) for t in texts), 3)}
        if tokenizers:  # the same pre-split pattern, then byte-level BPE
            hf = Tokenizer(models.BPE())
            hf.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.Split(Regex(tokenizer.PAT), behavior='isolated'),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
            trainer = trainers.BpeTrainer(vocab_size=v, special_tokens=tokenizer.SPECIALS, show_progress=False,
                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
            t0 = time.time()
            hf.train_from_iterator(texts, trainer)
            row['HF seconds'] = round(time.time() - t0, 1)
            row['HF bytes/token'] = round(n_bytes / sum(len(e.ids) for e in hf.encode_batch(texts)), 3)
        rows.append(row)
    return rows


def prepare_mode(args):
    tok = take(args, 'tokenizer', 'gpt2')
    vocab_sizes = tuple(int(v) for v in take(args, 'bpe_vocab', '4096').split(','))
    paths = [a for a in args if not a.startswith('--')]
    if not paths:
        die("bench.py prepare needs the corpus files to encode, e.g. python bench.py prepare notes.txt")
    return bench_prepare(paths, tok) + bench_bpe(paths, vocab_sizes)


def show(rows):
    """Rows as aligned tables: one table per kind of row (its 'mode': step rows, then the peak row,
    ...), each with only its own columns, so every column lines up under its header."""
    groups = {}
    for r in rows:
        groups.setdefault(r.get('mode'), []).append(r)
    for n, group in enumerate(groups.values()):
        keys = list(dict.fromkeys(k for r in group for k in r))
        cells = [[str(r.get(k, '')) for k in keys] for r in group]
        widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
        print(('\n' if n else '') + ' | '.join(k.ljust(w) for k, w in zip(keys, widths)).rstrip())
        print('-+-'.join('-' * w for w in widths))
        for c in cells:
            print(' | '.join(v.ljust(w) for v, w in zip(c, widths)).rstrip())


if __name__ == '__main__':
    argv = sys.argv[1:]
    if argv[:1] == ['_step']:  # bench.py step runs each combination in a fresh process of its own
        _step_child(json.loads(argv[1]))
        sys.exit(0)
    modes = {'train': bench_train, 'step': bench_step, 'sample': bench_sample, 'log': bench_log, 'prepare': prepare_mode,
             'serve': bench_serve, 'poems': bench_poems}
    if not argv or argv[0] not in modes:
        print(__doc__.strip())
        sys.exit(0 if argv[:1] in (['-h'], ['--help']) else 2)
    json_path = take(argv, 'json', '')
    info = machine()
    rows = modes[argv[0]](argv[1:])
    info['load (1 min) at the end'] = round(os.getloadavg()[0], 2)
    show(rows)
    print('\nmeasured on: ' + ', '.join(f'{k} {v}' for k, v in info.items()))
    if json_path:
        with cli.atomic_write(json_path) as f:
            json.dump({'rows': rows, 'argv': sys.argv[1:], 'time': time.strftime('%Y-%m-%d %H:%M:%S'), 'machine': info}, f, indent=1)
