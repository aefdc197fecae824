"""LSMDC 2016 in the LSMDC16 challenge csv layout (also home of the stem index MSVD shares).

Layout under ``root``::

    LSMDC16_annos_training.csv              train
    LSMDC16_annos_val.csv                   val
    LSMDC16_challenge_1000_publictect.csv   test (1,000 clips)
    videos/<movie>/<clip_id>.avi            movie = clip_id.split('.')[0][:-3]

Each line is ``clip_id \\t start_aligned \\t end_aligned \\t start_extracted \\t end_extracted \\t sentence``. The
files are not csv-quoted (sentences contain quotes), so lines are split on tabs only. A clip may have several
sentences; all of them are kept (CLIP4Clip does the same; T-MASS keeps only the last).
"""

from __future__ import annotations

from pathlib import Path

from calm_study.data.readers._common import StemIndex
from calm_study.data.records import VideoRecord

SPLIT_FILES: dict[str, str] = {
    "train": "LSMDC16_annos_training.csv",
    "val": "LSMDC16_annos_val.csv",
    "test": "LSMDC16_challenge_1000_publictect.csv",
}
SPLITS: tuple[str, ...] = tuple(SPLIT_FILES)
NUM_FIELDS = 6


def movie_of(clip_id: str) -> str:
    """The movie folder of a clip: '1012_Unbreakable_00.05.16.065-00.05.21.941' -> '1012_Unbreakable'."""
    return clip_id.split(".")[0][:-3]


def _read_sentences(path: Path) -> dict[str, list[str]]:
    """Sentences grouped by clip id, clips in first-seen order, sentences in file order."""
    clips: dict[str, list[str]] = {}
    with path.open(encoding="utf-8", newline="") as f:
        for line_no, line in enumerate(f, start=1):
            line = line.strip()  # as CLIP4Clip: surrounding whitespace is noise, inner tabs are the separators
            if not line:
                continue
            fields = line.split("\t")
            if len(fields) != NUM_FIELDS:
                raise ValueError(
                    f"{path}, line {line_no}: expected {NUM_FIELDS} tab-separated fields (clip_id, start_aligned, "
                    f"end_aligned, start_extracted, end_extracted, sentence), got {len(fields)}: {line[:200]!r}."
                )
            clip_id, sentence = fields[0].strip(), fields[5].strip()
            if not clip_id or not sentence:
                raise ValueError(f"{path}, line {line_no}: empty clip id or sentence in {line[:200]!r}.")
            clips.setdefault(clip_id, []).append(sentence)
    return clips


def read(root: str | Path, split: str, videos_dir: str | None = None) -> list[VideoRecord]:
    """LSMDC records of ``split``, one per distinct clip with all its sentences; videos need not exist."""
    if split not in SPLIT_FILES:
        raise ValueError(f"unknown LSMDC split {split!r}; valid: {', '.join(SPLITS)}")
    root = Path(root)
    path = root / SPLIT_FILES[split]
    if not path.is_file():
        raise FileNotFoundError(f"LSMDC {split!r} annotation file not found: {path}. Expected the LSMDC16 files "
                                f"({', '.join(SPLIT_FILES.values())}) directly under the dataset root.")
    clips = _read_sentences(path)
    if not clips:
        raise ValueError(f"{path}: the LSMDC {split!r} split has no annotation lines.")
    video_dir = root / (videos_dir or "videos")
    # Without a video folder there is nothing to look up: keep the expected paths (a later data check reports them).
    index = StemIndex(video_dir) if video_dir.is_dir() else None
    records = []
    for clip_id, sentences in clips.items():
        path_ = video_dir / movie_of(clip_id) / f"{clip_id}.avi"
        if index is not None and not path_.is_file():
            path_ = index.find(clip_id) or path_
        records.append(VideoRecord(clip_id, path_, tuple(sentences)))
    return records
