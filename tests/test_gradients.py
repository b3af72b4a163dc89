"""The fused pre-step: global norms, clipping, unscaling and the non-finite policies."""

import math
from collections.abc import Sequence

import numpy as np
import pytest
from rule_cases import CASES, assert_close, case_id, run_reference

import fastopt
from fastopt import reference
from fastopt._jit import PARALLEL_THRESHOLD
from fastopt._reduce import BLOCK, LANES
from fastopt.gradients import find_nonfinite, global_norm

# Around the lane count, the block size and the parallel threshold (odd: uneven ends).
NORM_SIZES = [0, 1, 7, LANES + 1, BLOCK - 1, BLOCK, BLOCK + 1, 2 * PARALLEL_THRESHOLD + 13]


def exact_two_norm(arrays) -> float:
    return math.sqrt(math.fsum(float(v) ** 2 for a in arrays for v in a.ravel()))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", NORM_SIZES)
def test_global_norm_matches_exact_values(size, dtype):
    rng = np.random.default_rng(size)
    grads = [rng.standard_normal(size).astype(dtype), rng.standard_normal((3, 5)).astype(dtype)]
    expected = exact_two_norm(grads)
    assert global_norm(grads) == pytest.approx(expected, rel=1e-14, abs=0)
    largest = max(float(np.max(np.abs(g), initial=0.0)) for g in grads)
    assert global_norm(grads, math.inf) == largest
    assert global_norm(grads, "inf") == largest
    assert find_nonfinite(grads) is None


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("norm_type", [2.0, math.inf])
def test_nan_wins_over_inf_and_the_first_bad_element_is_found(dtype, norm_type):
    size = 3 * BLOCK + 5
    grads = [np.ones(10, dtype), np.ones(size, dtype), np.ones(size, dtype)]
    grads[1][2 * BLOCK + 7] = np.inf
    grads[2][1] = -np.inf
    assert global_norm(grads, norm_type) == math.inf
    assert find_nonfinite(grads) == (1, 2 * BLOCK + 7)
    grads[2][BLOCK + 3] = np.nan
    assert math.isnan(global_norm(grads, norm_type))
    assert find_nonfinite([grads[0], None, grads[2]]) == (2, 1)


def test_float64_squares_beyond_the_range_still_give_the_norm():
    grads = [np.full(BLOCK + 3, 3e200), np.array([4e200])]
    expected = 1e200 * math.sqrt(9.0 * (BLOCK + 3) + 16.0)
    assert global_norm(grads) == pytest.approx(expected, rel=1e-13)
    assert find_nonfinite(grads) is None


def test_norm_is_independent_of_the_split_into_arrays():
    rng = np.random.default_rng(3)
    whole = rng.standard_normal(5 * BLOCK).astype(np.float32)
    parts = [whole[: 2 * BLOCK], whole[2 * BLOCK :]]
    assert global_norm(parts) == global_norm([whole])


@pytest.mark.parametrize(
    ("grads", "norm_type", "error"),
    [
        (np.zeros(3), 2.0, TypeError),  # a bare array, not a list
        ([np.zeros(3, np.int64)], 2.0, TypeError),
        ([[0.0, 1.0]], 2.0, TypeError),
        ([np.zeros((3, 4))[:, 1]], 2.0, ValueError),
        ([np.zeros(3)], 1.0, ValueError),
        ([np.zeros(3)], None, TypeError),
    ],
)
def test_global_norm_rejects_bad_arguments(grads, norm_type, error):
    with pytest.raises(error):
        global_norm(grads, norm_type)


