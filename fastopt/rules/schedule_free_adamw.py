"""Schedule-Free AdamW (Defazio et al., 2024), as ``schedulefree.AdamWScheduleFree`` computes
it.

The update is written out in the class's docstring; what both Schedule-Free rules share (the
per-group averaging weights, ``train()`` and ``eval()``) is in
:mod:`fastopt.rules._schedule_free`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from fastopt._math import lerp
from fastopt.rule import Rule, State, betas, build, real
from fastopt.rules._schedule_free import (
    GROUP_STATE,
    WARMUP_STEPS,
    WEIGHT_LR_POWER,
    R,
    advance_group,
    averaging,
    mode_methods,
    require_training,
)

__all__ = ["RULE", "ScheduleFreeAdamW", "schedule_free_adamw_step"]


def schedule_free_adamw_update(p, g, z, exp_avg_sq, h):
    """One element of a Schedule-Free AdamW step on ``y`` (the parameter), ``z`` and ``v``."""
    v = exp_avg_sq * h.beta2 + h.one_minus_beta2 * g * g
    u = g / (math.sqrt(v / h.bias_correction2) + h.eps)
    if h.weight_decay != 0:
        u = u + h.weight_decay * p
    y = lerp(p, z, h.average_weight)
    return y + h.y_step * u, z - h.lr * u, v


def schedule_free_adamw_row(group, step, created, scalars):
    """The host row, from the group's averaging state (advanced for this update)."""
    beta1, beta2 = group["betas"]
    c, y_step, lr = averaging(group, beta1)
    return (
        beta2,
        1.0 - beta2,
        1.0 - beta2 ** group["k"],
        group["eps"],
        group["weight_decay"],
        c,
        y_step,
        lr,
    )


def _check(group: Mapping[str, Any]) -> None:
    if group["betas"][0] == 0:
        raise ValueError("Invalid beta1 (betas[0]): 0 (must be > 0: eval() divides by it)")


def _beta1(group: Mapping[str, Any]) -> float:
    return group["betas"][0]


RULE = Rule(
    name="ScheduleFreeAdamW",
    update=schedule_free_adamw_update,
    fields=(
        "beta2",
        "one_minus_beta2",
        "bias_correction2",
        "eps",
        "weight_decay",
        "average_weight",
        "y_step",
        "lr",
    ),
    row=schedule_free_adamw_row,
    hyperparameters=(
        real("lr", 0.0025, scheduled=True),
        betas((0.9, 0.999)),
        real("eps", 1e-8),
        real("weight_decay", 0.0),
        WARMUP_STEPS,
        R,
        WEIGHT_LR_POWER,
    ),
    state=(State("z", from_param=True, quantizable=False), State("exp_avg_sq", nonnegative=True)),
    check=_check,
    group_state=GROUP_STATE,
    advance_group=advance_group,
    ready=require_training,
    methods=mode_methods(_beta1),
    maximize=None,
    counts_steps=False,
    doc=r"""Schedule-Free AdamW: no learning-rate schedule, an average of the iterates instead.

    Same names, defaults and formulas as ``schedulefree.AdamWScheduleFree`` (the reference
    package), ``train()`` and ``eval()`` included. The parameter holds :math:`y` during
    training; :math:`z` and :math:`v` are state. Each step :math:`k`, with :math:`\gamma_k` the
    lr after warmup (:math:`\eta \min(1, k / \text{warmup})`) and :math:`c_k = w_k /
    \sum_{i \le k} w_i`, :math:`w_k = k^r (\max_{i \le k} \gamma_i)^{\text{weight\_lr\_power}}`:

    .. math::

        v &\leftarrow \beta_2 v + (1-\beta_2) g^2 \\
        u &= \frac{g}{\sqrt{v / (1 - \beta_2^k)} + \epsilon} + \lambda y \\
        y &\leftarrow (1 - c_k)\, y + c_k z + \gamma_k (\beta_1 (1 - c_k) - 1)\, u \\
        z &\leftarrow z - \gamma_k u

    :meth:`eval` moves the parameters to the average :math:`x = (y - (1-\beta_1) z) /
    \beta_1`, :meth:`train` back to :math:`y`. The optimizer starts in evaluation mode: call
    ``train()`` before the first step (a step in evaluation mode raises ``RuntimeError``),
    ``eval()`` before evaluating or saving the model.

    Parameters
    ----------
    params
        An array, a list of arrays or a list of parameter-group dicts.
    lr : float or schedule, default 0.0025
    betas : tuple of (float or schedule), default (0.9, 0.999)
        :math:`\beta_1 > 0` interpolates between :math:`z` and the average, :math:`\beta_2`
        decays :math:`v`.
    eps : float, default 1e-8
    weight_decay : float, default 0
        :math:`\lambda`, taken at :math:`y`.
    warmup_steps : int, default 0
        Steps of linear warmup of the lr.
    r : float, default 0
        The average's weights grow as :math:`k^r`.
    weight_lr_power : float, default 2
        ... and as the largest lr so far to this power.
    nonfinite, max_norm, norm_type, clip_value
        Gradient checks and clipping fused into the step, see :class:`~fastopt.Optimizer`.

    Notes
    -----
    State: ``z`` (a copy of the parameter at its first step) and ``exp_avg_sq``
    (:math:`v`, zero). Each parameter group keeps the package's ``k``, ``train_mode``,
    ``weight_sum``, ``lr_max`` and ``scheduled_lr`` (in ``param_groups``, hence in
    ``state_dict()``). There is no ``maximize`` (the package has none); the package's
    ``foreach`` is not taken (the step is one fused pass). One step moves 28 bytes per float32
    element, as Adam.

    Examples
    --------
    >>> import numpy as np, fastopt
    >>> w = np.array([1.0, -2.0])
    >>> opt = fastopt.ScheduleFreeAdamW(w, lr=0.1)
    >>> opt.train()
    >>> opt.step(np.array([0.5, -4.0]))
    >>> w  # the first step moves each coordinate by about lr * sign(g)
    array([ 0.9, -1.9])
    """,
)

_BUILT = build(RULE)
ScheduleFreeAdamW = _BUILT.optimizer
schedule_free_adamw_step = _BUILT.step
