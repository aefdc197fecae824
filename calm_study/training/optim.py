"""The optimiser (AdamW, or CoCap's BertAdam) over the model's named parameter groups, and the learning-rate
schedule (warmup + cosine, or CoCap's warmup + constant + per-epoch decay)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

from calm_study.config import OptimConfig
from calm_study.models.families import VideoTextModel
from calm_study.names import LR_GROUPS, SCHEDULES, lr_column


def group_lrs(o: OptimConfig) -> dict[str, float]:
    """Learning rate of each named parameter group a family exposes."""
    return {group: getattr(o, lr_column(group)) for group in LR_GROUPS}  # optim.lr_clip, optim.lr_new




class BertAdam(torch.optim.Optimizer):
    """BERT's Adam as CoCap trains its captioner (CoCap `mm_video/modeling/compressed_video/optimization.py:60-177`,
    from Hugging Face's pytorch-pretrained-bert), without its built-in schedule (the scheduler supplies the rate).
    Per parameter tensor p with gradient g, at every step:

        g <- g · min(1, max_grad_norm / ||g||)          (when max_grad_norm > 0: each tensor on its own)
        m <- β1·m + (1-β1)·g;   v <- β2·v + (1-β2)·g²   (no bias correction, unlike Adam / AdamW)
        p <- p - lr·(m / (√v + ε) + weight_decay·p)     (decoupled weight decay, as AdamW)
    """

    clips_gradients = True  # the training step leaves gradient clipping to it (training/fit.py, update)

    def __init__(self, params: Iterable, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.01, max_grad_norm: float = 1.0):
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay,
                                  "max_grad_norm": max_grad_norm})

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            (beta1, beta2), clip = group["betas"], group["max_grad_norm"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("BertAdam does not support sparse gradients")
                if clip > 0:
                    torch.nn.utils.clip_grad_norm_(p, clip)
                grad, state = p.grad, self.state[p]
                if not state:
                    state["step"] = 0
                    state["next_m"] = torch.zeros_like(p)
                    state["next_v"] = torch.zeros_like(p)
                m, v = state["next_m"], state["next_v"]
                m.mul_(beta1).add_(grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                update = m / (v.sqrt() + group["eps"])
                if group["weight_decay"] > 0:
                    update.add_(p, alpha=group["weight_decay"])
                p.add_(update, alpha=-group["lr"])
                state["step"] += 1
        return loss


def build_optimizer(model: VideoTextModel, o: OptimConfig) -> torch.optim.Optimizer:
    """optim.name's optimiser, one learning rate per named group; no weight decay on biases, norms and scalars. Each
    torch param group carries its name ("clip", "new"), so the logged rates are read by name, never by position."""
    lrs = group_lrs(o)
    groups = []
    for name, params in model.param_groups().items():
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        groups += [{"params": decay, "lr": lrs[name], "weight_decay": o.weight_decay, "name": name},
                   {"params": no_decay, "lr": lrs[name], "weight_decay": 0.0, "name": name}]
    groups = [g for g in groups if g["params"]]
    if o.name == "bertadam":
        return BertAdam(groups, betas=(o.betas[0], o.betas[1]), eps=o.eps, max_grad_norm=o.grad_clip)
    return torch.optim.AdamW(groups, betas=tuple(o.betas), eps=o.eps)


def current_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """{"lr_<group>": current rate} of every named group that has parameters."""
    return {lr_column(g["name"]): g["lr"] for g in optimizer.param_groups}


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_fraction: float,
                    schedule: str = "warmup_cosine", epochs: int = 1, epoch_decay: float = 0.95):
    """The rate factor of every step (stepped once per step), `total_steps` = epochs x steps per epoch:

    warmup_cosine: linear warmup over warmup_fraction of the steps, then cosine decay to 0.
    constant_decay (CoCap `cocap_trainer.py:141-147` with BertAdam's `warmup_constant`, `optimization.py:36-42`): the
    same linear warmup, then 1, times epoch_decay^(e - held) in every epoch e (from 0) from held = int(warmup_fraction
    x epochs) on. CoCap multiplies the two: BertAdam warms up per step over warmup 0.1 of its steps, and an epoch
    LambdaLR (1 below int(0.1 x 20) = 2 epochs, then 0.95^(e - 2)) scales the group rates; so its first two epochs
    warm up rather than hold a constant rate."""
    warmup = int(warmup_fraction * total_steps)
    steps_per_epoch = max(1, total_steps // max(1, epochs))
    held = int(warmup_fraction * epochs)

    def warm(step: int) -> float:
        return (step + 1) / warmup if step < warmup else 1.0

    def cosine(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    def constant_decay(step: int) -> float:
        return warm(step) * epoch_decay ** max(0, step // steps_per_epoch - held)

    factors = {"warmup_cosine": cosine, "constant_decay": constant_decay}
    if schedule not in factors:
        raise ValueError(f"optim.schedule: {schedule!r} is not valid; valid: {', '.join(SCHEDULES)}")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factors[schedule])