# ---------------------------------------------------------------------- against torch
def _torch_clip(grads, loss_scale, max_norm, norm_type, clip_value):
    torch = pytest.importorskip("torch")
    tensors = [torch.tensor(g) for g in grads]
    params = [torch.zeros_like(t, requires_grad=True) for t in tensors]
    for p, t in zip(params, tensors, strict=True):
        p.grad = t
    found_inf = torch.zeros(1)
    inv_scale = torch.full((1,), 1.0 / loss_scale, dtype=torch.float32)
    torch._amp_foreach_non_finite_check_and_unscale_(tensors, found_inf, inv_scale)
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=norm_type)
    if clip_value is not None:
        torch.nn.utils.clip_grad_value_(params, clip_value)
    return [p.grad.numpy() for p in params], float(norm), bool(found_inf.item())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "options",
    [
        {"loss_scale": 1.0, "max_norm": 1.0, "norm_type": 2.0, "clip_value": None},
        {"loss_scale": 2.0**12, "max_norm": 0.3, "norm_type": 2.0, "clip_value": 0.01},
        {"loss_scale": 0.125, "max_norm": 0.5, "norm_type": math.inf, "clip_value": None},
        {"loss_scale": 2.0**10, "max_norm": 1e9, "norm_type": 2.0, "clip_value": None},
    ],
    ids=["clip", "scaled+clip+value", "inf-norm", "no-clip"],
)
def test_fused_prestep_equals_torch_unscale_clip_sequence(dtype, options):
    """One SGD step with lr=1 from zero parameters writes -g_used: compare it with torch.

    torch rounds g / S and the clip coefficient separately in the gradients' dtype and
    accumulates float32 norms in float32; fastopt multiplies once by (coef / S) and
    accumulates in float64. Agreement is to a few units in the last place, not bitwise.
    Loss scales are powers of two, as GradScaler makes them: torch rounds 1/S to float32
    even for float64 gradients, fastopt does not.
    """
    rng = np.random.default_rng(7)
    scale = options["loss_scale"]
    grads = [(rng.standard_normal(n) * scale).astype(dtype) for n in (5, BLOCK + 9, 2000)]
    expected, torch_norm, found_inf = _torch_clip(grads, **options)
    params = [np.zeros_like(g) for g in grads]
    kwargs = {k: v for k, v in options.items() if k != "loss_scale"}
    opt = fastopt.SGD(params, lr=1.0, nonfinite="skip", **kwargs)
    opt.step(grads, loss_scale=scale)
    rtol = 1e-6 if dtype == np.float32 else 1e-14
    assert not found_inf and opt.last_step.finite and opt.last_step.applied
    assert opt.last_step.grad_norm == pytest.approx(torch_norm, rel=rtol)
    for param, want in zip(params, expected, strict=True):
        np.testing.assert_allclose(-param, want, rtol=4 * rtol, atol=0)


# ---------------------------------------------------------------------- every rule
PRESTEP_OPTIONS = [
    ({"max_norm": 0.5}, 2.0**10),
    ({"max_norm": math.inf, "norm_type": math.inf, "clip_value": 0.05}, 1.0),
    ({"max_norm": 2.0, "norm_type": "inf", "clip_value": 0.3}, 8.0),
]
PRESTEP_IDS = ["norm-clip+scale", "norm-report+value-clip", "inf-clip+value-clip+scale"]
SIZES = [1, 7, 1000, BLOCK + 3]
STEPS = 5


def _problem(dtype, seed=0):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(n).astype(dtype) for n in SIZES]
    grads = [[rng.standard_normal(n).astype(dtype) for n in SIZES] for _ in range(STEPS)]
    return params, grads


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("options", "loss_scale"), PRESTEP_OPTIONS, ids=PRESTEP_IDS)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_every_rule_with_fused_prestep_matches_unfused_reference(case, options, loss_scale, dtype):
    rule, cls, kwargs = case
    params, grads = _problem(dtype)
    scaled = [[g * dtype(loss_scale) for g in step] for step in grads]  # exact: powers of 2
    reference_options = {**options, "norm_type": float(options.get("norm_type", 2.0))}
    clipped, norms = [], []
    for step in scaled:
        new, norm = reference.clip_gradients(step, loss_scale=loss_scale, **reference_options)
        clipped.append(new)
        norms.append(norm)
    expected = [p.copy() for p in params]
    expected_states = [
        run_reference(rule, cls, kwargs, expected[i], [step[i] for step in clipped])
        for i in range(len(params))
    ]

    opt = cls(params, **kwargs, **options)
    for step, norm in zip(scaled, norms, strict=True):
        opt.step(step, loss_scale=loss_scale)
        assert opt.last_step.grad_norm == pytest.approx(norm, rel=1e-12)
    for index, param in enumerate(params):
        assert_close(param, expected[index], err_msg=f"param {index}")
        for name, value in expected_states[index].items():
            assert_close(opt.state[index][name], value, err_msg=f"{name} of param {index}")


