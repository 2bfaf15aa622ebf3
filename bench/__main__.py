"""``python -m bench``: measure Regula against its peers in one run and write ``bench/RESULTS.md``.

Options: ``--quick`` (smoke mode: tiny sizes, seconds, skips peers that are not installed),
``--only training,lasso,serving,ingest,jobs,cnn,protocols`` (run some sections), ``--output PATH``
(where to write the results; default ``bench/RESULTS.md``), ``--threads N`` (threads for every
contender; default all cores available), ``--repeats N`` (interleaved rounds; the best or median
is reported), ``--profile`` (cProfile of the engine calls of sections 1-2, appended to the notes;
the servers are profiled from outside with py-spy, see bench/README.md), ``--clock cpu`` (time the
in-process sections by CPU time: steadier on a shared machine; needs ``--threads 1``).

OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE, set on some processors by the environment, make a current
numpy choose a slower OpenBLAS kernel; they are removed here, before numpy is imported, for this
process and the servers and clients it starts (tests and CI keep their environment). RESULTS.md
lists the kernel that ran.
"""

from __future__ import annotations

import os

from bench.machine import OPENBLAS_ENV_VARS

REMOVED_ENV = {k: os.environ.pop(k) for k in OPENBLAS_ENV_VARS if k in os.environ}

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

from bench.common import SectionResult  # noqa: E402
from bench.report import write_results  # noqa: E402

SECTIONS = {
    "training": "1. Engine training throughput",
    "lasso": "2. Sparse linear models (Lasso)",
    "serving": "3. Prediction service",
    "ingest": "4. Ingest (CSV upload)",
    "jobs": "5. Jobs",
    "cnn": "6. Image CNN training",
    "protocols": "7. Serving protocols (OIP v2, MLflow) and pruned serving",
    "hardening": "8. Hardening: memory bounds and a responsive event loop",
}
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "RESULTS.md"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke mode: tiny sizes, a few seconds")
    p.add_argument("--only", default="", help="comma-separated sections: " + ",".join(SECTIONS))
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="results markdown file")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--repeats", type=int, default=None, help="rounds per measurement")
    p.add_argument("--profile", action="store_true", help="cProfile the engine's hot calls")
    p.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="clock of the in-process sections (training, lasso); cpu needs --threads 1",
    )
    args = p.parse_args(argv)
    names = [s.strip() for s in args.only.split(",") if s.strip()] or list(SECTIONS)
    unknown = [s for s in names if s not in SECTIONS]
    if unknown:
        p.error(f"unknown section(s) {unknown}; choose from {list(SECTIONS)}")
    args.sections = names
    if args.clock == "cpu" and args.threads != 1:
        p.error("--clock cpu measures busy time of one thread: use it with --threads 1")
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    return args


def run_section(name: str, args: argparse.Namespace) -> SectionResult:
    import importlib

    res = SectionResult(name=name, title=SECTIONS[name])
    print(f"== {res.title} ==", flush=True)
    t0 = time.perf_counter()
    try:
        module = importlib.import_module(f"bench.{name}")
        module.run(
            res, quick=args.quick, threads=args.threads, repeats=args.repeats, profile=args.profile
        )
    except Exception as exc:  # one broken section must not hide the others' figures
        res.error = f"{type(exc).__name__}: {exc}"
        print(f"[{name}] ERROR: {res.error}", flush=True)
        traceback.print_exc()
    res.seconds = time.perf_counter() - t0
    return res


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from bench.common import set_clock
    from bench.machine import describe

    set_clock(args.clock)
    desc = describe(REMOVED_ENV, args.threads)
    desc["clock"] = args.clock
    blas = [b for b in desc["blas"] if b["user_api"] == "blas"]
    print(
        f"bench: {desc['cpu']}, {desc['cores']} cores, {args.threads} thread(s); BLAS "
        + "; ".join(f"{b['internal_api']} {b['version']} ({b['architecture']})" for b in blas)
        + (f"; removed {sorted(REMOVED_ENV)}" if REMOVED_ENV else ""),
        flush=True,
    )
    t0 = time.perf_counter()
    from bench.server import close_shared

    try:
        results = [run_section(name, args) for name in args.sections]
    finally:
        close_shared()
    desc["loadavg_at_end"] = os.getloadavg()
    checks = [c for r in results for c in r.checks]
    passed = sum(c.passed for c in checks)
    print(
        f"== summary: {passed}/{len(checks)} goals met, "
        f"{sum(r.error is not None for r in results)} section error(s), "
        f"{time.perf_counter() - t0:.1f} s ==",
        flush=True,
    )
    for c in checks:
        print(f"  {c.verdict}  [{c.section}] {c.name} vs {c.peer_name}: {c.ratio:.2f}x")
    write_results(
        args.output,
        results,
        desc,
        command="python -m bench " + " ".join(sys.argv[1:] if argv is None else argv),
    )
    print(f"wrote {args.output}", flush=True)
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
