"""PNG figures (matplotlib, Agg: no display needed): a bar chart per table, a line plot per swept numeric key.

Error bars are the 95% t-interval over seeds; a point with one seed has none (said in the figure's footnote).
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: reports are written on headless machines and inside Ray drivers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from calm_study.report.cells import Table  # noqa: E402
from calm_study.report.render import label_value, pretty  # noqa: E402

AXIS_UNITS = {"anchors_count": "number of class anchors K", "loss_alpha": "α, weight of the VAE KL term",
              "vae_latent_dim": "VAE latent dimension d"}
FOOTNOTE = "error bars: 95% t-interval over seeds (none where a cell has one seed)"


def _y_label(table: Table) -> str:
    if table.key == "drops":
        return "R@1 drop, in-domain − out-of-domain (points)"
    if any(m.name == "CIDEr" and m.plot for m in table.metrics):
        return "CIDEr (×100)"
    return "text→video R@1 (%)"


def _errors(frame, key: str) -> np.ndarray:
    mean, lo, hi = (frame[f"{key}_{s}"].to_numpy(float) for s in ("mean", "ci_lo", "ci_hi"))
    return np.vstack([mean - lo, hi - mean])  # NaN (one seed): matplotlib draws no bar for that point


def _finish(fig, ax, table: Table, path: Path) -> Path:
    ax.set_title(table.title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.text(0.01, 0.01, FOOTNOTE, fontsize=7, color="0.35")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def bars(table: Table, path: Path) -> Path:
    """One group of bars per row, one bar per plotted metric."""
    frame = table.frame
    shown = [m for m in table.metrics if m.plot]
    names = [", ".join(label_value(r[c]) for c in table.labels) or "(base)" for _, r in frame.iterrows()]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(names) * max(1, len(shown)) ** 0.5 + 2), 4))
    width = 0.8 / len(shown)
    x = np.arange(len(names))
    for i, m in enumerate(shown):
        label = f"{m.group} {m.name}".strip()
        ax.bar(x + (i - (len(shown) - 1) / 2) * width, frame[f"{m.key}_mean"].to_numpy(float), width,
               yerr=_errors(frame, m.key), capsize=3, label=label)
    ax.set_xticks(x, names, rotation=20 if max(map(len, names)) > 10 else 0, ha="right" if len(names) > 3 else "center")
    ax.set_xlabel(", ".join(pretty(c) for c in table.labels) or "arm")
    ax.set_ylabel(("in-domain " if all(m.key.startswith("id_") for m in shown) else "") + _y_label(table))
    if len(shown) > 1:
        ax.legend(fontsize=8, title="test set" if table.key == "cross_domain" else None, title_fontsize=8)
    return _finish(fig, ax, table, path)


def lines(table: Table, path: Path) -> Path:
    """R@1 against the swept numeric key, one line per combination of the other swept settings."""
    frame, x = table.frame, table.x
    series = [c for c in table.labels if c != x]
    key = next(m.key for m in table.metrics if m.plot)
    fig, ax = plt.subplots(figsize=(6, 4))
    groups = frame.groupby(series, sort=False, dropna=False) if series else [((), frame)]
    for name, g in groups:
        name = name if isinstance(name, tuple) else (name,)
        label = ", ".join(f"{pretty(c)} {label_value(v)}" for c, v in zip(series, name)) or None
        ax.errorbar(g[x].to_numpy(float), g[f"{key}_mean"].to_numpy(float), yerr=_errors(g, key), marker="o",
                    capsize=3, label=label)
    ax.set_xlabel(AXIS_UNITS.get(x, pretty(x)))
    ax.set_ylabel(f"in-domain {_y_label(table)}")
    ticks = sorted(set(frame[x].to_numpy(float)))
    gaps = np.diff(ticks) if len(ticks) > 1 else np.array([])
    # A tick at every swept value, unless two are so close that their labels would overlap (91 and 100 of 0..248).
    if ticks and all(math.isfinite(v) for v in ticks) and (not len(gaps) or gaps.min() > 0.06 * (ticks[-1] - ticks[0])):
        ax.set_xticks(ticks)
    if series:
        ax.legend(fontsize=8)
    return _finish(fig, ax, table, path)


def plot(table: Table, path: Path) -> Path | None:
    if table.frame.empty or not any(m.plot for m in table.metrics):
        return None
    if table.x and sum(m.plot for m in table.metrics) > 1:
        return panels(table, path)
    return lines(table, path) if table.x else bars(table, path)


def panels(table: Table, path: Path) -> Path:
    """One panel per plotted metric (in-domain R@1, the out-of-domain drop) against one swept key, with intervals."""
    frame, x = table.frame, table.x
    shown = [m for m in table.metrics if m.plot]
    fig, axes = plt.subplots(1, len(shown), figsize=(4.5 * len(shown), 4))
    for ax, m in zip(np.atleast_1d(axes), shown):
        ax.errorbar(frame[x].to_numpy(float), frame[f"{m.key}_mean"].to_numpy(float), yerr=_errors(frame, m.key),
                    marker="o", capsize=3)
        ax.set_xlabel(AXIS_UNITS.get(x, pretty(x)))
        ax.set_ylabel(m.name)
        ax.grid(axis="y", alpha=0.3)
        if frame[x].astype(float).min() > 0 and frame[x].astype(float).max() / frame[x].astype(float).min() >= 20:
            ax.set_xscale("log")  # α from 0.01 to 1
    fig.suptitle(table.title, fontsize=10)
    fig.text(0.01, 0.01, FOOTNOTE, fontsize=7, color="0.35")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
