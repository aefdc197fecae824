"""Captioning reports (the paper's Tables 4-5 layout) from hand-built results with known numbers.

Four arms (baseline captioner and CALM, each trained on MSR-VTT and on MSVD), three seeds, three epochs, four
evaluation sets per trial (each dataset's validation and test split). Test-set CIDEr at the final epoch is chosen
per seed (FINAL); the other metrics are fixed functions of it (B@4 = CIDEr/2, METEOR = CIDEr/4 + 10,
ROUGE-L = CIDEr/3 + 40), so every mean and paired difference is hand-computable. For epoch="best", each trial's
in-domain validation CIDEr peaks at VAL_BEST (never the final epoch), the out-of-domain validation set peaks at the
final epoch (a decoy) and the test sets peak at the remaining epoch (the test-best epoch, which must not be chosen).
"""

import json
import math

import pandas as pd
import pytest

from calm_study.report import ReportError, build_tables, paper, write_report
from calm_study.report.cells import STATS
from calm_study.report.render import to_markdown
from calm_study.study.results import conform, write_parquet_atomic

EPOCHS = 3
SETS = {"msrvtt-val": ("msrvtt", "caption_val"), "msrvtt": ("msrvtt", "caption_test"),
        "msvd-val": ("msvd", "val"), "msvd": ("msvd", "test")}
TRAIN = {"msrvtt": ({"dataset": "msrvtt", "split": "caption_train"}, "msrvtt-caption_train"),
         "msvd": ({"dataset": "msvd", "split": "train"}, "msvd-train")}
TRIVIAL = {"msrvtt": 3.5, "msvd": 7.25}  # trivial_CIDEr per test dataset: a property of the data
FINAL = {  # test-set CIDEr at the final epoch, per arm: {test set: [seed 0, 1, 2]}
    "b-msrvtt": {"msrvtt": [50, 52, 54], "msvd": [20, 21, 22]},
    "c-msrvtt": {"msrvtt": [53, 56, 59], "msvd": [22, 24, 23]},
    "b-msvd": {"msvd": [100, 104, 108], "msrvtt": [30, 31, 32]},
    "c-msvd": {"msvd": [105, 106, 110], "msrvtt": [33, 35, 34]},
}
VAL_BEST = {("c-msrvtt", 1): 1}  # in-domain validation CIDEr peaks at epoch 2, except here at epoch 1
BEST_SHIFT = -7.0  # test CIDEr at the validation-best epoch = final − 7


def arm(arm_id, index, train, calm, **config):
    train_ref, label = TRAIN[train]
    swept = {"data.train": train_ref, "anchors.count": 157 if calm else 0, "loss.align": "vae" if calm else "none"}
    return {"arm_id": arm_id, "arm_index": index, "swept": json.dumps(swept, sort_keys=True), "task": "captioning",
            "model_family": "captioner", "loss_align": "vae" if calm else "none", "anchors_count": 157 if calm else 0,
            "anchors_source": "charades", "data_train": label, "train_dataset": train, "caption_beam_size": 1,
            "caption_length_penalty": 1.0, **config}


ARMS = [arm("b-msrvtt", 0, "msrvtt", False), arm("c-msrvtt", 1, "msrvtt", True),
        arm("b-msvd", 2, "msvd", False), arm("c-msvd", 3, "msvd", True)]


def cider(arm_id, seed, epoch, eval_set, train):
    dataset, split = SETS[eval_set]
    best = VAL_BEST.get((arm_id, seed), 2)
    if split in ("caption_val", "val"):
        if dataset == train:  # in-domain validation: the epoch "best" must choose
            return 40.0 if epoch == best else 10.0 + epoch
        return 80.0 if epoch == EPOCHS else 5.0  # out-of-domain validation: a decoy peaking at the final epoch
    final = float(FINAL[arm_id][eval_set][seed])
    if epoch == EPOCHS:
        return final
    return final + BEST_SHIFT if epoch == best else 99.0  # 99: the test-best epoch, never to be reported


def frame(arms=ARMS, sets=SETS, study="captioning"):
    out = []
    for a in arms:
        for seed in range(3):
            for epoch in range(1, EPOCHS + 1):
                for name in sets:
                    dataset, split = SETS[name]
                    c = cider(a["arm_id"], seed, epoch, name, a["train_dataset"])
                    out.append({**a, "schema_version": 4, "study": study, "seed": seed,
                                "trial_key": f"{a['arm_id']}-s{seed}", "eval_set": name, "eval_dataset": dataset,
                                "eval_split": split, "in_domain": dataset == a["train_dataset"], "epoch": epoch,
                                "epochs": EPOCHS, "status": "completed", "epoch_status": "completed",
                                "CIDEr": c, "BLEU4": c / 2, "METEOR": c / 4 + 10, "ROUGE_L": c / 3 + 40,
                                "trivial_CIDEr": TRIVIAL[dataset]})
    return conform(pd.DataFrame(out))


