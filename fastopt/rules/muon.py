"""Muon (Jordan et al., 2024, "Muon: An optimizer for hidden layers in neural networks"),
with ``torch.optim.Muon``'s names, defaults and formulas.

The update is written out in the class's docstring. The momentum and the final update are
fused element-wise passes; the Newton-Schulz iterations between them are matrix products on
the host (NumPy, BLAS), in the parameters' dtype (see the class's notes on torch's bf16).
"""

from __future__ import annotations

import math

import numpy as np

from fastopt._checks import check_choice, check_real
from fastopt._math import lerp
from fastopt.rule import Hyperparameter, MatrixStep, Rule, State, build, flag, real

__all__ = ["RULE", "Muon", "muon_step", "newton_schulz"]

#: ``adjust_lr_fn`` values and the code the row carries for each.
_ADJUSTMENTS = {None: 0.0, "original": 0.0, "match_rms_adamw": 1.0}


def muon_direction(p, g, momentum_buffer, h):
    """What the Newton-Schulz iterations orthogonalize: the Nesterov (or plain) momentum."""
    b = lerp(momentum_buffer, g, h.one_minus_momentum)
    return lerp(g, b, h.momentum) if h.nesterov else b


def muon_update(p, g, momentum_buffer, o, h):
    """One element of a Muon step, ``o`` the orthogonalized direction (times the lr's
    shape adjustment)."""
    b = lerp(momentum_buffer, g, h.one_minus_momentum)
    return p * h.decay_factor + h.neg_lr * o, b


def newton_schulz(matrix, h):
    """``ns_steps`` quintic Newton-Schulz iterations on ``matrix`` (torch's
    ``_zeropower_via_newtonschulz``, in the matrix's dtype), times the lr adjustment of its
    shape: the update direction of one tensor."""
    a, b, c = (matrix.dtype.type(x) for x in (h.a, h.b, h.c))
    rows, columns = matrix.shape
    x = matrix.T if rows > columns else matrix
    x = x / max(np.linalg.norm(x), matrix.dtype.type(h.eps))
    for _ in range(int(h.ns_steps)):
        gram = x @ x.T
        gram_update = b * gram + c * (gram @ gram)
        x = a * x + gram_update @ x
    if rows > columns:
        x = x.T
    if h.adjust == 0:
        ratio = math.sqrt(max(1.0, rows / columns))
    else:
        ratio = 0.2 * math.sqrt(max(rows, columns))
    return x * matrix.dtype.type(ratio)


def muon_row(group, step, created, scalars):
    """The host row: Muon's step does not depend on the update count."""
    lr, momentum = group["lr"], group["momentum"]
    a, b, c = group["ns_coefficients"]
    return (
        momentum,
        1.0 - momentum,
        group["nesterov"],
        1.0 - lr * group["weight_decay"],
        -lr,
        a,
        b,
        c,
        group["ns_steps"],
        group["eps"],
        _ADJUSTMENTS[group["adjust_lr_fn"]],
    )


def _check_coefficients(name: str, value: object) -> tuple[float, float, float]:
    if not isinstance(value, (tuple, list)) or len(value) != 3:
        raise ValueError(f"{name} must be a tuple of three floats (a, b, c), got {value!r}")
    coefficients = tuple(check_real(f"{name}[{k}]", x) for k, x in enumerate(value))
    if not all(math.isfinite(x) for x in coefficients):
        raise ValueError(f"Invalid {name}: {value!r} (must be finite)")
    return coefficients


def _check_steps(name: str, value: object) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not 0 <= value < 100:
        raise ValueError(f"Invalid {name}: {value} (must be in [0, 100))")
    return int(value)


def _check_adjustment(name: str, value: object) -> str | None:
    if value is None:
        return None
    return check_choice(name, value, ("original", "match_rms_adamw"))


