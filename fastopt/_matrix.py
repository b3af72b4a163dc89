"""The host step of rules with a matrix step (Muon's Newton-Schulz iterations).

Before the update of a launch, the rule's generated direction pass writes ``direction`` of
every element into a scratch array shaped like the flat parameter buffer; the host then
views each tensor's part of it in the tensor's shape and replaces it by ``transform`` of it
(NumPy: matrix products, BLAS); the update reads the result as its ``o`` argument. Padding
between a FlatParams' tensors is not transformed: its directions are those of zeros.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numba
import numpy as np

from fastopt._parallel import run_parallel
from fastopt._storage import compute_type_of

if TYPE_CHECKING:
    from fastopt._launch import MatrixKernels

__all__ = ["transform_matrices", "transform_segments"]


def transform_segments(
    matrix: MatrixKernels,
    bounds: np.ndarray,
    hyper: np.ndarray,
    directions: np.ndarray,
    shapes: Sequence[tuple[int, ...] | None] | None,
    host: Sequence[Any] = (),
) -> None:
    """Replace each tensor's directions (segment ``s`` of ``bounds``, shape ``shapes[s]``,
    None for padding) by their transform under the segment's row, in place. ``host``: the
    host state of the matrix step, per declared array a flat array (or None where the
    tensor keeps none) in a launch of one segment, or a tuple of one such per segment."""
    if shapes is None or len(shapes) != bounds.size - 1:
        raise ValueError("a rule with a matrix step needs one tensor shape per segment")
    declared = matrix.declaration.state
    count = len(shapes)
    per_segment = [held if isinstance(held, tuple) else (held,) * count for held in host]
    if declared and count != 1 and not all(isinstance(held, tuple) for held in host):
        raise ValueError("a matrix step's host state needs one array per segment")
    width = len(matrix.row_type._fields)
    for segment, shape in enumerate(shapes):
        lo, hi = int(bounds[segment]), int(bounds[segment + 1])
        if shape is None or lo == hi:
            continue
        h = matrix.row_type(*hyper[segment, hyper.shape[1] - width :].tolist())
        state = [
            None if held[segment] is None else held[segment].reshape(entry.shape(shape))
            for entry, held in zip(declared, per_segment, strict=True)
        ]
        view = directions[lo:hi].reshape(shape)
        result = matrix.declaration.transform(view, h, *state)
        if result is not view:  # a transform may write its result over its input
            view[...] = result


def transform_matrices(
    matrix: MatrixKernels,
    bounds: np.ndarray,
    hyper: np.ndarray,
    param: np.ndarray,
    arrays: Sequence[Any],
    shapes: Sequence[tuple[int, ...] | None] | None,
    serial: bool,
    master: np.ndarray | None = None,
    host: Sequence[Any] = (),
) -> np.ndarray:
    """The direction pass over NumPy arrays (serial or parallel driver), then the host's
    transform of every tensor: the array the update reads ``o`` from, in the compute type
    (``arrays`` are the gradient and the state, ``master`` the parameter's master copy,
    ``host`` the matrix step's host state)."""
    directions = np.empty(param.shape, compute_type_of(param.dtype))
    arguments = (bounds, hyper, param, *arrays, master, directions, None)
    if serial:
        matrix.serial(*arguments)
    else:
        run_parallel(matrix.parallel, numba.get_num_threads(), *arguments)
    transform_segments(matrix, bounds, hyper, directions, shapes, host)
    return directions
