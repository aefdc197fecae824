"""All of calm_study's Ray glue (Ray 2.60, Train V2; docs/ray.md explains the pattern and its pitfalls).

Each trial is a Tune *function* trainable (the driver) that launches a Ray Train `TorchTrainer` (a Trainer passed to
Tuner fails in Train V2). The Train run is named after the trial's key (arm id + seed), so a restarted or restored
trial finds its last checkpoint and continues. The Train controller appends every epoch's metrics to
<storage>/<study>/train/train-<key>/metrics.jsonl (EpochLog, placed before the Tune bridge), and the Parquet is built
from those logs. Running the same study again restores the Tune experiment instead of starting over.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import time
from pathlib import Path

import ray
import ray.train
import ray.tune

from calm_study.config import TrialConfig
from calm_study.configio import set_path, to_dict
from calm_study.data.sources import absolute_paths, check_all_videos, check_weights, preflight
from calm_study.external import require_java
from calm_study.names import (
    EPOCH_RECORD_FILE,
    METRIC_LOG,
    SELECT_METRIC,
    TRAIN_FOLDER,
    TRIAL_FILE,
    TUNE_FOLDER,
    VAL_SPLITS,
    eval_key,
    run_name,
    trial_key,
)
from calm_study.progress import say
from calm_study.study import checkpoints
from calm_study.study.identity import arm_id
from calm_study.study.optuna_export import export_optuna
from calm_study.study.results import repair_metric_log
from calm_study.study.runtime import current_runtime, publish_runtime
from calm_study.study.search import parse_space
from calm_study.study.spec import Study, Trial, expand, is_optuna, metric_key
from calm_study.study.state import (
    StudyFiles,
    StudyStateError,
    StudyStatus,
    adopt_recorded_keys,
    archive,
    check_same_study,
    check_writable,
    study_trials,
    trial_logs,
    tune_dir_of,
    write_study_results,
)
from calm_study.study.storage import Storage
from calm_study.study.timing import TrialTimes, process_started, summarize
from calm_study.study.timing import keep as keep_timing
from calm_study.study.timing import lines as timing_lines
from calm_study.study.tracking import EpochTracker, publish_settings, require_mlflow, sync_study
from calm_study.validate import trial_from_dict

DRIVER_CPUS = 0.01  # the driver only waits on its TorchTrainer; a token CPU keeps Tune's accounting happy
HEAD_RESOURCE = "node:__internal_head__"  # Ray's built-in resource of the head node (1.0 there, absent elsewhere)


def log_record(metrics: dict, checkpoint_path: str | None) -> dict:
    """One metrics.jsonl line: rank 0's reported metrics, the epoch's checkpoint in storage, when it was logged."""
    return {**metrics, "checkpoint": checkpoint_path, "logged_at": time.time()}


class EpochLog(ray.train.UserCallback):
    """Appends rank 0's metrics (+ checkpoint path) of every report to the run's metrics.jsonl, durably. It runs in
    the Train controller after the checkpoint is registered, so a logged epoch is never trained again."""

    def __init__(self, storage: str, log_path: str):
        self.storage, self.log_path = storage, log_path  # strings: the callback is pickled to the controller
        self.tracking = EpochTracker(storage, log_path)  # MLflow, when the study configures it (study/tracking.py)

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        record = log_record(metrics[0], checkpoint.path if checkpoint else None)
        Storage(self.storage).append_line(self.log_path, json.dumps(record))
        self.tracking.after_epoch()  # after the line is durable; never raises


def _worker_loop(config: dict) -> None:
    """Runs on every Train worker: resume from the run's latest checkpoint if there is one, then train."""
    from ray.train.torch import get_device

    from calm_study.training.fit import fit  # torch and the models: in the processes that train, not the driver

    cfg = trial_from_dict(config["trial"], f"trial {config['key']}", check=False)  # checked once, by the driver

    def report(metrics: dict, checkpoint_dir: Path | None) -> None:
        record = {**metrics, "arm_id": config["arm_id"], "seed": config["seed"]}
        ckpt = None
        if checkpoint_dir:  # the checkpoint carries its epoch's record too (see repair_metric_log)
            (checkpoint_dir / EPOCH_RECORD_FILE).write_text(json.dumps(record), encoding="utf-8")
            ckpt = ray.train.Checkpoint.from_directory(str(checkpoint_dir))
        ray.train.report(record, checkpoint=ckpt)

    # Workers log at INFO by default: every report's full metrics and open_clip's model-building chatter. Our own
    # one line per epoch is the progress display.
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("ray.train").setLevel(logging.WARNING)

    def log(message: str) -> None:
        if ray.train.get_context().get_world_rank() == 0:
            say(f"[{config['key']}] {message}")

    device = get_device()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        _repair_log(config, None, log)
        fit(cfg, report, device=device, log=log)
    else:
        with checkpoint.as_directory() as folder:
            _repair_log(config, _epoch_record(Path(folder), checkpoint.path), log)
            fit(cfg, report, device=device, resume_dir=Path(folder), log=log)


