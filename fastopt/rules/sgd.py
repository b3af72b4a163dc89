"""Stochastic gradient descent with momentum, Nesterov, dampening and weight decay.

The update is written out in the class's docstring.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastopt.rule import Rule, State, build, flag, real

__all__ = ["RULE", "SGD", "sgd_step"]


def sgd_update(p, g, momentum_buffer, h):
    """One element of an SGD step, on values."""
    if h.weight_decay != 0:
        g = g + h.weight_decay * p
    b = momentum_buffer
    if momentum_buffer is not None:
        b = g if h.first_step else h.momentum * momentum_buffer + h.one_minus_dampening * g
        g = g + h.momentum * b if h.nesterov else b
    return p - h.lr * g, b


def sgd_row(group, step, created, scalars):
    """The host row: torch's first-step rule copies the gradient into a new buffer."""
    return (
        group["lr"],
        group["weight_decay"],
        group["momentum"],
        1.0 - group["dampening"],
        group["nesterov"],
        created,
    )


def _check_nesterov(group: Mapping[str, Any]) -> None:
    if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
        raise ValueError(
            f"nesterov=True requires momentum > 0 and dampening = 0, "
            f"got momentum={group['momentum']}, dampening={group['dampening']}"
        )


RULE = Rule(
    name="SGD",
    update=sgd_update,
    fields=("lr", "weight_decay", "momentum", "one_minus_dampening", "nesterov", "first_step"),
    flags=frozenset({"nesterov", "first_step"}),
    row=sgd_row,
    hyperparameters=(
        real("lr", 1e-3, scheduled=True),
        real("momentum", 0.0, scheduled=True),
        real("dampening", 0.0),
        real("weight_decay", 0.0),
        flag("nesterov"),
        flag("maximize", keyword_only=True),
    ),
    state=(State("momentum_buffer", present=lambda group: group["momentum"] != 0),),
    check=_check_nesterov,
    doc=r"""Stochastic gradient descent (optionally with momentum), in place on NumPy arrays.

    Same names, defaults and formulas as ``torch.optim.SGD``. With ``momentum=0`` it is plain
    gradient descent :math:`p \leftarrow p - \eta g`; otherwise, with :math:`\tau` the
    dampening and :math:`\lambda` the weight decay:

    .. math::

        g &\leftarrow g + \lambda p \\
        b &\leftarrow \mu b + (1 - \tau) g \quad (b \leftarrow g \text{ on the first step}) \\
        g &\leftarrow g + \mu b \text{ if nesterov, else } b \\
        p &\leftarrow p - \eta g

    Parameters
    ----------
    params
        An array, a list of arrays or a list of parameter-group dicts.
    lr : float or schedule, default 1e-3
    momentum : float or schedule, default 0
    dampening : float, default 0
    weight_decay : float, default 0
    nesterov : bool, default False
        Nesterov momentum (requires ``momentum > 0`` and ``dampening = 0``).
    maximize : bool, default False
    nonfinite, max_norm, norm_type, clip_value
        Gradient checks and clipping fused into the step, see :class:`~fastopt.Optimizer`.

    Notes
    -----
    Conventions: the buffer starts as a copy of the first gradient (torch), so the first step
    is not damped. Sutskever et al. and some tutorials write ``v = mu v - lr g; p += v``,
    which equals this rule while ``lr`` is constant but not when ``lr`` changes (the lr
    multiplies the whole buffer here, only the new gradient there).

    Examples
    --------
    >>> import numpy as np, fastopt
    >>> x = np.array([10.0])
    >>> opt = fastopt.SGD(x, lr=0.1)
    >>> for _ in range(3):
    ...     opt.step(2 * x)
    >>> x
    array([5.12])
    >>> p = np.array([10.0]); buf = np.zeros(1)  # the functional step, state kept by you
    >>> fastopt.sgd_step(p, 2 * p, buf, lr=0.1, momentum=0.9, step=1)
    >>> p, buf
    (array([8.]), array([20.]))
    """,
)

_BUILT = build(RULE)
SGD = _BUILT.optimizer
sgd_step = _BUILT.step
