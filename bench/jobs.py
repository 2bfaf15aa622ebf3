"""Section 5: jobs: latency from ``POST /jobs`` to running and to succeeded; two workers at once.

- Latency: a one-epoch job on a tiny dataset (200 x 5), polled every 5 ms with ``GET /jobs/{id}``
  as a client would; the first observation that is no longer ``queued`` counts as "running" (an
  upper bound when the job finished between two polls). Median over several jobs; goal < 0.5 s to
  running.
- Parallelism: the wall time from submitting to both succeeded for two equal jobs on
  ``regula serve`` with 2 workers, against one such job alone. Goal <= 1.15x. Two cores do not
  always give two cores' worth (shared caches and memory bandwidth, a host that backs the vCPUs
  with hyperthreads of one core), so the same ratio is measured for the floor in the same run:
  the same ``engine.fit`` in two bare processes at once against one alone (no service, no
  database, no Dask); the check compares the two ratios.
"""

from __future__ import annotations

import os
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx

from bench import api
from bench.common import SectionResult, best_of, median
from bench.server import cpu_seconds, process_tree, regula_for

GOAL_RUNNING = 0.5
GOAL_PARALLEL = 1.15

FLOOR_CHILD = """
import sys, time
import numpy as np
from threadpoolctl import threadpool_limits
import engine
rows, epochs = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(1)
X = np.round(rng.standard_normal((rows, 50)), 6)
y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(np.int64)
spec = {"model": {"hidden_layers": [128, 64]}, "loss": "softmax_cross_entropy",
        "regularization": {"l1": 1e-4, "l2": 1e-4},
        "optimizer": {"name": "sgd", "learning_rate": 0.05, "momentum": 0.9},
        "epochs": epochs, "batch_size": 64, "seed": 0}
with threadpool_limits(1):
    sys.stdin.readline()  # start together
    t0 = time.perf_counter()
    engine.fit(spec, X, y)
    print(time.perf_counter() - t0)
"""


def floor_scaling(rows: int, epochs: int, rounds: int) -> tuple[float, float]:
    """(best seconds of one bare fit alone, best seconds until two run at once both finish)."""
    import subprocess
    import sys

    def run(n: int) -> float:
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", FLOOR_CHILD, str(rows), str(epochs)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(n)
        ]
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        return max(float(p.communicate()[0]) for p in procs)

    one, two = [], []
    for _ in range(rounds):
        one.append(run(1))
        two.append(run(2))
    return best_of(one), best_of(two)


def submit_and_watch(client: httpx.Client, spec: dict, poll: float = 0.005) -> tuple[float, float]:
    """(seconds to first non-queued status, seconds to succeeded), measured from the POST."""
    t0 = time.perf_counter()
    job = api.submit(client, spec)
    to_running = None
    deadline = t0 + 300
    while time.perf_counter() < deadline:
        status = client.get(f"/jobs/{job['id']}").json()["status"]
        now = time.perf_counter() - t0
        if status != "queued" and to_running is None:
            to_running = now
        if status in api.TERMINAL:
            if status != "succeeded":
                raise RuntimeError(f"job {job['id']} {status}")
            return to_running, now
        time.sleep(poll)
    raise RuntimeError(f"job {job['id']} did not finish in 300 s")


def run_together(client: httpx.Client, specs: list[dict]) -> tuple[float, list[dict]]:
    """Submit all ``specs`` at once; (seconds until every job succeeded, the finished jobs)."""
    t0 = time.perf_counter()
    ids = [api.submit(client, s)["id"] for s in specs]
    jobs = [api.wait(client, job_id, poll=0.02) for job_id in ids]
    return time.perf_counter() - t0, jobs


def _spread(jobs: list[dict], key: str) -> float:
    """Seconds between the earliest and the latest ``key`` timestamp of ``jobs``."""
    stamps = [datetime.fromisoformat(j[key]) for j in jobs if j.get(key)]
    return (max(stamps) - min(stamps)).total_seconds() if len(stamps) > 1 else float("nan")


