"""A callable named by where it lives, imported at its first call: what keeps the registries free of torch.

A registry entry (a model family, a task, an alignment variant) carries its builder and its other code paths as
`Lazy("calm_study.models.tmass:build_tmass")`, so reading the registries (validation, `status`, a study's driver)
imports neither torch nor the modules that define `nn.Module`s: about 1.3 s of every command on 2 cores.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Lazy:
    target: str  # "package.module:attribute", the attribute a callable
    # the callable once imported: an alignment variant's terms are called every training step
    _resolved: Any = field(default=None, init=False, repr=False, compare=False)

    def resolve(self) -> Any:
        if self._resolved is None:
            module, _, name = self.target.partition(":")
            try:
                found = getattr(importlib.import_module(module), name)
            except (ImportError, AttributeError) as e:
                raise ImportError(f"registry entry {self.target!r}: {e}; give it as "
                                  "'package.module:callable'") from None
            object.__setattr__(self, "_resolved", found)
        return self._resolved

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **kwargs)

    def __reduce__(self) -> tuple:  # pickled by its path alone: unpickling imports nothing
        return (Lazy, (self.target,))

    def __repr__(self) -> str:
        return f"Lazy({self.target!r})"
