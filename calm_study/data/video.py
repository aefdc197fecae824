"""Video decoding (decord, or PyAV as a fallback) and CLIP-style frame preprocessing.

Frame sampling follows the T-MASS / X-Pool 'uniform' convention so that a model evaluated here sees the same frames
as the reference implementations: the clip is split into T equal segments and each segment's midpoint is taken.

Both decoders see a video the same way decord does: frame k is the k-th packet of the video stream in presentation
(pts) order, and its time is (pts - stream start_time) * time_base, rounded to float32 exactly as decord rounds it.
That is what makes the two decoders pick identical frames, windows included (pixel-identical on the MSR-VTT
sample). One known difference: decord applies a rotation stored in the file's display matrix (phone videos), the
PyAV path does not.
"""

from __future__ import annotations

import bisect
from pathlib import Path

import av
import decord
import numpy as np
import torch

from calm_study.data.records import DECODERS, VideoDecodeError

# OpenAI CLIP normalisation constants (identical to open_clip OPENAI_DATASET_MEAN / OPENAI_DATASET_STD).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# Version of the frame pipeline (which frames are sampled, how windows and padding work, resize/crop/rounding). The
# frame cache keys its entries on it: bump it whenever a change here alters the uint8 frames a clip yields.
SAMPLING_VERSION = 1
# Frame times are float32 (decord stores them so): a frame starting within 1 ms of a window edge counts as starting
# on it, so that "start=0.04" selects the frame at 0.04 s whichever way its float32 time rounded.
WINDOW_TOLERANCE_S = 1e-3
# PyAV seeks forward to a keyframe only when that skips more than this many frames: a seek flushes the decoder,
# whose B-frame delay is then decoded again, so hopping to a keyframe a frame or two ahead costs more than it saves.
_SEEK_MIN_SKIP = 4


