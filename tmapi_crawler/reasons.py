"""How a crawl ends: its finish reason, with the exit code the ``crawl``
command gives for it (docs/operations.md, "Finish reasons and exit codes").

The one list of them: components stop the crawl with a member
(``gate.stop(FinishReason.QUOTA_EXHAUSTED)``), the monitors judge by them,
and the command's exit code is the member's :attr:`~FinishReason.exit_code`
(any other reason, Scrapy's own included, exits 1).
"""

from __future__ import annotations

from enum import StrEnum


class FinishReason(StrEnum):
    exit_code: int

    def __new__(cls, value: str, exit_code: int) -> FinishReason:
        member = str.__new__(cls, value)
        member._value_ = value
        member.exit_code = exit_code
        return member

    def __repr__(self) -> str:
        # As the text it is: Scrapy's stats dump shows 'tmapi_feed_failed'.
        return str.__repr__(self.value)

    #: Every product ended (written, or a failure record).
    FINISHED = "finished", 0
    #: TMAPI_MAX_CALLS reached: the crawl did what it was allowed to.
    BUDGET_EXHAUSTED = "tmapi_budget_exhausted", 0
    #: The token was refused.
    AUTH_FAILED = "tmapi_auth_failed", 3
    #: 439 for TMAPI_QUOTA_WAIT: top up, run again.
    QUOTA_EXHAUSTED = "tmapi_quota_exhausted", 4
    #: The catalog store failed (disk full...): run again when fixed.
    STORE_FAILED = "tmapi_store_failed", 5
    #: A feed, failures or changes file could not be written: free space, run again.
    FEED_FAILED = "tmapi_feed_failed", 6
    #: Redis did not answer for TMAPI_REDIS_OUTAGE_TIMEOUT: run again when it does.
    REDIS_UNAVAILABLE = "tmapi_redis_unavailable", 7
    #: Redis lost the crawl (restarted empty, flushed): clear and start again.
    REDIS_STATE_LOST = "tmapi_redis_state_lost", 8
    #: A Scrapy internal the crawler relies on is missing: install the pinned versions.
    INCOMPATIBLE = "tmapi_incompatible_scrapy", 1
    #: Stopped by Ctrl-C or SIGTERM: resume with JOBDIR.
    SHUTDOWN = "shutdown", 130


#: The reasons of a crawl that did what it was asked (the monitors' judgement).
GOOD_REASONS = (FinishReason.FINISHED, FinishReason.BUDGET_EXHAUSTED)


#: The exit code by finish reason's text.
EXIT_CODES: dict[str, int] = {reason.value: reason.exit_code for reason in FinishReason}


def exit_code_for(reason: str | None) -> int:
    """The ``crawl`` command's exit code for *reason*; 1 for any reason not
    of ours (Scrapy's ``closespider_timeout``, say)."""
    return EXIT_CODES.get(reason or "", 1)
