"""Parquet rows from metric logs: keys, de-duplication of re-run epochs, config columns, atomic writes."""

import json

import pandas as pd
import pyarrow as pa
import pytest

from calm_study.results import build_results, read_metric_log, write_parquet_atomic
from calm_study.study import expand, load_study

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


def epoch_record(epoch, r1, status="running"):
    return {"epoch": epoch, "loss_total": 1.0 / epoch, "train_s": 2.0, "status": status,
            "eval/a/t2v_R1": r1, "eval/b/t2v_R1": r1 / 2, "checkpoint": f"/ck/{epoch}"}


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
    assert row.loss_align == trials[0].config.loss.align and row.study == "r" and row.schema_version == 1
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
