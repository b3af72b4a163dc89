"""Schedules against torch.optim.lr_scheduler, used as the reference implementation.

``schedule(t)`` must equal the lr torch's scheduler sets after ``t`` calls to ``step()``,
i.e. the lr of the (t+1)-th optimizer update.

Most torch schedulers update the lr recursively (``lr *= ratio`` each step), so rounding
accumulates. Over these 400-step runs torch's values stay within 3e-14 relative of ours,
except OneCycleLR's linear anneal (see below); they drift further only over far longer runs
(CosineAnnealingLR with eta_min > 0: ~6e-13 after 1e5 steps; CyclicLR, whose phase
``1 + t / size - cycle`` loses digits as ``t`` grows: ~2e-12 after 1e5 steps). Where torch
also offers a closed form (``_get_closed_form_lr``), it is checked too.
"""

import math
import warnings

import numpy as np
import pytest

import fastopt.schedules as fs

torch = pytest.importorskip("torch", reason="torch is the reference for scheduler values")
lr_scheduler = torch.optim.lr_scheduler

N = 400


def torch_trace(make_scheduler, base_lr, steps=N, momentum=0.0):
    """Per step: (lr, momentum, closed-form lr or nan) seen by the next optimizer update."""
    param = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    optimizer = torch.optim.SGD([param], lr=base_lr, momentum=momentum)
    trace = []
    with warnings.catch_warnings():
        # torch warns about deprecated arguments and the step order of a gradient-less loop.
        warnings.simplefilter("ignore")
        scheduler = make_scheduler(optimizer)
        closed_form = getattr(scheduler, "_get_closed_form_lr", None)
        for _ in range(steps):
            group = optimizer.param_groups[0]
            exact = closed_form()[0] if closed_form else math.nan
            trace.append((group["lr"], group["momentum"], exact))
            optimizer.step()
            scheduler.step()
    return np.array(trace).T


def ours(schedule, steps=N):
    return np.array([schedule(t) for t in range(steps)])


# (torch scheduler factory, base lr given to the torch optimizer, equivalent schedule)
LR_CASES = {
    "ConstantLR": (
        lambda opt: lr_scheduler.ConstantLR(opt, factor=0.3, total_iters=37),
        0.1,
        fs.constant_factor(0.1, 0.3, 37),
    ),
    "StepLR": (lambda opt: lr_scheduler.StepLR(opt, 7, 0.9), 0.1, fs.step_decay(0.1, 7, 0.9)),
    "MultiStepLR": (
        lambda opt: lr_scheduler.MultiStepLR(opt, [10, 50, 200], 0.5),
        0.1,
        fs.multi_step_decay(0.1, [10, 50, 200], 0.5),
    ),
    "ExponentialLR": (
        lambda opt: lr_scheduler.ExponentialLR(opt, 0.99),
        0.1,
        fs.exponential_decay(0.1, 0.99),
    ),
    "PolynomialLR": (
        lambda opt: lr_scheduler.PolynomialLR(opt, total_iters=350, power=0.9),
        0.1,
        fs.polynomial_decay(0.1, 350, 0.9),
    ),
    "LinearLR": (
        lambda opt: lr_scheduler.LinearLR(opt, 0.1, 0.8, 300),
        0.1,
        fs.linear(0.1, 0.1, 0.8, 300),
    ),
    "CosineAnnealingLR": (
        lambda opt: lr_scheduler.CosineAnnealingLR(opt, T_max=N, eta_min=0.001),
        0.1,
        fs.cosine_annealing(0.1, N, 0.001),
    ),
    "CosineAnnealingLR-eta_min-0": (
        lambda opt: lr_scheduler.CosineAnnealingLR(opt, T_max=N - 1),
        0.1,
        fs.cosine_annealing(0.1, N - 1),
    ),
    "CosineAnnealingWarmRestarts": (
        lambda opt: lr_scheduler.CosineAnnealingWarmRestarts(opt, 37, 1, 0.001),
        0.1,
        fs.cosine_annealing_warm_restarts(0.1, 37, 1, 0.001),
    ),
    "CosineAnnealingWarmRestarts-T_mult-2": (
        lambda opt: lr_scheduler.CosineAnnealingWarmRestarts(opt, 10, 2, 0.001),
        0.1,
        fs.cosine_annealing_warm_restarts(0.1, 10, 2, 0.001),
    ),
    "LambdaLR-noam": (
        lambda opt: lr_scheduler.LambdaLR(
            opt, lambda epoch: 512**-0.5 * min((epoch + 1) ** -0.5, (epoch + 1) * 100**-1.5)
        ),
        1.0,
        fs.inverse_sqrt(512, 100),
    ),
    "LambdaLR-inverse-time": (
        lambda opt: lr_scheduler.LambdaLR(opt, lambda epoch: 1.0 / (1.0 + 0.5 * epoch / 10)),
        0.1,
        fs.inverse_time_decay(0.1, 0.5, 10),
    ),
    "SequentialLR-warmup-cosine": (
        lambda opt: lr_scheduler.SequentialLR(
            opt,
            [lr_scheduler.LinearLR(opt, 0.1, 1.0, 50), lr_scheduler.CosineAnnealingLR(opt, 350)],
            milestones=[50],
        ),
        0.1,
        fs.warmup(fs.cosine_annealing(0.1, 350), 50, start_value=0.01),
    ),
    "SequentialLR-three": (
        lambda opt: lr_scheduler.SequentialLR(
            opt,
            [
                lr_scheduler.ConstantLR(opt, 0.1, 20),
                lr_scheduler.ExponentialLR(opt, 0.99),
                lr_scheduler.StepLR(opt, 30, 0.5),
            ],
            milestones=[100, 250],
        ),
        0.1,
        fs.join(
            [
                fs.constant_factor(0.1, 0.1, 20),
                fs.exponential_decay(0.1, 0.99),
                fs.step_decay(0.1, 30, 0.5),
            ],
            [100, 250],
        ),
    ),
    "ChainedScheduler": (
        lambda opt: lr_scheduler.ChainedScheduler(
            [
                lr_scheduler.LinearLR(opt, 0.1, 1.0, 50),
                lr_scheduler.CosineAnnealingLR(opt, N),
                lr_scheduler.MultiStepLR(opt, [100, 300], 0.3),
            ]
        ),
        0.1,
        fs.linear(1.0, 0.1, 1.0, 50)
        * fs.cosine_annealing(0.1, N)
        * fs.multi_step_decay(1.0, [100, 300], 0.3),
    ),
}


