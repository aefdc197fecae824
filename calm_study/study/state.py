"""A study's state on disk, without Ray: where it lives, what it was started with, how far each trial got.

    <storage>/<study>/manifest.json       the expanded trials (key -> swept values) and the base config it started with
    <storage>/<study>/tune/<trial key>/   Ray Tune's trial folders (error.txt when Ray gave up on a trial)
    <storage>/<study>/train/train-<key>/  Ray Train checkpoints and our durable metrics.jsonl

`status` and the Parquet are built from these files, so both work while a study runs, after it ended, and after the
machine that ran it is gone.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from calm_study.config import ROLE, RUNTIME, fields_with_role, under
from calm_study.configio import ConfigError, config_differences, flatten, set_path, to_dict
from calm_study.names import (
    EVAL_PREFIX,
    MANIFEST,
    METRIC_LOG,
    SKIPPED_VIDEOS,
    TRAIN_FOLDER,
    TRIAL_FILE,
    TUNE_FOLDER,
    key_of_run,
    run_name,
)
from calm_study.study.identity import arm_id
from calm_study.study.results import (
    build_results,
    parse_metric_log,
    results_path,
    write_caption_samples,
    write_parquet_atomic,
)
from calm_study.study.spec import Study, Trial, expand, is_optuna, metric_key
from calm_study.study.storage import Storage, StorageError
from calm_study.validate import trial_from_dict


class StudyStateError(RuntimeError):
    """The study's storage cannot be used as asked (changed study file, unwritable folder); nothing was changed."""


class StudyFiles:
    """Where a study's files live in its storage (a local folder or an object-store URI)."""

    def __init__(self, study: Study):
        self.storage = Storage(study.storage)
        self.name = study.name
        self.root = self.storage.path(study.name)
        self.tune = self.storage.path(study.name, TUNE_FOLDER)
        self.train = self.storage.path(study.name, TRAIN_FOLDER)
        self.manifest = self.storage.path(study.name, MANIFEST)

    def run_log(self, key: str) -> str:
        return self.storage.path(self.name, TRAIN_FOLDER, run_name(key), METRIC_LOG)

    def error_file(self, tune_dir: str) -> str:
        return self.storage.path(self.name, TUNE_FOLDER, tune_dir, "error.txt")

    def trial_file(self, key: str) -> str:
        """An Optuna trial's identity (config, sampled values, Tune folder), written by its driver when it starts."""
        return self.storage.path(self.name, TRAIN_FOLDER, run_name(key), TRIAL_FILE)


def check_writable(storage: Storage, folder: str, what: str) -> None:
    """Fail now, not after hours of training, if `folder` cannot be created or written."""
    probe = f"{folder}/.write-test-{os.getpid()}"
    # The folders this check creates, deepest first: removed again, so a failed run leaves nothing. On object stores
    # too: pyarrow's create_dir leaves an empty marker object per level, and a left-over study folder would make
    # --fresh see an earlier run (and refuse, as it cannot archive there) where there was none.
    created = []
    parent = folder
    try:
        while parent and not storage.exists(parent):
            created.append(parent)
            parent = storage.parent(parent)
        storage.makedirs(folder)
        storage.write_text(probe, "ok")
        storage.delete_file(probe)
        for path in created:
            storage.remove_empty_dir(path)
    except StorageError as e:  # an object store that does not answer, no such bucket, denied access: said in words
        raise StudyStateError(str(e)) from None
    except OSError as e:
        raise StudyStateError(f"{what}: cannot write to {folder!r} ({e.strerror or e}); choose a folder (or bucket) "
                              "this user can write (on a cluster: one that every node sees)") from None


# Manifests of studies keyed by the current arm ids (study/identity.py). 2: stable ids that still hashed settings of
# how a trial runs (data roots, caches, workers); 3: those left out. Older ones (no "identity": every field hashed)
# and version 2 keep the keys they recorded (adopt_recorded_keys).
IDENTITY = 3


def _manifest(study: Study, trials: list[Trial]) -> dict:
    base = flatten(to_dict(study.base))
    return {"identity": IDENTITY, "trials": {t.key: t.swept for t in trials},
            "base": {k: base[k] for k in base if k != "train.seed"}, "seeds": list(study.seeds)}


