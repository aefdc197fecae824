"""The report's tables, chosen from what the study sweeps; every row is one arm (or one method), never a mix.

- Table 6 layout (anchors.* swept, at least two anchor settings besides the baseline): rows = (count, source),
  columns = in-domain R@1, R@5, MnR.
- Table 7 layout (loss.align swept, at least two losses besides `none`): rows = alignment loss, columns = in-domain
  R@1, R@5 and out-of-domain R@1, R@5 (several out-of-domain test sets: their mean per trial).
- Cross-domain (data.train swept): the train × test matrix of R@1 (Tables 1-3), and per method the average drop from
  in-domain to out-of-domain R@1 (cells.domain_drop), averaged over the training sets.
- Sensitivity: in-domain R@1 against each swept numeric key with at least two values besides the baseline.
- Otherwise one row per arm with in-domain R@1, R@5, MnR.
- Captioning studies (task `captioning`): the Tables 4-5 layout instead, one table per training set (captioning.py).
- A study with fine-tuned and frozen-feature trials (`regime`): every table above once per regime, never mixed.
Label columns: a layout's own columns plus any other swept column needed to tell its rows apart.
"""

from __future__ import annotations

from dataclasses import replace

import pandas as pd

from calm_study.names import REGIMES
from calm_study.report import paper
from calm_study.report.captioning import captioning_tables
from calm_study.report.cells import (
    CELL_METRICS,
    STATS,
    Metric,
    Table,
    TrialValues,
    aggregate,
    label_text,
    trial_values,
)
from calm_study.report.render import label_value, pretty
from calm_study.report.select import (
    ReportError,
    Selection,
    arm_frame,
    baselines,
    independent,
    label_columns,
    select_epoch,
    swept_columns,
    swept_values,
    task_of,
)

PROTOCOLS = {"leakfree": "leak-free scoring (every text-video pair scored with that text)",
             "tmass_compat": "tmass_compat scoring (T-MASS's published indexing: each candidate video pooled by its "
                             "own caption, the evaluation leak)"}


def scoring(arms: pd.DataFrame) -> str:
    """How the table's scores were computed: model families, evaluation protocol and DSL, for every caption."""
    families = ", ".join(dict.fromkeys(arms.model_family.astype(str)))
    protocols = "; ".join(PROTOCOLS.get(p, p) for p in dict.fromkeys(arms.evaluation_protocol.astype(str)))
    dsl = " + T-MASS's DSL post-processing" if arms.evaluation_dsl.fillna(False).astype(bool).any() else ""
    frozen = "; CLIP encoders frozen (model.frozen: heads trained on cached CLIP features)" \
        if (arms.regime.astype(object) == REGIMES[1]).any() else ""
    return f"model family {families}; {protocols}{dsl}{frozen}"


REGIME_TITLES = {"finetune": "fine-tuned CLIP", "frozen": "frozen CLIP features"}


def build_tables(df: pd.DataFrame, epoch: str | int = "final") -> tuple[Selection, list[Table]]:
    """The selection used and every applicable table, the main one first. Trials fine-tuned and trials trained on
    frozen features (the `regime` column) are never compared in one table: each regime gets its own tables, the
    regime in their titles and file names."""
    regimes = df.regime.astype(object).fillna(REGIMES[0])  # files before schema 5: every trial fine-tuned
    if regimes.nunique() > 1:
        tables = []
        for name in [r for r in REGIMES if (regimes == r).any()]:
            _, part = build_tables(df[regimes == name], epoch)
            tables += [replace(t, key=f"{t.key}_{name}", title=f"{t.title} ({REGIME_TITLES[name]})") for t in part]
        return select_epoch(df, epoch), tables
    return _build_regime_tables(df, epoch)