RULE = Rule(
    name="Muon",
    update=muon_update,
    fields=(
        "momentum",
        "one_minus_momentum",
        "nesterov",
        "decay_factor",
        "neg_lr",
        "a",
        "b",
        "c",
        "ns_steps",
        "eps",
        "adjust",
    ),
    flags=frozenset({"nesterov"}),
    row=muon_row,
    matrix=MatrixStep(direction=muon_direction, transform=newton_schulz),
    hyperparameters=(
        real("lr", 1e-3, scheduled=True),
        real("weight_decay", 0.1),
        real("momentum", 0.95),
        flag("nesterov", True),
        Hyperparameter(
            "ns_coefficients",
            (3.4445, -4.775, 2.0315),
            _check_coefficients,
            annotation="tuple[float, float, float]",
        ),
        real("eps", 1e-7),
        Hyperparameter("ns_steps", 5, _check_steps, annotation="int"),
        Hyperparameter("adjust_lr_fn", None, _check_adjustment, annotation="str | None"),
    ),
    state=(State("momentum_buffer"),),
    maximize=None,
    counts_steps=False,
    doc=r"""Muon: momentum orthogonalized by Newton-Schulz iterations, for 2-D parameters.

    Same names, defaults and formulas as ``torch.optim.Muon``. With :math:`\mu` the momentum
    and :math:`\lambda` the weight decay, for each matrix parameter :math:`P` (:math:`A
    \times B`):

    .. math::

        M &\leftarrow \mu M + (1 - \mu) G \\
        U &= (1 - \mu) G + \mu M \ \text{(nesterov)}, \text{ else } M \\
        O &= \mathrm{NS}_k^{(a,b,c)}(U / \max(\lVert U \rVert_F, \epsilon)) \\
        P &\leftarrow P (1 - \eta\lambda) - \eta\, s\, O, \qquad s = \sqrt{\max(1, A/B)}
            \ (\text{or } 0.2 \sqrt{\max(A, B)} \text{ with adjust\_lr\_fn="match_rms_adamw"})

    where each of the :math:`k` Newton-Schulz iterations is :math:`X \leftarrow a X + (b
    X X^\top + c (X X^\top)^2) X` on the wide orientation of the matrix. The momentum and
    the last line are fused element-wise passes; the iterations are matrix products on the
    host.

    Parameters
    ----------
    params
        2-D arrays (others raise ``ValueError``, as torch's): a list of arrays or of
        parameter-group dicts.
    lr : float or schedule, default 1e-3
    weight_decay : float, default 0.1
        Decoupled: :math:`P \leftarrow P(1 - \eta\lambda)`.
    momentum : float, default 0.95
    nesterov : bool, default True
    ns_coefficients : tuple of three floats, default (3.4445, -4.775, 2.0315)
    eps : float, default 1e-7
    ns_steps : int in [0, 100), default 5
    adjust_lr_fn : None, "original" or "match_rms_adamw", default None ("original")
    nonfinite, max_norm, norm_type, clip_value
        Gradient checks and clipping fused into the step, see :class:`~fastopt.Optimizer`.

    Notes
    -----
    State: ``momentum_buffer`` (:math:`M`), zero at first. torch casts the direction to
    bfloat16 for the iterations; fastopt iterates in the parameters' dtype (float32 or
    float64), so results agree with torch's to bfloat16's precision (a relative 2^-8 on the
    update), and with a float32 torch iteration to rounding. The iterations' matrix products
    run on NumPy's BLAS, whose sums may be ordered by its thread count: bit-identical results
    across thread counts hold for the element-wise passes, not for BLAS. There is no
    ``maximize`` (torch's Muon has none).

    Examples
    --------
    >>> import numpy as np, fastopt
    >>> w = np.zeros((2, 2))
    >>> opt = fastopt.Muon([w], lr=0.1, weight_decay=0.0)
    >>> opt.step([np.array([[3.0, 0.0], [0.0, 1.0]])])
    >>> np.round(w, 2)  # orthogonalized: the gradient's 3:1 directions become about 1:1
    array([[-0.08,  0.  ],
           [ 0.  , -0.11]])
    """,
)

_BUILT = build(RULE)
Muon = _BUILT.optimizer
muon_step = _BUILT.step