def _read_manifest(study: Study) -> dict | None:
    files = StudyFiles(study)
    text = files.storage.read_text(files.manifest)
    return json.loads(text) if text is not None else None


def adopt_recorded_keys(study: Study, trials: list[Trial]) -> list[Trial]:
    """The trials, keyed as the study's manifest recorded them when it predates stable arm ids.

    Such a study (begun with calm_study 0.1, whose arm ids hashed every field, or with a version whose ids still
    hashed the settings of how a trial runs) keeps its keys, so its Train runs, checkpoints and Parquet rows are found
    again; check_same_study still refuses it if any value that defines an arm changed."""
    old = _read_manifest(study)
    if old is None or old.get("identity") == IDENTITY:
        return trials
    recorded = {}
    for key, swept in old["trials"].items():
        arm, _, seed = key.rpartition("-s")
        recorded[(json.dumps(swept, sort_keys=True), int(seed))] = arm
        # Also by what the recorded values give today, so that a search row respelled since (the baseline's
        # {anchors.count: 0, loss.align: none} is now {loss.align: none}) still finds its trial.
        today = _arm_today(study, swept)
        if today is not None:
            recorded.setdefault((today, int(seed)), arm)

    def recorded_arm(t: Trial) -> str:
        return recorded.get((json.dumps(t.swept, sort_keys=True), t.seed)) or recorded.get((t.arm_id, t.seed), t.arm_id)

    return [replace(t, arm_id=recorded_arm(t)) for t in trials]


def _arm_today(study: Study, swept: dict) -> str | None:
    """Today's arm id of the study's base with a recorded trial's swept values, or None if they no longer load."""
    doc = to_dict(study.base)
    for k, v in swept.items():
        doc = set_path(doc, k, v)
    try:
        return arm_id(trial_from_dict(doc, check=False))
    except (ConfigError, KeyError, TypeError, ValueError):
        return None


def check_same_study(study: Study, trials: list[Trial]) -> None:
    """Record what the study started with; refuse to resume it with changed trials or changed values, saying what
    changed (a default value changed by an upgrade included: see study/identity.py)."""
    files = StudyFiles(study)
    new = _manifest(study, trials)
    old = _read_manifest(study)
    if old is None:
        files.storage.write_text(files.manifest, json.dumps(new, indent=1, sort_keys=True, default=str))
        return
    # The seed and the settings of how a trial runs (config.RUNTIME: data roots, caches, workers, ...) may change.
    free = ("train.seed", *fields_with_role(RUNTIME[ROLE]))
    changes = [f"base {d}" for d in config_differences(old["base"], study.base) if not under(d.split(":")[0], free)]
    if set(old["trials"]) == set(new["trials"]) and not changes:
        return
    if old["seeds"] != new["seeds"]:
        changes.append(f"seeds: {old['seeds']} -> {new['seeds']}")
    added = [json.dumps(v, sort_keys=True) for k, v in new["trials"].items() if k not in old["trials"]]
    dropped = [json.dumps(v, sort_keys=True) for k, v in old["trials"].items() if k not in new["trials"]]
    changes += [f"{len(added)} trial(s) added (e.g. {added[0]})"] if added else []
    changes += [f"{len(dropped)} trial(s) dropped (e.g. {dropped[0]})"] if dropped else []
    raise StudyStateError(
        f"study {study.name!r} in {files.root} was started with a different configuration: {'; '.join(changes)}. "
        "Nothing was changed. Restore the original file (or --preset/--set) to resume it (a value whose default "
        "changed in an upgrade can be pinned to its old value in the study file), run it under another name "
        "(--set name=...), or pass --fresh to archive the old study and results and start again")


