"""``python -m bench.events``: many subscribers of one job's event stream on a real server.

A ``regula serve`` runs on a temp SQLite database. This process plays the worker: it inserts a
running job and commits its epoch rows through ``app.jobs.state.record_epochs`` (the worker's own
write path) at a steady pace, noting when each commit returned. Subscribers (asyncio + httpx, in
this process, bare asyncio sockets rather than httpx so the client is cheap) note when each epoch
event arrives. Reported:

- lag from an epoch row's commit to its arrival at a client, over every (subscriber, epoch):
  median and p99 (goals: median < 200 ms, p99 < 1 s); the poller's interval is 0.25 s, so the
  median is bounded below by about half of it;
- the API process's CPU per subscriber: (CPU with N subscribers - CPU with 1) / (N - 1), per
  second of streaming, as a fraction of one core;
- the job's poller figures (polls, statements) from GET /jobs/{id}/events/stats: the same for
  1 and N subscribers per second of streaming.

Options: ``--subscribers 200 --epochs 80 --epoch-seconds 0.1`` (defaults), ``--quick``.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import psutil

from bench.server import regula_serve

MEDIAN_GOAL_S = 0.200
P99_GOAL_S = 1.0


@dataclass
class Run:
    subscribers: int
    lags: list[float]
    cpu_seconds: float
    wall_seconds: float
    stats: dict[str, Any]
    complete: bool


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _insert_running_job(database_url: str, epochs: int) -> str:
    import app.tables  # noqa: F401  (every table, for the foreign keys)
    from app.core.db import get_sessionmaker, utcnow
    from app.jobs.orm import Job

    now = utcnow()
    with get_sessionmaker(database_url)() as session:
        job = Job(
            spec={"epochs": epochs},
            status="running",
            attempts=1,
            started_at=now,
            # Far in the future: the reaper must not take the bench's job for an orphan.
            heartbeat_at=now + timedelta(hours=1),
            worker="bench",
        )
        session.add(job)
        session.commit()
        return job.id


def _writer(
    database_url: str, job_id: str, epochs: int, pace: float, commits: dict[int, float]
) -> None:
    """Commit one epoch row per ``pace`` seconds, as a worker does; then finish the job."""
    from sqlalchemy import update

    from app.core.db import get_sessionmaker, utcnow
    from app.jobs import state
    from app.jobs.orm import Job

    sessions = get_sessionmaker(database_url)
    next_at = time.monotonic()
    for epoch in range(1, epochs + 1):
        next_at += pace
        time.sleep(max(0.0, next_at - time.monotonic()))
        row = {"epoch": epoch, "loss": 1.0 / epoch, "data_loss": 1.0 / epoch, "seconds": pace}
        state.record_epochs(sessions, job_id, 1, [row], epochs=epochs)
        commits[epoch] = time.time()
    with sessions() as session:  # the bench's own job: no model to store, just end it
        session.execute(
            update(Job).where(Job.id == job_id).values(status="succeeded", finished_at=utcnow())
        )
        session.commit()


EPOCH_EVENT = re.compile(rb"id: (\d+)\r\nevent: epoch")


async def _one_stream(host: str, port: int, job_id: str, seen: dict[int, float]) -> bool:
    """A bare asyncio SSE reader: the client must cost little next to the server it measures.

    uvicorn sends each chunk the stream yields as one HTTP chunk, so an event never straddles
    two reads' chunk-size lines; a read may end mid-event, so only complete events are scanned.
    """
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET /jobs/{job_id}/events HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    await writer.drain()
    buf = b""
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                return False
            now = time.time()
            buf += data
            cut = buf.rfind(b"\r\n\r\n")
            if cut < 0:
                continue
            done, buf = buf[: cut + 4], buf[cut + 4 :]
            for match in EPOCH_EVENT.finditer(done):
                seen[int(match.group(1))] = now
            if b"event: end" in done:
                return True
    finally:
        writer.close()


async def _subscribe(url: str, job_id: str, n: int, arrivals: list[dict[int, float]]) -> bool:
    parts = httpx.URL(url)
    host, port = str(parts.host), int(parts.port or 80)
    done = await asyncio.gather(*(_one_stream(host, port, job_id, seen) for seen in arrivals))
    return all(done)


def _run(server: Any, n: int, epochs: int, pace: float) -> Run:
    database_url = server.env["REGULA_DATABASE_URL"]
    job_id = _insert_running_job(database_url, epochs)
    commits: dict[int, float] = {}
    arrivals: list[dict[int, float]] = [{} for _ in range(n)]
    api = psutil.Process(server.pid)
    writer = threading.Thread(
        target=_writer, args=(database_url, job_id, epochs, pace, commits), daemon=True
    )

    async def main() -> bool:
        task = asyncio.create_task(_subscribe(server.url, job_id, n, arrivals))
        await asyncio.sleep(1.0 + n / 200)  # every subscriber connected before epoch 1
        writer.start()
        return await task

    cpu0, wall0 = sum(api.cpu_times()[:2]), time.monotonic()
    complete = asyncio.run(main())
    cpu1, wall1 = sum(api.cpu_times()[:2]), time.monotonic()
    writer.join()
    lags = [seen[e] - commits[e] for seen in arrivals for e in seen if e in commits]
    complete = complete and all(len(seen) == epochs for seen in arrivals)
    stats = httpx.get(f"{server.url}/jobs/{job_id}/events/stats", timeout=30).json()
    return Run(n, lags, cpu1 - cpu0, wall1 - wall0, stats, complete)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.events", description=__doc__)
    parser.add_argument("--subscribers", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--epoch-seconds", type=float, default=0.1)
    parser.add_argument("--quick", action="store_true", help="20 subscribers, 20 epochs")
    args = parser.parse_args(argv)
    if args.quick:
        args.subscribers, args.epochs = 20, 20
    with regula_serve(workers=1) as server:
        one = _run(server, 1, args.epochs, args.epoch_seconds)
        many = _run(server, args.subscribers, args.epochs, args.epoch_seconds)
    median, p99 = statistics.median(many.lags), _percentile(many.lags, 0.99)
    extra_cpu = (many.cpu_seconds / many.wall_seconds) - (one.cpu_seconds / one.wall_seconds)
    per_subscriber = extra_cpu / max(many.subscribers - 1, 1)
    print(
        f"[events] {many.subscribers} subscribers x {args.epochs} epochs, one epoch every "
        f"{args.epoch_seconds:g} s; every event delivered: {many.complete and one.complete}"
    )
    print(
        f"[events] commit -> client lag: median {median * 1000:.0f} ms "
        f"(goal < {MEDIAN_GOAL_S * 1000:.0f} ms) {'PASS' if median < MEDIAN_GOAL_S else 'FAIL'}; "
        f"p99 {p99 * 1000:.0f} ms (goal < {P99_GOAL_S * 1000:.0f} ms) "
        f"{'PASS' if p99 < P99_GOAL_S else 'FAIL'}; max {max(many.lags) * 1000:.0f} ms"
    )
    print(
        f"[events] 1 subscriber: lag median {statistics.median(one.lags) * 1000:.0f} ms; "
        f"API CPU {one.cpu_seconds / one.wall_seconds:.1%} of a core"
    )
    print(
        f"[events] API CPU with {many.subscribers}: {many.cpu_seconds / many.wall_seconds:.1%} of "
        f"a core; per extra subscriber {per_subscriber * 100:.3f}% of a core "
        f"({per_subscriber * 1000 / (1 / args.epoch_seconds):.3f} ms CPU per epoch event)"
    )
    for run in (one, many):
        rate = run.stats["polls"] / run.wall_seconds
        print(
            f"[events] poller with {run.subscribers} subscribers: {run.stats['polls']} polls, "
            f"{run.stats['statements']} statements over {run.wall_seconds:.1f} s "
            f"({rate:.2f} polls/s)"
        )
    ok = many.complete and one.complete and median < MEDIAN_GOAL_S and p99 < P99_GOAL_S
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
