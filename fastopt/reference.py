"""Plain NumPy implementations of every rule: the tests' oracle and the benchmarks' baseline.

Written from the formulas with vectorized NumPy, independently of the compiled kernels (this
module imports nothing else from fastopt). Each function has the signature of its compiled
twin (``fastopt.adam_step`` and so on), updates its arrays in place and makes the temporaries
that idiomatic NumPy makes. Arithmetic happens in the arrays' dtype: Python-float
hyperparameters do not promote float32 arrays (NumPy 2 scalar rules).
"""

from __future__ import annotations

import math
from typing import Any

import ml_dtypes
import numpy as np

__all__ = [
    "QUANTIZATION_BLOCK",
    "adadelta_step",
    "adafactor_step",
    "adagrad_step",
    "adam_step",
    "adamax_step",
    "adan_step",
    "ademamix_step",
    "asgd_step",
    "clip_gradients",
    "dequantize_blockwise",
    "dynamic_map",
    "lamb_step",
    "lars_step",
    "lion_step",
    "low_precision_step",
    "muon_step",
    "nadam_step",
    "quantize_blockwise",
    "radam_step",
    "random_words",
    "rmsprop_step",
    "round_to",
    "rprop_step",
    "schedule_free_adamw_step",
    "schedule_free_sgd_step",
    "sgd_step",
]


def _decayed_gradient(
    param: np.ndarray,
    grad: np.ndarray,
    weight_decay: float,
    maximize: bool,
    lr: float = 0.0,
    decoupled: bool = False,
) -> np.ndarray:
    """The gradient a step uses, torch's way: negated to maximize, plus the L2 term
    ``weight_decay * param``; or, ``decoupled``, the parameter decayed in place by
    ``1 - lr * weight_decay`` instead (AdamW)."""
    g = -grad if maximize else grad
    if weight_decay != 0:
        if decoupled:
            param *= 1 - lr * weight_decay
        else:
            g = g + weight_decay * param
    return g


def sgd_step(
    param: np.ndarray,
    grad: np.ndarray,
    momentum_buffer: np.ndarray | None = None,
    *,
    lr: float = 1e-3,
    momentum: float = 0.0,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    maximize: bool = False,
    step: int,
) -> None:
    """SGD with momentum, dampening, Nesterov and weight decay (see ``fastopt.sgd_step``);
    the first step copies the gradient into the buffer."""
    g = _decayed_gradient(param, grad, weight_decay, maximize)
    if momentum != 0:
        if step == 1:
            momentum_buffer[...] = g
        else:
            momentum_buffer *= momentum
            momentum_buffer += (1 - dampening) * g
        g = g + momentum * momentum_buffer if nesterov else momentum_buffer
    param -= lr * g


def adagrad_step(
    param: np.ndarray,
    grad: np.ndarray,
    state_sum: np.ndarray,
    *,
    lr: float = 1e-2,
    lr_decay: float = 0.0,
    weight_decay: float = 0.0,
    initial_accumulator_value: float = 0.0,
    eps: float = 1e-10,
    maximize: bool = False,
    step: int,
) -> None:
    """AdaGrad (see ``fastopt.adagrad_step``); ``initial_accumulator_value`` is where the
    caller started ``state_sum``."""
    g = _decayed_gradient(param, grad, weight_decay, maximize)
    clr = lr / (1 + (step - 1) * lr_decay)
    state_sum += g * g
    param -= clr * (g / (np.sqrt(state_sum) + eps))


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
    centered: bool = False,
    maximize: bool = False,
) -> None:
    """RMSProp, centered with ``grad_avg`` (see ``fastopt.rmsprop_step``)."""
    g = _decayed_gradient(param, grad, weight_decay, maximize)
    square_avg *= alpha
    square_avg += (1 - alpha) * g * g
    if centered:
        grad_avg += (1 - alpha) * (g - grad_avg)
        avg = np.sqrt(square_avg - grad_avg * grad_avg) + eps
    else:
        avg = np.sqrt(square_avg) + eps
    if momentum > 0:
        momentum_buffer *= momentum
        momentum_buffer += g / avg
        param -= lr * momentum_buffer
    else:
        param -= lr * (g / avg)


def adam_step(
    param: np.ndarray,
    grad: np.ndarray,
    exp_avg: np.ndarray,
    exp_avg_sq: np.ndarray,
    max_exp_avg_sq: np.ndarray | None = None,
    *,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    amsgrad: bool = False,
    maximize: bool = False,
    decoupled_weight_decay: bool = False,
    step: int,
) -> None:
    """Adam / AdamW, AMSGrad with ``max_exp_avg_sq`` (see ``fastopt.adam_step``)."""
    beta1, beta2 = betas
    g = _decayed_gradient(param, grad, weight_decay, maximize, lr, decoupled_weight_decay)
    exp_avg += (1 - beta1) * (g - exp_avg)
    exp_avg_sq *= beta2
    exp_avg_sq += (1 - beta2) * g * g
    second_moment = exp_avg_sq
    if amsgrad:
        np.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
        second_moment = max_exp_avg_sq
    step_size = lr / (1 - beta1**step)
    bias_correction2_sqrt = math.sqrt(1 - beta2**step)
    param -= step_size * (exp_avg / (np.sqrt(second_moment) / bias_correction2_sqrt + eps))


