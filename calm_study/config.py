"""One trial's configuration: frozen dataclasses with documented defaults (paper settings where the paper states them).

Choices the CALM paper leaves open (τ, stop-gradient on S_p, VAE widths, the CLIP/new-module learning-rate split)
are explicit fields here, each with the reason for its default; nothing of the kind is a constant in the code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from calm_study.configio import ConfigError, did_you_mean, from_dict, to_dict


@dataclass(frozen=True)
class ModelConfig:
    clip: str = "ViT-B-32-quickgelu"  # open_clip architecture (open_clip.list_models(), plus our calm-tiny)
    pretrained: str | None = "openai"  # open_clip pretrained tag of `clip`, a local checkpoint file, or null (random)
    temporal: str = "mean"  # temporal fusion Ψ_TE: mean | transformer
    temporal_layers: int = 4  # transformer fusion: encoder layers (>= 1)
    temporal_heads: int = 8  # transformer fusion: attention heads (must divide the CLIP embedding width)
    temporal_dropout: float = 0.1  # transformer fusion: dropout in [0, 1)


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
    task_weight: float = 1.0  # weight of the symmetric InfoNCE task loss
    logit_scale_max: float = 100.0  # clamp of exp(CLIP's learnable logit scale), as in CLIP


@dataclass(frozen=True)
class VAEConfig:
    latent_dim: int = 256  # d, the paper's 256
    # Hidden FC widths of the encoder (before μ, log σ²) and decoder (before Ŝ_p logits). Unstated in the paper;
    # one 512-wide encoder layer makes VAE + anchor embeddings ≈ 0.46M parameters at K=157, D=512 — the paper's
    # "+0.5M" (see shared notes §9, variant B).
    encoder_hidden: tuple[int, ...] = (512,)
    decoder_hidden: tuple[int, ...] = ()
    dropout: float = 0.1  # dropout after each hidden layer, the paper's 0.1


@dataclass(frozen=True)
class DatasetRef:
    name: str = ""  # label of the set in results; default "<dataset>-<split>" ("synthetic-<domain>-<split>")
    dataset: str = "synthetic"  # synthetic | msrvtt | didemo | lsmdc | msvd (roots in data.roots)
    domain: str = "plain"  # synthetic only: plain | textured
    split: str = "test"  # synthetic: train | test; msrvtt: train (9k) | train7k | test (1k-A); others: train|val|test

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
    eval: tuple[DatasetRef, ...] = (DatasetRef(),)  # evaluated at the end of every epoch, each on its own
    num_frames: int = 12  # T, frames sampled uniformly per video (paper: 12)
    cache_dir: str = "~/.cache/calm_study"  # where generated (synthetic) data lives
    roots: dict[str, str] = field(default_factory=dict)  # dataset -> its root folder, e.g. {msrvtt: /data/MSRVTT}
    video_dirs: dict[str, str] = field(default_factory=dict)  # dataset -> video folder (relative to root); "videos"
    decoder: str = "decord"  # video decoder: decord | pyav (a fallback for files decord cannot read)
    on_error: str = "error"  # missing/unreadable videos: error (stop, naming the files) | skip (drop, log, count)
    frame_cache: str = ""  # folder of decoded uint8 frames, shared by every trial and epoch ("" = decode each time)
    loader_workers: int = 0  # DataLoader worker processes per training worker
    synthetic: SyntheticConfig = SyntheticConfig()


@dataclass(frozen=True)
class OptimConfig:
    # Paper: "AdamW, lr 1e-5". The split is unstated; T-MASS (CALM's baseline) uses 1e-6 for CLIP, 1e-5 for the rest.
    lr_clip: float = 1e-6  # CLIP image/text encoders and logit scale
    lr_new: float = 1e-5  # new modules: temporal fusion, anchor embeddings, VAE
    weight_decay: float = 0.2  # AdamW decoupled weight decay (T-MASS / CLIP4Clip value)
    betas: tuple[float, ...] = (0.9, 0.98)  # AdamW (β1, β2)
    eps: float = 1e-6  # AdamW ε
    warmup_fraction: float = 0.1  # linear warmup over this fraction of all steps, then cosine to 0; in [0, 1)
    grad_clip: float = 1.0  # max global gradient norm; 0 = off


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 5  # paper: 5 for retrieval
    batch_size: int = 128  # global batch (split evenly over training workers); paper: 128
    eval_batch_size: int = 32  # videos per evaluation batch
    seed: int = 0  # seeds model init, data order and sampling (studies set it from `seeds`)
    precision: str = "fp32"  # fp32 | bf16 (autocast; CUDA or CPU)
    log_every: int = 50  # print a progress line every N steps (0 = only per epoch)


@dataclass(frozen=True)
class TrialConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def _choice(path: str, value: Any, valid: list[str] | tuple[str, ...]) -> list[str]:
    if value in valid:
        return []
    return [f"{path}: {value!r} is not valid{did_you_mean(value, valid)}; valid: {', '.join(valid)}"]


def check_trial(cfg: TrialConfig) -> list[str]:
    """Semantic checks (names, ranges, combinations) that types alone cannot express."""
    from calm_study.losses import ALIGN_LOSSES
    from calm_study.models.anchors import count_labels, list_label_sources
    from calm_study.models.temporal import list_temporal_fusions

    errs: list[str] = []
    errs += _choice("model.temporal", cfg.model.temporal, list_temporal_fusions())
    errs += _choice("loss.align", cfg.loss.align, list(ALIGN_LOSSES))
    errs += _choice("anchors.encode", cfg.anchors.encode, ["every_step", "once"])
    errs += _choice("train.precision", cfg.train.precision, ["fp32", "bf16"])
    a = cfg.anchors
    if "{label}" not in a.template:
        errs.append(f"anchors.template: {a.template!r} must contain {{label}}")
    if a.count < 0:
        errs.append(f"anchors.count: {a.count} must be >= 0 (0 = baseline without anchors)")
    elif a.count > 0:
        try:
            n = count_labels(a.source)
            if a.count > n:
                errs.append(f"anchors.count: {a.count} is more than the {n} labels of source {a.source!r}")
        except ValueError as e:
            errs.append(f"anchors.source: {e}; valid: {', '.join(list_label_sources())} or a label file path")
    if a.count == 0 and cfg.loss.align != "none":
        errs.append(f"loss.align: {cfg.loss.align!r} needs anchors; the baseline (anchors.count 0) has loss.align none")
    if a.count > 0 and cfg.loss.align == "none":
        errs.append(f"anchors.count: {a.count} anchors are unused with loss.align none; set anchors.count 0")
    if a.tau <= 0:
        errs.append(f"anchors.tau: {a.tau} must be > 0")
    for name in ("align_weight", "alpha", "task_weight"):
        if getattr(cfg.loss, name) < 0:
            errs.append(f"loss.{name}: {getattr(cfg.loss, name)} must be >= 0")
    if cfg.vae.latent_dim < 1 or any(w < 1 for w in cfg.vae.encoder_hidden + cfg.vae.decoder_hidden):
        errs.append("vae: latent_dim and hidden widths must be >= 1")
    for name, v in (("vae.dropout", cfg.vae.dropout), ("model.temporal_dropout", cfg.model.temporal_dropout)):
        if not 0 <= v < 1:
            errs.append(f"{name}: {v} must be in [0, 1)")
    if cfg.data.num_frames < 1:
        errs.append(f"data.num_frames: {cfg.data.num_frames} must be >= 1")
    if not cfg.data.eval:
        errs.append("data.eval: at least one evaluation set is needed")
    labels = [e.label for e in cfg.data.eval]
    if len(set(labels)) != len(labels):
        errs.append(f"data.eval: evaluation set names must be unique, got {labels}")
    errs += _check_data(cfg.data)
    o, t = cfg.optim, cfg.train
    if o.lr_clip < 0 or o.lr_new < 0:
        errs.append("optim: learning rates must be >= 0")
    if len(o.betas) != 2:
        errs.append(f"optim.betas: expected two numbers (β1, β2), got {list(o.betas)}")
    if not 0 <= o.warmup_fraction < 1:
        errs.append(f"optim.warmup_fraction: {o.warmup_fraction} must be in [0, 1)")
    if t.epochs < 1 or t.batch_size < 1 or t.eval_batch_size < 1:
        errs.append("train: epochs, batch_size and eval_batch_size must be >= 1")
    return errs


def _check_data(d: DataConfig) -> list[str]:
    from calm_study.data.readers import SPLITS, list_datasets
    from calm_study.data.video import DECODERS

    errs = _choice("data.decoder", d.decoder, list(DECODERS)) + _choice("data.on_error", d.on_error, ["error", "skip"])
    splits = {"synthetic": ("train", "test"), **SPLITS}
    for i, ref in enumerate((d.train, *d.eval)):
        where = "data.train" if i == 0 else f"data.eval[{i - 1}]"
        bad = _choice(f"{where}.dataset", ref.dataset, ["synthetic", *list_datasets()])
        errs += bad
        if bad:
            continue
        errs += _choice(f"{where}.split", ref.split, list(splits[ref.dataset]))
        if ref.dataset == "synthetic":
            errs += _choice(f"{where}.domain", ref.domain, ["plain", "textured"])
        elif not d.roots.get(ref.dataset):
            errs.append(f"data.roots.{ref.dataset}: not set, but {where} reads {ref.dataset}; give the dataset's root "
                        f"folder, e.g. --set data.roots.{ref.dataset}=/data/{ref.dataset}")
    for key in list(d.roots) + list(d.video_dirs):
        if key not in splits:
            errs.append(f"data.roots/video_dirs: {key!r} is not a dataset{did_you_mean(key, splits)}; "
                        f"valid: {', '.join(splits)}")
    return errs


def absolute_paths(cfg: TrialConfig) -> TrialConfig:
    """The config with its data paths made absolute against this process's working directory, for workers that run
    elsewhere (Ray workers do not share the driver's working directory)."""
    from dataclasses import replace

    def absolute(p: str) -> str:
        return str(Path(p).expanduser().resolve()) if p else p

    d = cfg.data
    data = replace(d, cache_dir=absolute(d.cache_dir), frame_cache=absolute(d.frame_cache),
                   roots={k: absolute(v) for k, v in d.roots.items()})
    return replace(cfg, data=data)


def trial_from_dict(data: dict, source: str = "<config>") -> TrialConfig:
    """Build and check a TrialConfig; raises ConfigError listing every problem."""
    if not isinstance(data, dict):
        raise ConfigError(source, [f"expected a mapping of sections, got {type(data).__name__}"])
    errors: list[str] = []
    cfg = from_dict(TrialConfig, data, "", errors)
    if not errors:
        errors += check_trial(cfg)
    if errors:
        raise ConfigError(source, errors)
    return cfg


def trial_to_dict(cfg: TrialConfig) -> dict:
    return to_dict(cfg)
