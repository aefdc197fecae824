"""Reports from Parquet inputs with known numbers: every cell, interval, paired difference and drop, checked exactly.

Seeds' values are chosen so that the statistics are hand-computable: with 3 seeds the 95% interval is
mean ± t(0.975, 2)·sd/√3 and with 2 seeds mean ± t(0.975, 1)·sd/√2. Both quantiles have closed forms (Student's t
with 1 and 2 degrees of freedom): t(p, 1) = tan(π(p − 1/2)) and t(p, 2) = (2p − 1)/√(2p(1 − p)).
"""

import itertools
import json
import math
from pathlib import Path

import matplotlib.image
import pandas as pd
import pytest

from calm_study.report import ReportError, build_tables, domain_drop, main_table, write_report
from calm_study.report.render import to_markdown
from calm_study.report.select import COMPARABLE_BY, arm_frame, baselines
from calm_study.report.stats import paired, summarize, verdict
from calm_study.study.results import conform, write_parquet_atomic

REPO_ROOT = Path(__file__).resolve().parents[1]

T2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)  # t(0.975, 2 degrees of freedom) = 4.3027
T1 = math.tan(math.pi * 0.475)  # t(0.975, 1) = 12.7062
IN_OUT = {"msrvtt": ("msrvtt", "test", True), "didemo": ("didemo", "test", False)}


def arm(arm_id, index, swept, **config):
    cfg = {"anchors_count": 157, "anchors_source": "charades", "loss_align": "vae", "loss_alpha": 0.1,
           "data_train": "msrvtt-train", "train_dataset": "msrvtt", "model_family": "tmass",
           "evaluation_protocol": "leakfree", **config}
    return {"arm_id": arm_id, "arm_index": index, "swept": json.dumps(swept, sort_keys=True), **cfg}


def rows(study, arms, final, epochs=2, sets=IN_OUT, early=None, status=None):
    """final: {(arm_id, seed): {eval_set: R@1}} at the last epoch; earlier epochs get `early` (default 99, a value
    that would show up in every cell if the wrong epoch were read). R@5 = R@1 + 20, MnR = 50 − R@1."""
    out = []
    by_id = {a["arm_id"]: a for a in arms}
    for (arm_id, seed), per_set in final.items():
        a = by_id[arm_id]
        for epoch in range(1, epochs + 1):
            for name, r1 in per_set.items():
                dataset, split, in_domain = sets[name]
                value = r1 if epoch == epochs else (early or {}).get((arm_id, seed, epoch, name), 99.0)
                out.append({**a, "schema_version": 2, "study": study, "seed": seed, "trial_key": f"{arm_id}-s{seed}",
                            "eval_set": name, "eval_dataset": dataset, "eval_split": split, "in_domain": in_domain,
                            "epoch": epoch, "epochs": epochs, "epoch_status": "completed" if epoch == epochs else
                            "running", "status": (status or {}).get((arm_id, seed), "completed"), "t2v_R1": value,
                            "t2v_R5": value + 20, "t2v_MnR": 50 - value})
    return conform(pd.DataFrame(out))


def write(tmp_path, study, df):
    write_parquet_atomic(df, tmp_path / "results" / study / "trials.parquet")
    return tmp_path / "results"


ANCHOR_ARMS = [arm("a0", 0, {"anchors.count": 0, "loss.align": "none"}, anchors_count=0, loss_align="none"),
               arm("a50", 1, {"anchors.count": 50, "anchors.source": "charades"}, anchors_count=50),
               arm("a91", 2, {"anchors.count": 91, "anchors.source": "coco91"}, anchors_count=91,
                   anchors_source="coco91")]
ANCHOR_R1 = {"a0": [10, 12, 14], "a50": [11, 14, 17], "a91": [13, 16, 19]}


def anchor_frame():
    final = {(a, s): {"msrvtt": v, "didemo": v / 2} for a, vs in ANCHOR_R1.items() for s, v in enumerate(vs)}
    final[("a91", 3)] = {"msrvtt": 50.0, "didemo": 50.0}  # stopped after epoch 1: left out and counted
    df = rows("anchor", ANCHOR_ARMS, final, status={("a91", 3): "incomplete"})
    return df[~((df.seed == 3) & (df.epoch == 2))]


