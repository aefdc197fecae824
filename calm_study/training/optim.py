"""AdamW over the model's named parameter groups, and the warmup + cosine schedule."""

from __future__ import annotations

import math

import torch

from calm_study.config import OptimConfig
from calm_study.models.families import VideoTextModel
from calm_study.names import LR_GROUPS, lr_column


def group_lrs(o: OptimConfig) -> dict[str, float]:
    """Learning rate of each named parameter group a family exposes."""
    return {group: getattr(o, lr_column(group)) for group in LR_GROUPS}  # optim.lr_clip, optim.lr_new


def build_optimizer(model: VideoTextModel, o: OptimConfig) -> torch.optim.AdamW:
    """AdamW, one learning rate per named group; no weight decay on biases, norms and scalars. Each torch param group
    carries its name ("clip", "new"), so the logged rates are read by name, never by position."""
    lrs = group_lrs(o)
    groups = []
    for name, params in model.param_groups().items():
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        groups += [{"params": decay, "lr": lrs[name], "weight_decay": o.weight_decay, "name": name},
                   {"params": no_decay, "lr": lrs[name], "weight_decay": 0.0, "name": name}]
    return torch.optim.AdamW([g for g in groups if g["params"]], betas=tuple(o.betas), eps=o.eps)


def current_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """{"lr_<group>": current rate} of every named group that has parameters."""
    return {lr_column(g["name"]): g["lr"] for g in optimizer.param_groups}


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_fraction: float):
    """Linear warmup over warmup_fraction of the steps, then cosine decay to 0; stepped once per step."""
    warmup = int(warmup_fraction * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
