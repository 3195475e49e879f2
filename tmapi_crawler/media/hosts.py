"""Where media may be downloaded from (docs/media.md, "Where media comes
from"): never from inside the user's network.

A product's image URLs are written by its seller: a description image at
``http://169.254.169.254/...`` (a cloud machine's credentials) or
``http://10.0.0.5/admin`` would be fetched inside the user's network and
published with the shop's images.  So every media download, and each
redirect it takes:

* goes only to a host of ``TMAPI_MEDIA_HOSTS`` (:class:`MediaHosts`; by
  default the hosts 1688's own answers use), checked by
  :class:`~tmapi_crawler.media.downloads.MediaMiddleware` before the download;
* goes only to public addresses: an address in a URL is refused when it is
  loopback, private, link-local, multicast, reserved or unspecified (IPv4
  and IPv6, mapped forms included), and a name is resolved where the
  connection is made (:class:`PublicOnlyResolver`, around the reactor's
  resolver, Scrapy's ``TWISTED_DNS_RESOLVER``), which gives the connection only the public addresses
  it resolves to: a name that resolves inside the network (or that changes
  its answer between a check and the connection, DNS rebinding) connects
  nowhere.

A host named with its port (``127.0.0.1:8650``: the sandbox, a test) is the
one exception: the user said so.  API calls are not media: they go to
``TMAPI_BASE_URL``, wherever the user says.
"""

from __future__ import annotations

import contextlib
import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from twisted.internet.interfaces import IHostnameResolver, IResolutionReceiver
from zope.interface import implementer

if TYPE_CHECKING:
    from collections.abc import Sequence

    from twisted.internet.address import IPv4Address, IPv6Address

#: The hosts 1688's answers name for images and videos (the API docs'
#: examples: cbu01.alicdn.com, cloud.video.taobao.com, itemcdn.tmall.com).
DEFAULT_MEDIA_HOSTS = ("*.alicdn.com", "*.1688.com", "*.taobao.com", "*.taobaocdn.com", "*.tbcdn.cn", "*.tmall.com")
DEFAULT_PORTS = {"http": 80, "https": 443}


def is_public(address: str) -> bool:
    """Whether *address* (an IP address) is a public one: not loopback,
    private, link-local, multicast, reserved or unspecified, nor an IPv6
    form of one (IPv4-mapped, 6to4, NAT64's well-known prefix)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        for inner in (ip.ipv4_mapped, ip.sixtofour):
            if inner is not None:
                return is_public(str(inner))
        if ip in ipaddress.ip_network("64:ff9b::/96"):
            return is_public(str(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)))
    return ip.is_global and not (
        ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_reserved or ip.is_unspecified
    )


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


#: A pattern of ``TMAPI_MEDIA_HOSTS`` split: its host (``*``, ``*.domain``, a
#: name or an address, IPv6 without brackets) and its port (``None``: any).
HostPattern = tuple[str, int | None]


def _split(pattern: str) -> HostPattern:
    """*pattern* as ``(host, port)``; raises ValueError for a port that is
    not a number."""
    if pattern.startswith("["):  # [v6] or [v6]:port
        host, _, rest = pattern[1:].partition("]")
        port = rest.removeprefix(":") if rest.startswith(":") else rest
    elif pattern.count(":") == 1:
        host, _, port = pattern.partition(":")
    else:  # a name, a wildcard, or a bare IPv6 address
        host, port = pattern, ""
    if port and not port.isdigit():
        raise ValueError(port)
    return host, int(port) if port else None


@dataclass(frozen=True, slots=True)
class MediaHosts:
    """``TMAPI_MEDIA_HOSTS``: ``host``, ``*.domain`` (the domain and every
    name under it), ``host:port`` (that host on that port only; an address
    inside the network is allowed only so), or ``*`` (any public host)."""

    patterns: tuple[HostPattern, ...] = tuple(_split(p) for p in DEFAULT_MEDIA_HOSTS)

    @classmethod
    def parse(cls, value: str | Sequence[str] | None) -> MediaHosts:
        """From the setting (comma or space separated); raises ValueError
        for a pattern that is not one."""
        if value is None:
            return cls()
        parts = value.replace(",", " ").split() if isinstance(value, str) else [str(v) for v in value]
        given = [part.strip().lower() for part in parts if part.strip()]
        if not given:
            raise ValueError("names no host: give host patterns such as *.alicdn.com, or * for any public host")
        patterns = []
        for pattern in given:
            try:
                host, port = _split(pattern)
            except ValueError:
                raise ValueError(f"{pattern!r} is not host, *.domain, host:port or *") from None
            name = host.removeprefix("*.")
            if pattern != "*" and (not name or "*" in name or "/" in name):
                raise ValueError(f"{pattern!r} is not host, *.domain, host:port or *")
            patterns.append((host, port))
        return cls(tuple(patterns))

    def naming(self, url: str) -> MediaHosts:
        """These patterns and the host and port of *url* (``TMAPI_BASE_URL``:
        the sandbox serves its media where it answers)."""
        target = media_target(url)
        if target is None:
            return self
        return MediaHosts((*self.patterns, target))

    def named(self) -> set[tuple[str, int]]:
        """``(host, port)`` of the patterns that name a host with its port."""
        return {(host, port) for host, port in self.patterns if port is not None and not host.startswith("*")}

    def named_with_port(self, host: str, port: int) -> bool:
        """Whether ``host:port`` is named as it is (the user's own server;
        :meth:`named`, without making its set for each request)."""
        host = host.lower().strip("[]")
        return not host.startswith("*") and (host, port) in self.patterns

    def refusal(self, url: str) -> str | None:
        """Why a media download of *url* is refused (``None``: it may go,
        to the public addresses its host resolves to)."""
        try:
            parts = urlsplit(url)
            port = parts.port or DEFAULT_PORTS.get(parts.scheme, 0)
        except ValueError:
            return "not a URL"
        host = (parts.hostname or "").lower()
        if parts.scheme not in DEFAULT_PORTS or not host:
            return f"not an http(s) URL ({parts.scheme or 'no scheme'})"
        if self.named_with_port(host, port):
            return None
        if _is_address(host) and not is_public(host):
            return f"{host} is an address inside the network (named in no TMAPI_MEDIA_HOSTS host:port)"
        if not any(self._matches(pattern, host, port) for pattern in self.patterns):
            return f"{host} is not in TMAPI_MEDIA_HOSTS"
        return None

    @staticmethod
    def _matches(pattern: HostPattern, host: str, port: int) -> bool:
        name, wanted = pattern
        if name == "*":
            return True
        if wanted is not None and wanted != port:
            return False
        if name.startswith("*."):
            domain = name[2:]
            return host == domain or host.endswith("." + domain)
        return host == name


@implementer(IResolutionReceiver)
class _PublicOnly:
    """A resolution receiver that passes on only public addresses, and
    remembers the others for the media middleware's message."""

    def __init__(self, receiver: Any, target: tuple[str, int]):
        self.receiver = receiver
        self.target = target

    def resolutionBegan(self, resolution: Any) -> None:
        self.receiver.resolutionBegan(resolution)

    def addressResolved(self, address: IPv4Address | IPv6Address) -> None:
        if is_public(address.host):
            self.receiver.addressResolved(address)
        else:
            REFUSED.setdefault(self.target, []).append(address.host)

    def resolutionComplete(self) -> None:
        self.receiver.resolutionComplete()


