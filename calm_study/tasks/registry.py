"""What a registry entry of a task carries: its builder, the knobs it owns, their checks and its loss terms.

Each task package defines its entry in its `__init__.py` (`TASK = TaskEntry(...)` in tasks/retrieval/__init__.py,
...), which imports no torch: the task class is named by path (`Lazy("calm_study.tasks.retrieval.task:RetrievalTask")`,
calm_study/lazy.py). tasks/__init__.py lists them. A new task is a new package plus one line there (or
`register_task`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from calm_study.checks import no_problems
from calm_study.config import TrialConfig


@dataclass(frozen=True)
class TaskEntry:
    name: str  # the value of `task`
    build: Callable[[TrialConfig], object]  # the Task (tasks/base.py) of a trial config: a function, or Lazy
    summary: str
    # config keys only this task reads (its section, e.g. caption.*); a non-default value of a key the trial's task
    # does not list is refused, naming the task that reads it
    knobs: tuple[str, ...] = ()
    check: Callable[[TrialConfig], list[str]] = no_problems  # problems of its knobs' values beyond their ranges
    loss_terms: tuple[str, ...] = ("task",)  # the terms its loss_terms returns (the loss_* results columns)
