"""The optimizer API: groups, skipped parameters, schedules, checkpoints, identities, kernels."""

import itertools
import sys

import numba
import numpy as np
import pytest
from rule_cases import CASES, assert_close, case_id, problem

import fastopt
from fastopt import _jit, reference
from fastopt._declared import row_of


def run(cls, kwargs, params, grads_per_step):
    opt = cls(params, **kwargs)
    for grads in grads_per_step:
        opt.step(grads)
    return opt


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_state_dict_round_trip_resumes_bitwise(case):
    _, cls, kwargs = case
    param, grads = problem(300, np.float32, 8)
    resumed = param.copy()
    opt = run(cls, kwargs, param, grads[:4])
    saved = opt.state_dict()

    # Saving copies: later steps must not change the checkpoint.
    restored = cls(resumed, **kwargs)
    np.copyto(resumed, param)
    for grad in grads[4:]:
        opt.step(grad)
    restored.load_state_dict(saved)
    assert restored.step_count == 4
    for grad in grads[4:]:
        restored.step(grad)
    np.testing.assert_array_equal(resumed, param)
    for name, value in opt.state[0].items():
        np.testing.assert_array_equal(restored.state[0][name], value)
    assert restored.state_dict()["param_groups"] == opt.state_dict()["param_groups"]


def test_load_state_dict_rejects_mismatches_and_changes_nothing():
    params, _ = problem(5, np.float64, 0)
    opt = fastopt.Adam([params, np.zeros(3)], lr=0.1)
    opt.step([np.ones(5), np.ones(3)])
    good = opt.state_dict()
    before = opt.state_dict()

    def altered(**changes):
        sd = {**good, **changes}
        return sd

    state = good["state"]
    cases = [
        ({k: v for k, v in good.items() if k != "state"}, "no 'state'"),
        (altered(param_groups=[]), "0 parameter groups"),
        (altered(param_groups=[{**good["param_groups"][0], "params": [0]}]), "has 1 parameter,"),
        (altered(param_groups=[{**good["param_groups"][0], "lr": -1.0}]), "Invalid lr"),
        (altered(state={**state, 0: {**state[0], "exp_avg": np.zeros(4)}}), "shape"),
        (altered(state={**state, 0: {**state[0], "exp_avg": np.zeros(5, np.float32)}}), "dtype"),
        (altered(state={**state, 0: {**state[0], "momentum": np.zeros(5)}}), "not a state"),
        (altered(state={**state, 7: state[0]}), "parameter 7"),
        (altered(state={**state, 0: {**state[0], "step": -1}}), "whole number"),
        (altered(state={0: {"step": 3}}), "lacks"),
        (altered(step_count=-2), "step_count"),
    ]
    for sd, match in cases:
        with pytest.raises(ValueError, match=match):
            opt.load_state_dict(sd)
        after = opt.state_dict()
        assert after["step_count"] == before["step_count"]
        assert after["param_groups"] == before["param_groups"]
        for index, entry in before["state"].items():
            for key, value in entry.items():
                np.testing.assert_array_equal(after["state"][index][key], value)


class _Counter:
    """An attachable object whose state is one int; refuses negative ones."""

    def __init__(self, value):
        self.value = value

    def state_dict(self):
        return {"value": self.value}

    def load_state_dict(self, state):
        if state["value"] < 0:
            raise ValueError("negative counter")
        self.value = state["value"]


def test_load_state_dict_is_all_or_nothing_across_attached_objects():
    params = np.ones(3)
    opt = fastopt.SGD(params, lr=0.1, momentum=0.9)
    first, second = _Counter(1), _Counter(2)
    opt.attach("first", first)
    opt.attach("second", second)
    opt.step(np.ones(3))
    checkpoint = opt.state_dict()
    opt.step(np.ones(3))
    first.value, second.value = 10, 20
    momentum = opt.state[0]["momentum_buffer"].copy()
    checkpoint["attached"]["second"] = {"value": -1}
    with pytest.raises(ValueError, match="negative counter"):
        opt.load_state_dict(checkpoint)
    assert (first.value, second.value) == (10, 20)  # the first was put back
    assert opt.step_count == 2
    np.testing.assert_array_equal(opt.state[0]["momentum_buffer"], momentum)


def test_none_gradient_skips_the_parameter():
    a, b = np.ones(4), np.ones(4)
    opt = fastopt.Adam([a, b], lr=0.1)
    opt.step([np.ones(4), None])
    assert np.all(a < 1) and np.all(b == 1)
    assert 1 not in opt.state
    opt.step([np.ones(4), np.ones(4)])
    assert opt.state[0]["step"] == 2 and opt.state[1]["step"] == 1


