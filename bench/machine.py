"""The machine's description written next to the figures: cores, BLAS library, kernel, versions."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from typing import Any

# Set on some processors by the environment; they make a current numpy pick a slow OpenBLAS kernel.
# ``python -m bench`` removes them before numpy loads (see bench/__main__.py); tests and CI keep
# them.
OPENBLAS_ENV_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")

PACKAGES = (
    "regula",
    "numpy",
    "scipy",
    "scikit-learn",
    "torch",
    "pyarrow",
    "fastapi",
    "uvicorn",
    "uvloop",
    "httptools",
    "pydantic",
    "sqlalchemy",
    "threadpoolctl",
    "distributed",
)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def blas_info() -> list[dict[str, Any]]:
    """threadpoolctl's view of the loaded BLAS/OpenMP libraries (kernel = ``architecture``)."""
    from threadpoolctl import threadpool_info

    keep = (
        "user_api",
        "internal_api",
        "prefix",
        "version",
        "architecture",
        "num_threads",
        "filepath",
    )
    return [{k: d.get(k) for k in keep} for d in threadpool_info()]


def describe(removed_env: dict[str, str], threads: int) -> dict[str, Any]:
    """Everything RESULTS.md says about where the figures were taken."""
    import numpy as np  # noqa: F401  (load numpy's BLAS so threadpoolctl reports it)

    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_available": len(os.sched_getaffinity(0)),
        "threads_used": threads,
        "kernel": platform.release(),
        "platform": platform.platform(),
        "loadavg_at_start": load,
        "blas": blas_info(),
        "openblas_env_removed": removed_env,
        "openblas_env_still_set": {k: os.environ[k] for k in OPENBLAS_ENV_VARS if k in os.environ},
        "versions": versions(),
    }


def describe_markdown(desc: dict[str, Any]) -> str:
    lines = [
        f"- CPU: {desc['cpu']}; {desc['cores']} cores ({desc['cores_available']} available to the "
        f"process); every contender ran with {desc['threads_used']} thread(s)",
        f"- Linux kernel: {desc['kernel']} ({desc['platform']})",
        "- Load average (1, 5, 15 min) at start: "
        + ", ".join(f"{x:.2f}" for x in desc["loadavg_at_start"])
        + (
            "; at end: " + ", ".join(f"{x:.2f}" for x in desc["loadavg_at_end"])
            if "loadavg_at_end" in desc
            else ""
        )
        + " (a load above the core count means other processes competed for the cores)",
        f"- Clock of the in-process sections (training, lasso): {desc.get('clock', 'wall')}"
        + (
            " (process CPU time of one thread: leaves out time other processes held the core)"
            if desc.get("clock") == "cpu"
            else " time"
        ),
    ]
    removed = desc["openblas_env_removed"]
    lines.append(
        "- OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE: "
        + (
            "removed for this run (" + ", ".join(f"{k}={v}" for k, v in removed.items()) + ")"
            if removed
            else "not set"
        )
    )
    lines.append(
        "- BLAS / OpenMP libraries loaded (threadpoolctl; threads = the library default, the "
        "contenders ran under threadpool_limits with the count above):"
    )
    for b in desc["blas"]:
        lines.append(
            f"  - {b['internal_api']} {b['version']} kernel={b.get('architecture')} "
            f"threads={b['num_threads']} ({os.path.basename(str(b['filepath']))})"
        )
    lines.append("- Versions: " + ", ".join(f"{k} {v}" for k, v in desc["versions"].items()))
    return "\n".join(lines)
