"""Torch datasets over decoded videos: (video, caption) training pairs and per-video evaluation items."""

from __future__ import annotations

import concurrent.futures as cf
import time
from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from calm_study.data.feature_cache import SplitFeatures
from calm_study.data.frame_cache import FrameCache
from calm_study.data.records import DECODERS, VideoRecord
from calm_study.data.video import (
    CLIP_MEAN,
    CLIP_STD,
    normalise_frames,
    preprocess_frames,
    probe_video,
    read_video,
)
from calm_study.names import FRAME_FEATURES
from calm_study.progress import say

Normalisation = tuple[tuple[float, ...], tuple[float, ...]]  # (mean, std) per RGB channel


class _ClipLoader:
    """Frames of one record as model input, through the frame cache when there is one; or, in frozen-feature mode,
    the record's cached CLIP frame features (T, D) under their own key. Shared by both datasets."""

    def __init__(self, num_frames: int, image_size: int, normalisation: Normalisation, decoder: str,
                 frame_cache: FrameCache | None, features: SplitFeatures | None = None) -> None:
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        if image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        if decoder not in DECODERS:
            raise ValueError(f"unknown decoder {decoder!r}; valid decoders: {', '.join(DECODERS)}")
        if frame_cache is not None and (frame_cache.num_frames, frame_cache.image_size) != (num_frames, image_size):
            raise ValueError(f"frame cache holds T={frame_cache.num_frames}, S={frame_cache.image_size} clips but the "
                             f"dataset wants T={num_frames}, S={image_size}")
        self.num_frames = num_frames
        self.image_size = image_size
        self.normalisation = normalisation
        self.decoder = decoder
        self.frame_cache = frame_cache
        self.features = features

    def __call__(self, record: VideoRecord) -> dict:
        """{"frames" (T, 3, S, S) float32, "mask" (T,) bool}, or frozen {FRAME_FEATURES (T, D) float32, "mask"}."""
        if self.features is not None:
            features, mask = self.features.video(record)  # (T, D) float32, (T,) bool
            return {FRAME_FEATURES: features, "mask": mask}
        if self.frame_cache is not None:
            frames, mask = self.frame_cache.get(record)  # (T, S, S, 3) uint8, already resized and cropped
            return {"frames": normalise_frames(frames, *self.normalisation), "mask": mask}  # (T, 3, S, S), (T,)
        frames, mask = read_video(record.path, self.num_frames, start=record.start, end=record.end,
                                  decoder=self.decoder)  # (T, H, W, 3) uint8, (T,) bool
        return {"frames": preprocess_frames(frames, self.image_size, *self.normalisation), "mask": mask}


class TrainPairs(Dataset):
    """One item per (video, caption) pair, covering every caption of every video (len == total captions).

    A video with k captions is decoded k times per epoch; that keeps every caption in play, which is what the
    contrastive objective needs; pass a FrameCache to pay the decode cost once instead of every time.
    """

    def __init__(self, records: Sequence[VideoRecord], num_frames: int, image_size: int,
                 normalisation: Normalisation = (CLIP_MEAN, CLIP_STD), *, decoder: str = "decord",
                 frame_cache: FrameCache | None = None, features: SplitFeatures | None = None) -> None:
        self.load = _ClipLoader(num_frames, image_size, normalisation, decoder, frame_cache, features)
        self.records = list(records)
        # (video index, caption) in record order, captions in their stored order.
        self.pairs: list[tuple[int, str]] = [
            (video_index, caption) for video_index, record in enumerate(self.records) for caption in record.captions
        ]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict:
        video_index, caption = self.pairs[i]
        item = {**self.load(self.records[video_index]), "caption": caption, "video_index": video_index}
        if self.load.features is not None:
            item["text_feature"] = self.load.features.text(caption)  # (D,): the frozen text encoder's
        return item


class EvalVideos(Dataset):
    """One item per video, plus the flat caption list used as text queries.

    ``texts`` holds every caption of every video in record order and ``text_to_video[j]`` is the index of the video
    that text j belongs to, so a text-to-video similarity matrix (len(texts), len(self)) can be scored directly.
    """

    def __init__(self, records: Sequence[VideoRecord], num_frames: int, image_size: int,
                 normalisation: Normalisation = (CLIP_MEAN, CLIP_STD), *, decoder: str = "decord",
                 frame_cache: FrameCache | None = None, features: SplitFeatures | None = None) -> None:
        self.load = _ClipLoader(num_frames, image_size, normalisation, decoder, frame_cache, features)
        self.records = list(records)
        self.texts: list[str] = []
        self.text_to_video: list[int] = []
        for video_index, record in enumerate(self.records):
            self.texts.extend(record.captions)
            self.text_to_video.extend([video_index] * len(record.captions))
        # Frozen-feature mode: the cached feature of every text, (N_text, D); None when the encoders run.
        self.text_features = features.text_batch(self.texts) if features is not None else None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        if not -len(self.records) <= i < len(self.records):
            raise IndexError(f"video index {i} out of range for {len(self.records)} videos")
        i = i % len(self.records)
        return {**self.load(self.records[i]), "video_index": i}


def collate(batch: list[dict]) -> dict:
    """Stack items from TrainPairs / EvalVideos.

    "frames" (B, T, 3, S, S), or in frozen-feature mode FRAME_FEATURES (B, T, D) CLIP features, mask (B, T),
    video_index (B,) long, and, when items carry a caption, "captions": list[str] (and, frozen, "text_features"
    (B, D)).
    """
    if not batch:
        raise ValueError("cannot collate an empty batch")
    video = "frames" if "frames" in batch[0] else FRAME_FEATURES
    out: dict = {
        video: torch.stack([item[video] for item in batch]),  # (B, T, 3, S, S) or (B, T, D)
        "mask": torch.stack([item["mask"] for item in batch]),  # (B, T)
        "video_index": torch.tensor([int(item["video_index"]) for item in batch], dtype=torch.long),  # (B,)
    }
    if "caption" in batch[0]:
        out["captions"] = [item["caption"] for item in batch]
    if "text_feature" in batch[0]:
        out["text_features"] = torch.stack([item["text_feature"] for item in batch])  # (B, D)
    return out


def check_videos(records: Sequence[VideoRecord], *, decoder: str = "decord", frame_cache: FrameCache | None = None,
                 workers: int = 4, progress: bool = False) -> list[tuple[VideoRecord, str]]:
    """The records that cannot be read and why, in record order.

    A record is readable when the frame cache already holds its clip, or when probe_video finds that its file opens
    and has a decodable frame in the record's window. Probing runs in a thread pool: it is mostly file I/O and the
    decoders' C code, which does not hold the GIL.
    """
    records = list(records)

    def reason(record: VideoRecord) -> str | None:
        if frame_cache is not None and frame_cache.contains(record):
            return None
        return probe_video(record.path, decoder=decoder, start=record.start, end=record.end)

    reasons: list[str | None] = [None] * len(records)
    start = last = time.perf_counter()
    with cf.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {pool.submit(reason, record): i for i, record in enumerate(records)}
        for done, future in enumerate(cf.as_completed(futures), 1):
            reasons[futures[future]] = future.result()
            now = time.perf_counter()
            if progress and (now - last >= 5.0 or done == len(records)):
                last = now
                bad = sum(r is not None for r in reasons)
                say(f"checking videos: {done}/{len(records)}, {done / max(now - start, 1e-9):.0f}/s, {bad} unreadable")
    return [(record, why) for record, why in zip(records, reasons) if why is not None]
