"""Task `captioning`: decode a caption from the video; BLEU-4, METEOR, ROUGE-L, CIDEr (the paper's Tables 4-5)."""

from dataclasses import fields

from calm_study.checks import at_least, fraction
from calm_study.config import CaptionConfig, TrialConfig
from calm_study.tasks.captioning.task import CaptioningTask
from calm_study.tasks.registry import TaskEntry


def _check(cfg: TrialConfig) -> list[str]:
    c = cfg.caption
    return (at_least("caption.layers", c.layers, 1) + at_least("caption.heads", c.heads, 1)
            + at_least("caption.beam_size", c.beam_size, 1) + at_least("caption.max_length", c.max_length, 2)
            + at_least("caption.samples", c.samples, 0) + fraction("caption.dropout", c.dropout)
            + fraction("caption.label_smoothing", c.label_smoothing)
            + at_least("caption.length_penalty", c.length_penalty, 0))


TASK = TaskEntry(name="captioning", build=CaptioningTask, check=_check,
                 summary="video captioning: label-smoothed caption cross-entropy; BLEU-4, METEOR, ROUGE-L, CIDEr",
                 knobs=tuple(f"caption.{f.name}" for f in fields(CaptionConfig)))

__all__ = ["TASK", "CaptioningTask"]
