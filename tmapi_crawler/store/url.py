"""Where the catalog store is: ``TMAPI_STORE`` parsed, with no database
driver imported (the settings check uses it)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from tmapi_crawler.redaction import hide_password


class StoreError(Exception):
    """The store cannot be used; the message is one line that says what
    happened and what to do."""

    #: Whether the same command stores what was not stored once the cause
    #: is fixed (a disk freed, a server back); a damaged store is not.
    resumable = True


class StoreDamaged(StoreError):
    """The store's file or pages are damaged: reading it again fails the same
    way; the message says how to recover it."""

    resumable = False


@dataclass(frozen=True, slots=True)
class StoreURL:
    """``TMAPI_STORE`` parsed: ``kind`` is ``sqlite`` or ``postgresql``,
    ``target`` the file or the connection URL, ``display`` the URL without
    its password (for messages and logs)."""

    kind: str
    target: str
    display: str


def parse_store_url(text: str) -> StoreURL:
    """``sqlite:///path``, a bare path, or ``postgresql://user:pass@host:port/db``."""
    text = text.strip()
    if not text:
        raise StoreError("TMAPI_STORE is empty: give a file (catalog.sqlite) or postgresql://user:pass@host/db")
    scheme = text.partition("://")[0].lower() if "://" in text else ""
    if scheme in ("postgresql", "postgres"):
        try:
            parts = urlsplit(text)
            port = parts.port
        except ValueError as exc:
            raise StoreError(f"TMAPI_STORE={hide_password(text)!r} is not a PostgreSQL URL ({exc})") from None
        if not parts.hostname or not parts.path.strip("/"):
            raise StoreError(
                f"TMAPI_STORE={hide_password(text)!r} needs a host and a database: postgresql://user:pass@host:5432/db"
            )
        shown = f"postgresql://{parts.username + '@' if parts.username else ''}{parts.hostname}"
        shown += f"{':' + str(port) if port else ''}{parts.path}"
        return StoreURL("postgresql", text, shown)
    if scheme == "sqlite":
        path = unquote(text[len("sqlite://") :])
        if not path.startswith("/") or path == "/":
            raise StoreError(f"TMAPI_STORE={text!r}: write sqlite:///relative.sqlite or sqlite:////absolute/path")
        path = path[1:]
        return StoreURL("sqlite", path, path)
    if scheme:
        raise StoreError(
            f"TMAPI_STORE={hide_password(text)!r}: {scheme}:// is not a store; use a file (catalog.sqlite), "
            "sqlite:///catalog.sqlite or postgresql://user:pass@host:5432/db"
        )
    return StoreURL("sqlite", text, text)
