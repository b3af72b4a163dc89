"""One-cycle and cyclical (CLR) schedules, each with its inverse momentum schedule."""

from __future__ import annotations

from fastopt._checks import check_bool, check_choice
from fastopt.schedules.base import (
    Schedule,
    finite,
    frozen_schedule,
    in_interval,
    integer,
    positive,
)
from fastopt.schedules.interpolation import cosine_blend, linear_blend

_ANNEAL_STRATEGIES = ("cos", "linear")
_CYCLIC_MODES = ("triangular", "triangular2", "exp_range")


def _one_cycle_phase_ends(
    total_steps: int, pct_start: float, three_phase: bool
) -> tuple[float, ...]:
    """Steps (as floats, like torch) at which each phase of a one-cycle schedule ends."""
    rise_end = pct_start * total_steps - 1.0
    if three_phase:
        return (rise_end, 2.0 * pct_start * total_steps - 2.0, total_steps - 1.0)
    return (rise_end, total_steps - 1.0)


def _one_cycle_value(
    step: int,
    phase_ends: tuple[float, ...],
    phase_values: tuple[float, ...],
    anneal_strategy: str,
) -> float:
    """Anneal from ``phase_values[i]`` to ``phase_values[i + 1]`` during phase ``i``."""
    phase_start = 0.0
    for phase, phase_end in enumerate(phase_ends):
        if step <= phase_end or phase == len(phase_ends) - 1:
            break
        phase_start = phase_end
    # Past the last phase the value holds at its end instead of extrapolating.
    fraction = min((step - phase_start) / (phase_end - phase_start), 1.0)
    blend = cosine_blend if anneal_strategy == "cos" else linear_blend
    return blend(phase_values[phase], phase_values[phase + 1], fraction)


def _check_one_cycle_shape(
    total_steps: object, pct_start: object, anneal_strategy: object, three_phase: object
) -> tuple[int, float, str, bool]:
    total_steps = integer("total_steps", total_steps, minimum=2)
    pct_start = finite("pct_start", pct_start)
    if not 0.0 < pct_start < 1.0:
        raise ValueError(f"pct_start must be in (0, 1), got {pct_start!r}")
    anneal_strategy = check_choice("anneal_strategy", anneal_strategy, _ANNEAL_STRATEGIES)
    three_phase = check_bool("three_phase", three_phase)
    ends = _one_cycle_phase_ends(total_steps, pct_start, three_phase)
    starts = (0.0, *ends[:-1])
    if any(end <= start for start, end in zip(starts, ends, strict=True)):
        raise ValueError(
            f"pct_start={pct_start!r} and total_steps={total_steps} leave a phase of the cycle "
            f"without steps (phases end at steps {ends}); the rise needs pct_start * "
            "total_steps > 1 and the later phases need the remaining steps"
        )
    return total_steps, pct_start, anneal_strategy, three_phase


@frozen_schedule
class _OneCycle(Schedule):
    _constructor = "one_cycle"
    max_lr: float
    total_steps: int
    pct_start: float
    anneal_strategy: str
    div_factor: float
    final_div_factor: float
    three_phase: bool

    def _value(self, step: int) -> float:
        initial = self.max_lr / self.div_factor
        final = initial / self.final_div_factor
        if self.three_phase:
            values = (initial, self.max_lr, initial, final)
        else:
            values = (initial, self.max_lr, final)
        ends = _one_cycle_phase_ends(self.total_steps, self.pct_start, self.three_phase)
        return _one_cycle_value(step, ends, values, self.anneal_strategy)


