"""Validation at the public boundary: arrays and hyperparameters.

Every public entry point checks everything here before it writes anything, and raises
``TypeError`` (wrong kind of object or dtype) or ``ValueError`` (wrong value, shape or memory
layout) naming the argument, what was expected and what was given. Kernels do no checking.

Arrays are NumPy arrays or CUDA device arrays; a parameter, its gradient and its state must
live in the same place (the checks of device arrays are in :mod:`fastopt.cuda._arrays`).

Options are checked the same way everywhere: a flag must be a ``bool`` (:func:`check_bool`),
a named choice a ``str`` among the allowed ones (:func:`check_choice`), and a keyword a
constructor forwards must be one the receiver takes (:func:`check_keywords`). The wording
helpers :func:`plural` and :func:`with_article` keep messages grammatical.
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Collection, Iterable, Mapping, Sequence

import numpy as np

from fastopt._arraytypes import (
    FLOAT_DTYPES,
    LOW_PRECISION_DTYPES,
    PARAM_DTYPES,
    grad_dtypes,
    state_dtypes,
)
from fastopt._backend import HOST, backend_of, location_of
from fastopt._words import plural, with_article

__all__ = [
    "FLOAT_DTYPES",
    "LOW_PRECISION_DTYPES",
    "PARAM_DTYPES",
    "check_beta",
    "check_betas",
    "check_bool",
    "check_choice",
    "check_disjoint",
    "check_fraction",
    "check_grad",
    "check_keywords",
    "check_nonnegative",
    "check_param",
    "check_real",
    "check_state",
    "check_step",
    "describe",
    "grad_dtypes",
    "plural",
    "same_place",
    "shares_memory",
    "state_dtypes",
    "with_article",
]

_ARRAY_KINDS = "a numpy.ndarray or a CUDA device array"


def _device_or_raise(name: str, array: object):
    backend = backend_of(array)
    if backend is None:
        raise TypeError(f"{name} must be {_ARRAY_KINDS}, got {type(array).__name__}")
    return backend


def same_place(name: str, array: object, param: object):
    """The backend of ``array``, which must be that of ``param``."""
    backend = _device_or_raise(name, array)
    if backend is not backend_of(param):
        raise TypeError(
            f"{name} is {location_of(array)} but its parameter is {location_of(param)}: a "
            "parameter, its gradient and its state must all be in host memory or all on the device"
        )
    return backend


def _dtype_names(dtypes: Sequence[np.dtype]) -> str:
    names = [str(dtype) for dtype in dtypes]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def check_param(name: str, array: object) -> np.ndarray:
    """A parameter (or state) array: a writeable, C-contiguous ndarray of float32, float64,
    bfloat16 or float16.

    A CUDA device array is checked the same way by its backend and returned as given.
    """
    if not isinstance(array, np.ndarray):
        return _device_or_raise(name, array).check_param(name, array)
    if array.dtype not in PARAM_DTYPES:
        raise TypeError(f"{name} must have dtype {_dtype_names(PARAM_DTYPES)}, got {array.dtype}")
    if not array.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (use numpy.ascontiguousarray)")
    if not array.flags.writeable:
        raise ValueError(f"{name} must be writeable, got a read-only array")
    return array


def check_grad(
    name: str, grad: object, param: np.ndarray, *, check_aliasing: bool = True
) -> np.ndarray:
    """A gradient: a C-contiguous array of its parameter's dtype and shape, not aliasing it.

    ``check_aliasing=False`` leaves the aliasing test of host arrays to the caller (the
    optimizer checks each gradient against every array its step writes at once)."""
    if not (isinstance(grad, np.ndarray) and isinstance(param, np.ndarray)):
        backend = same_place(name, grad, param)
        if backend is not HOST:
            return backend.check_grad(name, grad, param)
    assert isinstance(grad, np.ndarray)
    if grad.dtype is not param.dtype and grad.dtype not in grad_dtypes(param.dtype):
        allowed = _dtype_names(grad_dtypes(param.dtype))
        raise TypeError(f"{name} must have the parameter's dtype {allowed}, got {grad.dtype}")
    if grad.shape != param.shape:
        raise ValueError(f"{name} must have the parameter's shape {param.shape}, got {grad.shape}")
    if not grad.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (use numpy.ascontiguousarray)")
    if check_aliasing and np.may_share_memory(grad, param):
        raise ValueError(f"{name} shares memory with its parameter; pass a separate array")
    return grad


def check_state(name: str, array: object, param: np.ndarray) -> np.ndarray:
    """A state array: writeable, C-contiguous, of its parameter's size and of one of the
    :func:`state_dtypes` of its parameter's dtype."""
    backend = same_place(name, array, param)
    if backend is not HOST:
        return backend.check_state(name, array, param)
    check_param(name, array)
    assert isinstance(array, np.ndarray)
    if array.dtype not in state_dtypes(param.dtype):
        allowed = _dtype_names(state_dtypes(param.dtype))
        raise TypeError(f"{name} must have dtype {allowed}, got {array.dtype}")
    if array.size != param.size:
        raise ValueError(f"{name} must have the parameter's size {param.size}, got {array.size}")
    return array


