"""Readers of the four real benchmark layouts: fixtures in the exact formats, the real shared files, unsafe pickles."""

from __future__ import annotations

import csv
import json
import os
import pickle
import shlex
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from calm_study.data.readers import (
    READERS,
    SPLITS,
    UnsafePickleError,
    list_datasets,
    load_restricted,
    read_dataset,
)
from calm_study.data.readers.didemo import parse_seconds
from calm_study.data.readers.lsmdc import movie_of
from calm_study.data.records import VideoRecord

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def write_video(path: Path, frames: int = 2, size: int = 16) -> Path:
    """A tiny real video (mpeg4 works in both .avi and .mp4 containers)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=2)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for k in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), 60 * k, np.uint8), format="rgb24")
            frame.pts, frame.time_base = k, Fraction(1, 2)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def decoded_frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


# ----------------------------------------------------------------------------------------------------- MSR-VTT


@pytest.fixture
def msrvtt_root(tmp_path: Path) -> Path:
    root = tmp_path / "msrvtt"
    root.mkdir()
    # Sentences interleave videos (as in the release), so grouping must keep each video's own file order.
    sentences = [("video1", "b one"), ("video0", "a one"), ("video1", "b two"), ("video0", "a two"),
                 ("video2", "c one"), ("video0", "a three"), ("video3", "d one"), ("video4", "e one")]
    data = {"info": {}, "videos": [{"video_id": f"video{i}", "start time": 1.5, "end time": 9.0} for i in range(5)],
            "sentences": [{"caption": c, "video_id": v, "sen_id": i} for i, (v, c) in enumerate(sentences)]}
    (root / "MSRVTT_data.json").write_text(json.dumps(data))
    (root / "MSRVTT_train.9k.csv").write_text("video_id\nvideo2\nvideo0\nvideo1\n")
    (root / "MSRVTT_train.7k.csv").write_text("video_id\nvideo0\nvideo1\n")
    with (root / "MSRVTT_JSFUSION_test.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["key", "vid_key", "video_id", "sentence"])
        w.writerow(["ret0", "msr4", "video4", "a man, talking"])  # quoted: the comma must not split the row
        w.writerow(["ret1", "msr3", "video3", "a dog runs"])
    write_video(root / "videos" / "video0.mp4")
    return root


def test_msrvtt_train_has_all_captions_in_split_order(msrvtt_root: Path):
    records = read_dataset("msrvtt", msrvtt_root, "train")
    assert [r.video_id for r in records] == ["video2", "video0", "video1"]
    assert records[1].captions == ("a one", "a two", "a three")
    assert records[2].captions == ("b one", "b two")
    assert records[1].path == msrvtt_root / "videos" / "video0.mp4" and records[1].path.is_file()
    assert records[0].path == msrvtt_root / "videos" / "video2.mp4"  # listed though the file does not exist
    assert all(r.start is None and r.end is None for r in records)
    seven = read_dataset("msrvtt", msrvtt_root, "train7k")
    assert [(r.video_id, len(r.captions)) for r in seven] == [("video0", 3), ("video1", 2)]


def test_msrvtt_test_is_one_record_per_csv_row(msrvtt_root: Path, tmp_path: Path):
    records = read_dataset("msrvtt", msrvtt_root, "test", videos_dir="clips")
    assert records == [VideoRecord("video4", msrvtt_root / "clips" / "video4.mp4", ("a man, talking",)),
                       VideoRecord("video3", msrvtt_root / "clips" / "video3.mp4", ("a dog runs",))]
    elsewhere = tmp_path / "elsewhere"
    assert read_dataset("msrvtt", msrvtt_root, "test", videos_dir=str(elsewhere))[0].path == elsewhere / "video4.mp4"


def test_msrvtt_errors_name_the_file_and_key(msrvtt_root: Path):
    (msrvtt_root / "MSRVTT_train.9k.csv").write_text("video_id\nvideo0\nvideo77\n")
    with pytest.raises(ValueError, match=r"MSRVTT_train\.9k\.csv.*'video77'.*no captions"):
        read_dataset("msrvtt", msrvtt_root, "train")
    (msrvtt_root / "MSRVTT_train.7k.csv").write_text("video_id\n")
    with pytest.raises(ValueError, match=r"MSRVTT_train\.7k\.csv.*no videos"):
        read_dataset("msrvtt", msrvtt_root, "train7k")
    (msrvtt_root / "MSRVTT_JSFUSION_test.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"MSRVTT_JSFUSION_test\.csv"):
        read_dataset("msrvtt", msrvtt_root, "test")


# ------------------------------------------------------------------------------------------------------ DiDeMo

LABEL_HEADER = ["success", "video_path", "starts", "ends", "text", "formatted_data"]


def write_label_csv(path: Path, rows: list[tuple[str, str, str, str]]) -> None:
    """rows: (video file name, starts, ends, paragraph), written as X-Pool/T-MASS did (CRLF, absolute paths)."""
    with path.open("w", newline="") as f:
        w = csv.writer(f)  # default dialect: CRLF line ends, quotes where needed, like the released files
        w.writerow(LABEL_HEADER)
        for i, (name, starts, ends, text) in enumerate(rows):
            w.writerow(["True", f"/home/u/didemo/all_videos/{name}", starts, ends, text,
                        f"/home/u/didemo/formatted_data/{path.stem.split('_')[1]}_data_id_{i}.pth"])


def test_parse_seconds_accepts_the_tensor_reprs():
    assert [parse_seconds(s) for s in ("tensor([[0]])", "tensor([31])", "tensor(5)", "7", "2.5")] == [
        0.0, 31.0, 5.0, 7.0, 2.5]
    for bad in ("tensor([[0, 5]])", "", "tensor([])"):
        with pytest.raises(ValueError):
            parse_seconds(bad)


def test_didemo_label_csv(tmp_path: Path):
    write_label_csv(tmp_path / "didemo_test_label.csv", [
        ("1@N01_2_ab.mov", "tensor([[0]])", "tensor([[31]])", "a man waves. he sits down."),
        ("3@N02_4_cd.", "tensor([0])", "tensor([31])", "a dog, running.\nthe dog stops.\n"),  # no extension
    ])
    records = read_dataset("didemo", tmp_path, "test", videos_dir="all_videos")
    assert records == [
        VideoRecord("1@N01_2_ab.mov", tmp_path / "all_videos" / "1@N01_2_ab.mov", ("a man waves. he sits down.",),
                    0.0, 31.0),
        VideoRecord("3@N02_4_cd.", tmp_path / "all_videos" / "3@N02_4_cd.", ("a dog, running.\nthe dog stops.\n",),
                    0.0, 31.0),
    ]
    assert str(records[1].path).endswith("3@N02_4_cd.")  # the trailing "." survives


def test_didemo_localizing_moments_layout(tmp_path: Path):
    moments = [{"annotation_id": 1, "description": "a man waves", "video": "v1.mp4", "times": [[0, 0], [0, 1]],
                "num_segments": 6, "download_link": "x"},
               {"annotation_id": 2, "description": "a cat jumps", "video": "v2.", "times": [[2, 2]]},
               {"annotation_id": 3, "description": "the man sits", "video": "v1.mp4", "times": [[3, 4]]},
               {"annotation_id": 4, "description": "a bird", "video": "v3.avi", "times": [[1, 1]]}]
    (tmp_path / "train_data.json").write_text(json.dumps(moments))
    without_list = read_dataset("didemo", tmp_path, "train")
    assert [(r.video_id, r.captions) for r in without_list] == [
        ("v1.mp4", ("a man waves the man sits",)), ("v2.", ("a cat jumps",)), ("v3.avi", ("a bird",))]
    assert all((r.start, r.end) == (0.0, 31.0) for r in without_list)
    assert without_list[1].path == tmp_path / "videos" / "v2."
    # The list restricts and orders; a listed video without moments is skipped (as CLIP4Clip does).
    (tmp_path / "train_list.txt").write_text("v3.avi\nv2.\nnot_annotated.mov\n")
    assert [r.video_id for r in read_dataset("didemo", tmp_path, "train")] == ["v3.avi", "v2."]


def test_didemo_prefers_label_csv_and_reports_missing_layouts(tmp_path: Path):
    (tmp_path / "val_data.json").write_text(json.dumps([{"description": "from json", "video": "j.mp4"}]))
    write_label_csv(tmp_path / "didemo_val_label.csv", [("c.mp4", "tensor([[0]])", "tensor([[31]])", "from csv")])
    assert [r.captions for r in read_dataset("didemo", tmp_path, "val")] == [("from csv",)]
    with pytest.raises(FileNotFoundError, match=r"didemo_train_label\.csv.*train_data\.json"):
        read_dataset("didemo", tmp_path, "train")


def test_didemo_malformed_rows_name_file_and_line(tmp_path: Path):
    write_label_csv(tmp_path / "didemo_test_label.csv", [
        ("a.mp4", "tensor([[0]])", "tensor([[31]])", "fine"), ("b.mp4", "tensor([[0, 5]])", "tensor([[31]])", "x")])
    with pytest.raises(ValueError, match=r"didemo_test_label\.csv, record ending on line 3 \(b\.mp4\)"):
        read_dataset("didemo", tmp_path, "test")
    (tmp_path / "train_data.json").write_text(json.dumps([{"description": "no video key"}]))
    with pytest.raises(ValueError, match=r"train_data\.json: moment \[0\]"):
        read_dataset("didemo", tmp_path, "train")


# ------------------------------------------------------------------------------------------------------- LSMDC

CLIP_A = "1012_Unbreakable_00.05.16.065-00.05.21.941"
CLIP_B = "1012_Unbreakable_00.06.01.000-00.06.03.500"
CLIP_C = "3001_21_JUMP_STREET_00.00.07.051-00.00.12.063"


def lsmdc_line(clip: str, sentence: str) -> str:
    return "\t".join([clip, "00.05.16.065", "00.05.21.941", "00.05.16.065", "00.05.21.941", sentence]) + "\n"


def test_lsmdc_groups_sentences_and_finds_videos(tmp_path: Path):
    (tmp_path / "LSMDC16_annos_training.csv").write_text(
        lsmdc_line(CLIP_B, 'SOMEONE says "hi".') + lsmdc_line(CLIP_A, "SOMEONE looks up.")
        + lsmdc_line(CLIP_B, "He leaves.") + lsmdc_line(CLIP_C, "A car passes.") + "\n")
    assert movie_of(CLIP_A) == "1012_Unbreakable" and movie_of(CLIP_C) == "3001_21_JUMP_STREET"
    # No video folder at all: expected default paths, no error.
    plain = read_dataset("lsmdc", tmp_path, "train")
    assert [(r.video_id, r.captions) for r in plain] == [
        (CLIP_B, ('SOMEONE says "hi".', "He leaves.")), (CLIP_A, ("SOMEONE looks up.",)), (CLIP_C, ("A car passes.",))]
    assert plain[1].path == tmp_path / "videos" / "1012_Unbreakable" / f"{CLIP_A}.avi"
    # A at its default place, C under another folder with another extension (found by the walk), B absent.
    write_video(tmp_path / "videos" / "1012_Unbreakable" / f"{CLIP_A}.avi")
    moved = write_video(tmp_path / "videos" / "extra" / f"{CLIP_C}.mp4")
    found = {r.video_id: r.path for r in read_dataset("lsmdc", tmp_path, "train")}
    assert found == {CLIP_A: tmp_path / "videos" / "1012_Unbreakable" / f"{CLIP_A}.avi", CLIP_C: moved,
                     CLIP_B: tmp_path / "videos" / "1012_Unbreakable" / f"{CLIP_B}.avi"}
    assert decoded_frames(found[CLIP_A]) == 2 and decoded_frames(found[CLIP_C]) == 2


def test_lsmdc_bad_field_count_names_file_and_line(tmp_path: Path):
    bad = "\t".join([CLIP_A, "0", "1", "0", "1"]) + "\n"  # 5 fields: the sentence is missing
    (tmp_path / "LSMDC16_annos_val.csv").write_text(lsmdc_line(CLIP_B, "ok.") + bad)
    with pytest.raises(ValueError, match=r"LSMDC16_annos_val\.csv, line 2: expected 6 tab-separated fields.*got 5"):
        read_dataset("lsmdc", tmp_path, "val")
    with pytest.raises(FileNotFoundError, match=r"LSMDC16_challenge_1000_publictect\.csv"):
        read_dataset("lsmdc", tmp_path, "test")


# -------------------------------------------------------------------------------------------------------- MSVD


@pytest.fixture
def msvd_root(tmp_path: Path) -> Path:
    root = tmp_path / "msvd"
    root.mkdir()
    captions = {"bQJQGoJF7_k_162_169": [["a", "man", "sings"], ["someone", "is", "singing"]],
                "-4wsuPCjDBc_5_15": [["a", "cat", "plays"]],
                "zzz_1_2": [["unused"]]}
    (root / "raw-captions.pkl").write_bytes(pickle.dumps(captions))
    (root / "train_list.txt").write_text("bQJQGoJF7_k_162_169\n-4wsuPCjDBc_5_15\n")
    (root / "test_list.txt").write_text("-4wsuPCjDBc_5_15\n\n")
    write_video(root / "videos" / "part1" / "bQJQGoJF7_k_162_169.avi")
    write_video(root / "videos" / "-4wsuPCjDBc_5_15.mp4")
    return root


def test_msvd_records_captions_and_walked_paths(msvd_root: Path):
    records = read_dataset("msvd", msvd_root, "train")
    assert records == [
        VideoRecord("bQJQGoJF7_k_162_169", msvd_root / "videos" / "part1" / "bQJQGoJF7_k_162_169.avi",
                    ("a man sings", "someone is singing")),
        VideoRecord("-4wsuPCjDBc_5_15", msvd_root / "videos" / "-4wsuPCjDBc_5_15.mp4", ("a cat plays",)),
    ]
    assert all(decoded_frames(r.path) == 2 for r in records)
    # Another video folder without these files: default <videos>/<id>.avi.
    other = read_dataset("msvd", msvd_root, "test", videos_dir="none_here")
    assert other == [VideoRecord("-4wsuPCjDBc_5_15", msvd_root / "none_here" / "-4wsuPCjDBc_5_15.avi",
                                 ("a cat plays",))]


def test_msvd_structure_and_consistency_errors(msvd_root: Path):
    (msvd_root / "val_list.txt").write_text("bQJQGoJF7_k_162_169\nmissing_id_0_1\n")
    with pytest.raises(ValueError, match=r"val_list\.txt, line 2: video 'missing_id_0_1' has no captions"):
        read_dataset("msvd", msvd_root, "val")
    (msvd_root / "raw-captions.pkl").write_bytes(pickle.dumps({"bQJQGoJF7_k_162_169": ["a man sings"]}))
    with pytest.raises(ValueError, match=r"raw-captions\.pkl: key 'bQJQGoJF7_k_162_169' must map to a list of token"):
        read_dataset("msvd", msvd_root, "train")
    (msvd_root / "raw-captions.pkl").write_bytes(pickle.dumps({"x": [["a"]]})[:-5])  # truncated
    with pytest.raises(ValueError, match=r"raw-captions\.pkl: not a readable pickle"):
        read_dataset("msvd", msvd_root, "train")


class _ShellPayload:
    """Unpickling this with the standard pickle module runs a shell command."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.target))}",)


