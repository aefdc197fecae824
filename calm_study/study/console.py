"""What a study run prints: calm_study's own lines, not Ray's internals (`run --verbose` or CALM_STUDY_VERBOSE=1 shows
everything, for debugging).

Ray streams every worker's and actor's output to the driver, prefixed `(ActorName pid=N)`, and prints its own
logging, its C++ logs (`core_worker.cc`), the raylet's warnings, Tune's configuration box and pointers to TensorBoard
and `Tuner.restore(...)`, none of which is how calm_study is used. A quiet run keeps only:
- lines a trial's rank-0 worker prints through calm_study (`[<trial key>] ...`: one per epoch, resume notes, skipped
  videos, feature extraction), without Ray's actor prefix;
- everything calm_study's driver prints itself (pre-flight notes, the trial counts, the end-of-run table).
Ray's logs still go to its session folder (/tmp/ray/session_latest/logs), where `--verbose` is not needed to read them.

The filter wraps sys.stdout and sys.stderr before Ray is imported, so that Ray's log handlers and its log monitor
write through it. A logging record is written in one call (message and traceback together), so a dropped record
drops its traceback too.
"""

from __future__ import annotations

import os
import re
import sys
from typing import TextIO

from calm_study.names import VERBOSE_ENV

ANSI = re.compile(r"\x1b\[[0-9;]*m")
ACTOR_LINE = re.compile(r"^\((?P<actor>[^()]*?)(?: pid=\d+[^)]*)?\)\s?(?P<body>.*)$")  # (RayTrainWorker pid=1, ip=..)
OUR_WORKER_LINE = re.compile(r"^\[[^\]\s]+-s-?\d+\] ")  # "[<arm id>-s<seed>] ..." (names.trial_key)
DEDUP_SUFFIX = re.compile(r"\s*\[repeated \d+x across cluster\]\s*$")
RAY_NOISE = (
    re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\s+(DEBUG|INFO|WARNING|ERROR|CRITICAL)\s"),  # Ray's Python logs
    re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [DIWEF] \d+ \d+\]"),  # Ray's C++ logs (core_worker.cc, ...)
    re.compile(r"^[╭│├╰]"),  # Tune's configuration box
    re.compile(r"View detailed results here|To visualize your results with TensorBoard|Tuner\.restore|"
               r"tensorboard --logdir|Trial status:|Current time:|Logical resource usage:"),
)


def verbose_requested(flag: bool = False) -> bool:
    return flag or os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def keep(line: str) -> str | None:
    """The text to show for one console line, or None to drop it (the rules in the module docstring)."""
    plain = ANSI.sub("", line)
    actor = ACTOR_LINE.match(plain)
    if actor and (" pid=" in plain[: plain.find(")") + 1] or actor["actor"] in ("raylet", "gcs_server")):
        body = DEDUP_SUFFIX.sub("", actor["body"])
        return body if OUR_WORKER_LINE.match(body) else None
    if any(p.search(plain) for p in RAY_NOISE):
        return None
    return line


class QuietStream:
    """A text stream that passes on only the lines `keep` accepts (see the module docstring)."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.partial = ""

    def write(self, text: str) -> int:
        chunk, self.partial = self.partial + text, ""
        lines = chunk.split("\n")
        self.partial = lines.pop()  # an unfinished last line waits for the rest of it
        if lines:
            first = keep(lines[0])
            if first is None and not ACTOR_LINE.match(ANSI.sub("", lines[0])):
                return len(text)  # a Ray log record: its continuation lines (a traceback) go with it
            shown = [first] if first is not None else []
            shown += [k for k in map(keep, lines[1:]) if k is not None]
            if shown:
                self.stream.write("\n".join(shown) + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str):  # fileno, isatty, encoding, ...: the wrapped stream's
        return getattr(self.stream, name)


def quiet_console() -> None:
    """Filter this process's stdout and stderr, and keep Ray from merging calm_study's per-epoch lines (its log
    deduplication would fold the epochs of different trials into one "[repeated Nx]" line)."""
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if not isinstance(sys.stdout, QuietStream):
        sys.stdout = QuietStream(sys.stdout)
    if not isinstance(sys.stderr, QuietStream):
        sys.stderr = QuietStream(sys.stderr)
