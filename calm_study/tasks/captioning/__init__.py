"""Task `captioning`: decode a caption from the video; BLEU-4, METEOR, ROUGE-L, CIDEr (the paper's Tables 4-5)."""

from calm_study.tasks.captioning.task import CaptioningTask

__all__ = ["CaptioningTask"]
