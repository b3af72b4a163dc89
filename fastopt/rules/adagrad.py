"""AdaGrad (Duchi, Hazan & Singer, 2011), with torch's semantics."""

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
    check_step,
)
from fastopt._jit import as_dtype_of, elementwise, kernel, parallel_kernel
from fastopt._launch import RuleKernels, chunk_length, first_segment, launch, single_segment
from fastopt.gradients import GradientOptions, kernel_gradient_terms
from fastopt.optimizer import Optimizer, ParamsT, ScheduleLike

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["Adagrad", "adagrad_step"]

_HYPER_WIDTH = 6


def adagrad_update(i, param, grad, state_sum, scalars):
    """Element ``i`` of one AdaGrad step (the rule's math, shared by every kernel)."""
    (
        grad_scale,
        clip_value,
        clr,
        eps,
        weight_decay,
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
    s = state_sum[i] + g * g
    state_sum[i] = s
    param[i] = p - clr * (g / (math.sqrt(s) + eps))


_adagrad_update = elementwise(adagrad_update)


@elementwise
def _adagrad_scalars(h, param):
    """Row ``h`` of the hyperparameter table as the update's scalar arguments."""
    return (
        as_dtype_of(h[0], param),
        as_dtype_of(h[1], param),
        as_dtype_of(h[2], param),
        as_dtype_of(h[3], param),
        as_dtype_of(h[4], param),
        h[5] != 0,
    )


@kernel
def _adagrad_block(h, param, grad, state_sum):
    # Unpacked before the loop: as far as LLVM knows, h could alias the arrays.
    scalars = _adagrad_scalars(h, param)
    for i in range(param.size):
        _adagrad_update(i, param, grad, state_sum, scalars)


@kernel
def _adagrad_serial(bounds, hyper, param, grad, state_sum):
    for s in range(bounds.size - 1):
        lo, hi = bounds[s], bounds[s + 1]
        _adagrad_block(hyper[s], param[lo:hi], grad[lo:hi], state_sum[lo:hi])


@parallel_kernel
def _adagrad_parallel(n_chunks, bounds, hyper, param, grad, state_sum):
    n = param.size
    chunk = chunk_length(n, n_chunks)
    for c in prange(n_chunks):
        lo = min(c * chunk, n)
        hi = min(lo + chunk, n)
        s = first_segment(bounds, lo)
        while lo < hi:
            end = min(hi, bounds[s + 1])
            _adagrad_block(hyper[s], param[lo:end], grad[lo:end], state_sum[lo:end])
            lo = end
            s += 1


ADAGRAD_KERNELS = RuleKernels(
    serial=_adagrad_serial,
    parallel=_adagrad_parallel,
    update=adagrad_update,
    unpack=_adagrad_scalars.py_func,
)


def adagrad_hyperparameters(
    *,
    lr: float,
    lr_decay: float,
    weight_decay: float,
    eps: float,
    maximize: bool,
    step: int,
    grad_scale: float = 1.0,
    clip_value: float = math.inf,
) -> tuple[float, ...]:
    """The kernel's hyperparameter row for update number ``step`` (host side, float64)."""
    clr = lr / (1.0 + (step - 1) * lr_decay)
    return (grad_scale, clip_value, clr, eps, weight_decay, float(maximize))


def _check_hyperparameters(lr: float, lr_decay: float, weight_decay: float, eps: float) -> None:
    check_nonnegative("lr", lr)
    check_nonnegative("lr_decay", lr_decay)
    check_nonnegative("weight_decay", weight_decay)
    check_nonnegative("eps", eps)


def adagrad_step(
    param: np.ndarray,
    grad: np.ndarray,
    state_sum: np.ndarray,
    *,
    lr: float = 1e-2,
    lr_decay: float = 0.0,
    weight_decay: float = 0.0,
    eps: float = 1e-10,
    maximize: bool = False,
    step: int,
    loss_scale: float = 1.0,
    clip_value: float | None = None,
) -> None:
    r"""One fused, in-place AdaGrad step on arrays whose state you manage.

    .. math::

        g &\leftarrow g + \lambda p \qquad
        \tilde\eta = \frac{\eta}{1 + (t - 1)\,\text{lr\_decay}} \\
        s &\leftarrow s + g^2 \qquad
        p \leftarrow p - \tilde\eta \, \frac{g}{\sqrt{s} + \epsilon}

    Parameters
    ----------
    param, grad, state_sum
        C-contiguous arrays of one dtype (float32 or float64) and size; ``param`` and
        ``state_sum`` (the running sum of squared gradients) are updated in place.
    lr, lr_decay, weight_decay, eps, maximize
        As in :class:`Adagrad`.
    step
        Number of updates including this one (1 for the first), for ``lr_decay``.
    loss_scale, clip_value
        Inside the kernel, the gradient is divided by ``loss_scale`` (the factor the loss
        was multiplied by) and then clamped to ``[-clip_value, clip_value]`` (no clamp when
        None), as :meth:`Optimizer.step <fastopt.Optimizer.step>` does.

    Examples
    --------
    >>> import numpy as np, fastopt
    >>> x = np.array([10.0]); s = np.zeros(1)
    >>> fastopt.adagrad_step(x, 2 * x, s, lr=1.0, step=1)
    >>> x, s
    (array([9.]), array([400.]))
    """
    arrays = [("param", check_param("param", param)), ("grad", check_grad("grad", grad, param))]
    arrays.append(("state_sum", check_state("state_sum", state_sum, param)))
    check_disjoint(arrays)
    _check_hyperparameters(lr, lr_decay, weight_decay, eps)
    grad_scale, kernel_clip = kernel_gradient_terms(loss_scale, clip_value)
    row = adagrad_hyperparameters(
        lr=lr,
        lr_decay=lr_decay,
        weight_decay=weight_decay,
        eps=eps,
        maximize=check_bool("maximize", maximize),
        step=check_step(step),
        grad_scale=grad_scale,
        clip_value=kernel_clip,
    )
    flat = [array.reshape(-1) for _, array in arrays]
    launch(ADAGRAD_KERNELS, single_segment(param.size), np.array([row]), *flat)


class Adagrad(Optimizer):
    """AdaGrad, updating NumPy arrays in place with one fused pass per array.

    Same names, defaults and formulas as ``torch.optim.Adagrad`` (eps outside the square
    root), written out in :func:`adagrad_step`.

    Parameters
    ----------
    params
        An array, a list of arrays or a list of parameter-group dicts.
    lr : float or schedule, default 1e-2
    lr_decay : float, default 0
    weight_decay : float, default 0
    initial_accumulator_value : float, default 0
        Starting value of the sum of squared gradients.
    eps : float, default 1e-10
    maximize : bool, default False
    nonfinite, max_norm, norm_type, clip_value
        Gradient checks and clipping fused into the step, see :class:`~fastopt.Optimizer`.

    Notes
    -----
    Conventions: optax's ``adagrad`` starts the accumulator at 0.1 and puts eps inside the
    square root; Keras starts it at 0.1 too. Pass ``initial_accumulator_value=0.1`` to match
    their starting point.

    Examples
    --------
    >>> import numpy as np, fastopt
    >>> x = np.array([10.0])
    >>> opt = fastopt.Adagrad(x, lr=1.0, eps=1e-8)
    >>> opt.step(2 * x)
    >>> x
    array([9.])
    """

    _hyper_width = _HYPER_WIDTH
    _kernels = ADAGRAD_KERNELS

    def __init__(
        self,
        params: ParamsT,
        lr: ScheduleLike = 1e-2,
        lr_decay: float = 0.0,
        weight_decay: float = 0.0,
        initial_accumulator_value: float = 0.0,
        eps: float = 1e-10,
        *,
        maximize: bool = False,
        **gradient_options: Unpack[GradientOptions],
    ) -> None:
        defaults = {
            "lr": lr,
            "lr_decay": lr_decay,
            "weight_decay": weight_decay,
            "initial_accumulator_value": initial_accumulator_value,
            "eps": eps,
            "maximize": maximize,
        }
        self._check_gradient_keywords(gradient_options)
        super().__init__(params, defaults, **gradient_options)

    def _check_group(self, group: Mapping[str, Any]) -> None:
        _check_hyperparameters(group["lr"], group["lr_decay"], group["weight_decay"], group["eps"])
        check_nonnegative("initial_accumulator_value", group["initial_accumulator_value"])
        check_bool("maximize", group["maximize"])

    def _state_names(self, group: Mapping[str, Any]) -> tuple[str, ...]:
        return ("sum",)

    def _all_state_names(self) -> frozenset[str]:
        return frozenset(("sum",))

    def _initial_value(self, name: str, group: Mapping[str, Any]) -> float:
        return float(group["initial_accumulator_value"])

    def _row(self, group, step, created, grad_scale, clip_value) -> tuple[float, ...]:
        return adagrad_hyperparameters(
            lr=group["lr"],
            lr_decay=group["lr_decay"],
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            maximize=group["maximize"],
            step=step,
            grad_scale=grad_scale,
            clip_value=clip_value,
        )

    def _kernel_state(self, group, views) -> tuple[np.ndarray | None, ...]:
        return (views["sum"],)
