"""Fuzzing every public entry point with hypothesis: a clear exception or a correct result.

Random dtypes, shapes, strides, layouts, read-only and aliased arrays, NaN/Inf/huge values
and NaN/Inf/mistyped hyperparameters go to the functional steps, the optimizer classes
(constructor and ``step``), ``load_state_dict`` and the checkpoint reader. Every call must
either raise ``TypeError``/``ValueError``/``FloatingPointError`` having changed nothing (every
array compared byte for byte), or give what the NumPy reference gives.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from rule_cases import CASES, run_reference

import fastopt
from fastopt import reference

ERRORS = (TypeError, ValueError, FloatingPointError)
FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)

SHAPES = [(0,), (1,), (5,), (3, 4), (2, 3, 2)]
REALS = [0.0, 1e-3, 0.05, 0.5, 0.9, 0.999, 1.0, 2.0, np.float32(0.25), 3]
ODD = [-0.1, math.nan, math.inf, -math.inf, True, None, "0.1", [0.1], 1e308]
ODD_FLAGS = [0, 1, None, "yes", np.float64(1.0)]
ODD_STEPS = [0, -1, 1.5, True, None, "3"]
SPECIALS = ["none"] * 4 + ["nan", "inf", "-inf", "huge"]
FAULTS = ["none"] * 4 + ["array", "alias", "hyperparameter", "flag", "step"]


def fill(rng, shape, dtype, special: str):
    values = rng.standard_normal(shape)
    flat = values.reshape(-1)
    if flat.size and special != "none":
        where = rng.integers(0, flat.size, size=max(1, flat.size // 4))
        flat[where] = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf, "huge": 1e30}[special]
    with np.errstate(over="ignore"):
        return values.astype(dtype)


def variant(rng, kind: str, shape, dtype, special: str = "none"):
    """An argument for an array of ``shape`` and ``dtype``: right, or wrong in one way."""
    good = fill(rng, shape, dtype, special)
    if kind == "ok":
        return good
    if kind == "dtype":
        with np.errstate(invalid="ignore"):  # NaN to int64
            return good.astype(rng.choice([np.float16, np.int64, np.complex64, object]))
    if kind == "shape":
        return fill(rng, (good.size + 1,), dtype, special)
    if kind == "strided":
        wide = np.zeros((*shape, 2), dtype)
        wide[..., 0] = good
        return wide[..., 0]
    if kind == "fortran":
        return np.asfortranarray(good)
    if kind == "readonly":
        good.setflags(write=False)
        return good
    if kind == "list":
        return good.tolist()
    if kind == "scalar":
        return np.dtype(dtype).type(1.0)
    raise ValueError(kind)


BAD_KINDS = ["dtype", "shape", "strided", "fortran", "readonly", "list", "scalar"]


def snapshot(objects):
    """Bytes of every ndarray among ``objects`` (aliases included once per object)."""
    return [(o.dtype, o.shape, o.tobytes()) for o in objects if isinstance(o, np.ndarray)]


def assert_matches(actual: np.ndarray, desired: np.ndarray, what: str) -> None:
    assert actual.dtype == desired.dtype and actual.shape == desired.shape, what
    nan = np.isnan(desired)
    assert np.array_equal(np.isnan(actual), nan), f"{what}: NaN positions differ"
    infinite = np.isinf(desired)
    assert np.array_equal(actual[infinite], desired[infinite]), f"{what}: Inf differ"
    finite = ~(nan | infinite)
    rtol = 1e-12 if desired.dtype == np.float64 else 1e-5
    scale = float(np.max(np.abs(desired[finite]), initial=1.0))
    np.testing.assert_allclose(
        actual[finite], desired[finite], rtol=rtol, atol=rtol * scale, err_msg=what
    )


# ---------------------------------------------------------------------- functional steps
FUNCTIONAL = {
    "sgd": (
        fastopt.sgd_step,
        reference.sgd_step,
        ["momentum_buffer?"],
        ["lr", "momentum", "dampening", "weight_decay"],
        ["nesterov", "maximize"],
        True,
    ),
    "adagrad": (
        fastopt.adagrad_step,
        reference.adagrad_step,
        ["state_sum"],
        ["lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps"],
        ["maximize"],
        True,
    ),
    "rmsprop": (
        fastopt.rmsprop_step,
        reference.rmsprop_step,
        ["square_avg", "momentum_buffer?", "grad_avg?"],
        ["lr", "alpha", "eps", "weight_decay", "momentum"],
        ["centered", "maximize"],
        False,
    ),
    "adam": (
        fastopt.adam_step,
        reference.adam_step,
        ["exp_avg", "exp_avg_sq", "max_exp_avg_sq?"],
        ["lr", "eps", "weight_decay"],
        ["amsgrad", "maximize", "decoupled_weight_decay"],
        True,
    ),
}


@FUZZ
@given(data=st.data())
def test_functional_steps(data):
    rule = data.draw(st.sampled_from(sorted(FUNCTIONAL)), label="rule")
    step_fn, reference_fn, states, reals, flags, needs_step = FUNCTIONAL[rule]
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    shape = data.draw(st.sampled_from(SHAPES), label="shape")
    dtype = data.draw(st.sampled_from([np.float32, np.float64]), label="dtype")
    special = data.draw(st.sampled_from(SPECIALS), label="grad values")
    names = ["param", "grad"] + [
        n for n in states if not (n.endswith("?") and data.draw(st.booleans()))
    ]
    # One fault at most per example, so that valid calls are frequent too.
    fault = data.draw(st.sampled_from(FAULTS), label="fault")
    faulty = data.draw(st.sampled_from(names), label="faulty array") if fault == "array" else None
    args = []
    for name in ["param", "grad", *(n for n in states)]:
        if name not in names:
            args.append(None)
            continue
        kind = data.draw(st.sampled_from(BAD_KINDS)) if name == faulty else "ok"
        array = variant(rng, kind, shape, dtype, special if name == "grad" else "none")
        # Second moments are >= 0; abs() of the other kinds would repair them.
        args.append(np.abs(array) if kind == "ok" and name not in ("param", "grad") else array)
    if fault == "alias":
        # Two arguments share memory: the same object, or an overlapping view.
        present = [i for i, a in enumerate(args) if a is not None]
        first, second = data.draw(st.permutations(present), label="pair")[:2]
        args[first] = args[second] if data.draw(st.booleans()) else args[second][...]
    hyper = {name: data.draw(st.sampled_from(REALS), label=name) for name in reals}
    hyper.update({name: data.draw(st.booleans(), label=name) for name in flags})
    if rule == "adam":
        hyper["betas"] = tuple(data.draw(st.sampled_from(REALS), label=b) for b in ("b1", "b2"))
    if needs_step:
        hyper["step"] = data.draw(st.integers(1, 20), label="step")
    if fault == "hyperparameter":
        hyper[data.draw(st.sampled_from(reals))] = data.draw(st.sampled_from(ODD))
    elif fault == "flag":
        hyper[data.draw(st.sampled_from(flags))] = data.draw(st.sampled_from(ODD_FLAGS))
    elif fault == "step" and needs_step:
        hyper["step"] = data.draw(st.sampled_from(ODD_STEPS))

    before = snapshot(args)
    originals = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
    try:
        step_fn(*args, **hyper)
    except ERRORS as error:
        event(f"functional: {type(error).__name__}")
        assert snapshot(args) == before, "a failed call modified an array"
        return
    event("functional: updated")
    expected = [a.copy() if isinstance(a, np.ndarray) else a for a in originals]
    with np.errstate(all="ignore"):
        reference_fn(*expected, **hyper)
    for number, (got, want) in enumerate(zip(args, expected, strict=True)):
        # An argument that shares memory with an earlier one cannot have been accepted
        # (aliasing is refused), so this compares each argument that was written.
        if isinstance(want, np.ndarray) and not any(
            isinstance(a, np.ndarray) and np.shares_memory(a, got) for a in args[:number]
        ):
            assert_matches(got, want, f"{rule} argument {number}")


# ---------------------------------------------------------------------- optimizer classes
GRAD_FAULTS = ["alias-param", "alias-state", "view-of-param", *BAD_KINDS]
STEP_FAULTS = ["none"] * 5 + ["hyperparameter", "option", "grad", "container", "call"]
BAD_OPTIONS = {
    "nonfinite": ["x", None, 1],
    "max_norm": [-1.0, math.nan, "1"],
    "norm_type": [1.0, "two", None],
    "clip_value": [-0.5, math.nan, True],
}


def _apply(history, grads, opt_options, loss_scale, policy):
    """The reference outcome of one step: 'raise', 'skip' or clipped grads appended."""
    present = [(i, g) for i, g in enumerate(grads) if g is not None]
    finite = all(np.isfinite(g).all() for _, g in present)
    if not finite and policy in ("raise", "skip"):
        return policy
    norm_type = float(opt_options.get("norm_type", 2.0))
    with np.errstate(all="ignore"):
        clipped, _ = reference.clip_gradients(
            [g for _, g in present],
            loss_scale=loss_scale,
            max_norm=opt_options.get("max_norm"),
            norm_type=norm_type,
            clip_value=opt_options.get("clip_value"),
        )
    for (index, _), grad in zip(present, clipped, strict=True):
        history[index].append(grad)
    return "applied"


@FUZZ
@given(data=st.data())
def test_optimizer_construction_and_step(data):
    rule, cls, kwargs = data.draw(st.sampled_from(CASES), label="case")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    count = data.draw(st.integers(1, 3), label="params")
    shapes = [data.draw(st.sampled_from(SHAPES), label="shape") for _ in range(count)]
    dtypes = [data.draw(st.sampled_from([np.float32, np.float64])) for _ in range(count)]
    params = [fill(rng, s, d, "none") for s, d in zip(shapes, dtypes, strict=True)]
    initial = [p.copy() for p in params]
    fault = data.draw(st.sampled_from(STEP_FAULTS), label="fault")
    kwargs = dict(kwargs)
    options = {
        "nonfinite": data.draw(st.sampled_from(["propagate", "skip", "raise"])),
        "max_norm": data.draw(st.sampled_from([None, None, 0.0, 0.5, 10.0, math.inf])),
        "norm_type": data.draw(st.sampled_from([2.0, 2.0, math.inf, "inf"])),
        "clip_value": data.draw(st.sampled_from([None, None, 0.0, 0.1, 1.0, math.inf])),
    }
    if fault == "hyperparameter":
        kwargs[data.draw(st.sampled_from(sorted(kwargs)))] = data.draw(st.sampled_from(ODD))
    elif fault == "option":
        name = data.draw(st.sampled_from(sorted(BAD_OPTIONS)))
        options[name] = data.draw(st.sampled_from(BAD_OPTIONS[name]))
    try:
        opt = cls(params, **kwargs, **options)
    except ERRORS as error:
        event(f"constructor: {type(error).__name__}")
        assert snapshot(params) == snapshot(initial)
        return

    history = [[] for _ in params]
    for _ in range(data.draw(st.integers(0, 2), label="warm-up steps")):
        grads = [fill(rng, p.shape, p.dtype, "none") for p in params]
        opt.step(grads)
        _apply(history, grads, options, 1.0, opt.nonfinite)

    faulty = data.draw(st.integers(0, count - 1)) if fault == "grad" else None
    grads = []
    for index, param in enumerate(params):
        special = data.draw(st.sampled_from(SPECIALS), label=f"grad {index} values")
        good = variant(rng, "ok", param.shape, param.dtype, special)
        kind = data.draw(st.sampled_from(["ok"] * 6 + ["none", "readonly", "alias-grad"]))
        if index == faulty:
            kind = data.draw(st.sampled_from(GRAD_FAULTS), label=f"grad {index} fault")
        if kind == "none":
            good = None
        elif kind == "readonly":
            good.setflags(write=False)  # read-only gradients are fine
        elif kind == "alias-grad" and index and grads[-1] is not None:
            good = grads[-1] if grads[-1].shape == param.shape else good  # shared: fine
        elif kind == "alias-param":
            good = params[data.draw(st.integers(0, count - 1))]
        elif kind == "view-of-param":
            good = params[data.draw(st.integers(0, count - 1))].reshape(-1)[:1]
        elif kind == "alias-state":
            arrays = [
                v for e in opt.state.values() for v in e.values() if isinstance(v, np.ndarray)
            ]
            good = data.draw(st.sampled_from(arrays)) if arrays else params[index]
        elif kind in BAD_KINDS:
            good = variant(rng, kind, param.shape, param.dtype, special)
        grads.append(good)
    if fault == "container":
        grads = data.draw(
            st.sampled_from([grads[:-1], [*grads, None], tuple(grads), {0: grads[0]}])
        )
    # Powers of two, as LossScaler makes them: then g / S is exact and the fused order
    # (norm of g, divided by S) and the unfused one (norm of rounded g / S) agree.
    loss_scale = data.draw(st.sampled_from([1.0, 2.0**10, 0.5, 4]), label="loss_scale")
    override = data.draw(st.sampled_from([None, None, "skip", "raise", "propagate"]))
    if fault == "call":
        if data.draw(st.booleans()):
            loss_scale = data.draw(st.sampled_from([0.0, -1.0, math.inf, math.nan, "2", True]))
        else:
            override = data.draw(st.sampled_from(["?", 0, True]))

    everything = [*params, *[v for e in opt.state.values() for v in e.values()], *grads]
    before, steps_before = snapshot(everything), opt.step_count
    try:
        opt.step(grads, loss_scale=loss_scale, nonfinite=override)
    except ERRORS as error:
        event(f"step: {type(error).__name__}")
        assert snapshot(everything) == before, f"{error!r} after a partial write"
        assert opt.step_count == steps_before
        if isinstance(error, FloatingPointError):
            outcome = _apply([[] for _ in params], grads, options, loss_scale, "raise")
            assert outcome == "raise", "raised although every gradient is finite"
        return
    policy = override or opt.nonfinite
    outcome = _apply(history, list(grads), options, float(loss_scale), policy)
    assert outcome != "raise", "non-finite gradients were not reported"
    event(f"step: {outcome}")
    assert opt.last_step.applied == (outcome == "applied")
    for index, param in enumerate(params):
        expected = initial[index].copy()
        with np.errstate(all="ignore"):
            state = run_reference(rule, cls, kwargs, expected, history[index])
        assert_matches(param, expected, f"param {index}")
        for name, value in state.items():
            assert_matches(opt.state[index][name], value, f"{name} of param {index}")
        for name, value in state.scalars.items():
            assert opt.state[index][name] == value, f"{name} of param {index}"


# ---------------------------------------------------------------------- load_state_dict
MUTATIONS = [
    "none",
    "drop-state-key",
    "wrong-shape",
    "wrong-dtype",
    "noncontiguous",
    "bad-step",
    "extra-state",
    "bad-index",
    "entry-not-dict",
    "bad-hyperparameter",
    "drop-group",
    "bad-step-count",
    "state-not-dict",
    "groups-not-list",
]


def _mutate(state_dict, mutation, data):
    sd = copy.deepcopy(state_dict)
    entry = sd["state"][0]
    array_name = next((k for k, v in entry.items() if isinstance(v, np.ndarray)), None)
    if mutation == "drop-state-key" and array_name:
        del entry[array_name]
    elif mutation == "wrong-shape" and array_name:
        entry[array_name] = np.zeros(entry[array_name].size + 1, entry[array_name].dtype)
    elif mutation == "wrong-dtype" and array_name:
        entry[array_name] = entry[array_name].astype(np.float16)
    elif mutation == "noncontiguous" and array_name:
        wide = np.zeros((*entry[array_name].shape, 2), entry[array_name].dtype)
        wide[..., 0] = entry[array_name]
        entry[array_name] = wide[..., 0]
    elif mutation == "bad-step":
        entry["step"] = data.draw(st.sampled_from([-1, 1.5, math.nan, "3", None, True, 2.0]))
    elif mutation == "extra-state":
        entry["velocity"] = np.zeros(1)
    elif mutation == "bad-index":
        sd["state"][data.draw(st.sampled_from([5, -1, "zero", 1.5]))] = {"step": 0}
    elif mutation == "entry-not-dict":
        sd["state"][0] = [1, 2]
    elif mutation == "bad-hyperparameter":
        sd["param_groups"][0]["lr"] = data.draw(st.sampled_from(ODD[:8]))
    elif mutation == "drop-group":
        sd["param_groups"] = []
    elif mutation == "bad-step-count":
        sd["step_count"] = data.draw(st.sampled_from([-1, 1.5, "2", None, True]))
    elif mutation == "state-not-dict":
        sd["state"] = [entry]
    elif mutation == "groups-not-list":
        sd["param_groups"] = 3
    return sd


@FUZZ
@given(data=st.data())
def test_load_state_dict(data):
    _, cls, kwargs = data.draw(st.sampled_from(CASES), label="case")
    shape = data.draw(st.sampled_from(SHAPES[1:]), label="shape")
    rng = np.random.default_rng(0)
    source = cls([fill(rng, shape, np.float32, "none")], **kwargs)
    for _ in range(2):
        source.step([fill(rng, shape, np.float32, "none")])
    mutation = data.draw(st.sampled_from(MUTATIONS), label="mutation")
    state_dict = _mutate(source.state_dict(), mutation, data)

    target = cls([fill(rng, shape, np.float32, "none")], **kwargs)
    target.step([fill(rng, shape, np.float32, "none")])

    def observe():
        entry = target.state[0]
        arrays = [*target.params, *(v for v in entry.values() if isinstance(v, np.ndarray))]
        return snapshot(arrays), sorted(entry), entry["step"], target.step_count, repr(target)

    before = observe()
    try:
        target.load_state_dict(state_dict)
    except ERRORS:
        event(f"load_state_dict: {mutation} rejected")
        assert observe() == before, "a failed load changed the optimizer"
        return
    event(f"load_state_dict: {mutation} accepted")
    # Accepted: the optimizer must keep working and equal one restored from the original.
    twin = cls([target.params[0].copy()], **kwargs)
    twin.load_state_dict(source.state_dict())
    grad = fill(rng, shape, np.float32, "none")
    target.step([grad])
    twin.step([grad])
    if mutation in ("none", "noncontiguous"):
        assert snapshot([target.params[0], *target.state[0].values()]) == snapshot(
            [twin.params[0], *twin.state[0].values()]
        )


# ---------------------------------------------------------------------- checkpoint reader
@pytest.fixture(scope="module")
def saved_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "opt.ckpt"
    opt = fastopt.Adam([np.ones(5, np.float32), np.ones((2, 3))], amsgrad=True)
    opt.step([np.ones(5, np.float32), np.ones((2, 3))])
    fastopt.save(path, opt)
    return path.read_bytes(), snapshot(opt.params)


@FUZZ
@given(data=st.data())
def test_checkpoint_reader_rejects_damage(saved_checkpoint, tmp_path_factory, data):
    original, saved_params = saved_checkpoint
    raw = bytearray(original)
    for _ in range(data.draw(st.integers(1, 4), label="edits")):
        how = data.draw(st.sampled_from(["flip", "cut", "zero"]), label="how")
        at = data.draw(st.integers(0, len(raw) - 1), label="where")
        if how == "flip":
            raw[at] ^= 1 << data.draw(st.integers(0, 7))
        elif how == "cut":
            del raw[at:]
            if not raw:
                break
        else:
            raw[at : at + 16] = bytes(len(raw[at : at + 16]))
    path = tmp_path_factory.mktemp("damaged") / "opt.ckpt"
    path.write_bytes(bytes(raw))
    target = fastopt.Adam([np.zeros(5, np.float32), np.zeros((2, 3))], amsgrad=True)
    before = snapshot(target.params)
    try:
        fastopt.load(path).restore(target)
    except fastopt.CheckpointError:
        assert snapshot(target.params) == before and target.step_count == 0
        return
    # Only damage to bytes the reader ignores (timestamps, unused header fields) may pass,
    # and then what was restored must be exactly what was saved.
    assert target.step_count == 1
    assert snapshot(target.params) == saved_params
