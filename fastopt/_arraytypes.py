"""The arrays fastopt takes: their dtypes, and how a device array is recognized (without
importing ``numba.cuda``). A leaf: imports nothing from fastopt."""

from __future__ import annotations

import ml_dtypes
import numpy as np

__all__ = [
    "BFLOAT16",
    "FLOAT_DTYPES",
    "LOW_PRECISION_DTYPES",
    "PARAM_DTYPES",
    "grad_dtypes",
    "is_device_array",
    "state_dtypes",
]

BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
#: The 16-bit floating-point formats (see :mod:`fastopt.precision`).
LOW_PRECISION_DTYPES = (BFLOAT16, np.dtype(np.float16))
#: The dtypes a parameter may have.
PARAM_DTYPES = FLOAT_DTYPES + LOW_PRECISION_DTYPES
_FLOAT32 = np.dtype(np.float32)


def grad_dtypes(param_dtype: np.dtype) -> tuple[np.dtype, ...]:
    """The dtypes a gradient of a ``param_dtype`` parameter may have: the parameter's, and
    float32 for a 16-bit parameter."""
    if param_dtype in LOW_PRECISION_DTYPES:
        return (param_dtype, _FLOAT32)
    return (param_dtype,)


def state_dtypes(param_dtype: np.dtype) -> tuple[np.dtype, ...]:
    """The dtypes a state array of a ``param_dtype`` parameter may have: the parameter's (or
    float32 for a 16-bit parameter), and bfloat16."""
    own = _FLOAT32 if param_dtype in LOW_PRECISION_DTYPES else param_dtype
    return (own, BFLOAT16)


def is_device_array(obj: object) -> bool:
    """A CUDA device array: numba's (real or simulated) or any CUDA Array Interface exporter.

    Checked without importing ``numba.cuda``: numba's device arrays carry the class flag
    ``__cuda_ndarray__``; CuPy arrays and torch CUDA tensors expose
    ``__cuda_array_interface__`` (torch CPU tensors raise AttributeError on it).

    Raises
    ------
    TypeError
        For an exporter that refuses to export (a torch tensor that requires grad).
    """
    if getattr(type(obj), "__cuda_ndarray__", False):
        return True
    try:
        return hasattr(obj, "__cuda_array_interface__")
    except RuntimeError as error:
        # torch refuses to export a tensor that requires grad; its detached view shares the
        # memory and exports fine.
        raise TypeError(
            f"this {type(obj).__name__} does not expose its memory ({error}); pass a view "
            "that does, such as tensor.detach()"
        ) from error