def by_unit(table):
    return table.frame.set_index("unit")


def test_one_table_per_training_set_with_paper_values_deltas_and_the_floor():
    sel, tables = build_tables(frame())
    assert [t.key for t in tables] == ["table4", "table5"]
    t4, t5 = tables
    assert t4.title.startswith("Table 4 layout") and t5.title.startswith("Table 5 layout")
    assert t4.labels == ["loss_align"] and list(t4.frame.unit) == ["b-msrvtt", "c-msrvtt"]  # baseline first
    # Column groups: the in-domain test set first, then the out-of-domain one; validation sets are not columns.
    assert list(dict.fromkeys(m.group for m in t4.metrics)) == ["msrvtt", "msvd"]
    assert list(dict.fromkeys(m.group for m in t5.metrics)) == ["msvd", "msrvtt"]
    assert [m.name for m in t4.metrics[:4]] == ["B@4", "METEOR", "ROUGE-L", "CIDEr"]

    f4, f5 = by_unit(t4), by_unit(t5)
    assert f4.loc["c-msrvtt", "CIDEr@msrvtt_mean"] == 56 and f4.loc["c-msrvtt", "CIDEr@msrvtt_sd"] == 3
    assert f4.loc["c-msrvtt", "CIDEr@msrvtt_paper"] == 59.3  # the paper's Table 4, CALM, MSR-VTT → MSR-VTT
    assert f4.loc["c-msrvtt", "CIDEr@msrvtt_minus_paper"] == pytest.approx(56 - 59.3)
    assert f4.loc["c-msrvtt", "CIDEr@msvd_paper"] == 70.3  # MSR-VTT → MSVD: the paper's Table 5
    assert f4.loc["b-msrvtt"].filter(like="_paper").isna().all()  # the baseline captioner has no paper row
    # Δ paired by seed: CALM − baseline = (3, 4, 5) on MSR-VTT and (2, 3, 1) on MSVD.
    assert f4.loc["c-msrvtt", "CIDEr@msrvtt_diff"] == pytest.approx(4)
    assert f4.loc["c-msrvtt", "CIDEr@msvd_diff"] == pytest.approx(2)
    assert f4.loc["c-msrvtt", "BLEU4@msrvtt_diff"] == pytest.approx(2)
    assert f4.loc["c-msrvtt", "CIDEr@msrvtt_pairs"] == 3 and f4.loc["b-msrvtt", "is_baseline"]
    assert f5.loc["c-msvd", "CIDEr@msrvtt_mean"] == 34
    assert f5.loc["c-msvd", "CIDEr@msrvtt_paper"] == 36.0  # MSVD → MSR-VTT: the paper's derived row
    assert f5.loc["c-msvd", "CIDEr@msvd_paper"] == 115.7
    assert f5.loc["c-msvd", "ROUGE_L@msvd_mean"] == pytest.approx(107 / 3 + 40)
    assert any("derived" in n and "msvd→msrvtt" in n for n in t5.notes)
    assert not any("derived" in n for n in t4.notes)

    for t in tables:
        assert sel.label in t.caption and STATS in t.caption
        assert any("most frequent training caption" in n for n in t.notes)
        assert any("greedy decoding" in n and "pycocoevalcap on PTB-tokenised text, CIDEr = CIDEr-D" in n
                   for n in t.notes)
        assert any(n.startswith("paper reference, CoCap") for n in t.notes)
        assert any(n.startswith("paper reference, CLIP4Caption") for n in t.notes)
    assert any("msrvtt 3.5, msvd 7.2" in n for n in t4.notes)  # 7.25 printed at one decimal
    text = to_markdown(t4)
    assert "paper msrvtt CIDEr" in text and "59.3" in text and "Δ msrvtt CIDEr" in text