def test_paper_values_only_beside_tmass_arms_and_the_baseline_is_the_same_family_without_calm():
    """CALM's numbers are on T-MASS: a clip4clip study prints none of them; with both families in one study, each
    CALM arm is compared with its own family's no-anchor arm; every caption names the families and the protocol."""
    clip4clip = [dict(a, model_family="clip4clip") for a in ANCHOR_ARMS]
    final = {(a, s): {"msrvtt": v, "didemo": v / 2} for a, vs in ANCHOR_R1.items() for s, v in enumerate(vs)}
    f = build_tables(rows("anchor", clip4clip, final))[1][0].frame.set_index("unit")
    assert f.id_t2v_R1_paper.isna().all()

    mixed = [dict(a, arm_id=f"c{a['arm_id']}", arm_index=a["arm_index"] + 3, model_family="clip4clip",
                  swept=json.dumps({**json.loads(a["swept"]), "model.family": "clip4clip"}))
             for a in ANCHOR_ARMS]
    mixed += [dict(a, swept=json.dumps({**json.loads(a["swept"]), "model.family": "tmass"})) for a in ANCHOR_ARMS]
    final.update({(f"c{a}", s): {"msrvtt": v + 1, "didemo": v} for a, vs in ANCHOR_R1.items()
                  for s, v in enumerate(vs)})
    t6 = build_tables(rows("anchor", mixed, final))[1][0]
    f = t6.frame.set_index("unit")
    assert f.loc["ca50", "id_t2v_R1_diff"] == 2 and f.loc["a50", "id_t2v_R1_diff"] == 2  # each vs its own a0
    assert f.loc["a0", "id_t2v_R1_paper"] == 48.9 and math.isnan(f.loc["ca0", "id_t2v_R1_paper"])
    assert "model family tmass, clip4clip" in t6.caption and "leak-free scoring" in t6.caption


def test_stats_by_hand():
    s = summarize([10, 12, 14])
    assert (s.mean, s.sd, s.n) == (12, 2, 3)
    assert s.lo == pytest.approx(12 - T2 * 2 / math.sqrt(3), abs=1e-12)
    assert s.hi == pytest.approx(12 + T2 * 2 / math.sqrt(3), abs=1e-12)
    one = summarize([7.0, float("nan")])
    assert one.n == 1 and one.mean == 7 and math.isnan(one.sd) and math.isnan(one.lo) and not one.has_interval
    p = paired({0: 11, 1: 14, 2: 17, 5: 1}, {0: 10, 1: 12, 2: 14, 9: 3})
    assert (p.diff.mean, p.diff.sd, p.diff.n, p.unpaired) == (2, 1, 3, 2)  # seeds 5 and 9 have no partner
    assert p.diff.lo == pytest.approx(2 - T2 / math.sqrt(3)) and p.distinguishable is False
    assert paired({0: 13, 1: 16, 2: 19}, {0: 10, 1: 12, 2: 14}).distinguishable is True  # Δ 4 ± 2.48
    lone = paired({0: 13}, {0: 10, 1: 12})
    assert lone.distinguishable is None and verdict(lone.distinguishable, lone.diff.n) == "n/a (1 pair)"