class _ExecPayload:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return exec, (f"open({str(self.target)!r}, 'w').close()",)


@pytest.mark.parametrize(("payload", "refused"), [(_ShellPayload, r"(posix|os|nt)\.system"),
                                                  (_ExecPayload, r"builtins\.exec")])
def test_malicious_caption_pickle_is_refused_and_not_run(msvd_root: Path, tmp_path: Path, payload, refused):
    pwned = tmp_path / "pwned"
    blob = pickle.dumps({"bQJQGoJF7_k_162_169": [["a"]], "-4wsuPCjDBc_5_15": payload(pwned)})
    (msvd_root / "raw-captions.pkl").write_bytes(blob)
    with pytest.raises(UnsafePickleError, match=rf"raw-captions\.pkl: refused to load the global {refused}"):
        read_dataset("msvd", msvd_root, "train")
    assert not pwned.exists()
    # Control: the same bytes really are an exploit for an unrestricted loader.
    if payload is _ExecPayload:
        pickle.loads(blob)
        assert pwned.exists()


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_restricted_loader_reads_plain_data(tmp_path: Path, protocol: int):
    data = {"k": [["a", "b"], []], "n": (1, 2.5, None, True), "s": {"nested": {"ü": [1]}}}
    if protocol >= 3:
        data["b"] = b"x"  # protocols 0-2 pickle bytes via the global _codecs.encode, which is refused
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    assert load_restricted(path) == data


