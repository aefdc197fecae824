"""cluster/slurm/calm_study.sbatch on a real SLURM (Debian's slurm-wlm: slurmctld and two slurmd on this machine,
munge for authentication), started and stopped by this module. A 2-trial CPU study is submitted with sbatch over two
nodes; it is preempted twice mid-study: first as SLURM does before a time limit (the batch shell gets the warning
signal, SIGUSR1, and the script stops the study and requeues the job itself), then by `scontrol requeue` (SLURM kills
the job outright and puts it back in the queue). The requeued runs resume the study; at the end every (trial, epoch,
evaluation set) has exactly one row and every epoch was logged once.

.ci/run installs slurm-wlm and munge; where their daemons are missing (or not root) the module is skipped, saying so.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "cluster" / "slurm" / "calm_study.sbatch"
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "scontrol", "squeue", "scancel")
SBIN = os.pathsep.join(["/usr/sbin", "/sbin", os.environ.get("PATH", "")])  # root's daemons live in sbin
EPOCHS = 8

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(any(shutil.which(d, path=SBIN) is None for d in DAEMONS),
                       reason="SLURM is not installed here (apt-get install slurm-wlm munge; .ci/run does): "
                       f"missing {[d for d in DAEMONS if shutil.which(d, path=SBIN) is None]}"),
    pytest.mark.skipif(os.name != "posix" or os.geteuid() != 0,
                       reason="slurmd starts jobs as their users: the test cluster runs as root"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slurm_conf(root: Path, host: str, cpus: int) -> str:
    """Two SLURM nodes (n1, n2) on this machine, each with its own slurmd and port; no cgroups, no accounting.
    cred_expire: a requeued job waits that long before it starts again (SLURM's default, 120 s, would only make the
    test slower; a shorter wait fails, slurmd still holding the job's revoked credential)."""
    ctld, n1, n2 = free_port(), free_port(), free_port()
    return f"""ClusterName=calmtest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge.sock,cred_expire=10
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd-%n.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobRequeue=1
FirstJobId={1000 + os.getpid() % 90000}
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
KillWait=10
NodeName=n1 NodeHostname={host} NodeAddr=127.0.0.1 Port={n1} CPUs={cpus} State=UNKNOWN
NodeName=n2 NodeHostname={host} NodeAddr=127.0.0.1 Port={n2} CPUs={cpus} State=UNKNOWN
PartitionName=test Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
"""


class Slurm:
    """The test cluster: its environment for the client commands (SLURM_CONF) and a few queries."""

    def __init__(self, root: Path):
        self.root = root
        self.env = {**os.environ, "SLURM_CONF": str(root / "slurm.conf"), "PATH": SBIN}

    def cmd(self, *args: str, check: bool = True) -> str:
        out = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=60)
        if check and out.returncode != 0:
            raise RuntimeError(f"{' '.join(args)}: {out.stderr or out.stdout}")
        return out.stdout

    def job(self, job: str) -> dict[str, str]:
        """`scontrol show job`'s fields (JobState, Restarts, ExitCode, ...)."""
        text = self.cmd("scontrol", "show", "job", "-o", job, check=False)
        return dict(re.findall(r"(\w+)=(\S*)", text))

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted(self.root.glob("*.log")))


@pytest.fixture(scope="module")
def slurm():
    root = Path(tempfile.mkdtemp(prefix="calm-slurm-", dir="/tmp"))  # short: munge's socket path
    for sub in ("state", "spool"):
        (root / sub).mkdir()
    (root / "munge.key").write_bytes(os.urandom(128))
    os.chmod(root / "munge.key", 0o600)
    host = socket.gethostname().split(".")[0]
    (root / "slurm.conf").write_text(slurm_conf(root, host, os.cpu_count() or 1))
    cluster = Slurm(root)
    daemons = [["munged", "--force", f"--socket={root}/munge.sock", f"--key-file={root}/munge.key",
                f"--log-file={root}/munged.log", f"--pid-file={root}/munged.pid", f"--seed-file={root}/munged.seed"],
               ["slurmctld", "-f", str(root / "slurm.conf"), "-i"],
               ["slurmd", "-f", str(root / "slurm.conf"), "-N", "n1"],
               ["slurmd", "-f", str(root / "slurm.conf"), "-N", "n2"]]
    try:
        for argv in daemons:  # each forks into the background and writes its pid file
            subprocess.run(argv, env=cluster.env, check=True, timeout=60, capture_output=True)
        deadline = time.time() + 60
        while cluster.cmd("sinfo", "-h", "-o", "%T %D", check=False).split() != ["idle", "2"]:
            assert time.time() < deadline, "the test SLURM's nodes did not become idle\n" + cluster.logs()
            time.sleep(1)
        yield cluster
    finally:
        cluster.cmd("scancel", "--partition=test", check=False)
        time.sleep(2)
        for name in ("slurmd-n1", "slurmd-n2", "slurmctld", "munged"):
            pid_file = root / f"{name}.pid"
            if pid_file.exists():
                try:
                    os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)
                except (ProcessLookupError, ValueError):
                    pass
        time.sleep(2)
        shutil.rmtree(root, ignore_errors=True)


def epoch_lines(storage: Path, name: str) -> dict[str, list[int]]:
    """{trial key: [logged epochs]} from the durable per-epoch logs."""
    out = {}
    for log in (storage / name / "train").glob("train-*/metrics.jsonl"):
        out[log.parent.name[len("train-"):]] = [json.loads(line)["epoch"] for line in log.read_text().splitlines()
                                                if line.strip()]
    return out