def one_cycle(
    max_lr: float,
    total_steps: int,
    pct_start: float = 0.3,
    anneal_strategy: str = "cos",
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    three_phase: bool = False,
) -> Schedule:
    r"""The 1cycle policy of *Super-Convergence* (``OneCycleLR``).

    With :math:`v_0 = \text{max\_lr} / \text{div\_factor}` and
    :math:`v_\text{end} = v_0 / \text{final\_div\_factor}`, the value anneals
    :math:`v_0 \to \text{max\_lr}` over steps :math:`[0, p T - 1]` and then
    :math:`\text{max\_lr} \to v_\text{end}` over :math:`[p T - 1, T - 1]`, where
    :math:`T` = ``total_steps`` and :math:`p` = ``pct_start``. With ``three_phase`` the
    descent goes back to :math:`v_0` at :math:`2 p T - 2`, then to :math:`v_\text{end}` at
    :math:`T - 1`. Within a phase from :math:`a` to :math:`b` at fraction
    :math:`f = (t - t_\text{start}) / (t_\text{end} - t_\text{start})`:

    .. math::

        \text{cos}: \; b + \frac{a - b}{2} (1 + \cos \pi f), \qquad
        \text{linear}: \; a + (b - a) f

    The phase boundaries are those of torch (fractional steps included). The value holds
    at :math:`v_\text{end}` from step :math:`T - 1` on, where torch raises past
    :math:`T`. Pair with :func:`one_cycle_momentum` for the momentum (or Adam
    :math:`\beta_1`) schedule that torch cycles alongside.

    Parameters
    ----------
    max_lr : float
        Peak value, reached at step ``pct_start * total_steps - 1``; finite.
    total_steps : int
        Length of the cycle; >= 2.
    pct_start : float
        Fraction of the cycle spent rising; in ``(0, 1)``, with every phase at least one
        step long.
    anneal_strategy : {"cos", "linear"}
        Shape of each phase.
    div_factor : float
        ``max_lr / div_factor`` is the initial value; > 0.
    final_div_factor : float
        ``max_lr / div_factor / final_div_factor`` is the final value; > 0.
    three_phase : bool
        Whether to descend to the initial value before annihilating to the final one.
    """
    total_steps, pct_start, anneal_strategy, three_phase = _check_one_cycle_shape(
        total_steps, pct_start, anneal_strategy, three_phase
    )
    return _OneCycle(
        finite("max_lr", max_lr),
        total_steps,
        pct_start,
        anneal_strategy,
        positive("div_factor", div_factor),
        positive("final_div_factor", final_div_factor),
        three_phase,
    )


@frozen_schedule
class _OneCycleMomentum(Schedule):
    _constructor = "one_cycle_momentum"
    total_steps: int
    pct_start: float
    anneal_strategy: str
    base_momentum: float
    max_momentum: float
    three_phase: bool

    def _value(self, step: int) -> float:
        high, low = self.max_momentum, self.base_momentum
        values = (high, low, high, high) if self.three_phase else (high, low, high)
        ends = _one_cycle_phase_ends(self.total_steps, self.pct_start, self.three_phase)
        return _one_cycle_value(step, ends, values, self.anneal_strategy)


def one_cycle_momentum(
    total_steps: int,
    pct_start: float = 0.3,
    anneal_strategy: str = "cos",
    base_momentum: float = 0.85,
    max_momentum: float = 0.95,
    three_phase: bool = False,
) -> Schedule:
    r"""The momentum cycle of ``OneCycleLR`` (``cycle_momentum``), inverse to :func:`one_cycle`.

    Over the same phases as :func:`one_cycle` with the same arguments, the value anneals
    ``max_momentum`` :math:`\to` ``base_momentum`` while the learning rate rises, then back
    to ``max_momentum`` while it falls (with ``three_phase``: back to ``max_momentum`` in the
    second phase and constant in the third). Use it for SGD ``momentum`` or Adam
    :math:`\beta_1`.

    Parameters
    ----------
    total_steps, pct_start, anneal_strategy, three_phase
        As in :func:`one_cycle`; pass the same values.
    base_momentum : float
        Value at the learning-rate peak; finite.
    max_momentum : float
        Value at the start and end of the cycle; finite.
    """
    total_steps, pct_start, anneal_strategy, three_phase = _check_one_cycle_shape(
        total_steps, pct_start, anneal_strategy, three_phase
    )
    return _OneCycleMomentum(
        total_steps,
        pct_start,
        anneal_strategy,
        finite("base_momentum", base_momentum),
        finite("max_momentum", max_momentum),
        three_phase,
    )


def _cyclic_height(
    step: int, step_size_up: int, step_size_down: int, mode: str, gamma: float
) -> float:
    """Fraction of the amplitude reached at ``step``: the triangle times the mode's scaling."""
    period = step_size_up + step_size_down
    position = step % period
    if position <= step_size_up:
        triangle = position / step_size_up
    else:
        triangle = (period - position) / step_size_down
    if mode == "triangular2":
        cycle = step // period  # 0 for the first cycle
        return triangle / 2.0**cycle
    if mode == "exp_range":
        return triangle * gamma**step
    return triangle


