"""pytest-benchmark suites: ``pytest benches`` (the test run, ``pytest``, does not collect them).

Options: ``--fastopt-quick`` (the headline rules at 2^12 ... 2^24 float32, few rounds: a few
minutes on 2 cores) and ``--fastopt-no-torch``. Each benchmark's group is its rule, dtype and
size, so pytest-benchmark prints the implementations of one case side by side; group
differently with e.g. ``--benchmark-group-by=param:rule,param:implementation``.

torch is timed in this same process, so both OpenMP runtimes (torch's and numba's) are set to
wait passively (``OMP_WAIT_POLICY=PASSIVE``): with the default active wait, torch's idle
threads keep spinning after each torch call and slow the next numba kernel. ``fastopt bench``
times torch in a separate process instead and leaves the wait policy alone.
"""

import os
import sys
from pathlib import Path

import pytest

# Before numba or torch start their thread pools (they read it once, at start-up).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fastopt.bench.cases import (
    FULL_SIZES,
    HEADLINE_RULES,
    IMPLEMENTATIONS,
    QUICK_SIZES,
    RULES,
    size_label,
)
from fastopt.bench.suite import FULL_FLOAT64_SIZES
from fastopt.bench.torch_child import torch_installed


def pytest_addoption(parser):
    group = parser.getgroup("fastopt benchmarks")
    group.addoption(
        "--fastopt-quick",
        action="store_true",
        help="headline rules, float32 2^12 ... 2^24, few rounds",
    )
    group.addoption("--fastopt-no-torch", action="store_true", help="skip torch.optim")


def _quick(config) -> bool:
    return config.getoption("fastopt_quick")


def pytest_generate_tests(metafunc):
    config = metafunc.config
    names = metafunc.fixturenames
    if "rule" in names:
        rules = HEADLINE_RULES if _quick(config) else tuple(RULES)
        metafunc.parametrize("rule", rules)
    if "dtype" in names and "size" in names:
        if _quick(config):
            grid = [("float32", n) for n in QUICK_SIZES]
        else:
            grid = [("float32", n) for n in FULL_SIZES]
            grid += [("float64", n) for n in FULL_FLOAT64_SIZES]
        ids = [f"{dtype}-{size_label(n)}" for dtype, n in grid]
        metafunc.parametrize(("dtype", "size"), grid, ids=ids)
    if "implementation" in names:
        wanted = [
            name
            for name in metafunc.definition.get_closest_marker("implementations").args
            if name in IMPLEMENTATIONS or name == "fastopt-flat"
        ]
        if config.getoption("fastopt_no_torch") or not torch_installed():
            wanted = [name for name in wanted if not name.startswith("torch-")]
        metafunc.parametrize("implementation", wanted)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "implementations(*names): the implementations a benchmark compares"
    )


def pytest_collection_modifyitems(config, items):
    if _quick(config):
        for item in items:
            item.add_marker(pytest.mark.benchmark(max_time=0.2, min_rounds=3))
