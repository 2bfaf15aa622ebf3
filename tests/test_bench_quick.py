"""Smoke test of the benchmark: ``python -m bench --quick`` runs every section and reports ratios.

Runs in a subprocess (real servers, a real load generator) and writes its results to a temp path,
never to bench/RESULTS.md. Peers that are not installed (PyTorch in CI) are skipped by the bench.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RATIO = re.compile(r"ratio vs (.+?) (\d+\.\d+)x \(goal (>=|<=) [\d.]+x\) (PASS|FAIL)")

# `first`: the longest file of the integration lane, started before the others (tests/conftest.py).
pytestmark = [pytest.mark.integration, pytest.mark.first]


def run_bench(*args: str, timeout: float = 540) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    output = tmp_path_factory.mktemp("bench") / "RESULTS.md"
    return run_bench("--quick", "--output", str(output)), output


def test_quick_bench_exits_zero_and_prints_a_ratio_per_goal(quick_run) -> None:
    proc, _ = quick_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    peers = {m.group(1) for m in RATIO.finditer(proc.stdout)}
    expected = {
        "numpy",
        "sklearn",
        "regula without l1",
        "sgemm peak",
        "sklearn Lasso",
        "bare FastAPI",
        "pyarrow.csv.read_csv",
        "pyarrow read_csv (fresh process)",
        "1 second",
        "bare engine.fit processes",
        "one first predict",
        "REGULA_MODEL_CACHE_MB",
        "REGULA_MAX_JOB_MEMORY_MB",
    }
    assert expected <= peers, sorted(peers)
    # Section 7 measures each serving protocol against the floor.
    for name in ("/predict", "OIP v2 infer", "MLflow invocations"):
        assert f"[protocols] single-row {name}, 32 clients" in proc.stdout
    for m in RATIO.finditer(proc.stdout):
        assert float(m.group(2)) > 0


def test_quick_bench_writes_results_to_the_output_path_only(quick_run) -> None:
    proc, output = quick_run
    assert proc.returncode == 0
    text = output.read_text()
    assert "## Machine" in text
    assert "openblas" in text.lower()
    assert "## Where the time goes" in text
    # One table row per ratio line printed.
    rows = [ln for ln in text.splitlines() if ln.startswith("| ") and "**" in ln]
    assert len(rows) == len(RATIO.findall(proc.stdout))
    assert f"wrote {output}" in proc.stdout


def test_unknown_section_is_rejected() -> None:
    proc = run_bench("--only", "training,nonsense", "--output", "/dev/null", timeout=60)
    assert proc.returncode == 2
    assert "nonsense" in proc.stderr
