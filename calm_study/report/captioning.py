"""Captioning tables (the CALM paper's Tables 4-5 layout) and the decoded-caption samples a reader can look at.

One table per training set: rows = arms (the baseline captioner first, Δ paired by seed against it), column groups =
the test sets (in-domain first, then out-of-domain; validation sets only choose epochs), per set B@4, METEOR, ROUGE-L,
CIDEr. Key table4 for a model trained on MSR-VTT, table5 on MSVD (our training set decides the table; the paper's
Tables 4-5 are organised by *test* set, so each cell's paper value is looked up in the table of its test dataset: an
MSR-VTT-trained model's MSVD cells compare with the paper's Table 5). Every table carries the trivial floor (CIDEr of
answering the most frequent training caption), the decoding and the scorer.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import pandas as pd

from calm_study.names import CAPTION_METRICS
from calm_study.report import paper
from calm_study.report.cells import STATS, Metric, Table, aggregate
from calm_study.report.render import num
from calm_study.report.select import (
    TRIAL,
    VAL_SPLITS,
    ReportError,
    Selection,
    arm_frame,
    baselines,
    label_columns,
    swept_columns,
)

# The paper's column order and spelling; the Parquet spells them as names.CAPTION_METRICS.
NAMES = {"BLEU4": "B@4", "METEOR": "METEOR", "ROUGE_L": "ROUGE-L", "CIDEr": "CIDEr"}
SCORER = "metrics ×100, pycocoevalcap on PTB-tokenised text, CIDEr = CIDEr-D"
DATASET_NAMES = {"msrvtt": "MSR-VTT", "msvd": "MSVD"}
MAX_REFERENCES = 3  # per video in captions.md: enough to judge a caption, short enough to read
assert set(NAMES) == set(CAPTION_METRICS)  # a metric added to names.py must get a column here


def captioning_tables(sel: Selection, df: pd.DataFrame) -> list[Table]:
    """One table per training set of the selected captioning rows, in the study file's order."""
    test = sel.rows[~sel.rows.eval_split.isin(VAL_SPLITS)]
    if test.empty:
        raise ReportError("the selected captioning rows have no test evaluation set (only validation sets): add a "
                          "test split to data.eval")
    arms = arm_frame(sel.rows)
    swept = [c for c in swept_columns(df) if c != "data_train"]  # one training set per table
    per_dataset = arms.groupby("train_dataset").data_train.nunique()
    tables = []
    for data_train in dict.fromkeys(arms.data_train):
        group = arms[arms.data_train == data_train]
        train = str(group.train_dataset.iloc[0])
        # Two training sets of the same dataset (e.g. two splits) would share table4: then name both by their label.
        number = paper.CAPTIONING_TABLE.get(train) if per_dataset[train] == 1 else None
        key = f"table{number}" if number else "captioning_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", str(data_train))
        tables.append(_table(sel, test[test.arm_id.isin(group.index)], group, swept, key, str(data_train), train))
    return tables


def _table(sel: Selection, rows: pd.DataFrame, arms: pd.DataFrame, swept: list[str], key: str, data_train: str,
           train: str) -> Table:
    sets = list(dict.fromkeys(rows.sort_values(["in_domain", "eval_set"], ascending=[False, True]).eval_set))
    in_domain = [s for s in sets if rows[rows.eval_set == s].in_domain.fillna(False).astype(bool).any()]
    dataset_of = dict(rows[["eval_set", "eval_dataset"]].drop_duplicates("eval_set").itertuples(index=False))
    wide = rows.drop_duplicates(TRIAL)[TRIAL].set_index(TRIAL)
    for s in sets:  # one column per (metric, test set): the same wide form aggregate reads for retrieval
        one = rows[rows.eval_set == s].drop_duplicates(TRIAL).set_index(TRIAL)
        for m in NAMES:
            wide[f"{m}@{s}"] = one[m].astype(float)
    values = wide.reset_index().rename(columns={"arm_id": "unit"})
    metrics = [Metric(f"{m}@{s}", name, s, delta=m == "CIDEr", plot=m == "CIDEr") for s in sets
               for m, name in NAMES.items()]
    labels = label_columns(arms, ["loss_align"], swept)
    frame = aggregate(values, arms, labels, baselines(arms), metrics)
    found = _add_paper(frame, metrics, arms, train, dataset_of)
    metrics = [dataclasses.replace(m, paper=bool(frame[f"{m.key}_paper"].notna().any())) for m in metrics]
    notes = _paper_notes(found, arms, train, [dataset_of[s] for s in sets])
    notes += [_floor(rows, sets), f"decoding: {_decoding(arms)}; {SCORER}"]
    ood = ", ".join(s for s in sets if s not in in_domain) or "none"
    families = ", ".join(dict.fromkeys(arms.model_family.astype(str)))
    caption = (f"video captioning by a model trained on {data_train}, on the test sets {', '.join(sets)} (column "
               f"groups: in-domain {', '.join(in_domain) or 'none'} first, then out-of-domain {ood}), at the "
               f"{sel.label}; model family {families}{_frozen(arms)}, {_decoding(arms)}; {SCORER}; {STATS}.")
    number = paper.CAPTIONING_TABLE.get(train) if key.startswith("table") else None
    title = (f"Table {number} layout: captioning, trained on {DATASET_NAMES.get(train, train)}" if number
             else f"Captioning, trained on {data_train}")
    return Table(key, title, caption, labels, metrics, frame, notes)


