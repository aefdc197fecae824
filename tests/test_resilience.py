"""Real processes, real Ray: kill the driver, kill a worker, a diverging trial, a cluster that loses a node."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def write_study(tmp_path, data_cache, name, epochs=3, combinations=None, **extra):
    from .conftest import TINY

    base = json.loads(json.dumps(TINY))
    base["data"]["cache_dir"] = str(data_cache)
    base["train"]["epochs"] = epochs
    study = {"name": name, "base": base, "seeds": [0],
             "search": {"combinations": combinations or [{"anchors.count": 0, "loss.align": "none"},
                                                         {"anchors.count": 20}]},
             "resources": {"num_workers": 1, "cpus_per_worker": 0.99, "max_concurrent": 2},
             "storage": str(tmp_path / "runs"), "results_dir": str(tmp_path / "results"), **extra}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def ray_tmp(tmp_path) -> str:
    """A short Ray temp folder of this test's own (Ray's socket paths must stay under 107 bytes)."""
    marker = tmp_path / "ray_tmp"
    if not marker.exists():
        marker.write_text(tempfile.mkdtemp(prefix="calm-ray-", dir="/tmp"))
    return marker.read_text()


def start(path, tmp_path, *args):
    """`python -m calm_study run` in its own session (so the whole process tree can be killed), Ray in its own tmp."""
    env = {**os.environ, "RAY_TMPDIR": ray_tmp(tmp_path)}
    log = open(tmp_path / f"run-{time.time_ns()}.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "calm_study", "run", str(path), *args], cwd=REPO, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    proc.log_path = log.name
    return proc


def finish(proc, timeout=600):
    proc.wait(timeout=timeout)
    return Path(proc.log_path).read_text()


def kill_tree(proc, tmp_path):
    """SIGKILL the driver's session, then any Ray process of this test that escaped it (docs/ray.md, "After a driver
    kill")."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    subprocess.run(["pkill", "-9", "-f", ray_tmp(tmp_path)], check=False)
    time.sleep(2)


def epoch_lines(tmp_path, name):
    """{trial key: [logged epochs]} from the durable per-epoch logs."""
    out = {}
    for log in (tmp_path / "runs" / name / "train").glob("train-*/metrics.jsonl"):
        out[log.parent.name[len("train-"):]] = [json.loads(line)["epoch"] for line in log.read_text().splitlines()]
    return out


