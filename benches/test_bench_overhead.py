"""The fixed cost of ``opt.step`` at 2^12 elements, where the arithmetic is about 1 µs."""

import numpy as np

import fastopt
from fastopt.bench.overhead import OVERHEAD_SIZE


def test_adam_step_overhead(benchmark):
    benchmark.group = f"opt.step overhead, Adam float32 n={OVERHEAD_SIZE}"
    rng = np.random.default_rng(0)
    param = rng.standard_normal(OVERHEAD_SIZE, dtype=np.float32)
    grad = rng.standard_normal(OVERHEAD_SIZE, dtype=np.float32)
    opt = fastopt.Adam(param, lr=1e-3)
    opt.step(grad)  # compiles (or loads the cached kernel) outside the timed region
    benchmark(opt.step, grad)
