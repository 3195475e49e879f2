"""How many calls a second the sandbox serves on one core.

    python -m bench.sandbox_load [--seconds 10] [--connections 32]

Starts the sandbox pinned to CPU 0 (latency 0, no limit), drives it from this
process pinned to CPU 1 with keep-alive connections on loopback, and prints
calls per second and calls per CPU-second of the sandbox.  The mix is what a
crawl sends: one listing page for every 20 details and 20 descriptions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path

from tests.harness import SandboxProcess


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def paths(n: int) -> list[str]:
    out = []
    for i in range(n):
        item_id = 700_020_000_000 + i % 60
        if i % 41 == 0:
            out.append(f"/1688/shop/items?apiToken=demo&member_id=b2b-sandbox0000&page={1 + i % 3}")
        elif i % 2:
            out.append(f"/1688/item_detail?apiToken=demo&item_id={item_id}&language=zh")
        else:
            out.append(f"/1688/item_desc?apiToken=demo&item_id={item_id}")
    return out


async def worker(host: str, port: int, deadline: float, todo: list[str], counts: list[int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    i = 0
    while time.monotonic() < deadline:
        path = todo[i % len(todo)]
        i += 1
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        status = await reader.readline()
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await reader.readexactly(length)
        if b" 200 " not in status:
            raise RuntimeError(f"unexpected answer: {status!r}")
        counts[0] += 1
    writer.close()


async def drive(url: str, seconds: float, connections: int) -> int:
    host, port = url.removeprefix("http://").split(":")
    counts = [0]
    todo = paths(2000)
    deadline = time.monotonic() + seconds
    await asyncio.gather(*(worker(host, int(port), deadline, todo[k:] + todo[:k], counts) for k in range(connections)))
    return counts[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args()
    prefix: list[str] = []
    if hasattr(os, "sched_setaffinity") and os.cpu_count() and os.cpu_count() > 1:  # type: ignore[operator]
        prefix = ["taskset", "-c", "0"]
        os.sched_setaffinity(0, {1})
    with SandboxProcess(token="demo", prefix=prefix) as sandbox:
        url, pid = sandbox.url, sandbox.proc.pid
        asyncio.run(drive(url, 1.0, args.connections))  # warm the caches
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        calls = asyncio.run(drive(url, args.seconds, args.connections))
        elapsed, cpu = time.monotonic() - t0, cpu_seconds(pid) - cpu0
    figures = {
        "calls": calls,
        "seconds": round(elapsed, 2),
        "calls_per_second": round(calls / elapsed),
        "sandbox_cpu_seconds": round(cpu, 2),
        "calls_per_cpu_second": round(calls / cpu) if cpu else None,
    }
    print(
        f"sandbox: {figures['calls_per_second']} calls/s on one core "
        f"({figures['calls_per_cpu_second']} calls per CPU-second, {calls} calls in {elapsed:.1f} s)"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
