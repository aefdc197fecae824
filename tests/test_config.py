"""Strict configuration loading: every problem at once, with key paths and "did you mean"."""

import dataclasses
import json
import math
import typing

import pytest

from calm_study.checks import range_problems
from calm_study.config import RANGE, TrialConfig
from calm_study.configio import ConfigError, flatten, parse_yaml, set_path, to_dict
from calm_study.names import STUDY_NAME_RULE, study_name_problem
from calm_study.study.identity import arm_id
from calm_study.study.spec import FailureSpec, Resources, SchedulerSpec, SearchSpace, Study, expand, load_study
from calm_study.study.storage import storage_problems
from calm_study.validate import trial_from_dict


def problems(fn, *args, **kwargs) -> list[str]:
    with pytest.raises(ConfigError) as info:
        fn(*args, **kwargs)
    return info.value.problems


def test_scientific_notation_is_a_float():
    assert parse_yaml("lr: 1e-5\nb: 2E3\nc: .5\nd: 3") == {"lr": 1e-5, "b": 2000.0, "c": 0.5, "d": 3}
    cfg = trial_from_dict(parse_yaml("optim: {lr_new: 3e-5}"))
    assert cfg.optim.lr_new == 3e-5 and isinstance(cfg.optim.lr_new, float)


def test_unknown_keys_and_wrong_types_are_all_reported_with_suggestions():
    errs = problems(trial_from_dict, {"loss": {"alpah": 0.2, "align": 3}, "trian": {}, "train": {"epochs": "five"},
                                      "vae": {"encoder_hidden": "512"}})
    text = "\n".join(errs)
    assert len(errs) == 5
    assert "loss.alpah: unknown key (did you mean 'alpha'?)" in text
    assert "loss.align: expected a string, got 3" in text
    assert "trian: unknown key (did you mean 'train'?)" in text
    assert "train.epochs: expected an integer, got 'five'" in text
    assert "vae.encoder_hidden: expected a list of an integer" in text


def test_semantic_problems_name_key_and_valid_values():
    errs = problems(trial_from_dict, {"loss": {"align": "vea"}, "model": {"temporal": "lstm"},
                                      "anchors": {"source": "coco80", "count": 100}})
    text = "\n".join(errs)
    assert "loss.align: 'vea' is not valid (did you mean 'vae'?); valid: none, kl, ce, mse, vae" in text
    assert "model.temporal: 'lstm' is not valid" in text and "mean, transformer" in text
    assert "anchors.count: 100 is more than the 80 labels of source 'coco80'" in text


def test_calm_is_one_switch_and_the_old_baseline_spelling_is_the_same_arm():
    assert any("needs at least one anchor" in e for e in problems(trial_from_dict, {"anchors": {"count": 0}}))
    new, old = trial_from_dict({"loss": {"align": "none"}}), trial_from_dict({"anchors": {"count": 0},
                                                                             "loss": {"align": "none"}})
    assert new == old and new.anchors.count == 0 and arm_id(new) == arm_id(old)
    # The baseline has no CALM part: a study's base may configure CALM and list the baseline as {loss.align: none}.
    configured = trial_from_dict({"loss": {"align": "none", "alpha": 0.5}, "anchors": {"count": 50, "tau": 20.0},
                                  "vae": {"latent_dim": 64}})
    assert configured == new


def test_a_grid_over_a_calm_knob_crossed_with_the_baseline_is_refused_naming_the_rows(tmp_path):
    f = tmp_path / "t.yaml"
    f.write_text(STUDY.replace("optim.lr_new: [1e-5, 2e-5]", "loss.alpha: [0.05, 0.1]"))
    errs = problems(load_study, f)
    assert len(errs) == 1 and "give one identical trial" in errs[0] and "'loss.alpha': 0.05" in errs[0], errs


@pytest.mark.parametrize("knob, value, owner", [
    ("model.trials", 5, "family tmass"), ("model.support_weight", 0.8, "family tmass"),
    ("model.pool_heads", 2, "family xpool, family tmass"), ("model.temporal", "transformer", "family clip4clip"),
    ("caption.beam_size", 3, "task captioning"), ("vae.latent_dim", 64, "loss.align vae"),
    ("loss.alpha", 0.5, "loss.align vae")])