def _epoch_record(folder: Path, checkpoint_path: str) -> dict | None:
    """The log record of the epoch a checkpoint folder holds, as EpochLog would have written it (None: a checkpoint
    written before checkpoints carried their record)."""
    path = folder / EPOCH_RECORD_FILE
    if not path.is_file():
        return None
    return log_record(json.loads(path.read_text(encoding="utf-8")), checkpoint_path)


def _repair_log(config: dict, resumed: dict | None, log) -> None:
    """Rank 0, before the run's first report: make the metric log whole (study/results.py, repair_metric_log)."""
    if ray.train.get_context().get_world_rank() == 0:
        for message in repair_metric_log(Storage(config["storage"]), config["log_path"], resumed):
            log(message)


def _sampled_trial(config: dict, rt: dict) -> dict:
    """An Optuna trial: base config + the sampled values; its identity goes to storage for status and results."""
    doc = rt["base"]
    for key, value in config["sampled"].items():
        doc = set_path(doc, key, value)
    cfg = trial_from_dict(set_path(doc, "train.seed", rt["seed"]), "sampled configuration")
    trial = {"arm_id": arm_id(cfg), "seed": rt["seed"], "trial": to_dict(cfg)}
    trial["key"] = trial_key(trial["arm_id"], rt["seed"])
    storage = Storage(rt["storage"])
    record = {"arm_id": trial["arm_id"], "seed": rt["seed"], "swept": config["sampled"], "config": trial["trial"],
              "tune_dir": ray.tune.get_context().get_trial_id()}
    storage.write_text(storage.path(rt["study"], TRAIN_FOLDER, run_name(trial["key"]), TRIAL_FILE), json.dumps(record))
    return trial


def _train_in_trial(trial: dict, rt: dict, started: float) -> None:
    """A 1-worker trial trained in this process (resources.launch auto): what the Train controller and worker do for
    the other trials, without them. Each epoch: checkpoint into the run folder, then its log line, then the report to
    Tune, in that order (a logged epoch is never trained again); a restart resumes from the latest stored
    checkpoint. An exception restarts the training here up to failures.train_retries times; a lost process or node
    is Tune's to retry (failures.trial_retries)."""
    from calm_study.training.fit import fit

    storage = Storage(rt["storage"])
    key = trial["key"]
    run_dir = storage.path(rt["study"], TRAIN_FOLDER, run_name(key))
    log_path = storage.path(rt["study"], TRAIN_FOLDER, run_name(key), METRIC_LOG)
    cfg = trial_from_dict(trial["trial"], f"trial {key}", check=False)  # checked once, by the driver
    score = checkpoint_score(cfg)
    tracking = EpochTracker(rt["storage"], log_path)
    logging.getLogger().setLevel(logging.WARNING)  # as in a Train worker (_worker_loop)

    def log(message: str) -> None:
        say(f"[{key}] {message}")

    def report(metrics: dict, checkpoint_dir: Path | None) -> None:
        record = {**metrics, "arm_id": trial["arm_id"], "seed": trial["seed"]}
        path = None
        if checkpoint_dir:
            tic = time.perf_counter()
            path = checkpoints.store(storage, run_dir, checkpoint_dir, record)
            record["checkpoint_s"] = record.get("checkpoint_s", 0.0) + time.perf_counter() - tic
        storage.append_line(log_path, json.dumps(log_record(record, path)))
        tracking.after_epoch()  # after the line is durable; never raises
        if path:
            checkpoints.prune(storage, run_dir, score)
        ray.tune.report(record)  # Tune's schedulers and searchers see the epoch; may stop the trial here

    device = "cuda" if rt["gpus_per_worker"] > 0 else "cpu"
    failures = 0
    while True:
        resume = checkpoints.latest(storage, run_dir)
        try:
            with checkpoints.local_folder(storage, resume) as folder:
                resumed = log_record(resume.record, resume.path) if resume else None  # its epoch's line, if lost
                for message in repair_metric_log(storage, log_path, resumed):
                    log(message)
                fit(cfg, report, device=device, resume_dir=folder, log=log, started=started)
            return
        except Exception as e:  # any fault of one attempt, retried like a failed Train worker group
            failures += 1
            if 0 <= rt["train_retries"] < failures:
                raise
            log(f"training failed ({type(e).__name__}: {e}); restarting from the last checkpoint "
                f"(failures.train_retries {rt['train_retries']}, failure {failures})")
            started = time.time()


