"""
Checkpoints, written once for every script (train.py, finetune_sft.py, sample.py, export.py):

  save_checkpoint / load_checkpoint   one file, written atomically, loadable anywhere
  start_run                           what may happen to out_dir: a new run, a resume, or a refusal
  check_resume                        the saved model and tokenizer must be the ones configured now
  save_run / restore_run              everything that decides the rest of a run (weights, optimizer,
                                      GradScaler, counters, every RNG, the data position), in one
                                      format for one process, DDP and FSDP
  load_model                          a model and its tokenizer from an out_dir (or hf:<folder>)

A checkpoint is a dict: model (state_dict), model_config, config (the script's settings),
tokenizer (a spec that needs no files), and for a run in progress optimizer, scaler, iter_num,
best_val, skipped, last_eval, rng, world_size.
"""
import os
import random
import re
from dataclasses import asdict

import numpy as np
import torch

from cli import atomic_write, die, fsync_dir
from model import GPT, ModelConfig, add_lora, merge_lora

RUN_FILES = ('ckpt.pt', 'best.pt', 'log.jsonl', 'loss.png')  # plus ckpt_<iter>.pt: what a run writes in out_dir


def run_files(out_dir):
    """The files of a run in out_dir (only those: out_dir may also hold a user's own files)."""
    names = os.listdir(out_dir) if os.path.isdir(out_dir) else []
    return sorted(n for n in names if n in RUN_FILES or re.fullmatch(r'ckpt_\d+\.pt', n))


def _link_or_copy(src, dst):
    """Make dst name the same bytes as src: a hard link costs no disk; copy where links fail."""
    tmp = dst + '.tmp'
    if os.path.exists(tmp):
        os.remove(tmp)
    try:
        os.link(src, tmp)
    except OSError:
        with open(src, 'rb') as a, atomic_write(dst, 'wb') as b:
            b.write(a.read())
        return
    os.replace(tmp, dst)


def save_checkpoint(state, out_dir, keep_last_n=1, is_best=False):
    """Write state to out_dir/ckpt.pt so that a crash at any moment, even kill -9 halfway
    through, leaves the previous checkpoint whole (atomic_write: temp file, fsync, rename).
    With keep_last_n > 1 older ones stay as ckpt_<iter>.pt; best.pt has the lowest val loss.
    Both are hard links of the new file, made before it is renamed into place."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, 'ckpt.pt')
    with atomic_write(path, 'wb') as f:
        torch.save(state, f)
        f.flush()
        if keep_last_n > 1:
            _link_or_copy(f.name, os.path.join(out_dir, f"ckpt_{state['iter_num']:08d}.pt"))
        if is_best:
            _link_or_copy(f.name, os.path.join(out_dir, 'best.pt'))
    fsync_dir(out_dir)
    kept = sorted(n for n in run_files(out_dir) if n.startswith('ckpt_'))
    for old in kept[:-keep_last_n if keep_last_n > 1 else None]:
        os.remove(os.path.join(out_dir, old))


def load_checkpoint(path):
    """Load a checkpoint onto the CPU, whatever device wrote it, with the names of the plain
    model (a torch.compile or DDP wrapper adds '_orig_mod.' or 'module.' to every key)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} not found; train one first (python train.py ...) or pass the right --out_dir")
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # (torch's own message would blame weights_only; the file is the problem)
        raise ValueError(f"{path} is not a readable checkpoint: truncated, corrupt or not a torch file ({type(e).__name__}); "
                         f"if best.pt or a ckpt_<iter>.pt sits beside it, copy that over it") from None
    if not isinstance(ckpt, dict) or 'model' not in ckpt or 'model_config' not in ckpt:
        raise ValueError(f"{path} is not a nanolm checkpoint (no model or model_config in it)")
    for key in ('model', 'ema'):
        if key in ckpt:
            ckpt[key] = {re.sub(r'^((_orig_mod|module)\.)+', '', k): v for k, v in ckpt[key].items()}
    return ckpt


def weights(ckpt):
    """The weights a checkpoint stands for: their moving average if the run kept one (train.py's
    ema_decay: the weights its evals scored), else the trained weights themselves."""
    return ckpt.get('ema') or ckpt['model']


def start_run(out_dir, init_from, overwrite):
    """-> (checkpoint to resume or None, the old run's files to delete once every check has passed).
    A scratch run never silently replaces another run."""
    old = run_files(out_dir)
    ckpt_path = os.path.join(out_dir, 'ckpt.pt')
    if init_from == 'resume':
        if not os.path.exists(ckpt_path):
            die(f"nothing to resume: {ckpt_path} does not exist; start with --init_from=scratch")
        return load_checkpoint(ckpt_path), []
    if any(n.endswith('.pt') for n in old) and not overwrite:
        die(f"{out_dir}/ already holds a run ({', '.join(old)}); resume it with --init_from=resume, "
            f"choose another --out_dir, or pass --overwrite=True to replace it")
    return None, old


