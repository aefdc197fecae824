"""MSR-VTT in the CLIP4Clip / T-MASS layout: ``MSRVTT_data.json`` plus the 9k / 7k / 1k-A split csvs.

Layout under ``root``::

    MSRVTT_data.json            {"videos": [{"video_id", "split", ...}, ...],
                                 "sentences": [{"video_id", "caption", "sen_id"}, ...]}
    MSRVTT_train.9k.csv         header "video_id", one id per line (9,000)
    MSRVTT_train.7k.csv         same (7,010: official train + validate)
    MSRVTT_JSFUSION_test.csv    key,vid_key,video_id,sentence (1,000 rows, the "1k-A" test split)
    videos/<video_id>.mp4

Retrieval splits: ``train`` (9k) and ``train7k`` give every caption of each listed video (20 in the release);
``test`` (1k-A) gives the single csv sentence of each row, as in both reference loaders.

Captioning splits: ``caption_train``, ``caption_val`` and ``caption_test`` are the official MSR-VTT v1.0
train / validate / test partition that captioning work reports on (6,513 / 497 / 2,990 videos). They need no csv:
each entry of ``videos`` carries its partition in ``split`` ("train", "validate", "test"), and records follow the
order of ``videos``. Every video of every captioning split, test included, keeps all of its captions in the file's
sentence order, since captioning metrics score against all references.

The released mp4s are already trimmed to the annotated clip, so there is no window.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from calm_study.data.readers._common import load_json
from calm_study.data.records import VideoRecord

ANNOTATIONS = "MSRVTT_data.json"
SPLIT_FILES: dict[str, str] = {
    "train": "MSRVTT_train.9k.csv",
    "train7k": "MSRVTT_train.7k.csv",
    "test": "MSRVTT_JSFUSION_test.csv",
}
# Captioning split name -> value of ``videos[i].split`` in MSRVTT_data.json.
CAPTION_SPLITS: dict[str, str] = {
    "caption_train": "train",
    "caption_val": "validate",
    "caption_test": "test",
}
SPLITS: tuple[str, ...] = (*SPLIT_FILES, *CAPTION_SPLITS)
TEST_COLUMNS = ("video_id", "sentence")


def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"MSR-VTT {what} not found: {path}. Expected the CLIP4Clip release layout "
                                f"({ANNOTATIONS}, {', '.join(SPLIT_FILES.values())}) directly under the dataset root.")
    return path


def _csv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(1-based line number, fields) for each non-blank csv row, header included."""
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        for row in reader:
            if row and any(field.strip() for field in row):
                yield reader.line_num, row


def _read_id_list(path: Path) -> list[str]:
    rows = _csv_rows(path)
    header = next(rows, None)
    if header is None or [h.strip() for h in header[1]] != ["video_id"]:
        raise ValueError(f"{path}: expected the header line 'video_id' (one video id per line after it), "
                         f"got {header[1] if header else 'an empty file'}.")
    ids: list[str] = []
    first_line: dict[str, int] = {}
    for line, row in rows:
        if len(row) != 1:
            raise ValueError(f"{path}, line {line}: expected one field (a video id such as 'video0'), got {row}.")
        vid = row[0].strip()
        if vid in first_line:
            raise ValueError(f"{path}, line {line}: video id {vid!r} repeats line {first_line[vid]}; "
                             "each training video must appear once.")
        first_line[vid] = line
        ids.append(vid)
    return ids


def _captions_by_video(path: Path, data: object = None) -> dict[str, list[str]]:
    """All captions of each video, in the file's sentence order (``data``: the file already parsed, if it is)."""
    if data is None:
        data = load_json(path)
    sentences = data.get("sentences") if isinstance(data, dict) else None
    if not isinstance(sentences, list):
        raise ValueError(f"{path}: expected a JSON object with a 'sentences' list of "
                         "{'video_id': ..., 'caption': ...} entries.")
    captions: dict[str, list[str]] = {}
    for i, s in enumerate(sentences):
        if not (isinstance(s, dict) and isinstance(s.get("video_id"), str) and isinstance(s.get("caption"), str)):
            raise ValueError(f"{path}: sentences[{i}] must be an object with string 'video_id' and 'caption', "
                             f"got {s!r:.200}.")
        # Captions are kept verbatim (about 1.3k of the 200k carry stray spaces); the tokenizer normalises them.
        captions.setdefault(s["video_id"], []).append(s["caption"])
    return captions


def _read_train(root: Path, split_file: Path, video_dir: Path) -> list[VideoRecord]:
    ids = _read_id_list(split_file)
    captions = _captions_by_video(_require(root / ANNOTATIONS, "annotation file"))
    records = []
    for vid in ids:
        if vid not in captions:
            raise ValueError(f"{split_file}: training video {vid!r} has no captions in {root / ANNOTATIONS} "
                             "(no 'sentences' entry with that video_id); the split and annotation files disagree.")
        records.append(VideoRecord(vid, video_dir / f"{vid}.mp4", tuple(captions[vid])))
    return records