@pytest.mark.parametrize("name", sorted(LR_CASES))
def test_lr_matches_torch(name):
    make_scheduler, base_lr, schedule = LR_CASES[name]
    torch_lr, _, torch_closed_form = torch_trace(make_scheduler, base_lr)
    expected = ours(schedule)
    np.testing.assert_allclose(expected, torch_lr, rtol=1e-12, atol=0.0)
    if not np.isnan(torch_closed_form).any():
        # Same formulas evaluated in a different order. The only gap above a few ulps is the
        # cosine near its minimum: rounding pi * t / T versus pi * (t / T) is amplified by
        # the cancellation in 1 + cos(x) as x approaches pi (~2e-14 here).
        np.testing.assert_allclose(expected, torch_closed_form, rtol=1e-13, atol=0.0)


# (torch scheduler factory, our lr schedule, our momentum schedule)
CYCLE_CASES = {
    f"OneCycleLR-{strategy}-{'three' if three_phase else 'two'}-phase": (
        lambda opt, strategy=strategy, three_phase=three_phase: lr_scheduler.OneCycleLR(
            opt,
            max_lr=0.1,
            total_steps=N,
            pct_start=0.25,
            anneal_strategy=strategy,
            three_phase=three_phase,
        ),
        fs.one_cycle(0.1, N, 0.25, strategy, three_phase=three_phase),
        fs.one_cycle_momentum(N, 0.25, strategy, three_phase=three_phase),
    )
    for strategy in ("cos", "linear")
    for three_phase in (False, True)
} | {
    f"CyclicLR-{mode}": (
        lambda opt, mode=mode: lr_scheduler.CyclicLR(
            opt, 0.01, 0.1, 13, 24, mode=mode, gamma=0.995, base_momentum=0.8, max_momentum=0.9
        ),
        fs.cyclic(0.01, 0.1, 13, 24, mode, 0.995),
        fs.cyclic_momentum(0.8, 0.9, 13, 24, mode, 0.995),
    )
    for mode in ("triangular", "triangular2", "exp_range")
}


@pytest.mark.parametrize("name", sorted(CYCLE_CASES))
def test_lr_and_momentum_cycles_match_torch(name):
    make_scheduler, lr_schedule, momentum_schedule = CYCLE_CASES[name]
    torch_lr, torch_momentum, _ = torch_trace(make_scheduler, 0.1, momentum=0.9)
    # torch's linear anneal (end - start) * pct + start cancels digits when a phase ends at a
    # value far below where it starts (max_lr / 2.5e5 here): at the last step its relative
    # error against exact rational arithmetic is 6e-12, ours 1e-16. Hence an absolute
    # tolerance of 1e-15 of the peak value on top of the relative one.
    np.testing.assert_allclose(ours(lr_schedule), torch_lr, rtol=1e-12, atol=1e-15 * 0.1)
    np.testing.assert_allclose(ours(momentum_schedule), torch_momentum, rtol=1e-12, atol=0.0)


def test_cosine_annealing_holds_eta_min_where_torch_turns_back_up():
    torch_lr, _, _ = torch_trace(
        lambda opt: lr_scheduler.CosineAnnealingLR(opt, T_max=100, eta_min=0.001), 0.1, 300
    )
    schedule = fs.cosine_annealing(0.1, 100, 0.001)
    np.testing.assert_allclose(ours(schedule, 101), torch_lr[:101], rtol=1e-12)
    assert torch_lr[200] == pytest.approx(0.1, rel=1e-9)
    assert ours(schedule, 300)[100:].tolist() == [0.001] * 200
