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
from fastopt._checks import FLOAT_DTYPES, shares_memory
from fastopt.cuda._kernels import SIMULATOR, fill

__all__ = ["CUDA_ARRAYS", "CudaArrays", "Layout", "as_kernel_array", "layout"]


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
    """The layout of a device array, read from its (CUDA) array interface."""
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
    """A numba device array over the same memory (no copy, no synchronization)."""
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
        if where.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name} must have dtype float32 or float64, got {where.dtype}")
        if not where.c_contiguous:
            raise ValueError(
                f"{name} must be C-contiguous (torch: .contiguous(); CuPy: cupy.ascontiguousarray)"
            )
        if where.readonly:
            raise ValueError(f"{name} must be writeable, got a read-only array")
        return array

    def check_grad(self, name: str, grad: Any, param: Any) -> Any:
        where, param_where = layout(grad), layout(param)
        if where.dtype != param_where.dtype:
            raise TypeError(
                f"{name} must have the parameter's dtype {param_where.dtype}, got {where.dtype}"
            )
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
        if where.dtype != param_where.dtype:
            raise TypeError(
                f"{name} must have the parameter's dtype {param_where.dtype}, got {where.dtype}"
            )
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
        out = cuda.device_array(where.shape, where.dtype if dtype is None else dtype)
        fill(out.reshape(where.size), value)
        # Updates run on the gradient's stream, which may not wait for the default stream.
        cuda.synchronize()
        return out

    def copy(self, array: Any, dtype: np.dtype | None = None) -> Any:
        where = layout(array)
        if dtype is not None and np.dtype(dtype) != where.dtype:  # converted on the host
            return cuda.to_device(self.to_host(array).astype(dtype))
        out = cuda.device_array(where.shape, where.dtype)
        out.copy_to_device(as_kernel_array(array))
        cuda.synchronize()
        return out

    def flat(self, array: Any) -> Any:
        view = as_kernel_array(array)
        return view.reshape(view.size)

    def to_host(self, array: Any) -> np.ndarray:
        # An update may still run on another stream than the copy's: wait for the device.
        cuda.synchronize()
        return as_kernel_array(array).copy_to_host()

    def from_host(self, array: np.ndarray, like: Any) -> Any:
        return cuda.to_device(np.ascontiguousarray(array))

    def span(self, array: Any) -> tuple[int, int]:
        where = layout(array)
        return where.start, where.start + where.nbytes


CUDA_ARRAYS = CudaArrays()
