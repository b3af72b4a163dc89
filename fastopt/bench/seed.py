"""The seed tutorial's problems, solved with fastopt's optimizers (for convergence plots).

Six short scripts of the tutorial "Optimizers and learning rate" each show one update rule:
five minimize :math:`f(x) = x^2` from :math:`x_0 = 10`; stochastic gradient descent fits
:math:`y = w x + b` to :math:`y = 2x` on :math:`x \\in \\{1, 2, 3, 4\\}`, one sample per update,
with the per-sample loss :math:`\\tfrac12 (w x + b - y)^2`. Here each runs with the
tutorial's settings through the matching fastopt class (float64), recording the loss after
every update.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

import fastopt

__all__ = ["SeedRun", "seed_runs"]

_X = np.array([1.0, 2.0, 3.0, 4.0])
_Y = 2.0 * _X


@dataclass(frozen=True)
class SeedRun:
    """One rule on one seed problem.

    Attributes
    ----------
    key
        The tutorial's name for the rule (``"adam"``).
    label
        Legend text: the fastopt call that reproduces the tutorial's settings.
    problem
        ``"quadratic"`` (:math:`x^2`) or ``"regression"`` (:math:`y = 2x`).
    losses
        Loss before the first update, then after each update.
    values
        Parameters after each update: ``x``, or ``(w, b)`` for the regression.
    """

    key: str
    label: str
    problem: str
    losses: tuple[float, ...]
    values: tuple[float | tuple[float, float], ...]


_QUADRATIC: list[tuple[str, str, Callable[[np.ndarray], fastopt.Optimizer]]] = [
    ("gradient_descent", "SGD(lr=0.1)", lambda x: fastopt.SGD(x, lr=0.1)),
    ("momentum", "SGD(lr=0.1, momentum=0.9)", lambda x: fastopt.SGD(x, lr=0.1, momentum=0.9)),
    ("adagrad", "Adagrad(lr=1.0, eps=1e-8)", lambda x: fastopt.Adagrad(x, lr=1.0, eps=1e-8)),
    (
        "rmsprop",
        "RMSprop(lr=0.1, alpha=0.9)",
        lambda x: fastopt.RMSprop(x, lr=0.1, alpha=0.9, eps=1e-8),
    ),
    ("adam", "Adam(lr=0.1)", lambda x: fastopt.Adam(x, lr=0.1)),
]


def _quadratic(key: str, label: str, make, steps: int) -> SeedRun:
    x = np.array([10.0])
    opt = make(x)
    losses, values = [float(x[0] ** 2)], []
    for _ in range(steps):
        opt.step(2.0 * x)
        losses.append(float(x[0] ** 2))
        values.append(float(x[0]))
    return SeedRun(key, label, "quadratic", tuple(losses), tuple(values))


def _regression_loss(wb: np.ndarray) -> float:
    return float(np.mean(0.5 * (wb[0] * _X + wb[1] - _Y) ** 2))


def _regression(epochs: int) -> SeedRun:
    wb = np.zeros(2)
    opt = fastopt.SGD(wb, lr=0.01)
    losses, values = [_regression_loss(wb)], []
    grad = np.empty(2)
    for _ in range(epochs):
        for x, y in zip(_X, _Y, strict=True):
            error = wb[0] * x + wb[1] - y
            grad[0], grad[1] = error * x, error
            opt.step(grad)
            losses.append(_regression_loss(wb))
            values.append((float(wb[0]), float(wb[1])))
    return SeedRun(
        "sgd", "SGD(lr=0.01), one sample per step", "regression", tuple(losses), tuple(values)
    )


def seed_runs(steps: int = 50, epochs: int = 25) -> list[SeedRun]:
    """Run every seed problem: ``steps`` updates on the quadratic, ``epochs`` on the fit.

    The tutorial runs 10 of each; the first 10 values of ``SeedRun.values`` are what its
    scripts print.

    Examples
    --------
    >>> from fastopt.bench.seed import seed_runs
    >>> runs = {run.key: run for run in seed_runs(steps=3, epochs=1)}
    >>> [round(x, 6) for x in runs["gradient_descent"].values]
    [8.0, 6.4, 5.12]
    >>> runs["sgd"].values[0]
    (0.02, 0.02)
    """
    runs = [_quadratic(key, label, make, steps) for key, label, make in _QUADRATIC]
    runs.append(_regression(epochs))
    return runs
