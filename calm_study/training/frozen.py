"""Frozen-feature mode (model.frozen): the CLIP encoders stay fixed, so their outputs are computed once per split
(data/feature_cache.py) and every trial trains only the modules on top of them, on cached arrays.

`FrozenFeatures` is what fit calls for each split it reads; the datasets then serve (T, D) frame features (batch key
names.FRAME_FEATURES) instead of pixels and a (D,) feature per caption, and the families take both as they are
(models/clip_family.py). The model is seen only through its `encoders()` (the `Encoders` protocol below).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader

from calm_study.config import TrialConfig
from calm_study.data.dataset import EvalVideos, collate
from calm_study.data.feature_cache import FeatureCache, SplitFeatures, weights_fingerprint
from calm_study.data.frame_cache import FrameCache
from calm_study.data.records import VideoRecord

PROGRESS_EVERY_S = 5.0
TEXT_BATCH = 256  # captions per text-encoder call while extracting


class Encoders(Protocol):
    """The fixed encoders that compute the cached features (models/clip_family.py: CLIPEncoders)."""

    module: nn.Module  # their weights: fingerprinted (less `trained`), in eval mode while extracting
    trained: tuple[str, ...]  # keys of module's state dict that still train under model.frozen (change no feature)
    image_size: int
    normalisation: tuple[tuple[float, ...], tuple[float, ...]]
    embed_dim: int

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """(N,) strings -> (N, L) token ids."""

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """(N, L) -> (N, D)."""

    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, S, S) pixels -> (B, T, D)."""


class HasEncoders(Protocol):
    def encoders(self) -> Encoders: ...


def feature_cache_root(cfg: TrialConfig) -> Path:
    """data.feature_cache, or <data.cache_dir>/features."""
    d = cfg.data
    return Path(d.feature_cache or str(Path(d.cache_dir) / "features")).expanduser()


class FrozenFeatures:
    """The cached features of the splits a trial reads, computed by the model's own (frozen) encoders on `device`."""

    def __init__(self, cfg: TrialConfig, model: HasEncoders, frame_cache: FrameCache | None, device: torch.device,
                 log: Callable[[str], None]):
        self.cfg, self.frame_cache, self.device, self.log = cfg, frame_cache, device, log
        self.encoders = enc = model.encoders()
        # What trains in frozen mode too (the logit scale, a temperature) changes no feature: not fingerprinted.
        self.weights = weights_fingerprint(enc.module, skip=enc.trained)
        self.cache = FeatureCache(feature_cache_root(cfg), self.weights, cfg.data.num_frames, enc.image_size,
                                  enc.normalisation, cfg.data.decoder)

    def __call__(self, records: Sequence[VideoRecord], label: str) -> SplitFeatures:
        tic = time.perf_counter()
        module = self.encoders.module
        was_training = module.training
        module.eval()  # features as evaluation computes them (no dropout, whatever the architecture)
        try:
            features = self.cache.get(records, lambda rs: self._videos(rs, label), self._texts, self.log, label)
        finally:
            module.train(was_training)
        took = time.perf_counter() - tic
        self.log(f"features of {label}: {features.frames.shape[0]} videos, {features.texts.shape[0]} captions "
                 f"({took:.1f}s)")
        return features

    @torch.no_grad()
    def _videos(self, records: Sequence[VideoRecord], label: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, T, D) frame features and (N, T) masks, in fp32."""
        d, enc = self.cfg.data, self.encoders
        items = EvalVideos(records, d.num_frames, enc.image_size, enc.normalisation, decoder=d.decoder,
                           frame_cache=self.frame_cache)
        loader = DataLoader(items, batch_size=self.cfg.train.eval_batch_size, shuffle=False, collate_fn=collate,
                            num_workers=d.loader_workers, generator=torch.Generator())
        # (A private generator: iterating a DataLoader draws a seed from its generator, and drawing from the global
        # one here would make a trial that extracts train differently from one that finds the cache warm.)
        frames, masks = [], []
        start = last = time.perf_counter()
        # the folder on a line of its own (each worker line carries the trial key): within 120 columns
        self.log(f"features of {label}: extracting {len(items)} videos x {d.num_frames} frames, once, into")
        self.log(f"  {self.cache.folder}")
        for batch in loader:
            frames.append(enc.encode_frames(batch["frames"].to(self.device)).float().cpu())  # (B, T, D)
            masks.append(batch["mask"].bool())
            now = time.perf_counter()
            if now - last >= PROGRESS_EVERY_S:
                last, done = now, sum(len(m) for m in masks)
                self.log(f"features of {label}: {done}/{len(items)} videos, {done / (now - start):.1f} videos/s")
        return torch.cat(frames), torch.cat(masks)

    @torch.no_grad()
    def _texts(self, captions: list[str]) -> torch.Tensor:
        enc = self.encoders
        rows = [enc.encode_text(enc.tokenize(captions[i:i + TEXT_BATCH]).to(self.device)).float().cpu()
                for i in range(0, len(captions), TEXT_BATCH)]
        return torch.cat(rows) if rows else torch.zeros(0, enc.embed_dim)  # (M, D)
