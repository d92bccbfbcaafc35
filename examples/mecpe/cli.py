"""What ``train``, ``evaluate`` and ``study`` share on the command line: the error boundary.

Bad input — a malformed or non-UTF-8 data file, an empty one, a file that is not a
checkpoint, a missing file, a bad setting — ends the command with **one line** on stderr that
names the file (and record / field) and exit status 2. ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

__all__ = ["USER_ERRORS", "add_debug_option", "guarded", "one_line"]

#: What bad input raises: ``DataFormatError``, ``CheckpointError``, ``UnicodeError`` and bad
#: settings are ``ValueError``s; a feature key missing from a table is a ``KeyError``.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, KeyError, OSError)


def add_debug_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--debug`` (show the traceback of an error instead of one line)."""
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of an error instead of one line"
    )


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line (a ``KeyError``'s without its quotes)."""
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return " ".join(text.split()) or type(exc).__name__


def guarded(body: Callable[[], int], *, debug: bool, prog: str) -> int:
    """Run ``body``; bad input (:data:`USER_ERRORS`) prints ``prog: error: ...`` and returns 2."""
    if debug:
        return body()
    try:
        return body()
    except USER_ERRORS as exc:
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr, flush=True)
        return 2
