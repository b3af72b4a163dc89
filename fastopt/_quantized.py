"""Block-wise dynamic 8-bit state: its codec, as the kernels run it, and host conversions.

A quantized state array is a ``uint8`` array of codes shaped like its parameter and one
float32 scale per 256-element block of it (its largest magnitude, ``absmax``): element ``i``
is ``code[codes[i]] * absmax[i // 256]``, ``code`` being one of Dettmers' dynamic maps
(:func:`fastopt.reference.dynamic_map`: signed for state that takes both signs, unsigned for
non-negative state such as a second moment). This is bitsandbytes' block-wise format.

The kernels see such an array as a :class:`SignedState` or an :class:`UnsignedState` (its codes
and scales); the type picks the map, whose tables are module constants that numba freezes into
the compiled code (a table passed as an argument could alias the arrays a loop writes, and
LLVM would not vectorize the loop). An update decodes the state in registers, computes the
rule's new values into a per-thread scratch block (the generated drivers of
:mod:`fastopt._codegen`), then takes each block's new absmax and encodes every value as the
index of its nearest code, ``clamp(x * (1 / absmax), -1, 1)`` (``x / absmax`` in a
parameter's last, partial block), a tie going to the lower code, as
:func:`fastopt.reference.quantize_blockwise` does: the same codes, bit for bit.

Encoding without a search: the 255 decision bounds (midpoints between neighbouring codes) are
at least 0.7% apart relative to their size, so a bucket of the float32 magnitudes that share
an exponent and their 8 leading mantissa bits (0.4% wide) holds at most one of them. One table
entry per bucket and sign holds the number of bounds below the bucket and the low bits of the
bound inside it, if any: one table read (a 32-bit gather, :func:`fastopt._u32.lookup`) and
one integer comparison, no branch, so the loop vectorizes. The table is built and checked
against a search over the bounds (:func:`tables`).
"""

from __future__ import annotations

from functools import cache
from typing import NamedTuple

import numpy as np
from numba.core import types
from numba.extending import overload

from fastopt._jit import elementwise, kernel, segment
from fastopt._storage import load, store
from fastopt._u32 import add, and_, bits_of, float_of, greater, less, lookup, pick, shr, word, xor

__all__ = [
    "BLOCK",
    "QuantizedBlock",
    "QuantizedState",
    "SignedBlock",
    "SignedState",
    "UnsignedBlock",
    "UnsignedState",
    "block_absmax",
    "block_count",
    "block_of",
    "block_start",
    "block_table",
    "dequantize",
    "encode",
    "finish",
    "keep",
    "quantize",
    "quantized_segment",
    "quantized_state",
    "tables",
]

#: Elements per block, each with its own scale.
BLOCK = 256

_MANTISSA_BITS = 8
# Bucket 0 starts at 2^-25 (biased exponent 102): every smaller magnitude falls in it, below
# the smallest bound (about 1.6e-7, near 2^-22.6).
_LOWEST_EXPONENT = 102
_FIRST = _LOWEST_EXPONENT << _MANTISSA_BITS
_ONE = (127 - _LOWEST_EXPONENT) << _MANTISSA_BITS  # the bucket of 1.0
_NAN = _ONE + 1  # every magnitude above 1.0's bucket (NaN: clipping leaves no other)
_SIDE = _NAN + 1  # buckets per sign
_ABS = 0x7FFFFFFF
_SIGN = 0x80000000


