r"""The contract of a declared rule, shown on a toy rule declared here.

A rule is declared once (:class:`fastopt.rule.Rule`): its hyperparameters, its state arrays,
its host scalars, the host row and the element-wise update on values. :func:`fastopt.rule.build`
derives everything else, and every derived path must do what the declaration says. The toy
rule below, ``ToyMomentum``, uses each part of a declaration:

- two hyperparameters with defaults and checks, ``lr`` (schedulable) and ``decay``;
- a bool hyperparameter, ``clipped``, that decides whether the optional state array exists;
- ``exp_avg``, always present, and ``peak``, present only with ``clipped=True`` (starting at 1);
- a host :class:`~fastopt.rule.Scalar`, ``decay_power`` (:math:`\beta^t`, a running product
  in float32 as torch keeps NAdam's ``mu_product``);
- a flag field, ``first``: the row's ``created`` (the update that made state arrays);
- ``maximize``, which the generated gradient preamble applies.

With :math:`g` the gradient (negated if ``maximize``), :math:`\beta` the decay and :math:`t`
the update count:

.. math::

    m &\leftarrow g \text{ on the update that creates the state, else }
        m \leftarrow \beta m + (1 - \beta) g \\
    u &\leftarrow \max(\beta u,\ |g|) \qquad \text{(``clipped`` only; } u \text{ starts at 1)} \\
    p &\leftarrow p - \eta (1 - \beta^t) \operatorname{clip}(m, -u, u)
        \quad\text{or, unclipped,}\quad p \leftarrow p - \eta (1 - \beta^t)\, m

Its NumPy reference (:func:`reference_step`, vectorized, independent of the kernels) is what
every path is checked against, for float32 and float64, sizes 0, 1, 7 and one above
``fastopt._jit.PARALLEL_THRESHOLD`` (the parallel driver), over several steps: (a) the NumPy
class, (b) the functional step, (c) the FlatParams path, (d) the torch adapter, (e) the CUDA
path under numba's simulator, (f) checkpoints, (g) bad input and (h) the declaration's own
checks. The CUDA tests need the simulator, switched on before ``numba.cuda`` is imported::

    NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/test_rule_contract.py

The torch tests skip themselves where torch is not installed.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import math

import numpy as np
import pytest
from numba.core import config

import fastopt
import fastopt._launch
from fastopt._checks import check_beta, check_bool, check_nonnegative
from fastopt._jit import PARALLEL_THRESHOLD
from fastopt.rule import Hyperparameter, Rule, Scalar, State, build

# ---------------------------------------------------------------------- the toy rule


def toy_momentum_update(p, g, exp_avg, peak, h):
    """One element of a ToyMomentum update, on values (``peak`` is None unless clipped)."""
    m = g if h.first else exp_avg * h.decay + h.one_minus_decay * g
    if peak is None:
        return p + h.neg_step_size * m, m, peak
    u = h.decay * peak
    u = u if u > abs(g) else abs(g)
    d = m if m < u else u
    d = d if d > -u else -u
    return p + h.neg_step_size * d, m, u


def toy_momentum_row(group, step, created, scalars):
    """The host row of update ``step``: the warm-up step size from ``decay_power``."""
    decay = group["decay"]
    return (1.0 - decay, decay, created, -group["lr"] * (1.0 - scalars["decay_power"]))


def advance_decay_power(group, step, decay_power, dtype):
    """:math:`\\beta^t` from :math:`\\beta^{t-1}`, multiplied in the scalar type."""
    return dtype.type(decay_power) * dtype.type(group["decay"])


RULE = Rule(
    name="ToyMomentum",
    update=toy_momentum_update,
    fields=("one_minus_decay", "decay", "first", "neg_step_size"),
    flags=frozenset({"first"}),
    row=toy_momentum_row,
    hyperparameters=(
        Hyperparameter("lr", 0.01, check_nonnegative, scheduled=True),
        Hyperparameter("decay", 0.9, check_beta),
        Hyperparameter("clipped", False, check_bool, annotation="bool"),
        Hyperparameter("maximize", False, check_bool, keyword_only=True, annotation="bool"),
    ),
    state=(
        State("exp_avg"),
        State("peak", present=lambda group: group["clipped"], initial=lambda group: 1.0),
    ),
    scalars=(Scalar("decay_power", 1.0, advance_decay_power),),
    doc="ToyMomentum: clipped momentum descent with a warm-up (see the test module).",
)

BUILT = build(RULE)
ToyMomentum = BUILT.optimizer
toy_momentum_step = BUILT.step

DEFAULTS = {h.name: h.default for h in RULE.hyperparameters}
INITIAL = {"exp_avg": 0.0, "peak": 1.0}

# ---------------------------------------------------------------------- its NumPy reference


def reference_step(
    param,
    grad,
    state,
    group,
    *,
    scalar_dtype=np.float32,
    grad_scale=1.0,
    clip_value=math.inf,
):
    """One ToyMomentum update of ``param`` in NumPy, in place.

    ``state`` is a dict shaped like ``optimizer.state[i]`` (empty before the first update);
    the arrays ``group`` needs and ``state`` lacks are made at their initial values, and that
    update is the one flagged ``first``. Each row entry is computed in float64 and rounded
    once to the parameter's type, the host scalar is multiplied in ``scalar_dtype``, and
    every array operation runs in the parameter's type, in the update's order.
    """
    dtype = param.dtype.type
    state.setdefault("step", 0)
    state.setdefault("decay_power", 1.0)
    wanted = ["exp_avg", "peak"] if group["clipped"] else ["exp_avg"]
    created = False
    for name in wanted:
        if name not in state:
            state[name] = np.full_like(param, INITIAL[name])
            created = True
    state["step"] += 1
    state["decay_power"] = float(scalar_dtype(state["decay_power"]) * scalar_dtype(group["decay"]))

    decay, one_minus_decay = dtype(group["decay"]), dtype(1.0 - group["decay"])
    neg_step_size = dtype(-group["lr"] * (1.0 - state["decay_power"]))
    g = grad * dtype(grad_scale)
    clip = dtype(clip_value)
    g = np.where(g > clip, clip, g)
    g = np.where(g < -clip, -clip, g)
    if group["maximize"]:
        g = -g
    m = g.copy() if created else state["exp_avg"] * decay + one_minus_decay * g
    if group["clipped"]:
        u = decay * state["peak"]
        u = np.where(u > np.abs(g), u, np.abs(g))
        d = np.where(m < u, m, u)
        d = np.where(d > -u, d, -u)
        state["peak"][...] = u
    else:
        d = m
    param[...] = param + neg_step_size * d
    state["exp_avg"][...] = m


# ---------------------------------------------------------------------- test helpers

DTYPES = [np.float32, np.float64]
# 0, 1, odd, and over the threshold above which the parallel driver runs.
SIZES = [0, 1, 7, PARALLEL_THRESHOLD + 5]
STEPS = 4

OPTIONS = {
    "plain": {"lr": 0.05, "decay": 0.8},
    "clipped": {"lr": 0.05, "decay": 0.8, "clipped": True},
    "clipped-maximize": {"lr": 0.02, "decay": 0.5, "clipped": True, "maximize": True},
}

dtypes = pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
sizes = pytest.mark.parametrize("size", SIZES)
all_options = pytest.mark.parametrize("options", OPTIONS.values(), ids=list(OPTIONS))


def group_of(options):
    """The hyperparameters a group made with ``options`` has: the declared defaults, overridden."""
    return {**DEFAULTS, **options}


def problem(size, dtype, steps=STEPS, seed=0):
    """A parameter and ``steps`` gradients, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    param = rng.standard_normal(size).astype(dtype)
    grads = [rng.standard_normal(size).astype(dtype) for _ in range(steps)]
    return param, grads


