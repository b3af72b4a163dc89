"""Device arrays as numba sees them: :class:`BFloat16Array`, the layout read from a CUDA Array
Interface, and the no-copy numba view the kernels take (:func:`as_kernel_array`)."""

from __future__ import annotations

import ctypes
import math
from typing import Any, NamedTuple

import numpy as np
from numba import cuda
from numba.core import config

from fastopt._arraytypes import BFLOAT16, is_device_array

__all__ = ["SIMULATOR", "BFloat16Array", "Layout", "as_kernel_array", "layout"]

#: True when numba runs kernels in its CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``).
SIMULATOR = bool(config.ENABLE_CUDASIM)


class BFloat16Array:
    """A CUDA device array of bfloat16 values, held as their bits in a 16-bit integer
    device array (numba, CuPy and the CUDA Array Interface have no bfloat16 type).

    fastopt keeps bfloat16 state on the device in this form, and takes bfloat16 parameters
    and gradients in it: wrap the bits of a torch CUDA tensor without a copy, as
    ``BFloat16Array(tensor.detach().view(torch.int16))``, or move host values with
    :meth:`from_host`.

    Parameters
    ----------
    bits
        A C-contiguous device array of dtype uint16 or int16 (numba's or a CUDA Array
        Interface exporter), whose elements are the bfloat16 values' bit patterns.
    """

    __fastopt_bfloat16__ = True

    def __init__(self, bits: Any) -> None:
        if isinstance(bits, BFloat16Array) or not is_device_array(bits):
            raise TypeError(
                f"bits must be a uint16 or int16 device array, got {type(bits).__name__}"
            )
        where = layout(bits)
        if where.dtype not in (np.uint16, np.int16):
            raise TypeError(f"bits must have dtype uint16 or int16, got {where.dtype}")
        if not where.c_contiguous:
            raise ValueError("bits must be C-contiguous")
        self.bits = bits

    @classmethod
    def from_host(cls, array: np.ndarray) -> BFloat16Array:
        """A device copy of a host ``ml_dtypes.bfloat16`` array."""
        array = np.ascontiguousarray(array)
        if array.dtype != BFLOAT16:
            raise TypeError(f"array must have dtype bfloat16, got {array.dtype}")
        return cls(cuda.to_device(array.view(np.uint16)))

    @property
    def shape(self) -> tuple[int, ...]:
        """The array's shape (its bits')."""
        return layout(self.bits).shape

    @property
    def size(self) -> int:
        """The number of elements."""
        return layout(self.bits).size

    @property
    def dtype(self) -> np.dtype:
        """``ml_dtypes.bfloat16``."""
        return BFLOAT16

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        """The bits' interface (``"<u2"``): what other libraries can see of it."""
        where = layout(self.bits)
        return {
            "shape": where.shape,
            "typestr": "<u2",
            "data": (where.start, where.readonly),
            "strides": None,
            "version": 3,
        }

    def copy_to_host(self) -> np.ndarray:
        """A host copy, as an ``ml_dtypes.bfloat16`` array."""
        return as_kernel_array(self.bits).copy_to_host().view(BFLOAT16)

    def __repr__(self) -> str:
        return f"BFloat16Array(shape={self.shape})"


class Layout(NamedTuple):
    """What validation needs to know about a device array."""

    start: int
    shape: tuple[int, ...]
    dtype: np.dtype
    c_contiguous: bool
    readonly: bool

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize


def _is_c_contiguous(shape: tuple[int, ...], strides, itemsize: int) -> bool:
    if strides is None:
        return True
    expected = itemsize
    for extent, stride in zip(reversed(shape), reversed(strides), strict=True):
        if extent > 1 and stride != expected:
            return False
        expected *= extent
    return True


def layout(array: Any) -> Layout:
    """The layout of a device array, read from its (CUDA) array interface (a
    :class:`BFloat16Array`'s: its bits', as bfloat16)."""
    if isinstance(array, BFloat16Array):
        return layout(array.bits)._replace(dtype=BFLOAT16)
    if hasattr(array, "__cuda_array_interface__"):
        interface = array.__cuda_array_interface__
    else:
        # numba's simulated device arrays wrap host memory, which stands in for the device's;
        # the host array interface has the same fields.
        interface = array.__array_interface__
    shape = tuple(int(extent) for extent in interface["shape"])
    dtype = np.dtype(interface["typestr"])
    start, readonly = interface["data"]
    contiguous = _is_c_contiguous(shape, interface.get("strides"), dtype.itemsize)
    return Layout(int(start or 0), shape, dtype, contiguous, bool(readonly))


def _simulated_view(array: Any) -> Any:
    """A CUDA Array Interface exporter seen by the simulator, whose device memory is host
    memory: a simulated numba array over the same bytes (no copy, as on a real device)."""
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

    where = layout(array)
    if where.nbytes == 0:
        return FakeCUDAArray(np.empty(where.shape, where.dtype))
    buffer = (ctypes.c_byte * where.nbytes).from_address(where.start)
    return FakeCUDAArray(np.frombuffer(buffer, where.dtype).reshape(where.shape))


def as_kernel_array(array: Any) -> Any:
    """A numba device array over the same memory (no copy, no synchronization); a
    :class:`BFloat16Array`'s bits."""
    if isinstance(array, BFloat16Array):
        bits = as_kernel_array(array.bits)
        return bits.view(np.uint16) if bits.dtype == np.int16 else bits
    if getattr(type(array), "__cuda_ndarray__", False):
        return array
    if SIMULATOR:
        return _simulated_view(array)
    return cuda.as_cuda_array(array, sync=False)
