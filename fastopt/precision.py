"""Low-precision parameters and state: bfloat16 and float16 storage, and how updates survive it.

Every optimizer takes bfloat16 (``ml_dtypes.bfloat16``, the NumPy ecosystem's bf16 dtype) and
float16 parameters besides float32 and float64 ones; their gradients are of the parameter's
dtype or float32. The kernels decode 16-bit values to float32 in registers, compute the
rule's update in float32 and round what they write back, in the same pass (see
:mod:`fastopt._storage` and :mod:`fastopt._codecs`). Per optimizer, and per parameter group:

``state_dtype`` : None, "float32", "bfloat16" or "int8"
    The state arrays' storage. None: the parameters' dtype for float32 and float64
    parameters, float32 for 16-bit ones. ``"bfloat16"`` halves the state's memory and traffic.
    ``"int8"``: block-wise dynamic 8-bit quantization as bitsandbytes does it (one ``uint8``
    code per element and one float32 scale per 256-element block, the signed dynamic map for
    state that takes both signs and the unsigned one for non-negative state; see
    :mod:`fastopt._quantized`): each state array of a parameter with at least 4,096 elements
    becomes the codes (under its own name) and the scales (``"<name>_absmax"``), decoded,
    updated and re-encoded in the step's one pass. Smaller parameters, and the state a rule
    declares unfit for quantization (a copy of the parameters, as Schedule-Free's ``z``),
    keep the state ``None`` gives. Host arrays only.
``master_weights`` : bool
    Keep a float32 copy of each 16-bit parameter (state ``"master_param"``): the step updates
    the copy and writes the rounded parameter in the same pass, so updates smaller than the
    parameter's precision accumulate.
``kahan_sum`` : bool
    Keep a compensation buffer of the parameter's dtype (state ``"kahan_comp"``) that
    carries what rounding the parameter lost to the next step (Kahan summation). Excludes
    ``master_weights``.
``stochastic_rounding`` : bool
    Round every 16-bit value the step writes (parameters, the parameter written from its
    master copy, bfloat16 state, the compensation) up or down at random, with probabilities
    proportional to the distance: unbiased, so small updates survive in expectation. The
    random bits are a hash of the optimizer's ``seed``, the parameter's position, its update
    count, the array and the element's index: bitwise the same results for any thread count,
    launch path or resume from a checkpoint (the seed is in the state_dict).

Without any of them a 16-bit parameter is rounded to nearest (ties to even) at every step: an
update smaller than half the spacing of the values around the parameter is lost, and
training with small learning rates stalls (see the README's convergence table). The three
options only apply to 16-bit parameters (and ``stochastic_rounding`` to bfloat16 state); on
float32 and float64 parameters they change nothing.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from typing import Any

import numpy as np

from fastopt._arraytypes import BFLOAT16, LOW_PRECISION_DTYPES
from fastopt._checks import check_bool

__all__ = [
    "ABSMAX_SUFFIX",
    "BFLOAT16",
    "KAHAN_COMP",
    "LOW_PRECISION_DTYPES",
    "MASTER_PARAM",
    "MIN_QUANTIZED_SIZE",
    "PRECISION_DEFAULTS",
    "QUANTIZED",
    "STATE_DTYPES",
    "absmax_name",
    "check_precision",
    "check_seed",
    "is_low_precision",
    "precision_state",
    "quantizes",
    "rounding_key",
    "rounds_stochastically",
    "state_dtype_of",
]


#: The values ``state_dtype`` takes.
STATE_DTYPES = (None, "float32", "bfloat16", "int8")

#: The dtype of a quantized state array's codes.
QUANTIZED = np.dtype(np.uint8)

#: Parameters with fewer elements keep unquantized state under ``state_dtype="int8"``.
MIN_QUANTIZED_SIZE = 4096

#: The precision options of every optimizer, with their defaults (parameter-group keys).
PRECISION_DEFAULTS: Mapping[str, Any] = {
    "state_dtype": None,
    "master_weights": False,
    "kahan_sum": False,
    "stochastic_rounding": False,
}

#: The state entries of a 16-bit parameter's float32 copy and Kahan compensation buffer.
MASTER_PARAM = "master_param"
KAHAN_COMP = "kahan_comp"


def is_low_precision(dtype: np.dtype) -> bool:
    """Whether ``dtype`` is a 16-bit floating-point format (bfloat16, float16)."""
    return dtype in LOW_PRECISION_DTYPES


def check_precision(group: Mapping[str, Any]) -> None:
    """Raise ``TypeError``/``ValueError`` for an invalid precision option of ``group``."""
    state_dtype = group["state_dtype"]
    if state_dtype is not None and not isinstance(state_dtype, str):
        raise TypeError(f"state_dtype must be None or a str, got {type(state_dtype).__name__}")
    if state_dtype not in STATE_DTYPES:
        raise ValueError(
            f"state_dtype must be one of {', '.join(map(repr, STATE_DTYPES))}, got {state_dtype!r}"
        )
    for name in ("master_weights", "kahan_sum", "stochastic_rounding"):
        check_bool(name, group[name])
    if group["master_weights"] and group["kahan_sum"]:
        raise ValueError(
            "master_weights and kahan_sum exclude each other: a parameter either has a "
            "float32 copy or a compensation buffer"
        )


def check_seed(seed: object) -> int:
    """The random seed of stochastic rounding: an int in [0, 2^64)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if not 0 <= seed < 1 << 64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    return operator.index(seed)


