"""The comparison run: every rule x dtype x size x implementation, as rows of results.

fastopt, the NumPy reference and the same-bytes ceiling are timed in this process; torch
(when installed) is timed in a child process (:mod:`fastopt.bench.torch_child`), because
two OpenMP runtimes in one process slow each other down: torch's worker threads keep
spinning after each of its operations and steal the cores the next numba kernel needs.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numba
import numpy as np

import fastopt
from fastopt._reduce import block_count, block_sums_of_squares
from fastopt.bench import torch_child
from fastopt.bench.cases import (
    FULL_SIZES,
    HEADLINE_RULES,
    IMPLEMENTATIONS,
    MANY_TENSORS_COUNT,
    MANY_TENSORS_TOTAL,
    QUICK_SIZES,
    RULES,
    RuleCase,
    many_tensor_sizes,
    size_label,
)
from fastopt.bench.ceiling import stream_step
from fastopt.bench.progress import Progress
from fastopt.bench.runner import TimingPolicy, time_call, time_interleaved

__all__ = [
    "FULL_FLOAT64_SIZES",
    "FULL_POLICY",
    "QUICK_POLICY",
    "SuiteConfig",
    "full_config",
    "make_step",
    "many_tensor_arrays",
    "many_tensors_step",
    "numba_threads",
    "quick_config",
    "run_suite",
]

QUICK_POLICY = TimingPolicy(
    warmup=1, repeats=5, min_repeats=3, sample_seconds=0.005, max_seconds=0.5
)
FULL_POLICY = TimingPolicy()
#: float64 is measured at fewer sizes: the curve has the same shape as float32's.
FULL_FLOAT64_SIZES: tuple[int, ...] = (1 << 16, 1 << 20, 1 << 24)

IN_PROCESS = ("fastopt", "ceiling", "numpy")


@dataclass(frozen=True)
class SuiteConfig:
    """What one run measures.

    Attributes
    ----------
    rules
        Names from :data:`fastopt.bench.cases.RULES`.
    grid
        ``(dtype, sizes)`` pairs.
    implementations
        Names from :data:`fastopt.bench.cases.IMPLEMENTATIONS`.
    threads
        Threads for fastopt's parallel kernels and for torch.
    policy
        How each case is timed.
    many_tensors
        Also run the many-tensors case (Adam, 200 arrays, 2^20 elements in all).
    seed
        Seed of the random arrays.
    """

    rules: tuple[str, ...]
    grid: tuple[tuple[str, tuple[int, ...]], ...]
    implementations: tuple[str, ...] = IMPLEMENTATIONS
    threads: int = field(default_factory=numba.get_num_threads)
    policy: TimingPolicy = FULL_POLICY
    many_tensors: bool = True
    seed: int = 0

    def as_dict(self) -> dict[str, Any]:
        config = asdict(self)
        config["grid"] = [[dtype, list(sizes)] for dtype, sizes in self.grid]
        return config


def quick_config(**overrides: Any) -> SuiteConfig:
    """The quick run: the headline rules, float32, 2^12 ... 2^24, few samples."""
    config = SuiteConfig(
        rules=HEADLINE_RULES, grid=(("float32", QUICK_SIZES),), policy=QUICK_POLICY
    )
    return replace(config, **overrides)


def full_config(**overrides: Any) -> SuiteConfig:
    """The full run: every rule, float32 2^12 ... 2^26 and float64 at three sizes."""
    config = SuiteConfig(
        rules=tuple(RULES),
        grid=(("float32", FULL_SIZES), ("float64", FULL_FLOAT64_SIZES)),
        policy=FULL_POLICY,
    )
    return replace(config, **overrides)


def _random(rng: np.random.Generator, shape: int | tuple[int, ...], dtype: str) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.dtype(dtype).type)


def _fastopt_step(case: RuleCase, param: np.ndarray, grad: np.ndarray) -> Callable[[], None]:
    opt = case.make(param)
    return lambda: opt.step(grad)


def _numpy_step(case: RuleCase, param: np.ndarray, grad: np.ndarray) -> Callable[[], None]:
    state = case.new_state(param)
    counter = itertools.count(1)
    return lambda: case.reference_step(param, grad, *state, step=next(counter))


def _ceiling_step(case: RuleCase, param: np.ndarray, grad: np.ndarray) -> Callable[[], None]:
    param, grad = param.reshape(-1), grad.reshape(-1)
    # A matrix step's scratch direction is one more array read and written.
    state = [np.zeros_like(param) for _ in range(case.n_state + case.scratch)]
    if not case.read_pass:
        return lambda: stream_step(param, grad, *state)
    # A rule with per-tensor norms or a matrix step reads some arrays once more before its
    # update: so does its ceiling (fastopt._reduce's block sums of squares, read-only, as
    # fast as a stream).
    arrays = [param, grad, *state]
    read = [arrays[k % len(arrays)] for k in range(case.read_pass)]
    sums = np.empty(block_count(param.size))

    def step() -> None:
        for array in read:
            block_sums_of_squares(array, sums)
        stream_step(param, grad, *state)

    return step


_MAKERS = {"fastopt": _fastopt_step, "numpy": _numpy_step, "ceiling": _ceiling_step}


def make_step(implementation: str, rule: str, param: np.ndarray, grad: np.ndarray):
    """A no-argument callable doing one update of ``param`` by ``implementation``.

    ``implementation`` is ``"fastopt"`` (``opt.step(grad)``), ``"numpy"`` (the reference,
    with its own state) or ``"ceiling"`` (the same-bytes stream). ``param`` is updated in
    place at every call.
    """
    return _MAKERS[implementation](RULES[rule], param, grad)


def _flat_step(params: list[np.ndarray], grads: list[np.ndarray]) -> Callable[[], object]:
    """One Adam launch over a flat buffer holding every array."""
    flat = fastopt.FlatParams.from_arrays(params)
    opt = fastopt.Adam(flat, lr=1e-3)
    for view, grad in zip(flat.grads, grads, strict=True):
        view[...] = grad
    return opt.step


def many_tensors_step(
    implementation: str, params: list[np.ndarray], grads: list[np.ndarray]
) -> Callable[[], object]:
    """One Adam step over many arrays: ``"fastopt"`` (a list, one launch per array),
    ``"fastopt-flat"`` (one launch over a :class:`~fastopt.FlatParams` buffer), ``"numpy"``
    (the reference per array) or ``"ceiling"`` (the same bytes, one pass)."""
    case = RULES["adam"]
    if implementation == "fastopt":
        opt = case.make(params)
        return lambda: opt.step(grads)
    if implementation == "numpy":
        steps = [_numpy_step(case, p, g) for p, g in zip(params, grads, strict=True)]
        return lambda: [one() for one in steps]
    if implementation == "ceiling":
        return _ceiling_step(case, np.concatenate(params), np.concatenate(grads))
    if implementation == "fastopt-flat":
        return _flat_step(params, grads)
    raise ValueError(f"unknown implementation {implementation!r}")


def many_tensor_arrays(dtype: str = "float32", seed: int = 0):
    """Parameters and gradients of the many-tensors case (:func:`many_tensor_sizes`)."""
    rng = np.random.default_rng(seed)
    sizes = many_tensor_sizes()
    params = [_random(rng, n, dtype) for n in sizes]
    grads = [_random(rng, n, dtype) for n in sizes]
    return params, grads


def _row(kind: str, rule: str, dtype: str, size: int, arrays: int, implementation: str):
    case = RULES[rule]
    return {
        "case": kind,
        "rule": rule,
        "dtype": dtype,
        "size": size,
        "arrays": arrays,
        "implementation": implementation,
        "bytes_per_element": case.bytes_per_element(dtype),
        "status": "ok",
        "note": "",
    }


def _cases(config: SuiteConfig) -> Iterator[tuple[str, int, str]]:
    for dtype, sizes in config.grid:
        for size in sizes:
            for rule in config.rules:
                yield dtype, size, rule


def _single_rows(config: SuiteConfig, progress: Progress) -> list[dict[str, Any]]:
    rng = np.random.default_rng(config.seed)
    rows = []
    in_process = [name for name in config.implementations if name in IN_PROCESS]
    for dtype, size, rule in _cases(config):
        progress.advance(f"{rule} {dtype} n={size}", len(in_process))
        case = RULES[rule]
        if case.max_size is not None and size > case.max_size:
            for name in in_process:
                rows.append(_too_large(_row("single", rule, dtype, size, 1, name), case))
            continue
        shape = case.shape(size)
        param, grad = _random(rng, shape, dtype), _random(rng, shape, dtype)
        steps = {name: make_step(name, rule, param.copy(), grad) for name in in_process}
        # Interleaved, so the ratios between implementations see the same machine.
        for name, timing in time_interleaved(steps, config.policy).items():
            row = _row("single", rule, dtype, size, 1, name)
            row.update(timing.as_dict())
            rows.append(row)
        del steps  # frees this case's arrays before the next case allocates its own
    return rows


def _many_rows(config: SuiteConfig, progress: Progress) -> list[dict[str, Any]]:
    dtype = "float32"
    params, grads = many_tensor_arrays(dtype, config.seed)
    rows = []
    wanted = [name for name in config.implementations if name in IN_PROCESS]
    for implementation in [*wanted, "fastopt-flat"]:
        progress.advance(f"adam {MANY_TENSORS_COUNT} arrays {implementation}")
        row = _row("many_tensors", "adam", dtype, MANY_TENSORS_TOTAL, len(params), implementation)
        step = many_tensors_step(implementation, [p.copy() for p in params], grads)
        step()
        row.update(time_call(step, config.policy).as_dict())
        rows.append(row)
    return rows


def _too_large(row: dict[str, Any], case: RuleCase) -> dict[str, Any]:
    """A row not timed: the size is above the case's ``max_size``."""
    row["status"] = "skipped"
    row["note"] = f"{case.label} is timed up to {size_label(case.max_size)} elements"
    return row


