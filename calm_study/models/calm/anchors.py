"""Class anchors P: label prompts encoded by the CLIP text encoder plus a learnable embedding per anchor (the labels:
models/calm/labels.py)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from calm_study.models.calm.labels import ENCODE_MODES


class AnchorBank(nn.Module):
    """P = text_encoder(prompt_k) + e_k for K anchors.

    encode="every_step": prompts go through the (trainable) text encoder every forward, so CLIP's text tower learns
    from the alignment loss too. encode="once": prompt features are computed here, at construction, by the initial
    text encoder without gradient and kept as a buffer (saved in checkpoints); only e_k learns.
    """

    def __init__(self, prompt_tokens: torch.Tensor, embed_dim: int, encode: str, embed_init_std: float,
                 encode_text: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        if encode not in ENCODE_MODES:
            raise ValueError(f"anchors.encode {encode!r}: valid are {', '.join(ENCODE_MODES)}")
        self.encode = encode
        self.register_buffer("prompt_tokens", prompt_tokens, persistent=False)  # (K, L)
        self.embedding = nn.Parameter(torch.randn(prompt_tokens.shape[0], embed_dim) * embed_init_std)  # (K, D)
        frozen = torch.zeros(0, embed_dim)
        if encode == "once":
            with torch.no_grad():
                frozen = encode_text(prompt_tokens).detach().float()  # (K, D)
        self.register_buffer("frozen_features", frozen)

    @property
    def num_anchors(self) -> int:
        return self.embedding.shape[0]

    def forward(self, encode_text: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        feats = encode_text(self.prompt_tokens) if self.encode == "every_step" else self.frozen_features  # (K, D)
        return feats + self.embedding  # (K, D)