def assert_same(actual, expected, what=""):
    """Bit for bit: same dtype, shape and bytes (a signed zero included)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert (actual.dtype, actual.shape) == (expected.dtype, expected.shape), what
    if actual.tobytes() != expected.tobytes():
        np.testing.assert_array_equal(actual, expected, err_msg=what)
        raise AssertionError(f"{what}: equal values with different bits (signed zeros)")


def assert_entry(entry, expected, what="state"):
    """An optimizer's state entry is the reference's: the same keys, step count, host scalar
    and, bit for bit, state arrays."""
    assert sorted(entry) == sorted(expected), what
    assert entry["step"] == expected["step"], f"{what} step"
    assert entry["decay_power"] == expected["decay_power"], f"{what} decay_power"
    for name in ("exp_avg", "peak"):
        if name in expected:
            assert_same(entry[name], expected[name], f"{what} {name}")


@pytest.fixture
def parallel_launches(monkeypatch):
    """Counts the launches of a parallel (``prange``) driver."""
    calls = []
    run_parallel = fastopt._launch.run_parallel

    def counting(kernel, *args):
        calls.append(kernel)
        run_parallel(kernel, *args)

    monkeypatch.setattr(fastopt._launch, "run_parallel", counting)
    return calls


# ---------------------------------------------------------------------- (a) the NumPy class


def test_class_signature_comes_from_the_declaration():
    """``ToyMomentum(params, lr, decay, clipped, *, maximize, state_dtype, master_weights,
    kahan_sum, stochastic_rounding, seed, **gradient_options)``: the declared
    hyperparameters in order with their defaults (``keyword_only`` after the ``*``), the
    precision options every rule takes, then the gradient options; the class is named after
    the rule and lives in its module."""
    P = inspect.Parameter
    parameters = inspect.signature(ToyMomentum).parameters.values()
    assert [(p.name, p.kind, p.default) for p in parameters] == [
        ("params", P.POSITIONAL_OR_KEYWORD, P.empty),
        ("lr", P.POSITIONAL_OR_KEYWORD, 0.01),
        ("decay", P.POSITIONAL_OR_KEYWORD, 0.9),
        ("clipped", P.POSITIONAL_OR_KEYWORD, False),
        ("maximize", P.KEYWORD_ONLY, False),
        ("state_dtype", P.KEYWORD_ONLY, None),
        ("master_weights", P.KEYWORD_ONLY, False),
        ("kahan_sum", P.KEYWORD_ONLY, False),
        ("stochastic_rounding", P.KEYWORD_ONLY, False),
        ("seed", P.KEYWORD_ONLY, 0),
        ("gradient_options", P.VAR_KEYWORD, P.empty),
    ]
    assert (ToyMomentum.__name__, ToyMomentum.__module__) == ("ToyMomentum", __name__)
    assert ToyMomentum.hyperparameters == ("lr", "decay", "clipped", "maximize")
    assert issubclass(ToyMomentum, fastopt.Optimizer)


@dtypes
@sizes
@all_options
def test_numpy_class_matches_reference(dtype, size, options, parallel_launches):
    """``ToyMomentum(param, **options).step(grad)`` is the reference bit for bit after every
    step: the parameter, the state arrays the options use (and no other), the step count and
    the host scalar. Above ``PARALLEL_THRESHOLD`` elements the parallel driver runs it."""
    param, grads = problem(size, dtype)
    expected, state = param.copy(), {}
    opt = ToyMomentum(param, **options)
    for grad in grads:
        opt.step(grad)
        reference_step(expected, grad, state, group_of(options))
        assert_same(param, expected, "param")
        assert_entry(opt.state[0], state)
    assert bool(parallel_launches) == (size >= PARALLEL_THRESHOLD)


@dtypes
def test_scheduled_lr_is_evaluated_at_each_step(dtype):
    """A schedule for ``lr`` (any callable of the step count) is evaluated before each update
    at the number of steps done so far (0 for the first)."""
    param, grads = problem(7, dtype)
    expected, state = param.copy(), {}
    opt = ToyMomentum(param, lr=lambda t: 0.1 * 0.5**t, decay=0.7, clipped=True)
    for t, grad in enumerate(grads):
        opt.step(grad)
        group = group_of({"lr": 0.1 * 0.5**t, "decay": 0.7, "clipped": True})
        reference_step(expected, grad, state, group)
        assert_same(param, expected, f"param after step {t + 1}")
        assert_entry(opt.state[0], state)


@dtypes
def test_gradient_preamble_unscales_clips_then_maximizes(dtype):
    """The generated kernels divide the gradient by ``loss_scale``, clamp it to
    ``clip_value``, then negate it with ``maximize``, before the rule's update sees it."""
    param, grads = problem(7, dtype)
    grads = [4.0 * grad for grad in grads]
    options = {"lr": 0.05, "decay": 0.8, "clipped": True, "maximize": True}
    expected, state = param.copy(), {}
    opt = ToyMomentum(param, **options, clip_value=0.5)
    for grad in grads:
        opt.step(grad, loss_scale=4.0)
        reference_step(expected, grad, state, group_of(options), grad_scale=0.25, clip_value=0.5)
    assert_same(param, expected, "param")
    assert_entry(opt.state[0], state)