#: ``(host, port)`` of the media downloads going out now (how many): their
#: connections get public addresses only.  Kept by MediaMiddleware.
MEDIA_TARGETS: dict[tuple[str, int], int] = {}
#: Media hosts named with their port in TMAPI_MEDIA_HOSTS: resolved as they are.
NAMED_TARGETS: set[tuple[str, int]] = set()
#: The addresses inside the network that a media target resolved to (and
#: that its connection did not get), for the failure's message.
REFUSED: dict[tuple[str, int], list[str]] = {}


def media_target(url: str) -> tuple[str, int] | None:
    with contextlib.suppress(ValueError):
        parts = urlsplit(url)
        if parts.hostname:
            return parts.hostname.lower(), parts.port or DEFAULT_PORTS.get(parts.scheme, 0)
    return None


@implementer(IHostnameResolver)
class PublicOnlyResolver:
    """The reactor's name resolver, wrapped (:func:`install_public_only`):
    a media download's connection gets only the public addresses its host
    resolves to (see the module's docstring); any other connection (API
    calls, a user's own requests) resolves as it did.  Whatever resolver
    was installed (Scrapy's ``TWISTED_DNS_RESOLVER``, with its cache) still
    does the resolving."""

    def __init__(self, inner: Any):
        self.inner = inner

    def resolveHostName(
        self,
        resolutionReceiver: Any,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Sequence[type[Any]] | None = None,
        transportSemantics: str = "TCP",
    ) -> Any:
        target = (hostName.lower(), portNumber)
        if target in MEDIA_TARGETS and target not in NAMED_TARGETS:
            REFUSED.pop(target, None)
            resolutionReceiver = _PublicOnly(resolutionReceiver, target)
        return self.inner.resolveHostName(resolutionReceiver, hostName, portNumber, addressTypes, transportSemantics)


def install_public_only(reactor: Any) -> None:
    """Wrap the reactor's name resolver in :class:`PublicOnlyResolver`
    (once: the wrapper stays for the life of the process)."""
    if not isinstance(reactor.nameResolver, PublicOnlyResolver):
        reactor.installNameResolver(PublicOnlyResolver(reactor.nameResolver))
