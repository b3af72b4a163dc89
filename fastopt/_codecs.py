"""Bit-level codecs of the 16-bit floating-point formats, and the random bits of stochastic
rounding.

numba types neither ``ml_dtypes.bfloat16`` nor ``numpy.float16`` on the CPU, so kernels see
bfloat16 data as ``uint16`` bits and float16 data as ``int16`` bits (fastopt's own
convention, see :mod:`fastopt._storage`) and convert them here, in registers, to and from
float32, where the update computes:

- decoding is exact (every bfloat16 and float16 value is a float32);
- :func:`bf16_nearest` and :func:`f16_nearest` round to the nearest value, ties to even, as
  ``ml_dtypes``, torch and NumPy's ``astype(float16)`` do; NaN stays NaN (quiet, its sign
  kept) and Inf stays Inf;
- :func:`bf16_stochastic` and :func:`f16_stochastic` round up or down, to one of the two
  neighbouring values, with probabilities proportional to the distance to each (unbiased in
  expectation), using 16 (bfloat16) or 24 (float16) bits of a random word.

The random word of an element comes from :func:`random_word`, a counter-based hash of a
per-launch key, the array's slot and the element's index inside its parameter: the same
element of the same update gets the same bits whatever the thread count, the path (one
array, one flat launch, the device) or a resume from a checkpoint. The hash is Chris
Wellons' ``lowbias32`` (a 32-bit integer bijection with low bias), in 32-bit arithmetic that
vectorizes. Everything here is plain Python on NumPy scalars too: the CUDA simulator runs it
as Python and :mod:`fastopt.reference` checks it against NumPy's own conversions.
"""

from __future__ import annotations

import numpy as np
from numba.extending import intrinsic, overload

from fastopt._jit import elementwise

__all__ = [
    "bf16_decode",
    "bf16_nearest",
    "bf16_stochastic",
    "f16_decode",
    "f16_nearest",
    "f16_stochastic",
    "mix32",
    "random_word",
]

_MASK32 = 0xFFFFFFFF


@elementwise
def mix32(x):
    """``lowbias32``: a bijection of 32-bit words whose output bits all depend on every
    input bit (computed in 64-bit words, truncated after each product)."""
    x = np.uint64(x)
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(0x7FEB352D)) & np.uint64(_MASK32)
    x ^= x >> np.uint64(15)
    x = (x * np.uint64(0x846CA68B)) & np.uint64(_MASK32)
    x ^= x >> np.uint64(16)
    return np.uint32(x)


@elementwise
def random_word(key, slot, index):
    """32 random bits for element ``index`` of the array in ``slot`` under ``key``."""
    stream = mix32((np.uint64(key) ^ (np.uint64(slot) * np.uint64(0x9E3779B9))) & _MASK32)
    index = np.uint64(index)
    low = index & np.uint64(_MASK32)
    high = (index >> np.uint64(32)) * np.uint64(0x85EBCA77)
    return mix32(((np.uint64(stream) ^ low) + high) & np.uint64(_MASK32))


def _bits_of(value):  # pragma: no cover - the overload below replaces it in compiled code
    """The bits of ``value`` rounded to float32, as a uint32."""
    return np.float32(value).view(np.uint32)


def _float_of(bits):  # pragma: no cover - the overload below replaces it in compiled code
    """The float32 whose bits are ``bits``."""
    return np.uint32(bits).view(np.float32)


# A bit cast in registers. (A scalar's ``.view`` goes through stack memory, which LLVM
# promotes to registers only after it has tried to vectorize a loop the cast was inlined in.)
@intrinsic
def _bitcast(typingctx, value, target):
    to = target.instance_type

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(to))

    return to(value, target), codegen


@overload(_bits_of, inline="always")
def _bits_of_overload(value):
    return lambda value: _bitcast(np.float32(value), np.uint32)


@overload(_float_of, inline="always")
def _float_of_overload(bits):
    return lambda bits: _bitcast(np.uint32(bits), np.float32)


@elementwise
def _pick(condition, if_true, if_false):
    """``if_true`` where ``condition`` holds, else ``if_false`` (words below 2^32), without a
    branch: the codecs are straight-line code, which numba inlines into loops that vectorize."""
    chosen = np.uint64(condition)
    return np.uint64(if_true) * chosen + np.uint64(if_false) * (np.uint64(1) - chosen)


@elementwise
def bf16_decode(bits):
    """The float32 value of bfloat16 ``bits``."""
    return _float_of(np.uint32(bits) << np.uint32(16))


@elementwise
def bf16_nearest(value):
    """``value`` (float32 or float64, via float32) rounded to bfloat16, ties to even."""
    u = np.uint64(_bits_of(value))
    rounded = (u + np.uint64(0x7FFF) + ((u >> np.uint64(16)) & np.uint64(1))) >> np.uint64(16)
    quiet = (u >> np.uint64(16)) | np.uint64(0x0040)  # NaN: quiet, with its sign
    return np.uint16(_pick((u & np.uint64(0x7FFFFFFF)) > np.uint64(0x7F800000), quiet, rounded))


