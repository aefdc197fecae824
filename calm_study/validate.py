"""Semantic checks of a trial config: every name against its registry, ranges and combinations.

config.py only declares the dataclasses (a leaf); this module asks each owner which names are valid, so a list of
choices is spelled once, where the thing it names is built.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from calm_study.config import DataConfig, TrialConfig
from calm_study.configio import ConfigError, did_you_mean, flatten, from_dict, to_dict


def _choice(path: str, value: Any, valid: list[str] | tuple[str, ...]) -> list[str]:
    if value in valid:
        return []
    return [f"{path}: {value!r} is not valid{did_you_mean(value, valid)}; valid: {', '.join(valid)}"]


def check_trial(cfg: TrialConfig) -> list[str]:
    """Every problem of a config that types alone cannot express (an empty list when it is valid)."""
    from calm_study.models.calm.align import list_align_losses
    from calm_study.models.calm.anchors import ENCODE_MODES, count_labels, list_label_sources
    from calm_study.models.families import FAMILY_TASK, TEXT_CONDITIONED, list_families
    from calm_study.models.temporal import list_temporal_fusions
    from calm_study.models.tmass import PRIORS
    from calm_study.tasks import list_tasks
    from calm_study.tasks.retrieval.scoring import PROTOCOLS
    from calm_study.training.optim import PRECISIONS

    errs: list[str] = []
    errs += _choice("task", cfg.task, list_tasks())
    errs += _choice("model.family", cfg.model.family, list_families())
    errs += _choice("model.temporal", cfg.model.temporal, list_temporal_fusions())
    errs += _choice("loss.align", cfg.loss.align, list_align_losses())
    errs += _choice("anchors.encode", cfg.anchors.encode, ENCODE_MODES)
    errs += _choice("train.precision", cfg.train.precision, PRECISIONS)
    m, ev = cfg.model, cfg.evaluation
    if FAMILY_TASK.get(m.family, cfg.task) != cfg.task and cfg.task in list_tasks():
        fits = [f for f, task in FAMILY_TASK.items() if task == cfg.task]
        errs.append(f"model.family: {m.family!r} is a {FAMILY_TASK[m.family]} model and cannot do task {cfg.task!r}; "
                    f"families for {cfg.task}: {', '.join(fits)}")
    errs += _check_caption(cfg) if cfg.task == "captioning" else []
    errs += _choice("model.prior", m.prior, PRIORS) + _choice("evaluation.protocol", ev.protocol, PROTOCOLS)
    if ev.protocol == "tmass_compat" and m.family not in TEXT_CONDITIONED:
        errs.append(f"evaluation.protocol: tmass_compat reproduces how T-MASS pools candidates with their own "
                    f"caption; model.family {m.family!r} pools no video by a text (use it with "
                    f"{' or '.join(TEXT_CONDITIONED)}, or keep protocol leakfree)")
    for name, value, low in (("model.pool_heads", m.pool_heads, 1), ("model.trials", m.trials, 1),
                             ("evaluation.text_chunk", ev.text_chunk, 1)):
        if value < low:
            errs.append(f"{name}: {value} must be >= {low}")
    if not 0 <= cfg.data.max_skipped_fraction <= 1:
        errs.append(f"data.max_skipped_fraction: {cfg.data.max_skipped_fraction} must be in [0, 1]")
    if m.prior_std <= 0:
        errs.append(f"model.prior_std: {m.prior_std} must be > 0")
    if m.support_weight < 0:
        errs.append(f"model.support_weight: {m.support_weight} must be >= 0")
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
    if m.frozen and a.count > 0 and cfg.loss.align != "none" and a.encode == "every_step":
        errs.append("anchors.encode: every_step sends the anchor prompts through the text encoder at every step so "
                    "that the encoder learns from CALM's loss; model.frozen keeps the encoders fixed (their features "
                    "come from the feature cache), so there is nothing for it to learn: set anchors.encode: once (the "
                    "prompts are encoded once; the per-anchor embeddings still learn), or model.frozen: false")
    if a.tau <= 0:
        errs.append(f"anchors.tau: {a.tau} must be > 0")
    for name in ("align_weight", "alpha", "task_weight"):
        if getattr(cfg.loss, name) < 0:
            errs.append(f"loss.{name}: {getattr(cfg.loss, name)} must be >= 0")
    if cfg.vae.latent_dim < 1:
        errs.append(f"vae.latent_dim: {cfg.vae.latent_dim} must be >= 1")
    for name in ("encoder_hidden", "decoder_hidden"):
        if any(w < 1 for w in getattr(cfg.vae, name)):
            errs.append(f"vae.{name}: {list(getattr(cfg.vae, name))}: every width must be >= 1")
    for name, v in (("vae.dropout", cfg.vae.dropout), ("model.temporal_dropout", cfg.model.temporal_dropout),
                    ("model.pool_dropout", cfg.model.pool_dropout)):
        if not 0 <= v < 1:
            errs.append(f"{name}: {v} must be in [0, 1)")
    if cfg.data.num_frames < 1:
        errs.append(f"data.num_frames: {cfg.data.num_frames} must be >= 1")
    if not cfg.data.eval:
        errs.append("data.eval: at least one evaluation set is needed")
    labels = [e.label for e in cfg.data.eval]
    if len(set(labels)) != len(labels):
        errs.append(f"data.eval: evaluation set names must be unique, got {labels}")
    errs += _check_data(cfg.data) + _check_backbone(m.clip, m.pretrained)
    o, t = cfg.optim, cfg.train
    for name in ("lr_clip", "lr_new"):
        if getattr(o, name) < 0:
            errs.append(f"optim.{name}: {getattr(o, name)} must be >= 0")
    if len(o.betas) != 2:
        errs.append(f"optim.betas: expected two numbers (β1, β2), got {list(o.betas)}")
    if not 0 <= o.warmup_fraction < 1:
        errs.append(f"optim.warmup_fraction: {o.warmup_fraction} must be in [0, 1)")
    for name in ("epochs", "batch_size", "eval_batch_size"):
        if getattr(t, name) < 1:
            errs.append(f"train.{name}: {getattr(t, name)} must be >= 1")
    return errs


def _check_caption(cfg: TrialConfig) -> list[str]:
    c, errs = cfg.caption, []
    for name, value, low in (("layers", c.layers, 1), ("heads", c.heads, 1), ("beam_size", c.beam_size, 1),
                             ("max_length", c.max_length, 2), ("samples", c.samples, 0)):
        if value < low:
            errs.append(f"caption.{name}: {value} must be >= {low}")
    for name in ("dropout", "label_smoothing"):
        if not 0 <= getattr(c, name) < 1:
            errs.append(f"caption.{name}: {getattr(c, name)} must be in [0, 1)")
    if c.length_penalty < 0:
        errs.append(f"caption.length_penalty: {c.length_penalty} must be >= 0")
    if cfg.evaluation.protocol != "leakfree" or cfg.evaluation.dsl:
        errs.append("evaluation.protocol / evaluation.dsl: retrieval scoring settings; task captioning scores decoded "
                    "captions (keep protocol leakfree and dsl false)")
    return errs


def _check_backbone(arch: str, pretrained: str | None) -> list[str]:
    """The architecture is one open_clip knows; `pretrained` is one of its tags or an existing file (nothing is
    downloaded or loaded here: the pre-flight check loads a file once before Ray starts)."""
    import open_clip

    from calm_study.models.backbone import looks_like_path, register_tiny_models

    register_tiny_models()
    archs = open_clip.list_models()
    if arch not in archs:
        return [f"model.clip: {arch!r} is not an open_clip architecture{did_you_mean(arch, archs)}; see "
                "open_clip.list_models() (calm_study adds calm-tiny)"]
    if not pretrained:
        return []
    if looks_like_path(pretrained):
        if not Path(pretrained).expanduser().is_file():
            return [f"model.pretrained: the checkpoint file {pretrained!r} does not exist"]
        return []
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if pretrained not in tags:
        return [f"model.pretrained: {pretrained!r} is not a pretrained tag of {arch}{did_you_mean(pretrained, tags)};"
                f" valid: {', '.join(tags) or 'none (use null for random weights, or a checkpoint file)'}"]
    return []


def _check_data(d: DataConfig) -> list[str]:
    from calm_study.data.dataset import FAILURE_POLICIES
    from calm_study.data.readers import SPLITS, list_datasets
    from calm_study.data.synthetic import DOMAINS
    from calm_study.data.synthetic import SPLITS as SYNTHETIC_SPLITS
    from calm_study.data.video import DECODERS

    errs = _choice("data.decoder", d.decoder, DECODERS) + _choice("data.on_error", d.on_error, FAILURE_POLICIES)
    splits = {"synthetic": SYNTHETIC_SPLITS, **SPLITS}
    for i, ref in enumerate((d.train, *d.eval)):
        where = "data.train" if i == 0 else f"data.eval[{i - 1}]"
        bad = _choice(f"{where}.dataset", ref.dataset, ["synthetic", *list_datasets()])
        errs += bad
        if bad:
            continue
        errs += _choice(f"{where}.split", ref.split, list(splits[ref.dataset]))
        if ref.dataset == "synthetic":
            errs += _choice(f"{where}.domain", ref.domain, DOMAINS)
        # Where a dataset lives is not part of a valid config: `run` checks it before Ray starts (data/sources.py
        # preflight, the same message as `data check`), so a study validates on any machine.
    for key in list(d.roots) + list(d.video_dirs):
        if key not in splits:
            errs.append(f"data.roots/video_dirs: {key!r} is not a dataset{did_you_mean(key, splits)}; "
                        f"valid: {', '.join(splits)}")
    return errs


def absolute_paths(cfg: TrialConfig) -> TrialConfig:
    """The config with its data paths made absolute against this process's working directory, and every dataset it
    reads given its root (from $CALM_STUDY_DATA where data.roots does not say), for workers that run elsewhere (Ray
    workers share neither the driver's working directory nor its environment)."""

    from calm_study.data.sources import dataset_root

    def absolute(p: str) -> str:
        return str(Path(p).expanduser().resolve()) if p else p

    d = cfg.data
    roots = dict(d.roots)
    for ref in (d.train, *d.eval):
        if ref.dataset != "synthetic" and not roots.get(ref.dataset) and dataset_root(d, ref.dataset):
            roots[ref.dataset] = dataset_root(d, ref.dataset)
    data = replace(d, cache_dir=absolute(d.cache_dir), frame_cache=absolute(d.frame_cache),
                   feature_cache=absolute(d.feature_cache),
                   roots={k: absolute(v) for k, v in roots.items()})
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


def config_differences(saved: dict, cfg: TrialConfig) -> list[str]:
    """'key: a -> b' for every flattened key whose value differs between a stored config (a checkpoint's,
    a manifest's) and `cfg`.

    A key the stored config lacks was added to calm_study after it was written: it matches when `cfg` has that
    field's default (the behaviour the stored run had). A key `cfg` lacks was removed from calm_study: ignored.
    """
    a, b = flatten(saved), flatten(to_dict(cfg))
    defaults = flatten(to_dict(type(cfg)()))
    diffs = []
    for k in sorted(b):
        before = a[k] if k in a else defaults.get(k)
        if before != b[k]:
            added = "" if k in a else " (a field added since; the stored run had its default)"
            diffs.append(f"{k}: {before!r} -> {b[k]!r}{added}")
    return diffs
