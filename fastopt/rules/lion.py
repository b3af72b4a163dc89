"""Lion (Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms"), as the
``lion-pytorch`` package computes it.

The update is written out in the class's docstring.
"""

from __future__ import annotations

from fastopt.rule import Rule, State, betas, build, real

__all__ = ["RULE", "Lion", "lion_step"]


def lion_update(p, g, exp_avg, h):
    """One element of a Lion step, on values (``lion_pytorch``'s order of operations)."""
    if h.weight_decay != 0:
        p = p * h.decay_factor
    c = exp_avg * h.beta1 + g * h.one_minus_beta1
    # p - lr * sign(c) with comparisons (no constants): 0 for 0, as torch.sign; a NaN c makes
    # p NaN (fastopt's propagation; torch.sign gives 0 for NaN).
    if c > 0:
        p = p - h.lr
    elif c < 0:
        p = p + h.lr
    elif c != c:
        p = p + c
    return p, exp_avg * h.beta2 + g * h.one_minus_beta2


def lion_row(group, step, created, scalars):
    """The host row: Lion's step does not depend on the update count."""
    beta1, beta2 = group["betas"]
    lr, weight_decay = group["lr"], group["weight_decay"]
    return (lr, beta1, 1.0 - beta1, beta2, 1.0 - beta2, weight_decay, 1.0 - lr * weight_decay)


RULE = Rule(
    name="Lion",
    update=lion_update,
    fields=(
        "lr",
        "beta1",
        "one_minus_beta1",
        "beta2",
        "one_minus_beta2",
        "weight_decay",
        "decay_factor",
    ),
    row=lion_row,
    hyperparameters=(
        real("lr", 1e-4, scheduled=True),
        betas((0.9, 0.99)),
        real("weight_decay", 0.0),
    ),
    state=(State("exp_avg"),),
    maximize=None,
    counts_steps=False,
    doc=r"""Lion: the sign of an interpolated momentum, updating NumPy arrays in place, one pass.

    Same names, defaults and formulas as ``lion_pytorch.Lion`` (the reference package; torch.optim
    has no Lion):

    .. math::

        p &\leftarrow p\,(1 - \eta\lambda) \\
        p &\leftarrow p - \eta\,\operatorname{sign}(\beta_1 m + (1-\beta_1) g) \\
        m &\leftarrow \beta_2 m + (1-\beta_2) g

    Parameters
    ----------
    params
        An array, a list of arrays or a list of parameter-group dicts.
    lr : float or schedule, default 1e-4
        The length of every coordinate's step (Lion's steps are signs, so its learning rate is
        usually 3-10 times smaller than AdamW's).
    betas : tuple of (float or schedule), default (0.9, 0.99)
        :math:`\beta_1` interpolates the update, :math:`\beta_2` decays the momentum.
    weight_decay : float, default 0
        Decoupled: the parameters are multiplied by :math:`1 - \eta\lambda` before the update.
    nonfinite, max_norm, norm_type, clip_value
        Gradient checks and clipping fused into the step, see :class:`~fastopt.Optimizer`.

    Notes
    -----
    State: ``exp_avg`` (:math:`m`), zero at first. The sign of 0 is 0 (``torch.sign``). A NaN
    in :math:`\beta_1 m + (1-\beta_1) g` makes the parameter NaN, as NaN gradients propagate
    everywhere in fastopt; the reference takes ``torch.sign``'s 0 for NaN instead, so there the
    parameter stops moving while :math:`m` stays NaN. There is no ``maximize`` (the reference
    has none: negate the gradient). The reference's ``decoupled_weight_decay=True`` (the decay
    divided by the initial learning rate) and ``use_triton`` are not offered: pass
    ``weight_decay / lr`` for the former.

    Examples
    --------
    >>> import numpy as np, fastopt
    >>> w = np.zeros(3)
    >>> opt = fastopt.Lion(w, lr=0.1)
    >>> opt.step(np.array([1.0, -2.0, 0.0]))
    >>> w  # every coordinate with a nonzero gradient moves by lr
    array([-0.1,  0.1,  0. ])
    """,
)

_BUILT = build(RULE)
Lion = _BUILT.optimizer
lion_step = _BUILT.step
