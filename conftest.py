"""pytest collects the package's doctests too (``testpaths``); this file adapts that to the
optional packages, and gives CI its two options.

``fastopt.torch`` is the optional PyTorch adapter: without torch its module cannot be
imported, so its doctests are reported as skipped, with the reason, instead of failing the
collection of the whole run; so are ``fastopt.distributed``'s without mpi4py.
"""

import importlib.util
from pathlib import Path

import pytest

_PACKAGE = Path(__file__).parent / "fastopt"
# The modules whose doctests need an optional package, with the reason given without it.
_OPTIONAL = {
    _PACKAGE / "torch.py": ("torch", "fastopt.torch needs torch: pip install 'fastopt[torch]'"),
    _PACKAGE / "distributed.py": (
        "mpi4py",
        "fastopt.distributed's examples need mpi4py: pip install 'fastopt[mpi]'",
    ),
}


class _NeedsPackage(pytest.File):
    reason = ""

    def collect(self):
        pytest.skip(self.reason)


@pytest.hookimpl(wrapper=True)
def pytest_collect_file(file_path, parent):
    collectors = yield
    package, reason = _OPTIONAL.get(file_path, (None, ""))
    if package is not None and importlib.util.find_spec(package) is None:
        skipped = _NeedsPackage.from_parent(parent, path=file_path)
        skipped.reason = reason
        return [skipped]
    return collectors


# CI runs the suite twice: without torch (as a new user), then, with torch and the reference
# packages installed, only the tests the first run skipped (those still skipped, for want of a
# GPU or the CUDA simulator, skip again at once).


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fastopt")
    group.addoption(
        "--record-skips", metavar="FILE", help="write to FILE the ids of the skipped tests"
    )
    group.addoption("--only", metavar="FILE", help="run only the tests (and test files) FILE lists")


class _SkipRecorder:
    """Writes the ids of the skipped tests (and test files: skipped as a whole)."""

    def __init__(self, path: str) -> None:
        self.path = path
        open(path, "w", encoding="utf-8").close()

    def _record(self, report: pytest.CollectReport | pytest.TestReport) -> None:
        if report.skipped:
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
