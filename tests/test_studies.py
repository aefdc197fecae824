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


def test_paper_settings_outside_the_demo_preset():
    for name in ("anchor_ablation", "loss_ablation"):
        base = load_study(STUDIES[0].parent / f"{name}.yaml").base
        assert (base.model.clip, base.model.pretrained, base.data.num_frames) == ("ViT-B-32-quickgelu", "openai", 12)
        assert (base.train.batch_size, base.train.epochs, base.vae.latent_dim, base.loss.alpha) == (128, 5, 256, 0.1)
        demo = load_study(STUDIES[0].parent / f"{name}.yaml", "demo").base
        assert (demo.model.clip, demo.model.pretrained) == ("calm-tiny", None)
