import sys
from pathlib import Path

import pytest

# The scripts the tests run in other processes (under mpiexec, torchrun, other thread counts)
# hold no tests; --doctest-modules would import them here (torch_zero_worker needs torch).
collect_ignore_glob = ["*_worker.py"]

# The checkout under test comes first, whatever else is installed; then the test helpers.
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))

# CI runs the suite twice: without torch (as a new user), then, with torch and the reference
# packages installed, only the tests the first run skipped for want of them.
_MISSING_MODULE = "could not import"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fastopt")
    group.addoption(
        "--record-skips",
        metavar="FILE",
        help="write to FILE the ids of the tests skipped because a module is missing",
    )
    group.addoption("--only", metavar="FILE", help="run only the tests (and test files) FILE lists")


class _SkipRecorder:
    """Writes the ids of the tests (and test files) skipped because a module is missing."""

    def __init__(self, path: str) -> None:
        self.path = path
        open(path, "w", encoding="utf-8").close()

    def _record(self, report: pytest.CollectReport | pytest.TestReport) -> None:
        if report.skipped and _MISSING_MODULE in str(report.longrepr):
            with open(self.path, "a", encoding="utf-8") as file:
                file.write(report.nodeid + "\n")

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._record(report)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        self._record(report)


def pytest_configure(config: pytest.Config) -> None:
    path = config.getoption("record_skips")
    if path and not hasattr(config, "workerinput"):  # in the controller of xdist's workers
        config.pluginmanager.register(_SkipRecorder(path))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    path = config.getoption("only")
    if not path:
        return
    with open(path, encoding="utf-8") as file:
        wanted = {line.strip() for line in file if line.strip()}
    kept = [item for item in items if item.nodeid in wanted or item.nodeid.split("::")[0] in wanted]
    config.hook.pytest_deselected(items=[item for item in items if item not in kept])
    items[:] = kept
