"""Losses as named terms: the symmetric InfoNCE task loss and the alignment variants of Table 7.

Every function returns a dict of scalar tensors; `total_loss` weights and sums them, so a study can log and compare
each term. Inputs are the dict returned by `CALMModel.forward`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.nn.functional import all_gather

from calm_study.config import LossConfig

Terms = dict[str, torch.Tensor]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate x (B, D) from every training worker, keeping gradients (rank order), so each worker's InfoNCE
    sees the global batch's negatives. Without a process group this is the identity."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return torch.cat(all_gather(x), dim=0)  # (world * B, D)


def infonce(text: torch.Tensor, video: torch.Tensor, logit_scale: torch.Tensor, scale_max: float) -> torch.Tensor:
    """Symmetric InfoNCE over the global batch: pair i = (text i, video i).

    Every worker computes the loss of the whole gathered batch; with DDP's gradient averaging this gives exactly the
    gradients of one worker on the concatenated batch (the all_gather backward sums each worker's contribution).
    """
    t = F.normalize(gather_with_grad(text), dim=-1)  # (N, D)
    v = F.normalize(gather_with_grad(video), dim=-1)  # (N, D)
    scale = logit_scale.clamp(max=math.log(scale_max)).exp()
    logits = scale * t @ v.t()  # (N_text, N_video)
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def _target(out: dict, cfg: LossConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """S_p and log S_p, (B, K), detached when loss.detach_target is set."""
    s_logp = out["s_logp"].detach() if cfg.detach_target else out["s_logp"]
    return s_logp.exp(), s_logp


def align_none(out: dict, cfg: LossConfig) -> Terms:
    return {}


def align_kl(out: dict, cfg: LossConfig) -> Terms:
    """KL(S_p ‖ V_p) = Σ_k S_p (log S_p − log V_p), mean over the batch."""
    s_p, s_logp = _target(out, cfg)
    return {"align": (s_p * (s_logp - out["v_logp"])).sum(-1).mean()}


def align_ce(out: dict, cfg: LossConfig) -> Terms:
    """Cross-entropy −Σ_k S_p log V_p, mean over the batch."""
    s_p, _ = _target(out, cfg)
    return {"align": -(s_p * out["v_logp"]).sum(-1).mean()}


def align_mse(out: dict, cfg: LossConfig) -> Terms:
    """Squared distance Σ_k (V_p − S_p)², mean over the batch."""
    s_p, _ = _target(out, cfg)
    return {"align": (out["v_logp"].exp() - s_p).pow(2).sum(-1).mean()}


def align_vae(out: dict, cfg: LossConfig) -> Terms:
    """CALM: L_rec = −Σ_k S_p log Ŝ_p and L_KL = ½ Σ_j (μ² + σ² − log σ² − 1), both mean over the batch."""
    s_p, _ = _target(out, cfg)
    vae = out["vae"]
    rec = -(s_p * F.log_softmax(vae["recon_logits"], dim=-1)).sum(-1).mean()
    mu, logvar = vae["mu"], vae["logvar"]
    kl = 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1).sum(-1).mean()
    return {"align_rec": rec, "align_kl": kl}


ALIGN_LOSSES: dict[str, Callable[[dict, LossConfig], Terms]] = {
    "none": align_none,
    "kl": align_kl,
    "ce": align_ce,
    "mse": align_mse,
    "vae": align_vae,
}


def list_align_losses() -> list[str]:
    return list(ALIGN_LOSSES)


def term_weights(cfg: LossConfig) -> dict[str, float]:
    return {"task": cfg.task_weight, "align": cfg.align_weight, "align_rec": cfg.align_weight, "align_kl": cfg.alpha}


def compute_losses(out: dict, logit_scale: torch.Tensor, cfg: LossConfig) -> Terms:
    """All named terms plus "total", their weighted sum."""
    if cfg.align not in ALIGN_LOSSES:
        raise ValueError(f"unknown loss.align {cfg.align!r}; valid: {', '.join(list_align_losses())}")
    terms: Terms = {"task": infonce(out["text"], out["video"], logit_scale, cfg.logit_scale_max)}
    terms.update(ALIGN_LOSSES[cfg.align](out, cfg))
    weights = term_weights(cfg)
    terms["total"] = sum(weights[k] * v for k, v in terms.items())
    return terms