# ---------------------------------------------------------------------- policies
def _snapshot(opt):
    arrays = [p.copy() for p in opt.params]
    for index in sorted(opt.state):
        for _, value in sorted(opt.state[index].items()):
            arrays.append(value.copy() if isinstance(value, np.ndarray) else value)
    return arrays, opt.step_count


def _assert_same(before, after):
    (arrays_a, count_a), (arrays_b, count_b) = before, after
    assert count_a == count_b and len(arrays_a) == len(arrays_b)
    for a, b in zip(arrays_a, arrays_b, strict=True):
        if isinstance(a, np.ndarray):
            assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
        else:
            assert a == b


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_skip_leaves_everything_bit_identical_and_resumes_as_if_never_called(case, bad_value):
    _, cls, kwargs = case
    params, grads = _problem(np.float32, seed=1)
    twin_params = [p.copy() for p in params]
    opt = cls(params, nonfinite="skip", max_norm=1.0, **kwargs)
    twin = cls(twin_params, nonfinite="skip", max_norm=1.0, **kwargs)
    bad = [g.copy() for g in grads[0]]
    bad[3][BLOCK + 1] = bad_value

    opt.step(bad)  # a skipped first step creates no state
    assert opt.state == {} and opt.step_count == 0 and not opt.last_step.applied
    for number, step in enumerate(grads):
        opt.step(step)
        twin.step(step)
        if number == 1:
            before = _snapshot(opt)
            opt.step(bad)
            assert opt.last_step.finite is False and opt.last_step.applied is False
            _assert_same(before, _snapshot(opt))
    _assert_same(_snapshot(twin), _snapshot(opt))


@pytest.mark.parametrize("norm_type", [2.0, math.inf])
def test_raise_names_the_first_bad_element_and_changes_nothing(norm_type):
    params, grads = _problem(np.float64, seed=2)
    opt = fastopt.Adam(params, nonfinite="raise", norm_type=norm_type)
    opt.step(grads[0])
    before, stats = _snapshot(opt), opt.last_step
    bad = [g.copy() for g in grads[1]]
    bad[3][BLOCK + 2] = np.nan
    bad[3][5] = -np.inf
    bad[2][999] = np.nan
    with pytest.raises(FloatingPointError, match=r"grads\[2\] .* flat index 999 \(value nan\)"):
        opt.step(bad)
    _assert_same(before, _snapshot(opt))
    assert stats.applied and stats.finite
    # last_step tells what the refused step found (and the error carries the same).
    assert not opt.last_step.applied and not opt.last_step.finite
    assert math.isnan(opt.last_step.grad_norm)
    with pytest.raises(fastopt.NonfiniteGradientError, match=r"grads\[3\] .* index 5") as error:
        opt.step([bad[0], bad[1], None, bad[3]])
    assert error.value.stats is opt.last_step and math.isnan(opt.last_step.grad_norm)


