"""Parquet rows from metric logs: keys, de-duplication of re-run epochs, config columns, atomic writes, and
results/ read as one dataset partitioned by study."""

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from calm_study.study.results import (
    SCHEMA_VERSION,
    build_results,
    conform,
    load,
    loss_terms,
    read_metric_log,
    results_path,
    studies,
    write_parquet_atomic,
)
from calm_study.study.spec import expand, load_study

REPO = Path(__file__).resolve().parents[1]

STUDY = """
name: r
base:
  model: {clip: calm-tiny, pretrained: null}
  data:
    eval: [{name: a, domain: plain}, {name: b, domain: textured}]
  train: {epochs: 2}
search:
  combinations: [{anchors.count: 0, loss.align: none}, {anchors.count: 157}]
"""


def epoch_record(epoch, r1, status="running", **terms):
    return {"epoch": epoch, "loss_total": 1.0 / epoch, "train_s": 2.0, "status": status,
            "eval/a/t2v_R1": r1, "eval/b/t2v_R1": r1 / 2, "checkpoint": f"/ck/{epoch}", **terms}


def test_metric_log_keeps_the_last_line_of_a_repeated_epoch_and_skips_a_torn_line(tmp_path):
    log = tmp_path / "metrics.jsonl"
    lines = [epoch_record(1, 10.0), epoch_record(2, 20.0), epoch_record(2, 25.0, "completed")]
    log.write_text("\n".join(json.dumps(x) for x in lines) + '\n{"epoch": 3, "eval/a')
    got = read_metric_log(log)
    assert [r["epoch"] for r in got] == [1, 2] and got[1]["eval/a/t2v_R1"] == 25.0
    assert read_metric_log(tmp_path / "missing.jsonl") == []


