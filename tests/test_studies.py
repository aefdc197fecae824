"""Every shipped study file is a test case: it loads and expands, alone and with each of its presets."""

from pathlib import Path

import pytest

from calm_study.configio import load_yaml
from calm_study.study.spec import expand, load_study

STUDIES = sorted((Path(__file__).resolve().parents[1] / "studies").glob("*.yaml"))


def cases():
    for path in STUDIES:
        yield pytest.param(path, None, id=path.stem)
        for preset in load_yaml(path).get("presets") or {}:
            yield pytest.param(path, preset, id=f"{path.stem}-{preset}")


def test_studies_are_shipped():
    assert {p.stem for p in STUDIES} >= {"anchor_ablation", "loss_ablation"}


@pytest.mark.parametrize("path,preset", list(cases()))
def test_study_loads_and_expands(path, preset):
    study = load_study(path, preset)
    trials = expand(study)
    assert trials and len({t.key for t in trials}) == len(trials)
    assert study.name == path.stem
    assert "demo" in (load_yaml(path).get("presets") or {})


def test_anchor_ablation_has_table_6_rows():
    rows = {(t.config.anchors.count, t.config.anchors.source if t.config.anchors.count else None, t.config.loss.align)
            for t in expand(load_study(STUDIES[0].parent / "anchor_ablation.yaml"))}
    assert rows == {(0, None, "none"), (50, "charades", "vae"), (100, "charades", "vae"), (157, "charades", "vae"),
                    (91, "coco91", "vae"), (248, "charades+coco", "vae")}


def test_loss_ablation_has_table_7_rows():
    trials = expand(load_study(STUDIES[0].parent / "loss_ablation.yaml"))
    assert sorted(t.config.loss.align for t in trials) == sorted(["none", "kl", "ce", "mse", "vae"])


PAPER_STUDIES = {  # study -> (training datasets, evaluation datasets) of the paper's experiment it reproduces
    "anchor_ablation": ({"msrvtt"}, ["msrvtt"]),                    # Table 6
    "loss_ablation": ({"msrvtt"}, ["msrvtt", "didemo"]),            # Table 7: DiDeMo out-of-domain
    "cross_domain": ({"msrvtt", "didemo", "lsmdc"}, ["msrvtt", "didemo", "lsmdc"]),  # Tables 1-3
    "sensitivity": ({"msrvtt"}, ["msrvtt", "didemo", "lsmdc"]),
    "hpo_calm": ({"msrvtt"}, ["msrvtt"]),
}


@pytest.mark.parametrize("name", sorted(PAPER_STUDIES))
def test_shipped_studies_without_a_preset_are_the_papers_experiments(name):
    trials = expand(load_study(STUDIES[0].parent / f"{name}.yaml"))
    trains, evals = PAPER_STUDIES[name]
    assert {t.config.data.train.dataset for t in trials} == trains
    for t in trials:
        c = t.config
        assert (c.task, c.model.family, c.model.clip, c.model.pretrained) == ("retrieval", "tmass",
                                                                               "ViT-B-32-quickgelu", "openai")
        assert (c.data.num_frames, c.train.batch_size, c.train.epochs) == (12, 128, 5)
        assert c.optim.lr_new == 1e-5 or "optim.lr_new" in t.swept  # hpo_calm searches it
        assert [e.dataset for e in c.data.eval] == evals and c.data.train.split == "train"
        assert all(e.split == "test" for e in c.data.eval) and c.evaluation.protocol == "leakfree"
        paper = {"anchors.count": (c.anchors.count, 157), "vae.latent_dim": (c.vae.latent_dim, 256),
                 "loss.alpha": (c.loss.alpha, 0.1), "vae.dropout": (c.vae.dropout, 0.1)}
        for key, (ours, want) in paper.items():  # CALM's paper settings, wherever the study does not vary them
            assert c.loss.align == "none" or key in t.swept or ours == want, (name, t.swept, key)
    demo = expand(load_study(STUDIES[0].parent / f"{name}.yaml", "demo"))
    assert all(t.config.model.clip == "calm-tiny" and t.config.data.train.dataset == "synthetic" for t in demo)


