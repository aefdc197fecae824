"""What every CLIP-based family shares: the backbone, the optional CALM head, the logit scale, parameter groups.

Families (clip4clip, xpool, tmass) subclass this one class for the plumbing only; what makes a family (its outputs,
batch logits, banks and score) is written in the family's own module. Frozen-feature mode (training/frozen.py) sees
the CLIP encoders through `encoders()` only, so nothing outside models/ reaches into the backbone.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from calm_study.models.backbone import CLIPBackbone
from calm_study.models.calm.head import CALMHead
from calm_study.names import FRAME_FEATURES, LR_GROUPS

BACKBONE = "backbone"  # the families' attribute holding CLIP, so the first part of its state-dict keys
# The one backbone tensor that trains under model.frozen (a retrieval temperature, not a feature), as a key of a
# family's state dict: checkpoints keep it beside the heads, and the encoders' fingerprint leaves it out.
FROZEN_KEPT = f"{BACKBONE}.clip.logit_scale"


class CLIPEncoders:
    """A family's CLIP encoders as frozen-feature mode needs them: what computes a cached feature (tokenize,
    encode_text, encode_frames, embed_dim, the pixel format), and `module`, whose weights less `trained` tell two
    such encoders apart (fingerprinted; broadcast from rank 0; in eval mode while extracting)."""

    def __init__(self, backbone: CLIPBackbone):
        self.module = backbone
        self.trained = (FROZEN_KEPT.removeprefix(f"{BACKBONE}."),)  # keys of module's state dict; change no feature
        self.image_size, self.normalisation, self.embed_dim = (backbone.image_size, backbone.normalisation,
                                                               backbone.embed_dim)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.module.tokenize(texts)  # (N, L)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.module.encode_text(tokens)  # (N, L) -> (N, D)

    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, S, S) pixels -> (B, T, D) through the image encoder, frame by frame."""
        b, n_f = frames.shape[:2]
        return self.module.encode_image(frames.flatten(0, 1)).view(b, n_f, -1)


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

    def encoders(self) -> CLIPEncoders:
        """The CLIP encoders, for frozen-feature mode (training/frozen.py) and for syncing them across workers."""
        return CLIPEncoders(self.backbone)

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
        clip_group, new_group = LR_GROUPS
        groups = {clip_group: clip, new_group: [p for p in self.parameters() if id(p) not in ids]}
        return {name: [p for p in ps if p.requires_grad] for name, ps in groups.items()}

    def freeze_encoders(self) -> None:
        """model.frozen: CLIP's image and text encoders stop learning (their features come from the feature cache);
        the logit scale, a retrieval temperature rather than a feature, keeps the state the family gave it."""
        for name, p in self.backbone.named_parameters(prefix=BACKBONE):
            if name != FROZEN_KEPT:
                p.requires_grad_(False)

    def frame_features(self, frames: torch.Tensor | None, features: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, D) frame features: `features` (cached, frozen-feature mode) as they are, else the image encoder's of
        the pixels `frames` (B, T, 3, S, S)."""
        return features if features is not None else self.encoders().encode_frames(frames)

    def batch_frame_features(self, batch: dict) -> torch.Tensor:
        """(B, T, D) frame features of a training batch: its cached FRAME_FEATURES, or its "frames" encoded."""
        return self.frame_features(batch.get("frames"), batch.get(FRAME_FEATURES))

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
