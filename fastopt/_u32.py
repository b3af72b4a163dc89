"""32-bit word arithmetic that compiles to 32-bit instructions, for the codecs.

numba types the result of ``uint32 op uint32`` as ``uint64``, so bit manipulation written
with NumPy scalars runs on 64-bit lanes: half as many per vector, and conversions around
them. These helpers are one LLVM instruction each on ``i32`` (wrapping, as the hardware
does), which the loops that inline them vectorize with twice the lanes of 64-bit code (8 per
256-bit vector, 16 per 512-bit one, as LLVM chooses for the CPU).

Each is also plain Python on ints, exact modulo 2^32 and returning ``numpy.uint32`` (what
numba's CUDA simulator runs, and what the tests compare with).
"""

from __future__ import annotations

import operator
from collections.abc import Callable

import numpy as np
from numba.core import types
from numba.extending import intrinsic, overload

__all__ = [
    "add",
    "and_",
    "bits_of",
    "float_of",
    "greater",
    "less",
    "lookup",
    "mul",
    "not_less",
    "or_",
    "pick",
    "shl",
    "shr",
    "word",
    "xor",
]

_MASK = 0xFFFFFFFF


def _binary(python: Callable[[int, int], int], build: Callable[..., object], compare: bool):
    """A helper computing ``python(a, b)`` on 32-bit words (a comparison: a bool)."""

    def function(a, b):
        result = python(int(a) & _MASK, int(b) & _MASK)
        return bool(result) if compare else np.uint32(result & _MASK)

    @intrinsic
    def instruction(typingctx, a, b):
        result = types.boolean if compare else types.uint32

        def codegen(context, builder, signature, args):
            return build(builder, *args)

        return result(types.uint32, types.uint32), codegen

    @overload(function, inline="always")
    def _compiled(a, b):
        return lambda a, b: instruction(np.uint32(a), np.uint32(b))

    return function


add = _binary(operator.add, lambda builder, a, b: builder.add(a, b), False)
mul = _binary(operator.mul, lambda builder, a, b: builder.mul(a, b), False)
and_ = _binary(operator.and_, lambda builder, a, b: builder.and_(a, b), False)
or_ = _binary(operator.or_, lambda builder, a, b: builder.or_(a, b), False)
xor = _binary(operator.xor, lambda builder, a, b: builder.xor(a, b), False)
# Shift counts below 32 only (as in C).
shl = _binary(operator.lshift, lambda builder, a, b: builder.shl(a, b), False)
shr = _binary(operator.rshift, lambda builder, a, b: builder.lshr(a, b), False)
less = _binary(operator.lt, lambda builder, a, b: builder.icmp_unsigned("<", a, b), True)
greater = _binary(operator.gt, lambda builder, a, b: builder.icmp_unsigned(">", a, b), True)
not_less = _binary(operator.ge, lambda builder, a, b: builder.icmp_unsigned(">=", a, b), True)

add.__doc__ = "``a + b`` modulo 2^32."
mul.__doc__ = "``a * b`` modulo 2^32."
shl.__doc__ = "``a << b`` modulo 2^32 (``b`` below 32)."
shr.__doc__ = "``a >> b``, logical (``b`` below 32)."


def word(value):  # pragma: no cover - the overload below replaces it in compiled code
    """An integer (or a bool) as a 32-bit word: truncated, or zero-extended."""
    return np.uint32(int(value) & _MASK)


@overload(word, inline="always")
def _word(value):
    return lambda value: np.uint32(value)


def pick(condition, if_true, if_false):  # pragma: no cover - replaced by the overload
    """``if_true`` where ``condition`` holds, else ``if_false``: a select, not a branch."""
    return np.uint32(int(if_true if condition else if_false) & _MASK)


@intrinsic
def _select(typingctx, condition, if_true, if_false):
    def codegen(context, builder, signature, args):
        return builder.select(*args)

    return types.uint32(types.boolean, types.uint32, types.uint32), codegen


@overload(pick, inline="always")
def _pick(condition, if_true, if_false):
    return lambda condition, if_true, if_false: _select(
        condition, np.uint32(if_true), np.uint32(if_false)
    )


def bits_of(value):  # pragma: no cover - the overload below replaces it in compiled code
    """The bits of ``value`` rounded to float32, as a 32-bit word."""
    return np.float32(value).view(np.uint32)


def float_of(bits):  # pragma: no cover - the overload below replaces it in compiled code
    """The float32 whose bits are the 32-bit word ``bits``."""
    return np.uint32(bits).view(np.float32)


# A bit cast in registers. (A scalar's ``.view`` goes through stack memory, which LLVM
# promotes to registers only after it has tried to vectorize a loop the cast was inlined in.)
@intrinsic
def _bitcast(typingctx, value, target):
    to = target.instance_type

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(to))

    return to(value, target), codegen


@overload(bits_of, inline="always")
def _bits_of(value):
    return lambda value: _bitcast(np.float32(value), np.uint32)


@overload(float_of, inline="always")
def _float_of(bits):
    return lambda bits: _bitcast(np.uint32(bits), np.float32)


def lookup(table, index):  # pragma: no cover - the overload below replaces it in compiled code
    """``table[index]`` for a 32-bit word ``index`` below 2^31: in compiled code indexed with
    32 bits, so that a vectorized loop gathers twice the lanes per instruction that 64-bit
    indices allow (no bounds check)."""
    return table[int(index)]


@intrinsic
def _lookup(typingctx, table, index):
    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        return builder.load(builder.gep(array.data, [args[1]], inbounds=True))

    return table.dtype(table, types.uint32), codegen


@overload(lookup, inline="always")
def _lookup_overload(table, index):
    return lambda table, index: _lookup(table, np.uint32(index))
