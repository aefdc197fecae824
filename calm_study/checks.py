"""Small range checks that registry entries (families, tasks, alignment variants) use on their own knobs.

Each returns a list of problems (empty when the value is valid), each naming the key and what would be valid, so a
config's problems are reported all at once. A leaf: imports nothing from calm_study but configio.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from calm_study.configio import did_you_mean


def one_of(path: str, value: Any, valid: Sequence[str]) -> list[str]:
    if value in valid:
        return []
    return [f"{path}: {value!r} is not valid{did_you_mean(value, valid)}; valid: {', '.join(valid)}"]


def at_least(path: str, value: float, low: float) -> list[str]:
    return [] if value >= low else [f"{path}: {value} must be >= {low}"]


def positive(path: str, value: float) -> list[str]:
    return [] if value > 0 else [f"{path}: {value} must be > 0"]


def fraction(path: str, value: float, closed: bool = False) -> list[str]:
    """value in [0, 1) (a dropout, a smoothing), or [0, 1] when `closed`."""
    if 0 <= value < 1 or (closed and value == 1):
        return []
    return [f"{path}: {value} must be in [0, 1{']' if closed else ')'}"]


def no_problems(cfg: object) -> list[str]:
    """The check of a registry entry whose knobs need none."""
    return []