def test_a_knob_the_trial_does_not_read_is_refused_naming_who_reads_it(knob, value, owner):
    family = "xpool" if knob.startswith("model.temporal") else "clip4clip"
    align = "kl"
    doc = set_path({"model": {"family": family}, "loss": {"align": align}}, knob, value)
    errs = problems(trial_from_dict, doc)
    assert len(errs) == 1 and errs[0].startswith(f"{knob}: {value!r} is read only by {owner}"), errs
    assert f"family {family}, task retrieval" in errs[0]


def test_a_knob_at_its_default_is_never_refused_and_read_knobs_are_accepted():
    trial_from_dict({"model": {"family": "clip4clip", "trials": 20, "pool_heads": 1}})  # defaults: nothing set
    trial_from_dict({"model": {"family": "tmass", "trials": 5, "support_weight": 0.8, "pool_heads": 2}})
    trial_from_dict({"model": {"family": "clip4clip", "temporal": "transformer", "temporal_layers": 2}})
    errs = problems(trial_from_dict, {"model": {"family": "clip4clip", "temporal_layers": 2}})  # mean fusion
    assert errs and errs[0].startswith("model.temporal_layers: 2 is read only by family clip4clip"), errs
    assert problems(trial_from_dict, {"model": {"family": "tmass", "prior_std": 0.5}})  # uniform01 has no std
    trial_from_dict({"model": {"family": "tmass", "prior": "normal", "prior_std": 0.003}})


