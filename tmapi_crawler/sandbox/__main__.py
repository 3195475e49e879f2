"""``python -m tmapi_crawler.sandbox``: run the sandbox until stopped.

It prints one line, its URL, as soon as it listens (``--port 0`` picks a free
port), so that a parent process can read where it is without sleeping.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tmapi_crawler.sandbox.server import BROKEN_KINDS, ERROR_STYLES, MEDIA_FAULTS, Faults


def _ids(text: str) -> frozenset[int]:
    try:
        return frozenset(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated item ids, got {text!r}") from None


def _broken(text: str) -> dict[str, str]:
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, kind = part.rpartition(":")
        if not key or kind not in BROKEN_KINDS:
            raise argparse.ArgumentTypeError(
                f"expected KEY:KIND with KIND one of {', '.join(BROKEN_KINDS)}, got {part!r}"
            )
        out[key] = kind
    return out


def _media_faults(text: str) -> dict[int, str]:
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, kind = part.rpartition(":")
        if not key.isdigit() or kind not in MEDIA_FAULTS:
            raise argparse.ArgumentTypeError(
                f"expected ITEM_ID:KIND with KIND one of {', '.join(MEDIA_FAULTS)}, got {part!r}"
            )
        out[int(key)] = kind
    return out


def _rate(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a probability from 0 to 1, got {text}")
    return value


def _non_negative(kind: type[int] | type[float]) -> argparse._ActionType:
    def parse(text: str) -> int | float:
        value = kind(text)
        if value < 0:
            raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
        return value

    return parse


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tmapi_crawler.sandbox",
        description="A local imitation of TMAPI's 1688 API, for tests, demos and development.",
    )
    nn_int, nn_float = _non_negative(int), _non_negative(float)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=nn_int, default=8650, help="port; 0 picks a free one (default: 8650)")
    p.add_argument("--token", default="demo", help="the apiToken it accepts (default: demo)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated catalog and of the faults")
    g = p.add_argument_group("catalog")
    g.add_argument("--shops", type=nn_int, default=3, help="generated shops b2b-sandbox0000... (default: 3)")
    g.add_argument("--shop-size", type=nn_int, default=60, help="products per generated shop (default: 60)")
    g.add_argument("--categories", type=nn_int, default=3, help="generated categories 1032001... (default: 3)")
    g.add_argument("--category-size", type=nn_int, default=60, help="products per category (default: 60)")
    g.add_argument("--category-page-size", type=nn_int, default=20, help="entries per category page (default: 20)")
    g.add_argument(
        "--repeat-every", type=nn_int, default=0, help="list every Nth category entry twice (default: 0, never)"
    )
    f = p.add_argument_group("faults")
    f.add_argument("--removed", type=_ids, default=frozenset(), help="item ids that answer 417 forever")
    f.add_argument("--removed-desc", type=_ids, default=frozenset(), help="item ids whose item_desc answers 417")
    f.add_argument(
        "--invalid", type=_ids, default=frozenset(), help="item ids whose item_detail has an empty title (invalid)"
    )
    f.add_argument(
        "--broken",
        type=_broken,
        default={},
        help="answers that are not what the docs say: KEY:KIND,... where KEY is an item id (item_detail), "
        "desc:<id>, shop:<member_id> or category:<cat_id> (with :<page> for one page), "
        "and KIND one of " + ", ".join(BROKEN_KINDS),
    )
    f.add_argument("--fault-rate", type=_rate, default=0.0, help="probability of a 417, 499 or 500 per call")
    f.add_argument("--concurrency", type=nn_int, default=0, help="calls in flight before 503 (default: 0, no limit)")
    f.add_argument("--latency-ms", type=nn_float, default=0.0, help="time every call takes")
    f.add_argument("--jitter-ms", type=nn_float, default=0.0, help="random +/- added to the latency")
    f.add_argument("--quota", type=nn_int, default=0, help="billed calls before 439 (default: 0, unlimited)")
    f.add_argument("--quota-refill-s", type=nn_float, default=0.0, help="seconds after which a spent quota refills")
    f.add_argument(
        "--error-style",
        choices=ERROR_STYLES,
        default="http",
        help="errors as the HTTP status (http), as HTTP 200 with the code in the body (body), or either (mixed)",
    )
    m = p.add_argument_group("media (the generated products' images and videos, served at /media/)")
    m.add_argument(
        "--media-fault",
        type=_media_faults,
        default={},
        help="ITEM_ID:KIND,... where KIND is one of "
        + "; ".join(f"{kind} ({what})" for kind, what in MEDIA_FAULTS.items()),
    )
    m.add_argument("--media-latency-ms", type=nn_float, default=0.0, help="time every media file takes")
    g.add_argument(
        "--living",
        action="store_true",
        help="a catalog that lives: orders take stock and move the listing counters, SKUs sell out and are "
        "restocked, prices move, one simulated day per POST /__admin/advance (GET /__admin/truth says what is true)",
    )
    h = p.add_argument_group("hostile sellers (text and media URLs that act where they are carried)")
    h.add_argument(
        "--hostile-every",
        type=nn_int,
        default=0,
        help="every N-th generated product's seller writes formulas, mentions, control characters, scripts and "
        "media URLs inside the network (default: 0, none)",
    )
    h.add_argument(
        "--hostile-media",
        default="127.0.0.2:9",
        help="HOST:PORT the hostile sellers' media URLs point at (default: 127.0.0.2:9)",
    )
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    from twisted.internet import reactor as _reactor

    from tmapi_crawler.sandbox.catalog import Catalog
    from tmapi_crawler.sandbox.server import make_site

    reactor: Any = _reactor
    catalog = Catalog(
        seed=args.seed,
        shops=args.shops,
        shop_size=args.shop_size,
        categories=args.categories,
        category_size=args.category_size,
        category_page_size=max(1, args.category_page_size),
        repeat_every=args.repeat_every,
        hostile_every=args.hostile_every,
        hostile_media=args.hostile_media,
        living=args.living,
    )
    faults = Faults(
        token=args.token,
        removed=args.removed,
        removed_desc=args.removed_desc,
        invalid=args.invalid,
        broken=args.broken,
        fault_rate=args.fault_rate,
        concurrency=args.concurrency,
        latency_ms=args.latency_ms,
        jitter_ms=args.jitter_ms,
        quota=args.quota,
        quota_refill_s=args.quota_refill_s,
        error_style=args.error_style,
        seed=args.seed,
        media_faults=args.media_fault,
        media_latency_ms=args.media_latency_ms,
    )
    try:
        port: Any = reactor.listenTCP(args.port, make_site(catalog, faults), interface=args.host)
    except Exception as exc:  # CannotListenError and friends
        print(f"sandbox: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    host = args.host if ":" not in args.host else f"[{args.host}]"
    url = f"http://{host}:{port.getHost().port}"
    catalog.media_base = url  # before the first answer: generated products' files are here
    print(url, flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