def adamax_step(
    param: np.ndarray,
    grad: np.ndarray,
    exp_avg: np.ndarray,
    exp_inf: np.ndarray,
    *,
    lr: float = 2e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    maximize: bool = False,
    step: int,
) -> None:
    """Adamax, the infinity-norm Adam (see ``fastopt.adamax_step``)."""
    beta1, beta2 = betas
    g = _decayed_gradient(param, grad, weight_decay, maximize)
    exp_avg += (1 - beta1) * (g - exp_avg)
    np.maximum(beta2 * exp_inf, np.abs(g) + eps, out=exp_inf)
    param -= lr / (1 - beta1**step) * exp_avg / exp_inf


def nadam_step(
    param: np.ndarray,
    grad: np.ndarray,
    exp_avg: np.ndarray,
    exp_avg_sq: np.ndarray,
    *,
    lr: float = 2e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    momentum_decay: float = 4e-3,
    decoupled_weight_decay: bool = False,
    maximize: bool = False,
    mu_product: float,
    step: int,
) -> dict[str, float]:
    """NAdam with momentum decay (see ``fastopt.nadam_step``); returns the new
    ``mu_product``, the product of the momentum coefficients so far (kept in float32)."""
    beta1, beta2 = betas
    g = _decayed_gradient(param, grad, weight_decay, maximize, lr, decoupled_weight_decay)
    mu = beta1 * (1 - 0.5 * 0.96 ** (step * momentum_decay))
    mu_next = beta1 * (1 - 0.5 * 0.96 ** ((step + 1) * momentum_decay))
    mu_product = float(np.float32(mu_product) * np.float32(mu))
    exp_avg += (1 - beta1) * (g - exp_avg)
    exp_avg_sq *= beta2
    exp_avg_sq += (1 - beta2) * g * g
    denom = np.sqrt(exp_avg_sq / (1 - beta2**step)) + eps
    param -= lr * (1 - mu) / (1 - mu_product) * g / denom
    param -= lr * mu_next / (1 - mu_product * mu_next) * exp_avg / denom
    return {"mu_product": mu_product}


def adadelta_step(
    param: np.ndarray,
    grad: np.ndarray,
    square_avg: np.ndarray,
    acc_delta: np.ndarray,
    *,
    lr: float = 1.0,
    rho: float = 0.9,
    eps: float = 1e-6,
    weight_decay: float = 0.0,
    maximize: bool = False,
) -> None:
    """Adadelta (see ``fastopt.adadelta_step``)."""
    g = _decayed_gradient(param, grad, weight_decay, maximize)
    square_avg *= rho
    square_avg += (1 - rho) * g * g
    delta = np.sqrt(acc_delta + eps) / np.sqrt(square_avg + eps) * g
    acc_delta *= rho
    acc_delta += (1 - rho) * delta * delta
    param -= lr * delta


def lion_step(
    param: np.ndarray,
    grad: np.ndarray,
    exp_avg: np.ndarray,
    *,
    lr: float = 1e-4,
    betas: tuple[float, float] = (0.9, 0.99),
    weight_decay: float = 0.0,
) -> None:
    """Lion, the sign of an interpolated momentum (see ``fastopt.lion_step``), as
    ``lion_pytorch`` computes it; the sign of 0 is 0, that of NaN is NaN (it propagates)."""
    beta1, beta2 = betas
    param *= 1 - lr * weight_decay
    param -= lr * np.sign(exp_avg * beta1 + grad * (1 - beta1))
    exp_avg *= beta2
    exp_avg += grad * (1 - beta2)


def lamb_step(
    param: np.ndarray,
    grad: np.ndarray,
    exp_avg: np.ndarray,
    exp_avg_sq: np.ndarray,
    *,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    weight_decay: float = 0.0,
    weight_decouple: bool = True,
    fixed_decay: bool = False,
    grad_averaging: bool = True,
    adam: bool = False,
    eps: float = 1e-6,
    maximize: bool = False,
    step: int,
) -> None:
    """LAMB, Adam's direction times a per-tensor trust ratio (see ``fastopt.lamb_step``), as
    ``pytorch_optimizer`` computes it: the parameter's norm clamped to 10, the first
    moment's bias correction in the step size, none for the second."""
    beta1, beta2 = betas
    g = -grad if maximize else grad
    exp_avg *= beta1
    exp_avg += (1 - beta1 if grad_averaging else 1.0) * g
    exp_avg_sq *= beta2
    exp_avg_sq += (1 - beta2) * g * g
    if weight_decay != 0 and weight_decouple:
        param *= 1 - weight_decay * (1.0 if fixed_decay else lr)
    update = exp_avg / (np.sqrt(exp_avg_sq) + eps)
    if weight_decay != 0 and not weight_decouple:
        update += weight_decay * param
    weight_norm = min(float(np.linalg.norm(param)), 10.0)
    adam_norm = float(np.linalg.norm(update))
    trust = 1.0 if weight_norm == 0 or adam_norm == 0 else weight_norm / (adam_norm + eps)
    if adam:
        trust = 1.0
    param -= lr / (1 - beta1**step) * trust * update