def clear_run(out_dir, old):
    """Delete the old run's files: only after every setting has passed its checks."""
    for name in old:
        os.remove(os.path.join(out_dir, name))
    os.makedirs(out_dir, exist_ok=True)


PROBE = "Hello, world! 1234 naïve café\n床前明月光，疑是地上霜。 🎉 <|endoftext|> def f(x): return x"


def same_tokenizer(a, b):
    """Do two tokenizer specs encode alike? Equal specs do; otherwise (a Hugging Face tokenizer.json
    read back, a spec with other bookkeeping fields) compare the vocabulary size, the special tokens
    and the ids of a probe text mixing English, Chinese, digits, emoji and code."""
    if a == b:
        return True
    import tokenizer
    try:
        ta, tb = tokenizer.load(a), tokenizer.load(b)
        return (ta.n_vocab, ta.special, ta.encode(PROBE)) == (tb.n_vocab, tb.special, tb.encode(PROBE))
    except ValueError:  # e.g. a char vocabulary without some probe character
        return False


def check_resume(ckpt, where, mcfg, tok_spec):
    """The checkpoint's model and tokenizer must be the ones configured now; -> the saved ModelConfig."""
    saved = ModelConfig.from_dict(ckpt['model_config'])
    diff = [f"{k}: checkpoint {v!r}, now {getattr(mcfg, k)!r}" for k, v in asdict(saved).items()
            if getattr(mcfg, k) != v and k != 'dropout']
    if diff:
        die(f"{where} does not match this config ({'; '.join(diff)}); resume with the run's own settings or use a new --out_dir")
    if not same_tokenizer(ckpt.get('tokenizer', tok_spec), tok_spec):  # (a checkpoint without one is taken at its word)
        die(f"{where} was trained with another tokenizer than this run's data uses; resume on the run's own dataset")
    saved.dropout = mcfg.dropout
    return saved


def resume_notes(ckpt, config, world, say):
    """Say what differs from the run's own settings. Returns the lr_decay_iters to go on with (also
    set in config): the run's own end of the cosine when only max_iters grew."""
    old = ckpt.get('config', {})
    changed = [f"{k} {old[k]!r} -> {config[k]!r}" for k in ('batch_size', 'gradient_accumulation_steps', 'max_iters', 'learning_rate', 'ema_decay')
               if k in old and k in config and old[k] != config[k]]
    if not config.get('lr_decay_iters') and old.get('max_iters', config['max_iters']) != config['max_iters']:
        # The cosine ends at max_iters; stretching it now would send the LR back up. Keep the
        # run's own end (after it, min_lr) unless --lr_decay_iters says otherwise.
        config['lr_decay_iters'] = old.get('lr_decay_iters') or old['max_iters']
        changed.append(f"the LR still decays to min_lr at iter {config['lr_decay_iters']} (set --lr_decay_iters to move that)")
    if ckpt.get('world_size', 1) != world:
        changed.append(f"world size {ckpt.get('world_size', 1)} -> {world} (the same data stream; dropout masks start fresh)")
    if changed:
        say("resuming with changes: " + ", ".join(changed))
    return config['lr_decay_iters']


def gather(env, obj):
    """Every process's obj, as a list indexed by rank (just [obj] without DDP)."""
    if not env.ddp:
        return [obj]
    import torch.distributed as dist
    objs = [None] * env.world
    dist.all_gather_object(objs, obj)
    return objs


def rng_state(env, sampler):
    """Every random stream that decides what comes next, per rank (gathered to all ranks)."""
    return {'torch': gather(env, torch.get_rng_state()), 'sampler': [sampler.get_state()],  # the same on every rank
            'cuda': gather(env, torch.cuda.get_rng_state()) if env.device_type == 'cuda' else [],
            'python': (lambda s: (s[0], list(s[1]), s[2]))(random.getstate()),
            'numpy': (lambda s: (s[0], torch.from_numpy(s[1].astype(np.int64)), *s[2:]))(np.random.get_state())}


