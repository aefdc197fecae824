"""The training loop end to end on calm-tiny and real synthetic mp4 files (no Ray)."""

import json
import math

import pytest
import torch

from calm_study.training.checkpoint import STATE_FILE, load_checkpoint
from calm_study.training.fit import build_scheduler, fit
from calm_study.validate import trial_from_dict


class Recorder:
    """The `report` callback: keeps every epoch's metrics and a copy of each checkpoint."""

    def __init__(self, folder):
        self.folder, self.metrics = folder, []

    def __call__(self, metrics, checkpoint_dir):
        self.metrics.append(metrics)
        if checkpoint_dir is not None:
            target = self.folder / f"epoch_{metrics['epoch']}"
            target.mkdir(parents=True)
            (checkpoint_dir / STATE_FILE).replace(target / STATE_FILE)


def test_fit_reports_every_epoch_with_named_terms_and_metrics(tiny_cfg, tmp_path):
    rec = Recorder(tmp_path)
    last = fit(tiny_cfg, rec)
    assert [m["epoch"] for m in rec.metrics] == [1, 2]
    assert [m["status"] for m in rec.metrics] == ["running", "completed"]
    for key in ("loss_total", "loss_task", "loss_align_rec", "loss_align_kl", "train_s", "eval_s",
                "eval/synthetic-plain-test/t2v_R1", "eval/synthetic-plain-test/v2t_MnR"):
        assert math.isfinite(last[key]), key
    state = load_checkpoint(tmp_path / "epoch_2", tiny_cfg)
    assert state["epoch"] == 2 and state["config"]["anchors"]["count"] == 20
    assert set(state) >= {"model", "optimizer", "scheduler", "rng", "config"}
    json.dumps(rec.metrics)  # reportable as JSON


def test_resume_gives_the_same_result_as_an_uninterrupted_run(tiny_cfg, tmp_path):
    straight = Recorder(tmp_path / "a")
    fit(tiny_cfg, straight)
    first = Recorder(tmp_path / "b")
    # Stop after epoch 1 by raising from the report callback, like a preempted worker.
    class Stop(Exception):
        pass

    def stop_after_first(metrics, ckpt):
        first(metrics, ckpt)
        raise Stop

    with pytest.raises(Stop):
        fit(tiny_cfg, stop_after_first)
    resumed = Recorder(tmp_path / "c")
    fit(tiny_cfg, resumed, resume_dir=tmp_path / "b" / "epoch_1")
    assert [m["epoch"] for m in resumed.metrics] == [2]
    a, b = straight.metrics[-1], resumed.metrics[-1]
    for key in a:
        if key.startswith(("loss_", "eval/")):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key
    wa = torch.load(tmp_path / "a" / "epoch_2" / STATE_FILE, weights_only=True)["model"]
    wb = torch.load(tmp_path / "c" / "epoch_2" / STATE_FILE, weights_only=True)["model"]
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_resume_refuses_a_checkpoint_of_another_config(tiny_cfg, tiny_doc, tmp_path):
    rec = Recorder(tmp_path)
    tiny_doc["train"]["epochs"] = 1
    fit(trial_from_dict(tiny_doc), rec)
    tiny_doc["loss"] = {"alpha": 0.5}
    with pytest.raises(ValueError, match="loss.alpha: 0.1 -> 0.5"):
        fit(trial_from_dict(tiny_doc), rec, resume_dir=tmp_path / "epoch_1")


def test_warmup_then_cosine_schedule():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, total_steps=100, warmup_fraction=0.1)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0) and lrs[55] == pytest.approx(0.5, abs=0.02) and lrs[-1] < 0.01
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))


def test_too_small_training_set_is_a_clear_error(tiny_doc):
    tiny_doc["train"]["batch_size"] = 4096
    with pytest.raises(ValueError, match="fewer than one batch"):
        fit(trial_from_dict(tiny_doc), lambda m, c: None)


@pytest.mark.slow
def test_demo_setting_learns_well_above_chance(data_cache):
    """The anchor ablation's demo preset (full CALM arm, default synthetic sizes) beats 3x chance text->video R@1."""
    from pathlib import Path

    from calm_study.study.spec import expand, load_study

    study = load_study(Path(__file__).resolve().parents[1] / "studies" / "anchor_ablation.yaml", "demo",
                       [f"data.cache_dir={data_cache}"])
    trial = next(t for t in expand(study) if t.config.anchors.count == 157)
    metrics = fit(trial.config, lambda m, c: None)
    n_test_videos = trial.config.data.synthetic.num_test_videos
    chance = 100.0 / n_test_videos
    assert metrics["eval/plain_test/t2v_R1"] >= 3 * chance
