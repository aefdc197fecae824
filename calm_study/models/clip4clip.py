"""Family `clip4clip`: CLIP frame features fused over time into one text-independent video feature.

    frames (B, T, 3, S, S) -> h (B, T, D) -> V = Ψ_TE(h) (B, D)        caption -> h_CLS (B, D)
    score(text, video) = cos(text, video)

With a CALM head, V_p comes from mean_t h_t and S_p from h_CLS (see models/calm/head.py).

Its registry entry (`model.*` knobs it reads, their checks, traits) is in models/families.py; this module
builds the model (`build_clip4clip`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from calm_study.config import TrialConfig
from calm_study.distributed import gather_with_grad
from calm_study.models.backbone import CLIPBackbone
from calm_study.models.calm.head import CALMHead, build_calm_head
from calm_study.models.clip_family import CLIPFamily
from calm_study.models.temporal import build_temporal_fusion, masked_mean


class Clip4Clip(CLIPFamily):
    def __init__(self, backbone: CLIPBackbone, fusion: nn.Module, calm: CALMHead | None, logit_scale_max: float):
        super().__init__(backbone, logit_scale_max)
        self.fusion = fusion
        self.calm = calm

    def forward(self, batch: dict, vae_noise: torch.Tensor | None = None) -> dict:
        """{"frames" (B, T, 3, S, S) or FRAME_FEATURES (B, T, D), "mask" (B, T), "tokens" (B, L)} -> {"video", "text"}
        (B, D) (+ CALM's)."""
        h = self.batch_frame_features(batch)  # (B, T, D)
        video = self.fusion(h, batch["mask"])  # (B, D)
        text = self.caption_features(batch)  # (B, D)
        out: dict = {"video": video, "text": text}
        if self.calm is not None:
            out.update(self.calm(masked_mean(h, batch["mask"]), text, self.backbone.encode_text, vae_noise))
        return out

    def batch_logits(self, out: dict) -> torch.Tensor:
        """scale · cos(text_i, video_j) over the global batch (every worker's pairs, gathered with gradients)."""
        t = F.normalize(gather_with_grad(out["text"]), dim=-1)  # (N, D)
        v = F.normalize(gather_with_grad(out["video"]), dim=-1)  # (N, D)
        return self.scale() * t @ v.t()  # (N_text, N_video)

    def text_bank(self, tokens: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        return F.normalize(self.text_features(tokens, features).float(), dim=-1)  # (N, D)

    def video_bank(self, frames: torch.Tensor | None, mask: torch.Tensor | None,
                   features: torch.Tensor | None = None) -> torch.Tensor:
        return F.normalize(self.fusion(self.frame_features(frames, features), mask).float(), dim=-1)  # (N, D)

    def score(self, text_bank: torch.Tensor, video_bank: torch.Tensor, pool_with: None = None) -> torch.Tensor:
        return text_bank @ video_bank.t()  # (N_text, N_video): cosine, both banks are normalised


def build_clip4clip(cfg: TrialConfig) -> Clip4Clip:
    m = cfg.model
    backbone = CLIPBackbone(m.clip, m.pretrained)
    fusion = build_temporal_fusion(m.temporal, backbone.embed_dim, cfg.data.num_frames,
                                   m.temporal_layers, m.temporal_heads, m.temporal_dropout)
    calm = build_calm_head(cfg, backbone.tokenize, backbone.encode_text, backbone.embed_dim)
    return Clip4Clip(backbone, fusion, calm, cfg.loss.logit_scale_max)


def random_banks(n_text: int, n_video: int, num_frames: int, width: int, cfg: TrialConfig,
                  g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised features: text (N_text, D), video (N_video, D)."""
    return (F.normalize(torch.randn(n_text, width, generator=g), dim=-1),
            F.normalize(torch.randn(n_video, width, generator=g), dim=-1))
