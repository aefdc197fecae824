"""study/checkpoints.py: a trial's checkpoints in its run folder when it trains in its Tune trial's own process."""

import json
import os
from pathlib import Path

from calm_study.names import EPOCH_RECORD_FILE
from calm_study.study import checkpoints
from calm_study.study.storage import Storage


def checkpoint_folder(tmp_path: Path, epoch: int) -> Path:
    """What fit() hands its reporter: a folder with the state file and the epoch's record."""
    folder = tmp_path / f"fit-{epoch}"
    (folder / "sub").mkdir(parents=True)
    (folder / "state.pt").write_bytes(bytes([epoch]) * 1000)
    (folder / "sub" / "extra.bin").write_bytes(b"x" * epoch)
    (folder / EPOCH_RECORD_FILE).write_text(json.dumps({"epoch": epoch}))
    return folder


def check_store_latest_prune(storage: Storage, tmp_path: Path) -> None:
    """Shared by the local test here and the S3 test (tests/test_s3.py)."""
    run = storage.path("study", "train", "train-a-s0")
    assert checkpoints.latest(storage, run) is None  # nothing stored yet: start from scratch
    scores = {1: 0.5, 2: 0.9, 3: 0.7}  # epoch 2 is the best by the validation metric
    for epoch, score in scores.items():
        path = checkpoints.store(storage, run, checkpoint_folder(tmp_path, epoch),
                                 {"epoch": epoch, "eval/val/R1": score})
        checkpoints.prune(storage, run, "eval/val/R1")
        assert checkpoints.latest(storage, run).path == path
    kept = checkpoints.stored(storage, run)
    assert [c.record["epoch"] for c in kept] == [2, 3]  # the best and the latest, as Ray Train keeps them
    with checkpoints.local_folder(storage, kept[-1]) as folder:
        assert (folder / "state.pt").read_bytes() == bytes([3]) * 1000
        assert (folder / "sub" / "extra.bin").read_bytes() == b"xxx"
        assert json.loads((folder / EPOCH_RECORD_FILE).read_text())["epoch"] == 3
    checkpoints.prune(storage, run, None)  # no validation set: only the latest
    assert [c.record["epoch"] for c in checkpoints.stored(storage, run)] == [3]
    # A checkpoint without its record (a crash mid-copy) is not resumed from, even with a higher epoch.
    storage.write_text(storage.path("study", "train", "train-a-s0", "checkpoint_000004", "state.pt"), "half")
    assert checkpoints.latest(storage, run).record["epoch"] == 3
    # Ray Train's own checkpoints (named by time) carry the same record: a study begun with launch: ray_train resumes.
    ray_parts = ("study", "train", "train-a-s0", "checkpoint_2026-12-07_03-00-00.000000")
    ray_ckpt = storage.path(*ray_parts)
    storage.write_text(storage.path(*ray_parts, "state.pt"), "ray")
    storage.write_text(storage.path(*ray_parts, EPOCH_RECORD_FILE), json.dumps({"epoch": 5}))
    assert checkpoints.latest(storage, run).path == ray_ckpt


def test_store_latest_prune_locally(tmp_path):
    check_store_latest_prune(Storage(str(tmp_path / "runs")), tmp_path)


def test_store_latest_prune_on_a_file_uri(tmp_path):
    check_store_latest_prune(Storage(f"file://{tmp_path / 'runs'}"), tmp_path)


def test_the_same_epoch_stored_twice_keeps_the_newer_and_staging_leftovers_go(tmp_path):
    storage = Storage(str(tmp_path / "runs"))
    run = storage.path("s", "train", "train-a-s0")
    checkpoints.store(storage, run, checkpoint_folder(tmp_path, 1), {"epoch": 1, "try": 1})
    os.makedirs(os.path.join(run, checkpoints.STAGING_PREFIX + "crashed"))  # a copy a crash interrupted
    again = tmp_path / "again"
    (again).mkdir()
    (again / "state.pt").write_bytes(b"second")
    path = checkpoints.store(storage, run, again, {"epoch": 1, "try": 2})  # epoch 1 retrained after a crash
    checkpoints.prune(storage, run, None)
    assert checkpoints.latest(storage, run).record["try"] == 2
    assert Path(path, "state.pt").read_bytes() == b"second"
    assert sorted(os.listdir(run)) == ["checkpoint_000001"]
