"""S3 storage against a real S3 API: moto's server on 127.0.0.1, reached through the standard AWS environment
variables only (credentials, region, AWS_ENDPOINT_URL), exactly as a user would point calm_study at a bucket.

Fast tests drive `Storage` and the study-state helpers in this process; the slow one runs a 2-trial study as a CLI
subprocess with `storage: s3://...`, SIGKILLs it after its first logged epoch, resumes it with the same command and
checks the Parquet, `status` and `report`.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
REGION = "us-east-1"


@pytest.fixture(scope="module")
def s3_endpoint():
    """An S3-compatible server (moto) on 127.0.0.1 for this module; yields its http:// endpoint."""
    pytest.importorskip("boto3")
    server_mod = pytest.importorskip("moto.server")
    # Port 0: the OS picks a free port as the server binds it, so no other process can take it in between (and
    # ThreadedMotoServer.start() would wait forever if its bind failed).
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    try:
        deadline = time.time() + 30
        while True:  # start() returns once the socket is bound; wait for an HTTP answer (any status)
            try:
                urllib.request.urlopen(endpoint, timeout=2).close()
                break
            except urllib.error.HTTPError:
                break
            except OSError:
                if time.time() > deadline:
                    pytest.fail(f"moto's S3 server did not answer on {endpoint} within 30 s")
                time.sleep(0.1)
        yield endpoint
    finally:
        server.stop()


def aws_env(endpoint: str) -> dict[str, str]:
    """What a user exports for an S3-compatible endpoint; pyarrow's FileSystem.from_uri (calm_study's and Ray's way
    in) reads AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3), http:// included."""
    return {"AWS_ACCESS_KEY_ID": "calm-test", "AWS_SECRET_ACCESS_KEY": "calm-test-secret",
            "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION, "AWS_ENDPOINT_URL": endpoint,
            # Credentials come from the variables above: never let the SDK probe the EC2 metadata address.
            "AWS_EC2_METADATA_DISABLED": "true"}


@pytest.fixture
def s3(s3_endpoint, monkeypatch):
    """A new empty bucket and the AWS environment of this process pointing at the server; yields a boto3 client."""
    import boto3

    for key in [k for k in os.environ if k.startswith("AWS_")]:  # no profile, config file or other endpoint
        monkeypatch.delenv(key)
    for key, value in aws_env(s3_endpoint).items():
        monkeypatch.setenv(key, value)
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name=REGION)
    client.bucket = f"calm-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=client.bucket)
    return client


def keys(client, prefix: str = "") -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=client.bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def test_storage_reads_writes_appends_and_lists_on_s3(s3):
    from calm_study.study.storage import Storage

    st = Storage(f"s3://{s3.bucket}/runs")
    assert st.is_uri and not st.can_move and st.uri("study", "tune") == f"s3://{s3.bucket}/runs/study/tune"
    log = st.path("study", "train", "train-a-s0", "metrics.jsonl")
    assert not st.exists(log) and st.read_text(log) is None and st.list_names(st.path("study")) == []
    st.append_line(log, '{"epoch": 1}')
    st.append_line(log, '{"epoch": 2}')  # no append on S3: a read and a rewrite
    assert st.read_text(log) == '{"epoch": 1}\n{"epoch": 2}\n'
    body = s3.get_object(Bucket=s3.bucket, Key="runs/study/train/train-a-s0/metrics.jsonl")["Body"].read()
    assert body == b'{"epoch": 1}\n{"epoch": 2}\n'  # really in the bucket, where Ray's processes read it
    st.write_text(log, "replaced\n")
    assert st.read_text(log) == "replaced\n"
    assert st.exists(st.path("study")) and st.exists(st.path("study", "train"))  # prefixes are folders
    assert st.list_names(st.path("study", "train")) == ["train-a-s0"]
    assert abs(st.mtime(log) - time.time()) < 300
    st.makedirs(st.path("study", "empty"))
    assert st.exists(st.path("study", "empty"))
    with pytest.raises(OSError, match="cannot move folders on s3:// storage"):
        st.move(st.path("study"), st.path("elsewhere"))
    st.delete_file(log)
    assert not st.exists(log)


def test_metric_log_repair_on_s3(s3):
    from calm_study.study.storage import Storage

    from .test_results import check_log_repair

    check_log_repair(Storage(f"s3://{s3.bucket}/runs"))


