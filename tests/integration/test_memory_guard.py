"""The job's memory cap holds: an allocation past it is a MemoryError, not a swapping machine.

Runs in a child process because the cap (RLIMIT_AS) is per process.
"""

import subprocess
import sys

import pytest

from tests.integration.conftest import ServerFactory, wait_for_job

pytestmark = pytest.mark.integration

CHILD = """
import numpy as np
from app.jobs.body import memory_limit
try:
    with memory_limit({budget}):
        block = np.ones({size} // 8)
        block[::4096] = 2.0  # touch the pages: the allocation is real
    print("allocated")
except MemoryError:
    print("refused")
np.ones({size} // 8)  # the cap is lifted afterwards
print("after")
"""


@pytest.mark.parametrize(
    ("budget_mb", "size_mb", "expected"), [(200, 800, "refused"), (800, 200, "allocated")]
)
def test_memory_limit_refuses_allocations_past_the_budget(
    budget_mb: int, size_mb: int, expected: str
) -> None:
    code = CHILD.format(budget=budget_mb * 2**20, size=size_mb * 2**20)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.split() == [expected, "after"], out.stderr


def test_a_job_past_the_memory_limit_fails_as_out_of_memory_on_its_worker(
    regula_server: ServerFactory,
) -> None:
    # Queued under a generous limit, run after the operator lowered it: only the worker's own
    # cap stands between this job and the machine's memory.
    server = regula_server(env={"REGULA_MAX_JOB_MEMORY_MB": "4096"})
    rows = ["a,b,c,label"] + [f"{i % 7},{i % 5},{i % 3},{i % 2}" for i in range(400)]
    with server.client() as client:
        dataset = client.post(
            "/datasets", files={"file": ("t.csv", "\n".join(rows).encode(), "text/csv")}
        ).json()
        base = {"dataset_id": dataset["id"], "target": "label", "batch_size": 8, "seed": 0}
        blocker = client.post(
            "/jobs", json={**base, "epochs": 5000, "model": {"hidden_layers": [8]}}
        ).json()
        big = client.post(
            "/jobs", json={**base, "epochs": 2, "model": {"hidden_layers": [20_000, 1_000]}}
        ).json()
        assert big["status"] == "queued", big
        wait_for_job(client, blocker["id"], statuses=("running",))
    server.stop()
    server.env["REGULA_MAX_JOB_MEMORY_MB"] = "64"
    server.start()
    with server.client() as client:
        client.post(f"/jobs/{blocker['id']}/cancel")
        job = wait_for_job(client, big["id"], timeout=180)
        assert job["status"] == "failed", job
        assert job["error_code"] == "out_of_memory", job
        assert "64 MB" in job["error"]
        assert client.get("/healthz").status_code == 200
