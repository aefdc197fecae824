"""`python -m calm_study data {check,cache,bench}`: look at a study's data before a long run starts."""

from __future__ import annotations

from pathlib import Path

from calm_study.bench.decoding import decode_rates
from calm_study.config import DataConfig, DatasetRef
from calm_study.configio import ConfigError
from calm_study.data.dataset import check_videos
from calm_study.data.readers import SPLITS, list_datasets
from calm_study.data.records import VideoRecord
from calm_study.data.sources import DataSet, config_datasets, frame_cache, load_records
from calm_study.progress import say
from calm_study.study.spec import expand, load_study


def study_datasets(path: str, preset: str | None, sets: list[str]) -> list[DataSet]:
    """Every distinct dataset split a study reads (training and evaluation), with what decoding it needs."""
    return config_datasets([t.config for t in expand(load_study(path, preset, sets))])


def named_datasets(name: str, root: str | None, split: str | None, num_frames: int, size: int) -> list[DataSet]:
    """The splits of one dataset given by name (`data check msrvtt --root /data/MSRVTT`)."""
    if name not in list_datasets():
        raise ConfigError(name, [f"neither a study file nor a dataset; datasets: {', '.join(list_datasets())}"])
    if not root:
        raise ConfigError(name, [f"--root is needed: the folder that holds the {name} annotation files"])
    data = DataConfig(roots={name: root})
    return [(DatasetRef(dataset=name, split=s), data, num_frames, size) for s in ([split] if split else SPLITS[name])]


def folder_datasets(folder: str, num_frames: int, size: int) -> tuple[list, int, int]:
    """The video files of a folder, for `data bench FOLDER`."""
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".mp4", ".avi", ".mkv", ".webm", ".mov"))
    if not files:
        raise ConfigError(folder, ["no video files (.mp4, .avi, .mkv, .webm, .mov) in this folder"])
    return [VideoRecord(p.stem, p, ()) for p in files], num_frames, size


def check(datasets: list[DataSet]) -> int:
    """Print what is missing or unreadable in each split; returns the number of problems."""
    problems = 0
    for ref, data, num_frames, size in datasets:
        try:
            records = load_records(ref, data)
        except (OSError, ValueError) as e:
            say(f"{ref.label}: cannot read the annotations: {e}")
            problems += 1
            continue
        failures = check_videos(records, decoder=data.decoder, frame_cache=frame_cache(data, num_frames, size),
                                progress=True)
        say(f"{ref.label}: {len(records)} videos, {sum(len(r.captions) for r in records)} captions, "
            f"{len(failures)} missing or unreadable")
        for record, reason in failures[:20]:
            say(f"  {record.path}: {reason}")
        if len(failures) > 20:
            say(f"  ... and {len(failures) - 20} more")
        problems += len(failures)
    return problems


def fill_cache(datasets: list[DataSet], workers: int) -> int:
    """Decode every video of the study into its frame cache; returns the number of failures."""
    failed = 0
    for ref, data, num_frames, size in datasets:
        cache = frame_cache(data, num_frames, size)
        if cache is None:
            raise ConfigError(ref.label, ["data.frame_cache is empty: set the cache folder, e.g. "
                                          "--set data.frame_cache=/scratch/calm_frames"])
        summary = cache.fill(load_records(ref, data), workers=workers, progress=True)
        say(f"{ref.label}: {summary['cached']} already cached, {summary['decoded']} decoded, "
            f"{len(summary['failed'])} failed")
        for video_id, path, reason in summary["failed"][:20]:
            say(f"  {video_id} ({path}): {reason}")
        failed += len(summary["failed"])
    return failed


def bench(records: list[VideoRecord], num_frames: int, size: int, decoder: str, label: str) -> dict:
    """Clips/s decoding `records` without the frame cache, filling a fresh cache, and reading it warm (the same
    figures as section (c) of `python -m calm_study bench`)."""
    return decode_rates(records, num_frames, size, decoder, label)
