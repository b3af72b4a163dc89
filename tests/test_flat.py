"""FlatParams, and optimizers stepping one: against the per-array path, bit for bit."""

import gc

import numpy as np
import pytest
from rule_cases import CASES, assert_close, case_id

import fastopt
import fastopt._flatstep as flatstep
from fastopt._jit import PARALLEL_THRESHOLD
from fastopt.flat import ALIGNMENT_BYTES

# Odd sizes, a scalar, empty arrays (one between two others), a 3-D array.
SHAPES = [(3, 5), (7,), (0,), (1,), (33,), (2, 2, 2), (), (0, 4), (19,)]
# Larger than the parallel threshold in all, with a segment that straddles thread chunks.
BIG_SHAPES = [(5,), (PARALLEL_THRESHOLD + 13,), (300, 7), (3,)]
STEPS = 6
DTYPES = [np.float32, np.float64]


def random_arrays(shapes, dtype, seed):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(dtype) for shape in shapes]


def two_groups(params, kwargs, second):
    """Alternate parameters between a group with ``kwargs`` and one that also has ``second``."""
    return [{"params": list(params[0::2])}, {"params": list(params[1::2]), **second}]


def run_both(cls, kwargs, shapes, dtype, second=None, steps=STEPS):
    """The same training on a FlatParams (``step()``) and on plain arrays (``step(grads)``)."""
    arrays = random_arrays(shapes, dtype, seed=1)
    flat = fastopt.FlatParams.from_arrays(arrays)
    plain = [array.copy() for array in arrays]
    if second is None:
        second = {"lr": 0.5 * kwargs["lr"]}
        if "weight_decay" in cls(np.zeros(1)).defaults:  # Rprop has none
            second["weight_decay"] = 0.05
    flat_opt = cls(two_groups(flat.params, kwargs, second), **kwargs)
    plain_opt = cls(two_groups(plain, kwargs, second), **kwargs)
    order = list(range(0, len(shapes), 2)) + list(range(1, len(shapes), 2))
    for step in range(steps):
        grads = random_arrays(shapes, dtype, seed=100 + step)
        for view, grad in zip(flat.grads, grads, strict=True):
            view[...] = grad
        flat_opt.step()
        plain_opt.step([grads[i] for i in order])
    return flat, flat_opt, plain, plain_opt


def assert_same_state(first, second):
    assert first.state.keys() == second.state.keys()
    for index, entry in first.state.items():
        assert entry.keys() == second.state[index].keys()
        for name, value in entry.items():
            other = second.state[index][name]
            if isinstance(value, np.ndarray):
                assert value.shape == other.shape and value.dtype == other.dtype, name
                np.testing.assert_array_equal(value, other, err_msg=f"{index} {name}")
            else:
                assert value == other, (index, name)


# ---------------------------------------------------------------------- layout
@pytest.mark.parametrize("dtype", DTYPES)
def test_layout_views_alignment_and_copies(dtype):
    arrays = random_arrays(SHAPES, dtype, seed=0)
    originals = [array.copy() for array in arrays]
    flat = fastopt.FlatParams.from_arrays(arrays)
    assert len(flat) == len(SHAPES) and flat.dtype == dtype
    assert flat.size == sum(array.size for array in arrays)
    align = ALIGNMENT_BYTES // np.dtype(dtype).itemsize
    for (offset, length), view, grad, array in zip(
        flat.segments, flat.params, flat.grads, arrays, strict=True
    ):
        assert offset % align == 0 and length == array.size
        assert view.shape == array.shape and view.dtype == dtype and view.flags.c_contiguous
        assert (flat.buffer.ctypes.data + offset * view.itemsize) % ALIGNMENT_BYTES == 0
        np.testing.assert_array_equal(view, array)
        assert np.shares_memory(view, flat.buffer) or view.size == 0
        assert np.shares_memory(grad, flat.grad_buffer) or grad.size == 0
        assert not np.shares_memory(view, array)
    flat.params[1][...] = 42.0
    offset, length = flat.segments[1]
    assert np.all(flat.buffer[offset : offset + length] == 42.0)
    for array, original in zip(arrays, originals, strict=True):
        np.testing.assert_array_equal(array, original)  # the inputs are left alone
    padding = np.ones(flat.buffer.size, dtype=bool)
    for offset, length in flat.segments:
        padding[offset : offset + length] = False
    assert padding.any() and not flat.buffer[padding].any() and not flat.grad_buffer.any()
    assert flat.segments.flags.writeable is False


