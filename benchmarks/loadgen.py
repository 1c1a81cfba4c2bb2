"""A small closed-loop HTTP/1.1 load generator, run as its own process so it does not share the server's core.

`python -m benchmarks.loadgen URL SECONDS CONNECTIONS [METHOD] [BODY_FILE]` prints one JSON line:
requests, errors (non-2xx), seconds, requests_per_s, p50_ms, p99_ms. Each connection keeps one request in
flight over keep-alive.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit


async def connection(host: str, port: int, request: bytes, until: float, latencies: list[float],
                     errors: list[int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < until:
            started = time.perf_counter()
            writer.write(request)
            status = int((await reader.readline()).split()[1])
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            if not 200 <= status < 300:
                errors.append(status)
    finally:
        writer.close()


async def main(url: str, seconds: float, connections: int, method: str = "GET", body: bytes = b"") -> dict:
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    request = (f"{method} {target} HTTP/1.1\r\nHost: {parts.hostname}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    latencies: list[float] = []
    errors: list[int] = []
    started = time.perf_counter()
    until = started + seconds
    await asyncio.gather(*(connection(parts.hostname, parts.port, request, until, latencies, errors)
                           for _ in range(connections)))
    elapsed = time.perf_counter() - started
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0] * 99
    return {"requests": len(latencies), "errors": len(errors), "seconds": round(elapsed, 2),
            "requests_per_s": round(len(latencies) / elapsed, 1),
            "p50_ms": round(quantiles[49] * 1000, 2), "p99_ms": round(quantiles[98] * 1000, 2)}


if __name__ == "__main__":
    url, seconds, connections = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    method = sys.argv[4] if len(sys.argv) > 4 else "GET"
    body = Path(sys.argv[5]).read_bytes() if len(sys.argv) > 5 else b""
    print(json.dumps(asyncio.run(main(url, seconds, connections, method, body))))