def _driver(config: dict) -> None:
    """The Tune trainable: trains the trial in this process (1 worker, resources.launch auto), or launches one
    TorchTrainer run named after the trial key (deterministic => resumable)."""
    started = time.time()
    rt = config["runtime"]
    trial = config["trial"] if "trial" in config else _sampled_trial(config, rt)
    trial = current_runtime(trial, rt["storage"], rt["study"])  # this run's data paths, caches, workers
    if rt.get("in_trial"):  # absent from studies begun before it existed: those keep Ray Train
        _train_in_trial(trial, rt, started)
        return
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    name = run_name(trial["key"])
    log_path = Storage(rt["storage"]).path(rt["study"], TRAIN_FOLDER, name, METRIC_LOG)
    run_config = ray.train.RunConfig(
        name=name, storage_path=rt["train_uri"],
        callbacks=[EpochLog(rt["storage"], log_path), TuneReportCallback()],  # the log first (docs/ray.md)
        # Checked once when the study expanded (or, for an Optuna trial, when it was sampled): only parsed here.
        checkpoint_config=checkpoint_config(trial_from_dict(trial["trial"], f"trial {trial['key']}", check=False)),
        failure_config=ray.train.FailureConfig(max_failures=rt["train_retries"]),
    )
    gpus = rt["gpus_per_worker"]
    per_worker = {"CPU": rt["cpus_per_worker"], **({"GPU": gpus} if gpus else {})}
    scaling = ray.train.ScalingConfig(num_workers=rt["num_workers"], use_gpu=gpus > 0, resources_per_worker=per_worker)
    loop_config = {**{k: trial[k] for k in ("trial", "key", "arm_id", "seed")}, "storage": rt["storage"],
                   "log_path": log_path}
    TorchTrainer(_worker_loop, train_loop_config=loop_config, scaling_config=scaling, run_config=run_config).fit()


def checkpoint_score(cfg: TrialConfig) -> str | None:
    """The metric that picks a trial's best checkpoint (an in-domain validation set's, higher is better), or None."""
    val = [ref for ref in cfg.data.eval if ref.split in VAL_SPLITS and ref.dataset == cfg.data.train.dataset]
    return eval_key(val[0].label, SELECT_METRIC[cfg.task]) if val else None


def checkpoint_config(cfg: TrialConfig) -> ray.train.CheckpointConfig:
    """Keep only the checkpoints that matter: the latest (what resuming needs; Ray Train always keeps it) and, when an
    in-domain validation set picks a best epoch (report --epoch best), the best one by that set's metric."""
    score = checkpoint_score(cfg)
    if score is None:
        return ray.train.CheckpointConfig(num_to_keep=1)
    return ray.train.CheckpointConfig(num_to_keep=1, checkpoint_score_order="max", checkpoint_score_attribute=score)


# When Tune started and finished each trial in this `run` (for study/timing.py). A module global, not an attribute of
# the callback: a restored experiment unpickles the callback it was begun with, perhaps by an older calm_study.
RUN_TIMES = TrialTimes()


