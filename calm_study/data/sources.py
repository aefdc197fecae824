"""From a config's dataset reference to video records: the one place that knows which datasets exist."""

from __future__ import annotations

from pathlib import Path

from calm_study.config import DataConfig, DatasetRef
from calm_study.data.dataset import VideoRecord
from calm_study.data.synthetic import ensure_synthetic_dataset, load_synthetic_split


def synthetic_dir(cfg: DataConfig) -> Path:
    """Generate the synthetic dataset on first use (deterministic, atomic) and return its folder."""
    s = cfg.synthetic
    return ensure_synthetic_dataset(Path(cfg.cache_dir).expanduser(), num_train_videos=s.num_train_videos,
                                    num_test_videos=s.num_test_videos, captions_per_video=s.captions_per_video,
                                    frames_per_video=s.frames_per_video, seed=s.seed)


def load_records(ref: DatasetRef, cfg: DataConfig) -> list[VideoRecord]:
    """The videos (with captions) of one dataset split."""
    if ref.dataset == "synthetic":
        records = load_synthetic_split(synthetic_dir(cfg), ref.domain, ref.split)
    else:
        raise ValueError(f"unknown dataset {ref.dataset!r}; valid: synthetic")
    if not records:
        raise ValueError(f"dataset {ref.label!r} ({ref.dataset}, {ref.domain}, {ref.split}) has no videos")
    return records
