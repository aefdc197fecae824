"""Shared fixtures: a tiny trial config on a small synthetic dataset (generated once per test session)."""

from pathlib import Path

import pytest

from calm_study.validate import trial_from_dict

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

TINY = {
    "model": {"clip": "calm-tiny", "pretrained": None},
    "anchors": {"source": "charades", "count": 20},
    "data": {"num_frames": 4, "synthetic": {"num_train_videos": 24, "num_test_videos": 8, "captions_per_video": 2,
                                            "frames_per_video": 8}},
    "optim": {"lr_clip": 1e-3, "lr_new": 1e-3},
    "train": {"epochs": 2, "batch_size": 16, "log_every": 0},
}


def two_trial_study(name: str, storage: str, results_dir: str, cache_dir: str = "", epochs: int = 2) -> dict:
    """A study document of 2 trials (no anchors; 20 anchors) of calm-tiny on the tiny synthetic data, evaluated on both
    synthetic domains: what the Ray tests run (on local, file://, s3:// storage; with or without tracking)."""
    import copy

    base = copy.deepcopy(TINY)
    if cache_dir:
        base["data"]["cache_dir"] = cache_dir
    base["data"]["eval"] = [{"name": "plain", "domain": "plain"}, {"name": "textured", "domain": "textured"}]
    base["train"]["epochs"] = epochs
    return {"name": name, "base": base,
            "search": {"combinations": [{"anchors.count": 0, "loss.align": "none"}, {"anchors.count": 20}]},
            "seeds": [7], "metric": {"name": "t2v_R1", "eval_set": "plain"},
            "resources": {"num_workers": 1, "cpus_per_worker": 0.99, "max_concurrent": 2},
            "storage": storage, "results_dir": results_dir}


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("calm_cache")


@pytest.fixture
def tiny_doc(data_cache) -> dict:
    """A trial document for calm-tiny on a small synthetic dataset; tests copy and edit it."""
    import copy

    doc = copy.deepcopy(TINY)
    doc["data"]["cache_dir"] = str(data_cache)
    return doc


@pytest.fixture
def tiny_cfg(tiny_doc):
    return trial_from_dict(tiny_doc)


def lose_latest_epoch_line(storage: str, study: str, key: str) -> int:
    """Leave a killed trial as a crash between Ray Train registering its latest checkpoint and the epoch's log line
    would: that epoch's line goes, unless the kill already left the log without it. Returns the epoch, which the
    resumed run must log again from the checkpoint (repair_metric_log). The latest registered checkpoint is Ray's
    own record, read through ray.train.Result, for a trial trained through Ray Train; for one trained in its Tune
    trial's process (resources.launch auto), the checkpoint it resumes from (study/checkpoints.py)."""
    import json

    import ray.train

    from calm_study.names import EPOCH_RECORD_FILE, METRIC_LOG, TRAIN_FOLDER, run_name
    from calm_study.study import checkpoints
    from calm_study.study.storage import Storage

    st = Storage(storage)
    run_dir = st.path(study, TRAIN_FOLDER, run_name(key))
    if any(name.startswith("checkpoint_manager") for name in st.list_names(run_dir)):  # Ray Train's own bookkeeping
        latest = ray.train.Result.from_path(st.uri(study, TRAIN_FOLDER, run_name(key))).checkpoint
        with latest.as_directory() as folder:
            epoch = json.loads((Path(folder) / EPOCH_RECORD_FILE).read_text())["epoch"]
    else:
        epoch = checkpoints.latest(st, run_dir).record["epoch"]
    log = st.path(study, TRAIN_FOLDER, run_name(key), METRIC_LOG)
    lines = st.read_text(log).splitlines(keepends=True)
    if json.loads(lines[-1])["epoch"] == epoch:
        st.write_text(log, "".join(lines[:-1]))
    else:  # the kill itself landed in that window
        assert json.loads(lines[-1])["epoch"] == epoch - 1, (lines, epoch)
    return epoch
