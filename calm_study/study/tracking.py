"""Experiment tracking in MLflow (study key `tracking.mlflow`; off by default; docs/tracking.md).

One MLflow run per trial (run name: the trial key), with the flattened trial config as params, every numeric
per-epoch value as a metric (step = epoch) and the trial's identity as tags; and one study run that receives the
study's result files when the study ends. Two paths log, the same way:

- live: ray_runner.EpochLog calls `EpochTracker.after_epoch` in the Train controller, after the epoch's line in
  metrics.jsonl (and its checkpoint) is durable;
- catch-up: run_study calls `sync_study` at the end, from every trial's metrics.jsonl (the source of truth), so the
  tracking is complete even when a live call failed or the study began without tracking.

Both find a trial's run by its tags and log only the epochs after the run's `last_epoch` tag, in the same batch as
that tag, so either may run any number of times (resumed trials, re-runs of a finished study) without a duplicate
step. The MLflow client (`mlflow.MlflowClient`) is imported inside functions: calm_study imports without mlflow. A
tracking failure never stops training: one warning line, and training goes on.
"""

from __future__ import annotations

import importlib.util
import json
import os
import posixpath
import re
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from calm_study.names import RENAMED_TERMS, TRIAL_FILE, key_of_run, regime
from calm_study.progress import say
from calm_study.study.results import config_columns, parse_metric_log, results_path
from calm_study.study.spec import Study, Trial, is_optuna, metric_key
from calm_study.study.state import StudyFiles, StudyStateError, StudyStatus, trial_logs
from calm_study.study.storage import Storage
from calm_study.validate import trial_from_dict

# <storage>/<study>/tracking.json: the resolved settings of the latest `run` (the Train controllers read them, since a
# restored Tune experiment keeps the param space of its first run) and the study's tracking instance id. --fresh
# archives it with the rest of the study, so a fresh start never appends to the runs of the archived one.
SETTINGS_FILE = "tracking.json"

# Tags. The identity tags have the names of the Parquet columns they match; calm_study's own bookkeeping is prefixed.
TAG_STUDY, TAG_TRIAL, TAG_ARM, TAG_SEED = "study", "trial_key", "arm_id", "seed"
TAG_STATUS, TAG_FAMILY, TAG_TASK, TAG_REGIME, TAG_SWEPT, TAG_ERROR = (
    "status", "model_family", "task", "regime", "swept", "error")
TAG_KIND = "calm_study.run_kind"  # KIND_TRIAL | KIND_STUDY: marks the study run apart from the trial runs
KIND_TRIAL, KIND_STUDY = "trial", "study"
TAG_INSTANCE = "calm_study.study_instance"  # changes with --fresh: a new start of the study gets new runs
TAG_LAST_EPOCH = "calm_study.last_epoch"  # the last epoch whose metrics the run holds; logged with them, atomically
TAG_METRIC = "calm_study.metric"  # study run: the study's metric key and mode

NOT_METRICS = ("epoch", "seed", "logged_at")  # numbers in a log record that are no metrics (epoch is the step)
# A calm_study status -> the MLflow run status (stopped_early ended normally: its `status` tag says how).
RUN_STATUS = {"completed": "FINISHED", "stopped_early": "FINISHED", "diverged": "FAILED", "error": "FAILED",
              "incomplete": "KILLED", "interrupted": "KILLED", "running": "RUNNING"}
# MLflow retries an unreachable server for minutes (7 retries, 120 s timeout each); the Train controller waits on
# every live call, so calm_study asks for less, unless these are set in the environment.
BOUNDED_WAITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}
MAX_BATCH = 1000  # MLflow's limit of entities per log_batch call
MAX_PARAMS_PER_BATCH = 100
_BAD_NAME_CHARS = re.compile(r"[^/\w.\- ]")  # what MLflow accepts in a metric name


def enabled(study: Study) -> bool:
    return study.tracking.mlflow is not None


def require_mlflow(study: Study) -> None:
    """Pre-flight: a study that asks for MLflow tracking needs the mlflow package where `run` runs (and, for the live
    per-epoch logging, on the head node, where the Train controllers run)."""
    if not enabled(study) or importlib.util.find_spec("mlflow") is not None:
        return
    raise StudyStateError(
        f"tracking.mlflow: study {study.name!r} logs to MLflow ({study.tracking.mlflow.uri}), but the mlflow package "
        f"is not installed in this Python ({sys.executable}). Install it with `pip install mlflow` (or `pip install "
        "mlflow-skinny`, the client only, which is calm_study's `tracking` extra: `pip install -e '.[tracking]'`) on "
        "this machine and the head node, or remove tracking.mlflow from the study file (or --set) to run without "
        "tracking; nothing was started")


