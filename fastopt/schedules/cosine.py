"""Cosine annealing, with warm restarts, and optax's warmup-cosine-decay."""

from __future__ import annotations

import math

from fastopt.schedules.base import Schedule, finite, frozen_schedule, integer, positive
from fastopt.schedules.interpolation import cosine_blend


@frozen_schedule
class _CosineAnnealing(Schedule):
    _constructor = "cosine_annealing"
    base_lr: float
    T_max: int
    eta_min: float

    def _value(self, step: int) -> float:
        return cosine_blend(self.base_lr, self.eta_min, min(step, self.T_max) / self.T_max)


def cosine_annealing(base_lr: float, T_max: int, eta_min: float = 0.0) -> Schedule:
    r"""Cosine annealing from ``base_lr`` to ``eta_min`` in ``T_max`` steps (``CosineAnnealingLR``).

    .. math::

        v(t) = \eta_\min + \frac{\text{base\_lr} - \eta_\min}{2}
            \left(1 + \cos\frac{\pi \min(t, T_\max)}{T_\max}\right)

    This is the closed form of SGDR without restarts. The value stays ``eta_min`` from
    ``T_max`` on, whereas ``torch.optim.lr_scheduler.CosineAnnealingLR`` keeps following
    the cosine back up (period ``2 * T_max``); the two agree for :math:`t \le T_\max`. Use
    :func:`cosine_annealing_warm_restarts` for periodic schedules.

    Parameters
    ----------
    base_lr : float
        Value at step 0; finite.
    T_max : int
        Steps to reach ``eta_min``; >= 1.
    eta_min : float
        Final value; finite.
    """
    return _CosineAnnealing(
        finite("base_lr", base_lr),
        integer("T_max", T_max, minimum=1),
        finite("eta_min", eta_min),
    )


@frozen_schedule
class _CosineAnnealingWarmRestarts(Schedule):
    _constructor = "cosine_annealing_warm_restarts"
    base_lr: float
    T_0: int
    T_mult: int
    eta_min: float

    def _value(self, step: int) -> float:
        if self.T_mult == 1:
            cycle_start, period = step - step % self.T_0, self.T_0
        else:
            # Walk the geometrically growing cycles in exact integer arithmetic; a closed form
            # through log(step) can land in the wrong cycle by rounding. O(log step) iterations.
            cycle_start, period = 0, self.T_0
            while step >= cycle_start + period:
                cycle_start += period
                period *= self.T_mult
        return cosine_blend(self.base_lr, self.eta_min, (step - cycle_start) / period)


def cosine_annealing_warm_restarts(
    base_lr: float, T_0: int, T_mult: int = 1, eta_min: float = 0.0
) -> Schedule:
    r"""Cosine annealing with warm restarts, SGDR (``CosineAnnealingWarmRestarts``).

    .. math::

        v(t) = \eta_\min + \frac{\text{base\_lr} - \eta_\min}{2}
            \left(1 + \cos\frac{\pi T_\text{cur}}{T_i}\right)

    Cycle :math:`i = 0, 1, \dots` lasts :math:`T_i = T_0 \cdot T_\text{mult}^i` steps and
    :math:`T_\text{cur}` counts the steps since its start, so the value restarts at
    ``base_lr`` at :math:`t = 0, T_0, T_0 + T_0 T_\text{mult}, \dots`.

    Parameters
    ----------
    base_lr : float
        Value at the start of every cycle; finite.
    T_0 : int
        Length of the first cycle; >= 1.
    T_mult : int
        Growth factor of the cycle length; integer >= 1.
    eta_min : float
        Value approached at the end of every cycle; finite.
    """
    return _CosineAnnealingWarmRestarts(
        finite("base_lr", base_lr),
        integer("T_0", T_0, minimum=1),
        integer("T_mult", T_mult, minimum=1),
        finite("eta_min", eta_min),
    )


@frozen_schedule
class _WarmupCosineDecay(Schedule):
    _constructor = "warmup_cosine_decay_schedule"
    init_value: float
    peak_value: float
    warmup_steps: int
    decay_steps: int
    end_value: float
    exponent: float

    def _value(self, step: int) -> float:
        if step < self.warmup_steps:
            # optax.linear_schedule's arithmetic, kept verbatim for bit-compatible values.
            remaining = 1.0 - step / self.warmup_steps
            return (self.init_value - self.peak_value) * remaining + self.peak_value
        cosine_steps = self.decay_steps - self.warmup_steps
        elapsed = min(step - self.warmup_steps, cosine_steps)
        # optax.cosine_decay_schedule scales by peak_value with alpha = end/peak, which makes
        # the decay phase identically 0 when peak_value is 0.
        alpha = 0.0 if self.peak_value == 0.0 else self.end_value / self.peak_value
        cosine_decay = 0.5 * (1.0 + math.cos(math.pi * elapsed / cosine_steps))
        decayed = (1.0 - alpha) * cosine_decay**self.exponent + alpha
        return self.peak_value * decayed


def warmup_cosine_decay_schedule(
    init_value: float,
    peak_value: float,
    warmup_steps: int,
    decay_steps: int,
    end_value: float = 0.0,
    exponent: float = 1.0,
) -> Schedule:
    r"""Linear warmup then cosine decay, with the semantics of ``optax``'s function of this name.

    .. math::

        v(t) = \begin{cases}
            v_0 + (v_p - v_0) \dfrac{t}{W} & t < W \\[1ex]
            v_p \left[(1 - \alpha) \left(\dfrac{1 + \cos(\pi \tau / (D - W))}{2}\right)^{k}
                + \alpha\right] & t \ge W
        \end{cases}

    with :math:`v_0` = ``init_value``, :math:`v_p` = ``peak_value``, :math:`W` =
    ``warmup_steps``, :math:`D` = ``decay_steps``, :math:`k` = ``exponent``,
    :math:`\tau = \min(t - W, D - W)` and :math:`\alpha = v_\text{end} / v_p` (0 when
    :math:`v_p = 0`). As in optax, ``decay_steps`` is the length of the whole schedule
    *including* the warmup: the cosine phase lasts ``decay_steps - warmup_steps`` steps,
    the value reaches ``end_value`` at step ``decay_steps`` and stays there.

    Parameters
    ----------
    init_value : float
        Value at step 0; finite.
    peak_value : float
        Value at the end of the warmup, step ``warmup_steps``; finite.
    warmup_steps : int
        Length of the linear warmup; >= 0.
    decay_steps : int
        Total length of warmup plus cosine decay; > ``warmup_steps``.
    end_value : float
        Final value; finite.
    exponent : float
        Power applied to the cosine factor; > 0.
    """
    warmup_steps = integer("warmup_steps", warmup_steps, minimum=0)
    decay_steps = integer("decay_steps", decay_steps, minimum=1)
    if decay_steps <= warmup_steps:
        raise ValueError(
            "decay_steps counts the warmup too and must exceed warmup_steps, got "
            f"decay_steps={decay_steps}, warmup_steps={warmup_steps}"
        )
    return _WarmupCosineDecay(
        finite("init_value", init_value),
        finite("peak_value", peak_value),
        warmup_steps,
        decay_steps,
        finite("end_value", end_value),
        positive("exponent", exponent),
    )
