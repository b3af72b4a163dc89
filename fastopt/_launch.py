"""Host-side launch of the CPU kernels, and the helpers their drivers share.

Every rule has two drivers with the same arguments ``(bounds, hyper, param, grad, *state)``:
a serial one for small arrays and a ``prange`` one that splits the flat array into one
contiguous chunk per thread. ``bounds`` (int64, ``S + 1`` offsets) cuts the arrays into ``S``
segments and row ``s`` of ``hyper`` (float64, ``S x K``) holds the hyperparameters of segment
``s``, so one launch can update several parameter groups with different settings.

Arrays that live on a CUDA device are handed to :mod:`fastopt.cuda`, which builds its kernels
from the same element-wise update (:class:`RuleKernels` carries it).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import lru_cache
from typing import Any, NamedTuple

import numba
import numpy as np

from fastopt._jit import PARALLEL_THRESHOLD, elementwise

__all__ = [
    "RuleKernels",
    "chunk_length",
    "first_segment",
    "launch",
    "run_parallel",
    "single_segment",
]


class RuleKernels(NamedTuple):
    """A rule's compiled CPU drivers and the plain-Python math every kernel is built from.

    ``update(i, param, grad, *state, scalars)`` is the element-wise update and
    ``unpack(h, param)`` turns a hyperparameter row into its ``scalars``; the CPU drivers
    inline them, :mod:`fastopt.cuda` compiles them as CUDA device functions.
    """

    serial: Callable[..., None]
    parallel: Callable[..., None]
    update: Callable[..., None]
    unpack: Callable[..., Any]


@elementwise
def chunk_length(n, n_chunks):
    """Elements per chunk, rounded up to whole 64-element (cache-line aligned) blocks."""
    per_chunk = (n + n_chunks - 1) // n_chunks
    return (per_chunk + 63) // 64 * 64


@elementwise
def first_segment(bounds, index):
    """The segment that holds element ``index``."""
    return np.searchsorted(bounds, index, side="right") - 1


@lru_cache(maxsize=256)
def single_segment(n: int) -> np.ndarray:
    """The segment table of one array of ``n`` elements (shared: kernels only read it)."""
    return np.array([0, n], dtype=np.int64)


_PARALLEL_LOCK = threading.Lock()
# None until the first parallel launch has started numba's threading layer (only then can it
# be asked which one it chose); then whether that layer accepts concurrent launches.
_layer_is_threadsafe: bool | None = None


def run_parallel(kernel: Callable[..., object], *args: object) -> None:
    """Call a ``prange`` kernel, serialized when the threading layer is not thread-safe."""
    global _layer_is_threadsafe
    if _layer_is_threadsafe:
        kernel(*args)
        return
    with _PARALLEL_LOCK:
        kernel(*args)
        _layer_is_threadsafe = numba.threading_layer() != "workqueue"


def launch(kernels: RuleKernels, bounds, hyper, param, *arrays) -> None:
    """Run a rule's update: serial or parallel driver by size, or the CUDA kernel.

    Host (NumPy) arrays run the CPU drivers; device arrays (validated beforehand to be all
    on the device) run the rule's CUDA kernel.
    """
    if not isinstance(param, np.ndarray):
        from fastopt.cuda._kernels import launch as launch_cuda

        launch_cuda(kernels, bounds, hyper, param, *arrays)
    elif param.size < PARALLEL_THRESHOLD:
        kernels.serial(bounds, hyper, param, *arrays)
    else:
        run_parallel(kernels.parallel, numba.get_num_threads(), bounds, hyper, param, *arrays)
