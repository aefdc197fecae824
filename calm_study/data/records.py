"""VideoRecord: one video file (or a time window of it) and all of its captions; what readers return and every cache
and dataset consumes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class VideoRecord:
    """One video and all of its captions."""

    video_id: str
    path: Path
    captions: tuple[str, ...]
    start: float | None = None  # seconds: the clip's time window inside the file (None = from the beginning)
    end: float | None = None  # seconds (None = to the end)

    def __post_init__(self) -> None:
        # Loaders often build records from JSON/CSV (str paths, caption lists); normalise so that records stay
        # hashable and compare equal however they were built.
        object.__setattr__(self, "path", Path(self.path))
        object.__setattr__(self, "captions", tuple(self.captions))
