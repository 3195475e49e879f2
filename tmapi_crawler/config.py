"""Every ``TMAPI_*`` setting, declared once: its name (the field's alias), its
default, its type and its check, in :class:`TmapiConfig`.

Components read their settings through :func:`config_from_settings`, so that
a bad value is refused in one place, before any call, with one line that
names the setting, the value and what is allowed.  The README lists every
setting (docs/settings.md).
"""

from __future__ import annotations

import difflib
import functools
import ipaddress
import os
import re
import tempfile
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from scrapy.pipelines.files import FilesPipeline
from scrapy.utils.misc import load_object

from tmapi_crawler.api import LANGUAGES, PRODUCTION_URL
from tmapi_crawler.media.hosts import DEFAULT_MEDIA_HOSTS, MediaHosts
from tmapi_crawler.notify.digest import parse_rules
from tmapi_crawler.redaction import hide_password
from tmapi_crawler.store.freshness import parse_budget
from tmapi_crawler.store.url import StoreError, parse_store_url

if TYPE_CHECKING:
    from scrapy.settings import BaseSettings


class ConfigError(ValueError):
    """A setting or an argument a user gave is wrong; the message is one line
    that says which, the value, and what is allowed."""


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_distributed(settings: BaseSettings) -> bool:
    """Whether the crawl is shared through Redis: the one place that reads
    ``REDIS_URL`` to choose the mode."""
    return bool(settings.get("REDIS_URL"))


class Mode(StrEnum):
    """How a crawl keeps what it has to do (docs/behaviour.md): in memory,
    in ``JOBDIR`` (crash-safe, one process), or in Redis (shared by workers;
    ``JOBDIR`` then plays no part)."""

    ONE_PROCESS = "one process"
    JOBDIR = "jobdir"
    DISTRIBUTED = "distributed"


def mode_of(settings: BaseSettings) -> Mode:
    """The crawl's mode, from ``REDIS_URL`` and ``JOBDIR``: the one place
    that chooses it."""
    if is_distributed(settings):
        return Mode.DISTRIBUTED
    return Mode.JOBDIR if settings.get("JOBDIR") else Mode.ONE_PROCESS


def _http_url(value: str | None, example: str) -> str | None:
    """An optional http(s) URL setting: ``None`` when empty."""
    if value in (None, ""):
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"is not an http(s) URL such as {example}")
    return value


def _import_path(value: str) -> str:
    try:
        load_object(value)
    except (ImportError, ValueError, NameError, AttributeError) as exc:
        raise ValueError(f"cannot be imported ({exc})") from None
    return value


