"""Adadelta (Zeiler, 2012), with torch's semantics.

The update is written out in the class's docstring.
"""

from __future__ import annotations

import math

from fastopt._checks import check_fraction
from fastopt.rule import Hyperparameter, Rule, State, build, flag, real

__all__ = ["RULE", "Adadelta", "adadelta_step"]


def adadelta_update(p, g, square_avg, acc_delta, h):
    """One element of an Adadelta step, on values (torch's order of operations)."""
    if h.weight_decay != 0:
        g = g + h.weight_decay * p
    v = square_avg * h.rho + h.one_minus_rho * g * g
    std = math.sqrt(v + h.eps)
    delta = math.sqrt(acc_delta + h.eps) / std * g
    u = acc_delta * h.rho + h.one_minus_rho * delta * delta
    return p + h.neg_lr * delta, v, u


def adadelta_row(group, step, created, scalars):
    """The host row (no per-step terms)."""
    rho = group["rho"]
    return (rho, 1.0 - rho, group["eps"], group["weight_decay"], -group["lr"])


RULE = Rule(
    name="Adadelta",
    update=adadelta_update,
    fields=("rho", "one_minus_rho", "eps", "weight_decay", "neg_lr"),
    row=adadelta_row,
    hyperparameters=(
        real("lr", 1.0, scheduled=True),
        Hyperparameter("rho", 0.9, check_fraction),
        real("eps", 1e-6),
        real("weight_decay", 0.0),
        flag("maximize", keyword_only=True),
    ),
    state=(State("square_avg", nonnegative=True), State("acc_delta", nonnegative=True)),
    counts_steps=False,
    doc=r"""Adadelta: an adaptive step from running averages of squared gradients and
    squared updates, updating NumPy arrays in place, one fused pass.

    Same names, defaults and formulas as ``torch.optim.Adadelta``:

    .. math::

        g &\leftarrow g + \lambda p \\
        v &\leftarrow \rho v + (1-\rho) g^2 \qquad
        \Delta = \frac{\sqrt{u + \epsilon}}{\sqrt{v + \epsilon}}\, g \qquad
        u \leftarrow \rho u + (1-\rho) \Delta^2 \\
        p &\leftarrow p - \eta \Delta

    Parameters
    ----------
    params
        An array, a list of arrays or a list of parameter-group dicts.
    lr : float or schedule, default 1.0
        Scales the update :math:`\Delta` (torch's convention; the paper has none).
    rho : float, default 0.9
        The decay of both running averages, in ``[0, 1]``.
    eps : float, default 1e-6
        Added inside both square roots.
    weight_decay : float, default 0
        L2 penalty added to the gradient.
    maximize : bool, default False
        Ascend the objective instead of descending it.
    nonfinite, max_norm, norm_type, clip_value
        Gradient checks and clipping fused into the step, see :class:`~fastopt.Optimizer`.

    Notes
    -----
    State: ``square_avg`` (:math:`v`) and ``acc_delta`` (:math:`u`), zero at first. With
    ``maximize`` the gradient is negated before the weight decay is added, as in torch.

    Examples
    --------
    >>> import numpy as np, fastopt
    >>> w = np.zeros(2)
    >>> opt = fastopt.Adadelta(w)
    >>> opt.step(np.array([1.0, -1.0]))
    >>> w.round(6)  # the first step is about sqrt(eps / (1 - rho)) long
    array([-0.003162,  0.003162])
    >>> sorted(opt.state[0])
    ['acc_delta', 'square_avg', 'step']
    """,
)

_BUILT = build(RULE)
Adadelta = _BUILT.optimizer
adadelta_step = _BUILT.step
