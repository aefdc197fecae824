"""Checks that registry entries (families, tasks, alignment variants) and validation share.

Each returns a list of problems (empty when the value is valid), each naming the key and what would be valid, so a
config's problems are reported all at once. `range_problems` checks every number field of a config against the valid
values config.py declares beside it (`valid(...)`), so no entry writes a range check of its own. A leaf: imports
nothing from calm_study but config and configio.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import fields, is_dataclass
from typing import Any

from calm_study.config import RANGE, Range
from calm_study.configio import did_you_mean


def one_of(path: str, value: Any, valid: Sequence[str]) -> list[str]:
    if value in valid:
        return []
    return [f"{path}: {value!r} is not valid{did_you_mean(value, valid)}; valid: {', '.join(valid)}"]


def outside(path: str, value: float, valid: Range | None) -> list[str]:
    """`value` of `path` outside its valid values (a NaN or an infinity is outside every range)."""
    if valid is None:  # a number without declared values: any finite one
        return [] if math.isfinite(value) else [f"{path}: {value} must be a finite number"]
    if value in valid:
        return []
    return [f"{path}: {value} must be {'' if math.isfinite(value) else 'a finite number '}{valid}"]


def range_problems(obj: Any, prefix: str = "", skip: tuple[str, ...] = ()) -> list[str]:
    """Every number of a config object (a dataclass, at any depth: sections, evaluation sets, lists of numbers)
    outside the valid values its field declares (config.valid), and every NaN or infinity; the fields named in `skip`
    (at the top) are left out."""
    errs: list[str] = []
    for f in (f for f in fields(obj) if f.name not in skip):
        value, path = getattr(obj, f.name), f"{prefix}{f.name}"
        items = list(enumerate(value)) if isinstance(value, tuple) else None
        for key, item in items if items is not None else [(None, value)]:
            where = path if key is None else f"{path}[{key}]"
            if is_dataclass(item):
                errs += range_problems(item, f"{where}.")
            elif isinstance(item, (int, float)) and not isinstance(item, bool):
                errs += outside(where, item, f.metadata.get(RANGE))
    return errs


def divides(path: str, heads: int, width: int | None, what: str) -> list[str]:
    """`heads` attention heads must split `width` evenly (each head gets width / heads channels); `what` names the
    width, e.g. "the embedding width of model.clip ViT-B-32". A width that is not known (an architecture that
    is not valid, reported on its own) or a head count out of its range (likewise) is not checked here."""
    if width is None or heads < 1 or width % heads == 0:
        return []
    divisors = [d for d in range(1, width + 1) if width % d == 0]
    return [f"{path}: {heads} must divide {what} ({width}), as each head takes an equal share of it; valid: "
            f"{', '.join(map(str, divisors))}"]


def no_problems(cfg: object) -> list[str]:
    """The check of a registry entry whose knobs need none."""
    return []
