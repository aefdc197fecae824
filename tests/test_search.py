"""Optuna study files: distributions, strict errors, edge configurations, and the Optuna database export."""

import json

import optuna
import pytest
import yaml

from calm_study.configio import ConfigError, to_dict
from calm_study.study.optuna_export import export_optuna
from calm_study.study.search import edge_rows, parse_space
from calm_study.study.spec import expand, load_study
from calm_study.study.state import StudyFiles, study_status, study_trials

SPACE = {"loss.alpha": {"loguniform": [0.01, 1.0]}, "vae.latent_dim": {"choice": [64, 128]},
         "anchors.count": {"int": [10, 20]}, "train.batch_size": {"qint": [8, 32, 8]},
         "anchors.tau": {"uniform": [5, 9]}}


def study_file(tmp_path, **search):
    doc = {"name": "h", "base": {"model": {"clip": "calm-tiny", "pretrained": None}, "train": {"epochs": 3}},
           "search": {"method": "optuna", "num_samples": 4, "space": SPACE, **search},
           "scheduler": {"name": "asha"}, "storage": str(tmp_path / "runs"), "results_dir": str(tmp_path / "results")}
    path = tmp_path / "h.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_distributions_parse_and_bad_ones_are_named():
    parsed, errors = parse_space(SPACE)
    assert not errors and parsed["train.batch_size"] == ("qint", [8, 32, 8])
    _, errors = parse_space({"a": {"uniform": [1, 0]}, "b": {"loguniform": [0, 1]}, "c": {"gauss": [0, 1]},
                             "d": {"int": [1.5, 3]}, "e": [1, 2]})
    text = "\n".join(errors)
    assert "search.space.a: uniform takes [low, high]" in text and "search.space.b: loguniform" in text
    assert "search.space.c: unknown distribution 'gauss'" in text and "search.space.d: int takes" in text
    assert "search.space.e: expected one mapping entry" in text


def test_edge_rows_cover_every_bound_and_choice():
    rows = edge_rows(parse_space(SPACE)[0])
    assert {r["vae.latent_dim"] for r in rows} == {64, 128} and {r["anchors.count"] for r in rows} == {10, 20}
    assert {r["train.batch_size"] for r in rows} == {8, 32} and {r["loss.alpha"] for r in rows} == {0.01, 1.0}


def test_optuna_study_validates_its_whole_space(tmp_path):
    study = load_study(study_file(tmp_path))
    assert len(expand(study)) >= 2  # the edge configurations
    with pytest.raises(ConfigError, match="anchors.count: 500 is more than the 157 labels"):
        load_study(study_file(tmp_path, space={"anchors.count": {"int": [10, 500]}}))
    with pytest.raises(ConfigError, match="cannot be combined with method optuna"):
        load_study(study_file(tmp_path, grid={"loss.alpha": [0.1]}))
    with pytest.raises(ConfigError, match="give one seed"):
        load_study(study_file(tmp_path), sets=["seeds=[0, 1]"])
    with pytest.raises(ConfigError, match="search.sampler: 'cmaes' is not valid"):
        load_study(study_file(tmp_path, sampler="cmaes"))
    with pytest.raises(ConfigError, match="scheduler.name: 'hyperband' is not valid"):
        load_study(study_file(tmp_path), sets=["scheduler.name=hyperband"])


def test_sampled_trials_are_found_in_storage_and_exported_to_optuna(tmp_path):
    """The files a run leaves (trial.json by each driver, metrics.jsonl by the controller) drive status and export."""
    study = load_study(study_file(tmp_path))
    files = StudyFiles(study)
    cases = [({"loss.alpha": 0.1, "vae.latent_dim": 64, "anchors.count": 10, "train.batch_size": 8,
               "anchors.tau": 6.0}, [10.0, 20.0, 30.0]),           # completed
             ({"loss.alpha": 0.5, "vae.latent_dim": 128, "anchors.count": 20, "train.batch_size": 16,
               "anchors.tau": 8.0}, [5.0])]                           # stopped by ASHA after one epoch
    for i, (sampled, r1) in enumerate(cases):
        base = expand(study)[0].config
        key = f"arm{i}-s0"
        record = {"arm_id": f"arm{i}", "seed": 0, "swept": sampled, "tune_dir": f"t{i}",
                  "config": to_dict(base)}
        files.storage.write_text(files.trial_file(key), json.dumps(record))
        for epoch, value in enumerate(r1, 1):
            files.storage.append_line(files.run_log(key), json.dumps(
                {"epoch": epoch, "eval/synthetic-plain-test/t2v_R1": value, "status": "running"}))
    tune_state = {"trial_data": [[json.dumps({"relative_logdir": "t1", "status": "TERMINATED"}), ""]]}
    files.storage.write_text(f"{files.tune}/experiment_state-x.json", json.dumps(tune_state))
    trials = study_trials(study)
    assert sorted(t.key for t in trials) == ["arm0-s0", "arm1-s0"]
    status = study_status(study, trials, live=False)
    assert status.statuses == {"arm0-s0": "completed", "arm1-s0": "stopped_early"}
    db = optuna.load_study(study_name="h", storage=f"sqlite:///{export_optuna(study, trials, status)}")
    states = {t.user_attrs["trial_key"]: (t.state.name, t.value, t.params["vae.latent_dim"]) for t in db.trials}
    assert states == {"arm0-s0": ("COMPLETE", 30.0, 64), "arm1-s0": ("PRUNED", None, 128)}
    assert db.best_value == 30.0


def test_report_section_for_an_optuna_database(tmp_path):
    from calm_study.report.optuna_section import optuna_section

    dists = {"loss.alpha": optuna.distributions.FloatDistribution(0.01, 1.0, log=True),
             "vae.latent_dim": optuna.distributions.CategoricalDistribution([64, 128])}
    db = tmp_path / "_optuna.db"
    s = optuna.create_study(storage=f"sqlite:///{db}", study_name="h", direction="maximize")
    for i, (alpha, d, value) in enumerate([(0.02, 64, 10.0), (0.5, 128, 30.0), (0.1, 64, 20.0)]):
        s.add_trial(optuna.trial.create_trial(params={"loss.alpha": alpha, "vae.latent_dim": d}, distributions=dists,
                                              value=value, user_attrs={"trial_key": f"k{i}"}))
    s.add_trial(optuna.trial.create_trial(params={"loss.alpha": 0.3, "vae.latent_dim": 64}, distributions=dists,
                                          state=optuna.trial.TrialState.PRUNED))
    lines = optuna_section("h", db, tmp_path)
    text = "\n".join(lines)
    assert "4 trials: 3 completed, 1 stopped early" in text
    best_rows = [line for line in lines if line.startswith("| k")]
    assert [row.split("|")[1].strip() for row in best_rows] == ["k1", "k2", "k0"]  # best first
    assert "Parameter importance" in text and "| loss.alpha |" in text
    assert (tmp_path / "optuna_loss_alpha.png").stat().st_size > 0
    assert (tmp_path / "optuna_vae_latent_dim.png").is_file()
    assert optuna_section("h", tmp_path / "missing.db", tmp_path) == []
