"""CUDA device arrays as fastopt's second array backend (see :mod:`fastopt._backend`).

Accepted without copies: numba device arrays, and any object exposing
``__cuda_array_interface__`` (CuPy arrays, torch CUDA tensors), viewed through
``numba.cuda.as_cuda_array``. Validation reads the interface itself (dtype, shape, strides,
read-only flag, address), so checking an array never wraps or synchronizes it.

Arrays are assumed to live on the current CUDA device (numba's current context); select
another with ``numba.cuda.gpus[i]`` as a context manager around the optimizer's use.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import cuda

from fastopt._arraytypes import BFLOAT16, PARAM_DTYPES, grad_dtypes, is_device_array, state_dtypes
from fastopt._storage import BITS_OF
from fastopt.cuda._kernels import fill
from fastopt.cuda._views import BFloat16Array, Layout, as_kernel_array, layout

__all__ = ["CUDA_ARRAYS", "BFloat16Array", "CudaArrays", "Layout", "as_kernel_array", "layout"]


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
        (start, end), (other_start, other_end) = self.span(grad), self.span(param)
        if start < other_end and other_start < end:
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
