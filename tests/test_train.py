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
    # What the epochs cost: set-up on the first epoch only, the checkpoint on each (its size, as written)
    assert "setup_s" in rec.metrics[0] and "setup_s" not in rec.metrics[1]
    assert [m["checkpoint_bytes"] for m in rec.metrics] == [
        sum(f.stat().st_size for f in (tmp_path / f"epoch_{e}").rglob("*") if f.is_file()) for e in (1, 2)]


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


def schedule_lrs(total_steps, **kw) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, total_steps, **kw)
    lrs = []
    for _ in range(total_steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_warmup_cosine_is_the_default_schedule_unchanged():
    assert schedule_lrs(100, warmup_fraction=0.1) == schedule_lrs(100, warmup_fraction=0.1, schedule="warmup_cosine",
                                                                  epochs=5, epoch_decay=0.5)


def test_constant_decay_schedule_warms_up_holds_then_decays_per_epoch():
    """CoCap: BertAdam's warmup_constant over warmup_fraction of the steps, times 1 in the first int(warmup_fraction x
    epochs) epochs and epoch_decay^(e - held) from then on (epoch e counted from 0)."""
    lrs = schedule_lrs(60, warmup_fraction=0.2, schedule="constant_decay", epochs=6, epoch_decay=0.9)  # 10 per epoch
    assert lrs[:12] == pytest.approx([(s + 1) / 12 for s in range(12)])  # 12 warmup steps
    assert lrs[12:20] == pytest.approx([1.0] * 8)  # epoch 1 < held = int(0.2 x 6) = 1 ... still held
    for e in range(2, 6):
        assert lrs[10 * e: 10 * e + 10] == pytest.approx([0.9 ** (e - 1)] * 10)
    # CoCap's 20 epochs: constant (after warm-up) for epochs 0-1, then 0.95, 0.95², ...
    lrs = schedule_lrs(200, warmup_fraction=0.1, schedule="constant_decay", epochs=20, epoch_decay=0.95)
    assert lrs[19] == pytest.approx(1.0) and lrs[20:30] == pytest.approx([1.0] * 10)
    assert lrs[30] == pytest.approx(0.95) and lrs[-1] == pytest.approx(0.95 ** 17)


def slow_bertadam(params, grads, steps, lr, betas, eps, wd, clip):
    """BertAdam written out element by element (CoCap optimization.py), for `steps` steps with fixed gradients."""
    out = []
    for p0, g0 in zip(params, grads):
        p, m, v = p0.flatten().tolist(), [0.0] * p0.numel(), [0.0] * p0.numel()
        norm = math.sqrt(sum(x * x for x in g0.flatten().tolist()))
        g = [x * min(1.0, clip / (norm + 1e-6)) if clip > 0 else x for x in g0.flatten().tolist()]
        for _ in range(steps):
            for i in range(len(p)):
                m[i] = betas[0] * m[i] + (1 - betas[0]) * g[i]
                v[i] = betas[1] * v[i] + (1 - betas[1]) * g[i] * g[i]
                p[i] -= lr * (m[i] / (math.sqrt(v[i]) + eps) + wd * p[i])
        out.append(torch.tensor(p, dtype=torch.float64).view_as(p0))
    return out


def test_bertadam_matches_a_hand_written_update():
    from calm_study.training.optim import BertAdam

    torch.manual_seed(0)
    start = [torch.randn(3, 4, dtype=torch.float64), torch.randn(5, dtype=torch.float64)]
    grads = [torch.randn(3, 4, dtype=torch.float64) * 2.0, torch.randn(5, dtype=torch.float64) * 0.1]  # clipped, not
    for clip in (1.0, 0.0):
        params = [torch.nn.Parameter(p.clone()) for p in start]
        opt = BertAdam([{"params": params[:1]}, {"params": params[1:], "weight_decay": 0.0}], lr=0.01,
                       betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01, max_grad_norm=clip)
        for _ in range(4):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            opt.step()
        want = slow_bertadam(start[:1], grads[:1], 4, 0.01, (0.9, 0.999), 1e-6, 0.01, clip)
        want += slow_bertadam(start[1:], grads[1:], 4, 0.01, (0.9, 0.999), 1e-6, 0.0, clip)
        for p, w in zip(params, want):
            torch.testing.assert_close(p.detach(), w)


def test_bertadam_clips_each_tensor_so_the_step_skips_the_global_clip():
    """Two gradients of norm 0.8: per tensor nothing is clipped, the global norm 1.13 would be; update() must leave
    the clipping to BertAdam (CoCap sets no global clip)."""
    from calm_study.training.fit import update
    from calm_study.training.optim import BertAdam

    def run(optimizer_cls, **kw):
        a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
        model = torch.nn.ParameterList([a, b])
        opt = optimizer_cls([a, b], lr=0.1, **kw)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        loss = (a * torch.tensor([0.8, 0.0])).sum() + (b * torch.tensor([0.0, 0.8])).sum()
        update(model, loss, opt, sched, grad_clip=1.0)
        return torch.cat([a.grad, b.grad])

    torch.testing.assert_close(run(BertAdam, max_grad_norm=1.0), torch.tensor([0.8, 0.0, 0.0, 0.8]))
    clipped = run(torch.optim.AdamW)  # AdamW: the global clip
    assert float(clipped.norm()) == pytest.approx(1.0, rel=1e-4)


def test_optimiser_follows_optim_name(tiny_doc):
    from calm_study.models.families import build_model
    from calm_study.training.optim import BertAdam, build_optimizer

    tiny_doc["optim"] = {"name": "bertadam", "betas": [0.9, 0.999], "weight_decay": 0.01, "grad_clip": 0.5}
    cfg = trial_from_dict(tiny_doc)
    opt = build_optimizer(build_model(cfg), cfg.optim)
    assert isinstance(opt, BertAdam)
    assert {(g["betas"], g["max_grad_norm"], g["eps"]) for g in opt.param_groups} == {((0.9, 0.999), 0.5, 1e-6)}
    assert {g["weight_decay"] for g in opt.param_groups} == {0.0, 0.01}  # none on biases, norms and scalars
    tiny_doc["optim"] = {}
    cfg = trial_from_dict(tiny_doc)
    assert type(build_optimizer(build_model(cfg), cfg.optim)) is torch.optim.AdamW
