"""CALM's alignment terms between the video's and the caption's anchor distributions (Table 7's variants).

Each variant maps the CALM head's outputs (`v_logp`, `s_logp`: log V_p and log S_p, (B, K); `vae` for the generative
variant) to named, unweighted scalar terms, computed in fp32 whatever the autocast precision. Each variant's registry
entry (models/calm/variants.py, torch-free) names its function here, says which loss config field weighs each term
and which knobs it reads. A new variant is a function here and one entry there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from calm_study.config import LossConfig

Terms = dict[str, torch.Tensor]


def _target(out: dict, cfg: LossConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """S_p and log S_p, (B, K), detached when loss.detach_target is set."""
    s_logp = (out["s_logp"].detach() if cfg.detach_target else out["s_logp"]).float()
    return s_logp.exp(), s_logp


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
    rec = -(s_p * F.log_softmax(vae["recon_logits"].float(), dim=-1)).sum(-1).mean()
    mu, logvar = vae["mu"].float(), vae["logvar"].float()  # fp32 terms under bf16 autocast
    kl = 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1).sum(-1).mean()
    return {"align_rec": rec, "align_kl": kl}
