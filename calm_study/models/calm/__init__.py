"""CALM, the add-on: class anchors, anchor distributions, the VAE head and the alignment terms (Table 7)."""

from calm_study.models.calm.head import (
    CALM_KNOBS,
    CALMHead,
    anchor_log_probs,
    build_calm_head,
    calm_knobs,
    calm_part_knobs,
    check_calm,
)

__all__ = ["CALM_KNOBS", "CALMHead", "anchor_log_probs", "build_calm_head", "calm_knobs", "calm_part_knobs",
           "check_calm"]
