"""The report's section for Optuna studies: best configurations, parameter importances, one scatter plot per
parameter. Read from results/<study>/_optuna.db, which the runner writes after an Optuna study."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402


def optuna_section(study_name: str, db: Path, out: Path, top: int = 5) -> list[str]:
    """Markdown lines (and PNG files in `out`) for the Optuna trials in `db`; [] when there is none."""
    if not db.is_file():
        return []
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=study_name, storage=f"sqlite:///{db}")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    lines = ["## Optuna search", "",
             f"{len(study.trials)} trials: {len(done)} completed, "
             f"{sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)} stopped early (ASHA), "
             f"{sum(t.state == optuna.trial.TrialState.FAIL for t in study.trials)} failed. Values are each completed "
             f"trial's final-epoch metric on the test set used for the search; confirm a chosen configuration with "
             f"new seeds before reporting it. Database: `{db}` (`optuna-dashboard sqlite:///{db}`).", ""]
    if not done:
        return lines + ["No completed trial yet.", ""]
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    best = sorted(done, key=lambda t: t.value, reverse=maximize)[:top]
    params = sorted(best[0].params)
    lines += [f"### Best {len(best)} configurations", "", "| trial | value | " + " | ".join(params) + " |",
              "|---|---|" + "---|" * len(params)]
    for t in best:
        cells = [f"{t.params[p]:.4g}" if isinstance(t.params[p], float) else str(t.params[p]) for p in params]
        lines.append(f"| {t.user_attrs.get('trial_key', t.number)} | {t.value:.2f} | " + " | ".join(cells) + " |")
    lines.append("")
    if len(done) >= 2:
        importances = optuna.importance.get_param_importances(study)  # fANOVA by default
        lines += ["### Parameter importance (fANOVA)", "", "| parameter | importance |", "|---|---|"]
        lines += [f"| {p} | {v:.3f} |" for p, v in importances.items()] + [""]
    for p in params:
        xs = [t.params[p] for t in done if p in t.params]
        ys = [t.value for t in done if p in t.params]
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.scatter(xs if all(isinstance(x, (int, float)) for x in xs) else [str(x) for x in xs], ys)
        if p.endswith(("lr_clip", "lr_new", "alpha")) and all(isinstance(x, float) and x > 0 for x in xs):
            ax.set_xscale("log")
        ax.set_xlabel(p)
        ax.set_ylabel("final-epoch metric (completed trials)")
        ax.set_title(f"{study_name}: {p}")
        fig.tight_layout()
        name = f"optuna_{p.replace('.', '_')}.png"
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        lines += [f"![{p}]({name})", ""]
    return lines