def _frozen(arms: pd.DataFrame) -> str:
    return " with frozen CLIP encoders (model.frozen: heads trained on cached CLIP features)" \
        if (arms.regime.astype(object) == "frozen").any() else ""


def _add_paper(frame: pd.DataFrame, metrics: list[Metric], arms: pd.DataFrame, train: str,
               dataset_of: dict[str, str]) -> list[tuple[str, str, str]]:
    """K_paper and K_minus_paper per metric key; returns (paper table, test dataset, note) of every value used."""
    found = []
    for m in metrics:
        metric, _, test_set = m.key.partition("@")
        test = dataset_of[test_set]
        table = paper.CAPTIONING_TABLE.get(test, "")  # the paper's table of the *test* dataset
        hits = [paper.lookup(table, arms.loc[u], metric, train, test) if table else None for u in frame.unit]
        frame[f"{m.key}_paper"] = [h.value if h else math.nan for h in hits]
        frame[f"{m.key}_minus_paper"] = frame[f"{m.key}_mean"] - frame[f"{m.key}_paper"]
        found += [(table, test, h.source.partition("; ")[2]) for h in hits if h]
    return found


def _paper_notes(found: list[tuple[str, str, str]], arms: pd.DataFrame, train: str, tests: list[str]) -> list[str]:
    tests = list(dict.fromkeys(tests))
    if not found:
        families = ", ".join(dict.fromkeys(arms.model_family.astype(str)))
        return [f"paper values: none match (Tables 4-5 are for family {paper.CAPTION_FAMILY} with CALM trained on "
                f"MSR-VTT or MSVD; this study: family {families} trained on {train}, tested on {', '.join(tests)}), "
                "so no paper columns are shown"]
    used = " and ".join(sorted({t for t, _, _ in found}))
    notes = [f"paper values beside ours: {len(found)} cells from {paper.TABLES_FILE} (Table{'s' * (' ' in used)} "
             f"{used}): the "
             f"CALM row against our {paper.CAPTION_FAMILY} arms with loss_align vae and anchors; the baseline "
             "captioner has no row of its own in the paper (its nearest, CoCap and CLIP4Caption, below); the paper "
             "organises Tables 4-5 by test set, so each cell's value comes from its test dataset's table"]
    for table, test, note in dict.fromkeys(found):
        if note:  # the derived MSVD → MSR-VTT row must not pass for a printed number
            notes.append(f"paper Table {table}, CALM {train}→{test}: {note}")
    return notes + paper.caption_references(train, tests, NAMES)


def _floor(rows: pd.DataFrame, sets: list[str]) -> str:
    """The trivial floor per test set: a captioner must beat answering every video with the same sentence."""
    means = rows.groupby("eval_set").trivial_CIDEr.mean()
    cells = [f"{s} {num(means.get(s, math.nan))}" for s in sets]
    return ("trivial floor, CIDEr of answering every video with the most frequent training caption (mean over "
            f"trials): {', '.join(cells)}")


def _decoding(arms: pd.DataFrame) -> str:
    kinds = []
    for beam, penalty in arms[["caption_beam_size", "caption_length_penalty"]].drop_duplicates().itertuples(
            index=False):
        if pd.isna(beam) or int(beam) == 1:
            kinds.append("greedy decoding")
        else:
            kinds.append(f"beam search (beam {int(beam)}, length penalty {float(penalty):g})")
    return " / ".join(dict.fromkeys(kinds)) or "greedy decoding"


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ").strip()


def samples_markdown(samples: dict, study: str) -> str:
    """_captions.json as Markdown: per trial and evaluation set, each video's decoded caption and a few references."""
    lines = [f"# Study `{study}`: decoded captions", "",
             f"Per trial, the captions decoded at the epoch named (up to {MAX_REFERENCES} references each).", ""]
    for trial, info in samples.items():
        lines += [f"## {trial} (arm {info.get('arm_id', '?')}, seed {info.get('seed', '?')}, epoch "
                  f"{info.get('epoch', '?')})", ""]
        for eval_set, items in (info.get("sets") or {}).items():
            refs = max([min(MAX_REFERENCES, len(i.get("references") or [])) for i in items] + [1])
            heads = ["video", "our caption"] + [f"reference {k + 1}" for k in range(refs)]
            lines += [f"### {eval_set}", "", "| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
            for i in items:
                given = [_cell(r) for r in (i.get("references") or [])[:refs]]
                cells = [_cell(i.get("video", "")), _cell(i.get("caption", ""))] + given + [""] * (refs - len(given))
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


def write_samples(source: Path, out: Path, study: str) -> list[str]:
    """Write <out>/captions.md from _captions.json; the report's lines about it ([] without a samples file)."""
    if not source.is_file():
        return []
    try:
        samples = json.loads(source.read_text(encoding="utf-8"))
        text = samples_markdown(samples, study)
    except (OSError, ValueError, TypeError, AttributeError) as e:  # a damaged samples file must not cost the tables
        return ["## Decoded captions", "", f"`{source}` could not be read ({type(e).__name__}: {e}); the tables above "
                "do not depend on it.", ""]
    (out / "captions.md").write_text(text + "\n", encoding="utf-8")
    sets = sum(len(info.get("sets") or {}) for info in samples.values())
    return ["## Decoded captions", "", f"[captions.md](captions.md): each trial's decoded captions beside up to "
            f"{MAX_REFERENCES} references ({len(samples)} trial(s), {sets} evaluation set(s); from `{source}`).", ""]