def test_uri_keeps_endpoint_options_for_ray(s3, s3_endpoint, monkeypatch):
    """An endpoint given in the URI instead of the environment travels with every URI handed to Ray."""
    from calm_study.study.storage import Storage

    monkeypatch.delenv("AWS_ENDPOINT_URL")
    query = f"?endpoint_override={s3_endpoint.removeprefix('http://')}&scheme=http"
    st = Storage(f"s3://{s3.bucket}/runs{query}")
    assert st.root == f"{s3.bucket}/runs" and st.uri("s", "train") == f"s3://{s3.bucket}/runs/s/train{query}"
    st.write_text(st.path("s", "x.txt"), "hi")
    assert Storage(st.uri("s")).read_text(f"{s3.bucket}/runs/s/x.txt") == "hi"  # what Ray re-opens: same server
    assert keys(s3, "runs/s/") == ["runs/s/", "runs/s/x.txt"]


def test_check_writable_on_s3_leaves_nothing_behind(s3):
    from calm_study.study.state import StudyStateError, check_writable
    from calm_study.study.storage import Storage

    st = Storage(f"s3://{s3.bucket}/deep/runs")
    check_writable(st, st.path("study"), "storage")
    assert keys(s3) == []  # the probe and every folder marker it made are gone again
    s3.put_object(Bucket=s3.bucket, Key="deep/keep.txt", Body=b"x")
    check_writable(st, st.path("study"), "storage")
    # Only what the check created is removed (pyarrow may leave an empty marker "deep/" for the existing folder).
    assert [k for k in keys(s3) if k != "deep/"] == ["deep/keep.txt"]
    missing = Storage(f"s3://{s3.bucket}-missing/runs")
    with pytest.raises(StudyStateError, match=f"the bucket '{s3.bucket}-missing' does not exist at http://127.0.0.1"):
        check_writable(missing, missing.path("study"), "storage")


def test_an_endpoint_where_nothing_answers_is_one_paragraph(s3, monkeypatch):
    from calm_study.study.state import StudyStateError, check_writable
    from calm_study.study.storage import Storage, StorageError

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")  # a closed port: refused at once
    closed = Storage(f"s3://{s3.bucket}/runs")
    with pytest.raises(StorageError, match="nothing answers at http://127.0.0.1:1; check that the server runs"):
        closed.exists(closed.path("study"))
    with pytest.raises(StudyStateError, match=f"storage: 's3://{s3.bucket}/runs': nothing answers at"):
        check_writable(closed, closed.path("study"), "storage")


def test_fresh_on_s3_is_refused_before_anything_moves(s3, tmp_path, tiny_doc):
    from calm_study.study.spec import load_study
    from calm_study.study.state import StudyStateError, archive

    path = tmp_path / "s.yaml"
    results = tmp_path / "results"
    path.write_text(yaml.safe_dump({"name": "s", "base": tiny_doc, "storage": f"s3://{s3.bucket}/runs",
                                    "results_dir": str(results)}))
    study = load_study(path)
    (results / "s").mkdir(parents=True)
    (results / "s" / "trials.parquet").write_bytes(b"earlier")
    # Nothing in the bucket yet: only the local results are archived, and the bucket stays untouched.
    target = archive(study)
    assert target and (Path(target) / "results" / "trials.parquet").read_bytes() == b"earlier" and keys(s3) == []
    s3.put_object(Bucket=s3.bucket, Key="runs/s/manifest.json", Body=b"{}")
    (results / "s").mkdir(parents=True)
    (results / "s" / "trials.parquet").write_bytes(b"second")
    with pytest.raises(StudyStateError, match=r"--fresh: s3://.*/runs/s cannot be archived.*--set name="):
        archive(study)
    assert keys(s3) == ["runs/s/manifest.json"]  # no archive folder made, nothing moved
    assert (results / "s" / "trials.parquet").read_bytes() == b"second"


# --- the study, end to end through Ray --------------------------------------------------------------------------


def _proc_environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def run_processes(session: int, ray_tmp: str) -> list[int]:
    """PIDs of the run's processes: in the driver's session, or (Ray daemons, workers) carrying its RAY_TMPDIR."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        try:
            mine = os.getsid(pid) == session
        except OSError:
            continue  # already gone
        if mine or _proc_environ(pid).get("RAY_TMPDIR") == ray_tmp:
            pids.append(pid)
    return pids


def kill_run(proc: subprocess.Popen, ray_tmp: str) -> None:
    """SIGKILL the driver's session, then, by PID, every process of this run that left it (docs/ray.md, "After a
    driver kill"); return once none is left. Other Ray instances on the machine are not touched."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)
    deadline = time.time() + 60
    while left := run_processes(proc.pid, ray_tmp):
        assert time.time() < deadline, f"processes of the killed run still alive: {left}"
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)


def logged_epochs(client, prefix: str) -> dict[str, list[int]]:
    """{trial key: [logged epochs]} from the metrics.jsonl objects in the bucket."""
    out = {}
    for key in keys(client, prefix):
        if key.endswith("/metrics.jsonl"):
            text = client.get_object(Bucket=client.bucket, Key=key)["Body"].read().decode()
            out[key.split("/")[-2].removeprefix("train-")] = [json.loads(line)["epoch"] for line in text.splitlines()]
    return out


