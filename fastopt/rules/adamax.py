"""Adamax (Kingma & Ba, 2015, section 7.1), with torch's semantics.

The update is written out in the class's docstring.
"""

from __future__ import annotations

from fastopt._math import lerp, maximum
from fastopt.rule import Rule, State, betas, build, flag, real

__all__ = ["RULE", "Adamax", "adamax_step"]


def adamax_update(p, g, exp_avg, exp_inf, h):
    """One element of an Adamax step, on values."""
    if h.weight_decay != 0:
        g = g + h.weight_decay * p
    m = lerp(exp_avg, g, h.one_minus_beta1)
    u = maximum(h.beta2 * exp_inf, abs(g) + h.eps)
    return p + h.neg_step_size * m / u, m, u


def adamax_row(group, step, created, scalars):
    """The host row of update number ``step``: the bias-corrected step size."""
    beta1, beta2 = group["betas"]
    return (
        1.0 - beta1,
        beta2,
        group["eps"],
        group["weight_decay"],
        -group["lr"] / (1.0 - beta1**step),
    )


RULE = Rule(
    name="Adamax",
    update=adamax_update,
    fields=("one_minus_beta1", "beta2", "eps", "weight_decay", "neg_step_size"),
    row=adamax_row,
    hyperparameters=(
        real("lr", 2e-3, scheduled=True),
        betas((0.9, 0.999)),
        real("eps", 1e-8),
        real("weight_decay", 0.0),
        flag("maximize", keyword_only=True),
    ),
    state=(State("exp_avg"), State("exp_inf", nonnegative=True)),
    doc=r"""Adamax: Adam with the infinity norm, updating NumPy arrays in place, one fused pass.

    Same names, defaults and formulas as ``torch.optim.Adamax``:

    .. math::

        g &\leftarrow g + \lambda p \\
        m &\leftarrow m + (1-\beta_1)(g - m) \qquad
        u \leftarrow \max(\beta_2 u,\ |g| + \epsilon) \\
        p &\leftarrow p - \frac{\eta}{1-\beta_1^t}\,\frac{m}{u}

    Parameters
    ----------
    params
        An array, a list of arrays or a list of parameter-group dicts.
    lr : float or schedule, default 2e-3
    betas : tuple of (float or schedule), default (0.9, 0.999)
    eps : float, default 1e-8
        Added to :math:`|g|` before the maximum (torch's convention).
    weight_decay : float, default 0
        L2 penalty added to the gradient.
    maximize : bool, default False
        Ascend the objective instead of descending it.
    nonfinite, max_norm, norm_type, clip_value
        Gradient checks and clipping fused into the step, see :class:`~fastopt.Optimizer`.

    Notes
    -----
    State: ``exp_avg`` (:math:`m`) and ``exp_inf`` (:math:`u`), zero at first. A NaN in
    :math:`\beta_2 u` or :math:`|g| + \epsilon` propagates (``torch.maximum``).

    Examples
    --------
    >>> import numpy as np, fastopt
    >>> w = np.zeros(3)
    >>> opt = fastopt.Adamax(w, lr=0.1)
    >>> opt.step(np.array([1.0, -2.0, 0.0]))
    >>> w.round(6)  # the first step moves by lr where the gradient is nonzero
    array([-0.1,  0.1,  0. ])
    """,
)

_BUILT = build(RULE)
Adamax = _BUILT.optimizer
adamax_step = _BUILT.step
