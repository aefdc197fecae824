"""Where a `run`'s time went: wall clock against the training and evaluation it bought, and each trial's fixed cost.

Printed at the end of every `run` and appended to <results_dir>/<study>/_timing.jsonl (one line per run), from the
epochs logged during the run (their `train_s`, `eval_s`, `setup_s`, `checkpoint_s`, `checkpoint_bytes`, `logged_at`)
and the moments Tune started and finished each trial (TrialTimes, fed by the driver's Tune callback). No Ray here.
docs/performance.md, "Where a study's time goes", reads these figures.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from calm_study.names import TIMING_FILE


def process_started() -> float:
    """Unix time this process started (Linux: from /proc), else now: the command's wall clock includes its imports."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


@dataclass
class TrialTimes:
    """When Tune started each trial (its first start in this run) and when it finished it, by trial key."""

    started: dict[str, float] = field(default_factory=dict)
    finished: dict[str, float] = field(default_factory=dict)

    def start(self, key: str) -> None:
        self.started.setdefault(key, time.time())

    def finish(self, key: str) -> None:
        self.finished[key] = time.time()


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize(logs: dict[str, list[dict]], times: TrialTimes, began: float, ended: float,
              concurrency: int) -> dict:
    """The run's figures. `logs`: every trial's metric log by key; only epochs logged after `began` count."""
    epochs = {key: [r for r in log if float(r.get("logged_at", 0.0)) >= began] for key, log in logs.items()}
    records = [r for recs in epochs.values() for r in recs]
    work = sum(float(r.get("train_s", 0.0)) + float(r.get("eval_s", 0.0)) for r in records)
    to_first, inside, after_last = [], [], []
    for key, recs in epochs.items():
        if not recs:
            continue
        first, last = recs[0], recs[-1]
        if key in times.started:
            first_step = float(first["logged_at"]) - sum(float(first.get(k, 0.0)) for k in
                                                         ("train_s", "eval_s", "checkpoint_s"))
            to_first.append(first_step - times.started[key])
        if "setup_s" in first:
            inside.append(float(first["setup_s"]))
        if key in times.finished:
            after_last.append(times.finished[key] - float(last["logged_at"]))
    wall = ended - began
    ideal = work / max(1, concurrency)
    return {
        "wall_s": wall, "train_eval_s": work, "epochs": len(records),
        "trials": sum(bool(r) for r in epochs.values()), "concurrency": concurrency, "ideal_wall_s": ideal,
        "wall_over_ideal": wall / ideal if ideal > 0 else None,
        "start_to_first_step_s": _median(to_first), "setup_in_trial_s": _median(inside),
        "last_epoch_to_done_s": _median(after_last),
        "checkpoint_s": _median([float(r["checkpoint_s"]) for r in records if "checkpoint_s" in r]),
        "checkpoint_bytes": _median([float(r["checkpoint_bytes"]) for r in records if "checkpoint_bytes" in r]),
        "logged_at": time.time(),
    }


def _s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} s" if value >= 1 else f"{value:.2f} s"


def lines(f: dict) -> list[str]:
    """The figures as console lines (at most 120 columns each)."""
    if not f["epochs"]:
        return [f"time: wall {_s(f['wall_s'])}; no epoch was trained in this run"]
    ratio = f"{f['wall_over_ideal']:.1f}x" if f["wall_over_ideal"] else "n/a"
    mb = "n/a" if f["checkpoint_bytes"] is None else f"{f['checkpoint_bytes'] / 1e6:.1f} MB"
    return [
        f"time: wall {_s(f['wall_s'])}; train + eval {_s(f['train_eval_s'])} in {f['epochs']} epochs, {f['trials']} "
        f"trials; ideal {_s(f['ideal_wall_s'])} ({f['concurrency']} at once): wall {ratio} ideal",
        f"  per trial (median): start -> first step {_s(f['start_to_first_step_s'])} (in the trial's process "
        f"{_s(f['setup_in_trial_s'])}), last epoch -> done {_s(f['last_epoch_to_done_s'])}",
        f"  per epoch (median): checkpoint {_s(f['checkpoint_s'])}, {mb}",
    ]


def keep(figures: dict, results_folder: Path) -> Path:
    """Append the run's figures to <results folder>/_timing.jsonl."""
    results_folder.mkdir(parents=True, exist_ok=True)
    path = results_folder / TIMING_FILE
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(figures) + "\n")
    return path
