"""The CALM paper's reported numbers, shipped as data (paper_numbers.json), and how a report finds the matching one.

A paper value is printed beside ours only when the study matches the table: the same layout, the paper's model
family (every CALM number is on T-MASS, family `tmass`), a row whose settings contain the paper row's settings (e.g.
anchors_count 0), the same metric, and the same evaluation dataset (the paper's numbers are on MSR-VTT etc.; a study
on the synthetic domains never matches). Cells without a sourced value print "—". Notes name our scoring protocol
beside every paper value (the paper's baseline numbers come from T-MASS's code, whose evaluation leaks).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

DATA_FILE = Path(__file__).with_name("paper_numbers.json")
PAPER_FAMILY = "tmass"  # CALM is built on T-MASS: its rows compare only with our tmass arms


@dataclass(frozen=True)
class PaperValue:
    value: float
    source: str


@lru_cache(maxsize=1)
def paper_data() -> dict:
    return json.loads(DATA_FILE.read_text(encoding="utf-8"))


def _same(ours: Any, theirs: Any) -> bool:
    try:
        return float(ours) == float(theirs)
    except (TypeError, ValueError):
        return str(ours) == str(theirs)


def lookup(table: str, row: Mapping[str, Any], key: str, dataset: str | None) -> PaperValue | None:
    """The paper's value for one of our cells, or None when the paper's cell is not available or does not match.

    key: our metric key, "id_<metric>" (in-domain test set) or "ood_<metric>" (out-of-domain); dataset: the
    training (in-domain) dataset of the row.
    """
    if str(row.get("model_family", "")) != PAPER_FAMILY:
        return None
    test, _, metric = key.partition("_")
    test = {"id": "in_domain", "ood": "out_of_domain"}.get(test, "")
    for v in paper_data()["values"]:
        if (v["table"] == table and v["metric"] == metric and v["test"] == test and v["dataset"] == dataset
                and all(k in row and _same(row[k], want) for k, want in v["row"].items())):
            return PaperValue(float(v["value"]), v["source"])
    return None


def status_lines() -> list[str]:
    """One line per paper table: what this repository has of it."""
    return [f"Table {t}: {info['status']}" for t, info in paper_data()["tables"].items()]


def references(datasets: set[str]) -> list[dict]:
    """External reference numbers (not CALM table values) for the given in-domain datasets."""
    return [r for r in paper_data()["references"] if r["dataset"] in datasets]