def test_duplicate_keys_and_syntax_errors_name_the_line(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("name: x\nseeds: [0]\nseeds: [1]\n")
    assert "duplicate key 'seeds'" in problems(load_study, f)[0] and "line 3" in problems(load_study, f)[0]
    f.write_text("name: x\nbase: {model: [\n")
    assert "YAML syntax" in problems(load_study, f)[0] and "line" in problems(load_study, f)[0]


def test_defaults_are_the_paper_settings():
    c = TrialConfig()
    assert (c.model.clip, c.model.pretrained) == ("ViT-B-32-quickgelu", "openai")
    assert (c.anchors.source, c.anchors.count, c.anchors.template) == ("charades", 157, "The content of {label}")
    assert (c.vae.latent_dim, c.loss.alpha, c.vae.dropout) == (256, 0.1, 0.1)
    assert (c.train.batch_size, c.train.epochs, c.data.num_frames, c.optim.lr_new) == (128, 5, 12, 1e-5)


STUDY = """
name: t
base:
  model: {clip: calm-tiny, pretrained: null}
search:
  grid: {optim.lr_new: [1e-5, 2e-5]}
  combinations:
    - {anchors.count: 0, loss.align: none}
    - {anchors.count: 157}
seeds: [0, 1]
presets:
  quick: {seeds: [3], base: {train: {epochs: 1}}}
"""


def test_study_expansion_grid_times_combinations_times_seeds(tmp_path):
    f = tmp_path / "t.yaml"
    f.write_text(STUDY)
    trials = expand(load_study(f))
    assert len(trials) == 2 * 2 * 2
    assert len({t.arm_id for t in trials}) == 4
    assert {t.config.train.seed for t in trials} == {0, 1}
    again = expand(load_study(f))
    assert [t.key for t in trials] == [t.key for t in again]  # arm ids are stable
    quick = expand(load_study(f, preset="quick", sets=["train.batch_size=8", "loss.task_weight=2"]))
    assert {t.seed for t in quick} == {3}
    assert all(t.config.train.epochs == 1 and t.config.train.batch_size == 8 for t in quick)
    assert all(t.config.loss.task_weight == 2.0 for t in quick)


def test_study_errors_are_collected(tmp_path):
    f = tmp_path / "t.yaml"
    f.write_text(STUDY.replace("optim.lr_new", "optim.lr_nwe").replace("seeds: [0, 1]", "seeds: [0, 0]\nmetrc: {}"))
    errs = problems(load_study, f)
    text = "\n".join(errs)
    assert "metrc: unknown key (did you mean 'metric'?)" in text
    f.write_text(STUDY.replace("optim.lr_new", "optim.lr_nwe").replace("seeds: [0, 1]", "seeds: [0, 0]"))
    text = "\n".join(problems(load_study, f))
    assert "search: 'optim.lr_nwe' is not a trial config key (did you mean 'optim.lr_new'?)" in text
    assert "seeds: [0, 0] must be a non-empty list of distinct integers" in text
    f.write_text(STUDY.replace("{anchors.count: 157}", "{anchors.count: 500}"))
    text = "\n".join(problems(load_study, f))
    assert "anchors.count: 500 is more than the 157 labels" in text and "with search values" in text
    assert "did you mean 'quick'" in problems(load_study, f, preset="quik")[0]


def test_optimiser_and_schedule_names_and_epoch_decay_are_checked():
    text = "\n".join(problems(trial_from_dict, {"optim": {"name": "adam", "schedule": "constant-decay",
                                                          "epoch_decay": 1.5}}))
    assert "optim.name: 'adam' is not valid (did you mean 'adamw'?); valid: adamw, bertadam" in text
    assert ("optim.schedule: 'constant-decay' is not valid (did you mean 'constant_decay'?); valid: warmup_cosine, "
            "constant_decay") in text
    assert "optim.epoch_decay: 1.5 must be in (0, 1]" in text
    cfg = trial_from_dict({"optim": {"name": "bertadam", "schedule": "constant_decay", "epoch_decay": 0.9}})
    assert (cfg.optim.name, cfg.optim.schedule, cfg.optim.epoch_decay) == ("bertadam", "constant_decay", 0.9)


def test_epoch_decay_without_the_schedule_that_reads_it_is_refused():
    (err,) = problems(trial_from_dict, {"optim": {"epoch_decay": 0.9}})
    assert err.startswith("optim.epoch_decay: 0.9 is read only by optim.schedule constant_decay; this trial "
                          "(optim.schedule warmup_cosine) does not read it")
    trial_from_dict({"optim": {"epoch_decay": 0.95}})  # its default is never refused


# ---- numbers: every field's valid values, declared once beside it ------------------------------------------------

def number_fields(cls: type, prefix: str = "") -> list[tuple[str, dict, type]]:
    """(path, metadata, int or float) of every number field (or list of numbers) of a config dataclass, at any
    depth."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, path = hints[f.name], f"{prefix}{f.name}"
        item = typing.get_args(tp)[0] if typing.get_origin(tp) is tuple else tp
        if dataclasses.is_dataclass(item):
            out += number_fields(item, f"{path}.")
        elif item in (int, float):
            out.append((path, f.metadata, item))
    return out


STUDY_SECTIONS = (SearchSpace, SchedulerSpec, Resources, FailureSpec)


def test_every_number_field_declares_its_valid_values_and_the_defaults_are_valid():
    paths = number_fields(TrialConfig) + [(f"{s.__name__}.{p}", m, t) for s in STUDY_SECTIONS
                                          for p, m, t in number_fields(s)]
    assert len(paths) > 50
    assert [p for p, metadata, _ in paths if RANGE not in metadata] == []
    assert range_problems(TrialConfig()) == [] and range_problems(Study()) == []


@pytest.mark.parametrize("path, kind", [(p, t) for p, _, t in number_fields(TrialConfig)])
def test_nan_and_infinity_are_refused_in_every_number_field(path, kind):
    default, integer = flatten(to_dict(TrialConfig()))[path], kind is int
    for bad in (math.nan, math.inf, -math.inf):
        value = [bad] if isinstance(default, list) else bad
        text = "\n".join(problems(trial_from_dict, set_path({}, path, value)))
        item = f"{path}[0]" if isinstance(default, list) else path
        assert f"{item}: {'expected an integer, got ' if integer else ''}{bad}" in text, text
        assert integer or f"{item}: {bad} must be a finite number" in text, text


def test_a_range_names_the_key_the_value_and_the_valid_values():
    text = "\n".join(problems(trial_from_dict, {"optim": {"grad_clip": -1.0, "weight_decay": -0.1},
                                                "data": {"loader_workers": -1, "synthetic": {"num_test_videos": 0}},
                                                "vae": {"encoder_hidden": [512, 0]}}))
    for line in ("optim.grad_clip: -1.0 must be >= 0 (0: off)", "optim.weight_decay: -0.1 must be >= 0",
                 "data.loader_workers: -1 must be >= 0", "data.synthetic.num_test_videos: 0 must be >= 1",
                 "vae.encoder_hidden[1]: 0 must be >= 1"):
        assert line in text, text
    trial_from_dict({"optim": {"grad_clip": 0.0, "lr_clip": 0.0}, "data": {"loader_workers": 0}})  # 0 is valid there


def test_head_counts_must_divide_the_width_they_split():
    tiny = {"model": {"clip": "calm-tiny", "pretrained": None}}
    (err,) = problems(trial_from_dict, set_path(set_path(tiny, "model.family", "xpool"), "model.pool_heads", 3))
    assert err == ("model.pool_heads: 3 must divide the embedding width of model.clip calm-tiny (64), as each head "
                   "takes an equal share of it; valid: 1, 2, 4, 8, 16, 32, 64")
    (err,) = problems(trial_from_dict, {"model": {"temporal": "transformer", "temporal_heads": 3}})
    assert err.startswith("model.temporal_heads: 3 must divide the embedding width of model.clip ViT-B-32-quickgelu "
                          "(512)") and err.endswith("valid: 1, 2, 4, 8, 16, 32, 64, 128, 256, 512")
    captioner = {"task": "captioning", "model": {"family": "captioner"}, "caption": {"heads": 3}}
    assert problems(trial_from_dict, captioner)[0].startswith("caption.heads: 3 must divide the text width")
    trial_from_dict(set_path(set_path(tiny, "model.family", "tmass"), "model.pool_heads", 4))
    trial_from_dict({"model": {"temporal": "transformer", "temporal_heads": 16}})


def test_a_label_file_with_one_label_twice_is_refused_naming_both_lines(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("c000 Cat\ndog\n\nbird\n cat \n")
    (err,) = problems(trial_from_dict, {"anchors": {"source": str(labels), "count": 2}})
    assert err.startswith(f"anchors.source: label file '{labels}' lists a label more than once: 'cat' on lines 1, 5;")
    labels.write_text("cat\ndog\n")
    assert trial_from_dict({"anchors": {"source": str(labels), "count": 2}}).anchors.count == 2


@pytest.mark.parametrize("name, why", [
    ("..", "'..' starts with '.'"), (".", "'.' starts with '.'"), (".hidden", "starts with '.'"),
    ("my/study", "contains '/'"), ("a\\b", "contains '\\\\'"), ("a\tb", "contains '\\t'"), ("a b", "contains ' '"),
    ("", "'' is empty"), ("a" * 101, "has 101 characters")])
def test_a_study_name_is_one_folder_name(tmp_path, name, why):
    f = tmp_path / "s.yaml"
    f.write_text("base: {model: {clip: calm-tiny, pretrained: null}}\n")
    (err,) = problems(load_study, f, sets=[f"name={json.dumps(name)}"])
    assert err.startswith("name: ") and why in err and err.endswith(STUDY_NAME_RULE), err


def test_valid_study_names():
    for name in ("x", "anchor_ablation", "v1.2-demo", "a" * 100, "A.b_c-9"):
        assert study_name_problem(name) is None, name


@pytest.mark.parametrize("storage, message", [
    ("hdfs://namenode/runs", "storage: 'hdfs://namenode/runs': scheme hdfs:// is not supported; valid: a local"),
    ("ftp://host/runs", "scheme ftp:// is not supported"),
    ("s3://b/runs?endpoint_overide=h:1", "Unexpected query parameter in S3 URI: 'endpoint_overide' (did you mean "
                                         "'endpoint_override'?)"),
    ("s3://b/runs?scheme=htp", "Invalid S3 connection scheme 'htp'; valid: http, https")])
def test_a_storage_uri_that_cannot_work_is_refused_without_asking_the_store(storage, message):
    (err,) = storage_problems("storage", storage)
    assert message in err, err


def test_storage_values_that_can_work_pass_without_asking_the_store():
    for storage in ("runs", "/data/runs", "file:///tmp/runs", "s3://bucket/runs",
                    "s3://bucket/runs?endpoint_override=127.0.0.1:1&scheme=http", "gs://bucket/runs"):
        assert storage_problems("storage", storage) == [], storage
