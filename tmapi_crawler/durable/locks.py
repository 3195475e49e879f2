"""One crawl at a time on a ``JOBDIR`` and on a feed file (docs/behaviour.md,
"One crawl per JOBDIR").

Two crawls on one ``JOBDIR`` (a cron line whose crawl outlasts its interval)
share one queue and cut each other's feeds back; two crawls given one ``-O``
file truncate each other's records.  So a crawl holds an exclusive
``flock(2)`` on each for its whole life: the kernel drops it with the
process, so a crawl that was killed (SIGKILL included) never leaves a stale
lock behind, and the next run needs no clean-up.  A second crawl is refused
before any call with :class:`Busy`, which names the process that holds it.

A lock is held once per process and path: the ``crawl`` command takes it
before the crawl starts, and the JOBDIR scheduler again (a no-op then) for
crawls started without the command (a script, a test, another project's
``ADDONS``), which release theirs when they close.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from tmapi_crawler.config import ConfigError

#: The file in JOBDIR whose lock says a crawl is using it (it holds its pid).
JOBDIR_LOCK = "tmapi-crawl.lock"


class Busy(ConfigError):
    """Another process holds the lock; the message names it and says what to do."""


#: ``real path -> (file descriptor, holders in this process)``.
_held: dict[str, tuple[int, int]] = {}


def hold(path: Path, what: str, advice: str, *, write_pid: bool = False) -> None:
    """Hold the exclusive lock of *path* (made when missing, never
    truncated) until :func:`release` or the end of the process; raises
    :class:`Busy` (``"<what> is in use by ... : <advice>"``) when another
    process holds it."""
    key = os.path.realpath(path)
    if key in _held:
        fd, count = _held[key]
        _held[key] = (fd, count + 1)
        return
    if os.path.exists(key) and not os.path.isfile(key):
        return  # /dev/stdout, a pipe: nothing that another crawl could cut
    try:
        Path(key).parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(key, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError:
        return  # not a folder, not writable: the checks that follow say so
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = holder_of(fd)
        os.close(fd)
        by = f"another crawl (pid {holder})" if holder else "another crawl"
        raise Busy(f"{what} is in use by {by}: {advice}") from None
    except OSError:
        # A file system without locks (some network mounts): nothing to hold.
        os.close(fd)
        return
    if write_pid:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[key] = (fd, 1)


def release(path: Path) -> None:
    """One holder of *path* in this process lets go; the last one unlocks."""
    key = os.path.realpath(path)
    if key not in _held:
        return
    fd, count = _held.pop(key)
    if count > 1:
        _held[key] = (fd, count - 1)
        return
    os.close(fd)  # closing the only descriptor drops the lock


def holder_of(fd: int) -> int | None:
    """The pid of the process holding a lock on *fd*'s file: from Linux's
    ``/proc/locks``, else the pid the holder wrote in the file."""
    info = os.fstat(fd)
    device = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/locks").read_text().splitlines():
            fields = line.split()
            # "1: FLOCK  ADVISORY  WRITE 4711 08:01:123456 0 EOF" ("->" marks a waiter)
            if "->" not in fields and "FLOCK" in fields and device in fields:
                pid = int(fields[fields.index(device) - 1])
                if pid != os.getpid():
                    return pid
    with contextlib.suppress(OSError, ValueError):
        text = os.pread(fd, 32, 0).decode().strip()
        return int(text) if text else None
    return None


def hold_jobdir(jobdir: Path) -> None:
    """Hold *jobdir* for this crawl (see the module's docstring)."""
    hold(
        jobdir / JOBDIR_LOCK,
        f"JOBDIR={jobdir}",
        "wait for it to end (or stop it), or give this crawl its own JOBDIR; the running crawl is untouched",
        write_pid=True,
    )


def release_jobdir(jobdir: Path) -> None:
    release(jobdir / JOBDIR_LOCK)


def hold_feed(path: Path) -> None:
    """Hold the feed file *path* for this crawl."""
    hold(
        path,
        f"the feed {path}",
        "wait for it to end (or stop it), or give this crawl its own output file; the running crawl is untouched",
    )
