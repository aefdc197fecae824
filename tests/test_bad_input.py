"""Bad input: each gets a clear error naming the problem, before any work starts, and no earlier result is touched."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "studies" / "anchor_ablation.yaml"


def cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "calm_study", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=300, **kwargs)


def assert_refused(out, *needles):
    assert out.returncode == 2, out.stdout + out.stderr
    for needle in needles:
        assert needle in out.stderr, (needle, out.stderr)


def test_yaml_syntax_error_names_the_line(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("name: s\nbase:\n  loss: {align: vae\n  train: {}\n")
    assert_refused(cli("validate", f), str(f), "YAML syntax", "line")


def test_unknown_keys_and_wrong_types_are_reported_together():
    assert_refused(cli("validate", STUDY, "--set", "anchors.cout=5", "--set", "train.batch_size=big"),
                   "base.anchors.cout: unknown key (did you mean 'count'?)",
                   "base.train.batch_size: expected an integer, got 'big'")


@pytest.mark.parametrize("key,value,needle", [
    ("loss.alpha", "-0.1", "loss.alpha: -0.1 must be >= 0"),
    ("search.combinations", "[{anchors.count: 200}]", "anchors.count: 200 is more than the 157 labels of source"),
    ("data.num_frames", "0", "data.num_frames: 0 must be >= 1"),
    ("vae.dropout", "1.5", "vae.dropout: 1.5 must be in [0, 1)"),
    ("anchors.tau", "0", "anchors.tau: 0.0 must be > 0"),
])
def test_out_of_range_values(key, value, needle):
    assert_refused(cli("validate", STUDY, "--preset", "demo", "--set", f"{key}={value}"), needle)


def run_refused(tmp_path, *sets):
    """`run` with bad data settings: refused before Ray starts, and an earlier Parquet stays byte-identical."""
    earlier = tmp_path / "results" / "anchor_ablation" / "trials.parquet"
    earlier.parent.mkdir(parents=True)
    pd.DataFrame({"t2v_R1": [42.0]}).to_parquet(earlier)
    before = earlier.read_bytes()
    out = cli("run", STUDY, "--preset", "demo", "--set", f"results_dir={tmp_path / 'results'}",
              "--set", f"storage={tmp_path / 'runs'}", *sets)
    assert earlier.read_bytes() == before
    assert "Started a local Ray instance" not in out.stderr
    return out


def test_missing_dataset_root(tmp_path):
    out = run_refused(tmp_path, "--set", "data.train={dataset: msrvtt, split: train}",
                      "--set", f"data.roots.msrvtt={tmp_path / 'no_such_folder'}")
    assert_refused(out, "data.roots.msrvtt: the folder", "no_such_folder", "does not exist")


def msrvtt_root(tmp_path, test_csv: str | None):
    root = tmp_path / "MSRVTT"
    root.mkdir()
    (root / "MSRVTT_data.json").write_text('{"videos": [], "sentences": []}')
    (root / "MSRVTT_train.9k.csv").write_text("video_id\n")
    if test_csv is not None:
        (root / "MSRVTT_JSFUSION_test.csv").write_text(test_csv)
    return root


def test_missing_split_file(tmp_path):
    root = msrvtt_root(tmp_path, None)
    out = run_refused(tmp_path, "--set", "data.eval=[{name: plain_test, dataset: msrvtt, split: test}]",
                      "--set", f"data.roots.msrvtt={root}")
    assert_refused(out, "msrvtt-test", "MSRVTT_JSFUSION_test.csv")


def test_empty_split(tmp_path):
    root = msrvtt_root(tmp_path, "key,vid_key,video_id,sentence\n")
    out = run_refused(tmp_path, "--set", "data.eval=[{name: plain_test, dataset: msrvtt, split: test}]",
                      "--set", f"data.roots.msrvtt={root}")
    assert_refused(out, "msrvtt-test")
    assert "no videos" in out.stderr or "empty" in out.stderr


def test_storage_that_cannot_be_written(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    out = run_refused(tmp_path, "--set", f"storage={blocker / 'runs'}")
    assert_refused(out, "storage: cannot write to", str(blocker / "runs"))


def test_changed_study_file_is_refused_with_what_changed(tmp_path):
    """A study's manifest is written before Ray starts; re-running with another file says what changed."""
    study = {"name": "c", "base": {"model": {"clip": "calm-tiny", "pretrained": None}},
             "storage": str(tmp_path / "runs"), "results_dir": str(tmp_path / "results")}
    from calm_study.study.spec import expand, load_study
    from calm_study.study.state import StudyStateError, check_same_study

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(study))
    first = load_study(path)
    check_same_study(first, expand(first))
    changed = load_study(path, sets=["loss.alpha=0.5"])
    with pytest.raises(StudyStateError, match=r"base loss.alpha: 0.1 -> 0.5.*--fresh"):
        check_same_study(changed, expand(changed))
    check_same_study(first, expand(first))  # the original file still resumes


def test_unreadable_videos_and_checkpoint_mismatch_are_covered_elsewhere():
    """Named here so the list of bad inputs is complete: see test_real_data.test_a_corrupt_synthetic_video_is_named_
    or_skipped (unreadable videos) and test_train.test_resume_refuses_a_checkpoint_of_another_config."""
    import tests.test_real_data as real
    import tests.test_train as train

    assert hasattr(real, "test_a_corrupt_synthetic_video_is_named_or_skipped")
    assert hasattr(train, "test_resume_refuses_a_checkpoint_of_another_config")


def test_full_disk_while_writing_results_keeps_the_earlier_file(tmp_path):
    """A file-size limit (EFBIG, like ENOSPC) hits the write: a clear error, the earlier Parquet untouched."""
    path = tmp_path / "study" / "trials.parquet"
    from calm_study.study.results import write_parquet_atomic

    write_parquet_atomic(pd.DataFrame({"t2v_R1": [42.0]}), path)
    before = path.read_bytes()
    script = f"""
import resource, signal, sys
import numpy as np, pandas as pd
from pathlib import Path
from calm_study.study.results import write_parquet_atomic
df = pd.DataFrame({{"x": np.random.default_rng(0).normal(size=200_000)}})
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get the error instead of being killed
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
try:
    write_parquet_atomic(df, Path({str(path)!r}))
except OSError as e:
    print(e)
    sys.exit(3)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 3, out.stdout + out.stderr
    assert "could not write the results file" in out.stdout and "earlier results file" in out.stdout
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["trials.parquet"]  # no temporary file left behind
