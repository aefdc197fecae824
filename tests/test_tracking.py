"""MLflow tracking (study/tracking.py) against a real local MLflow store (sqlite under tmp_path): one run per trial
with params, tags and per-epoch metrics; idempotent syncs; the live per-epoch path; the study run's artifacts; a
failing store never fails the caller. The real 2-trial Ray study through the CLI is tracked too: tests/test_ray_study.py
runs it (interrupted, completed, run again) and checks its MLflow runs with the helpers at the end of this file."""

import json
from pathlib import Path

import pytest
import yaml

from calm_study.configio import ConfigError
from calm_study.names import RENAMED_TERMS
from calm_study.study import tracking
from calm_study.study.spec import load_study
from calm_study.study.state import StudyFiles, StudyStateError, write_study_results

mlflow = pytest.importorskip("mlflow")

REPO = Path(__file__).resolve().parents[1]
NO_TELEMETRY = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}  # tests reach nothing beyond 127.0.0.1


@pytest.fixture(autouse=True)
def _no_telemetry(monkeypatch):
    for k, v in NO_TELEMETRY.items():
        monkeypatch.setenv(k, v)


def study_doc(tmp_path: Path, uri: str | None, cache: str = "") -> dict:
    from .conftest import two_trial_study

    doc = two_trial_study("two", str(tmp_path / "runs"), str(tmp_path / "results"), cache)
    if uri is not None:
        doc["tracking"] = {"mlflow": {"uri": uri}}
    return doc


def make_study(tmp_path: Path, uri: str | None, **extra):
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump({**study_doc(tmp_path, uri), **extra}))
    return load_study(path)


def record(trial, epoch: int, status: str = "running") -> dict:
    """A metrics.jsonl line as EpochLog writes it (numbers, a captioning-style JSON string, the bookkeeping)."""
    rec = {"epoch": epoch, "loss_total": 2.0 / epoch, "loss_task": 1.5 / epoch, "loss_align": 0.1, "lr_clip": 1e-3,
           "lr_new": 1e-3, "train_s": 1.0, "train_skipped_videos": 0, "eval_s": 0.5, "status": status,
           "arm_id": trial.arm_id, "seed": trial.seed, "checkpoint": f"/x/checkpoint_{epoch}",
           "logged_at": 1_700_000_000.0 + epoch}
    for label in ("plain", "textured"):
        rec |= {f"eval/{label}/t2v_R1": 10.0 * epoch, f"eval/{label}/t2v_MnR": 3.0, f"eval/{label}/skipped_videos": 0,
                f"eval/{label}/samples": json.dumps([{"video": "v", "caption": "c"}])}
    return rec


def append(study, trial, rec: dict) -> None:
    files = StudyFiles(study)
    files.storage.append_line(files.run_log(trial.key), json.dumps(rec))


def client_for(study):
    return mlflow.MlflowClient(tracking_uri=tracking.resolve_uri(study.tracking.mlflow.uri))


def runs_of(study, kind: str = tracking.KIND_TRIAL) -> dict:
    client = client_for(study)
    experiment = client.get_experiment_by_name(study.name)
    runs = client.search_runs([experiment.experiment_id], f'tags.`{tracking.TAG_KIND}` = "{kind}"')
    return {r.info.run_name: r for r in runs}


def history(study, run, name: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client_for(study).get_metric_history(run.info.run_id, name))


def sync(study):
    from calm_study.study.state import study_trials

    trials = study_trials(study)
    _, status = write_study_results(study, trials)
    tracking.sync_study(study, trials, status)
    return status


