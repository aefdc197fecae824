"""Per-trial values and their aggregation into table cells (mean, sd, n, 95% interval, paired Δ vs the baseline).

A table is a frame with one row per unit (an arm, or a method over several training sets) and, per metric key K:
K_mean, K_sd, K_n, K_ci_lo, K_ci_hi, and against the unit's baseline K_diff, K_diff_ci_lo, K_diff_ci_hi, K_pairs,
K_unpaired, K_distinguishable (None on the baseline row itself and with fewer than 2 pairs).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from calm_study.report.select import TRIAL, VAL_SPLITS, Selection
from calm_study.report.stats import paired, summarize

METRICS = ["t2v_R1", "t2v_R5", "t2v_MnR"]
STATS = "mean ± sd over seeds; n = seeds; 95% t-interval; Δ = paired-by-seed difference from the baseline row"
CELL_METRICS = ("R1", "R5", "R10", "MnR")  # per test set, in the cross-domain matrix (the paper's Tables 1-3)


@dataclass(frozen=True)
class Metric:
    key: str  # column prefix in Table.frame
    name: str  # column header, e.g. "R@1"
    group: str = ""  # header group, e.g. "in-domain"
    delta: bool = False  # show the paired Δ vs the baseline in Markdown / LaTeX / console (the CSV always has it)
    paper: bool = False  # show the paper's value beside ours
    plot: bool = False  # drawn in the table's figure


@dataclass
class Table:
    key: str  # file stem: table6, table7, cross_domain, drops, sensitivity_<column>, arms
    title: str
    caption: str
    labels: list[str]  # label columns of `frame`
    metrics: list[Metric]
    frame: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    x: str | None = None  # sensitivity tables: the swept numeric column (a line plot); otherwise a bar chart


def domain_drop(in_domain: float, out_of_domain: Sequence[float]) -> float:
    """The drop from in-domain to out-of-domain R@1 of one trained model.

    Defined as in-domain R@1 minus the mean R@1 over its out-of-domain test sets (the model's own in-domain test set
    is the reference). The paper's text could not be checked here; to use the target's in-domain model as the
    reference instead, change this function only.
    """
    outs = [float(v) for v in out_of_domain if v is not None and math.isfinite(float(v))]
    return float(in_domain) - sum(outs) / len(outs) if outs else math.nan


@dataclass
class TrialValues:
    wide: pd.DataFrame  # one row per trial: arm_id, seed, id_<metric>, ood_<metric>, R1@<eval set>, drop
    in_domain_sets: list[str]
    ood_sets: list[str]
    test_sets: list[str]
    in_domain_of: dict[str, tuple[str, str]]  # arm_id -> (eval_set, eval_dataset) of its in-domain test set
    dataset_of: dict[str, str]  # eval_set -> its dataset (msrvtt, didemo, ...)


def trial_values(sel: Selection) -> TrialValues:
    """Everything the tables read, one row per included trial."""
    test = sel.rows[~sel.rows.eval_split.isin(VAL_SPLITS)]
    if test.empty:
        raise ValueError("the selected rows have no test evaluation set")
    test_sets = list(dict.fromkeys(test.sort_values(["in_domain", "eval_set"], ascending=[False, True]).eval_set))
    ind = test[test.in_domain.fillna(False).astype(bool)]
    # One in-domain test set per trial: split "test" first, then by name.
    ind = ind.assign(_pref=ind.eval_split != "test").sort_values(["_pref", "eval_set"]).drop_duplicates(TRIAL)
    ood = test[~test.in_domain.fillna(False).astype(bool)]
    wide = sel.rows.drop_duplicates(TRIAL)[TRIAL].set_index(TRIAL)
    wide = wide.join(ind.set_index(TRIAL)[METRICS].add_prefix("id_"))
    wide = wide.join(ood.groupby(TRIAL)[METRICS].mean().add_prefix("ood_"))  # several out-of-domain sets: their mean
    for short in CELL_METRICS:  # R1@<set>, R5@<set>, ...: every test set's cell of the cross-domain matrix
        cells = test.pivot_table(index=TRIAL, columns="eval_set", values=f"t2v_{short}", aggfunc="first",
                                 dropna=False).reindex(columns=test_sets)
        wide = wide.join(cells.add_prefix(f"{short}@"))
    ood_sets_of = ood.groupby(TRIAL).eval_set.agg(list)
    wide["drop"] = [domain_drop(row.id_t2v_R1, [row[f"R1@{e}"] for e in ood_sets_of.get(trial, [])])
                    for trial, row in wide.iterrows()]
    in_domain_of = {a: (e, d) for a, e, d in ind[["arm_id", "eval_set", "eval_dataset"]].drop_duplicates("arm_id")
                    .itertuples(index=False)}
    dataset_of = dict(test[["eval_set", "eval_dataset"]].drop_duplicates("eval_set").itertuples(index=False))
    return TrialValues(wide.reset_index(), sorted(ind.eval_set.unique()), sorted(ood.eval_set.unique()), test_sets,
                       in_domain_of, dataset_of)


def label_text(row: pd.Series, labels: list[str]) -> str:
    return ", ".join(f"{c}={row[c]}" for c in labels) if labels else "(base)"


def aggregate(values: pd.DataFrame, units: pd.DataFrame, labels: list[str], base: dict[str, str],
              metrics: list[Metric]) -> pd.DataFrame:
    """values: columns `unit`, `seed` and one per metric key (one row per trial); units: index = unit, in order."""
    rows = []
    for unit, info in units.iterrows():
        b = base[unit]
        mine, theirs = values[values.unit == unit], values[values.unit == b]
        row = {"unit": unit, **{c: info[c] for c in labels}, "is_baseline": unit == b,
               "baseline": label_text(units.loc[b], labels)}
        for m in metrics:
            s = summarize(mine[m.key])
            row.update({f"{m.key}_mean": s.mean, f"{m.key}_sd": s.sd, f"{m.key}_n": s.n,
                        f"{m.key}_ci_lo": s.lo, f"{m.key}_ci_hi": s.hi})
            if unit == b:
                row.update({f"{m.key}_{k}": math.nan for k in ("diff", "diff_ci_lo", "diff_ci_hi")})
                row.update({f"{m.key}_pairs": 0, f"{m.key}_unpaired": 0, f"{m.key}_distinguishable": None})
                continue
            p = paired(dict(zip(mine.seed, mine[m.key])), dict(zip(theirs.seed, theirs[m.key])))
            row.update({f"{m.key}_diff": p.diff.mean, f"{m.key}_diff_ci_lo": p.diff.lo,
                        f"{m.key}_diff_ci_hi": p.diff.hi, f"{m.key}_pairs": p.diff.n,
                        f"{m.key}_unpaired": p.unpaired, f"{m.key}_distinguishable": p.distinguishable})
        rows.append(row)
    return pd.DataFrame(rows)