def lars_step(
    param: np.ndarray,
    grad: np.ndarray,
    momentum_buffer: np.ndarray | None = None,
    *,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    dampening: float = 0.0,
    trust_coefficient: float = 1e-3,
    nesterov: bool = False,
    maximize: bool = False,
) -> None:
    """LARS, SGD with a per-tensor trust ratio (see ``fastopt.lars_step``), as
    ``pytorch_optimizer`` computes it: tensors of one dimension or none take plain SGD; the
    buffer starts at zero."""
    g = -grad if maximize else grad
    if param.ndim > 1:
        param_norm = float(np.linalg.norm(param))
        denominator = float(np.linalg.norm(g)) + weight_decay * param_norm
        trust = 1.0
        if param_norm > 0 and denominator > 0:
            trust = trust_coefficient * param_norm / denominator
        g = (g + weight_decay * param) * trust
    if momentum > 0:
        momentum_buffer *= momentum
        momentum_buffer += (1 - dampening) * g
        g = g + momentum * momentum_buffer if nesterov else momentum_buffer
    param -= lr * g


def _schedule_free_average(
    lr: float,
    warmup_steps: int,
    r: float,
    weight_lr_power: float,
    k: int,
    weight_sum: float,
    lr_max: float,
) -> tuple[dict[str, Any], float, float]:
    """Schedule-Free's per-group bookkeeping for update ``k + 1``: the new group values and
    the average's weight c of this update, with the warmed-up lr."""
    lr = lr * ((k + 1) / warmup_steps if k < warmup_steps else 1.0)
    lr_max = max(lr, lr_max)
    weight = (k + 1) ** r * lr_max**weight_lr_power
    weight_sum = weight_sum + weight
    c = weight / weight_sum if weight_sum != 0 else 0.0
    kept = {"k": k + 1, "weight_sum": weight_sum, "lr_max": lr_max, "scheduled_lr": lr}
    return kept, c, lr


def schedule_free_sgd_step(
    param: np.ndarray,
    grad: np.ndarray,
    z: np.ndarray,
    *,
    lr: float = 1.0,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    warmup_steps: int = 0,
    r: float = 0.0,
    weight_lr_power: float = 2.0,
    k: int = 0,
    weight_sum: float = 0.0,
    lr_max: float = -1.0,
    scheduled_lr: float = 0.0,
) -> dict[str, Any]:
    """Schedule-Free SGD on ``y`` (``param``) and ``z`` (see ``fastopt.schedule_free_sgd_step``),
    as ``schedulefree`` computes it; returns the group's new ``k``, ``weight_sum``, ``lr_max``
    and ``scheduled_lr``."""
    kept, c, lr = _schedule_free_average(
        lr, warmup_steps, r, weight_lr_power, k, weight_sum, lr_max
    )
    g = grad + weight_decay * param if weight_decay != 0 else grad
    param += c * (z - param)
    param += lr * (momentum * (1 - c) - 1) * g
    z -= lr * g
    return kept


def schedule_free_adamw_step(
    param: np.ndarray,
    grad: np.ndarray,
    z: np.ndarray,
    exp_avg_sq: np.ndarray,
    *,
    lr: float = 0.0025,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    warmup_steps: int = 0,
    r: float = 0.0,
    weight_lr_power: float = 2.0,
    k: int = 0,
    weight_sum: float = 0.0,
    lr_max: float = -1.0,
    scheduled_lr: float = 0.0,
) -> dict[str, Any]:
    """Schedule-Free AdamW on ``y`` (``param``), ``z`` and ``exp_avg_sq`` (see
    ``fastopt.schedule_free_adamw_step``), as ``schedulefree`` computes it; returns the group's
    new ``k``, ``weight_sum``, ``lr_max`` and ``scheduled_lr``."""
    beta1, beta2 = betas
    kept, c, lr = _schedule_free_average(
        lr, warmup_steps, r, weight_lr_power, k, weight_sum, lr_max
    )
    exp_avg_sq *= beta2
    exp_avg_sq += (1 - beta2) * grad * grad
    u = grad / (np.sqrt(exp_avg_sq / (1 - beta2 ** (k + 1))) + eps)
    if weight_decay != 0:
        u = u + weight_decay * param
    param += c * (z - param)
    param += lr * (beta1 * (1 - c) - 1) * u
    z -= lr * u
    return kept