def run(res: SectionResult, *, quick: bool, threads: int, repeats: int, profile: bool) -> None:
    n_latency = 3 if quick else 7
    big_rows, big_epochs = (2_000, 1) if quick else (50_000, 4)
    with tempfile.TemporaryDirectory(prefix="regula-bench-") as tmp:
        tiny = Path(tmp) / "tiny.csv"
        big = Path(tmp) / "big.csv"
        api.write_csv(tiny, 200, 5)
        api.write_csv(big, big_rows, 50, seed=1)
        with regula_for(quick=quick) as server, httpx.Client(base_url=server.url) as client:
            _, tiny_ds = api.upload(client, tiny)
            _, big_ds = api.upload(client, big)
            tiny_spec = api.train_spec(tiny_ds["id"], epochs=1, batch_size=32)
            # Warm-up: the first job imports the engine in the worker processes.
            submit_and_watch(client, tiny_spec)
            submit_and_watch(client, tiny_spec)
            lat = [submit_and_watch(client, tiny_spec) for _ in range(n_latency)]
            res.check(
                "POST /jobs -> running (median)",
                median([a for a, _ in lat]),
                "1 second",
                1.0,
                "s",
                "<=",
                GOAL_RUNNING,
                note=f"{n_latency} one-epoch jobs on 200 x 5, polled every 5 ms",
            )
            res.info("POST /jobs -> succeeded (median)", median([b for _, b in lat]), "s")

            big_spec = api.train_spec(
                big_ds["id"], model={"hidden_layers": [128, 64]}, epochs=big_epochs, batch_size=64
            )
            run_together(client, [big_spec])  # warm-up (data cache, imports)
            workers = [p for p in process_tree(server.pid) if p != server.pid]
            one, two, starts, cpu_one, cpu_two = [], [], [], [], []
            # Rounds are short (a few seconds) and the pair is sensitive to any other load on the
            # two cores: more rounds than elsewhere, best of each.
            for _ in range(repeats if quick else max(repeats, 6)):
                c0 = cpu_seconds(workers)
                one.append(run_together(client, [big_spec])[0])
                c1 = cpu_seconds(workers)
                seconds, pair = run_together(client, [big_spec, big_spec])
                cpu_one.append(c1 - c0)
                cpu_two.append(cpu_seconds(workers) - c1)
                two.append(seconds)
                starts.append(_spread(pair, "started_at"))
            res.info(
                "worker CPU seconds: one job alone / the pair (median)",
                median(cpu_one),
                "s",
                note=f"the pair used {median(cpu_two):.2f} s = "
                f"{median(cpu_two) / (2 * median(cpu_one)):.2f}x the CPU of two jobs run alone "
                "(1.00 = no extra work per job side by side; then a wall-time ratio above 1 means "
                "the cores were busy with other processes)",
            )
            res.info(
                "two jobs: gap between their started_at (median)",
                median(starts),
                "s",
                note="both picked up at once means the two workers did run them side by side",
            )
            res.info(
                "one job alone (submit -> succeeded)",
                best_of(one),
                "s",
                note=f"{big_rows:,} x 50, hidden [128, 64], {big_epochs} epoch(s)",
            )
            load = os.getloadavg()[0]
            floor_one, floor_two = floor_scaling(big_rows, big_epochs, 2 if quick else 5)
            res.info(
                "two bare engine.fit processes at once / one alone (the machine's own scaling)",
                floor_two / floor_one,
                "x",
                note=f"{floor_one:.2f} s alone, {floor_two:.2f} s for the pair",
            )
            res.check(
                "two equal jobs on 2 workers / one alone, against the same for bare processes",
                best_of(two) / best_of(one),
                "bare engine.fit processes",
                floor_two / floor_one,
                "x",
                "<=",
                GOAL_PARALLEL,
                note=f"service pair {best_of(two):.2f} s, one job {best_of(one):.2f} s; 1-min "
                f"load average {load:.1f} on {os.cpu_count()} cores",
            )