# ---------------------------------------------------------------------------------------------------- registry


def test_registry_lists_datasets_and_splits():
    assert list_datasets() == ["didemo", "lsmdc", "msrvtt", "msvd"]  # read from a root folder (`data check NAME`)
    assert list(READERS) == ["synthetic", "didemo", "lsmdc", "msrvtt", "msvd"]  # display order of config errors
    assert all(entry.name == name and entry.splits == SPLITS[name] for name, entry in READERS.items())
    assert SPLITS["msrvtt"] == ("train", "train7k", "test", "caption_train", "caption_val", "caption_test")
    assert SPLITS["didemo"] == SPLITS["lsmdc"] == SPLITS["msvd"] == ("train", "val", "test")
    assert SPLITS["synthetic"] == ("train", "test")
    synthetic = READERS["synthetic"]
    assert synthetic.domains == ("plain", "textured") and synthetic.generated
    assert not any(READERS[name].domains or READERS[name].generated for name in list_datasets())


def test_restricted_loader_refuses_globals_even_harmless_ones(tmp_path: Path):
    path = tmp_path / "old.pkl"
    path.write_bytes(pickle.dumps({"s": {1, 2}}, protocol=2))  # a set before protocol 4 is builtins.set(...)
    with pytest.raises(UnsafePickleError, match=r"old\.pkl: refused to load the global (__builtin__|builtins)\.set"):
        load_restricted(path)