def muon_step(
    param: np.ndarray,
    grad: np.ndarray,
    momentum_buffer: np.ndarray,
    *,
    lr: float = 1e-3,
    weight_decay: float = 0.1,
    momentum: float = 0.95,
    nesterov: bool = True,
    ns_coefficients: tuple[float, float, float] = (3.4445, -4.775, 2.0315),
    eps: float = 1e-7,
    ns_steps: int = 5,
    adjust_lr_fn: str | None = None,
) -> None:
    """Muon on a 2-D ``param`` (see ``fastopt.muon_step``), as ``torch.optim.Muon`` computes
    it but with the Newton-Schulz iterations in the parameter's dtype (torch: bfloat16)."""
    momentum_buffer += (1 - momentum) * (grad - momentum_buffer)
    update = grad + momentum * (momentum_buffer - grad) if nesterov else momentum_buffer
    a, b, c = ns_coefficients
    rows, columns = param.shape
    x = update.T if rows > columns else update
    x = x / max(float(np.linalg.norm(x)), eps)
    for _ in range(ns_steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    if rows > columns:
        x = x.T
    if adjust_lr_fn == "match_rms_adamw":
        adjusted = lr * 0.2 * math.sqrt(max(rows, columns))
    else:
        adjusted = lr * math.sqrt(max(1, rows / columns))
    param *= 1 - lr * weight_decay
    param -= adjusted * x.astype(param.dtype)


def adafactor_step(
    param: np.ndarray,
    grad: np.ndarray,
    row_var: np.ndarray | None = None,
    col_var: np.ndarray | None = None,
    variance: np.ndarray | None = None,
    *,
    lr: float = 1e-2,
    beta2_decay: float = -0.8,
    eps: tuple[float | None, float] = (None, 1e-3),
    d: float = 1.0,
    weight_decay: float = 0.0,
    maximize: bool = False,
    step: int,
) -> None:
    """Adafactor (see ``fastopt.adafactor_step``), as ``torch.optim.Adafactor`` computes it:
    ``row_var`` and ``col_var`` for a ``param`` of two or more dimensions (factored over the
    last two), ``variance`` for one of fewer. A ``param`` without elements is left alone."""
    if param.size == 0:
        return
    g = -grad if maximize else grad
    eps1, eps2 = eps
    if eps1 is None:
        eps1 = float(np.finfo(param.dtype).eps)
    weight = step**beta2_decay
    rho = min(lr, 1 / math.sqrt(step))
    alpha = max(eps2, float(np.linalg.norm(param.astype(np.float64))) / math.sqrt(param.size))
    alpha *= rho
    param *= 1 - lr * weight_decay
    squares = g.astype(np.float64) ** 2
    if param.ndim >= 2:
        row_var += weight * (squares.mean(axis=-1, keepdims=True).astype(param.dtype) - row_var)
        col_var += weight * (squares.mean(axis=-2, keepdims=True).astype(param.dtype) - col_var)
        estimate = row_var * col_var / np.maximum(row_var.mean(axis=-2, keepdims=True), eps1)
    else:
        variance += weight * (g * g - variance)
        estimate = variance
    update = g / np.sqrt(np.maximum(estimate, eps1 * eps1))
    update_rms = float(np.linalg.norm(update.astype(np.float64))) / math.sqrt(update.size)
    param -= alpha / max(1.0, update_rms / d) * update


def ademamix_step(
    param: np.ndarray,
    grad: np.ndarray,
    exp_avg: np.ndarray,
    exp_avg_sq: np.ndarray,
    exp_avg_slow: np.ndarray,
    *,
    lr: float = 1e-3,
    betas: tuple[float, float, float] = (0.9, 0.999, 0.9999),
    weight_decay: float = 0.0,
    weight_decouple: bool = False,
    fixed_decay: bool = False,
    alpha: float = 5.0,
    t_alpha_beta3: float | None = None,
    eps: float = 1e-8,
    maximize: bool = False,
    step: int,
) -> None:
    """AdEMAMix, Adam with a slow momentum (see ``fastopt.ademamix_step``), as
    ``pytorch_optimizer`` computes it, warmup schedules included."""
    beta1, beta2, beta3 = betas
    g = -grad if maximize else grad
    if weight_decay != 0:
        if weight_decouple:
            param *= 1 - weight_decay * (1.0 if fixed_decay else lr)
        else:
            g = g + weight_decay * param
    alpha_t, beta3_t = alpha, beta3
    if t_alpha_beta3 is not None:
        alpha_t = min(step * alpha / t_alpha_beta3, alpha)
        log_beta1, log_beta3 = math.log(beta1), math.log(beta3)
        s = step / t_alpha_beta3
        beta3_t = math.exp(log_beta1 * log_beta3 / ((1 - s) * log_beta3 + s * log_beta1))
        beta3_t = min(beta3_t, beta3)
    exp_avg += (1 - beta1) * (g - exp_avg)
    exp_avg_sq *= beta2
    exp_avg_sq += (1 - beta2) * g * g
    exp_avg_slow += (1 - beta3_t) * (g - exp_avg_slow)
    denom = np.sqrt(exp_avg_sq) / math.sqrt(1 - beta2**step) + eps
    param -= lr * (exp_avg / (1 - beta1**step) + alpha_t * exp_avg_slow) / denom


def adan_step(
    param: np.ndarray,
    grad: np.ndarray,
    exp_avg: np.ndarray,
    exp_avg_sq: np.ndarray,
    exp_avg_diff: np.ndarray,
    previous_grad: np.ndarray,
    *,
    lr: float = 1e-3,
    betas: tuple[float, float, float] = (0.98, 0.92, 0.99),
    weight_decay: float = 0.0,
    weight_decouple: bool = False,
    eps: float = 1e-8,
    maximize: bool = False,
    step: int,
) -> None:
    """Adan, adaptive Nesterov momentum (see ``fastopt.adan_step``), as ``pytorch_optimizer``
    computes it; ``previous_grad`` is the last update's gradient (ignored on step 1)."""
    beta1, beta2, beta3 = betas
    g = -grad if maximize else grad
    diff = g - (g if step == 1 else previous_grad)
    exp_avg += (1 - beta1) * (g - exp_avg)
    exp_avg_diff += (1 - beta2) * (diff - exp_avg_diff)
    corrected = g + beta2 * diff
    exp_avg_sq *= beta3
    exp_avg_sq += (1 - beta3) * corrected * corrected
    denom = np.sqrt(exp_avg_sq) / math.sqrt(1 - beta3**step) + eps
    if weight_decay != 0 and weight_decouple:
        param *= 1 - lr * weight_decay
    param -= lr / (1 - beta1**step) * exp_avg / denom
    param -= lr * beta2 / (1 - beta2**step) * exp_avg_diff / denom
    if weight_decay != 0 and not weight_decouple:
        param /= 1 + lr * weight_decay
    previous_grad[...] = g


def radam_step(
    param: np.ndarray,
    grad: np.ndarray,
    exp_avg: np.ndarray,
    exp_avg_sq: np.ndarray,
    *,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    decoupled_weight_decay: bool = False,
    maximize: bool = False,
    step: int,
) -> None:
    """RAdam, rectified once the approximated SMA is longer than 5 (see
    ``fastopt.radam_step``)."""
    beta1, beta2 = betas
    g = _decayed_gradient(param, grad, weight_decay, maximize, lr, decoupled_weight_decay)
    exp_avg += (1 - beta1) * (g - exp_avg)
    exp_avg_sq *= beta2
    exp_avg_sq += (1 - beta2) * g * g
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * step * beta2**step / bias_correction2
    corrected = exp_avg / bias_correction1
    if rho_t > 5:
        rect = math.sqrt(
            (rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)
        )
        adaptive = math.sqrt(bias_correction2) / (np.sqrt(exp_avg_sq) + eps)
        param -= corrected * lr * adaptive * rect
    else:
        param -= corrected * lr


def rprop_step(
    param: np.ndarray,
    grad: np.ndarray,
    prev: np.ndarray,
    step_size: np.ndarray,
    *,
    lr: float = 1e-2,
    etas: tuple[float, float] = (0.5, 1.2),
    step_sizes: tuple[float, float] = (1e-6, 50),
    maximize: bool = False,
) -> None:
    """Rprop (see ``fastopt.rprop_step``): where the gradient's sign flipped, no move and
    ``prev`` keeps 0; ``lr`` is only the initial ``step_size``."""
    etaminus, etaplus = etas
    g = (-grad if maximize else grad).copy()
    product = g * prev
    factor = np.ones_like(step_size)
    factor[product > 0] = etaplus
    factor[product < 0] = etaminus
    step_size *= factor
    np.clip(step_size, *step_sizes, out=step_size)
    g[product < 0] = 0
    sign = (g > 0).astype(param.dtype) - (g < 0).astype(param.dtype)  # torch.sign(NaN) is 0
    param -= sign * step_size
    prev[...] = g


def asgd_step(
    param: np.ndarray,
    grad: np.ndarray,
    ax: np.ndarray,
    *,
    lr: float = 1e-2,
    lambd: float = 1e-4,
    alpha: float = 0.75,
    t0: float = 1e6,
    weight_decay: float = 0.0,
    maximize: bool = False,
    eta: float,
    mu: float,
    step: int,
) -> dict[str, float]:
    """ASGD (see ``fastopt.asgd_step``): the update uses the ``eta`` and ``mu`` the previous
    one stored, and returns the new ones (kept in float32)."""
    g = _decayed_gradient(param, grad, weight_decay, maximize)
    param *= 1 - lambd * eta
    param -= eta * g
    if mu != 1:
        ax += (param - ax) * mu
    else:
        ax[...] = param
    new_eta = float(np.float32(lr / ((1 + lambd * lr * step) ** alpha)))
    new_mu = float(np.float32(1 / max(1, step - t0)))
    return {"eta": new_eta, "mu": new_mu}


def clip_gradients(
    grads: list[np.ndarray],
    *,
    loss_scale: float = 1.0,
    max_norm: float | None = None,
    norm_type: float = 2.0,
    clip_value: float | None = None,
) -> tuple[list[np.ndarray], float]:
    """Unscale, clip by global norm, clip by value: new arrays and the pre-clip norm.

    The unfused sequence ``GradScaler.unscale_``, ``clip_grad_norm_``, ``clip_grad_value_``
    (see ``fastopt.gradients``), each a separate pass in the gradients' dtype; the norm is
    accumulated in float64.
    """
    unscaled = [g * (1.0 / loss_scale) for g in grads]
    if norm_type == math.inf:
        norm = max((float(np.max(np.abs(g), initial=0.0)) for g in unscaled), default=0.0)
        if any(np.isnan(g).any() for g in unscaled):
            norm = math.nan
    else:
        norm = math.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64))) for g in unscaled))
    if max_norm is not None:
        coef = min(max_norm / (norm + 1e-6), 1.0) if not math.isnan(norm) else math.nan
        unscaled = [g * coef for g in unscaled]
    if clip_value is not None:
        unscaled = [np.clip(g, -clip_value, clip_value) for g in unscaled]
    return unscaled, norm


