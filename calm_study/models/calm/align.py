"""CALM's alignment terms between the video's and the caption's anchor distributions (Table 7's variants).

Each variant maps the CALM head's outputs (`v_logp`, `s_logp`: log V_p and log S_p, (B, K); `vae` for the generative
variant) to named, unweighted scalar terms, computed in fp32 whatever the autocast precision; its registry entry says
which loss config field weighs each term and which knobs it reads. A new variant is a function and one entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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


@dataclass(frozen=True)
class AlignVariant:
    """A registry entry of loss.align: its terms, their weights and the knobs it reads (beside CALM's anchors.*)."""

    name: str
    terms: Callable[[dict, LossConfig], Terms]  # the head's outputs -> named, unweighted terms
    weights: Callable[[LossConfig], dict[str, float]]  # the weight of each term it returns
    term_names: tuple[str, ...]  # what `terms` returns (the loss_* columns of the results)
    knobs: tuple[str, ...]  # config keys it reads besides anchors.* (a non-default value of another is refused)
    vae: bool = False  # the head carries the VAE (Ŝ_p from a latent of V_p)
    summary: str = ""


_DISTANCE_KNOBS = ("loss.align_weight", "loss.detach_target")


def _distance_weights(cfg: LossConfig) -> dict[str, float]:
    return {"align": cfg.align_weight}


# loss.align none is not a variant: it is the baseline, the family without CALM (config.calm_enabled).
ALIGN_VARIANTS: dict[str, AlignVariant] = {v.name: v for v in (
    AlignVariant("kl", align_kl, _distance_weights, ("align",), _DISTANCE_KNOBS, summary="KL(S_p ‖ V_p)"),
    AlignVariant("ce", align_ce, _distance_weights, ("align",), _DISTANCE_KNOBS, summary="−Σ S_p log V_p"),
    AlignVariant("mse", align_mse, _distance_weights, ("align",), _DISTANCE_KNOBS, summary="Σ (V_p − S_p)²"),
    AlignVariant("vae", align_vae, lambda c: {"align_rec": c.align_weight, "align_kl": c.alpha},
                 ("align_rec", "align_kl"), (*_DISTANCE_KNOBS, "loss.alpha", "vae.latent_dim", "vae.encoder_hidden",
                                             "vae.decoder_hidden", "vae.dropout"),
                 vae=True, summary="CALM: V_p -> VAE -> Ŝ_p, L_rec + α·KL"),
)}


def register_align(variant: AlignVariant) -> None:
    """Add an alignment variant from outside the package; validation and the contract test then know it."""
    if variant.name in ALIGN_VARIANTS or variant.name == "none":
        raise ValueError(f"loss.align {variant.name!r} is registered already")
    ALIGN_VARIANTS[variant.name] = variant


def list_align_losses() -> list[str]:
    """Every valid value of loss.align: none (the baseline) and each variant."""
    return ["none", *ALIGN_VARIANTS]
