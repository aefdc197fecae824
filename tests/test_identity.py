"""Arm ids survive upgrades that add config fields; a changed default value is never merged silently."""

import copy
import json
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from calm_study.config import DatasetRef, ModelConfig, TrialConfig, fields_with_role
from calm_study.configio import flatten, from_dict, to_dict
from calm_study.names import CHECKPOINT_FILE
from calm_study.study.identity import arm_id, baseline, canonical_config
from calm_study.study.spec import expand, load_study
from calm_study.study.state import (
    IDENTITY,
    StudyFiles,
    StudyStateError,
    adopt_recorded_keys,
    check_same_study,
    study_status,
    study_trials,
    write_study_results,
)
from calm_study.training.checkpoint import load_checkpoint
from calm_study.training.fit import fit

REPO = Path(__file__).resolve().parents[1]
STUDIES = sorted((REPO / "studies").glob("*.yaml"))


# A later calm_study, as seen by this one: one more model field and one more evaluation-set field, with defaults.
@dataclass(frozen=True)
class ModelConfigPlus(ModelConfig):
    new_knob: int = 3


@dataclass(frozen=True)
class DatasetRefPlus(DatasetRef):
    max_videos: int = 0


@dataclass(frozen=True)
class TrialConfigPlus(TrialConfig):
    model: ModelConfigPlus = field(default_factory=ModelConfigPlus)
    extra_section_flag: bool = False


def upgraded(cfg: TrialConfig) -> TrialConfigPlus:
    doc = to_dict(cfg)
    errors: list[str] = []
    plus = from_dict(TrialConfigPlus, doc, "", errors)
    assert not errors
    data = replace(plus.data, eval=tuple(DatasetRefPlus(**to_dict(e)) for e in plus.data.eval))
    return replace(plus, data=data)


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.name)
def test_adding_a_field_with_a_default_changes_no_arm_id_of_any_shipped_study(path):
    presets = list((yaml.safe_load(path.read_text()) or {}).get("presets", {}))
    for preset in [None, *presets]:
        for t in expand(load_study(path, preset)):
            plus = upgraded(t.config)
            assert arm_id(plus) == t.arm_id, (path.name, preset, t.swept)
            # ... while a non-default value of the new field is a different arm.
            assert arm_id(replace(plus, model=replace(plus.model, new_knob=4))) != t.arm_id


def test_arm_id_ignores_the_seed_and_sees_every_value():
    base = TrialConfig()
    assert canonical_config(base) == {}
    assert arm_id(replace(base, train=replace(base.train, seed=7))) == arm_id(base)
    other = replace(base, anchors=replace(base.anchors, tau=20.0))
    assert canonical_config(other) == {"anchors": {"tau": 20.0}}
    assert arm_id(other) != arm_id(base)
    two_sets = replace(base, data=replace(base.data, eval=(DatasetRef(), DatasetRef(domain="textured"))))
    assert canonical_config(two_sets)["data"]["eval"] == [{}, {"domain": "textured"}]


def test_every_config_field_has_a_recorded_default():
    """identity_baseline.json is appended to whenever a field is added (never edited): see study/identity.py."""
    recorded = flatten(baseline()["trial"])
    current = flatten(to_dict(TrialConfig()))
    missing = sorted(k for k in current if k not in recorded and not k.startswith(("data.roots", "data.video_dirs")))
    assert not missing, f"record the defaults of {missing} in calm_study/study/identity_baseline.json"
    assert set(flatten(baseline()["elements"]["data.eval"])) == set(flatten(to_dict(DatasetRef())))


def study_file(tmp_path, **extra) -> Path:
    doc = {"name": "upgrade", "base": {"model": {"clip": "calm-tiny", "pretrained": None},
                                       "anchors": {"count": 20}, "train": {"epochs": 2}},
           "search": {"grid": {"loss.alpha": [0.1, 0.2]}}, "seeds": [0, 1],
           "storage": str(tmp_path / "runs"), "results_dir": str(tmp_path / "results"), **extra}
    path = tmp_path / "upgrade.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def edit_manifest(study, edit) -> None:
    files = StudyFiles(study)
    manifest = json.loads(files.storage.read_text(files.manifest))
    edit(manifest)
    files.storage.write_text(files.manifest, json.dumps(manifest))


