"""The crawler's monitors, with spidermon (docs/operations.md).

The add-on enables spidermon with :class:`CrawlMonitors` when a crawl ends
and :class:`StallMonitors` every minute.  Each monitor reads the crawl's
stats and, when it fails, says why in one sentence.  Spidermon logs the
results; :class:`RecordResults` puts them in the stats too
(``tmapi/monitors/failed/<monitor>`` = the reason), where the alert webhook
(:mod:`tmapi_crawler.notify.alerts`) and any spidermon action find them.  Users add
spidermon's own actions (Slack, e-mail, Sentry, ...) with
``SPIDERMON_SPIDER_CLOSE_MONITORS`` as spidermon documents.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from spidermon import Monitor, MonitorSuite, monitors
from spidermon.contrib.scrapy.extensions import Spidermon
from spidermon.contrib.scrapy.runners import LOG_MESSAGE_HEADER, SpiderMonitorResult, SpiderMonitorRunner
from spidermon.core.actions import Action
from spidermon.settings import MONITOR

from tmapi_crawler.config import TmapiConfig, config_from_settings, is_distributed
from tmapi_crawler.reasons import GOOD_REASONS, FinishReason

logger = logging.getLogger(__name__)

#: Finish reasons of a crawl that did what it was asked.
#: The share of 503 answers above which the throttle is not doing its job
#: (it keeps it well under 1%: docs/performance.md).
MOST_503_SHARE = 0.05
#: Seconds between two runs of the stall monitor.
STALL_CHECK_INTERVAL = 60.0
FAILURE = MONITOR.STATUS.FAILURE
#: Prefix of the stats that hold the monitors' results.
RESULTS = "tmapi/monitors"
#: What each worker of a distributed crawl adds to its run's totals when it
#: stops (its ``tmapi/<name>`` stats; :meth:`.cluster.health.RedisHealth.leave_run`):
#: the last worker of the run gets them as ``tmapi/run/<name>``.
RUN_TOTALS = ("products", "listings", "products_failed", "duplicates", "products_expected", "calls", "codes/503")
#: In distributed mode, whether this worker was the last of its run (1: the
#: ``tmapi/run/...`` stats hold the run's totals) or not (0).
LAST_WORKER = "tmapi/run/last_worker"


class TmapiMonitor(Monitor):
    """A monitor that reads the crawl's stats and settings."""

    def stat(self, key: str) -> Any:
        return self.data.stats.get(key, 0) or 0

    def total(self, name: str) -> Any:
        """The crawl's count ``tmapi/<name>`` (one of :data:`RUN_TOTALS`):
        this process's, or in distributed mode the run's, which only the
        last worker of the run knows: any other skips the test that needs
        it (one worker's records against every worker's listings proves
        nothing)."""
        last = self.data.stats.get(LAST_WORKER)
        if last is None and is_distributed(self.data.crawler.settings):
            self.skipTest("the run's totals are not known here (Redis did not answer as this worker left)")
        if last == 0:
            self.skipTest("judged by the last worker of the run, on the run's totals")
        return self.stat(f"tmapi/run/{name}" if last == 1 else f"tmapi/{name}")

    @property
    def config(self) -> TmapiConfig:
        return config_from_settings(self.data.crawler.settings)

    def check(self, ok: bool, reason: str) -> None:
        if not ok:
            self.fail(reason)


@monitors.name("finish reason")
class FinishReasonMonitor(TmapiMonitor):
    @monitors.name("the crawl finished")
    def test_finish_reason(self) -> None:
        reason = self.data.stats.get("finish_reason")
        self.check(reason in GOOD_REASONS, f"the crawl ended with {reason!r}, not {' or '.join(GOOD_REASONS)}")


@monitors.name("products")
class ProductsMonitor(TmapiMonitor):
    @monitors.name("some product")
    def test_some_product(self) -> None:
        written = self.total("products") + self.total("listings")
        self.check(written > 0, "no product record at all")

    @monitors.name("every announced product")
    def test_every_announced_product(self) -> None:
        expected = self.total("products_expected")
        ended = sum(self.total(k) for k in ("products", "listings", "products_failed", "duplicates"))
        reason = self.data.stats.get("finish_reason")
        self.check(
            reason != FinishReason.FINISHED or ended >= expected,
            f"the listings announced {expected} products, {ended} ended as a record or a failure "
            "(a listing page failed: see the failures file)",
        )


@monitors.name("failures")
class FailuresMonitor(TmapiMonitor):
    @monitors.name("failure share")
    def test_failure_share(self) -> None:
        failed = self.total("products_failed")
        total = failed + self.total("products") + self.total("listings")
        share = failed / total if total else 0.0
        most = self.config.alert_failure_share
        self.check(
            share <= most,
            f"{failed} of {total} products failed ({share:.1%}), more than TMAPI_ALERT_FAILURE_SHARE={most:g}",
        )

    @monitors.name("validation")
    def test_validation(self) -> None:
        invalid = self.stat("tmapi/invalid")
        self.check(invalid == 0, f"{invalid} records failed validation (tmapi/invalid/<field> says which fields)")


