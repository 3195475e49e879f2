"""Periodic work that never dies silently.

Scrapy's looping call logs "Error calling the AsyncioLoopingCall function"
and stops for good when its function raises once: a scheduler's commit
loop that stops so leaves acknowledgements unsent and workers hanging.
Every loop of the crawler goes through :func:`looping_call`, whose function
catches what it did not expect, logs one line (the first time, then at most
once a minute, each counted under ``tmapi/loop_errors/<name>``) and runs again
at its next tick.  Errors a loop expects (Redis gone, a full disk) are
handled inside it, where what to do is known.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from scrapy.utils.asyncio import create_looping_call

if TYPE_CHECKING:
    from collections.abc import Callable

    from scrapy.statscollectors import StatsCollector

logger = logging.getLogger(__name__)

#: Seconds between two log lines of the same loop's unexpected errors.
ERROR_LOG_INTERVAL = 60.0


def looping_call(func: Callable[[], Any], name: str, stats: StatsCollector | None = None) -> Any:
    """Scrapy's looping call of *func*, which keeps running when *func*
    raises (see the module's docstring); *name* says which loop in the log."""
    last_logged = -ERROR_LOG_INTERVAL

    def guarded() -> None:
        nonlocal last_logged
        try:
            func()
        except Exception as exc:
            if stats is not None:
                stats.inc_value(f"tmapi/loop_errors/{name}")
            now = time.monotonic()
            if now - last_logged >= ERROR_LOG_INTERVAL:
                last_logged = now
                logger.error(
                    "The %s loop failed (%s: %s); it goes on at its next tick. If this repeats, report it with the log",
                    name,
                    type(exc).__name__,
                    str(exc)[:200],
                )

    return create_looping_call(guarded)
