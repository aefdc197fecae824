"""Frozen-feature mode (model.frozen): the CLIP encoders stay fixed, so their outputs are computed once per split
(data/feature_cache.py) and every trial trains only the modules on top of them, on cached arrays.

`split_features` is what fit calls for each split it reads; the datasets then serve (T, D) frame features instead of
pixels and a (D,) feature per caption, and the families take both as they are (models/clip_family.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from calm_study.config import TrialConfig
from calm_study.data.dataset import EvalVideos, collate
from calm_study.data.feature_cache import FeatureCache, SplitFeatures, weights_fingerprint
from calm_study.data.frame_cache import FrameCache
from calm_study.data.records import VideoRecord
from calm_study.models.clip_family import CLIPFamily

PROGRESS_EVERY_S = 5.0
TEXT_BATCH = 256  # captions per text-encoder call while extracting


def feature_cache_root(cfg: TrialConfig) -> Path:
    """data.feature_cache, or <data.cache_dir>/features."""
    d = cfg.data
    return Path(d.feature_cache or str(Path(d.cache_dir) / "features")).expanduser()


class FrozenFeatures:
    """The cached features of the splits a trial reads, computed by the model's own (frozen) backbone on `device`."""

    def __init__(self, cfg: TrialConfig, model: CLIPFamily, frame_cache: FrameCache | None, device: torch.device,
                 log: Callable[[str], None]):
        self.cfg, self.model, self.frame_cache, self.device, self.log = cfg, model, frame_cache, device, log
        backbone = model.backbone
        # The logit scale lives in the backbone but trains in frozen mode too; it changes no feature.
        self.weights = weights_fingerprint(backbone, skip=("clip.logit_scale",))
        self.cache = FeatureCache(feature_cache_root(cfg), self.weights, cfg.data.num_frames, backbone.image_size,
                                  backbone.normalisation, cfg.data.decoder)

    def __call__(self, records: Sequence[VideoRecord], label: str) -> SplitFeatures:
        tic = time.perf_counter()
        backbone = self.model.backbone
        was_training = backbone.training
        backbone.eval()  # features as evaluation computes them (no dropout, whatever the architecture)
        try:
            features = self.cache.get(records, lambda rs: self._videos(rs, label), self._texts, self.log, label)
        finally:
            backbone.train(was_training)
        took = time.perf_counter() - tic
        self.log(f"features of {label}: {features.frames.shape[0]} videos, {features.texts.shape[0]} captions "
                 f"({took:.1f}s)")
        return features

    @torch.no_grad()
    def _videos(self, records: Sequence[VideoRecord], label: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, T, D) frame features and (N, T) masks, in fp32."""
        d, backbone = self.cfg.data, self.model.backbone
        items = EvalVideos(records, d.num_frames, backbone.image_size, backbone.normalisation, decoder=d.decoder,
                           frame_cache=self.frame_cache)
        loader = DataLoader(items, batch_size=self.cfg.train.eval_batch_size, shuffle=False, collate_fn=collate,
                            num_workers=d.loader_workers, generator=torch.Generator())
        # (A private generator: iterating a DataLoader draws a seed from its generator, and drawing from the global
        # one here would make a trial that extracts train differently from one that finds the cache warm.)
        frames, masks = [], []
        start = last = time.perf_counter()
        self.log(f"features of {label}: extracting {len(items)} videos x {d.num_frames} frames (once; cached in "
                 f"{self.cache.folder})")
        for batch in loader:
            frames.append(self.model.frame_features(batch["frames"].to(self.device)).float().cpu())  # (B, T, D)
            masks.append(batch["mask"].bool())
            now = time.perf_counter()
            if now - last >= PROGRESS_EVERY_S:
                last, done = now, sum(len(m) for m in masks)
                self.log(f"features of {label}: {done}/{len(items)} videos, {done / (now - start):.1f} videos/s")
        return torch.cat(frames), torch.cat(masks)

    @torch.no_grad()
    def _texts(self, captions: list[str]) -> torch.Tensor:
        backbone = self.model.backbone
        rows = [backbone.encode_text(backbone.tokenize(captions[i:i + TEXT_BATCH]).to(self.device)).float().cpu()
                for i in range(0, len(captions), TEXT_BATCH)]
        return torch.cat(rows) if rows else torch.zeros(0, backbone.embed_dim)  # (M, D)
