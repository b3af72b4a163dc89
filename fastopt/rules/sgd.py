"""Stochastic gradient descent with momentum, Nesterov, dampening and weight decay."""

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

__all__ = ["SGD", "sgd_step"]

_HYPER_WIDTH = 9


def sgd_update(i, param, grad, momentum_buffer, scalars):
    """Element ``i`` of one SGD step (the rule's math, shared by every kernel)."""
    (
        grad_scale,
        clip_value,
        lr,
        weight_decay,
        momentum,
        one_minus_dampening,
        nesterov,
        maximize,
        initialize_buffer,
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
    if momentum_buffer is not None:
        b = g if initialize_buffer else momentum * momentum_buffer[i] + one_minus_dampening * g
        momentum_buffer[i] = b
        g = g + momentum * b if nesterov else b
    param[i] = p - lr * g


_sgd_update = elementwise(sgd_update)


@elementwise
def _sgd_scalars(h, param):
    """Row ``h`` of the hyperparameter table as the update's scalar arguments."""
    return (
        as_dtype_of(h[0], param),
        as_dtype_of(h[1], param),
        as_dtype_of(h[2], param),
        as_dtype_of(h[3], param),
        as_dtype_of(h[4], param),
        as_dtype_of(h[5], param),
        h[6] != 0,
        h[7] != 0,
        h[8] != 0,
    )


@kernel
def _sgd_block(h, param, grad, momentum_buffer):
    # Unpacked before the loop: as far as LLVM knows, h could alias the arrays.
    scalars = _sgd_scalars(h, param)
    for i in range(param.size):
        _sgd_update(i, param, grad, momentum_buffer, scalars)


@kernel
def _sgd_serial(bounds, hyper, param, grad, momentum_buffer):
    for s in range(bounds.size - 1):
        lo, hi = bounds[s], bounds[s + 1]
        _sgd_block(hyper[s], param[lo:hi], grad[lo:hi], segment(momentum_buffer, lo, hi))


@parallel_kernel
def _sgd_parallel(n_chunks, bounds, hyper, param, grad, momentum_buffer):
    n = param.size
    chunk = chunk_length(n, n_chunks)
    for c in prange(n_chunks):
        lo = min(c * chunk, n)
        hi = min(lo + chunk, n)
        s = first_segment(bounds, lo)
        while lo < hi:
            end = min(hi, bounds[s + 1])
            _sgd_block(hyper[s], param[lo:end], grad[lo:end], segment(momentum_buffer, lo, end))
            lo = end
            s += 1


SGD_KERNELS = RuleKernels(
    serial=_sgd_serial,
    parallel=_sgd_parallel,
    update=sgd_update,
    unpack=_sgd_scalars.py_func,
)


def sgd_hyperparameters(
    *,
    lr: float,
    momentum: float,
    dampening: float,
    nesterov: bool,
    weight_decay: float,
    maximize: bool,
    initialize_buffer: bool,
    grad_scale: float = 1.0,
    clip_value: float = math.inf,
) -> tuple[float, ...]:
    """The kernel's hyperparameter row (host side, float64)."""
    return (
        grad_scale,
        clip_value,
        lr,
        weight_decay,
        momentum,
        1.0 - dampening,
        float(nesterov),
        float(maximize),
        float(initialize_buffer),
    )


def _check_hyperparameters(
    lr: float, momentum: float, dampening: float, nesterov: bool, weight_decay: float
) -> None:
    check_nonnegative("lr", lr)
    check_nonnegative("momentum", momentum)
    check_nonnegative("dampening", dampening)
    check_nonnegative("weight_decay", weight_decay)
    if check_bool("nesterov", nesterov) and (momentum <= 0 or dampening != 0):
        raise ValueError(
            f"nesterov=True requires momentum > 0 and dampening = 0, "
            f"got momentum={momentum}, dampening={dampening}"
        )


def sgd_step(
    param: np.ndarray,
    grad: np.ndarray,
    momentum_buffer: np.ndarray | None = None,
    *,
    lr: float = 1e-3,
    momentum: float = 0.0,
    dampening: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    maximize: bool = False,
    initialize_buffer: bool = False,
    loss_scale: float = 1.0,
    clip_value: float | None = None,
) -> None:
    r"""One fused, in-place SGD step on arrays whose state you manage.

    With :math:`g` the gradient (negated if ``maximize``), :math:`\mu` the momentum and
    :math:`\tau` the dampening:

    .. math::

        g &\leftarrow g + \lambda p \\
        b &\leftarrow \mu b + (1 - \tau) g \quad (b \leftarrow g \text{ on the first step}) \\
        g &\leftarrow g + \mu b \text{ if nesterov, else } b \\
        p &\leftarrow p - \eta g

    Parameters
    ----------
    param, grad
        C-contiguous arrays of one dtype (float32 or float64) and size.
    momentum_buffer
        Required when ``momentum`` is not 0, ignored (may be ``None``) when it is.
    lr, momentum, dampening, nesterov, weight_decay, maximize
        As in :class:`SGD`.
    initialize_buffer
        Copy the gradient into the buffer instead of decaying it: torch's rule for the first
        step with momentum.
    loss_scale, clip_value
        Inside the kernel, the gradient is divided by ``loss_scale`` (the factor the loss
        was multiplied by) and then clamped to ``[-clip_value, clip_value]`` (no clamp when
        None), as :meth:`Optimizer.step <fastopt.Optimizer.step>` does.

    Examples
    --------
    >>> import numpy as np, fastopt
    >>> p = np.array([10.0]); buf = np.zeros(1)
    >>> fastopt.sgd_step(p, 2 * p, buf, lr=0.1, momentum=0.9, initialize_buffer=True)
    >>> p, buf
    (array([8.]), array([20.]))
    """
    arrays = [("param", check_param("param", param)), ("grad", check_grad("grad", grad, param))]
    _check_hyperparameters(lr, momentum, dampening, nesterov, weight_decay)
    if momentum != 0:
        if momentum_buffer is None:
            raise ValueError("momentum_buffer is required when momentum is not 0")
        arrays.append(("momentum_buffer", check_state("momentum_buffer", momentum_buffer, param)))
    check_disjoint(arrays)
    grad_scale, kernel_clip = kernel_gradient_terms(loss_scale, clip_value)
    row = sgd_hyperparameters(
        lr=lr,
        momentum=momentum,
        dampening=dampening,
        nesterov=nesterov,
        weight_decay=weight_decay,
        maximize=check_bool("maximize", maximize),
        initialize_buffer=check_bool("initialize_buffer", initialize_buffer),
        grad_scale=grad_scale,
        clip_value=kernel_clip,
    )
    flat = [array.reshape(-1) for _, array in arrays]
    if momentum == 0:
        flat.append(None)
    launch(SGD_KERNELS, single_segment(param.size), np.array([row]), *flat)


class SGD(Optimizer):
    r"""Stochastic gradient descent (optionally with momentum), in place on NumPy arrays.

    Same names, defaults and formulas as ``torch.optim.SGD``, written out in :func:`sgd_step`.
    With ``momentum=0`` it is plain gradient descent :math:`p \leftarrow p - \eta g`.

    Parameters
    ----------
    params
        An array, a list of arrays or a list of parameter-group dicts.
    lr : float or schedule, default 1e-3
    momentum : float or schedule, default 0
    dampening : float, default 0
    weight_decay : float, default 0
    nesterov : bool, default False
        Nesterov momentum (requires ``momentum > 0`` and ``dampening = 0``).
    maximize : bool, default False
    nonfinite, max_norm, norm_type, clip_value
        Gradient checks and clipping fused into the step, see :class:`~fastopt.Optimizer`.

    Notes
    -----
    Conventions: the buffer starts as a copy of the first gradient (torch), so the first step
    is not damped. Sutskever et al. and some tutorials write ``v = mu v - lr g; p += v``,
    which equals this rule while ``lr`` is constant but not when ``lr`` changes (the lr
    multiplies the whole buffer here, only the new gradient there).

    Examples
    --------
    >>> import numpy as np, fastopt
    >>> x = np.array([10.0])
    >>> opt = fastopt.SGD(x, lr=0.1)
    >>> for _ in range(3):
    ...     opt.step(2 * x)
    >>> x
    array([5.12])
    """

    _hyper_width = _HYPER_WIDTH
    _kernels = SGD_KERNELS

    def __init__(
        self,
        params: ParamsT,
        lr: ScheduleLike = 1e-3,
        momentum: ScheduleLike = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        **gradient_options: Unpack[GradientOptions],
    ) -> None:
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
            "maximize": maximize,
        }
        self._check_gradient_keywords(gradient_options)
        super().__init__(params, defaults, **gradient_options)

    def _check_group(self, group: Mapping[str, Any]) -> None:
        _check_hyperparameters(
            group["lr"],
            group["momentum"],
            group["dampening"],
            group["nesterov"],
            group["weight_decay"],
        )
        check_bool("maximize", group["maximize"])

    def _state_names(self, group: Mapping[str, Any]) -> tuple[str, ...]:
        return ("momentum_buffer",) if group["momentum"] != 0 else ()

    def _all_state_names(self) -> frozenset[str]:
        return frozenset(("momentum_buffer",))

    def _row(self, group, step, created, grad_scale, clip_value) -> tuple[float, ...]:
        return sgd_hyperparameters(
            lr=group["lr"],
            momentum=group["momentum"],
            dampening=group["dampening"],
            nesterov=group["nesterov"],
            weight_decay=group["weight_decay"],
            maximize=group["maximize"],
            initialize_buffer=created,
            grad_scale=grad_scale,
            clip_value=clip_value,
        )

    def _kernel_state(self, group, views) -> tuple[np.ndarray | None, ...]:
        return (views["momentum_buffer"] if group["momentum"] != 0 else None,)