def test_table6_cells_intervals_paired_differences_and_paper_value(tmp_path):
    sel, tables = build_tables(anchor_frame())
    assert sel.label == "final epoch (epoch 2)" and sel.excluded == {"incomplete": 1}
    t6 = tables[0]
    assert t6.key == "table6" and t6.labels == ["anchors_count", "anchors_source"]
    f = t6.frame.set_index("unit")
    assert f.loc["a0", "anchors_source"] == "none"  # no anchors: the source is unused
    assert list(f.index) == ["a0", "a50", "a91"]  # the study file's order
    half = T2 / math.sqrt(3)
    for unit, mean, sd in (("a0", 12, 2), ("a50", 14, 3), ("a91", 16, 3)):
        assert f.loc[unit, "id_t2v_R1_mean"] == mean and f.loc[unit, "id_t2v_R1_sd"] == sd
        assert f.loc[unit, "id_t2v_R1_n"] == 3
        assert f.loc[unit, "id_t2v_R1_ci_lo"] == pytest.approx(mean - half * sd, abs=1e-12)
        assert f.loc[unit, "id_t2v_R1_ci_hi"] == pytest.approx(mean + half * sd, abs=1e-12)
        assert f.loc[unit, "id_t2v_R5_mean"] == mean + 20 and f.loc[unit, "id_t2v_MnR_mean"] == 50 - mean
    assert f.loc["a0", "is_baseline"] and math.isnan(f.loc["a0", "id_t2v_R1_diff"])
    assert f.loc["a50", "id_t2v_R1_diff"] == 2 and f.loc["a50", "id_t2v_R1_pairs"] == 3
    assert f.loc["a50", "id_t2v_R1_diff_ci_lo"] == pytest.approx(2 - half) and not f.loc["a50",
                                                                                        "id_t2v_R1_distinguishable"]
    assert f.loc["a91", "id_t2v_R1_diff"] == 4 and f.loc["a91", "id_t2v_R1_diff_ci_hi"] == pytest.approx(4 + half)
    assert f.loc["a91", "id_t2v_R1_distinguishable"] and f.loc["a91", "id_t2v_MnR_diff"] == -4
    # The paper's Table 6 rows (MSR-VTT): 0 anchors (T-MASS) 48.9, 50 Charades 48.1, 91 COCO 50.3.
    assert f.loc["a0", "id_t2v_R1_paper"] == 48.9 and f.loc["a0", "id_t2v_R1_minus_paper"] == pytest.approx(-36.9)
    assert f.loc["a50", "id_t2v_R1_paper"] == 48.1 and f.loc["a91", "id_t2v_R1_paper"] == 50.3
    assert f.loc["a0", "id_t2v_R5_paper"] == 76.3 and f.loc["a0", "id_t2v_MnR_paper"] == 11.7
    sens = next(t for t in tables if t.key == "sensitivity_anchors_count")
    assert sens.x == "anchors_count" and sens.frame.id_t2v_R1_mean.tolist() == [12, 14, 16]
    assert [t.key for t in tables] == ["table6", "sensitivity_anchors_count"]  # loss.align only marks the baseline


def test_write_report_files_and_main_table(tmp_path):
    results = write(tmp_path, "anchor", anchor_frame())
    path, text = write_report("anchor", results)
    out = results / "anchor" / "_report"
    assert path == out / "report.md"
    for name in ("table6", "sensitivity_anchors_count"):
        assert (out / f"{name}.csv").is_file() and (out / f"{name}.tex").is_file()
        image = matplotlib.image.imread(out / f"{name}.png")
        assert image.shape[0] > 100 and image.shape[1] > 100
    md = path.read_text()
    assert "Table 6 layout" in md and "final epoch (epoch 2)" in md and "left out: 1 incomplete" in md
    assert "| 0 | none | 12.0 ± 2.0 | 32.0 ± 2.0 | 38.0 ± 2.0 | 3 |" in md
    assert f"[{12 - T2 * 2 / math.sqrt(3):.1f}, {12 + T2 * 2 / math.sqrt(3):.1f}]" in md  # [7.0, 17.0]
    assert "| +4.0 [+1.5, +6.5] | yes |" in md and "| +2.0 [-0.5, +4.5] | no |" in md
    assert "| 48.9 | -36.9 |" in md and "![Table 6 layout" in md
    assert pd.read_csv(out / "table6.csv").id_t2v_R1_mean.tolist() == [12, 14, 16]
    assert r"\begin{tabular}" in (out / "table6.tex").read_text() and r"$\pm$" in (out / "table6.tex").read_text()
    assert text.splitlines()[1] == "Table 6 layout: anchor count and source"
    assert main_table(pd.read_parquet(results / "anchor"), "anchor") == text
    assert len(pd.read_parquet(results / "anchor")) == len(anchor_frame())  # the report folder is not read as data