def check_disjoint(named_arrays: Sequence[tuple[str, np.ndarray]]) -> None:
    """No two of the arrays share memory (an update writes some of them)."""
    for i, (first_name, first) in enumerate(named_arrays):
        for second_name, second in named_arrays[i + 1 :]:
            if shares_memory(first, second):
                raise ValueError(f"{first_name} and {second_name} share memory")


def shares_memory(first: object, second: object) -> bool:
    """Whether two arrays of one backend may overlap in memory."""
    if isinstance(first, np.ndarray) and isinstance(second, np.ndarray):
        return bool(np.may_share_memory(first, second))
    backend = backend_of(first)
    assert backend is not None
    (start, end), (other_start, other_end) = backend.span(first), backend.span(second)
    return start < other_end and other_start < end


def check_real(name: str, value: object) -> float:
    """A real number (``int``, ``float`` or a NumPy scalar of those kinds; not a ``bool``), as a
    float; it may be infinite or NaN."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    return float(value)


def _finite_real(name: str, value: object) -> float:
    value = check_real(name, value)
    if not math.isfinite(value):
        raise ValueError(f"Invalid {name}: {value} (must be finite)")
    return value


def check_nonnegative(name: str, value: object) -> float:
    """A finite real number ``>= 0``."""
    value = _finite_real(name, value)
    if value < 0.0:
        raise ValueError(f"Invalid {name}: {value} (must be >= 0)")
    return value


def check_beta(name: str, value: object) -> float:
    """A finite real number in ``[0, 1)``."""
    value = _finite_real(name, value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"Invalid {name}: {value} (must be in [0, 1))")
    return value


def check_betas(name: str, value: object, count: int = 2) -> tuple[float, ...]:
    """``count`` betas, each a finite real number in ``[0, 1)``: ``(beta1, beta2, ...)``."""
    if not isinstance(value, (tuple, list)) or len(value) != count:
        names = ", ".join(f"beta{k + 1}" for k in range(count))
        what = "a pair" if count == 2 else f"a tuple of {count}"
        raise ValueError(f"{name} must be {what} ({names}), got {value!r}")
    return tuple(check_beta(f"beta{k + 1} ({name}[{k}])", beta) for k, beta in enumerate(value))


def check_fraction(name: str, value: object) -> float:
    """A finite real number in ``[0, 1]``."""
    value = _finite_real(name, value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"Invalid {name}: {value} (must be in [0, 1])")
    return value


def check_bool(name: str, value: object) -> bool:
    """A flag: a ``bool`` or a NumPy bool scalar (``numpy.True_``), returned as a ``bool``.

    Anything else raises ``TypeError``, values that merely have a truth value included: ``1``,
    ``"yes"``, ``None`` and NumPy arrays (``numpy.array(True)`` too).
    """
    if value is True or value is False:
        return value  # type: ignore[return-value]
    if isinstance(value, np.bool_):
        return bool(value)
    raise TypeError(f"{name} must be a bool, got {describe(value)}")


def check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    """One of the strings ``choices``, returned as a plain ``str``.

    Raises
    ------
    TypeError
        If ``value`` is not a ``str``.
    ValueError
        If it is none of ``choices`` (the message lists them).
    """
    allowed = _listing(choices)
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, one of {allowed}; got {describe(value)}")
    if value not in choices:
        raise ValueError(f"Invalid {name}: {value!r} (must be one of {allowed})")
    return str(value)


def check_keywords(function: str, keywords: Mapping[str, object], allowed: Collection[str]) -> None:
    """Refuse a keyword argument outside ``allowed``, as Python refuses one a function lacks.

    A constructor that passes its extra keywords (``**gradient_options``) on to another calls
    this first, with its own name as ``function`` (``"Adam.__init__"``): the message then names
    the callable the user called, not the one the keywords were forwarded to.
    """
    for keyword in keywords:
        if keyword not in allowed:
            raise TypeError(f"{function}() got an unexpected keyword argument {keyword!r}")


def describe(value: object) -> str:
    """A value for an error message: its type and a ``repr`` cut to a readable length."""
    return f"{type(value).__name__} {_short_repr.repr(value)}"


_short_repr = reprlib.Repr()
_short_repr.maxstring = _short_repr.maxother = 60


def _listing(choices: Iterable[str]) -> str:
    return ", ".join(map(repr, choices))


def check_step(value: object) -> int:
    """The 1-based count of updates, this one included."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"step must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"Invalid step: {value} (must be >= 1, counting this update)")
    return int(value)
