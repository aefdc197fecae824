"""One trial's configuration: frozen dataclasses with documented defaults (paper settings where the paper states them).

Choices the CALM paper leaves open (τ, stop-gradient on S_p, VAE widths, the CLIP/new-module learning-rate split)
are explicit fields here, each with the reason for its default (docs/calm-choices.md); nothing of the kind is a
constant in the code.

This module is a leaf: it imports no registry. Names (model families, tasks, fusions, datasets, ...) are checked
against their registries in calm_study/validate.py, and which knobs each family, task and alignment variant reads is
declared by that registry entry (a knob the trial's components do not read is refused). Adding a field with a default
changes no arm id (calm_study/study/identity.py); record its default in identity_baseline.json in the same change.

Each field also says, once, how it relates to the arm (what is trained and measured): by default it defines the arm;
`metadata=RUNTIME` marks a setting of how a trial runs (where data lives, caches, workers, chunking, logging), left out
of arm ids and free to change between runs and when resuming; `metadata=RESUMABLE` marks one that defines the arm but
with which a checkpoint of another value is still a valid start (more epochs, other evaluation sets). Arm identity,
the study's "same as before" check and the checkpoint check all read this mark (`fields_with_role`).

Every number field also declares its valid values, once, on its own line: `metadata=valid("[0, 1)")` (an interval;
`note` says what a special value means, e.g. grad_clip's "0: off"). validate.py checks every field of a config against
them and refuses NaN and ±inf in any number field, so a range is not written again as a check; what a registry entry
still checks itself is what crosses fields (a head count that must divide CLIP's width, anchors.count against its
label source).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields, is_dataclass

ROLE = "arm"  # the metadata key of a field's role
RUNTIME = {ROLE: "runtime"}  # how a trial runs, not what it trains: out of the arm id; may change when resuming
RESUMABLE = {ROLE: "resumable"}  # defines the arm, but a checkpoint written with another value is a valid start
RANGE = "valid"  # the metadata key of a numeric field's valid values (a Range)
SEED = "[0, 2**32)"  # the valid values of every seed (NumPy's)


@dataclass(frozen=True)
class Range:
    """The valid values of a numeric field (of each item, for a list of numbers): an interval of finite numbers."""
    low: float
    high: float
    low_closed: bool
    high_closed: bool
    note: str = ""  # what a special value means, said with the rule, e.g. "0: off"

    def __contains__(self, value: float) -> bool:
        return (math.isfinite(value) and (self.low <= value if self.low_closed else self.low < value)
                and (value <= self.high if self.high_closed else value < self.high))

    def __str__(self) -> str:
        if self.high == math.inf:
            rule = f"{'>=' if self.low_closed else '>'} {_number(self.low)}"
        else:
            rule = (f"in {'[' if self.low_closed else '('}{_number(self.low)}, {_number(self.high)}"
                    f"{']' if self.high_closed else ')'}")
        return f"{rule} ({self.note})" if self.note else rule


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _bound(text: str) -> float:
    if text in ("inf", "-inf"):
        return float(text)
    base, _, exponent = text.partition("**")
    return int(base) ** int(exponent) if exponent else float(text)


def valid(interval: str, role: dict | None = None, note: str = "") -> dict:
    """The metadata of a numeric field: its valid values as an interval, "[0, 1)", "(0, inf)", "[1, inf)" (a bound
    may be written 2**32), what a special value means (`note`), and the field's role (RUNTIME, RESUMABLE) if any.
    validate.py checks every field against it, and refuses NaN and ±inf in every number field."""
    m = re.fullmatch(r"([\[(])\s*([^,\s]+)\s*,\s*([^,\s]+)\s*([\])])", interval)
    if m is None:
        raise ValueError(f"not an interval: {interval!r} (e.g. '[0, 1)' or '(0, inf)')")
    return {RANGE: Range(_bound(m[2]), _bound(m[3]), m[1] == "[", m[4] == "]", note), **(role or {})}


@dataclass(frozen=True)
class ModelConfig:
    # Model family (models/families.py): clip4clip (one text-independent video feature per video) | xpool (X-Pool:
    # each video pooled over its frames by the query text) | tmass (X-Pool + T-MASS's stochastic text; the paper's base)
    # | captioner (task captioning: CLIP frames -> caption decoder)
    family: str = "clip4clip"
    clip: str = "ViT-B-32-quickgelu"  # open_clip architecture (open_clip.list_models(), plus our calm-tiny)
    pretrained: str | None = "openai"  # open_clip pretrained tag of `clip`, a local checkpoint file, or null (random)
    temporal: str = "mean"  # temporal fusion Ψ_TE: mean | transformer
    temporal_layers: int = field(default=4, metadata=valid("[1, inf)"))  # transformer fusion: encoder layers
    # transformer fusion: attention heads; must also divide the CLIP embedding width (512 for ViT-B/32)
    temporal_heads: int = field(default=8, metadata=valid("[1, inf)"))
    temporal_dropout: float = field(default=0.1, metadata=valid("[0, 1)"))  # transformer fusion: dropout
    # xpool/tmass: heads of the text-conditioned pooling (X-Pool: 1); must also divide the CLIP embedding width
    pool_heads: int = field(default=1, metadata=valid("[1, inf)"))
    # xpool/tmass: dropout of the pooling's linear branch (X-Pool/T-MASS: 0.3)
    pool_dropout: float = field(default=0.3, metadata=valid("[0, 1)"))
    prior: str = "uniform01"  # tmass: ε of t_s = t + ε⊙R: uniform01 (U[0,1)^D, T-MASS's default) | normal (N(0, std²))
    # tmass, prior normal: std of ε (T-MASS's LSMDC recipe: 3e-3)
    prior_std: float = field(default=1.0, metadata=valid("(0, inf)"))
    # tmass: weight of the support-text loss (T-MASS's MSR-VTT recipe: 0.8)
    support_weight: float = field(default=0.0, metadata=valid("[0, inf)"))
    # tmass: stochastic texts per (text, video) pair at evaluation, the best kept (T-MASS: 20)
    trials: int = field(default=20, metadata=valid("[1, inf)"))
    # tmass: seed of those draws (per text), so evaluation is deterministic
    eval_seed: int = field(default=0, metadata=valid(SEED))
    # true: the CLIP encoders stay fixed; their frame and caption features are computed once per (weights, T, S,
    # split) into data.feature_cache and trials train only what sits on top (pooling, radius, temporal fusion,
    # anchor embeddings, VAE, caption decoder, logit scale). Results rows say regime "frozen" (docs/performance.md).
    frozen: bool = False


@dataclass(frozen=True)
class AnchorConfig:
    source: str = "charades"  # charades (157) | coco80 | coco91 | charades+coco (248) | path to a label file
    # anchors K, a seeded random subset of the source (at most its number of labels); CALM needs >= 1 (0: the
    # baseline's older spelling, loss.align none)
    count: int = field(default=157, metadata=valid("[0, inf)"))
    # seed of that subset: the same seed picks the same labels in every trial
    subset_seed: int = field(default=0, metadata=valid(SEED))
    template: str = "The content of {label}"  # prompt; must contain {label}
    encode: str = "every_step"  # every_step: prompts through the trainable text encoder each step | once: frozen
    # τ in softmax(τ·cos(·, P)); unstated in the paper; 1/0.07 ≈ 14.29 = CLIP's initial scale
    tau: float = field(default=1 / 0.07, metadata=valid("(0, inf)"))
    # std of the learnable per-anchor embedding added to each prompt feature (0: it starts at zero)
    embed_init_std: float = field(default=0.02, metadata=valid("[0, inf)"))


@dataclass(frozen=True)
class LossConfig:
    align: str = "vae"  # none (baseline) | kl | ce | mse (discriminative, Table 7) | vae (CALM)
    # weight of the alignment term: L_rec for vae, the kl/ce/mse distance otherwise
    align_weight: float = field(default=1.0, metadata=valid("[0, inf)"))
    # α, weight of the VAE's KL(q(z|V_p) ‖ N(0, I)); the paper's 0.1
    alpha: float = field(default=0.1, metadata=valid("[0, inf)"))
    # S_p as a stop-gradient target? Unstated in the paper; false = the loss exactly as written (gradients reach the
    # text encoder and anchors through S_p too).
    detach_target: bool = False
    # weight of the task's loss (retrieval: symmetric InfoNCE; captioning: caption CE)
    task_weight: float = field(default=1.0, metadata=valid("[0, inf)"))
    # clamp of exp(CLIP's learnable logit scale), as in CLIP
    logit_scale_max: float = field(default=100.0, metadata=valid("(0, inf)"))


@dataclass(frozen=True)
class VAEConfig:
    latent_dim: int = field(default=256, metadata=valid("[1, inf)"))  # d, the paper's 256
    # Hidden FC widths of the encoder (before μ, log σ²) and decoder (before Ŝ_p logits). Unstated in the paper;
    # one 512-wide encoder layer makes VAE + anchor embeddings ≈ 0.46M parameters at K=157, D=512 — the paper's
    # "+0.5M" (docs/calm-choices.md#vae-hidden-sizes). Every width >= 1.
    encoder_hidden: tuple[int, ...] = field(default=(512,), metadata=valid("[1, inf)"))
    decoder_hidden: tuple[int, ...] = field(default=(), metadata=valid("[1, inf)"))
    dropout: float = field(default=0.1, metadata=valid("[0, 1)"))  # dropout after each hidden layer, the paper's 0.1


@dataclass(frozen=True)
class DatasetRef:
    name: str = ""  # label of the set in results; default "<dataset>-<split>" ("synthetic-<domain>-<split>")
    dataset: str = "synthetic"  # synthetic | msrvtt | didemo | lsmdc | msvd (roots in data.roots)
    domain: str = "plain"  # synthetic only: plain | textured
    # synthetic: train | test; msrvtt: train (9k) | train7k | test (1k-A) | caption_train | caption_val | caption_test
    # (the official 6,513 / 497 / 2,990 captioning split, every caption kept); others: train | val | test
    split: str = "test"

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        synthetic = self.dataset == "synthetic"
        return f"synthetic-{self.domain}-{self.split}" if synthetic else f"{self.dataset}-{self.split}"


@dataclass(frozen=True)
class SyntheticConfig:
    num_train_videos: int = field(default=240, metadata=valid("[1, inf)"))  # per domain
    num_test_videos: int = field(default=60, metadata=valid("[1, inf)"))  # per domain
    captions_per_video: int = field(default=2, metadata=valid("[1, inf)"))
    frames_per_video: int = field(default=16, metadata=valid("[2, inf)"))  # frames of each generated video (motion)
    # generator seed: the same seed gives byte-identical annotations
    seed: int = field(default=0, metadata=valid(SEED))


@dataclass(frozen=True)
class DataConfig:
    train: DatasetRef = DatasetRef(split="train")  # training set
    # evaluated at the end of every epoch, each on its own
    eval: tuple[DatasetRef, ...] = field(default=(DatasetRef(),), metadata=RESUMABLE)
    num_frames: int = field(default=12, metadata=valid("[1, inf)"))  # T, frames sampled uniformly per video (paper: 12)
    cache_dir: str = field(default="~/.cache/calm_study", metadata=RUNTIME)  # where generated (synthetic) data lives
    # dataset -> its root folder, e.g. {msrvtt: /data/MSRVTT}
    roots: dict[str, str] = field(default_factory=dict, metadata=RUNTIME)
    # dataset -> video folder (relative to root); "videos"
    video_dirs: dict[str, str] = field(default_factory=dict, metadata=RUNTIME)
    # video decoder: decord | pyav (a fallback for files decord cannot read)
    decoder: str = field(default="decord", metadata=RUNTIME)
    # missing/unreadable videos: error (stop, naming the files) | skip (drop, log, count)
    on_error: str = field(default="error", metadata=RUNTIME)
    # skip: the largest fraction of a split's videos that may be unreadable; beyond it the run stops before training
    max_skipped_fraction: float = field(default=0.01, metadata=valid("[0, 1]", RUNTIME))
    # folder of decoded uint8 frames, shared by every trial and epoch ("" = decode each time)
    frame_cache: str = field(default="", metadata=RUNTIME)
    # model.frozen: folder of cached CLIP features, shared by every trial ("" = <data.cache_dir>/features)
    feature_cache: str = field(default="", metadata=RUNTIME)
    # DataLoader worker processes per training worker
    loader_workers: int = field(default=0, metadata=valid("[0, inf)", RUNTIME, "0: load in the training process"))
    synthetic: SyntheticConfig = SyntheticConfig()


@dataclass(frozen=True)
class OptimConfig:
    # Paper: "AdamW, lr 1e-5". The split is unstated; T-MASS (CALM's baseline) uses 1e-6 for CLIP, 1e-5 for the rest.
    # CLIP image/text encoders and logit scale
    lr_clip: float = field(default=1e-6, metadata=valid("[0, inf)", note="0: the group does not learn"))
    # new modules: temporal fusion, anchor embeddings, VAE
    lr_new: float = field(default=1e-5, metadata=valid("[0, inf)", note="0: the group does not learn"))
    # adamw: torch's AdamW. bertadam: BERT's Adam as CoCap trains its captioner (docs/captioning.md): no bias
    # correction, the same decoupled weight decay, and grad_clip applied to each parameter tensor's gradient on its
    # own instead of to the global norm
    name: str = "adamw"
    # decoupled weight decay (T-MASS / CLIP4Clip value); CoCap: 0.01
    weight_decay: float = field(default=0.2, metadata=valid("[0, inf)"))
    # (β1, β2), two numbers; CoCap's BertAdam: (0.9, 0.999)
    betas: tuple[float, ...] = field(default=(0.9, 0.98), metadata=valid("[0, 1)"))
    eps: float = field(default=1e-6, metadata=valid("(0, inf)"))  # ε of the update's denominator
    # warmup_cosine: linear warmup over warmup_fraction of all steps, then cosine to 0 (T-MASS). constant_decay
    # (CoCap): the same warmup, then constant, times epoch_decay per epoch after the first int(warmup_fraction x
    # train.epochs) epochs
    schedule: str = "warmup_cosine"
    # of all steps (warmup) and, for constant_decay, of the epochs held
    warmup_fraction: float = field(default=0.1, metadata=valid("[0, 1)"))
    # schedule constant_decay: factor per later epoch (CoCap: 0.95)
    epoch_decay: float = field(default=0.95, metadata=valid("(0, 1]"))
    # max global gradient norm (per tensor with optim.name bertadam)
    grad_clip: float = field(default=1.0, metadata=valid("[0, inf)", note="0: off"))


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = field(default=5, metadata=valid("[1, inf)", RESUMABLE))  # paper: 5 for retrieval
    # global batch (split evenly over training workers); paper: 128
    batch_size: int = field(default=128, metadata=valid("[1, inf)"))
    eval_batch_size: int = field(default=32, metadata=valid("[1, inf)", RUNTIME))  # videos per evaluation batch
    # seeds model init, data order and sampling (studies set it from `seeds`)
    seed: int = field(default=0, metadata=valid(SEED))
    precision: str = "fp32"  # fp32 | bf16 (autocast; CUDA or CPU)
    # print a progress line every N steps
    log_every: int = field(default=50, metadata=valid("[0, inf)", RUNTIME, "0: only per epoch"))


@dataclass(frozen=True)
class EvaluationConfig:
    # leakfree: every (text, video) pair is scored with that text only. tmass_compat: T-MASS's published indexing, where
    # each candidate video is pooled by its own ground-truth caption (the evaluation leak; xpool/tmass only, one
    # caption per video, as many texts as videos) — to compare with published numbers and measure the leak; every
    # results row and report caption names the protocol (docs/metrics.md, "Leak-free scoring")
    protocol: str = "leakfree"
    # texts scored against every video per call: memory ~ text_chunk x N_video x D floats
    text_chunk: int = field(default=64, metadata=valid("[1, inf)", RUNTIME))
    dsl: bool = False  # T-MASS's DSL post-processing (S ⊙ softmax(100·S) over the queries); labelled when on


@dataclass(frozen=True)
class CaptionConfig:
    # Task captioning, family captioner (CoCap's recipe, docs/captioning.md): a transformer decoder over the frame
    # tokens of the CLIP image encoder, CLIP's BPE tokens, word embedding and output layer copied from CLIP's token
    # embedding; its width is CLIP's text width (= the embedding width, 512, for ViT-B/32).
    layers: int = field(default=2, metadata=valid("[1, inf)"))  # decoder layers (CoCap: 2)
    # attention heads (CoCap: 8); must also divide the width (CLIP's text width)
    heads: int = field(default=8, metadata=valid("[1, inf)"))
    dropout: float = field(default=0.1, metadata=valid("[0, 1)"))  # decoder dropout (CoCap: 0.1)
    # of the caption cross-entropy (CoCap: 0.1), padding ignored
    label_smoothing: float = field(default=0.1, metadata=valid("[0, 1)"))
    beam_size: int = field(default=1, metadata=valid("[1, inf)"))  # decoding: 1 = greedy (CoCap), > 1 = beam search
    # beam search: hypotheses ranked by log p / length^length_penalty
    length_penalty: float = field(default=1.0, metadata=valid("[0, inf)"))
    # most tokens a decoded caption has (BOS and EOS included), capped by CLIP's context
    max_length: int = field(default=30, metadata=valid("[2, inf)"))
    # decoded captions per evaluation set kept with the results, for people to read
    samples: int = field(default=5, metadata=valid("[0, inf)", RUNTIME))


@dataclass(frozen=True)
class TrialConfig:
    task: str = "retrieval"  # what is trained and evaluated (calm_study/tasks): retrieval | captioning
    model: ModelConfig = field(default_factory=ModelConfig)
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    caption: CaptionConfig = field(default_factory=CaptionConfig)


def fields_with_role(role: str, cls: type = TrialConfig, prefix: str = "") -> tuple[str, ...]:
    """The dotted paths of every field marked `role` ("runtime" | "resumable"), e.g. ("data.roots", ...)."""
    out: list[str] = []
    for f in fields(cls):
        path = f"{prefix}{f.name}"
        if f.metadata.get(ROLE) == role:
            out.append(path)
        elif isinstance(f.default_factory, type) and is_dataclass(f.default_factory):  # a section
            out += fields_with_role(role, f.default_factory, f"{path}.")
        elif is_dataclass(f.default):  # a section given by an instance (data.synthetic, data.train)
            out += fields_with_role(role, type(f.default), f"{path}.")
    return tuple(out)


def under(path: str, paths: tuple[str, ...]) -> bool:
    """Whether a flattened key ('data.roots.msrvtt') is one of `paths` or inside one of them."""
    return any(path == p or path.startswith(f"{p}.") for p in paths)


def calm_enabled(cfg: TrialConfig) -> bool:
    """The one switch of CALM: loss.align none is the family alone (the baseline); any other variant adds the anchors
    and the alignment terms. (anchors.count 0 is the same baseline's older spelling, kept so old studies load.)"""
    return cfg.loss.align != "none"
