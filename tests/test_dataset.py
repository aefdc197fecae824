"""TrainPairs / EvalVideos / collate on real synthetic mp4 files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from calm_study.data import (
    EvalVideos,
    TrainPairs,
    VideoDecodeError,
    VideoRecord,
    collate,
    ensure_synthetic_dataset,
    load_synthetic_split,
)

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
