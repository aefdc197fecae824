"""CALM, the add-on: class anchors, anchor distributions, the VAE head and the alignment terms (Table 7)."""

from calm_study.models.calm.head import CALMHead, anchor_log_probs, build_calm_head

__all__ = ["CALMHead", "anchor_log_probs", "build_calm_head"]