def _check_cycle_shape(
    step_size_up: object, step_size_down: object, mode: object, gamma: object
) -> tuple[int, int, str, float]:
    step_size_up = integer("step_size_up", step_size_up, minimum=1)
    if step_size_down is None:
        step_size_down = step_size_up
    step_size_down = integer("step_size_down", step_size_down, minimum=1)
    mode = check_choice("mode", mode, _CYCLIC_MODES)
    gamma = in_interval("gamma", gamma, 0.0, 1.0, open_low=True)
    return step_size_up, step_size_down, mode, gamma


@frozen_schedule
class _Cyclic(Schedule):
    _constructor = "cyclic"
    base_lr: float
    max_lr: float
    step_size_up: int
    step_size_down: int
    mode: str
    gamma: float

    def _value(self, step: int) -> float:
        height = _cyclic_height(step, self.step_size_up, self.step_size_down, self.mode, self.gamma)
        return self.base_lr + (self.max_lr - self.base_lr) * height


def cyclic(
    base_lr: float,
    max_lr: float,
    step_size_up: int = 2000,
    step_size_down: int | None = None,
    mode: str = "triangular",
    gamma: float = 1.0,
) -> Schedule:
    r"""Cyclical learning rate, CLR (``CyclicLR``).

    .. math:: v(t) = \text{base\_lr} + (\text{max\_lr} - \text{base\_lr}) \, h(t) \, s(t)

    The triangle :math:`h` rises linearly from 0 to 1 over ``step_size_up`` steps and falls
    back over ``step_size_down`` steps, periodically. The amplitude scaling :math:`s` is
    1 for ``"triangular"``, :math:`2^{-c}` in cycle :math:`c = 0, 1, \dots` for
    ``"triangular2"`` and :math:`\gamma^t` for ``"exp_range"``.

    Parameters
    ----------
    base_lr : float
        Value at the start of each cycle; finite.
    max_lr : float
        Value at the top of an unscaled cycle; finite.
    step_size_up : int
        Steps of the rising half; >= 1.
    step_size_down : int or None
        Steps of the falling half; >= 1. ``None`` means ``step_size_up``.
    mode : {"triangular", "triangular2", "exp_range"}
        Amplitude scaling policy.
    gamma : float
        Per-step amplitude decay of ``"exp_range"``; in ``(0, 1]``.
    """
    step_size_up, step_size_down, mode, gamma = _check_cycle_shape(
        step_size_up, step_size_down, mode, gamma
    )
    return _Cyclic(
        finite("base_lr", base_lr),
        finite("max_lr", max_lr),
        step_size_up,
        step_size_down,
        mode,
        gamma,
    )


@frozen_schedule
class _CyclicMomentum(Schedule):
    _constructor = "cyclic_momentum"
    base_momentum: float
    max_momentum: float
    step_size_up: int
    step_size_down: int
    mode: str
    gamma: float

    def _value(self, step: int) -> float:
        height = _cyclic_height(step, self.step_size_up, self.step_size_down, self.mode, self.gamma)
        return self.max_momentum - (self.max_momentum - self.base_momentum) * height


def cyclic_momentum(
    base_momentum: float = 0.8,
    max_momentum: float = 0.9,
    step_size_up: int = 2000,
    step_size_down: int | None = None,
    mode: str = "triangular",
    gamma: float = 1.0,
) -> Schedule:
    r"""The momentum cycle of ``CyclicLR`` (``cycle_momentum=True``), inverse to :func:`cyclic`.

    .. math::

        v(t) = \text{max\_momentum} - (\text{max\_momentum} - \text{base\_momentum})
            \, h(t) \, s(t)

    with :math:`h` and :math:`s` as in :func:`cyclic`: momentum is highest where the
    learning rate is lowest.

    Parameters
    ----------
    base_momentum : float
        Value at the top of an unscaled learning-rate cycle; finite.
    max_momentum : float
        Value at the start of each cycle; finite.
    step_size_up, step_size_down, mode, gamma
        As in :func:`cyclic`; pass the same values.
    """
    step_size_up, step_size_down, mode, gamma = _check_cycle_shape(
        step_size_up, step_size_down, mode, gamma
    )
    return _CyclicMomentum(
        finite("base_momentum", base_momentum),
        finite("max_momentum", max_momentum),
        step_size_up,
        step_size_down,
        mode,
        gamma,
    )