def test_names_unflatten_split_and_new_buffer():
    flat = fastopt.FlatParams({"w": (2, 3), "b": 3}, dtype=np.float64)
    assert flat.names == ("w", "b") and flat.shapes == ((2, 3), (3,))
    assert flat["b"] is flat.params[1] and flat[0] is flat.params[0] and flat.index("w") == 0
    flat["w"][...] = 1.0
    copies = flat.unflatten()
    assert list(copies) == ["w", "b"]
    np.testing.assert_array_equal(copies["w"], np.ones((2, 3)))
    copies["w"][...] = 5.0
    assert np.all(flat["w"] == 1.0)  # copies, not views
    state = flat.new_buffer()
    assert state.shape == flat.buffer.shape and not state.any()
    views = flat.split(state)
    views[1][...] = 3.0
    assert flat.unflatten(state)["b"].tolist() == [3.0, 3.0, 3.0]
    assert list(flat) == list(flat.params)
    assert "2 arrays" in repr(flat)
    with pytest.raises(KeyError, match="'v'"):
        flat.index("v")
    with pytest.raises(IndexError):
        flat[2]


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (
            lambda: fastopt.FlatParams.from_arrays([np.zeros(2), np.zeros(3, np.float32)]),
            TypeError,
            r"one dtype.*arrays\[0\]: float64, arrays\[1\]: float32",
        ),
        (
            lambda: fastopt.FlatParams.from_arrays({"a": np.zeros(2, np.int64)}),
            TypeError,
            "float32, float64, bfloat16",
        ),
        (
            lambda: fastopt.FlatParams.from_arrays([np.zeros(2), [1.0]]),
            TypeError,
            r"arrays\[1\] must be a numpy.ndarray",
        ),
        (lambda: fastopt.FlatParams.from_arrays([]), ValueError, "at least one array"),
        (lambda: fastopt.FlatParams([(2, -1)]), ValueError, r"shapes\[0\].*negative"),
        (lambda: fastopt.FlatParams([(2.5,)]), TypeError, r"shapes\[0\] must be a shape"),
        (lambda: fastopt.FlatParams([3], dtype=np.int16), TypeError, "float32, float64, bfloat16"),
        (lambda: fastopt.FlatParams("abc"), TypeError, "sequence or a mapping"),
    ],
)
def test_bad_layouts_are_rejected(build, error, match):
    with pytest.raises(error, match=match):
        build()


# ---------------------------------------------------------------------- gradients
def test_accumulate_adds_counts_and_zero_grad_resets():
    flat = fastopt.FlatParams([(2, 2), (3,)], dtype=np.float64)
    first = [np.full((2, 2), 1.0), np.arange(3.0)]
    flat.accumulate(first)
    flat.accumulate([np.full((2, 2), 3.0), None])
    assert flat.micro_batches == 2 and flat.grad_scale == 0.5
    np.testing.assert_array_equal(flat.grads[0], np.full((2, 2), 4.0))
    np.testing.assert_array_equal(flat.grads[1], np.arange(3.0))
    other = fastopt.FlatParams([(2, 2), (3,)], dtype=np.float64)
    other.grads[1][...] = 1.0
    outside = other.grad_buffer.copy()
    outside[4:8] = np.nan  # an outside buffer's padding may hold anything
    flat.accumulate(outside)
    np.testing.assert_array_equal(flat.grads[1], np.arange(3.0) + 1.0)
    assert flat.micro_batches == 3 and np.isfinite(flat.grad_buffer).all()
    assert flat.grad_buffer[4:8].tolist() == [0.0] * 4
    flat.zero_grad()
    assert flat.micro_batches == 0 and flat.grad_scale == 1.0 and not flat.grad_buffer.any()