def test_policy_can_be_overridden_per_step_and_changed_between_steps():
    params, grads = _problem(np.float32, seed=3)
    opt = fastopt.SGD(params, lr=0.1, nonfinite="raise")
    bad = [g.copy() for g in grads[0]]
    bad[0][0] = np.inf
    opt.step(bad, nonfinite="skip")
    assert opt.step_count == 0
    opt.nonfinite = "propagate"
    opt.step(bad)
    assert opt.last_step.finite is None and np.isneginf(params[0][0])
    opt.nonfinite = "sometimes"
    with pytest.raises(ValueError, match="nonfinite"):
        opt.step(grads[1])


def test_propagate_with_clipping_follows_torch_arithmetic():
    # An infinite norm gives clip_coef 0: finite elements become 0, infinite ones NaN.
    param = np.zeros(4)
    opt = fastopt.SGD(param, lr=1.0, max_norm=1.0)
    opt.step(np.array([1.0, np.inf, 2.0, 0.0]))
    assert opt.last_step.grad_norm == math.inf and opt.last_step.clip_coef == 0.0
    np.testing.assert_array_equal(param, [0.0, np.nan, 0.0, 0.0])


def test_stats_report_the_unscaled_norm_and_coefficient():
    param = np.zeros(2, np.float32)
    opt = fastopt.SGD(param, lr=1.0, max_norm=2.5, nonfinite="skip")
    opt.step(np.array([3.0, 4.0], np.float32) * 64, loss_scale=64.0)
    stats = opt.last_step
    assert stats.grad_norm == 5.0 and stats.finite and stats.applied
    assert stats.clip_coef == pytest.approx(0.5, rel=1e-6)
    np.testing.assert_allclose(param, [-1.5, -2.0], rtol=1e-6)
    opt.max_norm = None
    opt.nonfinite = "propagate"
    opt.step(np.ones(2, np.float32))
    assert opt.last_step == fastopt.StepStats(None, 1.0, None, True)


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"nonfinite": "ignore"}, ValueError),
        ({"nonfinite": None}, TypeError),
        ({"max_norm": -1.0}, ValueError),
        ({"max_norm": math.nan}, ValueError),
        ({"max_norm": "1"}, TypeError),
        ({"norm_type": 1.0}, ValueError),
        ({"norm_type": "two"}, TypeError),
        ({"clip_value": -0.5}, ValueError),
        ({"clip_value": True}, TypeError),
    ],
)
def test_invalid_gradient_options_are_rejected_at_construction(options, error):
    with pytest.raises(error):
        fastopt.Adam(np.zeros(3), **options)


@pytest.mark.parametrize(
    ("loss_scale", "error"),
    [
        (0.0, ValueError),
        (-2.0, ValueError),
        (math.inf, ValueError),
        (math.nan, ValueError),
        ("8", TypeError),
        (True, TypeError),
    ],
)
def test_invalid_loss_scale_changes_nothing(loss_scale, error):
    param = np.ones(5)
    opt = fastopt.Adam(param, max_norm=1.0)
    opt.step(np.ones(5))
    before = _snapshot(opt)
    with pytest.raises(error, match="loss_scale"):
        opt.step(np.ones(5), loss_scale=loss_scale)
    _assert_same(before, _snapshot(opt))


def test_clip_value_zero_freezes_the_gradient_but_not_weight_decay():
    param = np.ones(3)
    opt = fastopt.SGD(param, lr=0.1, weight_decay=0.5, clip_value=0.0)
    opt.step(np.array([5.0, -5.0, np.inf]))
    np.testing.assert_array_equal(param, np.full(3, 1.0 - 0.1 * 0.5))