def test_table7_in_and_out_of_domain_with_two_seeds():
    arms = [arm("none", 0, {"anchors.count": 0, "loss.align": "none"}, anchors_count=0, loss_align="none"),
            arm("kl", 1, {"loss.align": "kl"}, loss_align="kl"), arm("vae", 2, {"loss.align": "vae"})]
    sets = {"msrvtt": ("msrvtt", "test", True), "didemo": ("didemo", "test", False),
            "lsmdc": ("lsmdc", "test", False)}
    final = {("none", 0): {"msrvtt": 40, "didemo": 20, "lsmdc": 10}, ("none", 1): {"msrvtt": 42, "didemo": 22,
                                                                                   "lsmdc": 14},
             ("kl", 0): {"msrvtt": 41, "didemo": 24, "lsmdc": 12}, ("kl", 1): {"msrvtt": 44, "didemo": 24,
                                                                               "lsmdc": 18},
             ("vae", 0): {"msrvtt": 43, "didemo": 26, "lsmdc": 16}, ("vae", 1): {"msrvtt": 45, "didemo": 30,
                                                                                 "lsmdc": 18}}
    _, tables = build_tables(rows("loss", arms, final, sets=sets))
    t7 = tables[0]
    assert t7.key == "table7" and t7.labels == ["loss_align"] and len(tables) == 1
    f = t7.frame.set_index("loss_align")
    # Out-of-domain = mean of didemo and lsmdc per trial: none 15, 18; kl 18, 21; vae 21, 24.
    assert f.ood_t2v_R1_mean.tolist() == [16.5, 19.5, 22.5] and f.id_t2v_R1_mean.tolist() == [41, 42.5, 44]
    assert f.loc["kl", "id_t2v_R1_sd"] == pytest.approx(math.sqrt(4.5))
    assert f.loc["kl", "id_t2v_R1_ci_lo"] == pytest.approx(42.5 - T1 * math.sqrt(4.5) / math.sqrt(2))
    # Paired by seed: kl − none in-domain = 1, 2 -> mean 1.5, sd √0.5; vae − none out-of-domain = 6, 6 -> sd 0.
    assert f.loc["kl", "id_t2v_R1_diff"] == 1.5
    assert f.loc["kl", "id_t2v_R1_diff_ci_hi"] == pytest.approx(1.5 + T1 * math.sqrt(0.5) / math.sqrt(2))
    assert f.loc["kl", "id_t2v_R1_distinguishable"] is False
    assert f.loc["vae", "ood_t2v_R1_diff"] == 6 and f.loc["vae", "ood_t2v_R1_distinguishable"] is True
    assert "| +6.0 [+6.0, +6.0] | yes (identical Δ in all 2 pairs) |" in to_markdown(t7)  # a degenerate interval
    # The paper's Table 7 in-domain (MSR-VTT) values; its out-of-domain column is DiDeMo alone, and this study's
    # out-of-domain number is the mean over DiDeMo and LSMDC, so that paper column prints —.
    assert f.id_t2v_R1_paper.tolist() == [48.9, 49.5, 50.8] and f.ood_t2v_R1_paper.isna().all()
    assert any("out-of-domain = the mean over didemo, lsmdc" in n for n in t7.notes)


