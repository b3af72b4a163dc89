"""RAdam (Liu et al., 2020), with torch's semantics: Adam with a rectified adaptive step.

The update is written out in the class's docstring.
"""

from __future__ import annotations

import math

from fastopt._math import lerp, weight_decayed
from fastopt.rule import Rule, State, betas, build, flag, real

__all__ = ["RULE", "RAdam", "radam_step"]


def radam_update(p, g, exp_avg, exp_avg_sq, h):
    """One element of a RAdam step, on values (torch's order of operations)."""
    p, g = weight_decayed(p, g, h)
    m = lerp(exp_avg, g, h.one_minus_beta1)
    v = exp_avg_sq * h.beta2 + h.one_minus_beta2 * g * g
    if h.rectified:
        p = p + h.neg_step_size * m * (h.sqrt_bias_correction2 / (math.sqrt(v) + h.eps))
    else:
        p = p + h.neg_step_size * m
    return p, m, v


def radam_row(group, step, created, scalars):
    """The host row of update number ``step``: the bias corrections and, once the length of
    the approximated simple moving average exceeds 5, the rectification term."""
    beta1, beta2 = group["betas"]
    lr, weight_decay = group["lr"], group["weight_decay"]
    bias_correction1 = 1.0 - beta1**step
    bias_correction2 = 1.0 - beta2**step
    rho_inf = 2.0 / (1.0 - beta2) - 1.0
    rho_t = rho_inf - 2.0 * step * beta2**step / bias_correction2
    rectified = rho_t > 5.0
    step_size = lr / bias_correction1
    if rectified:
        rect = (
            (rho_t - 4.0) * (rho_t - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t)
        ) ** 0.5
        step_size *= rect
    return (
        1.0 - beta1,
        beta2,
        1.0 - beta2,
        group["eps"],
        weight_decay,
        1.0 - lr * weight_decay,
        group["decoupled_weight_decay"],
        rectified,
        -step_size,
        math.sqrt(bias_correction2),
    )


RULE = Rule(
    name="RAdam",
    update=radam_update,
    fields=(
        "one_minus_beta1",
        "beta2",
        "one_minus_beta2",
        "eps",
        "weight_decay",
        "decay_factor",
        "decoupled",
        "rectified",
        "neg_step_size",
        "sqrt_bias_correction2",
    ),
    flags=frozenset({"decoupled", "rectified"}),
    row=radam_row,
    hyperparameters=(
        real("lr", 1e-3, scheduled=True),
        betas((0.9, 0.999)),
        real("eps", 1e-8),
        real("weight_decay", 0.0),
        flag("decoupled_weight_decay"),
        flag("maximize", keyword_only=True),
    ),
    state=(State("exp_avg"), State("exp_avg_sq", nonnegative=True)),
    doc=r"""RAdam: Adam whose adaptive step is rectified (or left out) while the variance
    estimate is unreliable, updating NumPy arrays in place, one fused pass.

    Same names, defaults and formulas as ``torch.optim.RAdam``, with
    :math:`\rho_\infty = 2 / (1 - \beta_2) - 1` and
    :math:`\rho_t = \rho_\infty - 2 t \beta_2^t / (1 - \beta_2^t)`:

    .. math::

        p &\leftarrow p\,(1 - \eta\lambda) \text{ (decoupled)} \quad\text{or}\quad
        g \leftarrow g + \lambda p \\
        m &\leftarrow m + (1-\beta_1)(g - m) \qquad
        v \leftarrow \beta_2 v + (1-\beta_2) g^2 \\
        p &\leftarrow p - \frac{\eta}{1 - \beta_1^t}\, m \cdot
            \begin{cases}
            r_t\, \dfrac{\sqrt{1 - \beta_2^t}}{\sqrt{v} + \epsilon} & \rho_t > 5 \\
            1 & \text{otherwise}
            \end{cases} \qquad
        r_t = \sqrt{\frac{(\rho_t - 4)(\rho_t - 2)\rho_\infty}
                         {(\rho_\infty - 4)(\rho_\infty - 2)\rho_t}}

    Parameters
    ----------
    params
        An array, a list of arrays or a list of parameter-group dicts.
    lr : float or schedule, default 1e-3
    betas : tuple of (float or schedule), default (0.9, 0.999)
    eps : float, default 1e-8
        Added to :math:`\sqrt{v}` (torch's convention).
    weight_decay : float, default 0
    decoupled_weight_decay : bool, default False
        Decay the parameters directly (RAdamW) instead of adding :math:`\lambda p` to
        the gradient.
    maximize : bool, default False
        Ascend the objective instead of descending it.
    nonfinite, max_norm, norm_type, clip_value
        Gradient checks and clipping fused into the step, see :class:`~fastopt.Optimizer`.

    Notes
    -----
    State: ``exp_avg`` (:math:`m`) and ``exp_avg_sq`` (:math:`v`), zero at first. The
    rectification term and the choice between the two updates are computed on the host in
    float64 for each step, so one kernel serves both (with the default betas the first five
    steps are plain bias-corrected momentum steps).

    Examples
    --------
    >>> import numpy as np, fastopt
    >>> w = np.zeros(2)
    >>> opt = fastopt.RAdam(w, lr=0.1)
    >>> opt.step(np.array([1.0, -1.0]))
    >>> w.round(6)  # not rectified yet: a momentum step of lr
    array([-0.1,  0.1])
    >>> sorted(opt.state[0])
    ['exp_avg', 'exp_avg_sq', 'step']
    """,
)

_BUILT = build(RULE)
RAdam = _BUILT.optimizer
radam_step = _BUILT.step
