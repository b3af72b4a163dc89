"""Read-only reduction kernels over gradients: per-block sums of squares and maxima of |g|.

Determinism: an array is cut into fixed blocks of :data:`BLOCK` elements whatever the number
of threads, each block is reduced by one thread in a fixed order, and the per-block results
are written to an array that the host combines (:mod:`fastopt.gradients`). The serial and
parallel drivers inline the same block function, so they produce the same bits.

Speed: without fast-math flags LLVM may not reorder a floating-point sum, so a plain
``s += x[i] * x[i]`` loop runs one addition at a time. Each block is instead reduced into
:data:`LANES` independent accumulators, lane ``j`` taking elements ``j, j + LANES, ...``; the
loop over lanes is a plain element-wise map, which vectorizes without reassociation. The lane
count is passed in at run time so that LLVM vectorizes that loop instead of unrolling it.

Sums of squares accumulate in float64 for every gradient dtype (bfloat16 and float16 ones
decoded on the way, see :mod:`fastopt._storage`). The maximum
of |g| is taken on the IEEE bit patterns with the sign bit cleared: for non-negative floats
the integer order is the numeric order, every NaN pattern sorts above infinity (so a NaN wins,
as in ``numpy.max``), and integer maxima vectorize where float maxima do not without fast-math
flags.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
from numba import prange

from fastopt._jit import elementwise, kernel, parallel_kernel
from fastopt._parallel import run_by_size
from fastopt._storage import kernel_view, load

__all__ = [
    "BLOCK",
    "LANES",
    "block_count",
    "block_max_abs_bits",
    "block_sums_of_squares",
    "block_table",
    "magnitude_bits",
    "sum_of_squares",
    "table_sums_of_squares",
]

#: Elements per block: fixed, so the partial results do not depend on the thread count.
BLOCK = 1 << 14
#: Independent accumulators per block.
LANES = 32


def block_count(size: int) -> int:
    """Number of blocks an array of ``size`` elements is cut into."""
    return -(-size // BLOCK)


@elementwise
def sum_of_squares(x, lanes):
    """The sum of squares of a 1-D array in float64, in ``lanes`` accumulators (see the
    module docstring)."""
    acc = np.zeros(lanes)
    rows = x.size // lanes
    for r in range(rows):
        base = r * lanes
        for j in range(lanes):
            v = np.float64(load(x, base + j))
            acc[j] += v * v
    base = rows * lanes
    for j in range(x.size - base):
        v = np.float64(load(x, base + j))
        acc[j] += v * v
    total = 0.0
    for j in range(lanes):
        total += acc[j]
    return total


@elementwise
def _max_abs_bits(bits, lanes, magnitude_mask):
    acc = np.zeros(lanes, bits.dtype)
    rows = bits.size // lanes
    for r in range(rows):
        base = r * lanes
        for j in range(lanes):
            b = bits[base + j] & magnitude_mask
            a = acc[j]
            acc[j] = b if b > a else a
    base = rows * lanes
    for j in range(bits.size - base):
        b = bits[base + j] & magnitude_mask
        a = acc[j]
        acc[j] = b if b > a else a
    best = acc[0]
    for j in range(lanes):
        best = acc[j] if acc[j] > best else best
    return best


@kernel
def _sums_of_squares_serial(x, lanes, out):
    for b in range(out.size):
        lo = b * BLOCK
        out[b] = sum_of_squares(x[lo : min(lo + BLOCK, x.size)], lanes)


@parallel_kernel
def _sums_of_squares_parallel(x, lanes, out):
    for b in prange(out.size):
        lo = b * BLOCK
        out[b] = sum_of_squares(x[lo : min(lo + BLOCK, x.size)], lanes)


@kernel
def _table_sums_of_squares_serial(x, starts, stops, lanes, out):
    for b in range(out.size):
        out[b] = sum_of_squares(x[starts[b] : stops[b]], lanes)


@parallel_kernel
def _table_sums_of_squares_parallel(x, starts, stops, lanes, out):
    for b in prange(out.size):
        out[b] = sum_of_squares(x[starts[b] : stops[b]], lanes)


@kernel
def _max_abs_bits_serial(bits, lanes, magnitude_mask, out):
    for b in range(out.size):
        lo = b * BLOCK
        out[b] = _max_abs_bits(bits[lo : min(lo + BLOCK, bits.size)], lanes, magnitude_mask)


@parallel_kernel
def _max_abs_bits_parallel(bits, lanes, magnitude_mask, out):
    for b in prange(out.size):
        lo = b * BLOCK
        out[b] = _max_abs_bits(bits[lo : min(lo + BLOCK, bits.size)], lanes, magnitude_mask)


def block_sums_of_squares(flat: np.ndarray, out: np.ndarray) -> None:
    """``out[b]`` = float64 sum of squares of block ``b`` of the 1-D array ``flat``."""
    view = kernel_view(flat)
    run_by_size(_sums_of_squares_serial, _sums_of_squares_parallel, flat.size, view, LANES, out)


def block_table(offsets: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, ...]:
    """Blocks cut from each segment ``[offset, offset + size)`` of a buffer on its own.

    Returns ``(starts, stops, segment)`` per block: the same blocks, element for element, as
    :func:`block_sums_of_squares` makes of each segment as a separate array, so both give
    the same partial sums.
    """
    counts = -(-sizes // BLOCK)
    segment = np.repeat(np.arange(sizes.size), counts)
    first_block = np.cumsum(counts) - counts
    within = np.arange(int(counts.sum())) - np.repeat(first_block, counts)
    starts = offsets[segment] + within * BLOCK
    stops = np.minimum(starts + BLOCK, offsets[segment] + sizes[segment])
    return starts, stops, segment


def table_sums_of_squares(
    buffer: np.ndarray, starts: np.ndarray, stops: np.ndarray, out: np.ndarray
) -> None:
    """``out[b]`` = float64 sum of squares of ``buffer[starts[b]:stops[b]]`` (one launch)."""
    run_by_size(
        _table_sums_of_squares_serial,
        _table_sums_of_squares_parallel,
        buffer.size,
        kernel_view(buffer),
        starts,
        stops,
        LANES,
        out,
    )


_BITS = {
    np.dtype(np.float32): np.dtype(np.int32),
    np.dtype(np.float64): np.dtype(np.int64),
    np.dtype(ml_dtypes.bfloat16): np.dtype(np.int16),
    np.dtype(np.float16): np.dtype(np.int16),
}


def magnitude_bits(dtype: np.dtype) -> tuple[np.dtype, np.integer, np.integer]:
    """The integer type of ``dtype``'s bit patterns, the mask clearing the sign, and +inf."""
    bits = _BITS[np.dtype(dtype)]
    mask = bits.type(np.iinfo(bits).max)
    infinity = np.array(np.inf, dtype=dtype).view(bits)[()]
    return bits, mask, infinity


def block_max_abs_bits(flat: np.ndarray, out: np.ndarray) -> None:
    """``out[b]`` = largest bit pattern of ``|x|`` in block ``b`` of ``flat`` (see module)."""
    bits, mask, _ = magnitude_bits(flat.dtype)
    run_by_size(
        _max_abs_bits_serial,
        _max_abs_bits_parallel,
        flat.size,
        flat.view(bits),
        LANES,
        mask,
        out,
    )
