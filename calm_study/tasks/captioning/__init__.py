"""Task `captioning`: decode a caption from the video; BLEU-4, METEOR, ROUGE-L, CIDEr (the paper's Tables 4-5).

This module is the task's registry entry (torch-free: validation reads it); the task is in task.py, the metrics in
metrics.py.
"""

from dataclasses import fields

from calm_study.checks import divides
from calm_study.clip_archs import text_width
from calm_study.config import CaptionConfig, TrialConfig
from calm_study.lazy import Lazy
from calm_study.tasks.registry import TaskEntry


def _check(cfg: TrialConfig) -> list[str]:
    """The decoder's heads against its width, CLIP's text width (the ranges of caption.*: config.py)."""
    clip = cfg.model.clip
    return divides("caption.heads", cfg.caption.heads, text_width(clip), f"the text width of model.clip {clip}")


TASK = TaskEntry(name="captioning", build=Lazy("calm_study.tasks.captioning.task:CaptioningTask"), check=_check,
                 summary="video captioning: label-smoothed caption cross-entropy; BLEU-4, METEOR, ROUGE-L, CIDEr",
                 knobs=tuple(f"caption.{f.name}" for f in fields(CaptionConfig)))

__all__ = ["TASK"]
