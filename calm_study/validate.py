"""Semantic checks of a trial config: every name against its registry, ranges and combinations.

config.py only declares the dataclasses (a leaf); this module asks each owner which names are valid, so a list of
choices is spelled once, where the thing it names is built.
"""

from __future__ import annotations

from pathlib import Path

from calm_study.checks import one_of, range_problems
from calm_study.config import DataConfig, OptimConfig, TrialConfig, calm_enabled
from calm_study.configio import ConfigError, did_you_mean, flatten, from_dict, set_path, to_dict
from calm_study.names import OPTIMIZERS, PRECISIONS, SCHEDULES


def check_trial(cfg: TrialConfig) -> list[str]:
    """Every problem of a config that types alone cannot express (an empty list when it is valid).

    Names are checked against their registries; each registered component (the task, the family, CALM and its
    alignment variant) checks the values of its own knobs, and a knob that none of the trial's components reads is
    refused (`unread_knobs`). Every number is checked against the valid values its field declares (config.valid),
    so none of them writes a range check. What remains here is what crosses components, and the shared sections."""
    from calm_study.models.calm import check_calm
    from calm_study.models.calm.labels import ENCODE_MODES
    from calm_study.models.calm.variants import list_align_losses
    from calm_study.models.families import FAMILIES, list_families
    from calm_study.tasks import TASKS, list_tasks

    errs = range_problems(cfg)  # every number against the valid values config.py declares beside it
    errs += one_of("task", cfg.task, list_tasks()) + one_of("model.family", cfg.model.family, list_families())
    errs += one_of("loss.align", cfg.loss.align, list_align_losses())
    errs += one_of("train.precision", cfg.train.precision, PRECISIONS)
    family, task = FAMILIES.get(cfg.model.family), TASKS.get(cfg.task)
    align_known = cfg.loss.align in list_align_losses()
    if family is not None and task is not None:
        if family.task != task.name:
            fits = [f for f, entry in FAMILIES.items() if entry.task == task.name]
            errs.append(f"model.family: {family.name!r} is a {family.task} model and cannot do task {task.name!r}; "
                        f"families for {task.name}: {', '.join(fits)}")
        if align_known:  # who reads what is known only when every component is
            errs += unread_knobs(cfg)
    errs += (task.check(cfg) if task else []) + (family.check(cfg) if family else [])
    if calm_enabled(cfg):
        errs += check_calm(cfg) + one_of("anchors.encode", cfg.anchors.encode, ENCODE_MODES)
        if cfg.model.frozen and cfg.anchors.encode == "every_step":
            errs.append("anchors.encode: every_step sends the anchor prompts through the text encoder at every step "
                        "so that the encoder learns from CALM's loss; model.frozen keeps the encoders fixed (their "
                        "features come from the feature cache), so there is nothing for it to learn: set "
                        "anchors.encode: once (the prompts are encoded once; the per-anchor embeddings still learn), "
                        "or model.frozen: false")
    if cfg.evaluation.protocol == "tmass_compat" and cfg.task == "retrieval" and family and not family.text_conditioned:
        pooling = [f for f, entry in FAMILIES.items() if entry.text_conditioned]
        errs.append(f"evaluation.protocol: tmass_compat reproduces how T-MASS pools candidates with their own "
                    f"caption; model.family {family.name!r} pools no video by a text (use it with "
                    f"{' or '.join(pooling)}, or keep protocol leakfree)")
    return errs + _check_shared(cfg)


def unread_knobs(cfg: TrialConfig) -> list[str]:
    """A problem for every knob set to a non-default value that the trial's family, task and CALM variant do not
    read: it would train the same model as without it, under a new arm id (a sweep over it would report seed noise
    as an effect). Each message names who does read the knob."""
    from calm_study.models.calm import CALM_KNOBS, calm_knobs, calm_part_knobs
    from calm_study.models.calm.variants import ALIGN_VARIANTS
    from calm_study.models.families import FAMILIES
    from calm_study.tasks import TASKS

    owners: dict[str, list[str]] = {}
    for f in FAMILIES.values():
        for k in f.knobs:
            owners.setdefault(k, []).append(f"family {f.name}")
    for t in TASKS.values():
        for k in t.knobs:
            owners.setdefault(k, []).append(f"task {t.name}")
    for k in CALM_KNOBS:
        owners.setdefault(k, []).append("CALM (any loss.align but none)")
    for v in ALIGN_VARIANTS.values():
        for k in v.knobs:
            owners.setdefault(k, []).append(f"loss.align {v.name}")
    family = FAMILIES[cfg.model.family]
    # With CALM off the whole CALM part is absent: its knobs are not read and canonical_trial drops them, so they make
    # no arm of their own (a search crossing them with the baseline row gives identical trials, refused by name).
    calm = calm_knobs(cfg) if calm_enabled(cfg) else calm_part_knobs()
    read = {*family.knobs_read(cfg), *TASKS[cfg.task].knobs, *calm}
    value, default = flatten(to_dict(cfg)), flatten(to_dict(TrialConfig()))
    this = (f"family {family.name}, task {cfg.task}, "
            + (f"loss.align {cfg.loss.align}" if calm_enabled(cfg) else "no CALM (loss.align none)"))
    errs = []
    for knob, who in owners.items():
        if knob in read or value.get(knob) == default.get(knob):
            continue
        errs.append(f"{knob}: {value[knob]!r} is read only by {', '.join(who)}; this trial ({this}) does not read "
                    f"it, so it would train the same model under another arm id: remove it, or set it only where a "
                    f"component that reads it is chosen")
    return errs


