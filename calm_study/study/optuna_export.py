"""After an Optuna study: its trials as an Optuna database, for optuna-dashboard, plots and importances.

The searcher itself keeps its state in memory while the study runs (Ray Tune snapshots it, so it survives a driver
kill); an SQLite storage during the run crashed on restore (docs/ray.md, "Optuna: in-memory searcher, exported
afterwards"). So the database is written afterwards, from the study's own results: results/<study>/_optuna.db
(the "_" keeps it out of `pd.read_parquet`).

    optuna-dashboard sqlite:///results/<study>/_optuna.db
"""

from __future__ import annotations

import os
from pathlib import Path

import optuna

from calm_study.study.results import results_path
from calm_study.study.search import parse_space
from calm_study.study.spec import Study, Trial, metric_key
from calm_study.study.state import StudyStatus, trial_logs

OPTUNA_DB = "_optuna.db"


def distribution(kind: str, args: list) -> optuna.distributions.BaseDistribution:
    if kind == "choice":
        return optuna.distributions.CategoricalDistribution(args)
    if kind in ("uniform", "loguniform"):
        return optuna.distributions.FloatDistribution(args[0], args[1], log=kind == "loguniform")
    if kind == "int":
        return optuna.distributions.IntDistribution(args[0], args[1])
    return optuna.distributions.IntDistribution(args[0], args[1], step=args[2])


def export_optuna(study: Study, trials: list[Trial], status: StudyStatus) -> Path:
    """Write results/<study>/_optuna.db (replacing an earlier export atomically); returns its path.

    Each trial's value is its last logged metric; trials ended by the scheduler are PRUNED, failed ones FAIL.
    """
    space = parse_space(study.search.space)[0]
    dists = {k: distribution(*d) for k, d in space.items()}
    key = metric_key(study)
    path = results_path(study).parent / OPTUNA_DB
    tmp = path.with_name(f".{OPTUNA_DB}.tmp-{os.getpid()}")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.unlink(missing_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    db = optuna.create_study(storage=f"sqlite:///{tmp}", study_name=study.name,
                             direction="maximize" if study.metric.mode == "max" else "minimize")
    logs = trial_logs(study, trials)
    for t in trials:
        values = [rec[key] for rec in logs[t.key] if isinstance(rec.get(key), (int, float)) and rec[key] == rec[key]]
        state = {"completed": optuna.trial.TrialState.COMPLETE, "stopped_early": optuna.trial.TrialState.PRUNED}.get(
            status.statuses.get(t.key, ""), optuna.trial.TrialState.FAIL)
        if state == optuna.trial.TrialState.COMPLETE and not values:
            state = optuna.trial.TrialState.FAIL
        db.add_trial(optuna.trial.create_trial(
            params={k: v for k, v in t.swept.items() if k in dists}, distributions=dists,
            value=values[-1] if values and state == optuna.trial.TrialState.COMPLETE else None,
            intermediate_values={int(rec["epoch"]): rec[key] for rec in logs[t.key] if rec.get(key) == rec.get(key)
                                 and isinstance(rec.get(key), (int, float))},
            state=state, user_attrs={"trial_key": t.key}))
    os.replace(tmp, path)
    return path
