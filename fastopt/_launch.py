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

from collections.abc import Callable
from functools import lru_cache
from typing import Any, NamedTuple

import numba
import numpy as np

from fastopt._jit import PARALLEL_THRESHOLD, elementwise
from fastopt._matrix import transform_matrices
from fastopt._norms import measure_norms
from fastopt._parallel import run_parallel
from fastopt._quantized import BLOCK, QuantizedState, block_table
from fastopt._storage import compute_type_of

__all__ = [
    "MatrixKernels",
    "NormKernels",
    "RuleKernels",
    "chunk_length",
    "first_segment",
    "launch",
    "run_parallel",
    "serial_driver",
    "single_segment",
]


class NormKernels(NamedTuple):
    """The read pass of a rule with per-tensor norms (see :class:`fastopt.rule.Norms`).

    ``serial`` and ``parallel`` take ``(starts, stops, segment_of_block, hyper, param, grad,
    *state, lanes, out)`` and write the float64 sums of squares of block ``b`` to ``out[b]``;
    ``measure(i, param, grad, *state, scalars)`` is the element function they inline (and
    :mod:`fastopt.cuda` compiles); ``declaration`` and ``row_type`` are the rule's.
    """

    serial: Callable[..., None]
    parallel: Callable[..., None]
    measure: Callable[..., Any]
    declaration: Any
    row_type: type


class MatrixKernels(NamedTuple):
    """The first pass of a rule with a matrix step (see :class:`fastopt.rule.MatrixStep`).

    ``serial`` and ``parallel`` take the update's driver arguments with ``out`` (a scratch
    array like the parameter) in place of the transformed array and write the direction
    there; ``direction(i, param, grad, *state, scalars)`` is the element function they
    inline (and :mod:`fastopt.cuda` compiles).
    """

    serial: Callable[..., None]
    parallel: Callable[..., None]
    direction: Callable[..., Any]
    declaration: Any
    row_type: type


class RuleKernels(NamedTuple):
    """A rule's compiled CPU drivers and the plain-Python math every kernel is built from.

    ``update(i, param, grad, *state, scalars)`` is the element-wise update and
    ``unpack(h, param)`` turns a hyperparameter row into its ``scalars``; the CPU drivers
    inline them, :mod:`fastopt.cuda` compiles them as CUDA device functions. ``norms`` is the
    read pass of a rule whose update needs per-tensor norms, else None;
    ``quantized_serial`` and ``quantized_parallel`` take ``(bounds, blocks, hyper, param,
    grad, *state, master, comp, stochastic, scratch)`` for a step with 8-bit state (see
    :mod:`fastopt._quantized`), whose plain-Python ``values(i, param, grad, *state, master,
    scalars)`` (the new parameter and state values of element ``i``, nothing stored) the CUDA
    kernel of such a step is compiled from.
    """

    serial: Callable[..., None]
    parallel: Callable[..., None]
    update: Callable[..., None]
    unpack: Callable[..., Any]
    norms: NormKernels | None = None
    matrix: MatrixKernels | None = None
    quantized_serial: Callable[..., None] | None = None
    quantized_parallel: Callable[..., None] | None = None
    values: Callable[..., Any] | None = None


@elementwise
def chunk_length(n, n_chunks):
    """Elements per chunk, rounded up to whole 256-element blocks: cache-line aligned, and
    whole blocks of 8-bit state (see :mod:`fastopt._quantized`), so that a pass that reads
    such state by chunks of one parameter decodes each with its block's scale."""
    per_chunk = (n + n_chunks - 1) // n_chunks
    return (per_chunk + 255) // 256 * 256


@elementwise
def first_segment(bounds, index):
    """The segment that holds element ``index``."""
    return np.searchsorted(bounds, index, side="right") - 1


@lru_cache(maxsize=256)
def single_segment(n: int) -> np.ndarray:
    """The segment table of one array of ``n`` elements (shared: kernels only read it)."""
    return np.array([0, n], dtype=np.int64)


