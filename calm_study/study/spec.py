"""Study files: a base trial config, a search space, seeds, the metric, resources, storage and named presets.

    name: anchor_ablation
    base: {model: ..., anchors: ..., ...}            # a TrialConfig
    search:
      grid: {optim.lr_new: [1e-5, 2e-5]}             # cartesian product over the listed values
      combinations:                                  # listed rows (e.g. Table 6's (count, source) pairs),
        - {loss.align: none}                         #   crossed with the grid (this one: the baseline)
    seeds: [0, 1]                                    # every arm runs once per seed
    presets: {demo: {base: {...}, seeds: [0]}}       # merged into the document by --preset
    tracking: {mlflow: {uri: sqlite:///mlflow.db}}   # optional: an MLflow run per trial (docs/tracking.md)

Loading is strict: every problem (unknown key, wrong type, bad value, bad search key) is reported at once.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from calm_study.checks import range_problems
from calm_study.config import SEED, TrialConfig, valid
from calm_study.configio import (
    ConfigError,
    dataclass_paths,
    deep_merge,
    did_you_mean,
    flatten,
    from_dict,
    load_yaml,
    parse_yaml,
    set_path,
    to_dict,
)
from calm_study.names import LAUNCHES, TASK_METRICS, eval_key, study_name_problem, trial_key
from calm_study.study.identity import arm_id
from calm_study.study.search import SAMPLERS, edge_rows, parse_space
from calm_study.study.storage import storage_problems
from calm_study.validate import canonical_trial, check_trial


@dataclass(frozen=True)
class SearchSpace:
    method: str = "grid"  # grid: every listed value | optuna: Optuna proposes num_samples configs (see search.py)
    grid: dict[str, Any] = field(default_factory=dict)  # trial key path -> list of values (cartesian product)
    combinations: tuple[dict[str, Any], ...] = ()  # listed rows of {key path: value}, crossed with the grid
    space: dict[str, Any] = field(default_factory=dict)  # optuna: key path -> {choice|uniform|loguniform|int|qint: ..}
    num_samples: int = field(default=0, metadata=valid("[0, inf)"))  # optuna: how many configurations to try (>= 1)
    sampler: str = "tpe"  # optuna: tpe | random
    sampler_seed: int = field(default=0, metadata=valid(SEED))  # optuna: seed of the sampler, so a search is repeatable


@dataclass(frozen=True)
class SchedulerSpec:
    name: str = "fifo"  # fifo: every trial runs all epochs | asha: stop weak trials early (on the study's metric)
    grace_period: int = field(default=1, metadata=valid("[1, inf)"))  # asha: epochs every trial runs before it may stop
    reduction_factor: int = field(default=2, metadata=valid("[2, inf)"))  # asha: keep the top 1/reduction_factor a rung


@dataclass(frozen=True)
class MetricSpec:
    name: str = "t2v_R1"  # a metric of the study's task (names.TASK_METRICS), e.g. retrieval: {t2v,v2t}_{R1,..,MnR}
    eval_set: str = ""  # which evaluation set (its label); default: the first in data.eval
    mode: str = "max"  # max | min


@dataclass(frozen=True)
class Resources:
    # workers (DDP ranks) per trial; more than 1 always trains through Ray Train
    num_workers: int = field(default=1, metadata=valid("[1, inf)"))
    # auto: a 1-worker trial trains in its Tune trial's own process (no Ray Train controller, worker group or placement
    # group: about half a minute less per trial, docs/performance.md); ray_train: every trial through Ray Train
    launch: str = "auto"
    cpus_per_worker: float = field(default=1.0, metadata=valid("(0, inf)"))  # CPUs reserved per worker
    # GPUs per worker; a fraction packs trials on one GPU (only with num_workers 1)
    gpus_per_worker: float = field(default=0.0, metadata=valid("[0, inf)"))
    # trials at once
    max_concurrent: int = field(default=0, metadata=valid("[0, inf)", note="0: as many as the cluster's CPUs/GPUs fit"))
    # Each trial's driver and Train controller on the head node: losing any other node then costs only Train workers,
    # restarted from the last checkpoint (a controller lost with its node would strand its workers' reservation).
    # false: drivers may run on any node.
    drivers_on_head: bool = True


@dataclass(frozen=True)
class FailureSpec:
    # restarts of a trial's worker group after a worker dies (from its last checkpoint)
    train_retries: int = field(default=1, metadata=valid("[-1, inf)", note="-1: without limit"))
    # restarts of a whole trial after its driver fails or its node is lost (same checkpoint)
    trial_retries: int = field(default=1, metadata=valid("[-1, inf)", note="-1: without limit"))


@dataclass(frozen=True)
class MlflowSpec:
    uri: str = ""  # tracking URI: http(s)://host:port of an MLflow server, or sqlite:///file.db (relative: to the cwd)
    experiment: str = ""  # the MLflow experiment; default: the study name
    # Where a new experiment keeps its artifacts (a folder or a URI); default: the server's choice (for a sqlite:///
    # store: mlruns/ beside the database file). Used only when calm_study creates the experiment.
    artifact_location: str = ""


@dataclass(frozen=True)
class TrackingSpec:
    # Present: every trial becomes an MLflow run, logged per epoch, plus one run for the study (docs/tracking.md).
    mlflow: MlflowSpec | None = None


@dataclass(frozen=True)
class Study:
    name: str = ""  # study name: names the storage folder and results/<name>/ (names.STUDY_NAME_RULE)
    description: str = ""
    base: TrialConfig = field(default_factory=TrialConfig)
    search: SearchSpace = field(default_factory=SearchSpace)
    seeds: tuple[int, ...] = field(default=(0,), metadata=valid(SEED))  # each arm runs once per seed (train.seed)
    metric: MetricSpec = field(default_factory=MetricSpec)
    resources: Resources = field(default_factory=Resources)
    failures: FailureSpec = field(default_factory=FailureSpec)  # infrastructure faults; NaN losses are never retried
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)  # early stopping
    # Ray storage for the Tune experiment, Train checkpoints and metric logs: a folder, or a URI (storage.SCHEMES)
    storage: str = "runs"
    results_dir: str = "results"  # Parquet goes to <results_dir>/<name>/ (a local or NFS folder)
    presets: dict[str, Any] = field(default_factory=dict)  # name -> partial study document (merged by --preset)
    tracking: TrackingSpec = field(default_factory=TrackingSpec)  # experiment tracking (off unless configured)


@dataclass(frozen=True)
class Trial:
    """One expanded trial: an arm (config without seed) run with one seed."""
    arm_id: str
    seed: int
    config: TrialConfig
    swept: dict[str, Any]  # the search-space values of this arm

    @property
    def key(self) -> str:
        return trial_key(self.arm_id, self.seed)


STUDY_KEYS = [f.name for f in Study.__dataclass_fields__.values()]
TRIAL_SECTIONS = [f.name for f in TrialConfig.__dataclass_fields__.values()]


def apply_overrides(doc: dict, sets: list[str], source: str) -> dict:
    """--set key=value: a study key (seeds=[0,1]) or a trial key relative to base (train.epochs=2)."""
    errors = []
    for item in sets:
        key, eq, text = item.partition("=")
        if not eq or not key:
            errors.append(f"--set {item!r}: expected key=value, e.g. train.epochs=2")
            continue
        head = key.split(".")[0]
        if head not in STUDY_KEYS and head not in TRIAL_SECTIONS:
            errors.append(f"--set {key}: {head!r} is neither a study key nor a trial section"
                          f"{did_you_mean(head, STUDY_KEYS + TRIAL_SECTIONS)}; study keys: {', '.join(STUDY_KEYS)}; "
                          f"trial sections: {', '.join(TRIAL_SECTIONS)}")
            continue
        try:
            value = parse_yaml(text, f"--set {key}")
        except ConfigError as e:  # reported with the others, under the key the user typed
            errors.append(f"--set {key}={text}: {e.problems[0]}; a value is YAML as in the study file: 2, 1e-5, "
                          "[0, 1], {a: 1}, or a quoted string")
            continue
        doc = set_path(doc, key if head in STUDY_KEYS else f"base.{key}", value)
    if errors:
        raise ConfigError(source, errors)
    return doc


def load_study(path: str | Path, preset: str | None = None, sets: list[str] | None = None) -> Study:
    """Read, merge the preset and --set overrides, convert and check a study file (every problem at once). A problem
    in a key the preset sets is reported under `presets.<name>.`, where the user has to fix it."""
    source = str(path)
    doc = load_yaml(path)
    if not isinstance(doc, dict):
        raise ConfigError(source, ["a study file must be a mapping with keys: " + ", ".join(STUDY_KEYS)])
    preset_keys: set[str] = set()
    if preset is not None:
        presets = doc.get("presets") or {}
        if preset not in presets:
            raise ConfigError(source, [f"--preset {preset!r}: no such preset{did_you_mean(preset, presets)}; "
                                       f"defined: {', '.join(presets) or 'none'}"])
        if not isinstance(presets[preset], dict):
            raise ConfigError(source, [f"presets.{preset}: expected a mapping (a partial study document)"])
        doc = deep_merge(doc, presets[preset])
        preset_keys = set(flatten(presets[preset]))
    doc = apply_overrides(doc, sets or [], source)
    doc.setdefault("name", Path(path).stem)
    try:
        errors: list[str] = []
        study = from_dict(Study, doc, "", errors)
        if errors:
            raise ConfigError(source, errors)
        errors += _check_study(study)
        try:
            expand(study, source)  # every trial-level problem, reported together with the study-level ones
        except ConfigError as e:
            errors += e.problems
        except (KeyError, TypeError, ValueError):
            if not errors:  # a study-level problem made the expansion meaningless: report that problem
                raise
        if errors:
            raise ConfigError(source, errors)
    except ConfigError as e:
        if not preset_keys:
            raise
        raise ConfigError(source, [_in_preset(p, preset, preset_keys) for p in e.problems]) from None
    return study


def _in_preset(problem: str, preset: str, keys: set[str]) -> str:
    """'base.train.epochs: ...' -> 'presets.demo.base.train.epochs: ...' when the preset sets that key."""
    path = problem.split(":", 1)[0]
    for candidate in (path, f"base.{path}"):
        if candidate in keys or any(k.startswith(candidate + ".") for k in keys):
            return f"presets.{preset}.{candidate}{problem[len(path):]}"
    return problem


def load_study_and_presets(path: str | Path, sets: list[str] | None = None) -> Study:
    """The study without a preset, after checking every preset it defines too (all problems at once)."""
    problems: list[str] = []
    study = None
    try:
        study = load_study(path, None, sets)
    except ConfigError as e:
        problems += e.problems
    doc = load_yaml(path)
    for name in (doc.get("presets") or {}) if isinstance(doc, dict) else {}:
        try:
            load_study(path, name, sets)
        except ConfigError as e:
            problems += [p for p in e.problems if p.startswith(f"presets.{name}")]
    if problems or study is None:
        raise ConfigError(str(path), list(dict.fromkeys(problems)))
    return study


def _check_study(s: Study) -> list[str]:
    errs = [f"name: {why}"] if (why := study_name_problem(s.name)) else []
    errs += range_problems(s, skip=("base",))  # the study's own numbers (base's: with each trial, check_trial)
    errs += storage_problems("storage", s.storage)
    if "://" in s.results_dir:
        errs.append(f"results_dir: {s.results_dir!r}: results are written with local file access; give a local (or "
                    "NFS) folder (storage is where a URI belongs)")
    metrics = TASK_METRICS.get(s.base.task, ())
    if metrics and s.metric.name not in metrics:
        errs.append(f"metric.name: {s.metric.name!r} is not a metric of task {s.base.task}"
                    f"{did_you_mean(s.metric.name, metrics)}; valid: {', '.join(metrics)}")
    if s.metric.mode not in ("max", "min"):
        errs.append(f"metric.mode: {s.metric.mode!r} must be max or min")
    labels = [e.label for e in s.base.data.eval]
    if s.metric.eval_set and s.metric.eval_set not in labels:
        errs.append(f"metric.eval_set: {s.metric.eval_set!r} is not an evaluation set"
                    f"{did_you_mean(s.metric.eval_set, labels)}; defined: {', '.join(labels)}")
    if not s.seeds or len(set(s.seeds)) != len(s.seeds):
        errs.append(f"seeds: {list(s.seeds)} must be a non-empty list of distinct integers")
    r = s.resources
    if r.num_workers >= 1 and s.base.train.batch_size % r.num_workers:
        errs.append(f"train.batch_size: {s.base.train.batch_size} is not divisible by resources.num_workers "
                    f"{r.num_workers} (every worker takes an equal share of each global batch)")
    if r.launch not in LAUNCHES:
        errs.append(f"resources.launch: {r.launch!r} must be one of {', '.join(LAUNCHES)}"
                    f"{did_you_mean(r.launch, LAUNCHES)}")
    if 0 < r.gpus_per_worker < 1 and r.num_workers > 1:
        errs.append("resources.gpus_per_worker: a fraction of a GPU is only allowed with num_workers 1 (two ranks of "
                    "one trial could land on the same GPU)")
    errs += _check_search(s)
    if s.tracking.mlflow is not None and not s.tracking.mlflow.uri.strip():
        errs.append("tracking.mlflow.uri: must be non-empty: an MLflow server (http://host:5000) or a local store "
                    "(sqlite:///mlflow.db); remove tracking.mlflow to run without tracking")
    valid = dataclass_paths(TrialConfig)
    keys = list(s.search.grid) + [k for row in s.search.combinations for k in row] + list(s.search.space)
    for k in dict.fromkeys(keys):
        if k not in valid and not any(k == v.rsplit(".", 1)[0] for v in valid if "." in v):
            errs.append(f"search: {k!r} is not a trial config key{did_you_mean(k, valid)}")
        if k == "train.seed":
            errs.append("search: sweep seeds with the study's `seeds` list, not train.seed")
    for k, values in s.search.grid.items():
        if not isinstance(values, list) or not values:
            errs.append(f"search.grid.{k}: expected a non-empty list of values, got {values!r}")
    return errs


def _check_search(s: Study) -> list[str]:
    errs = []
    q, sch = s.search, s.scheduler
    if q.method not in ("grid", "optuna"):
        errs.append(f"search.method: {q.method!r} is not valid{did_you_mean(q.method, ['grid', 'optuna'])}; "
                    "valid: grid, optuna")
    if sch.name not in ("fifo", "asha"):
        errs.append(f"scheduler.name: {sch.name!r} is not valid{did_you_mean(sch.name, ['fifo', 'asha'])}; "
                    "valid: fifo, asha")
    if q.method == "optuna":
        if q.grid or q.combinations:
            errs.append("search: grid/combinations cannot be combined with method optuna (Ray's OptunaSearch cannot "
                        "take grid_search values); move those keys into search.space as {choice: [...]}")
        if not q.space or q.num_samples < 1:
            errs.append("search: method optuna needs search.space and search.num_samples >= 1")
        if len(s.seeds) != 1:
            errs.append(f"seeds: method optuna runs each sampled config once; give one seed, not {list(s.seeds)}")
        if q.sampler not in SAMPLERS:
            errs.append(f"search.sampler: {q.sampler!r} is not valid; valid: {', '.join(SAMPLERS)}")
        errs += parse_space(q.space)[1]
    elif q.space or q.num_samples:
        errs.append("search.space / search.num_samples are for method optuna; add `method: optuna`, or use grid")
    return errs


def is_optuna(study: Study) -> bool:
    return study.search.method == "optuna"


def _rows(rows: list[dict]) -> str:
    return ", ".join(map(str, rows))


def expand(study: Study, source: str = "<study>") -> list[Trial]:
    """Every (arm, seed) of the study, in a stable order; raises ConfigError naming each bad combination.

    For an Optuna study the trials are not known in advance: this returns configurations at the edges of its space
    (every bound, every choice), which is what validation and the pre-flight data check need.
    """
    base = to_dict(study.base)
    grid_keys = list(study.search.grid)
    rows = list(study.search.combinations) or [{}]
    if is_optuna(study):
        rows = list({json.dumps(r, sort_keys=True): r for r in edge_rows(parse_space(study.search.space)[0])}.values())
    problems: dict[str, list[dict]] = {}  # message -> the search rows it occurs in
    trials: list[Trial] = []
    n_rows = 0
    for row in rows:
        for values in itertools.product(*(study.search.grid[k] for k in grid_keys)):
            n_rows += 1
            swept = {**row, **dict(zip(grid_keys, values))}
            doc = base
            for k, v in swept.items():
                doc = set_path(doc, k, v)
            errs: list[str] = []
            cfg = from_dict(TrialConfig, doc, "base", errs)
            for e in errs or check_trial(cfg):
                problems.setdefault(e, []).append(swept)
            if errs or problems and any(swept in rows_ for rows_ in problems.values()):
                continue
            cfg = canonical_trial(cfg)  # the baseline's one spelling (anchors.count 0 with loss.align none)
            for seed in study.seeds:
                c = replace(cfg, train=replace(cfg.train, seed=seed))
                trials.append(Trial(arm_id(c), seed, c, swept))
    if problems:
        raise ConfigError(source, [e if len(where) == n_rows else f"{e} (with search values {_rows(where)})"
                                   for e, where in problems.items()])
    rows_of: dict[str, list[dict]] = {}
    for t in trials:
        if t.seed == study.seeds[0]:
            rows_of.setdefault(t.key, []).append(t.swept)
    same = [rows for rows in rows_of.values() if len(rows) > 1]
    if same:
        # Typically a grid over a CALM knob crossed with the baseline row: loss.align none has no CALM part, so
        # every value of the knob gives the same baseline.
        raise ConfigError(source, [
            f"search: rows {_rows(rows)} give one identical trial (values a trial does not read, such as CALM's "
            "knobs with loss.align none, make no arm of their own); list each distinct arm once, e.g. the baseline "
            "in a combination row of its own and the swept knob only in rows that read it" for rows in same])
    return trials


def metric_key(study: Study) -> str:
    """The reported metric Tune optimises, e.g. 'eval/synthetic-plain-test/t2v_R1'."""
    eval_set = study.metric.eval_set or study.base.data.eval[0].label
    return eval_key(eval_set, study.metric.name)