def test_a_study_begun_before_a_field_existed_resumes(tmp_path):
    study = load_study(study_file(tmp_path))
    trials = expand(study)
    check_same_study(study, trials)

    def before_the_field(manifest):  # the manifest an older calm_study wrote: no model.family, no task
        del manifest["base"]["model.family"], manifest["base"]["task"]

    edit_manifest(study, before_the_field)
    check_same_study(study, trials)  # resumes: nothing refused
    assert [t.key for t in study_trials(study)] == [t.key for t in trials]


def test_a_study_begun_with_the_old_id_scheme_keeps_its_keys(tmp_path):
    study = load_study(study_file(tmp_path))
    trials = expand(study)
    check_same_study(study, trials)
    old_keys = {t.key: f"{'0123456789'[i % 10] * 10}-s{t.seed}" for i, t in enumerate(trials)}

    def old_scheme(manifest):  # calm_study 0.1: hashes of the whole config, no "identity" marker
        del manifest["identity"]
        manifest["trials"] = {old_keys[k]: swept for k, swept in manifest["trials"].items()}

    edit_manifest(study, old_scheme)
    adopted = adopt_recorded_keys(study, trials)
    assert [t.key for t in adopted] == [old_keys[t.key] for t in trials]
    check_same_study(study, adopted)  # the recorded keys resume
    assert [t.key for t in study_trials(study)] == [t.key for t in adopted]
    with pytest.raises(StudyStateError, match="trial"):
        check_same_study(study, trials)  # new keys against the old manifest: refused, not merged


def test_a_changed_default_value_is_refused_naming_the_key_and_can_be_pinned(tmp_path):
    """An upgrade that changes a default (here anchors.tau) resolves the same study file to other values: the arm ids
    change, resuming is refused naming the key and both values, and pinning the old value restores the ids."""
    path = study_file(tmp_path)
    study = load_study(path)
    trials = expand(study)
    check_same_study(study, trials)
    old_tau = study.base.anchors.tau
    after = replace(study, base=replace(study.base, anchors=replace(study.base.anchors, tau=20.0)))
    assert {t.arm_id for t in expand(after)}.isdisjoint({t.arm_id for t in trials})
    with pytest.raises(StudyStateError, match=rf"anchors.tau: {old_tau!r} -> 20.0.*pinned"):
        check_same_study(after, expand(after))
    pinned = load_study(path, sets=[f"anchors.tau={old_tau!r}"])
    assert [t.key for t in expand(pinned)] == [t.key for t in trials]
    check_same_study(pinned, expand(pinned))


@pytest.mark.slow
def test_checkpoints_written_before_a_field_existed_resume(tiny_doc, tmp_path):
    """A checkpoint whose config lacks today's `task` and `model.family` (and whose CALM modules sit where calm_study
    0.1 kept them) resumes; one written with another value of a field is refused, naming it."""
    from calm_study.validate import trial_from_dict

    tiny_doc["train"]["epochs"] = 1
    cfg = trial_from_dict(tiny_doc)
    saved = {}

    def keep(metrics, ckpt):
        if ckpt is not None:
            saved["state"] = torch.load(Path(ckpt) / CHECKPOINT_FILE, weights_only=True)

    fit(cfg, keep)
    state = saved["state"]
    del state["config"]["task"], state["config"]["model"]["family"]
    state["model"] = {k.removeprefix("calm."): v for k, v in state["model"].items()}  # 0.1's module names
    folder = tmp_path / "old"
    folder.mkdir()
    torch.save(state, folder / CHECKPOINT_FILE)

    more = trial_from_dict({**copy.deepcopy(tiny_doc), "train": {**tiny_doc["train"], "epochs": 2}})
    reports = []
    fit(more, lambda m, c: reports.append(m), resume_dir=folder)
    assert [r["epoch"] for r in reports] == [2]
    assert load_checkpoint(folder, more)["epoch"] == 1

    changed = trial_from_dict({**copy.deepcopy(tiny_doc), "anchors": {**tiny_doc["anchors"], "tau": 20.0}})
    with pytest.raises(ValueError, match="anchors.tau: 14.28.* -> 20.0"):
        load_checkpoint(folder, changed)


def test_identity_marker_is_written(tmp_path):
    study = load_study(study_file(tmp_path))
    check_same_study(study, expand(study))
    files = StudyFiles(study)
    assert json.loads(files.storage.read_text(files.manifest))["identity"] == IDENTITY