def test_gradients_may_not_overlap_any_array_the_step_writes():
    buffer = np.zeros(30)
    params = [buffer[:10], buffer[10:20], np.zeros(5)]  # views of one allocation
    opt = fastopt.Adam(params, lr=0.1)
    opt.step([np.ones(10), np.ones(10), np.ones(5)])
    before = _snapshot(opt)
    aliases = [
        ([np.ones(10), buffer[:10], np.ones(5)], "parameter 0"),
        ([np.ones(10), np.ones(10), buffer[3:8]], "parameter 0"),
        ([np.ones(10), np.ones(10), opt.state[2]["exp_avg"]], "'exp_avg' of parameter 2"),
        (
            [np.frombuffer(opt.state[0]["exp_avg_sq"].data), np.ones(10), np.ones(5)],
            "'exp_avg_sq' of parameter 0",
        ),
    ]
    for grads, owner in aliases:
        with pytest.raises(ValueError, match=f"shares memory with .*{owner}"):
            opt.step(grads)
        _assert_same(before, _snapshot(opt))
    strided = np.lib.stride_tricks.as_strided(params[2], params[2].shape, params[2].strides)
    with pytest.raises(ValueError, match="shares memory with parameter 2"):
        opt.step([np.ones(10), np.ones(10), strided])  # its base is no ndarray: spans decide
    _assert_same(before, _snapshot(opt))
    shared = np.ones(10)  # gradients may share memory with each other: they are only read
    opt.step([shared, shared, np.ones(5)])
    assert opt.step_count == 2
    opt.step([np.ones(10), buffer[20:30], np.ones(5)])  # same allocation, disjoint bytes


# ---------------------------------------------------------------------- FlatParams
FLAT_SHAPES = [(3, 5), (0,), (BLOCK + 9,), (1,), (2, 2, 2), (33,)]
FLAT_OPTIONS = [
    ({"max_norm": 0.5, "nonfinite": "skip", "clip_value": 0.02}, 2.0**10),
    ({"max_norm": 1.0, "norm_type": math.inf}, 4.0),
]


@pytest.mark.parametrize(("options", "loss_scale"), FLAT_OPTIONS, ids=["2-norm", "inf-norm"])
@pytest.mark.parametrize("case", CASES[::3], ids=case_id)
def test_flat_step_with_fused_prestep_equals_per_array_step_bit_for_bit(case, options, loss_scale):
    """The flat read pass cuts the same blocks from each segment: the same norm, to the bit."""
    _, cls, kwargs = case
    rng = np.random.default_rng(5)
    arrays = [rng.standard_normal(shape).astype(np.float32) for shape in FLAT_SHAPES]
    flat = fastopt.FlatParams.from_arrays(arrays)
    plain = [array.copy() for array in arrays]
    flat_opt = cls(flat, **kwargs, **options)
    plain_opt = cls(plain, **kwargs, **options)
    for step in range(4):
        grads = [
            (rng.standard_normal(shape) * loss_scale).astype(np.float32) for shape in FLAT_SHAPES
        ]
        if step == 2:
            grads[2][BLOCK + 1] = np.inf
        for view, grad in zip(flat.grads, grads, strict=True):
            view[...] = grad
        flat_opt.step(loss_scale=loss_scale)
        plain_opt.step(grads, loss_scale=loss_scale)
        assert flat_opt.last_step == plain_opt.last_step
    assert flat_opt.step_count == plain_opt.step_count == (3 if "nonfinite" in options else 4)
    for got, want in zip(flat.params, plain, strict=True):
        assert got.tobytes() == want.tobytes()


def test_flat_skip_raise_and_accumulated_mean():
    arrays = [np.ones((2, 3), np.float32), np.ones(BLOCK + 3, np.float32)]
    flat = fastopt.FlatParams.from_arrays(arrays)
    opt = fastopt.SGD(flat, lr=1.0, nonfinite="raise", max_norm=1e9)
    flat.zero_grad()
    for _ in range(2):  # two micro-batches of [3, 4, 0, ...]: mean norm 5, not 10
        grad = np.zeros(BLOCK + 3, np.float32)
        grad[:2] = (3.0, 4.0)
        flat.accumulate([np.zeros((2, 3), np.float32), grad])
    opt.step(loss_scale=1.0)
    assert opt.last_step.grad_norm == 5.0
    np.testing.assert_array_equal(flat.params[1][:3], [-2.0, -3.0, 1.0])
    before = flat.buffer.copy()
    flat.grads[1][BLOCK + 1] = np.nan
    with pytest.raises(FloatingPointError, match=rf"grads\[1\] .* flat index {BLOCK + 1} "):
        opt.step()
    flat.grads[0][1, 2] = -np.inf
    with pytest.raises(FloatingPointError, match=r"grads\[0\] .* flat index 5 \(value -inf\)"):
        opt.step()
    opt.step(nonfinite="skip")
    assert flat.buffer.tobytes() == before.tobytes() and opt.step_count == 1


