"""Adam and AdamW (Kingma & Ba, 2015; Loshchilov & Hutter, 2019), with torch's semantics."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from numba import prange

from fastopt._checks import (
    check_beta,
    check_bool,
    check_disjoint,
    check_grad,
    check_nonnegative,
    check_param,
    check_state,
    check_step,
)
from fastopt._jit import as_dtype_of, elementwise, kernel, parallel_kernel, segment
from fastopt._launch import RuleKernels, chunk_length, first_segment, launch, single_segment
from fastopt.gradients import GradientOptions, kernel_gradient_terms
from fastopt.optimizer import Optimizer, ParamsT, ScheduleLike

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["Adam", "AdamW", "adam_step"]

_HYPER_WIDTH = 12


def adam_update(i, param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, scalars):
    """Element ``i`` of one Adam step (the rule's math, shared by every kernel)."""
    (
        grad_scale,
        clip_value,
        step_size,
        one_minus_beta1,
        beta2,
        one_minus_beta2,
        eps,
        bias_correction2_sqrt,
        weight_decay,
        decay_factor,
        maximize,
        decoupled,
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
        if decoupled:
            p = p * decay_factor
        else:
            g = g + weight_decay * p
    m = exp_avg[i] + one_minus_beta1 * (g - exp_avg[i])
    v = beta2 * exp_avg_sq[i] + one_minus_beta2 * g * g
    exp_avg[i] = m
    exp_avg_sq[i] = v
    if max_exp_avg_sq is not None:
        # A plain comparison (not max()) keeps the loop vectorizable; NaN in v propagates.
        v_max = max_exp_avg_sq[i]
        v = v_max if v_max > v else v
        max_exp_avg_sq[i] = v
    param[i] = p - step_size * (m / (math.sqrt(v) / bias_correction2_sqrt + eps))


_adam_update = elementwise(adam_update)


@elementwise
def _adam_scalars(h, param):
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
        as_dtype_of(h[8], param),
        as_dtype_of(h[9], param),
        h[10] != 0,
        h[11] != 0,
    )


@kernel
def _adam_block(h, param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq):
    # Unpacked before the loop: as far as LLVM knows, h could alias the arrays.
    scalars = _adam_scalars(h, param)
    for i in range(param.size):
        _adam_update(i, param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, scalars)


@kernel
def _adam_serial(bounds, hyper, param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq):
    for s in range(bounds.size - 1):
        lo, hi = bounds[s], bounds[s + 1]
        _adam_block(
            hyper[s],
            param[lo:hi],
            grad[lo:hi],
            exp_avg[lo:hi],
            exp_avg_sq[lo:hi],
            segment(max_exp_avg_sq, lo, hi),
        )


@parallel_kernel
def _adam_parallel(n_chunks, bounds, hyper, param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq):
    n = param.size
    chunk = chunk_length(n, n_chunks)
    for c in prange(n_chunks):
        lo = min(c * chunk, n)
        hi = min(lo + chunk, n)
        s = first_segment(bounds, lo)
        while lo < hi:
            end = min(hi, bounds[s + 1])
            _adam_block(
                hyper[s],
                param[lo:end],
                grad[lo:end],
                exp_avg[lo:end],
                exp_avg_sq[lo:end],
                segment(max_exp_avg_sq, lo, end),
            )
            lo = end
            s += 1


ADAM_KERNELS = RuleKernels(
    serial=_adam_serial,
    parallel=_adam_parallel,
    update=adam_update,
    unpack=_adam_scalars.py_func,
)


def adam_hyperparameters(
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    maximize: bool,
    decoupled_weight_decay: bool,
    step: int,
    grad_scale: float = 1.0,
    clip_value: float = math.inf,
) -> tuple[float, ...]:
    """The kernel's hyperparameter row for update number ``step`` (host side, float64)."""
    bias_correction1 = 1.0 - beta1**step
    bias_correction2 = 1.0 - beta2**step
    return (
        grad_scale,
        clip_value,
        lr / bias_correction1,
        1.0 - beta1,
        beta2,
        1.0 - beta2,
        eps,
        math.sqrt(bias_correction2),
        weight_decay,
        1.0 - lr * weight_decay,
        float(maximize),
        float(decoupled_weight_decay),
    )


def _check_hyperparameters(
    lr: float, beta1: float, beta2: float, eps: float, weight_decay: float
) -> None:
    check_nonnegative("lr", lr)
    check_beta("beta1 (betas[0])", beta1)
    check_beta("beta2 (betas[1])", beta2)
    check_nonnegative("eps", eps)
    check_nonnegative("weight_decay", weight_decay)


def adam_step(
    param: np.ndarray,
    grad: np.ndarray,
    exp_avg: np.ndarray,
    exp_avg_sq: np.ndarray,
    max_exp_avg_sq: np.ndarray | None = None,
    *,
    lr: float = 1e-3,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    maximize: bool = False,
    decoupled_weight_decay: bool = False,
    step: int,
    loss_scale: float = 1.0,
    clip_value: float | None = None,
) -> None:
    r"""One fused, in-place Adam/AdamW step on arrays whose state you manage.

    With :math:`g` the gradient (negated if ``maximize``) and :math:`t` = ``step``:

    .. math::

        g &\leftarrow g + \lambda p \quad\text{(L2, unless decoupled)} \qquad
        p \leftarrow p\,(1 - \eta\lambda) \quad\text{(decoupled, AdamW)} \\
        m &\leftarrow m + (1-\beta_1)(g - m) \qquad
        v \leftarrow \beta_2 v + (1-\beta_2) g^2 \qquad
        \hat v = \max(\hat v, v) \text{ if amsgrad} \\
        p &\leftarrow p - \frac{\eta}{1-\beta_1^t}\,
              \frac{m}{\sqrt{v}/\sqrt{1-\beta_2^t} + \epsilon}

    Parameters
    ----------
    param, grad, exp_avg, exp_avg_sq
        C-contiguous arrays of one dtype (float32 or float64) and size; all but ``grad`` are
        updated in place.
    max_exp_avg_sq
        The AMSGrad running maximum; pass it to use AMSGrad, ``None`` otherwise.
    lr, beta1, beta2, eps, weight_decay, maximize, decoupled_weight_decay
        As in :class:`Adam` (``decoupled_weight_decay=True`` is AdamW).
    step
        Number of updates including this one (1 for the first), for the bias corrections.
    loss_scale, clip_value
        Inside the kernel, the gradient is divided by ``loss_scale`` (the factor the loss
        was multiplied by) and then clamped to ``[-clip_value, clip_value]`` (no clamp when
        None), as :meth:`Optimizer.step <fastopt.Optimizer.step>` does.

    Examples
    --------
    >>> import numpy as np, fastopt
    >>> p = np.ones(3, np.float32); g = np.full(3, 0.5, np.float32)
    >>> m, v = np.zeros_like(p), np.zeros_like(p)
    >>> fastopt.adam_step(p, g, m, v, lr=0.1, step=1)
    >>> p.round(6)  # the first step moves each element by lr
    array([0.9, 0.9, 0.9], dtype=float32)
    """
    arrays = [("param", check_param("param", param)), ("grad", check_grad("grad", grad, param))]
    arrays.append(("exp_avg", check_state("exp_avg", exp_avg, param)))
    arrays.append(("exp_avg_sq", check_state("exp_avg_sq", exp_avg_sq, param)))
    if max_exp_avg_sq is not None:
        arrays.append(("max_exp_avg_sq", check_state("max_exp_avg_sq", max_exp_avg_sq, param)))
    check_disjoint(arrays)
    _check_hyperparameters(lr, beta1, beta2, eps, weight_decay)
    grad_scale, kernel_clip = kernel_gradient_terms(loss_scale, clip_value)
    row = adam_hyperparameters(
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        eps=eps,
        weight_decay=weight_decay,
        maximize=check_bool("maximize", maximize),
        decoupled_weight_decay=check_bool("decoupled_weight_decay", decoupled_weight_decay),
        step=check_step(step),
        grad_scale=grad_scale,
        clip_value=kernel_clip,
    )
    flat = [array.reshape(-1) for _, array in arrays]
    if max_exp_avg_sq is None:
        flat.append(None)
    launch(ADAM_KERNELS, single_segment(param.size), np.array([row]), *flat)


class Adam(Optimizer):
    r"""Adam, updating NumPy arrays in place with one fused pass per array.

    Same names, defaults and formulas as ``torch.optim.Adam`` (eps added to the
    bias-corrected :math:`\sqrt{\hat v}`, outside the square root); the update is written out
    in :func:`adam_step`.

    Parameters
    ----------
    params
        An array, a list of arrays or a list of parameter-group dicts.
    lr : float or schedule, default 1e-3
    betas : tuple of (float or schedule), default (0.9, 0.999)
    eps : float, default 1e-8
    weight_decay : float, default 0
        L2 penalty added to the gradient (Adam), or decoupled decay (AdamW).
    amsgrad : bool, default False
        Use the running maximum of the second moment (Reddi et al., 2018).
    maximize : bool, default False
        Ascend the objective instead of descending it.
    decoupled_weight_decay : bool, default False
        Decay the parameters directly, as AdamW does.
    nonfinite, max_norm, norm_type, clip_value
        Gradient checks and clipping fused into the step, see :class:`~fastopt.Optimizer`.

    Notes
    -----
    Conventions: optax's ``adam`` puts eps the same way (``eps_root=0``); Keras adds an
    ``epsilon`` with a different scaling (``epsilon_hat``). Bias corrections are computed in
    float64 on the host and rounded once to the parameters' dtype.

    Examples
    --------
    >>> import numpy as np, fastopt
    >>> w = np.zeros(4, np.float32)
    >>> opt = fastopt.Adam(w, lr=0.1)
    >>> opt.step(2 * (w - 1))
    >>> w.round(6)
    array([0.1, 0.1, 0.1, 0.1], dtype=float32)
    """

    _hyper_width = _HYPER_WIDTH
    _kernels = ADAM_KERNELS

    def __init__(
        self,
        params: ParamsT,
        lr: ScheduleLike = 1e-3,
        betas: tuple[ScheduleLike, ScheduleLike] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        decoupled_weight_decay: bool = False,
        **gradient_options: Unpack[GradientOptions],
    ) -> None:
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": amsgrad,
            "maximize": maximize,
            "decoupled_weight_decay": decoupled_weight_decay,
        }
        self._check_gradient_keywords(gradient_options)
        super().__init__(params, defaults, **gradient_options)

    def _check_group(self, group: Mapping[str, Any]) -> None:
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        _check_hyperparameters(group["lr"], betas[0], betas[1], group["eps"], group["weight_decay"])
        for flag in ("amsgrad", "maximize", "decoupled_weight_decay"):
            check_bool(flag, group[flag])

    def _state_names(self, group: Mapping[str, Any]) -> tuple[str, ...]:
        if group["amsgrad"]:
            return ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
        return ("exp_avg", "exp_avg_sq")

    def _all_state_names(self) -> frozenset[str]:
        return frozenset(("exp_avg", "exp_avg_sq", "max_exp_avg_sq"))

    def _row(self, group, step, created, grad_scale, clip_value) -> tuple[float, ...]:
        beta1, beta2 = group["betas"]
        return adam_hyperparameters(
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            maximize=group["maximize"],
            decoupled_weight_decay=group["decoupled_weight_decay"],
            step=step,
            grad_scale=grad_scale,
            clip_value=clip_value,
        )

    def _kernel_state(self, group, views) -> tuple[np.ndarray | None, ...]:
        amsgrad = views["max_exp_avg_sq"] if group["amsgrad"] else None
        return (views["exp_avg"], views["exp_avg_sq"], amsgrad)


class AdamW(Adam):
    """AdamW: :class:`Adam` with decoupled weight decay, default ``weight_decay=1e-2``.

    Same as ``torch.optim.AdamW``: each step first multiplies the parameters by
    ``1 - lr * weight_decay``, then applies the Adam update without the decay term.

    Examples
    --------
    >>> import numpy as np, fastopt
    >>> w = np.ones(2)
    >>> opt = fastopt.AdamW(w, lr=0.1, weight_decay=0.5)
    >>> opt.step(np.zeros(2))
    >>> w
    array([0.95, 0.95])
    """

    def __init__(
        self,
        params: ParamsT,
        lr: ScheduleLike = 1e-3,
        betas: tuple[ScheduleLike, ScheduleLike] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        **gradient_options: Unpack[GradientOptions],
    ) -> None:
        # Checked here: Adam would take decoupled_weight_decay, which AdamW does not.
        self._check_gradient_keywords(gradient_options)
        super().__init__(
            params,
            lr,
            betas,
            eps,
            weight_decay,
            amsgrad,
            maximize=maximize,
            decoupled_weight_decay=True,
            **gradient_options,
        )
