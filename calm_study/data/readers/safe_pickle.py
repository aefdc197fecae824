"""Load a pickle of plain data (dict/list/tuple/str/int/float/bytes/bool/None) without ever importing anything.

Annotation pickles such as MSVD's ``raw-captions.pkl`` are downloaded from the internet, and ``pickle.load`` on an
untrusted file is arbitrary code execution: every callable a pickle can invoke (``os.system``, ``builtins.exec``,
a class constructor, ...) reaches the unpickler through ``find_class``. Plain containers and scalars have their own
opcodes and never go through it, so refusing *every* global keeps data pickles loadable and makes the rest inert.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any


class UnsafePickleError(ValueError):
    """The pickle asked for a global (a class or a function); it was refused and nothing from it was run."""


class _RefusingUnpickler(pickle.Unpickler):
    """An Unpickler that resolves no globals and no persistent ids, so no pickle can import or call anything."""

    def __init__(self, file: io.BufferedIOBase, source: Path) -> None:
        # encoding="utf-8": Python 2 pickles store text as byte strings; the default ASCII would fail on any accent.
        super().__init__(file, encoding="utf-8")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        # Every route to a callable (GLOBAL, STACK_GLOBAL, INST, OBJ, EXT*) ends here; refusing before the import
        # means a malicious __reduce__ payload is never executed.
        raise UnsafePickleError(
            f"{self._source}: refused to load the global {module}.{name} from this pickle. Only plain data "
            "(dict, list, tuple, str, int, float, bytes, bool, None) is accepted, because unpickling a global can "
            "run arbitrary code; re-create the file from plain Python containers if it is legitimate."
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(
            f"{self._source}: refused the persistent id {pid!r} in this pickle; only plain data is accepted."
        )


def load_restricted(path: str | Path) -> Any:
    """Unpickle ``path`` allowing plain data only; raise UnsafePickleError if it references any global.

    A missing file raises FileNotFoundError; a truncated or corrupt one raises ValueError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: pickle file not found")
    with path.open("rb") as f:
        try:
            return _RefusingUnpickler(f, path).load()
        except UnsafePickleError:
            raise
        except (pickle.UnpicklingError, EOFError, UnicodeDecodeError, ValueError, IndexError, KeyError,
                TypeError) as err:
            # The C unpickler reports corrupt input with several exception types; unify them into one clear error.
            raise ValueError(f"{path}: not a readable pickle of plain data ({type(err).__name__}: {err})") from err
