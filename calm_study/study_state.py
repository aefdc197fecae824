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
from dataclasses import dataclass
from pathlib import Path

from calm_study.config import trial_to_dict
from calm_study.configio import flatten
from calm_study.results import METRIC_LOG, build_results, read_metric_log, results_path, write_parquet_atomic
from calm_study.study import Study, Trial, metric_key

MANIFEST = "manifest.json"


class StudyStateError(RuntimeError):
    """The study's storage cannot be used as asked (changed study file, unwritable folder); nothing was changed."""


def study_paths(study: Study) -> tuple[Path, Path]:
    """(Tune experiment folder, Train storage folder) of a study."""
    root = Path(study.storage).expanduser().resolve() / study.name
    return root / "tune", root / "train"


def check_writable(folder: Path, what: str) -> None:
    """Fail now, not after hours of training, if `folder` cannot be created or written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise StudyStateError(f"{what}: cannot write to {str(folder)!r} ({e.strerror or e}); choose a folder this "
                              "user can write (on a cluster: one that every node sees)") from None


def _manifest(study: Study, trials: list[Trial]) -> dict:
    base = flatten(trial_to_dict(study.base))
    return {"trials": {t.key: t.swept for t in trials}, "base": {k: base[k] for k in base if k != "train.seed"},
            "seeds": list(study.seeds)}


def check_same_study(study: Study, trials: list[Trial]) -> None:
    """Record what the study started with; refuse to resume it with a changed set of trials, saying what changed."""
    root = study_paths(study)[0].parent
    path = root / MANIFEST
    new = _manifest(study, trials)
    if not path.is_file():
        root.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(new, indent=1, sort_keys=True, default=str))
        return
    old = json.loads(path.read_text())
    if set(old["trials"]) == set(new["trials"]):
        return
    changes = [f"base {k}: {old['base'].get(k)!r} -> {new['base'].get(k)!r}"
               for k in sorted(set(old["base"]) | set(new["base"])) if old["base"].get(k) != new["base"].get(k)]
    if old["seeds"] != new["seeds"]:
        changes.append(f"seeds: {old['seeds']} -> {new['seeds']}")
    added = [json.dumps(v, sort_keys=True) for k, v in new["trials"].items() if k not in old["trials"]]
    dropped = [json.dumps(v, sort_keys=True) for k, v in old["trials"].items() if k not in new["trials"]]
    changes += [f"{len(added)} trial(s) added (e.g. {added[0]})"] if added else []
    changes += [f"{len(dropped)} trial(s) dropped (e.g. {dropped[0]})"] if dropped else []
    raise StudyStateError(
        f"study {study.name!r} in {root} was started from a different study file: {'; '.join(changes)}. Nothing was "
        "changed. Restore the original file (or --preset/--set) to resume it, run it under another name "
        "(--set name=...), or pass --fresh to archive the old study and results and start again")


def archive(study: Study) -> Path | None:
    """Move the study's storage and Parquet aside (never deleted) so it can start again; returns the archive."""
    root = study_paths(study)[0].parent
    results = results_path(study).parent
    if not root.exists() and not results.exists():
        return None
    target = root.parent / f"{study.name}.archived-{time.strftime('%Y%m%d-%H%M%S')}"
    target.mkdir(parents=True)
    if root.exists():
        root.rename(target / "storage")
    if results.exists():
        results.rename(target / "results")
    return target


def trial_logs(study: Study, trials: list[Trial]) -> dict[str, list[dict]]:
    train_dir = study_paths(study)[1]
    return {t.key: read_metric_log(train_dir / f"train-{t.key}" / METRIC_LOG) for t in trials}


def trial_error(study: Study, trial: Trial) -> str | None:
    """The first line of Ray's error for a trial it gave up on, or None."""
    path = study_paths(study)[0] / trial.key / "error.txt"
    if not path.is_file():
        return None
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else "error"


def trial_status(trial: Trial, log: list[dict], error: str | None) -> str:
    """completed | diverged | error | incomplete (some epochs, not all) | pending (no epoch yet)."""
    last = log[-1] if log else {}
    if last.get("status") == "diverged":
        return "diverged"
    if last.get("epoch") == trial.config.train.epochs:
        return "completed"
    if error is not None:
        return "error"
    return "incomplete" if log else "pending"


@dataclass
class StudyStatus:
    statuses: dict[str, str]  # trial key -> status
    errors: dict[str, str]  # trial key -> reason (errors and divergences)
    best: tuple[str, float] | None  # (trial key, metric) of the best trial so far
    epochs_done: dict[str, int]

    def counts(self) -> dict[str, int]:
        values = list(self.statuses.values())
        return {s: values.count(s) for s in sorted(set(values))}


def study_status(study: Study, trials: list[Trial]) -> StudyStatus:
    logs = trial_logs(study, trials)
    statuses, errors, best = {}, {}, None
    key = metric_key(study)
    sign = 1 if study.metric.mode == "max" else -1
    for t in trials:
        err = trial_error(study, t)
        statuses[t.key] = trial_status(t, logs[t.key], err)
        if statuses[t.key] == "error":
            errors[t.key] = err or "error"
        elif statuses[t.key] == "diverged":
            errors[t.key] = f"loss became non-finite in epoch {logs[t.key][-1]['epoch']}"
        for rec in logs[t.key]:
            value = rec.get(key)
            if isinstance(value, (int, float)) and (best is None or sign * value > sign * best[1]):
                best = (t.key, float(value))
    return StudyStatus(statuses, errors, best, {k: len(v) for k, v in logs.items()})


def write_study_results(study: Study, trials: list[Trial], trial_ids: dict[str, str] | None = None
                        ) -> tuple[Path, StudyStatus]:
    """Build the Parquet from every trial's metric log and write it atomically; returns (its path, the status)."""
    status = study_status(study, trials)
    df = build_results(study, trials, trial_logs(study, trials), status.statuses, trial_ids)
    return write_parquet_atomic(df, results_path(study)), status


def describe(study: Study, trials: list[Trial], status: StudyStatus) -> str:
    """A few lines for people: counts, the failed trials and why, the best result so far."""
    arms = {t.key: t for t in trials}
    lines = [f"study {study.name}: {len(trials)} trials: "
             + ", ".join(f"{n} {s}" for s, n in status.counts().items())]
    for k, reason in status.errors.items():
        lines.append(f"  {status.statuses[k]}: {k} {json.dumps(arms[k].swept, sort_keys=True)}: {reason}")
    for k, s in status.statuses.items():
        if s == "incomplete":
            lines.append(f"  incomplete: {k} after {status.epochs_done[k]}/{arms[k].config.train.epochs} epochs")
    if status.best:
        lines.append(f"  best so far: {metric_key(study)} = {status.best[1]:.2f} ({status.best[0]} "
                     f"{json.dumps(arms[status.best[0]].swept, sort_keys=True)})")
    return "\n".join(lines)

