"""How ZeRO-1 cuts the parameters into shards, and how shards of a checkpoint are put together.

All parameters of a :class:`~fastopt.distributed.ZeroRedundancyOptimizer` sit, one after the
other, in a flat buffer of ``world * shard_size`` elements; rank ``r`` owns elements
``[r * shard_size, (r + 1) * shard_size)`` and steps the *pieces* of the parameters that fall
there. Rules whose update reads a whole tensor (per-tensor norms, matrix steps) get whole
parameters instead: each rank's parameters are packed at the start of its shard. Pure NumPy,
no MPI: the layout is a function of the sizes and the world size alone, so every rank computes
the same one, and a checkpoint of any world size is put together again here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["ALIGNMENT", "Piece", "ShardLayout", "assemble", "shard_layout", "slice_entry"]

#: Shards start on a multiple of 16 elements: 64 bytes of float32, a cache line.
ALIGNMENT = 16


@dataclass(frozen=True)
class Piece:
    """Elements ``[start, stop)`` of parameter ``param`` (flat, C order)."""

    param: int
    start: int
    stop: int


@dataclass(frozen=True)
class ShardLayout:
    """Where each parameter sits in the flat buffers, and the shard size.

    Attributes
    ----------
    offsets, sizes : tuple of int
        Each parameter's first element in the flat buffers, and its element count.
    shard_size : int
        Elements per rank (a multiple of :data:`ALIGNMENT`); the buffers hold
        ``world * shard_size``.
    world : int
        The number of ranks.
    """

    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    shard_size: int
    world: int

    @property
    def total(self) -> int:
        """Elements in each flat buffer, padding included."""
        return self.shard_size * self.world

    def owner(self, param: int) -> int:
        """The rank that holds an empty parameter (it steps it, so its state exists)."""
        if self.shard_size == 0:
            return 0
        return min(self.offsets[param] // self.shard_size, self.world - 1)

    def pieces(self, rank: int) -> tuple[Piece, ...]:
        """The pieces of parameters in ``rank``'s shard, in parameter order."""
        low, high = rank * self.shard_size, (rank + 1) * self.shard_size
        pieces = []
        for param, (offset, size) in enumerate(zip(self.offsets, self.sizes, strict=True)):
            if size == 0:
                if self.owner(param) == rank:
                    pieces.append(Piece(param, 0, 0))
                continue
            start, stop = max(offset, low), min(offset + size, high)
            if start < stop:
                pieces.append(Piece(param, start - offset, stop - offset))
        return tuple(pieces)

    def elsewhere(self, rank: int) -> tuple[Piece, ...]:
        """The pieces of every parameter outside ``rank``'s shard (what the all-gather
        brings)."""
        low, high = rank * self.shard_size, (rank + 1) * self.shard_size
        pieces = []
        for param, (offset, size) in enumerate(zip(self.offsets, self.sizes, strict=True)):
            before, after = min(offset + size, low) - offset, max(offset, high) - offset
            if before > 0:
                pieces.append(Piece(param, 0, before))
            if after < size:
                pieces.append(Piece(param, max(after, 0), size))
        return tuple(pieces)


def _aligned(count: int) -> int:
    return -(-count // ALIGNMENT) * ALIGNMENT


def shard_layout(sizes: Sequence[int], world: int, *, whole: bool) -> ShardLayout:
    """The layout of parameters of ``sizes`` over ``world`` ranks.

    ``whole=False``: the parameters back to back, cut into equal shards (a parameter may
    straddle shards). ``whole=True``: each parameter on one rank, consecutive parameters on
    the same or the next rank, split where the running total crosses ``k / world`` of the
    whole (by each parameter's middle element); shards as large as the largest rank's share.
    """
    sizes = tuple(int(n) for n in sizes)
    total = sum(sizes)
    if not whole:
        offsets = tuple(int(x) for x in np.cumsum((0, *sizes[:-1]))) if sizes else ()
        return ShardLayout(offsets, sizes, _aligned(-(-total // world)), world)
    ranks, before = [], 0
    for size in sizes:
        middle = before + size / 2
        ranks.append(min(world - 1, int(world * middle / total)) if total else 0)
        before += size
    loads = [0] * world
    for rank, size in zip(ranks, sizes, strict=True):
        loads[rank] += size
    shard_size = _aligned(max(loads, default=0))
    offsets, filled = [], [0] * world
    for rank, size in zip(ranks, sizes, strict=True):
        offsets.append(rank * shard_size + filled[rank])
        filled[rank] += size
    return ShardLayout(tuple(offsets), sizes, shard_size, world)


def slice_entry(entry: Mapping[str, Any], piece: Piece, shape: tuple[int, ...] | None) -> dict:
    """A parameter's state entry cut to ``piece``: its arrays' elements there (copies, 1-D,
    or of ``shape`` when given: a whole parameter), its scalars as they are."""
    cut: dict[str, Any] = {}
    for name, value in entry.items():
        if isinstance(value, np.ndarray) and value.ndim >= 1:
            part = value.reshape(-1)[piece.start : piece.stop].copy()
            cut[name] = part if shape is None else part.reshape(shape)
        else:
            cut[name] = value
    return cut


def assemble(
    parts: Sequence[Mapping[Any, Mapping[str, Any]]],
    pieces: Sequence[Mapping[Any, Sequence[int]]],
    shapes: Sequence[tuple[int, ...]],
) -> dict[int, dict[str, Any]]:
    """Whole state entries from the pieces of each rank.

    ``parts[r]`` maps parameter positions to rank ``r``'s entries for its piece,
    ``pieces[r]`` those positions to the piece's ``(start, stop)``. A parameter's entries are
    put together when every rank that holds a piece of it has an entry (its arrays
    concatenated in order, its scalars from the first piece).

    Raises
    ------
    ValueError
        If the pieces of a parameter do not cover it exactly once, or its entries disagree
        on their names.
    """
    found: dict[int, list[tuple[int, int, Mapping[str, Any] | None]]] = {}
    for part, spans in zip(parts, pieces, strict=True):
        for raw, (start, stop) in spans.items():
            found.setdefault(int(raw), []).append((int(start), int(stop), part.get(raw)))
    state: dict[int, dict[str, Any]] = {}
    for param, shape in enumerate(shapes):
        size = int(np.prod(shape, dtype=np.int64))
        spans = sorted(found.pop(param, []), key=lambda item: item[:2])
        covered = 0
        for start, stop, _ in spans:
            if start != covered or stop < start:
                break
            covered = stop
        if not spans or covered != size or (size and any(a == b for a, b, _ in spans)):
            raise ValueError(f"the shards do not cover parameter {param} exactly once")
        entries = [entry for _, _, entry in spans]
        if all(entry is None for entry in entries):
            continue
        if any(entry is None or set(entry) != set(entries[0]) for entry in entries):
            raise ValueError(f"the shards disagree on the state of parameter {param}")
        whole: dict[str, Any] = {}
        for name, value in entries[0].items():
            if isinstance(value, np.ndarray) and value.ndim >= 1:
                joined = np.concatenate([entry[name].reshape(-1) for entry in entries])
                whole[name] = joined.reshape(shape)
            else:
                whole[name] = value
        state[param] = whole
    if found:
        raise ValueError(f"the shards hold pieces of parameter {min(found)}, which is absent")
    return state
