"""Section (a): the time of one full training step, with and without CALM, and its extrapolation to the study batch.

A step is what fit.py runs per batch: forward under the config's precision autocast, `step_terms`, backward,
gradient clipping, the optimizer and scheduler steps. Frames are random (the pixels do not change the cost), the
captions are real-looking sentences (their token count does: text encoding stops at the longest text of the batch).
Only a few small batches fit on a CPU, so the step time is fitted as a + b·B and extrapolated to train.batch_size.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch

from calm_study.config import TrialConfig, calm_enabled
from calm_study.models.families import build_model
from calm_study.progress import say
from calm_study.tasks import build_task
from calm_study.training.fit import seed_everything, step_terms, update
from calm_study.training.optim import build_optimizer, build_scheduler
from calm_study.validate import canonical_trial

# MSR-VTT-like captions (about 8-16 CLIP tokens each, like the real ones); batches cycle through them.
CAPTIONS = (
    "a man is playing a guitar on a stage in front of a crowd",
    "a woman is cooking pasta in a small kitchen",
    "two kids are running on the beach with a dog",
    "a red car drives along a mountain road at sunset",
    "someone is explaining how to fold a paper airplane",
    "a basketball player jumps and scores in a packed stadium",
    "people are dancing at a wedding party",
    "a cat is sleeping on a sofa next to a window",
)


def fmt_s(seconds: float) -> str:
    """A duration for people: milliseconds below 0.1 s (3 significant digits), else seconds."""
    return f"{seconds * 1e3:.3g} ms" if abs(seconds) < 0.1 else f"{seconds:.2f} s"


def captions(n: int) -> list[str]:
    """n captions, cycling CAPTIONS."""
    return [CAPTIONS[i % len(CAPTIONS)] for i in range(n)]


@dataclass(frozen=True)
class LinearCost:
    """Step time modelled as fixed_s + per_item_s · batch."""

    fixed_s: float  # a: per step whatever the batch (the K anchor prompts encoded each step, the optimizer, ...)
    per_item_s: float  # b: per (video, caption) pair

    def at(self, batch: float) -> float:
        return self.fixed_s + self.per_item_s * batch


def fit_linear(points: Sequence[tuple[float, float]]) -> LinearCost:
    """Least-squares line through (batch, seconds) points: the exact line through two points, the least-squares
    one through more. Needs at least two distinct batch sizes."""
    xs = [float(x) for x, _ in points]
    ys = [float(y) for _, y in points]
    if len(set(xs)) < 2:
        raise ValueError(f"a line needs at least two distinct batch sizes, got {sorted(set(xs))}")
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return LinearCost(fixed_s=my - slope * mx, per_item_s=slope)


def extrapolate(points: Sequence[tuple[float, float]], batch: float) -> float:
    """The fitted step time (seconds) at `batch`."""
    return fit_linear(points).at(batch)


def plausible(cost: LinearCost) -> bool:
    """A step has a fixed part (the optimizer alone is one) and each pair adds to it: a > 0 and b > 0. Anything else
    is timing noise larger than the effect of the batch size."""
    return cost.fixed_s > 0 and cost.per_item_s > 0


def without_calm(cfg: TrialConfig) -> TrialConfig:
    """The same trial without CALM (loss.align none, its one switch): the baseline of the ablation studies."""
    return canonical_trial(replace(cfg, loss=replace(cfg.loss, align="none")))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Stepper:
    """One config's model, task and optimizer, ready to time full training steps as fit.py runs them."""

    def __init__(self, cfg: TrialConfig, device: torch.device):
        seed_everything(cfg.train.seed)
        self.cfg, self.device = cfg, device
        self.model = build_model(cfg).to(device)
        self.model.train()
        self.task = build_task(cfg)
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, 1_000_000, cfg.optim.warmup_fraction)  # rate moot here
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.train.precision == "bf16")
        self.weights = {**self.task.term_weights(), **self.model.term_weights()}

    def batch(self, b: int) -> dict:
        """The model input of a collated batch of b pairs, as the task makes it (untimed, as the loader is)."""
        t, s = self.cfg.data.num_frames, self.model.image_size
        collated = {"frames": torch.randn(b, t, 3, s, s, device=self.device),  # (B, T, 3, S, S), like normalised pixels
                    "mask": torch.ones(b, t, dtype=torch.bool, device=self.device),  # (B, T)
                    "captions": captions(b)}
        return self.task.inputs(self.model, collated, self.device)

    def step(self, batch: dict) -> float:
        """Seconds of one training step: forward, loss terms, backward, clipping, AdamW and schedule."""
        _sync(self.device)
        tic = time.perf_counter()
        with self.autocast:
            terms = step_terms(self.task, self.model, self.model(batch), self.weights)
        update(self.model, terms["total"], self.optimizer, self.scheduler, self.cfg.optim.grad_clip)
        _sync(self.device)
        return time.perf_counter() - tic


