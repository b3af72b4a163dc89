"""LARS (You et al., 2017, "Large Batch Training of Convolutional Networks"), as the
``pytorch_optimizer`` package computes it.

The update is written out in the class's docstring. Its trust ratio needs the norms of each
tensor's parameter and gradient: a read pass before the update takes them
(:class:`fastopt.rule.Norms`).
"""

from __future__ import annotations

import numpy as np

from fastopt._checks import check_fraction
from fastopt.rule import Hyperparameter, Norms, Rule, State, build, flag, real

__all__ = ["LARS", "RULE", "lars_step"]


def lars_measure(p, g, momentum_buffer, h):
    """What the trust ratio's norms are taken of: the parameter and the gradient."""
    return p, g


def lars_update(p, g, momentum_buffer, h):
    """One element of a LARS step, on values (the reference's order of operations)."""
    if h.scaled:
        g = (g + h.weight_decay * p) * h.trust_ratio
    b = momentum_buffer
    if momentum_buffer is not None:
        b = momentum_buffer * h.momentum + h.one_minus_dampening * g
        g = g + h.momentum * b if h.nesterov else b
    return p + h.neg_lr * g, b


def lars_row(group, step, created, scalars):
    """The host row: LARS's step does not depend on the update count."""
    return (
        -group["lr"],
        group["weight_decay"],
        group["momentum"],
        1.0 - group["dampening"],
        group["nesterov"],
        group["trust_coefficient"],
    )


def lars_trust(h, norms, ndim):
    """Per tensor: ``trust_coefficient * |p| / (|g| + weight_decay * |p|)`` (1 where
    ``|p|`` or the denominator is 0), and whether it applies (tensors of 2 or more
    dimensions: vectors and scalars take plain SGD, without the weight decay)."""
    param_norm, grad_norm = norms["param"], norms["grad"]
    denominator = grad_norm + h.weight_decay * param_norm
    scaled = ndim > 1
    # Divided only where it applies (no warning for 0 / 0; NaN norms give a ratio of 1, as the
    # reference's comparisons do, and the NaN gradient propagates).
    ratio = np.ones_like(param_norm)
    np.divide(
        h.trust_coefficient * param_norm,
        denominator,
        out=ratio,
        where=scaled & (param_norm > 0) & (denominator > 0),
    )
    return ratio, scaled


def _is_matrix(ndim: int) -> bool:
    """Tensors of two or more dimensions take the trust ratio (vectors: plain SGD)."""
    return ndim > 1


RULE = Rule(
    name="LARS",
    update=lars_update,
    fields=(
        "neg_lr",
        "weight_decay",
        "momentum",
        "one_minus_dampening",
        "nesterov",
        "trust_coefficient",
    ),
    flags=frozenset({"nesterov", "scaled"}),
    row=lars_row,
    norms=Norms(
        measure=lars_measure,
        names=("param", "grad"),
        fields=("trust_ratio", "scaled"),
        finish=lars_trust,
        needed=_is_matrix,
    ),
    hyperparameters=(
        real("lr", 1e-3, scheduled=True),
        real("weight_decay", 0.0),
        Hyperparameter("momentum", 0.9, check_fraction),
        Hyperparameter("dampening", 0.0, check_fraction),
        real("trust_coefficient", 1e-3),
        flag("nesterov"),
        flag("maximize", keyword_only=True),
    ),
    state=(State("momentum_buffer", present=lambda group: group["momentum"] > 0),),
    counts_steps=False,
    doc=r"""LARS: SGD with a learning rate scaled per tensor by a trust ratio, in place, fused.

    Same names, defaults and formulas as ``pytorch_optimizer.LARS`` (the reference package;
    torch.optim has no LARS). For each tensor of two or more dimensions, with :math:`\lambda`
    the weight decay and :math:`c` the trust coefficient:

    .. math::

        r &= \frac{c\,\lVert p \rVert}{\lVert g \rVert + \lambda \lVert p \rVert}
            \quad (1 \text{ if } \lVert p \rVert = 0 \text{ or the denominator is } 0) \\
        g &\leftarrow r\,(g + \lambda p)

    (vectors and scalars keep :math:`g`: no trust ratio, no weight decay), then momentum
    with dampening :math:`\tau`:

    .. math::

        b &\leftarrow \mu b + (1 - \tau) g \\
        g &\leftarrow g + \mu b \text{ if nesterov, else } b \\
        p &\leftarrow p - \eta g

    The norms are taken over each tensor (each array, each parameter of a FlatParams) by a
    read pass before the update, in float64, in fixed blocks: the same bits on every path and
    thread count.

    Parameters
    ----------
    params
        An array, a list of arrays or a list of parameter-group dicts.
    lr : float or schedule, default 1e-3
    weight_decay : float, default 0
    momentum : float in [0, 1], default 0.9
        0 keeps no buffer.
    dampening : float in [0, 1], default 0
    trust_coefficient : float, default 1e-3
    nesterov : bool, default False
    maximize : bool, default False
    nonfinite, max_norm, norm_type, clip_value
        Gradient checks and clipping fused into the step, see :class:`~fastopt.Optimizer`.

    Notes
    -----
    State: ``momentum_buffer`` (:math:`b`), zero at first, so the first step is damped
    (unlike ``torch.optim.SGD``, whose buffer starts as the first gradient). A tensor's
    number of dimensions is its array's (a FlatParams view keeps its shape).

    Examples
    --------
    >>> import numpy as np, fastopt
    >>> w = np.full((2, 2), 3.0)
    >>> opt = fastopt.LARS(w, lr=1.0, momentum=0.0, trust_coefficient=0.01)
    >>> opt.step(np.ones((2, 2)))
    >>> w  # |w| = 6, |g| = 2: each coordinate moves by 0.01 * 6 / 2
    array([[2.97, 2.97],
           [2.97, 2.97]])
    """,
)

_BUILT = build(RULE)
LARS = _BUILT.optimizer
lars_step = _BUILT.step
