"""DiDeMo for paragraph-to-video retrieval, from either of its two published annotation layouts.

(a) X-Pool / T-MASS label csvs, ``didemo_{split}_label.csv`` with columns
    ``success,video_path,starts,ends,text,formatted_data``: one row per video, ``text`` the whole paragraph,
    ``starts``/``ends`` torch reprs such as ``tensor([[0]])`` / ``tensor([31])``. ``video_path`` is an absolute
    path from the authors' machine; only its file name is used.
(b) LocalizingMoments ``{split}_data.json`` (a list of moments ``{description, video, times, ...}``) with an optional
    CLIP4Clip ``{split}_list.txt`` (one video file name per line). As in CLIP4Clip, all descriptions of a video are
    joined into one paragraph and the window is the whole annotated span, 0-31 s.

The layout is detected per split and the csv wins when both exist (it is what T-MASS / CALM report on). The video id
is the file name in both layouts, so records from either are comparable. Some file names end in "." with no
extension; they are kept verbatim because that is the name of the file on disk.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from calm_study.data.readers._common import load_json
from calm_study.data.records import VideoRecord

SPLITS: tuple[str, ...] = ("train", "val", "test")
CSV_COLUMNS = ("video_path", "starts", "ends", "text")
# DiDeMo videos were annotated in 5 s chunks up to 30 s; CLIP4Clip and T-MASS use the window [0, 31] for every video.
WINDOW = (0.0, 31.0)

log = logging.getLogger(__name__)


def label_csv(root: Path, split: str) -> Path:
    return root / f"didemo_{split}_label.csv"


def moments_json(root: Path, split: str) -> Path:
    return root / f"{split}_data.json"


def parse_seconds(value: str) -> float:
    """'tensor([[0]])', 'tensor([31])', '31' or '31.0' -> seconds as float; ValueError on anything else."""
    text = value.replace("tensor", "")
    for ch in "[]()":
        text = text.replace(ch, "")
    return float(text.strip())  # float() rejects "", "0, 5" and other multi-value tensors


def _read_label_csv(path: Path, video_dir: Path) -> list[VideoRecord]:
    records: list[VideoRecord] = []
    first_line: dict[str, int] = {}
    # newline="": the files use CRLF and about 1% of paragraphs contain quoted line breaks.
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: expected the X-Pool/T-MASS header success,video_path,starts,ends,text,"
                             f"formatted_data; missing {missing} in {reader.fieldnames}.")
        for row in reader:
            line = reader.line_num
            if None in row or any(row[c] is None for c in CSV_COLUMNS):
                raise ValueError(f"{path}, record ending on line {line}: expected {len(reader.fieldnames)} fields "
                                 f"({','.join(reader.fieldnames)}), got a row of another length.")
            # The paths were written on Linux, but split on both separators so a Windows-made csv works too.
            name = row["video_path"].replace("\\", "/").split("/")[-1]
            if not name or not row["text"].strip():
                raise ValueError(f"{path}, record ending on line {line}: empty video file name or paragraph "
                                 f"(video_path={row['video_path']!r}).")
            try:
                start, end = parse_seconds(row["starts"]), parse_seconds(row["ends"])
            except ValueError as err:
                raise ValueError(f"{path}, record ending on line {line} ({name}): starts/ends must be one number, "
                                 f"optionally wrapped as tensor([[0]]) or tensor([0]); got {row['starts']!r} / "
                                 f"{row['ends']!r}.") from err
            if name in first_line:
                raise ValueError(f"{path}, record ending on line {line}: video {name!r} repeats the record ending "
                                 f"on line {first_line[name]}; each video must have one paragraph row.")
            first_line[name] = line
            # Paragraph kept verbatim (line breaks included); the tokenizer collapses whitespace.
            records.append(VideoRecord(name, video_dir / name, (row["text"],), start, end))
    return records


def _read_video_list(path: Path) -> list[str]:
    names: list[str] = []
    first_line: dict[str, int] = {}
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            name = line.strip()  # strip() only drops whitespace: a trailing "." of an extension-less name stays
            if not name:
                continue
            if name in first_line:
                raise ValueError(f"{path}, line {line_no}: video {name!r} repeats line {first_line[name]}.")
            first_line[name] = line_no
            names.append(name)
    return names


def _read_moments(path: Path, list_path: Path | None, video_dir: Path) -> list[VideoRecord]:
    moments = load_json(path)
    if not isinstance(moments, list):
        raise ValueError(f"{path}: expected a JSON list of moments {{description, video, times, ...}}, "
                         f"got {type(moments).__name__}.")
    paragraphs: dict[str, list[str]] = {}
    for i, m in enumerate(moments):
        if not (isinstance(m, dict) and isinstance(m.get("video"), str) and isinstance(m.get("description"), str)):
            raise ValueError(f"{path}: moment [{i}] must be an object with string 'video' and 'description', "
                             f"got {m!r:.200}.")
        paragraphs.setdefault(m["video"], []).append(m["description"])
    names = list(paragraphs)
    if list_path is not None:
        listed = _read_video_list(list_path)
        unannotated = [n for n in listed if n not in paragraphs]
        if unannotated:
            # CLIP4Clip silently drops these too; say so, since it changes the split size.
            log.warning("%s: %d listed videos have no moment in %s and are skipped (first: %r)",
                        list_path, len(unannotated), path, unannotated[0])
        names = [n for n in listed if n in paragraphs]
    return [VideoRecord(n, video_dir / n, (" ".join(paragraphs[n]),), *WINDOW) for n in names]


def read(root: str | Path, split: str, videos_dir: str | None = None) -> list[VideoRecord]:
    """DiDeMo paragraph records of ``split`` (one per video, window 0-31 s); videos need not exist."""
    if split not in SPLITS:
        raise ValueError(f"unknown DiDeMo split {split!r}; valid: {', '.join(SPLITS)}")
    root = Path(root)
    video_dir = root / (videos_dir or "videos")
    csv_path, json_path = label_csv(root, split), moments_json(root, split)
    if csv_path.is_file():
        source, records = csv_path, _read_label_csv(csv_path, video_dir)
    elif json_path.is_file():
        list_path = root / f"{split}_list.txt"
        source = json_path
        records = _read_moments(json_path, list_path if list_path.is_file() else None, video_dir)
    else:
        raise FileNotFoundError(f"DiDeMo {split!r} annotations not found under {root}: expected either the "
                                f"X-Pool/T-MASS label csv {csv_path.name} or the LocalizingMoments {json_path.name} "
                                f"(with optional {split}_list.txt).")
    if not records:
        raise ValueError(f"{source}: the DiDeMo {split!r} split has no videos.")
    return records
