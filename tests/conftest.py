"""Fixtures shared by every test folder, and a check that a parallel run ran every test."""

import os
from collections import Counter
from typing import Any

import pytest

# Worker processes and tests must not oversubscribe the 2 cores with BLAS threads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")


class _EveryItemReported:
    """Under pytest-xdist, fail a run that reports fewer tests than the workers collected.

    A worker that dies mid-run already fails the run (``--max-worker-restart=0`` also stops it),
    but a scheduler that drops items (pytest-xdist's file and group modes key work by node id, so
    two items with one node id run once) otherwise ends "all passed". Each item that ran has at
    least one report that settles it: its call, or a setup that failed or skipped.
    """

    def __init__(self) -> None:
        self.collected: int | None = None
        self.reported = 0

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        self.collected = len(ids)  # every worker collects the same list (xdist checks)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call" or (report.when == "setup" and not report.passed):
            self.reported += 1

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.collected is None or self.reported >= self.collected:  # subtests report more
            return
        if exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write("\n")  # after the progress line
            reporter.write_sep(
                "=",
                f"ERROR: the workers collected {self.collected} tests, "
                f"{self.reported} were reported",
                red=True,
            )


@pytest.hookimpl(trylast=True)  # after -m and -k have deselected: count what runs
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The integration lane hands whole files to two workers in the order of this list. Files
    # marked `first` lead: the bench smoke test, one long file that, started late, would be the
    # last one left running. Then files with more tests come first (pytest-xdist's own reorder,
    # which --no-loadscope-reorder turns off), so that the run ends on short files. A stable
    # sort: each file's tests keep their order.
    per_file = Counter(item.path for item in items)
    items.sort(key=lambda item: (item.get_closest_marker("first") is None, -per_file[item.path]))


def pytest_configure(config: pytest.Config) -> None:
    # The controller of an xdist run only: its workers have ``workerinput``.
    if config.getoption("numprocesses", None) and not hasattr(config, "workerinput"):
        config.pluginmanager.register(_EveryItemReported(), "every-item-reported")
