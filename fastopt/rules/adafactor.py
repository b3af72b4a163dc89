"""Adafactor (Shazeer and Stern, 2018, "Adafactor: Adaptive Learning Rates with Sublinear
Memory Cost"), with ``torch.optim.Adafactor``'s names, defaults and formulas.

The update is written out in the class's docstring. A tensor of two or more dimensions keeps
its second moment factored, as a row and a column factor over its last two dimensions (state
not shaped like the parameter, :class:`fastopt.rule.HostState`); a vector keeps it whole. A
step is a read pass writing the gradient (after unscaling, clipping and ``maximize``) into a
scratch array, the second moment's update on the host (row and column sums of squares in
float64, in a fixed order), a read pass taking the RMS of the parameter and of the update
(:class:`fastopt.rule.Norms`), and the fused update of the parameter.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from fastopt._checks import check_nonnegative, check_real
from fastopt._jit import as_dtype_of, elementwise, kernel, parallel_kernel
from fastopt._parallel import run_by_size
from fastopt._reduce import LANES, sum_of_squares
from fastopt.rule import HostState, Hyperparameter, MatrixStep, Norms, Rule, build, flag, real

__all__ = ["RULE", "Adafactor", "adafactor_step"]


def adafactor_direction(p, g, h):
    """What the host reads: the gradient, as the update sees it."""
    return g


def adafactor_measure(p, g, o, h):
    """What the RMS are taken of: the parameter (before the decay) and the update
    ``g / sqrt(max(v, eps1^2))`` (``o`` is the inverse square root)."""
    return p, g * o


def adafactor_update(p, g, o, h):
    """One element of an Adafactor step: decay, then ``p - alpha / denom * u``."""
    return (p * h.decay_factor + h.neg_step * (g * o),)


@elementwise
def _lerp(start, end, weight, one):
    """``torch.lerp(start, end, weight)`` of values, with torch's formula, in their dtype."""
    if weight < 0.5:
        return start + weight * (end - start)
    return end - (end - start) * (one - weight)


def _factors(g, lanes, partial, rows, columns, row_var, col_var, weight, eps1, one, denominator):
    """A tensor's factored second moment (``g`` a 3-D array, a batch of matrices; the
    factors ``row_var`` ``(batch, rows)`` and ``col_var`` ``(batch, columns)`` updated in
    place) and each matrix's denominator ``max(mean(row_var), eps1)``.

    The sums of ``g**2`` are taken in float64: over the last axis by rows (in lanes), over
    the middle one by tasks of :data:`_BLOCK_ROWS` rows (each read once from memory, then from
    cache) whose column sums (``partial``) are then added in block order: a fixed order,
    whatever the thread count. The rest is in the arrays' dtype, each operation rounded as
    NumPy (and torch) would, a NaN kept."""
    batch, count, width = g.shape
    blocks = partial.shape[1]
    for task in prange(batch * blocks):
        b, block = task // blocks, task % blocks
        for j in range(width):
            partial[b, block, j] = 0.0
        for i in range(block * _BLOCK_ROWS, min((block + 1) * _BLOCK_ROWS, count)):
            rows[b, i] = sum_of_squares(g[b, i], lanes)
            for j in range(width):
                v = np.float64(g[b, i, j])
                partial[b, block, j] += v * v
    for b in range(batch):
        for j in range(width):
            columns[b, j] = 0.0
        for block in range(blocks):
            for j in range(width):
                columns[b, j] += partial[b, block, j]
        for j in range(width):
            mean = as_dtype_of(columns[b, j] / count, col_var)
            col_var[b, j] = _lerp(col_var[b, j], mean, weight, one)
        total = 0.0
        for i in range(count):
            mean = as_dtype_of(rows[b, i] / width, row_var)
            row_var[b, i] = _lerp(row_var[b, i], mean, weight, one)
            total += np.float64(row_var[b, i])
        mean = as_dtype_of(total / count, row_var)
        denominator[b] = eps1 if mean < eps1 else mean


def _inverse_root(row_var, col_var, denominator, floor, one, out):
    """``out[b, i, j] = one / sqrt(max(row_var[b, i] * col_var[b, j] / denominator[b],
    floor))``, in the arrays' dtype, operation by operation as NumPy would round them (a
    NaN estimate stays NaN)."""
    batch, count, width = out.shape
    for task in prange(batch * count):
        b = task // count
        r = row_var[b, task % count]
        d = denominator[b]
        for j in range(width):
            e = r * col_var[b, j] / d
            out[b, task % count, j] = one / np.sqrt(floor if e < floor else e)


def _whole(g, variance, weight, floor, one):
    """A vector's second moment (``variance``, updated in place) and the inverse square
    root of its estimate, clamped below at ``floor``, written over ``g``."""
    for i in prange(g.size):
        v = _lerp(variance[i], g[i] * g[i], weight, one)
        variance[i] = v
        g[i] = one / np.sqrt(floor if v < floor else v)


