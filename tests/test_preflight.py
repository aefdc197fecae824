"""Fail early and clearly: problems that used to surface only inside Ray workers (or never) are caught before Ray
starts, with one paragraph, exit status 2, no traceback, and nothing earlier moved or changed."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from calm_study.study.results import ResultsError, parse_metric_log, write_parquet_atomic
from calm_study.study.spec import expand, load_study
from calm_study.study.state import trial_status

REPO = Path(__file__).resolve().parents[1]
SHARED_MSRVTT = REPO.parent / "shared" / "data" / "msrvtt-sample"


def cli(*args, timeout=120):
    tic = time.time()
    out = subprocess.run([sys.executable, "-m", "calm_study", *map(str, args)], cwd=REPO, capture_output=True,
                         text=True, timeout=timeout)
    out.seconds = time.time() - tic
    return out


def refused(out, *excerpts, seconds=60):
    text = out.stdout + out.stderr
    assert out.returncode == 2, text[-3000:]
    assert "Traceback" not in text and out.seconds < seconds, text[-3000:]
    for excerpt in excerpts:
        assert excerpt in text, (excerpt, text[-3000:])


def study_file(tmp_path, **base) -> Path:
    doc = {"name": "pre", "base": {"model": {"clip": "calm-tiny", "pretrained": None}, **base},
           "storage": str(tmp_path / "runs"), "results_dir": str(tmp_path / "results")}
    path = tmp_path / "pre.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_an_unreachable_address_is_refused_in_seconds(tmp_path):
    refused(cli("run", study_file(tmp_path), "--address", "127.0.0.1:1"), "--address 127.0.0.1:1",
            "nothing answers there", seconds=30)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()


def test_model_and_weights_problems_are_caught_before_ray(tmp_path):
    refused(cli("validate", study_file(tmp_path, model={"clip": "calm-tiyn", "pretrained": None})),
            "model.clip: 'calm-tiyn' is not an open_clip architecture (did you mean 'calm-tiny'?)")
    refused(cli("validate", study_file(tmp_path, model={"clip": "ViT-B-32-quickgelu", "pretrained": "openia"})),
            "model.pretrained: 'openia' is not a pretrained tag of ViT-B-32-quickgelu (did you mean 'openai'?)")
    refused(cli("validate", study_file(tmp_path, model={"clip": "calm-tiny", "pretrained": str(tmp_path / "w.pt")})),
            "the checkpoint file", "w.pt", "does not exist")
    (tmp_path / "w.pt").write_text("these are not weights")
    refused(cli("run", study_file(tmp_path, model={"clip": "calm-tiny", "pretrained": str(tmp_path / "w.pt")})),
            "cannot be loaded as weights")
    assert not (tmp_path / "runs").exists()


def test_batch_not_divisible_by_the_workers_is_a_configuration_error(tmp_path):
    path = study_file(tmp_path, train={"batch_size": 10})
    refused(cli("validate", path, "--set", "resources.num_workers=3"),
            "train.batch_size: 10 is not divisible by resources.num_workers 3")


def test_range_errors_name_the_key_and_value(tmp_path):
    path = study_file(tmp_path, train={"epochs": 0})
    refused(cli("validate", path, "--set", "resources.cpus_per_worker=0"), "train.epochs: 0 must be >= 1",
            "resources.cpus_per_worker: 0.0 must be > 0")
    refused(cli("validate", path, "--set", "storge=/tmp/x"), "(did you mean 'storage'?)")


def test_an_error_in_a_preset_is_reported_there_and_validate_checks_every_preset(tmp_path):
    doc = {"name": "p", "base": {"model": {"clip": "calm-tiny", "pretrained": None}},
           "presets": {"demo": {"base": {"train": {"epochs": 0}}}}}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(doc))
    refused(cli("validate", path), "presets.demo.base.train.epochs: 0 must be >= 1")


def test_a_binary_study_file_is_refused_without_a_traceback(tmp_path):
    path = tmp_path / "binary.yaml"
    path.write_bytes(bytes(range(256)) * 4)
    refused(cli("validate", path), "not a text file")


@pytest.mark.skipif(not SHARED_MSRVTT.is_dir(), reason="../shared/data is not present")
def test_missing_videos_stop_the_study_before_ray_and_fresh_moves_nothing(tmp_path):
    """The 25 real clips: most MSR-VTT test videos are missing. Under on_error error the run stops naming files; under
    skip it stops on the threshold; --fresh on an earlier study's folders leaves them where they are."""
    root = tmp_path / "MSRVTT"  # the real annotation files and the 25 real clips
    root.mkdir()
    for f in (SHARED_MSRVTT.parent / "msrvtt").iterdir():
        (root / f.name).symlink_to(f)
    (root / "videos").symlink_to(SHARED_MSRVTT / "videos")
    path = study_file(tmp_path, data={"train": {"dataset": "msrvtt", "split": "train"},
                                      "eval": [{"name": "msrvtt", "dataset": "msrvtt", "split": "test"}],
                                      "roots": {"msrvtt": str(root)}, "cache_dir": str(tmp_path / "c")})
    earlier = tmp_path / "results" / "pre"
    earlier.mkdir(parents=True)
    (earlier / "trials.parquet").write_bytes(b"an earlier result")
    refused(cli("run", path, "--fresh"), "msrvtt-test: 997 of 1000 videos cannot be read (data.on_error error)")
    assert (earlier / "trials.parquet").read_bytes() == b"an earlier result"  # not archived: a check failed first
    refused(cli("run", path, "--set", "data.on_error=skip"),
            "997 of 1000 videos cannot be read, more than data.max_skipped_fraction 0.01")
    assert json.loads((tmp_path / "c" / "video_checks.json").read_text())  # remembered for the next run