def full_state(model, optimizer):
    """-> (model state_dict, optimizer state_dict), whole and on the CPU, in one format whatever the
    mode: parameter names as keys (torch.distributed.checkpoint's), so a checkpoint from one
    process, DDP or FSDP resumes in any of them. Under FSDP every rank must call it (it gathers)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=opts), get_optimizer_state_dict(model, optimizer, options=opts)


def save_run(env, out_dir, model, optimizer, scaler, sampler, keep_last_n=1, is_best=False, **fields):
    """Checkpoint a run in progress: model, optimizer, GradScaler, every RNG and `fields`
    (config, model_config, tokenizer, iter_num, best_val, ...). Called on every rank;
    `model` is the unwrapped one (for FSDP the sharded module itself)."""
    rng = rng_state(env, sampler)
    sharded = type(model).__name__.startswith('FSDP')
    sums = gather(env, sum(p.double().sum().item() for p in model.parameters())) if env.ddp and not sharded else []
    if len(set(sums)) > 1:  # gradient all-reduce failed somewhere: saving would bless rank 0's copy
        die(f"the {env.world} processes no longer hold the same weights (parameter sums {sums}); the last checkpoint is untouched")
    model_state, optim_state = full_state(model, optimizer)
    if env.master:
        state = {'model': model_state, 'optimizer': optim_state, 'scaler': scaler.state_dict(),
                 'rng': rng, 'world_size': env.world, **fields}
        save_checkpoint(state, out_dir, keep_last_n=keep_last_n, is_best=is_best)


def restore_run(ckpt, env, model, optimizer, scaler, sampler, seed):
    """Load the optimizer, GradScaler and random streams of a checkpoint into a run being set up
    (the weights were loaded before the model was wrapped); -> iter_num, best_val, skipped, last_eval.
    Older or hand-made checkpoints may lack any of these: resume with what is there, and say so."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    optim_state = ckpt.get('optimizer')
    if optim_state and all(isinstance(k, str) for k in optim_state.get('state', {})):  # names as keys
        settings = [{k: v for k, v in g.items() if k != 'params'} for g in optimizer.param_groups]
        set_optimizer_state_dict(model, optimizer, optim_state, options=StateDictOptions(full_state_dict=True))
        for group, own in zip(optimizer.param_groups, settings):  # torch 2.13's loader lost Muon's list-valued
            for k, v in own.items():                              # `split` (q/k/v row counts): restore what it drops
                group.setdefault(k, v)
    elif optim_state:  # older checkpoints: torch's plain format (one process or DDP)
        optimizer.load_state_dict(optim_state)
    if ckpt.get('scaler'):  # empty when saved by a run without fp16 (a disabled GradScaler)
        scaler.load_state_dict(ckpt['scaler'])
    rng, rank, iter_num = ckpt.get('rng'), env.rank, ckpt.get('iter_num', 0)
    if rng:  # the data position: one stream, the same on every rank, so any world size continues it
        sampler.set_state(rng['sampler'][0])
    else:
        sampler.manual_seed(seed + iter_num)
    if rng and ckpt.get('world_size', 1) == env.world:
        random.setstate((rng['python'][0], tuple(rng['python'][1]), rng['python'][2]))
        np.random.set_state((rng['numpy'][0], rng['numpy'][1].numpy(), *rng['numpy'][2:]))
        torch.set_rng_state(rng['torch'][rank])
        if env.device_type == 'cuda' and rng.get('cuda'):
            torch.cuda.set_rng_state(rng['cuda'][rank])
    else:  # another world size (dropout masks are per process), or no saved state: fresh but deterministic
        torch.manual_seed(seed + rank + iter_num)
    missing = [k for k in ('optimizer', 'rng', 'iter_num') if k not in ckpt]
    if missing:
        env.say(f"note: the checkpoint has no {', '.join(missing)}; those start fresh")
    return iter_num, ckpt.get('best_val', float('inf')), ckpt.get('skipped', 0), ckpt.get('last_eval', -1)


def load_model(out_dir, ckpt_name='ckpt.pt', init_from='', block_size=None):
    """-> (model on the CPU in eval mode, tokenizer spec, checkpoint dict) from out_dir/ckpt_name,
    or from a Hugging Face folder when init_from='hf:<folder or hub id>' (block_size: a shorter
    context than the released model's)."""
    if init_from.startswith('hf:'):
        import hf
        mcfg, state, spec = hf.load_hf(init_from[3:], block_size=block_size)
        ckpt = {'model': state, 'model_config': asdict(mcfg), 'tokenizer': spec, 'config': {}}
    else:
        ckpt = load_checkpoint(os.path.join(out_dir, ckpt_name))
    model = GPT(ModelConfig.from_dict(ckpt['model_config']))
    lora = ckpt.get('lora')  # a finetune_sft.py run with LoRA: its adapters are folded into plain weights here
    if lora:
        add_lora(model, lora['rank'], lora['alpha'], 0.0, lora['targets'])
    # a finetune_cls.py classifier also holds its head (score.weight): not part of the language model
    model.load_state_dict({k: v for k, v in weights(ckpt).items() if not k.startswith('score.')})
    if lora:
        merge_lora(model)
    return model.eval(), ckpt.get('tokenizer'), ckpt
