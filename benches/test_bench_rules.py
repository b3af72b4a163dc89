"""Every rule x dtype x size: fastopt, the same-bytes ceiling, NumPy and torch.optim."""

import numba
import numpy as np
import pytest

from fastopt.bench.cases import IMPLEMENTATIONS, RULES, size_label
from fastopt.bench.suite import make_step
from fastopt.bench.torch_child import make_torch_step


def _step(implementation, rule, dtype, size):
    case = RULES[rule]
    if case.max_size is not None and size > case.max_size:
        pytest.skip(f"{case.label} is timed up to {size_label(case.max_size)} elements")
    if implementation.startswith("torch-"):
        torch = pytest.importorskip("torch")
        torch.set_num_threads(numba.get_num_threads())
        flavour = implementation.removeprefix("torch-")
        try:
            return make_torch_step(rule, dtype, [size], flavour)
        except (RuntimeError, TypeError, ValueError) as error:
            pytest.skip(f"torch has no {flavour} {RULES[rule].torch_class}: {error}")
    rng = np.random.default_rng(0)
    shape = case.shape(size)
    param = rng.standard_normal(shape, dtype=np.dtype(dtype).type)
    grad = rng.standard_normal(shape, dtype=np.dtype(dtype).type)
    return make_step(implementation, rule, param, grad)


@pytest.mark.implementations(*IMPLEMENTATIONS)
def test_step(benchmark, rule, dtype, size, implementation):
    benchmark.group = f"{rule} {dtype} n={size_label(size)}"
    step = _step(implementation, rule, dtype, size)
    step()  # compiles (or loads the cached kernel) outside the timed region
    benchmark(step)
    moved = size * RULES[rule].bytes_per_element(dtype)
    benchmark.extra_info["GB/s"] = round(moved / benchmark.stats.stats.median / 1e9, 2)
