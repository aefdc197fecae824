"""Parquet results: one row per (trial, epoch, evaluation set), built from the durable per-epoch metric logs.

The source of truth is each Train run's `metrics.jsonl` (one line per reported epoch, written by the Train controller,
see ray_runner.EpochLog), not Tune's result files, which lose history when a study is restored. Rows are keyed by
(arm_id, seed, epoch, eval_set); a re-run epoch replaces the earlier line. Files are written atomically: a reader
never sees a half-written Parquet file. results/_README.md documents every column.

results/ is one dataset partitioned by study (results/<study>/trials.parquet), so `pd.read_parquet("results")` reads
every study. pyarrow takes the dataset's schema from the first file it finds, so every file carries the same columns
with the same types (`conform`); anything else under results/ starts with "_" or "." (the column reference
_README.md, each study's _report/ folder, temporary files), which pyarrow skips.
"""

from __future__ import annotations

import json
import os
import tempfile
import typing
from pathlib import Path

import pandas as pd

from calm_study.config import DatasetRef, TrialConfig
from calm_study.configio import flatten, to_dict
from calm_study.names import (
    EVAL_PREFIX,
    LR_GROUPS,
    RENAMED_TERMS,
    RESULTS_FILE,
    SAMPLES,
    SAMPLES_FILE,
    SKIPPED_VIDEOS,
    EpochRecord,
    all_metric_names,
    eval_key,
    eval_metrics_of,
    loss_column,
    lr_column,
    regime,
)
from calm_study.study.spec import Study, Trial
from calm_study.study.storage import Storage

# 2: arm_index, loss_align_dist. 3: task, model_family, lr_new (and stable arm ids). 4: captioning metrics (CIDEr,
# BLEU4, METEOR, ROUGE_L, trivial_CIDEr) and the caption_* config columns. 5: regime (finetune | frozen). 6: no
# trial_id (it was always empty); loss_support in every file (the loss columns come from the registries). Every file
# has every column of fixed_columns(), with fixed types; older files read with the columns they lack as nulls.
SCHEMA_VERSION = 6

def loss_terms() -> tuple[str, ...]:
    """Every loss term a registered component logs, from its owner: "total", each task's terms, each family's own
    (T-MASS's "support") and each alignment variant's. A component registered later (register_family, ...) is
    included, so every study's file carries the same loss columns and `pd.read_parquet("results")` drops none."""
    from calm_study.models.calm.variants import ALIGN_VARIANTS
    from calm_study.models.families import FAMILIES
    from calm_study.tasks import TASKS

    owners = [*TASKS.values(), *FAMILIES.values(), *ALIGN_VARIANTS.values()]
    return tuple(dict.fromkeys(["total", *(t for o in owners for t in getattr(o, "loss_terms", ())),
                                *(t for v in ALIGN_VARIANTS.values() for t in v.term_names)]))


def record_columns() -> dict[str, str]:
    """The columns of the per-epoch record's own keys (names.EpochRecord), typed from its annotations; epoch and status
    have columns of their own (`epoch`, `epoch_status`)."""
    dtypes = {float: "float64", int: "Int64", str | None: "str"}
    hints = typing.get_type_hints(EpochRecord)
    return {k: dtypes[t] for k, t in hints.items() if k not in ("epoch", "status")}


def fixed_columns() -> dict[str, str]:
    """Columns that do not come from the trial config, with their pandas dtypes. Optional ones (loss terms of other
    variants, counts missing from old logs) are added as nulls, so that every study's file has the same schema."""
    return {
        "schema_version": "int64", "study": "str", "arm_id": "str", "arm_index": "Int64", "seed": "int64",
        "trial_key": "str", "eval_set": "str", "eval_dataset": "str", "eval_split": "str",
        "train_dataset": "str", "in_domain": "boolean", "epoch": "int64", "epochs": "int64", "status": "str",
        "epoch_status": "str", "swept": "str", "regime": "str",
        **{m: "float64" for m in all_metric_names()},
        SKIPPED_VIDEOS: "Int64",
        **{k: "float64" for k in [loss_column(t) for t in loss_terms()] + [lr_column(g) for g in LR_GROUPS]},
        **record_columns(),
    }


class ResultsError(ValueError):
    """A per-epoch metric log cannot be read: the results are not rebuilt rather than silently missing rows."""


def read_metric_log(path: Path) -> list[dict]:
    """The epochs of one run's metrics.jsonl, one dict per epoch (the last line wins for a repeated epoch)."""
    return parse_metric_log(path.read_text(encoding="utf-8"), str(path)) if path.is_file() else []


def parse_metric_log(text: str, source: str = "metrics.jsonl") -> list[dict]:
    """The epochs of a metrics.jsonl text (see read_metric_log). Only the last line may be cut short (a crash in
    the middle of writing it, before the epoch was acknowledged); any other unreadable line stops with its file and
    line number."""
    by_epoch: dict[int, dict] = {}
    lines = text.splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            by_epoch[int(rec["epoch"])] = rec
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            if number == len(lines) and not text.endswith("\n"):
                continue  # the last line, cut short by a crash mid-write
            raise ResultsError(f"{source}, line {number}: not a metric record ({type(e).__name__}: {e}); the "
                               "results were not rebuilt, so no row is lost silently: repair or delete that line "
                               "(its epoch is then missing from the results) and run the command again") from None
    return [by_epoch[e] for e in sorted(by_epoch)]


