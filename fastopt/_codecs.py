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
Wellons' ``lowbias32`` (a 32-bit integer bijection with low bias).

Everything is straight-line 32-bit integer code (:mod:`fastopt._u32`: no branches, no 64-bit
lanes), which the kernels inline into loops that vectorize; and plain Python on NumPy
scalars too: the CUDA simulator runs it as Python, and :mod:`fastopt.reference` checks it
against NumPy's own conversions.
"""

from __future__ import annotations

import math

import numpy as np

from fastopt._jit import elementwise
from fastopt._u32 import (
    add,
    and_,
    bits_of,
    float_of,
    greater,
    less,
    mul,
    not_less,
    or_,
    pick,
    shl,
    shr,
    word,
    xor,
)

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


@elementwise
def mix32(x):
    """``lowbias32``: a bijection of 32-bit words whose output bits all depend on every
    input bit."""
    x = word(x)
    x = mul(xor(x, shr(x, 16)), 0x7FEB352D)
    x = mul(xor(x, shr(x, 15)), 0x846CA68B)
    return xor(x, shr(x, 16))


@elementwise
def random_word(key, slot, index):
    """16 random bits (the low half of the word) for element ``index`` (an int64) of the
    array in ``slot`` under ``key``: slots ``2k`` and ``2k + 1`` take the two halves of one
    hash, so a step that rounds three arrays hashes twice per element, not three times."""
    stream = mix32(xor(word(key), mul(word(slot >> 1), 0x9E3779B9)))
    high = mul(word(index >> 32), 0x85EBCA77)
    return shr(mix32(add(xor(stream, word(index)), high)), 16 * (slot & 1))


@elementwise
def bf16_decode(bits):
    """The float32 value of bfloat16 ``bits``."""
    return float_of(shl(word(bits), 16))


_ABS = 0x7FFFFFFF
_INF = 0x7F800000


@elementwise
def _bf16_special(u):
    """bfloat16 bits of a NaN (made quiet, its sign kept) or an Inf with float32 bits ``u``."""
    return or_(shr(u, 16), pick(greater(and_(u, _ABS), _INF), 0x0040, 0))


@elementwise
def bf16_nearest(value):
    """``value`` (float32 or float64, via float32) rounded to bfloat16, ties to even."""
    u = bits_of(value)
    magnitude = and_(u, _ABS)
    odd = and_(shr(u, 16), 1)
    rounded = or_(shr(add(add(magnitude, 0x7FFF), odd), 16), and_(shr(u, 16), 0x8000))
    return np.uint16(pick(greater(magnitude, _INF), _bf16_special(u), rounded))


@elementwise
def bf16_stochastic(value, word_):
    """``value`` rounded to a neighbouring bfloat16 with the random 16 low bits of ``word_``."""
    u = bits_of(value)
    magnitude = and_(u, _ABS)
    rounded = or_(shr(add(magnitude, and_(word_, 0xFFFF)), 16), and_(shr(u, 16), 0x8000))
    return np.uint16(pick(not_less(magnitude, _INF), _bf16_special(u), rounded))


@elementwise
def f16_decode(bits):
    """The float32 value of float16 ``bits`` (an int16 word)."""
    h = and_(word(bits), 0xFFFF)
    sign = shl(and_(h, 0x8000), 16)
    exponent = and_(shr(h, 10), 0x1F)
    mantissa = and_(h, 0x3FF)
    # Normal; Inf and NaN keep the largest exponent; zero and subnormals are mantissa x 2^-24.
    biased = add(exponent, pick(exponent == 31, 224, 112))
    normal = or_(or_(sign, shl(biased, 23)), shl(mantissa, 13))
    subnormal = or_(sign, bits_of(np.float32(mantissa) * np.float32(5.9604645e-08)))
    return float_of(pick(exponent == 0, subnormal, normal))


@elementwise
def _f16_overflow(u, sign):
    """float16 bits of a float32 (bits ``u``) beyond float16's range: NaN (quiet) or Inf."""
    payload = or_(0x7E00, and_(shr(u, 13), 0x3FF))
    return or_(sign, pick(greater(and_(u, _ABS), _INF), payload, 0x7C00))


_SMALLEST_NORMAL = 0x38800000  # 2^-14, float16's smallest normal, as float32 bits
_REBIAS = 0xFFFE4000  # -(127 - 15) << 10, modulo 2^32


@elementwise
def _f16_scaled(magnitude):
    """A magnitude (float32 bits) below 2^-14 in units of 2^-24, exactly (larger ones
    clamped: their lanes are not used)."""
    small = pick(less(magnitude, _SMALLEST_NORMAL), magnitude, _SMALLEST_NORMAL)
    return float_of(small) * np.float32(16777216.0)


@elementwise
def f16_nearest(value):
    """``value`` (float32 or float64, via float32) rounded to float16, ties to even."""
    u = bits_of(value)
    sign = and_(shr(u, 16), 0x8000)
    magnitude = and_(u, _ABS)
    # Normal: round the 13 dropped mantissa bits, ties to even; the exponent rebiased.
    odd = and_(shr(magnitude, 13), 1)
    normal = or_(sign, add(shr(add(add(magnitude, 0xFFF), odd), 13), _REBIAS))
    # Subnormal (or zero): adding 2^23 rounds to an integer, ties to even (1024 is the
    # smallest normal's bits).
    scaled = _f16_scaled(magnitude)
    whole = (scaled + np.float32(8388608.0)) - np.float32(8388608.0)
    subnormal = or_(sign, word(np.int64(whole)))
    finite = pick(less(magnitude, _SMALLEST_NORMAL), subnormal, normal)
    # NaN, Inf, or at least 65520: overflows.
    bits = pick(not_less(magnitude, 0x477FF000), _f16_overflow(u, sign), finite)
    return np.int16(np.int32(bits))


@elementwise
def f16_stochastic(value, word_):
    """``value`` rounded to a neighbouring float16 with the random low 16 bits of ``word_``
    (13 of them for a normal value)."""
    u = bits_of(value)
    sign = and_(shr(u, 16), 0x8000)
    magnitude = and_(u, _ABS)
    # Normal: add random bits below float16's last mantissa bit, then truncate them.
    up = add(magnitude, and_(word_, 0x1FFF))
    normal = or_(sign, add(shr(up, 13), _REBIAS))
    normal = pick(not_less(up, 0x47800000), or_(sign, 0x7C00), normal)  # past 65504
    # Subnormal: up one unit of 2^-24 with probability the fraction of it (to 2^-16).
    scaled = _f16_scaled(magnitude)
    whole = np.float32(math.floor(scaled))  # (numba.cuda lacks numpy.floor)
    uniform = np.float32(and_(word_, 0xFFFF)) * np.float32(1.0 / 65536.0)
    subnormal = or_(sign, add(word(np.int64(whole)), word(uniform < scaled - whole)))
    finite = pick(less(magnitude, _SMALLEST_NORMAL), subnormal, normal)
    bits = pick(not_less(magnitude, _INF), _f16_overflow(u, sign), finite)
    return np.int16(np.int32(bits))