def wait_for(condition, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise TimeoutError("condition not reached")


def check_complete(tmp_path, name, trials, epochs):
    df = pd.read_parquet(tmp_path / "results" / name)
    assert len(df) == trials * epochs  # one evaluation set
    assert not df.duplicated(["arm_id", "seed", "epoch", "eval_set"]).any()
    assert set(df.status) == {"completed"}
    return df


def test_driver_sigkill_mid_epoch_then_rerun_resumes(tmp_path, data_cache):
    from .conftest import lose_latest_epoch_line

    path = write_study(tmp_path, data_cache, "killed", epochs=4)
    proc = start(path, tmp_path)
    wait_for(lambda: any(len(e) >= 1 for e in epoch_lines(tmp_path, "killed").values()))
    kill_tree(proc, tmp_path)
    before = epoch_lines(tmp_path, "killed")
    assert all(len(e) < 4 for e in before.values())  # killed mid-study
    # A kill between Ray Train registering a checkpoint and the epoch's log line, made certain for one trial.
    lost_key = next(k for k, e in before.items() if e)
    resumed = lose_latest_epoch_line(str(tmp_path / "runs"), "killed", lost_key)
    before[lost_key] = [e for e in before[lost_key] if e < resumed]
    status = subprocess.run([sys.executable, "-m", "calm_study", "status", str(path)], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert status.returncode == 0 and "study killed: 2 trials" in status.stdout
    assert "completed" not in status.stdout.splitlines()[0]

    proc = start(path, tmp_path)
    out = finish(proc)
    assert proc.returncode == 0, out[-3000:]
    assert "resuming study killed" in out and "resumed from" in out
    assert f"[{lost_key}] logged epoch {resumed} again from its checkpoint" in out, out[-3000:]
    after = epoch_lines(tmp_path, "killed")
    for key, epochs in after.items():
        assert epochs == [1, 2, 3, 4], (key, epochs)  # every epoch logged once: no finished epoch trained twice
        assert epochs[:len(before.get(key, []))] == before.get(key, [])
    check_complete(tmp_path, "killed", trials=2, epochs=4)


# The process that trains: the trial's own (resources.launch auto, 1 worker), or Ray Train's worker.
TRAINING_PROCESS = {"auto": "ray::ImplicitFunc", "ray_train": "ray::RayTrainWorker"}


@pytest.mark.parametrize("launch", ["auto", "ray_train"])
def test_killed_worker_is_retried_from_its_checkpoint(tmp_path, data_cache, launch):
    path = write_study(tmp_path, data_cache, "worker", epochs=4, combinations=[{"anchors.count": 20}],
                       resources={"num_workers": 1, "cpus_per_worker": 0.99, "max_concurrent": 2, "launch": launch})
    proc = start(path, tmp_path)
    wait_for(lambda: any(len(e) >= 1 for e in epoch_lines(tmp_path, "worker").values()))
    workers = subprocess.run(["pgrep", "-f", TRAINING_PROCESS[launch]], capture_output=True,
                             text=True).stdout.split()
    assert workers, f"no {TRAINING_PROCESS[launch]} process found"
    for pid in workers:
        os.kill(int(pid), signal.SIGKILL)
    out = finish(proc)
    assert proc.returncode == 0, out[-3000:]
    # The trial (auto: Tune's retry of the trial; ray_train: the new worker group) started from the last checkpoint
    assert "resumed from" in out
    assert list(epoch_lines(tmp_path, "worker").values()) == [[1, 2, 3, 4]]
    check_complete(tmp_path, "worker", trials=1, epochs=4)


def test_a_diverging_trial_ends_diverged_while_the_others_finish(tmp_path, data_cache):
    path = write_study(tmp_path, data_cache, "nan", epochs=2, combinations=[
        {"anchors.count": 20}, {"anchors.count": 20, "optim.lr_clip": 1e30, "optim.lr_new": 1e30}])
    proc = start(path, tmp_path)
    out = finish(proc)
    assert proc.returncode == 1  # not every trial completed
    assert "1 completed, 1 diverged" in out and "loss became non-finite in epoch 1" in out
    df = pd.read_parquet(tmp_path / "results" / "nan")
    assert set(df[df.optim_lr_clip > 1].status) == {"diverged"}
    assert set(df[df.optim_lr_clip < 1].status) == {"completed"} and len(df[df.optim_lr_clip < 1]) == 2
    lines = epoch_lines(tmp_path, "nan")
    assert sorted(len(e) for e in lines.values()) == [1, 2]  # the diverged trial ran once, no retries
    status = subprocess.run([sys.executable, "-m", "calm_study", "status", str(path)], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert "1 completed, 1 diverged" in status.stdout and "best epoch so far" in status.stdout


@pytest.mark.parametrize("launch", ["auto", "ray_train"])
def test_two_node_cluster_loses_a_node_and_the_study_completes(tmp_path, data_cache, launch):
    path = write_study(tmp_path, data_cache, "nodes", epochs=4, failures={"train_retries": 2, "trial_retries": 3},
                       resources={"num_workers": 1, "cpus_per_worker": 1, "max_concurrent": 2, "launch": launch})
    script = tmp_path / "cluster.py"
    driver_log = tmp_path / "driver.log"
    # ray_train: the head (2 CPUs) has room for both drivers (pinned there, resources.drivers_on_head) and one Train
    # worker (1 CPU), so the other trial's worker runs on the second node. auto: each trial trains in its own process
    # (1 CPU), one on the head (1 CPU), one on the second node. That node is removed once both trials have logged an
    # epoch (both mid-training); the driver's own output goes to driver.log, shown when the test fails.
    head_cpus = 1 if launch == "auto" else 2
    script.write_text(f"""
import subprocess, sys, time, json, pathlib
from ray.cluster_utils import Cluster
cluster = Cluster(initialize_head=True, head_node_args={{"num_cpus": {head_cpus}}})
worker = cluster.add_node(num_cpus=1)
cluster.wait_for_nodes()
log = open({str(driver_log)!r}, "w")
proc = subprocess.Popen([sys.executable, "-m", "calm_study", "run", {str(path)!r}, "--address", cluster.address],
                        cwd={str(REPO)!r}, stdout=log, stderr=subprocess.STDOUT)
train = pathlib.Path({str(tmp_path / "runs" / "nodes" / "train")!r})
deadline = time.time() + 300
while time.time() < deadline and sum(bool(p.read_text().strip()) for p in train.glob("train-*/metrics.jsonl")) < 2:
    time.sleep(0.5)
cluster.remove_node(worker)
print("node removed", time.strftime("%H:%M:%S"), flush=True)
try:
    code = proc.wait(timeout=480)
except subprocess.TimeoutExpired:
    print("the study did not finish within 480 s of the node removal", flush=True)
    proc.kill()
    code = 99
cluster.shutdown()
sys.exit(code)
""")
    env = {**os.environ, "RAY_TMPDIR": ray_tmp(tmp_path)}
    out = subprocess.run([sys.executable, str(script)], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    driver = driver_log.read_text() if driver_log.exists() else ""
    assert "node removed" in out.stdout, (out.stdout + out.stderr)[-3000:]
    assert out.returncode == 0, out.stdout + "\n--- driver log (tail) ---\n" + driver[-6000:]
    assert "resumed from" in driver  # the lost node's trial went on from its checkpoint
    check_complete(tmp_path, "nodes", trials=2, epochs=4)


def hpo_study(tmp_path, data_cache, name, num_samples):
    from .conftest import TINY

    base = json.loads(json.dumps(TINY))
    base["data"]["cache_dir"] = str(data_cache)
    base["train"]["epochs"] = 3
    study = {"name": name, "base": base, "seeds": [0],
             "search": {"method": "optuna", "num_samples": num_samples, "sampler_seed": 1,
                        # lr_clip over 3 decades: trials differ clearly, so ASHA has something to stop
                        "space": {"optim.lr_clip": {"loguniform": [1e-6, 3e-3]},
                                  "loss.alpha": {"uniform": [0.0, 1.0]}}},
             "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2},
             "resources": {"num_workers": 1, "cpus_per_worker": 0.99, "max_concurrent": 2},
             "storage": str(tmp_path / "runs"), "results_dir": str(tmp_path / "results")}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def test_optuna_with_asha_stops_some_trials_early_and_keeps_their_rows(tmp_path, data_cache):
    import optuna

    path = hpo_study(tmp_path, data_cache, "hpo", num_samples=6)
    out = finish(start(path, tmp_path))
    assert "6 trials" in out and "stopped_early" in out, out[-3000:]
    df = pd.read_parquet(tmp_path / "results" / "hpo")
    per_trial = df.groupby("trial_key").agg(status=("status", "first"), epochs=("epoch", "max"))
    assert len(per_trial) == 6 and set(per_trial.status) <= {"completed", "stopped_early"}
    stopped = per_trial[per_trial.status == "stopped_early"]
    assert len(stopped) >= 1 and (stopped.epochs < 3).all()  # rows kept for the epochs they ran
    assert (per_trial[per_trial.status == "completed"].epochs == 3).all()
    assert df.swept.str.contains("optim.lr_clip").all()
    db = optuna.load_study(study_name="hpo", storage=f"sqlite:///{tmp_path / 'results' / 'hpo' / '_optuna.db'}")
    assert len(db.trials) == 6 and any(t.state.name == "PRUNED" for t in db.trials)


def test_optuna_study_resumes_after_a_driver_kill_with_num_samples_trials(tmp_path, data_cache):
    path = hpo_study(tmp_path, data_cache, "hpo_kill", num_samples=5)
    proc = start(path, tmp_path)
    wait_for(lambda: sum(len(e) for e in epoch_lines(tmp_path, "hpo_kill").values()) >= 3)
    time.sleep(12)  # let Tune snapshot its searcher state once (every ~10 s)
    kill_tree(proc, tmp_path)
    out = finish(start(path, tmp_path))
    assert "resuming study hpo_kill" in out, out[-3000:]
    df = pd.read_parquet(tmp_path / "results" / "hpo_kill")
    assert df.trial_key.nunique() == 5  # exactly num_samples trials in all, none lost, none extra
    assert not df.duplicated(["arm_id", "seed", "epoch", "eval_set"]).any()
    for key, epochs in epoch_lines(tmp_path, "hpo_kill").items():
        assert epochs == list(range(1, len(epochs) + 1)), (key, epochs)  # no epoch logged twice


def test_captioning_study_killed_mid_study_resumes_and_keeps_decoded_samples(tmp_path, data_cache):
    path = write_study(tmp_path, data_cache, "captions", epochs=3,
                       combinations=[{"anchors.count": 0, "loss.align": "none"}, {"anchors.count": 20}],
                       metric={"name": "CIDEr"})
    study = yaml.safe_load(path.read_text())
    study["base"].update(task="captioning", caption={"max_length": 12, "samples": 3})
    study["base"]["model"]["family"] = "captioner"
    path.write_text(yaml.safe_dump(study))
    proc = start(path, tmp_path)
    wait_for(lambda: any(len(e) >= 1 for e in epoch_lines(tmp_path, "captions").values()))
    kill_tree(proc, tmp_path)
    before = epoch_lines(tmp_path, "captions")
    assert all(len(e) < 3 for e in before.values())

    proc = start(path, tmp_path)
    out = finish(proc)
    assert proc.returncode == 0, out[-3000:]
    assert "resuming study captions" in out and "resumed from" in out
    for key, epochs in epoch_lines(tmp_path, "captions").items():
        assert epochs == [1, 2, 3], (key, epochs)
    df = check_complete(tmp_path, "captions", trials=2, epochs=3)
    assert set(df.task) == {"captioning"} and df[["CIDEr", "BLEU4", "METEOR", "ROUGE_L"]].notna().all().all()
    assert df.t2v_R1.isna().all()
    samples = json.loads((tmp_path / "results" / "captions" / "_captions.json").read_text())
    assert set(samples) == set(df.trial_key) and all(s["epoch"] == 3 for s in samples.values())
    assert all(len(v) == 3 for s in samples.values() for v in s["sets"].values())
