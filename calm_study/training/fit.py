"""One trial's training, top to bottom: build, (resume), then per epoch train -> evaluate -> checkpoint -> report.

Task-agnostic: the trial's Task (calm_study/tasks) gives the items, its loss terms, the evaluation and the metric
names; the model family (calm_study/models/families.py) gives the outputs, its extra terms and the parameter groups.
No Ray here. The caller passes `report(metrics, checkpoint_dir)`, called once per epoch by every worker (rank 0 passes
the checkpoint folder, the others None), and optionally the folder of the checkpoint to resume from. Several workers
are supported through torch.distributed: when a process group is initialised (Ray Train does it), the model is
wrapped in DDP and each worker reads its shard of every global batch.
"""

from __future__ import annotations

import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from calm_study.config import TrialConfig
from calm_study.data.dataset import collate
from calm_study.data.sources import frame_cache, load_readable_records
from calm_study.distributed import all_finite, broadcast_from_rank0, world
from calm_study.models.families import VideoTextModel, build_model
from calm_study.names import SKIPPED_VIDEOS, eval_key, loss_column
from calm_study.progress import say, wrapped
from calm_study.tasks import build_task
from calm_study.tasks.base import Task, Terms, weighted_total
from calm_study.training.checkpoint import restore, rng_state, save_checkpoint
from calm_study.training.frozen import FrozenFeatures
from calm_study.training.optim import build_optimizer, build_scheduler, current_lrs

Reporter = Callable[[dict, "Path | None"], None]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def step_terms(task: Task, model: VideoTextModel, out: dict, weights: dict[str, float]) -> Terms:
    """The task's and the model's named terms for one batch's outputs, plus "total", their weighted sum."""
    terms = {**task.loss_terms(model, out), **model.extra_terms(out)}
    terms["total"] = weighted_total(terms, weights)
    return terms


