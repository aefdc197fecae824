"""Arm identities that survive upgrades.

An arm id is a hash of the values of a resolved trial config (seed excluded) that differ from a fixed reference:
the defaults recorded in identity_baseline.json, or, for a field the file does not list, the field's current default.
Consequences, each deliberate:

- Adding a config field with a default changes no arm id: a study begun before the upgrade resumes after it, its
  checkpoints load, and its Parquet rows keep their keys.
- Changing a default *value* in config.py changes the id of every arm that relied on the old default (its value now
  differs from the recorded one): a study begun before refuses to resume, naming the key and both values, instead of
  silently mixing two configurations. Pinning the old value in the study file gives the old ids back.
- identity_baseline.json is never edited, only appended to: when a field is added, record its default there in the
  same change (tests/test_identity.py fails on a field it does not list).
- Settings of how a trial runs (fields marked RUNTIME in config.py: data roots, caches, loader workers, evaluation
  batch and chunk sizes, logging, decoder, on_error) are left out: moving the data, turning the frame cache on or
  adding loader workers halfway through a study keeps every arm.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import fields, is_dataclass, replace
from functools import lru_cache
from importlib import resources
from typing import Any

from calm_study.config import ROLE, RUNTIME, TrialConfig
from calm_study.configio import to_dict

BASELINE_FILE = "identity_baseline.json"
_OMIT = object()


@lru_cache(maxsize=1)
def baseline() -> dict:
    """{"trial": nested defaults of TrialConfig, "elements": {field path: defaults of one element}} as recorded."""
    return json.loads((resources.files("calm_study.study") / BASELINE_FILE).read_text(encoding="utf-8"))


def _reference(recorded: Any, current: Any) -> Any:
    """The recorded default where there is one, else the current one (nested: key by key)."""
    if isinstance(current, dict):
        recorded = recorded if isinstance(recorded, dict) else {}
        return {k: _reference(recorded.get(k, _OMIT), v) for k, v in current.items()}
    return current if recorded is _OMIT else recorded


def _strip(value: Any, reference: Any) -> Any:
    """A plain value without what equals `reference` (key by key for mappings); _OMIT when nothing is left."""
    if isinstance(value, dict):
        reference = reference if isinstance(reference, dict) else {}
        out = {k: c for k, v in value.items() if (c := _strip(v, reference.get(k, _OMIT))) is not _OMIT}
        return out or _OMIT
    return _OMIT if value == reference else value


def _canonical(value: Any, reference: Any, path: str) -> Any:
    """`value` (a config object) as plain data without what equals `reference` (its plain default); tuples of
    dataclasses (evaluation sets) element by element, each against its own class's defaults."""
    if is_dataclass(value):
        reference = reference if isinstance(reference, dict) else {}
        out = {}
        for f in fields(value):
            if f.metadata.get(ROLE) == RUNTIME[ROLE]:
                continue  # how the trial runs, not what it is
            c = _canonical(getattr(value, f.name), reference.get(f.name, _OMIT), f"{path}{f.name}.")
            if c is not _OMIT:
                out[f.name] = c
        return out or _OMIT
    if isinstance(value, tuple) and value and all(is_dataclass(e) for e in value):
        element = _reference(baseline()["elements"].get(path.rstrip("."), _OMIT), to_dict(type(value[0])()))
        mine = [_strip(to_dict(e), element) for e in value]
        theirs = [_strip(e, element) for e in reference] if isinstance(reference, list) else None
        plain = [{} if e is _OMIT else e for e in mine]
        return _OMIT if theirs is not None and plain == [{} if e is _OMIT else e for e in theirs] else plain
    return _strip(_plain(value), reference)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def canonical_config(cfg: TrialConfig) -> dict:
    """What makes an arm: the config's values that differ from the reference defaults, seed excluded."""
    reference = _reference(baseline()["trial"], to_dict(type(cfg)()))
    out = _canonical(replace(cfg, train=replace(cfg.train, seed=0)), reference, "")
    return {} if out is _OMIT else out


def arm_id(cfg: TrialConfig) -> str:
    """Short stable hash of canonical_config: the key of every result row, run folder and checkpoint."""
    return hashlib.sha256(json.dumps(canonical_config(cfg), sort_keys=True).encode()).hexdigest()[:10]
