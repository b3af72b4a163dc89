"""RMSProp (Tieleman & Hinton, 2012), centered (Graves, 2013) and with momentum.

The update is written out in the class's docstring.
"""

from __future__ import annotations

import math

from fastopt.rule import Rule, State, build, flag, real

__all__ = ["RULE", "RMSprop", "rmsprop_step"]


def rmsprop_update(p, g, square_avg, momentum_buffer, grad_avg, h):
    """One element of an RMSProp step, on values."""
    if h.weight_decay != 0:
        g = g + h.weight_decay * p
    sq = h.alpha * square_avg + h.one_minus_alpha * g * g
    v = sq
    ga = grad_avg
    if grad_avg is not None:
        ga = grad_avg + h.one_minus_alpha * (g - grad_avg)
        v = sq - ga * ga
    avg = math.sqrt(v) + h.eps
    b = momentum_buffer
    if momentum_buffer is not None:
        b = h.momentum * momentum_buffer + g / avg
        p = p - h.lr * b
    else:
        p = p - h.lr * (g / avg)
    return p, sq, b, ga


def rmsprop_row(group, step, created, scalars):
    """The host row (no per-step terms)."""
    alpha = group["alpha"]
    return (group["lr"], alpha, 1.0 - alpha, group["eps"], group["weight_decay"], group["momentum"])


RULE = Rule(
    name="RMSprop",
    update=rmsprop_update,
    fields=("lr", "alpha", "one_minus_alpha", "eps", "weight_decay", "momentum"),
    row=rmsprop_row,
    hyperparameters=(
        real("lr", 1e-2, scheduled=True),
        real("alpha", 0.99),
        real("eps", 1e-8),
        real("weight_decay", 0.0),
        real("momentum", 0.0, scheduled=True),
        flag("centered"),
        flag("maximize"),
    ),
    state=(
        State("square_avg", nonnegative=True),
        State("momentum_buffer", present=lambda group: group["momentum"] > 0),
        State("grad_avg", present=lambda group: group["centered"]),
    ),
    counts_steps=False,
    doc=r"""RMSProp, updating NumPy arrays in place with one fused pass per array.

    Same names, defaults and formulas as ``torch.optim.RMSprop`` (eps outside the square
    root):

    .. math::

        g &\leftarrow g + \lambda p \qquad
        v \leftarrow \alpha v + (1-\alpha) g^2 \qquad
        \bar g \leftarrow \bar g + (1-\alpha)(g - \bar g) \text{ (centered)} \\
        d &= \sqrt{v - \bar g^2} + \epsilon \text{ (centered), else } \sqrt{v} + \epsilon \\
        b &\leftarrow \mu b + g / d,\ p \leftarrow p - \eta b \text{ (momentum), else }
        p \leftarrow p - \eta\, g / d

    Parameters
    ----------
    params
        An array, a list of arrays or a list of parameter-group dicts.
    lr : float or schedule, default 1e-2
    alpha : float, default 0.99
        Smoothing constant of the squared-gradient average (the "decay"; Keras' ``rho``).
    eps : float, default 1e-8
    weight_decay : float, default 0
    momentum : float or schedule, default 0
    centered : bool, default False
        Normalize by the estimated variance of the gradient instead of its second moment.
    maximize : bool, default False
    nonfinite, max_norm, norm_type, clip_value
        Gradient checks and clipping fused into the step, see :class:`~fastopt.Optimizer`.

    Notes
    -----
    The positional order is that of ``torch.optim.RMSprop`` without ``capturable`` and
    ``foreach``, which fastopt does not take: ``maximize`` follows ``centered``.

    Conventions: torch's default ``alpha`` is 0.99, Keras' ``rho`` 0.9 and the original
    lecture's 0.9; optax's ``rmsprop`` puts eps inside the square root. Keras adds eps inside
    too.

    Examples
    --------
    >>> import numpy as np, fastopt
    >>> x = np.array([10.0])
    >>> opt = fastopt.RMSprop(x, lr=0.1, alpha=0.9)
    >>> opt.step(2 * x)
    >>> np.round(x, 6)
    array([9.683772])
    """,
)

_BUILT = build(RULE)
RMSprop = _BUILT.optimizer
rmsprop_step = _BUILT.step
