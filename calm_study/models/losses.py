"""Losses shared by tasks and families: the retrieval task's contrastive term is also T-MASS's support term, so it
lives in the models layer (tasks import models, never the other way round)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def symmetric_cross_entropy(logits: torch.Tensor) -> torch.Tensor:
    """InfoNCE both ways over (N, N) logits whose diagonal holds the matching pairs."""
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
