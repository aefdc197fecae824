"""Names that cross files and processes, spelled once: metric names per task, the per-epoch metric keys, trial keys,
run folders, storage folders and files, and loss-term columns.

A worker writes `eval/<set>/<metric>` keys, the controller logs them, the results package parses them back and the
report reads the columns they become; each of those places imports the spelling from here. This module is a leaf: it
imports nothing from calm_study.
"""

from __future__ import annotations

from typing import TypedDict

# ---- metrics, per task ------------------------------------------------------------------------------------------
RECALL_KS = (1, 5, 10)
RETRIEVAL_METRICS = tuple(f"{d}_{m}" for d in ("t2v", "v2t") for m in ("R1", "R5", "R10", "MdR", "MnR"))
# Captioning (x100, pycocoevalcap on PTB-tokenised text): the spelling of the paper's Tables 4-5 (calm_tables.csv),
# CIDEr(-D) first (the headline). trivial_CIDEr: the CIDEr of always answering the most frequent training caption, the
# floor a trained captioner must clear (a property of the data, the same in every epoch of a trial).
CAPTION_METRICS = ("CIDEr", "BLEU4", "METEOR", "ROUGE_L")
CAPTIONING_METRICS = (*CAPTION_METRICS, "trivial_CIDEr")
TASK_METRICS: dict[str, tuple[str, ...]] = {"retrieval": RETRIEVAL_METRICS, "captioning": CAPTIONING_METRICS}
# Evaluation splits that are validation data: a report's epoch="best" and the kept "best" checkpoint are chosen on
# them, never on a test split (caption_val: MSR-VTT's official 497-video captioning split).
VAL_SPLITS = ("val", "validation", "caption_val")
# What a report's epoch="best" maximises on the validation set, per task.
SELECT_METRIC: dict[str, str] = {"retrieval": "t2v_R1", "captioning": "CIDEr"}


def all_metric_names() -> tuple[str, ...]:
    """Every metric any task reports, in task order (the Parquet has one column each)."""
    return tuple(dict.fromkeys(m for names in TASK_METRICS.values() for m in names))


# ---- the per-epoch record: what fit reports, the metric log stores, and results, status and tracking read --------
# Besides these keys a record holds every loss column (loss_column), one learning rate per group (lr_column) and the
# eval/<set>/<metric> values (eval_key).
class EpochRecord(TypedDict, total=False):
    epoch: int  # epochs completed, 1-based
    status: str  # running | completed | diverged (the trial's state after this epoch)
    train_s: float  # seconds of training in the epoch
    eval_s: float  # seconds of evaluation after it
    logged_at: float  # Unix time the line was logged (added by the Ray controller)
    train_skipped_videos: int  # training videos dropped under data.on_error skip
    checkpoint: str | None  # the epoch's checkpoint in storage (added where the epoch is logged)
    # Where a trial's time goes outside training and evaluation (docs/performance.md, "Where a study's time goes"):
    setup_s: float  # the first epoch after each (re)start only: seconds from the trial's process taking it up to fit()
    #                 having built the model, the task and the data (the first training step comes next)
    checkpoint_s: float  # seconds writing the epoch's checkpoint (and, trained in the trial's process, storing it)
    checkpoint_bytes: int  # its size


# What an epoch cost, not what it learned: differs between two runs of the same trial (machine load, folder names
# stored in the checkpoint's config). Compare runs without them.
COST_KEYS = ("train_s", "eval_s", "setup_s", "checkpoint_s", "checkpoint_bytes")


# Named parameter groups, each with its own learning rate (optim.lr_<group>): CLIP's encoders and the new modules.
LR_GROUPS = ("clip", "new")
# optim.name and optim.schedule (training/optim.py builds each; here so that validation needs no torch)
OPTIMIZERS = ("adamw", "bertadam")
SCHEDULES = ("warmup_cosine", "constant_decay")


def lr_column(group: str) -> str:
    """The per-epoch key and Parquet column of a group's current learning rate: 'clip' -> 'lr_clip'."""
    return f"lr_{group}"


# ---- per-epoch metric keys (what a worker reports and the metric log stores) ------------------------------------
EVAL_PREFIX = "eval/"
SKIPPED_VIDEOS = "skipped_videos"  # per evaluation set: videos dropped under data.on_error=skip
SAMPLES = "samples"  # per evaluation set (captioning): a JSON list of a few decoded captions, not a metric


def eval_key(eval_set: str, metric: str) -> str:
    """'eval/<set>/<metric>', e.g. 'eval/synthetic-plain-test/t2v_R1'."""
    return f"{EVAL_PREFIX}{eval_set}/{metric}"


def eval_metrics_of(record: dict, eval_set: str) -> dict:
    """The metrics of one evaluation set in a reported record: {metric: value}."""
    prefix = f"{EVAL_PREFIX}{eval_set}/"
    return {k[len(prefix):]: v for k, v in record.items() if k.startswith(prefix)}


# ---- loss terms -------------------------------------------------------------------------------------------------
LOSS_PREFIX = "loss_"
# A logged term whose column would collide with a config column: the kl/ce/mse distance "align" would be
# "loss_align", which is also the flattened config key loss.align (the variant's name).
RENAMED_TERMS = {"loss_align": "loss_align_dist"}
# The terms themselves are declared by their owners (each task, family and alignment variant registry entry);
# study/results.py gathers them (loss_terms) into the results schema.