class TmapiConfig(BaseModel):
    """The ``TMAPI_*`` settings; each field's alias is the setting's name."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    #: The API token.  Only the download handler reads its value; everywhere
    #: else (settings dumps, reprs) it shows as ``**********``.
    token: SecretStr | None = Field(default=None, alias="TMAPI_TOKEN")
    base_url: str = Field(default=PRODUCTION_URL, alias="TMAPI_BASE_URL")
    allow_http: bool = Field(default=False, alias="TMAPI_ALLOW_HTTP")
    language: str = Field(default="zh", alias="TMAPI_LANGUAGE")
    max_calls: int = Field(default=0, ge=0, alias="TMAPI_MAX_CALLS")
    concurrency: int = Field(default=0, ge=0, alias="TMAPI_CONCURRENCY")
    #: Start where the last crawl of the account ended (tmapi_crawler.calls.limits).
    remember_limit: bool = Field(default=True, alias="TMAPI_REMEMBER_LIMIT")
    retry_times: int = Field(default=3, ge=0, alias="TMAPI_RETRY_TIMES")
    retry_backoff: float = Field(default=1.0, ge=0, alias="TMAPI_RETRY_BACKOFF")
    retry_backoff_max: float = Field(default=30.0, ge=0, alias="TMAPI_RETRY_BACKOFF_MAX")
    quota_wait: float = Field(default=600.0, ge=0, alias="TMAPI_QUOTA_WAIT")
    quota_probe: float = Field(default=5.0, gt=0, alias="TMAPI_QUOTA_PROBE")
    quota_probe_max: float = Field(default=60.0, gt=0, alias="TMAPI_QUOTA_PROBE_MAX")
    failures_file: str = Field(default="failures.jsonl", min_length=1, alias="TMAPI_FAILURES_FILE")
    progress_interval: float = Field(default=10.0, ge=0, alias="TMAPI_PROGRESS_INTERVAL")
    idle_timeout: float = Field(default=30.0, ge=0, alias="TMAPI_IDLE_TIMEOUT")
    lease_timeout: float = Field(default=60.0, gt=0, alias="TMAPI_LEASE_TIMEOUT")
    #: Distributed mode: how long a worker waits for Redis to answer again.
    redis_outage_timeout: float = Field(default=300.0, gt=0, alias="TMAPI_REDIS_OUTAGE_TIMEOUT")
    #: Exports to stores: CNY x rate x markup (docs/exports.md).
    price_rate: float = Field(default=1.0, gt=0, alias="TMAPI_PRICE_RATE")
    price_markup: float = Field(default=1.0, gt=0, alias="TMAPI_PRICE_MARKUP")
    shopify_max_variants: int = Field(default=2048, ge=1, alias="TMAPI_SHOPIFY_MAX_VARIANTS")
    #: The status the shop formats give products (a delisted one: archived).
    export_status: Literal["draft", "active", "archived"] = Field(default="draft", alias="TMAPI_EXPORT_STATUS")
    #: A UTF-8 byte-order mark at the start of CSV exports (Excel).
    export_bom: bool = Field(default=False, alias="TMAPI_EXPORT_BOM")
    #: The public URL of FILES_STORE: exports point images at it.
    media_url_base: str | None = Field(default=None, alias="TMAPI_MEDIA_URL_BASE")
    #: Descriptions in shop exports: sanitized (an allow-list), text, or raw.
    export_html: Literal["sanitized", "text", "raw"] = Field(default="sanitized", alias="TMAPI_EXPORT_HTML")
    #: A CSV cell that would start a formula gets a leading ' (or is kept).
    csv_formulas: Literal["escape", "keep"] = Field(default="escape", alias="TMAPI_CSV_FORMULAS")
    #: Where media may be downloaded from (tmapi_crawler.media.hosts).
    media_hosts: str = Field(default=" ".join(DEFAULT_MEDIA_HOSTS), alias="TMAPI_MEDIA_HOSTS")
    #: Monitors and alerts (docs/operations.md).
    alert_webhook: str | None = Field(default=None, alias="TMAPI_ALERT_WEBHOOK")
    alert_failure_share: float = Field(default=0.05, ge=0, le=1, alias="TMAPI_ALERT_FAILURE_SHARE")
    #: Changes of the catalog store worth an alert (rules, comma-separated).
    alert_changes: str | None = Field(default=None, alias="TMAPI_ALERT_CHANGES")
    alert_max_changes: int = Field(default=50, ge=1, alias="TMAPI_ALERT_MAX_CHANGES")
    alert_format: Literal["json", "slack", "discord"] = Field(default="json", alias="TMAPI_ALERT_FORMAT")
    #: Notifications through Apprise (tmapi_crawler.notify.services): URLs or an Apprise
    #: configuration file.  A secret like the token: the URLs hold tokens.
    notify: SecretStr | None = Field(default=None, alias="TMAPI_NOTIFY")
    #: The catalog report of the crawl's period attached to each notification.
    notify_report: bool = Field(default=False, alias="TMAPI_NOTIFY_REPORT")
    stall_timeout: float = Field(default=900.0, gt=0, alias="TMAPI_STALL_TIMEOUT")
    #: The catalog store (docs/catalog.md): a SQLite file or a PostgreSQL URL.
    #: A secret like the token: a PostgreSQL URL may hold a password.
    store: SecretStr | None = Field(default=None, alias="TMAPI_STORE")
    #: A week: a daily crawl refreshes a share of the details each day (the
    #: age is jittered per product), not all of them every 24 hours.
    detail_max_age: float = Field(default=7 * 86400.0, ge=0, alias="TMAPI_DETAIL_MAX_AGE")
    desc_max_age: float = Field(default=2592000.0, ge=0, alias="TMAPI_DESC_MAX_AGE")
    #: The most refreshes of stored products a crawl spends (docs/catalog.md).
    refresh_budget: int | float | None = Field(default=None, alias="TMAPI_REFRESH_BUDGET")
    refresh_policy: Literal["value", "oldest", "age"] = Field(default="value", alias="TMAPI_REFRESH_POLICY")
    #: The products a user sells: refreshed first (tmapi_crawler.store.watch).
    watch: str | None = Field(default=None, alias="TMAPI_WATCH")
    watch_max_age: float = Field(default=3600.0, ge=0, alias="TMAPI_WATCH_MAX_AGE")
    changes_file: str = Field(default="changes.jsonl", min_length=1, alias="TMAPI_CHANGES_FILE")
    #: Change rows older than this are pruned when a crawl ends (seconds;
    #: given as 365d, 48h, 90m or seconds; unset: kept for ever).
    changes_retention: float | None = Field(default=None, gt=0, alias="TMAPI_CHANGES_RETENTION")
    #: How long the store's writes and lookups are tried again (a restart).
    store_outage_timeout: float = Field(default=60.0, ge=0, alias="TMAPI_STORE_OUTAGE_TIMEOUT")
    #: Media downloads (-a media=..., docs/media.md): apart from API calls.
    media_concurrency: int = Field(default=16, ge=1, alias="TMAPI_MEDIA_CONCURRENCY")
    media_concurrency_per_host: int = Field(default=8, ge=1, alias="TMAPI_MEDIA_CONCURRENCY_PER_HOST")
    media_retry_times: int = Field(default=2, ge=0, alias="TMAPI_MEDIA_RETRY_TIMES")
    media_timeout: float = Field(default=60.0, gt=0, alias="TMAPI_MEDIA_TIMEOUT")
    media_maxsize: int = Field(default=64 * 1024 * 1024, ge=1, alias="TMAPI_MEDIA_MAXSIZE")
    media_max_pending: int = Field(default=200, ge=1, alias="TMAPI_MEDIA_MAX_PENDING")
    #: The handler that really downloads, under the one that adds the token.
    #: The add-on sets it to a DOWNLOAD_HANDLERS entry the user gave for https.
    inner_download_handler: str = Field(
        default="scrapy.core.downloader.handlers.http11.HTTP11DownloadHandler",
        alias="TMAPI_INNER_DOWNLOAD_HANDLER",
    )
    #: The call gate: one process, or shared through Redis (the add-on sets
    #: it in distributed mode, as it sets SCHEDULER and DUPEFILTER_CLASS).
    gate_class: str = Field(default="tmapi_crawler.calls.gate.CallGate", alias="TMAPI_GATE_CLASS")
    #: Who downloads a media file among the workers ("": this process alone).
    media_claims_class: str = Field(default="", alias="TMAPI_MEDIA_CLAIMS_CLASS")

    @field_validator("language")
    @classmethod
    def _language(cls, value: str) -> str:
        if value not in LANGUAGES:
            raise ValueError(f"must be one of {', '.join(LANGUAGES)}")
        return value

    @field_validator("token", mode="before")
    @classmethod
    def _token(cls, value: Any) -> Any:
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if text is not None and (not isinstance(text, str) or not text.strip() or any(c.isspace() for c in text)):
            raise ValueError("must be a non-empty string without spaces")
        return value

    @field_validator("alert_webhook")
    @classmethod
    def _webhook(cls, value: str | None) -> str | None:
        return _http_url(value, "https://hooks.example.com/tmapi")

    @field_validator("alert_changes")
    @classmethod
    def _alert_changes(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        parse_rules(value)
        return value

    @field_validator("changes_retention", mode="before")
    @classmethod
    def _retention(cls, value: Any) -> Any:
        if value in (None, ""):
            return None
        found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([dhms]?)\s*", str(value))
        if not found:
            raise ValueError("is not a duration: give 365d, 48h, 90m or seconds")
        return float(found.group(1)) * {"d": 86400, "h": 3600, "m": 60, "s": 1, "": 1}[found.group(2)]

    @field_validator("watch")
    @classmethod
    def _watch(cls, value: str | None) -> str | None:
        if value and not Path(value).is_file():
            raise ValueError("no such file: give the file of the products you sell (ids, URLs or a shop's CSV)")
        return value or None

    @field_validator("refresh_budget", mode="before")
    @classmethod
    def _refresh_budget(cls, value: Any) -> Any:
        return parse_budget(value)

    @field_validator("media_hosts", mode="before")
    @classmethod
    def _media_hosts(cls, value: Any) -> Any:
        MediaHosts.parse(value if isinstance(value, str) else ",".join(map(str, value)))
        return value if isinstance(value, str) else ",".join(map(str, value))

    @field_validator("media_url_base")
    @classmethod
    def _media_url_base(cls, value: str | None) -> str | None:
        return _http_url(value, "https://cdn.example.com/media/ (where FILES_STORE is served)")

    @field_validator("store", mode="before")
    @classmethod
    def _store(cls, value: Any) -> Any:
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if value is None or not str(value).strip():
            return None
        try:
            parse_store_url(value)
        except StoreError as exc:
            shown = f"TMAPI_STORE={hide_password(value)!r}"
            raise ValueError(str(exc).removeprefix(shown).lstrip(": ")) from None
        return value

    @field_validator("notify", mode="before")
    @classmethod
    def _notify(cls, value: Any) -> Any:
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if text is None or not str(text).strip():
            return None
        _check_notify(str(text))
        return value

    @field_validator("inner_download_handler", "gate_class", "media_claims_class")
    @classmethod
    def _class_path(cls, value: str) -> str:
        return _import_path(value) if value else value

    @model_validator(mode="after")
    def _url(self) -> TmapiConfig:
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"TMAPI_BASE_URL={shown(self.base_url)} is not an http(s) URL; use {PRODUCTION_URL}")
        if parts.query or parts.fragment:
            raise ValueError(f"TMAPI_BASE_URL={shown(self.base_url)} must not have a query or fragment")
        if parts.scheme == "http" and not self.allow_http and not _is_loopback(parts.hostname):
            raise ValueError(
                f"TMAPI_BASE_URL={shown(self.base_url)} would send the token in clear text; "
                f"use https:// (or set TMAPI_ALLOW_HTTP=True to accept the risk)"
            )
        if self.notify_report and self.notify is None:
            raise ValueError("TMAPI_NOTIFY_REPORT=True attaches a report to the notifications: set TMAPI_NOTIFY too")
        if self.notify_report and self.store is None:
            raise ValueError(
                "TMAPI_NOTIFY_REPORT=True attaches the catalog store's report: set TMAPI_STORE too (docs/catalog.md)"
            )
        return self

    @property
    def api_host(self) -> str:
        return urlsplit(self.base_url).netloc


@functools.lru_cache(maxsize=8)
def _check_notify(value: str) -> None:
    """``TMAPI_NOTIFY`` loads in Apprise (checked once a value: the
    settings are validated by many components)."""
    from tmapi_crawler.notify.services import load_services

    load_services(value)


#: Setting name -> default, derived from the model (the README lists them too).
DEFAULTS: dict[str, Any] = {
    str(field.alias): field.default for field in TmapiConfig.model_fields.values() if field.alias is not None
}


#: Settings whose values are never echoed in an error: they hold tokens.
SECRET_SETTINGS = ("TMAPI_TOKEN", "TMAPI_NOTIFY")

#: The most characters of a bad value that a one-line error shows.
SHOWN_MOST = 80


def shown(value: Any) -> str:
    """A value a user gave, for a one-line error: its repr, cut to its first
    :data:`SHOWN_MOST` characters (a 10 kB argument is not echoed whole)."""
    if isinstance(value, str) and len(value) > SHOWN_MOST:
        return f"{value[:SHOWN_MOST]!r}... ({len(value)} characters)"
    text = repr(value)
    return text if len(text) <= SHOWN_MOST else f"{text[:SHOWN_MOST]}... ({len(text)} characters)"


def describe_validation_error(exc: ValidationError, names: dict[str, str] | None = None) -> str:
    """One line for a pydantic error: each bad field with its value and why."""
    parts = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        name = (names or {}).get(loc[0], loc[0]) if loc else ""
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] in ("model_type", "missing") or not loc:
            parts.append(f"{name}: {msg}" if name else msg)
            continue
        if name in SECRET_SETTINGS:  # the message names what is wrong, masked
            parts.append(f"{name}: {msg}")
            continue
        value = hide_password(err["input"]) if isinstance(err["input"], str) else err["input"]
        parts.append(f"{name}={shown(value)}: {msg}")
    return "; ".join(parts)


def unknown_settings(settings: BaseSettings) -> str | None:
    """One line for a ``TMAPI_*`` setting this crawler does not have (a
    typo would otherwise be ignored), with the closest one it has."""
    for name in sorted(str(key) for key in settings):
        if name.startswith("TMAPI_") and name not in DEFAULTS:
            close = difflib.get_close_matches(name, DEFAULTS, n=1, cutoff=0.75)
            hint = f": did you mean {close[0]}?" if close else " (docs/settings.md lists them)"
            return f"unknown setting {shown(name)}{hint}"
    return None


#: The settings that may hold a password or a token, read from the
#: environment when the settings do not give them (``-s`` wins): they stay
#: out of ``ps`` and of scrapyd's job list.  The token is read from
#: ``TMAPI_TOKEN`` the same way, by :func:`config_from_settings`.
FROM_ENVIRONMENT = ("REDIS_URL", "TMAPI_STORE", "TMAPI_ALERT_WEBHOOK", "TMAPI_NOTIFY", "FILES_STORE")


def from_environment(settings: BaseSettings) -> None:
    """Each of :data:`FROM_ENVIRONMENT` the settings lack, from the
    environment: the add-on calls it for a crawl, the commands before they
    check or read them (``crawl``, ``catalog``, ``cluster``), so that a
    project of a user's own reads them as this one does."""
    for name in FROM_ENVIRONMENT:
        value = os.environ.get(name)
        if value and not settings.get(name):
            settings.set(name, value, "addon")


