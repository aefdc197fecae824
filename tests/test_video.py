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
    DECODERS,
    VideoDecodeError,
    normalise_frames,
    preprocess_frames,
    probe_video,
    read_video,
    resize_crop_frames,
    sample_frame_indices,
)

MSRVTT_SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "msrvtt-sample"

# Far-apart colours so that a frame's identity survives lossy compression.
PALETTE = [(230, 20, 20), (20, 220, 20), (20, 20, 230), (235, 235, 20), (20, 230, 230), (230, 20, 230),
           (250, 250, 250), (10, 10, 10), (128, 128, 128), (240, 130, 20)]


def write_mp4(path: Path, frames: np.ndarray, fps: int = 10, codec: str = "mpeg4", options: dict | None = None
              ) -> Path:
    """frames: uint8 (F, H, W, 3). Written independently of the package's own writer."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        if options:
            stream.options = options
        else:
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


@pytest.mark.parametrize("decoder", DECODERS)
def test_read_video_returns_the_sampled_frames(tmp_path: Path, decoder: str) -> None:
    path = write_mp4(tmp_path / "ten.mp4", solid_video(PALETTE))
    frames, mask = read_video(path, 5, decoder=decoder)
    assert frames.shape == (5, 48, 64, 3) and frames.dtype == torch.uint8
    assert mask.dtype == torch.bool and mask.tolist() == [True] * 5
    for j, k in enumerate(sample_frame_indices(10, 5)):  # [0, 2, 4, 6, 8]
        mean = frames[j].reshape(-1, 3).float().mean(0)
        assert torch.allclose(mean, torch.tensor(PALETTE[k], dtype=torch.float32), atol=12), (j, k, mean)


@pytest.mark.parametrize("decoder", DECODERS)
def test_read_video_all_frames_when_t_equals_n(tmp_path: Path, decoder: str) -> None:
    path = write_mp4(tmp_path / "ten.mp4", solid_video(PALETTE))
    frames, mask = read_video(str(path), 10, decoder=decoder)  # str paths work too
    assert mask.all()
    means = frames.reshape(10, -1, 3).float().mean(1)  # (10, 3)
    assert torch.allclose(means, torch.tensor(PALETTE, dtype=torch.float32), atol=12)


@pytest.mark.parametrize("decoder", DECODERS)
def test_read_video_pads_short_videos_with_last_frame(tmp_path: Path, decoder: str) -> None:
    path = write_mp4(tmp_path / "three.mp4", solid_video(PALETTE[:3], height=32, width=40))
    frames, mask = read_video(path, 8, decoder=decoder)
    assert frames.shape == (8, 32, 40, 3)
    assert mask.tolist() == [True] * 3 + [False] * 5
    for k in range(3, 8):
        assert torch.equal(frames[k], frames[2])
    for k in range(3):
        mean = frames[k].reshape(-1, 3).float().mean(0)
        assert torch.allclose(mean, torch.tensor(PALETTE[k], dtype=torch.float32), atol=12)


@pytest.mark.parametrize("decoder", DECODERS)
def test_read_video_single_frame_video(tmp_path: Path, decoder: str) -> None:
    path = write_mp4(tmp_path / "one.mp4", solid_video(PALETTE[:1]))
    frames, mask = read_video(path, 4, decoder=decoder)
    assert mask.tolist() == [True, False, False, False]
    assert all(torch.equal(frames[k], frames[0]) for k in range(4))


@pytest.mark.parametrize("decoder", DECODERS)
def test_read_video_missing_file(tmp_path: Path, decoder: str) -> None:
    missing = tmp_path / "nope.mp4"
    with pytest.raises(VideoDecodeError, match="not found") as info:
        read_video(missing, 4, decoder=decoder)
    assert str(missing) in str(info.value)
    assert info.value.path == str(missing)


@pytest.mark.parametrize("decoder", DECODERS)
def test_read_video_corrupt_file(tmp_path: Path, decoder: str) -> None:
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(VideoDecodeError) as info:
        read_video(corrupt, 4, decoder=decoder)
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


# ---------------------------------------------------------------- time windows (both decoders)


def frame_colours(frames: torch.Tensor) -> list[int]:
    """Index into PALETTE of each frame's mean colour (the nearest one; lossy coding moves colours a little)."""
    means = frames.reshape(frames.shape[0], -1, 3).float().mean(1)  # (T, 3)
    return torch.cdist(means, torch.tensor(PALETTE, dtype=torch.float32)).argmin(1).tolist()


