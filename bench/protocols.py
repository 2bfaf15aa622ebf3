"""The serving protocols against the bare FastAPI floor, and pruned against unpruned serving.

    python -m bench.protocols [--quick] [--repeats 3] [--duration 5]
    python -m bench --only protocols [--quick]      # the same, as section 7 of the bench

1. Single-row requests with 32 keep-alive connections (the load generator of ``bench.serving``:
   ``wrk`` when installed, else ``bench.loadgen``), interleaved in one run against the floor
   (``bench.bare_app``: a constant answer, served as ``regula serve`` serves the app):
   ``POST /models/{id}/predict`` (reference), ``POST /v2/models/{id}/infer`` (Open Inference
   Protocol v2, one JSON [1, 1] tensor per feature) and ``POST /models/{id}/invocations`` (MLflow,
   ``dataframe_split``). Goal: each >= 0.7x the floor's requests/s, as for /predict.
2. Pruned serving, in process (no HTTP): ``prediction.predict`` of 1000 JSON rows on the model of
   ``bench.prune`` (500 features, 20 read) through the cache entry the service builds (the pruned
   copy predicts) against an entry holding the trained model (what serving did before pruning);
   rows with all 500 keys, and rows with only the 20 required ones. Best of ``--repeats``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench import api
from bench.common import SectionResult
from bench.server import bare_fastapi, close_shared, regula_for
from bench.serving import CONNECTIONS, GOAL, N_FEATURES, load

PRUNE_ROWS = 1000


def _bodies(model_id: str, names: list[str], row: dict[str, float]) -> dict[str, tuple[str, bytes]]:
    oip = {
        "inputs": [
            {"name": n, "shape": [1, 1], "datatype": "FP64", "data": [row[n]]} for n in names
        ]
    }
    mlflow = {"dataframe_split": {"columns": names, "data": [[row[n] for n in names]]}}
    return {
        "/predict": (f"/models/{model_id}/predict", json.dumps({"rows": [row]}).encode()),
        "OIP v2 infer": (f"/v2/models/{model_id}/infer", json.dumps(oip).encode()),
        "MLflow invocations": (f"/models/{model_id}/invocations", json.dumps(mlflow).encode()),
    }


def protocols(res: SectionResult, *, duration: float, repeats: int, quick: bool = False) -> None:
    use_wrk = shutil.which("wrk") is not None
    res.note(
        f"{CONNECTIONS} keep-alive connections, {duration:g} s per run, best of {repeats} "
        f"interleaved runs; client: {'wrk (-t1)' if use_wrk else 'bench.loadgen (asyncio)'}"
    )
    with tempfile.TemporaryDirectory(prefix="regula-bench-") as tmp:
        csv = Path(tmp) / "train.csv"
        api.write_csv(csv, 2_000, N_FEATURES)
        with regula_for(quick=quick) as server, bare_fastapi() as bare:
            with httpx.Client(base_url=server.url) as client:
                _, ds = api.upload(client, csv)
                job = api.wait(client, api.submit(client, api.train_spec(ds["id"]))["id"])
                model_id = job["model_id"]
                names = client.get(f"/models/{model_id}").json()["feature_names"]
                row = {n: 0.1 * j for j, n in enumerate(names)}
                bodies = _bodies(model_id, names, row)
                for path, body in bodies.values():
                    r = client.post(
                        path, content=body, headers={"content-type": "application/json"}
                    )
                    r.raise_for_status()
            floor_url = f"{bare.url}/models/{model_id}/predict"
            best: dict[str, dict[str, Any]] = {}
            for _ in range(repeats):
                for name, (path, body) in bodies.items():
                    for who, url in ((name, server.url + path), (f"floor/{name}", floor_url)):
                        out = load(url, body, duration, use_wrk)
                        if who not in best or out["rps"] > best[who]["rps"]:
                            best[who] = out
            for name in bodies:
                o, f = best[name], best[f"floor/{name}"]
                res.check(
                    f"single-row {name}, {CONNECTIONS} clients",
                    o["rps"],
                    "bare FastAPI",
                    f["rps"],
                    "req/s",
                    ">=",
                    GOAL,
                    note=f"p50/p99 {o['p50_ms']:.2f}/{o['p99_ms']:.2f} ms; errors {o['errors']}",
                )


def pruned(res: SectionResult, *, repeats: int) -> None:
    import numpy as np

    from app.models import loading, prediction
    from bench.prune import build

    model, X = build()
    item = loading.loaded("pruned", None, model)
    full = loading.Loaded(
        id="full",
        owner_id=None,
        model=model,
        names=item.names,
        numeric=item.numeric,
        index=item.index,
        nbytes=loading.model_nbytes(model),
        n_weights=sum(int(p.size) for p in model.network.parameters()[0]),
    )
    rows = [dict(zip(item.names, map(float, x), strict=True)) for x in X[:PRUNE_ROWS]]
    short = [{n: r[n] for n in item.required} for r in rows]
    a = prediction.predict(item, rows=rows, instances=None)["probabilities"]
    b = prediction.predict(full, rows=rows, instances=None)["probabilities"]
    assert np.allclose(a, b, atol=1e-6), "pruned predictions differ"
    runs = {
        "unpruned, 500-key rows": lambda: prediction.predict(full, rows=rows, instances=None),
        "pruned, 500-key rows": lambda: prediction.predict(item, rows=rows, instances=None),
        "pruned, 20-key rows": lambda: prediction.predict(item, rows=short, instances=None),
    }
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    res.note(
        f"model of bench.prune: {len(item.names)} features, {len(item.required)} required; "
        f"weights {full.n_weights:,} -> {item.n_weights:,}"
    )
    for name, seconds in best.items():
        res.info(f"predict {PRUNE_ROWS} rows, {name}", seconds * 1e3, "ms")
    unpruned = best["unpruned, 500-key rows"]
    for name in ("pruned, 500-key rows", "pruned, 20-key rows"):
        res.info(f"speed-up, {name} vs unpruned", unpruned / best[name], "x")


def run(res: SectionResult, *, quick: bool, threads: int, repeats: int, profile: bool) -> None:
    """Section 7 of ``python -m bench``: both parts above (1 s runs in quick mode)."""
    protocols(res, duration=1.0 if quick else 5.0, repeats=repeats, quick=quick)
    pruned(res, repeats=max(repeats, 5))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.protocols", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--quick", action="store_true", help="1 s runs, 1 repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--duration", type=float, default=5.0)
    args = p.parse_args(argv)
    repeats = 1 if args.quick else args.repeats
    duration = 1.0 if args.quick else args.duration
    res = SectionResult("protocols", "Serving protocols")
    try:
        protocols(res, duration=duration, repeats=repeats, quick=args.quick)
        pruned(res, repeats=max(repeats, 5))
    finally:
        close_shared()
    failed = [c for c in res.checks if not c.passed]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
