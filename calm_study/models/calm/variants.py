"""The registry of loss.align: each alignment variant's entry (no torch; the terms are in models/calm/align.py).

An entry names its term function, says which loss config field weighs each term and which knobs it reads; validation,
the results schema and the contract test read the entries without importing torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from calm_study.config import LossConfig
from calm_study.lazy import Lazy


def _terms(name: str) -> Lazy:
    """A term function of models/calm/align.py, imported with torch when a head first computes it."""
    return Lazy(f"calm_study.models.calm.align:{name}")


@dataclass(frozen=True)
class AlignVariant:
    """A registry entry of loss.align: its terms, their weights and the knobs it reads (beside CALM's anchors.*)."""

    name: str
    # the head's outputs -> named, unweighted scalar terms: a function, or Lazy naming one (calm_study/lazy.py)
    terms: Callable[[dict, LossConfig], dict]
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
    AlignVariant("kl", _terms("align_kl"), _distance_weights, ("align",), _DISTANCE_KNOBS, summary="KL(S_p ‖ V_p)"),
    AlignVariant("ce", _terms("align_ce"), _distance_weights, ("align",), _DISTANCE_KNOBS, summary="−Σ S_p log V_p"),
    AlignVariant("mse", _terms("align_mse"), _distance_weights, ("align",), _DISTANCE_KNOBS, summary="Σ (V_p − S_p)²"),
    AlignVariant("vae", _terms("align_vae"), lambda c: {"align_rec": c.align_weight, "align_kl": c.alpha},
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