@pytest.fixture
def ten_colours(tmp_path: Path) -> Path:
    # 10 fps: frame k shows PALETTE[k] during [k / 10, (k + 1) / 10) s.
    return write_mp4(tmp_path / "ten.mp4", solid_video(PALETTE), fps=10)


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("start,end,t,expected", [
    (0.3, 0.7, 4, [3, 4, 5, 6]),  # a frame starting exactly on `start` is in, one starting on `end` is out
    (0.3, 0.7, 2, [3, 5]),  # uniform sampling over the 4 window frames: segment midpoints 0 and 2
    (0.25, 0.75, 4, [3, 4, 5, 6]),  # frames are selected by their start time only
    (None, 0.3, 3, [0, 1, 2]),
    (0.6, None, 2, [6, 8]),  # 4 frames (6..9), midpoints 0 and 2
    (-5.0, 100.0, 5, [0, 2, 4, 6, 8]),  # a window wider than the video is the whole video
])
def test_window_selects_frames_inside_it(ten_colours: Path, decoder: str, start, end, t: int,
                                         expected: list[int]) -> None:
    frames, mask = read_video(ten_colours, t, start=start, end=end, decoder=decoder)
    assert mask.all() and frames.shape[0] == t
    assert frame_colours(frames) == expected


@pytest.mark.parametrize("decoder", DECODERS)
def test_window_shorter_than_t_is_padded(ten_colours: Path, decoder: str) -> None:
    frames, mask = read_video(ten_colours, 6, start=0.2, end=0.5, decoder=decoder)
    assert mask.tolist() == [True] * 3 + [False] * 3
    assert frame_colours(frames) == [2, 3, 4, 4, 4, 4]
    assert all(torch.equal(frames[k], frames[2]) for k in range(3, 6))


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("start,end", [(0.33, 0.38), (1.5, None), (0.5, 0.5), (0.7, 0.3)])
def test_empty_window_raises(ten_colours: Path, decoder: str, start, end) -> None:
    with pytest.raises(VideoDecodeError, match="no frame") as info:
        read_video(ten_colours, 4, start=start, end=end, decoder=decoder)
    assert info.value.path == str(ten_colours)


def test_unknown_decoder(ten_colours: Path) -> None:
    with pytest.raises(ValueError, match="decoder"):
        read_video(ten_colours, 4, decoder="opencv")
    with pytest.raises(ValueError, match="decoder"):
        probe_video(ten_colours, decoder="opencv")


# ---------------------------------------------------------------- decord and PyAV agree


