"""What the benchmarks run: rules with their options, sizes, dtypes and implementations.

Each :class:`RuleCase` names one rule with fixed options, the fastopt class that runs it, the
NumPy reference call that runs the same update, the ``torch.optim`` class and options that
match it, and the number of state arrays it reads and writes. From that count follows the
memory traffic of one update: every rule reads the parameter, the gradient and each state
array and writes back the parameter and each state array, so an update moves
``(3 + 2 * n_state) * itemsize`` bytes per element (Adam, float32: 28).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import fastopt
from fastopt import reference

__all__ = [
    "BASELINES",
    "DTYPES",
    "FULL_SIZES",
    "HEADLINE_RULES",
    "IMPLEMENTATIONS",
    "MANY_TENSORS_COUNT",
    "MANY_TENSORS_TOTAL",
    "QUICK_SIZES",
    "RULES",
    "RuleCase",
    "many_tensor_sizes",
    "parse_size",
    "size_label",
]


@dataclass(frozen=True)
class RuleCase:
    """One rule with fixed options, as every implementation runs it.

    Attributes
    ----------
    name
        Identifier used on the command line and in results (``"adam"``).
    label
        Human-readable name for tables and plots.
    optimizer
        The fastopt class; ``options`` are its constructor keywords.
    state
        Names of the reference's state arrays, in its positional order.
    reference_step
        ``reference_step(param, grad, *state, step=t)`` runs one NumPy reference update.
    torch_class, torch_options
        The matching ``torch.optim`` class name and keywords (``lr`` included).
    """

    name: str
    label: str
    optimizer: type[fastopt.Optimizer]
    options: dict[str, Any]
    state: tuple[str, ...]
    reference_step: Callable[..., None] = field(repr=False)
    torch_class: str
    torch_options: dict[str, Any]

    @property
    def n_state(self) -> int:
        """Number of state arrays read and written per element."""
        return len(self.state)

    @property
    def reads(self) -> int:
        """Arrays read per element: parameter, gradient and every state array."""
        return 2 + self.n_state

    @property
    def writes(self) -> int:
        """Arrays written per element: parameter and every state array."""
        return 1 + self.n_state

    def bytes_per_element(self, dtype: np.dtype | type | str) -> int:
        """Bytes one update moves per element (reads plus writes)."""
        return (self.reads + self.writes) * np.dtype(dtype).itemsize


def _sgd(param, grad, *state, step, **options):
    buffer = state[0] if state else None
    reference.sgd_step(param, grad, buffer, initialize_buffer=step == 1, **options)


def _adagrad(param, grad, state_sum, *, step, **options):
    reference.adagrad_step(param, grad, state_sum, step=step, **options)


def _rmsprop(param, grad, square_avg, *rest, step, **options):
    momentum_buffer = rest[0] if options.get("momentum", 0) > 0 else None
    grad_avg = rest[-1] if options.get("centered") else None
    options = {k: v for k, v in options.items() if k != "centered"}
    reference.rmsprop_step(param, grad, square_avg, momentum_buffer, grad_avg, **options)


def _adam(param, grad, exp_avg, exp_avg_sq, *rest, step, **options):
    max_exp_avg_sq = rest[0] if options.pop("amsgrad", False) else None
    reference.adam_step(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step=step, **options)


def _bind(function: Callable[..., None], **options: Any) -> Callable[..., None]:
    def step(*arrays: np.ndarray, step: int) -> None:
        function(*arrays, step=step, **options)

    return step


def _case(
    name: str,
    label: str,
    optimizer: type[fastopt.Optimizer],
    options: dict[str, Any],
    state: tuple[str, ...],
    reference_step: Callable[..., None],
    reference_options: dict[str, Any],
    torch_class: str,
) -> RuleCase:
    return RuleCase(
        name=name,
        label=label,
        optimizer=optimizer,
        options=options,
        state=state,
        reference_step=_bind(reference_step, **reference_options),
        torch_class=torch_class,
        torch_options=dict(options),
    )


_ADAM_REF = {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}

RULES: dict[str, RuleCase] = {
    case.name: case
    for case in (
        _case("sgd", "SGD", fastopt.SGD, {"lr": 1e-3}, (), _sgd, {"lr": 1e-3}, "SGD"),
        _case(
            "sgd_momentum",
            "SGD momentum",
            fastopt.SGD,
            {"lr": 1e-3, "momentum": 0.9},
            ("momentum_buffer",),
            _sgd,
            {"lr": 1e-3, "momentum": 0.9},
            "SGD",
        ),
        _case(
            "adagrad",
            "Adagrad",
            fastopt.Adagrad,
            {"lr": 1e-2},
            ("sum",),
            _adagrad,
            {"lr": 1e-2},
            "Adagrad",
        ),
        _case(
            "rmsprop",
            "RMSprop",
            fastopt.RMSprop,
            {"lr": 1e-2},
            ("square_avg",),
            _rmsprop,
            {"lr": 1e-2},
            "RMSprop",
        ),
        _case(
            "rmsprop_centered",
            "RMSprop centered",
            fastopt.RMSprop,
            {"lr": 1e-2, "centered": True},
            ("square_avg", "grad_avg"),
            _rmsprop,
            {"lr": 1e-2, "centered": True},
            "RMSprop",
        ),
        _case(
            "adam",
            "Adam",
            fastopt.Adam,
            {"lr": 1e-3},
            ("exp_avg", "exp_avg_sq"),
            _adam,
            _ADAM_REF,
            "Adam",
        ),
        _case(
            "adamw",
            "AdamW",
            fastopt.AdamW,
            {"lr": 1e-3, "weight_decay": 1e-2},
            ("exp_avg", "exp_avg_sq"),
            _adam,
            {**_ADAM_REF, "weight_decay": 1e-2, "decoupled_weight_decay": True},
            "AdamW",
        ),
        _case(
            "amsgrad",
            "Adam AMSGrad",
            fastopt.Adam,
            {"lr": 1e-3, "amsgrad": True},
            ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
            _adam,
            {**_ADAM_REF, "amsgrad": True},
            "Adam",
        ),
    )
}

#: The rules of the seed tutorial (plain SGD stands for gradient descent); the quick run's set.
HEADLINE_RULES: tuple[str, ...] = ("sgd", "sgd_momentum", "adagrad", "rmsprop", "adam")

#: Implementations in table order. ``ceiling`` is the same-bytes streaming kernel.
IMPLEMENTATIONS: tuple[str, ...] = (
    "fastopt",
    "ceiling",
    "numpy",
    "torch-fused",
    "torch-foreach",
)

#: What fastopt's speed-ups are measured against.
BASELINES: tuple[str, ...] = ("numpy", "torch-fused", "torch-foreach")

DTYPES: tuple[str, ...] = ("float32", "float64")

#: 2^12 (in L1/L2, call overhead dominates) to 2^26 (far beyond any last-level cache).
FULL_SIZES: tuple[int, ...] = tuple(1 << k for k in range(12, 27, 2))
#: Overhead-bound, L2-resident, L3-resident and DRAM-bound, one each.
QUICK_SIZES: tuple[int, ...] = (1 << 12, 1 << 16, 1 << 20, 1 << 24)

#: The many-tensors case: a model's worth of arrays, 2^20 elements in all.
MANY_TENSORS_COUNT = 200
MANY_TENSORS_TOTAL = 1 << 20

_SIZE = re.compile(r"^\s*(\d+)\s*(?:(\^|\*\*)\s*(\d+)|([kKmMgG]))?\s*$")
_SUFFIX = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(text: str) -> int:
    """A size written as ``1048576``, ``2^20``, ``2**20`` or ``1M`` (powers of 1024).

    Raises
    ------
    ValueError
        If ``text`` is none of these or is below 1.
    """
    match = _SIZE.match(str(text))
    if not match:
        raise ValueError(f"size must look like 1048576, 2^20, 2**20 or 1M, got {text!r}")
    base, _, exponent, suffix = match.groups()
    value = int(base)
    if exponent is not None:
        value = value ** int(exponent)
    elif suffix is not None:
        value *= _SUFFIX[suffix.lower()]
    if value < 1:
        raise ValueError(f"size must be >= 1, got {text!r}")
    return value


def size_label(n: int) -> str:
    """``2^20`` for powers of two, the number otherwise."""
    if n > 0 and n & (n - 1) == 0:
        return f"2^{n.bit_length() - 1}"
    return str(n)


def many_tensor_sizes(
    total: int = MANY_TENSORS_TOTAL, count: int = MANY_TENSORS_COUNT
) -> list[int]:
    """Sizes of ``count`` arrays adding up to ``total``, shaped like a model's layer list.

    Layers alternate a weight matrix and its bias; weights of a few widths (as in a stack
    of blocks of different widths), biases small. The list is the same on every call.

    Raises
    ------
    ValueError
        If ``count`` is odd or below 2, or ``total`` too small to give every array an element.
    """
    if count < 2 or count % 2:
        raise ValueError(f"count must be an even number >= 2, got {count}")
    layers = count // 2
    widths = [64 * (1 + layer % 4) for layer in range(layers)]
    bias_total = sum(widths)
    if total < bias_total + layers:
        raise ValueError(f"total must be at least {bias_total + layers}, got {total}")
    weights = np.array([w * w for w in widths], dtype=np.float64)
    weights = np.floor(weights / weights.sum() * (total - bias_total)).astype(np.int64)
    weights = np.maximum(weights, 1)
    weights[0] += total - bias_total - int(weights.sum())
    sizes: list[int] = []
    for weight, width in zip(weights.tolist(), widths, strict=True):
        sizes.extend((int(weight), width))
    return sizes
