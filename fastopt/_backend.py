"""Where arrays live (host memory or a CUDA device) and the few operations that differ.

The optimizer and the validation helpers never branch on the kind of array themselves: they
ask its backend to validate, allocate, flatten, copy to the host and back, and to give the
memory span an array covers. :data:`HOST` handles NumPy arrays; the CUDA backend
(:mod:`fastopt.cuda._arrays`) is imported the first time a device array is seen, so CPU-only
use of fastopt never loads ``numba.cuda``.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from fastopt._arraytypes import is_device_array
from fastopt._storage import kernel_view
from fastopt._words import with_article

__all__ = ["HOST", "ArrayBackend", "HostArrays", "backend_of", "is_device_array", "location_of"]


class ArrayBackend(Protocol):
    """The operations the optimizer needs from one kind of array."""

    #: How error messages name the arrays' location ("host memory", "a CUDA device").
    location: str

    def is_array(self, obj: object) -> bool: ...

    def dtype_shape(self, array: Any) -> tuple[np.dtype, tuple[int, ...]]: ...

    def full_like(self, array: Any, value: float, dtype: np.dtype | None = None) -> Any: ...

    def copy(self, array: Any, dtype: np.dtype | None = None) -> Any: ...

    def flat(self, array: Any) -> Any:
        """The one-dimensional view the kernels take (16-bit formats as their bits, see
        :func:`fastopt._storage.kernel_view`)."""
        ...

    def to_host(self, array: Any) -> np.ndarray: ...

    def from_host(self, array: np.ndarray, like: Any) -> Any: ...

    def span(self, array: Any) -> tuple[int, int]: ...


class HostArrays:
    """NumPy arrays in host memory (validation itself lives in :mod:`fastopt._checks`)."""

    location = "host memory"

    def is_array(self, obj: object) -> bool:
        return isinstance(obj, np.ndarray)

    def dtype_shape(self, array: np.ndarray) -> tuple[np.dtype, tuple[int, ...]]:
        return array.dtype, array.shape

    def full_like(
        self, array: np.ndarray, value: float, dtype: np.dtype | None = None
    ) -> np.ndarray:
        return np.full(array.shape, value, dtype=array.dtype if dtype is None else dtype)

    def copy(self, array: np.ndarray, dtype: np.dtype | None = None) -> np.ndarray:
        return np.array(array, dtype=dtype, order="C", copy=True)

    def flat(self, array: np.ndarray) -> np.ndarray:
        if array.ndim != 1:
            flat = array.reshape(-1)
            # numpy.matrix stays 2-D through reshape: its plain-ndarray view does not.
            array = flat if flat.ndim == 1 else array.view(np.ndarray).reshape(-1)
        return kernel_view(array)

    def to_host(self, array: np.ndarray) -> np.ndarray:
        return array.copy()

    def from_host(self, array: np.ndarray, like: np.ndarray) -> np.ndarray:
        return np.array(array, order="C", copy=True)

    def span(self, array: np.ndarray) -> tuple[int, int]:
        start = array.__array_interface__["data"][0]
        return start, start + array.nbytes


HOST = HostArrays()


def backend_of(obj: object) -> ArrayBackend | None:
    """The backend of an array, or None when ``obj`` is no array fastopt can update."""
    if isinstance(obj, np.ndarray):
        return HOST
    if is_device_array(obj):
        from fastopt.cuda._arrays import CUDA_ARRAYS

        return CUDA_ARRAYS
    return None


def location_of(obj: object) -> str:
    """Where ``obj`` lives, for error messages."""
    backend = backend_of(obj)
    return with_article(type(obj).__name__) + (f" in {backend.location}" if backend else "")
