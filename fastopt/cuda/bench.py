"""GPU benchmark: update throughput per rule against the device's own copy bandwidth.

For each rule and size, one optimizer step is timed with CUDA events over ``repeats`` steps
after ``warmup`` steps (compilation included in the warm-up). Throughput is reported as the
bytes a step must move at least (every array read once, every updated array written once:
``(3 + 2 * state arrays) * size * itemsize``) per second, and as a percentage of the
measured device-to-device copy bandwidth (``cuMemcpyDtoD`` of a buffer as large as the
step's arrays, read plus write), which is the ceiling for a memory-bound update.

Baselines in the same run, when installed: torch's fused CUDA optimizers (``fused=True``,
``foreach=True`` where torch has no fused kernel) and CuPy running :mod:`fastopt.reference`
(the NumPy reference: one element-wise kernel per operation, as array code on a GPU does).
All timings are on the legacy default stream, which torch and CuPy use by default.

Run it with ``python benches/bench_cuda.py`` or call :func:`run` and :func:`format_table`.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

import fastopt
from fastopt import reference

__all__ = ["RULES", "Measurement", "copy_bandwidth", "format_table", "run"]


@dataclass(frozen=True)
class BenchRule:
    """One rule as each implementation spells it."""

    fastopt_class: type[fastopt.Optimizer]
    kwargs: dict[str, Any]
    state: tuple[str, ...]  # state arrays a step reads and writes
    torch_name: str
    torch_kwargs: dict[str, Any]
    reference_step: Callable[..., None]
    reference_kwargs: dict[str, Any]


RULES: dict[str, BenchRule] = {
    "sgd": BenchRule(
        fastopt.SGD,
        {"lr": 1e-3},
        (),
        "SGD",
        {"lr": 1e-3},
        reference.sgd_step,
        {"lr": 1e-3, "step": 2},
    ),
    "sgd_momentum": BenchRule(
        fastopt.SGD,
        {"lr": 1e-3, "momentum": 0.9},
        ("momentum_buffer",),
        "SGD",
        {"lr": 1e-3, "momentum": 0.9},
        reference.sgd_step,
        {"lr": 1e-3, "momentum": 0.9, "step": 2},
    ),
    "adagrad": BenchRule(
        fastopt.Adagrad,
        {"lr": 1e-2},
        ("sum",),
        "Adagrad",
        {"lr": 1e-2},
        reference.adagrad_step,
        {"lr": 1e-2, "step": 1},
    ),
    "rmsprop": BenchRule(
        fastopt.RMSprop,
        {"lr": 1e-2},
        ("square_avg",),
        "RMSprop",
        {"lr": 1e-2},
        reference.rmsprop_step,
        {"lr": 1e-2},
    ),
    "adam": BenchRule(
        fastopt.Adam,
        {"lr": 1e-3},
        ("exp_avg", "exp_avg_sq"),
        "Adam",
        {"lr": 1e-3},
        reference.adam_step,
        {"lr": 1e-3, "step": 1},
    ),
    "adamw": BenchRule(
        fastopt.AdamW,
        {"lr": 1e-3},
        ("exp_avg", "exp_avg_sq"),
        "AdamW",
        {"lr": 1e-3},
        reference.adam_step,
        {"lr": 1e-3, "step": 1, "weight_decay": 1e-2, "decoupled_weight_decay": True},
    ),
}

SIZES = tuple(1 << exponent for exponent in range(24, 29))


@dataclass(frozen=True)
class Measurement:
    """One rule, implementation and size: seconds per step on the device and on the host."""

    rule: str
    implementation: str
    size: int
    dtype: str
    device_seconds: float  # per step, CUDA events
    host_seconds: float  # per step, wall clock of the enqueueing loop
    bytes_per_step: int
    copy_bytes_per_second: float

    @property
    def bytes_per_second(self) -> float:
        return self.bytes_per_step / self.device_seconds if self.device_seconds else math.nan

    @property
    def percent_of_copy(self) -> float:
        return 100.0 * self.bytes_per_second / self.copy_bytes_per_second

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "bytes_per_second": self.bytes_per_second,
            "percent_of_copy": self.percent_of_copy,
        }


def _time(step: Callable[[], None], warmup: int, repeats: int) -> tuple[float, float]:
    """Seconds per call: (device, from CUDA events; host, wall clock of the loop)."""
    from numba import cuda

    for _ in range(warmup):
        step()
    cuda.synchronize()
    start, end = cuda.event(), cuda.event()
    start.record()
    began = time.perf_counter()
    for _ in range(repeats):
        step()
    host = (time.perf_counter() - began) / repeats
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / repeats, host


def copy_bandwidth(nbytes: int, warmup: int = 2, repeats: int = 10) -> float:
    """Device-to-device copy bandwidth in bytes per second (read plus write)."""
    from numba import cuda

    source = cuda.device_array(nbytes, np.uint8)
    target = cuda.device_array(nbytes, np.uint8)
    seconds, _ = _time(lambda: target.copy_to_device(source), warmup, repeats)
    return 2 * nbytes / seconds if seconds else math.nan


def _fastopt_step(rule: BenchRule, size: int, dtype: np.dtype):
    from numba import cuda

    rng = np.random.default_rng(0)
    param = cuda.to_device(rng.standard_normal(size, dtype=np.float32).astype(dtype))
    grad = cuda.to_device(rng.standard_normal(size, dtype=np.float32).astype(dtype))
    opt = rule.fastopt_class(param, **rule.kwargs)
    return "fastopt", lambda: opt.step(grad)


def _torch_step(rule: BenchRule, size: int, dtype: np.dtype):
    import torch

    param = torch.randn(size, device="cuda", dtype=getattr(torch, dtype.name))
    param.grad = torch.randn_like(param)
    optimizer_class = getattr(torch.optim, rule.torch_name)
    for flavour in ({"fused": True}, {"foreach": True}):
        try:
            opt = optimizer_class([param], **rule.torch_kwargs, **flavour)
            opt.step()
        except (RuntimeError, TypeError, ValueError):
            continue
        return f"torch {next(iter(flavour))}", opt.step
    raise RuntimeError(f"torch.optim.{rule.torch_name} has neither fused nor foreach on CUDA")


def _cupy_step(rule: BenchRule, size: int, dtype: np.dtype):
    import cupy

    rng = cupy.random.default_rng(0)
    param = rng.standard_normal(size, dtype=cupy.float32).astype(dtype)
    grad = rng.standard_normal(size, dtype=cupy.float32).astype(dtype)
    state = [cupy.zeros_like(param) for _ in rule.state]
    return "cupy reference", lambda: rule.reference_step(
        param, grad, *state, **rule.reference_kwargs
    )


def _baselines() -> list[Callable[..., tuple[str, Callable[[], None]]]]:
    """The baselines whose library is installed and sees a GPU."""
    found = []
    try:
        import torch

        if torch.cuda.is_available():
            found.append(_torch_step)
    except ImportError:
        pass
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            found.append(_cupy_step)
    except (ImportError, RuntimeError):  # CuPy without a driver raises at the query
        pass
    return found


def _free_device_memory() -> None:
    from numba import cuda

    from fastopt.cuda._kernels import SIMULATOR

    gc.collect()
    if not SIMULATOR:  # numba defers frees; large sizes need the memory back now
        cuda.current_context().deallocations.clear()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass
    try:
        import cupy

        cupy.get_default_memory_pool().free_all_blocks()
    except ImportError:
        pass


def run(
    rules: Iterable[str] = tuple(RULES),
    sizes: Sequence[int] = SIZES,
    dtype: str = "float32",
    warmup: int = 3,
    repeats: int = 20,
    baselines: bool = True,
    report: Callable[[Measurement], None] | None = None,
) -> list[Measurement]:
    """Time every rule at every size, fastopt and (if ``baselines``) torch and CuPy.

    Parameters
    ----------
    rules
        Names from :data:`RULES`.
    sizes
        Elements per parameter; the default is 2^24 ... 2^28.
    dtype
        ``"float32"`` or ``"float64"``.
    warmup, repeats
        Untimed steps first (compilation, allocation), then timed steps.
    baselines
        Also time torch's fused optimizers and CuPy running the NumPy reference.
    report
        Called with each measurement as soon as it is made (progress output).

    Raises
    ------
    RuntimeError
        If no CUDA GPU is usable (the reason is in the message).
    """
    from fastopt.cuda import availability

    usable, reason = availability()
    if not usable:
        raise RuntimeError(f"no GPU benchmark: {reason}")
    unknown = set(rules) - set(RULES)
    if unknown:
        raise ValueError(f"unknown rules {sorted(unknown)}; choose from {sorted(RULES)}")
    element = np.dtype(dtype)
    implementations = [_fastopt_step] + (_baselines() if baselines else [])
    results = []
    for size in sizes:
        for name in rules:
            rule = RULES[name]
            traffic = (3 + 2 * len(rule.state)) * size * element.itemsize
            copy = copy_bandwidth(traffic // 2, warmup, repeats)
            _free_device_memory()
            for make in implementations:
                label, step = make(rule, size, element)
                device, host = _time(step, warmup, repeats)
                measurement = Measurement(
                    name, label, size, element.name, device, host, traffic, copy
                )
                results.append(measurement)
                if report is not None:
                    report(measurement)
                del step
                _free_device_memory()
    return results


def format_table(results: Iterable[Measurement]) -> str:
    """A plain-text table: one line per measurement."""
    lines = [
        f"{'rule':<13}{'implementation':<17}{'elements':>11}{'dtype':>9}"
        f"{'ms/step':>10}{'host ms':>9}{'GB/s':>9}{'% copy':>8}"
    ]
    for m in results:
        exponent = m.size.bit_length() - 1
        elements = f"2^{exponent}" if m.size == 1 << exponent else str(m.size)
        lines.append(
            f"{m.rule:<13}{m.implementation:<17}{elements:>11}{m.dtype:>9}"
            f"{m.device_seconds * 1e3:>10.3f}{m.host_seconds * 1e3:>9.3f}"
            f"{m.bytes_per_second / 1e9:>9.1f}{m.percent_of_copy:>8.1f}"
        )
    return "\n".join(lines)