RUNTIME_SETTINGS = ["data.roots={synthetic: /elsewhere, msrvtt: /mnt/msrvtt}", "data.frame_cache=/scratch/frames",
                    "data.loader_workers=2", "data.feature_cache=/scratch/features", "train.eval_batch_size=64",
                    "evaluation.text_chunk=8", "train.log_every=10", "data.cache_dir=/scratch/cache",
                    "data.decoder=pyav", "data.on_error=skip"]


def test_settings_of_how_a_trial_runs_are_out_of_the_arm_id_and_the_same_study_resumes_with_them(tmp_path):
    """config.RUNTIME fields (one mark per field) change neither arm ids nor the study: moving the data, turning the
    frame cache on or adding loader workers halfway through resumes every trial."""
    assert set(fields_with_role("runtime")) >= {s.split("=")[0] for s in RUNTIME_SETTINGS}
    path = study_file(tmp_path)
    study = load_study(path)
    trials = expand(study)
    check_same_study(study, trials)
    moved = load_study(path, sets=RUNTIME_SETTINGS)
    assert [t.key for t in expand(moved)] == [t.key for t in trials]
    check_same_study(moved, expand(moved))  # nothing refused
    for setting in RUNTIME_SETTINGS:  # each alone, too
        assert arm_id(load_study(path, sets=[setting]).base) == arm_id(study.base), setting
    changed = load_study(path, sets=["anchors.tau=20.0"])
    with pytest.raises(StudyStateError, match="anchors.tau"):  # what defines an arm still may not change
        check_same_study(changed, expand(changed))


def test_checkpoint_check_reads_the_same_marks():
    from calm_study.training.checkpoint import RESUMABLE_DIFFERENCES

    assert set(RESUMABLE_DIFFERENCES) == set(fields_with_role("runtime")) | {"train.epochs", "data.eval"}


LEGACY_V2 = REPO / "tests" / "data" / "legacy_v2"  # a demo-sized study run by the previous version (identity 2)


def test_a_study_run_by_the_previous_version_resumes_with_moved_data_caches_and_workers(tmp_path):
    """tests/data/legacy_v2: the manifest and metric logs the previous calm_study wrote for a two-trial tmass study
    with train.log_every 0 (its arm ids hashed that and every other runtime setting). Today's ids differ, so the
    study keeps its recorded keys; with the data moved, a frame cache and 2 loader workers it is the same study,
    every trial is complete (nothing to train) and its results rebuild."""
    shutil.copytree(LEGACY_V2, tmp_path / "runs" / "legacy_v2", ignore=shutil.ignore_patterns("study.yaml"))
    recorded = set(json.loads((LEGACY_V2 / "manifest.json").read_text())["trials"])
    sets = [f"storage={tmp_path / 'runs'}", f"results_dir={tmp_path / 'results'}", "data.loader_workers=2",
            f"data.cache_dir={tmp_path / 'moved'}", f"data.frame_cache={tmp_path / 'frames'}",
            "data.roots={msrvtt: /mnt/elsewhere}"]
    study = load_study(LEGACY_V2 / "study.yaml", sets=sets)
    assert {t.key for t in expand(study)}.isdisjoint(recorded)  # today's ids leave log_every out
    trials = study_trials(study)
    assert {t.key for t in trials} == recorded
    check_same_study(study, trials)  # resumes: nothing refused
    status = study_status(study, trials, live=False)
    assert set(status.statuses.values()) == {"completed"} and set(status.epochs_done.values()) == {1}
    path, _ = write_study_results(study, trials)
    df = pd.read_parquet(path)
    assert set(df.trial_key) == recorded and len(df) == 2 and "loss_support" in df.columns
    # The shipped studies now spell the baseline row {loss.align: none}: the same trial, found by its values.
    respelled = tmp_path / "respelled.yaml"
    respelled.write_text((LEGACY_V2 / "study.yaml").read_text().replace("{anchors.count: 0, loss.align: none}",
                                                                        "{loss.align: none}"))
    again = load_study(respelled, sets=sets)
    assert [t.key for t in study_trials(again)] == [t.key for t in trials]
    check_same_study(again, study_trials(again))
    changed = load_study(LEGACY_V2 / "study.yaml", sets=[*sets, "optim.lr_new=2e-5"])
    with pytest.raises(StudyStateError, match="optim.lr_new"):
        check_same_study(changed, study_trials(changed))
