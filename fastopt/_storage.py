"""How the kernels load and store array elements, apart from any rule's math.

A rule's update sees values in its compute type; the generated kernels move them in and out
of memory with :func:`load` and :func:`store`, which numba resolves on the array's type at
compile time, and :func:`compute_scalar` rounds a float64 hyperparameter to the type the
update computes in. A new storage format is one more case here and in
:func:`compute_type_of`; no rule changes.

Storage formats:

- float32 and float64 arrays, computed in their own type (as torch does);
- bfloat16, which kernels see as ``uint16`` bits, and float16, as ``int16`` bits (numba types
  neither; :func:`kernel_view` makes the views), computed in float32; their stores round to
  nearest, ties to even, or stochastically (see :mod:`fastopt._codecs`) when the launch
  passes a rounding (``(key, base)``: the segment's random key and the offset of the
  kernel's index ``i`` inside its parameter);
- ``None`` for an optional array a group does not use (``load`` gives ``None``, ``store``
  does nothing: numba prunes both at compile time).

A parameter is read and written through :func:`load_param` and :func:`store_param`, which
compose the rule's new value with the way a low-precision parameter absorbs it: a float32
master copy (read, updated, and the parameter written from it in the same pass), or a Kahan
compensation buffer that carries what the rounding lost to the next step.

Each function is plain Python too (numba's CUDA simulator runs kernels as Python), and an
``@overload`` for compiled code, where it is inlined. The overloads use numba's generic
target, so the CPU kernels and the CUDA kernels share them.
"""

from __future__ import annotations

import numpy as np
from numba.core import types
from numba.extending import overload

from fastopt._arraytypes import BFLOAT16
from fastopt._codecs import (
    bf16_decode,
    bf16_nearest,
    bf16_stochastic,
    f16_decode,
    f16_nearest,
    f16_stochastic,
    random_word,
)

__all__ = [
    "BITS_OF",
    "COMPENSATION_SLOT",
    "ROUNDING_KEY",
    "compute_scalar",
    "compute_type_of",
    "kernel_view",
    "load",
    "load_param",
    "rounding_of",
    "store",
    "store_param",
]

#: The integer type a kernel sees a 16-bit floating-point format's bits as.
BITS_OF = {"bfloat16": np.dtype(np.uint16), "float16": np.dtype(np.int16)}
_FORMAT_OF_BITS = {bits: name for name, bits in BITS_OF.items()}
# By dtype: ``dtype.name`` is computed in Python, a microsecond on every step's arrays.
_BITS_OF_DTYPE = {np.dtype(BFLOAT16): BITS_OF["bfloat16"], np.dtype(np.float16): BITS_OF["float16"]}

#: The column of a kernel's hyperparameter row that holds the segment's random key.
ROUNDING_KEY = 3

#: The slot of a Kahan compensation buffer in the random words of stochastic rounding (the
#: parameter is slot 0, state array k slot k + 1).
COMPENSATION_SLOT = 63


def kernel_view(array):
    """``array`` as the kernels see it: bfloat16 and float16 arrays as their bits."""
    bits = _BITS_OF_DTYPE.get(array.dtype)
    return array if bits is None else array.view(bits)


def compute_type_of(dtype: np.dtype) -> np.dtype:
    """The type a rule computes in for arrays of ``dtype`` (or of its kernel view): float32
    and float64 their own, the 16-bit formats float32."""
    dtype = np.dtype(dtype)
    if dtype in _BITS_OF_DTYPE or dtype in _FORMAT_OF_BITS:
        return np.dtype(np.float32)
    return dtype


def _is_bf16(array) -> bool:
    return isinstance(array, types.Array) and array.dtype == types.uint16


def _is_f16(array) -> bool:
    return isinstance(array, types.Array) and array.dtype == types.int16


def load(array, i):  # pragma: no cover - the overload below replaces it in compiled code
    """Element ``i`` of ``array`` as a value of its compute type (``None`` for no array)."""
    if array is None:
        return None
    if hasattr(array, "codes"):  # 8-bit state, see fastopt._quantized
        return array.load(i)
    if array.dtype == np.uint16:
        return bf16_decode(array[i])
    if array.dtype == np.int16:
        return f16_decode(array[i])
    return array[i]


