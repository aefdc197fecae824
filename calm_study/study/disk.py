"""How many bytes a study holds, and where (`python -m calm_study status`; docs/running.md, "Where the bytes go").

A study's storage holds, per trial, its kept checkpoints (the latest, plus the best on a validation set when the
trials have one: ray_runner.checkpoint_config) and its per-epoch metric log; Tune's experiment state; the manifest.
Its results folder holds the Parquet and the report. The frame and feature caches are shared by every study that
points at them, so they are counted apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.fs as pafs

from calm_study.config import TrialConfig
from calm_study.names import METRIC_LOG, TUNE_FOLDER
from calm_study.study.spec import Study
from calm_study.study.storage import Storage


@dataclass
class Usage:
    """Bytes by kind under one folder."""

    where: str
    total: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    checkpoints: int = 0  # checkpoint folders

    def add(self, kind: str, size: int) -> None:
        self.total += size
        self.kinds[kind] = self.kinds.get(kind, 0) + size


def human(n: float) -> str:
    """Bytes for people: 0 B, 912 kB, 35.2 MB, 1.4 GB (powers of 1000, as `du --si`)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit in ("B", "kB") else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _files(storage: Storage, root: str) -> list[pafs.FileInfo]:
    selector = pafs.FileSelector(root, recursive=True, allow_not_found=True)
    return [info for info in storage.fs.get_file_info(selector) if info.type == pafs.FileType.File]


def storage_usage(study: Study) -> Usage:
    """The study's storage folder, by kind: checkpoints, metric logs, Tune's experiment state, the rest."""
    storage = Storage(study.storage)
    root = storage.path(study.name)
    usage = Usage(storage.uri(study.name))
    folders = set()
    for info in _files(storage, root):
        parts = info.path[len(root):].strip("/").split("/")
        checkpoint = next((p for p in parts if p.startswith("checkpoint_")), None)
        if checkpoint:
            folders.add("/".join(parts[: parts.index(checkpoint) + 1]))
            usage.add("checkpoints", info.size or 0)
        elif parts[-1] == METRIC_LOG:
            usage.add("metric logs", info.size or 0)
        elif parts[0] == TUNE_FOLDER:
            usage.add("Tune state", info.size or 0)
        else:
            usage.add("other", info.size or 0)
    usage.checkpoints = len(folders)
    return usage


def folder_size(path: str | Path) -> int:
    """Bytes of the files under a local folder or object-store URI (0 when it does not exist)."""
    storage = Storage(str(path))
    return sum(info.size or 0 for info in _files(storage, storage.root))


def usage_lines(study: Study, configs: list[TrialConfig]) -> list[str]:
    """What `status` prints about disk use: the study's storage by kind, its results, and the caches its trials
    read (shared with every other study that points at them)."""
    from calm_study.training.frozen import feature_cache_root

    s = storage_usage(study)
    kinds = ", ".join(f"{kind} {human(n)}" for kind, n in sorted(s.kinds.items(), key=lambda kv: -kv[1]))
    detail = f" ({kinds}; {s.checkpoints} checkpoint folder(s) for {len(configs)} trial(s))" if s.total else ""
    lines = [f"storage: {human(s.total)} in {s.where}{detail}"]
    results = Path(study.results_dir) / study.name
    if "://" not in study.results_dir and results.exists():
        lines.append(f"results: {human(folder_size(results))} in {results}")
    caches = {("frame cache", str(Path(c.data.frame_cache).expanduser())) for c in configs if c.data.frame_cache}
    caches |= {("feature cache", str(feature_cache_root(c))) for c in configs if c.model.frozen}
    for name, folder in sorted(caches):
        if Path(folder).exists():
            lines.append(f"{name} (shared by every study that uses it): {human(folder_size(folder))} in {folder}")
    return lines