def _above_max_size(request: dict[str, Any]) -> bool:
    limit = RULES[request["rule"]].max_size
    return limit is not None and request["size"] > limit


def _torch_requests(config: SuiteConfig) -> list[dict[str, Any]]:
    wanted = [name for name in config.implementations if name.startswith("torch-")]
    requests = []
    for dtype, size, rule in _cases(config):
        for implementation in wanted:
            requests.append(
                {
                    "case": "single",
                    "rule": rule,
                    "dtype": dtype,
                    "size": size,
                    "implementation": implementation,
                }
            )
    if config.many_tensors:
        for implementation in wanted:
            requests.append(
                {
                    "case": "many_tensors",
                    "rule": "adam",
                    "dtype": "float32",
                    "size": MANY_TENSORS_TOTAL,
                    "implementation": implementation,
                }
            )
    return requests


def _complete_torch_row(request: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    arrays = MANY_TENSORS_COUNT if request["case"] == "many_tensors" else 1
    row = _row(
        request["case"],
        request["rule"],
        request["dtype"],
        request["size"],
        arrays,
        request["implementation"],
    )
    row.update(result)
    return row


@contextmanager
def numba_threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` numba threads, then restore the previous count."""
    previous = numba.get_num_threads()
    numba.set_num_threads(count)
    try:
        yield
    finally:
        numba.set_num_threads(previous)


def run_suite(
    config: SuiteConfig, progress: Progress | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run ``config``; return the result rows and a description of the torch run.

    Every row has ``case`` (``"single"`` or ``"many_tensors"``), ``rule``, ``dtype``,
    ``size`` (elements in all), ``arrays``, ``implementation``, ``bytes_per_element``,
    ``status`` (``"ok"``, ``"unavailable"``, ``"error"`` or ``"skipped"``: a size above
    the case's ``max_size``), ``note`` and,
    when ``status`` is ``"ok"``, ``median_ns``, ``min_ns``, ``q1_ns``, ``q3_ns``,
    ``max_ns``, ``samples`` and ``calls_per_sample`` (per-call times of ``optimizer.step``,
    or of the reference or ceiling call; see :class:`~fastopt.bench.runner.Timing`).
    """
    requests = _torch_requests(config)
    too_large = [r for r in requests if _above_max_size(r)]
    torch_requests = [r for r in requests if not _above_max_size(r)]
    in_process = sum(name in IN_PROCESS for name in config.implementations)
    total = in_process * len(list(_cases(config)))
    if config.many_tensors:
        total += in_process + 1
    total += len(torch_requests)
    progress = progress or Progress(total, enabled=False)
    progress.reset(total)

    with numba_threads(config.threads):
        rows = _single_rows(config, progress)
        if config.many_tensors:
            rows += _many_rows(config, progress)
    torch_info: dict[str, Any] = {"requested": bool(torch_requests)}
    if torch_requests:
        results, torch_info = torch_child.run(
            torch_requests, config.threads, config.policy, config.seed, progress
        )
        rows += [
            _complete_torch_row(request, result)
            for request, result in zip(torch_requests, results, strict=True)
        ]
    rows += [_too_large(_complete_torch_row(r, {}), RULES[r["rule"]]) for r in too_large]
    progress.close()
    return rows, torch_info