def loss_column(term: str) -> str:
    """The per-epoch key and Parquet column of a loss term: 'task' -> 'loss_task', 'align' -> 'loss_align_dist'."""
    key = f"{LOSS_PREFIX}{term}"
    return RENAMED_TERMS.get(key, key)


# ---- data ------------------------------------------------------------------------------------------------------
DATA_ENV = "CALM_STUDY_DATA"  # a folder with one sub-folder per dataset (msrvtt/, didemo/, lsmdc/, msvd/)
VERBOSE_ENV = "CALM_STUDY_VERBOSE"  # 1: `run` shows Ray's own output too (as `run --verbose`)
# The batch key of cached CLIP frame features (B, T, D) in frozen-feature mode, where pixels would be under "frames":
# the datasets write it, the tasks move it to the device, the families read it instead of encoding pixels.
FRAME_FEATURES = "frame_features"


# ---- precision (train.precision): the autocast dtypes training/fit.py knows ----------------------------------------
PRECISIONS = ("fp32", "bf16")


# ---- training regimes (the `regime` results column) --------------------------------------------------------------
REGIMES = ("finetune", "frozen")  # CLIP fine-tuned with the heads | CLIP frozen, heads trained on cached features


def regime(frozen: bool) -> str:
    """The `regime` of a trial: 'frozen' under model.frozen, else 'finetune'. Reports never mix the two in a table."""
    return REGIMES[1] if frozen else REGIMES[0]


# ---- study names ------------------------------------------------------------------------------------------------
# A study's name is a folder name in its storage and its results folder (<storage>/<name>/, <results_dir>/<name>/):
# one safe path component, so that no name points a study (or --fresh, which moves folders aside) anywhere else.
STUDY_NAME_MAX = 100
STUDY_NAME_RULE = (f"a study name is one folder name: ASCII letters, digits, '-', '_' and '.', not starting with '.', "
                   f"at most {STUDY_NAME_MAX} characters")
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def study_name_problem(name: str) -> str | None:
    """What is wrong with `name` as a study name ("'..' starts with '.'; a study name is ..."), or None."""
    bad = sorted({c for c in name if c not in _NAME_CHARS})
    if not name:
        why = "is empty"
    elif bad:
        why = f"contains {', '.join(repr(c) for c in bad)}"
    elif name.startswith("."):
        why = "starts with '.'"
    elif len(name) > STUDY_NAME_MAX:
        why = f"has {len(name)} characters"
    else:
        return None
    shown = name if len(name) <= 40 else f"{name[:40]}..."
    return f"{shown!r} {why}; {STUDY_NAME_RULE}"


# ---- trials, runs and storage -----------------------------------------------------------------------------------
RUN_PREFIX = "train-"
TUNE_FOLDER = "tune"  # <storage>/<study>/tune/: Ray Tune's experiment
TRAIN_FOLDER = "train"  # <storage>/<study>/train/train-<key>/: the trial's checkpoints and its metric log
CHECKPOINT_PREFIX = "checkpoint_"  # a checkpoint folder in a run folder (Ray Train's and calm_study's own)
# resources.launch: how a trial trains. auto: a 1-worker trial trains in its Tune trial's own process, a multi-worker
# trial through Ray Train; ray_train: every trial through Ray Train (its controller and worker group).
LAUNCHES = ("auto", "ray_train")
MANIFEST = "manifest.json"  # <storage>/<study>/manifest.json
# <storage>/<study>/runtime.json: the latest `run`'s settings of how each trial runs (config RUNTIME fields: data
# roots, caches, workers, ...), which a restored Tune experiment would otherwise take from its first run
RUNTIME_FILE = "runtime.json"
TRIAL_FILE = "trial.json"  # an Optuna trial's identity, beside its metric log
METRIC_LOG = "metrics.jsonl"  # one line per reported epoch
RESULTS_FILE = "trials.parquet"  # <results_dir>/<study>/trials.parquet
CHECKPOINT_FILE = "state.pt"
# Inside each checkpoint: the metrics reported with it, so that an epoch whose log line a crash lost (between Ray
# Train registering the checkpoint and the log line being written) is logged again before training resumes.
EPOCH_RECORD_FILE = "epoch.json"
# <results_dir>/<study>/_captions.json: each trial's decoded samples at its last epoch. The leading "_" keeps it out of
# pd.read_parquet("results") (pyarrow skips names starting with "_" or ".").
SAMPLES_FILE = "_captions.json"
# <results_dir>/<study>/_timing.jsonl: one line per `run`, where its time went (study/timing.py)
TIMING_FILE = "_timing.jsonl"


def trial_key(arm_id: str, seed: int) -> str:
    """'<arm id>-s<seed>': names the trial's Tune folder, its Train run and its rows."""
    return f"{arm_id}-s{seed}"


def run_name(key: str) -> str:
    """The Ray Train run (and storage folder) of a trial: 'train-<key>'."""
    return f"{RUN_PREFIX}{key}"


def key_of_run(name: str) -> str | None:
    """The trial key of a run folder name, or None for any other name."""
    return name[len(RUN_PREFIX):] if name.startswith(RUN_PREFIX) else None
