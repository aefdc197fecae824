"""Section (b): what one evaluation of N_text x N_video pairs costs: encoding the banks, then leak-free scoring.

Scoring runs the family's own `score` through `scoring.score_banks` on random banks of the family's shapes (the
values do not change the cost), in chunks of evaluation.text_chunk texts. Encoding is timed on one small batch of
random frames and one of captions and scaled per item to N_video videos and N_text texts. Decoding the videos is
section (c).
"""

from __future__ import annotations

import ctypes
import gc
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from calm_study.bench.step import captions, fmt_s
from calm_study.config import TrialConfig
from calm_study.models.families import VideoTextModel, build_model, family_of
from calm_study.progress import say
from calm_study.tasks.retrieval.scoring import score_banks

if TYPE_CHECKING:
    from calm_study.models.registry import Bank


def rss_mib() -> float:
    """This process's resident set size (MiB), from /proc."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def release_freed_memory() -> None:
    """Hand the memory freed by earlier work (an earlier section's model, its activations) back to the system, so that
    an RSS peak measured next counts new allocations instead of reusing retained ones (glibc malloc_trim; a no-op
    elsewhere)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakRSS:
    """The highest resident set size seen while the block runs (sampled every 5 ms from /proc)."""

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = rss_mib()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while not self.done.wait(0.005):
            self.peak = max(self.peak, rss_mib())

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()
        self.peak = max(self.peak, rss_mib())


def random_banks(cfg: TrialConfig, n_text: int, n_video: int, num_frames: int, width: int, device: torch.device,
                 seed: int = 0) -> tuple[Bank, Bank]:
    """(text bank, video bank) of random features with the keys and shapes of cfg's family (its registry entry)."""
    family = family_of(cfg)
    if family.random_banks is None:
        raise ValueError(f"model.family {family.name!r} has no retrieval banks to score")
    text, video = family.random_banks(n_text, n_video, num_frames, width, cfg, torch.Generator().manual_seed(seed))

    def move(bank: Bank) -> Bank:
        return {k: v.to(device) for k, v in bank.items()} if isinstance(bank, dict) else bank.to(device)

    return move(text), move(video)


def measure_scoring(model: VideoTextModel, text_bank: Bank, video_bank: Bank, text_chunk: int,
                    device: torch.device) -> dict:
    """Seconds and peak memory above the banks of `score_banks` (model in eval mode, no gradients).

    Returns {"seconds", "peak_mib", "memory" (what peak_mib measures), "shape" (of the score matrix)}."""
    gpu = device.type == "cuda"
    release_freed_memory()
    if gpu:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    with PeakRSS() as rss, torch.no_grad():
        tic = time.perf_counter()
        sim = score_banks(model, text_bank, video_bank, text_chunk=text_chunk)  # (N_text, N_video) on the CPU
        if gpu:
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - tic
    if gpu:
        return {"seconds": seconds, "peak_mib": (torch.cuda.max_memory_allocated(device) - base) / 2**20,
                "memory": "peak GPU memory allocated above the banks", "shape": tuple(sim.shape)}
    return {"seconds": seconds, "peak_mib": rss.peak - rss.start,
            "memory": "peak RSS above the banks (includes allocator caches: an upper bound)", "shape": tuple(sim.shape)}


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of fn() after one untimed warm-up call."""
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    tic = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - tic


def run_evaluation(cfg: TrialConfig, n_text: int, n_video: int, device: torch.device,
                   out: Callable[[str], None]) -> dict:
    """Print section (b); returns {"scoring": measure_scoring's dict, "encode_video_s", "encode_text_s",
    "total_s"} (times extrapolated to n_video / n_text), or {} for a family without retrieval banks."""
    if cfg.task != "retrieval":
        out(f"(b) evaluation: skipped, task {cfg.task} (family {cfg.model.family}) has no retrieval banks to score")
        return {}
    t = cfg.data.num_frames
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg).to(device).eval()
    width = model.encoders().embed_dim  # D of every CLIP-based retrieval family
    chunk = cfg.evaluation.text_chunk
    stochastic = "model.trials" in family_of(cfg).knobs_read(cfg)
    draws = f", {cfg.model.trials} stochastic texts per pair" if stochastic else ""
    out(f"(b) evaluation of {n_text} texts x {n_video} videos ({cfg.model.family}, {cfg.model.clip}, T={t}, D={width}"
        f"{draws}; model in eval mode, no gradients, fp32)")

    say(f"(b) scoring {n_text} x {n_video} random banks in chunks of {chunk} texts ...")
    text_bank, video_bank = random_banks(cfg, n_text, n_video, t, width, device)
    scoring = measure_scoring(model, text_bank, video_bank, chunk, device)
    del text_bank, video_bank
    out(f"  scoring (score_banks, text_chunk {chunk}): {fmt_s(scoring['seconds'])}, {scoring['peak_mib']:.0f} MiB "
        f"{scoring['memory']}; scores {scoring['shape'][0]} x {scoring['shape'][1]}")

    # Encoding: small batches on a CPU (a ViT-B/32 frame costs ~45 ms there), the evaluation batch on a GPU.
    n_v = cfg.train.eval_batch_size if device.type == "cuda" else min(4, cfg.train.eval_batch_size)
    n_t = max(n_v, 32)
    s = model.image_size
    frames = torch.randn(n_v, t, 3, s, s, device=device)  # (n_v, T, 3, S, S)
    mask = torch.ones(n_v, t, dtype=torch.bool, device=device)
    tokens = model.tokenize(captions(n_t)).to(device)  # (n_t, L)
    say(f"(b) encoding {n_v} videos and {n_t} captions ...")
    with torch.no_grad():
        video_s = _timed(lambda: model.video_bank(frames, mask), device)
        text_s = _timed(lambda: model.text_bank(tokens), device)
    per_video, per_text = video_s / n_v, text_s / n_t
    result = {"scoring": scoring, "encode_video_s": per_video * n_video, "encode_text_s": per_text * n_text}
    result["total_s"] = result["encode_video_s"] + result["encode_text_s"] + scoring["seconds"]
    out(f"  encoding videos (video_bank, {t} frames of {s}x{s} each): {fmt_s(per_video)}/video at batch {n_v} "
        f"-> {fmt_s(result['encode_video_s'])} for {n_video} videos")
    longest = int((tokens != 0).sum(dim=1).max())  # CLIP pads with 0; encode_text stops at the longest text
    out(f"  encoding texts (text_bank, longest caption {longest} tokens): {fmt_s(per_text)}/text at batch {n_t} "
        f"-> {fmt_s(result['encode_text_s'])} for {n_text} texts")
    out(f"  evaluation total (encoding + scoring, decoding excluded): {fmt_s(result['total_s'])}")
    return result
