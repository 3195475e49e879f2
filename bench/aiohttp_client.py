"""A hand-written aiohttp client told the account's limit: the listing
pages, then one ``item_detail`` and one ``item_desc`` per product, at most
*cap* calls in flight (a semaphore), a 503 sent again at once.  The
yardstick of ``python -m bench --only account-limit``: what a user would
write in an afternoon.

    python -m bench.aiohttp_client BASE TOKEN MEMBER_ID CAP OUT.jsonl
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
from typing import Any

import aiohttp


async def crawl(base: str, token: str, member_id: str, cap: int, out: str) -> int:
    places = asyncio.Semaphore(cap)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=cap)) as session:

        async def call(path: str, **params: Any) -> dict[str, Any]:
            while True:
                async with places, session.get(f"{base}{path}", params={"apiToken": token, **params}) as answer:
                    body = await answer.read()
                if answer.status != 503:
                    return dict(json.loads(body)["data"])

        async def product(item_id: int) -> dict[str, Any]:
            detail = await call("/1688/item_detail", item_id=item_id, language="zh")
            return {**detail, **await call("/1688/item_desc", item_id=item_id)}

        async def page(number: int) -> list[dict[str, Any]]:
            data = await call("/1688/shop/items", member_id=member_id, page=number, page_size=20)
            return list(await asyncio.gather(*(product(e["item_id"]) for e in data["items"])))

        first = await call("/1688/shop/items", member_id=member_id, page=1, page_size=20)
        pages = math.ceil(int(first["total_count"]) / 20)
        done = await asyncio.gather(
            asyncio.gather(*(product(e["item_id"]) for e in first["items"])),
            *(page(n) for n in range(2, pages + 1)),
        )
    with open(out, "w", encoding="utf-8") as f:
        for records in done:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return sum(len(records) for records in done)


if __name__ == "__main__":
    base, token, member_id, cap, out = sys.argv[1:6]
    asyncio.run(crawl(base, token, member_id, int(cap), out))
