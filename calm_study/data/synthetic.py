"""A small deterministic synthetic text-video dataset, written as real mp4 files.

Each video shows one coloured shape moving left/right/up/down; its captions name colour, shape and motion. Two
domains differ both in look and in caption style, so the dataset can also exercise domain shift:

* ``plain``: dark uniform background, saturated colours, smaller shape, terse captions ("a red circle moves up").
* ``textured``: noisy diagonal stripes, paler colours, bigger shape, wordier captions ("there is a circle which
  is red, going upwards").

The attributes are deliberately obvious (large shapes, far-apart colours, strong motion) so that a tiny CLIP trained
from scratch for a minute on CPU learns them, and every test-split attribute combination also occurs in training.
Everything is drawn from numpy Generators seeded from ``seed``; a fixed seed gives identical annotation files and
identical decoded frames.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import time
import uuid
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import av
import numpy as np

from calm_study.data.records import VideoRecord
from calm_study.progress import say

if TYPE_CHECKING:
    from calm_study.config import DataConfig

# Bump whenever the rendered pixels, captions or file layout change: it is part of the cache fingerprint.
GENERATOR_VERSION = 1

DOMAINS = ("plain", "textured")
SPLITS = ("train", "test")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "green": (35, 190, 50),
    "blue": (35, 75, 235),
    "yellow": (245, 215, 35),
    "cyan": (35, 205, 225),
    "purple": (165, 45, 220),
}
SHAPES = ("circle", "square", "triangle", "cross")
MOTIONS = ("left", "right", "up", "down")
_TO_DIR = {"left": "to the left", "right": "to the right", "up": "up", "down": "down"}
_WARDS = {m: m + "wards" for m in MOTIONS}
# Different sentence shapes per domain (and "-wards" vs plain direction words), so text style shifts with the look.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "plain": (
        "a {colour} {shape} moves {to_dir}",
        "a {colour} {shape} is moving {dir}",
        "the {colour} {shape} slides {dir}",
        "a {colour} {shape} going {dir}",
    ),
    "textured": (
        "there is a {shape} which is {colour}, going {wards}",
        "on a striped noisy background, a big {colour} {shape} travels {wards}",
        "we can see a large {shape}, {colour} in colour, heading {wards}",
        "a textured scene where a {colour} {shape} drifts {wards}",
    ),
}


def _pick_codec() -> str:
    # libx264 gives small, high-quality files; some PyAV wheels lack it, and mpeg4 is always built into FFmpeg.
    try:
        av.Codec("libx264", "w")
        return "libx264"
    except Exception:  # any failure to open the encoder means "not available"
        return "mpeg4"


def _write_mp4(path: Path, frames: np.ndarray, fps: int, codec: str) -> None:
    """frames: uint8 (F, H, W, 3) RGB."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.thread_count = 1  # single-threaded encoding keeps the output byte-identical run to run
        if codec == "libx264":
            # Near-lossless. tune=zerolatency switches off the lookahead/mb-tree and B-frames: with them on, the
            # output bytes (and decoded pixels) varied between processes (measured; likely uninitialised reads in
            # x264's lookahead), which would break determinism. No B-frames also keeps decord's seeking simple.
            stream.options = {"crf": "12", "preset": "veryfast", "tune": "zerolatency", "threads": "1"}
        else:
            stream.bit_rate = 4_000_000
        for k, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = k
            frame.time_base = Fraction(1, fps)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():  # flush
            container.mux(packet)