@pytest.mark.parametrize("rule", [fastopt.Adam, fastopt.SGD, fastopt.RMSprop, fastopt.Adagrad])
def test_arrays_of_one_group_at_different_update_counts_match_separate_optimizers(rule):
    # Rows are built once per update count in a step; skipped arrays fall behind the others.
    rng = np.random.default_rng(11)
    kwargs = {"lr": 0.1, "momentum": 0.9} if rule is fastopt.SGD else {"lr": 0.1}
    together = [rng.standard_normal(7) for _ in range(3)]
    alone = [a.copy() for a in together]
    grouped = rule(together, **kwargs)
    separate = [rule(a, **kwargs) for a in alone]
    for step in range(6):
        grads = [rng.standard_normal(7) for _ in range(3)]
        grads[step % 3] = None
        if step == 4:
            grads[0] = None
        grouped.step(grads)
        for opt, grad in zip(separate, grads, strict=True):
            if grad is not None:
                opt.step(grad)
    for mine, theirs in zip(together, alone, strict=True):
        np.testing.assert_array_equal(mine, theirs)
    assert [grouped.state[i]["step"] for i in range(3)] == [3, 4, 4]


def test_param_groups_equal_separate_optimizers():
    (a, b), grads = (problem(50, np.float64, 0)[0], problem(50, np.float64, 0, seed=3)[0]), None
    a2, b2 = a.copy(), b.copy()
    rng = np.random.default_rng(5)
    grads = [[rng.standard_normal(50), rng.standard_normal(50)] for _ in range(5)]
    grouped = fastopt.Adam([{"params": [a]}, {"params": [b], "lr": 0.5, "amsgrad": True}], lr=0.1)
    alone_a = fastopt.Adam(a2, lr=0.1)
    alone_b = fastopt.Adam(b2, lr=0.5, amsgrad=True)
    for ga, gb in grads:
        grouped.step([ga, gb])
        alone_a.step(ga)
        alone_b.step(gb)
    np.testing.assert_array_equal(a, a2)
    np.testing.assert_array_equal(b, b2)


def test_changing_lr_between_steps_needs_no_recompilation():
    x = np.ones(1000, np.float32)
    opt = fastopt.SGD(x, lr=0.1, momentum=0.9)
    opt.step(np.ones_like(x))
    compiled = {k: len(v.signatures) for k, v in zip("sp", fastopt.SGD._kernels)}
    for lr in (0.5, 0.01, 0.0):
        opt.param_groups[0]["lr"] = lr
        before = x.copy()
        opt.step(np.ones_like(x))
        if lr == 0.0:
            np.testing.assert_array_equal(x, before)
    assert {k: len(v.signatures) for k, v in zip("sp", fastopt.SGD._kernels)} == compiled


def test_callable_hyperparameters_are_evaluated_each_step():
    x = np.array([10.0])
    seen = []
    opt = fastopt.SGD(x, lr=lambda step: 0.1 * 0.5**step, momentum=lambda step: 0.0)
    for _ in range(4):
        opt.step(2 * x)
        seen.append(opt.param_groups[0]["lr"])
    assert seen == [0.1, 0.05, 0.025, 0.0125]
    expected = 10.0
    for lr in seen:
        expected -= lr * 2 * expected
    assert x[0] == pytest.approx(expected, rel=1e-15)
    assert opt.step_count == 4 and "lr" in opt.param_groups[0]["schedules"]


def test_scheduled_beta1_inside_betas():
    x = np.ones(3)
    opt = fastopt.Adam(x, lr=0.1, betas=(lambda step: 0.5 + 0.1 * step, 0.99))
    opt.step(np.ones(3))
    opt.step(np.ones(3))
    assert opt.param_groups[0]["betas"] == (0.6, 0.99)


def test_add_param_group_after_steps():
    a, b = np.ones(3), np.ones(2)
    opt = fastopt.SGD(a, lr=0.1)
    opt.step(np.ones(3))
    opt.add_param_group({"params": b, "lr": 1.0})
    opt.step([np.ones(3), np.ones(2)])
    np.testing.assert_allclose(a, 0.8)
    np.testing.assert_allclose(b, 0.0)
    assert "Parameter Group 1" in repr(opt) and "lr: 1.0" in repr(opt)


