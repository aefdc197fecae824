"""What every CLIP-based family shares: the backbone, the optional CALM head, the logit scale, parameter groups.

Families (clip4clip, xpool, tmass) subclass this one class for the plumbing only; what makes a family (its outputs,
batch logits, banks and score) is written in the family's own module.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from calm_study.models.backbone import CLIPBackbone
from calm_study.models.calm import CALMHead


class CLIPFamily(nn.Module):
    calm: CALMHead | None  # set by the family after its own modules (the order of parameters and checkpoint keys)

    def __init__(self, backbone: CLIPBackbone, logit_scale_max: float):
        super().__init__()
        self.backbone = backbone
        self.logit_scale_max = logit_scale_max

    @property
    def image_size(self) -> int:
        return self.backbone.image_size

    @property
    def normalisation(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return self.backbone.normalisation

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.backbone.tokenize(texts)  # (N, L)

    def extra_terms(self, out: dict) -> dict[str, torch.Tensor]:
        """CALM's alignment terms when the family carries a CALM head."""
        return self.calm.terms(out) if self.calm is not None else {}

    def term_weights(self) -> dict[str, float]:
        return self.calm.term_weights() if self.calm is not None else {}

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """{"clip": CLIP's encoders and logit scale, "new": every module added on top}, for the two learning rates;
        frozen parameters are left out, so that optimisers and DDP see only what trains."""
        clip = list(self.backbone.parameters())
        ids = {id(p) for p in clip}
        groups = {"clip": clip, "new": [p for p in self.parameters() if id(p) not in ids]}
        return {name: [p for p in ps if p.requires_grad] for name, ps in groups.items()}

    def freeze_encoders(self) -> None:
        """model.frozen: CLIP's image and text encoders stop learning (their features come from the feature cache);
        the logit scale, a retrieval temperature rather than a feature, keeps the state the family gave it."""
        for p in self.backbone.parameters():
            if p is not self.backbone.logit_scale:
                p.requires_grad_(False)

    def frame_features(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, S, S) pixels -> (B, T, D) through the image encoder; (B, T, D) frame features (frozen-feature
        mode: read from the feature cache) are already that and pass through."""
        if frames.dim() == 3:
            return frames
        b, n_f = frames.shape[:2]
        return self.backbone.encode_image(frames.flatten(0, 1)).view(b, n_f, -1)  # (B, T, 3, S, S) -> (B, T, D)

    def caption_features(self, batch: dict) -> torch.Tensor:
        """(B, D) text features of a training batch's captions: the cached ones in frozen-feature mode."""
        cached = batch.get("text_features")
        return cached if cached is not None else self.backbone.encode_text(batch["tokens"])

    def text_features(self, tokens: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """(N, D) text features for evaluation: `features` (cached, frozen-feature mode) or the text encoder's."""
        return features.to(tokens.device) if features is not None else self.backbone.encode_text(tokens)

    def scale(self) -> torch.Tensor:
        """exp(CLIP's learnable logit scale), clamped at loss.logit_scale_max as in CLIP."""
        return self.backbone.logit_scale.clamp(max=math.log(self.logit_scale_max)).exp()


def symmetric_cross_entropy(logits: torch.Tensor) -> torch.Tensor:
    """InfoNCE both ways over (N, N) logits whose diagonal holds the matching pairs."""
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
