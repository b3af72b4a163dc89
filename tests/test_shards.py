"""How ZeRO cuts the parameters into shards (no MPI needed): every element owned once, the
rest received, equal aligned shards or whole parameters in balanced runs."""

from __future__ import annotations

import numpy as np
import pytest

from fastopt._shards import ALIGNMENT, Piece, assemble, shard_layout, slice_entry

SIZES = [21, 5, 0, 33, 16, 1, 1000, 3, 0]


@pytest.mark.parametrize("world", [1, 2, 3, 7, 20])
@pytest.mark.parametrize("whole", [False, True])
def test_every_element_is_owned_once_and_received_elsewhere(world, whole):
    layout = shard_layout(SIZES, world, whole=whole)
    assert layout.bounds[0] == 0 and list(layout.bounds) == sorted(layout.bounds)
    assert len(layout.counts) == world and layout.total >= sum(SIZES)
    owned = [np.zeros(n, dtype=int) for n in SIZES]
    holders = [0] * len(SIZES)
    for rank in range(world):
        low, high = layout.bounds[rank], layout.bounds[rank + 1]
        for piece in layout.pieces(rank):
            owned[piece.param][piece.start : piece.stop] += 1
            holders[piece.param] += 1
            offset = layout.offsets[piece.param]
            if SIZES[piece.param]:
                assert low <= offset + piece.start and offset + piece.stop <= high
            if whole:
                assert (piece.start, piece.stop) == (0, SIZES[piece.param])
        # What this rank does not own, it receives: the complement, exactly.
        mine = np.zeros(sum(SIZES), dtype=int)
        for piece in layout.pieces(rank) + layout.elsewhere(rank):
            offset = layout.offsets[piece.param]
            mine[offset + piece.start : offset + piece.stop] += 1
        assert np.all(mine == 1)
    assert all(np.all(o == 1) for o in owned)
    # Empty parameters too are stepped by exactly one rank (so that their state exists).
    assert all(holders[i] == 1 for i, n in enumerate(SIZES) if n == 0)
    if whole:
        assert all(holders[i] == 1 for i in range(len(SIZES)))
    else:
        assert layout.uniform and layout.counts[0] % ALIGNMENT == 0
        assert layout.counts[0] < -(-sum(SIZES) // world) + ALIGNMENT


@pytest.mark.parametrize(
    ("sizes", "world", "largest"),
    [
        ([30, 40, 30], 2, 70),
        ([30, 20, 20, 30], 2, 50),
        ([10, 10, 10, 10], 2, 20),
        ([100, 1, 1, 1], 3, 100),
        ([5], 4, 5),
    ],
)
def test_whole_parameters_go_in_runs_as_even_as_the_sizes_allow(sizes, world, largest):
    layout = shard_layout(sizes, world, whole=True)
    assert max(layout.counts) == largest
    assert layout.total == sum(sizes)  # no padding


def test_whole_parameters_do_not_pad_the_buffers_to_the_largest_shard():
    sizes = [4096**2, 4096, 4096**2, 4096] * 2
    layout = shard_layout(sizes, 8, whole=True)
    assert layout.total == sum(sizes)


def test_pieces_of_an_entry_cut_and_put_together_again():
    entry = {"step": 3, "mu_product": 0.5, "exp_avg": np.arange(10.0).reshape(2, 5)}
    pieces = [Piece(0, 0, 4), Piece(0, 4, 10)]
    parts = [{0: slice_entry(entry, piece, None)} for piece in pieces]
    assert parts[0][0]["exp_avg"].tolist() == [0.0, 1.0, 2.0, 3.0]
    spans = [{0: (piece.start, piece.stop)} for piece in pieces]
    whole = assemble(parts, spans, [(2, 5)])
    np.testing.assert_array_equal(whole[0]["exp_avg"], entry["exp_avg"])
    assert whole[0]["step"] == 3 and whole[0]["mu_product"] == 0.5
    # A 0-d parameter's state: one element.
    zero_d = {"step": 1, "exp_avg": np.array(2.0)}
    cut = slice_entry(zero_d, Piece(0, 0, 1), None)
    assert cut["exp_avg"].shape == (1,)
    assert assemble([{0: cut}], [{0: (0, 1)}], [()])[0]["exp_avg"].shape == ()
    with pytest.raises(ValueError, match="exactly once"):
        assemble([{0: parts[0][0]}], [{0: (0, 4)}], [(2, 5)])
