"""Section 3: the prediction service against a bare FastAPI endpoint under the same server settings.

Single-row ``POST /models/{id}/predict`` with 32 concurrent keep-alive connections on loopback for a
bounded time: requests/s and p50/p99 latency, against ``bench.bare_app`` (returns a constant;
served by uvicorn exactly as ``regula serve`` serves the app: one process, uvloop + httptools,
access log on).
Goal: >= 0.7x the floor's throughput. Then one request of 10,000 rows: rows/s.

Load generator: ``wrk`` when installed (Debian package), else ``bench.loadgen`` (asyncio + uvloop,
raw sockets), in a separate process either way. Its own ceiling is measured against a near-zero-work
responder, so a client bottleneck would show as ceiling ~ floor.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench import api
from bench.common import SectionResult, best_of
from bench.server import REPO, bare_fastapi, raw_server, regula_for

GOAL = 0.7
CONNECTIONS = 32
N_FEATURES = 20


def _wrk_seconds(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        return float("nan")
    return float(m.group(1)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[m.group(2)]


def run_wrk(url: str, body: bytes, duration: float) -> dict[str, Any]:
    """``wrk -t1 -c32 -d{duration}s --latency`` with a POST body; parsed figures."""
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text(
            'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = [==[{body.decode()}]==]\n"
        )
        out = subprocess.run(
            [
                "wrk",
                "-t1",
                f"-c{CONNECTIONS}",
                f"-d{max(1, round(duration))}s",
                "--latency",
                "--timeout",
                "10s",
                "-s",
                str(script),
                url,
            ],
            capture_output=True,
            text=True,
            timeout=duration + 60,
            check=True,
        ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    total = re.search(r"(\d+) requests in", out)
    return {
        "rps": rps,
        "p50_ms": _wrk_seconds(lat.get("50", "nan")) * 1e3,
        "p99_ms": _wrk_seconds(lat.get("99", "nan")) * 1e3,
        "errors": int(non2xx.group(1)) if non2xx else 0,
        "requests": int(total.group(1)) if total else 0,
        "client": "wrk",
    }


def run_loadgen(url: str, body: bytes, duration: float) -> dict[str, Any]:
    """``python -m bench.loadgen client`` in its own process; its JSON line."""
    port = int(url.split(":")[2].split("/")[0])
    path = "/" + url.split("/", 3)[3]
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        f.write(body)
        f.flush()
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.loadgen",
                "client",
                "--port",
                str(port),
                "--path",
                path,
                "--body-file",
                f.name,
                "--connections",
                str(CONNECTIONS),
                "--duration",
                str(duration),
            ],
            capture_output=True,
            text=True,
            timeout=duration + 60,
            check=True,
            cwd=REPO,
        ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    result["client"] = "bench.loadgen"
    return result


def load(url: str, body: bytes, duration: float, use_wrk: bool) -> dict[str, Any]:
    return run_wrk(url, body, duration) if use_wrk else run_loadgen(url, body, duration)


def run(res: SectionResult, *, quick: bool, threads: int, repeats: int, profile: bool) -> None:
    duration = 1.0 if quick else 5.0
    batch_rows = 1_000 if quick else 10_000
    use_wrk = shutil.which("wrk") is not None
    res.note(
        f"{CONNECTIONS} keep-alive connections, {duration:g} s per run, best of {repeats} "
        f"interleaved runs; client: {'wrk (-t1)' if use_wrk else 'bench.loadgen (asyncio)'}"
    )
    if not use_wrk:
        res.skip("wrk not installed (apt-get install wrk); using bench.loadgen")
    with tempfile.TemporaryDirectory(prefix="regula-bench-") as tmp:
        csv = Path(tmp) / "train.csv"
        api.write_csv(csv, 2_000, N_FEATURES)
        with regula_for(quick=quick) as server, bare_fastapi() as bare:
            with httpx.Client(base_url=server.url) as client:
                _, ds = api.upload(client, csv)
                job = api.submit(client, api.train_spec(ds["id"]))
                job = api.wait(client, job["id"])
                model_id = job["model_id"]
                row = {f"f{j}": 0.1 * j for j in range(N_FEATURES)}
                body = json.dumps({"rows": [row]}).encode()
                r = client.post(
                    f"/models/{model_id}/predict",
                    content=body,
                    headers={"content-type": "application/json"},
                )
                r.raise_for_status()
                res.note(
                    f"model: 2,000 x {N_FEATURES} CSV, hidden [64, 32], softmax; one row -> "
                    f"{r.text[:120]}"
                )
            url = f"{server.url}/models/{model_id}/predict"
            bare_url = f"{bare.url}/models/{model_id}/predict"
            ours, floor = [], []
            for _ in range(repeats):
                ours.append(load(url, body, duration, use_wrk))
                floor.append(load(bare_url, body, duration, use_wrk))
            o = max(ours, key=lambda d: d["rps"])
            f = max(floor, key=lambda d: d["rps"])
            if o["errors"] or f["errors"]:
                res.note(f"non-200 responses: regula {o['errors']}, floor {f['errors']}")
            res.check(
                "single-row predict, 32 clients",
                o["rps"],
                "bare FastAPI",
                f["rps"],
                "req/s",
                ">=",
                GOAL,
                note=f"p50/p99 regula {o['p50_ms']:.2f}/{o['p99_ms']:.2f} ms, floor "
                f"{f['p50_ms']:.2f}/{f['p99_ms']:.2f} ms",
            )
            res.info("single-row predict p50 latency", o["p50_ms"], "ms")
            res.info("single-row predict p99 latency", o["p99_ms"], "ms")

            batch = {"rows": [{k: v + i * 1e-4 for k, v in row.items()} for i in range(batch_rows)]}
            batch_body = json.dumps(batch).encode()
            times = []
            with httpx.Client(base_url=server.url, timeout=120) as client:
                for _ in range(max(repeats, 2)):
                    t0 = time.perf_counter()
                    r = client.post(
                        f"/models/{model_id}/predict",
                        content=batch_body,
                        headers={"content-type": "application/json"},
                    )
                    times.append(time.perf_counter() - t0)
                    r.raise_for_status()
                    assert len(r.json()["predictions"]) == batch_rows
            res.info(
                f"batch predict, {batch_rows:,} rows in one request",
                batch_rows / best_of(times),
                "rows/s",
                note=f"{best_of(times) * 1e3:.0f} ms per request incl. JSON",
            )
        # Client ceiling: the same generator against a responder that does almost nothing.
        with raw_server(duration * (repeats + 2) + 30) as raw:
            c = load(f"{raw.url}/models/x/predict", body, duration, use_wrk)
        res.info(
            "load generator ceiling (near-zero-work responder)",
            c["rps"],
            "req/s",
            note=f"{c['rps'] / f['rps']:.1f}x the floor's throughput: the client is "
            + (
                "not the bottleneck" if c["rps"] > 2 * f["rps"] else "CLOSE TO BEING the bottleneck"
            ),
        )
