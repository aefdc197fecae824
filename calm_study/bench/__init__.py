"""`python -m calm_study bench`: performance figures of one trial config, printed in four sections.

    (a) training step time with and without CALM at small batches, extrapolated to train.batch_size (step.py)
    (b) evaluation of N_text x N_video pairs: encoding and leak-free scoring, seconds and peak memory (evaluation.py)
    (c) video decoding clips/s without and with the frame cache (decoding.py)
    (d) one frozen-feature trial vs one fine-tuning trial on the same data and epochs (trial.py)

Figures go to stdout, progress lines to stderr. No Ray: everything runs in this process.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from calm_study.config import TrialConfig, calm_enabled
from calm_study.configio import did_you_mean

SECTIONS = ("a", "b", "c", "d")


class BenchError(ValueError):
    """A bad bench option; its message is one line."""


def parse_only(text: str) -> tuple[str, ...]:
    """"a,c" -> ("a", "c") in section order; BenchError naming the valid values otherwise."""
    chosen = [s.strip().lower() for s in text.split(",") if s.strip()]
    bad = [s for s in chosen if s not in SECTIONS]
    if bad or not chosen:
        raise BenchError(f"--only {text!r}: valid sections are {', '.join(SECTIONS)}, comma-separated "
                         "(e.g. --only a,b)")
    return tuple(s for s in SECTIONS if s in chosen)


def check_batches(batches: Sequence[int]) -> list[int]:
    """Distinct positive batch sizes, sorted; a line needs at least two."""
    sizes = sorted(set(batches))
    if len(sizes) < 2 or sizes[0] < 1:
        raise BenchError(f"--batches {' '.join(map(str, batches))}: give at least two distinct batch sizes >= 1 "
                         "(e.g. --batches 2 4)")
    return sizes


def check_counts(**counts: int | None) -> None:
    """Every given count (None: not given) is >= 1."""
    bad = [f"--{name.replace('_', '-')} {value}" for name, value in counts.items() if value is not None and value < 1]
    if bad:
        raise BenchError(f"{', '.join(bad)}: must be >= 1")


def check_device(text: str | None) -> None:
    """--device names a device of this machine (None: the default, always valid)."""
    if text is None:
        return
    gpus = torch.cuda.device_count()
    here = ["cpu", *(["cuda", *(f"cuda:{i}" for i in range(gpus))] if gpus else [])]
    if torch.backends.mps.is_available():
        here.append("mps")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise BenchError(f"--device {text!r}: not a torch device{did_you_mean(text, here)}; valid on this machine: "
                         f"{', '.join(here)}") from None
    if device.type == "cuda" and not gpus:
        raise BenchError(f"--device {text}: torch sees no CUDA GPU on this machine; valid here: {', '.join(here)} "
                         "(or leave --device out: cuda when there is one, else cpu)")
    if str(device) not in here:  # cuda:7 on a 2-GPU machine, mps without Apple's GPU, another torch device type
        raise BenchError(f"--device {text}: this machine has no such device; valid here: {', '.join(here)}")


def check_threads(threads: int) -> None:
    """--threads: a number of torch CPU threads, or 0 for torch's default."""
    if threads < 0:
        raise BenchError(f"--threads {threads}: must be >= 1, or 0 for torch's default")


def check_options(only: str, batches: Sequence[int], device: str | None, threads: int,
                  **counts: int | None) -> tuple[tuple[str, ...], list[int]]:
    """Every bench option checked before anything is loaded (a typo costs nothing), all problems in one BenchError;
    returns the sections and the batch sizes."""
    problems: list[str] = []
    out: list = []
    for check, arg in ((parse_only, only), (check_batches, batches), (check_device, device), (check_threads, threads),
                       (lambda c: check_counts(**c), counts)):
        try:
            out.append(check(arg))
        except BenchError as e:
            problems.append(str(e))
    if problems:
        raise BenchError(problems[0] if len(problems) == 1 else
                         f"{len(problems)} problems with the options:\n  - " + "\n  - ".join(problems))
    return out[0], out[1]


def choose_trial(configs: Sequence[TrialConfig], index: int | None) -> int:
    """--trial N, else the first trial with anchors (the one that shows CALM's cost), else trial 0."""
    if index is not None:
        if not 0 <= index < len(configs):
            raise BenchError(f"--trial {index}: the study has trials 0..{len(configs) - 1}")
        return index
    return next((i for i, c in enumerate(configs) if calm_enabled(c)), 0)


@dataclass(frozen=True)
class BenchOptions:
    sections: tuple[str, ...] = SECTIONS
    batches: tuple[int, ...] = (2, 4)
    steps: int = 3
    eval_texts: int = 1000
    eval_videos: int = 1000
    clips: int = 20
    trial_epochs: int | None = None  # None: the config's train.epochs
    device: str | None = None  # None: cuda when available, else cpu


def device_line(device: torch.device) -> str:
    """The device in words: GPU name, or CPU model, cores and torch threads."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    model = platform.processor() or "CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg()[0]  # other work on the cores inflates every CPU figure: said next to them
    return (f"CPU {model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, load average "
            f"{load:.1f} at start")


def run_bench(cfg: TrialConfig, what: str, opts: BenchOptions, out: Callable[[str], None] = print) -> dict:
    """Print the chosen sections for `cfg` (`what` names it: file, preset, trial); returns each section's figures."""
    from calm_study.bench.decoding import run_decoding
    from calm_study.bench.evaluation import run_evaluation
    from calm_study.bench.step import run_steps
    from calm_study.bench.trial import run_trials

    device = torch.device(opts.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    m = cfg.model
    calm = f"CALM K={cfg.anchors.count} ({cfg.anchors.source}, {cfg.loss.align})" if calm_enabled(cfg) else "no CALM"
    out(f"bench: {what}: {cfg.task}/{m.family}, {m.clip} (pretrained {m.pretrained or 'none: random init'}), {calm}, "
        f"T={cfg.data.num_frames} frames, train.batch_size {cfg.train.batch_size}, precision {cfg.train.precision}")
    out(f"bench: device {device}: {device_line(device)}; torch {torch.__version__}")
    results: dict = {}
    for section in opts.sections:
        out("")
        if section == "a":
            results["a"] = run_steps(cfg, list(opts.batches), opts.steps, device, out)
        elif section == "b":
            results["b"] = run_evaluation(cfg, opts.eval_texts, opts.eval_videos, device, out)
        elif section == "c":
            results["c"] = run_decoding(cfg, opts.clips, out)
        elif section == "d":
            results["d"] = run_trials(cfg, opts.trial_epochs or cfg.train.epochs, device, out)
    return results
