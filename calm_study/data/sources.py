"""From a config's dataset reference to readable video records: the one place that knows which datasets exist."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from calm_study.clip_archs import image_size, looks_like_path, missing_weights
from calm_study.config import DataConfig, DatasetRef, TrialConfig
from calm_study.configio import ConfigError
from calm_study.data.readers import READERS, read_dataset
from calm_study.data.records import VideoRecord
from calm_study.names import DATA_ENV
from calm_study.progress import say

if TYPE_CHECKING:
    from calm_study.data.frame_cache import FrameCache

DataSet = tuple[DatasetRef, DataConfig, int, int]  # (reference, data config, frames T, image size S)


def dataset_root(cfg: DataConfig, dataset: str) -> str | None:
    """A dataset's root folder: data.roots.<dataset>, else $CALM_STUDY_DATA/<dataset>, else None."""
    if cfg.roots.get(dataset):
        return cfg.roots[dataset]
    base = os.environ.get(DATA_ENV)
    return str(Path(base) / dataset) if base else None


def load_records(ref: DatasetRef, cfg: DataConfig) -> list[VideoRecord]:
    """The videos (with captions) of one dataset split, as its annotation files list them. A generated dataset
    (its registry entry has ``generate``) is made on first use under data.cache_dir and read from there; any other
    is read from its root (data.roots.<dataset>, else $CALM_STUDY_DATA/<dataset>)."""
    entry = READERS.get(ref.dataset)  # an unknown name reaches read_dataset, which lists the valid ones
    if entry is not None and entry.generate is not None:
        root = entry.generate(cfg)
    else:
        root = dataset_root(cfg, ref.dataset)
        if not root:
            raise ValueError(f"data.roots.{ref.dataset} is not set (nor {DATA_ENV}); it is needed for {ref.label!r}")
        if not Path(root).expanduser().is_dir():
            where = "data.roots." + ref.dataset if cfg.roots.get(ref.dataset) else f"${DATA_ENV}/{ref.dataset}"
            raise FileNotFoundError(f"{where}: the folder {root!r} does not exist (needed for {ref.label!r}); "
                                    f"set {DATA_ENV} to the folder holding one sub-folder per dataset, or "
                                    f"--set data.roots.{ref.dataset}=/data/{ref.dataset}")
    records = read_dataset(ref.dataset, Path(root).expanduser(), ref.split, cfg.video_dirs.get(ref.dataset),
                           domain=ref.domain)
    if not records:
        raise ValueError(f"dataset {ref.label!r} ({ref.dataset}, split {ref.split}) has no videos")
    return records


def frame_cache(cfg: DataConfig, num_frames: int, image_size: int) -> FrameCache | None:
    """The study's decoded-frame cache, or None when data.frame_cache is empty."""
    if not cfg.frame_cache:
        return None
    from calm_study.data.frame_cache import FrameCache

    return FrameCache(Path(cfg.frame_cache).expanduser(), num_frames, image_size, decoder=cfg.decoder)


