"""Frame sampling, decoding and preprocessing on real mp4 files (written here with PyAV, plus real MSR-VTT clips)."""

from __future__ import annotations

import json
import pickle
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from calm_study.data.video import (
    CLIP_MEAN,
    CLIP_STD,
    VideoDecodeError,
    preprocess_frames,
    read_video,
    sample_frame_indices,
)

MSRVTT_SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "msrvtt-sample"

# Far-apart colours so that a frame's identity survives lossy compression.
PALETTE = [(230, 20, 20), (20, 220, 20), (20, 20, 230), (235, 235, 20), (20, 230, 230), (230, 20, 230),
           (250, 250, 250), (10, 10, 10), (128, 128, 128), (240, 130, 20)]


def write_mp4(path: Path, frames: np.ndarray, fps: int = 10) -> Path:
    """frames: uint8 (F, H, W, 3). Written independently of the package's own writer."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = 8_000_000
        for k, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = k, Fraction(1, fps)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def solid_video(colours: list[tuple[int, int, int]], height: int = 48, width: int = 64) -> np.ndarray:
    frames = np.zeros((len(colours), height, width, 3), dtype=np.uint8)
    for k, colour in enumerate(colours):
        frames[k] = colour
    return frames


# ---------------------------------------------------------------- sample_frame_indices


def oracle_indices(n: int, t: int) -> list[int]:
    """Slow, literal version of the T-MASS rule: segment bounds i * (n / t) truncated, midpoint of [a, b - 1]."""
    if n < t:
        return list(range(n))
    out = []
    for i in range(t):
        a = int(i * (n / t))
        b = n if i == t - 1 else int((i + 1) * (n / t))
        segment = list(range(a, b))
        out.append((segment[0] + segment[-1]) // 2)
    return out


@pytest.mark.parametrize("t", [1, 2, 3, 4, 5, 7, 8, 11, 12, 16, 22, 32, 64])
def test_sample_frame_indices_matches_oracle(t: int) -> None:
    for n in list(range(1, 200)) + [293, 299, 300, 301, 1000, 4321]:
        got = sample_frame_indices(n, t)
        assert got == oracle_indices(n, t), (n, t)
        assert all(isinstance(i, int) for i in got)
        assert len(got) == min(n, t)
        assert all(0 <= i < n for i in got)
        assert got == sorted(set(got))  # strictly increasing: no frame twice


def test_sample_frame_indices_special_cases() -> None:
    assert sample_frame_indices(1, 1) == [0]
    assert sample_frame_indices(1, 12) == [0]
    assert sample_frame_indices(3, 8) == [0, 1, 2]
    assert sample_frame_indices(12, 12) == list(range(12))
    assert sample_frame_indices(10, 5) == [0, 2, 4, 6, 8]
    assert sample_frame_indices(100, 1) == [49]


@pytest.mark.parametrize("t", [8, 12, 16, 32])
def test_sample_frame_indices_is_exact_for_common_t(t: int) -> None:
    # The float linspace rule can truncate x.0 to x-1 for some odd T; for the usual T it equals exact arithmetic.
    for n in range(t, 3000):
        exact = []
        for i in range(t):
            a, b = Fraction(i * n, t).__floor__(), Fraction((i + 1) * n, t).__floor__()
            exact.append((a + b - 1) // 2)
        assert sample_frame_indices(n, t) == exact, n


@pytest.mark.parametrize("n,t", [(0, 4), (-1, 4), (5, 0), (5, -2)])
def test_sample_frame_indices_rejects_bad_sizes(n: int, t: int) -> None:
    with pytest.raises(ValueError, match="must be >= 1"):
        sample_frame_indices(n, t)


# ---------------------------------------------------------------- read_video


def test_read_video_returns_the_sampled_frames(tmp_path: Path) -> None:
    path = write_mp4(tmp_path / "ten.mp4", solid_video(PALETTE))
    frames, mask = read_video(path, 5)
    assert frames.shape == (5, 48, 64, 3) and frames.dtype == torch.uint8
    assert mask.dtype == torch.bool and mask.tolist() == [True] * 5
    for j, k in enumerate(sample_frame_indices(10, 5)):  # [0, 2, 4, 6, 8]
        mean = frames[j].reshape(-1, 3).float().mean(0)
        assert torch.allclose(mean, torch.tensor(PALETTE[k], dtype=torch.float32), atol=12), (j, k, mean)


def test_read_video_all_frames_when_t_equals_n(tmp_path: Path) -> None:
    path = write_mp4(tmp_path / "ten.mp4", solid_video(PALETTE))
    frames, mask = read_video(str(path), 10)  # str paths work too
    assert mask.all()
    means = frames.reshape(10, -1, 3).float().mean(1)  # (10, 3)
    assert torch.allclose(means, torch.tensor(PALETTE, dtype=torch.float32), atol=12)


def test_read_video_pads_short_videos_with_last_frame(tmp_path: Path) -> None:
    path = write_mp4(tmp_path / "three.mp4", solid_video(PALETTE[:3], height=32, width=40))
    frames, mask = read_video(path, 8)
    assert frames.shape == (8, 32, 40, 3)
    assert mask.tolist() == [True] * 3 + [False] * 5
    for k in range(3, 8):
        assert torch.equal(frames[k], frames[2])
    for k in range(3):
        mean = frames[k].reshape(-1, 3).float().mean(0)
        assert torch.allclose(mean, torch.tensor(PALETTE[k], dtype=torch.float32), atol=12)


def test_read_video_single_frame_video(tmp_path: Path) -> None:
    path = write_mp4(tmp_path / "one.mp4", solid_video(PALETTE[:1]))
    frames, mask = read_video(path, 4)
    assert mask.tolist() == [True, False, False, False]
    assert all(torch.equal(frames[k], frames[0]) for k in range(4))


def test_read_video_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.mp4"
    with pytest.raises(VideoDecodeError, match="not found") as info:
        read_video(missing, 4)
    assert str(missing) in str(info.value)
    assert info.value.path == str(missing)


def test_read_video_corrupt_file(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(VideoDecodeError) as info:
        read_video(corrupt, 4)
    assert str(corrupt) in str(info.value)
    assert info.value.reason  # the reason is carried, not just the path


def test_video_decode_error_survives_pickling() -> None:
    # DataLoader workers send exceptions to the main process by pickling them.
    err = pickle.loads(pickle.dumps(VideoDecodeError("/x/y.mp4", "boom")))
    assert isinstance(err, VideoDecodeError) and err.path == "/x/y.mp4" and "boom" in str(err)


def test_read_video_rejects_bad_num_frames(tmp_path: Path) -> None:
    path = write_mp4(tmp_path / "three.mp4", solid_video(PALETTE[:3]))
    with pytest.raises(ValueError):
        read_video(path, 0)


# ---------------------------------------------------------------- preprocess_frames


def normalised(rgb: tuple[int, int, int]) -> torch.Tensor:
    return torch.tensor([(c / 255.0 - m) / s for c, m, s in zip(rgb, CLIP_MEAN, CLIP_STD)])


def test_preprocess_shape_dtype_and_known_pixel() -> None:
    frames = torch.empty(3, 50, 70, 3, dtype=torch.uint8)
    frames[:] = torch.tensor([255, 0, 128], dtype=torch.uint8)
    out = preprocess_frames(frames, 24)
    assert out.shape == (3, 3, 24, 24) and out.dtype == torch.float32
    # A constant image stays constant under resizing; only the normalisation changes its values.
    expected = normalised((255, 0, 128)).view(1, 3, 1, 1).expand_as(out)
    assert torch.allclose(out, expected, atol=1e-4)
    assert abs(out[0, 0, 0, 0].item() - (1.0 - 0.48145466) / 0.26862954) < 1e-4


@pytest.mark.parametrize("wide", [True, False])
def test_preprocess_crops_the_centre(wide: bool) -> None:
    # Long side 96, short side 32: the centre 32 of the long side is green, the rest red, with 8 px margins.
    frame = torch.empty(32, 96, 3, dtype=torch.uint8)
    frame[:] = torch.tensor([220, 20, 20], dtype=torch.uint8)
    frame[:, 24:72] = torch.tensor([20, 220, 20], dtype=torch.uint8)
    if not wide:
        frame = frame.transpose(0, 1).contiguous()  # (96, 32, 3): tall
    out = preprocess_frames(frame[None], 16)  # (1, 3, 16, 16)
    assert out.shape == (1, 3, 16, 16)
    green = normalised((20, 220, 20)).view(3, 1, 1)
    assert (out[0] - green).abs().max().item() < 0.02


def test_preprocess_keeps_aspect_ratio() -> None:
    # Vertical gradient across a wide frame: resizing must not squash it, so rows stay constant and ordered.
    rows = torch.linspace(0, 255, 40).round().to(torch.uint8)
    frame = rows.view(40, 1, 1).expand(40, 120, 3).contiguous()
    out = preprocess_frames(frame[None], 20)[0, 0]  # (20, 20)
    assert torch.allclose(out, out[:, :1].expand_as(out), atol=1e-5)
    assert torch.all(out[1:, 0] > out[:-1, 0])


def test_preprocess_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        preprocess_frames(torch.zeros(2, 8, 8, 3), 4)  # float, not uint8
    with pytest.raises(ValueError):
        preprocess_frames(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), 4)  # channels-first


# ---------------------------------------------------------------- real MSR-VTT clips


def test_msrvtt_sample_clips_decode_and_preprocess() -> None:
    if not (MSRVTT_SAMPLE / "video_info.json").is_file():
        pytest.skip(f"MSR-VTT sample not found at {MSRVTT_SAMPLE}")
    info = json.loads((MSRVTT_SAMPLE / "video_info.json").read_text())
    assert len(info) == 25
    num_padded_at_32 = 0
    for clip in info:
        path = MSRVTT_SAMPLE / "videos" / clip["file"]
        width, height = (int(v) for v in clip["size"].split("x"))
        frames, mask = read_video(path, 12)
        assert frames.shape == (12, height, width, 3) and frames.dtype == torch.uint8, clip["file"]
        assert int(mask.sum()) == min(clip["decoded_frames"], 12), clip["file"]
        assert frames.float().std() > 5, clip["file"]  # real content, not a blank tensor
        out = preprocess_frames(frames, 224)
        assert out.shape == (12, 3, 224, 224) and torch.isfinite(out).all(), clip["file"]
        # Every sample clip has >= 21 frames, so T=12 never pads; T=32 pads the 1-2 fps clips.
        frames32, mask32 = read_video(path, 32)
        real = min(clip["decoded_frames"], 32)
        assert mask32.tolist() == [True] * real + [False] * (32 - real), clip["file"]
        assert all(torch.equal(frames32[k], frames32[real - 1]) for k in range(real, 32))
        num_padded_at_32 += real < 32
    assert num_padded_at_32 == sum(clip["decoded_frames"] < 32 for clip in info) > 0
