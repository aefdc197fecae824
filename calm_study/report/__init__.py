"""`python -m calm_study report STUDY`: tables a reviewer can trust, from a study's Parquet.

    from calm_study.report import write_report, main_table
    path, text = write_report("anchor_ablation")          # results/anchor_ablation/_report/report.md (+ csv, tex, png)
                                                           # (+ captions.md for a captioning study with _captions.json)
    print(main_table(df, "anchor_ablation"))               # the first applicable table, as text (end of a run)

Every cell aggregates over seeds (mean, sd, n, 95% t-interval; stats.py); comparisons with the baseline row are paired
by seed (select.py defines the baseline); the epoch is explicit (select.py); the paper's numbers are shipped data
(paper.py). The files go to a folder whose name starts with "_", so `pd.read_parquet("results/<study>")` skips them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from calm_study.report.cells import Table, domain_drop
from calm_study.report.select import ReportError, Selection
from calm_study.report.tables import build_tables

__all__ = ["ReportError", "Table", "build_tables", "domain_drop", "main_table", "write_report", "report_dir"]

REPORT_DIR = "_report"
DEFINITIONS = """\
## How to read these tables

- **Cells**: mean ± sample sd over seeds; *n* = seeds with a value; 95% interval = mean ± t(0.975, n−1)·sd/√n. A cell
  with n = 1 has no sd and no interval.
- **Δ vs baseline**: per-seed differences (row − baseline) over the seeds both have, their mean and 95% t-interval;
  seeds only one side has are left out and counted in the notes. *distinguishable* = the interval excludes 0
  ("n/a" with fewer than 2 pairs). The baseline of a row is the arm without CALM (`loss_align` none) that agrees with
  it on every setting that changes what a score means (task, family, training data, regime, scoring protocol, DSL,
  decoding: `report.select.COMPARABLE_BY`), or, without one, the first such arm of the study file.
- **Drop** (cross-domain): in-domain R@1 − mean out-of-domain R@1 of the same trained model; a method's average drop
  is, per seed, the mean over its training sets.
- **Paper**: a value from the paper is printed only where the study matches the paper's table (layout, row settings,
  metric and dataset); "—" where it is not available (see the last section).
"""


def report_dir(study_name: str, results_dir: str | Path = "results") -> Path:
    return Path(results_dir) / study_name / REPORT_DIR


def _title(study_name: str, sel: Selection) -> str:
    trials = sel.rows.drop_duplicates(["arm_id", "seed"])
    return (f"{study_name}: {trials.arm_id.nunique()} arm(s), seeds {sorted(trials.seed.unique().tolist())}, "
            f"{len(trials)} trial(s) at the {sel.label}; left out: {sel.excluded_text()}")


def main_table(df: pd.DataFrame, study_name: str, epoch: str | int = "final", width: int | None = None) -> str:
    """The study's main table (the first applicable layout) as plain text, for the console; with `width`, only the
    columns that fit in it (the means, n and the first difference from the baseline; the report has the rest)."""
    from calm_study.report.render import to_console, to_text
    from calm_study.study.results import conform

    try:
        sel, tables = build_tables(conform(df), epoch)
        if width is None:
            return _title(study_name, sel) + "\n" + to_text(tables[0])
        import textwrap

        return textwrap.fill(_title(study_name, sel), width) + "\n" + to_console(tables[0], width)
    except ReportError as e:
        return f"{study_name}: no table yet ({e})"
    except Exception as e:  # noqa: BLE001 - the end-of-run summary must never fail a finished study
        return f"{study_name}: the summary table could not be built ({type(e).__name__}: {e}); see `report`"


def write_report(study_name: str, results_dir: str | Path = "results", epoch: str | int = "final",
                 out_dir: str | Path | None = None) -> tuple[Path, str]:
    """Write report.md, one CSV + LaTeX file per table and the PNG figures; returns (report.md, the main table text).

    Raises FileNotFoundError for a study without results and ReportError when it cannot be reported as asked
    (e.g. epoch='best' without a validation set).
    """
    from calm_study.report import paper
    from calm_study.report.plots import plot
    from calm_study.report.render import to_markdown, to_text, write_files
    from calm_study.study.results import RESULTS_FILE, SCHEMA_VERSION, load

    source = Path(results_dir) / study_name / RESULTS_FILE
    try:
        df = load(study_name, results_dir)
    except (OSError, ValueError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ReportError(f"the results file {str(source)!r} cannot be read ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200]}); re-running the study's `run` command rebuilds it from "
                          "the per-epoch logs in its storage (finished trials are not trained again)") from None
    sel, tables = build_tables(df, epoch)
    out = Path(out_dir) if out_dir is not None else report_dir(study_name, results_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise ReportError(f"cannot write the report into {str(out)!r} ({e.strerror or e}); choose a results_dir this "
                          "user can write (the report goes to <results_dir>/<study>/_report/)") from None
    parts = [f"# Study `{study_name}`: results", "",
             f"Source: `{source}` ({len(df)} rows, schema version {SCHEMA_VERSION}). "
             f"{_title(study_name, sel)}.", "", f"Main table: **{tables[0].title}**.", "", DEFINITIONS]
    for table in tables:
        image = plot(table, out / f"{table.key}.png")
        write_files(table, out)
        parts.append(to_markdown(table, image.name if image else None))
    from calm_study.report.optuna_section import optuna_section

    parts += optuna_section(study_name, Path(results_dir) / study_name / "_optuna.db", out)
    from calm_study.names import SAMPLES_FILE
    from calm_study.report.captioning import write_samples

    # Captioning: the decoded captions beside their references (captions.md), when the study recorded any.
    parts += write_samples(Path(results_dir) / study_name / SAMPLES_FILE, out, study_name)
    parts += ["## The paper's numbers in this repository", ""]
    parts += [f"- {line}" for line in paper.status_lines()]
    path = out / "report.md"
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return path, _title(study_name, sel) + "\n" + to_text(tables[0])
