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
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass

ROLE = "arm"  # the metadata key of a field's role
RUNTIME = {ROLE: "runtime"}  # how a trial runs, not what it trains: out of the arm id; may change when resuming
RESUMABLE = {ROLE: "resumable"}  # defines the arm, but a checkpoint written with another value is a valid start


@dataclass(frozen=True)
class ModelConfig:
    # Model family (models/families.py): clip4clip (one text-independent video feature per video) | xpool (X-Pool:
    # each video pooled over its frames by the query text) | tmass (X-Pool + T-MASS's stochastic text; the paper's base)
    # | captioner (task captioning: CLIP frames -> caption decoder)
    family: str = "clip4clip"
    clip: str = "ViT-B-32-quickgelu"  # open_clip architecture (open_clip.list_models(), plus our calm-tiny)
    pretrained: str | None = "openai"  # open_clip pretrained tag of `clip`, a local checkpoint file, or null (random)
    temporal: str = "mean"  # temporal fusion Ψ_TE: mean | transformer
    temporal_layers: int = 4  # transformer fusion: encoder layers (>= 1)
    temporal_heads: int = 8  # transformer fusion: attention heads (must divide the CLIP embedding width)
    temporal_dropout: float = 0.1  # transformer fusion: dropout in [0, 1)
    pool_heads: int = 1  # xpool/tmass: heads of the text-conditioned pooling (X-Pool: 1); must divide the CLIP width
    pool_dropout: float = 0.3  # xpool/tmass: dropout of the pooling's linear branch (X-Pool/T-MASS: 0.3) in [0, 1)
    prior: str = "uniform01"  # tmass: ε of t_s = t + ε⊙R: uniform01 (U[0,1)^D, T-MASS's default) | normal (N(0, std²))
    prior_std: float = 1.0  # tmass, prior normal: std of ε (T-MASS's LSMDC recipe: 3e-3); > 0
    support_weight: float = 0.0  # tmass: weight of the support-text loss (T-MASS's MSR-VTT recipe: 0.8); >= 0
    trials: int = 20  # tmass: stochastic texts per (text, video) pair at evaluation, the best kept (T-MASS: 20); >= 1
    eval_seed: int = 0  # tmass: seed of those draws (per text), so evaluation is deterministic
    # true: the CLIP encoders stay fixed; their frame and caption features are computed once per (weights, T, S,
    # split) into data.feature_cache and trials train only what sits on top (pooling, radius, temporal fusion,
    # anchor embeddings, VAE, caption decoder, logit scale). Results rows say regime "frozen" (docs/performance.md).
    frozen: bool = False


@dataclass(frozen=True)
class AnchorConfig:
    source: str = "charades"  # charades (157) | coco80 | coco91 | charades+coco (248) | path to a label file
    count: int = 157  # anchors K, a seeded random subset of the source; 0 = baseline, no anchors
    subset_seed: int = 0  # seed of that subset: the same seed picks the same labels in every trial
    template: str = "The content of {label}"  # prompt; must contain {label}
    encode: str = "every_step"  # every_step: prompts through the trainable text encoder each step | once: frozen
    tau: float = 1 / 0.07  # τ in softmax(τ·cos(·, P)); unstated in the paper; 1/0.07 ≈ 14.29 = CLIP's initial scale
    embed_init_std: float = 0.02  # std of the learnable per-anchor embedding added to each prompt feature


@dataclass(frozen=True)
class LossConfig:
    align: str = "vae"  # none (baseline) | kl | ce | mse (discriminative, Table 7) | vae (CALM)
    align_weight: float = 1.0  # weight of the alignment term: L_rec for vae, the kl/ce/mse distance otherwise
    alpha: float = 0.1  # α, weight of the VAE's KL(q(z|V_p) ‖ N(0, I)); the paper's 0.1
    # S_p as a stop-gradient target? Unstated in the paper; false = the loss exactly as written (gradients reach the
    # text encoder and anchors through S_p too).
    detach_target: bool = False
    task_weight: float = 1.0  # weight of the task's loss (retrieval: symmetric InfoNCE; captioning: caption CE)
    logit_scale_max: float = 100.0  # clamp of exp(CLIP's learnable logit scale), as in CLIP


@dataclass(frozen=True)
class VAEConfig:
    latent_dim: int = 256  # d, the paper's 256
    # Hidden FC widths of the encoder (before μ, log σ²) and decoder (before Ŝ_p logits). Unstated in the paper;
    # one 512-wide encoder layer makes VAE + anchor embeddings ≈ 0.46M parameters at K=157, D=512 — the paper's
    # "+0.5M" (docs/calm-choices.md#vae-hidden-sizes).
    encoder_hidden: tuple[int, ...] = (512,)
    decoder_hidden: tuple[int, ...] = ()
    dropout: float = 0.1  # dropout after each hidden layer, the paper's 0.1


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
    num_train_videos: int = 240  # per domain
    num_test_videos: int = 60  # per domain
    captions_per_video: int = 2
    frames_per_video: int = 16
    seed: int = 0  # generator seed: the same seed gives byte-identical annotations


