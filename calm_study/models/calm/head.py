"""CALM as an add-on any model family carries: anchors P, the two anchor distributions and the alignment terms.

    P = text_encoder(prompts) + e                      (K, D)
    V_p = softmax(τ·cos(mean_t h_t, P))                (B, K)   from the frames alone, never from a caption
    S_p = softmax(τ·cos(h_CLS, P))                     (B, K)   from the deterministic caption feature
    VAE (loss.align vae): V_p -> (μ, log σ²) -> z -> Ŝ_p logits

A family calls `head(frame_mean, text, encode_text)` in its forward and merges the outputs into its own; the terms
come from `head.terms(out)`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from calm_study.config import LossConfig, TrialConfig, calm_enabled
from calm_study.models.calm.align import Terms
from calm_study.models.calm.anchors import AnchorBank
from calm_study.models.calm.labels import pick_labels
from calm_study.models.calm.vae import AnchorVAE
from calm_study.models.calm.variants import ALIGN_VARIANTS


def anchor_log_probs(features: torch.Tensor, anchors: torch.Tensor, tau: float) -> torch.Tensor:
    """log softmax(τ·cos(features, P)) over the K anchors: (B, D), (K, D) -> (B, K), always in fp32: under bf16
    autocast a bf16 cosine (3 significant digits) times τ ≈ 14 would blur the distributions CALM aligns."""
    with torch.autocast(features.device.type, enabled=False):
        cos = F.normalize(features.float(), dim=-1) @ F.normalize(anchors.float(), dim=-1).t()  # (B, K)
        return F.log_softmax(tau * cos, dim=-1)


class CALMHead(nn.Module):
    def __init__(self, anchors: AnchorBank, vae: AnchorVAE | None, tau: float, loss: LossConfig):
        super().__init__()
        self.anchors = anchors
        self.vae = vae
        self.tau = tau
        self.loss = loss

    def forward(self, frame_mean: torch.Tensor, text: torch.Tensor,
                encode_text: Callable[[torch.Tensor], torch.Tensor], vae_noise: torch.Tensor | None = None) -> dict:
        """frame_mean (B, D), text (B, D) -> {"v_logp", "s_logp"} (B, K) and, for the VAE variant, "vae"."""
        p = self.anchors(encode_text)  # (K, D)
        out: dict = {"v_logp": anchor_log_probs(frame_mean, p, self.tau),  # (B, K)
                     "s_logp": anchor_log_probs(text, p, self.tau)}  # (B, K)
        if self.vae is not None:
            out["vae"] = self.vae(out["v_logp"].exp(), noise=vae_noise)
        return out

    def terms(self, out: dict) -> Terms:
        """The alignment terms of loss.align, unweighted."""
        return ALIGN_VARIANTS[self.loss.align].terms(out, self.loss)

    def term_weights(self) -> dict[str, float]:
        return ALIGN_VARIANTS[self.loss.align].weights(self.loss)


def build_calm_head(cfg: TrialConfig, tokenize: Callable[[list[str]], torch.Tensor],
                    encode_text: Callable[[torch.Tensor], torch.Tensor], embed_dim: int) -> CALMHead | None:
    """The CALM head a trial config describes, or None for the baseline (loss.align none)."""
    a = cfg.anchors
    if not calm_enabled(cfg):
        return None
    labels = pick_labels(a.source, a.count, a.subset_seed)
    tokens = tokenize([a.template.format(label=label) for label in labels])  # (K, L)
    anchors = AnchorBank(tokens, embed_dim, a.encode, a.embed_init_std, encode_text)
    vae = None
    if ALIGN_VARIANTS[cfg.loss.align].vae:
        v = cfg.vae
        vae = AnchorVAE(a.count, v.latent_dim, v.encoder_hidden, v.decoder_hidden, v.dropout)
    return CALMHead(anchors, vae, a.tau, cfg.loss)