def _render(domain: str, colour: str, shape: str, motion: str, rng: np.random.Generator, num_frames: int,
            width: int, height: int) -> np.ndarray:
    """Render one video: uint8 (F, H, W, 3)."""
    side = min(width, height)
    # Keep the whole trajectory inside the central side x side square: that is what survives the centre crop.
    x_lo, y_lo = (width - side) / 2, (height - side) / 2
    radius = side * (0.18 if domain == "plain" else 0.24)
    travel = min(0.45 * side, side - 2 * radius)
    t = np.linspace(0.0, 1.0, num_frames)[:, None, None]  # (F, 1, 1)
    along = rng.uniform(radius, side - radius - travel)  # start of the trajectory along the motion axis
    across = rng.uniform(radius, side - radius)
    sign = -1.0 if motion in ("left", "up") else 1.0
    start = along + travel if sign < 0 else along
    pos = start + sign * travel * t  # (F, 1, 1)
    if motion in ("left", "right"):
        cx, cy = x_lo + pos, y_lo + across
    else:
        cx, cy = x_lo + across, y_lo + pos
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    dx, dy = xx[None] - cx, yy[None] - cy  # (F, H, W)
    if shape == "circle":
        inside = dx**2 + dy**2 <= radius**2
    elif shape == "square":
        inside = (np.abs(dx) <= 0.85 * radius) & (np.abs(dy) <= 0.85 * radius)
    elif shape == "triangle":  # apex up, base 2r wide
        depth = dy + radius
        inside = (depth >= 0) & (depth <= 2 * radius) & (np.abs(dx) <= depth / 2)
    else:  # cross
        arm = radius / 2.5
        inside = ((np.abs(dx) <= arm) & (np.abs(dy) <= radius)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= radius))

    rgb = np.asarray(COLOURS[colour], dtype=np.float64)
    if domain == "plain":
        background = np.full((num_frames, height, width, 3), 30.0)
    else:
        rgb = 0.75 * rgb + 0.25 * 255.0  # paler shade of the same hue
        phase = rng.integers(0, 12)
        stripes = ((xx + yy + phase) // 6) % 2  # (H, W) diagonal stripes
        background = np.broadcast_to((80.0 + 45.0 * stripes)[None, :, :, None], (num_frames, height, width, 3))
    video = np.where(inside[..., None], rgb, background)  # (F, H, W, 3)
    if domain == "textured":
        video = video + rng.normal(0.0, 10.0, size=(num_frames, height, width, 1))  # grey noise, hue-neutral
    return np.clip(np.rint(video), 0, 255).astype(np.uint8)


def _captions(domain: str, colour: str, shape: str, motion: str, k: int, rng: np.random.Generator) -> list[str]:
    templates = TEMPLATES[domain]
    order = rng.permutation(len(templates))
    # Distinct templates first; only when more captions than templates are asked for do templates repeat.
    chosen = [templates[int(order[j % len(templates)])] for j in range(k)]
    words = {"colour": colour, "shape": shape, "dir": motion, "to_dir": _TO_DIR[motion], "wards": _WARDS[motion]}
    return [template.format(**words) for template in chosen]


def _combinations(rng: np.random.Generator, n: int, pool: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    # Concatenated random permutations: coverage of the pool is as even as n allows.
    out: list[tuple[str, str, str]] = []
    while len(out) < n:
        out.extend(pool[int(j)] for j in rng.permutation(len(pool)))
    return out[:n]


def _fingerprint(params: dict, codec: str) -> str:
    key = json.dumps({"generator_version": GENERATOR_VERSION, "codec": codec, "params": params}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def _is_complete(folder: Path) -> bool:
    try:
        annotations = json.loads((folder / "annotations.json").read_text())
        return annotations["generator_version"] == GENERATOR_VERSION and all(
            (folder / video["file"]).is_file() for video in annotations["videos"]
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _generate(folder: Path, params: dict, codec: str) -> None:
    all_combos = list(itertools.product(COLOURS, SHAPES, MOTIONS))
    videos = []
    for d, domain in enumerate(DOMAINS):
        (folder / "videos" / domain).mkdir(parents=True)
        combo_rng = np.random.default_rng([params["seed"], d])
        train = _combinations(combo_rng, params["num_train_videos"], all_combos)
        # Test combinations are drawn only from those seen in training, so retrieval tests generalisation across
        # start positions / noise rather than across unseen attribute combinations.
        seen = sorted(set(train))
        test = _combinations(combo_rng, params["num_test_videos"], seen)
        for s, (split, combos) in enumerate(zip(SPLITS, (train, test))):
            for i, (colour, shape, motion) in enumerate(combos):
                rng = np.random.default_rng([params["seed"], d, s, i])  # per-video stream: order-independent
                video_id = f"{domain}-{split}-{i:04d}"
                rel = f"videos/{domain}/{video_id}.mp4"
                frames = _render(domain, colour, shape, motion, rng, params["frames_per_video"],
                                 params["frame_width"], params["frame_height"])
                _write_mp4(folder / rel, frames, params["fps"], codec)
                videos.append({
                    "video_id": video_id, "domain": domain, "split": split, "file": rel,
                    "captions": _captions(domain, colour, shape, motion, params["captions_per_video"], rng),
                    "attributes": {"colour": colour, "shape": shape, "motion": motion},
                })
    annotations = {"generator_version": GENERATOR_VERSION, "codec": codec, "params": params, "videos": videos}
    # Written last: a folder with a readable annotations.json has all its videos.
    (folder / "annotations.json").write_text(json.dumps(annotations, indent=1) + "\n")


def ensure_synthetic_dataset(cache_dir: str | Path, *, num_train_videos: int = 240, num_test_videos: int = 60,
                             captions_per_video: int = 2, frames_per_video: int = 16, frame_width: int = 80,
                             frame_height: int = 64, fps: int = 8, seed: int = 0) -> Path:
    """Generate (once) and return ``<cache_dir>/synthetic-<fingerprint>/``.

    The fingerprint hashes every argument but cache_dir, GENERATOR_VERSION and the codec. An existing complete
    folder is returned at once. Otherwise the dataset is written into a temporary sibling and renamed into place,
    so no half-written dataset is ever visible and concurrent generators are safe (the loser discards its copy).
    """
    if num_train_videos < 1 or num_test_videos < 0 or captions_per_video < 1 or fps < 1:
        raise ValueError("need num_train_videos >= 1, num_test_videos >= 0, captions_per_video >= 1, fps >= 1")
    if frames_per_video < 2:
        raise ValueError(f"frames_per_video must be >= 2 to show motion, got {frames_per_video}")
    if frame_width < 16 or frame_height < 16 or frame_width % 2 or frame_height % 2:
        raise ValueError(f"frame size must be even and >= 16 (yuv420p), got {frame_width}x{frame_height}")
    params = dict(num_train_videos=num_train_videos, num_test_videos=num_test_videos,
                  captions_per_video=captions_per_video, frames_per_video=frames_per_video,
                  frame_width=frame_width, frame_height=frame_height, fps=fps, seed=seed)
    codec = _pick_codec()
    cache_dir = Path(cache_dir)
    final = cache_dir / f"synthetic-{_fingerprint(params, codec)}"
    if _is_complete(final):
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    if final.exists():  # damaged by hand (our own writer never leaves it incomplete): move aside, regenerate
        say(f"calm_study: {final} is incomplete; regenerating it")
        trash = cache_dir / f".{final.name}.broken-{uuid.uuid4().hex}"
        try:
            os.rename(final, trash)
            shutil.rmtree(trash, ignore_errors=True)
        except FileNotFoundError:
            pass  # somebody else moved it first

    total = len(DOMAINS) * (num_train_videos + num_test_videos)
    # the path on a line of its own: the console stays within 120 columns for any path that fits in one line
    say(f"calm_study: generating synthetic dataset ({len(DOMAINS)} domains, {total} videos, {codec}) into\n"
        f"  {final} ...")
    start = time.perf_counter()
    tmp = cache_dir / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex}"
    try:
        tmp.mkdir()
        _generate(tmp, params, codec)
        try:
            os.rename(tmp, final)
        except OSError:
            # Lost the race: another process renamed its complete copy into place first.
            if not _is_complete(final):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    say(f"calm_study: synthetic dataset ready in {time.perf_counter() - start:.1f}s")  # where: said just before
    return final


def load_synthetic_annotations(dataset_dir: str | Path) -> dict:
    """The parsed annotations.json of a dataset folder made by ensure_synthetic_dataset."""
    return json.loads((Path(dataset_dir) / "annotations.json").read_text())


def load_synthetic_split(dataset_dir: str | Path, domain: str, split: str) -> list[VideoRecord]:
    """Records of one domain and split, in the stable order of annotations.json (video ids ascending)."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; valid domains: {', '.join(DOMAINS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    dataset_dir = Path(dataset_dir)
    return [
        VideoRecord(video_id=video["video_id"], path=dataset_dir / video["file"], captions=tuple(video["captions"]))
        for video in load_synthetic_annotations(dataset_dir)["videos"]
        if video["domain"] == domain and video["split"] == split
    ]


# ------------------------------------------------------------------------- the registry entry's two functions
# (calm_study/data/readers/__init__.py registers "synthetic" as Reader(read=read, generate=generate, ...)).


def generate(cfg: DataConfig) -> Path:
    """The dataset folder for a data config: generated on first use under data.cache_dir from data.synthetic's
    settings (deterministic, atomic), then reused."""
    s = cfg.synthetic
    return ensure_synthetic_dataset(Path(cfg.cache_dir).expanduser(), num_train_videos=s.num_train_videos,
                                    num_test_videos=s.num_test_videos, captions_per_video=s.captions_per_video,
                                    frames_per_video=s.frames_per_video, seed=s.seed)


def read(root: str | Path, split: str, videos_dir: str | None = None, *, domain: str) -> list[VideoRecord]:
    """The registry's reader: records of one domain and split of the folder ``generate`` returned. ``videos_dir`` is
    ignored: the videos always sit next to annotations.json."""
    return load_synthetic_split(root, domain, split)
