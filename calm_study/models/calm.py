"""CALM: a CLIP backbone, a temporal fusion, an anchor bank and a VAE head, composed.

    frames (B, T, 3, S, S) -> h (B, T, D) -> V = Ψ_TE(h) (B, D)          caption -> h_CLS (B, D)
    P = text_encoder(prompts) + e (K, D)
    V_p = softmax(τ·cos(mean_t h_t, P)),  S_p = softmax(τ·cos(h_CLS, P))   (B, K)
    VAE: V_p -> (μ, log σ²) -> z -> Ŝ_p logits
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from calm_study.config import TrialConfig
from calm_study.models.anchors import AnchorBank, pick_labels
from calm_study.models.backbone import CLIPBackbone
from calm_study.models.temporal import build_temporal_fusion, masked_mean
from calm_study.models.vae import AnchorVAE


def anchor_log_probs(features: torch.Tensor, anchors: torch.Tensor, tau: float) -> torch.Tensor:
    """log softmax(τ·cos(features, P)) over the K anchors: (B, D), (K, D) -> (B, K)."""
    cos = F.normalize(features, dim=-1) @ F.normalize(anchors, dim=-1).t()  # (B, K)
    return F.log_softmax(tau * cos, dim=-1)


class CALMModel(nn.Module):
    def __init__(self, backbone: CLIPBackbone, fusion: nn.Module, anchors: AnchorBank | None,
                 vae: AnchorVAE | None, tau: float):
        super().__init__()
        self.backbone = backbone
        self.fusion = fusion
        self.anchors = anchors
        self.vae = vae
        self.tau = tau

    def encode_video(self, frames: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, 3, S, S) -> video feature V (B, D) and the plain frame mean mean_t h_t (B, D)."""
        b, t = frames.shape[:2]
        h = self.backbone.encode_image(frames.flatten(0, 1)).view(b, t, -1)  # (B, T, D)
        return self.fusion(h, mask), masked_mean(h, mask)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.backbone.encode_text(tokens)  # (B, D)

    def forward(self, frames: torch.Tensor, mask: torch.Tensor | None, tokens: torch.Tensor,
                vae_noise: torch.Tensor | None = None) -> dict:
        video, frame_mean = self.encode_video(frames, mask)
        text = self.encode_text(tokens)
        out: dict = {"video": video, "text": text, "logit_scale": self.backbone.logit_scale}
        if self.anchors is not None:
            p = self.anchors(self.backbone.encode_text)  # (K, D)
            out["v_logp"] = anchor_log_probs(frame_mean, p, self.tau)  # (B, K)
            out["s_logp"] = anchor_log_probs(text, p, self.tau)  # (B, K)
            if self.vae is not None:
                out["vae"] = self.vae(out["v_logp"].exp(), noise=vae_noise)
        return out

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(CLIP parameters, new-module parameters), for the two learning rates."""
        clip = list(self.backbone.parameters())
        ids = {id(p) for p in clip}
        return clip, [p for p in self.parameters() if id(p) not in ids]


def build_model(cfg: TrialConfig) -> CALMModel:
    """The model a trial config describes (anchors and VAE only where the alignment loss needs them)."""
    backbone = CLIPBackbone(cfg.model.clip, cfg.model.pretrained)
    m = cfg.model
    fusion = build_temporal_fusion(m.temporal, backbone.embed_dim, cfg.data.num_frames,
                                   m.temporal_layers, m.temporal_heads, m.temporal_dropout)
    anchors = vae = None
    if cfg.anchors.count > 0 and cfg.loss.align != "none":
        a = cfg.anchors
        labels = pick_labels(a.source, a.count, a.subset_seed)
        tokens = backbone.tokenize([a.template.format(label=label) for label in labels])  # (K, L)
        anchors = AnchorBank(tokens, backbone.embed_dim, a.encode, a.embed_init_std, backbone.encode_text)
        if cfg.loss.align == "vae":
            v = cfg.vae
            vae = AnchorVAE(a.count, v.latent_dim, v.encoder_hidden, v.decoder_hidden, v.dropout)
    return CALMModel(backbone, fusion, anchors, vae, cfg.anchors.tau)