def _read_test(split_file: Path, video_dir: Path) -> list[VideoRecord]:
    rows = _csv_rows(split_file)
    header = next(rows, None)
    columns = [h.strip() for h in header[1]] if header else []
    missing = [c for c in TEST_COLUMNS if c not in columns]
    if missing:
        raise ValueError(f"{split_file}: expected a header with columns key,vid_key,video_id,sentence; "
                         f"missing {missing} in {columns or 'an empty file'}.")
    vid_col, sent_col = columns.index("video_id"), columns.index("sentence")
    records = []
    first_line: dict[str, int] = {}
    for line, row in rows:
        if len(row) != len(columns):
            raise ValueError(f"{split_file}, line {line}: expected {len(columns)} fields ({','.join(columns)}), "
                             f"got {len(row)}: {row}.")
        vid, sentence = row[vid_col].strip(), row[sent_col]
        if not vid or not sentence.strip():
            raise ValueError(f"{split_file}, line {line}: empty video_id or sentence in {row}.")
        # The 1k-A protocol puts ground truth on the diagonal: one row per video. A repeat would make two
        # "different" gallery items of one video, so refuse it instead of silently scoring it.
        if vid in first_line:
            raise ValueError(f"{split_file}, line {line}: video {vid!r} repeats line {first_line[vid]}; "
                             "the test csv must list each video once.")
        first_line[vid] = line
        records.append(VideoRecord(vid, video_dir / f"{vid}.mp4", (sentence,)))
    return records


def _read_caption_split(root: Path, split: str, video_dir: Path) -> list[VideoRecord]:
    """An official captioning split from ``videos[*].split``: all captions per video, in the order of ``videos``."""
    path = _require(root / ANNOTATIONS, "annotation file")
    data = load_json(path)
    videos = data.get("videos") if isinstance(data, dict) else None
    if not isinstance(videos, list):
        found = "it has none" if videos is None else f"it is a {type(videos).__name__}"
        raise ValueError(f"{path}: expected a JSON object with a 'videos' list of {{'video_id': ..., 'split': ...}} "
                         f"entries (the official partition the captioning splits {', '.join(CAPTION_SPLITS)} are "
                         f"read from), but {found}.")
    valid = tuple(CAPTION_SPLITS.values())
    wanted = CAPTION_SPLITS[split]
    ids: list[str] = []
    first_index: dict[str, int] = {}
    for i, v in enumerate(videos):
        if not (isinstance(v, dict) and isinstance(v.get("video_id"), str) and isinstance(v.get("split"), str)):
            raise ValueError(f"{path}: videos[{i}] must be an object with string 'video_id' and 'split', "
                             f"got {v!r:.200}.")
        if v["split"] not in valid:
            raise ValueError(f"{path}: videos[{i}] ({v['video_id']!r}) has split {v['split']!r}; "
                             f"valid values are {', '.join(repr(x) for x in valid)}.")
        if v["split"] != wanted:
            continue
        vid = v["video_id"]
        if vid in first_index:
            raise ValueError(f"{path}: videos[{i}] repeats video {vid!r} of videos[{first_index[vid]}] in the "
                             f"{wanted!r} split; each video must appear once.")
        first_index[vid] = i
        ids.append(vid)
    if not ids:
        raise ValueError(f"{path}: no entry of 'videos' has split {wanted!r}, so the MSR-VTT {split!r} split is "
                         f"empty; {', '.join(f'{k} reads {v!r}' for k, v in CAPTION_SPLITS.items())}.")
    captions = _captions_by_video(path, data)
    records = []
    for vid in ids:
        if vid not in captions:
            raise ValueError(f"{path}: video {vid!r} (videos[{first_index[vid]}], split {wanted!r}) has no captions "
                             "(no 'sentences' entry with that video_id); every captioning video needs its "
                             "references.")
        records.append(VideoRecord(vid, video_dir / f"{vid}.mp4", tuple(captions[vid])))
    return records


def read(root: str | Path, split: str, videos_dir: str | None = None) -> list[VideoRecord]:
    """MSR-VTT records of ``split``; videos need not exist.

    Retrieval: 'train' = 9k, 'train7k', 'test' = 1k-A (from the csvs). Captioning: 'caption_train',
    'caption_val', 'caption_test' (the official partition in MSRVTT_data.json, all captions per video).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown MSR-VTT split {split!r}; valid: {', '.join(SPLITS)}")
    root = Path(root)
    video_dir = root / (videos_dir or "videos")
    if split in CAPTION_SPLITS:
        return _read_caption_split(root, split, video_dir)
    split_file = _require(root / SPLIT_FILES[split], f"{split!r} split file")
    records = _read_train(root, split_file, video_dir) if split != "test" else _read_test(split_file, video_dir)
    if not records:
        raise ValueError(f"{split_file}: the MSR-VTT {split!r} split lists no videos (header only?).")
    return records
