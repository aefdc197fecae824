"""External programs calm_study runs, checked before any expensive work (a leaf module: cheap to import)."""

from __future__ import annotations

import shutil


class JavaMissingError(RuntimeError):
    """Java is not on PATH: pycocoevalcap's PTB tokenizer and METEOR cannot run."""


def require_java() -> None:
    """Task captioning scores with pycocoevalcap, whose PTB tokenizer (Stanford CoreNLP) and METEOR are Java."""
    if shutil.which("java") is None:
        raise JavaMissingError(
            "task captioning needs Java: pycocoevalcap's PTB tokenizer (Stanford CoreNLP) and METEOR 1.5 are Java "
            "programs, and no java program is on PATH. Install a Java runtime (e.g. `apt-get install "
            "default-jre-headless` or `conda install openjdk`) on every machine that evaluates, then run the command "
            "again; nothing was trained")
