"""Section (d): one frozen-feature trial against one fine-tuning trial, on the same data and epochs.

Three wall-clock runs of `training.fit.fit`, through its public interface only: fine-tuning (model.frozen false),
frozen with a cold, empty data.feature_cache (the one-time CLIP feature extraction included) and frozen again on the
now-warm cache (what every further trial of a study pays). Frozen mode encodes the anchor prompts once
(anchors.encode once), since the text encoder does not train. All three read frames from one frame cache filled
before the timing, so video decoding weighs on neither side.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from calm_study.bench.step import fmt_s
from calm_study.clip_archs import image_size
from calm_study.config import TrialConfig, calm_enabled
from calm_study.data.sources import frame_cache, load_records
from calm_study.progress import say
from calm_study.training.fit import fit


def frozen_config(cfg: TrialConfig) -> TrialConfig:
    """The config in frozen-feature mode: CLIP fixed, its features cached; anchor prompts encoded once."""
    anchors = replace(cfg.anchors, encode="once") if calm_enabled(cfg) else cfg.anchors
    return replace(cfg, model=replace(cfg.model, frozen=True), anchors=anchors)


def fill_frames(cfg: TrialConfig) -> tuple[int, float]:
    """Decode every clip the trial reads (training and evaluation splits) into data.frame_cache;
    returns (clips, seconds)."""
    d = cfg.data
    cache = frame_cache(d, d.num_frames, image_size(cfg.model.clip))
    assert cache is not None, "fill_frames needs data.frame_cache"
    records = [r for ref in (d.train, *d.eval) for r in load_records(ref, d)]
    # A process pool costs seconds to start (each worker imports torch); worth it only for many clips.
    workers = 1 if len(records) < 500 else min(4, os.cpu_count() or 1)
    tic = time.perf_counter()
    cache.fill(records, workers=workers, progress=True)
    return len(records), time.perf_counter() - tic


def _timed_fit(cfg: TrialConfig, device: torch.device, what: str) -> tuple[float, float, float]:
    """(wall seconds of the whole fit, seconds training summed over epochs, seconds evaluating summed)."""
    say(f"(d) {what}: fit, {cfg.train.epochs} epoch(s) ...")
    epochs: list[dict] = []
    tic = time.perf_counter()
    fit(cfg, lambda metrics, ckpt: epochs.append(metrics), device=device)
    seconds = time.perf_counter() - tic
    say(f"(d) {what}: {fmt_s(seconds)}")
    return seconds, sum(m["train_s"] for m in epochs), sum(m["eval_s"] for m in epochs)


def run_trials(cfg: TrialConfig, epochs: int, device: torch.device, out: Callable[[str], None]) -> dict:
    """Print section (d); returns {"finetune_s", "frozen_cold_s", "frozen_warm_s", "extraction_s", "speedup",
    "features_written"}."""
    cfg = replace(cfg, train=replace(cfg.train, epochs=epochs))
    n_eval = len(cfg.data.eval)
    out(f"(d) one trial, frozen features vs fine-tuning: train.epochs {epochs}, train.batch_size "
        f"{cfg.train.batch_size}, {cfg.train.precision}; each run is a full `fit` (training, evaluation on "
        f"{n_eval} set(s) every epoch, a checkpoint per epoch), wall-clock seconds")
    with tempfile.TemporaryDirectory(prefix="calm-bench-") as tmp:
        configured = bool(cfg.data.frame_cache)
        frames = cfg.data.frame_cache if configured else str(Path(tmp) / "frames")
        features = Path(tmp) / "features"
        features.mkdir()
        cfg = replace(cfg, data=replace(cfg.data, frame_cache=frames))
        say(f"(d) filling the frame cache {frames} (untimed) ...")
        clips, fill_s = fill_frames(cfg)
        where = "the configured data.frame_cache" if configured else "a temporary data.frame_cache"
        out(f"  frames: every run reads {where} ({frames}), filled before timing ({clips} clips, {fmt_s(fill_s)}, "
            "untimed), so no run pays for video decoding")
        fine = _timed_fit(replace(cfg, model=replace(cfg.model, frozen=False)), device, "fine-tuning")
        frozen = frozen_config(replace(cfg, data=replace(cfg.data, feature_cache=str(features))))
        cold = _timed_fit(frozen, device, "frozen, cold feature cache")
        written = any(p.is_file() for p in features.rglob("*"))
        warm = _timed_fit(frozen, device, "frozen, warm feature cache")
    frozen_how = "model.frozen true" + (", anchors.encode once" if calm_enabled(cfg) else "")
    rows = {"fine-tuning (model.frozen false)": fine,
            f"frozen ({frozen_how}), cold fresh data.feature_cache (extraction included)": cold,
            f"frozen ({frozen_how}), warm data.feature_cache (each further trial)": warm}
    width = max(map(len, rows))
    out(f"  {'':<{width}}  {'whole fit':>9}  {'training':>9}  {'evaluation':>10}   (training, evaluation: summed "
        "over epochs, as fit reports them)")
    for label, (wall, train, evaluation) in rows.items():
        out(f"  {label:<{width}}  {fmt_s(wall):>9}  {fmt_s(train):>9}  {fmt_s(evaluation):>10}")
    result = {"finetune_s": fine[0], "frozen_cold_s": cold[0], "frozen_warm_s": warm[0],
              "extraction_s": cold[0] - warm[0], "speedup": fine[0] / warm[0],
              "training_speedup": fine[1] / max(warm[1], 1e-9), "features_written": written}
    if not written:  # a frozen fit always fills a fresh feature cache; without it the runs were not frozen
        out("  note: the frozen runs wrote nothing to their fresh data.feature_cache, so they did not run frozen and "
            "the figures above compare equal work")
    out(f"  one-time feature extraction (cold - warm): {fmt_s(result['extraction_s'])}; speed-up per trial "
        f"(fine-tuning / warm frozen): {result['speedup']:.2f}x for the whole fit (which includes building the "
        f"model, reading the splits, evaluating and checkpointing), {result['training_speedup']:.0f}x for training")
    return result
