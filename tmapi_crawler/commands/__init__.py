"""The project's commands (``COMMANDS_MODULE``): ``crawl`` with one-line
errors and meaningful exit codes, ``export``, ``catalog``, ``cluster``, and
``parse`` for TMAPI URLs (the README lists them; docs/crawling.md,
docs/catalog.md, docs/exports.md and docs/distributed.md tell each).

What they share lives here, as Scrapy keeps its commands' helpers in
``scrapy.commands``: the exit codes, :func:`refuse` (a user's mistake in one
line) and :func:`whole_file` (an output never half-written).
"""

from __future__ import annotations

import contextlib
import glob
import os
import signal
import sys
import tempfile
from typing import IO, TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

#: Exit codes that are not a finish reason's (those are
#: tmapi_crawler.reasons.FinishReason's, each beside its member).
EXIT_BAD_INPUT = 2
#: A crawl that could read no listing at all (every first page failed).
EXIT_NO_LISTING = 9
#: Another crawl is using the JOBDIR or the feed file (:mod:`tmapi_crawler.durable.locks`).
EXIT_BUSY = 10


def refuse(message: str) -> NoReturn:
    """A mistake of the user's: one line on stderr, no traceback, exit 2."""
    print(f"Error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_BAD_INPUT)


@contextlib.contextmanager
def whole_file(output: Path) -> Iterator[IO[bytes]]:
    """A file to write *output* through: a temporary file beside it, renamed
    to *output* when the ``with`` block ends well and removed when it does
    not (an exception, ``SystemExit`` included, and Ctrl-C or SIGTERM), so
    that *output* is never half-written.  A temporary file left by a run
    that was killed (SIGKILL) is removed by the next run to *output*."""
    prefix = f".{output.name}.tmapi-"
    mine = f"{prefix}{os.getpid()}-"
    # The signals first: Ctrl-C while the temporary file is being made
    # removes it too (mkstemp may have made it before the signal came).
    with _signals_as_exit():
        remove_leftovers(output.parent, prefix)
        try:
            handle, temp = tempfile.mkstemp(prefix=mine, dir=output.parent)
            with os.fdopen(handle, "wb") as out:
                yield out
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(temp, 0o666 & ~umask)  # as a file the user wrote (mkstemp made it private)
            os.replace(temp, output)
        except BaseException:
            for path in output.parent.glob(glob.escape(mine) + "*"):  # this process's own
                with contextlib.suppress(OSError):
                    path.unlink()
            raise


def remove_leftovers(folder: Path, prefix: str) -> None:
    """Remove the temporary files ``<prefix><pid>-...`` in *folder* whose
    process is gone (killed before it could remove them)."""
    for path in folder.glob(glob.escape(prefix) + "*"):
        pid = path.name[len(prefix) :].split("-", 1)[0]
        if pid.isdigit() and not _running(int(pid)):
            with contextlib.suppress(OSError):
                path.unlink()
                print(f"Removed {path}, left by an earlier run that was killed", file=sys.stderr)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    return True


@contextlib.contextmanager
def _signals_as_exit() -> Iterator[None]:
    """SIGTERM and Ctrl-C raise SystemExit (exit 143, 130) instead of ending
    the process where it is (or with a traceback), so that the ``with``
    blocks around it clean up."""

    def handler(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    try:
        previous = {signum: signal.signal(signum, handler) for signum in (signal.SIGTERM, signal.SIGINT)}
    except ValueError:  # not the main thread: nothing to install
        yield
        return
    try:
        yield
    finally:
        for signum, was in previous.items():
            signal.signal(signum, was)
