"""Adam and AdamW (Kingma & Ba, 2015; Loshchilov & Hutter, 2019), with torch's semantics.

The update is written out in the class's docstring.
"""

from __future__ import annotations

import math

from fastopt._math import weight_decayed
from fastopt.rule import Rule, State, betas, build, flag, real, variant

__all__ = ["RULE", "Adam", "AdamW", "adam_step"]


def adam_update(p, g, exp_avg, exp_avg_sq, max_exp_avg_sq, h):
    """One element of an Adam step, on values."""
    p, g = weight_decayed(p, g, h)
    m = exp_avg + h.one_minus_beta1 * (g - exp_avg)
    v = h.beta2 * exp_avg_sq + h.one_minus_beta2 * g * g
    v_max = max_exp_avg_sq
    second_moment = v
    if max_exp_avg_sq is not None:
        # A comparison (not max()) vectorizes; NaN in v propagates.
        v_max = max_exp_avg_sq if max_exp_avg_sq > v else v
        second_moment = v_max
    denominator = math.sqrt(second_moment) / h.bias_correction2_sqrt + h.eps
    return p - h.step_size * (m / denominator), m, v, v_max


def adam_row(group, step, created, scalars):
    """The host row of update number ``step``: bias corrections in float64."""
    beta1, beta2 = group["betas"]
    lr, weight_decay = group["lr"], group["weight_decay"]
    return (
        lr / (1.0 - beta1**step),
        1.0 - beta1,
        beta2,
        1.0 - beta2,
        group["eps"],
        math.sqrt(1.0 - beta2**step),
        weight_decay,
        1.0 - lr * weight_decay,
        group["decoupled_weight_decay"],
    )


RULE = Rule(
    name="Adam",
    update=adam_update,
    fields=(
        "step_size",
        "one_minus_beta1",
        "beta2",
        "one_minus_beta2",
        "eps",
        "bias_correction2_sqrt",
        "weight_decay",
        "decay_factor",
        "decoupled",
    ),
    flags=frozenset({"decoupled"}),
    row=adam_row,
    hyperparameters=(
        real("lr", 1e-3, scheduled=True),
        betas((0.9, 0.999)),
        real("eps", 1e-8),
        real("weight_decay", 0.0),
        flag("amsgrad"),
        flag("maximize", keyword_only=True),
        flag("decoupled_weight_decay", keyword_only=True),
    ),
    state=(
        State("exp_avg"),
        State("exp_avg_sq", nonnegative=True),
        State("max_exp_avg_sq", present=lambda group: group["amsgrad"], nonnegative=True),
    ),
    doc=r"""Adam, updating NumPy arrays in place with one fused pass per array.

    Same names, defaults and formulas as ``torch.optim.Adam`` (eps added to the
    bias-corrected :math:`\sqrt{\hat v}`, outside the square root):

    .. math::

        g &\leftarrow g + \lambda p \quad\text{(L2, unless decoupled)} \qquad
        p \leftarrow p\,(1 - \eta\lambda) \quad\text{(decoupled, AdamW)} \\
        m &\leftarrow m + (1-\beta_1)(g - m) \qquad
        v \leftarrow \beta_2 v + (1-\beta_2) g^2 \qquad
        \hat v = \max(\hat v, v) \text{ if amsgrad} \\
        p &\leftarrow p - \frac{\eta}{1-\beta_1^t}\,
              \frac{m}{\sqrt{v}/\sqrt{1-\beta_2^t} + \epsilon}

    Parameters
    ----------
    params
        An array, a list of arrays or a list of parameter-group dicts.
    lr : float or schedule, default 1e-3
    betas : tuple of (float or schedule), default (0.9, 0.999)
    eps : float, default 1e-8
    weight_decay : float, default 0
        L2 penalty added to the gradient (Adam), or decoupled decay (AdamW).
    amsgrad : bool, default False
        Use the running maximum of the second moment (Reddi et al., 2018).
    maximize : bool, default False
        Ascend the objective instead of descending it.
    decoupled_weight_decay : bool, default False
        Decay the parameters directly, as AdamW does.
    nonfinite, max_norm, norm_type, clip_value
        Gradient checks and clipping fused into the step, see :class:`~fastopt.Optimizer`.

    Notes
    -----
    Conventions: optax's ``adam`` puts eps the same way (``eps_root=0``); Keras adds an
    ``epsilon`` with a different scaling (``epsilon_hat``). Bias corrections are computed in
    float64 on the host and rounded once to the parameters' dtype.

    Examples
    --------
    >>> import numpy as np, fastopt
    >>> w = np.zeros(4, np.float32)
    >>> opt = fastopt.Adam(w, lr=0.1)
    >>> opt.step(2 * (w - 1))
    >>> w.round(6)
    array([0.1, 0.1, 0.1, 0.1], dtype=float32)
    >>> p = np.ones(3, np.float32); g = np.full(3, 0.5, np.float32)  # the functional step
    >>> m, v = np.zeros_like(p), np.zeros_like(p)
    >>> fastopt.adam_step(p, g, m, v, lr=0.1, step=1)
    >>> p.round(6)  # the first step moves each element by lr
    array([0.9, 0.9, 0.9], dtype=float32)
    """,
)

_BUILT = build(RULE)
Adam = _BUILT.optimizer
adam_step = _BUILT.step
AdamW = variant(
    _BUILT,
    "AdamW",
    defaults={"weight_decay": 1e-2},
    fixed={"decoupled_weight_decay": True},
    doc="""AdamW: :class:`Adam` with decoupled weight decay, default ``weight_decay=1e-2``.

    Same as ``torch.optim.AdamW``: each step first multiplies the parameters by
    ``1 - lr * weight_decay``, then applies the Adam update without the decay term.

    Examples
    --------
    >>> import numpy as np, fastopt
    >>> w = np.ones(2)
    >>> opt = fastopt.AdamW(w, lr=0.1, weight_decay=0.5)
    >>> opt.step(np.zeros(2))
    >>> w
    array([0.95, 0.95])
    """,
)
