"""CUDA device arrays as fastopt's second array backend (see :mod:`fastopt._backend`).

Accepted without copies: numba device arrays, and any object exposing
``__cuda_array_interface__`` (CuPy arrays, torch CUDA tensors), viewed through
``numba.cuda.as_cuda_array``. Validation reads the interface itself (dtype, shape, strides,
read-only flag, address), so checking an array never wraps or synchronizes it.

Arrays are assumed to live on the current CUDA device (numba's current context); select
another with ``numba.cuda.gpus[i]`` as a context manager around the optimizer's use.
"""

from __future__ import annotations

import ctypes
import math
from typing import Any, NamedTuple

import numpy as np
from numba import cuda

from fastopt._backend import is_device_array
from fastopt._checks import PARAM_DTYPES, grad_dtypes, shares_memory, state_dtypes
from fastopt._storage import BITS_OF
from fastopt.cuda._kernels import SIMULATOR, fill
from fastopt.precision import BFLOAT16

__all__ = ["CUDA_ARRAYS", "BFloat16Array", "CudaArrays", "Layout", "as_kernel_array", "layout"]


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


class CudaArrays:
    """Device arrays: validation, allocation, flat views, host copies, memory spans."""

    location = "CUDA device memory"

    def is_array(self, obj: object) -> bool:
        return is_device_array(obj)

    def check_param(self, name: str, array: Any) -> Any:
        where = layout(array)
        if where.dtype not in PARAM_DTYPES:
            raise TypeError(
                f"{name} must have dtype float32, float64, float16 or bfloat16 (as a "
                f"fastopt.cuda.BFloat16Array), got {where.dtype}"
            )
        if not where.c_contiguous:
            raise ValueError(
                f"{name} must be C-contiguous (torch: .contiguous(); CuPy: cupy.ascontiguousarray)"
            )
        if where.readonly:
            raise ValueError(f"{name} must be writeable, got a read-only array")
        return array

    def check_grad(self, name: str, grad: Any, param: Any) -> Any:
        where, param_where = layout(grad), layout(param)
        allowed = grad_dtypes(param_where.dtype)
        if where.dtype not in allowed:
            names = " or ".join(dtype.name for dtype in allowed)
            raise TypeError(f"{name} must have the parameter's dtype {names}, got {where.dtype}")
        if where.shape != param_where.shape:
            raise ValueError(
                f"{name} must have the parameter's shape {param_where.shape}, got {where.shape}"
            )
        if not where.c_contiguous:
            raise ValueError(
                f"{name} must be C-contiguous (torch: .contiguous(); CuPy: cupy.ascontiguousarray)"
            )
        if shares_memory(grad, param):
            raise ValueError(f"{name} shares memory with its parameter; pass a separate array")
        return grad

    def check_state(self, name: str, array: Any, param: Any) -> Any:
        self.check_param(name, array)
        where, param_where = layout(array), layout(param)
        allowed = state_dtypes(param_where.dtype)
        if where.dtype not in allowed:
            names = " or ".join(dtype.name for dtype in allowed)
            raise TypeError(f"{name} must have dtype {names}, got {where.dtype}")
        if where.size != param_where.size:
            raise ValueError(
                f"{name} must have the parameter's size {param_where.size}, got {where.size}"
            )
        return array

    def dtype_shape(self, array: Any) -> tuple[np.dtype, tuple[int, ...]]:
        where = layout(array)
        return where.dtype, where.shape

    def full_like(self, array: Any, value: float, dtype: np.dtype | None = None) -> Any:
        where = layout(array)
        dtype = where.dtype if dtype is None else np.dtype(dtype)
        bits = BITS_OF.get(dtype.name)
        if bits is None:
            out = cuda.device_array(where.shape, dtype)
            fill(out.reshape(where.size), value)
        else:  # a 16-bit format: its bits, rounded on the host
            out = cuda.device_array(where.shape, bits)
            fill(out.reshape(where.size), int(np.array(value, dtype).view(bits)))
            out = BFloat16Array(out) if dtype == BFLOAT16 else out.view(dtype)
        # Updates run on the gradient's stream, which may not wait for the default stream.
        cuda.synchronize()
        return out

    def copy(self, array: Any, dtype: np.dtype | None = None) -> Any:
        where = layout(array)
        if dtype is not None and np.dtype(dtype) != where.dtype:  # converted on the host
            return self.from_host(self.to_host(array).astype(dtype), array)
        out = cuda.device_array(where.shape, as_kernel_array(array).dtype)
        out.copy_to_device(as_kernel_array(array))
        cuda.synchronize()
        return BFloat16Array(out) if where.dtype == BFLOAT16 else out

    def flat(self, array: Any) -> Any:
        # As the kernels see it: a 16-bit format as its bits (a BFloat16Array's already are).
        view = as_kernel_array(array)
        view = view.reshape(view.size)
        return view.view(BITS_OF["float16"]) if view.dtype == np.float16 else view

    def to_host(self, array: Any) -> np.ndarray:
        # An update may still run on another stream than the copy's: wait for the device.
        cuda.synchronize()
        host = as_kernel_array(array).copy_to_host()
        return host.view(BFLOAT16) if isinstance(array, BFloat16Array) else host

    def from_host(self, array: np.ndarray, like: Any) -> Any:
        if array.dtype == BFLOAT16:
            return BFloat16Array.from_host(array)
        return cuda.to_device(np.ascontiguousarray(array))

    def span(self, array: Any) -> tuple[int, int]:
        where = layout(array)
        return where.start, where.start + where.nbytes


CUDA_ARRAYS = CudaArrays()