def wait_for(condition, what: str, cluster: Slurm, job_log: Path, timeout: float = 420):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.5)
    log = job_log.read_text(errors="replace")[-6000:] if job_log.exists() else "(no job log)"
    raise AssertionError(f"timed out waiting for {what}\n--- job log ---\n{log}\n{cluster.logs()}")


def test_sbatch_study_survives_a_warning_signal_and_a_requeue(slurm: Slurm, tmp_path, data_cache):
    from .conftest import two_trial_study

    storage, results = tmp_path / "runs", tmp_path / "results"
    study = two_trial_study("slurm", str(storage), str(results), str(data_cache), epochs=EPOCHS)
    path = tmp_path / "slurm.yaml"
    path.write_text(yaml.safe_dump(study))
    ray_tmp = tempfile.mkdtemp(prefix="calm-ray-", dir="/tmp")  # short: Ray's socket paths
    env = {**slurm.env, "CALM_PYTHON": sys.executable, "CALM_RAY_HEAD_IP": "127.0.0.1",
           "CALM_RAY_PORT": str(free_port()), "CALM_DASHBOARD_PORT": str(free_port()), "CALM_RAY_TMPDIR": ray_tmp,
           # two Ray nodes on one machine: each dashboard agent takes a free port instead of Ray's fixed default
           "CALM_RAY_START_ARGS": "--dashboard-agent-listen-port=0", "CALM_WAIT_NODES_S": "120",
           "PATH": os.pathsep.join([os.path.dirname(sys.executable), SBIN])}
    job_log = tmp_path / "job.log"
    submitted = subprocess.run(["sbatch", "--parsable", "--nodes=2", f"--cpus-per-task={os.cpu_count() or 1}",
                                f"--output={job_log}", f"--chdir={REPO}", str(SCRIPT), str(path)],
                               env=env, capture_output=True, text=True, timeout=60)
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip().split(";")[0]
    scratch = Path(f"/tmp/calm_study-{job}")  # the script's node-local scratch (no $SLURM_TMPDIR here)
    try:
        cache_seen = []

        def logged() -> int:
            if not cache_seen and any((scratch / "frames").rglob("*.npz")):
                cache_seen.append(True)  # a trial read its frames through the cache on node-local scratch
            return sum(len(e) for e in epoch_lines(storage, "slurm").values())

        def requeued(restarts: int) -> bool:
            info = slurm.job(job)
            return info.get("Restarts") == str(restarts) and info.get("JobState") in ("PENDING", "RUNNING")

        # Run 1: the warning signal SLURM sends the batch shell before a time limit (--signal=B:USR1@...).
        wait_for(lambda: logged() >= 1, "the first logged epoch", slurm, job_log)
        slurm.cmd("scancel", "--signal=USR1", "--batch", job)
        wait_for(lambda: requeued(1), f"job {job} requeued once", slurm, job_log)
        first = epoch_lines(storage, "slurm")
        assert sum(len(e) for e in first.values()) < 2 * EPOCHS, first  # stopped mid-study

        # Run 2: resumed; once it has logged an epoch of its own, SLURM requeues it with no warning at all.
        wait_for(lambda: logged() > sum(len(e) for e in first.values()), "an epoch logged by run 2", slurm, job_log)
        slurm.cmd("scontrol", "requeue", job)
        wait_for(lambda: requeued(2), f"job {job} requeued twice", slurm, job_log)
        second = epoch_lines(storage, "slurm")
        assert sum(len(e) for e in second.values()) < 2 * EPOCHS, second

        # Run 3 finishes the study.
        wait_for(lambda: slurm.job(job).get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"),
                 f"job {job} to end", slurm, job_log, timeout=600)
        info, text = slurm.job(job), job_log.read_text(errors="replace")
        assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", (info, text[-6000:])
        assert info["Restarts"] == "2"

        assert "warning signal: stopping the study, then requeueing this job" in text
        assert f"requeueing job {job}: the requeued run continues the study" in text
        assert all(f"[job {job}, run {n}," in text for n in (1, 2, 3))
        assert text.count("resuming study slurm from") == 2  # runs 2 and 3 restored the Tune experiment
        assert "resumed from" in text  # a trial went on from its checkpoint

        final = epoch_lines(storage, "slurm")
        assert len(final) == 2
        for key, epochs in final.items():
            assert epochs == list(range(1, EPOCHS + 1)), (key, epochs)  # every epoch logged once: none trained twice
            for before in (first, second):  # what an interrupted run had logged stays as it was
                assert epochs[:len(before.get(key, []))] == before.get(key, [])
        df = pd.read_parquet(results / "slurm")
        assert len(df) == 2 * EPOCHS * 2  # trials x epochs x evaluation sets
        assert not df.duplicated(["arm_id", "seed", "epoch", "eval_set"]).any()
        assert set(df.status) == {"completed"}

        assert cache_seen, f"no frame cache entry ever appeared in {scratch}/frames"
        assert not scratch.exists()  # the finished job removed its node-local scratch
        leftover = subprocess.run(["pgrep", "-f", ray_tmp], capture_output=True, text=True).stdout.split()
        assert not leftover, f"Ray processes of the job still running: {leftover}"  # Ray was stopped on both nodes
    finally:  # a failed run leaves its scratch (the script keeps it for a requeue) and Ray's temp folder
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(ray_tmp, ignore_errors=True)
