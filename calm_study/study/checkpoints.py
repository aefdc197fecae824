"""A trial's checkpoints in its run folder, for trials that train in their Tune trial's own process (no Ray here).

Ray Train keeps a run's checkpoints itself; a 1-worker trial under `resources.launch: auto` does not start Ray Train, so
this module does the same job with the study's `Storage` (a local folder or an object store):

- `store` copies an epoch's checkpoint folder into `<run>/checkpoint_<epoch>`; the epoch's record (`epoch.json`) goes
  last, so a checkpoint with a record is whole, wherever a crash interrupted the copy.
- `latest` finds the checkpoint to resume from: the highest epoch among the run's checkpoints that carry a record,
  Ray Train's included (a study begun with `launch: ray_train` resumes the same way), whether or not its epoch
  reached the metric log (`repair_metric_log` then logs it again).
- `prune` keeps what Ray Train's `CheckpointConfig(num_to_keep=1)` keeps: the latest, and the best by the in-domain
  validation metric when the trial has one (ray_runner.checkpoint_config).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import posixpath
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from calm_study.names import CHECKPOINT_PREFIX, EPOCH_RECORD_FILE
from calm_study.study.storage import Storage

STAGING_PREFIX = ".staging-"  # a local checkpoint being copied, renamed to checkpoint_<epoch> when whole


@dataclass(frozen=True)
class StoredCheckpoint:
    path: str  # inside the storage's filesystem (what the metric log's `checkpoint` holds)
    record: dict  # the epoch's metrics, as stored beside the weights


def _join(storage: Storage, *parts: str) -> str:
    return posixpath.join(*parts) if storage.is_uri else os.path.join(*parts)


def store(storage: Storage, run_dir: str, folder: Path, record: dict) -> str:
    """Copy a checkpoint folder into the run folder as checkpoint_<epoch>, its record last; returns its path."""
    target = _join(storage, run_dir, f"{CHECKPOINT_PREFIX}{int(record['epoch']):06d}")
    files = [f for f in sorted(folder.rglob("*")) if f.is_file() and f.name != EPOCH_RECORD_FILE]
    if storage.can_move:  # a local folder (a path, or file://)
        # A fresh hidden folder renamed into place: a reader never sees a half-written checkpoint under its name.
        storage.makedirs(run_dir)
        staging = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=run_dir)
        for f in files:
            dest = Path(staging, f.relative_to(folder))
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dest)
        Path(staging, EPOCH_RECORD_FILE).write_text(json.dumps(record), encoding="utf-8")
        if os.path.isdir(target):  # the same epoch trained again after a crash: the newer one wins
            shutil.rmtree(target)
        os.replace(staging, target)
        return target
    for f in files:  # object stores: one put per file (atomic each); the record's put marks the checkpoint whole
        with f.open("rb") as src, storage.fs.open_output_stream(_join(storage, target, *f.relative_to(folder).parts)) \
                as dst:
            shutil.copyfileobj(src, dst, length=8 << 20)
    storage.write_text(_join(storage, target, EPOCH_RECORD_FILE), json.dumps(record))
    return target


def stored(storage: Storage, run_dir: str) -> list[StoredCheckpoint]:
    """The run's whole checkpoints (those carrying their record), oldest epoch first."""
    found = []
    for name in storage.list_names(run_dir):
        if not name.startswith(CHECKPOINT_PREFIX):
            continue
        path = _join(storage, run_dir, name)
        text = storage.read_text(_join(storage, path, EPOCH_RECORD_FILE))
        if text is None:
            continue  # still being written when a crash came, or older than checkpoints with records
        try:
            found.append(StoredCheckpoint(path, json.loads(text)))
        except json.JSONDecodeError:
            continue
    return sorted(found, key=lambda c: (int(c.record.get("epoch", 0)), c.record.get("logged_at", 0.0)))


def latest(storage: Storage, run_dir: str) -> StoredCheckpoint | None:
    """The checkpoint a restarted trial resumes from (None: start from scratch)."""
    found = stored(storage, run_dir)
    return found[-1] if found else None


def prune(storage: Storage, run_dir: str, score: str | None, mode: str = "max") -> None:
    """Delete every checkpoint but the latest and, when `score` names a metric, the best by it."""
    found = stored(storage, run_dir)
    keep = {found[-1].path} if found else set()
    scored = [c for c in found if isinstance(c.record.get(score), (int, float)) and math.isfinite(c.record[score])]
    if score and scored:
        best = (max if mode == "max" else min)(scored, key=lambda c: c.record[score])
        keep.add(best.path)
    for c in found:
        if c.path not in keep:
            if storage.can_move:
                shutil.rmtree(c.path, ignore_errors=True)
            else:
                storage.fs.delete_dir(c.path)
    if storage.can_move:  # copies a crash interrupted
        for name in storage.list_names(run_dir):
            if name.startswith(STAGING_PREFIX):
                shutil.rmtree(os.path.join(run_dir, name), ignore_errors=True)


@contextlib.contextmanager
def local_folder(storage: Storage, checkpoint: StoredCheckpoint | None) -> Iterator[Path | None]:
    """The checkpoint as a local folder (downloaded from an object store into a temporary folder), or None."""
    if checkpoint is None:
        yield None
    elif storage.can_move:  # a local folder
        yield Path(checkpoint.path)
    else:
        with tempfile.TemporaryDirectory(prefix="calm-ckpt-") as tmp:
            pafs.copy_files(checkpoint.path, tmp, source_filesystem=storage.fs,
                            destination_filesystem=pafs.LocalFileSystem())
            yield Path(tmp)