def test_rows_per_trial_epoch_and_eval_set(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text(STUDY)
    study = load_study(f)
    trials = expand(study)
    logs = {trials[0].key: [epoch_record(1, 10.0), epoch_record(2, 20.0, "completed")],
            trials[1].key: [epoch_record(1, 30.0)]}
    df = build_results(study, trials, logs, {trials[0].key: "completed", trials[1].key: "error"})
    assert len(df) == (2 + 1) * 2
    assert not df.duplicated(["arm_id", "seed", "epoch", "eval_set"]).any()
    row = df[(df.trial_key == trials[0].key) & (df.epoch == 2) & (df.eval_set == "b")].iloc[0]
    assert row.t2v_R1 == 10.0 and row.status == "completed" and row.anchors_count == trials[0].config.anchors.count
    assert row.loss_align == trials[0].config.loss.align and row.study == "r" and row.schema_version == SCHEMA_VERSION
    assert df.drop_duplicates("arm_id").arm_index.tolist() == [0, 1]  # the study file's order
    assert set(df[df.trial_key == trials[1].key].status) == {"error"}
    assert {"anchors_source", "anchors_tau", "loss_alpha", "vae_latent_dim", "seed", "train_s", "data_train"} <= set(df)


def test_parquet_is_written_atomically_and_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "study" / "trials.parquet"
    write_parquet_atomic(pd.DataFrame({"x": [1, 2]}), path)
    assert pd.read_parquet(path.parent).x.tolist() == [1, 2]
    with pytest.raises((TypeError, ValueError, ArithmeticError, pa.ArrowException)):
        write_parquet_atomic(pd.DataFrame({"x": [object()]}), path)  # not serialisable
    assert pd.read_parquet(path).x.tolist() == [1, 2]
    assert [p.name for p in path.parent.iterdir()] == ["trials.parquet"]  # no temporary file left behind


def study_results(tmp_path, name, combinations, log_terms):
    """A study's frame as the runner writes it: every trial completed, with the given training terms logged."""
    f = tmp_path / f"{name}.yaml"
    f.write_text(STUDY.replace("name: r", f"name: {name}").replace(
        "combinations: [{anchors.count: 0, loss.align: none}, {anchors.count: 157}]", f"combinations: {combinations}")
        + f"results_dir: {tmp_path / 'results'}\n")
    study = load_study(f)
    trials = expand(study)
    logs = {t.key: [epoch_record(1, 10.0, **log_terms), epoch_record(2, 20.0, "completed", **log_terms)]
            for t in trials}
    df = build_results(study, trials, logs, dict.fromkeys(logs, "completed"))
    write_parquet_atomic(df, results_path(study))
    return df


def test_results_folder_reads_as_one_dataset_partitioned_by_study(tmp_path):
    # Different studies log different terms (kl vs vae) and leave different columns null: the files still agree.
    kl = study_results(tmp_path, "losses", "[{loss.align: kl}]", {"loss_align": 0.5})
    vae = study_results(tmp_path, "anchors", "[{anchors.count: 0, loss.align: none}, {anchors.count: 20}]",
                        {"loss_align_rec": 1.5, "loss_align_kl": 0.1})
    root = tmp_path / "results"
    (root / "_README.md").write_text("# columns")  # what sits next to the studies in the repository
    (root / "anchors" / "_report").mkdir()
    (root / "anchors" / "_report" / "report.md").write_text("# a report")
    everything = pd.read_parquet(root)
    assert len(everything) == len(kl) + len(vae) and set(everything.study) == {"losses", "anchors"}
    assert list(everything.columns) == list(kl.columns) == list(vae.columns)
    assert set(everything[everything.study == "losses"].loss_align_dist) == {0.5}  # not overwritten by the config
    assert set(everything[everything.study == "losses"].loss_align) == {"kl"}
    assert everything[everything.study == "losses"].loss_align_rec.isna().all()
    assert everything[everything.study == "anchors"].loss_align_kl.notna().all()
    assert len(pd.read_parquet(root / "anchors")) == len(vae)  # one study, the report folder is skipped

    assert studies(root) == ["anchors", "losses"]
    tidy = load("anchors", root)
    pd.testing.assert_frame_equal(tidy, vae)
    assert tidy.arm_index.is_monotonic_increasing and (tidy.schema_version == SCHEMA_VERSION).all()
    assert len(load(results_dir=root)) == len(everything)
    with pytest.raises(FileNotFoundError, match="no results for study 'nope'.*anchors, losses"):
        load("nope", root)


def test_a_study_with_the_support_term_keeps_it_when_read_with_others(tmp_path):
    """T-MASS's support term is declared by its family's registry entry, so every file carries loss_support: read
    together with a study that never logs it (and sorts first), the column and its values survive."""
    assert "support" in loss_terms()
    plain = study_results(tmp_path, "a_plain", "[{loss.align: none}]", {})
    support = study_results(tmp_path, "z_tmass", "[{model.family: tmass, model.support_weight: 0.8}]",
                            {"loss_support": 0.3})
    everything = pd.read_parquet(tmp_path / "results")
    assert list(plain.columns) == list(support.columns) and "loss_support" in everything.columns
    assert set(everything[everything.study == "z_tmass"].loss_support) == {0.3}
    assert everything[everything.study == "a_plain"].loss_support.isna().all()


def test_load_brings_an_older_file_to_the_current_schema(tmp_path):
    old = pd.DataFrame({"schema_version": [1], "study": ["s"], "arm_id": ["x"], "seed": [0], "epoch": [1],
                        "epochs": [1], "eval_set": ["a"], "t2v_R1": [12.5]})
    write_parquet_atomic(old, tmp_path / "s" / "trials.parquet")
    df = load("s", tmp_path)
    assert list(df.columns) == list(conform(pd.DataFrame()).columns)
    assert df.t2v_R1.tolist() == [12.5] and df.arm_index.isna().all() and df.schema_version.tolist() == [1]
    newer = old.assign(schema_version=SCHEMA_VERSION + 1)
    write_parquet_atomic(newer, tmp_path / "s" / "trials.parquet")
    with pytest.raises(ValueError, match="update calm_study"):
        load("s", tmp_path)


def test_every_column_is_documented():
    documented = (REPO / "results" / "_README.md").read_text()
    columns = conform(pd.DataFrame()).columns
    missing = [c for c in columns if f"`{c}`" not in documented and not c.startswith("data_synthetic_")]
    assert not missing, f"columns missing from results/_README.md: {missing}"
    assert not (REPO / "results" / "README.md").exists()  # it would make pd.read_parquet('results') fail


def test_a_results_file_of_schema_2_reads_beside_a_current_one(tmp_path):
    """Two rows written by calm_study 0.1 (schema 2, before task/model_family/lr_new): `pd.read_parquet('results')`
    reads both studies at once in either file order, and `load` brings the old rows to the current columns."""
    import shutil

    from calm_study.study.results import SCHEMA_VERSION, conform, load

    old = pd.read_parquet(REPO / "tests" / "data" / "schema2_trials.parquet")
    assert set(old.schema_version) == {2} and "model_family" not in old
    new = conform(old.assign(schema_version=SCHEMA_VERSION, study="new", task="retrieval",
                             model_family="clip4clip", lr_new=1e-5))
    for old_name, new_name in (("a_old", "b_new"), ("b_old", "a_new")):
        root = tmp_path / old_name[0]
        (root / old_name).mkdir(parents=True)
        (root / new_name).mkdir()
        shutil.copy(REPO / "tests" / "data" / "schema2_trials.parquet", root / old_name / "trials.parquet")
        new.to_parquet(root / new_name / "trials.parquet", index=False)
        both = pd.read_parquet(root)
        assert len(both) == 4 and set(both.schema_version) == {2, SCHEMA_VERSION}
        loaded = load(old_name, results_dir=root)
        assert loaded.model_family.isna().all() and loaded.t2v_R1.tolist() == old.t2v_R1.tolist()


def test_repair_metric_log_relogs_a_checkpointed_epoch_the_log_lost_and_drops_a_torn_line(tmp_path):
    from calm_study.study.storage import Storage

    check_log_repair(Storage(str(tmp_path / "runs")))  # tests/test_s3.py runs the same checks on a bucket


def check_log_repair(storage) -> None:
    """A crash after Ray Train registered epoch 2's checkpoint but before its log line was (fully) written: the
    resumed run logs epoch 2 from the checkpoint's record, once, and later appends are readable lines."""
    from calm_study.study.results import parse_metric_log, repair_metric_log

    log = storage.path("st", "train", "train-a-s0", "metrics.jsonl")
    one, two, three = (json.dumps(epoch_record(e, 10.0 * e)) for e in (1, 2, 3))

    assert repair_metric_log(storage, log, None) == [] and storage.read_text(log) is None  # a new run: nothing
    storage.write_text(log, one + "\n" + two[:25])  # epoch 2's line cut short by the crash
    done = repair_metric_log(storage, log, json.loads(two))
    assert len(done) == 2 and "cut short" in done[0] and "epoch 2 again" in done[1]
    assert storage.read_text(log) == one + "\n" + two + "\n"
    assert repair_metric_log(storage, log, json.loads(two)) == []  # logged now: nothing to do, nothing rewritten
    storage.append_line(log, three)  # the resumed run's next epoch
    assert [r["epoch"] for r in parse_metric_log(storage.read_text(log))] == [1, 2, 3]
    assert storage.read_text(log).count('"epoch": 2') == 1

    storage.write_text(log, one + "\n")  # killed in the window with the log intact: the line is simply missing
    assert repair_metric_log(storage, log, json.loads(two)) == [
        "logged epoch 2 again from its checkpoint (a crash had lost its log line)"]
    assert [r["epoch"] for r in parse_metric_log(storage.read_text(log))] == [1, 2]

    storage.write_text(log, one + "\n" + two)  # a whole last record without its newline (edited by hand): kept
    assert repair_metric_log(storage, log, json.loads(two)) == [] and storage.read_text(log) == one + "\n" + two + "\n"
    damaged = one + "\n{garbage\n" + two + "\n"  # a damaged line in the middle: left for the results rebuild to name
    storage.write_text(log, damaged)
    said = repair_metric_log(storage, log, json.loads(three))
    assert len(said) == 1 and said[0].startswith("metric log not repaired") and "line 2" in said[0]
    assert storage.read_text(log) == damaged
