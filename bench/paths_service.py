"""A search job through a real server: the same Lasso path with 1 and then 2 Dask workers.

Problem (``bench.lasso.make_problem``): ``X (5000, 1000)`` standard normal, 20 true non-zero
coefficients, uploaded as a CSV. The job: a linear mse model (the exact Gram path per split),
``search = {num: 100, folds: 5, select: min}``, then the final FISTA fit at the chosen value.

The job body reads the dataset once, computes the grid, scatters the data and runs the 6 splits
(5 folds, then all training rows) and the final fit as their own Dask tasks, the final fit as soon
as the folds are done; so with 2 workers the search takes little more than half the time of 1
(goal: 2 workers <= 0.6x). Timed from ``POST /jobs`` to ``succeeded``, best of ``--repeats``, the
two deployments interleaved; the job's own ``started_at -> finished_at`` is printed too.

The ratio can only be as good as the machine lets two processes run at once: a probe runs one
fold's path in two processes together and back to back (``parallel capacity`` = back to back /
together: 2.0 on two idle cores, 1.0 when other work holds one of them), before every repeat and
once after the last, so it sees the conditions the jobs ran in. ``1 / capacity`` is the ratio a
perfect split of all of the job's work over the 2 workers would reach (no serial step at all):
the floor of what this machine allows at the moment, printed beside the ratio.

Run: ``python -m bench.paths_service [--quick] [--repeats N]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench import api
from bench.common import SectionResult, best_of
from bench.lasso import make_problem
from bench.server import regula_serve

GOAL = 0.6
NUM = 100
FOLDS = 5


def write_problem(path: Path, n: int, d: int) -> None:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    X, y, _ = make_problem(n, d, 20, seed=0)
    table = pa.table({**{f"f{j}": X[:, j] for j in range(d)}, "y": y})
    pacsv.write_csv(table, path)


def search_spec(dataset_id: str) -> dict[str, Any]:
    return {
        "dataset_id": dataset_id,
        "target": "y",
        "loss": "mse",
        "model": {"hidden_layers": []},
        "optimizer": {"name": "fista"},
        "epochs": 100,
        "standardize": False,
        "shuffle": False,
        "dtype": "float64",
        "search": {"num": NUM, "folds": FOLDS, "select": "min"},
    }


def _seconds(job: dict[str, Any]) -> float:
    started = datetime.fromisoformat(job["started_at"])
    finished = datetime.fromisoformat(job["finished_at"])
    return (finished - started).total_seconds()


def run_once(client: httpx.Client, dataset_id: str) -> tuple[float, float, dict[str, Any]]:
    """(seconds POST -> succeeded, the job's own seconds, its path)."""
    t0 = time.perf_counter()
    job = api.submit(client, search_spec(dataset_id))
    job = api.wait(client, job["id"], timeout=1800, poll=0.05)
    wall = time.perf_counter() - t0
    path = client.get(f"/jobs/{job['id']}/path", timeout=120).json()
    return wall, _seconds(job), path


def _one_fold(seed: int) -> float:
    import os

    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    from threadpoolctl import threadpool_limits

    import engine

    X, y, _ = make_problem(4000, 800, 20, seed=seed)
    spec = {k: v for k, v in search_spec("-").items() if k not in ("dataset_id", "target")}
    grid = engine.path_grid(spec, X, y, num=NUM)
    with threadpool_limits(limits=1):
        started = time.perf_counter()
        engine.path_fold(spec, X, y, 0, grid=grid, folds=FOLDS)
        return time.perf_counter() - started


def parallel_capacity() -> float:
    """(two folds back to back) / (the same two in two processes at once): 2.0 on idle cores."""
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(2) as pool:
        list(pool.map(_one_fold, [0, 1]))  # imports and first-touch costs
        started = time.perf_counter()
        list(pool.map(_one_fold, [0, 1]))
        together = time.perf_counter() - started
        started = time.perf_counter()
        pool.submit(_one_fold, 0).result()
        pool.submit(_one_fold, 1).result()
        apart = time.perf_counter() - started
    return apart / together


def main(argv: list[str] | None = None) -> SectionResult:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2000 x 300, one repeat")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    n, d = (2000, 300) if args.quick else (5000, 1000)
    repeats = 1 if args.quick else args.repeats
    result = SectionResult("paths", "Search jobs: splits as Dask tasks")
    with tempfile.TemporaryDirectory(prefix="regula-paths-") as tmp:
        csv_path = Path(tmp) / "lasso.csv"
        write_problem(csv_path, n, d)
        times: dict[int, list[float]] = {1: [], 2: []}
        job_times: dict[int, list[float]] = {1: [], 2: []}
        chosen: dict[int, float] = {}
        capacities: list[float] = []
        for _ in range(repeats):
            capacities.append(parallel_capacity())
            for workers in (1, 2):
                with (
                    regula_serve(workers=workers) as server,
                    httpx.Client(base_url=server.url, timeout=60) as client,
                ):
                    _, dataset = api.upload(client, csv_path)
                    wall, own, path = run_once(client, dataset["id"])
                times[workers].append(wall)
                job_times[workers].append(own)
                chosen[workers] = path["chosen"]["min"]
                print(
                    f"  {workers} worker(s): {wall:.2f} s POST -> succeeded "
                    f"(job {own:.2f} s), chosen l1 {path['chosen']['min']:.6g}",
                    flush=True,
                )
    capacities.append(parallel_capacity())
    capacity = float(np.mean(capacities))
    floor = 1.0 / capacity
    print(
        "  parallel capacity of this machine: "
        + ", ".join(f"{c:.2f}" for c in capacities)
        + f" (before each repeat, then after; 2.0 = two idle cores): a perfect split would "
        f"reach {floor:.2f}x",
        flush=True,
    )
    one, two = best_of(times[1]), best_of(times[2])
    same = bool(np.isclose(chosen[1], chosen[2], rtol=1e-12))
    result.info(
        "parallel capacity (2 processes back to back / together)",
        capacity,
        "",
        note="mean of " + ", ".join(f"{c:.2f}" for c in capacities),
    )
    result.info("perfect-split floor of the ratio (1 / capacity)", floor, "")
    result.check(
        f"{NUM}-point {FOLDS}-fold Lasso search, {n} x {d}, 2 workers",
        two,
        "1 worker",
        one,
        "s",
        "<=",
        GOAL,
        note=f"job body {best_of(job_times[2]):.2f} s vs {best_of(job_times[1]):.2f} s; "
        f"same choice: {same}; parallel capacity {capacity:.2f}, perfect-split floor "
        f"{floor:.2f}x",
    )
    ratio = two / one
    print(
        f"ratio 2 workers / 1 worker: {ratio:.2f}x (goal <= {GOAL}x; a perfect split on this "
        f"machine now: {floor:.2f}x)",
        flush=True,
    )
    return result


if __name__ == "__main__":
    main()
