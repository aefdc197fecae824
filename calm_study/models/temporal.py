"""Temporal fusion Ψ_TE: frame features (B, T, D) -> one video feature (B, D). Registry: name -> module class."""

from __future__ import annotations

import torch
from torch import nn


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over T of x (B, T, D), counting only frames where mask (B, T) is True (padding is excluded)."""
    if mask is None:
        return x.mean(dim=1)
    w = mask.to(x.dtype).unsqueeze(-1)  # (B, T, 1)
    return (x * w).sum(dim=1) / w.sum(dim=1).clamp(min=1.0)


class MeanFusion(nn.Module):
    """V = mean_t h_t (CLIP4Clip's meanP): no parameters."""

    def __init__(self, width: int, num_frames: int, layers: int = 0, heads: int = 1, dropout: float = 0.0):
        super().__init__()

    def forward(self, frames: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return masked_mean(frames, mask)


class TransformerFusion(nn.Module):
    """CLIP4Clip's seqTransf: h + position embedding -> transformer layers, added back to h (residual), masked mean.

    The residual keeps the CLIP frame features as the starting point, so a freshly initialised transformer does not
    scramble a pretrained representation.
    """

    def __init__(self, width: int, num_frames: int, layers: int = 4, heads: int = 8, dropout: float = 0.1):
        super().__init__()
        if width % heads:
            raise ValueError(f"model.temporal_heads {heads} must divide the embedding width {width}")
        self.position = nn.Parameter(torch.randn(num_frames, width) * 0.01)  # (T, D)
        layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=4 * width, dropout=dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, frames: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        t = frames.shape[1]
        x = frames + self.position[:t]  # (B, T, D)
        pad = None if mask is None else ~mask.bool()  # True = ignore
        x = frames + self.encoder(x, src_key_padding_mask=pad)  # (B, T, D)
        return masked_mean(x, mask)  # (B, D)


FUSIONS: dict[str, type[nn.Module]] = {"mean": MeanFusion, "transformer": TransformerFusion}


def list_temporal_fusions() -> list[str]:
    return sorted(FUSIONS)


def build_temporal_fusion(name: str, width: int, num_frames: int, layers: int, heads: int, dropout: float) -> nn.Module:
    if name not in FUSIONS:
        raise ValueError(f"unknown temporal fusion {name!r}; valid: {', '.join(list_temporal_fusions())}")
    return FUSIONS[name](width, num_frames, layers=layers, heads=heads, dropout=dropout)
