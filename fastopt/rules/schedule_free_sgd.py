"""Schedule-Free SGD (Defazio et al., 2024), as ``schedulefree.SGDScheduleFree`` computes it.

The update is written out in the class's docstring; what both Schedule-Free rules share (the
per-group averaging weights, ``train()`` and ``eval()``) is in
:mod:`fastopt.rules._schedule_free`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastopt._math import lerp
from fastopt.rule import Hyperparameter, Rule, State, build, real
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

__all__ = ["RULE", "ScheduleFreeSGD", "schedule_free_sgd_step"]


def schedule_free_sgd_update(p, g, z, h):
    """One element of a Schedule-Free SGD step on ``y`` (the parameter) and ``z``."""
    if h.weight_decay != 0:
        g = g + h.weight_decay * p
    y = lerp(p, z, h.average_weight)
    return y + h.y_step * g, z - h.lr * g


def schedule_free_sgd_row(group, step, created, scalars):
    """The host row, from the group's averaging state (advanced for this update)."""
    c, y_step, lr = averaging(group, group["momentum"])
    return (group["weight_decay"], c, y_step, lr)


def _check_momentum(name: str, value: object) -> float:
    value = real(name, 0.0).check(name, value)
    if not 0.0 < value < 1.0:
        raise ValueError(f"Invalid {name}: {value} (must be in (0, 1))")
    return value


def _momentum(group: Mapping[str, Any]) -> float:
    return group["momentum"]


RULE = Rule(
    name="ScheduleFreeSGD",
    update=schedule_free_sgd_update,
    fields=("weight_decay", "average_weight", "y_step", "lr"),
    row=schedule_free_sgd_row,
    hyperparameters=(
        real("lr", 1.0, scheduled=True),
        Hyperparameter("momentum", 0.9, _check_momentum),
        real("weight_decay", 0.0),
        WARMUP_STEPS,
        R,
        WEIGHT_LR_POWER,
    ),
    state=(State("z", from_param=True, quantizable=False),),
    group_state=GROUP_STATE,
    advance_group=advance_group,
    ready=require_training,
    methods=mode_methods(_momentum),
    maximize=None,
    counts_steps=False,
    doc=r"""Schedule-Free SGD: no learning-rate schedule, an average of the iterates instead.

    Same names, defaults and formulas as ``schedulefree.SGDScheduleFree`` (the reference
    package), ``train()`` and ``eval()`` included. With :math:`\beta` the momentum, the
    parameter holds :math:`y` during training, :math:`z` is state, and each step, with
    :math:`\gamma_t` the lr after warmup (:math:`\eta \min(1, t / \text{warmup})`) and
    :math:`c_t = w_t / \sum_{i \le t} w_i`, :math:`w_t = t^r (\max_{i \le t}
    \gamma_i)^{\text{weight\_lr\_power}}`:

    .. math::

        g &\leftarrow g + \lambda y \\
        y &\leftarrow (1 - c_t)\, y + c_t z + \gamma_t (\beta (1 - c_t) - 1)\, g \\
        z &\leftarrow z - \gamma_t g

    :meth:`eval` moves the parameters to the average :math:`x = (y - (1-\beta) z) / \beta`,
    :meth:`train` back to :math:`y = (1-\beta) z + \beta x`. The optimizer starts in
    evaluation mode: call ``train()`` before the first step (a step in evaluation mode raises
    ``RuntimeError``), ``eval()`` before evaluating or saving the model.

    Parameters
    ----------
    params
        An array, a list of arrays or a list of parameter-group dicts.
    lr : float or schedule, default 1.0
    momentum : float in (0, 1), default 0.9
        :math:`\beta`, the interpolation between :math:`z` and the average.
    weight_decay : float, default 0
        :math:`\lambda`, taken at :math:`y`.
    warmup_steps : int, default 0
        Steps of linear warmup of the lr (no schedule is needed otherwise).
    r : float, default 0
        The average's weights grow as :math:`t^r`.
    weight_lr_power : float, default 2
        ... and as the largest lr so far to this power.
    nonfinite, max_norm, norm_type, clip_value
        Gradient checks and clipping fused into the step, see :class:`~fastopt.Optimizer`.

    Notes
    -----
    State: ``z``, a copy of the parameter at its first step. Each parameter group keeps the
    package's ``k``, ``train_mode``, ``weight_sum``, ``lr_max`` and ``scheduled_lr`` (in
    ``param_groups``, hence in ``state_dict()``). There is no ``maximize`` (the package has
    none); the package's ``foreach`` is not taken (the step is one fused pass).

    Examples
    --------
    >>> import numpy as np, fastopt
    >>> w = np.array([1.0, -2.0])
    >>> opt = fastopt.ScheduleFreeSGD(w, lr=0.5)
    >>> opt.train()
    >>> opt.step(np.array([1.0, 1.0]))
    >>> w  # y after one step: z moved by -lr g, y by lr (beta (1 - 1) - 1) g
    array([ 0.5, -2.5])
    >>> opt.eval()
    >>> w  # x, the average (here the one z iterate so far)
    array([ 0.5, -2.5])
    """,
)

_BUILT = build(RULE)
ScheduleFreeSGD = _BUILT.optimizer
schedule_free_sgd_step = _BUILT.step
