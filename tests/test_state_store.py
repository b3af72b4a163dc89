"""Host state lives in one flat buffer per state name and dtype, with a view per parameter,
shared by the per-array step and the flat path (fastopt._state_store)."""

import itertools

import numpy as np
import pytest

import fastopt
from fastopt import reference
from fastopt.flat import ALIGNMENT_BYTES
from fastopt.precision import BFLOAT16, QUANTIZED

# Odd sizes, a scalar, an empty array; one over 4,096 elements (kept 8-bit under int8 state)
# whose last block is partial.
SHAPES = [(3, 5), (0,), (1,), (), (33,), (70, 73)]


def arrays(shapes, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(dtype) for shape in shapes]


def state_arrays(opt):
    """(index, name, array) of every state array shaped like its parameter, and scales."""
    return [
        (index, name, value)
        for index, entry in opt.state.items()
        for name, value in entry.items()
        if isinstance(value, np.ndarray)
    ]


def assert_in_store(opt):
    """Every state array is a view of the store's buffer of its name and dtype, no two of one
    buffer overlap, and each starts on a 64-byte boundary where it has elements."""
    found = state_arrays(opt)
    assert found
    spans: dict[tuple[str, np.dtype], list[tuple[int, int]]] = {}
    for index, name, value in found:
        buffer = opt._store.buffers[(name, value.dtype)]
        assert np.shares_memory(value, buffer) or not value.size, (
            index,
            name,
        )
        start = value.__array_interface__["data"][0]
        if value.size:
            assert start % ALIGNMENT_BYTES == 0 or name.endswith("_absmax"), (index, name)
        spans.setdefault((name, value.dtype), []).append((start, start + value.nbytes))
    for key, ranges in spans.items():
        ranges.sort()
        for (_, end), (start, _) in itertools.pairwise(ranges):
            assert end <= start, key


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_per_array_state_views_one_buffer_per_name(dtype):
    params = arrays(SHAPES, dtype)
    opt = fastopt.Adam(params, lr=0.01, amsgrad=True)
    names = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    expected = [(p.copy(), *(np.zeros_like(p) for _ in names)) for p in params]
    for step in range(1, 4):
        grads = arrays(SHAPES, dtype, seed=10 + step)
        opt.step(grads)
        for held, grad in zip(expected, grads, strict=True):
            reference.adam_step(*held[:1], grad, *held[1:], lr=0.01, amsgrad=True, step=step)
    assert_in_store(opt)
    assert {name for name, _ in opt._store.buffers} == set(names)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    for index, param in enumerate(params):
        np.testing.assert_allclose(param, expected[index][0], rtol=rtol, atol=rtol)
        for name, value in zip(names, expected[index][1:], strict=True):
            np.testing.assert_allclose(
                opt.state[index][name], value, rtol=rtol, atol=rtol * 1e-3, err_msg=name
            )


def test_per_array_and_flat_steps_share_the_arrays_without_copies():
    flat = fastopt.FlatParams.from_arrays(arrays(SHAPES))
    plain = [p.copy() for p in flat.params]
    opt = fastopt.Adam(flat, lr=0.01)
    twin = fastopt.Adam(plain, lr=0.01)
    first = arrays(SHAPES, seed=1)
    opt.step(first)  # per-array: its state is made in the store laid out like the FlatParams
    twin.step(first)
    held = {(i, n): v for i, n, v in state_arrays(opt)}
    for step in range(2):
        grads = arrays(SHAPES, seed=2 + step)
        for view, grad in zip(flat.grads, grads, strict=True):
            view[...] = grad
        opt.step()  # flat: the same arrays, one launch over their buffers
        twin.step(grads)
    opt.step(arrays(SHAPES, seed=9))
    twin.step(arrays(SHAPES, seed=9))
    assert {(i, n): v for i, n, v in state_arrays(opt)}.keys() == held.keys()
    for (index, name), value in held.items():
        assert opt.state[index][name] is value, (index, name)
        np.testing.assert_array_equal(value, twin.state[index][name])
    for view, array in zip(flat.params, plain, strict=True):
        np.testing.assert_array_equal(view, array)
    # The state sits where the parameters sit in their buffer.
    buffer = opt._store.buffers[("exp_avg", np.dtype(np.float32))]
    assert buffer.size == flat.buffer.size
    for index, view in enumerate(flat.params):
        start = (view.__array_interface__["data"][0] - flat.buffer.ctypes.data) // 4
        np.testing.assert_array_equal(
            buffer[start : start + view.size], opt.state[index]["exp_avg"].reshape(-1)
        )


