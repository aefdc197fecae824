"""Readers for the real benchmark layouts (MSR-VTT, DiDeMo, LSMDC, MSVD): annotation files -> VideoRecords.

Readers parse annotations only and never open a video, so a split can be listed (and its counts checked) before any
video is downloaded; ``data check`` reports missing or unreadable videos separately. LSMDC and MSVD stat/walk the
video folder only to find a file's extension or sub-folder; without that folder they keep the expected default path.

``videos_dir`` is joined onto ``root`` (default "videos"); an absolute ``videos_dir`` replaces it entirely, which is
how a video folder living outside the annotation folder is used.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from calm_study.configio import did_you_mean
from calm_study.data.readers import didemo, lsmdc, msrvtt, msvd
from calm_study.data.readers.safe_pickle import UnsafePickleError, load_restricted
from calm_study.data.records import VideoRecord

Reader = Callable[..., list[VideoRecord]]  # (root, split, videos_dir=None) -> records

READERS: dict[str, Reader] = {
    "didemo": didemo.read,
    "lsmdc": lsmdc.read,
    "msrvtt": msrvtt.read,
    "msvd": msvd.read,
}
SPLITS: dict[str, tuple[str, ...]] = {
    "didemo": didemo.SPLITS,
    "lsmdc": lsmdc.SPLITS,
    "msrvtt": msrvtt.SPLITS,
    "msvd": msvd.SPLITS,
}


def list_datasets() -> list[str]:
    """Names accepted by ``read_dataset``, sorted."""
    return sorted(READERS)


def read_dataset(name: str, root: str | Path, split: str, videos_dir: str | None = None) -> list[VideoRecord]:
    """The records of one split of a real dataset, read from its annotation files under ``root``.

    Raises ValueError for an unknown dataset or split (listing the valid ones), FileNotFoundError for a missing root
    or annotation file, and ValueError naming file and line for malformed or empty annotations.
    """
    if name not in READERS:
        raise ValueError(f"unknown dataset {name!r}{did_you_mean(name.lower(), list_datasets())}. "
                         f"Valid datasets: {', '.join(list_datasets())}.")
    if split not in SPLITS[name]:
        raise ValueError(f"unknown split {split!r} for dataset {name!r}{did_you_mean(split.lower(), SPLITS[name])}. "
                         f"Valid splits: {', '.join(SPLITS[name])}.")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{name} dataset root not found: {root} (expected a folder holding the "
                                f"{name} annotation files).")
    return READERS[name](root, split, videos_dir)


__all__ = [
    "READERS",
    "SPLITS",
    "UnsafePickleError",
    "list_datasets",
    "load_restricted",
    "read_dataset",
]