def _build_regime_tables(df: pd.DataFrame, epoch: str | int) -> tuple[Selection, list[Table]]:
    sel = select_epoch(df, epoch)
    if sel.rows.empty:
        raise ReportError(f"no trial has a row at the {sel.label} (trials left out: {sel.excluded_text()})")
    if sel.rows.in_domain.isna().all():
        raise ReportError("these results do not say which evaluation sets are in-domain (a Parquet written before "
                          "the in_domain column): run the study again to rebuild it from its metric logs")
    if task_of(sel.rows) == "captioning":  # B@4 ... CIDEr per test set: trial_values reads recall only

        return sel, _note_skipped(sel.rows, captioning_tables(sel, df))
    vals = trial_values(sel)
    arms = arm_frame(sel.rows)
    swept = swept_columns(df)
    treated = arms[arms.loss_align != "none"]
    treated = treated if len(treated) else arms
    numeric = [col for col in swept if treated[col].nunique() >= 2 and (numbers := swept_values(df, col))
               and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers)]
    center = {c: treated[c].mode().iloc[0] for c in numeric}  # the setting every axis is varied around
    one_at_a_time = len(numeric) >= 2 and all(sum(r[c] != center[c] for c in numeric) <= 1
                                              for _, r in treated.iterrows())
    tables = []
    anchor_study = "anchors_source" in swept or not one_at_a_time  # K alone, one axis among others: a sensitivity
    if anchor_study and any(c.startswith("anchors_") for c in swept) and len(
            treated[["anchors_count", "anchors_source"]].drop_duplicates()) >= 2:
        tables.append(_in_domain_table(sel, vals, arms, swept, "table6", ["anchors_count", "anchors_source"]))
    if "loss_align" in swept and treated.loss_align.nunique() >= 2:
        tables.append(_table7(sel, vals, arms, swept))
    if arms.data_train.nunique() >= 2:
        tables += _cross_domain(sel, vals, arms, swept)
    for col in numeric:
        if one_at_a_time:
            tables.append(_axis_table(sel, vals, treated, col, center))
        else:
            tables.append(_in_domain_table(sel, vals, arms, swept, f"sensitivity_{col}", [col], x=col))
    if not tables:
        tables.append(_in_domain_table(sel, vals, arms, swept, "arms", []))
    return sel, _note_skipped(sel.rows, tables)


def _note_skipped(rows: pd.DataFrame, tables: list[Table]) -> list[Table]:
    skipped = _skipped(rows)
    for table in tables if skipped else []:
        table.notes.append(skipped)
    return tables


def _skipped(rows: pd.DataFrame) -> str:
    """'unreadable videos skipped: ...' (the most any trial skipped, per set), or '' when none were."""
    per_set = rows.groupby("eval_set").skipped_videos.max().fillna(0)
    counts = {s: int(n) for s, n in per_set.items() if n > 0}
    train = int(rows.train_skipped_videos.fillna(0).max()) if "train_skipped_videos" in rows else 0
    if train:
        counts["training set"] = train
    return ("unreadable videos skipped (data.on_error skip): " + ", ".join(f"{k} {v}" for k, v in counts.items())
            if counts else "")


def _units(arms: pd.DataFrame, labels: list[str], x: str | None = None) -> pd.DataFrame:
    if x is None:
        return arms
    series = [c for c in labels if c != x]  # lines in the order the study lists them, points along x
    first = arms[series].astype(str).agg("|".join, axis=1) if series else pd.Series("", index=arms.index)
    rank = first.map({k: i for i, k in enumerate(dict.fromkeys(first))})
    return arms.assign(_line=rank).sort_values(["_line", x, "order"], kind="stable").drop(columns="_line")


def _values(vals: TrialValues, keys: list[str]) -> pd.DataFrame:
    return vals.wide.rename(columns={"arm_id": "unit"})[["unit", "seed"] + keys]


def _add_paper(frame: pd.DataFrame, table: str, metrics: list[Metric], vals: TrialValues, arms: pd.DataFrame
               ) -> list[str]:
    """Paper columns K_paper and K_minus_paper (ours − paper); returns the sources used, for the notes.

    A row (an arm) is matched on its whole config (family, anchors, loss), its training dataset and the cell's test
    dataset: `id_<m>` the in-domain one, `ood_<m>` the single out-of-domain one, `<m>@<set>` that set's."""
    sources = []
    ood = {vals.dataset_of[s] for s in vals.ood_sets}
    for m in (m for m in metrics if m.paper):
        found = []
        for _, row in frame.iterrows():
            arm = arms.loc[row.unit] if row.unit in arms.index else None
            train = str(arm.train_dataset) if arm is not None else ""
            if "@" in m.key:  # a cross-domain cell: <metric>@<test set>
                short, _, test_set = m.key.partition("@")
                test, metric = vals.dataset_of.get(test_set), f"t2v_{short}"
            else:  # id_<metric> (in-domain) or ood_<metric> (the single out-of-domain dataset)
                where, _, metric = m.key.partition("_")
                test = train if where == "id" else (next(iter(ood)) if len(ood) == 1 else None)
            number = paper.CROSS_DOMAIN_TABLE.get(train, "") if table == "cross_domain" else table
            found.append(paper.lookup(number, arm, metric, train, test) if arm is not None else None)
        frame[f"{m.key}_paper"] = [f.value if f else float("nan") for f in found]
        frame[f"{m.key}_minus_paper"] = frame[f"{m.key}_mean"] - frame[f"{m.key}_paper"]
        sources += [f.source for f in found if f]
    return list(dict.fromkeys(sources))