def update(model: torch.nn.Module, loss: torch.Tensor, optimizer: torch.optim.Optimizer, scheduler,
           grad_clip: float) -> None:
    """One optimisation step from a batch's total loss: backward, clip the global gradient norm (unless the optimiser
    clips itself: BertAdam clips each tensor, as CoCap), the optimiser's step, schedule."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0 and not getattr(optimizer, "clips_gradients", False):
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    scheduler.step()


def fit(cfg: TrialConfig, report: Reporter, *, device: torch.device | str = "cpu",
        resume_dir: Path | None = None, log: Callable[[str], None] | None = None,
        started: float | None = None) -> dict:
    """Train one trial; returns the last epoch's metrics. `started` (Unix time): when the caller took the trial up,
    for the first epoch's `setup_s` (default: now)."""
    started = time.time() if started is None else started
    rank, world_size = world()
    log = log or (lambda msg: say(msg) if rank == 0 else None)
    device = torch.device(device)
    t, d = cfg.train, cfg.data
    seed_everything(t.seed + rank)
    if t.batch_size % world_size:
        raise ValueError(f"train.batch_size {t.batch_size} must be divisible by the {world_size} training workers")

    # Build: model, task, data. Every caption of every training video is one pair; each worker reads 1/world of
    # every global batch.
    model = build_model(cfg).to(device)
    task = build_task(cfg)
    cache = frame_cache(d, d.num_frames, model.image_size)
    video = dict(num_frames=d.num_frames, image_size=model.image_size, normalisation=model.normalisation,
                 decoder=d.decoder, frame_cache=cache)
    skipped: dict[str, int] = {}  # unreadable videos dropped under data.on_error=skip, per dataset label
    features = None
    if cfg.model.frozen:
        # Frozen-feature mode: every split's CLIP features come from the feature cache (computed there once, by the
        # first trial that needs them); the items then hold features, not pixels. All workers must hold the same
        # encoder (a random initialisation is seeded per worker), so rank 0's is broadcast first.
        broadcast_from_rank0(model.encoders().module)
        features = FrozenFeatures(cfg, model, cache, device, log)

    def readable(ref) -> list:
        records, failures = load_readable_records(ref, d, cache)
        skipped[ref.label] = len(failures)
        if len(failures) > d.max_skipped_fraction * (len(records) + len(failures)):
            raise ValueError(f"{ref.label}: {len(failures)} of {len(records) + len(failures)} videos cannot be read, "
                             f"more than data.max_skipped_fraction {d.max_skipped_fraction:g}; nothing was trained")
        for record, reason in failures[:5]:
            log(f"skipping unreadable video {record.path} of {ref.label}: {reason}")
        if len(failures) > 5:
            log(f"... {len(failures) - 5} more unreadable videos of {ref.label} skipped")
        return records

    def items(make: Callable, ref) -> Dataset:
        records = readable(ref)
        return make(records, **video, **({"features": features(records, ref.label)} if features else {}))

    train_set = items(task.train_items, d.train)
    sampler = DistributedSampler(train_set, num_replicas=world_size, rank=rank, shuffle=True, seed=t.seed)
    loader = DataLoader(train_set, batch_size=t.batch_size // world_size, sampler=sampler, drop_last=True,
                        collate_fn=collate, num_workers=d.loader_workers)
    if len(loader) == 0:
        fix = "lower train.batch_size" if len(train_set) else "check the training split's files (data check)"
        raise ValueError(f"data.train {d.train.label!r} has {len(train_set)} (video, caption) pairs, fewer than one "
                         f"batch of train.batch_size {t.batch_size}; {fix}")
    regime = "frozen, cached features" if cfg.model.frozen else "fine-tuning"
    log(f"{len(train_set)} training pairs, {len(loader)} steps/epoch x {t.epochs} epochs, "
        f"{world_size} worker(s), {device}, {regime}")
    eval_sets = {ref.label: items(task.eval_items, ref) for ref in d.eval} if rank == 0 else {}

    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, t.epochs * len(loader), cfg.optim.warmup_fraction, cfg.optim.schedule,
                                t.epochs, cfg.optim.epoch_decay)
    start_epoch = 0
    if resume_dir is not None:
        start_epoch = restore(resume_dir, cfg, model, optimizer, scheduler, rank, world_size, device,
                              features.weights if features else None)
        # the folder's name only: its path (storage + run) is long, and the trial key already says which run
        log(f"resumed from {Path(resume_dir).name} after epoch {start_epoch}")
    train_model = DistributedDataParallel(model) if world_size > 1 else model
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=t.precision == "bf16")
    weights = {**task.term_weights(), **model.term_weights()}

    metrics: dict = {}
    setup_s = time.time() - started  # reported with the first epoch of this start only
    for epoch in range(start_epoch, t.epochs):
        # Train one epoch.
        tic = time.perf_counter()
        model.train()
        sampler.set_epoch(epoch)
        sums: dict[str, float] = {}
        finite, done_steps = True, 0
        for step, batch in enumerate(loader):
            with autocast:
                terms = step_terms(task, model, train_model(task.inputs(model, batch, device)), weights)
            if not all_finite(terms["total"]):
                finite = False
                break
            update(model, terms["total"], optimizer, scheduler, cfg.optim.grad_clip)
            done_steps += 1
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            if t.log_every and (step + 1) % t.log_every == 0:
                log(f"  epoch {epoch + 1} step {step + 1}/{len(loader)} loss {float(terms['total']):.4f}")
        train_s = time.perf_counter() - tic
        metrics = {"epoch": epoch + 1, **{loss_column(k): v / max(1, done_steps) for k, v in sums.items()},
                   **current_lrs(optimizer), "train_s": train_s, "train_skipped_videos": skipped.get(d.train.label, 0)}
        if epoch == start_epoch:
            metrics["setup_s"] = setup_s
        if not finite:
            # A diverged trial stops here and says so; raising would make Ray retry into the same NaN.
            metrics["status"] = "diverged"
            # The same keys as every other epoch (NaN: not evaluated), so result consumers see one schema.
            metrics.update({eval_key(ref.label, k): float("nan") for ref in d.eval for k in task.metric_names})
            log(f"epoch {epoch + 1}: loss is not finite at step {step + 1}; the trial stops")
            report(metrics, None)
            return metrics

        # Evaluate on every configured set (rank 0; the others wait at the next collective).
        tic = time.perf_counter()
        for label, items in eval_sets.items():
            for k, v in task.evaluate(model, items, device, t.eval_batch_size).items():
                metrics[eval_key(label, k)] = v
            metrics[eval_key(label, SKIPPED_VIDEOS)] = skipped.get(label, 0)
        metrics["eval_s"] = time.perf_counter() - tic
        metrics["status"] = "completed" if epoch + 1 == t.epochs else "running"

        # Checkpoint (every worker's RNG state, rank 0 writes) and report.
        rngs = [None] * world_size if world_size > 1 else None
        if world_size > 1:
            dist.all_gather_object(rngs, rng_state())
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if rank == 0:
                tic = time.perf_counter()
                ckpt = save_checkpoint(Path(tmp), model=model, optimizer=optimizer, scheduler=scheduler,
                                       epoch=epoch + 1, rng=rngs or [rng_state()], cfg=cfg,
                                       frozen_weights=features.weights if features else None)
                metrics["checkpoint_s"] = time.perf_counter() - tic
                metrics["checkpoint_bytes"] = sum(f.stat().st_size for f in ckpt.rglob("*") if f.is_file())
            report(metrics, ckpt)
        headline = task.metric_names[0]
        shown = ", ".join(f"{label} {headline} {metrics[eval_key(label, headline)]:.1f}" for label in eval_sets)
        # several evaluation sets make a long line: wrapped, so that the console stays within 120 columns
        loss = metrics.get(loss_column("total"), float("nan"))
        for line in wrapped(f"epoch {epoch + 1}/{t.epochs}: loss {loss:.4f}, {shown} ({train_s:.1f}s train, "
                            f"{metrics['eval_s']:.1f}s eval)"):
            log(line)
    return metrics