def test_sync_logs_every_trial_once_and_a_resumed_trial_adds_only_its_new_epoch(tmp_path):
    study = make_study(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}")
    a, b = sorted(_trials(study), key=lambda t: t.key)
    append(study, a, record(a, 1))
    append(study, a, record(a, 2, "completed"))
    append(study, b, record(b, 1))  # b stopped after 1 of 2 epochs (a killed study)
    report = tmp_path / "results" / "two" / "_report"
    report.mkdir(parents=True)
    (report / "report.md").write_text("# two\n")

    sync(study)
    runs = runs_of(study)
    assert set(runs) == {a.key, b.key}  # one run per trial, named by its key
    ra, rb = runs[a.key], runs[b.key]
    assert history(study, ra, "eval/plain/t2v_R1") == [(1, 10.0), (2, 20.0)]
    assert history(study, ra, "loss_align_dist") == [(1, 0.1), (2, 0.1)]  # renamed as in the Parquet
    assert [s for s, _ in history(study, ra, "lr_new")] == [1, 2] and history(study, rb, "train_s") == [(1, 1.0)]
    assert "eval/plain/samples" not in ra.data.metrics and "seed" not in ra.data.metrics  # not metrics
    assert "logged_at" not in ra.data.metrics and "epoch" not in ra.data.metrics
    tags = ra.data.tags
    assert tags["study"] == "two" and tags["trial_key"] == a.key and tags["arm_id"] == a.arm_id
    assert tags["seed"] == "7" and tags["model_family"] == a.config.model.family and tags["task"] == "retrieval"
    assert tags["regime"] == "finetune" and tags["status"] == "completed" and ra.info.status == "FINISHED"
    assert rb.data.tags["status"] == "incomplete" and rb.info.status == "KILLED"
    params = ra.data.params
    assert params["anchors_count"] == str(a.config.anchors.count) and params["train_epochs"] == "2"
    assert params["loss_align"] == a.config.loss.align and len(params) > 50  # the flattened config

    study_runs = runs_of(study, tracking.KIND_STUDY)
    assert list(study_runs) == ["two"]
    client = client_for(study)
    top = {f.path for f in client.list_artifacts(study_runs["two"].info.run_id)}
    assert {"trials.parquet", "_report"} <= top
    assert [f.path for f in client.list_artifacts(study_runs["two"].info.run_id, "_report")] == ["_report/report.md"]

    sync(study)  # nothing new: nothing added
    again = runs_of(study)
    assert {k: r.info.run_id for k, r in again.items()} == {k: r.info.run_id for k, r in runs.items()}
    assert len(history(study, again[a.key], "eval/plain/t2v_R1")) == 2
    assert len(history(study, again[b.key], "eval/textured/t2v_MnR")) == 1
    assert len(runs_of(study, tracking.KIND_STUDY)) == 1

    append(study, b, record(b, 2, "completed"))  # b resumed and finished its second epoch
    sync(study)
    resumed = runs_of(study)[b.key]
    assert resumed.info.run_id == rb.info.run_id
    assert history(study, resumed, "eval/plain/t2v_R1") == [(1, 10.0), (2, 20.0)]
    assert resumed.data.tags["status"] == "completed" and resumed.info.status == "FINISHED"
    assert resumed.data.tags[tracking.TAG_LAST_EPOCH] == "2"


def _trials(study):
    from calm_study.study.spec import expand

    return expand(study)


def test_live_epochs_then_the_end_sync_add_each_step_once(tmp_path):
    study = make_study(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}")
    trials = _trials(study)
    tracking.publish_settings(study, trials)
    t = trials[0]
    files = StudyFiles(study)
    live = tracking.EpochTracker(files.storage.root, files.run_log(t.key))  # as ray_runner.EpochLog holds it
    append(study, t, record(t, 1))
    live.after_epoch()
    run = runs_of(study)[t.key]
    assert history(study, run, "eval/plain/t2v_R1") == [(1, 10.0)] and run.info.status == "RUNNING"
    assert run.data.params["anchors_count"] == str(t.config.anchors.count)
    live.after_epoch()  # called again without a new epoch: nothing added
    append(study, t, record(t, 2, "completed"))
    live.after_epoch()
    run = runs_of(study)[t.key]
    assert history(study, run, "eval/plain/t2v_R1") == [(1, 10.0), (2, 20.0)] and run.info.status == "FINISHED"
    assert not live.off

    sync(study)
    run = runs_of(study)[t.key]
    assert len(history(study, run, "eval/plain/t2v_R1")) == 2 and len(history(study, run, "loss_task")) == 2
    assert set(runs_of(study)) == {t.key}  # the other trial never started: no run


def test_a_study_without_tracking_writes_no_settings_and_the_live_tracker_stays_off(tmp_path):
    study = make_study(tmp_path, None)
    trials = _trials(study)
    tracking.publish_settings(study, trials)
    files = StudyFiles(study)
    assert not Path(files.storage.path(study.name, tracking.SETTINGS_FILE)).exists()
    live = tracking.EpochTracker(files.storage.root, files.run_log(trials[0].key))
    append(study, trials[0], record(trials[0], 1))
    live.after_epoch()
    assert live.off
    tracking.require_mlflow(study)  # nothing asked: nothing required


def test_a_failing_store_warns_once_and_never_raises(tmp_path, capsys):
    (tmp_path / "a-file").write_text("")
    study = make_study(tmp_path, f"sqlite:///{tmp_path / 'a-file' / 'mlflow.db'}")  # no folder can be made there
    trials = _trials(study)
    tracking.publish_settings(study, trials)
    files = StudyFiles(study)
    live = tracking.EpochTracker(files.storage.root, files.run_log(trials[0].key))
    for epoch in (1, 2):
        append(study, trials[0], record(trials[0], epoch))
        live.after_epoch()
    assert live.off
    sync(study)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "MLflow tracking" in line]
    assert len(warnings) == 3, warnings  # before Ray, the first live epoch (then quiet), the end sync
    assert all("training is not affected" in w for w in warnings)


