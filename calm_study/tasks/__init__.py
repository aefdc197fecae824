"""Tasks: the registry `task` names. The contract is in tasks/base.py, an entry's fields in tasks/registry.py."""

from __future__ import annotations

from typing import TYPE_CHECKING

from calm_study.config import TrialConfig
from calm_study.tasks import captioning, retrieval
from calm_study.tasks.registry import TaskEntry

if TYPE_CHECKING:  # the Task protocol imports torch; the registry stays without it (calm_study/lazy.py)
    from calm_study.tasks.base import Task

TASKS: dict[str, TaskEntry] = {t.name: t for t in (retrieval.TASK, captioning.TASK)}


def register_task(task: TaskEntry) -> None:
    """Add a task from outside the package; validation and the results schema then know it."""
    if task.name in TASKS:
        raise ValueError(f"task {task.name!r} is registered already")
    TASKS[task.name] = task


def list_tasks() -> list[str]:
    return sorted(TASKS)


def build_task(cfg: TrialConfig) -> Task:
    if cfg.task not in TASKS:
        raise ValueError(f"task {cfg.task!r} is unknown; valid: {', '.join(list_tasks())}")
    return TASKS[cfg.task].build(cfg)
