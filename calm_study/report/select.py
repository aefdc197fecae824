"""Which rows a report reads: the epoch of each trial, its arms and their labels, and each arm's baseline.

Epoch rules (every table caption names the one used):
- "final" (default): each trial's last epoch (epoch == epochs). Trials that did not get there (incomplete, error,
  diverged) are excluded and counted.
- "best": per trial, the epoch with the best validation score of the task (names.SELECT_METRIC: t2v R@1 for
  retrieval, CIDEr for captioning) on its in-domain *validation* set (eval_split "val", "validation" or MSR-VTT's
  "caption_val"); the test sets are read at that epoch. A study without a validation set is refused: choosing the
  epoch on the test set would report an optimistically biased number.
- an integer N: epoch N of every trial that has it.

Baseline of an arm: among the arms that agree with it on every setting in COMPARABLE_BY (task, model family, training
data, regime, evaluation protocol and DSL, caption decoding), the arm with `loss_align == "none"`: the same model
scored the same way without CALM (for family tmass, the paper's T-MASS row); if that group has none, the group's first
arm in the study file's order, never an arm of another group. Comparisons are always against that baseline.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pandas as pd

from calm_study.configio import flatten
from calm_study.names import SELECT_METRIC, VAL_SPLITS

TRIAL = ["arm_id", "seed"]

# The settings that decide what a score means rather than how good the method is: an arm is compared (Δ) only with a
# baseline that agrees on all of them, so that the difference is CALM's alone. A study sweeping the protocol would
# otherwise compare a CALM arm scored with tmass_compat (the evaluation leak, far higher R@1) or with DSL
# post-processing against the baseline scored leak-free. Task (other metrics), model family, training data and regime
# (fine-tuned or frozen CLIP) make a different model; caption decoding (beam, length penalty, length cap) decides which
# caption is scored, as DSL decides which video is ranked first. Columns a results file lacks are left out.
COMPARABLE_BY = ["task", "model_family", "data_train", "regime", "evaluation_protocol", "evaluation_dsl",
                 "caption_beam_size", "caption_length_penalty", "caption_max_length"]


class ReportError(ValueError):
    """The results cannot be reported as asked (no such study, no validation set for epoch='best', no rows)."""


@dataclass
class Selection:
    rows: pd.DataFrame  # the chosen epoch's rows (every eval set) of every included trial
    label: str  # how the epoch was chosen, for captions
    excluded: dict[str, int] = field(default_factory=dict)  # trial status -> trials left out

    def excluded_text(self) -> str:
        if not self.excluded:
            return "none"
        return ", ".join(f"{n} {s}" for s, n in sorted(self.excluded.items()))


def _reached_final(df: pd.DataFrame) -> pd.Series:
    return (df.epoch == df.epochs) & (df.epoch_status.fillna("") != "diverged")


def task_of(df: pd.DataFrame) -> str:
    """The one task of a study's rows; rows without a task (files before schema 3) are retrieval."""
    tasks = set(df.task.astype(object).fillna("retrieval")) if "task" in df else {"retrieval"}
    if len(tasks) > 1:  # one table cannot hold recall and CIDEr side by side; such a study has no single report
        raise ReportError(f"the rows mix tasks ({', '.join(sorted(tasks))}); report one task per study")
    return next(iter(tasks), "retrieval")


def _excluded(df: pd.DataFrame, kept: pd.DataFrame) -> dict[str, int]:
    trials = df.drop_duplicates(TRIAL).set_index(TRIAL)
    left = trials.index.difference(kept.drop_duplicates(TRIAL).set_index(TRIAL).index)
    return trials.loc[left].status.fillna("unknown").value_counts().to_dict() if len(left) else {}


def select_epoch(df: pd.DataFrame, epoch: str | int = "final") -> Selection:
    """The rows a report uses; see the module docstring for the rules."""
    if df.empty:
        raise ReportError("the study has no result rows yet")
    if epoch == "final":
        rows = df[_reached_final(df)]
        n_epochs = "/".join(str(e) for e in sorted(rows.epochs.unique()))
        label = f"final epoch (epoch {n_epochs})" if n_epochs else "final epoch"
        return Selection(rows.reset_index(drop=True), label, _excluded(df, rows))
    if epoch == "best":
        return _best(df)
    if isinstance(epoch, int) or (isinstance(epoch, str) and epoch.isdigit()):
        rows = df[df.epoch == int(epoch)]
        return Selection(rows.reset_index(drop=True), f"epoch {int(epoch)}", _excluded(df, rows))
    raise ReportError(f"epoch: {epoch!r} is not valid; use 'final' (default), 'best' (needs a validation set) or an "
                      "epoch number")