def test_cross_domain_matrix_and_average_drop():
    sets = {"a": ("a", "test", None), "b": ("b", "test", None)}
    arms, final = [], {}
    for i, (method, train) in enumerate([("none", "a"), ("vae", "a"), ("none", "b"), ("vae", "b")]):
        arms.append(arm(f"{method}-{train}", i, {"data.train": {"dataset": train}, "loss.align": method},
                        loss_align=method, anchors_count=0 if method == "none" else 157, data_train=f"{train}-train",
                        train_dataset=train))
    r1 = {("none", "a"): [(30, 10), (32, 12)], ("vae", "a"): [(31, 15), (33, 19)],
          ("none", "b"): [(8, 20), (10, 24)], ("vae", "b"): [(11, 22), (13, 26)]}  # per seed: (R1 on a, R1 on b)
    for (method, train), per_seed in r1.items():
        for seed, (on_a, on_b) in enumerate(per_seed):
            final[(f"{method}-{train}", seed)] = {"a": on_a, "b": on_b}
    df = rows("cross", arms, final, sets=sets)
    df["in_domain"] = df.eval_set == df.train_dataset
    _, tables = build_tables(df)
    matrix, drops = tables[0], tables[1]
    assert matrix.key == "cross_domain" and matrix.labels == ["loss_align", "data_train"]
    f = matrix.frame.set_index("unit")
    assert f["R1@a_mean"].tolist() == [31, 32, 9, 12] and f["R1@b_mean"].tolist() == [11, 17, 22, 24]
    assert f["R1@a_in_domain"].tolist() == [True, True, False, False]
    # Trial drops: none-a 20, 20; vae-a 16, 14; none-b 12, 14; vae-b 11, 13.
    assert f["drop_mean"].tolist() == [20, 15, 13, 12]
    assert f.loc["vae-a", "drop_diff"] == -5 and f.loc["vae-b", "drop_diff"] == -1  # vs the same training set
    assert domain_drop(30, [10]) == 20 and domain_drop(30, [10, 20]) == 15 and math.isnan(domain_drop(30, []))
    d = drops.frame.set_index("loss_align")
    # Per seed, the mean over training sets: none (20+12)/2 = 16, (20+14)/2 = 17; vae 13.5, 13.5.
    assert d.drop_mean.tolist() == [16.5, 13.5] and d.loc["vae", "drop_sd"] == 0
    assert d.loc["none", "drop_sd"] == pytest.approx(math.sqrt(0.5))
    assert d.loc["vae", "drop_diff"] == -3 and d.loc["vae", "drop_diff_ci_lo"] == pytest.approx(-3 - T1 * 0.5)


def test_alpha_sweep_without_baseline_arm_compares_with_the_first_arm():
    arms = [arm(f"al{i}", i, {"loss.alpha": a}, loss_alpha=a) for i, a in enumerate([0.05, 0.1, 0.2])]
    final = {(f"al{i}", s): {"msrvtt": 20 + i + s} for i in range(3) for s in range(2)}
    _, tables = build_tables(rows("alpha", arms, final, sets={"msrvtt": IN_OUT["msrvtt"]}))
    assert [t.key for t in tables] == ["sensitivity_loss_alpha"]
    f = tables[0].frame
    assert f.loss_alpha.tolist() == [0.05, 0.1, 0.2] and f.is_baseline.tolist() == [True, False, False]
    assert f.id_t2v_R1_diff.tolist()[1:] == [1, 2] and f.id_t2v_R1_diff_ci_lo.tolist()[1:] == [1, 2]  # sd 0


def protocol_arms():
    """Two protocols × with and without CALM (tmass_compat needs family tmass or xpool: arm()'s default is tmass)."""
    out = []
    for i, (protocol, calm) in enumerate(itertools.product(["leakfree", "tmass_compat"], [False, True])):
        swept = {"evaluation.protocol": protocol, "loss.align": "vae" if calm else "none",
                 "anchors.count": 157 if calm else 0}
        out.append(arm(f"{'c' if calm else 'b'}-{protocol}", i, swept, evaluation_protocol=protocol,
                       loss_align="vae" if calm else "none", anchors_count=157 if calm else 0))
    return out


# In-domain R@1 per seed: the leaky protocol scores far higher; CALM adds 2 (leak-free) or 4 (tmass_compat) per seed.
PROTOCOL_R1 = {"b-leakfree": [10, 12, 14], "c-leakfree": [12, 14, 16],
               "b-tmass_compat": [40, 42, 44], "c-tmass_compat": [44, 46, 48]}


