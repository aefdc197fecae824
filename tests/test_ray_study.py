"""A real Ray Tune + Ray Train run of a 2-trial study through the CLI (interrupted by Ctrl-C, then completed), its
Parquet, its MLflow runs, and an idempotent re-run; and the shipped demo study run frozen."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def assert_quiet(console: str) -> None:
    """A normal run's console: calm_study's lines, none of Ray's internals or misleading pointers."""
    for noise in ("core_worker.cc", "(raylet)", "Traceback", "Tuner.restore", "tensorboard", "TrainController",
                  "RayTrainWorker", "Token authentication"):
        assert noise not in console, (noise, console[-3000:])


def assert_fits_console(console: str, width: int = 120) -> None:
    """Every line calm_study prints fits a 120-column terminal (a quiet console holds calm_study's lines only)."""
    long = [line for line in console.splitlines() if len(line) > width]
    assert not long, f"{len(long)} console line(s) over {width} columns: {long}"


@pytest.mark.slow
def test_two_trial_study_runs_on_ray_and_lands_in_parquet(tmp_path, data_cache):
    from .conftest import two_trial_study
    from .test_tracking import NO_TELEMETRY, assert_rerun_tracked_nothing_new, assert_tracked_each_epoch_once

    # An object-store style URI: the storage goes through pyarrow's filesystems like s3:// or gs:// would. The study
    # is tracked in a local MLflow store (sqlite), checked at the end by tests/test_tracking.py's helpers.
    # 6 epochs of about half a second: the Ctrl-C below lands mid-study, after the first
    study = two_trial_study("two", f"file://{tmp_path / 'runs'}", str(tmp_path / "results"), str(data_cache),
                            epochs=6)
    study["tracking"] = {"mlflow": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}}
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(study))
    cmd = [sys.executable, "-m", "calm_study", "run", str(path)]
    env = {**os.environ, **NO_TELEMETRY}
    started = time.time()

    # Ctrl-C after the first epoch: calm_study says how to go on (the same command), not Ray's Tuner.restore.
    log = tmp_path / "interrupted.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, text=True, env=env,
                                start_new_session=True)  # its own process group, as a terminal's Ctrl-C reaches
        deadline = time.time() + 600
        while "epoch 1/6" not in log.read_text() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(300)
    text = log.read_text()
    assert "run the same command again" in text and f"calm_study run {path}" in text, text[-3000:]
    assert_quiet(text)
    assert_fits_console(text)  # the interrupted run's lines, its "run the same command again" included

    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "2 completed" in run.stdout
    assert "MLflow tracking" not in run.stdout + run.stderr, run.stderr[-3000:]  # no tracking warning
    assert_quiet(run.stdout + run.stderr)
    assert_fits_console(run.stdout + run.stderr)  # "resuming study" and the trials' "resumed from" lines included
    assert "trials: 2 done, 0 running, 0 pending" in run.stderr  # the live count
    assert re.search(r"^\[[0-9a-f]{10}-s7\] epoch 6/6: loss ", run.stderr, flags=re.M)  # one line per epoch per trial
    table = run.stdout[run.stdout.index("two: "):run.stdout.index("study two:")]
    assert max(map(len, table.splitlines())) <= 120, table

    df = pd.read_parquet(tmp_path / "results" / "two")
    assert len(df) == 2 * 6 * 2  # trials x epochs x evaluation sets
    assert not df.duplicated(["arm_id", "seed", "epoch", "eval_set"]).any()
    assert set(df.status) == {"completed"} and set(df.seed) == {7} and set(df.eval_set) == {"plain", "textured"}
    assert sorted(df.drop_duplicates("arm_id").anchors_count) == [0, 20]
    assert df.t2v_R1.between(0, 100).all() and (df.t2v_MnR >= 1).all() and df.loss_task.notna().all()
    assert df[df.loss_align == "none"].loss_align_rec.isna().all()
    assert df[df.loss_align == "vae"].loss_align_kl.notna().all()
    for key in df.trial_key.unique():  # the durable per-epoch log and the Train checkpoints
        run_dir = tmp_path / "runs" / "two" / "train" / f"train-{key}"
        assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 6
        assert list(run_dir.glob("checkpoint_*/state.pt"))

    documented = (REPO / "results" / "_README.md").read_text()
    undocumented = [c for c in df.columns if f"`{c}`" not in documented and not c.startswith("data_synthetic_")]
    assert not undocumented, f"columns missing from results/_README.md: {undocumented}"

    tracked = assert_tracked_each_epoch_once(path, tmp_path / "runs" / "two" / "train", started)

    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming study two" in again.stderr
    df2 = pd.read_parquet(tmp_path / "results" / "two")
    assert len(df2) == len(df)  # nothing re-trained, nothing duplicated
    pd.testing.assert_frame_equal(df2[["trial_key", "epoch", "t2v_R1"]], df[["trial_key", "epoch", "t2v_R1"]])
    assert_rerun_tracked_nothing_new(path, tracked)