def resolve_uri(uri: str) -> str:
    """Local stores as absolute paths: the Train controllers that log live run in other working directories."""
    uri = uri.strip()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///"):]).expanduser().resolve())
    if "://" not in uri and not uri.startswith("file:"):  # a plain folder: MLflow's file store
        return Path(uri).expanduser().resolve().as_uri()
    return uri


def _artifact_location(uri: str, given: str) -> str | None:
    """Where a new experiment keeps artifacts. MLflow's default for a database store is ./mlruns of the process that
    creates the experiment, which for a live run is a Ray worker's folder: calm_study puts it beside the database."""
    if given:
        return given if "://" in given else Path(given).expanduser().resolve().as_uri()
    if uri.startswith("sqlite:////"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlruns").as_uri()
    return None  # a server or a file store decides


def _trial_info(study_name: str, trial: Trial) -> dict:
    """A trial's run: its tags and params (the Parquet's flattened config columns, as MLflow's strings)."""
    cfg = trial.config
    tags = {TAG_STUDY: study_name, TAG_TRIAL: trial.key, TAG_ARM: trial.arm_id, TAG_SEED: str(trial.seed),
            TAG_FAMILY: cfg.model.family, TAG_TASK: cfg.task, TAG_REGIME: regime(cfg.model.frozen),
            TAG_SWEPT: json.dumps(trial.swept, sort_keys=True)}
    return {"tags": tags, "params": {k: str(v) for k, v in config_columns(trial).items()}}


def _settings_path(study: Study) -> tuple[Storage, str]:
    files = StudyFiles(study)
    return files.storage, files.storage.path(study.name, SETTINGS_FILE)


def _write_settings(study: Study, trials: list[Trial]) -> dict:
    """Write (and return) this run's settings, keeping the study's instance id; the grid trials' tags and params go
    along, so that the live logging in the Train controller needs no Study (Optuna trials: their trial.json)."""
    storage, path = _settings_path(study)
    old = json.loads(storage.read_text(path) or "{}")
    spec = study.tracking.mlflow
    settings: dict[str, Any] = {"instance": old.get("instance") or uuid.uuid4().hex[:12], "study": study.name}
    if spec is not None:
        uri = resolve_uri(spec.uri)
        settings.update(uri=uri, experiment=spec.experiment or study.name,
                        artifact_location=_artifact_location(uri, spec.artifact_location),
                        trials={t.key: _trial_info(study.name, t) for t in trials})
    storage.write_text(path, json.dumps(settings, sort_keys=True))
    return settings


def publish_settings(study: Study, trials: list[Trial]) -> None:
    """Before Ray starts: record where the live logging goes, and open the experiment once (this creates a new
    database's tables before several controllers could race to). Never raises: a warning, and training goes on."""
    storage, path = _settings_path(study)
    try:
        if not enabled(study):
            if storage.exists(path):  # keep the instance id, switch the live logging off
                _write_settings(study, [])
            return
        settings = _write_settings(study, [] if is_optuna(study) else trials)
        with _bounded_waits():
            _experiment_id(_client(settings["uri"]), settings)
    except Exception as e:  # noqa: BLE001 - tracking must never stop a study
        _warn(study.tracking.mlflow.uri if enabled(study) else path, e, "the end of the run catches up")


class EpochTracker:
    """Live per-epoch logging, held by ray_runner.EpochLog in the Train controller. Pickled there, so it holds plain
    strings until the first epoch. After one failure it stays quiet for the rest of the Train run (one warning line):
    `sync_study` at the end of the study catches up from the metric log."""

    def __init__(self, storage: str, log_path: str):
        self.storage, self.log_path = storage, log_path
        self.settings: dict | None = None
        self.off = False

    def after_epoch(self) -> None:
        """Log the epochs of this run's metrics.jsonl that its MLflow run does not hold yet (normally: the last)."""
        if self.off:
            return
        try:
            storage = Storage(self.storage)
            folder = posixpath.dirname(self.log_path)  # <storage>/<study>/train/train-<key>
            if self.settings is None:
                study_root = posixpath.dirname(posixpath.dirname(folder))
                self.settings = json.loads(storage.read_text(posixpath.join(study_root, SETTINGS_FILE)) or "{}")
            if not self.settings.get("uri"):
                self.off = True  # tracking is not configured for this run of the study
                return
            key = key_of_run(posixpath.basename(folder)) or ""
            info = self.settings["trials"].get(key) or self._optuna_info(storage, folder)
            log = parse_metric_log(storage.read_text(self.log_path) or "", self.log_path)
            status = str(log[-1].get("status", "running")) if log else "running"
            with _bounded_waits():
                client = _client(self.settings["uri"])
                _sync_trial(client, _experiment_id(client, self.settings), self.settings, info, log, status)
        except Exception as e:  # noqa: BLE001 - tracking must never stop training
            self.off = True
            _warn((self.settings or {}).get("uri", "?"), e, "live logging is off for the rest of this trial's run; "
                  "the end of the study catches up")

    def _optuna_info(self, storage: Storage, folder: str) -> dict:
        """An Optuna trial is not in the settings (sampled after they were written): its identity is in trial.json."""
        d = json.loads(storage.read_text(posixpath.join(folder, TRIAL_FILE)) or "{}")
        trial = Trial(d["arm_id"], d["seed"], trial_from_dict(d["config"], folder), d["swept"])
        info = _trial_info(self.settings["study"], trial)
        self.settings["trials"][trial.key] = info
        return info


def sync_study(study: Study, trials: list[Trial], status: StudyStatus) -> None:
    """End of `run`: bring every trial's run up to its metric log and final status, and upload the study's result
    files to the study run. Idempotent; never raises (one warning line naming what could not be synced)."""
    if not enabled(study):
        return
    failures: list[str] = []
    first: Exception | None = None
    try:
        settings = _write_settings(study, trials)
        logs = trial_logs(study, trials)
        with _bounded_waits():
            client = _client(settings["uri"])
            experiment = _experiment_id(client, settings)
            for t in trials:
                if status.statuses.get(t.key, "pending") == "pending":
                    continue  # never started: no run
                try:
                    _sync_trial(client, experiment, settings, settings["trials"][t.key], logs.get(t.key, []),
                                status.statuses[t.key], status.errors.get(t.key))
                except Exception as e:  # noqa: BLE001 - the other trials still sync
                    failures.append(t.key)
                    first = first or e
            try:
                _sync_study_run(client, experiment, settings, study, status)
            except Exception as e:  # noqa: BLE001
                failures.append("the study run")
                first = first or e
    except Exception as e:  # noqa: BLE001 - tracking must never fail a study
        _warn(study.tracking.mlflow.uri, e, "run the same command again to retry")
        return
    if first is not None:
        _warn(study.tracking.mlflow.uri, first, f"not synced: {', '.join(failures)}; run the same command again to "
              "retry")


# ---- the MLflow side ------------------------------------------------------------------------------------------------

@contextmanager
def _bounded_waits() -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in BOUNDED_WAITS}
    for k, v in BOUNDED_WAITS.items():
        os.environ.setdefault(k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)


