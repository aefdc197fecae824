"""A disk cache of frozen CLIP features (model.frozen): every video's frame features and every caption's text feature
of one dataset split, computed once per (encoder weights, T, S, pixel pipeline, split) and read by every trial.

Layout: ``<root>/features-v<FEATURE_VERSION>/<2 hex>/<32 hex>.npz``, one entry per split. The file name hashes the
entry's identity: a fingerprint of the encoder weights (so a tag, a checkpoint file and a seeded random
initialisation are all told apart), T, S, the pixel normalisation, the decoder and frame-sampling version, and every
video's path, size, mtime, window and captions. Anything that would change a feature changes the name, so a stale
entry is never read (delete the folder to reclaim its space).

An entry is an uncompressed ``.npz``: frames float32 (N, T, D), mask bool (N, T), keys (N,) (path|start|end of each
video), captions (M,) and texts float32 (M, D) (one row per distinct caption), and the identity string it was written
for (checked on read). Features are stored in fp32, exactly as the encoders computed them: a frozen trial sees the
numbers a fine-tuning trial's first forward would.

Concurrency: trials of a study start together and want the same entries. The first to arrive takes an exclusive
lock (``fcntl.flock`` on ``<entry>.lock``) and computes; the others block on the lock, then find the entry and read it.
The entry itself is written to a unique temporary file and os.replace()d into place (atomic on POSIX), so a reader
never sees half an entry, and a killed writer leaves no entry, only a lock file (whose flock the kernel released).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import uuid
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from calm_study.data.records import VideoRecord
from calm_study.data.video import SAMPLING_VERSION

FEATURE_VERSION = 1  # bump when what an entry holds, or how it is computed, changes


def video_key(record: VideoRecord) -> str:
    """How an entry names a video: its path and window (one file can hold several clips)."""
    return f"{Path(record.path).resolve()}|{record.start}|{record.end}"


@dataclass
class SplitFeatures:
    """One split's cached features: look-ups by record and by caption."""

    frames: torch.Tensor  # (N, T, D) float32
    mask: torch.Tensor  # (N, T) bool
    rows: dict[str, int]  # video_key -> row of frames/mask
    texts: torch.Tensor  # (M, D) float32
    text_rows: dict[str, int]  # caption -> row of texts
    _row_of: dict[VideoRecord, int] = field(default_factory=dict, repr=False)

    def video(self, record: VideoRecord) -> tuple[torch.Tensor, torch.Tensor]:
        """(T, D) frame features and (T,) mask of a record of this split."""
        i = self._row_of.get(record)
        if i is None:  # resolving the path costs a system call: once per record, not once per item
            i = self._row_of[record] = self.rows[video_key(record)]
        return self.frames[i], self.mask[i]

    def text(self, caption: str) -> torch.Tensor:
        return self.texts[self.text_rows[caption]]  # (D,)

    def text_batch(self, captions: Sequence[str]) -> torch.Tensor:
        return self.texts[[self.text_rows[c] for c in captions]]  # (n, D)


# What computes features: records -> frame features (N, T, D) and mask (N, T); captions -> (M, D).
VideoEncoder = Callable[[Sequence[VideoRecord]], "tuple[torch.Tensor, torch.Tensor]"]
TextEncoder = Callable[[list[str]], torch.Tensor]


class FeatureCache:
    """Split entries under ``root`` for one encoder (its weights fingerprint) and one pixel pipeline."""

    def __init__(self, root: str | Path, weights: str, num_frames: int, image_size: int,
                 normalisation: tuple[tuple[float, ...], tuple[float, ...]], decoder: str) -> None:
        self.root = Path(root)
        self.folder = self.root / f"features-v{FEATURE_VERSION}"
        self.setting = {"version": FEATURE_VERSION, "weights": weights, "num_frames": num_frames,
                        "image_size": image_size, "normalisation": [list(x) for x in normalisation],
                        "decoder": decoder, "sampling": SAMPLING_VERSION}

    def identity(self, records: Sequence[VideoRecord]) -> str:
        """Everything the split's features depend on, as a canonical string (file stats included)."""
        videos = []
        for r in records:
            st = Path(r.path).stat()
            videos.append([str(Path(r.path).resolve()), st.st_size, st.st_mtime_ns, r.start, r.end, list(r.captions)])
        return json.dumps({**self.setting, "videos": videos}, sort_keys=True)

    def entry_path(self, identity: str) -> Path:
        digest = hashlib.sha256(identity.encode()).hexdigest()[:32]
        return self.folder / digest[:2] / f"{digest}.npz"

    def get(self, records: Sequence[VideoRecord], encode_videos: VideoEncoder, encode_texts: TextEncoder,
            log: Callable[[str], None] = lambda msg: None, label: str = "") -> SplitFeatures:
        """The split's features from the cache, or computed (under the entry's lock), stored and returned."""
        records = list(records)
        identity = self.identity(records)
        entry = self.entry_path(identity)
        hit = _load(entry, identity)
        if hit is not None:
            return hit
        entry.parent.mkdir(parents=True, exist_ok=True)
        with open(entry.with_suffix(".lock"), "a+b") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                # the entry within the cache folder (announced when extraction starts): within 120 columns
                log(f"features of {label}: another process is computing them; waiting for")
                log(f"  its entry {entry.parent.name}/{entry.name}")
                fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                hit = _load(entry, identity)  # written by the process that held the lock before us
                if hit is not None:
                    return hit
                frames, mask = encode_videos(records)  # (N, T, D), (N, T)
                captions = list(dict.fromkeys(c for r in records for c in r.captions))
                texts = encode_texts(captions)  # (M, D)
                _write(entry, identity, frames, mask, [video_key(r) for r in records], captions, texts)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        found = _load(entry, identity)
        if found is None:
            raise OSError(f"feature cache entry {entry} could not be read back after writing it")
        return found


def _load(entry: Path, identity: str) -> SplitFeatures | None:
    try:
        with np.load(entry, allow_pickle=False) as z:
            if str(z["identity"]) != identity:
                return None
            frames, mask, keys = z["frames"], z["mask"], z["keys"].tolist()
            captions, texts = z["captions"].tolist(), z["texts"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
        return None  # a damaged entry is a miss: computed and rewritten
    return SplitFeatures(torch.from_numpy(frames), torch.from_numpy(mask), {k: i for i, k in enumerate(keys)},
                         torch.from_numpy(texts), {c: i for i, c in enumerate(captions)})


def _write(entry: Path, identity: str, frames: torch.Tensor, mask: torch.Tensor, keys: list[str],
           captions: list[str], texts: torch.Tensor) -> None:
    tmp = entry.parent / f".{entry.stem}.tmp-{os.getpid()}-{uuid.uuid4().hex}"
    try:
        with open(tmp, "wb") as f:  # a file object, so that numpy does not append ".npz" to the name
            np.savez(f, frames=frames.float().cpu().numpy(), mask=mask.bool().cpu().numpy(), keys=np.array(keys),
                     captions=np.array(captions, dtype=str), texts=texts.float().cpu().numpy(),
                     identity=np.array(identity))
        os.replace(tmp, entry)
    finally:
        tmp.unlink(missing_ok=True)  # only still there if writing failed


def weights_fingerprint(module: torch.nn.Module, skip: Sequence[str] = ()) -> str:
    """sha256 over a module's parameters and buffers (names, shapes, dtypes, bytes), `skip` left out: two encoders
    with this fingerprint compute the same features."""
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        if name in skip:
            continue
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
