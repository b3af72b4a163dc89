"""Many parameter arrays in one contiguous, aligned buffer, with a gradient buffer beside it.

A model's parameters are usually hundreds of arrays of very different sizes; one kernel call per
array spends more time launching than updating. :class:`FlatParams` packs them into one
buffer and hands out views shaped like the originals, so an optimizer updates all of them
(every parameter group, each with its own hyperparameters) in one fused pass.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from fastopt._checks import PARAM_DTYPES, plural

__all__ = ["ALIGNMENT_BYTES", "FlatParams"]

#: Every segment starts on a 64-byte boundary: a cache line, and a whole AVX-512 vector.
ALIGNMENT_BYTES = 64

# The arrays handed out by live FlatParams, by id, to recognize them when they come back as
# an optimizer's parameters. Weak values: an entry goes when its FlatParams does.
_OWNER_OF_VIEW: weakref.WeakValueDictionary[int, FlatParams] = weakref.WeakValueDictionary()


def _aligned_zeros(size: int, dtype: np.dtype) -> np.ndarray:
    """A zero-filled 1-D array whose first element sits on an ``ALIGNMENT_BYTES`` boundary."""
    raw = np.zeros(size * dtype.itemsize + ALIGNMENT_BYTES, dtype=np.uint8)
    start = -raw.ctypes.data % ALIGNMENT_BYTES
    return raw[start : start + size * dtype.itemsize].view(dtype)


def _checked_shape(name: str, shape: object) -> tuple[int, ...]:
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        shape = (shape,)
    if not isinstance(shape, (tuple, list)) or not all(
        isinstance(n, (int, np.integer)) and not isinstance(n, bool) for n in shape
    ):
        raise TypeError(f"{name} must be a shape (a tuple of ints), got {shape!r}")
    if any(n < 0 for n in shape):
        raise ValueError(f"{name} must have no negative dimension, got {tuple(shape)}")
    return tuple(int(n) for n in shape)


_DTYPES = "float32, float64, bfloat16 or float16"


def _checked_dtype(dtype: object) -> np.dtype:
    try:
        checked = np.dtype(dtype)  # type: ignore[call-overload]
    except TypeError:
        raise TypeError(f"dtype must be {_DTYPES}, got {dtype!r}") from None
    if checked not in PARAM_DTYPES:
        raise TypeError(f"dtype must be {_DTYPES}, got {checked}")
    return checked


class FlatParams:
    r"""Arrays of one dtype packed into one contiguous buffer, with a gradient buffer.

    Each array becomes a *segment* of :attr:`buffer`, starting on a 64-byte boundary (16
    float32 or 8 float64 elements); the padding between segments is zero and stays zero.
    :attr:`params` and :attr:`grads` are views shaped like the arrays: writing a view writes
    the buffer. Pass the views (or the FlatParams itself) to an optimizer and
    ``opt.step()`` updates them all from :attr:`grad_buffer` in one launch per kind of state
    layout, with each parameter group's hyperparameters.

    Parameters
    ----------
    shapes
        The arrays' shapes, as a sequence, or a mapping from names to shapes.
    dtype : float32, float64, bfloat16 or float16, default float32
        The element type of every array (and of the gradients).

    Attributes
    ----------
    buffer, grad_buffer : ndarray
        The flat parameter and gradient buffers (1-D, padding included; read-only attributes).
    params, grads : tuple of ndarray
        Views of the buffers shaped like the arrays, in order.
    names : tuple of str or None
        The arrays' names, when built from a mapping.
    segments : ndarray of int64, shape (n, 2)
        Offset and length of each array in the buffers, in elements.
    micro_batches : int
        Gradients added by :meth:`accumulate` since the last :meth:`zero_grad`.

    Notes
    -----
    Gradient accumulation: :meth:`zero_grad`, then :meth:`accumulate` once per micro-batch;
    ``opt.step()`` then applies the *mean* of the accumulated gradients. The division is the
    kernel's ``grad_scale`` (:attr:`grad_scale`), not an extra pass over the buffer.
    Gradients written into :attr:`grads` directly are used as they are.

    Examples
    --------
    >>> import numpy as np, fastopt
    >>> flat = fastopt.FlatParams.from_arrays({"w": np.ones((2, 3)), "b": np.zeros(3)})
    >>> w, b = flat.params
    >>> flat.segments.tolist()  # float64: segments start on multiples of 8 elements
    [[0, 6], [8, 3]]
    >>> opt = fastopt.SGD(flat, lr=0.5)
    >>> flat.grads[0][...] = 1.0  # or flat.accumulate([dw, db])
    >>> opt.step()
    >>> w
    array([[0.5, 0.5, 0.5],
           [0.5, 0.5, 0.5]])
    """

    def __init__(
        self,
        shapes: Sequence[int | Sequence[int]] | Mapping[str, int | Sequence[int]],
        dtype: Any = np.float32,
    ) -> None:
        if isinstance(shapes, Mapping):
            names = tuple(shapes)
            for name in names:
                if not isinstance(name, str):
                    raise TypeError(f"shapes keys must be str names, got {name!r}")
            shape_list = [_checked_shape(f"shapes[{n!r}]", shapes[n]) for n in names]
            self.names: tuple[str, ...] | None = names
        elif isinstance(shapes, (Sequence, np.ndarray)) and not isinstance(shapes, (str, bytes)):
            shape_list = [_checked_shape(f"shapes[{i}]", s) for i, s in enumerate(shapes)]
            self.names = None
        else:
            raise TypeError(f"shapes must be a sequence or a mapping, got {type(shapes).__name__}")
        if not shape_list:
            raise ValueError("FlatParams needs at least one array, got none")
        self.dtype = _checked_dtype(dtype)
        self.shapes: tuple[tuple[int, ...], ...] = tuple(shape_list)
        align = ALIGNMENT_BYTES // self.dtype.itemsize
        lengths = [math.prod(shape) for shape in shape_list]
        offsets, end = [], 0
        for length in lengths:
            start = -(-end // align) * align
            offsets.append(start)
            end = start + length
        table = np.array([offsets, lengths], dtype=np.int64).T.copy()
        table.flags.writeable = False
        self.segments = table
        # Read-only attributes (properties below): the optimizers' launch plans slice these
        # buffers once, so they are never replaced.
        self._buffer = _aligned_zeros(end, self.dtype)
        self._grad_buffer = _aligned_zeros(end, self.dtype)
        self._params = self.split(self._buffer)
        self._grads = self.split(self._grad_buffer)
        self._index = {view_id: i for i, view_id in enumerate(map(id, self._params))}
        self._launch_bounds, self._launch_segment = self._launch_table(end)
        padding = np.flatnonzero(self._launch_segment < 0)
        self._padding_index = np.concatenate(
            [np.arange(self._launch_bounds[s], self._launch_bounds[s + 1]) for s in padding]
            or [np.zeros(0, dtype=np.int64)]
        )
        self.micro_batches = 0
        for view in self.params:
            _OWNER_OF_VIEW[id(view)] = self

    @classmethod
    def from_arrays(cls, arrays: Sequence[np.ndarray] | Mapping[str, np.ndarray]) -> FlatParams:
        """A FlatParams holding copies of ``arrays`` (one dtype, float32 or float64).

        The arrays themselves are not changed and not used afterwards: train the views in
        :attr:`params`.

        Raises
        ------
        TypeError
            If an entry is not an ndarray, or the dtypes differ or are not float32/float64.
        """
        if isinstance(arrays, Mapping):
            named = {f"arrays[{key!r}]": array for key, array in arrays.items()}
        elif isinstance(arrays, Sequence) and not isinstance(arrays, (str, bytes)):
            named = {f"arrays[{i}]": array for i, array in enumerate(arrays)}
        else:
            raise TypeError(f"arrays must be a sequence or a mapping, got {type(arrays).__name__}")
        for label, array in named.items():
            if not isinstance(array, np.ndarray):
                raise TypeError(f"{label} must be a numpy.ndarray, got {type(array).__name__}")
        if len({array.dtype for array in named.values()}) > 1:
            listing = ", ".join(f"{label}: {array.dtype}" for label, array in named.items())
            raise TypeError(f"arrays must share one dtype to live in one FlatParams, got {listing}")
        values = list(named.values())
        if not values:
            raise ValueError("FlatParams needs at least one array, got none")
        shapes = [array.shape for array in values]
        layout = dict(zip(arrays, shapes, strict=True)) if isinstance(arrays, Mapping) else shapes
        flat = cls(layout, values[0].dtype)
        for view, array in zip(flat.params, values, strict=True):
            view[...] = array
        return flat

    # ------------------------------------------------------------------ layout
    @property
    def buffer(self) -> np.ndarray:
        """The flat parameter buffer (1-D, padding included)."""
        return self._buffer

    @property
    def grad_buffer(self) -> np.ndarray:
        """The flat gradient buffer (1-D, padding included)."""
        return self._grad_buffer

    @property
    def params(self) -> tuple[np.ndarray, ...]:
        """Views of :attr:`buffer` shaped like the arrays, in order."""
        return self._params

    @property
    def grads(self) -> tuple[np.ndarray, ...]:
        """Views of :attr:`grad_buffer` shaped like the arrays, in order."""
        return self._grads

    def _launch_table(self, end: int) -> tuple[np.ndarray, np.ndarray]:
        """Kernel segment bounds covering the whole buffer: each array, then its padding.

        Returns the ``S + 1`` offsets and, per kernel segment, the array it holds (-1 for
        padding).
        """
        bounds, owner = [0], []
        for index, (offset, length) in enumerate(self.segments.tolist()):
            if offset > bounds[-1]:
                bounds.append(offset)
                owner.append(-1)
            bounds.append(offset + length)
            owner.append(index)
        if end > bounds[-1]:
            bounds.append(end)
            owner.append(-1)
        return np.array(bounds, dtype=np.int64), np.array(owner, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.shapes)

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(self.params)

    def __getitem__(self, key: int | str) -> np.ndarray:
        """The parameter view at position ``key``, or named ``key``."""
        return self.params[self.index(key)]

    def index(self, key: int | str) -> int:
        """Position of the array named ``key`` (an int is checked and returned)."""
        if isinstance(key, str):
            if self.names is None or key not in self.names:
                raise KeyError(f"no array named {key!r} in this FlatParams")
            return self.names.index(key)
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            if not -len(self) <= key < len(self):
                raise IndexError(f"array index {key} out of range for {plural(len(self), 'array')}")
            return int(key) % len(self)
        raise TypeError(f"key must be an int or a name, got {type(key).__name__}")

    @property
    def size(self) -> int:
        """Number of elements in the arrays (padding excluded)."""
        return int(self.segments[:, 1].sum())

    def locate(self, array: np.ndarray) -> int | None:
        """Position of ``array`` if it is one of :attr:`params` (the very object), else None."""
        index = self._index.get(id(array))
        return index if index is not None and self.params[index] is array else None

    @staticmethod
    def owner_of(array: object) -> FlatParams | None:
        """The live FlatParams that handed out ``array`` as a parameter view, if any."""
        flat = _OWNER_OF_VIEW.get(id(array))
        return flat if flat is not None and flat.locate(array) is not None else None  # type: ignore[arg-type]

    def _check_buffer(self, name: str, buffer: object, any_dtype: bool = False) -> np.ndarray:
        if not isinstance(buffer, np.ndarray):
            raise TypeError(f"{name} must be a numpy.ndarray, got {type(buffer).__name__}")
        dtype_ok = buffer.dtype in PARAM_DTYPES if any_dtype else buffer.dtype == self.dtype
        if not dtype_ok or buffer.shape != self.buffer.shape:
            wanted = f"a dtype of {_DTYPES}" if any_dtype else f"this layout's dtype {self.dtype}"
            raise ValueError(
                f"{name} must have {wanted} and shape {self.buffer.shape}, got {buffer.dtype} "
                f"{buffer.shape}"
            )
        return buffer

    def split(self, buffer: np.ndarray) -> tuple[np.ndarray, ...]:
        """Views of a buffer of this layout (say an optimizer state, of any of the parameter
        dtypes), shaped like the arrays."""
        self._check_buffer("buffer", buffer, any_dtype=True)
        return tuple(
            buffer[offset : offset + length].reshape(shape)
            for (offset, length), shape in zip(self.segments.tolist(), self.shapes, strict=True)
        )

    def new_buffer(self, dtype: npt.DTypeLike = None) -> np.ndarray:
        """A zero-filled, aligned buffer of this layout, of ``dtype`` (default: the
        arrays')."""
        return _aligned_zeros(self.buffer.size, self.dtype if dtype is None else np.dtype(dtype))

    def unflatten(
        self, buffer: np.ndarray | None = None
    ) -> list[np.ndarray] | dict[str, np.ndarray]:
        """Copies of the arrays in ``buffer`` (default :attr:`buffer`), shaped like the originals.

        A dict by name when the FlatParams was built from a mapping, else a list.
        """
        source = self.buffer if buffer is None else buffer
        copies = [view.copy() for view in self.split(source)]
        return copies if self.names is None else dict(zip(self.names, copies, strict=True))

    # ------------------------------------------------------------------ gradients
    def zero_grad(self) -> None:
        """Set every gradient to zero and restart the micro-batch count."""
        self.grad_buffer.fill(0)
        self.micro_batches = 0

    def accumulate(self, grads: Sequence[np.ndarray | None] | np.ndarray) -> None:
        """Add one micro-batch's gradients into :attr:`grad_buffer`.

        Parameters
        ----------
        grads
            One array per parameter, shaped like it (``None`` adds nothing to that one), or a
            flat gradient with :attr:`grad_buffer`'s layout (another FlatParams' buffer, say),
            added in one pass. Everything is checked before anything is added.

        Notes
        -----
        After ``k`` calls, ``opt.step()`` applies the mean: the kernels multiply the gradient
        by :attr:`grad_scale` = ``1/k`` as they read it, so averaging costs no pass.
        """
        if isinstance(grads, np.ndarray):
            self._check_buffer("grads", grads)
            np.add(self.grad_buffer, grads, out=self.grad_buffer)
            # The padding of an outside buffer may hold anything; ours must stay zero.
            self.grad_buffer[self._padding_index] = 0
            self.micro_batches += 1
            return
        if not isinstance(grads, Sequence) or isinstance(grads, (str, bytes)):
            raise TypeError(
                f"grads must be a list of arrays (one per parameter) or a flat ndarray, "
                f"got {type(grads).__name__}"
            )
        if len(grads) != len(self):
            raise ValueError(
                f"grads has {plural(len(grads), 'entry', 'entries')}, expected {len(self)}"
            )
        for index, (grad, shape) in enumerate(zip(grads, self.shapes, strict=True)):
            if grad is None:
                continue
            if not isinstance(grad, np.ndarray):
                raise TypeError(f"grads[{index}] must be a numpy.ndarray, got {type(grad)}")
            if grad.dtype != self.dtype:
                raise TypeError(f"grads[{index}] must have dtype {self.dtype}, got {grad.dtype}")
            if grad.shape != shape:
                raise ValueError(f"grads[{index}] must have shape {shape}, got {grad.shape}")
        for view, grad in zip(self.grads, grads, strict=True):
            if grad is not None:
                np.add(view, grad, out=view)
        self.micro_batches += 1

    @property
    def grad_scale(self) -> float:
        """``1 / micro_batches`` after :meth:`accumulate`, else 1: the mean gradient."""
        return 1.0 / self.micro_batches if self.micro_batches else 1.0

    def __repr__(self) -> str:
        arrays, elements = plural(len(self), "array"), plural(self.size, f"{self.dtype} element")
        return f"FlatParams({arrays}, {elements}, {plural(self.buffer.nbytes, 'byte')})"