def block_count(size: int) -> int:
    """The number of blocks (scales) of an array of ``size`` elements."""
    return -(-size // BLOCK)


class QuantizedState(NamedTuple):
    """A quantized state array as the kernels take it: :class:`SignedState` or
    :class:`UnsignedState`, whose type tells the compiled code which map's tables (module
    constants, frozen into it) decode and encode it."""

    codes: np.ndarray  # uint8, the parameter's elements (flat)
    absmax: np.ndarray  # float32, one per block

    def load(self, i: int) -> np.float32:
        """Element ``i``, decoded (plain Python; compiled code uses the overload of load)."""
        return self.map()[0][self.codes[i]] * self.absmax[i // BLOCK]

    def segment(self, lo: int, hi: int) -> QuantizedState:
        """Elements ``lo:hi``, ``lo`` the first element of a block."""
        return type(self)(self.codes[lo:hi], self.absmax[lo // BLOCK : block_count(hi)])

    @classmethod
    def map(cls) -> tuple[np.ndarray, np.ndarray]:
        """The map's tables (see :func:`tables`)."""
        return tables(cls is SignedState)


class SignedState(QuantizedState):
    """State that takes both signs (a momentum): the signed dynamic map."""


class UnsignedState(QuantizedState):
    """Non-negative state (a second moment): the unsigned dynamic map."""


class QuantizedBlock(NamedTuple):
    """One block of a quantized state inside an update: its codes and its scale
    (:class:`SignedBlock` or :class:`UnsignedBlock`, whose type picks the map)."""

    codes: np.ndarray
    scale: np.float32

    def load(self, i: int) -> np.float32:
        """Element ``i``, decoded (plain Python; compiled code uses the overload of load)."""
        return tables(type(self) is SignedBlock)[0][self.codes[i]] * self.scale


class SignedBlock(QuantizedBlock):
    """A block of a :class:`SignedState`."""


class UnsignedBlock(QuantizedBlock):
    """A block of an :class:`UnsignedState`."""


def _bucket_bits(bucket: int) -> np.float32:
    """The smallest magnitude in ``bucket`` (bucket 0 takes every smaller one, down to 0)."""
    value = np.array((bucket + _FIRST) << (23 - _MANTISSA_BITS), dtype=np.uint32)
    return value.view(np.float32)[()]


@cache
def tables(signed: bool) -> tuple[np.ndarray, np.ndarray]:
    """The map's codes and the encoder's bucket table (checked to hold one bound at most
    per bucket): entry ``(count << 16) | key``, ``count`` the bounds below the bucket and
    ``key`` the low 15 bits of the bound inside it (reflected on the negative side; 0x7FFF
    where none is inside, which no value's bits exceed)."""
    from fastopt.reference import dynamic_map

    code = dynamic_map(signed)
    bounds = ((code[:-1] + code[1:]) / np.float32(2)).astype(np.float32)
    lows = np.array([0.0] + [_bucket_bits(b) for b in range(1, _SIDE)], dtype=np.float32)
    highs = np.array([_bucket_bits(b) for b in range(1, _SIDE + 1)], dtype=np.float32)
    # Positive y in [low, high): the bounds below low, and any in [low, high); negative y
    # in (-high, -low]: the bounds at or below -high, and any in (-high, -low].
    below = np.stack(
        [np.searchsorted(bounds, lows, side="left"), np.searchsorted(bounds, -highs, "right")]
    )
    inside = (
        np.stack(
            [np.searchsorted(bounds, highs, side="left"), np.searchsorted(bounds, -lows, "right")]
        )
        - below
    )
    below[:, _NAN], inside[:, _NAN] = bounds.size, 0  # NaN: the last code
    if inside.max() > 1:
        raise AssertionError("a bucket of the 8-bit encoder holds two bounds")
    padded = np.append(bounds, np.float32(np.inf)).astype(np.float32)
    low_bits = (np.abs(padded[below]).view(np.uint32) & 0x7FFF).astype(np.int64)
    low_bits[1] ^= 0x7FFF
    keys = np.where(inside == 1, low_bits, 0x7FFF)
    table = ((below.astype(np.int64) << 16) | keys).astype(np.int32).reshape(-1)
    for array in (code, table):
        array.setflags(write=False)
    return code, table


@elementwise
def encode(y, table):
    """The index of the code nearest ``y`` (float32) clamped to [-1, 1] (NaN: the last
    code)."""
    y = np.float32(1.0) if y > np.float32(1.0) else y
    y = np.float32(-1.0) if y < np.float32(-1.0) else y
    u = bits_of(y)
    magnitude = and_(u, _ABS)
    negative = greater(u, _ABS)
    top = shr(magnitude, 23 - _MANTISSA_BITS)
    bucket = pick(less(top, _FIRST), 0, add(top, -_FIRST & 0xFFFFFFFF))
    bucket = add(pick(greater(bucket, _NAN), _NAN, bucket), pick(negative, _SIDE, 0))
    entry = word(lookup(table, bucket))
    low = and_(magnitude, 0x7FFF)
    low = pick(negative, xor(low, 0x7FFF), low)
    return np.uint8(add(shr(entry, 16), word(greater(low, and_(entry, 0x7FFF)))))


_SIGNED_CODE, _SIGNED_TABLE = tables(True)
_UNSIGNED_CODE, _UNSIGNED_TABLE = tables(False)


def _class_among(value, classes: tuple[type, ...]) -> type | None:
    """The class among ``classes`` whose instances have the numba type ``value``, or None."""
    if isinstance(value, types.BaseNamedTuple) and value.instance_class in classes:
        return value.instance_class
    return None


def _state_class(value) -> type | None:
    return _class_among(value, (SignedState, UnsignedState))


def _block_class(value) -> type | None:
    return _class_among(value, (SignedBlock, UnsignedBlock))


def _table_of(state):  # pragma: no cover - the overload below replaces it
    """The encoder's table of a quantized state's map (a constant in compiled code)."""
    return state.map()[1]


@overload(_table_of, inline="always")
def _table_of_overload(state):
    if _state_class(state) is SignedState:
        return lambda state: _SIGNED_TABLE
    return lambda state: _UNSIGNED_TABLE


@overload(load, inline="always")
def _load(array, i):
    block = _block_class(array)
    if block is SignedBlock:
        return lambda array, i: lookup(_SIGNED_CODE, array.codes[i]) * array.scale
    if block is UnsignedBlock:
        return lambda array, i: lookup(_UNSIGNED_CODE, array.codes[i]) * array.scale
    kind = _state_class(array)
    if kind is SignedState:
        return lambda array, i: _SIGNED_CODE[array.codes[i]] * array.absmax[i // BLOCK]
    if kind is UnsignedState:
        return lambda array, i: _UNSIGNED_CODE[array.codes[i]] * array.absmax[i // BLOCK]
    return None


@overload(segment, inline="always")
def _segment(array, lo, hi):
    kind = _state_class(array)
    if kind is None:
        return None
    return lambda array, lo, hi: kind(
        array.codes[lo:hi], array.absmax[lo // BLOCK : (hi + BLOCK - 1) // BLOCK]
    )


def block_of(state, lo, hi):  # pragma: no cover - the overload below replaces it
    """Elements ``lo:hi`` (one block, ``lo`` a multiple of :data:`BLOCK`) of a state array
    as the update reads them: a :class:`QuantizedBlock`, a slice, or None."""
    if isinstance(state, QuantizedState):
        block = SignedBlock if isinstance(state, SignedState) else UnsignedBlock
        return block(state.codes[lo:hi], state.absmax[lo // BLOCK])
    return segment(state, lo, hi)


@overload(block_of, inline="always")
def _block_of(state, lo, hi):
    kind = _state_class(state)
    if kind is SignedState:
        return lambda state, lo, hi: SignedBlock(state.codes[lo:hi], state.absmax[lo // BLOCK])
    if kind is UnsignedState:
        return lambda state, lo, hi: UnsignedBlock(state.codes[lo:hi], state.absmax[lo // BLOCK])
    return lambda state, lo, hi: segment(state, lo, hi)


def quantized_segment(state, lo, hi, first_block):  # pragma: no cover - replaced below
    """Elements ``lo:hi`` of a state array, a quantized one with its scales from block
    ``first_block`` of its scale buffer on (``lo`` is the first element of that block)."""
    if isinstance(state, QuantizedState):
        last = first_block + block_count(hi - lo)
        return type(state)(state.codes[lo:hi], state.absmax[first_block:last])
    return segment(state, lo, hi)


@overload(quantized_segment, inline="always")
def _quantized_segment(state, lo, hi, first_block):
    kind = _state_class(state)
    if kind is None:
        return lambda state, lo, hi, first_block: segment(state, lo, hi)
    return lambda state, lo, hi, first_block: kind(
        state.codes[lo:hi], state.absmax[first_block : first_block + (hi - lo + BLOCK - 1) // BLOCK]
    )


def keep(scratch, row, j, value):  # pragma: no cover - the overload below replaces it
    """``scratch[row, j] = value`` (nothing for an absent state array's None)."""
    if value is not None:
        scratch[row, j] = value


@overload(keep, inline="always")
def _keep(scratch, row, j, value):
    if isinstance(value, types.NoneType):
        return lambda scratch, row, j, value: None

    def kept(scratch, row, j, value):
        scratch[row, j] = value

    return kept


@elementwise
def block_absmax(scratch, row, n):
    """The largest magnitude of ``scratch[row, :n]`` in float32, NaN if any is NaN: the
    maximum of the bit patterns with the sign cleared (every NaN pattern is above Inf's),
    which vectorizes where a float maximum does not without fast-math flags."""
    largest = np.uint32(0)
    for j in range(n):
        magnitude = and_(bits_of(scratch[row, j]), _ABS)
        largest = pick(greater(magnitude, largest), magnitude, largest)
    return float_of(largest)


@elementwise
def _encode_block(codes, scratch, row, largest, table):
    """Encode ``scratch[row, :codes.size]`` with the block's ``largest`` magnitude."""
    n = codes.size
    # np.maximum's NaN rule: a NaN scale stays NaN (the block decodes to NaN).
    floor = largest if not largest < np.float32(1e-38) else np.float32(1e-38)
    if n == BLOCK:
        inverse = np.float32(1.0) / floor
        for j in range(n):
            codes[j] = encode(np.float32(scratch[row, j]) * inverse, table)
    else:  # a parameter's last, partial block
        for j in range(n):
            codes[j] = encode(np.float32(scratch[row, j]) / floor, table)


# A call per block, not inlined: numba's inliner mishandles the variables of its loops.
@kernel
def _requantize(state, lo, hi, scratch, row):
    largest = block_absmax(scratch, row, hi - lo)
    _encode_block(state.codes[lo:hi], scratch, row, largest, _table_of(state))
    state.absmax[lo // BLOCK] = largest


@kernel
def _store_block(state, lo, hi, scratch, row, rounding, slot):
    for j in range(hi - lo):
        store(state, lo + j, scratch[row, j], rounding, slot)


def finish(state, lo, hi, scratch, row, rounding, slot):  # pragma: no cover - replaced below
    """Write the new values ``scratch[row, :hi - lo]`` of state elements ``lo:hi``: encoded
    with the block's new scale for a quantized array, stored (rounded, with random
    ``slot``) for another, nothing for None."""
    if state is None:
        return
    if isinstance(state, QuantizedState):
        largest = np.float32(np.abs(np.float32(scratch[row, : hi - lo])).max(initial=0))
        _encode_block(state.codes[lo:hi], scratch, row, largest, state.map()[1])
        state.absmax[lo // BLOCK] = largest
        return
    for j in range(hi - lo):
        store(state, lo + j, scratch[row, j], rounding, slot)


@overload(finish, inline="always")
def _finish(state, lo, hi, scratch, row, rounding, slot):
    if isinstance(state, types.NoneType):
        return lambda state, lo, hi, scratch, row, rounding, slot: None
    if _state_class(state) is not None:
        return lambda state, lo, hi, scratch, row, rounding, slot: _requantize(
            state, lo, hi, scratch, row
        )
    return lambda state, lo, hi, scratch, row, rounding, slot: _store_block(
        state, lo, hi, scratch, row, rounding, slot
    )


@elementwise
def block_start(bounds, x):
    """The first block boundary at or after element ``x`` of a flat launch: the start of a
    block of the segment that holds ``x`` (or that segment's end)."""
    n = bounds[bounds.size - 1]
    if x >= n:
        return n
    s = np.searchsorted(bounds, x, side="right") - 1
    start = bounds[s]
    return min(start + (x - start + BLOCK - 1) // BLOCK * BLOCK, bounds[s + 1])


def block_table(bounds: np.ndarray) -> np.ndarray:
    """Per segment of ``bounds``, the index of its first block in a scale buffer that holds
    the segments' blocks one after the other (then their total)."""
    return _block_table(np.asarray(bounds, dtype=np.int64))


@kernel
def _block_table(bounds):
    # Compiled: each step of a launch with 8-bit state makes its table, in about a
    # microsecond (NumPy's diff and cumsum took several).
    table = np.zeros(max(bounds.size, 1), dtype=np.int64)
    for s in range(bounds.size - 1):
        table[s + 1] = table[s] + (bounds[s + 1] - bounds[s] + BLOCK - 1) // BLOCK
    return table


@kernel
def _quantize_blocks(values, state, scratch):
    for lo in range(0, values.size, BLOCK):
        hi = min(lo + BLOCK, values.size)
        for j in range(hi - lo):
            scratch[0, j] = values[lo + j]
        _requantize(state, lo, hi, scratch, 0)


def quantized_state(codes: np.ndarray, absmax: np.ndarray, signed: bool) -> QuantizedState:
    """The kernels' view of flat ``codes`` and their scales, under the signed or the
    unsigned map."""
    return (SignedState if signed else UnsignedState)(codes, absmax)


def quantize(values: np.ndarray, signed: bool) -> tuple[np.ndarray, np.ndarray]:
    """Float ``values`` as codes (their shape) and per-block scales, as the kernels encode."""
    flat = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
    codes = np.empty(flat.size, dtype=np.uint8)
    absmax = np.empty(block_count(flat.size), dtype=np.float32)
    scratch = np.empty((1, BLOCK), dtype=np.float32)
    _quantize_blocks(flat, quantized_state(codes, absmax, signed), scratch)
    return codes.reshape(np.shape(values)), absmax


def dequantize(codes: np.ndarray, absmax: np.ndarray, signed: bool) -> np.ndarray:
    """The float32 values of ``codes`` (any shape) with their per-block scales."""
    code = tables(signed)[0]
    flat = np.asarray(codes).reshape(-1)
    scales = np.repeat(np.asarray(absmax, dtype=np.float32), BLOCK)[: flat.size]
    with np.errstate(invalid="ignore"):  # a NaN or Inf scale decodes its block to NaN
        return (code[flat] * scales).reshape(np.shape(codes))
