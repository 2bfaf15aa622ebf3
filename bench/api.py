"""Small HTTP helpers over a running ``regula serve``: upload a CSV, train, wait for a job."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

TERMINAL = ("succeeded", "failed", "cancelled")


def write_csv(
    path: Path,
    n_rows: int,
    n_features: int,
    *,
    seed: int = 0,
    label: bool = True,
    quoted_header: bool = False,
) -> None:
    """A numeric CSV ``f0..f{D-1}[,label]``: N(0, 1) values with 6 decimals, a 0/1 label.

    The header is bare (``f0,f1,...``) as pandas and NumPy write it, or quoted (``"f0","f1",...``)
    as pyarrow and R's write.csv do.
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(seed)
    chunk = 200_000
    names = [f"f{j}" for j in range(n_features)] + (["label"] if label else [])
    header = ",".join(f'"{n}"' if quoted_header else n for n in names) + "\n"
    schema = pa.schema(
        [(f"f{j}", pa.float64()) for j in range(n_features)]
        + ([("label", pa.int64())] if label else [])
    )
    options = pacsv.WriteOptions(include_header=False)
    with open(path, "wb") as sink:
        sink.write(header.encode())
        with pacsv.CSVWriter(sink, schema, write_options=options) as writer:
            for start in range(0, n_rows, chunk):
                n = min(chunk, n_rows - start)
                X = np.round(rng.standard_normal((n, n_features)), 6)
                cols = {f"f{j}": X[:, j] for j in range(n_features)}
                if label:
                    cols["label"] = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(np.int64)
                writer.write_table(pa.table(cols))


def upload(client: httpx.Client, path: Path) -> tuple[float, dict[str, Any]]:
    """POST /datasets with the file streamed from disk; (seconds, response body)."""
    with open(path, "rb") as f:
        t0 = time.perf_counter()
        r = client.post("/datasets", files={"file": (path.name, f, "text/csv")}, timeout=600)
        seconds = time.perf_counter() - t0
    if r.status_code != 201:
        raise RuntimeError(f"upload failed: HTTP {r.status_code} {r.text[:500]}")
    return seconds, r.json()


def submit(client: httpx.Client, spec: dict[str, Any]) -> dict[str, Any]:
    r = client.post("/jobs", json=spec, timeout=60)
    if r.status_code != 202:
        raise RuntimeError(f"POST /jobs failed: HTTP {r.status_code} {r.text[:500]}")
    return r.json()


def wait(
    client: httpx.Client, job_id: str, *, timeout: float = 300, poll: float = 0.05
) -> dict[str, Any]:
    """Poll GET /jobs/{id} until a terminal status; raise unless it succeeded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if job["status"] in TERMINAL:
            if job["status"] != "succeeded":
                raise RuntimeError(f"job {job_id} {job['status']}: {job.get('error')}")
            return job
        time.sleep(poll)
    raise RuntimeError(f"job {job_id} not finished after {timeout} s")


def train_spec(dataset_id: str, **overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "dataset_id": dataset_id,
        "target": "label",
        "model": {"hidden_layers": [64, 32], "activation": "relu"},
        "loss": "softmax_cross_entropy",
        "regularization": {"l1": 1e-4, "l2": 1e-4},
        "optimizer": {"name": "sgd", "learning_rate": 0.05, "momentum": 0.9},
        "epochs": 5,
        "batch_size": 64,
        "validation_split": 0.0,
        "seed": 0,
    }
    spec.update(overrides)
    return spec