class TrialProgress(ray.tune.Callback):
    """In the driver: one line whenever the count of done / running / pending trials changes, and one per failed
    attempt (Ray's own output is filtered from a quiet console: calm_study/study/console.py)."""

    def __init__(self, total: int) -> None:
        self.total = total  # Tune creates grid trials a few at a time: pending counts the ones not created yet too
        self.last = ""

    @staticmethod
    def key(trial) -> str:
        return trial.config.get("trial", {}).get("key", trial.trial_id)  # Optuna trials: Tune's id (their tune_dir)

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        RUN_TIMES.start(self.key(trial))

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        RUN_TIMES.finish(self.key(trial))

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        states = [t.status for t in trials]
        counts = {"done": states.count("TERMINATED"), "running": states.count("RUNNING"), "pending": 0,
                  "failed": states.count("ERROR")}
        counts["pending"] = max(self.total, len(states)) - counts["done"] - counts["running"] - counts["failed"]
        line = ", ".join(f"{n} {what}" for what, n in counts.items() if n or what != "failed")
        if line != self.last:
            self.last = line
            say(f"trials: {line}")

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        key = self.key(trial)
        say(f"[{key}] this attempt failed; Ray retries it up to failures.trial_retries times; `python -m calm_study "
            f"status` and the end of the run say why (--verbose shows the traceback as it happens)")


def _tag_callbacks_without_imports() -> None:
    """Ray Tune's usage telemetry (`ray.air._internal.usage.tag_callbacks`, called by every `Tuner.fit`) sorts the
    run's callbacks by class, importing every logger integration it knows to compare their names, MLflow's among them:
    0.9 s of the driver's set-up wherever mlflow is installed (the tracking and test extras), for a count. Ours are
    custom callbacks (TrialProgress), so the same tag is recorded without the imports. A Ray without that function
    keeps its own."""
    from ray.air._internal import usage

    if not hasattr(usage, "tag_callbacks") or getattr(usage.tag_callbacks, "calm_study", False):
        return

    def tag_callbacks(callbacks: list | None) -> bool:
        if not callbacks:
            return False
        usage.record_extra_usage_tag(usage.TagKey.AIR_CALLBACKS, json.dumps({"CustomCallback": len(callbacks)}))
        return True

    tag_callbacks.calm_study = True
    usage.tag_callbacks = tag_callbacks


def stop_ray() -> None:
    """End the Ray that `run_study` started on this machine (nothing else: a driver connected with --address only
    disconnects), as Ray's own exit handler would, less two waits: that handler sleeps 0.5 s for log lines already
    printed by the time the CLI calls this, and gives the autoscaler's monitor process 1 s to stop on SIGTERM, which it
    never does on a local Ray (it is killed after the second). The monitor is killed at once instead."""
    if not ray.is_initialized():
        return
    node = getattr(ray._private.worker, "_global_node", None)  # Ray's handle on the processes it started
    if node is not None and hasattr(node, "kill_monitor"):
        node.kill_monitor(check_alive=False)
    ray.shutdown()


def planned_trials(study: Study, trials: list[Trial]) -> int:
    """How many trials the study will run: the grid's, or Optuna's num_samples."""
    return study.search.num_samples if is_optuna(study) else len(trials)


def trains_in_trial(study: Study) -> bool:
    """Do the study's trials train in their Tune trial's own process (resources.launch auto, 1 worker)?"""
    return study.resources.launch == "auto" and study.resources.num_workers == 1