def test_loading_copies_into_the_store():
    params = arrays(SHAPES)
    opt = fastopt.AdamW(params, lr=0.01)
    for step in range(2):
        opt.step(arrays(SHAPES, seed=step))
    checkpoint = opt.state_dict()
    resumed = fastopt.AdamW([p.copy() for p in params], lr=0.01)
    resumed.load_state_dict(checkpoint)
    assert_in_store(resumed)
    for index, entry in checkpoint["state"].items():
        assert not np.shares_memory(entry["exp_avg"], resumed.state[index]["exp_avg"])
        entry["exp_avg"][...] = 7.0  # the checkpoint is the caller's: the optimizer kept copies
        assert not np.any(resumed.state[index]["exp_avg"] == 7.0) or not entry["exp_avg"].size
    grads = arrays(SHAPES, seed=5)
    opt.step(grads)
    resumed.step(grads)
    for index in opt.state:
        np.testing.assert_array_equal(
            opt.state[index]["exp_avg_sq"], resumed.state[index]["exp_avg_sq"]
        )


def test_adding_a_group_moves_the_state_into_the_new_layout():
    first, second = arrays(SHAPES[:3]), arrays(SHAPES[3:], seed=3)
    opt = fastopt.Adam(first, lr=0.01)
    twin = fastopt.Adam([p.copy() for p in first], lr=0.01)
    grads = arrays(SHAPES[:3], seed=4)
    opt.step(grads)
    twin.step(grads)
    old_buffer = opt._store.buffers[("exp_avg", np.dtype(np.float32))]
    opt.add_param_group({"params": second, "lr": 0.02})
    twin.add_param_group({"params": [p.copy() for p in second], "lr": 0.02})
    for step in range(2):
        grads = arrays(SHAPES, seed=20 + step)
        opt.step(grads)
        twin.step(grads)
    assert_in_store(opt)
    assert not any(np.shares_memory(v, old_buffer) for _, _, v in state_arrays(opt))
    for index in twin.state:
        for name in ("exp_avg", "exp_avg_sq"):
            np.testing.assert_array_equal(opt.state[index][name], twin.state[index][name])


def test_each_dtype_and_8_bit_codes_and_scales_have_their_own_buffers():
    params = arrays(SHAPES)
    opt = fastopt.Adam(
        [
            {"params": params[:2], "state_dtype": "bfloat16"},
            {"params": params[2:], "state_dtype": "int8"},
        ],
        lr=0.01,
    )
    for step in range(2):
        opt.step(arrays(SHAPES, seed=30 + step))
    assert_in_store(opt)
    kinds = {(name, str(dtype)) for name, dtype in opt._store.buffers}
    big = len(SHAPES) - 1  # over 4,096 elements: its moments are 8-bit codes and scales
    assert opt.state[big]["exp_avg"].dtype == QUANTIZED
    assert opt.state[big]["exp_avg_absmax"].shape == (-(-params[big].size // 256),)
    assert {("exp_avg", "bfloat16"), ("exp_avg", "uint8"), ("exp_avg_absmax", "float32")} <= kinds
    assert ("exp_avg", "float32") in kinds  # the small tensors of the int8 group


def test_changing_the_state_dtype_converts_into_the_store():
    params = arrays(SHAPES)
    opt = fastopt.Adam(params, lr=0.01)
    twin = fastopt.Adam([p.copy() for p in params], lr=0.01)
    for opt_ in (opt, twin):
        opt_.step(arrays(SHAPES, seed=40))
    opt.param_groups[0]["state_dtype"] = "bfloat16"
    for opt_ in (opt, twin):
        opt_.step(arrays(SHAPES, seed=41))
    assert_in_store(opt)
    for index, entry in twin.state.items():
        converted = opt.state[index]["exp_avg"]
        assert converted.dtype == BFLOAT16
        np.testing.assert_allclose(
            converted.astype(np.float32), entry["exp_avg"], rtol=2**-7, atol=2**-8 * 0.25
        )
