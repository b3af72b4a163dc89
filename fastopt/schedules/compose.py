"""Schedules built from other schedules: sequencing, warmup and products."""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence

from fastopt._checks import plural
from fastopt.schedules.base import Schedule, finite, frozen_schedule, increasing_steps, integer
from fastopt.schedules.decay import constant


def _schedule_tuple(name: str, schedules: Sequence[Schedule]) -> tuple[Schedule, ...]:
    if isinstance(schedules, Schedule) or not isinstance(schedules, Sequence):
        raise TypeError(f"{name} must be a sequence of Schedule objects, got {schedules!r}")
    if not schedules:
        raise ValueError(f"{name} must contain at least one schedule")
    for i, schedule in enumerate(schedules):
        if not isinstance(schedule, Schedule):
            raise TypeError(f"{name}[{i}] must be a Schedule, got {type(schedule).__name__}")
    return tuple(schedules)


@frozen_schedule
class _Join(Schedule):
    _constructor = "join"
    schedules: tuple[Schedule, ...]
    boundaries: tuple[int, ...]

    def _value(self, step: int) -> float:
        segment = bisect_right(self.boundaries, step)
        start = self.boundaries[segment - 1] if segment else 0
        return self.schedules[segment](step - start)


def join(schedules: Sequence[Schedule], boundaries: Sequence[int]) -> Schedule:
    r"""Run schedules one after another, each restarted at its boundary.

    .. math::

        v(t) = s_i(t - b_{i-1}) \quad \text{for } b_{i-1} \le t < b_i,
        \qquad b_{-1} = 0,\; b_{n-1} = \infty

    Schedule :math:`s_i` sees the step count relative to the boundary where it takes over,
    as in ``optax.join_schedules`` and the intent of torch's ``SequentialLR``. No
    continuity is imposed at the boundaries.

    Parameters
    ----------
    schedules : sequence of Schedule
        The :math:`n \ge 1` schedules in order.
    boundaries : sequence of int
        The :math:`n - 1` absolute steps where the next schedule takes over; strictly
        increasing, >= 0.
    """
    schedules = _schedule_tuple("schedules", schedules)
    boundaries = increasing_steps("boundaries", boundaries)
    if len(boundaries) != len(schedules) - 1:
        raise ValueError(
            "boundaries must have one entry fewer than schedules: got "
            f"{plural(len(boundaries), 'boundary', 'boundaries')} for "
            f"{plural(len(schedules), 'schedule')}"
        )
    return _Join(schedules, boundaries)


@frozen_schedule
class _Warmup(Schedule):
    _constructor = "warmup"
    schedule: Schedule
    warmup_steps: int
    start_value: float

    def _value(self, step: int) -> float:
        if step >= self.warmup_steps:
            return self.schedule(step - self.warmup_steps)
        target = self.schedule(0)
        return self.start_value + (target - self.start_value) * (step / self.warmup_steps)


def warmup(schedule: Schedule, warmup_steps: int, start_value: float = 0.0) -> Schedule:
    r"""Prepend a linear warmup from ``start_value`` to the first value of ``schedule``.

    .. math::

        v(t) = \begin{cases}
            v_0 + (s(0) - v_0) \, t / W & t < W \\
            s(t - W) & t \ge W
        \end{cases}

    with :math:`v_0` = ``start_value`` and :math:`W` = ``warmup_steps``. The wrapped
    schedule starts at its own step 0 when the warmup ends, so the result is continuous
    at :math:`t = W`. With the default ``start_value=0`` the first update uses a zero
    value, as in optax's warmup schedules.

    Parameters
    ----------
    schedule : Schedule
        Schedule that follows the warmup.
    warmup_steps : int
        Length of the warmup; >= 0 (0 returns ``schedule``'s values unchanged).
    start_value : float
        Value at step 0; finite.
    """
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a Schedule, got {type(schedule).__name__}")
    return _Warmup(
        schedule,
        integer("warmup_steps", warmup_steps, minimum=0),
        finite("start_value", start_value),
    )


def linear_warmup(peak_value: float, warmup_steps: int, start_value: float = 0.0) -> Schedule:
    r"""Linear ramp from ``start_value`` to ``peak_value``, then constant.

    .. math:: v(t) = v_0 + (v_p - v_0) \, \min(t, W) / W

    Equal to ``warmup(constant(peak_value), warmup_steps, start_value)``, which is what it
    returns.

    Parameters
    ----------
    peak_value : float
        Value from step ``warmup_steps`` on; finite.
    warmup_steps : int
        Length of the ramp; >= 0.
    start_value : float
        Value at step 0; finite.
    """
    return warmup(constant(peak_value), warmup_steps, start_value)


@frozen_schedule
class _Chain(Schedule):
    _constructor = "chain"
    schedules: tuple[Schedule, ...]

    def _value(self, step: int) -> float:
        return math.prod(schedule(step) for schedule in self.schedules)


def chain(schedules: Sequence[Schedule]) -> Schedule:
    r"""Pointwise product of schedules, all evaluated at the same step.

    .. math:: v(t) = \prod_i s_i(t)

    This is the closed form of torch's ``ChainedScheduler`` over schedulers whose step is a
    pure multiplication of the current lr (``ConstantLR``, ``LinearLR``, ``StepLR``,
    ``MultiStepLR``, ``ExponentialLR``, ``PolynomialLR``, and ``CosineAnnealingLR`` with
    ``eta_min=0``): the lr is the base lr times the product of their factors. Here one
    schedule carries the base value and the others are factors with base value 1, e.g.
    ``chain([constant_factor(0.1, 0.5, 20), exponential_decay(1.0, 0.9)])``. ``a * b``
    is ``chain([a, b])``; nested chains are flattened.

    Parameters
    ----------
    schedules : sequence of Schedule
        The :math:`\ge 1` factors.
    """
    flat: list[Schedule] = []
    for schedule in _schedule_tuple("schedules", schedules):
        flat.extend(schedule.schedules if isinstance(schedule, _Chain) else (schedule,))
    return _Chain(tuple(flat))
