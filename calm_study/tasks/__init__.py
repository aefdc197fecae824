"""Tasks: the registry `task` names (a dict, a lister, one builder). The contract is in tasks/base.py."""

from __future__ import annotations

from collections.abc import Callable

from calm_study.config import TrialConfig
from calm_study.tasks.base import Task
from calm_study.tasks.captioning import CaptioningTask
from calm_study.tasks.retrieval import RetrievalTask

TASKS: dict[str, Callable[[TrialConfig], Task]] = {"retrieval": RetrievalTask, "captioning": CaptioningTask}


def list_tasks() -> list[str]:
    return sorted(TASKS)


def build_task(cfg: TrialConfig) -> Task:
    if cfg.task not in TASKS:
        raise ValueError(f"task {cfg.task!r} is unknown; valid: {', '.join(list_tasks())}")
    return TASKS[cfg.task](cfg)