def test_each_calm_arm_is_paired_with_the_baseline_scored_with_its_own_protocol():
    """A study sweeping the evaluation protocol: each CALM arm's Δ is against the baseline of its own protocol (+2 and
    +4), never the leaky CALM arm against the leak-free baseline (+34)."""
    final = {(a, s): {"msrvtt": v, "didemo": v / 2} for a, vs in PROTOCOL_R1.items() for s, v in enumerate(vs)}
    df = rows("protocol", protocol_arms(), final)
    assert baselines(arm_frame(df)) == {"b-leakfree": "b-leakfree", "c-leakfree": "b-leakfree",
                                        "b-tmass_compat": "b-tmass_compat", "c-tmass_compat": "b-tmass_compat"}
    _, tables = build_tables(df)
    f = tables[0].frame.set_index("unit")
    assert "evaluation_protocol" in tables[0].labels
    assert f.is_baseline.to_dict() == {"b-leakfree": True, "c-leakfree": False, "b-tmass_compat": True,
                                       "c-tmass_compat": False}
    assert f.loc["c-leakfree", "id_t2v_R1_diff"] == 2 and f.loc["c-tmass_compat", "id_t2v_R1_diff"] == 4
    assert f.loc["c-tmass_compat", "id_t2v_R1_pairs"] == 3 and f.loc["c-tmass_compat", "id_t2v_R1_diff_ci_lo"] == 4
    assert "evaluation_protocol=tmass_compat" in f.loc["c-tmass_compat", "baseline"]
    # DSL and regime split the same way; an arm whose group has no baseline arm is compared within its own group
    # (its first arm, here itself), never with another group's baseline.
    dsl = pd.concat([df[df.arm_id != "b-tmass_compat"], df[df.arm_id == "c-leakfree"].assign(
        arm_id="c-dsl", arm_index=9, evaluation_dsl=True)], ignore_index=True)
    assert baselines(arm_frame(conform(dsl))) == {"b-leakfree": "b-leakfree", "c-leakfree": "b-leakfree",
                                                  "c-tmass_compat": "c-tmass_compat", "c-dsl": "c-dsl"}
    frozen = conform(df.assign(regime=df.arm_id.map(lambda a: "frozen" if a == "c-leakfree" else "finetune")))
    assert baselines(arm_frame(frozen))["c-leakfree"] == "c-leakfree"
    assert {"task", "model_family", "data_train", "regime", "evaluation_protocol", "evaluation_dsl"} <= \
        set(COMPARABLE_BY)


def test_best_epoch_uses_the_validation_set_and_is_refused_without_one(tmp_path):
    sets = {"val": ("msrvtt", "val", True), "test": ("msrvtt", "test", True)}
    arms = [arm("x", 0, {})]
    final = {("x", 0): {"val": 30, "test": 40}}  # epoch 3 (final)
    early = {("x", 0, 1, "val"): 31, ("x", 0, 1, "test"): 10, ("x", 0, 2, "val"): 35, ("x", 0, 2, "test"): 20}
    df = rows("best", arms, final, epochs=3, sets=sets, early=early)
    df.loc[(df.epoch == 3) & (df.eval_set == "test"), "t2v_R1"] = 60  # the test set's best epoch must not be chosen
    sel, tables = build_tables(df, "best")
    assert "best epoch per trial by validation" in sel.label and sel.label in tables[0].caption
    assert tables[0].frame.id_t2v_R1_mean.tolist() == [20]  # epoch 2: best on validation
    assert build_tables(df, 1)[1][0].frame.id_t2v_R1_mean.tolist() == [10]
    results = write(tmp_path, "anchor", anchor_frame())
    with pytest.raises(ReportError, match="needs an in-domain validation set.*msrvtt \\(test\\)"):
        write_report("anchor", results, epoch="best")
    with pytest.raises(ReportError, match="not valid"):
        build_tables(df, "last")
    with pytest.raises(ReportError, match="in-domain"):  # an old file without in_domain
        build_tables(df.assign(in_domain=pd.NA))


def test_missing_study_names_the_studies_that_exist(tmp_path):
    results = write(tmp_path, "anchor", anchor_frame())
    with pytest.raises(FileNotFoundError, match="no results for study 'nope'.*anchor"):
        write_report("nope", results)


