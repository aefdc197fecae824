"""All of calm_study's Ray glue (Ray 2.60, Train V2; see shared/notes/ray.md for the verified pattern).

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
import time
from pathlib import Path

import ray
import ray.train
import ray.tune
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from calm_study.config import absolute_paths, trial_from_dict, trial_to_dict
from calm_study.data_commands import preflight
from calm_study.progress import say
from calm_study.storage import Storage
from calm_study.study import Study, Trial, expand, metric_key
from calm_study.study_state import (
    StudyFiles,
    StudyStatus,
    archive,
    check_same_study,
    check_writable,
    write_study_results,
)
from calm_study.train import fit

DRIVER_CPUS = 0.01  # the driver only waits on its TorchTrainer; a token CPU keeps Tune's accounting happy


class EpochLog(ray.train.UserCallback):
    """Appends rank 0's metrics (+ checkpoint path) of every report to the run's metrics.jsonl, durably. It runs in
    the Train controller after the checkpoint is registered, so a logged epoch is never trained again."""

    def __init__(self, storage: str, log_path: str):
        self.storage, self.log_path = storage, log_path  # strings: the callback is pickled to the controller

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        record = {**metrics[0], "checkpoint": checkpoint.path if checkpoint else None, "logged_at": time.time()}
        Storage(self.storage).append_line(self.log_path, json.dumps(record))


def _worker_loop(config: dict) -> None:
    """Runs on every Train worker: resume from the run's latest checkpoint if there is one, then train."""
    cfg = trial_from_dict(config["trial"], f"trial {config['key']}")

    def report(metrics: dict, checkpoint_dir: Path | None) -> None:
        ckpt = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        ray.train.report({**metrics, "arm_id": config["arm_id"], "seed": config["seed"]}, checkpoint=ckpt)

    # Workers log at INFO by default: every report's full metrics and open_clip's model-building chatter. Our own
    # one line per epoch is the progress display.
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("ray.train").setLevel(logging.WARNING)

    def log(message: str) -> None:
        if ray.train.get_context().get_world_rank() == 0:
            say(f"[{config['key']}] {message}")

    device = ray.train.torch.get_device()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        fit(cfg, report, device=device, log=log)
    else:
        with checkpoint.as_directory() as folder:
            fit(cfg, report, device=device, resume_dir=Path(folder), log=log)


def _driver(config: dict) -> None:
    """The Tune trainable: one TorchTrainer run per trial, named after the trial key (deterministic => resumable)."""
    rt, trial = config["runtime"], config["trial"]
    name = f"train-{trial['key']}"
    run_config = ray.train.RunConfig(
        name=name, storage_path=rt["train_uri"],
        callbacks=[EpochLog(rt["storage"], rt["log_paths"][trial["key"]]), TuneReportCallback()],  # log first (§5)
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        failure_config=ray.train.FailureConfig(max_failures=rt["train_retries"]),
    )
    gpus = rt["gpus_per_worker"]
    per_worker = {"CPU": rt["cpus_per_worker"], **({"GPU": gpus} if gpus else {})}
    scaling = ray.train.ScalingConfig(num_workers=rt["num_workers"], use_gpu=gpus > 0, resources_per_worker=per_worker)
    loop_config = {k: trial[k] for k in ("trial", "key", "arm_id", "seed")}
    TorchTrainer(_worker_loop, train_loop_config=loop_config, scaling_config=scaling, run_config=run_config).fit()


def _max_concurrent(study: Study) -> int:
    """Trials at once: Tune does not count Train workers, so this is the real throttle (notes §8)."""
    r = study.resources
    if r.max_concurrent:
        return r.max_concurrent
    total = ray.cluster_resources()
    if r.gpus_per_worker > 0:
        return max(1, math.floor(total.get("GPU", 0) / (r.gpus_per_worker * r.num_workers)))
    return max(1, math.floor(total.get("CPU", 1) / (r.cpus_per_worker * r.num_workers + DRIVER_CPUS)))


def param_space(study: Study, trials: list[Trial]) -> dict:
    files = StudyFiles(study)
    r = study.resources
    runtime = {"storage": study.storage if files.storage.is_uri else files.storage.root,
               "train_uri": files.storage.uri(study.name, "train"),
               "log_paths": {t.key: files.run_log(t.key) for t in trials},
               "num_workers": r.num_workers, "cpus_per_worker": r.cpus_per_worker,
               "gpus_per_worker": r.gpus_per_worker, "train_retries": study.failures.train_retries}
    return {"trial": ray.tune.grid_search([{"key": t.key, "arm_id": t.arm_id, "seed": t.seed,
                                            "trial": trial_to_dict(absolute_paths(t.config))} for t in trials]),
            "runtime": runtime}


def run_study(study: Study, address: str | None = None, fresh: bool = False) -> tuple[Path, StudyStatus]:
    """Run (or resume) every trial of the study with Ray Tune; returns (the Parquet path, the study's status).

    fresh=True archives an earlier run of the study (storage and Parquet are moved aside, never deleted) first.
    """
    trials = expand(study)
    files = StudyFiles(study)
    if fresh and (target := archive(study)):
        say(f"archived the earlier run of {study.name} to {target}")
    check_writable(files.storage, files.root, "storage")
    check_writable(Storage(study.results_dir), Storage(study.results_dir).path(study.name), "results_dir")
    preflight(trials, f"study {study.name}")
    check_same_study(study, trials)
    if not ray.is_initialized():
        if address:  # a running cluster: its dashboard and State API are the cluster's own (start it with them on)
            ray.init(address=address, log_to_driver=True)
        else:
            # The dashboard keeps the State API up, which Train V2 needs to free the placement groups of stopped
            # trials (notes §9); it also serves the jobs API, so it stays bound to localhost.
            ray.init(include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=True)
    trainable = ray.tune.with_resources(_driver, {"cpu": DRIVER_CPUS})
    tune_uri = files.storage.uri(study.name, "tune")
    if ray.tune.Tuner.can_restore(tune_uri):
        say(f"resuming study {study.name} from {tune_uri}")
        tuner = ray.tune.Tuner.restore(tune_uri, trainable, resume_errored=True)
    else:
        tuner = ray.tune.Tuner(
            trainable, param_space=param_space(study, trials),
            tune_config=ray.tune.TuneConfig(metric=metric_key(study), mode=study.metric.mode,
                                            max_concurrent_trials=_max_concurrent(study),
                                            trial_dirname_creator=lambda trial: trial.config["trial"]["key"]),
            # verbose=0: Tune's tables repeat each trial's whole config; the workers print one line per epoch instead.
            run_config=ray.tune.RunConfig(name="tune", storage_path=files.storage.uri(study.name), verbose=0,
                                          failure_config=ray.tune.FailureConfig(
                                              max_failures=study.failures.trial_retries)),
        )
    grid = tuner.fit()
    trial_ids = {r.config["trial"]["key"]: str((r.metrics or {}).get("trial_id", "")) for r in grid}
    return write_study_results(study, trials, trial_ids)