def test_best_epoch_is_chosen_on_the_in_domain_validation_cider():
    sel, tables = build_tables(frame(), "best")
    assert "validation CIDEr" in sel.label and "msrvtt-val" in sel.label
    chosen = sel.rows.drop_duplicates(["arm_id", "seed"]).set_index(["arm_id", "seed"]).epoch
    for (arm_id, seed), epoch in chosen.items():
        assert epoch == VAL_BEST.get((arm_id, seed), 2)  # not the final epoch (3), not the test-best one
    f4 = by_unit(tables[0])
    assert f4.loc["c-msrvtt", "CIDEr@msrvtt_mean"] == pytest.approx(56 + BEST_SHIFT)
    assert sel.label in tables[0].caption

    no_val = frame(sets={k: v for k, v in SETS.items() if v[1] not in ("val", "caption_val")})
    with pytest.raises(ReportError, match="needs an in-domain validation set.*caption_val"):
        build_tables(no_val, "best")


def test_beam_decoding_and_a_synthetic_study_without_paper_values():
    synthetic = [dict(a, data_train=f"synthetic-{d}-train", train_dataset="synthetic", caption_beam_size=3,
                      caption_length_penalty=0.6) for a, d in zip(ARMS, ["plain", "plain", "textured", "textured"])]
    df = frame(synthetic)
    _, tables = build_tables(df)
    assert [t.key for t in tables] == ["captioning_synthetic-plain-train", "captioning_synthetic-textured-train"]
    t = tables[0]
    assert not any(m.paper for m in t.metrics) and any("none match" in n for n in t.notes)
    assert any("beam search (beam 3, length penalty 0.6)" in n for n in t.notes)
    assert not any(n.startswith("paper reference") for n in t.notes)


def test_paper_method_of_captioning_leaves_retrieval_unchanged():
    calm, base = ARMS[1], ARMS[0]
    assert paper.method_of("4", calm) == "CALM" and paper.method_of("5", calm) == "CALM"
    assert paper.method_of("4", base) is None
    tmass = {"model_family": "tmass", "loss_align": "vae", "anchors_count": 157, "anchors_source": "charades"}
    assert paper.method_of("4", tmass) is None  # a retrieval model is not the paper's captioner
    assert paper.method_of("1", tmass) == "CALM" and paper.method_of("1", dict(tmass, loss_align="none")) == "T-MASS"
    assert paper.method_of("1", calm) is None


def test_a_study_mixing_tasks_is_refused():
    df = frame()
    df.loc[df.arm_id == "b-msvd", "task"] = "retrieval"
    with pytest.raises(ReportError, match="mix tasks"):
        build_tables(df)


def test_write_report_with_caption_samples(tmp_path):
    results = tmp_path / "results"
    write_parquet_atomic(frame(), results / "captioning" / "trials.parquet")
    refs = ["a man | a dog", "a man and a dog", "someone walks", "fourth reference, not shown", "fifth"]
    samples = {"c-msrvtt-s0": {"arm_id": "c-msrvtt", "seed": 0, "epoch": 3,
                               "sets": {"msrvtt": [{"video": "video7010", "caption": "a man walks a dog",
                                                    "references": refs}],
                                        "msvd": [{"video": "vid_1", "caption": "a cat", "references": ["a cat"]}]}}}
    (results / "captioning" / "_captions.json").write_text(json.dumps(samples), encoding="utf-8")
    path, text = write_report("captioning", results_dir=results)
    report = path.read_text(encoding="utf-8")
    assert "Table 4" in report and "Table 5" in report and "captions.md" in report
    out = path.parent
    for key in ("table4", "table5"):
        assert (out / f"{key}.csv").is_file() and (out / f"{key}.tex").is_file() and (out / f"{key}.png").is_file()
    csv = pd.read_csv(out / "table4.csv").set_index("arm_id")
    assert csv.loc["c-msrvtt", "CIDEr@msrvtt_paper"] == 59.3 and math.isnan(csv.loc["b-msrvtt", "CIDEr@msrvtt_paper"])
    captions = (out / "captions.md").read_text(encoding="utf-8")
    assert "## c-msrvtt-s0 (arm c-msrvtt, seed 0, epoch 3)" in captions and "### msvd" in captions
    assert "| video7010 | a man walks a dog | a man \\| a dog | a man and a dog | someone walks |" in captions
    assert "fourth reference" not in captions  # at most 3 references
    assert "Table 4 layout" in text  # the main table, for the console

    (results / "captioning" / "_captions.json").write_text("{not json", encoding="utf-8")
    path, _ = write_report("captioning", results_dir=results)
    assert "could not be read" in path.read_text(encoding="utf-8")


def test_write_report_without_samples_has_no_captions_section(tmp_path):
    results = tmp_path / "results"
    write_parquet_atomic(frame(), results / "captioning" / "trials.parquet")
    path, _ = write_report("captioning", results_dir=results)
    assert "captions.md" not in path.read_text(encoding="utf-8") and not (path.parent / "captions.md").exists()