@dtypes
def test_optional_state_follows_its_option_between_steps(dtype):
    """Turning ``clipped`` on between steps makes ``peak`` at its initial value, and that
    update's row is told it created state (``first``); turning it off again leaves ``peak``
    in the state, unused and unchanged."""
    param, grads = problem(7, dtype, steps=6)
    expected, state = param.copy(), {}
    opt = ToyMomentum(param, lr=0.05, decay=0.8)
    for t, grad in enumerate(grads):
        clipped = t in (2, 3)
        opt.param_groups[0]["clipped"] = clipped
        opt.step(grad)
        group = group_of({"lr": 0.05, "decay": 0.8, "clipped": clipped})
        reference_step(expected, grad, state, group)
        assert_same(param, expected, f"param after step {t + 1}")
        assert_entry(opt.state[0], state, f"state after step {t + 1}")
    assert "peak" in opt.state[0]


# ---------------------------------------------------------------------- (b) the functional step


def test_functional_step_signature():
    """``toy_momentum_step(param, grad, exp_avg, peak=None, *, lr, decay, clipped, maximize,
    decay_power, step, loss_scale=1.0, clip_value=None)``: the state arrays in the update's
    order (the optional one defaulting to None), the hyperparameters keyword-only with the
    class's defaults, the host scalar (required: the caller keeps it), the update count and
    the gradient options. It returns the host scalars' new values, as a dict."""
    P = inspect.Parameter
    signature = inspect.signature(toy_momentum_step)
    assert [(p.name, p.kind, p.default) for p in signature.parameters.values()] == [
        ("param", P.POSITIONAL_OR_KEYWORD, P.empty),
        ("grad", P.POSITIONAL_OR_KEYWORD, P.empty),
        ("exp_avg", P.POSITIONAL_OR_KEYWORD, P.empty),
        ("peak", P.POSITIONAL_OR_KEYWORD, None),
        ("lr", P.KEYWORD_ONLY, 0.01),
        ("decay", P.KEYWORD_ONLY, 0.9),
        ("clipped", P.KEYWORD_ONLY, False),
        ("maximize", P.KEYWORD_ONLY, False),
        ("decay_power", P.KEYWORD_ONLY, P.empty),
        ("step", P.KEYWORD_ONLY, P.empty),
        ("loss_scale", P.KEYWORD_ONLY, 1.0),
        ("clip_value", P.KEYWORD_ONLY, None),
        ("master_param", P.KEYWORD_ONLY, None),
        ("kahan_comp", P.KEYWORD_ONLY, None),
        ("stochastic_rounding", P.KEYWORD_ONLY, False),
        ("seed", P.KEYWORD_ONLY, 0),
    ]
    assert signature.return_annotation == "dict[str, float]"
    assert (toy_momentum_step.__name__, toy_momentum_step.__module__) == (
        "toy_momentum_step",
        __name__,
    )