def state_dtype_of(group: Mapping[str, Any], param_dtype: np.dtype) -> np.dtype:
    """The dtype a parameter of ``param_dtype`` in ``group`` keeps its unquantized state
    arrays in (under ``"int8"``: those it does not quantize)."""
    option = group["state_dtype"]
    if option is None or option == "int8":
        return np.dtype(np.float32) if is_low_precision(param_dtype) else np.dtype(param_dtype)
    return BFLOAT16 if option == "bfloat16" else np.dtype(option)


def quantizes(group: Mapping[str, Any], size: int) -> bool:
    """Whether a parameter of ``size`` elements in ``group`` keeps quantized state."""
    return group["state_dtype"] == "int8" and size >= MIN_QUANTIZED_SIZE


#: The end of the state entry of a quantized array's per-block scales.
ABSMAX_SUFFIX = "_absmax"


def absmax_name(name: str) -> str:
    """The state entry of quantized state array ``name``'s per-block scales."""
    return name + ABSMAX_SUFFIX


def precision_state(group: Mapping[str, Any], param_dtype: np.dtype) -> tuple[str, ...]:
    """The state entries a parameter of ``param_dtype`` in ``group`` keeps for its
    precision: its master copy or its compensation buffer, if any."""
    if not is_low_precision(param_dtype):
        return ()
    if group["master_weights"]:
        return (MASTER_PARAM,)
    if group["kahan_sum"]:
        return (KAHAN_COMP,)
    return ()


def rounds_stochastically(group: Mapping[str, Any], param_dtype: np.dtype) -> bool:
    """Whether the step writes a 16-bit value that ``group`` rounds stochastically."""
    if not group["stochastic_rounding"]:
        return False
    return is_low_precision(param_dtype) or group["state_dtype"] == "bfloat16"


def _mix32(x: Any) -> Any:
    """:func:`fastopt._codecs.mix32` on NumPy arrays (or scalars) of uint64 words."""
    x = np.asarray(x, dtype=np.uint64)
    x = x ^ (x >> np.uint64(16))
    x = (x * np.uint64(0x7FEB352D)) & _MASK32
    x = x ^ (x >> np.uint64(15))
    x = (x * np.uint64(0x846CA68B)) & _MASK32
    return x ^ (x >> np.uint64(16))


_MASK32 = np.uint64(0xFFFFFFFF)


def rounding_key(seed: int, index: Any, step: Any) -> Any:
    """The random key of parameter ``index`` at its update ``step`` (arrays of them, or
    ints): a 32-bit hash of the seed, the index and the step, as the float64 that the
    kernel's row carries."""
    word = _mix32(np.uint64(seed & 0xFFFFFFFF) ^ np.uint64(seed >> 32))
    word = _mix32(word ^ (np.asarray(index, dtype=np.uint64) & _MASK32))
    word = _mix32(word ^ (np.asarray(step, dtype=np.uint64) & _MASK32))
    return word.astype(np.float64) if word.ndim else float(word)
