"""
nanolm models in lm-evaluation-harness (pip install lm-eval): a model class registered as "nanolm",
so any of its tasks runs on a checkpoint. Scoring goes through scoring.py, so a question gets the
same log-likelihood here as in eval.py --tasks.

    python eval.py --out_dir=out --lm_eval=hellaswag,arc_easy --lm_eval_args=num_fewshot=0,limit=200
    python harness.py run --model nanolm --model_args out_dir=out,dtype=float32 --tasks hellaswag
    python harness.py run --model nanolm --model_args init_from=hf:gpt2-folder --tasks my_task --include_path tasks/

`python harness.py ...` is lm-eval's own command line (every option of `lm-eval run`) with this
class registered first; lm-eval itself has no way to import a model class from outside. Model args:
out_dir, ckpt, init_from (as sample.py), device, dtype, batch_size, block_size.
"""
import contextlib

import cli  # first: one-line errors
from cli import die
import training

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError:
    die("--lm_eval needs lm-evaluation-harness: pip install lm-eval (or use --tasks=FILE.jsonl, which does not)")

import torch

import scoring
import tokenizer


@register_model("nanolm")
class NanoLM(LM):
    """lm-eval's three requests on a nanolm GPT: loglikelihood (scoring.encode_pair, as lm-eval's HF
    model cuts context and continuation), loglikelihood_rolling (whole documents in disjoint windows,
    each token scored once after the prefix token, as lm-eval's HF model does), generate_until (greedy)."""

    def __init__(self, out_dir='out', ckpt='ckpt.pt', init_from='', device='auto', dtype='auto', batch_size=8,
                 block_size=0, model=None, tok=None, spec=None, autocast=None, max_batch_size=None, **unused):
        super().__init__()
        if model is None:  # from lm-eval's command line: load as sample.py does
            from checkpoint import load_model
            env = training.init_run(device, dtype)
            model, spec, _ = load_model(out_dir, ckpt, str(init_from))
            model.to(env.device)
            device, autocast = env.device, env.autocast
            tok = tokenizer.load(spec)
        self.model, self.tok, self.spec, self.device_ = model.eval(), tok, spec, device
        self.autocast = autocast
        self.block = int(block_size) or model.cfg.block_size
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 8  # 'auto' -> 8
        # what the HF tokenizer puts in front of every text it encodes by default (Llama 3's BOS), as lm-eval's HF model gets it
        self._bos = [scoring.prefix_id(tok, spec)] if (spec or {}).get('bos') else []

    def _progress(self, what):
        return lambda done, total: cli.progress(lambda: f"lm-eval {what}: {done}/{total}")

    def loglikelihood(self, requests, disable_tqdm=False):
        pairs = [scoring.encode_pair(self.tok, self.spec, ctx, cont) for ctx, cont in (r.args for r in requests)]
        out = scoring.loglikelihoods(self.model, pairs, self.block, self.batch_size, self.device_, self.autocast,
                                     None if disable_tqdm else self._progress('loglikelihood'))
        cli.end_progress()
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm=False):
        out = []
        for (text,) in (r.args for r in requests):
            # lm-eval's HF model encodes the text as its tokenizer does by default: a tokenizer that adds a
            # BOS (Llama 3's) puts one in front, after the prefix token, which is that BOS too, and scores it.
            ids = [scoring.prefix_id(self.tok, self.spec)] + self._bos + self.tok.encode(text)
            nats, _ = scoring.score_text(self.model, ids, scoring.rolling_windows(len(ids), self.block),
                                         self.batch_size, self.device_, self.autocast)
            out.append(-nats)
        return out

    @torch.no_grad()
    def generate_until(self, requests, disable_tqdm=False):
        out, special = [], set(self.tok.special.values())
        for ctx, kw in (r.args for r in requests):
            until = kw.get('until') or [self.tok.decode([self.tok.eot])]
            until = [until] if isinstance(until, str) else until
            max_new = int(kw.get('max_gen_toks', 256))
            ids = (self._bos + self.tok.encode(ctx))[-max(1, self.block - max_new):] or [self.tok.eot]
            x = torch.tensor([ids], device=self.device_)
            new = []
            with self.autocast or contextlib.nullcontext():
                for t in self.model.stream(x, min(max_new, self.block - len(ids)), temperature=0, stop_tokens={self.tok.eot}):
                    if t.item() == self.tok.eot:
                        break
                    if t.item() not in special:  # left out of the text, as lm-eval's HF model decodes
                        new.append(t.item())
                    if any(u in self.tok.decode(new) for u in until):
                        break
            text = self.tok.decode(new)
            for u in until:
                text = text.split(u)[0]
            out.append(text)
        return out


def run_tasks(model, tok, spec, names, more, block, batch_size, device, autocast):
    """eval.py --lm_eval=NAMES: lm-eval's simple_evaluate on the loaded model. more: 'num_fewshot=5,limit=100,
    include_path=DIR'. -> {task: {metric: value}}."""
    import lm_eval
    from lm_eval.tasks import TaskManager
    extra = dict(kv.split('=', 1) for kv in more.split(',') if kv.strip()) if more else {}
    bad = set(extra) - {'num_fewshot', 'limit', 'include_path'}
    if bad:
        die(f"lm_eval_args: unknown {', '.join(sorted(bad))} (known: num_fewshot, limit, include_path)")
    lm = NanoLM(model=model, tok=tok, spec=spec, device=device, autocast=autocast, batch_size=batch_size, block_size=block)
    tm = TaskManager(include_path=extra.get('include_path'))
    names = [n.strip() for n in names.split(',') if n.strip()]
    try:
        res = lm_eval.simple_evaluate(model=lm, tasks=names, task_manager=tm,
                                      num_fewshot=int(extra['num_fewshot']) if 'num_fewshot' in extra else None,
                                      limit=float(extra['limit']) if 'limit' in extra else None)
    except Exception as e:  # an unknown task, no network for its data set, ...
        die(f"lm-eval could not run {','.join(names)}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    return {task: {k.replace(',none', ''): v for k, v in r.items() if isinstance(v, (int, float))}
            for task, r in res['results'].items()}


if __name__ == '__main__':  # lm-eval's own command line, with "nanolm" registered
    from lm_eval.__main__ import cli_evaluate
    cli_evaluate()