def test_tracking_is_checked_strictly_and_mlflow_is_required(tmp_path, monkeypatch):
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(study_doc(tmp_path, "http://127.0.0.1:5000") | {
        "tracking": {"mlflow": {"uri": "http://127.0.0.1:5000", "experimnt": "x"}}}))
    with pytest.raises(ConfigError, match=r"tracking.mlflow.experimnt: unknown key \(did you mean 'experiment'\?\)"):
        load_study(path)
    path.write_text(yaml.safe_dump(study_doc(tmp_path, " ")))
    with pytest.raises(ConfigError, match="tracking.mlflow.uri: must be non-empty"):
        load_study(path)
    path.write_text(yaml.safe_dump(study_doc(tmp_path, None)))
    study = load_study(path, sets=["tracking.mlflow.uri=http://127.0.0.1:5000", "tracking.mlflow.experiment=abl"])
    assert study.tracking.mlflow.uri == "http://127.0.0.1:5000" and study.tracking.mlflow.experiment == "abl"
    assert load_study(path).tracking.mlflow is None  # off by default

    real = tracking.importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name))
    with pytest.raises(StudyStateError, match=r"tracking.mlflow: .*pip install mlflow"):
        tracking.require_mlflow(study)


def test_local_store_uris_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert tracking.resolve_uri("sqlite:///mlflow.db") == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert tracking.resolve_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"
    assert tracking.resolve_uri("mlruns") == (tmp_path / "mlruns").as_uri()
    assert tracking.resolve_uri("http://mlflow.example:5000") == "http://mlflow.example:5000"


def assert_tracked_each_epoch_once(path: Path, runs_dir: Path, started: float) -> dict:
    """The MLflow side of the two-trial Ray study (tests/test_ray_study.py, tracked into a sqlite store), once it
    completed: one run per trial holding every number of every epoch once, created live by the Train controller,
    and one study run with the Parquet. Returns the trial runs, for `assert_rerun_tracked_nothing_new`."""
    study = load_study(path)
    runs = runs_of(study)
    assert len(runs) == 2
    for key, r in runs.items():
        assert r.data.tags["status"] == "completed" and r.info.status == "FINISHED"
        assert r.data.tags["trial_key"] == key and r.data.tags["regime"] == "finetune"
        log = [json.loads(line) for line in (runs_dir / f"train-{key}" / "metrics.jsonl").read_text().splitlines()]
        numbers = {RENAMED_TERMS.get(k, k) for k, v in log[0].items()
                   if type(v) in (int, float) and k not in ("epoch", "seed", "logged_at")}
        assert {"eval/plain/t2v_R1", "eval/textured/v2t_MnR", "loss_task", "lr_clip", "train_s", "eval_s"} <= numbers
        assert set(r.data.metrics) == numbers
        for name in numbers:  # every epoch's value, once (an interrupted trial continued its run); setup_s only on
            # the first epoch of each start
            logged = [rec["epoch"] for rec in log if RENAMED_TERMS.get(name, name) in rec or name in rec]
            assert [s for s, _ in history(study, r, name)] == logged, name
        assert [s for s, _ in history(study, r, "train_s")] == list(range(1, len(log) + 1))
        # Logged live: the run was made at epoch 1, before epoch 2 was logged.
        assert started < r.info.start_time / 1000 < log[1]["logged_at"]
    study_run = runs_of(study, tracking.KIND_STUDY)[study.name]
    client = client_for(study)
    assert "trials.parquet" in {f.path for f in client.list_artifacts(study_run.info.run_id)}
    assert study_run.info.status == "FINISHED" and study_run.data.tags["status"] == "2 completed"
    storage = StudyFiles(study).storage
    assert storage.exists(storage.path(study.name, tracking.SETTINGS_FILE))
    return runs


def assert_rerun_tracked_nothing_new(path: Path, runs: dict) -> None:
    """After running the completed study again: the same runs, each step still logged once, one study run."""
    study = load_study(path)
    rerun = runs_of(study)
    assert {k: r.info.run_id for k, r in rerun.items()} == {k: r.info.run_id for k, r in runs.items()}
    for r in rerun.values():
        assert set(r.data.metrics) == set(runs[r.info.run_name].data.metrics)
        for name in r.data.metrics:
            before = [s for s, _ in history(study, runs[r.info.run_name], name)]
            assert [s for s, _ in history(study, r, name)] == before, name
    assert len(runs_of(study, tracking.KIND_STUDY)) == 1