@elementwise
def bf16_stochastic(value, word):
    """``value`` rounded to a neighbouring bfloat16 with the random 16 low bits of ``word``."""
    u = np.uint64(_bits_of(value))
    magnitude = u & np.uint64(0x7FFFFFFF)
    rounded = (u + (np.uint64(word) & np.uint64(0xFFFF))) >> np.uint64(16)
    # Inf stays Inf, NaN stays NaN (quiet).
    kept = (u >> np.uint64(16)) | (np.uint64(magnitude > np.uint64(0x7F800000)) << np.uint64(6))
    return np.uint16(_pick(magnitude >= np.uint64(0x7F800000), kept, rounded))


@elementwise
def f16_decode(bits):
    """The float32 value of float16 ``bits`` (an int16 word)."""
    h = np.uint32(np.uint16(bits))
    sign = (h & np.uint32(0x8000)) << np.uint32(16)
    exponent = (h >> np.uint32(10)) & np.uint32(0x1F)
    mantissa = h & np.uint32(0x3FF)
    # Normal; Inf and NaN keep the largest exponent; zero and subnormals are mantissa x 2^-24.
    biased = exponent + np.uint32(112) + np.uint32(exponent == 31) * np.uint32(112)
    normal = sign | (biased << np.uint32(23)) | (mantissa << np.uint32(13))
    subnormal = sign | _bits_of(np.float32(mantissa) * np.float32(5.9604645e-08))
    return _float_of(np.uint32(_pick(exponent == 0, subnormal, normal)))


@elementwise
def _f16_overflow(u, sign):
    """float16 bits of a float32 (bits ``u``) beyond float16's range: NaN (quiet) or Inf."""
    payload = np.uint32(0x7E00) | ((u >> np.uint32(13)) & np.uint32(0x3FF))
    nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    return sign | np.uint32(_pick(nan, payload, 0x7C00))


@elementwise
def _rebias(bits):
    """float16 bits from float32 ``bits`` whose 13 low mantissa bits are to be dropped: the
    exponent's bias 127 becomes 15 (modulo 2^32, so that unused lanes do not overflow)."""
    shifted = np.uint64(bits) >> np.uint64(13)
    return np.uint32((shifted + np.uint64(0xFFFE4000)) & np.uint64(_MASK32))


_SMALLEST_NORMAL = 0x38800000  # 2^-14, float16's smallest normal, as float32 bits


@elementwise
def _f16_scaled(a):
    """A magnitude (float32 bits ``a``) below 2^-14 in units of 2^-24, exactly (larger ones
    clamped: their lanes are not used)."""
    small = np.uint32(_pick(a < np.uint32(_SMALLEST_NORMAL), a, _SMALLEST_NORMAL))
    return _float_of(small) * np.float32(16777216.0)


@elementwise
def f16_nearest(value):
    """``value`` (float32 or float64, via float32) rounded to float16, ties to even."""
    u = _bits_of(value)
    sign = (u >> np.uint32(16)) & np.uint32(0x8000)
    a = u & np.uint32(0x7FFFFFFF)
    # Normal: round the 13 dropped mantissa bits, ties to even.
    normal = sign | _rebias(a + np.uint32(0xFFF) + ((a >> np.uint32(13)) & np.uint32(1)))
    # Subnormal (or zero): adding 2^23 rounds to an integer, ties to even (1024 is the
    # smallest normal's bits).
    scaled = _f16_scaled(a)
    subnormal = sign | np.uint32((scaled + np.float32(8388608.0)) - np.float32(8388608.0))
    finite = _pick(a < np.uint32(_SMALLEST_NORMAL), subnormal, normal)
    # NaN, Inf, or at least 65520: overflows.
    bits = _pick(a >= np.uint32(0x477FF000), _f16_overflow(u, sign), finite)
    return np.int16(np.int32(bits))


@elementwise
def f16_stochastic(value, word):
    """``value`` rounded to a neighbouring float16 with the random low 24 bits of ``word``."""
    u = _bits_of(value)
    sign = (u >> np.uint32(16)) & np.uint32(0x8000)
    a = u & np.uint32(0x7FFFFFFF)
    # Normal: add random bits below float16's last mantissa bit, then truncate them.
    up = np.uint64(a) + (np.uint64(word) & np.uint64(0x1FFF))
    normal = sign | _rebias(up)
    normal = _pick(up >= np.uint64(0x47800000), sign | np.uint32(0x7C00), normal)  # past 65504
    # Subnormal: up one unit of 2^-24 with probability the fraction of it.
    scaled = _f16_scaled(a)
    whole = np.float32(np.floor(scaled))
    uniform = np.float32(np.uint32(word) >> np.uint32(8)) * np.float32(5.9604645e-08)
    subnormal = sign | (np.uint32(whole) + np.uint32(uniform < scaled - whole))
    finite = _pick(a < np.uint32(_SMALLEST_NORMAL), subnormal, normal)
    bits = _pick(a >= np.uint32(0x7F800000), _f16_overflow(u, sign), finite)
    return np.int16(np.int32(bits))
