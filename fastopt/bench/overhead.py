"""The fixed cost of one ``opt.step`` call, measured where the arithmetic is negligible.

At 2^12 float32 elements an Adam update is about a microsecond of arithmetic; the rest of
``Adam.step`` is Python (checking the gradient, evaluating schedules, building the
hyperparameter row) and numba's dispatch. Each call is timed on its own and the median of
many is reported, beside the same update through the serial kernel alone (dispatch plus
arithmetic, no Python around it) and the same-bytes ceiling through ``launch``.
"""

from __future__ import annotations

import statistics
from typing import Any

import numpy as np

import fastopt
from fastopt._declared import row_of
from fastopt._launch import single_segment
from fastopt.bench.ceiling import stream_step
from fastopt.bench.runner import per_call_times

__all__ = ["OVERHEAD_SIZE", "OVERHEAD_TARGET_NS", "measure_step_overhead"]

OVERHEAD_SIZE = 1 << 12
OVERHEAD_TARGET_NS = 5_000


def _summary(times: list[int]) -> dict[str, float]:
    ordered = sorted(times)
    return {
        "median_ns": statistics.median(ordered),
        "p10_ns": ordered[len(ordered) // 10],
        "min_ns": ordered[0],
    }


def measure_step_overhead(
    size: int = OVERHEAD_SIZE, dtype: str = "float32", calls: int = 20_000
) -> dict[str, Any]:
    """Per-call times of ``Adam.step`` on one ``size``-element array, and of its parts.

    Returns
    -------
    dict
        ``step`` (``opt.step(grad)``), ``kernel`` (the serial Adam driver called directly)
        and ``ceiling`` (the same-bytes stream through ``launch``), each with ``median_ns``,
        ``p10_ns`` and ``min_ns``; ``python_ns`` (median step minus median kernel: the cost
        of the Python around the kernel); ``size``, ``dtype``, ``calls`` and
        ``target_ns``.
    """
    rng = np.random.default_rng(0)
    param = rng.standard_normal(size, dtype=np.dtype(dtype).type)
    grad = rng.standard_normal(size, dtype=np.dtype(dtype).type)
    opt = fastopt.Adam(param.copy(), lr=1e-3)
    step = _summary(per_call_times(lambda: opt.step(grad), calls))

    exp_avg, exp_avg_sq = np.zeros_like(param), np.zeros_like(param)
    adam = fastopt.Adam(np.zeros(1))
    row = row_of(adam._rule, adam.param_groups[0], 10, False)
    hyper, bounds, serial = np.array([row]), single_segment(size), adam._kernels.serial
    kernel_times = per_call_times(
        # No max_exp_avg_sq, master copy or compensation; rounding to nearest.
        lambda: serial(bounds, hyper, param, grad, exp_avg, exp_avg_sq, None, None, None, None),
        calls,
    )
    kernel = _summary(kernel_times)
    ceiling = _summary(per_call_times(lambda: stream_step(param, grad, exp_avg, exp_avg_sq), calls))
    return {
        "size": size,
        "dtype": dtype,
        "calls": calls,
        "target_ns": OVERHEAD_TARGET_NS,
        "step": step,
        "kernel": kernel,
        "ceiling": ceiling,
        # Two medians of a noisy machine: never below zero.
        "python_ns": max(0.0, step["median_ns"] - kernel["median_ns"]),
    }