def time_steps(cfgs: dict[str, TrialConfig], batches: Sequence[int], steps: int, device: torch.device
               ) -> dict[str, dict[int, float]]:
    """Median seconds of `steps` full training steps (after one warm-up step each) per config and batch size.

    The configs are timed side by side, their steps interleaved (and the order flipped every round), so that a
    machine that slows down or speeds up while the benchmark runs moves every config's figures alike and leaves their
    ratio, the overhead, intact."""
    steppers = {name: _Stepper(c, device) for name, c in cfgs.items()}
    medians: dict[str, dict[int, float]] = {name: {} for name in cfgs}
    for b in batches:
        batches_of = {name: st.batch(b) for name, st in steppers.items()}
        times: dict[str, list[float]] = {name: [] for name in cfgs}
        order = list(steppers)
        for i in range(steps + 1):  # round 0 warms up (allocator, kernels, lazy buffers) and is not counted
            for name in order:
                seconds = steppers[name].step(batches_of[name])
                if i:
                    times[name].append(seconds)
            order.reverse()
        for name in cfgs:
            medians[name][b] = statistics.median(times[name])
        say(f"  ... B={b}: " + ", ".join(f"{name} {fmt_s(medians[name][b])}/step" for name in cfgs))
    return medians


def describe(cfg: TrialConfig) -> str:
    if not calm_enabled(cfg):
        return "baseline (no anchors)"
    return f"CALM (K={cfg.anchors.count} {cfg.anchors.source}, align {cfg.loss.align}, encode {cfg.anchors.encode})"


def run_steps(cfg: TrialConfig, batches: Sequence[int], steps: int, device: torch.device,
              out: Callable[[str], None]) -> dict:
    """Print section (a); returns {"calm": {B: s}, "base": {B: s}, "fits": ..., "overhead_*": %} (calm may be absent
    when the config has no anchors)."""
    target = cfg.train.batch_size
    arms = {"calm": cfg, "base": without_calm(cfg)} if calm_enabled(cfg) else {"base": cfg}
    out(f"(a) training step time: forward ({cfg.train.precision}) + loss + backward + grad clip + AdamW step on random "
        f"frames (B, T={cfg.data.num_frames}, 3, S, S) and real-looking captions; median of {steps} step(s) after "
        f"1 warm-up step per batch size, the configs' steps interleaved")
    if cfg.model.frozen:
        out("  note: model.frozen is set: these steps still feed pixels through the CLIP encoders (forward only, no "
            "gradient reaches them); a frozen trial's real steps read cached features instead: see (d)")
    fits: dict[str, LinearCost] = {}
    width = max(len(describe(c)) for c in arms.values())
    say(f"(a) timing {' and '.join(describe(c) for c in arms.values())} side by side at B = "
        f"{', '.join(map(str, batches))} ...")
    measured = time_steps(arms, batches, steps, device)
    for name, c in arms.items():
        fits[name] = fit_linear(list(measured[name].items()))
        shown = "  ".join(f"B={b}: {fmt_s(s)}" for b, s in measured[name].items())
        f = fits[name]
        at_target = f"{fmt_s(f.at(target))}/step" if plausible(f) else "n/a (a < 0 or b <= 0, see below)"
        out(f"  {describe(c):<{width}}  {shown}  |  per item b = {f.per_item_s * 1e3:.2f} ms/pair, "
            f"fixed a = {f.fixed_s * 1e3:.1f} ms/step  |  extrapolated to train.batch_size {target}: {at_target}")
    result: dict = {**measured, "fits": fits, "batch_size": target}
    if "calm" not in arms:
        out("  CALM overhead: n/a (this config has no CALM: loss.align none; choose a trial with CALM via --trial)")
        return result
    largest = max(batches)
    calm, base = measured["calm"][largest], measured["base"][largest]
    result["overhead_measured"] = 100 * (calm - base) / base
    # CALM's extra cost per step: the paired difference of the interleaved steps, averaged over the batch sizes. It
    # is what CALM adds whatever B (its K prompts through the text tower; per pair only the VAE and two (B, K)
    # cosine rows, negligible), so it is read against the baseline's own line at the study batch rather than from a
    # difference of two fitted slopes, which timing noise times B would swamp.
    extra = statistics.mean(measured["calm"][b] - measured["base"][b] for b in batches)
    result["calm_extra_s"] = extra
    if not plausible(fits["base"]):
        out(f"  CALM overhead (calm - base) / base: {result['overhead_measured']:+.1f} % measured at B={largest}; "
            f"not extrapolated to B={target}: the baseline's fixed cost a < 0 or per-item cost b <= 0 means the "
            "timings vary more than the batch size changes them (fixed costs dominate a tiny model, or the machine "
            "is busy); time larger --batches or more --steps on an idle machine")
        return result
    base_x = fits["base"].at(target)
    result["overhead_extrapolated"] = 100 * extra / base_x
    out(f"  CALM overhead (calm - base) / base: {result['overhead_measured']:+.1f} % measured at B={largest}; "
        f"{result['overhead_extrapolated']:+.1f} % extrapolated to B={target}: CALM adds {fmt_s(extra)} per step "
        f"(calm - base, paired, mean over B = {', '.join(map(str, batches))}) to the baseline's {fmt_s(base_x)}")
    if target > 4 * largest:
        out(f"  note: the line a + b·B is fitted on B <= {largest} and read at B={target}; it leaves out the B² "
            "terms (the B x B logits; xpool/tmass pool every frame set with every caption), small next to the CLIP "
            "encoders at ViT-B/32 scale but not for tiny models")
    return result
