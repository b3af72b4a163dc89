"""Rprop (Riedmiller & Braun, 1993), with torch's semantics.

The update is written out in the class's docstring.
"""

from __future__ import annotations

import math

from fastopt._checks import check_real
from fastopt.rule import Hyperparameter, Rule, State, build, flag, real

__all__ = ["RULE", "Rprop", "rprop_step"]


def rprop_update(p, g, prev, step_size, h):
    """One element of an Rprop step, on values (torch's sign logic)."""
    one = type(g)(1.0)
    zero = type(g)(0.0)
    s = g * prev
    factor = one
    if s > 0:
        factor = h.etaplus
    elif s < 0:
        factor = h.etaminus
        g = zero  # a sign change: no move, and the next step takes the size as it is
    size = step_size * factor
    if size < h.step_size_min:
        size = h.step_size_min
    if size > h.step_size_max:
        size = h.step_size_max
    # torch.sign: 0 for 0 and for NaN (a NaN gradient leaves the parameter as it is).
    sign = one if g > 0 else (-one if g < 0 else zero)
    return p - sign * size, g, size


def rprop_row(group, step, created, scalars):
    """The host row (no per-step terms; ``lr`` is only the initial step size)."""
    etaminus, etaplus = group["etas"]
    step_size_min, step_size_max = group["step_sizes"]
    return (etaminus, etaplus, step_size_min, step_size_max)


def check_etas(name, value):
    """``(etaminus, etaplus)`` with ``0 < etaminus < 1 < etaplus``, as torch checks them."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"{name} must be a pair (etaminus, etaplus), got {value!r}")
    etaminus, etaplus = (check_real(f"{name}[{k}]", eta) for k, eta in enumerate(value))
    if not (0.0 < etaminus < 1.0 < etaplus and math.isfinite(etaplus)):
        raise ValueError(f"Invalid eta values: {etaminus}, {etaplus}")
    return etaminus, etaplus


def check_step_sizes(name, value):
    """``(min, max)``: the bounds of the step sizes, ``0 <= min <= max`` (max may be inf)."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"{name} must be a pair (min, max), got {value!r}")
    low, high = (check_real(f"{name}[{k}]", size) for k, size in enumerate(value))
    if not (0.0 <= low <= high and math.isfinite(low)):
        raise ValueError(f"Invalid {name}: {low}, {high} (must be 0 <= min <= max)")
    return low, high


RULE = Rule(
    name="Rprop",
    update=rprop_update,
    fields=("etaminus", "etaplus", "step_size_min", "step_size_max"),
    row=rprop_row,
    hyperparameters=(
        real("lr", 1e-2),
        Hyperparameter("etas", (0.5, 1.2), check_etas, annotation="tuple[float, float]"),
        Hyperparameter(
            "step_sizes", (1e-6, 50), check_step_sizes, annotation="tuple[float, float]"
        ),
        flag("maximize", keyword_only=True),
    ),
    state=(State("prev"), State("step_size", initial=lambda group: group["lr"], nonnegative=True)),
    counts_steps=False,
    doc=r"""Rprop: a step size per element, grown while the gradient keeps its sign and shrunk
    when it flips, updating NumPy arrays in place, one fused pass.

    Same names, defaults and formulas as ``torch.optim.Rprop``, with
    :math:`(\eta^-, \eta^+)` = ``etas`` and :math:`[s_{\min}, s_{\max}]` = ``step_sizes``:

    .. math::

        s &\leftarrow \operatorname{clamp}\bigl(s \cdot
            \begin{cases} \eta^+ & g\,g_{\text{prev}} > 0 \\
                          \eta^- & g\,g_{\text{prev}} < 0 \\
                          1 & \text{otherwise} \end{cases},\ s_{\min},\ s_{\max}\bigr) \qquad
        g \leftarrow 0 \text{ where } g\,g_{\text{prev}} < 0 \\
        p &\leftarrow p - \operatorname{sign}(g)\, s \qquad g_{\text{prev}} \leftarrow g

    Parameters
    ----------
    params
        An array, a list of arrays or a list of parameter-group dicts.
    lr : float, default 1e-2
        The initial step size of every element (later changes of ``lr`` have no effect).
    etas : tuple of float, default (0.5, 1.2)
        :math:`(\eta^-, \eta^+)`, with :math:`0 < \eta^- < 1 < \eta^+`.
    step_sizes : tuple of float, default (1e-6, 50)
        The smallest and the largest step size.
    maximize : bool, default False
        Ascend the objective instead of descending it.
    nonfinite, max_norm, norm_type, clip_value
        Gradient checks and clipping fused into the step, see :class:`~fastopt.Optimizer`.

    Notes
    -----
    State: ``prev`` (:math:`g_{\text{prev}}`, zero at first) and ``step_size`` (:math:`s`,
    ``lr`` at first). As in torch, where the gradient's sign flipped the element does not move
    and ``prev`` stores 0, so the next step leaves its size alone; the sign of 0 and of NaN is
    0 (``torch.sign``), so a NaN gradient leaves its element where it is.

    Examples
    --------
    >>> import numpy as np, fastopt
    >>> w = np.zeros(2)
    >>> opt = fastopt.Rprop(w, lr=0.1)
    >>> opt.step(np.array([1.0, -1.0]))
    >>> opt.step(np.array([2.0, 1.0]))  # same sign: a longer step; a flip: no move
    >>> w.round(6)
    array([-0.22,  0.1 ])
    >>> opt.state[0]["step_size"].round(6), opt.state[0]["prev"]
    (array([0.12, 0.05]), array([2., 0.]))
    """,
)

_BUILT = build(RULE)
Rprop = _BUILT.optimizer
rprop_step = _BUILT.step
