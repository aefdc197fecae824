"""Text-video retrieval: the task, its leak-free pairwise scoring and its metrics."""

from calm_study.tasks.retrieval.metrics import retrieval_metrics
from calm_study.tasks.retrieval.task import RetrievalTask

__all__ = ["RetrievalTask", "retrieval_metrics"]
