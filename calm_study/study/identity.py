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
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from importlib import resources
from typing import Any

from calm_study.config import DatasetRef, TrialConfig
from calm_study.configio import to_dict

BASELINE_FILE = "identity_baseline.json"
_OMIT = object()


@lru_cache(maxsize=1)
def baseline() -> dict:
    """{"trial": nested defaults of TrialConfig, "dataset_ref": defaults of one DatasetRef} as recorded."""
    return json.loads((resources.files("calm_study.study") / BASELINE_FILE).read_text(encoding="utf-8"))


def _reference(recorded: Any, current: Any) -> Any:
    """The recorded default where there is one, else the current one (nested: key by key)."""
    if isinstance(current, dict):
        recorded = recorded if isinstance(recorded, dict) else {}
        return {k: _reference(recorded.get(k, _OMIT), v) for k, v in current.items()}
    return current if recorded is _OMIT else recorded


def _canonical(value: Any, reference: Any, element_reference: dict) -> Any:
    """`value` without what equals `reference`; _OMIT when nothing is left. Lists of mappings (evaluation sets) are
    compared element by element against `element_reference`."""
    if isinstance(value, dict):
        reference = reference if isinstance(reference, dict) else {}
        out = {}
        for k, v in value.items():
            c = _canonical(v, reference.get(k, _OMIT), element_reference)
            if c is not _OMIT:
                out[k] = c
        return out or _OMIT
    if isinstance(value, list) and value and all(isinstance(e, dict) for e in value):
        mine = [_canonical(e, element_reference, element_reference) for e in value]
        mine = [{} if e is _OMIT else e for e in mine]
        if isinstance(reference, list) and all(isinstance(e, dict) for e in reference):
            theirs = [_canonical(e, element_reference, element_reference) for e in reference]
            if mine == [{} if e is _OMIT else e for e in theirs]:
                return _OMIT
        return mine
    return _OMIT if value == reference else value


def canonical_config(cfg: TrialConfig) -> dict:
    """What makes an arm: the config's values that differ from the reference defaults, seed excluded."""
    doc = to_dict(cfg)
    doc["train"].pop("seed", None)
    b = baseline()
    reference = _reference(b["trial"], to_dict(TrialConfig()))
    element = _reference(b["dataset_ref"], to_dict(DatasetRef()))
    out = _canonical(doc, reference, element)
    return {} if out is _OMIT else out


def arm_id(cfg: TrialConfig) -> str:
    """Short stable hash of canonical_config: the key of every result row, run folder and checkpoint."""
    return hashlib.sha256(json.dumps(canonical_config(cfg), sort_keys=True).encode()).hexdigest()[:10]
