"""Progress lines on stderr.

Written with sys.stderr.write rather than print: inside Ray Train workers, print is patched to go through a logger
and is also tee'd to the wrapped stream, which shows every line twice.
"""

import sys
import textwrap

# A worker's message before its "[<trial key>] " prefix (16 characters for a one-digit seed) and the console's 120
# columns: what `wrapped` keeps a long message within.
WORKER_WIDTH = 100


def say(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def wrapped(message: str, width: int = WORKER_WIDTH) -> list[str]:
    """A message as lines of at most `width` columns, broken at spaces only (a path or number is never cut), the
    continuation lines indented. Each goes through its own log call, so each carries the trial key."""
    return textwrap.wrap(message, width=width, subsequent_indent="  ", break_long_words=False,
                         break_on_hyphens=False) or [message]
