"""
What moves the weights besides backward: Muon + AdamW in one optimizer, and the weights' moving
average (WeightAverage).

Muon for the matrices inside the blocks, AdamW for everything else, in one optimizer:

    python train.py config/train_shakespeare_char.py            # the speedrun recipe uses it
    python train.py config/train_verdict.py --muon=True         # any run can

Muon (Keller Jordan, 2024) keeps a momentum of each weight matrix's gradient and replaces it by
the nearest semi-orthogonal matrix before stepping: every direction the gradient spans moves by
the same amount, so the rare directions learn as fast as the common ones. A few Newton-Schulz
iterations give that matrix without an SVD. Embeddings, the output layer, norms and biases are
not transforms of a hidden state into another, so they keep AdamW.

One torch.optim.Optimizer with two kinds of group (muon=True / False), not two optimizers: the
GradScaler, the LR loop (`group['lr'] = lr * group['lr_scale']`) and the checkpoints
(torch.distributed.checkpoint's get_optimizer_state_dict) then work unchanged. Every group
setting is a plain number, so a checkpoint loads with torch.load(weights_only=True).
"""
import contextlib

import torch


def orthogonalize(g, steps=5):
    """g (k, m, n): k matrices -> the nearest semi-orthogonal matrix to each (U V^T from its SVD),
    approximately. The quintic Newton-Schulz iteration below (coefficients from Muon) drives every
    singular value into roughly [0.7, 1.2] within 5 steps: close enough, and far cheaper than an SVD."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g / (g.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # Frobenius norm 1, so every singular value <= 1
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT  # iterate on the wide orientation: s below is then the smaller square
    for _ in range(steps):
        s = x @ x.mT  # (k, m, m)
        x = torch.baddbmm(x, torch.baddbmm(s, s, s, beta=b, alpha=c), x, beta=a)  # a x + (b s + c s s) x, in 3 kernels
    return x.mT if tall else x


class MuonAdamW(torch.optim.Optimizer):
    """Groups with muon=True: Nesterov momentum, orthogonalized, scaled by sqrt(max(1, rows/cols))
    so that tall and wide matrices move alike; `split` (row counts) cuts a fused matrix into parts
    orthogonalized on their own (q, k and v of the fused qkv). Other groups: AdamW."""

    def __init__(self, groups, lr, betas=(0.9, 0.95), eps=1e-8, momentum=0.95, ns_steps=5):
        defaults = dict(lr=lr, lr_scale=1.0, betas=betas, eps=eps, weight_decay=0.0, momentum=momentum,
                        ns_steps=ns_steps, muon=False, split=[])
        super().__init__(groups, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # (closure: torch.distributed.checkpoint calls step(closure=None))
        for group in self.param_groups:
            if not group['muon']:
                self._adamw(group, [p for p in group['params'] if p.grad is not None])
        self._muon([g for g in self.param_groups if g['muon']])

    def _muon(self, groups):
        """Every Muon group in one pass. At small shapes a GPU step is bound by kernel launches (one per
        tensor per operation), so each operation runs once for all tensors (torch._foreach_*), and the
        matrices of one shape, from whichever group, are orthogonalized together (README, GPU)."""
        targets, shapes = [], {}  # the (views of) parameters to step, and the update matrices by shape
        for group in groups:
            params = [p for p in group['params'] if p.grad is not None]
            if not params:
                continue
            mu, lr = group['momentum'], group['lr']
            for p in params:
                if not self.state[p]:
                    self.state[p]['momentum_buffer'] = torch.zeros_like(p)
            grads, bufs = [p.grad for p in params], [self.state[p]['momentum_buffer'] for p in params]
            torch._foreach_lerp_(bufs, grads, 1 - mu)  # buf = mu * buf + (1 - mu) * grad
            updates = torch._foreach_lerp(grads, bufs, mu)  # Nesterov: look one momentum step ahead
            if group['weight_decay']:
                torch._foreach_mul_(params, 1 - lr * group['weight_decay'])
            for p, update in zip(params, updates):
                rows = group['split'] or p.size(0)  # q, k and v apart
                for target, part in zip(p.split(rows), update.split(rows)):
                    # tall matrices take larger steps (RMS ~ wide ones)
                    scale = -lr * max(1.0, part.size(0) / part.size(1)) ** 0.5
                    shapes.setdefault(tuple(part.shape), []).append(len(targets))
                    targets.append((target, part, scale))
        if not targets:
            return
        done = [None] * len(targets)
        for shape, js in shapes.items():
            for j, m in zip(js, orthogonalize(torch.stack([targets[j][1] for j in js]), groups[0]['ns_steps']).unbind()):
                done[j] = m
        # p += scale * update, for every matrix (a view: the qkv weight's rows step in three parts)
        torch._foreach_add_([t for t, _, _ in targets], torch._foreach_mul(done, [sc for _, _, sc in targets]))

    def _adamw(self, group, params):
        if not params:
            return
        (b1, b2), lr = group['betas'], group['lr']
        steps = []  # each parameter's own step count (one that had no gradient some step lags behind)
        for p in params:
            state = self.state[p]
            if not state:
                state['step'] = torch.zeros((), dtype=torch.float32)  # on the CPU: reading it costs no sync
                state['exp_avg'], state['exp_avg_sq'] = torch.zeros_like(p), torch.zeros_like(p)
            state['step'] += 1
            steps.append(state['step'].item())
        grads = [p.grad for p in params]
        m, v = [self.state[p]['exp_avg'] for p in params], [self.state[p]['exp_avg_sq'] for p in params]
        # The usual AdamW, each operation once for all the group's tensors (torch._foreach_*)
        torch._foreach_lerp_(m, grads, 1 - b1)
        torch._foreach_mul_(v, b2)
        torch._foreach_addcmul_(v, grads, grads, value=1 - b2)
        denom = torch._foreach_div(v, [1 - b2 ** t for t in steps])  # bias-corrected second moment
        torch._foreach_sqrt_(denom)
        torch._foreach_add_(denom, group['eps'])
        if group['weight_decay']:
            torch._foreach_mul_(params, 1 - lr * group['weight_decay'])
        torch._foreach_addcdiv_(params, m, denom, [-lr / (1 - b1 ** t) for t in steps])


def muon_adamw(model, learning_rate, muon_lr, weight_decay, betas, embed_lr=0.0, momentum=0.95):
    """The optimizer for a GPT (model.py): Muon on the 2-D weights inside the blocks, AdamW on the
    rest. Every matrix gets weight_decay (decoupled: w -= lr * weight_decay * w each step), Muon's
    too: its steps have a fixed size whatever the gradient, and decay is what pulls the weights
    back (the speedrun ends a little lower with it: README, Performance); norms and biases get none.
    Peak LRs are absolute; the LR schedule multiplies each group by lr / learning_rate.
    embed_lr: the token/position embeddings' own AdamW LR (0 = learning_rate)."""
    c = model.cfg
    hs = c.head_dim
    params = [p for p in model.parameters() if p.requires_grad]
    in_blocks = {id(p) for p in model.blocks.parameters()}
    embeds = {id(model.wte.weight)} | ({id(model.wpe.weight)} if model.wpe is not None else set())
    tied = model.lm_head.weight is model.wte.weight  # tied: the output layer's LR, not an embedding's
    qkv = {id(b.attn.qkv.weight) for b in model.blocks}
    muon = [p for p in params if id(p) in in_blocks and p.dim() == 2]
    groups = [
        dict(params=[p for p in muon if id(p) not in qkv], muon=True, lr_scale=muon_lr / learning_rate, weight_decay=weight_decay),
        # q, k and v are three transforms fused for one matmul: each is orthogonalized on its own
        dict(params=[p for p in muon if id(p) in qkv], muon=True, lr_scale=muon_lr / learning_rate, weight_decay=weight_decay,
             split=[c.n_head * hs, c.n_kv_head * hs, c.n_kv_head * hs]),
        dict(params=[p for p in params if id(p) in embeds and not tied], weight_decay=weight_decay,
             lr_scale=(embed_lr or learning_rate) / learning_rate),
        dict(params=[p for p in params if id(p) not in in_blocks and p.dim() == 2 and (tied or id(p) not in embeds)],
             weight_decay=weight_decay),
        dict(params=[p for p in params if p.dim() < 2]),
    ]
    return MuonAdamW([g for g in groups if g['params']], lr=learning_rate, betas=betas, momentum=momentum)