def repair_metric_log(storage: Storage, log_path: str, resumed: dict | None) -> list[str]:
    """Make a run's metric log whole before its training resumes; returns what was repaired (for the trial's log).

    - A last line cut short by a crash mid-write is dropped: the next line would otherwise be glued to it.
    - `resumed` is the record stored in the checkpoint being resumed from (its epoch's metrics). The log line of an
      epoch is written after Ray Train registers the epoch's checkpoint, so a crash between the two leaves a
      checkpoint whose epoch is not logged; resuming after it would never train that epoch again. Its line is
      appended from the checkpoint.
    Runs on rank 0 before the run's first report, so no other writer touches the log meanwhile."""
    text = storage.read_text(log_path) or ""
    kept = text if not text or text.endswith("\n") else text[:text.rfind("\n") + 1]
    done = []
    if kept != text:
        tail = text[len(kept):]
        if parse_metric_log(tail, log_path):  # a whole record without its newline (edited by hand): keep it
            kept = text + "\n"
        else:
            done.append(f"dropped a metric-log line cut short by a crash: {tail[:60]!r}")
    try:
        logged = {int(r["epoch"]) for r in parse_metric_log(kept, log_path)}
    except ResultsError as e:  # a damaged line in the middle: training goes on; the results rebuild will say so
        return [f"metric log not repaired: {e}"]
    if resumed is not None and int(resumed["epoch"]) not in logged:
        kept += json.dumps(resumed) + "\n"
        done.append(f"logged epoch {resumed['epoch']} again from its checkpoint (a crash had lost its log line)")
    if kept != text:
        storage.write_text(log_path, kept)
    return done