def load_readable_records(ref: DatasetRef, cfg: DataConfig, cache: FrameCache | None
                          ) -> tuple[list[VideoRecord], list[tuple[VideoRecord, str]]]:
    """(records that can be read, the failures) under data.on_error: `error` raises naming the files, `skip` drops
    them (the caller logs and counts them)."""
    from calm_study.data.records import apply_failure_policy

    records = load_records(ref, cfg)
    # Remembered per file (the driver's check_all_videos, or an earlier trial, opened them): every trial of a study
    # reads the same splits, and probing a few hundred videos costs each one about a second on 2 cores.
    failures = _checked(records, cfg, cache)
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
    """Before any trial starts: every split's annotations can be read (generated datasets are made now, once).
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


VIDEO_CHECKS = "video_checks.json"  # in data.cache_dir: path -> [size, mtime_ns, reason or null]


def _checked(records: list[VideoRecord], cfg: DataConfig, cache: FrameCache | None
             ) -> list[tuple[VideoRecord, str]]:
    """check_videos with a memo per file (size, modification time): a file already checked is not opened again."""
    from calm_study.data.dataset import check_videos  # torch: only where a video is opened (the driver may not)

    memo_path = Path(cfg.cache_dir).expanduser() / VIDEO_CHECKS
    try:
        memo = json.loads(memo_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        memo = {}

    def stamp(record: VideoRecord) -> list | None:
        try:
            st = record.path.stat()
        except OSError:
            return None
        return [st.st_size, st.st_mtime_ns]

    known, todo = [], []
    for record in records:
        key = f"{record.path}|{record.start}|{record.end}"
        entry, s = memo.get(key), stamp(record)
        (known if s is not None and entry is not None and entry[:2] == s else todo).append(record)
    failures = check_videos(todo, decoder=cfg.decoder, frame_cache=cache, progress=len(todo) > 200) if todo else []
    failed = {id(r): why for r, why in failures}
    for record in todo:
        s = stamp(record)
        if s is not None:
            memo[f"{record.path}|{record.start}|{record.end}"] = [*s, failed.get(id(record))]
    try:
        memo_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo_path.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps(memo), encoding="utf-8")
        os.replace(tmp, memo_path)
    except OSError:
        pass  # the memo only saves time
    earlier = [(r, memo[f"{r.path}|{r.start}|{r.end}"][2]) for r in known if memo[f"{r.path}|{r.start}|{r.end}"][2]]
    order = {id(r): i for i, r in enumerate(records)}
    return sorted(earlier + failures, key=lambda f: order[id(f[0])])


def check_all_videos(configs: list[TrialConfig], source: str) -> None:
    """Before any trial starts: open every video of every real dataset split once (remembered per file). Under
    data.on_error error, any unreadable video stops the study; under skip, more than data.max_skipped_fraction of a
    split does; a training split with fewer (video, caption) pairs than one batch does too. A generated dataset
    (synthetic) is written and verified by calm_study itself, so it is not re-opened."""
    problems = []
    pairs_of: dict[tuple, int] = {}  # (split, roots) -> (video, caption) pairs, for the batch check below
    for ref, data, num_frames, size in config_datasets(configs):
        entry = READERS.get(ref.dataset)
        if entry is not None and entry.generated:
            continue
        records = load_records(ref, data)
        failures = _checked(records, data, frame_cache(data, num_frames, size))
        pairs_of[(ref, repr(data.roots))] = sum(len(r.captions) for r in records)
        label = f"{ref.label}: {len(failures)} of {len(records)} videos cannot be read"
        shown = "; ".join(f"{r.path} ({why})" for r, why in failures[:3]) + (" ..." if len(failures) > 3 else "")
        if failures and data.on_error == "error":
            problems.append(f"{label} (data.on_error error): {shown}; fix them, or set data.on_error: skip")
        elif failures and len(failures) > data.max_skipped_fraction * len(records):
            problems.append(f"{label}, more than data.max_skipped_fraction {data.max_skipped_fraction:g} of the "
                            f"split: {shown}; fix the files, or raise data.max_skipped_fraction if that is intended")
        elif failures:
            say(f"{label}; they will be skipped (data.on_error skip) and counted in the results")
    for cfg in configs:  # enough training pairs for one batch
        ref = cfg.data.train
        pairs = pairs_of.get((replace(ref, name=""), repr(cfg.data.roots)))  # read once, in the loop above
        if pairs is not None and pairs < cfg.train.batch_size:
            problems.append(f"{ref.label}: {pairs} training (video, caption) pairs, fewer than one batch of "
                            f"train.batch_size {cfg.train.batch_size}")
    if problems:
        raise ConfigError(source, list(dict.fromkeys(problems)))


def check_weights(configs: list[TrialConfig], source: str) -> None:
    """A model.pretrained file loads as weights (a mapping of tensors), and a pretrained tag's weights are cached here
    or can be downloaded now, without building any model (`run` and `bench` ask it before any work)."""
    problems = []
    for arch, tag in dict.fromkeys((c.model.clip, c.model.pretrained) for c in configs if c.model.pretrained):
        if not looks_like_path(tag) and (why := missing_weights(arch, tag)):
            problems.append(f"model.pretrained: the weights of tag {tag!r} of model.clip {arch} are not on this "
                            f"machine and cannot be downloaded now: {why}. Run once where the internet is reachable "
                            "(the weights are cached for every later run), copy a Hugging Face cache here (HF_HOME), "
                            "give a local checkpoint file, or null for random weights")
    for path in dict.fromkeys(c.model.pretrained for c in configs if c.model.pretrained):
        if not looks_like_path(path):
            continue
        try:
            if path.endswith(".safetensors"):
                from safetensors import safe_open

                with safe_open(str(Path(path).expanduser()), framework="pt") as f:
                    ok = bool(list(f.keys()))
            else:
                import zipfile

                import torch

                if not zipfile.is_zipfile(Path(path).expanduser()):  # every torch.save file since torch 1.6
                    raise ValueError("not a PyTorch checkpoint: torch.save writes a zip archive")
                state = torch.load(Path(path).expanduser(), map_location="cpu", weights_only=True, mmap=True)
                ok = isinstance(state, dict) and bool(state)
        except Exception as e:  # noqa: BLE001 - any failure to load means "not a weights file", said below
            problems.append(f"model.pretrained: {path!r} cannot be loaded as weights ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:200] if str(e) else ''}); give an open_clip checkpoint file")
            continue
        if not ok:
            problems.append(f"model.pretrained: {path!r} holds no weights (not a mapping of tensors)")
    if problems:
        raise ConfigError(source, problems)


def absolute_paths(cfg: TrialConfig) -> TrialConfig:
    """The config with its data paths made absolute against this process's working directory, and every dataset it
    reads given its root (from $CALM_STUDY_DATA where data.roots does not say), for workers that run elsewhere (Ray
    workers share neither the driver's working directory nor its environment). Generated datasets need no root."""

    def absolute(p: str) -> str:
        return str(Path(p).expanduser().resolve()) if p else p

    d = cfg.data
    roots = dict(d.roots)
    for ref in (d.train, *d.eval):
        if not READERS[ref.dataset].generated and not roots.get(ref.dataset) and dataset_root(d, ref.dataset):
            roots[ref.dataset] = dataset_root(d, ref.dataset)
    data = replace(d, cache_dir=absolute(d.cache_dir), frame_cache=absolute(d.frame_cache),
                   feature_cache=absolute(d.feature_cache),
                   roots={k: absolute(v) for k, v in roots.items()})
    return replace(cfg, data=data)