def sample_frame_indices(num_video_frames: int, num_samples: int) -> list[int]:
    """Indices of ``num_samples`` uniformly spaced frames of a ``num_video_frames``-frame video.

    Segment i is [a_i, a_{i+1} - 1] with a = linspace(0, n, T + 1).astype(int) and its midpoint (a_i + a_{i+1} - 1) // 2
    is taken. The float linspace (rather than exact integer arithmetic) is deliberate: it reproduces the reference
    code bit for bit, including its rare rounding quirks for odd T. Videos shorter than ``num_samples`` return every
    frame once (0..n-1); the caller pads (see ``read_video``).
    """
    if num_video_frames < 1:
        raise ValueError(f"num_video_frames must be >= 1 (the video has no frames), got {num_video_frames}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if num_video_frames < num_samples:
        return list(range(num_video_frames))
    bounds = np.linspace(0, num_video_frames, num_samples + 1).astype(int)
    return [int((a + b - 1) // 2) for a, b in zip(bounds[:-1], bounds[1:])]


def _window(times: np.ndarray, start: float | None, end: float | None) -> tuple[int, int]:
    """[lo, hi): the frames (times ascending, seconds) that start inside [start, end)."""
    lo = 0 if start is None else int(np.searchsorted(times, start - WINDOW_TOLERANCE_S, side="left"))
    hi = len(times) if end is None else int(np.searchsorted(times, end - WINDOW_TOLERANCE_S, side="left"))
    return lo, max(lo, hi)


def _window_indices(num_video_frames: int, times: np.ndarray | None, num_frames: int, start: float | None,
                    end: float | None, path: Path) -> list[int]:
    if num_video_frames < 1:
        raise VideoDecodeError(path, "the video stream has no frames")
    lo, hi = (0, num_video_frames) if times is None else _window(times, start, end)
    if hi <= lo:
        span = f"{float(times[0]):.3f}-{float(times[-1]):.3f}s" if times is not None and len(times) else "?"
        raise VideoDecodeError(path, f"no frame starts in the window [{start}, {end}) s (frames start at {span})")
    return [lo + k for k in sample_frame_indices(hi - lo, num_frames)]


def _to_numpy(batch: object) -> np.ndarray:
    # decord returns its own NDArray unless somebody called decord.bridge.set_bridge(...) process-wide.
    if isinstance(batch, torch.Tensor):
        return batch.numpy()
    if isinstance(batch, np.ndarray):
        return batch
    return batch.asnumpy()  # type: ignore[attr-defined]


def _decord_reader(path: Path) -> decord.VideoReader:
    # One decoding thread: loaders run many of these in parallel DataLoader workers, and decord's default
    # (one thread per core in every worker) oversubscribes the CPU.
    return decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)


def _decord_times(reader: decord.VideoReader, n: int, start: float | None, end: float | None) -> np.ndarray | None:
    if n < 1 or (start is None and end is None):
        return None  # no window: frame times are not needed
    return _to_numpy(reader.get_frame_timestamp(np.arange(n)))[:, 0]  # (n,) float32 start times, ascending


def _decode_decord(path: Path, num_frames: int, start: float | None, end: float | None) -> np.ndarray:
    reader = _decord_reader(path)
    n = len(reader)
    indices = _window_indices(n, _decord_times(reader, n, start, end), num_frames, start, end, path)
    return _to_numpy(reader.get_batch(indices))  # (t, H, W, 3), t = min(window frames, T)


class _PyAVIndex:
    """decord's view of a stream from its packets alone (no decoding): sorted pts, their times, keyframe pts."""

    def __init__(self, container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> None:
        pts, keys = [], []
        for packet in container.demux(stream):
            p = packet.pts if packet.pts is not None else packet.dts
            if p is None:  # the empty packet PyAV yields at end of file to flush the decoder
                continue
            pts.append(p)
            if packet.is_keyframe:
                keys.append(p)
        self.pts = sorted(pts)
        self.keys = sorted(keys)
        origin = stream.start_time if stream.start_time is not None else (self.pts[0] if self.pts else 0)
        tb = stream.time_base
        factor = float(tb.numerator) / float(tb.denominator) if tb else 0.0
        # decord: (float32(pts) - float32(start_time)) in float32, times the double time base, stored as float32.
        rel = np.asarray(self.pts, dtype=np.float32) - np.float32(origin)
        self.times = (rel.astype(np.float64) * factor).astype(np.float32)

    def position(self, pts: int) -> int:
        """Frame index (presentation order) of ``pts``, or of the first frame after it."""
        return bisect.bisect_left(self.pts, pts)

    def keyframe_before(self, pts: int) -> int | None:
        i = bisect.bisect_right(self.keys, pts)
        return self.keys[i - 1] if i else None


def _decode_targets(container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                    index: _PyAVIndex, targets: list[int], seek: bool) -> list[np.ndarray] | None:
    """RGB frames for the ascending pts ``targets``, decoding forward from the current position (the start of a fresh
    container). With ``seek``, first jump to the keyframe before the first target, and again whenever a keyframe lies
    between the last decoded frame and the next target. Returns None when a seek lands past its target (the caller
    retries without seeking)."""
    out: list[np.ndarray] = []
    while len(out) < len(targets):
        if seek:  # (re-entering this loop always means a seek: see the break below)
            key = index.keyframe_before(targets[len(out)])
            container.seek(key if key is not None else index.pts[0], stream=stream, backward=True)  # flushes too
        first, previous = True, None
        for frame in container.decode(stream):
            p = frame.pts if frame.pts is not None else frame.dts
            if p is None:
                continue
            if first and p > targets[len(out)]:
                return None
            first = False
            while len(out) < len(targets) and p >= targets[len(out)]:
                # A packet that yields no frame (rare damage) gets the frame shown before it, as decord does.
                use = frame if p == targets[len(out)] or previous is None else previous
                out.append(use.to_ndarray(format="rgb24"))  # (H, W, 3)
            if len(out) == len(targets):
                return out
            nxt = index.keyframe_before(targets[len(out)]) if seek else None
            if nxt is not None and index.position(nxt) - index.position(p) > _SEEK_MIN_SKIP:
                break  # a keyframe well ahead of here comes before the next target: seeking beats decoding on
            previous = frame
        else:  # end of stream before the last targets: repeat the last frame shown
            if previous is None and not out:
                raise RuntimeError("the stream decodes to no frames")
            last = previous.to_ndarray(format="rgb24") if previous is not None else out[-1]
            out.extend(last for _ in range(len(targets) - len(out)))
    return out


def _video_stream(container: av.container.InputContainer, path: Path) -> av.video.stream.VideoStream:
    # FFmpeg's "best" video stream (av_find_best_stream), the one decord reads.
    stream = container.streams.best("video")
    if stream is None:
        raise VideoDecodeError(path, "no video stream")
    stream.codec_context.thread_count = 1  # same reason as decord's num_threads=1
    return stream


def _decode_pyav(path: Path, num_frames: int, start: float | None, end: float | None) -> np.ndarray:
    with av.open(str(path)) as container:
        stream = _video_stream(container, path)
        index = _PyAVIndex(container, stream)
        times = index.times if start is not None or end is not None else None
        targets = [index.pts[k] for k in _window_indices(len(index.pts), times, num_frames, start, end, path)]
        frames = _decode_targets(container, stream, index, targets, seek=True)
    if frames is None:  # the demuxer's seek overshot: decode from the beginning on a fresh container instead
        with av.open(str(path)) as container:
            frames = _decode_targets(container, _video_stream(container, path), index, targets, seek=False)
    return np.stack(frames)  # (t, H, W, 3)


def _check_args(num_frames: int, decoder: str) -> None:
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; valid decoders: {', '.join(DECODERS)}")


def read_video(path: str | Path, num_frames: int, *, start: float | None = None, end: float | None = None,
               decoder: str = "decord") -> tuple[torch.Tensor, torch.Tensor]:
    """Decode ``num_frames`` frames sampled uniformly from the frames of ``path`` that start in [start, end) s.

    Returns (frames uint8 (T, H, W, 3), mask bool (T,)) with T == num_frames. A clip with fewer than T frames is
    padded with copies of its last frame, and mask is False at the padded positions. ``decoder`` "decord" (default)
    or "pyav" give the same frames. Missing or undecodable files and windows without a frame raise
    VideoDecodeError; a zero tensor is never returned silently.
    """
    _check_args(num_frames, decoder)
    path = Path(path)
    if not path.is_file():
        raise VideoDecodeError(path, "file not found")
    try:
        if decoder == "decord":
            decoded = _decode_decord(path, num_frames, start, end)
        else:
            decoded = _decode_pyav(path, num_frames, start, end)
    except VideoDecodeError:
        raise
    except (RuntimeError, decord.DECORDError, av.error.FFmpegError, ValueError, IndexError, OSError) as exc:
        raise VideoDecodeError(path, f"{type(exc).__name__}: {str(exc).strip() or 'decoder error'}") from exc
    if decoded.ndim != 4 or decoded.shape[0] > num_frames or decoded.shape[-1] != 3:
        raise VideoDecodeError(path, f"decoder returned an array of shape {decoded.shape} for {num_frames} frames")

    frames = torch.from_numpy(np.ascontiguousarray(decoded, dtype=np.uint8))
    mask = torch.ones(num_frames, dtype=torch.bool)
    num_real = frames.shape[0]
    if num_real < num_frames:
        pad = frames[-1:].expand(num_frames - num_real, -1, -1, -1)
        frames = torch.cat([frames, pad], dim=0)  # (T, H, W, 3)
        mask[num_real:] = False
    return frames, mask


def probe_video(path: str | Path, *, decoder: str = "decord", start: float | None = None,
                end: float | None = None) -> str | None:
    """Cheap readability check: None if the file opens, has >= 1 frame (in [start, end) when given) and its first
    frame decodes; otherwise the reason. Reads the packet index but decodes one frame, not the whole clip."""
    _check_args(1, decoder)
    path = Path(path)
    if not path.is_file():
        return "file not found"
    try:
        if path.stat().st_size == 0:
            return "empty file (0 bytes)"
        if decoder == "decord":
            reader = _decord_reader(path)
            n = len(reader)
            _window_indices(n, _decord_times(reader, n, start, end), 1, start, end, path)
            _to_numpy(reader[0])
        else:
            with av.open(str(path)) as container:
                stream = _video_stream(container, path)
                index = _PyAVIndex(container, stream)
                _window_indices(len(index.pts), index.times, 1, start, end, path)
                container.seek(0, stream=stream, backward=True)
                if next(iter(container.decode(stream)), None) is None:
                    return "the stream decodes to no frames"
    except VideoDecodeError as exc:
        return exc.reason
    except (RuntimeError, decord.DECORDError, av.error.FFmpegError, ValueError, IndexError, OSError) as exc:
        return f"cannot open: {type(exc).__name__}: {str(exc).strip() or 'decoder error'}"
    return None


def resize_crop_frames(frames: torch.Tensor, image_size: int) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> uint8 (T, S, S, 3): shorter side resized to S (bicubic, antialiased, aspect ratio
    kept), centre crop S x S, rounded back to uint8 as CLIP's own PIL transform does. This is what the frame cache
    stores, so cached and freshly decoded clips give bit-identical model inputs."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames of shape (T, H, W, 3), got {tuple(frames.shape)}")
    if frames.dtype != torch.uint8:
        raise ValueError(f"expected uint8 frames, got {frames.dtype}")
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    # torchvision (about 1.5 s to import) only where frames are resized: a trial on cached frames or features never is
    import torchvision.transforms.v2.functional as TF
    from torchvision.transforms import InterpolationMode

    x = frames.permute(0, 3, 1, 2).to(torch.float32)  # (T, 3, H, W) in [0, 255]
    x = TF.resize(x, [image_size], interpolation=InterpolationMode.BICUBIC, antialias=True)  # shorter side == S
    x = TF.center_crop(x, [image_size, image_size])  # (T, 3, S, S)
    # Bicubic overshoots; PIL saturates at the uint8 range, so clamp the same way before rounding.
    x = x.round_().clamp_(0.0, 255.0).to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous()  # (T, S, S, 3)


def normalise_frames(frames: torch.Tensor, mean: tuple[float, ...] = CLIP_MEAN,
                     std: tuple[float, ...] = CLIP_STD) -> torch.Tensor:
    """uint8 (T, S, S, 3) -> float32 (T, 3, S, S): scaled to [0, 1], then (x - mean) / std per channel."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
        raise ValueError(f"expected uint8 frames of shape (T, S, S, 3), got {frames.dtype} {tuple(frames.shape)}")
    t, h, w, _ = frames.shape
    # One transposing copy into a contiguous buffer, then in-place arithmetic: 4x faster than permute + to + (x-m)/s,
    # which matters on the cached path, where this is all the work left.
    x = torch.empty((t, 3, h, w), dtype=torch.float32)
    x.copy_(frames.permute(0, 3, 1, 2))  # (T, 3, S, S)
    m = torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1)
    return x.div_(255.0).sub_(m).div_(s)


def preprocess_frames(frames: torch.Tensor, image_size: int, mean: tuple[float, ...] = CLIP_MEAN,
                      std: tuple[float, ...] = CLIP_STD) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float32 (T, 3, S, S), normalised: ``resize_crop_frames`` then ``normalise_frames``.

    Matches CLIP's own image transform (resize shorter side, centre crop, uint8, normalise with the backbone's mean /
    std, OpenAI CLIP's by default) without a per-frame PIL loop.
    """
    return normalise_frames(resize_crop_frames(frames, image_size), mean, std)
