"""How a trial runs, as the latest `run` says: the runtime settings (config.py's RUNTIME fields: data paths, caches,
loader workers, ...) recorded per trial in <storage>/<study>/runtime.json, read by each trial's driver.

Tune restores an experiment with the trial configs of its first run: without this, a study resumed by a requeued SLURM
job would send its trials to the first job's scratch folders (another node's, perhaps gone). No Ray here.
"""

from __future__ import annotations

import json

from calm_study.config import ROLE, RUNTIME, TrialConfig, fields_with_role
from calm_study.configio import set_path, to_dict
from calm_study.data.sources import absolute_paths
from calm_study.names import RUNTIME_FILE
from calm_study.study.spec import Study, Trial
from calm_study.study.state import StudyFiles
from calm_study.study.storage import Storage


def runtime_settings(cfg: TrialConfig) -> dict:
    """{dotted key: value} of the config's settings of how it runs (config.py's RUNTIME fields), paths absolute."""
    doc = to_dict(absolute_paths(cfg))
    out = {}
    for dotted in fields_with_role(RUNTIME[ROLE]):
        value = doc
        for part in dotted.split("."):
            value = value[part]
        out[dotted] = value
    return out


def publish_runtime(study: Study, trials: list[Trial]) -> None:
    """Record this run's runtime settings per trial (and the base's, for Optuna trials) in storage, for the drivers.

    Tune restores an experiment with the trial configs of its first run: without this, a study resumed by a requeued
    SLURM job would send its trials to the first job's scratch folders (another node's, perhaps gone)."""
    storage = StudyFiles(study).storage
    record = {"base": runtime_settings(study.base), "trials": {t.key: runtime_settings(t.config) for t in trials}}
    storage.write_text(storage.path(study.name, RUNTIME_FILE), json.dumps(record, sort_keys=True))


def current_runtime(trial: dict, storage: str, study: str) -> dict:
    """The trial (a param-space entry) with the runtime settings the latest `run` recorded (publish_runtime): the
    trial's own, else the base's (an Optuna trial). A new dict: Tune's record of the trial stays as it was."""
    st = Storage(storage)
    text = st.read_text(st.path(study, RUNTIME_FILE))
    if text is None:  # a study last run by a version without the file
        return trial
    record = json.loads(text)
    doc = trial["trial"]
    for dotted, value in record["trials"].get(trial["key"], record["base"]).items():
        doc = set_path(doc, dotted, value)
    return {**trial, "trial": doc}
