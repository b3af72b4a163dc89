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
        # Imported here: both modules build on this one.
        from fastopt.schedules.compose import chain
        from fastopt.schedules.decay import constant

        if isinstance(other, Schedule):
            return chain([self, other])
        if is_real(other):
            return chain([self, constant(other)])
        return NotImplemented

    def __rmul__(self, other: object) -> Schedule:
        # Imported here: both modules build on this one.
        from fastopt.schedules.compose import chain
        from fastopt.schedules.decay import constant

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
