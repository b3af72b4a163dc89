"""Compile time: import and first-step latency with a cold and a warm numba cache.

Kernels are compiled on their first call and cached on disk (``cache=True``). Each rule is
measured in fresh interpreters that share a new, empty ``NUMBA_CACHE_DIR`` and
``FASTOPT_CACHE_DIR``: the first generates the kernel module and compiles everything (cold),
the second loads it back (warm). Inside each interpreter the
imports are timed one by one (NumPy, numba, fastopt), then the first step on a small array
(the serial kernel) and on a large one (the multithreaded kernel).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastopt._jit import PARALLEL_THRESHOLD
from fastopt.bench._subprocess import child_env

__all__ = ["WARM_TARGET_S", "measure_compile_times"]

#: Target for ``import fastopt`` plus the first step, warm cache.
WARM_TARGET_S = 0.5

_SMALL = 1 << 12
_LARGE = max(1 << 20, 2 * PARALLEL_THRESHOLD)

# Runs in the child; the clock starts before NumPy is imported.
_PROBE = """
import time
t0 = time.perf_counter()
import numpy as np
t1 = time.perf_counter()
import numba
t2 = time.perf_counter()
import fastopt
t3 = time.perf_counter()
from fastopt.bench.cases import RULES
case = RULES[{rule!r}]
times = {{"import_numpy_s": t1 - t0, "import_numba_s": t2 - t1, "import_fastopt_s": t3 - t2}}
for label, n in (("first_step_serial_s", {small}), ("first_step_parallel_s", {large})):
    param = np.ones(n, np.float32)
    grad = np.full(n, 0.5, np.float32)
    opt = case.make(param)
    start = time.perf_counter()
    opt.step(grad)
    times[label] = time.perf_counter() - start
    if label == "first_step_serial_s":
        times["import_and_first_step_s"] = time.perf_counter() - t0
print(json.dumps(times))
"""


# numba alone, for comparison: the first call of a one-loop cached function.
_BASELINE_MODULE = """
import numba

@numba.njit(cache=True)
def total(a):
    s = 0.0
    for x in a:
        s += x
    return s
"""

_BASELINE = """
import json, sys, time
t0 = time.perf_counter()
import numpy as np
t1 = time.perf_counter()
import numba
t2 = time.perf_counter()
sys.path.insert(0, {directory!r})
import fastopt_numba_baseline
a = np.ones({small}, np.float32)
start = time.perf_counter()
fastopt_numba_baseline.total(a)
end = time.perf_counter()
print(json.dumps({{"import_numpy_s": t1 - t0, "import_numba_s": t2 - t1,
                  "first_call_s": end - start, "import_and_first_call_s": end - t0}}))
"""


def _run(code: str, cache_dir: str, what: str) -> dict[str, float]:
    # Both caches start empty: numba's compiled code and fastopt's generated kernel modules.
    env = child_env(NUMBA_CACHE_DIR=cache_dir, FASTOPT_CACHE_DIR=cache_dir)
    start = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - start
    if completed.returncode != 0:
        last = completed.stderr.strip().splitlines()[-1:] or ["no message"]
        raise RuntimeError(f"compile-time probe of {what} failed: {last[0]}")
    times = json.loads(completed.stdout.strip().splitlines()[-1])
    times["process_wall_s"] = wall
    return times


def _probe(rule: str, cache_dir: str) -> dict[str, float]:
    code = "import json\n" + _PROBE.format(rule=rule, small=_SMALL, large=_LARGE)
    return _run(code, cache_dir, repr(rule))


def _numba_baseline() -> dict[str, dict[str, float]]:
    with tempfile.TemporaryDirectory(prefix="fastopt-numba-baseline-") as directory:
        Path(directory, "fastopt_numba_baseline.py").write_text(_BASELINE_MODULE)
        code = _BASELINE.format(directory=directory, small=_SMALL)
        cache_dir = str(Path(directory, "cache"))
        cold = _run(code, cache_dir, "numba alone")
        return {"cold": cold, "warm": _run(code, cache_dir, "numba alone")}


def measure_compile_times(rules: Sequence[str]) -> dict[str, Any]:
    """Cold- and warm-cache import and first-step times of each rule, from fresh processes.

    Returns
    -------
    dict
        ``rules``: ``{rule: {"cold": times, "warm": times}}`` where ``times`` has
        ``import_numpy_s``, ``import_numba_s``, ``import_fastopt_s`` (fastopt's own import,
        numba's excluded), ``first_step_serial_s`` (2^12 elements),
        ``first_step_parallel_s`` (a size above the parallel threshold, ``large_size``),
        ``import_and_first_step_s`` (from before ``import numpy`` to the end of the first
        serial step) and ``process_wall_s`` (the whole child, interpreter start included);
        ``numba_baseline``: the same for a one-loop cached numba function (``first_call_s``,
        ``import_and_first_call_s``): what numba costs before fastopt adds anything;
        ``small_size``, ``large_size`` and ``warm_target_s``.
    """
    results: dict[str, Any] = {}
    for rule in rules:
        with tempfile.TemporaryDirectory(prefix="fastopt-numba-cache-") as cache_dir:
            results[rule] = {"cold": _probe(rule, cache_dir), "warm": _probe(rule, cache_dir)}
    return {
        "rules": results,
        "numba_baseline": _numba_baseline(),
        "small_size": _SMALL,
        "large_size": _LARGE,
        "warm_target_s": WARM_TARGET_S,
    }