# ---------------------------------------------------------------------- low precision
_BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
_MASK32 = np.uint64(0xFFFFFFFF)


def _mix32(x: np.ndarray) -> np.ndarray:
    """Chris Wellons' ``lowbias32`` on uint64 arrays holding 32-bit words."""
    x = np.asarray(x, dtype=np.uint64)
    x = x ^ (x >> np.uint64(16))
    x = (x * np.uint64(0x7FEB352D)) & _MASK32
    x = x ^ (x >> np.uint64(15))
    x = (x * np.uint64(0x846CA68B)) & _MASK32
    return x ^ (x >> np.uint64(16))


def random_words(key: int, slot: int, index: np.ndarray) -> np.ndarray:
    """The random bits stochastic rounding uses (the low 16) for elements ``index`` of the
    array in ``slot`` (the parameter 0, state array k k + 1, a compensation buffer 63) under
    the segment's ``key``: the word ``lowbias32((lowbias32(key ^ (slot >> 1) * 0x9E3779B9) ^
    lo) + hi * 0x85EBCA77)`` (``lo``/``hi`` the index's 32-bit halves, modulo 2^32), shifted
    right by 16 for an odd slot (slots 2k and 2k + 1 share a word, one half each)."""
    pair = np.uint64(slot >> 1)
    stream = _mix32((np.uint64(key) ^ (pair * np.uint64(0x9E3779B9))) & _MASK32)
    index = np.asarray(index, dtype=np.uint64)
    low, high = index & _MASK32, (index >> np.uint64(32)) * np.uint64(0x85EBCA77)
    hashed = _mix32(((stream ^ low) + high) & _MASK32)
    return (hashed >> np.uint64(16 * (slot & 1))).astype(np.uint32)


