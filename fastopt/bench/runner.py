"""Timing: warm-up outside the clock, calibrated batches, medians, quartiles and extremes.

This module is plain Python (no numba, no torch) so the process that times torch uses the
same code as the one that times fastopt.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

__all__ = [
    "Timing",
    "TimingPolicy",
    "per_call_times",
    "summarize",
    "time_call",
    "time_interleaved",
]


@dataclass(frozen=True)
class TimingPolicy:
    """How long and how often to time one case.

    Attributes
    ----------
    warmup
        Untimed calls first (the first call of a kernel compiles it or loads it from cache);
        after the first, they stop once they have taken a quarter of ``max_seconds``.
    repeats
        Samples wanted; each sample is a batch of calls, timed together.
    min_repeats
        Samples taken even when they exceed ``max_seconds``.
    sample_seconds
        Each batch runs at least this long, so the clock's resolution and one-off delays do
        not matter for microsecond calls.
    max_seconds
        Time budget for the samples of one case; sampling stops once it is spent.
    """

    warmup: int = 2
    repeats: int = 15
    min_repeats: int = 5
    sample_seconds: float = 0.02
    max_seconds: float = 4.0


@dataclass(frozen=True)
class Timing:
    """Per-call times of one case in nanoseconds (each sample divided by its batch size).

    Attributes
    ----------
    median_ns, min_ns, max_ns
        Median, fastest and slowest sample.
    q1_ns, q3_ns
        First and third quartiles of the samples (linear interpolation between the sorted
        samples, NumPy's default): the middle half of the samples lies between them.
    samples
        Number of samples.
    calls_per_sample
        Calls in each timed batch.
    """

    median_ns: float
    min_ns: float
    samples: int
    calls_per_sample: int
    q1_ns: float
    q3_ns: float
    max_ns: float

    @property
    def spread(self) -> float | None:
        """Interquartile range over the median (None with fewer than two samples)."""
        if self.samples < 2 or self.median_ns <= 0:
            return None
        return (self.q3_ns - self.q1_ns) / self.median_ns

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _calibrate(step: Callable[[], object], policy: TimingPolicy) -> tuple[int, float]:
    """Warm ``step`` up; return the calls per sample and the time of one call (ns)."""
    warmup_end = time.perf_counter_ns() + policy.max_seconds * 0.25e9
    for done in range(policy.warmup):
        if done and time.perf_counter_ns() > warmup_end:
            break  # slow calls (a NumPy step on 2^26 elements) need no second warm-up
        step()
    start = time.perf_counter_ns()
    step()
    single = max(time.perf_counter_ns() - start, 1)
    return max(1, math.ceil(policy.sample_seconds * 1e9 / single)), float(single)


def _sample(step: Callable[[], object], calls: int) -> tuple[float, int]:
    start = time.perf_counter_ns()
    for _ in range(calls):
        step()
    end = time.perf_counter_ns()
    return (end - start) / calls, end


def summarize(samples: Sequence[float], calls_per_sample: int) -> Timing:
    """The :class:`Timing` of per-call ``samples`` (ns), each a batch of ``calls_per_sample``.

    Examples
    --------
    >>> from fastopt.bench.runner import summarize
    >>> timing = summarize([14.0, 10.0, 12.0, 11.0, 13.0], calls_per_sample=1)
    >>> timing.median_ns, timing.q1_ns, timing.q3_ns, timing.min_ns, timing.max_ns
    (12.0, 11.0, 13.0, 10.0, 14.0)
    >>> round(timing.spread, 4)
    0.1667
    """
    ordered = sorted(samples)
    if len(ordered) > 1:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    else:
        q1 = q3 = ordered[0]
    return Timing(
        median_ns=statistics.median(ordered),
        min_ns=ordered[0],
        samples=len(ordered),
        calls_per_sample=calls_per_sample,
        q1_ns=q1,
        q3_ns=q3,
        max_ns=ordered[-1],
    )


def time_call(step: Callable[[], object], policy: TimingPolicy) -> Timing:
    """Time ``step()`` under ``policy``: warm-up, calibrate a batch size, then sample."""
    return time_interleaved({"step": step}, policy)["step"]


def time_interleaved(
    steps: Mapping[str, Callable[[], object]], policy: TimingPolicy
) -> dict[str, Timing]:
    """Time several implementations of one case, one batch of each in turn.

    On a shared machine the memory bandwidth drifts over seconds; sampling the
    implementations round-robin exposes them to the same conditions, so their ratios (the
    figures that matter: % of the ceiling, speed-ups) are far steadier than when each is
    timed in its own stretch of time. The budget covers all of them together.
    """
    calls = {name: _calibrate(step, policy)[0] for name, step in steps.items()}
    # A call slower than a sample is its own sample (one call per batch).
    samples: dict[str, list[float]] = {name: [] for name in steps}
    budget_end = time.perf_counter_ns() + policy.max_seconds * 1e9 * len(steps)
    for _ in range(policy.repeats):
        end = 0
        for name, step in steps.items():
            per_call, end = _sample(step, calls[name])
            samples[name].append(per_call)
        if len(samples[name]) >= policy.min_repeats and end > budget_end:
            break
    return {name: summarize(samples[name], calls[name]) for name in steps}


def per_call_times(step: Callable[[], object], calls: int, warmup: int = 100) -> list[int]:
    """Nanoseconds of each of ``calls`` individually timed calls of ``step()``."""
    for _ in range(warmup):
        step()
    clock = time.perf_counter_ns
    times = []
    for _ in range(calls):
        start = clock()
        step()
        times.append(clock() - start)
    return times