@dtypes
@sizes
@all_options
def test_functional_step_matches_reference(dtype, size, options):
    """The functional step, with state arrays and ``decay_power`` kept by the caller, is the
    reference bit for bit; it returns ``{"decay_power": ...}`` for the next call."""
    param, grads = problem(size, dtype)
    expected, state = param.copy(), {}
    group = group_of(options)
    exp_avg = np.zeros_like(param)
    peak = np.ones_like(param) if group["clipped"] else None
    decay_power = 1.0
    for step, grad in enumerate(grads, start=1):
        returned = toy_momentum_step(
            param, grad, exp_avg, peak, **options, decay_power=decay_power, step=step
        )
        reference_step(expected, grad, state, group)
        assert returned == {"decay_power": state["decay_power"]}
        decay_power = returned["decay_power"]
        assert_same(param, expected, "param")
        assert_same(exp_avg, state["exp_avg"], "exp_avg")
        if peak is not None:
            assert_same(peak, state["peak"], "peak")


# ---------------------------------------------------------------------- (c) the flat path

FLAT_SHAPES = [(7,), (1,), (0,), (PARALLEL_THRESHOLD + 5,), (3, 5), ()]
# Two parameter groups (the first three arrays, the rest): with one state layout (one launch
# over segments with different rows), and with two (a launch per run of one layout).
GROUPINGS = {
    "one-layout": ({"lr": 0.05, "decay": 0.8}, {"lr": 0.01, "decay": 0.3}),
    "two-layouts": ({"lr": 0.05, "decay": 0.8}, {"lr": 0.02, "clipped": True, "maximize": True}),
}


def flat_problem(dtype, steps=STEPS, seed=1):
    rng = np.random.default_rng(seed)
    values = [rng.standard_normal(shape).astype(dtype) for shape in FLAT_SHAPES]
    grads = [
        [rng.standard_normal(shape).astype(dtype) for shape in FLAT_SHAPES] for _ in range(steps)
    ]
    return values, grads


def grouped(arrays, first, second):
    return [{"params": list(arrays[:3]), **first}, {"params": list(arrays[3:]), **second}]


def assert_padding_zero(flat):
    used = np.zeros(flat.buffer.size, dtype=bool)
    for offset, length in flat.segments.tolist():
        used[offset : offset + length] = True
    assert not flat.buffer[~used].any(), "the padding between segments changed"


@dtypes
@pytest.mark.parametrize("groups", GROUPINGS.values(), ids=list(GROUPINGS))
def test_flat_path_is_the_per_array_path_bit_for_bit(dtype, groups, parallel_launches):
    """Over a FlatParams, ``opt.step()`` without gradients (reading its gradient buffer) gives
    every parameter and state exactly what per-array ``step(grads)`` gives, for two groups
    with different hyperparameters; the padding between segments stays zero."""
    values, grads = flat_problem(dtype)
    flat = fastopt.FlatParams.from_arrays(values)
    flat_opt = ToyMomentum(grouped(flat.params, *groups))
    arrays = [value.copy() for value in values]
    opt = ToyMomentum(grouped(arrays, *groups))
    for step_grads in grads:
        for view, grad in zip(flat.grads, step_grads):
            view[...] = grad
        flat_opt.step()
        opt.step(step_grads)
        for index, array in enumerate(arrays):
            assert_same(flat.params[index], array, f"param {index}")
            assert_entry(flat_opt.state[index], opt.state[index], f"state {index}")
    assert_padding_zero(flat)
    assert parallel_launches, "the flat buffer is over PARALLEL_THRESHOLD: the parallel driver"


@dtypes
def test_flat_path_follows_options_and_schedules_per_group(dtype):
    """In the flat path too, a group's ``clipped`` switched on between steps creates its
    ``peak`` (that update flagged ``first``), and a scheduled ``lr`` is evaluated per step:
    the result is the reference's for every parameter."""
    values, grads = flat_problem(dtype, steps=5)
    flat = fastopt.FlatParams.from_arrays(values)
    schedule = lambda t: 0.05 / (1 + t)  # noqa: E731
    opt = ToyMomentum(grouped(flat.params, {"lr": schedule}, {"lr": 0.02, "decay": 0.5}))
    expected = [value.copy() for value in values]
    states = [{} for _ in values]
    for t, step_grads in enumerate(grads):
        opt.param_groups[1]["clipped"] = t >= 2
        for view, grad in zip(flat.grads, step_grads):
            view[...] = grad
        opt.step()
        hyperparameters = [
            group_of({"lr": schedule(t)}),
            group_of({"lr": 0.02, "decay": 0.5, "clipped": t >= 2}),
        ]
        for index, (param, grad, state) in enumerate(zip(expected, step_grads, states)):
            reference_step(param, grad, state, hyperparameters[index >= 3])
            assert_same(flat.params[index], param, f"param {index} after step {t + 1}")
            assert_entry(opt.state[index], state, f"state {index} after step {t + 1}")
    assert_padding_zero(flat)