def test_params_of_any_shape_and_both_dtypes_in_one_optimizer():
    a = np.ones((3, 4), np.float32)
    b = np.ones((2, 2, 2), np.float64)
    opt = fastopt.Adam([a, b], lr=0.1)
    opt.step([np.ones_like(a), np.ones_like(b)])
    assert opt.state[0]["exp_avg"].shape == (3, 4) and opt.state[1]["exp_avg"].dtype == np.float64
    np.testing.assert_allclose(a, 0.9, rtol=1e-6)
    np.testing.assert_allclose(b, 0.9 + 1e-9, rtol=1e-12)  # eps shifts the step by ~1e-9


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_identities(dtype):
    param, grads = problem(257, dtype, 6)
    # SGD with momentum 0 is plain gradient descent.
    plain = param.copy()
    run(fastopt.SGD, {"lr": 0.1, "momentum": 0.0}, plain, grads)
    by_hand = param.copy()
    for grad in grads:
        by_hand -= dtype(0.1) * grad
    np.testing.assert_array_equal(plain, by_hand)
    # AdamW without weight decay is Adam.
    a, w = param.copy(), param.copy()
    run(fastopt.Adam, {"lr": 0.1}, a, grads)
    run(fastopt.AdamW, {"lr": 0.1, "weight_decay": 0.0}, w, grads)
    np.testing.assert_array_equal(a, w)
    # Adam with decoupled weight decay is AdamW.
    a, w = param.copy(), param.copy()
    run(fastopt.Adam, {"lr": 0.1, "weight_decay": 0.3, "decoupled_weight_decay": True}, a, grads)
    run(fastopt.AdamW, {"lr": 0.1, "weight_decay": 0.3}, w, grads)
    np.testing.assert_array_equal(a, w)
    # Nesterov with momentum 0 would be rejected; dampening 0 and momentum 0.9 differ from plain.
    m = param.copy()
    run(fastopt.SGD, {"lr": 0.1, "momentum": 0.9}, m, grads)
    assert not np.array_equal(m, plain)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_chunks", [1, 3])
def test_one_launch_updates_segments_with_their_own_hyperparameters(dtype, n_chunks):
    """The drivers' segment table: four segments (one empty), each with its own settings."""
    bounds = np.array([0, 100, 100, 1000, 1037], dtype=np.int64)
    settings = [
        {"lr": 0.1, "betas": (0.9, 0.999)},
        {"lr": 0.5, "betas": (0.5, 0.9)},
        {"lr": 0.01, "betas": (0.8, 0.99), "weight_decay": 0.1},
        {"lr": 0.2, "betas": (0.0, 0.5), "maximize": True},
    ]
    common = {
        "eps": 1e-8,
        "weight_decay": 0.0,
        "amsgrad": False,
        "maximize": False,
        "decoupled_weight_decay": False,
    }
    rule = fastopt.Adam._rule
    param, grads = problem(int(bounds[-1]), dtype, 3)
    state = [np.zeros_like(param) for _ in range(2)]
    expected = param.copy()
    expected_state = [np.zeros_like(param) for _ in range(2)]
    serial, parallel = fastopt.Adam._kernels.serial, fastopt.Adam._kernels.parallel
    for step, grad in enumerate(grads, start=1):
        rows = [row_of(rule, {**common, **s}, step, False) for s in settings]
        # max_exp_avg_sq, master, comp: absent; stochastic rounding: off.
        parallel(n_chunks, bounds, np.array(rows), param, grad, *state, None, None, None, None)
        for s, (lo, hi) in zip(settings, itertools.pairwise(bounds)):
            reference.adam_step(
                expected[lo:hi],
                grad[lo:hi],
                expected_state[0][lo:hi],
                expected_state[1][lo:hi],
                **{**common, **s},
                step=step,
            )
    assert_close(param, expected)
    for got, want in zip(state, expected_state):
        assert_close(got, want)
    # The serial driver gives the same bits.
    again, again_state = problem(int(bounds[-1]), dtype, 0)[0], [np.zeros_like(param) for _ in "mv"]
    for step, grad in enumerate(grads, start=1):
        rows = [row_of(rule, {**common, **s}, step, False) for s in settings]
        serial(bounds, np.array(rows), again, grad, *again_state, None, None, None, None)
    np.testing.assert_array_equal(again, param)


RULE_CLASSES = (
    fastopt.SGD,
    fastopt.Adagrad,
    fastopt.RMSprop,
    fastopt.Adam,
    fastopt.Adamax,
    fastopt.NAdam,
)


def test_every_kernel_is_compiled_with_the_shared_options():
    # Every rule's generated kernel module, and the shared helpers its kernels inline.
    modules = {sys.modules[cls._kernels.serial.__module__] for cls in RULE_CLASSES}
    modules |= {sys.modules["fastopt._launch"], sys.modules["fastopt._math"]}
    kernels = [
        obj
        for module in modules
        for obj in vars(module).values()
        if isinstance(obj, numba.core.registry.CPUDispatcher)
    ]
    assert len(kernels) >= 6 * len(RULE_CLASSES)
    for dispatcher in kernels:
        options = dispatcher.targetoptions
        assert options["error_model"] == "numpy", dispatcher
        assert set(options.get("fastmath") or ()) <= set(_jit.FASTMATH_FLAGS), dispatcher
        assert not {"nnan", "ninf", "fast"} & set(options.get("fastmath") or ()), dispatcher
