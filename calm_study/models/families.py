"""Model families: the contract every family keeps, and the registry `model.family` names.

A family owns its outputs, its extra loss terms (a CALM head's, for instance), its named parameter groups, and how it
scores a (text, video) pair. Evaluation never assumes a dot product: it builds a text bank and a video bank once and
asks `score` for every (text, video) pair in chunks, so a family whose video feature depends on the query text can
score each pair with that pair's own text.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from calm_study.config import TrialConfig
from calm_study.models import captioner, clip4clip, tmass, xpool
from calm_study.models.registry import Bank, Family


class VideoTextModel(Protocol):
    image_size: int  # input frames are S x S
    normalisation: tuple[tuple[float, ...], tuple[float, ...]]  # pixel (mean, std) the backbone expects

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """(N,) strings -> (N, L) token ids."""

    def __call__(self, batch: dict) -> dict:
        """A training batch as its task's `inputs` made it: {"frames" (B, T, 3, S, S), "mask" (B, T), "tokens" (B, L)}
        -> named outputs. Frozen-feature mode: names.FRAME_FEATURES (B, T, D) instead of "frames", and the cached
        "text_features" (B, D) with the tokens."""

    def encoders(self) -> object:
        """The CLIP encoders (models/clip_family.CLIPEncoders), all that frozen-feature mode and the workers' sync see
        of the backbone: tokenize, encode_text, encode_frames, embed_dim, the pixel format, the weights."""

    def extra_terms(self, out: dict) -> dict[str, torch.Tensor]:
        """Loss terms the family adds to the task's (unweighted; {} when none)."""

    def term_weights(self) -> dict[str, float]:
        """The weight of each extra term."""

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Named groups, each with its own learning rate: "clip" (pretrained encoders) and "new" (added modules)."""

    def freeze_encoders(self) -> None:
        """model.frozen: the pretrained encoders stop learning (their features are read from the feature cache)."""

    def batch_logits(self, out: dict) -> torch.Tensor:
        """(N_text, N_video) scaled scores of every pair of the global training batch; pair i is (text i, video i)."""

    def text_bank(self, tokens: torch.Tensor, features: torch.Tensor | None = None) -> Bank:
        """What evaluation keeps per text: a tensor, or a dict of tensors, with one row per text. `features` (N, D):
        the texts' cached CLIP features (frozen-feature mode), used instead of running the text encoder."""

    def video_bank(self, frames: torch.Tensor | None, mask: torch.Tensor | None,
                   features: torch.Tensor | None = None) -> Bank:
        """What evaluation keeps per video: a tensor, or a dict of tensors, with one row per video, from pixels `frames`
        (N, T, 3, S, S), or from cached CLIP frame `features` (N, T, D) in frozen-feature mode."""

    def score(self, text_bank: Bank, video_bank: Bank, pool_with: Bank | None = None) -> torch.Tensor:
        """(N_text, N_video) scores; pair (i, j) may use only text i and video j. `pool_with` (text-conditioned
        families, the labelled tmass_compat protocol only): one text bank row per video to pool that video with."""


# Every family, by model.family. An entry (models/registry.py) carries its builder, task, knobs, checks and traits;
# each is defined at the end of its own module. The captioner keeps the captioning contract (models/captioner.py).
FAMILIES: dict[str, Family] = {f.name: f for f in (clip4clip.FAMILY, xpool.FAMILY, tmass.FAMILY, captioner.FAMILY)}


def register_family(family: Family) -> None:
    """Add a family from outside the package (a user's module, a test): validation, the contract test, bench and the
    report then know it like the shipped ones."""
    if family.name in FAMILIES:
        raise ValueError(f"model.family {family.name!r} is registered already")
    FAMILIES[family.name] = family


def list_families() -> list[str]:
    return sorted(FAMILIES)


def family_of(cfg: TrialConfig) -> Family:
    if cfg.model.family not in FAMILIES:
        raise ValueError(f"model.family {cfg.model.family!r} is unknown; valid: {', '.join(list_families())}")
    return FAMILIES[cfg.model.family]


def build_model(cfg: TrialConfig) -> VideoTextModel:
    """The model of a trial config: its family, with a CALM head when the config asks for anchors, its CLIP encoders
    frozen under model.frozen."""
    model = family_of(cfg).build(cfg)
    if cfg.model.frozen:
        model.freeze_encoders()
    return model
