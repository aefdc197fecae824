"""Helpers the dataset readers share: loading an annotation JSON with a clear error, finding videos by stem."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def load_json(path: Path) -> Any:
    """The parsed JSON file; invalid JSON is a ValueError naming the file."""
    with path.open(encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err}).") from err


class StemIndex:
    """Find a video by file stem anywhere under a folder, walking it at most once and only when first asked.

    Extensions differ between releases (.avi, .mp4, .webm ...) and some releases nest videos in sub-folders, so the
    reference loaders match ``os.walk`` stems. Walking a 100k-file tree is seconds, hence lazy and cached.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._by_stem: dict[str, Path] | None = None

    def _build(self) -> dict[str, Path]:
        index: dict[str, Path] = {}
        for dirpath, dirnames, filenames in os.walk(self.folder):
            dirnames.sort()  # deterministic walk, so a stem present twice always resolves to the same file
            for name in sorted(filenames):
                index.setdefault(Path(name).stem, Path(dirpath) / name)
        return index

    def find(self, stem: str) -> Path | None:
        if self._by_stem is None:
            self._by_stem = self._build() if self.folder.is_dir() else {}
        return self._by_stem.get(stem)
