"""Captioning splits: MSR-VTT's official train / validate / test partition and MSVD's lists, every reference kept."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from calm_study.data.readers import SPLITS, read_dataset
from calm_study.data.records import VideoRecord

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
REAL_MSRVTT_JSON = SHARED_DATA / "msrvtt" / "MSRVTT_data.json"
CAPTION_SPLITS = ("caption_train", "caption_val", "caption_test")

# ----------------------------------------------------------------------------------------- MSR-VTT, real file


@pytest.fixture(scope="module")
def real_caption_splits(tmp_path_factory) -> tuple[Path, dict[str, list[VideoRecord]]]:
    """A root holding only the real MSRVTT_data.json (no csvs), and the three captioning splits read from it."""
    if not REAL_MSRVTT_JSON.is_file():
        pytest.skip(f"real MSR-VTT annotations not found at {REAL_MSRVTT_JSON}")
    root = tmp_path_factory.mktemp("msrvtt_caption")
    (root / "MSRVTT_data.json").symlink_to(REAL_MSRVTT_JSON)
    return root, {s: read_dataset("msrvtt", root, s) for s in CAPTION_SPLITS}


def test_real_caption_split_sizes_disjoint_and_complete(real_caption_splits):
    root, splits = real_caption_splits
    assert [len(splits[s]) for s in CAPTION_SPLITS] == [6513, 497, 2990]
    ids = [{r.video_id for r in splits[s]} for s in CAPTION_SPLITS]
    assert sum(map(len, ids)) == 6513 + 497 + 2990  # no video repeats within a split
    assert not ids[0] & ids[1] and not ids[0] & ids[2] and not ids[1] & ids[2]
    assert ids[0] | ids[1] | ids[2] == {f"video{i}" for i in range(10000)}
    assert all(len(r.captions) == 20 for s in CAPTION_SPLITS for r in splits[s])
    # the order of `videos`: video0-6512 train, 6513-7009 validate, 7010-9999 test
    assert [r.video_id for r in splits["caption_train"]] == [f"video{i}" for i in range(6513)]
    assert [r.video_id for r in splits["caption_val"]] == [f"video{i}" for i in range(6513, 7010)]
    assert [r.video_id for r in splits["caption_test"]] == [f"video{i}" for i in range(7010, 10000)]
    assert splits["caption_test"][0].video_id == "video7010"
    assert splits["caption_test"][0].path == root / "videos" / "video7010.mp4"
    assert (splits["caption_test"][0].start, splits["caption_test"][0].end) == (None, None)


def test_real_caption_references_equal_a_slow_oracle(real_caption_splits):
    _, splits = real_caption_splits
    sentences = json.loads(REAL_MSRVTT_JSON.read_text(encoding="utf-8"))["sentences"]
    by_id = {r.video_id: r for s in CAPTION_SPLITS for r in splits[s]}
    for vid in ("video0", "video6513", "video7010", "video9999"):
        oracle = [s["caption"] for s in sentences if s["video_id"] == vid]  # one full scan per video, file order
        assert len(oracle) == 20
        assert list(by_id[vid].captions) == oracle


# -------------------------------------------------------------------------------------- MSR-VTT, hand fixture


def _write_msrvtt(root: Path, videos: object, sentences: list[tuple[str, str]]) -> Path:
    root.mkdir(exist_ok=True)
    data = {"info": {}, "videos": videos,
            "sentences": [{"caption": c, "video_id": v, "sen_id": i} for i, (v, c) in enumerate(sentences)]}
    path = root / "MSRVTT_data.json"
    path.write_text(json.dumps(data))
    return path


def _videos(*pairs: tuple[str, str]) -> list[dict]:
    return [{"video_id": v, "split": s, "category": 0, "id": i} for i, (v, s) in enumerate(pairs)]


# Test videos listed before train ones and interleaved sentences: order must follow `videos`, captions the file.
FIXTURE_VIDEOS = _videos(("video5", "test"), ("video1", "train"), ("video4", "validate"), ("video0", "train"),
                         ("video3", "test"))
FIXTURE_SENTENCES = [("video0", "a zero one"), ("video3", "d one"), ("video1", "b one"), ("video0", "a zero two"),
                     ("video5", "f one"), ("video4", "e one"), ("video3", "d two"), ("video5", "f two"),
                     ("video0", "a zero three"), ("video5", "f three")]


def test_fixture_caption_splits_keep_order_and_all_captions(tmp_path: Path):
    root = tmp_path / "msrvtt"
    _write_msrvtt(root, FIXTURE_VIDEOS, FIXTURE_SENTENCES)  # no split csvs: captioning splits do not need them
    assert read_dataset("msrvtt", root, "caption_train") == [
        VideoRecord("video1", root / "videos" / "video1.mp4", ("b one",)),
        VideoRecord("video0", root / "videos" / "video0.mp4", ("a zero one", "a zero two", "a zero three")),
    ]
    assert read_dataset("msrvtt", root, "caption_val") == [
        VideoRecord("video4", root / "videos" / "video4.mp4", ("e one",))]
    assert read_dataset("msrvtt", root, "caption_test", videos_dir="clips") == [
        VideoRecord("video5", root / "clips" / "video5.mp4", ("f one", "f two", "f three")),
        VideoRecord("video3", root / "clips" / "video3.mp4", ("d one", "d two")),
    ]
    # the retrieval splits still need their csvs
    with pytest.raises(FileNotFoundError, match=r"MSRVTT_train\.9k\.csv"):
        read_dataset("msrvtt", root, "train")


@pytest.mark.parametrize(("videos", "split", "expected"), [
    (None, "caption_train", ["'videos' list", "it has none"]),
    ({"video0": "train"}, "caption_train", ["'videos' list", "it is a dict"]),
    (_videos(("video0", "train")) + [{"video_id": 7, "split": "train"}], "caption_train",
     ["videos[1] must be an object with string 'video_id' and 'split'", "'video_id': 7"]),
    (_videos(("video0", "train")) + [{"video_id": "video1"}], "caption_val", ["videos[1] must be an object"]),
    (_videos(("video0", "train"), ("video1", "val")), "caption_train",
     ["videos[1] ('video1') has split 'val'", "'train', 'validate', 'test'"]),
    (_videos(("video0", "train"), ("video9", "test")), "caption_test",
     ["video 'video9' (videos[1], split 'test') has no captions"]),
    (_videos(("video0", "train"), ("video1", "test")), "caption_val",
     ["no entry of 'videos' has split 'validate'", "'caption_val' split is empty"]),
    (_videos(("video0", "train"), ("video1", "test"), ("video0", "train")), "caption_train",
     ["videos[2] repeats video 'video0' of videos[0]"]),
])
def test_fixture_caption_split_errors_name_file_and_entry(tmp_path: Path, videos, split, expected):
    path = _write_msrvtt(tmp_path / "msrvtt", videos, [("video0", "a"), ("video1", "b")])
    with pytest.raises(ValueError) as err:
        read_dataset("msrvtt", path.parent, split)
    message = str(err.value)
    assert str(path) in message
    for part in expected:
        assert part in message


def test_missing_annotation_file_for_caption_split(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=r"MSR-VTT annotation file not found: .*MSRVTT_data\.json"):
        read_dataset("msrvtt", tmp_path, "caption_test")


def test_unknown_split_suggests_and_lists_caption_splits(tmp_path: Path):
    assert SPLITS["msrvtt"][-3:] == CAPTION_SPLITS
    with pytest.raises(ValueError, match=r"unknown split 'caption_tset'.*\(did you mean 'caption_test'\?\)") as err:
        read_dataset("msrvtt", tmp_path, "caption_tset")
    assert "caption_train, caption_val, caption_test" in str(err.value)


# ------------------------------------------------------------------------------------------------ MSVD fixture


def test_msvd_caption_splits_keep_every_reference(tmp_path: Path):
    """4 / 2 / 3 videos; each test video keeps all its references, tokens joined by spaces, in pickle order."""
    ids = {"train": [f"tr{i}_0_5" for i in range(4)], "val": ["va0_1_2", "va1_3_4"],
           "test": ["te0_0_9", "te1_10_20", "te2_5_6"]}
    captions = {vid: [[f"{vid}", "caption", str(k)] for k in range(2 + n)]
                for vids in ids.values() for n, vid in enumerate(vids)}
    captions["te1_10_20"] = [["a", "man", "is", "singing"], ["someone", "sings"], ["a", "man", "sings", "a", "song"],
                             ["a", "person", "performs"], ["singer", "on", "stage"]]
    (tmp_path / "raw-captions.pkl").write_bytes(pickle.dumps(captions, protocol=4))
    for split, vids in ids.items():
        (tmp_path / f"{split}_list.txt").write_text("".join(f"{v}\n" for v in vids))
    splits = {s: read_dataset("msvd", tmp_path, s) for s in ("train", "val", "test")}
    assert {s: len(rs) for s, rs in splits.items()} == {"train": 4, "val": 2, "test": 3}
    seen = [{r.video_id for r in rs} for rs in splits.values()]
    assert not seen[0] & seen[1] and not seen[0] & seen[2] and not seen[1] & seen[2]
    assert [r.video_id for r in splits["test"]] == ids["test"]
    for record in splits["test"]:
        assert record.captions == tuple(" ".join(tokens) for tokens in captions[record.video_id])
    assert splits["test"][1].captions == ("a man is singing", "someone sings", "a man sings a song",
                                          "a person performs", "singer on stage")