class WeightAverage:
    """A moving average of the weights (train.py's ema_decay > 0). After every optimizer step

        avg += (1 - d) * (weights - avg),   d = min(decay, (1 + t) / (10 + t))

    so the first steps (small d) don't drag the random init along. The optimizer steps the weights
    as ever; evals, best.pt, the sample and sample.py see the average, which smooths out the noise
    a high LR puts into the weights (the speedrun: README, Performance).
      update(t)      after optimizer step t
      swapped_in()   a `with` block in which the model holds the average (eval, sampling)
      state_dict()   the average as a whole state_dict, tied weights under both names (checkpoints)
    """

    def __init__(self, model, decay, saved=None):
        self.model, self.decay = model, decay
        self.params = list(model.parameters())
        names = [name for name, _ in model.named_parameters()]  # (tied weights appear once)
        self.avg = [(saved[n].to(p.device) if saved else p.detach()).clone() for n, p in zip(names, self.params)]

    @torch.no_grad()
    def update(self, step):
        d = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(self.avg, [p.detach() for p in self.params], 1 - d)  # one kernel launch per group, not per tensor

    @torch.no_grad()
    def _swap(self):
        for p, a in zip(self.params, self.avg):
            live = p.detach().clone()
            p.copy_(a)
            a.copy_(live)

    @contextlib.contextmanager
    def swapped_in(self):
        self._swap()
        try:
            yield
        finally:
            self._swap()  # twice puts everything back

    def state_dict(self):
        with self.swapped_in():
            return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
