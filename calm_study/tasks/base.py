"""The Task contract: what differs between tasks, and nothing else (the training loop is the same for all).

A task owns its dataset items, how a collated batch of them becomes model input, its loss terms, its evaluation and
its metric names. A model family owns its outputs, its extra terms (CALM's) and its scores; the loop combines the two.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from torch.utils.data import Dataset

from calm_study.data.records import VideoRecord
from calm_study.models.families import VideoTextModel
from calm_study.names import FRAME_FEATURES

Terms = dict[str, torch.Tensor]


class Task(Protocol):
    name: str
    metric_names: tuple[str, ...]  # every key `evaluate` returns, in display order (names.TASK_METRICS[name])

    def train_items(self, records: Sequence[VideoRecord], **video: object) -> Dataset:
        """Training items (collated by data.dataset.collate); `video`: frames, size, normalisation, decoder, cache."""

    def eval_items(self, records: Sequence[VideoRecord], **video: object) -> Dataset:
        """One evaluation set's items."""

    def inputs(self, model: VideoTextModel, batch: dict, device: torch.device) -> dict:
        """A collated training batch (data.dataset.collate) as the model's input, on `device`."""

    def loss_terms(self, model: VideoTextModel, out: dict) -> Terms:
        """The task's own loss terms (unweighted) from the model's outputs for a training batch."""

    def term_weights(self) -> dict[str, float]:
        """The weight of each of the task's terms."""

    def evaluate(self, model: VideoTextModel, items: Dataset, device: torch.device, batch_size: int
                 ) -> dict[str, float]:
        """Metrics of the model on one evaluation set: {name: value} for every name in metric_names."""


def video_inputs(batch: dict, device: torch.device) -> dict:
    """A collated batch's video part on `device`: "mask" (B, T) and either "frames" (B, T, 3, S, S) pixels or, in
    frozen-feature mode, FRAME_FEATURES (B, T, D) cached CLIP features."""
    return {k: batch[k].to(device) for k in ("frames", FRAME_FEATURES, "mask") if k in batch}


def caption_pair_inputs(model: VideoTextModel, batch: dict, device: torch.device) -> dict:
    """A collated (video, caption) batch as model input: the video part, "tokens" (B, L) of the captions and, in
    frozen-feature mode, "text_features" (B, D), the captions' cached CLIP features."""
    x = {**video_inputs(batch, device), "tokens": model.tokenize(batch["captions"]).to(device)}
    if "text_features" in batch:
        x["text_features"] = batch["text_features"].to(device)
    return x


def weighted_total(terms: Terms, weights: dict[str, float]) -> torch.Tensor:
    """Σ weight · term over the named terms, in their order; a term without a weight is a bug, not a zero."""
    missing = [k for k in terms if k not in weights]
    if missing:
        raise KeyError(f"loss terms without a weight: {missing}")
    return sum(weights[k] * v for k, v in terms.items())