def archive(study: Study) -> str | None:
    """Move the study's storage and Parquet aside (never deleted) so it can start again; returns the archive."""
    files = StudyFiles(study)
    results = results_path(study).parent
    stored = files.storage.exists(files.root)
    if not stored and not results.exists():
        return None
    if stored and not files.storage.can_move:
        # Refused before anything is created or moved: an object store cannot rename a folder, and copying every
        # checkpoint would be slow and half-done after an interruption.
        raise StudyStateError(f"--fresh: {files.storage.uri(study.name)} cannot be archived ({files.storage.scheme}:// "
                              "storage has no folder rename); nothing was changed. Run the study under a new name "
                              "(--set name=...), or delete that prefix yourself and run again")
    target = files.storage.path(f"{study.name}.archived-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        if stored:
            files.storage.makedirs(target)
            files.storage.move(files.root, f"{target}/storage")
    except OSError as e:
        raise StudyStateError(f"--fresh: cannot archive {files.root!r} ({e}); run the study under a new name "
                              "instead (--set name=...)") from None
    if results.exists():
        # The results go beside the storage archive when that is local, else into an archive folder next to them.
        local = Path(target) if not files.storage.is_uri else results.parent / Path(target).name
        local.mkdir(parents=True, exist_ok=True)
        results.rename(local / "results")
        if not stored and files.storage.is_uri:
            return str(local)  # nothing was in the object store: the results archive is all there is
    return target


def trial_logs(study: Study, trials: list[Trial]) -> dict[str, list[dict]]:
    files = StudyFiles(study)
    return {t.key: parse_metric_log(files.storage.read_text(files.run_log(t.key)) or "", files.run_log(t.key))
            for t in trials}


def tune_dir_of(study: Study, trial: Trial) -> str:
    """The trial's folder in the Tune experiment: its key (grid), or Tune's trial id (Optuna, from trial.json)."""
    if not is_optuna(study):
        return trial.key
    files = StudyFiles(study)
    return json.loads(files.storage.read_text(files.trial_file(trial.key)) or "{}").get("tune_dir", trial.key)


def study_trials(study: Study) -> list[Trial]:
    """The study's trials: expanded from the file (grid), or found in storage (Optuna: sampled while it runs)."""
    if not is_optuna(study):
        return adopt_recorded_keys(study, expand(study))
    files = StudyFiles(study)
    trials = []
    for name in files.storage.list_names(files.train):
        key = key_of_run(name)
        text = files.storage.read_text(files.trial_file(key)) if key else None
        if text:
            d = json.loads(text)
            trials.append(Trial(d["arm_id"], d["seed"], trial_from_dict(d["config"], name), d["swept"]))
    return trials


def trial_error(study: Study, trial: Trial) -> str | None:
    """The last line of Ray's error for a trial it gave up on, or None."""
    files = StudyFiles(study)
    text = files.storage.read_text(files.error_file(tune_dir_of(study, trial)))
    if text is None:
        return None
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else "error"


STALE_SNAPSHOT_S = 180  # a Tune snapshot older than this was not written by a live run


def tune_statuses(study: Study) -> dict[str, str]:
    """Tune folder -> status (RUNNING, TERMINATED, ...) in Ray Tune's latest experiment snapshot (taken every ~10 s
    while the study runs). The snapshot format is Tune's own; if it cannot be read, this is empty."""
    files = StudyFiles(study)
    snapshots = [n for n in files.storage.list_names(files.tune) if n.startswith("experiment_state-")]
    if not snapshots:
        return {}
    try:
        path = f"{files.tune}/{snapshots[-1]}"
        state = json.loads(files.storage.read_text(path) or "{}")
        trials = [json.loads(entry[0]) for entry in state.get("trial_data", [])]
        # Tune rewrites its snapshot every few seconds while it runs: a RUNNING trial in an old snapshot belongs to
        # a run that was killed (or lost its machine).
        stale = time.time() - files.storage.mtime(path) > STALE_SNAPSHOT_S
        return {t["relative_logdir"]: "INTERRUPTED" if stale and t["status"] == "RUNNING" else t["status"]
                for t in trials}
    except (ValueError, KeyError, TypeError, IndexError, OSError):
        return {}


def trial_status(trial: Trial, log: list[dict], error: str | None, tune_status: str = "",
                 early_stopping: bool = False) -> str:
    """completed | diverged | error | stopped_early (ended by the scheduler) | running | interrupted (its run was
    killed mid-trial: re-run the same command) | incomplete (some epochs, nothing running) | pending (no epoch yet)."""
    last = log[-1] if log else {}
    if last.get("status") == "diverged":
        return "diverged"
    if last.get("epoch") == trial.config.train.epochs:
        return "completed"
    if error is not None:
        return "error"
    if tune_status == "TERMINATED" and early_stopping and log:
        return "stopped_early"
    if tune_status == "RUNNING":
        return "running"
    if tune_status == "INTERRUPTED":
        return "interrupted"
    return "incomplete" if log else "pending"


@dataclass
class StudyStatus:
    statuses: dict[str, str]  # trial key -> status
    errors: dict[str, str]  # trial key -> reason (errors and divergences)
    best: tuple[str, float] | None  # (trial key, metric) of the best trial so far
    epochs_done: dict[str, int]
    skipped: dict[str, int] = field(default_factory=dict)  # data set -> unreadable videos skipped (most any trial saw)

    def counts(self) -> dict[str, int]:
        values = list(self.statuses.values())
        return {s: values.count(s) for s in sorted(set(values))}


def study_status(study: Study, trials: list[Trial], live: bool = True) -> StudyStatus:
    """Every trial's status from the study's files; live=False ignores Tune's snapshot (after a run ended)."""
    logs = trial_logs(study, trials)
    tune = tune_statuses(study)
    asha = study.scheduler.name == "asha"
    statuses, errors, best = {}, {}, None
    key = metric_key(study)
    sign = 1 if study.metric.mode == "max" else -1
    for t in trials:
        err = trial_error(study, t)
        tune_status = tune.get(tune_dir_of(study, t), "")
        if not live and tune_status == "RUNNING":  # the run has ended: nothing is running any more
            tune_status = ""
        statuses[t.key] = trial_status(t, logs[t.key], err, tune_status, asha)
        if statuses[t.key] == "error":
            errors[t.key] = err or "error"
        elif statuses[t.key] == "diverged":
            errors[t.key] = f"loss became non-finite in epoch {logs[t.key][-1]['epoch']}"
        for rec in logs[t.key]:
            value = rec.get(key)
            if isinstance(value, (int, float)) and (best is None or sign * value > sign * best[1]):
                best = (t.key, float(value))
    skipped: dict[str, int] = {}
    for log in logs.values():
        for rec in log[-1:]:
            for k, v in rec.items():
                name = "training set" if k == "train_skipped_videos" else (
                    k.split("/")[1] if k.startswith(EVAL_PREFIX) and k.endswith(f"/{SKIPPED_VIDEOS}") else None)
                if name and isinstance(v, (int, float)) and v:
                    skipped[name] = max(skipped.get(name, 0), int(v))
    return StudyStatus(statuses, errors, best, {k: len(v) for k, v in logs.items()}, skipped)


def write_study_results(study: Study, trials: list[Trial]) -> tuple[Path, StudyStatus]:
    """Build the Parquet from every trial's metric log and write it atomically; returns (its path, the status)."""
    status = study_status(study, trials, live=False)
    logs = trial_logs(study, trials)
    df = build_results(study, trials, logs, status.statuses)
    write_caption_samples(study, trials, logs)  # captioning: a few decoded captions per evaluation set
    return write_parquet_atomic(df, results_path(study)), status


def describe(study: Study, trials: list[Trial], status: StudyStatus, best: bool = True) -> str:
    """A few lines for people: counts, the failed trials and why, and (best=True, for `status` while a study runs)
    the best epoch so far."""
    arms = {t.key: t for t in trials}
    lines = [f"study {study.name}: {len(trials)} trials: "
             + ", ".join(f"{n} {s}" for s, n in status.counts().items())]
    for k, reason in status.errors.items():
        lines.append(f"  {status.statuses[k]}: {k} {json.dumps(arms[k].swept, sort_keys=True)}: {reason}")
    for k, s in status.statuses.items():
        if s in ("incomplete", "interrupted"):
            lines.append(f"  {s}: {k} after {status.epochs_done[k]}/{arms[k].config.train.epochs} epochs "
                         "(run the same command again to continue)")
    if status.skipped:
        lines.append("  unreadable videos skipped (data.on_error skip): "
                     + ", ".join(f"{name} {n}" for name, n in status.skipped.items()))
    if best and status.best:
        key, value = status.best
        lines.append(f"  best epoch so far (progress only): {metric_key(study)} = {value:.2f} ({key} "
                     f"{json.dumps(arms[key].swept, sort_keys=True)})")
    return "\n".join(lines)

