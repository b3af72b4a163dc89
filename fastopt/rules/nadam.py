"""NAdam (Dozat, 2016), with torch's semantics: momentum decay and decoupled weight decay.

The update is written out in the class's docstring.
"""

from __future__ import annotations

import math

from fastopt._math import lerp, weight_decayed
from fastopt.rule import Rule, Scalar, State, betas, build, flag, real

__all__ = ["RULE", "NAdam", "nadam_step"]


def nadam_update(p, g, exp_avg, exp_avg_sq, h):
    """One element of an NAdam step, on values (torch's order of operations)."""
    p, g = weight_decayed(p, g, h)
    m = lerp(exp_avg, g, h.one_minus_beta1)
    v = exp_avg_sq * h.beta2 + h.one_minus_beta2 * g * g
    denom = math.sqrt(v / h.bias_correction2) + h.eps
    p = p + h.grad_coef * g / denom
    p = p + h.avg_coef * m / denom
    return p, m, v


def _mu(group, step):
    """The momentum coefficient of update ``step``."""
    return group["betas"][0] * (1.0 - 0.5 * 0.96 ** (step * group["momentum_decay"]))


def _advance_mu_product(group, step, mu_product, dtype):
    """torch's ``mu_product *= mu``, in the scalar type (float32 by default)."""
    return dtype.type(mu_product) * dtype.type(_mu(group, step))


def nadam_row(group, step, created, scalars):
    """The host row of update number ``step`` (``mu_product`` already includes it)."""
    beta1, beta2 = group["betas"]
    lr, weight_decay = group["lr"], group["weight_decay"]
    mu, mu_next = _mu(group, step), _mu(group, step + 1)
    mu_product = scalars["mu_product"]
    mu_product_next = mu_product * mu_next
    return (
        1.0 - beta1,
        beta2,
        1.0 - beta2,
        1.0 - beta2**step,
        group["eps"],
        weight_decay,
        1.0 - lr * weight_decay,
        group["decoupled_weight_decay"],
        -lr * (1.0 - mu) / (1.0 - mu_product),
        (-lr * mu_next) / (1.0 - mu_product_next),
    )


RULE = Rule(
    name="NAdam",
    update=nadam_update,
    fields=(
        "one_minus_beta1",
        "beta2",
        "one_minus_beta2",
        "bias_correction2",
        "eps",
        "weight_decay",
        "decay_factor",
        "decoupled",
        "grad_coef",
        "avg_coef",
    ),
    flags=frozenset({"decoupled"}),
    row=nadam_row,
    hyperparameters=(
        real("lr", 2e-3, scheduled=True),
        betas((0.9, 0.999)),
        real("eps", 1e-8),
        real("weight_decay", 0.0),
        real("momentum_decay", 4e-3),
        flag("decoupled_weight_decay"),
        flag("maximize", keyword_only=True),
    ),
    state=(State("exp_avg"), State("exp_avg_sq", nonnegative=True)),
    scalars=(Scalar("mu_product", 1.0, _advance_mu_product),),
    doc=r"""NAdam: Adam with Nesterov momentum, updating NumPy arrays in place, one fused pass.

    Same names, defaults and formulas as ``torch.optim.NAdam``, with
    :math:`\mu_t = \beta_1 (1 - \tfrac12\, 0.96^{t\psi})` (:math:`\psi` = ``momentum_decay``):

    .. math::

        p &\leftarrow p\,(1 - \eta\lambda) \text{ (decoupled)} \quad\text{or}\quad
        g \leftarrow g + \lambda p \\
        m &\leftarrow m + (1-\beta_1)(g - m) \qquad
        v \leftarrow \beta_2 v + (1-\beta_2) g^2 \qquad
        d = \sqrt{v / (1 - \beta_2^t)} + \epsilon \\
        p &\leftarrow p - \frac{\eta (1 - \mu_t)}{1 - \prod_{i \le t} \mu_i}\,\frac{g}{d}
              - \frac{\eta\, \mu_{t+1}}{1 - \prod_{i \le t+1} \mu_i}\,\frac{m}{d}

    Parameters
    ----------
    params
        An array, a list of arrays or a list of parameter-group dicts.
    lr : float or schedule, default 2e-3
    betas : tuple of (float or schedule), default (0.9, 0.999)
    eps : float, default 1e-8
    weight_decay : float, default 0
    momentum_decay : float, default 4e-3
    decoupled_weight_decay : bool, default False
        Decay the parameters directly (NAdamW) instead of adding :math:`\lambda p` to
        the gradient.
    maximize : bool, default False
        Ascend the objective instead of descending it.
    nonfinite, max_norm, norm_type, clip_value
        Gradient checks and clipping fused into the step, see :class:`~fastopt.Optimizer`.

    Notes
    -----
    State: ``exp_avg``, ``exp_avg_sq`` and ``mu_product`` (:math:`\prod_{i \le t} \mu_i`, a
    number per parameter kept in float32 as torch keeps it by default, so that a scheduled
    :math:`\beta_1` multiplies in the values it actually had).

    Examples
    --------
    >>> import numpy as np, fastopt
    >>> w = np.zeros(2)
    >>> opt = fastopt.NAdam(w, lr=0.1)
    >>> opt.step(np.array([1.0, -1.0]))
    >>> w.round(4)  # the momentum-corrected first step is a little longer than lr
    array([-0.1056,  0.1056])
    >>> sorted(opt.state[0])
    ['exp_avg', 'exp_avg_sq', 'mu_product', 'step']
    """,
)

_BUILT = build(RULE)
NAdam = _BUILT.optimizer
nadam_step = _BUILT.step