@pytest.mark.parametrize(
    ("grads", "error", "match"),
    [
        ([np.ones((2, 2)), np.ones(4)], ValueError, r"grads\[1\] must have shape \(3,\)"),
        ([np.ones((2, 2)), np.ones(3, np.float32)], TypeError, r"grads\[1\] must have dtype"),
        ([np.ones((2, 2))], ValueError, "1 entry, expected 2"),
        ([np.ones((2, 2)), [1.0, 2.0, 3.0]], TypeError, r"grads\[1\] must be a numpy"),
        (np.ones(7), ValueError, "shape"),
        ("grads", TypeError, "list of arrays"),
    ],
)
def test_bad_gradients_change_nothing(grads, error, match):
    flat = fastopt.FlatParams([(2, 2), (3,)], dtype=np.float64)
    flat.accumulate([np.ones((2, 2)), np.ones(3)])
    before = flat.grad_buffer.copy()
    with pytest.raises(error, match=match):
        flat.accumulate(grads)
    np.testing.assert_array_equal(flat.grad_buffer, before)
    assert flat.micro_batches == 1


@pytest.mark.parametrize("dtype", DTYPES)
def test_accumulated_micro_batches_step_on_their_mean(dtype):
    shapes = [(4, 3), (5,)]
    arrays = random_arrays(shapes, dtype, seed=3)
    flat = fastopt.FlatParams.from_arrays(arrays)
    plain = [array.copy() for array in arrays]
    flat_opt = fastopt.Adam(flat, lr=0.05)
    plain_opt = fastopt.Adam(plain, lr=0.05)
    for step in range(4):
        micro = [random_arrays(shapes, dtype, seed=10 * step + k) for k in range(3)]
        flat.zero_grad()
        for grads in micro:
            flat.accumulate(grads)
        flat_opt.step()
        plain_opt.step([np.mean([grads[i] for grads in micro], axis=0) for i in range(2)])
    for view, array in zip(flat.params, plain, strict=True):
        assert_close(view, array)


# ---------------------------------------------------------------------- flat vs per-array
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_flat_step_equals_per_array_step(case, dtype):
    _, cls, kwargs = case
    flat, flat_opt, plain, plain_opt = run_both(cls, kwargs, SHAPES, dtype)
    order = list(range(0, len(SHAPES), 2)) + list(range(1, len(SHAPES), 2))
    for position, index in enumerate(order):
        np.testing.assert_array_equal(flat.params[index], plain[index])
        assert flat_opt.params[position] is flat.params[index]
    assert_same_state(flat_opt, plain_opt)
    assert all(entry["step"] == STEPS for entry in flat_opt.state.values())


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [(fastopt.Adam, {"lr": 0.01, "amsgrad": True}), (fastopt.SGD, {"lr": 0.1, "momentum": 0.9})],
)
def test_flat_step_equals_per_array_step_on_the_parallel_path(cls, kwargs):
    flat, flat_opt, plain, plain_opt = run_both(cls, kwargs, BIG_SHAPES, np.float32, steps=3)
    for view, array in zip(flat.params, plain, strict=True):
        np.testing.assert_array_equal(view, array)
    assert_same_state(flat_opt, plain_opt)