FUNCTIONAL_STEPS = {
    "sgd": lambda p, g, **o: fastopt.sgd_step(
        p, g, np.zeros_like(p), lr=0.1, momentum=0.9, step=1, **o
    ),
    "adagrad": lambda p, g, **o: fastopt.adagrad_step(p, g, np.zeros_like(p), step=1, **o),
    "rmsprop": lambda p, g, **o: fastopt.rmsprop_step(p, g, np.zeros_like(p), **o),
    "adam": lambda p, g, **o: fastopt.adam_step(
        p, g, np.zeros_like(p), np.zeros_like(p), step=1, **o
    ),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rule", sorted(FUNCTIONAL_STEPS))
def test_functional_steps_unscale_and_clip_inside_the_kernel(rule, dtype):
    step = FUNCTIONAL_STEPS[rule]
    rng = np.random.default_rng(3)
    param = rng.standard_normal(1001).astype(dtype)
    grad = (8 * rng.standard_normal(1001)).astype(dtype)
    fused, unfused = param.copy(), param.copy()
    step(fused, grad, loss_scale=4.0, clip_value=0.3)
    # 1/4 is exact, so the fused step equals the step on the unscaled, clipped gradient.
    step(unfused, np.clip(grad / 4, -0.3, 0.3).astype(dtype))
    np.testing.assert_array_equal(fused, unfused)
    assert not np.array_equal(fused, param)


@pytest.mark.parametrize("rule", sorted(FUNCTIONAL_STEPS))
@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"loss_scale": 0.0}, ValueError),
        ({"loss_scale": math.inf}, ValueError),
        ({"loss_scale": "2"}, TypeError),
        ({"clip_value": -1.0}, ValueError),
        ({"clip_value": math.nan}, ValueError),
    ],
)
def test_functional_steps_reject_bad_gradient_options_and_change_nothing(rule, options, error):
    param = np.ones(5)
    with pytest.raises(error):
        FUNCTIONAL_STEPS[rule](param, np.ones(5), **options)
    np.testing.assert_array_equal(param, np.ones(5))


def test_state_arrays_stay_guarded_after_flat_steps():
    flat = fastopt.FlatParams([(4,), (3,)], np.float64)
    opt = fastopt.Adam(flat.params, lr=0.1)
    opt.step([np.ones(4), np.ones(3)])  # per array: makes the state
    flat.grad_buffer[...] = 1.0
    opt.step()  # the flat step moves the state into its buffers
    before = _snapshot(opt)
    with pytest.raises(ValueError, match="'exp_avg' of parameter 0"):
        opt.step([opt.state[0]["exp_avg"], np.ones(3)])
    _assert_same(before, _snapshot(opt))


def test_a_sequence_is_read_once():
    """What is validated is what the update reads, even from a sequence that changes."""

    class Shifty(Sequence):
        def __init__(self, first, then):
            self.reads, self.first, self.then = 0, first, then

        def __len__(self):
            return 1

        def __getitem__(self, index):
            if index != 0:
                raise IndexError(index)
            self.reads += 1
            return self.first if self.reads == 1 else self.then

    param = np.ones(3)
    opt = fastopt.SGD(param, lr=0.1)
    opt.step(Shifty(np.ones(3), np.full(3, 5.0)))
    np.testing.assert_array_equal(param, np.full(3, 0.9))