def test_registry_errors(tmp_path: Path):
    with pytest.raises(ValueError, match=r"unknown dataset 'msrvt' \(did you mean 'msrvtt'\?\)\. .*didemo, lsmdc"):
        read_dataset("msrvt", tmp_path, "train")
    with pytest.raises(ValueError, match=r"unknown split 'tset'.*\(did you mean 'test'\?\).*train, train7k, test"):
        read_dataset("msrvtt", tmp_path, "tset")
    with pytest.raises(FileNotFoundError, match="root not found"):
        read_dataset("msvd", tmp_path / "absent", "train")
    with pytest.raises(ValueError, match=r"unknown dataset 'synthtic' \(did you mean 'synthetic'\?\)"):
        read_dataset("synthtic", tmp_path, "train")
    with pytest.raises(ValueError, match=r"unknown domain 'texture' for dataset 'synthetic' \(did you mean "
                                         r"'textured'\?\)\. Valid domains: plain, textured\."):
        read_dataset("synthetic", tmp_path, "train", domain="texture")
    with pytest.raises(ValueError, match=r"unknown split 'val' for dataset 'synthetic'.*Valid splits: train, test"):
        read_dataset("synthetic", tmp_path, "val", domain="plain")


def test_a_registry_entry_is_all_a_generated_dataset_with_domains_needs(tmp_path: Path, monkeypatch):
    """Splits, domains and generation are data of the entry: sources, validation and results ask it, not its name."""
    from calm_study.config import DataConfig, DatasetRef, TrialConfig
    from calm_study.data.readers import Reader
    from calm_study.data.sources import check_all_videos, load_records
    from calm_study.study.results import _same_domain
    from calm_study.validate import _check_data

    folder = tmp_path / "toy"
    folder.mkdir()
    calls = []

    def read(root, split, videos_dir=None, *, domain):
        calls.append((root, split, domain))
        return [VideoRecord(f"{domain}-{split}", root / "missing.mp4", ("a caption",))]

    toy = Reader("toy", read, ("a", "b"), domains=("x", "y"), generate=lambda cfg: folder)
    monkeypatch.setitem(READERS, "toy", toy)
    data = DataConfig(train=DatasetRef(dataset="toy", domain="y", split="a"),
                      eval=(DatasetRef(dataset="toy", domain="x", split="b"),), cache_dir=str(tmp_path))
    assert _check_data(data) == []
    assert load_records(data.eval[0], data) == [VideoRecord("x-b", folder / "missing.mp4", ("a caption",))]
    assert calls == [(folder, "b", "x")]  # no root needed: the folder came from `generate`
    check_all_videos([TrialConfig(data=data)], "toy")  # generated: its (missing) videos are not re-opened
    bad = replace(data, train=DatasetRef(dataset="toy", domain="z", split="c"))
    assert _check_data(bad) == ["data.train.split: 'c' is not valid; valid: a, b",
                                "data.train.domain: 'z' is not valid; valid: x, y"]
    assert not _same_domain(data.train, data.eval[0]) and _same_domain(data.eval[0], replace(data.eval[0], split="a"))
    assert _same_domain(DatasetRef(dataset="msvd", domain="x"), DatasetRef(dataset="msvd", domain="y"))  # no domains


