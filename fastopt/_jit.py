"""The one place where numba options are chosen.

Every kernel in fastopt is compiled through the decorators defined here, so that the
floating-point contract (no ``nnan``/``ninf`` fast-math flags: NaN and Inf must propagate),
the error model (``"numpy"``: division by zero gives Inf instead of raising, which keeps the
loops vectorizable) and on-disk caching are the same everywhere. A test checks that no
kernel bypasses them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import numba
from numba.core import types
from numba.extending import overload

__all__ = [
    "CUDA_JIT_OPTIONS",
    "FASTMATH_FLAGS",
    "JIT_OPTIONS",
    "PARALLEL_THRESHOLD",
    "as_dtype_of",
    "cuda_device",
    "cuda_kernel",
    "elementwise",
    "kernel",
    "parallel_kernel",
    "segment",
]

F = TypeVar("F", bound=Callable[..., Any])

# No fast-math flag at all. ``nnan``/``ninf`` would break NaN and Inf propagation; ``contract``
# (fused multiply-add) and ``arcp`` (division as multiplication by a reciprocal) are applied by
# LLVM where it sees fit, which differs between a kernel compiled alone and one inlined into
# another, so the serial and parallel paths would differ in the last bit. Without them every
# operation is rounded as written, results are bit-identical across paths and thread counts,
# and the kernels stay memory-bound (the arithmetic is far below the bandwidth ceiling).
FASTMATH_FLAGS: frozenset[str] = frozenset()

JIT_OPTIONS: dict[str, Any] = {
    "fastmath": set(FASTMATH_FLAGS),
    "error_model": "numpy",
    "boundscheck": False,
    "nogil": True,
    "cache": True,
}

# Below this many elements an update runs on the calling thread: starting the thread pool
# costs more than the work. Override with the FASTOPT_PARALLEL_THRESHOLD environment variable.
PARALLEL_THRESHOLD = int(os.environ.get("FASTOPT_PARALLEL_THRESHOLD", 1 << 16))


def kernel(fn: F) -> F:
    """Compile a serial kernel with fastopt's options."""
    return numba.njit(**JIT_OPTIONS)(fn)


def parallel_kernel(fn: F) -> F:
    """Compile a multithreaded (``prange``) kernel with fastopt's options."""
    return numba.njit(parallel=True, **JIT_OPTIONS)(fn)


# CUDA: no fast math either (NaN and Inf propagate; division and square root are IEEE-rounded,
# not approximated). NVVM still contracts ``a * b + c`` into fused multiply-adds, which has no
# switch in numba.cuda.jit, so GPU results equal the CPU kernels' to rounding, not bitwise.
# No ``cache``: the kernels are generated per rule and option set (see fastopt.cuda._kernels)
# and have no source file for an on-disk cache to key on.
CUDA_JIT_OPTIONS: dict[str, Any] = {"fastmath": False}


def cuda_device(fn: F) -> F:
    """Compile a function as a CUDA device function with fastopt's options.

    ``numba.cuda`` is imported here, on first use, so that CPU-only use of fastopt never
    loads it.
    """
    from numba import cuda

    return cuda.jit(device=True, **CUDA_JIT_OPTIONS)(fn)


def cuda_kernel(fn: F) -> F:
    """Compile a CUDA kernel with fastopt's options (``numba.cuda`` imported on first use)."""
    from numba import cuda

    return cuda.jit(**CUDA_JIT_OPTIONS)(fn)


def elementwise(fn: F) -> F:
    """Compile an element-wise update body, inlined into the kernels that call it."""
    options = {k: v for k, v in JIT_OPTIONS.items() if k != "cache"}
    return numba.njit(inline="always", **options)(fn)


def segment(array, lo, hi):  # pragma: no cover - replaced by the overload below in jitted code
    """``array[lo:hi]``, or ``None`` when the optional state array is absent."""
    if array is None:
        return None
    if hasattr(array, "codes"):  # 8-bit state, see fastopt._quantized
        return array.segment(lo, hi)
    return array[lo:hi]


@overload(segment, inline="always")
def _segment_overload(array, lo, hi):
    # Resolved on the argument's type, so a missing state array is pruned at compile time
    # and the kernel keeps a precise (non-optional) array type that LLVM can vectorize.
    if isinstance(array, types.NoneType):
        return lambda array, lo, hi: None
    if isinstance(array, types.Array):
        return lambda array, lo, hi: array[lo:hi]
    return None  # another format's overload (fastopt._quantized)


def as_dtype_of(value, array):  # pragma: no cover - replaced by the overload below
    """``value`` converted to the element type of ``array``."""
    return array.dtype.type(value)


@overload(as_dtype_of, inline="always")
def _as_dtype_of_overload(value, array):
    # Hyperparameters arrive as float64; float32 arrays are updated in float32 arithmetic
    # (as torch does), so each scalar is rounded once, outside the loop.
    element_type = array.dtype
    return lambda value, array: element_type(value)