@pytest.mark.slow
def test_study_on_s3_killed_mid_study_resumes_and_reports(s3, s3_endpoint, tmp_path, data_cache):
    from .conftest import lose_latest_epoch_line, two_trial_study

    study = two_trial_study("s3study", f"s3://{s3.bucket}/runs", str(tmp_path / "results"), str(data_cache), epochs=3)
    path = tmp_path / "s3study.yaml"
    path.write_text(yaml.safe_dump(study))
    train_prefix = "runs/s3study/train/"
    # The bucket is reached through the standard AWS variables only (no endpoint in the study file); Ray's daemons
    # and workers inherit them from the driver. A short RAY_TMPDIR of this test's own marks the run's processes.
    ray_tmp = tempfile.mkdtemp(prefix="calm-s3-", dir="/tmp")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")}, **aws_env(s3_endpoint),
           "RAY_TMPDIR": ray_tmp, "RAY_USAGE_STATS_ENABLED": "0"}
    cmd = [sys.executable, "-m", "calm_study"]

    def cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
        return subprocess.run(cmd + list(args), cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)

    proc = None
    try:
        with open(tmp_path / "first.log", "w") as log:
            proc = subprocess.Popen(cmd + ["run", str(path)], cwd=REPO, env=env, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 600
        while not any(logged_epochs(s3, train_prefix).values()):  # an epoch of a trial, in the bucket
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-4000:]
            assert time.time() < deadline, "no epoch logged in the bucket within 600 s"
            time.sleep(0.5)
        kill_run(proc, ray_tmp)
        before = logged_epochs(s3, train_prefix)
        assert before and all(len(e) < 3 for e in before.values()), before  # killed mid-study
        assert any(k.endswith("/tuner.pkl") for k in keys(s3, "runs/s3study/tune/"))  # Tune's experiment is there

        # The kill can land between Ray Train registering an epoch's checkpoint and the epoch's log line (it did in
        # CI once). Make that state certain for one trial.
        lost_key = next(k for k, e in before.items() if e)
        resumed = lose_latest_epoch_line(f"s3://{s3.bucket}/runs", "s3study", lost_key)
        before[lost_key] = [e for e in before[lost_key] if e < resumed]

        status = cli("status", str(path))
        assert status.returncode == 0, status.stdout + status.stderr
        assert "study s3study: 2 trials" in status.stdout and "completed" not in status.stdout.splitlines()[0]

        again = cli("run", str(path), timeout=900)
        out = again.stdout + again.stderr
        assert again.returncode == 0, out[-4000:]
        assert "resuming study s3study" in out  # Tuner.restore from the bucket
        assert "resumed from" in out  # the interrupted trial went on from its checkpoint in the bucket
        assert f"[{lost_key}] logged epoch {resumed} again from its checkpoint" in out, out[-4000:]
        after = logged_epochs(s3, train_prefix)
        assert len(after) == 2
        for key, epochs in after.items():
            assert epochs == [1, 2, 3], (key, epochs)  # every epoch logged once
            assert epochs[:len(before.get(key, []))] == before.get(key, [])
            assert any(k.endswith("/state.pt") for k in keys(s3, f"{train_prefix}train-{key}/checkpoint_"))

        df = pd.read_parquet(tmp_path / "results" / "s3study")
        assert len(df) == 2 * 3 * 2  # trials x epochs x evaluation sets
        assert not df.duplicated(["arm_id", "seed", "epoch", "eval_set"]).any()
        assert set(df.status) == {"completed"} and set(df.trial_key) == set(after)
        assert sorted(df.drop_duplicates("arm_id").anchors_count) == [0, 20]

        status = cli("status", str(path))
        assert status.returncode == 0, status.stdout + status.stderr
        assert "study s3study: 2 trials: 2 completed" in status.stdout and "best epoch so far" in status.stdout
        report = cli("report", str(path))
        assert report.returncode == 0, report.stdout + report.stderr
        assert "report: " in report.stdout and (tmp_path / "results" / "s3study" / "_report" / "report.md").is_file()
    finally:
        if proc is not None and proc.poll() is None:
            kill_run(proc, ray_tmp)
        for pid in run_processes(-1, ray_tmp):  # anything of the second run that outlived it
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_checkpoints_of_in_process_trials_on_s3(s3, tmp_path):
    from calm_study.study.storage import Storage

    from .test_checkpoints import check_store_latest_prune

    check_store_latest_prune(Storage(f"s3://{s3.bucket}/runs"), tmp_path)
