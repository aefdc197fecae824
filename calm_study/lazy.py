"""A callable named by where it lives, imported at its first call: what keeps the registries free of torch.

A registry entry (a model family, a task, an alignment variant) carries its builder and its other code paths as
`Lazy("calm_study.models.tmass:build_tmass")`, so reading the registries (validation, `status`, a study's driver)
imports neither torch nor the modules that define `nn.Module`s: about 1.3 s of every command on 2 cores.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Lazy:
    target: str  # "package.module:attribute", the attribute a callable

    def resolve(self) -> Any:
        module, _, name = self.target.partition(":")
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as e:
            raise ImportError(f"registry entry {self.target!r}: {e}; give it as 'package.module:callable'") from None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **kwargs)

    def __repr__(self) -> str:
        return f"Lazy({self.target!r})"
