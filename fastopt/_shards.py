"""How ZeRO-1 cuts the parameters into shards, and how shards of a checkpoint are put together.

All parameters of a :class:`~fastopt.distributed.ZeroRedundancyOptimizer` sit, one after the
other, in a flat buffer; rank ``r`` owns the elements ``[bounds[r], bounds[r + 1])`` and steps
the *pieces* of the parameters that fall there: equal shards (the buffer padded to a multiple
of the world size), or, for rules whose update reads a whole tensor (per-tensor norms, matrix
steps), shards cut between parameters as evenly as their sizes allow. Pure NumPy,
no MPI: the layout is a function of the sizes and the world size alone, so every rank computes
the same one, and a checkpoint of any world size is put together again here.
"""

from __future__ import annotations

import itertools
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
    """Where each parameter sits in the flat buffers, and which elements each rank owns.

    Attributes
    ----------
    offsets, sizes : tuple of int
        Each parameter's first element in the flat buffers, and its element count.
    bounds : tuple of int
        Rank ``r`` owns elements ``[bounds[r], bounds[r + 1])``; ``bounds[-1]`` is the
        buffers' length, padding included.
    world : int
        The number of ranks.
    """

    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    bounds: tuple[int, ...]
    world: int

    @property
    def total(self) -> int:
        """Elements in each flat buffer, padding included."""
        return self.bounds[-1]

    @property
    def counts(self) -> tuple[int, ...]:
        """Elements each rank owns."""
        return tuple(b - a for a, b in itertools.pairwise(self.bounds))

    @property
    def uniform(self) -> bool:
        """Whether every rank owns as many elements (the collectives' ``_block`` forms)."""
        return len(set(self.counts)) == 1

    def owner(self, param: int) -> int:
        """The rank whose shard holds the parameter's first element (an empty parameter's:
        it steps it, so its state exists)."""
        offset = self.offsets[param]
        for rank in range(self.world - 1, -1, -1):
            if self.bounds[rank] <= offset and (
                offset < self.bounds[rank + 1] or self.sizes[param] == 0
            ):
                return rank
        return 0

    def pieces(self, rank: int) -> tuple[Piece, ...]:
        """The pieces of parameters in ``rank``'s shard, in parameter order."""
        low, high = self.bounds[rank], self.bounds[rank + 1]
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
        low, high = self.bounds[rank], self.bounds[rank + 1]
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


def _ranks_needed(sizes: Sequence[int], cap: int) -> int:
    ranks, load = 1, 0
    for size in sizes:
        if load + size > cap:
            ranks, load = ranks + 1, 0
        load += size
    return ranks


def _balanced_cuts(sizes: Sequence[int], world: int) -> list[int]:
    """Where consecutive parameters are cut into ``world`` runs whose largest total is the
    least possible (bisection on that total, each run filled greedily): the index of each
    run's first parameter, and ``len(sizes)``."""
    low, high = max(sizes, default=0), sum(sizes)
    while low < high:
        middle = (low + high) // 2
        if _ranks_needed(sizes, middle) <= world:
            high = middle
        else:
            low = middle + 1
    cuts, load = [0], 0
    for index, size in enumerate(sizes):
        if load + size > low and load > 0:
            cuts.append(index)
            load = 0
        load += size
    cuts += [len(sizes)] * (world + 1 - len(cuts))
    return cuts


def shard_layout(sizes: Sequence[int], world: int, *, whole: bool) -> ShardLayout:
    """The layout of parameters of ``sizes`` over ``world`` ranks.

    The parameters sit back to back in the flat buffers. ``whole=False``: cut into equal
    shards of a multiple of :data:`ALIGNMENT` elements (a parameter may straddle shards; the
    buffers padded to ``world`` shards). ``whole=True``: cut between parameters only, into
    consecutive runs whose largest is as small as the sizes allow (shards of unequal sizes,
    no padding).
    """
    sizes = tuple(int(n) for n in sizes)
    offsets = tuple(int(x) for x in np.cumsum((0, *sizes[:-1]))) if sizes else ()
    total = sum(sizes)
    if not whole:
        shard = _aligned(-(-total // world))
        return ShardLayout(offsets, sizes, tuple(r * shard for r in range(world + 1)), world)
    cuts = _balanced_cuts(sizes, world)
    bounds = tuple(offsets[cut] if cut < len(sizes) else total for cut in cuts)
    return ShardLayout(offsets, sizes, bounds, world)


def slice_entry(entry: Mapping[str, Any], piece: Piece, shape: tuple[int, ...] | None) -> dict:
    """A parameter's checked state entry cut to ``piece``: its arrays' elements there
    (copies, 1-D; whole copies when ``shape`` is given: the piece is the whole parameter), its
    scalars (numbers: every array of a checked entry is a state array) as they are."""
    cut: dict[str, Any] = {}
    for name, value in entry.items():
        if not isinstance(value, np.ndarray):
            cut[name] = value
        elif shape is not None:  # the whole parameter (8-bit state's scales included)
            cut[name] = value.copy()
        else:
            cut[name] = value.reshape(-1)[piece.start : piece.stop].copy()
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
            if isinstance(value, np.ndarray) and len(entries) == 1 and value.size != size:
                whole[name] = value  # an 8-bit array's scales, from a whole parameter
            elif isinstance(value, np.ndarray):  # pieces of a state array (a 0-d one: 1-D)
                joined = np.concatenate([entry[name].reshape(-1) for entry in entries])
                whole[name] = joined.reshape(shape)
            else:
                whole[name] = value
        state[param] = whole
    if found:
        raise ValueError(f"the shards hold pieces of parameter {min(found)}, which is absent")
    return state