def _paper_note(sources: list[str], arms: pd.DataFrame, vals: TrialValues) -> list[str]:
    if sources:
        return [f"paper values beside ours: {len(sources)} cells from {paper.TABLES_FILE} (e.g. {sources[0]}); "
                f"ours: {scoring(arms)}"]
    datasets = sorted({d for _, d in vals.in_domain_of.values()})
    families = ", ".join(dict.fromkeys(arms.model_family.astype(str)))
    return [f"paper values: none match (they are for family {paper.PAPER_FAMILY} trained on MSR-VTT, DiDeMo or "
            f"LSMDC; this study: family {families}, in-domain test data {', '.join(datasets)}), so the paper "
            "columns show —"]


def _in_domain_table(sel: Selection, vals: TrialValues, arms: pd.DataFrame, swept: list[str], key: str,
                     primary: list[str], x: str | None = None) -> Table:
    if x is None:
        labels = label_columns(arms, primary, swept)
    else:  # a line per combination of the other swept settings
        labels = [x] + independent(arms, [c for c in swept if c != x])
    paper_table = "6" if key == "table6" else ""
    metrics = [Metric("id_t2v_R1", "R@1", delta=True, paper=bool(paper_table), plot=True),
               Metric("id_t2v_R5", "R@5", paper=bool(paper_table)),
               Metric("id_t2v_MnR", "MnR", paper=bool(paper_table))]
    units = _units(arms, labels, x)
    frame = aggregate(_values(vals, [m.key for m in metrics]), units, labels, baselines(arms), metrics)
    notes = _paper_note(_add_paper(frame, paper_table, metrics, vals, arms), arms, vals) if paper_table else []
    if paper_table and (arms.anchors_source.astype(str) == "charades+coco").any():
        notes.append("Charades + COCO: the paper says 258 anchors; the Charades (157) and COCO (91) label lists give "
                     "248, which calm_study uses; its row is compared with the paper's 258-anchor row")
    sets = ", ".join(vals.in_domain_sets)
    titles = {"table6": "Table 6 layout: anchor count and source", "arms": "Arms"}
    title = titles.get(key, f"Sensitivity: in-domain R@1 against {pretty(x or '')}")
    caption = f"text→video retrieval on the in-domain test set ({sets}) at the {sel.label}; {scoring(arms)}; {STATS}."
    return Table(key, title, caption, labels, metrics, frame, notes, x)


def _axis_table(sel: Selection, vals: TrialValues, treated: pd.DataFrame, col: str, center: dict) -> Table:
    """One axis of a one-at-a-time sensitivity study: the arms that differ from the center only in `col`, with
    in-domain R@1 and (when the study has out-of-domain sets) the drop; Δ against the center arm."""
    others = [c for c in center if c != col]
    units = treated[(treated[others] == pd.Series({c: center[c] for c in others})).all(axis=1)] if others else treated
    units = units.sort_values(col)
    base_arm = units.index[(units[col] == center[col]).to_numpy()][0]
    metrics = [Metric("id_t2v_R1", "in-domain R@1", delta=True, plot=True)]
    if vals.ood_sets:
        metrics.append(Metric("drop", "drop (in-domain − out-of-domain R@1)", delta=True, plot=True))
    frame = aggregate(_values(vals, [m.key for m in metrics]), units, [col], dict.fromkeys(units.index, base_arm),
                      metrics)
    fixed = ", ".join(f"{pretty(c)} {label_value(center[c])}" for c in others)
    caption = (f"in-domain text→video R@1 on {', '.join(vals.in_domain_sets)} and the drop to "
               f"{', '.join(vals.ood_sets) or 'no out-of-domain set'} against {pretty(col)}, the other settings at "
               f"{fixed}; Δ against {pretty(col)} {label_value(center[col])}; at the {sel.label}; {scoring(treated)}; "
               f"{STATS}.")
    return Table(f"sensitivity_{col}", f"Sensitivity: {pretty(col)}", caption, [col], metrics, frame, [], col)


