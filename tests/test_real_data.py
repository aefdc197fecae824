"""The whole pipeline on real data: MSR-VTT's real annotation files and real clips, the failure policy, the frame
cache, cross-domain rows and the `data` commands."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from calm_study.data.records import UnreadableVideosError
from calm_study.data.synthetic import ensure_synthetic_dataset
from calm_study.training.fit import fit
from calm_study.validate import trial_from_dict

from .conftest import SHARED_DATA

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def msrvtt_root(tmp_path) -> Path:
    """An MSR-VTT root with the real annotation files and the 25 real sample clips (the other videos missing)."""
    if not (SHARED_DATA / "msrvtt-sample").is_dir():
        pytest.skip("../shared/data is not present")
    root = tmp_path / "MSRVTT"
    root.mkdir()
    for f in (SHARED_DATA / "msrvtt").iterdir():
        (root / f.name).symlink_to(f)
    (root / "videos").symlink_to(SHARED_DATA / "msrvtt-sample" / "videos")
    return root


def msrvtt_doc(tiny_doc, root, tmp_path):
    doc = dict(tiny_doc)
    doc["data"] = {**tiny_doc["data"], "roots": {"msrvtt": str(root)}, "on_error": "skip", "max_skipped_fraction": 1.0,
                   "train": {"dataset": "msrvtt", "split": "train"},
                   "eval": [{"name": "msrvtt", "dataset": "msrvtt", "split": "test"},
                            {"name": "synthetic", "dataset": "synthetic", "domain": "plain", "split": "test"}],
                   "frame_cache": str(tmp_path / "frames")}
    doc["train"] = {**tiny_doc["train"], "epochs": 1, "batch_size": 32}
    return doc


@pytest.mark.slow
def test_training_on_real_msrvtt_clips_skips_and_counts_missing_videos(tiny_doc, msrvtt_root, tmp_path):
    cfg = trial_from_dict(msrvtt_doc(tiny_doc, msrvtt_root, tmp_path))
    reports = []
    metrics = fit(cfg, lambda m, c: reports.append(m))
    # 22 of the 9,000 training videos and 3 of the 1,000 test videos are present (shared/data/README.md).
    assert metrics["train_skipped_videos"] == 9000 - 22
    assert metrics["eval/msrvtt/skipped_videos"] == 1000 - 3
    assert metrics["eval/synthetic/skipped_videos"] == 0
    assert 0 <= metrics["eval/msrvtt/t2v_R1"] <= 100 and metrics["eval/msrvtt/t2v_MnR"] <= 3
    # every readable clip decoded once into the cache: 22 + 3 real clips and the 8 synthetic test videos
    assert len(list((tmp_path / "frames").rglob("*.npz"))) == 22 + 3 + 8
    cfg_error = trial_from_dict({**msrvtt_doc(tiny_doc, msrvtt_root, tmp_path),
                                 "data": {**msrvtt_doc(tiny_doc, msrvtt_root, tmp_path)["data"], "on_error": "error"}})
    with pytest.raises(UnreadableVideosError, match="msrvtt-train"):
        fit(cfg_error, lambda m, c: None)


def test_a_corrupt_synthetic_video_is_named_or_skipped(tiny_doc, tmp_path):
    tiny_doc["data"]["cache_dir"] = str(tmp_path / "cache")
    s = tiny_doc["data"]["synthetic"]
    folder = ensure_synthetic_dataset(tmp_path / "cache", num_train_videos=s["num_train_videos"],
                                      num_test_videos=s["num_test_videos"], captions_per_video=s["captions_per_video"],
                                      frames_per_video=s["frames_per_video"], seed=0)
    victim = sorted((folder / "videos" / "plain").glob("*.mp4"))[0]
    victim.write_bytes(b"not a video" * 100)
    tiny_doc["train"]["epochs"] = 1
    with pytest.raises(UnreadableVideosError, match=victim.name):
        fit(trial_from_dict(tiny_doc), lambda m, c: None)
    tiny_doc["data"]["on_error"] = "skip"  # 1 of 8 or 24 videos: above the default 1 % threshold
    with pytest.raises(ValueError, match="more than data.max_skipped_fraction 0.01"):
        fit(trial_from_dict(tiny_doc), lambda m, c: None)
    tiny_doc["data"]["max_skipped_fraction"] = 0.2
    metrics = fit(trial_from_dict(tiny_doc), lambda m, c: None)
    in_train = metrics["train_skipped_videos"] == 1
    assert in_train or metrics["eval/synthetic-plain-test/skipped_videos"] == 1


def cli(*args):
    return subprocess.run([sys.executable, "-m", "calm_study", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=600)


def test_data_check_lists_missing_videos_of_a_dataset(msrvtt_root):
    out = cli("data", "check", "msrvtt", "--root", msrvtt_root, "--split", "test")
    assert out.returncode == 1
    assert "msrvtt-test: 1000 videos, 1000 captions, 997 missing or unreadable" in out.stderr
    assert "video7020.mp4" in out.stderr


def test_data_check_cache_and_bench_on_a_study(tiny_doc, tmp_path):
    study = {"name": "d", "base": {**tiny_doc, "data": {**tiny_doc["data"], "frame_cache": str(tmp_path / "fc")}}}
    path = tmp_path / "d.yaml"
    path.write_text(yaml.safe_dump(study))
    out = cli("data", "check", path)
    assert out.returncode == 0 and "synthetic-plain-train: 24 videos, 48 captions, 0 missing" in out.stderr
    out = cli("data", "cache", path, "--workers", "1")
    assert out.returncode == 0, out.stderr
    assert "synthetic-plain-test: 0 already cached, 8 decoded, 0 failed" in out.stderr
    again = cli("data", "cache", path, "--workers", "1")
    assert "synthetic-plain-test: 8 already cached, 0 decoded" in again.stderr
    out = cli("data", "bench", path, "--limit", "4")
    assert out.returncode == 0 and "clips/s" in out.stdout and "warm cache" in out.stdout
    out = cli("data", "check", path, "--set", "data.eval=[{dataset: msrvtt, split: test}]",
              "--set", f"data.roots.msrvtt={tmp_path / 'nowhere'}")
    assert out.returncode == 1 and "does not exist" in out.stderr


def test_data_bench_on_the_real_clips():
    folder = SHARED_DATA / "msrvtt-sample" / "videos"
    if not folder.is_dir():
        pytest.skip("../shared/data is not present")
    out = cli("data", "bench", folder, "--limit", "2", "--frames", "4", "--size", "64")
    assert out.returncode == 0, out.stderr
    assert "decode (no cache)" in out.stdout and "read (warm cache)" in out.stdout


def test_cross_domain_study_rows_name_train_and_eval_datasets():
    from calm_study.study.spec import expand, load_study

    trials = expand(load_study(REPO / "studies" / "cross_domain.yaml"))
    assert {t.config.data.train.dataset for t in trials} == {"msrvtt", "didemo", "lsmdc"}
    assert all([e.dataset for e in t.config.data.eval] == ["msrvtt", "didemo", "lsmdc"] for t in trials)
    assert {t.config.loss.align for t in trials} == {"none", "vae"} and len(trials) == 6
    demo = expand(load_study(REPO / "studies" / "cross_domain.yaml", "demo"))
    assert {t.config.data.train.domain for t in demo} == {"plain", "textured"}


@pytest.mark.slow
def test_captioning_trains_and_decodes_on_real_msrvtt_clips(tiny_doc, msrvtt_root, tmp_path):
    """The official captioning split of the real annotation file, with the clips that are present (18 train, 7 test);
    every test clip is scored against all its 20 references."""
    import json

    doc = msrvtt_doc(tiny_doc, msrvtt_root, tmp_path)
    doc.update(task="captioning", caption={"max_length": 16, "samples": 7})
    doc["model"] = {**doc["model"], "family": "captioner"}
    doc["loss"] = {"align": "vae"}
    doc["data"] = {**doc["data"], "train": {"dataset": "msrvtt", "split": "caption_train"},
                   "eval": [{"name": "msrvtt", "dataset": "msrvtt", "split": "caption_test"}]}
    doc["train"] = {**doc["train"], "epochs": 2, "batch_size": 16}
    cfg = trial_from_dict(doc)
    metrics = fit(cfg, lambda m, c: None)
    assert metrics["train_skipped_videos"] == 6513 - 18 and metrics["eval/msrvtt/skipped_videos"] == 2990 - 7
    for name in ("CIDEr", "BLEU4", "METEOR", "ROUGE_L", "trivial_CIDEr"):
        assert 0 <= metrics[f"eval/msrvtt/{name}"] <= 1000
    samples = json.loads(metrics["eval/msrvtt/samples"])
    info = {v["video_id"]: v for v in json.loads((SHARED_DATA / "msrvtt-sample" / "video_info.json").read_text())}
    assert sorted(s["video"] for s in samples) == sorted(k for k, v in info.items() if v["split"] == "test")
    captions = json.loads((SHARED_DATA / "msrvtt-sample" / "captions.json").read_text())
    for s in samples:  # the references are the clip's real captions
        assert set(s["references"]) <= set(captions[f"{s['video']}.mp4"])
