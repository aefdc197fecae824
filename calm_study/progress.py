"""Progress lines on stderr.

Written with sys.stderr.write rather than print: inside Ray Train workers, print is patched to go through a logger
and is also tee'd to the wrapped stream, which shows every line twice.
"""

import sys


def say(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
