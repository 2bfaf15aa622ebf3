"""Section 7: the hardening figures: memory bounds that hold, no request that stalls the API.

    python -m bench --only hardening [--quick]

One ``regula serve`` (2 Dask workers) with ``REGULA_MODEL_CACHE_MB`` and
``REGULA_MAX_JOB_MEMORY_MB`` set low enough to be reached, then:

1. Model cache: models of ~9M float32 weights (36 MB) trained on a tiny table; the API's peak
   RSS growth while six clients send a model's first predict at once, against one client's
   (loaded once: the growth is one load, not six), and its RSS after predicting on models
   totalling more than the cache (bounded by the cache, not by the number of models).
2. Job memory: a linear model on a wide table under ``REGULA_MAX_JOB_MEMORY_MB``: the worker's
   peak RSS above its idle RSS against the limit, and against the engine's estimate
   (``engine.footprint``) that the service holds to that limit at submit.
3. Event loop: ``/healthz`` latency, probed back to back while one client sends a hostile
   prediction request: a body just under ``REGULA_MAX_PREDICT_MB`` (parsed off the loop), a body
   past it (refused while streaming), a row of 1M unknown keys (refused early).
"""

from __future__ import annotations

import concurrent.futures
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from bench import api
from bench.common import SectionResult
from bench.server import process_tree, regula_serve, reset_peak_rss, status_kb

CACHE_MB = 100
JOB_MEMORY_MB = 256
PREDICT_MB = 16
BIG_HIDDEN = [3000, 3000]
QUICK_HIDDEN = [800, 800]
GOAL_HEALTHZ = 0.25  # seconds: a probe never waits for the hostile request


def _mb(kb: int) -> float:
    return kb / 1024


def _train_big_model(client: httpx.Client, dataset_id: str, seed: int, hidden: list[int]) -> str:
    spec = api.train_spec(
        dataset_id,
        model={"hidden_layers": hidden},
        regularization={"l1": 0.0, "l2": 0.0},
        optimizer={"name": "sgd", "learning_rate": 0.01},
        epochs=1,
        seed=seed,
    )
    return api.wait(client, api.submit(client, spec)["id"])["model_id"]


def _probe_while(url: str, request: Callable[[], httpx.Response]) -> tuple[int, list[float]]:
    """Run ``request`` in a thread; probe ``/healthz`` back to back until it returns."""
    answer: dict[str, httpx.Response] = {}
    done = threading.Event()

    def send() -> None:
        try:
            answer["response"] = request()
        finally:
            done.set()

    latencies: list[float] = []
    with httpx.Client(base_url=url, timeout=30) as probe:
        probe.get("/healthz")
        thread = threading.Thread(target=send)
        thread.start()
        while not done.is_set():
            t0 = time.perf_counter()
            probe.get("/healthz")
            latencies.append(time.perf_counter() - t0)
        thread.join()
    return answer["response"].status_code, latencies


def _first_predict_peak(client: httpx.Client, api_pid: int, model_id: str, n: int) -> float:
    """The API's peak RSS growth (MB) while ``n`` clients send a model's first predict at once."""
    row = {"rows": [{"f0": 0.1, "f1": 0.2, "f2": 0.3}]}
    rss0 = status_kb(api_pid, "VmRSS")
    if not reset_peak_rss(api_pid):
        raise RuntimeError("this kernel refuses to reset VmHWM (/proc/<pid>/clear_refs)")
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        url = f"/models/{model_id}/predict"
        codes = list(pool.map(lambda _: client.post(url, json=row).status_code, range(n)))
    assert codes == [200] * n, codes
    return _mb(status_kb(api_pid, "VmHWM") - rss0)


def _cache_figures(
    res: SectionResult, client: httpx.Client, api_pid: int, tiny: str, hidden: list[int]
) -> None:
    one, six = (_train_big_model(client, tiny, seed, hidden) for seed in (0, 1))
    alone = _first_predict_peak(client, api_pid, one, 1)
    rss0 = status_kb(api_pid, "VmRSS")
    together = _first_predict_peak(client, api_pid, six, 6)
    # Read after the predicts: GET /models/{id} loads the model too (its required features).
    blob = client.get(f"/models/{one}").json()["size_bytes"]
    res.info(
        "API memory: peak growth while a model loads, against its stored size",
        alone / (blob / 2**20),
        "x",
        note=f"{alone:.0f} MB for {blob / 2**20:.0f} MB of weights: the stored bytes, the "
        "archive's read buffer, the weights and the network's gradient buffers",
    )
    res.check(
        "API memory: six concurrent first predicts of one model",
        together,
        "one first predict",
        alone,
        "MB",
        "<=",
        1.25,
        note="peak RSS growth of each; six separate loads would be about 6x",
    )
    row = {"rows": [{"f0": 0.1, "f1": 0.2, "f2": 0.3}]}
    more = [_train_big_model(client, tiny, seed, hidden) for seed in (2, 3)]
    for model_id in [one, six, *more, one]:
        assert client.post(f"/models/{model_id}/predict", json=row).status_code == 200
    held = _mb(status_kb(api_pid, "VmRSS") - rss0)
    res.check(
        f"API memory after predicting on {len(more) + 2} models of {blob / 2**20:.0f} MB",
        held,
        "REGULA_MODEL_CACHE_MB",
        CACHE_MB,
        "MB",
        "<=",
        1.0,
        note="RSS growth since before the second model's load; the cache evicts past its "
        "byte limit",
    )