def driver_resources(study: Study) -> dict:
    """What one trial's driver reserves. Training in the trial's process: the worker's CPUs and GPUs, on any node.
    Else a token CPU, on the head node unless resources.drivers_on_head is false.

    The Train controller runs on its driver's node (Ray Train V2). Pinned to the head, a lost worker node kills only
    Train workers, which the living controller restarts from the checkpoint; a controller lost with its node leaves
    its workers' placement group behind, and the restarted trial can wait for those CPUs forever."""
    r = study.resources
    if trains_in_trial(study):
        return {"cpu": r.cpus_per_worker, **({"gpu": r.gpus_per_worker} if r.gpus_per_worker else {})}
    if not r.drivers_on_head:
        return {"cpu": DRIVER_CPUS}
    head = [n for n in ray.nodes() if n.get("Alive") and HEAD_RESOURCE in n.get("Resources", {})]
    if head and head[0]["Resources"].get("CPU", 0) < DRIVER_CPUS:
        raise StudyStateError("resources.drivers_on_head: the head node of this Ray cluster has no CPU for the trial "
                              "drivers (they only wait on their workers: a hundredth of a CPU each); start it with "
                              "some (`ray start --head --num-cpus 1`), or set resources.drivers_on_head false to "
                              "let drivers run on any node")
    return {"cpu": DRIVER_CPUS, HEAD_RESOURCE: 0.001} if head else {"cpu": DRIVER_CPUS}


def _max_concurrent(study: Study) -> int:
    """Trials at once: Tune does not count Train workers, so this is the real throttle (docs/ray.md)."""
    r = study.resources
    if r.max_concurrent:
        return r.max_concurrent
    total = ray.cluster_resources()
    if r.gpus_per_worker > 0:
        return max(1, math.floor(total.get("GPU", 0) / (r.gpus_per_worker * r.num_workers)))
    driver = 0.0 if trains_in_trial(study) else DRIVER_CPUS
    return max(1, math.floor(total.get("CPU", 1) / (r.cpus_per_worker * r.num_workers + driver)))


def _domain(kind: str, args: list):
    """A study-file distribution (calm_study.study.search) as a Ray Tune search domain."""
    if kind == "choice":
        return ray.tune.choice(args)
    if kind == "uniform":
        return ray.tune.uniform(*args)
    if kind == "loguniform":
        return ray.tune.loguniform(*args)
    if kind == "int":
        return ray.tune.randint(args[0], args[1] + 1)  # randint's upper bound is exclusive
    return ray.tune.qrandint(*args)  # qint: inclusive bounds, step


def param_space(study: Study, trials: list[Trial]) -> dict:
    files = StudyFiles(study)
    r = study.resources
    runtime = {"storage": study.storage if files.storage.is_uri else files.storage.root, "study": study.name,
               "train_uri": files.storage.uri(study.name, TRAIN_FOLDER),
               "num_workers": r.num_workers, "cpus_per_worker": r.cpus_per_worker,
               "gpus_per_worker": r.gpus_per_worker, "train_retries": study.failures.train_retries,
               "in_trial": trains_in_trial(study)}
    if is_optuna(study):
        runtime.update(base=to_dict(absolute_paths(study.base)), seed=study.seeds[0])
        space = parse_space(study.search.space)[0]
        return {"sampled": {key: _domain(*dist) for key, dist in space.items()}, "runtime": runtime}
    return {"trial": ray.tune.grid_search([{"key": t.key, "arm_id": t.arm_id, "seed": t.seed,
                                            "trial": to_dict(absolute_paths(t.config))} for t in trials]),
            "runtime": runtime}


def tune_config(study: Study) -> ray.tune.TuneConfig:
    """Metric, concurrency, and for Optuna studies the searcher; for `scheduler: asha`, early stopping."""
    scheduler = search_alg = None
    if study.scheduler.name == "asha":
        # time_attr "epoch" (1-based, kept across restores), not training_iteration, which restarts at 1 (docs/ray.md).
        max_t = max(t.config.train.epochs for t in expand(study))  # Optuna: the edges of its space
        scheduler = ray.tune.schedulers.ASHAScheduler(time_attr="epoch", max_t=max_t,
                                                      grace_period=study.scheduler.grace_period,
                                                      reduction_factor=study.scheduler.reduction_factor)
    if is_optuna(study):
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        q = study.search
        sampler = (optuna.samplers.TPESampler(seed=q.sampler_seed) if q.sampler == "tpe"
                   else optuna.samplers.RandomSampler(seed=q.sampler_seed))
        search_alg = OptunaSearch(sampler=sampler)  # in-memory storage: Tune snapshots it (docs/ray.md)
    return ray.tune.TuneConfig(
        metric=metric_key(study), mode=study.metric.mode, max_concurrent_trials=_max_concurrent(study),
        num_samples=study.search.num_samples if is_optuna(study) else 1, search_alg=search_alg, scheduler=scheduler,
        # One process per concurrent trial, handed from trial to trial: torch, open_clip and calm_study are imported
        # once per slot, not once per trial (every trial of a study asks for the same resources).
        reuse_actors=True,
        trial_dirname_creator=lambda t: t.config["trial"]["key"] if "trial" in t.config else t.trial_id)