# ---------------------------------------------------------------------- (d) the torch adapter


@functools.cache
def _torch_class():
    from fastopt.torch import _declared_adapter

    return _declared_adapter(ToyMomentum)


def torch_class():
    """The ``torch.optim`` class of the toy rule (skips the test where torch is missing)."""
    pytest.importorskip("torch")
    return _torch_class()


def torch_step(opt, params, grads):
    import torch

    for param, grad in zip(params, grads):
        param.grad = torch.from_numpy(grad.copy())
    opt.step()


def test_torch_adapter_has_the_numpy_signature():
    """Where ``torch.optim`` has no such rule, the adapter takes the NumPy class's arguments,
    and an unknown keyword is refused in the class's name."""
    torch = pytest.importorskip("torch")
    cls = torch_class()
    assert issubclass(cls, torch.optim.Optimizer)
    assert cls.__name__ == "ToyMomentum"
    numpy_parameters = list(inspect.signature(ToyMomentum).parameters)
    assert list(inspect.signature(cls).parameters) == numpy_parameters
    param = torch.zeros(3)
    with pytest.raises(TypeError, match=r"^ToyMomentum\.__init__\(\) got an unexpected keyword"):
        cls([param], learning_rate=0.1)
    with pytest.raises(ValueError, match="decay"):
        cls([param], decay=1.0)


@dtypes
@all_options
def test_torch_adapter_matches_numpy_class(dtype, options):
    """The adapter on torch tensors (every size of the contract in one group) steps exactly
    as the NumPy class on arrays: the same kernels over a FlatParams. Its state, in torch's
    layout (``step`` and ``decay_power`` as 0-d tensors), holds the same values."""
    torch = pytest.importorskip("torch")
    cls = torch_class()
    rng = np.random.default_rng(2)
    values = [rng.standard_normal(size).astype(dtype) for size in SIZES]
    arrays = [value.copy() for value in values]
    params = [torch.from_numpy(value.copy()) for value in values]
    opt, reference = cls(params, **options), ToyMomentum(arrays, **options)
    for _ in range(STEPS):
        grads = [rng.standard_normal(size).astype(dtype) for size in SIZES]
        torch_step(opt, params, grads)
        reference.step(grads)
    for index, (param, array) in enumerate(zip(params, arrays)):
        assert_same(param.detach().numpy(), array, f"param {index}")
        state, expected = opt.state[param], reference.state[index]
        assert sorted(state) == sorted(expected)
        assert state["step"].item() == expected["step"]
        assert state["decay_power"].item() == expected["decay_power"]
        for name in ("exp_avg", "peak"):
            if name in expected:
                assert_same(state[name].numpy(), expected[name], f"{name} {index}")


@dtypes
@pytest.mark.parametrize("options", [OPTIONS["plain"], OPTIONS["clipped-maximize"]])
def test_torch_state_dict_round_trip_continues_the_run(dtype, options):
    """A torch-format ``state_dict()`` (``step``, ``decay_power``, the arrays) loaded into a
    fresh adapter on fresh tensors continues the run: the reference's steps, bit for bit.
    As torch does, loading casts the state to the parameters' dtype, host scalars included,
    so for float64 parameters ``decay_power`` then multiplies on in float64."""
    torch = pytest.importorskip("torch")
    cls = torch_class()
    param, grads = problem(7, dtype, steps=6)
    group = group_of(options)
    tensor = torch.from_numpy(param.copy())
    opt = cls([tensor], **options)
    expected, state = param.copy(), {}
    for grad in grads[:3]:
        torch_step(opt, [tensor], [grad])
        reference_step(expected, grad, state, group)

    saved = copy.deepcopy(opt.state_dict())
    entry = saved["state"][0]
    assert sorted(entry) == sorted(state)
    assert all(isinstance(value, torch.Tensor) for value in entry.values())
    assert entry["decay_power"].dim() == 0 and entry["decay_power"].item() == state["decay_power"]
    assert saved["param_groups"][0]["params"] == [0]
    assert {key: saved["param_groups"][0][key] for key in DEFAULTS} == group

    fresh_tensor = torch.from_numpy(tensor.detach().numpy().copy())
    fresh = cls([fresh_tensor], **DEFAULTS)  # the checkpoint brings the hyperparameters
    fresh.load_state_dict(saved)
    fresh_expected, fresh_state = expected.copy(), copy.deepcopy(state)
    for grad in grads[3:]:
        torch_step(opt, [tensor], [grad])
        torch_step(fresh, [fresh_tensor], [grad])
        reference_step(expected, grad, state, group)
        reference_step(fresh_expected, grad, fresh_state, group, scalar_dtype=dtype)
    assert_same(tensor.detach().numpy(), expected, "param, uninterrupted")
    assert_same(fresh_tensor.detach().numpy(), fresh_expected, "param, after the round trip")
    assert fresh.state[fresh_tensor]["decay_power"].item() == fresh_state["decay_power"]
    assert_same(fresh.state[fresh_tensor]["exp_avg"].numpy(), fresh_state["exp_avg"], "exp_avg")
    if dtype == np.float32:
        assert_same(fresh_tensor.detach().numpy(), tensor.detach().numpy(), "the two runs")