def config_from_settings(settings: BaseSettings) -> TmapiConfig:
    """The validated ``TMAPI_*`` settings (the token from the environment
    when the settings do not give it); raises :class:`ConfigError`, for an
    unknown ``TMAPI_*`` setting too."""
    unknown = unknown_settings(settings)
    if unknown:
        raise ConfigError(unknown)
    values = {name: settings.get(name) for name in DEFAULTS if settings.get(name) is not None}
    if not values.get("TMAPI_TOKEN"):
        values["TMAPI_TOKEN"] = os.environ.get("TMAPI_TOKEN") or None
    try:
        return TmapiConfig.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None


def require_token(config: TmapiConfig) -> str:
    if config.token is None:
        raise ConfigError(
            "no API token: set the TMAPI_TOKEN environment variable (or -s TMAPI_TOKEN=...); "
            "get one in the TMAPI console, or try the sandbox: python -m tmapi_crawler.sandbox"
        )
    return config.token.get_secret_value()


# -- FILES_STORE ----------------------------------------------------------------------------

_WRITABLE: set[str] = set()


def _scheme(uri: str) -> str:
    return "file" if Path(uri).is_absolute() else urlsplit(uri).scheme


def local_directory(uri: str) -> Path | None:
    """The directory of a local ``FILES_STORE`` (``None`` for S3, GCS, FTP)."""
    return Path(uri.removeprefix("file://")) if _scheme(uri) in ("", "file") else None


