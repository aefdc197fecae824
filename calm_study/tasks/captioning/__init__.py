"""Task `captioning`: decode a caption from the video; BLEU-4, METEOR, ROUGE-L, CIDEr (the paper's Tables 4-5)."""

from dataclasses import fields

from calm_study.checks import divides
from calm_study.clip_archs import text_width
from calm_study.config import CaptionConfig, TrialConfig
from calm_study.tasks.captioning.task import CaptioningTask
from calm_study.tasks.registry import TaskEntry


def _check(cfg: TrialConfig) -> list[str]:
    """The decoder's heads against its width, CLIP's text width (the ranges of caption.*: config.py)."""
    clip = cfg.model.clip
    return divides("caption.heads", cfg.caption.heads, text_width(clip), f"the text width of model.clip {clip}")


TASK = TaskEntry(name="captioning", build=CaptioningTask, check=_check,
                 summary="video captioning: label-smoothed caption cross-entropy; BLEU-4, METEOR, ROUGE-L, CIDEr",
                 knobs=tuple(f"caption.{f.name}" for f in fields(CaptionConfig)))

__all__ = ["TASK", "CaptioningTask"]