def write_h264(path: Path, num_frames: int = 75, fps: int = 25, gop: int = 8) -> Path:
    """A harder case than write_mp4: H.264 with B-frames (pts != dts) and a keyframe every `gop` frames, so PyAV
    seeks between keyframes. Every frame differs (noise plus a moving bar)."""
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (num_frames, 48, 64, 3), dtype=np.uint8) // 4 + 60  # (F, H, W, 3)
    for k in range(num_frames):
        frames[k, :, (k * 3) % 60:(k * 3) % 60 + 4] = PALETTE[k % len(PALETTE)]
    return write_mp4(path, frames, fps, "libx264", {"crf": "18", "preset": "veryfast", "x264-params":
                                                    f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=2:b-adapt=0"})


def assert_decoders_agree(path: Path, t: int, start=None, end=None) -> None:
    a, mask_a = read_video(path, t, start=start, end=end, decoder="decord")
    b, mask_b = read_video(path, t, start=start, end=end, decoder="pyav")
    assert torch.equal(mask_a, mask_b), (path.name, t, start, end)
    assert a.shape == b.shape
    diff = (a.int() - b.int()).abs()
    # Both wrap FFmpeg (different builds): decoded pixels may differ by rounding, never by a whole frame.
    assert diff.float().mean() < 0.5 and diff.max() <= 8, (path.name, t, start, end, diff.max())


def test_decoders_agree_on_written_videos(tmp_path: Path) -> None:
    h264 = write_h264(tmp_path / "h264.mp4")
    with av.open(str(h264)) as container:  # the file really has B-frames and several keyframes
        packets = [p for p in container.demux(video=0) if p.size]
        assert any(p.pts != p.dts for p in packets) and sum(p.is_keyframe for p in packets) >= 8
    for t, start, end in [(12, None, None), (1, None, None), (75, None, None), (100, None, None),
                          (12, 0.5, 2.5), (5, 1.0, None), (7, None, 0.9), (3, 2.84, 2.9)]:
        assert_decoders_agree(h264, t, start, end)
    # Consecutive frames of this video differ a lot, so agreement above means the same frames were picked.
    frames, _ = read_video(h264, 75)
    assert (frames[1:].int() - frames[:-1].int()).abs().float().mean() > 10
    mpeg4 = write_mp4(tmp_path / "mpeg4.mp4", solid_video(PALETTE * 3))
    for t, start, end in [(8, None, None), (40, None, None), (4, 1.0, 2.5)]:
        assert_decoders_agree(mpeg4, t, start, end)


def test_decoders_agree_on_msrvtt_clips() -> None:
    if not (MSRVTT_SAMPLE / "video_info.json").is_file():
        pytest.skip(f"MSR-VTT sample not found at {MSRVTT_SAMPLE}")
    info = {clip["file"]: clip for clip in json.loads((MSRVTT_SAMPLE / "video_info.json").read_text())}
    # 25 fps with B-frames, a 2 fps and a 1 fps clip (the sample's three kinds); T=32 pads the two slow ones.
    for name in ("video0.mp4", "video24.mp4", "video236.mp4"):
        path = MSRVTT_SAMPLE / "videos" / name
        for t, start, end in [(12, None, None), (32, None, None), (12, 2.0, 7.5)]:
            assert_decoders_agree(path, t, start, end)
        _, mask = read_video(path, 32, decoder="pyav")
        assert int(mask.sum()) == min(32, info[name]["decoded_frames"])


# ---------------------------------------------------------------- probe_video


@pytest.mark.parametrize("decoder", DECODERS)
def test_probe_video(ten_colours: Path, tmp_path: Path, decoder: str) -> None:
    assert probe_video(ten_colours, decoder=decoder) is None
    assert probe_video(ten_colours, decoder=decoder, start=0.2, end=0.4) is None
    assert "no frame" in probe_video(ten_colours, decoder=decoder, start=3.0)
    assert "not found" in probe_video(tmp_path / "missing.mp4", decoder=decoder)
    (tmp_path / "empty.mp4").write_bytes(b"")
    assert "empty" in probe_video(tmp_path / "empty.mp4", decoder=decoder)
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    assert probe_video(corrupt, decoder=decoder)  # some reason, whatever the decoder's words


# ---------------------------------------------------------------- resize_crop_frames / normalise_frames


def test_resize_crop_is_the_float_pipeline_rounded() -> None:
    rng = np.random.default_rng(0)
    frames = torch.from_numpy(rng.integers(0, 256, (2, 30, 52, 3), dtype=np.uint8))
    small = resize_crop_frames(frames, 16)
    assert small.shape == (2, 16, 16, 3) and small.dtype == torch.uint8
    # The float pipeline it rounds: resize in [0, 1] (bicubic, antialiased), clamp, centre crop.
    import torchvision.transforms.v2.functional as TF
    from torchvision.transforms import InterpolationMode

    x = frames.permute(0, 3, 1, 2).float() / 255
    x = TF.center_crop(TF.resize(x, [16], interpolation=InterpolationMode.BICUBIC, antialias=True).clamp(0, 1), [16])
    assert (small.permute(0, 3, 1, 2).float() / 255 - x).abs().max() <= 0.5 / 255 + 1e-5
    assert torch.equal(normalise_frames(small), preprocess_frames(frames, 16))


def test_pyav_without_seeking_gives_the_same_frames(tmp_path: Path) -> None:
    # The fallback PyAV takes when a demuxer's seek overshoots: decode from the beginning, no seeks at all.
    from calm_study.data.video import _decode_targets, _PyAVIndex

    path = write_h264(tmp_path / "h264.mp4")
    for t in (3, 12):
        decoded = []
        for seek in (True, False):
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                index = _PyAVIndex(container, stream)
                targets = [index.pts[k] for k in sample_frame_indices(len(index.pts), t)]
                if not seek:  # the fallback runs on a fresh container, positioned at the start
                    container.seek(0, stream=stream, backward=True)
                decoded.append(np.stack(_decode_targets(container, stream, index, targets, seek=seek)))
        assert np.array_equal(decoded[0], decoded[1])
