"""MSVD in the CLIP4Clip layout: split id lists plus a pickled caption dict.

Layout under ``root``::

    {train,val,test}_list.txt   one video id per line, e.g. bQJQGoJF7_k_162_169 (1,200 / 100 / 670)
    raw-captions.pkl            {video_id: [[token, ...], ...]}; caption = " ".join(tokens)
    videos/...                  any sub-folder, any extension; matched by file stem == video id

The pickle is loaded with a restricted unpickler (see safe_pickle): it comes from the internet and a plain
``pickle.load`` would run whatever it contains.
"""

from __future__ import annotations

from pathlib import Path

from calm_study.data.readers._common import StemIndex
from calm_study.data.readers.safe_pickle import load_restricted
from calm_study.data.records import VideoRecord

SPLITS: tuple[str, ...] = ("train", "val", "test")
CAPTIONS = "raw-captions.pkl"


def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"MSVD {what} not found: {path}. Expected the CLIP4Clip layout "
                                f"({{train,val,test}}_list.txt and {CAPTIONS}) directly under the dataset root.")
    return path


def load_captions(path: Path) -> dict[str, list[str]]:
    """The caption pickle as {video_id: [caption, ...]}, after checking it is dict[str, list[list[str]]]."""
    data = load_restricted(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a pickled dict {{video_id: [[token, ...], ...]}}, "
                         f"got {type(data).__name__}.")
    captions: dict[str, list[str]] = {}
    for vid, token_lists in data.items():
        if not isinstance(vid, str):
            raise ValueError(f"{path}: keys must be video id strings, got {vid!r} ({type(vid).__name__}).")
        if not isinstance(token_lists, list) or not all(
            isinstance(tokens, list) and all(isinstance(t, str) for t in tokens) for tokens in token_lists
        ):
            raise ValueError(f"{path}: key {vid!r} must map to a list of token lists (list of list of str), "
                             f"got {token_lists!r:.200}.")
        captions[vid] = [" ".join(tokens) for tokens in token_lists]
    return captions


def _read_ids(path: Path) -> list[tuple[int, str]]:
    """(line number, id) for each non-blank line; repeats are an error."""
    ids: list[tuple[int, str]] = []
    first_line: dict[str, int] = {}
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            vid = line.strip()
            if not vid:
                continue
            if vid in first_line:
                raise ValueError(f"{path}, line {line_no}: video id {vid!r} repeats line {first_line[vid]}.")
            first_line[vid] = line_no
            ids.append((line_no, vid))
    return ids


def read(root: str | Path, split: str, videos_dir: str | None = None) -> list[VideoRecord]:
    """MSVD records of ``split`` with all captions per video; videos are looked up by stem but need not exist."""
    if split not in SPLITS:
        raise ValueError(f"unknown MSVD split {split!r}; valid: {', '.join(SPLITS)}")
    root = Path(root)
    list_path = _require(root / f"{split}_list.txt", f"{split!r} split list")
    ids = _read_ids(list_path)
    if not ids:
        raise ValueError(f"{list_path}: the MSVD {split!r} split lists no videos.")
    captions_path = _require(root / CAPTIONS, "caption pickle")
    captions = load_captions(captions_path)
    video_dir = root / (videos_dir or "videos")
    index = StemIndex(video_dir)
    records = []
    for line_no, vid in ids:
        caps = captions.get(vid)
        if not caps or not any(c.strip() for c in caps):
            raise ValueError(f"{list_path}, line {line_no}: video {vid!r} has no captions in {captions_path} "
                             "(missing key or empty caption list); the split list and caption file disagree.")
        records.append(VideoRecord(vid, index.find(vid) or video_dir / f"{vid}.avi", tuple(caps)))
    return records
