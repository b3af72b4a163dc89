"""The machine's ceiling for an update: a streaming kernel that moves the same bytes.

An optimizer update reads the parameter, the gradient and ``k`` state arrays and writes back
the parameter and the state arrays. :func:`stream_step` does exactly that memory traffic
with one addition per array (``x += g``) instead of the rule's arithmetic, through
the same drivers (serial below ``PARALLEL_THRESHOLD``, one contiguous chunk per thread
above), compiled with the same options. Its time is what a perfect kernel for the rule
could reach on this machine: an update's time divided by it is the fraction of the
memory-bandwidth roofline the update reaches.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from fastopt._jit import as_dtype_of, elementwise, kernel, parallel_kernel, segment
from fastopt._launch import RuleKernels, chunk_length, first_segment, launch, single_segment

__all__ = ["MAX_STATE", "STREAM_KERNELS", "stream_step"]

#: Most state arrays a rule reads and writes (AMSGrad, centered RMSprop with momentum: 3).
MAX_STATE = 3


def stream_update(i, param, grad, first, second, third, scalars):
    """Element ``i``: read every array, write back all but the gradient."""
    (scale,) = scalars
    g = grad[i] * scale
    param[i] = param[i] + g
    if first is not None:
        first[i] = first[i] + g
    if second is not None:
        second[i] = second[i] + g
    if third is not None:
        third[i] = third[i] + g


_stream_update = elementwise(stream_update)


@elementwise
def _stream_scalars(h, param):
    return (as_dtype_of(h[0], param),)


@kernel
def _stream_block(h, param, grad, first, second, third):
    scalars = _stream_scalars(h, param)
    for i in range(param.size):
        _stream_update(i, param, grad, first, second, third, scalars)


@kernel
def _stream_serial(bounds, hyper, param, grad, first, second, third):
    for s in range(bounds.size - 1):
        lo, hi = bounds[s], bounds[s + 1]
        _stream_block(
            hyper[s],
            param[lo:hi],
            grad[lo:hi],
            segment(first, lo, hi),
            segment(second, lo, hi),
            segment(third, lo, hi),
        )


@parallel_kernel
def _stream_parallel(n_chunks, bounds, hyper, param, grad, first, second, third):
    n = param.size
    chunk = chunk_length(n, n_chunks)
    for c in prange(n_chunks):
        lo = min(c * chunk, n)
        hi = min(lo + chunk, n)
        s = first_segment(bounds, lo)
        while lo < hi:
            end = min(hi, bounds[s + 1])
            _stream_block(
                hyper[s],
                param[lo:end],
                grad[lo:end],
                segment(first, lo, end),
                segment(second, lo, end),
                segment(third, lo, end),
            )
            lo = end
            s += 1


STREAM_KERNELS = RuleKernels(
    serial=_stream_serial,
    parallel=_stream_parallel,
    update=stream_update,
    unpack=_stream_scalars.py_func,
)

# The gradient's own scale: a tiny factor could make denormal products, which are slow.
_HYPER = np.array([[1.0]])


def stream_step(param: np.ndarray, grad: np.ndarray, *state: np.ndarray) -> None:
    """Read ``param``, ``grad`` and each ``state`` array and write back all but ``grad``.

    The arrays must be 1-D, C-contiguous, of one float dtype and size (the benchmarks make
    them; nothing is checked here). Up to :data:`MAX_STATE` state arrays.

    Examples
    --------
    >>> import numpy as np
    >>> from fastopt.bench.ceiling import stream_step
    >>> p, g, m = np.zeros(4), np.ones(4), np.zeros(4)
    >>> stream_step(p, g, m)
    >>> bool(np.all(p == 1) and np.all(m == 1))
    True
    """
    if len(state) > MAX_STATE:
        raise ValueError(f"stream_step takes at most {MAX_STATE} state arrays, got {len(state)}")
    padded = (*state, *(None,) * (MAX_STATE - len(state)))
    launch(STREAM_KERNELS, single_segment(param.size), _HYPER, param, grad, *padded)