@dataclass(frozen=True)
class DataConfig:
    train: DatasetRef = DatasetRef(split="train")  # training set
    # evaluated at the end of every epoch, each on its own
    eval: tuple[DatasetRef, ...] = field(default=(DatasetRef(),), metadata=RESUMABLE)
    num_frames: int = 12  # T, frames sampled uniformly per video (paper: 12)
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
    max_skipped_fraction: float = field(default=0.01, metadata=RUNTIME)
    # folder of decoded uint8 frames, shared by every trial and epoch ("" = decode each time)
    frame_cache: str = field(default="", metadata=RUNTIME)
    # model.frozen: folder of cached CLIP features, shared by every trial ("" = <data.cache_dir>/features)
    feature_cache: str = field(default="", metadata=RUNTIME)
    loader_workers: int = field(default=0, metadata=RUNTIME)  # DataLoader worker processes per training worker
    synthetic: SyntheticConfig = SyntheticConfig()


@dataclass(frozen=True)
class OptimConfig:
    # Paper: "AdamW, lr 1e-5". The split is unstated; T-MASS (CALM's baseline) uses 1e-6 for CLIP, 1e-5 for the rest.
    lr_clip: float = 1e-6  # CLIP image/text encoders and logit scale
    lr_new: float = 1e-5  # new modules: temporal fusion, anchor embeddings, VAE
    # adamw: torch's AdamW. bertadam: BERT's Adam as CoCap trains its captioner (docs/captioning.md): no bias
    # correction, the same decoupled weight decay, and grad_clip applied to each parameter tensor's gradient on its
    # own instead of to the global norm
    name: str = "adamw"
    weight_decay: float = 0.2  # decoupled weight decay (T-MASS / CLIP4Clip value); CoCap: 0.01
    betas: tuple[float, ...] = (0.9, 0.98)  # (β1, β2); CoCap's BertAdam: (0.9, 0.999)
    eps: float = 1e-6  # ε
    # warmup_cosine: linear warmup over warmup_fraction of all steps, then cosine to 0 (T-MASS). constant_decay
    # (CoCap): the same warmup, then constant, times epoch_decay per epoch after the first int(warmup_fraction x
    # train.epochs) epochs
    schedule: str = "warmup_cosine"
    warmup_fraction: float = 0.1  # of all steps (warmup) and, for constant_decay, of the epochs held; in [0, 1)
    epoch_decay: float = 0.95  # schedule constant_decay: factor per later epoch (CoCap: 0.95); in (0, 1]
    grad_clip: float = 1.0  # max global gradient norm (per tensor with optim.name bertadam); 0 = off


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = field(default=5, metadata=RESUMABLE)  # paper: 5 for retrieval
    batch_size: int = 128  # global batch (split evenly over training workers); paper: 128
    eval_batch_size: int = field(default=32, metadata=RUNTIME)  # videos per evaluation batch
    seed: int = 0  # seeds model init, data order and sampling (studies set it from `seeds`)
    precision: str = "fp32"  # fp32 | bf16 (autocast; CUDA or CPU)
    log_every: int = field(default=50, metadata=RUNTIME)  # print a progress line every N steps (0 = only per epoch)


@dataclass(frozen=True)
class EvaluationConfig:
    # leakfree: every (text, video) pair is scored with that text only. tmass_compat: T-MASS's published indexing, where
    # each candidate video is pooled by its own ground-truth caption (the evaluation leak; xpool/tmass only, one
    # caption per video, as many texts as videos) — to compare with published numbers and measure the leak; every
    # results row and report caption names the protocol (docs/metrics.md, "Leak-free scoring")
    protocol: str = "leakfree"
    # texts scored against every video per call: memory ~ text_chunk x N_video x D floats; >= 1
    text_chunk: int = field(default=64, metadata=RUNTIME)
    dsl: bool = False  # T-MASS's DSL post-processing (S ⊙ softmax(100·S) over the queries); labelled when on


@dataclass(frozen=True)
class CaptionConfig:
    # Task captioning, family captioner (CoCap's recipe, docs/captioning.md): a transformer decoder over the frame
    # tokens of the CLIP image encoder, CLIP's BPE tokens, word embedding and output layer copied from CLIP's token
    # embedding; its width is CLIP's text width (= the embedding width, 512, for ViT-B/32).
    layers: int = 2  # decoder layers (CoCap: 2); >= 1
    heads: int = 8  # attention heads (CoCap: 8); must divide the width
    dropout: float = 0.1  # decoder dropout (CoCap: 0.1) in [0, 1)
    label_smoothing: float = 0.1  # of the caption cross-entropy (CoCap: 0.1), padding ignored; in [0, 1)
    beam_size: int = 1  # decoding: 1 = greedy (CoCap), > 1 = beam search
    length_penalty: float = 1.0  # beam search: hypotheses ranked by log p / length^length_penalty; >= 0
    max_length: int = 30  # most tokens a decoded caption has (BOS and EOS included), capped by CLIP's context; >= 2
    # decoded captions per evaluation set kept with the results, for people to read; >= 0
    samples: int = field(default=5, metadata=RUNTIME)


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