@monitors.name("account")
class AccountMonitor(TmapiMonitor):
    @monitors.name("balance")
    def test_no_439(self) -> None:
        quota = self.stat("tmapi/codes/439")
        self.check(quota == 0, f"TMAPI answered 439 (balance or subscription) {quota} times: top up")

    @monitors.name("concurrency")
    def test_few_503(self) -> None:
        n503, calls = self.total("codes/503"), self.total("calls")
        share = n503 / calls if calls else 0.0
        self.check(
            share <= MOST_503_SHARE,
            f"{n503} of {calls} calls answered 503 ({share:.1%}), more than {MOST_503_SHARE:.0%}: "
            "set TMAPI_CONCURRENCY to the account's limit",
        )

    @monitors.name("no stall")
    def test_no_stall(self) -> None:
        stalls = self.stat(f"{RESULTS}/stalls")
        self.check(stalls == 0, f"the crawl made no progress for TMAPI_STALL_TIMEOUT seconds, {stalls} times")


@monitors.name("progress")
class StallMonitor(TmapiMonitor):
    """Run every minute: calls answered and records written must change
    within ``TMAPI_STALL_TIMEOUT`` seconds (longer than a 439 pause's
    default wait)."""

    @monitors.name("progress")
    def test_progress(self) -> None:
        stats = self.data.crawler.stats
        progress = sum(self.stat(k) for k in ("tmapi/billed", "tmapi/products", "tmapi/failures", "tmapi/listings"))
        now = time.time()
        if progress != self.stat(f"{RESULTS}/progress"):
            stats.set_value(f"{RESULTS}/progress", progress)
            stats.set_value(f"{RESULTS}/progress_at", now)
            return
        since = now - (self.data.stats.get(f"{RESULTS}/progress_at") or now)
        stalled = since > self.config.stall_timeout
        if stalled:
            stats.set_value(f"{RESULTS}/progress_at", now)  # said once per timeout
            stats.inc_value(f"{RESULTS}/stalls")
        self.check(not stalled, f"no call answered and no record written for {since:.0f} s")


class RecordResults(Action):
    """The failed monitors and their reasons, into the stats."""

    def run_action(self) -> None:
        stats = self.data.crawler.stats
        failed = self.result.monitors_failed_results
        for item in failed:
            stats.set_value(f"{RESULTS}/failed/{item.item.name}", str(item.reason or item.error or "failed"))
        passed = len(self.result.monitors_passed_results)
        stats.set_value(f"{RESULTS}/passed", stats.get_value(f"{RESULTS}/passed", 0) + passed)


class CrawlMonitors(MonitorSuite):
    """When the crawl ends."""

    monitors = [FinishReasonMonitor, ProductsMonitor, FailuresMonitor, AccountMonitor]  # noqa: RUF012
    monitors_finished_actions = [RecordResults]  # noqa: RUF012


class StallMonitors(MonitorSuite):
    """Every :data:`STALL_CHECK_INTERVAL` seconds during the crawl."""

    monitors = [StallMonitor]  # noqa: RUF012


# -- spidermon 1.27 on Scrapy 2.19 ----------------------------------------------------


class _Result(SpiderMonitorResult):
    """spidermon's result, logging through ``spider.logger`` (its own
    ``spider.log()`` is deprecated since Scrapy 2.14), and quietly: when
    every monitor of a step passes, one line (``monitors: 8 passed``) in the
    place of spidermon's report of a line a monitor; the whole report when
    one fails, or at ``LOG_LEVEL=DEBUG``."""

    def __init__(self, spider: Any):
        super().__init__(spider)
        self.lines: list[str] = []
        # Scrapy filters by its handler's level (LOG_LEVEL), not the loggers'.
        level = spider.settings.get("LOG_LEVEL") if getattr(spider, "settings", None) is not None else None
        self.quiet = str(level or "INFO").upper() not in ("DEBUG", "10")

    def log(self, msg: Any, level: int = logging.DEBUG) -> None:
        if level == logging.INFO and self.quiet:
            self.lines.append(str(msg))  # said with the step's outcome (finish_step)
            return
        self.spider.logger.log(level, "[%s] %s", LOG_MESSAGE_HEADER, msg)

    def finish_step(self) -> None:
        super().finish_step()  # its report goes to self.lines
        lines, self.lines = self.lines, []
        if self.step.successful:
            if self.step.item_result_class.name == "monitor":
                counts = {"passed": len(self.step.items_for_status(MONITOR.STATUS.SUCCESS))}
                counts["skipped"] = len(self.step.items_for_status(MONITOR.STATUS.SKIPPED))
                said = ", ".join(f"{n} {what}" for what, n in counts.items() if n or what == "passed")
                self.spider.logger.info("[%s] monitors: %s", LOG_MESSAGE_HEADER, said)
            return
        for line in lines:
            self.spider.logger.info("[%s] %s", LOG_MESSAGE_HEADER, line)

    def write_errors(self) -> None:
        """A failed monitor in one line, its reason (a failure is an outcome,
        not a bug); a monitor that raised keeps its traceback."""
        for item in self.step.items_for_status(FAILURE):
            self.log_error(f"FAIL: {item.item.name}: {item.reason}")
        for status in self.step.error_statuses:
            if status != FAILURE:
                for item in self.step.items_for_status(status):
                    self.log_error(f"{item.status}: {item.item.name}\n{item.error}")


class _Runner(SpiderMonitorRunner):
    def create_result(self) -> _Result:
        return _Result(self.spider)


class TmapiSpidermon(Spidermon):
    """spidermon's extension (the add-on puts it in the place of
    ``spidermon.contrib.scrapy.extensions.Spidermon``), with a runner that
    does not call the deprecated ``Spider.log()``."""

    def _run_suites(self, spider: Any, suites: list[Any]) -> None:
        data = self._generate_data_for_spider(spider)
        for suite in suites:
            _Runner(spider=spider).run(suite, **data)
