"""One trial's training, top to bottom: build, (resume), then per epoch train -> evaluate -> checkpoint -> report.

No Ray here. The caller passes `report(metrics, checkpoint_dir)`, called once per epoch by every worker (rank 0 passes
the checkpoint folder, the others None), and optionally the folder of the checkpoint to resume from. Several workers
are supported through torch.distributed: when a process group is initialised (Ray Train does it), the model is
wrapped in DDP and each worker reads its shard of every global batch.
"""

from __future__ import annotations

import math
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from calm_study.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from calm_study.config import TrialConfig
from calm_study.data.dataset import EvalVideos, TrainPairs, collate
from calm_study.data.sources import frame_cache, load_readable_records
from calm_study.evaluate import evaluate
from calm_study.losses import compute_losses
from calm_study.metrics import METRIC_NAMES
from calm_study.models.calm import CALMModel, build_model
from calm_study.progress import say

Reporter = Callable[[dict, "Path | None"], None]


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def all_finite(loss: torch.Tensor) -> bool:
    """Is the loss finite on every worker? (All workers must agree, or they would stop at different collectives.)"""
    ok = torch.isfinite(loss.detach()).to(torch.float32).reshape(1)
    if world()[1] > 1:
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item())


def build_optimizer(model: CALMModel, cfg: TrialConfig) -> torch.optim.AdamW:
    """AdamW, two learning rates (CLIP vs new modules); no weight decay on biases, norms and scalars."""
    clip, new = model.param_groups()
    o = cfg.optim
    groups = []
    for params, lr in ((clip, o.lr_clip), (new, o.lr_new)):
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        groups += [{"params": decay, "lr": lr, "weight_decay": o.weight_decay},
                   {"params": no_decay, "lr": lr, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], betas=tuple(o.betas), eps=o.eps)


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_fraction: float):
    """Linear warmup over warmup_fraction of the steps, then cosine decay to 0; stepped once per step."""
    warmup = int(warmup_fraction * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def fit(cfg: TrialConfig, report: Reporter, *, device: torch.device | str = "cpu",
        resume_dir: Path | None = None, log: Callable[[str], None] | None = None) -> dict:
    """Train one trial; returns the last epoch's metrics."""
    rank, world_size = world()
    log = log or (lambda msg: say(msg) if rank == 0 else None)
    device = torch.device(device)
    t = cfg.train
    seed_everything(t.seed + rank)

    # Data: every caption of every training video is one pair; each worker reads 1/world of every global batch.
    if t.batch_size % world_size:
        raise ValueError(f"train.batch_size {t.batch_size} must be divisible by the {world_size} training workers")
    model = build_model(cfg).to(device)
    d = cfg.data
    cache = frame_cache(d, d.num_frames, model.backbone.image_size)
    video_args = dict(num_frames=d.num_frames, image_size=model.backbone.image_size,
                      normalisation=model.backbone.normalisation, decoder=d.decoder, frame_cache=cache)
    skipped: dict[str, int] = {}  # unreadable videos dropped under data.on_error=skip, per dataset label

    def readable(ref) -> list:
        records, failures = load_readable_records(ref, d, cache)
        skipped[ref.label] = len(failures)
        for record, reason in failures[:5]:
            log(f"skipping unreadable video {record.path} of {ref.label}: {reason}")
        if len(failures) > 5:
            log(f"... {len(failures) - 5} more unreadable videos of {ref.label} skipped")
        return records

    train_set = TrainPairs(readable(d.train), **video_args)
    sampler = DistributedSampler(train_set, num_replicas=world_size, rank=rank, shuffle=True, seed=t.seed)
    loader = DataLoader(train_set, batch_size=t.batch_size // world_size, sampler=sampler, drop_last=True,
                        collate_fn=collate, num_workers=cfg.data.loader_workers)
    if len(loader) == 0:
        raise ValueError(f"data.train {cfg.data.train.label!r} has {len(train_set)} pairs, fewer than one batch of "
                         f"train.batch_size {t.batch_size}; lower train.batch_size")
    log(f"{len(train_set)} training pairs, {len(loader)} steps per epoch x {t.epochs} epochs, "
        f"{world_size} worker(s), device {device}")
    eval_sets = {ref.label: EvalVideos(readable(ref), **video_args) for ref in d.eval} if rank == 0 else {}

    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, t.epochs * len(loader), cfg.optim.warmup_fraction)
    start_epoch = 0
    if resume_dir is not None:
        state = load_checkpoint(resume_dir, cfg, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch = state["epoch"]
        set_rng_state(state["rng"], rank, world_size)
        log(f"resumed from {resume_dir} after epoch {start_epoch}")
    train_model = DistributedDataParallel(model) if world_size > 1 else model
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=t.precision == "bf16")

    metrics: dict = {}
    for epoch in range(start_epoch, t.epochs):
        # Train one epoch.
        tic = time.perf_counter()
        model.train()
        sampler.set_epoch(epoch)
        sums: dict[str, float] = {}
        finite, done_steps = True, 0
        for step, batch in enumerate(loader):
            tokens = model.backbone.tokenize(batch["captions"]).to(device)
            with autocast:
                out = train_model(batch["frames"].to(device), batch["mask"].to(device), tokens)
                terms = compute_losses(out, out["logit_scale"], cfg.loss)
            if not all_finite(terms["total"]):
                finite = False
                break
            optimizer.zero_grad(set_to_none=True)
            terms["total"].backward()
            if cfg.optim.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            optimizer.step()
            scheduler.step()
            done_steps += 1
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            if t.log_every and (step + 1) % t.log_every == 0:
                log(f"  epoch {epoch + 1} step {step + 1}/{len(loader)} loss {float(terms['total']):.4f}")
        train_s = time.perf_counter() - tic
        metrics = {"epoch": epoch + 1, **{f"loss_{k}": v / max(1, done_steps) for k, v in sums.items()},
                   "lr_clip": optimizer.param_groups[0]["lr"], "train_s": train_s,
                   "train_skipped_videos": skipped.get(d.train.label, 0)}
        if not finite:
            # A diverged trial stops here and says so; raising would make Ray retry into the same NaN.
            metrics["status"] = "diverged"
            # The same keys as every other epoch (NaN: not evaluated), so result consumers see one schema.
            metrics.update({f"eval/{ref.label}/{k}": float("nan") for ref in d.eval for k in METRIC_NAMES})
            log(f"epoch {epoch + 1}: loss is not finite at step {step + 1}; the trial stops")
            report(metrics, None)
            return metrics

        # Evaluate on every configured set (rank 0; the others wait at the next collective).
        tic = time.perf_counter()
        for label, eval_set in eval_sets.items():
            for k, v in evaluate(model, eval_set, device, t.eval_batch_size).items():
                metrics[f"eval/{label}/{k}"] = v
            metrics[f"eval/{label}/skipped_videos"] = skipped.get(label, 0)
        metrics["eval_s"] = time.perf_counter() - tic
        metrics["status"] = "completed" if epoch + 1 == t.epochs else "running"

        # Checkpoint (every worker's RNG state, rank 0 writes) and report.
        rngs = [None] * world_size if world_size > 1 else None
        if world_size > 1:
            dist.all_gather_object(rngs, rng_state())
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if rank == 0:
                ckpt = save_checkpoint(Path(tmp), model=model, optimizer=optimizer, scheduler=scheduler,
                                       epoch=epoch + 1, rng=rngs or [rng_state()], cfg=cfg)
            report(metrics, ckpt)
        shown = ", ".join(f"{k.split('/')[1]} R@1 {v:.1f}" for k, v in metrics.items() if k.endswith("t2v_R1"))
        log(f"epoch {epoch + 1}/{t.epochs}: loss {metrics.get('loss_total', float('nan')):.4f}, {shown} "
            f"({train_s:.1f}s train, {metrics['eval_s']:.1f}s eval)")
    return metrics
