"""Torch datasets over decoded videos: (video, caption) training pairs and per-video evaluation items."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from calm_study.data.video import CLIP_MEAN, CLIP_STD, preprocess_frames, read_video

Normalisation = tuple[tuple[float, ...], tuple[float, ...]]  # (mean, std) per RGB channel


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


def _load_clip(record: VideoRecord, num_frames: int, image_size: int, norm: Normalisation
               ) -> tuple[torch.Tensor, torch.Tensor]:
    frames, mask = read_video(record.path, num_frames)  # (T, H, W, 3) uint8, (T,) bool
    return preprocess_frames(frames, image_size, *norm), mask  # (T, 3, S, S) float32, (T,) bool


def _check_sizes(num_frames: int, image_size: int) -> None:
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")


class TrainPairs(Dataset):
    """One item per (video, caption) pair, covering every caption of every video (len == total captions).

    A video with k captions is decoded k times per epoch; that keeps every caption in play, which is what the
    contrastive objective needs, and the decode cost is what caching layers elsewhere are for.
    """

    def __init__(self, records: Sequence[VideoRecord], num_frames: int, image_size: int,
                 normalisation: Normalisation = (CLIP_MEAN, CLIP_STD)) -> None:
        _check_sizes(num_frames, image_size)
        self.records = list(records)
        self.num_frames = num_frames
        self.image_size = image_size
        self.normalisation = normalisation
        # (video index, caption) in record order, captions in their stored order.
        self.pairs: list[tuple[int, str]] = [
            (video_index, caption) for video_index, record in enumerate(self.records) for caption in record.captions
        ]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict:
        video_index, caption = self.pairs[i]
        frames, mask = _load_clip(self.records[video_index], self.num_frames, self.image_size, self.normalisation)
        return {"frames": frames, "mask": mask, "caption": caption, "video_index": video_index}


class EvalVideos(Dataset):
    """One item per video, plus the flat caption list used as text queries.

    ``texts`` holds every caption of every video in record order and ``text_to_video[j]`` is the index of the video
    that text j belongs to, so a text-to-video similarity matrix (len(texts), len(self)) can be scored directly.
    """

    def __init__(self, records: Sequence[VideoRecord], num_frames: int, image_size: int,
                 normalisation: Normalisation = (CLIP_MEAN, CLIP_STD)) -> None:
        _check_sizes(num_frames, image_size)
        self.records = list(records)
        self.num_frames = num_frames
        self.image_size = image_size
        self.normalisation = normalisation
        self.texts: list[str] = []
        self.text_to_video: list[int] = []
        for video_index, record in enumerate(self.records):
            self.texts.extend(record.captions)
            self.text_to_video.extend([video_index] * len(record.captions))

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        if not -len(self.records) <= i < len(self.records):
            raise IndexError(f"video index {i} out of range for {len(self.records)} videos")
        i = i % len(self.records)
        frames, mask = _load_clip(self.records[i], self.num_frames, self.image_size, self.normalisation)
        return {"frames": frames, "mask": mask, "video_index": i}


def collate(batch: list[dict]) -> dict:
    """Stack items from TrainPairs / EvalVideos.

    frames (B, T, 3, S, S), mask (B, T), video_index (B,) long, and, when items carry a caption, "captions": list[str].
    """
    if not batch:
        raise ValueError("cannot collate an empty batch")
    out: dict = {
        "frames": torch.stack([item["frames"] for item in batch]),  # (B, T, 3, S, S)
        "mask": torch.stack([item["mask"] for item in batch]),  # (B, T)
        "video_index": torch.tensor([int(item["video_index"]) for item in batch], dtype=torch.long),  # (B,)
    }
    if "caption" in batch[0]:
        out["captions"] = [item["caption"] for item in batch]
    return out