def _best(df: pd.DataFrame) -> Selection:
    val = df[df.eval_split.isin(VAL_SPLITS) & df.in_domain.fillna(False).astype(bool)]
    if val.empty:
        sets = ", ".join(f"{s} ({sp})" for s, sp in df.drop_duplicates("eval_set")[["eval_set", "eval_split"]].values)
        raise ReportError(
            "epoch='best' needs an in-domain validation set (an evaluation set with split 'val', or 'caption_val' "
            f"for MSR-VTT captioning) to choose each trial's epoch on; this study evaluates on: {sets}. Choosing the "
            "epoch on a test set would bias every number upwards: use epoch='final', or add a validation split to "
            "data.eval and re-run")
    metric = SELECT_METRIC[task_of(df)]
    done = df[_reached_final(df)].drop_duplicates(TRIAL)[TRIAL]
    val = val.merge(done, on=TRIAL).dropna(subset=[metric])
    # Earliest epoch among ties: a stable sort by epoch, then the first maximum per trial.
    best = (val.sort_values(TRIAL + ["epoch"]).sort_values(metric, ascending=False, kind="stable")
            .drop_duplicates(TRIAL)[TRIAL + ["epoch"]])
    rows = df.merge(best, on=TRIAL + ["epoch"])
    names = ", ".join(sorted(val.eval_set.unique()))
    label = f"best epoch per trial by validation {metric.replace('_', ' ')} on {names} (labelled 'best')"
    return Selection(rows.reset_index(drop=True), label, _excluded(df, rows))


def swept_columns(df: pd.DataFrame) -> list[str]:
    """The columns of the swept keys, in the order the study lists them ('data.train' -> data_train)."""
    keys: list[str] = []
    for text in df.drop_duplicates("arm_id").sort_values(["arm_index", "arm_id"]).swept.fillna("{}"):
        for k, v in json.loads(text).items():
            if k == "data.train":
                keys.append("data_train")
            elif isinstance(v, dict):  # a whole section or nested mapping was swept: one column per leaf
                keys += [f"{k}.{sub}".replace(".", "_") for sub in flatten(v)]
            else:
                keys.append(k.replace(".", "_"))
    return [k for k in dict.fromkeys(keys) if k in df.columns]


def swept_values(df: pd.DataFrame, column: str) -> list:
    """The raw swept values of a column's key over the arms (to tell numbers from labels)."""
    out = []
    for text in df.drop_duplicates("arm_id").swept.fillna("{}"):
        out += [v for k, v in flatten(json.loads(text)).items() if k.replace(".", "_") == column]
    return out


def arm_frame(df: pd.DataFrame) -> pd.DataFrame:
    """One row per arm (index arm_id) with its config columns and `order` (the study file's arm order)."""
    arms = df.drop_duplicates("arm_id").copy()
    if arms.arm_index.isna().any():  # files before schema 2 have no arm order: sort by the swept values
        arms = arms.sort_values("swept")
        arms["order"] = range(len(arms))
    else:
        arms["order"] = arms.arm_index.astype(int)
    arms = arms.sort_values("order").set_index("arm_id")
    # Files before schema 3: every model was clip4clip, scored leak-free without DSL.
    arms["model_family"] = arms.model_family.astype(object).fillna("clip4clip")
    arms["evaluation_protocol"] = arms.evaluation_protocol.astype(object).fillna("leakfree")
    arms["regime"] = arms.regime.astype(object).fillna("finetune")  # files before schema 5: all fine-tuned
    arms["evaluation_dsl"] = arms.evaluation_dsl.astype(object).fillna(False)  # files before the DSL knob: none
    arms["task"] = arms.task.astype(object).fillna("retrieval") if "task" in arms else "retrieval"  # as task_of
    no_calm = arms.loss_align == "none"  # CALM's one switch (config.calm_enabled)
    arms["anchors_source"] = arms.anchors_source.astype(object).where(~no_calm, "none")  # unused without CALM
    return arms


def varying(arms: pd.DataFrame, columns: list[str]) -> list[str]:
    return [c for c in columns if arms[c].astype(str).nunique() > 1]


def label_columns(arms: pd.DataFrame, primary: list[str], candidates: list[str]) -> list[str]:
    """primary + the other varying candidates that tell arms apart beyond what the primary columns already say."""
    out = list(primary)
    for c in varying(arms, candidates):
        # With no label column yet, any varying candidate tells arms apart (groupby needs at least one key).
        if c not in out and (not out or arms.groupby(out, dropna=False)[c].nunique(dropna=False).max() > 1):
            out.append(c)
    return out


def independent(arms: pd.DataFrame, columns: list[str]) -> list[str]:
    """The varying columns, without those that another one of them determines (K 0 <-> align none: keep one)."""
    keep = varying(arms, columns)
    for c in list(keep):
        if any(arms.groupby(o, dropna=False)[c].nunique(dropna=False).max() <= 1 for o in keep if o != c):
            keep.remove(c)
    return keep


def baselines(arms: pd.DataFrame) -> dict[str, str]:
    """arm_id -> the arm_id of its baseline (see the module docstring)."""
    out = {}
    # dropna=False: a setting null in every arm (caption decoding in a retrieval study) still groups them together.
    for _, group in arms.groupby([c for c in COMPARABLE_BY if c in arms], sort=False, dropna=False):
        none = group[group.loss_align == "none"]
        base = (none if len(none) else group).sort_values("order").index[0]
        out.update(dict.fromkeys(group.index, base))
    return out