def _client(uri: str):
    import logging

    import mlflow

    # A new sqlite store logs its table creation at INFO (mlflow and alembic): noise in the study's console.
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return mlflow.MlflowClient(tracking_uri=uri)


def _experiment_id(client, settings: dict) -> str:
    from mlflow.exceptions import MlflowException

    name = settings["experiment"]
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, artifact_location=settings.get("artifact_location"))
        except MlflowException:  # created meanwhile by another trial's controller
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage != "active":
        raise RuntimeError(f"MLflow experiment {name!r} is deleted: restore it (mlflow experiments restore), or set "
                           "tracking.mlflow.experiment to another name")
    return experiment.experiment_id


def _find_run(client, experiment_id: str, tags: dict[str, str]):
    """The oldest active run with these tags, or None."""
    query = " and ".join(f'tags.`{k}` = "{v}"' for k, v in tags.items())
    runs = client.search_runs([experiment_id], query, order_by=["attributes.start_time ASC"], max_results=1)
    return runs[0] if runs else None


def _get_or_create_run(client, experiment_id: str, run_name: str, tags: dict[str, str]):
    run = _find_run(client, experiment_id, {k: tags[k] for k in (TAG_STUDY, TAG_INSTANCE, TAG_KIND, TAG_TRIAL)
                                            if k in tags})
    if run is None:
        run = client.create_run(experiment_id, run_name=run_name, tags=tags)
    return run


def _metrics_of(record: dict, timestamp_ms: int, step: int) -> list:
    """Every numeric value of a log record as an MLflow metric (strings such as captioning's samples are left out)."""
    from mlflow.entities import Metric

    out = []
    for key, value in record.items():
        if key in NOT_METRICS or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        name = _BAD_NAME_CHARS.sub("_", RENAMED_TERMS.get(key, key))  # loss_align -> loss_align_dist, as in Parquet
        out.append(Metric(name, float(value), timestamp_ms, step))
    return out


