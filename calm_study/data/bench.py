"""How much the frame cache buys: clips/s decoding, filling the cache, and reading it warm.

    python -m calm_study data bench /path/to/videos --frames 12 --size 224     (or a study file)

prints the rates of bench_decoding. Rates are single-process, so they compare like with like; a DataLoader
with W workers (or FrameCache.fill with W processes) gets up to W times as many clips/s on W free cores.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from calm_study.data.frame_cache import FrameCache
from calm_study.data.records import VideoRecord
from calm_study.data.video import VideoDecodeError, read_video, resize_crop_frames


class NothingDecodable(ValueError):
    """Not one of the records could be decoded: nothing to time. `failures` holds (path, reason) of each."""

    def __init__(self, failures: list[tuple[str, str]]) -> None:
        self.failures = failures
        super().__init__(f"none of the {len(failures)} records could be decoded")


def bench_decoding(records: Iterable[VideoRecord], num_frames: int, image_size: int, cache_root: str | Path,
                   decoder: str = "decord", repeats: int = 1, *, workers: int = 1) -> dict:
    """Time the three ways a dataset gets a clip's uint8 (T, S, S, 3) frames (normalisation, common to all, is left
    out): decode + resize + crop without the cache, filling a cold cache (decode + resize + crop + write; ``workers``
    processes), and reading the warm cache. Each phase runs ``repeats`` times (the fill into a fresh folder each
    time). The cache lives in a temporary folder under ``cache_root`` that is removed afterwards, so the numbers
    never come from a stale cache. Records that fail to decode are counted and left out of every phase; when
    none decodes, NothingDecodable names each with its reason.

    Returns {"clips", "failed", "decoder", "num_frames", "image_size", "repeats", "decode_clips_per_s",
    "fill_clips_per_s", "cached_clips_per_s", "speedup" (cached / decode), "entry_bytes" (mean bytes per entry)}.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    records = list(records)
    good: list[VideoRecord] = []
    failures: list[tuple[str, str]] = []
    tic = time.perf_counter()
    for rep in range(repeats):
        for record in records if rep == 0 else good:
            try:
                frames, _ = read_video(record.path, num_frames, start=record.start, end=record.end, decoder=decoder)
            except VideoDecodeError as e:
                failures.append((e.path, e.reason))
                continue
            resize_crop_frames(frames, image_size)  # (T, S, S, 3) uint8
            if rep == 0:
                good.append(record)
    decode_s = time.perf_counter() - tic
    if not good:
        raise NothingDecodable(failures)

    Path(cache_root).mkdir(parents=True, exist_ok=True)
    fill_s = cached_s = 0.0
    entry_bytes = 0.0
    for rep in range(repeats):
        folder = Path(tempfile.mkdtemp(prefix="bench-", dir=cache_root))
        try:
            cache = FrameCache(folder, num_frames, image_size, decoder=decoder)
            tic = time.perf_counter()
            cache.fill(good, workers=workers, progress=False)
            fill_s += time.perf_counter() - tic
            if rep == repeats - 1:
                entry_bytes = sum(cache.entry_path(r).stat().st_size for r in good) / len(good)
                tic = time.perf_counter()
                for _ in range(repeats):
                    for record in good:
                        cache.get(record)
                cached_s = time.perf_counter() - tic
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    n = len(good) * repeats
    decode_rate, fill_rate, cached_rate = n / decode_s, n / fill_s, n / cached_s
    return {"clips": len(good), "failed": len(failures), "decoder": decoder, "num_frames": num_frames,
            "image_size": image_size, "repeats": repeats, "decode_clips_per_s": decode_rate,
            "fill_clips_per_s": fill_rate, "cached_clips_per_s": cached_rate, "speedup": cached_rate / decode_rate,
            "entry_bytes": entry_bytes}