def check_files_store(settings: BaseSettings) -> None:
    """Refuse a ``FILES_STORE`` that Scrapy cannot store in, a local
    directory that cannot be written, or ``IMAGES_THUMBS`` that is not
    ``{"name": [width, height]}``, before any call; raises
    :class:`ConfigError`."""
    try:
        thumbs = settings.getdict("IMAGES_THUMBS")
    except ValueError:
        thumbs = None
    sizes = thumbs.values() if isinstance(thumbs, dict) else [None]
    if not all(isinstance(size, (list, tuple)) and len(size) == 2 for size in sizes):
        shown_thumbs = settings.get("IMAGES_THUMBS")
        raise ConfigError(
            f"IMAGES_THUMBS={shown_thumbs!r} is not thumbnail sizes: give JSON such as "
            '\'{"small": [120, 120], "big": [480, 480]}\''
        )
    uri = str(settings.get("FILES_STORE"))
    shown = hide_password(uri)  # ftp://user:password@host/...
    scheme = _scheme(uri)
    if scheme not in FilesPipeline.STORE_SCHEMES:
        raise ConfigError(
            f"FILES_STORE={shown!r} is not a store Scrapy has: use a directory, s3://bucket/prefix, "
            "gs://bucket/prefix or ftp://user:pass@host/path"
        )
    directory = local_directory(uri)
    if directory is None or uri in _WRITABLE:
        return
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        raise ConfigError(
            f"FILES_STORE={shown!r} cannot be written ({exc.strerror or exc}): give a directory this user can write to"
        ) from None
    _WRITABLE.add(uri)  # checked once a process: a worker checks every seed with media
