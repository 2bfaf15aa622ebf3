"""A load generator in its own process: N keep-alive HTTP/1.1 connections on loopback, bounded.

``python -m bench.loadgen client --port P --path /x --body-file f --connections 32 --duration 5``
prints one JSON line: requests, errors, seconds, rps, p50_ms, p99_ms, cpu_seconds (the client's own
CPU time, to show whether the client is the bottleneck). ``python -m bench.loadgen raw-server
--port P`` serves a constant response with almost no work per request: the client's ceiling is
measured against it.

Only loopback addresses are accepted; every run stops by itself after ``--duration`` seconds or
``--max-requests`` responses.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
from pathlib import Path

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _frame(buf: bytearray) -> tuple[int, bytes] | None:
    """Length of the first complete message in ``buf`` (head + Content-Length body) and its head."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end]).lower()
    length = 0
    i = head.find(b"content-length:")
    if i >= 0:
        j = head.find(b"\r\n", i)
        length = int(head[i + 15 : j if j > 0 else None])
    total = end + 4 + length
    return (total, head) if len(buf) >= total else None


def _loop_policy() -> None:
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass


class _Conn(asyncio.Protocol):
    """One keep-alive connection: send a request, read one response (Content-Length framed),
    repeat."""

    def __init__(self, gen: _Gen) -> None:
        self.gen = gen
        self.buf = bytearray()
        self.t0 = 0.0
        self.done = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._send()

    def _send(self) -> None:
        if not self.gen.more():
            self.transport.close()
            return
        self.t0 = time.perf_counter()
        self.transport.write(self.gen.request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (frame := _frame(self.buf)) is not None:
            total, head = frame
            del self.buf[:total]
            self.gen.record(time.perf_counter() - self.t0, head[9:12] == b"200")
            self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


class _Gen:
    def __init__(self, request: bytes, deadline: float, max_requests: int) -> None:
        self.request = request
        self.deadline = deadline
        self.max_requests = max_requests
        self.sent = 0
        self.latencies: list[float] = []
        self.errors = 0

    def more(self) -> bool:
        if self.sent >= self.max_requests or time.perf_counter() >= self.deadline:
            return False
        self.sent += 1
        return True

    def record(self, seconds: float, ok: bool) -> None:
        if ok:
            self.latencies.append(seconds)
        else:
            self.errors += 1


async def _client(args: argparse.Namespace) -> dict:
    body = Path(args.body_file).read_bytes() if args.body_file else b""
    method = "POST" if body or args.method == "POST" else "GET"
    request = (
        f"{method} {args.path} HTTP/1.1\r\nHost: {args.host}:{args.port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    gen = _Gen(request, start + args.duration, args.max_requests)
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    conns = []
    for _ in range(args.connections):
        _, proto = await loop.create_connection(lambda: _Conn(gen), args.host, args.port)
        conns.append(proto)
    await asyncio.wait_for(asyncio.gather(*(c.done for c in conns)), timeout=args.duration + 30)
    seconds = time.perf_counter() - start
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    lat = sorted(gen.latencies)
    n = len(lat)

    def pct(q: float) -> float:
        return lat[min(n - 1, int(q * n))] * 1e3 if n else float("nan")

    return {
        "requests": n,
        "errors": gen.errors,
        "seconds": seconds,
        "rps": n / seconds if seconds > 0 else 0.0,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "cpu_seconds": (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime),
    }


class _RawServer(asyncio.Protocol):
    RESPONSE = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 17\r\n\r\n"
        b'{"predictions":1}'
    )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buf = bytearray()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (frame := _frame(self.buf)) is not None:
            del self.buf[: frame[0]]
            self.transport.write(self.RESPONSE)


async def _raw_server(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_RawServer, args.host, args.port)
    print("ready", flush=True)
    # Bounded: the server stops by itself even if nobody stops it.
    await asyncio.sleep(args.duration)
    server.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.loadgen")
    p.add_argument("mode", choices=("client", "raw-server"))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/")
    p.add_argument("--method", default="GET")
    p.add_argument("--body-file", default=None)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--max-requests", type=int, default=2_000_000)
    args = p.parse_args(argv)
    if args.host not in LOOPBACK:
        raise SystemExit("loadgen only targets loopback addresses")
    _loop_policy()
    if args.mode == "client":
        print(json.dumps(asyncio.run(_client(args))), flush=True)
    else:
        asyncio.run(_raw_server(args))


if __name__ == "__main__":
    main()