def _table7(sel: Selection, vals: TrialValues, arms: pd.DataFrame, swept: list[str]) -> Table:
    labels = label_columns(arms, ["loss_align"], swept)
    metrics = [Metric("id_t2v_R1", "R@1", "in-domain", delta=True, paper=True, plot=True),
               Metric("id_t2v_R5", "R@5", "in-domain", paper=True),
               Metric("ood_t2v_R1", "R@1", "out-of-domain", delta=True, paper=True, plot=True),
               Metric("ood_t2v_R5", "R@5", "out-of-domain", paper=True)]
    frame = aggregate(_values(vals, [m.key for m in metrics]), arms, labels, baselines(arms), metrics)
    notes = _paper_note(_add_paper(frame, "7", metrics, vals, arms), arms, vals)
    ood = ", ".join(vals.ood_sets) or "none"
    if len(vals.ood_sets) > 1:
        notes.append(f"out-of-domain = the mean over {ood} per trial")
    caption = (f"text→video retrieval, in-domain ({', '.join(vals.in_domain_sets)}) and out-of-domain ({ood}) test "
               f"sets, at the {sel.label}; {scoring(arms)}; {STATS}.")
    return Table("table7", "Table 7 layout: alignment loss", caption, labels, metrics, frame, notes)


def _cross_domain(sel: Selection, vals: TrialValues, arms: pd.DataFrame, swept: list[str]) -> list[Table]:
    method_cols = independent(arms, [c for c in swept if c != "data_train"])
    labels = method_cols + ["data_train"]
    names = {"R1": "R@1", "R5": "R@5", "R10": "R@10", "MnR": "MnR"}
    metrics = [Metric(f"{short}@{s}", names[short], s, plot=short == "R1", paper=True)
               for s in vals.test_sets for short in CELL_METRICS]
    metrics.append(Metric("drop", "drop", delta=True))
    frame = aggregate(_values(vals, [m.key for m in metrics]), arms, labels, baselines(arms), metrics)
    for s in vals.test_sets:  # which cells are in-domain, for bold type
        for short in CELL_METRICS:
            frame[f"{short}@{s}_in_domain"] = [vals.in_domain_of.get(a, ("", ""))[0] == s for a in frame.unit]
    notes = ["in-domain cells are bold"] + _paper_note(_add_paper(frame, "cross_domain", metrics, vals, arms), arms,
                                                       vals)
    notes += paper.references(set(arms.train_dataset.astype(str)))
    caption = (f"text→video R@1, R@5, R@10 (%) and MnR of a model trained on each training set (rows) on each test "
               f"set (column groups), at the {sel.label}; {scoring(arms)}; "
               f"drop = in-domain R@1 − mean out-of-domain R@1 of the same model; {STATS} (same training set).")
    matrix = Table("cross_domain", "Cross-domain: train × test (Tables 1-3 layout)", caption, labels, metrics,
                   frame, notes)
    # Drop per method: per seed, the mean over training sets of each trained model's drop.
    method = arms[method_cols].apply(lambda r: label_text(r, method_cols), axis=1) if method_cols else \
        pd.Series("(base)", index=arms.index)
    per_seed = vals.wide.assign(unit=vals.wide.arm_id.map(method)).groupby(["unit", "seed"], as_index=False)["drop"]
    values = per_seed.mean()
    units = arms.assign(unit=method).sort_values("order").drop_duplicates("unit").set_index("unit")
    base_arm = baselines(arms)
    base = {u: method[base_arm[a]] for a, u in method.items()}
    drop = [Metric("drop", "average drop", delta=True, plot=True)]
    frame = aggregate(values, units, method_cols, base, drop)
    trains = sorted(set(arms.train_dataset.astype(str)))
    paper_methods = [paper.method_of("1", units.loc[u]) for u in frame.unit]
    frame["drop_paper"] = [paper.drop_of(m, trains) if m else None for m in paper_methods]
    frame["drop_paper"] = frame.drop_paper.astype(float)
    frame["drop_minus_paper"] = frame.drop_mean - frame.drop_paper
    drop[0] = Metric("drop", "average drop", delta=True, plot=True, paper=frame.drop_paper.notna().any())
    caption = (f"per method, the average drop from in-domain to out-of-domain text→video R@1 (points; lower = better "
               f"generalisation) over the training sets {', '.join(sorted(arms.data_train.unique()))}, at the "
               f"{sel.label}; {scoring(arms)}; {STATS}.")
    return [matrix, Table("drops", "Cross-domain: average drop per method", caption, method_cols, drop, frame)]
