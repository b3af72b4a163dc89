"""AdEMAMix (Pagliardini et al., 2024, "The AdEMAMix Optimizer: Better, Faster, Older"), as
the ``pytorch_optimizer`` package computes it.

The update is written out in the class's docstring.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from fastopt._checks import check_nonnegative
from fastopt._math import lerp, weight_decayed
from fastopt.rule import Hyperparameter, Rule, State, betas, build, flag, real

__all__ = ["RULE", "AdEMAMix", "ademamix_step"]


def ademamix_update(p, g, exp_avg, exp_avg_sq, exp_avg_slow, h):
    """One element of an AdEMAMix step, on values (the reference's order of operations)."""
    p, g = weight_decayed(p, g, h)
    m = lerp(exp_avg, g, h.one_minus_beta1)
    v = exp_avg_sq * h.beta2 + h.one_minus_beta2 * g * g
    s = lerp(exp_avg_slow, g, h.one_minus_beta3)
    denom = math.sqrt(v) / h.bias_correction2_sqrt + h.eps
    u = m / h.bias_correction1 + h.alpha * s
    return p + h.neg_lr * u / denom, m, v, s


def _schedules(group: Mapping[str, Any], step: int) -> tuple[float, float]:
    """The warmed-up ``alpha`` and ``beta3`` of update ``step`` (the reference's schedulers)."""
    beta1, _, beta3 = group["betas"]
    alpha, warmup = group["alpha"], group["t_alpha_beta3"]
    if warmup is None:
        return alpha, beta3
    log_beta1, log_beta3 = math.log(beta1), math.log(beta3)
    fraction = step / warmup
    beta3_t = math.exp(
        log_beta1 * log_beta3 / ((1.0 - fraction) * log_beta3 + fraction * log_beta1)
    )
    return min(step * alpha / warmup, alpha), min(beta3_t, beta3)


def ademamix_row(group, step, created, scalars):
    """The host row of update number ``step``: bias corrections and the warmup schedules."""
    beta1, beta2, _ = group["betas"]
    lr, weight_decay = group["lr"], group["weight_decay"]
    alpha_t, beta3_t = _schedules(group, step)
    return (
        1.0 - beta1,
        beta2,
        1.0 - beta2,
        1.0 - beta3_t,
        1.0 - beta1**step,
        math.sqrt(1.0 - beta2**step),
        alpha_t,
        group["eps"],
        weight_decay,
        group["weight_decouple"],
        1.0 - weight_decay * (1.0 if group["fixed_decay"] else lr),
        -lr,
    )


def check_warmup(name: str, value: object) -> float | None:
    """``t_alpha_beta3``: ``None`` (no warmup) or a finite number of steps ``> 0``."""
    if value is None:
        return None
    value = check_nonnegative(name, value)
    if value == 0:
        raise ValueError(f"Invalid {name}: {value} (must be > 0, or None for no warmup)")
    return value


def _check_warmup_betas(group: Mapping[str, Any]) -> None:
    if group["t_alpha_beta3"] is None:
        return
    beta1, _, beta3 = group["betas"]
    for name, beta in (("beta1", beta1), ("beta3", beta3)):
        if isinstance(beta, (int, float)) and beta == 0:
            raise ValueError(f"t_alpha_beta3 warms beta3 up in log space: {name} must be > 0")


RULE = Rule(
    name="AdEMAMix",
    update=ademamix_update,
    fields=(
        "one_minus_beta1",
        "beta2",
        "one_minus_beta2",
        "one_minus_beta3",
        "bias_correction1",
        "bias_correction2_sqrt",
        "alpha",
        "eps",
        "weight_decay",
        "decoupled",
        "decay_factor",
        "neg_lr",
    ),
    flags=frozenset({"decoupled"}),
    row=ademamix_row,
    hyperparameters=(
        real("lr", 1e-3, scheduled=True),
        betas((0.9, 0.999, 0.9999)),
        real("weight_decay", 0.0),
        flag("weight_decouple"),
        flag("fixed_decay"),
        real("alpha", 5.0),
        Hyperparameter("t_alpha_beta3", None, check_warmup, annotation="float | None"),
        real("eps", 1e-8),
        flag("maximize", keyword_only=True),
    ),
    state=(State("exp_avg"), State("exp_avg_sq", nonnegative=True), State("exp_avg_slow")),
    check=_check_warmup_betas,
    doc=r"""AdEMAMix: Adam with a second, slow momentum, updating NumPy arrays in place, one pass.

    Same names, defaults, signature order and formulas as ``pytorch_optimizer.AdEMAMix`` (the
    reference package; torch.optim has no AdEMAMix), with :math:`\alpha_t` and
    :math:`\beta_{3,t}` the warmed-up mixing weight and slow decay (below):

    .. math::

        p &\leftarrow p\,(1 - \eta\lambda) \text{ (weight\_decouple)} \quad\text{or}\quad
        g \leftarrow g + \lambda p \\
        m_1 &\leftarrow m_1 + (1-\beta_1)(g - m_1) \qquad
        v \leftarrow \beta_2 v + (1-\beta_2) g^2 \qquad
        m_2 \leftarrow m_2 + (1-\beta_{3,t})(g - m_2) \\
        p &\leftarrow p - \eta\,
            \frac{m_1 / (1-\beta_1^t) + \alpha_t m_2}{\sqrt{v} / \sqrt{1-\beta_2^t} + \epsilon}

    Parameters
    ----------
    params
        An array, a list of arrays or a list of parameter-group dicts.
    lr : float or schedule, default 1e-3
    betas : tuple of (float or schedule), default (0.9, 0.999, 0.9999)
        The fast momentum's, the second moment's and the slow momentum's decay rates.
    weight_decay : float, default 0
    weight_decouple : bool, default False
        Decay the parameters directly (AdamW's way) instead of adding :math:`\lambda p` to the
        gradient.
    fixed_decay : bool, default False
        With ``weight_decouple``, multiply by :math:`1 - \lambda` (not scaled by the
        learning rate).
    alpha : float, default 5.0
        The slow momentum's weight in the update.
    t_alpha_beta3 : float or None, default None
        Warm :math:`\alpha` and :math:`\beta_3` up over this many steps: with
        :math:`s = t / T`, :math:`\alpha_t = \min(s\alpha, \alpha)` and
        :math:`\beta_{3,t} = \min(\exp(\frac{\ln\beta_1 \ln\beta_3}
        {(1-s)\ln\beta_3 + s\ln\beta_1}), \beta_3)`; ``None``: no warmup.
    eps : float, default 1e-8
        Added to the bias-corrected :math:`\sqrt{v}`.
    maximize : bool, default False
        Ascend the objective instead of descending it.
    nonfinite, max_norm, norm_type, clip_value
        Gradient checks and clipping fused into the step, see :class:`~fastopt.Optimizer`.

    Notes
    -----
    State: ``exp_avg`` (:math:`m_1`), ``exp_avg_sq`` (:math:`v`) and ``exp_avg_slow``
    (:math:`m_2`), zero at first. The schedules and bias corrections are computed in float64
    on the host and rounded once to the parameters' dtype. Unlike the reference, the step never
    writes the gradient (the reference negates it and adds the weight decay to it in place).
    The reference's extra keywords (``cautious``, ``stable_adamw``, ``foreach``) are not
    offered; with ``t_alpha_beta3``, :math:`\beta_1` and :math:`\beta_3` must be > 0 (the
    warmup takes their logarithms), and ``t_alpha_beta3=0`` is refused (the reference
    divides by it).

    Examples
    --------
    >>> import numpy as np, fastopt
    >>> w = np.zeros(2)
    >>> opt = fastopt.AdEMAMix(w, lr=1.0)
    >>> opt.step(np.array([1.0, -1.0]))
    >>> w.round(4)  # the slow momentum adds alpha * (1 - beta3) to the first step
    array([-1.0005,  1.0005])
    """,
)

_BUILT = build(RULE)
AdEMAMix = _BUILT.optimizer
ademamix_step = _BUILT.step
