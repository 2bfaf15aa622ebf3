"""Section 4: CSV upload (``POST /datasets``) against ``pyarrow.csv.read_csv`` on the same file.

File: 1,000,000 rows x 20 float columns with 6 decimals (~190 MB; quick mode 10,000 rows), with a
bare header line as pandas writes it, in a temp dir (the same data with a quoted header is timed
as information). Figures:

- time: wall time of the upload as a client sees it (streaming the file over loopback, parsing,
  validation, Parquet write, stats, DB row) vs ``pyarrow.csv.read_csv`` in this process (best of a
  few; pyarrow's CPU pool set to the same thread count). Goal <= 2x.
- memory: peak RSS growth of the server's process tree during the first upload (``VmHWM`` after
  resetting it with ``/proc/<pid>/clear_refs``, or a 5 ms ``VmRSS`` sampler where that is refused)
  vs pyarrow's own peak growth for ``read_csv`` in a fresh subprocess. Goal <= 1.0x.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from bench import api
from bench.common import SectionResult, best_of
from bench.server import REPO, process_tree, regula_for, reset_peak_rss, status_kb

GOAL_TIME = 2.0
GOAL_MEMORY = 1.0

PYARROW_PEAK = r"""
import json, sys, time
from pathlib import Path
import pyarrow as pa, pyarrow.csv as pacsv

def kb(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])

pa.set_cpu_count(int(sys.argv[2]))
base = kb("VmRSS")
try:
    Path("/proc/self/clear_refs").write_text("5")
except OSError:
    pass
t0 = time.perf_counter()
table = pacsv.read_csv(sys.argv[1])
seconds = time.perf_counter() - t0
growth = kb("VmHWM") - base
print(json.dumps({"peak_growth_kb": growth, "seconds": seconds, "rows": table.num_rows}))
"""


class _Sampler:
    """Max VmRSS of a process tree, sampled every 5 ms (fallback when VmHWM cannot be reset)."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.peak = {p: status_kb(p, "VmRSS") for p in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for p in self.pids:
                self.peak[p] = max(self.peak[p], status_kb(p, "VmRSS"))
            time.sleep(0.005)

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def upload_with_memory(client: httpx.Client, server_pid: int, path: Path) -> tuple[float, int, str]:
    """Upload ``path``; (seconds, peak RSS growth of the server's process tree in kB, method)."""
    pids = process_tree(server_pid)
    before = {p: status_kb(p, "VmRSS") for p in pids}
    hwm_ok = all(reset_peak_rss(p) for p in pids)
    with _Sampler(pids) as sampler:
        seconds, _ = api.upload(client, path)
    if hwm_ok:
        growth = sum(max(0, status_kb(p, "VmHWM") - before[p]) for p in pids)
        return seconds, growth, "VmHWM"
    growth = sum(max(0, sampler.peak[p] - before[p]) for p in pids)
    return seconds, growth, "sampled VmRSS"


def run(res: SectionResult, *, quick: bool, threads: int, repeats: int, profile: bool) -> None:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    n_rows = 10_000 if quick else 1_000_000
    with tempfile.TemporaryDirectory(prefix="regula-bench-") as tmp:
        path = Path(tmp) / "ingest.csv"
        api.write_csv(path, n_rows, 20, label=False)
        quoted = Path(tmp) / "ingest-quoted-header.csv"
        api.write_csv(quoted, n_rows, 20, label=False, quoted_header=True)
        size_mb = path.stat().st_size / 1e6
        res.note(f"{n_rows:,} x 20 float CSV, {size_mb:.0f} MB; best of {repeats} for times")

        # pyarrow's peak first, in a fresh process, before anything else is cached.
        out = subprocess.run(
            [sys.executable, "-c", PYARROW_PEAK, str(path), str(threads)],
            capture_output=True,
            text=True,
            check=True,
            timeout=600,
            cwd=REPO,
        ).stdout
        pa_peak = json.loads(out.strip().splitlines()[-1])
        pa.set_cpu_count(threads)
        pa_times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            table = pacsv.read_csv(str(path))
            pa_times.append(time.perf_counter() - t0)
            assert table.num_rows == n_rows
            del table

        with regula_for(quick=quick) as server, httpx.Client(base_url=server.url) as client:
            ours_times, growths = [], []
            for _ in range(repeats):
                seconds, growth, method = upload_with_memory(client, server.pid, path)
                ours_times.append(seconds)
                growths.append(growth)
            # The same data with a quoted header, as pyarrow's and R's CSV writers produce it.
            quoted_times = [api.upload(client, quoted)[0] for _ in range(max(1, repeats - 1))]

    res.check(
        "upload time (client wall)",
        best_of(ours_times),
        "pyarrow.csv.read_csv",
        best_of(pa_times),
        "s",
        "<=",
        GOAL_TIME,
        note=f"{size_mb / best_of(ours_times):.0f} MB/s vs {size_mb / best_of(pa_times):.0f} MB/s",
    )
    res.info(
        'upload time, same data with a quoted header ("f0","f1",...)',
        best_of(quoted_times),
        "s",
        note=f"{best_of(quoted_times) / best_of(pa_times):.2f}x pyarrow's read_csv",
    )
    res.check(
        "peak RSS growth, first upload",
        growths[0] / 1024,
        "pyarrow read_csv (fresh process)",
        pa_peak["peak_growth_kb"] / 1024,
        "MB",
        "<=",
        GOAL_MEMORY,
        note=f"server process tree, {method}; later uploads: "
        + ", ".join(f"{g / 1024:.0f} MB" for g in growths[1:]),
    )