# ---------------------------------------------------------------------- (e) CUDA, simulated

CUDA_SIZES = [0, 1, 7, 200]  # 200: several simulated blocks of 16 threads, each looping

cudasim = pytest.mark.skipif(
    not config.ENABLE_CUDASIM,
    reason="needs numba's CUDA simulator: "
    "NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/test_rule_contract.py",
)


@pytest.fixture
def cuda(monkeypatch):
    """``numba.cuda``, with 16 threads per block (the simulator runs a thread per element)."""
    from numba import cuda

    from fastopt.cuda import _kernels

    monkeypatch.setattr(_kernels, "THREADS_PER_BLOCK", 16)
    return cuda


@cudasim
@dtypes
@pytest.mark.parametrize("size", CUDA_SIZES)
@all_options
def test_cuda_class_and_functional_step_match_reference(cuda, dtype, size, options):
    """On device arrays the class and the functional step run the generated update as CUDA
    kernels: the reference's results (bit for bit under the simulator, which runs the update
    in the compute type as plain Python), with the state on the device and host copies in
    ``state_dict()``."""
    param, grads = problem(size, dtype)
    group = group_of(options)
    expected, state = param.copy(), {}
    device_param = cuda.to_device(param)
    opt = ToyMomentum(device_param, **options)
    functional_param = cuda.to_device(param)
    exp_avg = cuda.to_device(np.zeros_like(param))
    peak = cuda.to_device(np.ones_like(param)) if group["clipped"] else None
    decay_power = 1.0
    for step, grad in enumerate(grads, start=1):
        opt.step(cuda.to_device(grad))
        returned = toy_momentum_step(
            functional_param,
            cuda.to_device(grad),
            exp_avg,
            peak,
            **options,
            decay_power=decay_power,
            step=step,
        )
        decay_power = returned["decay_power"]
        reference_step(expected, grad, state, group)
    assert_same(device_param.copy_to_host(), expected, "param, class")
    assert_same(functional_param.copy_to_host(), expected, "param, functional")
    assert_same(exp_avg.copy_to_host(), state["exp_avg"], "exp_avg, functional")
    if peak is not None:
        assert_same(peak.copy_to_host(), state["peak"], "peak, functional")
    assert decay_power == state["decay_power"]
    saved = opt.state_dict()["state"][0]
    assert all(isinstance(saved[name], np.ndarray) for name in ("exp_avg", "peak") if name in state)
    assert_entry(saved, state, "state_dict")


# ---------------------------------------------------------------------- (f) checkpoints


@dtypes
def test_checkpoint_round_trip_resumes_bit_for_bit(dtype, tmp_path):
    """``fastopt.save`` then ``fastopt.load(path).restore`` into an optimizer built the same
    way on other arrays brings back the parameter values, the state arrays (the optional one
    too), the step counts and the host scalar: the next steps are the saved optimizer's."""
    rng = np.random.default_rng(3)
    values = [rng.standard_normal(size).astype(dtype) for size in SIZES]
    groups = (OPTIONS["plain"], OPTIONS["clipped-maximize"])

    def make(arrays):
        first, second = groups
        return ToyMomentum(
            [{"params": arrays[:2], **first}, {"params": arrays[2:], "lr": 0.5, **second}]
        )

    arrays = [value.copy() for value in values]
    opt = make(arrays)
    grads = [[rng.standard_normal(size).astype(dtype) for size in SIZES] for _ in range(5)]
    for step_grads in grads[:2]:
        opt.step(step_grads)
    fastopt.save(tmp_path / "toy.ckpt", opt)

    restored_arrays = [np.zeros_like(value) for value in values]
    restored = make(restored_arrays)
    checkpoint = fastopt.load(tmp_path / "toy.ckpt")
    assert checkpoint.rule == "ToyMomentum"
    checkpoint.restore(restored)
    assert restored.step_count == opt.step_count == 2
    assert restored.param_groups[1]["lr"] == 0.02  # the saved value, not the constructor's
    for step_grads in grads[2:]:
        opt.step(step_grads)
        restored.step(step_grads)
    for index, (array, restored_array) in enumerate(zip(arrays, restored_arrays)):
        assert_same(restored_array, array, f"param {index}")
        assert_entry(restored.state[index], opt.state[index], f"state {index}")


