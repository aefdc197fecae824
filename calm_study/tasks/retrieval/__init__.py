"""Text-video retrieval: the task, its leak-free pairwise scoring and its metrics.

This module is the task's registry entry (torch-free: validation reads it); the task, its scoring and its metrics are
in task.py, scoring.py and metrics.py, imported when a trial builds the task.
"""

from calm_study.checks import one_of
from calm_study.config import TrialConfig
from calm_study.lazy import Lazy
from calm_study.tasks.registry import TaskEntry

PROTOCOLS = ("leakfree", "tmass_compat")  # evaluation.protocol (scoring.py): leak-free, or T-MASS's labelled mode


def _check(cfg: TrialConfig) -> list[str]:
    return one_of("evaluation.protocol", cfg.evaluation.protocol, PROTOCOLS)


TASK = TaskEntry(name="retrieval", build=Lazy("calm_study.tasks.retrieval.task:RetrievalTask"), check=_check,
                 summary="text-video retrieval: symmetric InfoNCE; R@1/5/10, MdR, MnR both ways",
                 knobs=("evaluation.protocol", "evaluation.text_chunk", "evaluation.dsl"))

__all__ = ["PROTOCOLS", "TASK"]
