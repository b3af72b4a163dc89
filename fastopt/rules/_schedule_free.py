"""What the two Schedule-Free rules share (Defazio et al., 2024, "The Road Less Scheduled"),
as the ``schedulefree`` package computes it.

Schedule-Free keeps two sequences per parameter: ``z``, the base optimizer's iterate, and
``x``, the weighted average of the ``z`` sequence that is evaluated; training takes gradients
at their interpolation ``y = (1 - beta) z + beta x``. The parameters hold ``y`` in training and
``x`` in evaluation: :func:`train` and :func:`eval` move them between the two. Like the
package, the optimizer starts in evaluation mode, and a step outside training mode is an
error.

Per parameter group the package keeps, in the group itself (so in ``state_dict()``'s
``param_groups``): the update count ``k``, the mode ``train_mode``, the running ``weight_sum``
and ``lr_max`` of the average's weights and the warmed-up ``scheduled_lr``. Each step
advances them once per group (:func:`advance_group`), before the rows are made.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from fastopt._checks import check_bool, check_nonnegative, check_real
from fastopt._codegen import kernels_of
from fastopt._declared import row_of
from fastopt._launch import launch, single_segment
from fastopt._math import lerp
from fastopt.precision import KAHAN_COMP, MASTER_PARAM
from fastopt.rule import GroupState, Hyperparameter, Rule

__all__ = [
    "GROUP_STATE",
    "advance_group",
    "averaging",
    "check_steps",
    "mode_methods",
    "require_training",
]


def check_steps(name: str, value: object) -> int:
    """A number of steps: an ``int`` ``>= 0`` (``bool`` refused)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"Invalid {name}: {value} (must be >= 0)")
    return int(value)


def _check_lr_max(name: str, value: object) -> float:
    value = check_real(name, value)
    if value < 0 and value != -1.0:
        raise ValueError(f"Invalid {name}: {value} (must be >= 0, or -1 before any step)")
    return value


#: The per-group entries the package keeps, with their values before the first step.
GROUP_STATE = (
    GroupState("k", 0, check_steps),
    GroupState("train_mode", False, check_bool, functional=False),
    GroupState("weight_sum", 0.0, check_nonnegative),
    GroupState("lr_max", -1.0, _check_lr_max),
    GroupState("scheduled_lr", 0.0, check_nonnegative),
)

WARMUP_STEPS = Hyperparameter("warmup_steps", 0, check_steps, annotation="int")
R = Hyperparameter("r", 0.0, check_nonnegative)
WEIGHT_LR_POWER = Hyperparameter("weight_lr_power", 2.0, check_nonnegative)


def _weight(group: Mapping[str, Any], k: int) -> float:
    """The weight of update ``k`` (from 1) in the average: ``k^r * lr_max^weight_lr_power``."""
    return (k ** group["r"]) * (group["lr_max"] ** group["weight_lr_power"])


def advance_group(group: dict[str, Any]) -> None:
    """Count one more update of ``group``: its warmed-up lr, ``lr_max``, ``weight_sum`` and
    ``k``, in the package's arithmetic."""
    k = group["k"]
    warmup = group["warmup_steps"]
    schedule = (k + 1) / warmup if k < warmup else 1.0
    lr = group["scheduled_lr"] = group["lr"] * schedule
    group["lr_max"] = max(lr, group["lr_max"])
    group["weight_sum"] = group["weight_sum"] + _weight(group, k + 1)
    group["k"] = k + 1


def averaging(group: Mapping[str, Any], beta: float) -> tuple[float, float, float]:
    """After :func:`advance_group`: the weight ``c`` of the new ``z`` in the average, the
    coefficient of the update in ``y``'s step, ``lr * (beta * (1 - c) - 1)``, and the lr."""
    weight_sum = group["weight_sum"]
    c = _weight(group, group["k"]) / weight_sum if weight_sum != 0 else 0.0
    lr = group["scheduled_lr"]
    return c, lr * (beta * (1.0 - c) - 1.0), lr


def require_training(groups: Sequence[Mapping[str, Any]]) -> None:
    """Refuse a step outside training mode (the package looks at the first group)."""
    if not groups[0]["train_mode"]:
        raise RuntimeError(
            "the optimizer is not in train mode: call optimizer.train() before the training "
            "steps and optimizer.eval() before evaluating (or saving) the model"
        )


def _blend_update(p, g, h):
    """``p`` moved towards ``z`` (passed as the gradient): ``torch.lerp(p, z, weight)``."""
    return (lerp(p, g, h.weight),)


_BLEND = Rule(
    name="ScheduleFreeBlend",
    update=_blend_update,
    fields=("weight",),
    row=lambda group, step, created, scalars: (group["weight"],),
    hyperparameters=(),
    maximize=None,
    counts_steps=False,
)


def _switch(optimizer: Any, training: bool, beta_of: Callable[[Mapping[str, Any]], float]) -> None:
    """Move the parameters of every group not in mode ``training`` between ``x`` and ``y``:
    ``p <- lerp(p, z, 1 - beta)`` to training, ``lerp(p, z, 1 - 1/beta)`` to evaluation."""
    kernels = kernels_of(_BLEND)
    flat = optimizer._arrays.flat
    index = 0
    for group in optimizer.param_groups:
        count = len(group["params"])
        if group["train_mode"] != training:
            beta = beta_of(group)
            weight = 1.0 - beta if training else 1.0 - 1.0 / beta
            row = np.array([row_of(_BLEND, {"weight": weight}, 1, False)])
            for position in range(index, index + count):
                entry = optimizer.state.get(position)
                if entry and "z" in entry:
                    # A 16-bit parameter moves through its master copy or compensation.
                    precision = {
                        key: flat(entry[name])
                        for key, name in (("master", MASTER_PARAM), ("comp", KAHAN_COMP))
                        if name in entry
                    }
                    param = flat(optimizer._params[position])
                    segment = single_segment(param.size)
                    launch(kernels, segment, row, param, flat(entry["z"]), **precision)
            group["train_mode"] = training
        index += count


def mode_methods(
    beta_of: Callable[[Mapping[str, Any]], float],
) -> dict[str, Callable[[Any], None]]:
    """The ``train`` and ``eval`` methods of a Schedule-Free class, ``beta_of(group)`` giving
    its interpolation constant (SGD's ``momentum``, AdamW's ``beta1``)."""

    def train(self) -> None:
        """Training mode: the parameters hold ``y``, where the gradients are taken (the
        package's ``optimizer.train()``; call it before the training steps)."""
        _switch(self, True, beta_of)

    def eval(self) -> None:
        """Evaluation mode: the parameters hold ``x``, the average to evaluate and save (the
        package's ``optimizer.eval()``)."""
        _switch(self, False, beta_of)

    return {"train": train, "eval": eval}