# T-MASS's own recipe per training set (its README's training commands; docs/calm-choices.md cites them): the knobs of
# family tmass that differ from its defaults. Where CALM's paper sets a value (lr 1e-5, batch 128, 5 epochs, 12 frames)
# the paper wins, which the test above checks.
TMASS_RECIPES = {
    "msrvtt": {"support_weight": 0.8, "pool_dropout": 0.3, "prior": "uniform01"},
    "didemo": {"support_weight": 0.0, "pool_dropout": 0.4, "prior": "uniform01"},
    "lsmdc": {"support_weight": 0.0, "pool_dropout": 0.3, "prior": "normal", "prior_std": 3e-3},
}


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.name)
def test_every_tmass_trial_trains_its_dataset_with_tmass_recipe(path):
    trials = [t for t in expand(load_study(path)) if t.config.model.family == "tmass"]
    for t in trials:
        recipe = TMASS_RECIPES[t.config.data.train.dataset]
        ours = {k: getattr(t.config.model, k) for k in recipe}
        assert ours == recipe, (path.name, t.swept)


def test_captioning_study_is_tables_4_and_5():
    trials = expand(load_study(STUDIES[0].parent / "captioning.yaml"))
    cells = {(t.config.data.train.dataset, t.config.data.train.split, t.config.loss.align, t.config.anchors.count)
             for t in trials}
    assert cells == {("msrvtt", "caption_train", "none", 0), ("msrvtt", "caption_train", "vae", 157),
                     ("msvd", "train", "none", 0), ("msvd", "train", "vae", 157)}
    for t in trials:
        c = t.config
        assert (c.task, c.model.family, c.model.clip, c.model.pretrained) == ("captioning", "captioner",
                                                                               "ViT-B-32-quickgelu", "openai")
        assert (c.data.num_frames, c.train.batch_size, c.train.epochs) == (12, 128, 20)
        assert (c.caption.layers, c.caption.heads, c.caption.label_smoothing, c.caption.beam_size) == (2, 8, 0.1, 1)
        assert (c.vae.latent_dim, c.loss.alpha) == (256, 0.1)
        # in-domain and both cross-domain directions, with validation sets to choose epochs on (never test)
        assert [(e.dataset, e.split) for e in c.data.eval] == [("msrvtt", "caption_val"), ("msrvtt", "caption_test"),
                                                               ("msvd", "val"), ("msvd", "test")]
    study = load_study(STUDIES[0].parent / "captioning.yaml")
    assert (study.metric.name, study.metric.eval_set) == ("CIDEr", "msrvtt-val")
    demo = expand(load_study(STUDIES[0].parent / "captioning.yaml", "demo"))
    assert len(demo) == 4 and all(t.config.model.clip == "calm-tiny" and t.config.data.train.dataset == "synthetic"
                                  for t in demo)


def test_sensitivity_varies_one_axis_at_a_time_around_the_papers_setting():
    trials = expand(load_study(STUDIES[0].parent / "sensitivity.yaml"))
    axes = {}
    for t in trials:
        assert len(t.swept) <= 1
        for key, value in t.swept.items():
            axes.setdefault(key, set()).add(value)
    assert axes["loss.alpha"] >= {0.01, 0.03, 0.3, 1.0} and axes["vae.latent_dim"] >= {64, 128, 512}
    assert {"anchors.tau", "anchors.count"} <= set(axes)


def run_cli(*args, env=None):
    import os
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "calm_study", *map(str, args)], cwd=STUDIES[0].parents[1],
                          capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})


def test_a_gpu_study_on_a_cpu_only_machine_fails_at_once(tmp_path):
    out = run_cli("run", "studies/anchor_ablation.yaml", "--set", f"storage={tmp_path / 'runs'}",
                  "--set", f"results_dir={tmp_path / 'results'}")
    assert out.returncode == 2 and "needs 1 GPU(s) per trial" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "runs").exists()  # stopped before anything was written
    note = run_cli("validate", "studies/anchor_ablation.yaml")
    assert note.returncode == 0 and "this machine has 0" in note.stdout


def test_missing_data_roots_stop_run_before_ray_with_the_data_check_message(tmp_path):
    env = {"CALM_STUDY_DATA": str(tmp_path / "data")}
    out = run_cli("run", "studies/loss_ablation.yaml", "--set", "resources.gpus_per_worker=0",
                  "--set", f"storage={tmp_path / 'runs'}", "--set", f"results_dir={tmp_path / 'results'}", env=env)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert f"$CALM_STUDY_DATA/msrvtt: the folder {str(tmp_path / 'data' / 'msrvtt')!r} does not exist" in out.stderr
    assert "didemo" in out.stderr and "data check" in out.stderr and "Ray" not in out.stdout
    check = run_cli("data", "check", "studies/loss_ablation.yaml", env=env)
    assert check.returncode != 0 and "msrvtt" in check.stdout + check.stderr