SHARED_TABLES = REPO_ROOT / ".." / "shared" / "papers" / "calm-tables.csv"


@pytest.mark.skipif(not SHARED_TABLES.is_file(), reason="the transcribed paper tables are not beside the repository")
def test_packaged_paper_numbers_equal_the_transcribed_tables_cell_by_cell():
    import csv

    from calm_study.report import paper

    with open(SHARED_TABLES, encoding="utf-8") as f:
        expected = list(csv.DictReader(f))
    assert [dict(r) for r in paper.paper_rows()] == expected
    assert {r["table"] for r in expected} == {"1", "2", "3", "4", "5", "6", "7"}


def test_cross_domain_on_the_papers_datasets_shows_every_paper_cell_and_the_drop():
    """T-MASS and CALM trained on MSR-VTT, DiDeMo and LSMDC, each tested on all three (Tables 1-3 layout)."""
    from calm_study.report import paper

    data = ("msrvtt", "didemo", "lsmdc")
    sets = {d: (d, "test", None) for d in data}
    arms, final = [], {}
    for i, (method, train) in enumerate((m, t) for t in data for m in ("none", "vae")):
        arms.append(arm(f"{method}-{train}", i, {"data.train": {"dataset": train}, "loss.align": method},
                        loss_align=method, anchors_count=0 if method == "none" else 157, data_train=f"{train}-train",
                        train_dataset=train))
        for seed in (0, 1):
            final[(f"{method}-{train}", seed)] = {d: 40.0 if d == train else 20.0 for d in data}
    df = rows("cross", arms, final, sets=sets)
    df["in_domain"] = df.eval_set == df.train_dataset
    matrix, drops = build_tables(df)[1][:2]
    f = matrix.frame.set_index("unit")
    # Table 1 (trained on MSR-VTT): T-MASS 48.9 / 76.3 / 85.3 / 11.7 on MSR-VTT, CALM R@1 41.2 on DiDeMo.
    assert [f.loc["none-msrvtt", f"{m}@msrvtt_paper"] for m in ("R1", "R5", "R10", "MnR")] == [48.9, 76.3, 85.3, 11.7]
    assert f.loc["vae-msrvtt", "R1@didemo_paper"] == 41.2
    assert f.loc["vae-msrvtt", "R1@didemo_minus_paper"] == pytest.approx(-21.2)
    # Tables 2 and 3: every cell of every row has its paper value.
    for unit in f.index:
        assert all(pd.notna(f.loc[unit, f"{m}@{d}_paper"]) for m in ("R1", "R5", "R10", "MnR") for d in data), unit
    assert f.loc["vae-lsmdc", "R1@lsmdc_paper"] == float(paper.value("3", "lsmdc", "lsmdc", "CALM", "t2v_R1").value)
    d = drops.frame.set_index("loss_align")
    assert d.drop_mean.tolist() == [20, 20]
    assert d.loc["vae", "drop_paper"] == pytest.approx(paper.drop_of("CALM", list(data)))
    assert any("CLIP4Clip trained on msrvtt" in n for n in matrix.notes)  # the paper's other methods, as references
    assert "leak-free scoring" in matrix.caption


def test_one_axis_at_a_time_sensitivity_draws_r1_and_the_drop_per_axis(tmp_path):
    """Arms that each change one of α, d from the paper's setting: one table per axis, each with only that axis's
    arms (the others at the center), in-domain R@1 and the drop, Δ against the center; one PNG with two panels."""
    arms_ = [arm("c", 0, {})]
    arms_ += [arm(f"a{i}", i + 1, {"loss.alpha": a}, loss_alpha=a) for i, a in enumerate([0.01, 1.0])]
    arms_ += [arm(f"d{i}", i + 3, {"vae.latent_dim": d}, vae_latent_dim=d) for i, d in enumerate([64, 512])]
    for a in arms_:
        a.setdefault("vae_latent_dim", 256)
    r1 = {"c": 40, "a0": 38, "a1": 44, "d0": 41, "d1": 36}
    final = {(a, s): {"msrvtt": v + s, "didemo": v / 2} for a, v in r1.items() for s in (0, 1)}
    df = rows("sens", arms_, final)
    _, tables = build_tables(df)
    assert [t.key for t in tables] == ["sensitivity_loss_alpha", "sensitivity_vae_latent_dim"]
    alpha = tables[0].frame.set_index("unit")
    assert list(alpha.index) == ["a0", "c", "a1"] and alpha.loc["c", "is_baseline"]  # sorted by α, no d arms
    assert alpha.loc["a1", "id_t2v_R1_diff"] == 4 and alpha.loc["a1", "drop_mean"] == pytest.approx(22.5)
    assert "the other settings at" in tables[0].caption
    path = write_report("sens", results_dir=write(tmp_path, "sens", df))[0]
    assert (path.parent / "sensitivity_vae_latent_dim.png").is_file()


