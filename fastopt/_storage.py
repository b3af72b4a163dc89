"""How the kernels load and store array elements, apart from any rule's math.

A rule's update sees values in its compute type; the generated kernels move them in and out
of memory with :func:`load` and :func:`store`, which numba resolves on the array's type at
compile time, and :func:`compute_scalar` rounds a float64 hyperparameter to the type the
update computes in. A new storage format (bf16 bits in ``uint16``, block-quantized 8-bit) is
one more case here and in :func:`compute_type_of`; no rule changes.

Storage formats now: float32 and float64 arrays (computed in their own type, as torch does),
and ``None`` for an optional state array a group does not use (``load`` gives ``None``,
``store`` does nothing: numba prunes both at compile time).

Each function is plain Python too (numba's CUDA simulator runs kernels as Python), and an
``@overload`` for compiled code, where it is inlined. The overloads use numba's generic
target, so the CPU kernels and the CUDA kernels share them.
"""

from __future__ import annotations

import numpy as np
from numba.core import types
from numba.extending import overload

__all__ = ["compute_scalar", "compute_type_of", "load", "store"]


def compute_type_of(dtype: np.dtype) -> np.dtype:
    """The type a rule computes in for arrays of ``dtype``: their own (float32, float64)."""
    return np.dtype(dtype)


def load(array, i):  # pragma: no cover - the overload below replaces it in compiled code
    """Element ``i`` of ``array`` as a value of its compute type (``None`` for no array)."""
    return None if array is None else array[i]


def store(array, i, value):  # pragma: no cover - the overload below replaces it
    """Write ``value`` to element ``i`` of ``array`` (nothing for no array)."""
    if array is not None:
        array[i] = value


def compute_scalar(value, array):  # pragma: no cover - the overload below replaces it
    """The float64 ``value`` rounded once to the compute type of ``array``'s elements."""
    return array.dtype.type(value)


@overload(load, inline="always")
def _load(array, i):
    if isinstance(array, types.NoneType):
        return lambda array, i: None
    return lambda array, i: array[i]


@overload(store, inline="always")
def _store(array, i, value):
    if isinstance(array, types.NoneType):
        return lambda array, i, value: None

    def store_element(array, i, value):
        array[i] = value

    return store_element


@overload(compute_scalar, inline="always")
def _compute_scalar(value, array):
    element_type = array.dtype
    return lambda value, array: element_type(value)
