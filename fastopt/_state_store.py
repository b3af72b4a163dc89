"""Where an optimizer's state arrays live in host memory: one flat buffer per state name and
dtype, with a view per parameter.

Every state array shaped like its parameter (the rule's, a master copy, a compensation buffer,
an 8-bit array's codes) is a view of the buffer of its name and dtype; an 8-bit array's scales
(``"<name>_absmax"``) are a view of a buffer laid out by blocks. The per-array step and the
flat path (:mod:`fastopt._flatstep`) take the same arrays, so a state made or loaded by one is
the other's without a copy.

On a CUDA device each state array is an array of its own (:class:`OwnArrays`, the same
interface): device optimizers have no flat path to share it with.

Two layouts on the host:

- parameters that are all views of one :class:`~fastopt.FlatParams` keep their state where
  their values are in the FlatParams' buffer (padding included), and their scales by the
  FlatParams' kernel segments, so one launch passes each buffer whole;
- other parameters are packed one after another, each on a 64-byte boundary.

A buffer is made, zero-filled, the first time a parameter needs an array of its name and dtype:
the pages of parameters that never keep one are never written (the operating system backs
them only when touched). State not shaped like its parameter (a matrix step's host state,
Adafactor's factors) keeps arrays of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fastopt._quantized import BLOCK, block_table
from fastopt.flat import ALIGNMENT_BYTES, FlatParams, _aligned_zeros
from fastopt.precision import ABSMAX_SUFFIX

if TYPE_CHECKING:
    from fastopt._backend import ArrayBackend

__all__ = ["OwnArrays", "StateStore", "flat_owner"]

FLOAT32 = np.dtype(np.float32)

# Element offsets of the packed layout are multiples of this: 64 bytes for 1-byte codes, more
# for wider dtypes (the buffers themselves start on a 64-byte boundary).
_PACKED_ALIGNMENT = ALIGNMENT_BYTES  # elements


def flat_owner(params: Sequence[np.ndarray]) -> tuple[FlatParams, np.ndarray] | None:
    """The FlatParams every one of ``params`` is a view of (each at most once) and their
    positions in it, or None."""
    if not params:
        return None
    flat = FlatParams.owner_of(params[0])
    if flat is None:
        return None
    positions = [flat.locate(param) for param in params]
    if any(position is None for position in positions):
        return None
    segment_of_param = np.array(positions, dtype=np.int64)
    if np.unique(segment_of_param).size != segment_of_param.size:
        return None
    return flat, segment_of_param


class StateStore:
    """The state buffers of one optimizer's host parameters and their per-parameter views.

    Parameters
    ----------
    params
        The optimizer's parameters, in order (host arrays).
    """

    def __init__(self, params: Sequence[np.ndarray]) -> None:
        owner = flat_owner(params)
        shapes = [param.shape for param in params]
        lengths = np.array([param.size for param in params], dtype=np.int64)
        if owner is not None:
            flat, segment_of_param = owner
            self.length = flat.buffer.size
            offsets = flat.segments[segment_of_param, 0]
            # Scales by kernel segments: padding keeps blocks too, the launch passes them.
            blocks = block_table(flat._launch_bounds)
            launch_of_array = np.zeros(len(flat), dtype=np.int64)
            kinds = flat._launch_segment
            launch_of_array[kinds[kinds >= 0]] = np.flatnonzero(kinds >= 0)
            block_starts = blocks[launch_of_array[segment_of_param]]
            self.blocks = int(blocks[-1])
        else:
            padded = -(-lengths // _PACKED_ALIGNMENT) * _PACKED_ALIGNMENT
            offsets = np.cumsum(padded) - padded
            self.length = int(padded.sum())
            counts = -(-lengths // BLOCK)
            block_starts = np.cumsum(counts) - counts
            self.blocks = int(counts.sum())
        self.flat = None if owner is None else owner[0]
        self._spans = tuple(zip(offsets.tolist(), (offsets + lengths).tolist(), strict=True))
        block_ends = block_starts + -(-lengths // BLOCK)
        self._block_spans = tuple(zip(block_starts.tolist(), block_ends.tolist(), strict=True))
        self._shapes = shapes
        #: One buffer per (state name, dtype), made on first use.
        self.buffers: dict[tuple[str, np.dtype], np.ndarray] = {}
        self._views: dict[tuple[str, np.dtype], tuple[np.ndarray, ...]] = {}

    def buffer(self, name: str, dtype: np.dtype) -> np.ndarray:
        """The flat buffer of state array ``name`` in ``dtype`` (made, zero-filled, if new)."""
        key = (name, dtype)
        buffer = self.buffers.get(key)
        if buffer is None:
            size = self.blocks if name.endswith(ABSMAX_SUFFIX) else self.length
            buffer = self.buffers[key] = _aligned_zeros(size, dtype)
        return buffer

    def views(self, name: str, dtype: np.dtype) -> tuple[np.ndarray, ...]:
        """Every parameter's view of :meth:`buffer` ``(name, dtype)``: shaped like the
        parameter, or a parameter's blocks for a quantized array's scales."""
        key = (name, dtype)
        views = self._views.get(key)
        if views is None:
            buffer = self.buffer(name, dtype)
            if name.endswith(ABSMAX_SUFFIX):
                views = tuple(buffer[start:end] for start, end in self._block_spans)
            else:
                views = tuple(
                    buffer[start:end].reshape(shape)
                    for (start, end), shape in zip(self._spans, self._shapes, strict=True)
                )
            self._views[key] = views
        return views

    def view(self, index: int, name: str, dtype: np.dtype) -> np.ndarray:
        """Parameter ``index``'s state array ``name`` in ``dtype``."""
        return self.views(name, dtype)[index]

    def holds(self, index: int, name: str, array: object) -> bool:
        """Whether ``array`` is parameter ``index``'s view for ``name`` (in its dtype)."""
        dtype = getattr(array, "dtype", None)
        key = (name, dtype)
        return key in self._views and self._views[key][index] is array

    def put(self, index: int, name: str, value: object, dtype: np.dtype) -> np.ndarray:
        """Write ``value`` (an array or a number, converted to ``dtype``) into parameter
        ``index``'s view for ``name``, and return the view."""
        view = self.view(index, name, dtype)
        if value is not view:
            view[...] = value
        return view


class OwnArrays:
    """State arrays each of their own, allocated by the parameters' backend (a device's).

    The interface of :class:`StateStore` without buffers: :meth:`put` makes a new array.
    """

    flat = None

    def __init__(self, arrays: ArrayBackend, params: Sequence[Any]) -> None:
        self._arrays = arrays
        self._params = params

    def holds(self, index: int, name: str, array: object) -> bool:
        """Always: every array is its own."""
        return True

    def put(self, index: int, name: str, value: object, dtype: np.dtype) -> Any:
        """A new array of ``dtype`` beside parameter ``index`` holding ``value`` (an array
        there, a host array, or a number)."""
        arrays, param = self._arrays, self._params[index]
        if arrays.is_array(value):
            return arrays.copy(value, dtype)
        if isinstance(value, np.ndarray):
            return arrays.from_host(value.astype(dtype, copy=False), param)
        return arrays.full_like(param, value, dtype)  # type: ignore[arg-type]
