"""Family `xpool`: X-Pool's text-conditioned attention pooling of the frame features (CALM's baseline, with T-MASS).

    pool(t, v_j) for text t (D,) and frames v_j (T, D):
        LN1 shared by text and frames; q = W_q LN1(t), k = W_k LN1(f), v = W_v LN1(f)  (H heads)
        w = softmax_f(k·q / sqrt(D/H)) over the video's real frames;  a = LN2(W_o Σ_f w_f v_f)
        pool = LN3(a + Dropout(W_l a))
    score(text i, video j) = cos(t_i, pool(t_i, v_j))

Every projection starts as the identity (biases 0), so an untrained pooling is a norm-and-average of the frames.
Parameters at D = 512: 5 × Linear(512, 512) + 3 × LayerNorm(512) = 1,316,352. The video bank keeps the frame
features, and `score` pools each video with the very text it is scoring (no candidate is ever pooled by another
caption: docs/metrics.md#leak-free-scoring-and-the-t-mass-evaluation-leak).

Its registry entry (`model.*` knobs it reads, their checks, traits) is in models/families.py; this module
builds the model (`build_xpool`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from calm_study.config import TrialConfig
from calm_study.distributed import gather_with_grad
from calm_study.models.backbone import CLIPBackbone
from calm_study.models.calm.head import CALMHead, build_calm_head
from calm_study.models.clip_family import CLIPFamily
from calm_study.models.temporal import masked_mean


class TextConditionedPool(nn.Module):
    def __init__(self, width: int, heads: int = 1, dropout: float = 0.3):
        super().__init__()
        if width % heads:
            raise ValueError(f"model.pool_heads {heads} must divide the embedding width {width}")
        self.heads = heads
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(width, width) for _ in range(3))
        self.out_proj = nn.Linear(width, width)
        self.linear_proj = nn.Linear(width, width)
        self.dropout = nn.Dropout(dropout)
        for layer in (self.q_proj, self.k_proj, self.v_proj, self.out_proj, self.linear_proj):
            nn.init.eye_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, text: torch.Tensor, frames: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """text (N_t, D), frames (N_v, T, D), mask (N_v, T) -> (N_t, N_v, D): row i, column j = pool(t_i, v_j)."""
        n_t, (n_v, n_f, width) = text.shape[0], frames.shape
        h, dh = self.heads, width // self.heads
        t, f = self.norm1(text), self.norm1(frames)
        q = self.q_proj(t).view(n_t, h, dh)  # (N_t, H, dh)
        k = self.k_proj(f).view(n_v, n_f, h, dh)  # (N_v, T, H, dh)
        v = self.v_proj(f).view(n_v, n_f, h, dh)  # (N_v, T, H, dh)
        logits = torch.einsum("ihd,jfhd->ijhf", q, k) / math.sqrt(dh)  # (N_t, N_v, H, T)
        if mask is not None:
            logits = logits.masked_fill(~mask.bool()[None, :, None, :], float("-inf"))
        weights = logits.softmax(dim=-1)  # over frames
        attn = torch.einsum("ijhf,jfhd->ijhd", weights, v).reshape(n_t, n_v, width)  # (N_t, N_v, D)
        a = self.norm2(self.out_proj(attn))
        return self.norm3(a + self.dropout(self.linear_proj(a)))  # (N_t, N_v, D)


def pooled_cosine(text: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    """cos(text_i, pooled[i, j]): text (N_t, D), pooled (N_t, N_v, D) -> (N_t, N_v)."""
    return torch.einsum("id,ijd->ij", F.normalize(text, dim=-1), F.normalize(pooled, dim=-1))


class XPool(CLIPFamily):
    """Family `xpool`; family `tmass` (models/tmass.py) adds the stochastic text on top of it."""

    def __init__(self, backbone: CLIPBackbone, pool: TextConditionedPool, calm: CALMHead | None,
                 logit_scale_max: float):
        super().__init__(backbone, logit_scale_max)
        self.pool = pool
        self.calm = calm

    def forward(self, batch: dict, vae_noise: torch.Tensor | None = None) -> dict:
        """-> {"text" (B, D), "frames" (B, T, D), "mask" (B, T)} (+ CALM's, from the frame mean and the text)."""
        h = self.batch_frame_features(batch)  # (B, T, D): pixels encoded, or the cached FRAME_FEATURES
        text = self.caption_features(batch)  # (B, D)
        out: dict = {"text": text, "frames": h, "mask": batch["mask"]}
        if self.calm is not None:
            out.update(self.calm(masked_mean(h, batch["mask"]), text, self.backbone.encode_text, vae_noise))
        return out

    def batch_logits(self, out: dict) -> torch.Tensor:
        """scale · cos(t_i, pool(t_i, v_j)) over the global batch (texts and frames gathered with gradients)."""
        text, frames, mask = self.gathered(out)
        return self.scale() * pooled_cosine(text, self.pool(text, frames, mask))  # (N_text, N_video)

    def text_bank(self, tokens: torch.Tensor, features: torch.Tensor | None = None) -> dict:
        return {"text": self.text_features(tokens, features).float()}  # (N, D), raw: the pooling normalises itself

    def video_bank(self, frames: torch.Tensor | None, mask: torch.Tensor | None,
                   features: torch.Tensor | None = None) -> dict:
        h = self.frame_features(frames, features).float()  # (N, T, D)
        real = torch.ones(h.shape[:2], dtype=torch.bool, device=h.device) if mask is None else mask.bool()
        return {"frames": h, "mask": real}

    def score(self, text_bank: dict, video_bank: dict, pool_with: dict | None = None) -> torch.Tensor:
        """(N_text, N_video) cos(t_i, pool(t_i, v_j)). `pool_with` (only for the labelled tmass_compat protocol):
        pool video j with pool_with["text"][j] instead of with the query."""
        t = text_bank["text"]
        return pooled_cosine(t, self.pooled(t, video_bank, pool_with))

    def pooled(self, text: torch.Tensor, video_bank: dict, pool_with: dict | None) -> torch.Tensor:
        """(N_t, N_v, D): each video pooled with the query text, or (pool_with) with one fixed text per video."""
        if pool_with is None:
            return self.pool(text, video_bank["frames"], video_bank["mask"])
        own = [self.pool(pool_with["text"][j:j + 1], video_bank["frames"][j:j + 1], video_bank["mask"][j:j + 1])
               for j in range(len(pool_with["text"]))]  # (1, 1, D) each
        return torch.cat(own, dim=1).expand(len(text), -1, -1)  # (N_t, N_v, D)

    def gathered(self, out: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Text (N, D), frames (N, T, D) and mask (N, T) of every worker's pairs, with gradients."""
        mask = gather_with_grad(out["mask"].to(out["frames"].dtype)) > 0
        return gather_with_grad(out["text"]), gather_with_grad(out["frames"]), mask


def build_xpool(cfg: TrialConfig) -> XPool:
    m = cfg.model
    backbone = CLIPBackbone(m.clip, m.pretrained)
    pool = TextConditionedPool(backbone.embed_dim, m.pool_heads, m.pool_dropout)
    calm = build_calm_head(cfg, backbone.tokenize, backbone.encode_text, backbone.embed_dim)
    return XPool(backbone, pool, calm, cfg.loss.logit_scale_max)


def random_pool_banks(n_text: int, n_video: int, num_frames: int, width: int, cfg: TrialConfig,
                      g: torch.Generator) -> tuple[dict, dict]:
    """Raw text (N_text, D); frames (N_video, T, D) with their mask (N_video, T)."""
    return ({"text": torch.randn(n_text, width, generator=g)},
            {"frames": torch.randn(n_video, num_frames, width, generator=g),
             "mask": torch.ones(n_video, num_frames, dtype=torch.bool)})