# ---------------------------------------------------------------------- (g) bad input

BAD_VALUES = [
    ("lr", -0.1, ValueError),
    ("lr", math.nan, ValueError),
    ("lr", "0.1", TypeError),
    ("decay", 1.0, ValueError),
    ("decay", -0.5, ValueError),
    ("clipped", 1, TypeError),
    ("maximize", None, TypeError),
]
bad_values = pytest.mark.parametrize(
    ("name", "value", "error"), BAD_VALUES, ids=[f"{n}={v!r}" for n, v, _ in BAD_VALUES]
)


def snapshot(opt):
    """Copies of everything a step may write: parameters, state entries, the step count."""
    params = [param.copy() for param in opt.params]
    state = {
        index: {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in entry.items()}
        for index, entry in opt.state.items()
    }
    return params, state, opt.step_count


def assert_unchanged(opt, before):
    params, state, step_count = before
    for index, (param, saved) in enumerate(zip(opt.params, params)):
        assert_same(param, saved, f"param {index}")
    assert sorted(opt.state) == sorted(state)
    for index, entry in state.items():
        assert_entry(opt.state[index], entry, f"state {index}")
    assert opt.step_count == step_count


def per_array_run(dtype):
    """An optimizer over separate arrays in two groups, and its step ``k``."""
    values, grads = flat_problem(dtype)
    opt = ToyMomentum(grouped([value.copy() for value in values], *GROUPINGS["two-layouts"]))
    return opt, lambda k: opt.step(grads[k])


def flat_run(dtype):
    """An optimizer over a FlatParams in two groups, and its step ``k`` (without grads)."""
    values, grads = flat_problem(dtype)
    flat = fastopt.FlatParams.from_arrays(values)
    opt = ToyMomentum(grouped(flat.params, *GROUPINGS["two-layouts"]))

    def step(k):
        for view, grad in zip(flat.grads, grads[k]):
            view[...] = grad
        opt.step()

    return opt, step


@bad_values
def test_constructor_refuses_invalid_hyperparameter(name, value, error):
    """Each hyperparameter's declared check runs in the constructor, naming it."""
    with pytest.raises(error, match=name):
        ToyMomentum(np.ones(7), **{name: value})


@bad_values
@pytest.mark.parametrize("run", [per_array_run, flat_run], ids=["per-array", "flat"])
def test_invalid_hyperparameter_raises_before_any_write(run, name, value, error):
    """A value set in a group between steps is checked by the next ``step`` before it writes
    anything, in any group: with the second group's value bad, the first group's parameters
    are not updated either, and no step is counted."""
    opt, step = run(np.float64)
    step(0)
    opt.param_groups[1][name] = value
    before = snapshot(opt)
    with pytest.raises(error, match=name):
        step(1)
    assert_unchanged(opt, before)


@bad_values
def test_functional_step_checks_before_any_write(name, value, error):
    """The functional step checks the hyperparameters as the class does, before it writes."""
    param, (grad,) = problem(7, np.float64, steps=1)
    exp_avg, peak = np.zeros_like(param), np.ones_like(param)
    arrays = [param, exp_avg, peak]
    before = [array.copy() for array in arrays]
    options = {"clipped": True, name: value}
    with pytest.raises(error, match=name):
        toy_momentum_step(param, grad, exp_avg, peak, **options, decay_power=1.0, step=1)
    for array, saved in zip(arrays, before):
        assert_same(array, saved)


def test_unknown_keyword_names_the_class_or_function():
    """A keyword that is neither a hyperparameter nor a gradient option is refused as Python
    refuses one, in the name of what was called; gradient options are accepted."""
    param = np.zeros(3)
    with pytest.raises(
        TypeError,
        match=r"^ToyMomentum\.__init__\(\) got an unexpected keyword argument 'learning_rate'$",
    ):
        ToyMomentum(param, learning_rate=0.1)
    with pytest.raises(TypeError, match=r"^ToyMomentum\.__init__\(\) "):
        ToyMomentum(param, 0.1, 0.9, False, True)  # maximize is keyword-only
    with pytest.raises(
        TypeError,
        match=r"^toy_momentum_step\(\) got an unexpected keyword argument 'learning_rate'$",
    ):
        toy_momentum_step(
            param, param.copy(), np.zeros(3), learning_rate=0.1, decay_power=1.0, step=1
        )
    opt = ToyMomentum(param, clip_value=1.0, nonfinite="raise")
    assert (opt.clip_value, opt.nonfinite) == (1.0, "raise")


@pytest.mark.parametrize("clipped", [True, False], ids=["missing-peak", "extra-peak"])
def test_functional_step_refuses_missing_or_extra_optional_state(clipped):
    """``peak`` must be given exactly when ``clipped=True``: a missing or an extra optional
    state array is a ``ValueError`` naming it, raised before anything is written."""
    param, (grad,) = problem(7, np.float64, steps=1)
    exp_avg = np.zeros_like(param)
    peak = None if clipped else np.ones_like(param)
    before = param.copy(), exp_avg.copy()
    with pytest.raises(ValueError, match="peak"):
        toy_momentum_step(param, grad, exp_avg, peak, clipped=clipped, decay_power=1.0, step=1)
    assert_same(param, before[0])
    assert_same(exp_avg, before[1])


