"""ASGD, averaged stochastic gradient descent (Polyak & Juditsky, 1992), with torch's semantics.

The update is written out in the class's docstring.
"""

from __future__ import annotations

from fastopt._checks import check_real
from fastopt.rule import Hyperparameter, Rule, Scalar, State, build, flag, real

__all__ = ["ASGD", "RULE", "asgd_step"]


def asgd_update(p, g, ax, h):
    """One element of an ASGD step, on values (torch's order of operations)."""
    if h.weight_decay != 0:
        g = g + h.weight_decay * p
    p = p * h.decay
    p = p + h.neg_eta * g
    new_ax = p if h.copy else ax + (p - ax) * h.mu
    return p, new_ax


def _next_eta(group, step, eta, dtype):
    """torch's ``eta`` after update ``step``, from the group's current lr."""
    lr = group["lr"]
    return dtype.type(lr / ((1 + group["lambd"] * lr * step) ** group["alpha"]))


def _next_mu(group, step, mu, dtype):
    """torch's ``mu`` after update ``step``: 1 until ``t0``, then ``1 / (step - t0)``."""
    return dtype.type(1 / max(1, step - group["t0"]))


def asgd_row(group, step, created, scalars):
    """The host row: the ``eta`` and ``mu`` the previous update stored (torch's order)."""
    eta, mu = scalars["eta"], scalars["mu"]
    return (group["weight_decay"], 1 - group["lambd"] * eta, -eta, mu, mu == 1)


RULE = Rule(
    name="ASGD",
    update=asgd_update,
    fields=("weight_decay", "decay", "neg_eta", "mu", "copy"),
    flags=frozenset({"copy"}),
    row=asgd_row,
    hyperparameters=(
        real("lr", 1e-2, scheduled=True),
        Hyperparameter("lambd", 1e-4, check_real),
        Hyperparameter("alpha", 0.75, check_real),
        Hyperparameter("t0", 1e6, check_real),
        real("weight_decay", 0.0),
        flag("maximize"),
    ),
    state=(State("ax", quantizable=False),),
    scalars=(
        Scalar("eta", lambda group: group["lr"], _next_eta, read_before=True, recomputed=True),
        Scalar("mu", 1.0, _next_mu, read_before=True, recomputed=True),
    ),
    doc=r"""ASGD: SGD with a decaying step and a running average of the iterates, updating
    NumPy arrays in place, one fused pass.

    Same names, defaults and formulas as ``torch.optim.ASGD``. With :math:`\eta_t` and
    :math:`\mu_t` per-parameter numbers (``eta`` starts at the lr, ``mu`` at 1):

    .. math::

        g &\leftarrow g + \lambda_{wd}\, p \qquad
        p \leftarrow p\,(1 - \lambda \eta_{t-1}) - \eta_{t-1}\, g \\
        a &\leftarrow a + \mu_{t-1} (p - a) \quad (a \leftarrow p \text{ while } \mu = 1) \\
        \eta_t &= \frac{\eta}{(1 + \lambda \eta t)^{\alpha}} \qquad
        \mu_t = \frac{1}{\max(1, t - t_0)}

    Parameters
    ----------
    params
        An array, a list of arrays or a list of parameter-group dicts.
    lr : float or schedule, default 1e-2
    lambd : float, default 1e-4
        The decay term.
    alpha : float, default 0.75
        The power of the ``eta`` decay.
    t0 : float, default 1e6
        The update from which the average starts.
    weight_decay : float, default 0
    maximize : bool, default False
    nonfinite, max_norm, norm_type, clip_value
        Gradient checks and clipping fused into the step, see :class:`~fastopt.Optimizer`.

    Notes
    -----
    State: ``ax`` (the averaged parameters :math:`a`), ``eta`` and ``mu``. As in torch, an
    update uses the ``eta`` and ``mu`` the previous update stored, and ``eta``/``mu`` are kept
    in float32 (torch's default scalar dtype). ``maximize`` follows ``weight_decay``
    positionally: torch's ``foreach`` between them is not an argument here.

    Examples
    --------
    >>> import numpy as np, fastopt
    >>> w = np.array([1.0, -1.0])
    >>> opt = fastopt.ASGD(w, lr=0.1, lambd=0.0)
    >>> opt.step(np.array([1.0, -1.0]))
    >>> w.round(6), opt.state[0]["ax"].round(6)
    (array([ 0.9, -0.9]), array([ 0.9, -0.9]))
    """,
)

_BUILT = build(RULE)
ASGD = _BUILT.optimizer
asgd_step = _BUILT.step