# Per rule, a second group whose state layout differs from the first group's.
LAYOUT_CASES = [
    (fastopt.Adam, {"lr": 0.01, "amsgrad": True}, {"amsgrad": False, "lr": 0.02}),
    (fastopt.SGD, {"lr": 0.05, "momentum": 0.9}, {"momentum": 0.0}),
    (fastopt.RMSprop, {"lr": 0.01, "momentum": 0.5, "centered": True}, {"centered": False}),
    (fastopt.Adagrad, {"lr": 0.1}, {"initial_accumulator_value": 0.5}),
]


@pytest.mark.parametrize(
    ("cls", "kwargs", "second"), LAYOUT_CASES, ids=[case[0].__name__ for case in LAYOUT_CASES]
)
def test_groups_with_different_state_layouts(cls, kwargs, second, monkeypatch):
    calls = []
    original = flatstep.launch
    monkeypatch.setattr(
        flatstep, "launch", lambda *a, **k: calls.append(a[3].size) or original(*a, **k)
    )
    flat, flat_opt, plain, plain_opt = run_both(cls, kwargs, SHAPES, np.float64, second=second)
    for view, array in zip(flat.params, plain, strict=True):
        np.testing.assert_array_equal(view, array)
    assert_same_state(flat_opt, plain_opt)
    # The groups alternate in the buffer: one launch per segment where layouts differ, one
    # launch for everything where they agree (Adagrad).
    per_step = len(calls) // STEPS
    assert per_step == (1 if cls is fastopt.Adagrad else len(SHAPES))
    if cls is fastopt.Adagrad:
        assert calls[0] == flat.buffer.size


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_padding_stays_zero_even_with_zero_eps(case):
    """The padding of the parameter and gradient buffers stays +0.0 under every rule, and
    that of the state where a zero gradient keeps a zero state."""
    _, cls, kwargs = case
    arrays = random_arrays(SHAPES, np.float32, seed=5)
    flat = fastopt.FlatParams.from_arrays(arrays)
    zero_eps = {"eps": 0.0} if "eps" in cls(np.zeros(1)).defaults else {}
    opt = cls(flat, **{**kwargs, **zero_eps})
    for step in range(3):
        flat.accumulate(random_arrays(SHAPES, np.float32, seed=50 + step))
        opt.step()
    padding = flat._padding_index
    assert padding.size > 0
    for buffer in (flat.buffer, flat.grad_buffer):
        assert buffer[padding].tobytes() == bytes(buffer[padding].nbytes)  # +0.0 exactly
    for (name, _), buffer in opt._store.buffers.items():  # by name and dtype
        if name in STATE_LEAVING_ZERO_UNDER_A_ZERO_GRADIENT:
            assert np.isfinite(buffer[padding]).all()
        else:
            assert buffer[padding].tobytes() == bytes(buffer[padding].nbytes), name


# State that a zero gradient moves away from zero (Adamax's infinity norm becomes eps), starts
# away from it (Rprop's step_size, lr at first) or keeps the gradient as is (Rprop's prev: -0.0
# under maximize, as in torch): its padding holds what a zero parameter's would, finite, and the
# parameters' padding stays zero.
STATE_LEAVING_ZERO_UNDER_A_ZERO_GRADIENT = {"exp_inf", "step_size", "prev"}


def test_changing_hyperparameters_needs_no_recompilation():
    arrays = random_arrays(SHAPES, np.float64, seed=2)
    flat = fastopt.FlatParams.from_arrays(arrays)
    plain = [array.copy() for array in arrays]
    schedule = lambda step: 0.1 / (1 + step)  # noqa: E731
    flat_opt = fastopt.Adam(flat, lr=schedule)
    plain_opt = fastopt.Adam(plain, lr=schedule)

    def step_both(grads):
        for view, grad in zip(flat.grads, grads, strict=True):
            view[...] = grad
        flat_opt.step()
        plain_opt.step(grads)

    step_both(random_arrays(SHAPES, np.float64, seed=19))
    drivers = (fastopt.Adam._kernels.serial, fastopt.Adam._kernels.parallel)
    compiled = [len(kernel.signatures) for kernel in drivers]
    for step in range(4):
        for opt in (flat_opt, plain_opt):
            opt.param_groups[0]["betas"] = (0.5 + 0.1 * step, 0.99)
            opt.param_groups[0]["eps"] = 10.0 ** -(step + 3)
        step_both(random_arrays(SHAPES, np.float64, seed=20 + step))
    assert [len(kernel.signatures) for kernel in drivers] == compiled
    for view, array in zip(flat.params, plain, strict=True):
        np.testing.assert_array_equal(view, array)