def _clip(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[: limit - 3] + "..."


def _sync_trial(client, experiment_id: str, settings: dict, info: dict, log: list[dict], status: str,
                error: str | None = None) -> None:
    """Bring one trial's run up to its metric log: params it lacks, epochs after its last_epoch tag, its status."""
    from mlflow.entities import Param, RunTag
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH

    tags = {**info["tags"], TAG_INSTANCE: settings["instance"], TAG_KIND: KIND_TRIAL}
    run = _get_or_create_run(client, experiment_id, info["tags"][TAG_TRIAL], tags)
    run_id = run.info.run_id
    missing = [Param(k, _clip(v, MAX_PARAM_VAL_LENGTH)) for k, v in info["params"].items() if k not in run.data.params]
    for i in range(0, len(missing), MAX_PARAMS_PER_BATCH):
        client.log_batch(run_id, params=missing[i:i + MAX_PARAMS_PER_BATCH])
    last = int(run.data.tags.get(TAG_LAST_EPOCH, 0))
    for record in log:
        epoch = int(record["epoch"])
        if epoch <= last:
            continue
        metrics = _metrics_of(record, int(float(record.get("logged_at", 0)) * 1000), epoch)
        chunks = [metrics[i:i + MAX_BATCH - 1] for i in range(0, len(metrics), MAX_BATCH - 1)] or [[]]
        for n, chunk in enumerate(chunks):  # the epoch's tag travels with its (last) metrics: both or neither
            client.log_batch(run_id, metrics=chunk,
                             tags=[RunTag(TAG_LAST_EPOCH, str(epoch))] if n == len(chunks) - 1 else [])
    wanted = {TAG_STATUS: status, **({TAG_ERROR: _clip(error, MAX_TAG_VAL_LENGTH)} if error else {})}
    changed = [RunTag(k, v) for k, v in wanted.items() if run.data.tags.get(k) != v]
    if changed:
        client.log_batch(run_id, tags=changed)
    if not error and TAG_ERROR in run.data.tags:  # a failure that a retry or a resume has since overcome
        client.delete_tag(run_id, TAG_ERROR)
    _set_status(client, run, RUN_STATUS.get(status, "RUNNING"), log)


def _set_status(client, run, mlflow_status: str, log: list[dict]) -> None:
    if run.info.status == mlflow_status:
        return
    if mlflow_status == "RUNNING":  # a resumed trial whose earlier run ended interrupted
        client.update_run(run.info.run_id, status="RUNNING")
    else:
        end = int(float(log[-1].get("logged_at", 0)) * 1000) if log and log[-1].get("logged_at") else None
        client.set_terminated(run.info.run_id, status=mlflow_status, end_time=end)


def _sync_study_run(client, experiment_id: str, settings: dict, study: Study, status: StudyStatus) -> None:
    """The study run: its status and the study's result files (the Parquet, _report/, _captions.json, ...)."""
    from mlflow.entities import RunTag

    tags = {TAG_STUDY: study.name, TAG_INSTANCE: settings["instance"], TAG_KIND: KIND_STUDY}
    run = _get_or_create_run(client, experiment_id, study.name, tags)
    counts = ", ".join(f"{n} {s}" for s, n in status.counts().items())
    wanted = {TAG_STATUS: counts, TAG_METRIC: f"{metric_key(study)} ({study.metric.mode})"}
    changed = [RunTag(k, v) for k, v in wanted.items() if run.data.tags.get(k) != v]
    if changed:
        client.log_batch(run.info.run_id, tags=changed)
    folder = results_path(study).parent
    for entry in sorted(folder.iterdir()) if folder.is_dir() else []:
        if entry.name.startswith("."):
            continue  # temporary files of an atomic write
        if entry.is_dir():
            client.log_artifacts(run.info.run_id, str(entry), entry.name)
        else:
            client.log_artifact(run.info.run_id, str(entry))
    values = set(status.statuses.values())
    final = ("FAILED" if values & {"error", "diverged"} else
             "KILLED" if values - {"completed", "stopped_early"} else "FINISHED")
    _set_status(client, run, final, [])


def _warn(where: str, error: BaseException, then: str) -> None:
    text = " ".join(f"{type(error).__name__}: {error}".split())
    say(f"warning: MLflow tracking ({where}) failed: {_clip(text, 300)}; training is not affected; {then}")
