"""The read pass of rules whose update needs per-tensor norms (LAMB, LARS).

Before the update of a launch, the rule's ``measure`` runs over every segment (tensor) cut
into the fixed blocks of :mod:`fastopt._reduce` (:func:`~fastopt._reduce.block_table`: the
same blocks whether a tensor is stepped alone or inside a FlatParams), each block reduced into
fixed lanes in float64. The host adds the blocks of each segment in order, takes the square
roots and hands them to the rule's ``finish``, which writes the norm fields of each segment's
row. So the norms, and the update, are the same bits on every path and thread count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fastopt._parallel import run_parallel
from fastopt._reduce import LANES, block_table

if TYPE_CHECKING:
    from fastopt._launch import NormKernels

__all__ = ["blocks_of", "finish_rows", "measure_norms", "read_pass"]

_TABLES: dict[bytes, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
_MAX_TABLES = 64


def blocks_of(bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(starts, stops, segment)`` of the blocks of the segments ``bounds`` cuts (kept for
    the segment tables a program reuses step after step)."""
    key = bounds.tobytes()
    table = _TABLES.get(key)
    if table is None:
        if len(_TABLES) >= _MAX_TABLES:
            _TABLES.clear()
        bounds = np.asarray(bounds, dtype=np.int64)
        table = _TABLES[key] = block_table(bounds[:-1], np.diff(bounds))
    return table


def finish_rows(
    norms: NormKernels,
    hyper: np.ndarray,
    segment: np.ndarray,
    sums: np.ndarray,
    shapes: Sequence[tuple[int, ...] | None] | None,
) -> None:
    """Write the norm fields of every row of ``hyper`` from the per-block sums of squares
    ``sums`` (block ``b`` in segment ``segment[b]``); ``shapes``: each segment's tensor shape
    (None for padding)."""
    declaration = norms.declaration
    if shapes is None or len(shapes) != hyper.shape[0]:
        raise ValueError("a rule with per-tensor norms needs one tensor shape per segment")
    ndims = np.array([1 if shape is None else len(shape) for shape in shapes], dtype=np.int64)
    if segment.size == hyper.shape[0] and (
        segment.size < 2 or bool(np.all(segment[1:] > segment[:-1]))
    ):
        totals = sums  # one block per segment: its sums are the segment's
    else:
        totals = np.zeros((hyper.shape[0], len(declaration.names)))
        np.add.at(totals, segment, sums)  # block by block, in order
    values = np.sqrt(totals)
    width = len(norms.row_type._fields)
    h = norms.row_type(*hyper[:, hyper.shape[1] - width :].T)
    named = dict(zip(declaration.names, values.T))
    if declaration.counts:
        sizes = [0 if shape is None else math.prod(shape) for shape in shapes]
        fields = declaration.finish(h, named, ndims, np.array(sizes, dtype=np.int64))
    else:
        fields = declaration.finish(h, named, ndims)
    first = hyper.shape[1] - len(declaration.fields)
    for k, column in enumerate(fields):
        hyper[:, first + k] = column


def measure_norms(
    norms: NormKernels,
    bounds: np.ndarray,
    hyper: np.ndarray,
    param: np.ndarray,
    arrays: Sequence[Any],
    shapes: Sequence[tuple[int, ...] | None] | None,
    serial: bool,
) -> None:
    """The read pass over NumPy arrays (by the serial or the parallel driver): per-segment
    norms, then the norm fields of ``hyper``."""
    starts, stops, segment = blocks_of(bounds)
    needed = norms.declaration.needed
    if shapes is not None and not any(shape is not None and needed(len(shape)) for shape in shapes):
        sums = np.zeros((starts.size, len(norms.declaration.names)))  # no tensor needs them
    else:
        sums = np.empty((starts.size, len(norms.declaration.names)))
        read_pass(norms, serial, starts, stops, segment, hyper, param, *arrays, LANES, sums)
    finish_rows(norms, hyper, segment, sums, shapes)


def read_pass(norms: NormKernels, serial: bool, *args: Any) -> None:
    """Run the read pass's serial or parallel driver."""
    if serial:
        norms.serial(*args)
    else:
        run_parallel(norms.parallel, *args)
