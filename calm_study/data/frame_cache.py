"""A disk cache of decoded, resized, centre-cropped uint8 frames: decode each clip once, load it every epoch after.

Layout: ``<root>/frames-v<SAMPLING_VERSION>-t<T>-s<S>/<2 hex>/<32 hex>.npz``. The folder name carries everything
that changes the pixels for a given file (the sampling/resize pipeline version, T and S); the file name hashes the
clip's identity: absolute path, size, mtime_ns, start and end. A rewritten video therefore misses and is decoded
again, and stale entries are simply never read (delete the folder to reclaim their space).

An entry is an uncompressed ``.npz``: frames uint8 (T, S, S, 3), mask bool (T,) and the identity string it was
written for (checked on read, so a hash collision or a misplaced file cannot serve wrong frames). Raw uint8 keeps
loading an order of magnitude faster than decoding (zlib would cost more time than it saves space), and the zip
CRC-32 that numpy checks on read turns any torn or damaged entry into a miss that is decoded and rewritten.

Writes go to a unique temporary file in the entry's folder and are os.replace()d into place, which is atomic on
POSIX: readers see the old entry or the new one, never half of one, and two processes filling the same entry both
succeed (the last rename wins; both wrote identical bytes).
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import multiprocessing
import os
import time
import uuid
import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from calm_study.data.records import VideoRecord
from calm_study.data.video import SAMPLING_VERSION, VideoDecodeError, read_video, resize_crop_frames
from calm_study.progress import say

_STALE_TMP_S = 3600.0  # temporary files older than this belong to a killed writer and are swept by fill()
_PROGRESS_EVERY_S = 5.0


class FrameCache:
    """Decoded uint8 clips on disk for one (sampling version, num_frames, image_size)."""

    def __init__(self, root: str | Path, num_frames: int, image_size: int, decoder: str = "decord") -> None:
        if num_frames < 1 or image_size < 1:
            raise ValueError(f"num_frames and image_size must be >= 1, got {num_frames} and {image_size}")
        self.root = Path(root)
        self.num_frames = num_frames
        self.image_size = image_size
        self.decoder = decoder
        self.folder = self.root / f"frames-v{SAMPLING_VERSION}-t{num_frames}-s{image_size}"

    def __repr__(self) -> str:
        return f"FrameCache({str(self.folder)!r}, decoder={self.decoder!r})"

    # ------------------------------------------------------------------ entries

    def _identity(self, record: VideoRecord) -> str:
        path = Path(record.path).resolve()
        try:
            st = path.stat()
        except OSError as exc:
            raise VideoDecodeError(record.path, "file not found") from exc
        return json.dumps({"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                           "start": record.start, "end": record.end}, sort_keys=True)

    def _entry(self, identity: str) -> Path:
        digest = hashlib.sha256(identity.encode()).hexdigest()[:32]
        return self.folder / digest[:2] / f"{digest}.npz"

    def entry_path(self, record: VideoRecord) -> Path:
        """Where ``record``'s entry lives (whether or not it exists). VideoDecodeError if the video is missing."""
        return self._entry(self._identity(record))

    def contains(self, record: VideoRecord) -> bool:
        """True if an entry exists for the video as it is on disk now (cheap: no entry is read or validated)."""
        try:
            return self.entry_path(record).is_file()
        except VideoDecodeError:
            return False

    def _load(self, entry: Path, identity: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        t, s = self.num_frames, self.image_size
        try:
            with np.load(entry, allow_pickle=False) as z:
                frames, mask, stored = z["frames"], z["mask"], str(z["identity"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
            return None  # torn or damaged entry: a miss, rewritten by the caller
        if (stored != identity or frames.shape != (t, s, s, 3) or frames.dtype != np.uint8 or mask.shape != (t,)
                or mask.dtype != np.bool_):
            return None
        return torch.from_numpy(frames), torch.from_numpy(mask)

    def _write(self, entry: Path, identity: str, frames: torch.Tensor, mask: torch.Tensor) -> None:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.parent / f".{entry.stem}.tmp-{os.getpid()}-{uuid.uuid4().hex}"
        try:
            with open(tmp, "wb") as f:  # a file object, so that numpy does not append ".npz" to the name
                np.savez(f, frames=frames.numpy(), mask=mask.numpy(), identity=np.array(identity))
            os.replace(tmp, entry)
        finally:
            tmp.unlink(missing_ok=True)  # only still there if writing failed

    def get(self, record: VideoRecord) -> tuple[torch.Tensor, torch.Tensor]:
        """(frames uint8 (T, S, S, 3), mask bool (T,)) from the cache, or decoded, stored and returned.

        Decoding is read_video (the record's window, this cache's decoder) then resize_crop_frames: the same pixels
        preprocess_frames normalises. VideoDecodeError for missing or undecodable videos (nothing is stored).
        """
        identity = self._identity(record)
        entry = self._entry(identity)
        hit = self._load(entry, identity)
        if hit is not None:
            return hit
        frames, mask = read_video(record.path, self.num_frames, start=record.start, end=record.end,
                                  decoder=self.decoder)  # (T, H, W, 3) uint8, (T,) bool
        frames = resize_crop_frames(frames, self.image_size)  # (T, S, S, 3) uint8
        # A video rewritten (or removed) while it was being decoded must not be stored under its old identity.
        try:
            unchanged = self._identity(record) == identity
        except VideoDecodeError:
            unchanged = False
        if unchanged:
            self._write(entry, identity, frames, mask)
        return frames, mask

    # ------------------------------------------------------------------ bulk filling

    def _sweep_stale_tmp(self) -> None:
        if not self.folder.is_dir():
            return
        cutoff = time.time() - _STALE_TMP_S
        for tmp in self.folder.glob("*/.*.tmp-*"):
            try:
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()
            except OSError:
                pass  # another process removed or renamed it first

    def fill(self, records: Iterable[VideoRecord], *, workers: int = 2, progress: bool = True) -> dict:
        """Decode and store every record not cached yet.

        ``workers`` > 1 decodes in a process pool (spawned, so it is safe from any parent; each worker uses one
        torch thread); 0 or 1 decodes here. Progress lines go to stderr every few seconds. Returns {"cached": records
        already cached, "decoded": records decoded now, "failed": [(video_id, path, reason)]}; every record is counted
        once (records sharing a clip share its decode).
        """
        records = list(records)
        self._sweep_stale_tmp()
        todo = [r for r in records if not self.contains(r)]
        cached = len(records) - len(todo)
        clips: dict[tuple, list[VideoRecord]] = {}  # one decode per distinct (path, window)
        for r in todo:
            clips.setdefault((str(Path(r.path).resolve()), r.start, r.end), []).append(r)
        result = {"cached": cached, "decoded": 0, "failed": []}
        if progress:
            say(f"frame cache {self.folder}: {cached}/{len(records)} clips cached, decoding {len(clips)}")
        start = last = time.perf_counter()
        done = 0

        def record_outcome(group: list[VideoRecord], reason: str | None) -> None:
            nonlocal done, last
            done += 1
            if reason is None:
                result["decoded"] += len(group)
            else:
                result["failed"].extend((r.video_id, str(r.path), reason) for r in group)
            now = time.perf_counter()
            if progress and (now - last >= _PROGRESS_EVERY_S or done == len(clips)):
                last = now
                say(f"frame cache: {done}/{len(clips)} clips decoded, {done / max(now - start, 1e-9):.1f} clips/s, "
                    f"{len(result['failed'])} failed")

        groups = list(clips.values())
        if workers <= 1 or len(groups) <= 1:
            for group in groups:
                record_outcome(group, _fill_one(self, group[0]))
            return result
        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(max_workers=min(workers, len(groups)), mp_context=ctx,
                                    initializer=torch.set_num_threads, initargs=(1,)) as pool:
            futures = {pool.submit(_fill_one, self, group[0]): group for group in groups}
            for future in cf.as_completed(futures):
                record_outcome(futures[future], future.result())
        order = {(r.video_id, str(r.path)): i for i, r in enumerate(records)}
        result["failed"].sort(key=lambda failure: order[failure[:2]])  # record order, not completion order
        return result


def _fill_one(cache: FrameCache, record: VideoRecord) -> str | None:
    """Decode and store one clip; the failure reason, or None. Module level so that a process pool can pickle it."""
    try:
        cache.get(record)
    except VideoDecodeError as exc:
        return exc.reason
    return None
