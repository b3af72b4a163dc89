"""RMSProp (Tieleman & Hinton, 2012), centered (Graves, 2013) and with momentum."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from numba import prange

from fastopt._checks import (
    check_bool,
    check_disjoint,
    check_grad,
    check_nonnegative,
    check_param,
    check_state,
)
from fastopt._jit import as_dtype_of, elementwise, kernel, parallel_kernel, segment
from fastopt._launch import RuleKernels, chunk_length, first_segment, launch, single_segment
from fastopt.gradients import GradientOptions, kernel_gradient_terms
from fastopt.optimizer import Optimizer, ParamsT, ScheduleLike

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["RMSprop", "rmsprop_step"]

_HYPER_WIDTH = 9


def rmsprop_update(i, param, grad, square_avg, momentum_buffer, grad_avg, scalars):
    """Element ``i`` of one RMSProp step (the rule's math, shared by every kernel)."""
    (
        grad_scale,
        clip_value,
        lr,
        alpha,
        one_minus_alpha,
        eps,
        weight_decay,
        momentum,
        maximize,
    ) = scalars
    g = grad[i] * grad_scale
    # Clipping by value; clip_value = inf turns it off. Comparisons (not min/max) keep NaN
    # and vectorize.
    g = clip_value if g > clip_value else g
    g = -clip_value if g < -clip_value else g
    if maximize:
        g = -g
    p = param[i]
    if weight_decay != 0:
        g = g + weight_decay * p
    sq = alpha * square_avg[i] + one_minus_alpha * g * g
    square_avg[i] = sq
    if grad_avg is not None:
        ga = grad_avg[i] + one_minus_alpha * (g - grad_avg[i])
        grad_avg[i] = ga
        sq = sq - ga * ga
    avg = math.sqrt(sq) + eps
    if momentum_buffer is not None:
        b = momentum * momentum_buffer[i] + g / avg
        momentum_buffer[i] = b
        param[i] = p - lr * b
    else:
        param[i] = p - lr * (g / avg)


_rmsprop_update = elementwise(rmsprop_update)


@elementwise
def _rmsprop_scalars(h, param):
    """Row ``h`` of the hyperparameter table as the update's scalar arguments."""
    return (
        as_dtype_of(h[0], param),
        as_dtype_of(h[1], param),
        as_dtype_of(h[2], param),
        as_dtype_of(h[3], param),
        as_dtype_of(h[4], param),
        as_dtype_of(h[5], param),
        as_dtype_of(h[6], param),
        as_dtype_of(h[7], param),
        h[8] != 0,
    )


@kernel
def _rmsprop_block(h, param, grad, square_avg, momentum_buffer, grad_avg):
    # Unpacked before the loop: as far as LLVM knows, h could alias the arrays.
    scalars = _rmsprop_scalars(h, param)
    for i in range(param.size):
        _rmsprop_update(i, param, grad, square_avg, momentum_buffer, grad_avg, scalars)


@kernel
def _rmsprop_serial(bounds, hyper, param, grad, square_avg, momentum_buffer, grad_avg):
    for s in range(bounds.size - 1):
        lo, hi = bounds[s], bounds[s + 1]
        _rmsprop_block(
            hyper[s],
            param[lo:hi],
            grad[lo:hi],
            square_avg[lo:hi],
            segment(momentum_buffer, lo, hi),
            segment(grad_avg, lo, hi),
        )


@parallel_kernel
def _rmsprop_parallel(n_chunks, bounds, hyper, param, grad, square_avg, momentum_buffer, grad_avg):
    n = param.size
    chunk = chunk_length(n, n_chunks)
    for c in prange(n_chunks):
        lo = min(c * chunk, n)
        hi = min(lo + chunk, n)
        s = first_segment(bounds, lo)
        while lo < hi:
            end = min(hi, bounds[s + 1])
            _rmsprop_block(
                hyper[s],
                param[lo:end],
                grad[lo:end],
                square_avg[lo:end],
                segment(momentum_buffer, lo, end),
                segment(grad_avg, lo, end),
            )
            lo = end
            s += 1


RMSPROP_KERNELS = RuleKernels(
    serial=_rmsprop_serial,
    parallel=_rmsprop_parallel,
    update=rmsprop_update,
    unpack=_rmsprop_scalars.py_func,
)


def rmsprop_hyperparameters(
    *,
    lr: float,
    alpha: float,
    eps: float,
    weight_decay: float,
    momentum: float,
    maximize: bool,
    grad_scale: float = 1.0,
    clip_value: float = math.inf,
) -> tuple[float, ...]:
    """The kernel's hyperparameter row (host side, float64)."""
    return (
        grad_scale,
        clip_value,
        lr,
        alpha,
        1.0 - alpha,
        eps,
        weight_decay,
        momentum,
        float(maximize),
    )


def _check_hyperparameters(
    lr: float, alpha: float, eps: float, weight_decay: float, momentum: float
) -> None:
    check_nonnegative("lr", lr)
    check_nonnegative("alpha", alpha)
    check_nonnegative("eps", eps)
    check_nonnegative("weight_decay", weight_decay)
    check_nonnegative("momentum", momentum)


def rmsprop_step(
    param: np.ndarray,
    grad: np.ndarray,
    square_avg: np.ndarray,
    momentum_buffer: np.ndarray | None = None,
    grad_avg: np.ndarray | None = None,
    *,
    lr: float = 1e-2,
    alpha: float = 0.99,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    maximize: bool = False,
    loss_scale: float = 1.0,
    clip_value: float | None = None,
) -> None:
    r"""One fused, in-place RMSProp step on arrays whose state you manage.

    .. math::

        g &\leftarrow g + \lambda p \qquad
        s \leftarrow \alpha s + (1 - \alpha) g^2 \\
        \bar g &\leftarrow \bar g + (1 - \alpha)(g - \bar g), \quad
        \tilde s = s - \bar g^2 \quad \text{(centered; else } \tilde s = s) \\
        b &\leftarrow \mu b + \frac{g}{\sqrt{\tilde s} + \epsilon}, \quad
        p \leftarrow p - \eta b \quad \text{(momentum; else }
        p \leftarrow p - \eta \tfrac{g}{\sqrt{\tilde s} + \epsilon})

    Parameters
    ----------
    param, grad, square_avg
        C-contiguous arrays of one dtype (float32 or float64) and size.
    momentum_buffer
        Required when ``momentum > 0``; ``None`` otherwise.
    grad_avg
        The running mean of the gradient: pass it for the centered variant.
    lr, alpha, eps, weight_decay, momentum, maximize
        As in :class:`RMSprop`.
    loss_scale, clip_value
        Inside the kernel, the gradient is divided by ``loss_scale`` (the factor the loss
        was multiplied by) and then clamped to ``[-clip_value, clip_value]`` (no clamp when
        None), as :meth:`Optimizer.step <fastopt.Optimizer.step>` does.

    Examples
    --------
    >>> import numpy as np, fastopt
    >>> x = np.array([10.0]); sq = np.zeros(1)
    >>> fastopt.rmsprop_step(x, 2 * x, sq, lr=0.1, alpha=0.9, eps=0.0)
    >>> np.round(x, 6), sq
    (array([9.683772]), array([40.]))
    """
    arrays = [("param", check_param("param", param)), ("grad", check_grad("grad", grad, param))]
    arrays.append(("square_avg", check_state("square_avg", square_avg, param)))
    _check_hyperparameters(lr, alpha, eps, weight_decay, momentum)
    if momentum > 0:
        if momentum_buffer is None:
            raise ValueError("momentum_buffer is required when momentum > 0")
        arrays.append(("momentum_buffer", check_state("momentum_buffer", momentum_buffer, param)))
    if grad_avg is not None:
        arrays.append(("grad_avg", check_state("grad_avg", grad_avg, param)))
    check_disjoint(arrays)
    grad_scale, kernel_clip = kernel_gradient_terms(loss_scale, clip_value)
    row = rmsprop_hyperparameters(
        lr=lr,
        alpha=alpha,
        eps=eps,
        weight_decay=weight_decay,
        momentum=momentum,
        maximize=check_bool("maximize", maximize),
        grad_scale=grad_scale,
        clip_value=kernel_clip,
    )
    flat = dict((name, array.reshape(-1)) for name, array in arrays)
    launch(
        RMSPROP_KERNELS,
        single_segment(param.size),
        np.array([row]),
        flat["param"],
        flat["grad"],
        flat["square_avg"],
        flat.get("momentum_buffer"),
        flat.get("grad_avg"),
    )


class RMSprop(Optimizer):
    """RMSProp, updating NumPy arrays in place with one fused pass per array.

    Same names, defaults and formulas as ``torch.optim.RMSprop`` (eps outside the square root),
    written out in :func:`rmsprop_step`.

    Parameters
    ----------
    params
        An array, a list of arrays or a list of parameter-group dicts.
    lr : float or schedule, default 1e-2
    alpha : float, default 0.99
        Smoothing constant of the squared-gradient average (the "decay"; Keras' ``rho``).
    eps : float, default 1e-8
    weight_decay : float, default 0
    momentum : float or schedule, default 0
    centered : bool, default False
        Normalize by the estimated variance of the gradient instead of its second moment.
    maximize : bool, default False
    nonfinite, max_norm, norm_type, clip_value
        Gradient checks and clipping fused into the step, see :class:`~fastopt.Optimizer`.

    Notes
    -----
    The positional order is that of ``torch.optim.RMSprop`` without ``capturable`` and
    ``foreach``, which fastopt does not take: ``maximize`` follows ``centered``.

    Conventions: torch's default ``alpha`` is 0.99, Keras' ``rho`` 0.9 and the original
    lecture's 0.9; optax's ``rmsprop`` puts eps inside the square root. Keras adds eps inside
    too.

    Examples
    --------
    >>> import numpy as np, fastopt
    >>> x = np.array([10.0])
    >>> opt = fastopt.RMSprop(x, lr=0.1, alpha=0.9)
    >>> opt.step(2 * x)
    >>> np.round(x, 6)
    array([9.683772])
    """

    _hyper_width = _HYPER_WIDTH
    _kernels = RMSPROP_KERNELS

    def __init__(
        self,
        params: ParamsT,
        lr: ScheduleLike = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: ScheduleLike = 0.0,
        centered: bool = False,
        maximize: bool = False,
        **gradient_options: Unpack[GradientOptions],
    ) -> None:
        defaults = {
            "lr": lr,
            "alpha": alpha,
            "eps": eps,
            "weight_decay": weight_decay,
            "momentum": momentum,
            "centered": centered,
            "maximize": maximize,
        }
        self._check_gradient_keywords(gradient_options)
        super().__init__(params, defaults, **gradient_options)

    def _check_group(self, group: Mapping[str, Any]) -> None:
        _check_hyperparameters(
            group["lr"], group["alpha"], group["eps"], group["weight_decay"], group["momentum"]
        )
        check_bool("centered", group["centered"])
        check_bool("maximize", group["maximize"])

    def _state_names(self, group: Mapping[str, Any]) -> tuple[str, ...]:
        names = ("square_avg",)
        if group["momentum"] > 0:
            names += ("momentum_buffer",)
        if group["centered"]:
            names += ("grad_avg",)
        return names

    def _all_state_names(self) -> frozenset[str]:
        return frozenset(("square_avg", "momentum_buffer", "grad_avg"))

    def _row(self, group, step, created, grad_scale, clip_value) -> tuple[float, ...]:
        return rmsprop_hyperparameters(
            lr=group["lr"],
            alpha=group["alpha"],
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            momentum=group["momentum"],
            maximize=group["maximize"],
            grad_scale=grad_scale,
            clip_value=clip_value,
        )

    def _kernel_state(self, group, views) -> tuple[np.ndarray | None, ...]:
        return (
            views["square_avg"],
            views["momentum_buffer"] if group["momentum"] > 0 else None,
            views["grad_avg"] if group["centered"] else None,
        )