def _check_shared(cfg: TrialConfig) -> list[str]:
    """The sections every trial reads: data, optimiser, training (their ranges are checked with every field's)."""
    errs = []
    if not cfg.data.eval:
        errs.append("data.eval: at least one evaluation set is needed")
    labels = [e.label for e in cfg.data.eval]
    if len(set(labels)) != len(labels):
        errs.append(f"data.eval: evaluation set names must be unique, got {labels}")
    errs += _check_data(cfg.data) + _check_backbone(cfg.model.clip, cfg.model.pretrained)
    o = cfg.optim
    if len(o.betas) != 2:
        errs.append(f"optim.betas: expected two numbers (β1, β2), got {list(o.betas)}")
    errs += one_of("optim.name", o.name, OPTIMIZERS) + one_of("optim.schedule", o.schedule, SCHEDULES)
    if o.schedule in SCHEDULES and o.schedule != "constant_decay" and o.epoch_decay != OptimConfig.epoch_decay:
        # like unread_knobs: a knob nothing reads would train the same model under another arm id
        errs.append(f"optim.epoch_decay: {o.epoch_decay!r} is read only by optim.schedule constant_decay; this trial "
                    f"(optim.schedule {o.schedule}) does not read it, so it would train the same model under another "
                    f"arm id: remove it, or set optim.schedule: constant_decay")
    return errs


def canonical_trial(cfg: TrialConfig) -> TrialConfig:
    """A valid config in its one spelling. The baseline (loss.align none) has no CALM part: every CALM knob (anchors.*,
    each variant's loss.* and vae.*) takes its default and anchors.count is 0, as studies begun before CALM became one
    switch wrote it. So a study whose base configures CALM can list the baseline as {loss.align: none}, and the
    baseline is one arm however its study spelled it."""
    from calm_study.models.calm import calm_part_knobs

    if calm_enabled(cfg):
        return cfg
    doc, default = to_dict(cfg), flatten(to_dict(TrialConfig()))
    for knob in calm_part_knobs():
        doc = set_path(doc, knob, default[knob])
    errors: list[str] = []
    out = from_dict(TrialConfig, set_path(doc, "anchors.count", 0), "", errors)
    assert not errors, errors  # defaults of valid fields
    return out


def _check_backbone(arch: str, pretrained: str | None) -> list[str]:
    """The architecture is one open_clip knows; `pretrained` is one of its tags or an existing file (nothing is
    downloaded or loaded here: the pre-flight check loads a file once before Ray starts)."""
    from calm_study.clip_archs import list_archs, looks_like_path

    archs = list_archs()
    if arch not in archs:
        return [f"model.clip: {arch!r} is not an open_clip architecture{did_you_mean(arch, archs)}; see "
                "open_clip.list_models() (calm_study adds calm-tiny)"]
    if not pretrained:
        return []
    if looks_like_path(pretrained):
        if not Path(pretrained).expanduser().is_file():
            return [f"model.pretrained: the checkpoint file {pretrained!r} does not exist"]
        return []
    import open_clip  # a pretrained tag only: its list is open_clip's code, not a file

    tags = open_clip.list_pretrained_tags_by_model(arch)
    if pretrained not in tags:
        return [f"model.pretrained: {pretrained!r} is not a pretrained tag of {arch}{did_you_mean(pretrained, tags)};"
                f" valid: {', '.join(tags) or 'none (use null for random weights, or a checkpoint file)'}"]
    return []


def _check_data(d: DataConfig) -> list[str]:
    from calm_study.data.readers import READERS
    from calm_study.data.records import DECODERS, FAILURE_POLICIES

    errs = one_of("data.decoder", d.decoder, DECODERS) + one_of("data.on_error", d.on_error, FAILURE_POLICIES)
    for i, ref in enumerate((d.train, *d.eval)):
        where = "data.train" if i == 0 else f"data.eval[{i - 1}]"
        bad = one_of(f"{where}.dataset", ref.dataset, list(READERS))  # registry order: synthetic, didemo, ...
        errs += bad
        if bad:
            continue
        entry = READERS[ref.dataset]
        errs += one_of(f"{where}.split", ref.split, entry.splits)
        if entry.domains:  # a dataset without domains ignores DatasetRef.domain
            errs += one_of(f"{where}.domain", ref.domain, entry.domains)
        # Where a dataset lives is not part of a valid config: `run` checks it before Ray starts (data/sources.py
        # preflight, the same message as `data check`), so a study validates on any machine.
    for key in list(d.roots) + list(d.video_dirs):
        if key not in READERS:
            errs.append(f"data.roots/video_dirs: {key!r} is not a dataset{did_you_mean(key, READERS)}; "
                        f"valid: {', '.join(READERS)}")
    return errs


def trial_from_dict(data: dict, source: str = "<config>", check: bool = True) -> TrialConfig:
    """Build and check a TrialConfig in its canonical spelling; raises ConfigError listing every problem.

    check=False only builds it (types and keys are still strict): for a config that was checked once already, as
    the trials a study sends to its Ray workers are (study/ray_runner.py)."""
    if not isinstance(data, dict):
        raise ConfigError(source, [f"expected a mapping of sections, got {type(data).__name__}"])
    errors: list[str] = []
    cfg = from_dict(TrialConfig, data, "", errors)
    if not errors and check:
        errors += check_trial(cfg)
    if errors:
        raise ConfigError(source, errors)
    return canonical_trial(cfg)
