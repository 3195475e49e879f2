"""Every ``TMAPI_*`` setting: its default, its check, and its one-line error.

Components read their settings through :func:`config_from_settings` so that a
bad value is refused in one place, before any call, with a message that names
the setting, the value and what is allowed.
"""

from __future__ import annotations

import ipaddress
import os
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tmapi_crawler.api import LANGUAGES, PRODUCTION_URL

if TYPE_CHECKING:
    from scrapy.settings import BaseSettings

#: Defaults of every setting this project reads (the README lists them too).
DEFAULTS: dict[str, Any] = {
    "TMAPI_TOKEN": None,  # falls back to the TMAPI_TOKEN environment variable
    "TMAPI_BASE_URL": PRODUCTION_URL,
    "TMAPI_ALLOW_HTTP": False,
    "TMAPI_LANGUAGE": "zh",
    "TMAPI_MAX_CALLS": 0,
    "TMAPI_CONCURRENCY": 0,
    "TMAPI_RETRY_TIMES": 3,
    "TMAPI_RETRY_BACKOFF": 1.0,
    "TMAPI_RETRY_BACKOFF_MAX": 30.0,
    "TMAPI_QUOTA_WAIT": 600.0,
    "TMAPI_QUOTA_PROBE": 5.0,
    "TMAPI_QUOTA_PROBE_MAX": 60.0,
    "TMAPI_FAILURES_FILE": "failures.jsonl",
    "TMAPI_PROGRESS_INTERVAL": 10.0,
    "TMAPI_IDLE_TIMEOUT": 30.0,
    "TMAPI_LEASE_TIMEOUT": 60.0,
}
REDACTED = "***"


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


class TmapiConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    token: str | None = Field(default=None, repr=False)
    base_url: str
    allow_http: bool
    language: str
    max_calls: int = Field(ge=0)
    concurrency: int = Field(ge=0)
    retry_times: int = Field(ge=0)
    retry_backoff: float = Field(ge=0)
    retry_backoff_max: float = Field(ge=0)
    quota_wait: float = Field(ge=0)
    quota_probe: float = Field(gt=0)
    quota_probe_max: float = Field(gt=0)
    failures_file: str = Field(min_length=1)
    progress_interval: float = Field(ge=0)
    idle_timeout: float = Field(ge=0)
    lease_timeout: float = Field(gt=0)

    @field_validator("language")
    @classmethod
    def _language(cls, value: str) -> str:
        if value not in LANGUAGES:
            raise ValueError(f"must be one of {', '.join(LANGUAGES)}")
        return value

    @field_validator("token")
    @classmethod
    def _token(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or any(c.isspace() for c in value)):
            raise ValueError("must be a non-empty string without spaces")
        return value

    @model_validator(mode="after")
    def _url(self) -> TmapiConfig:
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"TMAPI_BASE_URL={self.base_url!r} is not an http(s) URL; use {PRODUCTION_URL}")
        if parts.query or parts.fragment:
            raise ValueError(f"TMAPI_BASE_URL={self.base_url!r} must not have a query or fragment")
        if parts.scheme == "http" and not self.allow_http and not _is_loopback(parts.hostname):
            raise ValueError(
                f"TMAPI_BASE_URL={self.base_url!r} would send the token in clear text; "
                f"use https:// (or set TMAPI_ALLOW_HTTP=True to accept the risk)"
            )
        return self

    @property
    def api_host(self) -> str:
        return urlsplit(self.base_url).netloc


_FIELDS = {
    "TMAPI_TOKEN": "token",
    "TMAPI_BASE_URL": "base_url",
    "TMAPI_ALLOW_HTTP": "allow_http",
    "TMAPI_LANGUAGE": "language",
    "TMAPI_MAX_CALLS": "max_calls",
    "TMAPI_CONCURRENCY": "concurrency",
    "TMAPI_RETRY_TIMES": "retry_times",
    "TMAPI_RETRY_BACKOFF": "retry_backoff",
    "TMAPI_RETRY_BACKOFF_MAX": "retry_backoff_max",
    "TMAPI_QUOTA_WAIT": "quota_wait",
    "TMAPI_QUOTA_PROBE": "quota_probe",
    "TMAPI_QUOTA_PROBE_MAX": "quota_probe_max",
    "TMAPI_FAILURES_FILE": "failures_file",
    "TMAPI_PROGRESS_INTERVAL": "progress_interval",
    "TMAPI_IDLE_TIMEOUT": "idle_timeout",
    "TMAPI_LEASE_TIMEOUT": "lease_timeout",
}
_SETTING_OF = {field: setting for setting, field in _FIELDS.items()}


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
        parts.append(f"{name}={err['input']!r}: {msg}")
    return "; ".join(parts)


def config_from_settings(settings: BaseSettings, *, token: str | None = None) -> TmapiConfig:
    """The validated ``TMAPI_*`` settings; raises :class:`ConfigError`."""
    values: dict[str, Any] = {}
    for setting, field in _FIELDS.items():
        raw = settings.get(setting, DEFAULTS[setting])
        if raw is None:
            continue
        values[field] = raw
    if token is not None:
        values["token"] = token
    elif values.get("token") in (None, REDACTED):
        values["token"] = os.environ.get("TMAPI_TOKEN") or None
    try:
        return TmapiConfig(**values)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, _SETTING_OF)) from None


def require_token(config: TmapiConfig) -> str:
    if not config.token:
        raise ConfigError(
            "no API token: set the TMAPI_TOKEN environment variable (or -s TMAPI_TOKEN=...); "
            "get one in the TMAPI console, or try the sandbox: python -m tmapi_crawler.sandbox"
        )
    return config.token
