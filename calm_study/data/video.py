"""Video decoding (decord) and CLIP-style frame preprocessing.

Frame sampling follows the T-MASS / X-Pool 'uniform' convention so that a model evaluated here sees the same frames
as the reference implementations: the video is split into T equal segments and each segment's midpoint is taken.
"""

from __future__ import annotations

from pathlib import Path

import decord
import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

# OpenAI CLIP normalisation constants (identical to open_clip OPENAI_DATASET_MEAN / OPENAI_DATASET_STD).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class VideoDecodeError(RuntimeError):
    """A video file is missing or cannot be decoded. The message names the file and the reason."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot decode video {self.path}: {reason}")

    def __reduce__(self):  # keep the exception picklable across DataLoader worker processes
        return (type(self), (self.path, self.reason))


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


def _to_numpy(batch: object) -> np.ndarray:
    # decord returns its own NDArray unless somebody called decord.bridge.set_bridge(...) process-wide.
    if isinstance(batch, torch.Tensor):
        return batch.numpy()
    if isinstance(batch, np.ndarray):
        return batch
    return batch.asnumpy()  # type: ignore[attr-defined]


def read_video(path: str | Path, num_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode ``num_frames`` uniformly sampled frames of ``path``.

    Returns (frames uint8 (T, H, W, 3), mask bool (T,)) with T == num_frames. A video with fewer than T frames is
    padded with copies of its last frame, and mask is False at the padded positions. Missing or undecodable files
    raise VideoDecodeError; a zero tensor is never returned silently.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    path = Path(path)
    if not path.is_file():
        raise VideoDecodeError(path, "file not found")
    try:
        # One decoding thread: loaders run many of these in parallel DataLoader workers, and decord's default
        # (one thread per core in every worker) oversubscribes the CPU.
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
        num_video_frames = len(reader)
        if num_video_frames < 1:
            raise VideoDecodeError(path, "the video stream has no frames")
        indices = sample_frame_indices(num_video_frames, num_frames)
        decoded = _to_numpy(reader.get_batch(indices))  # (t, H, W, 3), t = min(n, T)
    except VideoDecodeError:
        raise
    except (RuntimeError, decord.DECORDError, ValueError, IndexError) as exc:
        raise VideoDecodeError(path, f"{type(exc).__name__}: {str(exc).strip() or 'decoder error'}") from exc
    if decoded.ndim != 4 or decoded.shape[0] != len(indices) or decoded.shape[-1] != 3:
        raise VideoDecodeError(path, f"decoder returned an array of shape {decoded.shape} for {len(indices)} frames")

    frames = torch.from_numpy(np.ascontiguousarray(decoded, dtype=np.uint8))
    mask = torch.ones(num_frames, dtype=torch.bool)
    num_real = frames.shape[0]
    if num_real < num_frames:
        pad = frames[-1:].expand(num_frames - num_real, -1, -1, -1)
        frames = torch.cat([frames, pad], dim=0)  # (T, H, W, 3)
        mask[num_real:] = False
    return frames, mask


def preprocess_frames(frames: torch.Tensor, image_size: int, mean: tuple[float, ...] = CLIP_MEAN,
                      std: tuple[float, ...] = CLIP_STD) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float32 (T, 3, S, S), normalised.

    Resize so that the shorter side is S (bicubic, antialiased, aspect ratio kept), centre-crop S x S, scale to
    [0, 1] and normalise with the backbone's mean / std (OpenAI CLIP's by default), matching CLIP's own image
    transform without a per-frame PIL loop.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames of shape (T, H, W, 3), got {tuple(frames.shape)}")
    if frames.dtype != torch.uint8:
        raise ValueError(f"expected uint8 frames, got {frames.dtype}")
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    x = frames.permute(0, 3, 1, 2).to(torch.float32).div_(255.0)  # (T, 3, H, W) in [0, 1]
    x = TF.resize(x, [image_size], interpolation=InterpolationMode.BICUBIC, antialias=True)  # shorter side == S
    # Bicubic overshoots; CLIP's PIL pipeline saturates at the uint8 range, so clamp the same way.
    x = x.clamp_(0.0, 1.0)
    x = TF.center_crop(x, [image_size, image_size])  # (T, 3, S, S)
    m = torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1)
    return ((x - m) / s).contiguous()
