"""The :class:`Schedule` base class and the argument checks shared by all schedules.

Flags and named choices are checked by :func:`fastopt._checks.check_bool` and
:func:`fastopt._checks.check_choice`, as everywhere in fastopt.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Sequence
from typing import ClassVar


class Schedule:
    r"""A hyperparameter value as a pure function of the optimizer step count.

    A schedule maps the number of optimizer updates already applied, :math:`t \ge 0`, to the
    value used for the next update: ``schedule(0)`` drives the first update. Evaluation is
    host-side float64 arithmetic and depends on nothing but ``t`` and the parameters fixed at
    construction, so a schedule can be shared, pickled and re-evaluated at any step (which is
    what makes resuming from a checkpoint exact).

    Schedules are built by the constructor functions of :mod:`fastopt.schedules`; the
    ``repr`` of a built-in schedule is the constructor call that rebuilds it. Two schedules
    multiply into their pointwise product: ``a * b`` is ``chain([a, b])`` and ``0.5 * a``
    is ``chain([constant(0.5), a])``.

    Subclasses implement ``_value(step)`` for an already validated integer step and must
    be immutable.
    """

    __slots__ = ()

    # Name of the public constructor function, so that ``repr`` rebuilds the schedule.
    _constructor: ClassVar[str] = ""

    def __call__(self, step: int) -> float:
        """Return the value for the update that follows ``step`` completed updates.

        Raises
        ------
        TypeError
            If ``step`` is not an integer.
        ValueError
            If ``step`` is negative.
        """
        # bool is an Integral subclass, but True/False as a step count is always a mistake.
        if isinstance(step, bool) or not isinstance(step, numbers.Integral):
            raise TypeError(f"step must be an integer, got {type(step).__name__} {step!r}")
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        return float(self._value(int(step)))

    def _value(self, step: int) -> float:
        raise NotImplementedError

    def __mul__(self, other: object) -> Schedule:
        if isinstance(other, Schedule):
            return chain([self, other])
        if is_real(other):
            return chain([self, constant(other)])
        return NotImplemented

    def __rmul__(self, other: object) -> Schedule:
        if is_real(other):
            return chain([constant(other), self])
        return NotImplemented

    def __repr__(self) -> str:
        if not dataclasses.is_dataclass(self):
            return object.__repr__(self)
        name = self._constructor or type(self).__name__
        args = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self))
        return f"{name}({args})"


#: Class decorator of the built-in schedules: immutable and slotted, with equality, hashing and
#: pickling from the fields, and :class:`Schedule`'s constructor-call ``repr``.
frozen_schedule = dataclasses.dataclass(frozen=True, slots=True, repr=False)


def is_real(value: object) -> bool:
    """Whether ``value`` is a real number (bool excluded: it is never a meant hyperparameter)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def finite(name: str, value: object) -> float:
    """Return ``value`` as a float after checking it is a finite real number."""
    if not is_real(value):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value


def positive(name: str, value: object) -> float:
    """Return ``value`` as a float after checking it is finite and > 0."""
    value = finite(name, value)
    if value <= 0.0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return value


def non_negative(name: str, value: object) -> float:
    """Return ``value`` as a float after checking it is finite and >= 0."""
    value = finite(name, value)
    if value < 0.0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return value


def in_interval(name: str, value: object, low: float, high: float, *, open_low: bool) -> float:
    """Return ``value`` as a float after checking it lies in ``(low, high]`` or ``[low, high]``."""
    value = finite(name, value)
    if value > high or value < low or (open_low and value == low):
        bracket = "(" if open_low else "["
        raise ValueError(f"{name} must be in {bracket}{low}, {high}], got {value!r}")
    return value


def integer(name: str, value: object, *, minimum: int) -> int:
    """Return ``value`` as an int after checking it is an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return value


def increasing_steps(name: str, values: Sequence[int]) -> tuple[int, ...]:
    """Return ``values`` as a tuple of step counts >= 0 after checking they strictly increase."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"{name} must be a sequence of integers, got {values!r}")
    steps = tuple(integer(f"{name}[{i}]", v, minimum=0) for i, v in enumerate(values))
    for i in range(1, len(steps)):
        if steps[i] <= steps[i - 1]:
            raise ValueError(f"{name} must be strictly increasing, got {list(steps)}")
    return steps


@frozen_schedule
class _Constant(Schedule):
    _constructor = "constant"
    value: float

    def _value(self, step: int) -> float:
        return self.value


def constant(value: float) -> Schedule:
    r"""Constant schedule.

    .. math:: v(t) = \text{value}

    Parameters
    ----------
    value : float
        The value at every step; finite.
    """
    return _Constant(finite("value", value))


def schedule_tuple(name: str, schedules: Sequence[Schedule]) -> tuple[Schedule, ...]:
    if isinstance(schedules, Schedule) or not isinstance(schedules, Sequence):
        raise TypeError(f"{name} must be a sequence of Schedule objects, got {schedules!r}")
    if not schedules:
        raise ValueError(f"{name} must contain at least one schedule")
    for i, schedule in enumerate(schedules):
        if not isinstance(schedule, Schedule):
            raise TypeError(f"{name}[{i}] must be a Schedule, got {type(schedule).__name__}")
    return tuple(schedules)


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
    for schedule in schedule_tuple("schedules", schedules):
        flat.extend(schedule.schedules if isinstance(schedule, _Chain) else (schedule,))
    return _Chain(tuple(flat))