def _job_figures(
    res: SectionResult, client: httpx.Client, server_pid: int, wide: str, shape: tuple[int, int]
) -> None:
    import engine
    import engine.footprint

    spec = api.train_spec(
        wide,
        model={"hidden_layers": []},
        optimizer={"name": "adam", "learning_rate": 0.01},
        epochs=3,
        batch_size=256,
        validation_split=0.2,
    )
    n_rows, n_features = shape
    app_only = ("dataset_id", "target", "features")
    normalized = engine.normalize_spec({k: v for k, v in spec.items() if k not in app_only})
    estimate = engine.footprint.footprint(
        normalized, n_rows=n_rows, n_columns=n_features, n_inputs=n_features, n_outputs=2
    ).total
    workers = [p for p in process_tree(server_pid) if p != server_pid]
    idle = {p: status_kb(p, "VmRSS") for p in workers}
    if not all(reset_peak_rss(p) for p in workers):
        res.notes.append("job memory: VmHWM reset refused; the worker peak includes start-up")
    api.wait(client, api.submit(client, spec)["id"], timeout=600)
    peak = max(_mb(status_kb(p, "VmHWM") - idle[p]) for p in workers)
    res.check(
        f"job peak memory, linear model on {n_rows:,} x {n_features}",
        peak,
        "REGULA_MAX_JOB_MEMORY_MB",
        JOB_MEMORY_MB,
        "MB",
        "<=",
        1.0,
        note=f"worker peak RSS above idle; the engine's estimate was {estimate / 2**20:.0f} MB "
        f"({peak / (estimate / 2**20):.2f}x measured/estimate)",
    )
    wide_classes = api.train_spec(wide, model={"hidden_layers": [100_000]})
    r = client.post("/jobs", json=wide_classes)
    res.info(
        "a [100000] network past the job memory limit: HTTP status at submit",
        r.status_code,
        "",
        note=(r.json().get("detail") or [{}])[0].get("msg", "")[:160]
        if r.status_code == 422
        else "",
    )


def _event_loop_figures(
    res: SectionResult, client: httpx.Client, url: str, model_id: str, n_features: int
) -> None:
    idle: list[float] = []
    for _ in range(50):
        t0 = time.perf_counter()
        client.get("/healthz")
        idle.append(time.perf_counter() - t0)
    res.info("/healthz latency, idle (median)", statistics.median(idle), "s")
    row = {f"f{j}": 0.123456 for j in range(n_features)}
    one = len(json.dumps(row)) + 2
    under = json.dumps({"rows": [row] * int(PREDICT_MB * 2**20 * 0.95 / one)}).encode()
    over = json.dumps({"rows": [row] * int(PREDICT_MB * 2**20 * 2 / one)}).encode()
    keys = json.dumps({"rows": [{f"k{i}": 0 for i in range(1_000_000)}]}).encode()
    predict = f"{url}/models/{model_id}/predict"
    headers = {"content-type": "application/json"}
    cases = [
        (f"a {len(under) / 2**20:.1f} MB predict body", under),
        (f"a {len(over) / 2**20:.1f} MB predict body (past the limit)", over),
        (f"a {len(keys) / 2**20:.1f} MB row of 1M unknown keys", keys),
    ]
    with httpx.Client(timeout=300) as hostile:
        for name, body in cases:
            status, latencies = _probe_while(
                url, lambda body=body: hostile.post(predict, content=body, headers=headers)
            )
            res.check(
                f"/healthz max latency during {name}",
                max(latencies),
                "1 second",
                1.0,
                "s",
                "<=",
                GOAL_HEALTHZ,
                note=f"answered HTTP {status}; {len(latencies)} probes, median "
                f"{statistics.median(latencies) * 1000:.1f} ms",
            )


def run(res: SectionResult, *, quick: bool, threads: int, repeats: int, profile: bool) -> None:
    shape = (5_000, 50) if quick else (30_000, 200)
    env = {
        "REGULA_MODEL_CACHE_MB": str(CACHE_MB),
        "REGULA_MAX_JOB_MEMORY_MB": str(JOB_MEMORY_MB),
        "REGULA_MAX_PREDICT_MB": str(PREDICT_MB),
    }
    with tempfile.TemporaryDirectory(prefix="regula-bench-") as tmp:
        tiny_csv, wide_csv = Path(tmp) / "tiny.csv", Path(tmp) / "wide.csv"
        api.write_csv(tiny_csv, 16, 3)
        api.write_csv(wide_csv, *shape, seed=2)
        with (
            regula_serve(env=env) as server,
            httpx.Client(base_url=server.url, timeout=120) as client,
        ):
            _, tiny = api.upload(client, tiny_csv)
            # Before the wide upload: the allocator keeps what its ingest freed, and the model
            # loads would reuse it without the RSS growing.
            _cache_figures(
                res, client, server.pid, tiny["id"], QUICK_HIDDEN if quick else BIG_HIDDEN
            )
            _, wide = api.upload(client, wide_csv)
            _job_figures(res, client, server.pid, wide["id"], shape)
            model_id = api.wait(
                client, api.submit(client, api.train_spec(wide["id"], epochs=1))["id"]
            )["model_id"]
            _event_loop_figures(res, client, server.url, model_id, shape[1])
