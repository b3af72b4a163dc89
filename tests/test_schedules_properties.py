"""Property tests: bounds, monotonicity and composition laws over parameter ranges."""

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import fastopt.schedules as fs

# A decorator rather than a loaded profile, so other test modules keep their own settings.
bounded = settings(max_examples=60, deadline=None, database=None)

lrs = st.floats(1e-6, 10.0)
fractions = st.floats(0.0, 1.0, allow_subnormal=False)
decay_factors = st.floats(1e-3, 1.0)
factors = st.floats(0.0, 2.0, allow_subnormal=False)
periods = st.integers(1, 200)
steps = st.integers(0, 5000)
# Relative slack for float rounding in bound checks.
SLACK = 1e-12


def values(schedule, n):
    return np.array([schedule(t) for t in range(n)])


def assert_within(vals, low, high):
    scale = max(abs(low), abs(high))
    assert np.all(np.isfinite(vals))
    assert np.all(vals >= low - SLACK * scale)
    assert np.all(vals <= high + SLACK * scale)


def assert_non_increasing(vals):
    assert np.all(np.diff(vals) <= SLACK * np.abs(vals[:-1]))


@bounded
@given(lrs, periods, decay_factors)
def test_step_decay_is_non_increasing_and_bounded(base_lr, step_size, gamma):
    vals = values(fs.step_decay(base_lr, step_size, gamma), 400)
    assert_within(vals, 0.0, base_lr)
    assert_non_increasing(vals)


@bounded
@given(lrs, st.lists(st.integers(0, 400), max_size=6, unique=True), decay_factors)
def test_multi_step_decay_drops_only_at_milestones(base_lr, milestones, gamma):
    milestones = sorted(milestones)
    vals = values(fs.multi_step_decay(base_lr, milestones, gamma), 401)
    assert_within(vals, 0.0, base_lr)
    assert_non_increasing(vals)
    drops = {t for t in range(1, 401) if vals[t] != vals[t - 1]}
    assert drops <= set(milestones)


@bounded
@given(lrs, st.floats(0.9, 1.0))
def test_exponential_decay_is_non_increasing_and_bounded(base_lr, gamma):
    vals = values(fs.exponential_decay(base_lr, gamma), 400)
    assert_within(vals, 0.0, base_lr)
    assert_non_increasing(vals)


@bounded
@given(lrs, periods, st.floats(0.1, 5.0))
def test_polynomial_decay_reaches_zero_at_total_iters(base_lr, total_iters, power):
    schedule = fs.polynomial_decay(base_lr, total_iters, power)
    vals = values(schedule, total_iters + 20)
    assert_within(vals, 0.0, base_lr)
    assert_non_increasing(vals)
    assert schedule(total_iters) == 0.0


@bounded
@given(lrs, factors, factors, periods)
def test_linear_stays_between_its_end_points(base_lr, start_factor, end_factor, total_iters):
    schedule = fs.linear(base_lr, start_factor, end_factor, total_iters)
    ends = sorted((base_lr * start_factor, base_lr * end_factor))
    assert_within(values(schedule, total_iters + 20), *ends)
    assert math.isclose(schedule(total_iters), base_lr * end_factor, rel_tol=1e-12)


@bounded
@given(lrs, st.floats(0.0, 10.0), periods, st.booleans())
def test_inverse_time_decay_is_non_increasing_and_positive(base_lr, rate, decay_steps, stairs):
    vals = values(fs.inverse_time_decay(base_lr, rate, decay_steps, stairs), 400)
    assert_within(vals, 0.0, base_lr)
    assert_non_increasing(vals)


@bounded
@given(st.integers(1, 4096), st.integers(1, 500), st.floats(1e-3, 1e3))
def test_inverse_sqrt_peaks_at_the_end_of_warmup(d_model, warmup_steps, factor):
    schedule = fs.inverse_sqrt(d_model, warmup_steps, factor)
    vals = values(schedule, 2 * warmup_steps + 10)
    peak = factor * (d_model * warmup_steps) ** -0.5
    assert_within(vals, 0.0, peak)
    assert math.isclose(schedule(warmup_steps - 1), peak, rel_tol=1e-12)
    assert np.all(np.diff(vals[:warmup_steps]) > 0)
    assert_non_increasing(vals[warmup_steps - 1 :])


@bounded
@given(lrs, periods, st.floats(0.0, 1e-3))
def test_cosine_annealing_falls_from_base_to_eta_min(base_lr, T_max, eta_min):
    schedule = fs.cosine_annealing(base_lr, T_max, eta_min)
    vals = values(schedule, T_max + 20)
    assert_within(vals, min(base_lr, eta_min), max(base_lr, eta_min))
    if eta_min <= base_lr:
        assert_non_increasing(vals)
    assert schedule(0) == base_lr
    assert schedule(T_max) == eta_min


@bounded
@given(lrs, st.integers(1, 50), st.integers(1, 3), st.floats(0.0, 1e-3))
def test_warm_restarts_restart_at_base_lr(base_lr, T_0, T_mult, eta_min):
    schedule = fs.cosine_annealing_warm_restarts(base_lr, T_0, T_mult, eta_min)
    assert_within(values(schedule, 600), min(base_lr, eta_min), max(base_lr, eta_min))
    start, length = 0, T_0
    while start < 600:
        assert schedule(start) == base_lr
        start, length = start + length, length * T_mult


@st.composite
def one_cycle_shapes(draw):
    total_steps = draw(st.integers(4, 600))
    three_phase = draw(st.booleans())
    # Every phase must span a positive number of steps: pct_start * total_steps > 1, and
    # 2 * pct_start * total_steps - 2 < total_steps - 1 with three phases. Half-step margins
    # keep rounding away from those limits.
    high = (total_steps + 0.5) / (2 * total_steps) if three_phase else 1.0 - 0.5 / total_steps
    pct_start = draw(st.floats(1.5 / total_steps, high))
    return total_steps, pct_start, draw(st.sampled_from(["cos", "linear"])), three_phase


