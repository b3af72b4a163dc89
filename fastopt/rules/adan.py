"""Adan (Xie et al., 2022, "Adan: Adaptive Nesterov Momentum Algorithm for Faster Optimizing
Deep Models"), as the ``pytorch_optimizer`` package computes it.

The update is written out in the class's docstring.
"""

from __future__ import annotations

import math

from fastopt._math import lerp
from fastopt.rule import Rule, State, betas, build, flag, real

__all__ = ["RULE", "Adan", "adan_step"]


def adan_update(p, g, exp_avg, exp_avg_sq, exp_avg_diff, previous_grad, h):
    """One element of an Adan step, on values (the reference's order of operations)."""
    # The first step's difference is g - g: 0, or NaN for a non-finite g, as in the reference.
    d = g - (g if h.first_step else previous_grad)
    m = lerp(exp_avg, g, h.one_minus_beta1)
    n = lerp(exp_avg_diff, d, h.one_minus_beta2)
    u = d * h.beta2 + g
    v = exp_avg_sq * h.beta3 + h.one_minus_beta3 * u * u
    denom = math.sqrt(v) / h.bias_correction3_sqrt + h.eps
    if h.weight_decay != 0 and h.decoupled:
        p = p * h.decay_factor
    p = p + h.neg_step_size * m / denom
    p = p + h.neg_diff_step_size * n / denom
    if h.weight_decay != 0 and not h.decoupled:
        p = p / h.prox_divisor
    # + 0.0 turns a maximized zero gradient's -0.0 into +0.0 (zero state stays +0.0).
    return p, m, v, n, g + h.zero


def adan_row(group, step, created, scalars):
    """The host row of update number ``step``: bias corrections and the first-step rule."""
    beta1, beta2, beta3 = group["betas"]
    lr, weight_decay = group["lr"], group["weight_decay"]
    return (
        1.0 - beta1,
        beta2,
        1.0 - beta2,
        beta3,
        1.0 - beta3,
        math.sqrt(1.0 - beta3**step),
        group["eps"],
        weight_decay,
        group["weight_decouple"],
        1.0 - lr * weight_decay,
        1.0 + lr * weight_decay,
        -lr / (1.0 - beta1**step),
        -lr * beta2 / (1.0 - beta2**step),
        created,
        0.0,
    )


RULE = Rule(
    name="Adan",
    update=adan_update,
    fields=(
        "one_minus_beta1",
        "beta2",
        "one_minus_beta2",
        "beta3",
        "one_minus_beta3",
        "bias_correction3_sqrt",
        "eps",
        "weight_decay",
        "decoupled",
        "decay_factor",
        "prox_divisor",
        "neg_step_size",
        "neg_diff_step_size",
        "first_step",
        "zero",
    ),
    flags=frozenset({"decoupled", "first_step"}),
    row=adan_row,
    hyperparameters=(
        real("lr", 1e-3, scheduled=True),
        betas((0.98, 0.92, 0.99)),
        real("weight_decay", 0.0),
        flag("weight_decouple"),
        real("eps", 1e-8),
        flag("maximize", keyword_only=True),
    ),
    state=(
        State("exp_avg"),
        State("exp_avg_sq", nonnegative=True),
        State("exp_avg_diff"),
        State("previous_grad"),
    ),
    doc=r"""Adan: adaptive Nesterov momentum, updating NumPy arrays in place, one fused pass.

    Same names, defaults and formulas as ``pytorch_optimizer.Adan`` (the reference package;
    torch.optim has no Adan), with :math:`d = g - g_{t-1}` (0 on the first step):

    .. math::

        m &\leftarrow m + (1-\beta_1)(g - m) \qquad
        n \leftarrow n + (1-\beta_2)(d - n) \qquad
        v \leftarrow \beta_3 v + (1-\beta_3)(g + \beta_2 d)^2 \\
        \delta &= \sqrt{v} / \sqrt{1-\beta_3^t} + \epsilon \\
        p &\leftarrow p\,(1 - \eta\lambda) \text{ (weight\_decouple)} \\
        p &\leftarrow p - \frac{\eta}{1-\beta_1^t}\,\frac{m}{\delta}
              - \frac{\eta\,\beta_2}{1-\beta_2^t}\,\frac{n}{\delta} \\
        p &\leftarrow p / (1 + \eta\lambda) \text{ (otherwise: the paper's proximal decay)}

    Parameters
    ----------
    params
        An array, a list of arrays or a list of parameter-group dicts.
    lr : float or schedule, default 1e-3
    betas : tuple of (float or schedule), default (0.98, 0.92, 0.99)
        The decay rates of the gradient's, the gradient difference's and the squared
        corrected gradient's averages (the paper's :math:`1 - \beta_i`).
    weight_decay : float, default 0
    weight_decouple : bool, default False
        Multiply the parameters by :math:`1 - \eta\lambda` before the update instead of
        dividing them by :math:`1 + \eta\lambda` after it (the official implementation's
        ``no_prox=True``).
    eps : float, default 1e-8
        Added to the bias-corrected :math:`\sqrt{v}`.
    maximize : bool, default False
        Ascend the objective instead of descending it.
    nonfinite, max_norm, norm_type, clip_value
        Gradient checks and clipping fused into the step, see :class:`~fastopt.Optimizer`.

    Notes
    -----
    State: ``exp_avg`` (:math:`m`), ``exp_avg_sq`` (:math:`v`), ``exp_avg_diff`` (:math:`n`),
    zero at first, and ``previous_grad``, the gradient of the last update (after unscaling,
    clipping and ``maximize``; the reference keeps its negation under that name). The first
    update's difference is 0, as in the reference. Unlike the reference, the step never
    writes the gradient, and with ``maximize`` the first difference is 0 too (the reference's
    is :math:`-2g`: it records the gradient before negating it). The reference's
    ``max_grad_norm`` (global-norm clipping with ``eps`` added to the norm) is left out: use
    the ``max_norm`` gradient option; so are its ``use_gc``, ``adanorm`` and ``foreach``
    keywords.

    Examples
    --------
    >>> import numpy as np, fastopt
    >>> w = np.zeros(2)
    >>> opt = fastopt.Adan(w, lr=0.1)
    >>> opt.step(np.array([1.0, -1.0]))
    >>> w.round(4)  # the first step moves by lr where the gradient is nonzero
    array([-0.1,  0.1])
    >>> sorted(opt.state[0])
    ['exp_avg', 'exp_avg_diff', 'exp_avg_sq', 'previous_grad', 'step']
    """,
)

_BUILT = build(RULE)
Adan = _BUILT.optimizer
adan_step = _BUILT.step
