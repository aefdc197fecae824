"""What a registry entry of a model family carries: everything calm_study needs to know about the family.

Every entry is in models/families.py, which imports no torch: the builder and the random banks are named by path
(`Lazy("calm_study.models.tmass:build_tmass")`, calm_study/lazy.py) and imported when called, the knobs and checks are
plain Python. A new family is a module with its builder plus one entry there (or `register_family` from outside the
package, as the contract test does, with plain functions). Nothing else (validation, bench, report) names a family.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from calm_study.checks import no_problems
from calm_study.config import TrialConfig

if TYPE_CHECKING:  # annotations only: the registry imports no torch
    import torch

    Bank = torch.Tensor | dict[str, torch.Tensor]
    # (n_text, n_video, num_frames, width, cfg, generator) -> (text bank, video bank) with the family's keys and shapes
    RandomBanks = Callable[[int, int, int, int, TrialConfig, torch.Generator], tuple[Bank, Bank]]


@dataclass(frozen=True)
class Family:
    name: str  # the value of model.family
    # the model of a trial config (its CALM head included): a function, or Lazy naming one (calm_study/lazy.py)
    build: Callable[[TrialConfig], torch.nn.Module]
    task: str  # the task it serves (tasks/): retrieval | captioning
    summary: str  # one line for listings and docs
    # model.* keys only some families read (model.family, clip, pretrained, frozen are everyone's); a non-default
    # value of a key the trial's family does not list is refused, naming the families that read it.
    knobs: tuple[str, ...] = ()
    # the knobs this config actually reads (default: all of `knobs`), e.g. the transformer fusion's layers only
    # when model.temporal is transformer
    reads: Callable[[TrialConfig], tuple[str, ...]] | None = None
    # problems of its own knobs' values beyond their ranges (config.py declares those, validation checks them all),
    # e.g. a head count that must divide CLIP's width
    check: Callable[[TrialConfig], list[str]] = no_problems
    text_conditioned: bool = False  # its video feature depends on the query text (the T-MASS leak can occur)
    loss_terms: tuple[str, ...] = ()  # extra terms it logs itself, besides the task's and CALM's
    random_banks: RandomBanks | None = None  # retrieval: banks of random features with its shapes (bench)

    def knobs_read(self, cfg: TrialConfig) -> tuple[str, ...]:
        return self.reads(cfg) if self.reads is not None else self.knobs
