"""Schedules against independent NumPy closed forms, plus validation and value semantics."""

import math
import pickle

import numpy as np
import pytest

import fastopt.schedules as fs

STEPS = np.arange(400)


def values(schedule, steps=STEPS):
    return np.array([schedule(int(t)) for t in steps])


def assert_close(actual, expected):
    np.testing.assert_allclose(actual, expected, rtol=1e-12, atol=1e-15)


def half_cosine(elapsed, period):
    return 0.5 * (1.0 + np.cos(np.pi * elapsed / period))


def one_cycle_reference(t, corners, knots, strategy):
    """Anneal between ``knots`` at the (fractional) steps ``corners``; hold the last knot."""
    t = np.minimum(t, corners[-1])
    phase = np.clip(np.searchsorted(corners, t, side="left") - 1, 0, len(knots) - 2)
    start, end = np.asarray(knots)[phase], np.asarray(knots)[phase + 1]
    lo, hi = np.asarray(corners)[phase], np.asarray(corners)[phase + 1]
    fraction = (t - lo) / (hi - lo)
    if strategy == "linear":
        return start + (end - start) * fraction
    return end + (start - end) * half_cosine(fraction, 1.0)


T = STEPS.astype(float)
CLOSED_FORMS = {
    "constant": (fs.constant(0.3), np.full(T.shape, 0.3)),
    "constant_factor": (fs.constant_factor(0.1, 0.25, 37), np.where(T < 37, 0.025, 0.1)),
    "step_decay": (fs.step_decay(0.1, 7, 0.9), 0.1 * 0.9 ** (STEPS // 7)),
    "multi_step_decay": (
        fs.multi_step_decay(0.1, [10, 50, 200], 0.5),
        0.1 * 0.5 ** np.searchsorted([10, 50, 200], STEPS, side="right"),
    ),
    "exponential_decay": (fs.exponential_decay(0.1, 0.99), 0.1 * 0.99**T),
    "polynomial_decay": (
        fs.polynomial_decay(0.1, 350, 2.0),
        0.1 * (1.0 - np.minimum(T, 350) / 350) ** 2,
    ),
    "linear": (
        fs.linear(0.1, 0.1, 0.8, 300),
        np.interp(T, [0, 300], [0.01, 0.08]),
    ),
    "inverse_time_decay": (fs.inverse_time_decay(0.1, 0.5, 10), 0.1 / (1 + 0.05 * T)),
    "inverse_time_decay_staircase": (
        fs.inverse_time_decay(0.1, 0.5, 10, staircase=True),
        0.1 / (1 + 0.5 * (STEPS // 10)),
    ),
    "inverse_sqrt": (
        fs.inverse_sqrt(512, 100, factor=2.0),
        2.0 / np.sqrt(512) * np.minimum((T + 1) ** -0.5, (T + 1) / 100**1.5),
    ),
    "cosine_annealing": (
        fs.cosine_annealing(0.1, 300, 0.001),
        0.001 + 0.099 * half_cosine(np.minimum(T, 300), 300),
    ),
    "cosine_annealing_warm_restarts_T_mult_1": (
        fs.cosine_annealing_warm_restarts(0.1, 37, 1, 0.001),
        0.001 + 0.099 * half_cosine(T % 37, 37),
    ),
    "one_cycle_cos": (
        fs.one_cycle(0.1, 400, pct_start=0.25),
        one_cycle_reference(T, [0, 99, 399], [0.004, 0.1, 4e-7], "cos"),
    ),
    "one_cycle_linear_three_phase": (
        fs.one_cycle(0.1, 400, 0.25, "linear", three_phase=True),
        np.interp(T, [0, 99, 198, 399], [0.004, 0.1, 0.004, 4e-7]),
    ),
    "one_cycle_momentum_cos": (
        fs.one_cycle_momentum(400, pct_start=0.25),
        one_cycle_reference(T, [0, 99, 399], [0.95, 0.85, 0.95], "cos"),
    ),
    "one_cycle_momentum_cos_three_phase": (
        fs.one_cycle_momentum(400, 0.25, three_phase=True),
        one_cycle_reference(T, [0, 99, 198, 399], [0.95, 0.85, 0.95, 0.95], "cos"),
    ),
    "cyclic_triangular": (
        fs.cyclic(0.01, 0.1, 13, 24),
        0.01 + 0.09 * np.interp(T % 37, [0, 13, 37], [0, 1, 0]),
    ),
    "cyclic_triangular2": (
        fs.cyclic(0.01, 0.1, 20, mode="triangular2"),
        0.01 + 0.09 * np.interp(T % 40, [0, 20, 40], [0, 1, 0]) * 0.5 ** (STEPS // 40),
    ),
    "cyclic_exp_range": (
        fs.cyclic(0.01, 0.1, 20, mode="exp_range", gamma=0.995),
        0.01 + 0.09 * np.interp(T % 40, [0, 20, 40], [0, 1, 0]) * 0.995**T,
    ),
    "cyclic_momentum": (
        fs.cyclic_momentum(0.8, 0.9, 13, 24),
        0.9 - 0.1 * np.interp(T % 37, [0, 13, 37], [0, 1, 0]),
    ),
    "warmup_cosine_decay_schedule": (
        fs.warmup_cosine_decay_schedule(0.0, 0.1, 50, 350, end_value=0.001),
        np.where(T < 50, 0.1 * T / 50, 0.001 + 0.099 * half_cosine(np.minimum(T - 50, 300), 300)),
    ),
    "warmup_cosine_decay_schedule_exponent": (
        fs.warmup_cosine_decay_schedule(0.01, 0.1, 50, 350, 0.001, exponent=2.0),
        np.where(
            T < 50,
            0.01 + 0.09 * T / 50,
            0.001 + 0.099 * half_cosine(np.minimum(T - 50, 300), 300) ** 2,
        ),
    ),
    "linear_warmup": (fs.linear_warmup(0.1, 40, 0.02), np.interp(T, [0, 40], [0.02, 0.1])),
}


@pytest.mark.parametrize("name", sorted(CLOSED_FORMS))
def test_matches_numpy_closed_form(name):
    schedule, expected = CLOSED_FORMS[name]
    assert_close(values(schedule), expected)


@pytest.mark.parametrize("T_mult", [2, 3])
def test_warm_restarts_cycle_lengths_grow_geometrically(T_mult):
    lengths = 10 * T_mult ** np.arange(12)
    cycle_starts = np.concatenate([[0], np.cumsum(lengths)])
    steps = np.concatenate([STEPS, cycle_starts[5:9] - 1, cycle_starts[5:9]])
    cycle = np.searchsorted(cycle_starts, steps, side="right") - 1
    expected = 0.001 + 0.099 * half_cosine(steps - cycle_starts[cycle], lengths[cycle])
    schedule = fs.cosine_annealing_warm_restarts(0.1, 10, T_mult, 0.001)
    assert_close(values(schedule, steps), expected)


def test_cosine_annealing_holds_eta_min_after_T_max():
    schedule = fs.cosine_annealing(0.1, 100, 0.002)
    assert schedule(100) == 0.002
    assert values(schedule, range(100, 1000, 37)).tolist() == [0.002] * 25


def test_one_cycle_holds_final_value_after_total_steps():
    schedule = fs.one_cycle(0.1, 100, anneal_strategy="linear")
    assert schedule(99) == pytest.approx(0.1 / 25 / 1e4, rel=1e-12)
    assert schedule(100) == schedule(5000) == schedule(99)


def test_inverse_sqrt_step_offset_and_peak():
    schedule = fs.inverse_sqrt(d_model=512, warmup_steps=4000)
    peak = (512 * 4000) ** -0.5
    assert schedule(0) == pytest.approx(512**-0.5 * 4000**-1.5, rel=1e-15)
    assert schedule(3999) == pytest.approx(peak, rel=1e-15)
    assert max(values(schedule, range(8000))) == schedule(3999)


def test_warmup_cosine_decay_decay_steps_include_warmup():
    schedule = fs.warmup_cosine_decay_schedule(0.0, 1.0, warmup_steps=10, decay_steps=100)
    assert schedule(0) == 0.0
    assert schedule(10) == 1.0
    assert schedule(100) == 0.0
    assert schedule(99) > 0.0
    assert schedule(1000) == 0.0


def test_warmup_cosine_decay_with_zero_peak_is_zero_after_warmup():
    # optax divides end_value by peak_value only when the peak is non-zero.
    schedule = fs.warmup_cosine_decay_schedule(0.5, 0.0, 10, 20, end_value=0.3)
    assert schedule(5) == pytest.approx(0.25)
    assert values(schedule, range(10, 40)).tolist() == [0.0] * 30


def test_join_restarts_each_schedule_at_its_boundary():
    a, b, c = fs.constant(1.0), fs.exponential_decay(0.5, 0.9), fs.linear(1.0, 0.0, 1.0, 10)
    schedule = fs.join([a, b, c], [5, 20])
    expected = np.where(
        T < 5, 1.0, np.where(T < 20, 0.5 * 0.9 ** (T - 5), np.minimum(T - 20, 10) / 10)
    )
    assert_close(values(schedule), expected)


def test_warmup_ramps_to_the_wrapped_schedule_start():
    inner = fs.cosine_annealing(0.1, 300, 0.001)
    schedule = fs.warmup(inner, 50, start_value=0.01)
    expected = np.where(
        T < 50, 0.01 + 0.09 * T / 50, 0.001 + 0.099 * half_cosine(np.minimum(T - 50, 300), 300)
    )
    assert_close(values(schedule), expected)
    assert values(fs.warmup(inner, 0)).tolist() == values(inner).tolist()


def test_chain_is_the_pointwise_product():
    a, b = fs.step_decay(0.1, 30, 0.5), fs.exponential_decay(1.0, 0.995)
    assert_close(values(fs.chain([a, b])), 0.1 * 0.5 ** (STEPS // 30) * 0.995**T)
    assert a * b == fs.chain([a, b])
    assert (a * b) * a == fs.chain([a, b, a])
    assert 2.0 * a == fs.chain([fs.constant(2.0), a])
    assert a * 2 == fs.chain([a, fs.constant(2)])
    assert values(0.5 * a).tolist() == [0.5 * v for v in values(a)]


ALL_KINDS = [
    fs.constant(0.1),
    fs.constant_factor(0.1, 0.5, 10),
    fs.step_decay(0.1, 10),
    fs.multi_step_decay(0.1, [3, 9]),
    fs.exponential_decay(0.1, 0.9),
    fs.polynomial_decay(0.1, 10, 0.5),
    fs.linear(0.1, 0.2, 0.9, 10),
    fs.inverse_time_decay(0.1, 0.3, 5, True),
    fs.inverse_sqrt(256, 10, 3.0),
    fs.cosine_annealing(0.1, 10, 0.01),
    fs.cosine_annealing_warm_restarts(0.1, 5, 2, 0.01),
    fs.one_cycle(0.1, 50, 0.4, "linear", 10.0, 100.0, True),
    fs.one_cycle_momentum(50, 0.4, "linear", 0.8, 0.99, True),
    fs.cyclic(0.01, 0.1, 5, 7, "exp_range", 0.99),
    fs.cyclic_momentum(0.8, 0.9, 5, None, "triangular2"),
    fs.warmup_cosine_decay_schedule(0.0, 0.1, 5, 20, 0.001, 2.0),
    fs.linear_warmup(0.1, 5),
    fs.join([fs.constant(0.1), fs.step_decay(0.1, 3)], [5]),
    fs.chain([fs.constant(0.1), fs.cosine_annealing(1.0, 10)]),
]


@pytest.mark.parametrize("schedule", ALL_KINDS, ids=lambda s: type(s).__name__)
def test_repr_rebuilds_and_pickle_round_trips(schedule):
    rebuilt = eval(repr(schedule), vars(fs))
    assert rebuilt == schedule
    assert hash(rebuilt) == hash(schedule)
    unpickled = pickle.loads(pickle.dumps(schedule))
    assert unpickled == schedule
    assert values(unpickled, range(60)).tolist() == values(schedule, range(60)).tolist()


@pytest.mark.parametrize("schedule", ALL_KINDS, ids=lambda s: type(s).__name__)
def test_schedules_are_immutable(schedule):
    field = repr(schedule).split("(", 1)[1].split("=", 1)[0]
    with pytest.raises(AttributeError):
        setattr(schedule, field, 1.0)
    with pytest.raises((AttributeError, TypeError)):
        schedule.extra = 1.0


@pytest.mark.parametrize("schedule", ALL_KINDS, ids=lambda s: type(s).__name__)
def test_step_must_be_a_non_negative_integer(schedule):
    with pytest.raises(ValueError, match="step must be >= 0"):
        schedule(-1)
    for bad in (1.0, 2.5, True, "3", None, np.float64(1.0)):
        with pytest.raises(TypeError, match="step must be an integer"):
            schedule(bad)
    assert schedule(np.int64(7)) == schedule(7)
    assert type(schedule(np.uint8(3))) is float


NOT_FINITE = (math.inf, -math.inf, math.nan)

# (constructor, valid keyword arguments, parameter name, invalid values); every invalid value
# must raise ValueError (or TypeError for a wrong type) whose message names the parameter.
BAD_INPUTS = [
    (fs.constant, {"value": 0.1}, "value", NOT_FINITE),
    (fs.constant_factor, {"base_lr": 0.1}, "factor", (-0.1, 1.5, math.nan)),
    (fs.constant_factor, {"base_lr": 0.1}, "total_iters", (0, -3, 2.0)),
    (fs.constant_factor, {"base_lr": 0.1}, "base_lr", NOT_FINITE),
    (fs.step_decay, {"base_lr": 0.1, "step_size": 5}, "step_size", (0, -1, 2.5)),
    (fs.step_decay, {"base_lr": 0.1, "step_size": 5}, "gamma", (0.0, -0.5, 1.5, math.inf)),
    (fs.step_decay, {"base_lr": 0.1, "step_size": 5}, "base_lr", NOT_FINITE),
    (fs.multi_step_decay, {"base_lr": 0.1, "milestones": [5]}, "gamma", (0.0, 2.0)),
    (
        fs.multi_step_decay,
        {"base_lr": 0.1, "milestones": [5]},
        "milestones",
        ([5, 5], [10, 3], [-1, 3], [2.5], 5, "12"),
    ),
    (fs.exponential_decay, {"base_lr": 0.1, "gamma": 0.9}, "gamma", (0.0, 1.01, math.nan)),
    (fs.exponential_decay, {"base_lr": 0.1, "gamma": 0.9}, "base_lr", NOT_FINITE),
    (fs.polynomial_decay, {"base_lr": 0.1}, "total_iters", (0, -5)),
    (fs.polynomial_decay, {"base_lr": 0.1}, "power", (0.0, -1.0, math.inf)),
    (fs.linear, {"base_lr": 0.1}, "start_factor", (-0.1, math.nan)),
    (fs.linear, {"base_lr": 0.1}, "end_factor", (-1.0, math.inf)),
    (fs.linear, {"base_lr": 0.1}, "total_iters", (0, 1.5)),
    (fs.inverse_time_decay, {"base_lr": 0.1, "decay_rate": 0.5}, "decay_rate", (-0.1, math.nan)),
    (fs.inverse_time_decay, {"base_lr": 0.1, "decay_rate": 0.5}, "decay_steps", (0, -2)),
    (fs.inverse_time_decay, {"base_lr": 0.1, "decay_rate": 0.5}, "staircase", (1, "yes")),
    (fs.inverse_sqrt, {"d_model": 512, "warmup_steps": 10}, "d_model", (0, -512, math.inf)),
    (fs.inverse_sqrt, {"d_model": 512, "warmup_steps": 10}, "warmup_steps", (0, -1, 10.0)),
    (fs.inverse_sqrt, {"d_model": 512, "warmup_steps": 10}, "factor", (0.0, -1.0)),
    (fs.cosine_annealing, {"base_lr": 0.1, "T_max": 10}, "T_max", (0, -10, 10.5)),
    (fs.cosine_annealing, {"base_lr": 0.1, "T_max": 10}, "eta_min", NOT_FINITE),
    (fs.cosine_annealing, {"base_lr": 0.1, "T_max": 10}, "base_lr", (*NOT_FINITE, "0.1")),
    (fs.cosine_annealing_warm_restarts, {"base_lr": 0.1, "T_0": 10}, "T_0", (0, -1, 1.5)),
    (fs.cosine_annealing_warm_restarts, {"base_lr": 0.1, "T_0": 10}, "T_mult", (0, 1.5)),
    (fs.cosine_annealing_warm_restarts, {"base_lr": 0.1, "T_0": 10}, "eta_min", NOT_FINITE),
    (fs.one_cycle, {"max_lr": 0.1, "total_steps": 100}, "total_steps", (1, 0, 100.0)),
    (fs.one_cycle, {"max_lr": 0.1, "total_steps": 100}, "pct_start", (0.0, 1.0, -0.2, 0.005)),
    (fs.one_cycle, {"max_lr": 0.1, "total_steps": 100}, "anneal_strategy", ("cosine", None)),
    (fs.one_cycle, {"max_lr": 0.1, "total_steps": 100}, "div_factor", (0.0, -25.0)),
    (fs.one_cycle, {"max_lr": 0.1, "total_steps": 100}, "final_div_factor", (0.0, math.nan)),
    (fs.one_cycle, {"max_lr": 0.1, "total_steps": 100}, "max_lr", NOT_FINITE),
    (fs.one_cycle, {"max_lr": 0.1, "total_steps": 100}, "three_phase", (1, "no")),
    (fs.one_cycle_momentum, {"total_steps": 100}, "base_momentum", NOT_FINITE),
    (fs.one_cycle_momentum, {"total_steps": 100}, "max_momentum", NOT_FINITE),
    (fs.one_cycle_momentum, {"total_steps": 100}, "pct_start", (0.0, 1.0)),
    (fs.cyclic, {"base_lr": 0.01, "max_lr": 0.1}, "step_size_up", (0, -1, 2.5)),
    (fs.cyclic, {"base_lr": 0.01, "max_lr": 0.1}, "step_size_down", (0, 3.5)),
    (fs.cyclic, {"base_lr": 0.01, "max_lr": 0.1}, "mode", ("triangle", None)),
    (fs.cyclic, {"base_lr": 0.01, "max_lr": 0.1}, "gamma", (0.0, 1.5)),
    (fs.cyclic, {"base_lr": 0.01, "max_lr": 0.1}, "max_lr", NOT_FINITE),
    (fs.cyclic_momentum, {}, "base_momentum", NOT_FINITE),
    (fs.cyclic_momentum, {}, "mode", ("exp",)),
    (
        fs.warmup_cosine_decay_schedule,
        {"init_value": 0.0, "peak_value": 0.1, "warmup_steps": 10, "decay_steps": 100},
        "decay_steps",
        (10, 5, 0),
    ),
    (
        fs.warmup_cosine_decay_schedule,
        {"init_value": 0.0, "peak_value": 0.1, "warmup_steps": 10, "decay_steps": 100},
        "warmup_steps",
        (-1, 1.5),
    ),
    (
        fs.warmup_cosine_decay_schedule,
        {"init_value": 0.0, "peak_value": 0.1, "warmup_steps": 10, "decay_steps": 100},
        "exponent",
        (0.0, -1.0, math.nan),
    ),
    (
        fs.warmup_cosine_decay_schedule,
        {"init_value": 0.0, "peak_value": 0.1, "warmup_steps": 10, "decay_steps": 100},
        "peak_value",
        NOT_FINITE,
    ),
    (fs.linear_warmup, {"peak_value": 0.1, "warmup_steps": 5}, "warmup_steps", (-1, 2.0)),
    (fs.linear_warmup, {"peak_value": 0.1, "warmup_steps": 5}, "start_value", NOT_FINITE),
    (fs.warmup, {"schedule": fs.constant(0.1), "warmup_steps": 5}, "schedule", (0.1, None)),
    (fs.warmup, {"schedule": fs.constant(0.1), "warmup_steps": 5}, "warmup_steps", (-5,)),
    (
        fs.join,
        {"schedules": [fs.constant(1.0), fs.constant(2.0)], "boundaries": [5]},
        "boundaries",
        ([], [5, 6], [-1], [2.5]),
    ),
    (fs.join, {"schedules": [fs.constant(1.0)], "boundaries": []}, "schedules", ([], [1.0])),
    (fs.chain, {"schedules": [fs.constant(1.0)]}, "schedules", ([], fs.constant(1.0), [0.5])),
]


@pytest.mark.parametrize(
    ("constructor", "valid", "name", "bad_values"),
    BAD_INPUTS,
    ids=[f"{c.__name__}-{name}" for c, _, name, _ in BAD_INPUTS],
)
def test_invalid_arguments_name_the_parameter(constructor, valid, name, bad_values):
    constructor(**valid)
    for bad in bad_values:
        with pytest.raises((ValueError, TypeError), match=name):
            constructor(**{**valid, name: bad})


def test_wrong_types_raise_type_error_and_bad_values_value_error():
    with pytest.raises(TypeError, match="T_max must be an integer"):
        fs.cosine_annealing(0.1, 10.0)
    with pytest.raises(ValueError, match="T_max must be an integer >= 1"):
        fs.cosine_annealing(0.1, 0)
    with pytest.raises(TypeError, match="base_lr must be a real number"):
        fs.cosine_annealing("0.1", 10)
    with pytest.raises(ValueError, match="base_lr must be finite"):
        fs.cosine_annealing(math.nan, 10)
    with pytest.raises(ValueError, match=r"decay_steps counts the warmup too"):
        fs.warmup_cosine_decay_schedule(0.0, 1.0, warmup_steps=100, decay_steps=100)
    with pytest.raises(ValueError, match="leave a phase of the cycle without steps"):
        fs.one_cycle(0.1, 10, pct_start=0.05)
    with pytest.raises(ValueError, match="leave a phase of the cycle without steps"):
        fs.one_cycle(0.1, 10, pct_start=0.6, three_phase=True)


def test_multiplying_by_an_unsupported_type_fails():
    with pytest.raises(TypeError):
        fs.constant(1.0) * "2"
    with pytest.raises(TypeError):
        [1.0] * fs.constant(1.0)