#: Rows per task of the sums of squares: a fixed number (the same sums on every thread
#: count), large enough that the blocks' column sums are a small part of the traffic.
_BLOCK_ROWS = 256
#: (serial, parallel) compilations of the host's kernels.
_FACTORS, _INVERSE_ROOT, _WHOLE = (
    (kernel(f), parallel_kernel(f)) for f in (_factors, _inverse_root, _whole)
)


#: The machine epsilon of each dtype (eps1 = None).
_EPSILON = {np.dtype(t): float(np.finfo(t).eps) for t in (np.float32, np.float64)}


def adafactor_second_moment(g, h, row_var, col_var, variance):
    """The second moment's update of one tensor from its gradient ``g`` (in place), and the
    inverse square root of its estimate, clamped below at ``eps1**2``, written over ``g``."""
    dtype = g.dtype.type
    eps1 = _EPSILON[g.dtype] if h.eps1 < 0 else h.eps1
    weight, floor, one = dtype(h.one_minus_beta2), dtype(eps1 * eps1), dtype(1.0)
    if variance is not None:
        run_by_size(*_WHOLE, g.size, g.reshape(-1), variance.reshape(-1), weight, floor, one)
        return g
    stacked = g.reshape(-1, *g.shape[-2:])
    batch, count, width = stacked.shape
    partial = np.empty((batch, -(-count // _BLOCK_ROWS), width))
    rows, columns = np.empty((batch, count)), np.empty((batch, width))
    factors = (row_var.reshape(batch, count), col_var.reshape(batch, width))
    denominator = np.empty(batch, dtype)
    arguments = (stacked, LANES, partial, rows, columns, *factors, weight, dtype(eps1), one)
    run_by_size(*_FACTORS, g.size, *arguments, denominator)
    run_by_size(*_INVERSE_ROOT, g.size, *factors, denominator, floor, one, stacked)
    return g


def adafactor_step_size(h, norms, ndim, sizes):
    """``-alpha / denom`` per tensor, from the RMS of the parameter and of the update, with
    Python's ``max`` (the first argument unless the second is larger: a NaN RMS gives eps2)."""
    roots = np.sqrt(np.maximum(sizes, 1).astype(np.float64))
    param_rms = norms["param"] / roots
    alpha = np.where(param_rms > h.eps2, param_rms, h.eps2) * h.rho
    ratio = norms["update"] / (roots * h.d)
    return (-alpha / np.where(ratio > 1.0, ratio, 1.0),)


def adafactor_row(group, step, created, scalars):
    """The host row of update number ``step`` (an eps1 of -1 stands for None)."""
    lr = group["lr"]
    eps1, eps2 = group["eps"]
    return (
        float(step) ** group["beta2_decay"],
        -1.0 if eps1 is None else eps1,
        eps2,
        min(lr, 1.0 / float(step) ** 0.5),
        group["d"],
        1.0 - lr * group["weight_decay"],
    )


def _check_beta2_decay(name: str, value: object) -> float:
    value = check_real(name, value)
    if not (math.isfinite(value) and value <= 0.0):
        raise ValueError(f"Invalid {name}: {value} (must be finite and <= 0)")
    return value


def _check_eps(name: str, value: object) -> tuple[float | None, float]:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"{name} must be a pair (eps1 or None, eps2), got {value!r}")
    eps1, eps2 = value
    if eps1 is not None:
        eps1 = check_nonnegative(f"{name}[0]", eps1)
    return eps1, check_nonnegative(f"{name}[1]", eps2)


def _check_d(name: str, value: object) -> float:
    value = check_real(name, value)
    if not (math.isfinite(value) and value >= 1.0):
        raise ValueError(f"Invalid {name}: {value} (must be finite and >= 1)")
    return value


def _row_shape(shape: tuple[int, ...]) -> tuple[int, ...] | None:
    return (*shape[:-1], 1) if len(shape) >= 2 else None


def _column_shape(shape: tuple[int, ...]) -> tuple[int, ...] | None:
    return (*shape[:-2], 1, shape[-1]) if len(shape) >= 2 else None


def _vector_shape(shape: tuple[int, ...]) -> tuple[int, ...] | None:
    return shape if len(shape) < 2 else None


RULE = Rule(
    name="Adafactor",
    update=adafactor_update,
    fields=("one_minus_beta2", "eps1", "eps2", "rho", "d", "decay_factor"),
    row=adafactor_row,
    matrix=MatrixStep(
        direction=adafactor_direction,
        transform=adafactor_second_moment,
        ndim=None,
        state=(
            HostState("row_var", _row_shape),
            HostState("col_var", _column_shape),
            HostState("variance", _vector_shape),
        ),
    ),
    norms=Norms(
        measure=adafactor_measure,
        names=("param", "update"),
        fields=("neg_step",),
        finish=adafactor_step_size,
        counts=True,
    ),
    hyperparameters=(
        real("lr", 1e-2, scheduled=True),
        Hyperparameter("beta2_decay", -0.8, _check_beta2_decay),
        Hyperparameter("eps", (None, 1e-3), _check_eps, annotation="tuple[float | None, float]"),
        Hyperparameter("d", 1.0, _check_d),
        real("weight_decay", 0.0),
        flag("maximize", keyword_only=True),
    ),
    doc=r"""Adafactor: a factored second moment and an update scaled by the parameter's RMS.

    Same names, defaults and formulas as ``torch.optim.Adafactor``. With :math:`t` the
    update count, :math:`\tau` the ``beta2_decay``, :math:`\gamma` the lr and
    :math:`\lambda` the weight decay, for each tensor :math:`P` with gradient :math:`G`:

    .. math::

        \hat\beta_t &= 1 - t^{\tau}, \qquad \rho_t = \min(\gamma, 1 / \sqrt{t}), \qquad
            \alpha_t = \max(\epsilon_2, \mathrm{RMS}(P))\, \rho_t \\
        P &\leftarrow P\,(1 - \gamma\lambda) \\
        R &\leftarrow \hat\beta_t R + (1 - \hat\beta_t)\, \mathrm{mean}_{-1}(G^2), \qquad
        C \leftarrow \hat\beta_t C + (1 - \hat\beta_t)\, \mathrm{mean}_{-2}(G^2) \\
        V &= \frac{R\, C}{\max(\mathrm{mean}_{-2}(R), \epsilon_1)}
            \quad (\text{a vector: } V \leftarrow \hat\beta_t V + (1 - \hat\beta_t) G^2) \\
        U &= G / \sqrt{\max(V, \epsilon_1^2)}, \qquad
        P \leftarrow P - \frac{\alpha_t}{\max(1, \mathrm{RMS}(U) / d)}\, U

    where :math:`\mathrm{RMS}(X) = \lVert X \rVert / \sqrt{\mathrm{numel}(X)}`, the row
    factor :math:`R` (shape ``[..., rows, 1]``) and the column factor :math:`C` (``[..., 1,
    cols]``) are taken over the last two dimensions of a tensor of two or more (the leading
    ones are a batch), and :math:`\alpha_t` is the RMS of the parameter before the decay.

    Parameters
    ----------
    params
        float32 or float64 arrays of any shape, NumPy or CUDA device arrays: an array, a
        list of arrays or a list of parameter-group dicts.
    lr : float or schedule, default 1e-2
        The cap of the relative step :math:`\rho_t`, and the weight decay's factor.
    beta2_decay : float <= 0, default -0.8
    eps : tuple (float or None, float), default (None, 1e-3)
        :math:`\epsilon_1` (None: the machine epsilon of the parameter's dtype) and
        :math:`\epsilon_2`.
    d : float >= 1, default 1.0
        The clipping threshold of the update's RMS.
    weight_decay : float, default 0
        Decoupled: :math:`P \leftarrow P(1 - \gamma\lambda)`.
    maximize : bool, default False
    nonfinite, max_norm, norm_type, clip_value
        Gradient checks and clipping fused into the step, see :class:`~fastopt.Optimizer`.

    Notes
    -----
    State: ``step``, then ``row_var`` and ``col_var`` (:math:`R` and :math:`C`) for a
    tensor of two or more dimensions, ``variance`` (:math:`V`) for one of fewer, all zero at
    first: torch's names and shapes, so state_dicts load both ways with the torch adapter.
    The row and column sums of :math:`G^2` are taken in float64 in a fixed order and the
    RMS in float64 in fixed blocks, so results are the same bits on every thread count.
    They differ from torch's float32 results by rounding (torch reduces in float32).

    The state is kept in the parameters' dtype: a ``state_dtype`` other than None and
    16-bit parameters (and so ``master_weights``, ``kahan_sum`` and stochastic rounding,
    which concern them) are refused. On CUDA device arrays the state lives on the device,
    but the second moment's update runs on the host: each step copies the gradient and the
    factors to the host and the inverse square root back. A :class:`~fastopt.FlatParams`
    is stepped in one launch (its row and column state, not shaped like the parameters,
    kept as arrays of each tensor's own). A tensor with no elements keeps its zero state and
    is left alone (torch's step divides by its size of 0). For :math:`\epsilon_1` = None
    torch takes the machine epsilon of the first parameter of the group for all of them;
    fastopt takes each parameter's own (the same in a group of one dtype).

    Examples
    --------
    >>> import numpy as np, fastopt
    >>> w = np.ones((2, 3))
    >>> opt = fastopt.Adafactor(w)
    >>> opt.step(np.full((2, 3), 0.5))
    >>> w  # RMS(w) = 1, rho = 0.01, and the update's RMS is 1
    array([[0.99, 0.99, 0.99],
           [0.99, 0.99, 0.99]])
    >>> sorted(opt.state[0]), opt.state[0]["row_var"].shape
    (['col_var', 'row_var', 'step'], (2, 1))
    """,
)

_BUILT = build(RULE)
Adafactor = _BUILT.optimizer
adafactor_step = _BUILT.step