def config_columns(trial: Trial) -> dict:
    """The flattened trial config as columns: 'anchors.count' -> 'anchors_count'."""
    doc = to_dict(trial.config)
    for key in ("roots", "video_dirs", "eval"):  # mappings and lists of sets: one JSON column each
        doc["data"][key] = json.dumps(doc["data"][key], sort_keys=True)
    flat = flatten(doc)
    cols = {k.replace(".", "_"): (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in flat.items()}
    cols["data_train"] = trial.config.data.train.label
    return cols


def trial_rows(study: Study, trial: Trial, log: list[dict], status: str, arm_index: int | None = None) -> list[dict]:
    """Rows for one trial: every logged epoch x every evaluation set of its config."""
    rows = []
    cfg_cols = config_columns(trial)
    for rec in log:
        common = {RENAMED_TERMS.get(k, k): v for k, v in rec.items()  # logs of calm_study 0.1 have "loss_align"
                  if not k.startswith(EVAL_PREFIX) and k not in ("status", "checkpoint")}
        for ref in trial.config.data.eval:
            metrics = eval_metrics_of(rec, ref.label)
            metrics.pop(SAMPLES, None)  # decoded captions: _captions.json, not a column
            rows.append({
                "schema_version": SCHEMA_VERSION, "study": study.name, "arm_id": trial.arm_id, "arm_index": arm_index,
                "seed": trial.seed,
                "trial_key": trial.key, "eval_set": ref.label, "eval_dataset": ref.dataset,
                "eval_split": ref.split, "train_dataset": trial.config.data.train.dataset,
                "in_domain": _same_domain(trial.config.data.train, ref), "epoch": int(rec["epoch"]),
                "epochs": trial.config.train.epochs, "status": status, "epoch_status": rec.get("status", ""),
                "swept": json.dumps(trial.swept, sort_keys=True), "regime": regime(trial.config.model.frozen),
                **common, **metrics,
                "checkpoint": rec.get("checkpoint"), **cfg_cols,
            })
    return rows


def _same_domain(train: DatasetRef, ref: DatasetRef) -> bool:
    """Is an evaluation set in the training set's domain (same dataset and, for a dataset with domains such as
    synthetic's plain/textured, the same domain)?"""
    if train.dataset != ref.dataset:
        return False
    from calm_study.data.readers import READERS  # here, not at the top: it imports torch (calm_study.data)

    entry = READERS.get(train.dataset)
    return not (entry is not None and entry.domains) or train.domain == ref.domain


def write_parquet_atomic(df: pd.DataFrame, path: Path) -> Path:
    """Write to a hidden temporary file in the same folder, then rename over `path` (atomic on POSIX)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".parquet", dir=path.parent)  # hidden: readers skip it
    os.close(fd)
    try:
        df.to_parquet(tmp, index=False)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600: others on a shared cluster must read results too
        os.replace(tmp, path)
    except OSError as e:  # a full disk, a file-size limit, a vanished folder: say so, keep the earlier file
        raise OSError(e.errno, f"could not write the results file {path} ({e.strerror or e}); the earlier results "
                               "file, if any, is unchanged; the per-epoch logs in the study's storage are intact, so "
                               "re-running the same command rebuilds it") from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def build_results(study: Study, trials: list[Trial], logs: dict[str, list[dict]], statuses: dict[str, str]
                  ) -> pd.DataFrame:
    """The study's frame (see `conform`): logs and statuses are keyed by Trial.key; `trials` in expansion order."""
    rows = []
    order = {arm: i for i, arm in enumerate(dict.fromkeys(t.arm_id for t in trials))}  # the study file's row order
    for t in trials:
        rows += trial_rows(study, t, logs.get(t.key, []), statuses.get(t.key, "pending"), order[t.arm_id])
    return conform(pd.DataFrame(rows))


def caption_samples(trials: list[Trial], logs: dict[str, list[dict]]) -> dict:
    """{trial key: {"arm_id", "seed", "epoch", "sets": {eval set: [{"video", "caption", "references"}]}}} from each
    trial's last logged epoch that has decoded samples (captioning); {} when no trial has any."""
    out = {}
    for t in trials:
        for rec in reversed(logs.get(t.key, [])):
            sets = {ref.label: json.loads(rec[k]) for ref in t.config.data.eval
                    if isinstance(rec.get(k := eval_key(ref.label, SAMPLES)), str)}
            if sets:
                out[t.key] = {"arm_id": t.arm_id, "seed": t.seed, "epoch": int(rec["epoch"]), "sets": sets}
                break
    return out


def write_caption_samples(study: Study, trials: list[Trial], logs: dict[str, list[dict]]) -> Path | None:
    """Write caption_samples to <results_dir>/<study>/_captions.json (atomically); None when there are none."""
    samples = caption_samples(trials, logs)
    if not samples:
        return None
    path = Path(study.results_dir) / study.name / SAMPLES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{SAMPLES_FILE}")
    tmp.write_text(json.dumps(samples, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def results_path(study: Study) -> Path:
    return Path(study.results_dir) / study.name / RESULTS_FILE


def config_dtypes() -> dict[str, str]:
    """dtype of every trial-config column, from the type of its default value (None and JSON columns: str)."""
    cols = config_columns(Trial("", 0, TrialConfig(), {}))
    kinds = {bool: "boolean", int: "int64", float: "float64"}  # bool first: isinstance(True, int)
    return {k: next((d for t, d in kinds.items() if type(v) is t), "str") for k, v in cols.items()}


def conform(df: pd.DataFrame) -> pd.DataFrame:
    """Every documented column, in a fixed order and with fixed types (missing ones as nulls); extra columns last.

    Rows are sorted by (arm_index, arm_id, seed, epoch, eval_set): the study file's arm order.
    """
    dtypes = {**fixed_columns(), **config_dtypes()}
    out = pd.DataFrame(index=df.index)
    for col, dtype in dtypes.items():
        values = df[col] if col in df else pd.Series(None, index=df.index, dtype=object)
        if dtype in ("int64", "Int64") and (dtype == "Int64" or values.isna().any()):
            dtype = "Int64"  # nullable (a column an older file lacks); the same int64 in Parquet
            values = values.astype("float64")
        out[col] = values.astype(dtype)
    out = pd.concat([out, df[[c for c in df.columns if c not in dtypes]]], axis=1)
    if out.empty:
        return out
    return out.sort_values(["arm_index", "arm_id", "seed", "epoch", "eval_set"], kind="stable").reset_index(drop=True)


def studies(results_dir: str | Path = "results") -> list[str]:
    """Names of the studies with a results file under results_dir."""
    root = Path(results_dir)
    return sorted(p.parent.name for p in root.glob(f"*/{RESULTS_FILE}") if not p.parent.name.startswith(("_", ".")))


def load(study: str | None = None, results_dir: str | Path = "results") -> pd.DataFrame:
    """One study's rows (every study's when `study` is None) as a tidy frame: one row per (trial, epoch, eval set).

    Files written by an older schema version are brought to the current one (columns they lack are null).
    """
    names = studies(results_dir) if study is None else [study]
    if not names:
        raise FileNotFoundError(f"no study results under {str(results_dir)!r}")
    frames = []
    for name in names:
        path = Path(results_dir) / name / RESULTS_FILE
        if not path.is_file():
            have = studies(results_dir)
            raise FileNotFoundError(
                f"no results for study {name!r}: {str(path)!r} does not exist (studies with results in "
                f"{str(results_dir)!r}: {', '.join(have) or 'none'}); run the study first")
        df = pd.read_parquet(path)
        if not df.empty and int(df["schema_version"].max()) > SCHEMA_VERSION:
            raise ValueError(f"{path} was written with schema version {int(df['schema_version'].max())}; this "
                             f"calm_study reads versions up to {SCHEMA_VERSION}: update calm_study")
        frames.append(conform(df))
    return conform(pd.concat(frames, ignore_index=True)) if len(frames) > 1 else frames[0]
