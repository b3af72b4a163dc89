"""Schedules built from other schedules: sequencing, warmup and products."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

from fastopt._checks import plural
from fastopt.schedules.base import (
    Schedule,
    constant,
    finite,
    frozen_schedule,
    increasing_steps,
    integer,
    schedule_tuple,
)


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
    schedules = schedule_tuple("schedules", schedules)
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
