"""Parquet results: one row per (trial, epoch, evaluation set), built from the durable per-epoch metric logs.

The source of truth is each Train run's `metrics.jsonl` (one line per reported epoch, written by the Train controller,
see ray_runner.EpochLog), not Tune's result files, which lose history when a study is restored. Rows are keyed by
(arm_id, seed, epoch, eval_set); a re-run epoch replaces the earlier line. Files are written atomically: a reader
never sees a half-written Parquet file. results/README.md documents every column.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pandas as pd

from calm_study.config import DatasetRef, trial_to_dict
from calm_study.configio import flatten
from calm_study.study import Study, Trial

SCHEMA_VERSION = 1
RESULTS_FILE = "trials.parquet"
METRIC_LOG = "metrics.jsonl"


def read_metric_log(path: Path) -> list[dict]:
    """The epochs of one run's metrics.jsonl, one dict per epoch (the last line wins for a repeated epoch)."""
    if not path.is_file():
        return []
    by_epoch: dict[int, dict] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash mid-write
            by_epoch[int(rec["epoch"])] = rec
    return [by_epoch[e] for e in sorted(by_epoch)]


def config_columns(trial: Trial) -> dict:
    """The flattened trial config as columns: 'anchors.count' -> 'anchors_count'."""
    doc = trial_to_dict(trial.config)
    for key in ("roots", "video_dirs", "eval"):  # mappings and lists of sets: one JSON column each
        doc["data"][key] = json.dumps(doc["data"][key], sort_keys=True)
    flat = flatten(doc)
    cols = {k.replace(".", "_"): (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in flat.items()}
    cols["data_train"] = trial.config.data.train.label
    return cols


def trial_rows(study: Study, trial: Trial, log: list[dict], status: str, trial_id: str = "") -> list[dict]:
    """Rows for one trial: every logged epoch x every evaluation set of its config."""
    rows = []
    cfg_cols = config_columns(trial)
    for rec in log:
        common = {k: v for k, v in rec.items() if not k.startswith("eval/") and k not in ("status", "checkpoint")}
        for ref in trial.config.data.eval:
            prefix = f"eval/{ref.label}/"
            metrics = {k[len(prefix):]: v for k, v in rec.items() if k.startswith(prefix)}
            rows.append({
                "schema_version": SCHEMA_VERSION, "study": study.name, "arm_id": trial.arm_id, "seed": trial.seed,
                "trial_key": trial.key, "trial_id": trial_id, "eval_set": ref.label, "eval_dataset": ref.dataset,
                "eval_split": ref.split, "train_dataset": trial.config.data.train.dataset,
                "in_domain": _same_domain(trial.config.data.train, ref), "epoch": int(rec["epoch"]),
                "epochs": trial.config.train.epochs, "status": status, "epoch_status": rec.get("status", ""),
                "swept": json.dumps(trial.swept, sort_keys=True), **common, **metrics,
                "checkpoint": rec.get("checkpoint"), **cfg_cols,
            })
    return rows


def _same_domain(train: DatasetRef, ref: DatasetRef) -> bool:
    """Is an evaluation set in the training set's domain (same dataset, and same synthetic domain)?"""
    return train.dataset == ref.dataset and (train.dataset != "synthetic" or train.domain == ref.domain)


def write_parquet_atomic(df: pd.DataFrame, path: Path) -> Path:
    """Write to a hidden temporary file in the same folder, then rename over `path` (atomic on POSIX)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".parquet", dir=path.parent)  # hidden: readers skip it
    os.close(fd)
    try:
        df.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def build_results(study: Study, trials: list[Trial], logs: dict[str, list[dict]], statuses: dict[str, str],
                  trial_ids: dict[str, str] | None = None) -> pd.DataFrame:
    """The study's frame: logs and statuses are keyed by Trial.key."""
    rows, trial_ids = [], trial_ids or {}
    for t in trials:
        rows += trial_rows(study, t, logs.get(t.key, []), statuses.get(t.key, "pending"), trial_ids.get(t.key, ""))
    df = pd.DataFrame(rows)
    if not df.empty:
        df = df.sort_values(["arm_id", "seed", "epoch", "eval_set"], kind="stable").reset_index(drop=True)
    return df


def results_path(study: Study) -> Path:
    return Path(study.results_dir) / study.name / RESULTS_FILE