def test_every_table_says_how_many_videos_were_skipped():
    final = {(a, s): {"msrvtt": v, "didemo": v / 2} for a, vs in ANCHOR_R1.items() for s, v in enumerate(vs)}
    df = rows("anchor", ANCHOR_ARMS, final)
    df.loc[df.eval_set == "didemo", "skipped_videos"] = 3
    df["train_skipped_videos"] = 2
    for table in build_tables(df)[1]:
        assert "unreadable videos skipped (data.on_error skip): didemo 3, training set 2" in table.notes
    clean = rows("anchor", ANCHOR_ARMS, final)
    assert not any("skipped" in n for t in build_tables(clean)[1] for n in t.notes)


def test_fine_tuned_and_frozen_trials_never_share_a_table(tmp_path):
    """The same arms trained both ways (regime finetune and frozen): every table comes once per regime, each holding
    only its own regime's trials, titled and filed by regime; frozen rows get no paper value."""
    final = {(a, s): {"msrvtt": v, "didemo": v / 2} for a, vs in ANCHOR_R1.items() for s, v in enumerate(vs)}
    frozen_arms = [dict(a, arm_id=f"f{a['arm_id']}", arm_index=a["arm_index"] + 3, model_frozen=True)
                   for a in ANCHOR_ARMS]
    frozen_final = {(f"f{a}", s): {"msrvtt": v - 5, "didemo": v / 4} for (a, s), _ in final.items()
                    for v in [ANCHOR_R1[a][s]]}
    df = pd.concat([rows("anchor", ANCHOR_ARMS, final).assign(regime="finetune"),
                    rows("anchor", frozen_arms, frozen_final).assign(regime="frozen")], ignore_index=True)
    _, tables = build_tables(conform(df))
    keys = [t.key for t in tables]
    assert keys == ["table6_finetune", "sensitivity_anchors_count_finetune", "table6_frozen",
                    "sensitivity_anchors_count_frozen"]
    tuned, frozen = tables[0].frame.set_index("unit"), tables[2].frame.set_index("unit")
    assert list(tuned.index) == ["a0", "a50", "a91"] and list(frozen.index) == ["fa0", "fa50", "fa91"]
    assert tuned.loc["a50", "id_t2v_R1_mean"] == 14 and frozen.loc["fa50", "id_t2v_R1_mean"] == 9
    assert frozen.loc["fa50", "id_t2v_R1_diff"] == 2  # paired against the frozen baseline, not the fine-tuned one
    assert "(frozen CLIP features)" in tables[2].title and "(fine-tuned CLIP)" in tables[0].title
    assert "CLIP encoders frozen" in tables[2].caption and "frozen" not in tables[0].caption
    assert tuned.loc["a0", "id_t2v_R1_paper"] == 48.9 and frozen.id_t2v_R1_paper.isna().all()
    # A file written before the regime column (schema < 5): every trial fine-tuned, the tables keep their names.
    assert [t.key for t in build_tables(rows("anchor", ANCHOR_ARMS, final))[1]][0] == "table6"
    path, _ = write_report("anchor", write(tmp_path, "anchor", conform(df)))
    assert (path.parent / "table6_frozen.csv").is_file() and (path.parent / "table6_finetune.csv").is_file()