# ------------------------------------------------------------------------------------------ real shared files

REAL = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"shared reference data not found at {SHARED_DATA}")


@REAL
def test_real_msrvtt_splits():
    root = SHARED_DATA / "msrvtt"
    train9k = read_dataset("msrvtt", root, "train")
    train7k = read_dataset("msrvtt", root, "train7k")
    test = read_dataset("msrvtt", root, "test")
    assert (len(train9k), sum(len(r.captions) for r in train9k)) == (9000, 180000)
    assert (len(train7k), sum(len(r.captions) for r in train7k)) == (7010, 140200)
    assert len(test) == 1000 and all(len(r.captions) == 1 for r in test)
    ids9k, ids7k, ids_test = ({r.video_id for r in rs} for rs in (train9k, train7k, test))
    assert ids7k <= ids9k and not ids9k & ids_test and len(ids9k | ids_test) == 10000
    assert train9k[0].video_id == "video0" and test[0] == VideoRecord(
        "video9770", root / "videos" / "video9770.mp4", ("a person is connecting something to system",))


@REAL
def test_real_msrvtt_sample_clips_are_in_the_1ka_test_split():
    sample_videos = SHARED_DATA / "msrvtt-sample" / "videos"
    test = {r.video_id: r for r in read_dataset("msrvtt", SHARED_DATA / "msrvtt", "test", str(sample_videos))}
    for vid in ("video7202", "video8331", "video9908"):
        assert test[vid].path == sample_videos / f"{vid}.mp4" and test[vid].path.is_file()


@REAL
@pytest.mark.parametrize(("split", "count", "no_extension"), [("train", 8362, 154), ("val", 1062, 12),
                                                              ("test", 1004, 27)])
def test_real_didemo_label_csvs(split: str, count: int, no_extension: int):
    records = read_dataset("didemo", SHARED_DATA / "didemo", split)
    assert len(records) == count == len({r.video_id for r in records})
    assert all((r.start, r.end) == (0.0, 31.0) for r in records)
    assert all(len(r.captions) == 1 and r.captions[0].strip() for r in records)
    # One paragraph per video (median ~28 words); a few videos have a single short moment ("vehicles moving").
    words = sorted(len(r.captions[0].split()) for r in records)
    assert words[len(words) // 2] >= 20 and words[0] >= 2
    assert sum(r.video_id.endswith(".") for r in records) == no_extension