# ---------------------------------------------------------------------- state and checkpoints
def test_state_dict_is_per_parameter_and_round_trips_through_both_paths():
    kwargs = {"lr": 0.01, "amsgrad": True}
    flat, flat_opt, plain, _ = run_both(fastopt.Adam, kwargs, SHAPES, np.float32)
    checkpoint = flat_opt.state_dict()
    for index, entry in checkpoint["state"].items():
        assert entry["step"] == STEPS
        assert entry["exp_avg"].shape == flat_opt.params[index].shape
        buffer = flat_opt._store.buffers[("exp_avg", entry["exp_avg"].dtype)]
        assert not np.shares_memory(entry["exp_avg"], buffer)

    # Resume a copy of the flat run from the checkpoint; resume the plain run from the same.
    resumed_flat = fastopt.FlatParams.from_arrays([view.copy() for view in flat.params])
    second = {"lr": 0.005, "weight_decay": 0.05}
    resumed = fastopt.Adam(two_groups(resumed_flat.params, kwargs, second), **kwargs)
    resumed.load_state_dict(checkpoint)
    resumed_plain = [array.copy() for array in plain]
    plain_resumed = fastopt.Adam(two_groups(resumed_plain, kwargs, second), **kwargs)
    plain_resumed.load_state_dict(checkpoint)
    order = list(range(0, len(SHAPES), 2)) + list(range(1, len(SHAPES), 2))
    for step in range(3):
        grads = random_arrays(SHAPES, np.float32, seed=200 + step)
        for target in (flat, resumed_flat):
            for view, grad in zip(target.grads, grads, strict=True):
                view[...] = grad
        flat_opt.step()
        resumed.step()
        plain_resumed.step([grads[i] for i in order])
    for a, b, c in zip(flat.params, resumed_flat.params, resumed_plain, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    assert_same_state(flat_opt, resumed)
    assert_same_state(flat_opt, plain_resumed)
    # After loading, the state lives in the flat buffers again (views, not copies).
    buffer = resumed._store.buffers[("exp_avg", np.dtype(np.float32))]
    assert all(
        np.shares_memory(e["exp_avg"], buffer) for e in resumed.state.values() if e["exp_avg"].size
    )


def test_per_array_steps_and_flat_steps_can_alternate():
    arrays = random_arrays(SHAPES, np.float64, seed=4)
    flat = fastopt.FlatParams.from_arrays(arrays)
    plain = [array.copy() for array in arrays]
    flat_opt = fastopt.SGD(flat, lr=0.1, momentum=0.9)
    plain_opt = fastopt.SGD(plain, lr=0.1, momentum=0.9)
    for step in range(6):
        grads = random_arrays(SHAPES, np.float64, seed=30 + step)
        if step in (0, 3):
            flat_opt.step(grads)  # the per-array path, on the views
        else:
            for view, grad in zip(flat.grads, grads, strict=True):
                view[...] = grad
            flat_opt.step()
        plain_opt.step(grads)
    for view, array in zip(flat.params, plain, strict=True):
        np.testing.assert_array_equal(view, array)
    assert_same_state(flat_opt, plain_opt)


def test_an_optimizer_over_some_views_leaves_the_others_alone():
    arrays = random_arrays(SHAPES, np.float32, seed=6)
    flat = fastopt.FlatParams.from_arrays(arrays)
    flat.accumulate(random_arrays(SHAPES, np.float32, seed=7))
    opt = fastopt.RMSprop([flat.params[1], flat.params[4]], lr=0.1)
    before = flat.buffer.copy()
    opt.step()
    changed = np.flatnonzero(flat.buffer != before)
    for index in range(len(SHAPES)):
        offset, length = flat.segments[index]
        inside = (changed >= offset) & (changed < offset + length)
        assert inside.any() == (index in (1, 4))
    assert changed.size == flat.params[1].size + flat.params[4].size


# ---------------------------------------------------------------------- bad input
def test_step_without_grads_needs_flat_views():
    flat = fastopt.FlatParams([(3,), (4,)])
    other = fastopt.FlatParams([(2,)])
    plain = np.zeros(3, np.float32)
    for params, culprit in (
        ([plain], 0),
        ([flat.params[0], plain], 1),
        ([flat.params[0], other.params[0]], 1),
        ([flat.params[0][:]], 0),  # a new view of the buffer is not one that FlatParams made
    ):
        opt = fastopt.Adam(params)
        before = [p.copy() for p in params]
        with pytest.raises(TypeError, match=f"parameter {culprit} is not"):
            opt.step()
        for p, b in zip(params, before, strict=True):
            np.testing.assert_array_equal(p, b)
        assert opt.state == {} and opt.step_count == 0


def test_the_buffers_and_views_cannot_be_replaced():
    flat = fastopt.FlatParams([(3,), (4,)])
    for name in ("buffer", "grad_buffer", "params", "grads"):
        replacement = getattr(flat, name)
        with pytest.raises(AttributeError):
            setattr(flat, name, replacement)


def test_duplicates_and_empty_groups_are_rejected():
    flat = fastopt.FlatParams([(3,), (0,), (4,)])
    with pytest.raises(ValueError, match="appears twice"):
        fastopt.Adam([{"params": [flat.params[0]]}, {"params": [flat.params[0]]}])
    with pytest.raises(ValueError, match=r"param_groups\[1\] has no parameters"):
        fastopt.Adam([{"params": [flat.params[0]]}, {"params": []}])
    # Empty arrays share their address with a neighbour; the flat step still sees the duplicate.
    opt = fastopt.Adam([{"params": [flat.params[1]]}, {"params": [flat.params[1], flat.params[2]]}])
    before = flat.buffer.copy()
    with pytest.raises(ValueError, match="appears twice"):
        opt.step()
    np.testing.assert_array_equal(flat.buffer, before)


def test_bad_hyperparameters_stop_a_flat_step_before_any_write():
    flat = fastopt.FlatParams.from_arrays(random_arrays([(5,), (3,)], np.float32, seed=8))
    flat.grad_buffer[...] = 1.0
    opt = fastopt.Adam(flat, lr=0.1)
    opt.step()
    before = flat.buffer.copy(), {k: v.copy() for k, v in opt._store.buffers.items()}
    opt.param_groups[0]["lr"] = -1.0
    with pytest.raises(ValueError, match="lr"):
        opt.step()
    np.testing.assert_array_equal(flat.buffer, before[0])
    for name, buffer in opt._store.buffers.items():
        np.testing.assert_array_equal(buffer, before[1][name])
    assert opt.state[0]["step"] == 1 and opt.step_count == 1


def test_step_without_grads_on_plain_arrays_is_a_type_error():
    opt = fastopt.SGD(np.zeros(3), lr=0.1)
    with pytest.raises(TypeError, match="FlatParams"):
        opt.step()


def test_optimizer_keeps_its_flat_params_alive():
    flat = fastopt.FlatParams.from_arrays([np.ones(5), np.ones(3)])
    opt = fastopt.SGD(flat, lr=0.5)
    views = flat.params
    for grad in flat.grads:
        grad[...] = 1.0
    del flat
    gc.collect()
    opt.step()
    np.testing.assert_array_equal(views[0], 0.5)