def _neighbours(x: np.ndarray, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """The ``dtype`` values on either side of float32 ``x``: toward zero, and away from zero
    (equal where ``x`` is one of them)."""
    with np.errstate(over="ignore", invalid="ignore"):
        nearest = x.astype(dtype)
        toward = np.where(
            np.abs(nearest.astype(np.float32)) > np.abs(x),
            np.nextafter(nearest, dtype.type(0)),
            nearest,
        )
        away = np.where(
            toward.astype(np.float32) == x,
            toward,
            np.nextafter(toward, np.copysign(dtype.type(np.inf), x).astype(dtype)),
        )
    return toward, away


def round_to(x: np.ndarray, dtype: Any, words: np.ndarray | None = None) -> np.ndarray:
    """Float32 (or float64, via float32) ``x`` rounded to bfloat16 or float16: to nearest,
    ties to even (``ml_dtypes``' and NumPy's conversions), or, given random ``words``,
    stochastically.

    Stochastic rounding goes away from zero with the probability of ``x``'s distance from
    the value toward zero, in units of the spacing there: with ``f`` that fraction (a
    multiple of 2^-16 for bfloat16, of 2^-13 for float16 normals, of 2^-24 in units of the
    spacing for float16 subnormals), away when ``u < f``, ``u`` being ``(~word mod 2^16) /
    2^16`` (bfloat16), ``(~word mod 2^13) / 2^13`` (float16 normals), ``(word mod 2^16) /
    2^16`` (float16 subnormals). NaN and Inf stay as they are; a value past the largest finite one
    rounds to Inf with the probability it is past it.
    """
    dtype = np.dtype(dtype)
    x = np.asarray(x, dtype=np.float32)
    if words is None:
        with np.errstate(over="ignore", invalid="ignore"):  # beyond the range: Inf
            return x.astype(dtype)
    toward, away = _neighbours(x, dtype)
    low, high = np.abs(toward.astype(np.float64)), np.abs(away.astype(np.float64))
    with np.errstate(invalid="ignore"):  # Inf and NaN: kept as they are below
        gap = np.where(np.isinf(high), _spacing_at_max(dtype), np.where(high > low, high - low, 1))
        fraction = (np.abs(x.astype(np.float64)) - low) / gap
    words = np.asarray(words, dtype=np.uint64)
    if dtype == _BFLOAT16:
        uniform = ((~words) & np.uint64(0xFFFF)) / 65536.0
    else:
        subnormal = np.abs(x) < np.float32(2.0**-14)
        uniform = np.where(
            subnormal,
            (words & np.uint64(0xFFFF)) / 65536.0,
            ((~words) & np.uint64(0x1FFF)) / 8192.0,
        )
    out = np.where(uniform < fraction, away, toward)
    with np.errstate(over="ignore", invalid="ignore"):
        return np.where(np.isfinite(x), out, x.astype(dtype))


def _spacing_at_max(dtype: np.dtype) -> float:
    """The spacing between the largest finite value of ``dtype`` and the one below it."""
    largest = np.finfo(dtype).max
    return float(largest) - float(np.nextafter(largest, dtype.type(0)))


#: Elements per block of the 8-bit block-wise formats, each block with its own scale.
QUANTIZATION_BLOCK = 256


def _linspace32(count: int) -> np.ndarray:
    """``torch.linspace(0.1, 1, count, dtype=torch.float32)``, bit for bit: the step rounded
    to float32, each value one rounding of ``start + step * i`` (``end - ...`` in the upper
    half)."""
    start = float(np.float32(0.1))
    step = float(np.float32((1.0 - start) / (count - 1)))
    i = np.arange(count, dtype=np.float64)
    values = np.where(i < count // 2, start + step * i, 1.0 - step * (count - 1 - i))
    return values.astype(np.float32)


def dynamic_map(signed: bool) -> np.ndarray:
    r"""The 256 codes of the dynamic 8-bit data type, ascending (float32).

    Dettmers' dynamic type as ``bitsandbytes.functional.create_dynamic_map(signed)`` builds it
    (bit for bit): for each decimal exponent :math:`e = 0, \dots, 6`, the midpoints of
    :math:`2^e + 1` (signed; :math:`2^{e+1} + 1` unsigned) points evenly spaced over
    :math:`[0.1, 1]`, times :math:`10^{e-6}` (and their negatives, signed), then 0 and 1: fine
    steps near zero, coarse ones near the block's largest magnitude. The signed map codes
    values in :math:`[-1, 1]` (a momentum), the unsigned one :math:`[0, 1]` (a second moment).
    """
    data: list[float] = []
    for exponent in range(7):
        points = _linspace32(2**exponent + 1 if signed else 2 ** (exponent + 1) + 1)
        means = (points[:-1] + points[1:]) / np.float32(2)
        values = np.float32(10.0 ** (exponent - 6)) * means
        data += values.tolist()
        if signed:
            data += (-values).tolist()
    data += [0.0, 1.0]
    return np.sort(np.array(data, dtype=np.float32))


def quantize_blockwise(
    x: np.ndarray, code: np.ndarray, block: int = QUANTIZATION_BLOCK
) -> tuple[np.ndarray, np.ndarray]:
    r"""Float32 ``x`` (flat) as 8-bit codes and one float32 scale per block of ``block``.

    As bitsandbytes' ``quantize_blockwise`` does it (its PyTorch implementation; its CPU
    library searches approximately): each block's scale is its largest magnitude :math:`a`;
    an element :math:`x` becomes the index of the code nearest
    :math:`\operatorname{clamp}(x \cdot (1/a), -1, 1)` (:math:`x / a` in a last, partial
    block), :math:`a` taken at least 1e-38 there (a block of zeros codes zeros), a tie
    between two codes going to the lower one. NaN in a block makes its scale NaN, which
    decodes the whole block to NaN (non-finite values propagate, as in float32 state).

    Returns
    -------
    codes : ndarray of uint8
        ``x``'s shape.
    absmax : ndarray of float32
        One scale per block, ``ceil(x.size / block)`` of them.
    """
    flat = np.asarray(x, dtype=np.float32).reshape(-1)
    full = flat.size - flat.size % block
    blocks = flat[:full].reshape(-1, block)
    absmax = np.abs(blocks).max(axis=1, initial=0.0) if full else np.zeros(0, np.float32)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        if np.isnan(blocks).any():  # max() above already gives NaN; keep it explicit
            absmax = np.where(np.isnan(blocks).any(axis=1), np.float32(np.nan), absmax)
        scale = np.float32(1.0) / np.maximum(absmax, np.float32(1e-38))
        scaled = np.clip(blocks * scale[:, None], -1, 1).reshape(-1)
        if full < flat.size:
            tail = flat[full:]
            last = np.float32(np.nan) if np.isnan(tail).any() else np.abs(tail).max()
            absmax = np.append(absmax, last).astype(np.float32)
            tail = np.clip(tail / np.maximum(last, np.float32(1e-38)), -1, 1)
            scaled = np.concatenate([scaled, tail])
    bounds = (code[:-1] + code[1:]) / np.float32(2)
    codes = np.searchsorted(bounds, scaled, side="left").astype(np.uint8)
    return codes.reshape(np.shape(x)), absmax.astype(np.float32)


def dequantize_blockwise(
    codes: np.ndarray, absmax: np.ndarray, code: np.ndarray, block: int = QUANTIZATION_BLOCK
) -> np.ndarray:
    """The float32 values of 8-bit ``codes``: ``code[q] * absmax[block of q]``."""
    flat = np.asarray(codes).reshape(-1)
    scales = np.repeat(np.asarray(absmax, dtype=np.float32), block)[: flat.size]
    with np.errstate(invalid="ignore"):  # a NaN or Inf scale decodes its block to NaN
        return (code[flat.astype(np.intp)] * scales).reshape(np.shape(codes))


def low_precision_step(
    rule_step: Any,
    param: np.ndarray,
    grad: np.ndarray,
    /,
    *state: np.ndarray | tuple[np.ndarray, np.ndarray, np.ndarray] | None,
    master_param: np.ndarray | None = None,
    kahan_comp: np.ndarray | None = None,
    rounding_key: int | None = None,
    **hyperparameters: Any,
) -> Any:
    """One update of a rule's reference ``rule_step`` on low-precision storage, as fastopt's
    kernels do it (``hyperparameters`` are ``rule_step``'s keywords, ``step`` included).

    The parameter (its float32 ``master_param`` where there is one), the gradient and the
    state are decoded to the compute type (float64 for a float64 parameter, else float32),
    ``rule_step`` updates them there, and the results are written back: the master copy
    exactly and the parameter rounded; or through the Kahan ``kahan_comp`` (``c += new - old;
    p = round(old + c); c = round(c + old - p)``); or the parameter rounded. bfloat16 state is
    rounded, float state stored as is, and 8-bit state, given as a ``(codes, absmax, code)``
    triple (:func:`quantize_blockwise`'s output and the map), is decoded and encoded again in
    place, its new scales from the new values (as float32). Rounding is to nearest, or
    stochastic under ``rounding_key`` (:func:`random_words`, the parameter slot 0, state
    array k slot k + 1, the compensation 63). Returns what ``rule_step`` returns.
    """
    compute = np.float64 if param.dtype == np.float64 else np.float32
    old = master_param.copy() if master_param is not None else param.astype(compute)
    work = old.copy()
    wide_grad = grad.astype(compute)

    def decoded(array: Any) -> np.ndarray | None:
        if isinstance(array, tuple):
            return dequantize_blockwise(*array).astype(compute)
        return None if array is None else array.astype(compute)

    wide_state = [decoded(s) for s in state]
    returned = rule_step(work, wide_grad, *wide_state, **hyperparameters)
    index = np.arange(param.size).reshape(param.shape)

    def rounded(values: np.ndarray, dtype: np.dtype, slot: int) -> np.ndarray:
        words = None if rounding_key is None else random_words(rounding_key, slot, index)
        return round_to(values, dtype, words)

    if master_param is not None:
        master_param[...] = work
        param[...] = rounded(work, param.dtype, 0)
    elif kahan_comp is not None:
        carried = kahan_comp.astype(np.float32) + (work - old)
        param[...] = rounded(old + carried, param.dtype, 0)
        kahan_comp[...] = rounded(carried + (old - param.astype(np.float32)), param.dtype, 63)
    elif param.dtype in (np.float32, np.float64):
        param[...] = work
    else:
        param[...] = rounded(work, param.dtype, 0)
    for slot, (array, value) in enumerate(zip(state, wide_state), start=1):
        if isinstance(array, tuple):
            codes, absmax, code = array
            codes[...], absmax[...] = quantize_blockwise(value.astype(np.float32), code)
        elif array is not None:
            array[...] = rounded(value, array.dtype, slot) if array.dtype == _BFLOAT16 else value
    return returned