def serial_driver(kernels: RuleKernels, param: Any, state: tuple[Any, ...]) -> Any:
    """The serial driver when :func:`launch` of ``param`` with these state arrays would do
    nothing but call it (a host array under the parallel threshold; no matrix step, no
    norms, no 8-bit state), else None: a caller that keeps its arguments may call it
    directly, with ``launch``'s positional arguments and ``master, comp, stochastic``."""
    plain = (
        isinstance(param, np.ndarray)
        and param.size < PARALLEL_THRESHOLD
        and kernels.matrix is None
        and kernels.norms is None
        and not any(isinstance(array, QuantizedState) for array in state)
    )
    return kernels.serial if plain else None


def launch(
    kernels: RuleKernels,
    bounds,
    hyper,
    param,
    *arrays,
    master=None,
    comp=None,
    stochastic=None,
    shapes=None,
) -> None:
    """Run a rule's update: serial or parallel driver by size, or the CUDA kernel.

    ``arrays`` are the gradient and the state arrays (None for an absent one), all as the
    kernels see them (:func:`fastopt._storage.kernel_view`). A low-precision parameter has a
    float32 ``master`` copy or a Kahan compensation buffer ``comp``; ``stochastic=True``
    rounds its stores (and those of low-precision state) stochastically, with the random key
    of each segment in column 3 of ``hyper``.

    Host (NumPy) arrays run the CPU drivers; device arrays (validated beforehand to be all
    on the device) run the rule's CUDA kernel. ``shapes`` gives each segment's tensor shape
    (None for padding): a rule with per-tensor norms first runs its read pass, which writes
    the norm fields of ``hyper``; a rule with a matrix step first writes its directions and
    transforms each tensor's matrix of them on the host (then the read pass, if it has
    norms too). A matrix step with host state (:class:`fastopt.rule.HostState`) takes those
    arrays, flat, after the kernels' ``arrays``, in a launch of one segment.
    """
    if not isinstance(param, np.ndarray):
        from fastopt.cuda._kernels import launch as launch_cuda

        launch_cuda(
            kernels,
            bounds,
            hyper,
            param,
            *arrays,
            master=master,
            comp=comp,
            stochastic=stochastic,
            shapes=shapes,
        )
        return
    serial = param.size < PARALLEL_THRESHOLD
    if kernels.matrix is not None:
        # The matrix step's host state follows the kernels' arrays (see transform_matrices).
        held = len(kernels.matrix.declaration.state)
        host = arrays[len(arrays) - held :]
        arrays = arrays[: len(arrays) - held]
        transformed = transform_matrices(
            kernels.matrix, bounds, hyper, param, arrays, shapes, serial, master, host
        )
        arrays = (*arrays, transformed)
    if kernels.norms is not None:
        measure_norms(kernels.norms, bounds, hyper, param, (*arrays, master), shapes, serial)
    if any(isinstance(array, QuantizedState) for array in arrays):
        _launch_quantized(kernels, serial, bounds, hyper, param, arrays, master, comp, stochastic)
        return
    arguments = (bounds, hyper, param, *arrays, master, comp, stochastic)
    if serial:
        kernels.serial(*arguments)
    else:
        run_parallel(kernels.parallel, numba.get_num_threads(), *arguments)


def _launch_quantized(
    kernels: RuleKernels, serial: bool, bounds, hyper, param, arrays, master, comp, stochastic
) -> None:
    """The update with 8-bit state (see :mod:`fastopt._quantized`): each thread a scratch
    block of the new values, one row for the parameter and one per array after the
    gradient."""
    threads = 1 if serial else numba.get_num_threads()
    scratch = np.empty((threads, len(arrays), BLOCK), dtype=compute_type_of(param.dtype))
    blocks = block_table(bounds)
    arguments = (bounds, blocks, hyper, param, *arrays, master, comp, stochastic, scratch)
    if serial:
        kernels.quantized_serial(*arguments)
    else:
        run_parallel(kernels.quantized_parallel, threads, *arguments)
