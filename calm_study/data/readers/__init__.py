"""The dataset registry: the real benchmark layouts (MSR-VTT, DiDeMo, LSMDC, MSVD) and the generated synthetic
dataset, each a ``Reader`` entry: annotation files -> VideoRecords, plus what is special about the dataset as data
(its splits, its domains, whether it is generated rather than read from a root folder).

Readers parse annotations only and never open a video, so a split can be listed (and its counts checked) before any
video is downloaded; ``data check`` reports missing or unreadable videos separately. LSMDC and MSVD stat/walk the
video folder only to find a file's extension or sub-folder; without that folder they keep the expected default path.

``videos_dir`` is joined onto ``root`` (default "videos"); an absolute ``videos_dir`` replaces it entirely, which is
how a video folder living outside the annotation folder is used.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from calm_study.configio import did_you_mean
from calm_study.data import synthetic
from calm_study.data.readers import didemo, lsmdc, msrvtt, msvd
from calm_study.data.readers.safe_pickle import UnsafePickleError, load_restricted
from calm_study.data.records import VideoRecord

if TYPE_CHECKING:
    from calm_study.config import DataConfig


@dataclass(frozen=True)
class Reader:
    """One registered dataset: how a split's records are read, and what is special about the dataset as data.

    * ``read(root, split, videos_dir=None)`` -> records in a stable order; a dataset with ``domains`` is read one
      domain at a time, ``read(root, split, videos_dir, domain=...)``.
    * ``splits``: the valid ``split`` values (``data.train.split``, ``data.eval[i].split``), in display order.
    * ``domains``: the valid ``domain`` values; empty for a dataset without domains, whose DatasetRef.domain is
      ignored (not read, not part of "same domain" in the results).
    * ``generate(data_config) -> folder``: for a dataset made by calm_study rather than downloaded: makes it (once,
      under data.cache_dir, from its own data.<name> settings) and returns the folder ``read`` is given as root. A
      generated dataset takes no root (data.roots / $CALM_STUDY_DATA) and its videos are not re-checked before a
      study starts (calm_study wrote and verified them).
    """

    name: str
    read: Callable[..., list[VideoRecord]]
    splits: tuple[str, ...]
    domains: tuple[str, ...] = ()
    generate: Callable[[DataConfig], Path] | None = None

    @property
    def generated(self) -> bool:
        """Made by calm_study under data.cache_dir (no root to set, nothing to download)."""
        return self.generate is not None


# Registry order is display order ("valid: synthetic, didemo, lsmdc, msrvtt, msvd" in config errors): the generated
# demo dataset first, then the real ones alphabetically.
READERS: dict[str, Reader] = {r.name: r for r in (
    Reader("synthetic", synthetic.read, synthetic.SPLITS, domains=synthetic.DOMAINS, generate=synthetic.generate),
    Reader("didemo", didemo.read, didemo.SPLITS),
    Reader("lsmdc", lsmdc.read, lsmdc.SPLITS),
    Reader("msrvtt", msrvtt.read, msrvtt.SPLITS),
    Reader("msvd", msvd.read, msvd.SPLITS),
)}
SPLITS: dict[str, tuple[str, ...]] = {name: r.splits for name, r in READERS.items()}


def list_datasets() -> list[str]:
    """Names of the datasets read from a root folder (downloaded, not generated), sorted: what `data check NAME
    --root FOLDER` takes. Every registered name, generated ones included, is ``list(READERS)``."""
    return sorted(name for name, r in READERS.items() if not r.generated)


def read_dataset(name: str, root: str | Path, split: str, videos_dir: str | None = None,
                 domain: str | None = None) -> list[VideoRecord]:
    """The records of one split of a dataset, read from its annotation files under ``root`` (for a generated
    dataset, the folder its ``generate`` returned). ``domain`` is needed by a dataset with domains and ignored by the
    others.

    Raises ValueError for an unknown dataset, split or domain (listing the valid ones), FileNotFoundError for a
    missing root or annotation file, and ValueError naming file and line for malformed or empty annotations.
    """
    if name not in READERS:
        raise ValueError(f"unknown dataset {name!r}{did_you_mean(name.lower(), READERS)}. "
                         f"Valid datasets: {', '.join(READERS)}.")
    entry = READERS[name]
    if split not in entry.splits:
        raise ValueError(f"unknown split {split!r} for dataset {name!r}{did_you_mean(split.lower(), entry.splits)}. "
                         f"Valid splits: {', '.join(entry.splits)}.")
    if entry.domains and domain not in entry.domains:
        raise ValueError(f"unknown domain {domain!r} for dataset {name!r}"
                         f"{did_you_mean(str(domain).lower(), entry.domains)}. "
                         f"Valid domains: {', '.join(entry.domains)}.")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{name} dataset root not found: {root} (expected a folder holding the "
                                f"{name} annotation files).")
    if entry.domains:
        return entry.read(root, split, videos_dir, domain=domain)
    return entry.read(root, split, videos_dir)


__all__ = [
    "READERS",
    "SPLITS",
    "Reader",
    "UnsafePickleError",
    "list_datasets",
    "load_restricted",
    "read_dataset",
]
