"""The NumPy reference of the block-wise dynamic 8-bit format (``fastopt.reference``): the code
maps bit for bit as bitsandbytes builds them, quantization to the nearest code, and the scales,
against bitsandbytes' own functions where it is installed."""

from __future__ import annotations

import numpy as np
import pytest

from fastopt import reference

BLOCK = reference.QUANTIZATION_BLOCK


def _values(size: int, signed: bool, seed: int = 0) -> np.ndarray:
    """Magnitudes over several decades (the dynamic type's fine steps near zero), and a block
    of zeros."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(size) * 10.0 ** rng.uniform(-6, 1, size)).astype(np.float32)
    x[BLOCK : 2 * BLOCK] = 0.0
    return x if signed else np.abs(x)


def _scaled(x: np.ndarray, absmax: np.ndarray) -> np.ndarray:
    """What the codes approximate: ``x`` over its block's scale (at least 1e-38), clamped to
    [-1, 1]; times the reciprocal in whole blocks, divided in a last, partial one."""
    scale = np.maximum(np.repeat(absmax, BLOCK)[: x.size], np.float32(1e-38))
    full = x.size - x.size % BLOCK
    scaled = np.concatenate([x[:full] * (np.float32(1) / scale[:full]), x[full:] / scale[full:]])
    return np.clip(scaled, -1, 1)


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_the_maps_are_sorted_codes_from_zero_or_minus_one_to_one(signed):
    code = reference.dynamic_map(signed)
    assert code.dtype == np.float32 and code.shape == (256,)
    assert np.all(np.diff(code) > 0)
    assert code[-1] == 1.0 and 0.0 in code
    if signed:  # 127 negative codes mirror the positive ones below 1; then 0
        np.testing.assert_array_equal(code[:127], -code[128:255][::-1])
        assert code[127] == 0.0
    else:
        assert code[0] == 0.0 and np.all(code[1:] > 0)
    # Fine steps near zero: the smallest non-zero magnitudes are about 1e-7 of the largest.
    assert np.min(np.abs(code[code != 0])) < 1e-6


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
@pytest.mark.parametrize("size", [0, 1, 255, 256, 257, 4 * BLOCK + 77])
def test_each_element_takes_the_nearest_code_of_its_block_scale(signed, size):
    code = reference.dynamic_map(signed)
    x = _values(size, signed, seed=size)
    codes, absmax = reference.quantize_blockwise(x, code)
    assert codes.dtype == np.uint8 and codes.shape == x.shape
    assert absmax.dtype == np.float32 and absmax.shape == (-(-size // BLOCK),)
    for b in range(absmax.size):
        block = x[b * BLOCK : (b + 1) * BLOCK]
        assert absmax[b] == np.abs(block).max()
    scale = np.repeat(absmax, BLOCK)[:size]
    scaled = _scaled(x, absmax)
    distance = np.abs(scaled[:, None] - code[None, :])
    chosen = distance[np.arange(size), codes]
    assert np.all(chosen <= distance.min(axis=1))  # nearest (ties: the lower code)
    decoded = reference.dequantize_blockwise(codes, absmax, code)
    assert decoded.dtype == np.float32
    # The error is the distance to the nearest code, scaled: at most half the widest gap
    # between codes (or the distance from -1 to the lowest code) times the block's scale.
    error = np.abs(decoded.astype(np.float64) - x)
    assert np.all(np.abs(error - chosen * scale) <= 1e-6 * scale)  # the reciprocal's rounding
    widest = max(np.diff(code).max() / 2, 1 + code[0])
    assert np.all(error <= widest * scale * (1 + 1e-5))
    # Zeros come back exactly, and so does each block's largest magnitude if positive (the
    # signed map's lowest code is -0.99296875: not -1).
    assert np.all(decoded[x == 0] == 0)
    for b in range(absmax.size):
        block = slice(b * BLOCK, (b + 1) * BLOCK)
        top = np.argmax(np.abs(x[block]))
        expected = x[block][top] if x[block][top] >= 0 else code[0] * absmax[b]
        assert decoded[block][top] == expected


def test_nan_spreads_to_its_block_and_no_further():
    code = reference.dynamic_map(True)
    x = _values(3 * BLOCK, True)
    x[2 * BLOCK + 5] = np.nan
    codes, absmax = reference.quantize_blockwise(x, code)
    decoded = reference.dequantize_blockwise(codes, absmax, code)
    assert np.isnan(absmax[2]) and np.all(np.isnan(decoded[2 * BLOCK :]))
    assert np.all(np.isfinite(decoded[: 2 * BLOCK]))


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_against_bitsandbytes(signed):
    """bitsandbytes' maps bit for bit; its CPU quantizer's scales and decoding exactly. Its
    CPU codes come from an approximate search (``BinSearch``), so they are compared by
    distance: fastopt's code is never farther from the value, and nearly always the same."""
    pytest.importorskip("torch")
    functional = pytest.importorskip("bitsandbytes.functional")
    import torch

    code = reference.dynamic_map(signed)
    np.testing.assert_array_equal(code, functional.create_dynamic_map(signed=signed).numpy())
    x = _values(200 * BLOCK + 77, signed)
    codes, absmax = reference.quantize_blockwise(x, code)
    theirs, state = functional.quantize_blockwise(
        torch.from_numpy(x), code=torch.from_numpy(code), blocksize=BLOCK
    )
    theirs = theirs.numpy()
    np.testing.assert_array_equal(absmax, state.absmax.numpy())
    np.testing.assert_array_equal(
        reference.dequantize_blockwise(theirs, absmax, code),
        functional.dequantize_blockwise(torch.from_numpy(theirs), state).numpy(),
    )
    scaled = _scaled(x, absmax)
    ours, bnb = np.abs(scaled - code[codes]), np.abs(scaled - code[theirs])
    assert np.all(ours <= bnb * (1 + 1e-6))
    # Its search is coarse near zero (these values span seven decades: it differs on about
    # half); on normally distributed values it agrees but for a fraction of a percent.
    normal = np.random.default_rng(1).standard_normal(100 * BLOCK).astype(np.float32)
    normal = normal if signed else np.abs(normal)
    theirs = functional.quantize_blockwise(
        torch.from_numpy(normal), code=torch.from_numpy(code), blocksize=BLOCK
    )[0].numpy()
    assert np.mean(reference.quantize_blockwise(normal, code)[0] == theirs) > 0.99
