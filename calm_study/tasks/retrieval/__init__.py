"""Text-video retrieval: the task, its leak-free pairwise scoring and its metrics."""

from calm_study.checks import one_of
from calm_study.config import TrialConfig
from calm_study.tasks.registry import TaskEntry
from calm_study.tasks.retrieval.metrics import retrieval_metrics
from calm_study.tasks.retrieval.scoring import PROTOCOLS
from calm_study.tasks.retrieval.task import RetrievalTask


def _check(cfg: TrialConfig) -> list[str]:
    return one_of("evaluation.protocol", cfg.evaluation.protocol, PROTOCOLS)


TASK = TaskEntry(name="retrieval", build=RetrievalTask, check=_check,
                 summary="text-video retrieval: symmetric InfoNCE; R@1/5/10, MdR, MnR both ways",
                 knobs=("evaluation.protocol", "evaluation.text_chunk", "evaluation.dsl"))

__all__ = ["TASK", "RetrievalTask", "retrieval_metrics"]