@pytest.mark.slow
def test_demo_anchor_ablation_runs_frozen_and_its_trials_share_the_feature_cache(tmp_path):
    """The shipped demo in frozen-feature mode: every row says regime frozen, and the six trials (same encoder
    weights) computed each split's features once: one cache entry per split."""
    features = tmp_path / "features"
    sets = ["model.frozen=true", "anchors.encode=once", "train.epochs=2", f"data.feature_cache={features}",
            f"storage={tmp_path / 'runs'}", f"results_dir={tmp_path / 'results'}"]
    cmd = [sys.executable, "-m", "calm_study", "run", "studies/anchor_ablation.yaml", "--preset", "demo"]
    run = subprocess.run(cmd + [a for s in sets for a in ("--set", s)], cwd=REPO, capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    df = pd.read_parquet(tmp_path / "results" / "anchor_ablation")
    assert len(df) == 6 * 2 * 2 and set(df.regime) == {"frozen"} and df.model_frozen.all()
    assert set(df.status) == {"completed"} and df.t2v_R1.between(0, 100).all()
    assert len(list(features.rglob("*.npz"))) == 3  # synthetic plain train, plain test, textured test
    assert "CLIP encoders frozen" in run.stdout  # the end-of-run table says which regime it shows
    assert_quiet(run.stdout + run.stderr)  # a demo run's console: calm_study's lines only
    assert_fits_console(run.stdout + run.stderr)  # the table, the epochs, where the results are, how to report
    assert f"\n  {tmp_path / 'results' / 'anchor_ablation' / 'trials.parquet'}\n" in run.stdout
    assert "\n  python -m calm_study report studies/anchor_ablation.yaml --preset demo\n" in run.stdout
    table = run.stdout[run.stdout.index("anchor_ablation: "):run.stdout.index("study anchor_ablation:")]
    assert max(map(len, table.splitlines())) <= 120, table
    assert len(re.findall(r"^\[[0-9a-f]{10}-s0\] epoch \d/2: ", run.stderr, flags=re.M)) == 6 * 2


def run_python(code: str) -> str:
    """The last line a fresh interpreter prints running `code` from the repository root."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO,
                         timeout=120)
    return out.stdout.strip().splitlines()[-1]


def test_tunes_callback_telemetry_is_recorded_without_importing_every_integration():
    """Ray Tune's own tag_callbacks imports each logger integration it knows (mlflow with it, where installed) to
    name a run's callbacks; the driver's replacement records the same kind of count without those imports."""
    pytest.importorskip("mlflow")  # without mlflow, Ray's own function is cheap too: nothing to tell apart
    code = """
import json, sys
from calm_study.study import ray_runner
from ray.air._internal import usage
replace = {replace}
if replace:
    ray_runner._tag_callbacks_without_imports()
recorded = usage.tag_callbacks([ray_runner.TrialProgress(3)])
print(json.dumps([recorded, "mlflow" in sys.modules, "ray.air.integrations.mlflow" in sys.modules]))
"""
    assert json.loads(run_python(code.format(replace=True))) == [True, False, False]
    assert json.loads(run_python(code.format(replace=False)))[1:] == [True, True]  # what the replacement avoids


def test_stop_ray_ends_every_process_ray_init_started():
    code = """
import json, ray
from calm_study.study.ray_runner import stop_ray
ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR")
node = ray._private.worker._global_node
processes = {kind: [info.process for info in infos] for kind, infos in node.all_processes.items()}
stop_ray()
alive = [kind for kind, ps in processes.items() if any(p.poll() is None for p in ps)]
print(json.dumps([ray.is_initialized(), sorted(processes), alive]))
"""
    initialized, kinds, alive = json.loads(run_python(code))
    assert not initialized and "monitor" in kinds and "raylet" in kinds, kinds
    assert alive == []
