"""AdaGrad (Duchi, Hazan & Singer, 2011), with torch's semantics.

The update is written out in the class's docstring.
"""

from __future__ import annotations

import math

from fastopt.rule import Rule, State, build, flag, real

__all__ = ["RULE", "Adagrad", "adagrad_step"]


def adagrad_update(p, g, state_sum, h):
    """One element of an AdaGrad step, on values."""
    if h.weight_decay != 0:
        g = g + h.weight_decay * p
    s = state_sum + g * g
    return p - h.clr * (g / (math.sqrt(s) + h.eps)), s


def adagrad_row(group, step, created, scalars):
    """The host row of update number ``step``: the decayed learning rate."""
    return (
        group["lr"] / (1.0 + (step - 1) * group["lr_decay"]),
        group["eps"],
        group["weight_decay"],
    )


RULE = Rule(
    name="Adagrad",
    update=adagrad_update,
    fields=("clr", "eps", "weight_decay"),
    row=adagrad_row,
    hyperparameters=(
        real("lr", 1e-2, scheduled=True),
        real("lr_decay", 0.0),
        real("weight_decay", 0.0),
        real("initial_accumulator_value", 0.0),
        real("eps", 1e-10),
        flag("maximize", keyword_only=True),
    ),
    state=(
        State("sum", initial=lambda group: group["initial_accumulator_value"], nonnegative=True),
    ),
    doc=r"""AdaGrad, updating NumPy arrays in place with one fused pass per array.

    Same names, defaults and formulas as ``torch.optim.Adagrad`` (eps outside the square
    root), with :math:`\delta` the lr decay:

    .. math::

        g &\leftarrow g + \lambda p \qquad s \leftarrow s + g^2 \\
        p &\leftarrow p - \frac{\eta}{1 + (t - 1)\,\delta}\,\frac{g}{\sqrt{s} + \epsilon}

    Parameters
    ----------
    params
        An array, a list of arrays or a list of parameter-group dicts.
    lr : float or schedule, default 1e-2
    lr_decay : float, default 0
    weight_decay : float, default 0
    initial_accumulator_value : float, default 0
        Starting value of the sum of squared gradients.
    eps : float, default 1e-10
    maximize : bool, default False
    nonfinite, max_norm, norm_type, clip_value
        Gradient checks and clipping fused into the step, see :class:`~fastopt.Optimizer`.

    Notes
    -----
    Conventions: optax's ``adagrad`` starts the accumulator at 0.1 and puts eps inside the
    square root; Keras starts it at 0.1 too. Pass ``initial_accumulator_value=0.1`` to match
    their starting point.

    Examples
    --------
    >>> import numpy as np, fastopt
    >>> x = np.array([10.0])
    >>> opt = fastopt.Adagrad(x, lr=1.0, eps=1e-8)
    >>> opt.step(2 * x)
    >>> x
    array([9.])
    """,
)

_BUILT = build(RULE)
Adagrad = _BUILT.optimizer
adagrad_step = _BUILT.step
