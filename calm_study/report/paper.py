"""The CALM paper's Tables 1–7, shipped as data (calm_tables.csv), and how a report finds the value beside one of ours.

calm_tables.csv: `table,train,test,method,metric,value,note`, transcribed from the paper (CVPR 2025, arXiv
2503.17417); one derived row (Table 4, MSVD → MSR-VTT, CALM) says so in its note. A paper value is printed beside one
of our cells only when the cell matches: the paper's model family (every CALM retrieval number is built on T-MASS:
family `tmass`; the captioning Tables 4-5 compare with our family `captioner`), the paper's method for the arm's
settings (`method_of`), the same training and test dataset (the paper's numbers are on MSR-VTT, DiDeMo, LSMDC, MSVD;
a study on the synthetic domains never matches) and the same metric.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import resources
from typing import Any

PAPER = "J. Shin, B. Kim, E. Kim. Generative Modeling of Class Probability for Multi-Modal Representation Learning " \
        "(CALM). CVPR 2025, arXiv 2503.17417"
TABLES_FILE = "calm_tables.csv"
PAPER_FAMILY = "tmass"  # CALM is built on T-MASS: its rows compare only with our tmass arms
CROSS_DOMAIN_TABLE = {"msrvtt": "1", "didemo": "2", "lsmdc": "3"}  # Tables 1-3: trained on this dataset
CAPTIONING_TABLE = {"msrvtt": "4", "msvd": "5"}  # Tables 4-5: tested on this dataset (in-domain and cross-domain)
CAPTION_FAMILY = "captioner"  # our captioning family: its CALM arms compare with the paper's captioning CALM rows
CAPTION_REFERENCES = ("CoCap", "CLIP4Caption")  # the paper's captioners nearest to our baseline (CoCap's recipe)
REFERENCE_METHODS = ("CLIP4Clip", "EMCL", "UATVR", "DiffusionRet")  # the other retrieval methods of Tables 1-3
TABLE7_METHODS = {"none": "baseline (T-MASS)", "kl": "KL", "ce": "CE", "mse": "MSE", "vae": "CALM (VAE)"}
TABLE6_SOURCES = {"charades": "charades", "coco91": "coco", "charades+coco": "charades+coco"}
# The paper's "258" Charades + COCO anchors; the label lists give 157 + 91 = 248, which calm_study uses.
TABLE6_COUNT = {("charades+coco", 248): 258}


@dataclass(frozen=True)
class PaperValue:
    value: float
    source: str


@lru_cache(maxsize=1)
def paper_rows() -> tuple[dict, ...]:
    text = (resources.files("calm_study.report") / TABLES_FILE).read_text(encoding="utf-8")
    return tuple(csv.DictReader(text.splitlines()))


@cache
def _index() -> dict[tuple[str, str, str, str, str], dict]:
    return {(r["table"], r["train"], r["test"], r["method"], r["metric"]): r for r in paper_rows()}


def value(table: str, train: str, test: str, method: str, metric: str) -> PaperValue | None:
    row = _index().get((table, train, test, method, metric))
    if row is None:
        return None
    note = f"; {row['note']}" if row["note"] else ""
    return PaperValue(float(row["value"]), f"CALM Table {table}, {method}, {train}→{test} {metric}{note}")


def method_of(table: str, arm: Mapping[str, Any]) -> str | None:
    """The paper's method (row) of one of our arms in a table, or None when the paper has no such row."""
    if str(arm.get("regime", "finetune")) == "frozen":
        return None  # every paper row fine-tunes CLIP: a frozen-feature arm has no counterpart
    family = str(arm.get("model_family", ""))
    align, count = str(arm.get("loss_align", "")), int(arm.get("anchors_count", -1))
    if table in CAPTIONING_TABLE.values():
        # Captioning: our captioner with CALM is the paper's CALM row; our plain captioner has no row of its own
        # (CoCap and CLIP4Caption are the nearest: caption_references lists them).
        return "CALM" if family == CAPTION_FAMILY and align == "vae" else None
    if family != PAPER_FAMILY:
        return None
    source = str(arm.get("anchors_source", ""))
    if table in ("1", "2", "3"):
        return "T-MASS" if align == "none" else "CALM" if align == "vae" else None
    if table == "6":
        if align == "none":
            return "anchors=0 source=none (baseline = T-MASS)"
        if align == "vae" and source in TABLE6_SOURCES:
            return f"anchors={TABLE6_COUNT.get((source, count), count)} source={TABLE6_SOURCES[source]}"
        return None
    if table == "7":
        paper_setting = align == "none" or (count == 157 and source == "charades")
        return TABLE7_METHODS.get(align) if paper_setting else None
    return None


def lookup(table: str, arm: Mapping[str, Any], metric: str, train: str, test: str | None) -> PaperValue | None:
    """The paper's value for one of our cells: the arm's method in `table`, trained on `train`, tested on `test`."""
    method = method_of(table, arm)
    return value(table, train, test, method, metric) if method and test else None


def drop_of(method: str, trains: list[str]) -> float | None:
    """The paper's average drop from in-domain to out-of-domain t2v R@1 of a method over Tables 1-3 (the same
    definition as ours: in-domain R@1 minus the mean over the other test sets, averaged over training sets)."""
    drops = []
    for train in trains:
        table = CROSS_DOMAIN_TABLE.get(train)
        rows = [r for r in paper_rows() if r["table"] == table and r["method"] == method and r["metric"] == "t2v_R1"]
        own = [float(r["value"]) for r in rows if r["test"] == train]
        other = [float(r["value"]) for r in rows if r["test"] != train]
        if not own or not other:
            return None
        drops.append(own[0] - sum(other) / len(other))
    return sum(drops) / len(drops) if drops else None


def references(trains: set[str], metric: str = "t2v_R1") -> list[str]:
    """The paper's other methods on the same training sets (Tables 1-3), one line per method and training set."""
    lines = []
    for train in sorted(trains):
        table = CROSS_DOMAIN_TABLE.get(train)
        for method in REFERENCE_METHODS:
            cells = [f"{r['test']} {float(r['value']):g}" for r in paper_rows()
                     if r["table"] == table and r["method"] == method and r["metric"] == metric]
            if cells:
                lines.append(f"paper Table {table} reference, {method} trained on {train}: {metric} "
                             + ", ".join(cells))
    return lines


def caption_references(train: str, tests: list[str], metrics: dict[str, str]) -> list[str]:
    """The paper's CoCap and CLIP4Caption values (Tables 4-5) for a training set and the given test datasets, one line
    per method; metrics: {metric column: display name}, in display order."""
    lines = []
    for method in CAPTION_REFERENCES:
        cells = []
        for test in tests:
            found = [(name, value(CAPTIONING_TABLE.get(test, ""), train, test, method, m)) for m, name in
                     metrics.items()]
            if any(v for _, v in found):
                cells.append(f"{train}→{test} (Table {CAPTIONING_TABLE[test]}) "
                             + ", ".join(f"{name} {v.value:.1f}" for name, v in found if v))
        if cells:
            lines.append(f"paper reference, {method}: " + "; ".join(cells))
    return lines


def status_lines() -> list[str]:
    """One line per paper table: what this repository ships of it."""
    tables: dict[str, set[str]] = {}
    for r in paper_rows():
        tables.setdefault(r["table"], set()).add(r["method"])
    return [f"Table {t}: {len(methods)} methods ({', '.join(sorted(methods))}), from {PAPER}"
            for t, methods in sorted(tables.items())]
