"""LAMB (You et al., 2020, "Large Batch Optimization for Deep Learning: Training BERT in 76
minutes"), as the ``pytorch_optimizer`` package computes it.

The update is written out in the class's docstring. Its trust ratio needs two norms per
tensor, of the parameter after the decay and of the Adam direction: a read pass before the
update takes them (:class:`fastopt.rule.Norms`).
"""

from __future__ import annotations

import math

import numpy as np

from fastopt._jit import elementwise
from fastopt.rule import Hyperparameter, Norms, Rule, State, betas, build, flag, real

__all__ = ["RULE", "Lamb", "lamb_step"]

#: The reference clamps the parameter's norm to at most this (its ``Lamb.clamp``).
WEIGHT_NORM_CLAMP = 10.0


@elementwise
def _lamb_direction(p, g, exp_avg, exp_avg_sq, h):
    """The decayed parameter, the new moments and the Adam direction u, on values."""
    m = exp_avg * h.beta1 + h.gradient_weight * g
    v = exp_avg_sq * h.beta2 + h.one_minus_beta2 * g * g
    if h.weight_decay != 0 and h.decoupled:
        p = p * h.decay_factor
    u = m / (math.sqrt(v) + h.eps)
    if h.weight_decay != 0 and not h.decoupled:
        u = u + h.weight_decay * p
    return p, m, v, u


def lamb_measure(p, g, exp_avg, exp_avg_sq, h):
    """What the trust ratio's norms are taken of: the decayed parameter and u."""
    p, _m, _v, u = _lamb_direction(p, g, exp_avg, exp_avg_sq, h)
    return p, u


def lamb_update(p, g, exp_avg, exp_avg_sq, h):
    """One element of a LAMB step, on values: ``p - step_size * trust_ratio * u``."""
    p, m, v, u = _lamb_direction(p, g, exp_avg, exp_avg_sq, h)
    return p + h.neg_trusted_step * u, m, v


def lamb_row(group, step, created, scalars):
    """The host row of update number ``step``: the first moment's bias correction is in
    the step size (the reference's ``adam_debias=False``)."""
    beta1, beta2 = group["betas"]
    lr, weight_decay = group["lr"], group["weight_decay"]
    decay_rate = weight_decay * (1.0 if group["fixed_decay"] else lr)
    return (
        beta1,
        1.0 - beta1 if group["grad_averaging"] else 1.0,
        beta2,
        1.0 - beta2,
        group["eps"],
        weight_decay,
        group["weight_decouple"],
        1.0 - decay_rate,
        -lr / (1.0 - beta1**step),
        group["adam"],
    )


def lamb_trust(h, norms, ndim):
    """The trust ratio ``min(|p|, 10) / (|u| + eps)`` (1 where either norm is 0, or with
    ``adam=True``) times the step: the update's coefficient of u, one per tensor."""
    weight_norm = np.minimum(norms["param"], WEIGHT_NORM_CLAMP)
    adam_norm = norms["update"]
    # Divided only where both norms are nonzero (and the rule is not plain Adam): no warning
    # for 0 / 0, and a NaN norm still propagates.
    ratio = np.ones_like(weight_norm)
    both = (weight_norm != 0) & (adam_norm != 0) & (h.adam == 0)
    np.divide(weight_norm, adam_norm + h.eps, out=ratio, where=both)
    return (h.neg_step_size * ratio,)