def test_report_problems_are_user_errors(tmp_path):
    results = tmp_path / "results" / "broken"
    results.mkdir(parents=True)
    (results / "trials.parquet").write_bytes(b"PAR1 truncated")
    refused(cli("report", "broken", "--results-dir", tmp_path / "results"), "cannot be read",
            "re-running the study's `run` command rebuilds it")
    good = tmp_path / "results" / "good"
    good.mkdir()
    (good / "trials.parquet").write_bytes((REPO / "tests" / "data" / "schema2_trials.parquet").read_bytes())
    (good / "_report").write_text("a file where the report folder should be")
    refused(cli("report", "good", "--results-dir", tmp_path / "results"), "cannot write the report into")


def test_a_corrupt_metric_log_line_stops_the_rebuild_naming_file_and_line():
    good = json.dumps({"epoch": 1, "loss_total": 1.0})
    assert [r["epoch"] for r in parse_metric_log(good + "\n" + '{"epoch": 2, "lo')] == [1]  # cut short: tolerated
    with pytest.raises(ResultsError, match=r"runs/x/metrics.jsonl, line 2: not a metric record"):
        parse_metric_log(good + "\n{garbage\n" + json.dumps({"epoch": 3}) + "\n", "runs/x/metrics.jsonl")


def test_status_tells_an_interrupted_trial_from_a_running_one():
    trial = expand(load_study(REPO / "studies" / "anchor_ablation.yaml", "demo"))[0]
    log = [{"epoch": 1}]
    assert trial_status(trial, log, None, "RUNNING") == "running"
    assert trial_status(trial, log, None, "INTERRUPTED") == "interrupted"


def test_results_files_are_readable_by_others(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_parquet_atomic(pd.DataFrame({"a": [1]}), tmp_path / "s" / "trials.parquet")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_the_summary_and_status_say_how_many_videos_were_skipped():
    from calm_study.study.state import StudyStatus, describe

    study = load_study(REPO / "studies" / "anchor_ablation.yaml", "demo")
    trials = expand(study)
    status = StudyStatus({t.key: "completed" for t in trials}, {}, None, {t.key: 8 for t in trials},
                         {"training set": 2, "plain_test": 1})
    assert "unreadable videos skipped (data.on_error skip): training set 2, plain_test 1" in describe(study, trials,
                                                                                                     status)


def test_a_pretrained_tag_neither_cached_nor_downloadable_is_refused_before_any_work(monkeypatch, tmp_path):
    from huggingface_hub import constants

    from calm_study.configio import ConfigError
    from calm_study.data.sources import check_weights
    from calm_study.validate import trial_from_dict

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # an empty cache
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    cfg = trial_from_dict({"model": {"clip": "ViT-B-32-quickgelu", "pretrained": "openai"}})
    with pytest.raises(ConfigError) as info:
        check_weights([cfg], "study x")
    (problem,) = info.value.problems
    assert problem.startswith("model.pretrained: the weights of tag 'openai' of model.clip ViT-B-32-quickgelu are not "
                              "on this machine and cannot be downloaded now: Hugging Face repository "
                              f"timm/vit_base_patch32_clip_224.openai (cache {tmp_path / 'hub'}): not cached, and "
                              "HF_HUB_OFFLINE is set")
    cached = tmp_path / "hub" / "models--timm--vit_base_patch32_clip_224.openai"
    (cached / "refs").mkdir(parents=True)
    (cached / "refs" / "main").write_text("abc")
    (cached / "snapshots" / "abc").mkdir(parents=True)
    (cached / "snapshots" / "abc" / "open_clip_model.safetensors").write_bytes(b"")
    check_weights([cfg], "study x")  # in the cache: nothing to download
