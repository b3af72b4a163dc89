"""Adam over 200 arrays (2^20 elements in all): per-array launches, one flat launch, torch."""

import numba
import pytest

from fastopt.bench.cases import MANY_TENSORS_TOTAL, many_tensor_sizes
from fastopt.bench.suite import many_tensor_arrays, many_tensors_step
from fastopt.bench.torch_child import make_torch_step


@pytest.mark.implementations(
    "fastopt", "fastopt-flat", "ceiling", "numpy", "torch-fused", "torch-foreach"
)
def test_adam_many_tensors(benchmark, implementation):
    benchmark.group = f"adam float32, {len(many_tensor_sizes())} arrays"
    if implementation.startswith("torch-"):
        torch = pytest.importorskip("torch")
        torch.set_num_threads(numba.get_num_threads())
        flavour = implementation.removeprefix("torch-")
        step = make_torch_step("adam", "float32", many_tensor_sizes(), flavour)
    else:
        params, grads = many_tensor_arrays()
        try:
            step = many_tensors_step(implementation, params, grads)
        except NotImplementedError as error:
            pytest.skip(str(error))
    step()  # compiles (or loads the cached kernels) outside the timed region
    benchmark(step)
    moved = MANY_TENSORS_TOTAL * 28
    benchmark.extra_info["GB/s"] = round(moved / benchmark.stats.stats.median / 1e9, 2)
