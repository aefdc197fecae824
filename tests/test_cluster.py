"""Running on clusters without a SLURM: a restored study takes the current run's runtime settings (scratch paths),
`run --wait-nodes`, Ray's cluster-launcher config checked by Ray's own validator, the KubeRay manifest's structure,
and the SLURM batch script's syntax. tests/test_slurm.py runs the batch script on a real SLURM."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"


# ---- a restored study runs with this run's data paths and caches -------------------------------------------------
def test_a_restored_trial_takes_this_runs_scratch_paths_and_keeps_its_arm(tmp_path, data_cache):
    from calm_study.config import ROLE, RUNTIME, fields_with_role, under
    from calm_study.study.ray_runner import current_runtime, param_space, publish_runtime
    from calm_study.study.spec import expand, load_study

    from .conftest import two_trial_study

    path = tmp_path / "moved.yaml"
    path.write_text(yaml.safe_dump(two_trial_study("moved", str(tmp_path / "runs"), str(tmp_path / "results"),
                                                   str(data_cache))))
    first = load_study(path, sets=[f"data.frame_cache={tmp_path / 'job1' / 'frames'}"])
    # What Tune pickles at the first run and hands back, unchanged, to every restored trial's driver.
    restored = param_space(first, expand(first))["trial"]["grid_search"]
    again = load_study(path, sets=[f"data.frame_cache={tmp_path / 'job2' / 'frames'}", "data.loader_workers=2"])
    assert [t.key for t in expand(again)] == [t["key"] for t in restored]  # scratch paths do not change arms
    publish_runtime(again, expand(again))

    runtime = fields_with_role(RUNTIME[ROLE])
    for entry in restored:
        before = copy.deepcopy(entry)
        now = current_runtime(entry, str(tmp_path / "runs"), "moved")
        assert entry == before  # Tune's record of the trial is not edited
        assert now["trial"]["data"]["frame_cache"] == str(tmp_path / "job2" / "frames")
        assert now["trial"]["data"]["loader_workers"] == 2
        assert now["trial"]["data"]["cache_dir"] == str(data_cache)
        flat_now, flat_before = _flat(now["trial"]), _flat(entry["trial"])
        changed = {k for k in flat_now if flat_now[k] != flat_before.get(k)}
        assert changed == {"data.frame_cache", "data.loader_workers"} and all(under(k, runtime) for k in changed)


def test_a_study_without_a_runtime_record_keeps_its_trials_as_tune_restored_them(tmp_path):
    from calm_study.study.ray_runner import current_runtime

    entry = {"key": "abc-s0", "trial": {"data": {"frame_cache": "/old"}}}
    assert current_runtime(entry, str(tmp_path / "runs"), "old_study") == entry


def _flat(doc: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in doc.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v, sort_keys=True)
    return out