RULE = Rule(
    name="Lamb",
    update=lamb_update,
    fields=(
        "beta1",
        "gradient_weight",
        "beta2",
        "one_minus_beta2",
        "eps",
        "weight_decay",
        "decoupled",
        "decay_factor",
        "neg_step_size",
        "adam",
    ),
    flags=frozenset({"decoupled", "adam"}),
    row=lamb_row,
    norms=Norms(
        measure=lamb_measure,
        names=("param", "update"),
        fields=("neg_trusted_step",),
        finish=lamb_trust,
    ),
    hyperparameters=(
        real("lr", 1e-3, scheduled=True),
        betas((0.9, 0.999)),
        real("weight_decay", 0.0),
        flag("weight_decouple", True),
        flag("fixed_decay"),
        flag("grad_averaging", True),
        flag("adam"),
        Hyperparameter("eps", 1e-6, real("eps", 0.0).check),
        flag("maximize", keyword_only=True),
    ),
    state=(State("exp_avg"), State("exp_avg_sq", nonnegative=True)),
    doc=r"""LAMB: Adam's direction scaled per tensor by a trust ratio, in place, fused.

    Same names, defaults and formulas as ``pytorch_optimizer.Lamb`` (the reference package;
    torch.optim has no LAMB). For each tensor, with :math:`\beta_3 = 1 - \beta_1`
    (``grad_averaging=True``, else 1) and :math:`t` the update count:

    .. math::

        m &\leftarrow \beta_1 m + \beta_3 g, \qquad v \leftarrow \beta_2 v + (1-\beta_2) g^2 \\
        p &\leftarrow p\,(1 - \eta\lambda) \quad \text{(decoupled decay;}
            \ 1 - \lambda \text{ with fixed\_decay)} \\
        u &= \frac{m}{\sqrt{v} + \epsilon} \ (+\,\lambda p \text{ without weight\_decouple}) \\
        r &= \frac{\min(\lVert p \rVert, 10)}{\lVert u \rVert + \epsilon}
            \quad (1 \text{ if a norm is } 0, \text{ or with } \texttt{adam=True}) \\
        p &\leftarrow p - \frac{\eta}{1 - \beta_1^t}\, r\, u

    The norms are taken over each tensor (each array, each parameter of a FlatParams) by a
    read pass before the update, in float64, in fixed blocks: the same bits on every path and
    thread count. A step reads the gradient, the parameter and both moments twice and writes
    three of them once (44 bytes per float32 element, Adam's 28 plus the read pass).

    Parameters
    ----------
    params
        An array, a list of arrays or a list of parameter-group dicts.
    lr : float or schedule, default 1e-3
    betas : tuple of (float or schedule), default (0.9, 0.999)
    weight_decay : float, default 0
    weight_decouple : bool, default True
        Decay the parameters (:math:`p \leftarrow p(1-\eta\lambda)`) before the norms; else
        add :math:`\lambda p` to the direction :math:`u`.
    fixed_decay : bool, default False
        The decoupled decay is :math:`1 - \lambda`, not scaled by the learning rate.
    grad_averaging : bool, default True
        :math:`\beta_3 = 1 - \beta_1`; False adds the whole gradient to :math:`m`.
    adam : bool, default False
        A trust ratio of 1 (Adam with LAMB's bias correction and eps).
    eps : float, default 1e-6
    maximize : bool, default False
    nonfinite, max_norm, norm_type, clip_value
        Gradient checks and clipping fused into the step, see :class:`~fastopt.Optimizer`.

    Notes
    -----
    State: ``exp_avg`` (:math:`m`) and ``exp_avg_sq`` (:math:`v`), zero at first. As in the
    reference the second moment has no bias correction and the first moment's is in the
    step size. The reference's diagnostics (``weight_norm``, ``adam_norm``, ``trust_ratio``
    in its state) are not kept. Not offered: ``rectify`` with ``degenerated_to_sgd`` and
    ``n_sma_threshold`` (RAdam's rectification), and ``pre_norm`` with ``max_grad_norm``
    (clip by the global norm: use ``max_norm``, which divides by the norm without the
    reference's ``+ eps``).

    Examples
    --------
    >>> import numpy as np, fastopt
    >>> w = np.full((2, 2), 3.0)
    >>> opt = fastopt.Lamb(w, lr=0.01)
    >>> opt.step(np.ones((2, 2)))
    >>> w  # the trust ratio gives u the norm of w (6): a step of 0.01 / (1 - 0.9) * 6 / 2
    array([[2.70000005, 2.70000005],
           [2.70000005, 2.70000005]])
    """,
)

_BUILT = build(RULE)
Lamb = _BUILT.optimizer
lamb_step = _BUILT.step
