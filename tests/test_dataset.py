"""TrainPairs / EvalVideos / collate on real synthetic mp4 files."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from calm_study.data.dataset import EvalVideos, TrainPairs, check_videos, collate
from calm_study.data.frame_cache import FrameCache
from calm_study.data.records import UnreadableVideosError, VideoRecord, apply_failure_policy
from calm_study.data.synthetic import ensure_synthetic_dataset, load_synthetic_split
from calm_study.data.video import DECODERS, VideoDecodeError, preprocess_frames, read_video

T, S = 6, 32


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> list[VideoRecord]:
    folder = ensure_synthetic_dataset(tmp_path_factory.mktemp("cache"), num_train_videos=4, num_test_videos=2,
                                      captions_per_video=3)
    records = load_synthetic_split(folder, "textured", "train")
    # Uneven caption counts, so the text -> video mapping is not just "3 per video".
    records[1] = VideoRecord(records[1].video_id, records[1].path, records[1].captions[:1])
    return records


def test_video_record_normalises_fields(tmp_path: Path) -> None:
    record = VideoRecord("v", str(tmp_path / "v.mp4"), ["a", "b"])  # type: ignore[arg-type]
    assert record.path == tmp_path / "v.mp4" and isinstance(record.path, Path)
    assert record.captions == ("a", "b")
    assert hash(record) == hash(VideoRecord("v", tmp_path / "v.mp4", ("a", "b")))


def test_train_pairs_cover_every_caption(records: list[VideoRecord]) -> None:
    ds = TrainPairs(records, num_frames=T, image_size=S)
    assert len(ds) == 3 + 1 + 3 + 3
    seen = []
    for i in range(len(ds)):
        item = ds[i]
        assert item["frames"].shape == (T, 3, S, S) and item["frames"].dtype == torch.float32
        assert item["mask"].shape == (T,) and item["mask"].dtype == torch.bool and item["mask"].all()
        assert item["caption"] in records[item["video_index"]].captions
        seen.append((item["video_index"], item["caption"]))
    assert seen == [(v, c) for v, r in enumerate(records) for c in r.captions]


def test_train_pairs_same_video_same_frames(records: list[VideoRecord]) -> None:
    ds = TrainPairs(records, num_frames=T, image_size=S)
    assert torch.equal(ds[0]["frames"], ds[1]["frames"])  # two captions of video 0
    assert not torch.equal(ds[0]["frames"], ds[3]["frames"])  # video 0 vs video 1


def test_eval_videos_text_mapping(records: list[VideoRecord]) -> None:
    ds = EvalVideos(records, num_frames=T, image_size=S)
    assert len(ds) == 4
    assert ds.texts == [c for r in records for c in r.captions]
    assert ds.text_to_video == [0, 0, 0, 1, 2, 2, 2, 3, 3, 3]
    for j, text in enumerate(ds.texts):
        assert text in records[ds.text_to_video[j]].captions
    item = ds[2]
    assert set(item) == {"frames", "mask", "video_index"} and item["video_index"] == 2
    assert item["frames"].shape == (T, 3, S, S)
    assert ds[-1]["video_index"] == 3
    with pytest.raises(IndexError):
        ds[4]


def test_padding_flows_through_datasets(records: list[VideoRecord]) -> None:
    ds = EvalVideos(records[:1], num_frames=20, image_size=S)  # the videos have 16 frames
    item = ds[0]
    assert item["mask"].tolist() == [True] * 16 + [False] * 4
    assert torch.equal(item["frames"][16:], item["frames"][15:16].expand(4, -1, -1, -1))


def test_collate_train_and_eval(records: list[VideoRecord]) -> None:
    train = TrainPairs(records, num_frames=T, image_size=S)
    batch = collate([train[i] for i in (0, 3, 4)])
    assert batch["frames"].shape == (3, T, 3, S, S) and batch["frames"].dtype == torch.float32
    assert batch["mask"].shape == (3, T) and batch["mask"].dtype == torch.bool
    assert batch["video_index"].dtype == torch.long and batch["video_index"].tolist() == [0, 1, 2]
    assert batch["captions"] == [train[i]["caption"] for i in (0, 3, 4)]

    evals = EvalVideos(records, num_frames=T, image_size=S)
    batch = collate([evals[i] for i in range(len(evals))])
    assert batch["frames"].shape == (4, T, 3, S, S) and "captions" not in batch
    assert batch["video_index"].tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        collate([])


def test_dataloader_with_workers(records: list[VideoRecord]) -> None:
    # Worker processes must be able to pickle the dataset and decode in parallel.
    loader = DataLoader(TrainPairs(records, num_frames=T, image_size=S), batch_size=4, shuffle=False,
                        num_workers=2, collate_fn=collate)
    batches = list(loader)
    assert [b["frames"].shape[0] for b in batches] == [4, 4, 2]
    assert [c for b in batches for c in b["captions"]] == [c for r in records for c in r.captions]


def test_missing_video_raises(records: list[VideoRecord], tmp_path: Path) -> None:
    ds = TrainPairs([VideoRecord("gone", tmp_path / "gone.mp4", ("a caption",))], num_frames=T, image_size=S)
    assert len(ds) == 1
    with pytest.raises(VideoDecodeError, match=r"gone\.mp4"):
        ds[0]


def test_rejects_bad_sizes(records: list[VideoRecord]) -> None:
    with pytest.raises(ValueError):
        TrainPairs(records, num_frames=0, image_size=S)
    with pytest.raises(ValueError):
        EvalVideos(records, num_frames=T, image_size=0)


# ---------------------------------------------------------------- decoders, windows and the frame cache


def all_items(ds) -> list[dict]:
    return [ds[i] for i in range(len(ds))]


def assert_same_items(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            same = torch.equal(x[key], y[key]) if isinstance(x[key], torch.Tensor) else x[key] == y[key]
            assert same, key


def test_datasets_through_the_cache_equal_decoding(records: list[VideoRecord], tmp_path: Path) -> None:
    windowed = records[:2] + [VideoRecord(records[2].video_id, records[2].path, records[2].captions, 0.5, 1.5)]
    cache = FrameCache(tmp_path / "cache", T, S)
    for cls in (TrainPairs, EvalVideos):
        plain = all_items(cls(windowed, num_frames=T, image_size=S))
        assert_same_items(all_items(cls(windowed, num_frames=T, image_size=S, frame_cache=cache)), plain)  # fill
        assert_same_items(all_items(cls(windowed, num_frames=T, image_size=S, frame_cache=cache)), plain)  # hits
    assert all(cache.contains(r) for r in windowed)


def test_dataset_uses_the_record_window_and_decoder(records: list[VideoRecord]) -> None:
    # 16 frames at 8 fps: [0.5, 1.5) s holds frames 4..11.
    record = VideoRecord("w", records[0].path, ("a caption",), start=0.5, end=1.5)
    for decoder in DECODERS:
        item = EvalVideos([record], num_frames=T, image_size=S, decoder=decoder)[0]
        frames, mask = read_video(record.path, T, start=0.5, end=1.5, decoder=decoder)
        assert torch.equal(item["frames"], preprocess_frames(frames, S)) and torch.equal(item["mask"], mask)
        assert not torch.equal(item["frames"], EvalVideos(records[:1], num_frames=T, image_size=S)[0]["frames"])
    pyav = EvalVideos([record], num_frames=T, image_size=S, decoder="pyav")[0]["frames"]
    decord = EvalVideos([record], num_frames=T, image_size=S)[0]["frames"]
    assert (pyav - decord).abs().max() < 0.1


def test_dataloader_workers_with_the_cache(records: list[VideoRecord], tmp_path: Path) -> None:
    cache = FrameCache(tmp_path / "cache", T, S)
    ds = TrainPairs(records, num_frames=T, image_size=S, frame_cache=cache)
    loader = DataLoader(ds, batch_size=5, shuffle=False, num_workers=2, collate_fn=collate)
    frames = torch.cat([batch["frames"] for batch in loader])  # workers fill the cache in parallel
    assert all(cache.contains(r) for r in records)
    assert torch.equal(frames, torch.stack([item["frames"] for item in all_items(ds)]))


def test_dataset_rejects_bad_decoder_and_mismatched_cache(records: list[VideoRecord], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="decoder"):
        TrainPairs(records, num_frames=T, image_size=S, decoder="opencv")
    with pytest.raises(ValueError, match="frame cache"):
        EvalVideos(records, num_frames=T, image_size=S, frame_cache=FrameCache(tmp_path, T + 1, S))


# ---------------------------------------------------------------- check_videos / apply_failure_policy


@pytest.fixture
def broken(tmp_path: Path) -> tuple[VideoRecord, VideoRecord]:
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return VideoRecord("missing", tmp_path / "missing.mp4", ("a",)), VideoRecord("corrupt", corrupt, ("b",))


@pytest.mark.parametrize("decoder", DECODERS)
def test_check_videos_reports_unreadable_files(records: list[VideoRecord], broken, decoder: str) -> None:
    missing, corrupt = broken
    late = VideoRecord("late", records[0].path, ("c",), start=30.0)  # the video is 2 s long
    mixed = [records[0], missing, records[1], corrupt, late, records[2]]
    failures = check_videos(mixed, decoder=decoder, workers=2, progress=True)
    assert [record for record, _ in failures] == [missing, corrupt, late]
    reasons = dict((record.video_id, why) for record, why in failures)
    assert "not found" in reasons["missing"] and reasons["corrupt"] and "no frame" in reasons["late"]
    assert check_videos(records, decoder=decoder) == []


def test_failure_policies(records: list[VideoRecord], broken) -> None:
    missing, corrupt = broken
    mixed = [records[0], missing, records[1], corrupt]
    failures = check_videos(mixed)
    assert apply_failure_policy(mixed, failures, "skip", "msrvtt/test") == [records[0], records[1]]
    assert apply_failure_policy(mixed, [], "error", "msrvtt/test") == mixed
    with pytest.raises(VideoDecodeError) as info:
        apply_failure_policy(mixed, failures, "error", "msrvtt/test")
    message = str(info.value)
    assert isinstance(info.value, UnreadableVideosError)
    assert "msrvtt/test" in message and "2 of 4" in message
    assert str(missing.path) in message and str(corrupt.path) in message
    with pytest.raises(ValueError, match="policy"):
        apply_failure_policy(mixed, [], "ignore", "msrvtt/test")


def test_failure_error_lists_at_most_ten_files(tmp_path: Path) -> None:
    gone = [VideoRecord(f"g{k}", tmp_path / f"gone{k:02d}.mp4", ()) for k in range(13)]
    with pytest.raises(UnreadableVideosError) as info:
        apply_failure_policy(gone, check_videos(gone), "error", "didemo/val")
    message = str(info.value)
    assert "13 of 13" in message and "and 3 more" in message and "didemo/val" in message
    assert "gone09.mp4" in message and "gone10.mp4" not in message
    again = pickle.loads(pickle.dumps(info.value))  # crosses process boundaries (Ray, DataLoader workers)
    assert str(again) == message and again.failures == info.value.failures


def test_cache_hit_counts_as_readable(records: list[VideoRecord], tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(records[0].path.read_bytes())
    record = VideoRecord("clip", clip, ("a",))
    cache = FrameCache(tmp_path / "cache", T, S)
    cache.get(record)
    # Garble the file but keep its size and mtime: the cache still has the clip, the file itself is unreadable.
    stat = clip.stat()
    clip.write_bytes(bytes(stat.st_size))
    os.utime(clip, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert check_videos([record], frame_cache=cache) == []
    assert [r for r, _ in check_videos([record])] == [record]