def store(array, i, value, rounding, slot):  # pragma: no cover - replaced by the overload
    """Write ``value`` to element ``i`` of ``array`` (nothing for no array); a 16-bit
    format rounds stochastically when ``rounding`` is a ``(key, base)`` pair, with the
    random word of ``slot`` and element ``base + i``."""
    if array is None:
        return
    if array.dtype == np.uint16 or array.dtype == np.int16:
        bf16 = array.dtype == np.uint16
        if rounding is None:
            array[i] = bf16_nearest(value) if bf16 else f16_nearest(value)
        else:
            word = random_word(rounding[0], slot, rounding[1] + i)
            array[i] = bf16_stochastic(value, word) if bf16 else f16_stochastic(value, word)
    else:
        array[i] = value


def compute_scalar(value, array):  # pragma: no cover - the overload below replaces it
    """The float64 ``value`` rounded once to the compute type of ``array``'s elements."""
    return compute_type_of(array.dtype).type(value)


def rounding_of(key, base, stochastic):  # pragma: no cover - replaced by the overload
    """The stores' rounding: ``None`` (to nearest) unless ``stochastic`` is given, then the
    segment's random ``key`` (a float64 holding a 32-bit word) and ``base``."""
    return None if stochastic is None else (np.uint32(key), np.int64(base))


def load_param(param, master, i):  # pragma: no cover - replaced by the overload
    """The parameter's value: its float32 master copy's when it has one."""
    return load(param, i) if master is None else master[i]


def store_param(param, master, comp, i, old, new, rounding):  # pragma: no cover
    """Write the parameter's ``new`` value (``old`` is what :func:`load_param` read): to the
    master copy and, rounded, to the parameter; or through the Kahan compensation ``comp``
    (``c += new - old; p = round(old + c); c += old - p``, the compensation rounded too)."""
    if master is not None:
        master[i] = new
        store(param, i, new, rounding, 0)
    elif comp is not None:
        carried = load(comp, i) + (new - old)
        store(param, i, old + carried, rounding, 0)
        store(comp, i, carried + (old - load(param, i)), rounding, COMPENSATION_SLOT)
    else:
        store(param, i, new, rounding, 0)


@overload(load, inline="always")
def _load(array, i):
    if isinstance(array, types.NoneType):
        return lambda array, i: None
    if _is_bf16(array):
        return lambda array, i: bf16_decode(array[i])
    if _is_f16(array):
        return lambda array, i: f16_decode(array[i])
    if isinstance(array, types.Array):
        return lambda array, i: array[i]
    return None  # another format's overload (fastopt._quantized)


@overload(store, inline="always")
def _store(array, i, value, rounding, slot):
    if isinstance(array, types.NoneType):
        return lambda array, i, value, rounding, slot: None
    if _is_bf16(array) or _is_f16(array):
        nearest, stochastic = (
            (bf16_nearest, bf16_stochastic) if _is_bf16(array) else (f16_nearest, f16_stochastic)
        )
        if isinstance(rounding, types.NoneType):

            def store_nearest(array, i, value, rounding, slot):
                array[i] = nearest(value)

            return store_nearest

        def store_stochastic(array, i, value, rounding, slot):
            array[i] = stochastic(value, random_word(rounding[0], slot, rounding[1] + i))

        return store_stochastic

    def store_element(array, i, value, rounding, slot):
        array[i] = value

    return store_element


@overload(compute_scalar, inline="always")
def _compute_scalar(value, array):
    element_type = types.float32 if _is_bf16(array) or _is_f16(array) else array.dtype
    return lambda value, array: element_type(value)


@overload(rounding_of, inline="always")
def _rounding_of(key, base, stochastic):
    if isinstance(stochastic, types.NoneType):
        return lambda key, base, stochastic: None
    return lambda key, base, stochastic: (np.uint32(key), np.int64(base))


@overload(load_param, inline="always")
def _load_param(param, master, i):
    if isinstance(master, types.NoneType):
        return lambda param, master, i: load(param, i)
    return lambda param, master, i: master[i]


@overload(store_param, inline="always")
def _store_param(param, master, comp, i, old, new, rounding):
    if not isinstance(master, types.NoneType):

        def store_with_master(param, master, comp, i, old, new, rounding):
            master[i] = new
            store(param, i, new, rounding, 0)

        return store_with_master
    if not isinstance(comp, types.NoneType):

        def store_compensated(param, master, comp, i, old, new, rounding):
            carried = load(comp, i) + (new - old)
            store(param, i, old + carried, rounding, 0)
            store(comp, i, carried + (old - load(param, i)), rounding, COMPENSATION_SLOT)

        return store_compensated
    return lambda param, master, comp, i, old, new, rounding: store(param, i, new, rounding, 0)