def gpus_per_trial(study: Study) -> int:
    r = study.resources
    return math.ceil(r.gpus_per_worker * r.num_workers) if r.gpus_per_worker > 0 else 0


def check_gpus(study: Study, available: float, where: str) -> None:
    """Refuse at once a study whose trials need more GPUs than `where` has (Ray would wait for them forever)."""
    need = gpus_per_trial(study)
    if need > available:
        raise StudyStateError(
            f"study {study.name!r} needs {need} GPU(s) per trial (resources.gpus_per_worker "
            f"{study.resources.gpus_per_worker} x num_workers {study.resources.num_workers}), but {where} has "
            f"{available:g}. Run it on a GPU machine, or on a cluster with --address; on a CPU, use the study's demo "
            "preset (--preset demo) or --set resources.gpus_per_worker=0 (slow: the paper's setup needs GPUs)")


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """A host:port address answers within a few seconds (Ray itself would retry for minutes)."""
    if address == "auto":
        return  # ray.init("auto") fails at once when no local cluster runs
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s).close()
    except (OSError, ValueError) as e:
        raise StudyStateError(f"--address {address}: nothing answers there within {timeout_s:g} s "
                              f"({getattr(e, 'strerror', None) or e}); give the head node's host:port (6379 by "
                              "default), or `auto` on a node of the cluster") from None


def wait_for_nodes(count: int, timeout_s: float, address: str, poll_s: float = 2.0) -> int:
    """Block until `count` nodes of the connected Ray cluster are alive; returns how many are. Trial concurrency is
    computed once from the cluster's resources (_max_concurrent), so a study started before every node of a batch
    allocation joined would run fewer trials at once for its whole life."""
    deadline = time.monotonic() + timeout_s
    said = -1
    while True:
        alive = sum(1 for n in ray.nodes() if n.get("Alive"))
        if alive >= count:
            return alive
        if time.monotonic() >= deadline:
            raise StudyStateError(f"--wait-nodes {count}: {alive} node(s) of the Ray cluster at {address} are alive "
                                  f"after {timeout_s:g} s; start Ray on the missing nodes (`ray start --address "
                                  f"{address}`), or lower --wait-nodes")
        if alive != said:
            said = alive
            say(f"waiting for the Ray cluster: {alive} of {count} nodes alive")
        time.sleep(poll_s)


