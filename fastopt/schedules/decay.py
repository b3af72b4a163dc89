"""Constant, step-wise, exponential, polynomial, linear and inverse-power schedules."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

from fastopt._checks import check_bool
from fastopt.schedules.base import (
    Schedule,
    finite,
    frozen_schedule,
    in_interval,
    increasing_steps,
    integer,
    non_negative,
    positive,
)
from fastopt.schedules.interpolation import linear_blend


@frozen_schedule
class _ConstantFactor(Schedule):
    _constructor = "constant_factor"
    base_lr: float
    factor: float
    total_iters: int

    def _value(self, step: int) -> float:
        return self.base_lr * self.factor if step < self.total_iters else self.base_lr


def constant_factor(base_lr: float, factor: float = 1.0 / 3.0, total_iters: int = 5) -> Schedule:
    r"""Scaled base value for the first ``total_iters`` steps, then the base value (``ConstantLR``).

    .. math::

        v(t) = \begin{cases}
            \text{base\_lr} \cdot \text{factor} & t < \text{total\_iters} \\
            \text{base\_lr} & t \ge \text{total\_iters}
        \end{cases}

    Parameters
    ----------
    base_lr : float
        Value after ``total_iters`` steps; finite.
    factor : float
        Multiplier applied before ``total_iters``; in ``[0, 1]``.
    total_iters : int
        Number of scaled steps; >= 1.
    """
    return _ConstantFactor(
        finite("base_lr", base_lr),
        in_interval("factor", factor, 0.0, 1.0, open_low=False),
        integer("total_iters", total_iters, minimum=1),
    )


@frozen_schedule
class _StepDecay(Schedule):
    _constructor = "step_decay"
    base_lr: float
    step_size: int
    gamma: float

    def _value(self, step: int) -> float:
        return self.base_lr * self.gamma ** (step // self.step_size)


def step_decay(base_lr: float, step_size: int, gamma: float = 0.1) -> Schedule:
    r"""Multiply by ``gamma`` every ``step_size`` steps (``StepLR``).

    .. math:: v(t) = \text{base\_lr} \cdot \gamma^{\lfloor t / \text{step\_size} \rfloor}

    Parameters
    ----------
    base_lr : float
        Value at step 0; finite.
    step_size : int
        Steps between two decays; >= 1.
    gamma : float
        Decay factor; in ``(0, 1]``.
    """
    return _StepDecay(
        finite("base_lr", base_lr),
        integer("step_size", step_size, minimum=1),
        in_interval("gamma", gamma, 0.0, 1.0, open_low=True),
    )


@frozen_schedule
class _MultiStepDecay(Schedule):
    _constructor = "multi_step_decay"
    base_lr: float
    milestones: tuple[int, ...]
    gamma: float

    def _value(self, step: int) -> float:
        return self.base_lr * self.gamma ** bisect_right(self.milestones, step)


def multi_step_decay(base_lr: float, milestones: Sequence[int], gamma: float = 0.1) -> Schedule:
    r"""Multiply by ``gamma`` at each milestone step (``MultiStepLR``).

    .. math:: v(t) = \text{base\_lr} \cdot \gamma^{\#\{m \in \text{milestones} : m \le t\}}

    Parameters
    ----------
    base_lr : float
        Value before the first milestone; finite.
    milestones : sequence of int
        Steps at which the decay applies; strictly increasing, >= 0.
    gamma : float
        Decay factor; in ``(0, 1]``.
    """
    return _MultiStepDecay(
        finite("base_lr", base_lr),
        increasing_steps("milestones", milestones),
        in_interval("gamma", gamma, 0.0, 1.0, open_low=True),
    )


@frozen_schedule
class _ExponentialDecay(Schedule):
    _constructor = "exponential_decay"
    base_lr: float
    gamma: float

    def _value(self, step: int) -> float:
        return self.base_lr * self.gamma**step


def exponential_decay(base_lr: float, gamma: float) -> Schedule:
    r"""Multiply by ``gamma`` every step (``ExponentialLR``).

    .. math:: v(t) = \text{base\_lr} \cdot \gamma^{t}

    Parameters
    ----------
    base_lr : float
        Value at step 0; finite.
    gamma : float
        Per-step decay factor; in ``(0, 1]`` (a growing factor would overflow).
    """
    return _ExponentialDecay(
        finite("base_lr", base_lr), in_interval("gamma", gamma, 0.0, 1.0, open_low=True)
    )


@frozen_schedule
class _PolynomialDecay(Schedule):
    _constructor = "polynomial_decay"
    base_lr: float
    total_iters: int
    power: float

    def _value(self, step: int) -> float:
        remaining = 1.0 - min(step, self.total_iters) / self.total_iters
        return self.base_lr * remaining**self.power


def polynomial_decay(base_lr: float, total_iters: int = 5, power: float = 1.0) -> Schedule:
    r"""Polynomial decay to zero over ``total_iters`` steps (``PolynomialLR``).

    .. math::

        v(t) = \text{base\_lr} \cdot
            \left(1 - \frac{\min(t, \text{total\_iters})}{\text{total\_iters}}\right)^{\text{power}}

    The value stays 0 from ``total_iters`` on.

    Parameters
    ----------
    base_lr : float
        Value at step 0; finite.
    total_iters : int
        Steps to reach zero; >= 1.
    power : float
        Exponent of the polynomial; > 0.
    """
    return _PolynomialDecay(
        finite("base_lr", base_lr),
        integer("total_iters", total_iters, minimum=1),
        positive("power", power),
    )


@frozen_schedule
class _Linear(Schedule):
    _constructor = "linear"
    base_lr: float
    start_factor: float
    end_factor: float
    total_iters: int

    def _value(self, step: int) -> float:
        progress = min(step, self.total_iters) / self.total_iters
        return self.base_lr * linear_blend(self.start_factor, self.end_factor, progress)


def linear(
    base_lr: float,
    start_factor: float = 1.0 / 3.0,
    end_factor: float = 1.0,
    total_iters: int = 5,
) -> Schedule:
    r"""Linear interpolation between two multiples of the base value (``LinearLR``).

    .. math::

        v(t) = \text{base\_lr} \cdot \left(s + (e - s)
            \frac{\min(t, \text{total\_iters})}{\text{total\_iters}}\right)

    with :math:`s` = ``start_factor`` and :math:`e` = ``end_factor``; the value stays
    ``base_lr * end_factor`` from ``total_iters`` on. Set ``base_lr=1`` to interpolate
    directly from ``start_factor`` to ``end_factor``.

    Parameters
    ----------
    base_lr : float
        Value the factors multiply; finite.
    start_factor, end_factor : float
        Multipliers at steps 0 and ``total_iters``; finite, >= 0.
    total_iters : int
        Length of the interpolation in steps; >= 1.
    """
    return _Linear(
        finite("base_lr", base_lr),
        non_negative("start_factor", start_factor),
        non_negative("end_factor", end_factor),
        integer("total_iters", total_iters, minimum=1),
    )


@frozen_schedule
class _InverseTimeDecay(Schedule):
    _constructor = "inverse_time_decay"
    base_lr: float
    decay_rate: float
    decay_steps: int
    staircase: bool

    def _value(self, step: int) -> float:
        elapsed = step // self.decay_steps if self.staircase else step / self.decay_steps
        return self.base_lr / (1.0 + self.decay_rate * elapsed)


def inverse_time_decay(
    base_lr: float, decay_rate: float, decay_steps: int = 1, staircase: bool = False
) -> Schedule:
    r"""Inverse-time decay.

    .. math:: v(t) = \frac{\text{base\_lr}}{1 + \text{decay\_rate} \cdot p(t)}

    with :math:`p(t) = t / \text{decay\_steps}`, or
    :math:`\lfloor t / \text{decay\_steps} \rfloor` when ``staircase`` is true.

    Parameters
    ----------
    base_lr : float
        Value at step 0; finite.
    decay_rate : float
        Growth rate of the denominator per ``decay_steps``; finite, >= 0.
    decay_steps : int
        Steps per unit of decay; >= 1.
    staircase : bool
        Whether to decay in discrete jumps every ``decay_steps`` steps.
    """
    return _InverseTimeDecay(
        finite("base_lr", base_lr),
        non_negative("decay_rate", decay_rate),
        integer("decay_steps", decay_steps, minimum=1),
        check_bool("staircase", staircase),
    )


@frozen_schedule
class _InverseSqrt(Schedule):
    _constructor = "inverse_sqrt"
    d_model: float
    warmup_steps: int
    factor: float

    def _value(self, step: int) -> float:
        n = step + 1
        return self.factor * self.d_model**-0.5 * min(n**-0.5, n * self.warmup_steps**-1.5)


def inverse_sqrt(d_model: float, warmup_steps: int, factor: float = 1.0) -> Schedule:
    r"""Linear warmup then inverse-square-root decay: the Transformer ("Noam") rule.

    .. math::

        v(t) = \text{factor} \cdot d_\text{model}^{-1/2} \cdot
            \min\left(n^{-1/2},\; n \cdot \text{warmup\_steps}^{-3/2}\right),
        \qquad n = t + 1

    Step offset: the rule of *Attention Is All You Need* counts updates from 1
    (``step_num``), which keeps :math:`n^{-1/2}` finite and the first value non-zero. Here
    :math:`t` counts completed updates from 0, so the first update (:math:`t = 0`) uses
    :math:`n = 1`, and the peak :math:`\text{factor} \cdot (d_\text{model} \cdot
    \text{warmup\_steps})^{-1/2}` is reached at :math:`t = \text{warmup\_steps} - 1`.

    Parameters
    ----------
    d_model : float
        Model width that scales the whole schedule; > 0.
    warmup_steps : int
        Length of the linear warmup; >= 1.
    factor : float
        Overall multiplier; > 0.
    """
    return _InverseSqrt(
        positive("d_model", d_model),
        integer("warmup_steps", warmup_steps, minimum=1),
        positive("factor", factor),
    )