def test_functional_step_requires_the_arrays_and_scalars_it_lacks_defaults_for():
    """The always-present state array, the host scalar and the update count have no
    default: leaving one out is Python's ``TypeError``, in the function's name."""
    param, (grad,) = problem(7, np.float64, steps=1)
    exp_avg = np.zeros_like(param)
    for arguments, keywords in (
        ((param, grad), {"decay_power": 1.0, "step": 1}),
        ((param, grad, exp_avg), {"step": 1}),
        ((param, grad, exp_avg), {"decay_power": 1.0}),
    ):
        with pytest.raises(TypeError, match=r"^toy_momentum_step\(\) missing"):
            toy_momentum_step(*arguments, **keywords)
    with pytest.raises(TypeError, match="decay_power"):
        toy_momentum_step(param, grad, exp_avg, decay_power="1", step=1)
    with pytest.raises(ValueError, match="exp_avg"):
        toy_momentum_step(param, grad, np.zeros(6), decay_power=1.0, step=1)


# ---------------------------------------------------------------------- (h) the declaration


def _update_without_peak(p, g, exp_avg, h):
    return p, exp_avg


def _update_with_varargs(p, g, *state_and_row):
    return (p,)


DUPLICATE = Hyperparameter("lr", 0.1, check_nonnegative)

INVALID_DECLARATIONS = {
    "update-too-few-arguments": ({"update": _update_without_peak}, "update must take"),
    "update-varargs": ({"update": _update_with_varargs}, "update must take"),
    "flag-not-a-field": ({"flags": frozenset({"first", "clipped"})}, "flags"),
    "duplicate-hyperparameter": (
        {"hyperparameters": (*RULE.hyperparameters, DUPLICATE)},
        "twice",
    ),
    "maximize-no-hyperparameter": ({"maximize": "ascend"}, "maximize"),
    "name-lowercase": ({"name": "toyMomentum"}, "class name"),
    "name-underscore": ({"name": "Toy_Momentum"}, "class name"),
    "name-digit-first": ({"name": "2Toy"}, "class name"),
    "name-empty": ({"name": ""}, "class name"),
}


@pytest.mark.parametrize(
    ("changes", "message"), INVALID_DECLARATIONS.values(), ids=list(INVALID_DECLARATIONS)
)
def test_rule_refuses_an_invalid_declaration(changes, message):
    """A :class:`Rule` checks itself when declared: an update whose arguments are not
    ``(p, g, one per state array, h)``, a flag that is no field, a hyperparameter declared
    twice, a ``maximize`` that names no hyperparameter, a name that is no class name: each a
    ``ValueError``, before anything is generated."""
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(RULE, **changes)


def test_a_valid_declaration_derives_its_row_type():
    """What a declaration derives by itself: the row's named tuple (``h``), the snake-case
    name of the functional step, the state and scalar names in order, which state is
    optional."""
    assert RULE.row_type._fields == RULE.fields
    assert RULE.row_type.__name__ == "ToyMomentumRow"
    assert RULE.snake_name == "toy_momentum"
    assert RULE.state_names == ("exp_avg", "peak")
    assert RULE.scalar_names == ("decay_power",)
    assert [state.optional for state in RULE.state] == [False, True]


def _one_state_update(p, g, buffer, h):
    """Momentum descent with one state array, whatever the declaration names it."""
    m = buffer * h.decay + g
    return p - h.lr * m, m


@pytest.mark.parametrize(
    "state_name",
    # An ordinary name, then names the generated kernels use themselves: arguments, globals
    # they import, builtins they call.
    ["buffer", "grad", "param", "load", "store", "segment", "range", "min"],
)
def test_a_state_name_is_refused_or_works(state_name, monkeypatch, tmp_path):
    """A state array's name becomes an argument of the generated kernels. A name they cannot
    take is refused by :class:`Rule` (``ValueError``); any other works in both CPU drivers."""
    monkeypatch.setenv("FASTOPT_CACHE_DIR", str(tmp_path))
    try:
        rule = Rule(
            name="StateNamed" + state_name.title(),
            update=_one_state_update,
            fields=("decay", "lr"),
            row=lambda group, step, created, scalars: (group["decay"], group["lr"]),
            hyperparameters=(
                Hyperparameter("lr", 0.1, check_nonnegative),
                Hyperparameter("decay", 0.5, check_beta),
            ),
            state=(State(state_name),),
            maximize=None,
        )
    except ValueError as error:
        assert state_name in str(error)
        return
    optimizer = build(rule).optimizer
    for size in (7, PARALLEL_THRESHOLD + 5):
        param, (grad,) = problem(size, np.float64, steps=1)
        expected = param - 0.1 * grad  # the state starts at zero
        optimizer(param).step(grad)
        assert_same(param, expected, f"{size} elements")