def run_study(study: Study, address: str | None = None, fresh: bool = False, verbose: bool = False,
              wait_nodes: int = 0, wait_timeout_s: float = 600.0) -> tuple[Path, StudyStatus]:
    """Run (or resume) every trial of the study with Ray Tune; returns (the Parquet path, the study's status).

    fresh=True archives an earlier run of the study (storage and Parquet are moved aside, never deleted) first.
    verbose=False keeps Ray's own logging to errors (the console filter, study/console.py, does the rest).
    wait_nodes (with an address): first wait up to wait_timeout_s for that many alive nodes (a batch job's cluster).
    """
    began = process_started()
    trials = expand(study)
    files = StudyFiles(study)
    # Every check first, cheapest first: nothing is moved, created or started before they have all passed.
    if any(t.config.task == "captioning" for t in trials):
        require_java()  # METEOR and the PTB tokenizer score every captioning evaluation
    if address:
        check_reachable(address)
    elif gpus_per_trial(study):  # torch only for a GPU study: a CPU study's driver need not import it
        import torch

        check_gpus(study, torch.cuda.device_count(), "this machine")
    check_writable(files.storage, files.root, "storage")
    check_writable(Storage(study.results_dir), Storage(study.results_dir).path(study.name), "results_dir")
    require_mlflow(study)  # tracking.mlflow configured: the mlflow package is installed
    source = f"study {study.name}"
    configs = [t.config for t in trials]
    preflight(configs, source)  # every split's annotations
    check_weights(configs, source)  # a pretrained file loads
    check_all_videos(configs, source)  # every video once (remembered), the skip threshold, one batch of pairs
    if fresh and (target := archive(study)):
        say(f"archived the earlier run of {study.name} to {target}")
    trials = adopt_recorded_keys(study, trials)  # a study begun before stable arm ids keeps its keys
    check_same_study(study, trials)
    publish_settings(study, trials)  # where the Train controllers log each epoch to MLflow (if configured)
    publish_runtime(study, trials)  # this run's data paths and caches, for trials that Tune restores
    ray_level = logging.INFO if verbose else logging.ERROR
    logging.getLogger("ray").setLevel(ray_level)
    if not ray.is_initialized():
        if address:  # a running cluster: its dashboard and State API are the cluster's own (start it with them on)
            try:
                ray.init(address=address, log_to_driver=True, logging_level=ray_level)
            except ConnectionError as e:
                raise StudyStateError(f"--address {address}: no Ray cluster could be reached ({e}); start one "
                                      "with `ray start --head`, or run without --address to start Ray on this "
                                      "machine") from None
            try:
                if wait_nodes:
                    wait_for_nodes(wait_nodes, wait_timeout_s, address)
                check_gpus(study, ray.cluster_resources().get("GPU", 0), f"the Ray cluster at {address}")
            except StudyStateError:
                ray.shutdown()
                raise
        else:
            # The dashboard keeps the State API up, which Train V2 needs to free the placement groups of stopped
            # trials (docs/ray.md); it also serves the jobs API, so it stays bound to localhost. Trials that train in
            # their own process start no Train run: a new study of those starts Ray without it (seconds sooner); a
            # restored one may hold trials begun through Ray Train.
            dashboard = not trains_in_trial(study) or ray.tune.Tuner.can_restore(files.storage.uri(study.name,
                                                                                                  TUNE_FOLDER))
            ray.init(include_dashboard=dashboard, dashboard_host="127.0.0.1", log_to_driver=True,
                     logging_level=ray_level)
    trainable = ray.tune.with_resources(_driver, driver_resources(study))
    concurrency = _max_concurrent(study)
    RUN_TIMES.started.clear()
    RUN_TIMES.finished.clear()
    tune_uri = files.storage.uri(study.name, TUNE_FOLDER)
    if ray.tune.Tuner.can_restore(tune_uri):
        say(f"resuming study {study.name} from\n  {tune_uri}")  # the path alone on its line (120 columns)
        tuner = ray.tune.Tuner.restore(tune_uri, trainable, resume_errored=True)
    else:
        tuner = ray.tune.Tuner(
            trainable, param_space=param_space(study, trials),
            tune_config=tune_config(study),
            # verbose=0: Tune's tables repeat each trial's whole config; the workers print one line per epoch instead.
            run_config=ray.tune.RunConfig(name=TUNE_FOLDER, storage_path=files.storage.uri(study.name), verbose=0,
                                          callbacks=[TrialProgress(planned_trials(study, trials))],
                                          failure_config=ray.tune.FailureConfig(
                                              max_failures=study.failures.trial_retries)),
        )
    _tag_callbacks_without_imports()
    tuner.fit()
    trials = study_trials(study)  # Optuna studies: the configurations that were sampled
    path, status = write_study_results(study, trials)
    tune_keys = {tune_dir_of(study, t): t.key for t in trials}  # Optuna: Tune's trial id -> trial key
    times = TrialTimes({tune_keys.get(k, k): v for k, v in RUN_TIMES.started.items()},
                       {tune_keys.get(k, k): v for k, v in RUN_TIMES.finished.items()})
    figures = summarize(trial_logs(study, trials), times, began, time.time(), concurrency)
    for line in timing_lines(figures):
        say(line)
    keep_timing(figures, path.parent)
    if is_optuna(study):
        say(f"Optuna database for optuna-dashboard: {export_optuna(study, trials, status)}")
    sync_study(study, trials, status)  # MLflow: every trial up to its metric log, the result files (if configured)
    return path, status
