"""From a config's dataset reference to readable video records: the one place that knows which datasets exist."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from calm_study.config import DataConfig, DatasetRef, TrialConfig
from calm_study.configio import ConfigError
from calm_study.data.dataset import apply_failure_policy, check_videos
from calm_study.data.frame_cache import FrameCache
from calm_study.data.readers import read_dataset
from calm_study.data.records import VideoRecord
from calm_study.data.synthetic import ensure_synthetic_dataset, load_synthetic_split
from calm_study.models.backbone import image_size
from calm_study.names import DATA_ENV

DataSet = tuple[DatasetRef, DataConfig, int, int]  # (reference, data config, frames T, image size S)


def dataset_root(cfg: DataConfig, dataset: str) -> str | None:
    """A dataset's root folder: data.roots.<dataset>, else $CALM_STUDY_DATA/<dataset>, else None."""
    if cfg.roots.get(dataset):
        return cfg.roots[dataset]
    base = os.environ.get(DATA_ENV)
    return str(Path(base) / dataset) if base else None


def synthetic_dir(cfg: DataConfig) -> Path:
    """Generate the synthetic dataset on first use (deterministic, atomic) and return its folder."""
    s = cfg.synthetic
    return ensure_synthetic_dataset(Path(cfg.cache_dir).expanduser(), num_train_videos=s.num_train_videos,
                                    num_test_videos=s.num_test_videos, captions_per_video=s.captions_per_video,
                                    frames_per_video=s.frames_per_video, seed=s.seed)


def load_records(ref: DatasetRef, cfg: DataConfig) -> list[VideoRecord]:
    """The videos (with captions) of one dataset split, as its annotation files list them."""
    if ref.dataset == "synthetic":
        records = load_synthetic_split(synthetic_dir(cfg), ref.domain, ref.split)
    else:
        root = dataset_root(cfg, ref.dataset)
        if not root:
            raise ValueError(f"data.roots.{ref.dataset} is not set (nor {DATA_ENV}); it is needed for {ref.label!r}")
        if not Path(root).expanduser().is_dir():
            where = "data.roots." + ref.dataset if cfg.roots.get(ref.dataset) else f"${DATA_ENV}/{ref.dataset}"
            raise FileNotFoundError(f"{where}: the folder {root!r} does not exist (needed for {ref.label!r}); "
                                    f"set {DATA_ENV} to the folder holding one sub-folder per dataset, or "
                                    f"--set data.roots.{ref.dataset}=/data/{ref.dataset}")
        records = read_dataset(ref.dataset, Path(root).expanduser(), ref.split, cfg.video_dirs.get(ref.dataset))
    if not records:
        raise ValueError(f"dataset {ref.label!r} ({ref.dataset}, split {ref.split}) has no videos")
    return records


def frame_cache(cfg: DataConfig, num_frames: int, image_size: int) -> FrameCache | None:
    """The study's decoded-frame cache, or None when data.frame_cache is empty."""
    if not cfg.frame_cache:
        return None
    return FrameCache(Path(cfg.frame_cache).expanduser(), num_frames, image_size, decoder=cfg.decoder)


def load_readable_records(ref: DatasetRef, cfg: DataConfig, cache: FrameCache | None
                          ) -> tuple[list[VideoRecord], list[tuple[VideoRecord, str]]]:
    """(records that can be read, the failures) under data.on_error: `error` raises naming the files, `skip` drops
    them (the caller logs and counts them)."""
    records = load_records(ref, cfg)
    failures = check_videos(records, decoder=cfg.decoder, frame_cache=cache)
    return apply_failure_policy(records, failures, cfg.on_error, ref.label), failures


def config_datasets(configs: list[TrialConfig]) -> list[DataSet]:
    """Every distinct dataset split the configs read (training and evaluation), with what decoding it needs."""
    seen: dict[tuple, DataSet] = {}
    for cfg in configs:
        size = image_size(cfg.model.clip)
        for ref in (cfg.data.train, *cfg.data.eval):
            plain = replace(ref, name="")
            key = (plain, repr(cfg.data.roots), cfg.data.cache_dir, cfg.data.num_frames, size)
            seen.setdefault(key, (plain, cfg.data, cfg.data.num_frames, size))
    return list(seen.values())


def preflight(configs: list[TrialConfig], source: str) -> None:
    """Before any trial starts: every split's annotations can be read (synthetic data is generated now, once).
    Raises ConfigError listing every problem, so a bad root or split file costs seconds, not a cluster job."""
    problems = []
    for ref, data, _, _ in config_datasets(configs):
        try:
            load_records(ref, data)
        except (OSError, ValueError) as e:
            problems.append(f"{ref.label}: {e}")
    if problems:
        hint = (f"nothing was started; `python -m calm_study data check` with the same arguments lists what is "
                f"missing (datasets live in ${DATA_ENV}/<dataset> or data.roots.<dataset>)")
        raise ConfigError(source, problems + [hint])
