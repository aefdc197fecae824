"""VideoRecord: one video file (or a time window of it) and all of its captions; what readers return and every cache
and dataset consumes. And what is done about records whose video cannot be read (data.on_error), with the names of
data.decoder: no torch and no decoder here, so that validation and a study's driver read them without importing
either (the decoding itself is in video.py, the probing in dataset.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

DECODERS = ("decord", "pyav")  # data.decoder (video.py)
FAILURE_POLICIES = ("error", "skip")  # data.on_error


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


class VideoDecodeError(RuntimeError):
    """A video file is missing or cannot be decoded. The message names the file and the reason."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot decode video {self.path}: {reason}")

    def __reduce__(self):  # keep the exception picklable across DataLoader worker processes
        return (type(self), (self.path, self.reason))


class UnreadableVideosError(VideoDecodeError):
    """Some videos of a data source cannot be read (failure policy "error"). ``failures``: [(path, reason)]."""

    def __init__(self, source: str, failures: list[tuple[str, str]], total: int) -> None:
        self.source = source
        self.failures = failures
        self.total = total
        shown = "\n".join(f"  {path}: {reason}" for path, reason in failures[:10])
        more = f"\n  ... and {len(failures) - 10} more" if len(failures) > 10 else ""
        message = (f"{len(failures)} of {total} videos of {source} cannot be read:\n{shown}{more}\n"
                   f"Fix or remove them, or use the 'skip' failure policy to go on without them.")
        RuntimeError.__init__(self, message)  # not VideoDecodeError's "cannot decode video <path>: ..." wording
        self.path = failures[0][0] if failures else ""
        self.reason = message

    def __reduce__(self):
        return (type(self), (self.source, self.failures, self.total))


def apply_failure_policy(records: Sequence[VideoRecord], failures: Sequence[tuple[VideoRecord, str]], policy: str,
                         source: str) -> list[VideoRecord]:
    """Act on check_videos' ``failures`` among ``records`` (read from ``source``, which the error names).

    "error": raise UnreadableVideosError (a VideoDecodeError) listing up to 10 files and the count, if any failed;
    "skip": return the records without the failed ones (the caller logs and counts them).
    """
    if policy not in FAILURE_POLICIES:
        raise ValueError(f"unknown failure policy {policy!r}; valid policies: {', '.join(FAILURE_POLICIES)}")
    if policy == "error" and failures:
        raise UnreadableVideosError(source, [(str(record.path), why) for record, why in failures], len(records))
    failed = {record for record, _ in failures}
    return [record for record in records if record not in failed]