@bounded
@given(lrs, one_cycle_shapes(), st.floats(1.0, 100.0), st.floats(1.0, 1e5))
def test_one_cycle_stays_between_final_and_max(max_lr, shape, div_factor, final_div_factor):
    total_steps, pct_start, strategy, three_phase = shape
    schedule = fs.one_cycle(
        max_lr, total_steps, pct_start, strategy, div_factor, final_div_factor, three_phase
    )
    final = max_lr / div_factor / final_div_factor
    vals = values(schedule, total_steps + 5)
    assert_within(vals, final, max_lr)
    assert math.isclose(vals[0], max_lr / div_factor, rel_tol=1e-12)
    assert math.isclose(vals[-1], final, rel_tol=1e-9)


@bounded
@given(one_cycle_shapes(), st.floats(0.0, 0.9), st.floats(0.0, 0.1))
def test_one_cycle_momentum_stays_between_base_and_max(shape, base_momentum, spread):
    total_steps, pct_start, strategy, three_phase = shape
    max_momentum = base_momentum + spread
    schedule = fs.one_cycle_momentum(
        total_steps, pct_start, strategy, base_momentum, max_momentum, three_phase
    )
    assert_within(values(schedule, total_steps + 5), base_momentum, max_momentum)
    assert schedule(0) == max_momentum


@bounded
@given(
    lrs,
    lrs,
    periods,
    st.one_of(st.none(), periods),
    st.sampled_from(["triangular", "triangular2", "exp_range"]),
    st.floats(0.9, 1.0),
)
def test_cyclic_stays_between_base_and_max(base_lr, max_lr, up, down, mode, gamma):
    vals = values(fs.cyclic(base_lr, max_lr, up, down, mode, gamma), 600)
    assert_within(vals, min(base_lr, max_lr), max(base_lr, max_lr))
    momentum = values(fs.cyclic_momentum(0.8, 0.9, up, down, mode, gamma), 600)
    assert_within(momentum, 0.8, 0.9)
    # Momentum moves inversely to the learning rate: both track the same cycle height.
    np.testing.assert_allclose(
        (vals - base_lr) * 0.1,
        (0.9 - momentum) * (max_lr - base_lr),
        rtol=1e-9,
        atol=1e-12 * max(base_lr, max_lr),
    )


@bounded
@given(lrs, lrs, st.integers(0, 100), st.integers(1, 400), st.floats(0.0, 1e-3), st.floats(0.5, 3))
def test_warmup_cosine_decay_is_bounded_and_continuous(init, peak, warmup, cosine, end, exponent):
    schedule = fs.warmup_cosine_decay_schedule(init, peak, warmup, warmup + cosine, end, exponent)
    vals = values(schedule, warmup + cosine + 20)
    assert_within(vals, min(init, peak, end), max(init, peak, end))
    assert math.isclose(schedule(warmup), peak, rel_tol=1e-12)
    assert math.isclose(schedule(warmup + cosine), end, rel_tol=1e-9, abs_tol=1e-15)


simple_schedules = st.one_of(
    st.builds(fs.constant, lrs),
    st.builds(fs.exponential_decay, lrs, decay_factors),
    st.builds(fs.cosine_annealing, lrs, periods),
    st.builds(fs.step_decay, lrs, periods, decay_factors),
    st.builds(fs.linear, lrs, fractions, fractions, periods),
)


@bounded
@given(st.lists(simple_schedules, min_size=1, max_size=4), st.data())
def test_join_hands_each_schedule_its_relative_step(schedules, data):
    n_gaps = len(schedules) - 1
    gaps = data.draw(st.lists(st.integers(1, 300), min_size=n_gaps, max_size=n_gaps))
    boundaries = np.cumsum(gaps).tolist()
    joined = fs.join(schedules, boundaries)
    starts = [0, *boundaries]
    for step in data.draw(st.lists(steps, min_size=1, max_size=20)):
        segment = int(np.searchsorted(boundaries, step, side="right"))
        assert joined(step) == schedules[segment](step - starts[segment])
    for segment, boundary in enumerate(boundaries, start=1):
        assert joined(boundary) == schedules[segment](0)
        assert joined(boundary - 1) == schedules[segment - 1](boundary - 1 - starts[segment - 1])


@bounded
@given(simple_schedules, st.integers(0, 300), st.floats(0.0, 10.0), steps)
def test_warmup_is_continuous_and_monotone_up_to_the_schedule(schedule, warmup_steps, start, step):
    wrapped = fs.warmup(schedule, warmup_steps, start)
    target = schedule(0)
    assert wrapped(warmup_steps) == target
    assert wrapped(0) == (start if warmup_steps else target)
    ramp = values(wrapped, warmup_steps + 1)
    assert_within(ramp, min(start, target), max(start, target))
    direction = np.sign(target - start)
    assert np.all(direction * np.diff(ramp) >= -SLACK * max(abs(start), abs(target)))
    if step >= warmup_steps:
        assert wrapped(step) == schedule(step - warmup_steps)


@bounded
@given(st.lists(simple_schedules, min_size=1, max_size=4), steps)
def test_chain_multiplies_values_at_the_same_step(schedules, step):
    product = math.prod(schedule(step) for schedule in schedules)
    assert math.isclose(fs.chain(schedules)(step), product, rel_tol=1e-15)
    if len(schedules) > 1:
        combined = schedules[0]
        for schedule in schedules[1:]:
            combined = combined * schedule
        assert combined == fs.chain(schedules)
