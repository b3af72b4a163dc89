"""Timing several implementations side by side, each in its own long-lived process.

A worker is ``python -c SOURCE ARGS...`` whose SOURCE defines ``setup(n)`` (a no-argument
step for size ``n``) and ends with :data:`SERVE`: it reads ``[n, reps]`` lines and answers the
mean time of ``reps`` steps. :func:`rounds` times every worker in turn, round after round, so
that each round's ratios see the same machine; :func:`median_ratio` takes the median of those.
All workers wait passively (``OMP_WAIT_POLICY=PASSIVE``): a spinning OpenMP pool in one would
steal the cores of the next.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence

#: The end of every worker's source: serve timing requests on stdin.
SERVE = r"""
import json as _json, sys as _sys, time as _time
_steps = {}
for _line in _sys.stdin:
    _n, _reps = _json.loads(_line)
    if _n not in _steps:
        _steps[_n] = setup(_n)
        for _ in range(3):
            _steps[_n]()
    _step = _steps[_n]
    _start = _time.perf_counter()
    for _ in range(_reps):
        _step()
    print(_json.dumps((_time.perf_counter() - _start) / _reps), flush=True)
"""


def parse_size(text: str) -> int:
    """``2^20`` or ``1048576``."""
    base, _, power = text.partition("^")
    return int(base) ** int(power) if power else int(base)


class Workers:
    """Worker processes by name: ``{name: (source, args, extra environment)}``."""

    def __init__(self, specs: Mapping[str, tuple[str, Sequence[str], Mapping[str, str]]]):
        self.processes = {
            name: subprocess.Popen(
                [sys.executable, "-c", source + SERVE, *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE", **environment},
                cwd="/",
            )
            for name, (source, args, environment) in specs.items()
        }

    def time(self, name: str, n: int, reps: int) -> float:
        worker = self.processes[name]
        worker.stdin.write(json.dumps([n, reps]) + "\n")
        worker.stdin.flush()
        return json.loads(worker.stdout.readline())

    def rounds(self, n: int, count: int, bytes_per_element: int = 28) -> dict[str, list[float]]:
        """Each worker's time per step at size ``n`` in ``count`` interleaved rounds."""
        reps = max(3, int(2e8 // (n * bytes_per_element)))
        times: dict[str, list[float]] = {name: [] for name in self.processes}
        for _ in range(count):
            for name in self.processes:
                times[name].append(self.time(name, n, reps))
        return times

    def close(self) -> None:
        for worker in self.processes.values():
            worker.stdin.close()
            worker.wait()


def median_ratio(times: Mapping[str, list[float]], a: str, b: str) -> float:
    """The median over rounds of ``a``'s time over ``b``'s."""
    return statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))


def medians(times: Mapping[str, list[float]]) -> Iterator[str]:
    """``name 12.3 µs`` per worker."""
    for name, values in times.items():
        yield f"{name} {statistics.median(values) * 1e6:.1f} µs"
