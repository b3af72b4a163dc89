"""The table of rules and options the tests run, and a driver of the NumPy reference.

``run_reference`` replays what an optimizer class does (state creation, step counting,
torch's first-step momentum rule) with :mod:`fastopt.reference` alone, so a class and the
reference can be compared array by array after any number of steps.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

import fastopt
from fastopt import reference


def in_training(cls: type[fastopt.Optimizer]) -> type[fastopt.Optimizer]:
    """A Schedule-Free class whose optimizers start in training mode: the package's classes
    start in evaluation mode, and every test here steps right after construction."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        cls.__init__(self, *args, **kwargs)
        self.train()

    __init__.__signature__ = inspect.signature(cls.__init__)  # type: ignore[attr-defined]
    namespace = {"__init__": __init__, "__qualname__": cls.__qualname__}
    return type(cls.__name__, (cls,), {**namespace, "__module__": cls.__module__})


SCHEDULE_FREE_SGD = in_training(fastopt.ScheduleFreeSGD)
SCHEDULE_FREE_ADAMW = in_training(fastopt.ScheduleFreeAdamW)

# (rule id, class, constructor keyword arguments)
CASES: list[tuple[str, type[fastopt.Optimizer], dict[str, Any]]] = [
    ("sgd", fastopt.SGD, {"lr": 0.1}),
    ("sgd", fastopt.SGD, {"lr": 0.05, "momentum": 0.9}),
    ("sgd", fastopt.SGD, {"lr": 0.05, "momentum": 0.9, "dampening": 0.3}),
    ("sgd", fastopt.SGD, {"lr": 0.05, "momentum": 0.9, "nesterov": True}),
    ("sgd", fastopt.SGD, {"lr": 0.05, "momentum": 0.5, "weight_decay": 0.1}),
    ("sgd", fastopt.SGD, {"lr": 0.05, "momentum": 0.9, "maximize": True}),
    ("adagrad", fastopt.Adagrad, {"lr": 0.1}),
    ("adagrad", fastopt.Adagrad, {"lr": 0.1, "lr_decay": 0.05, "weight_decay": 0.1}),
    ("adagrad", fastopt.Adagrad, {"lr": 0.1, "initial_accumulator_value": 0.5, "eps": 1e-6}),
    ("adagrad", fastopt.Adagrad, {"lr": 0.1, "maximize": True}),
    ("rmsprop", fastopt.RMSprop, {"lr": 0.01}),
    ("rmsprop", fastopt.RMSprop, {"lr": 0.01, "alpha": 0.9, "centered": True}),
    ("rmsprop", fastopt.RMSprop, {"lr": 0.01, "momentum": 0.9}),
    ("rmsprop", fastopt.RMSprop, {"lr": 0.01, "momentum": 0.5, "centered": True}),
    ("rmsprop", fastopt.RMSprop, {"lr": 0.01, "weight_decay": 0.1, "maximize": True}),
    ("adam", fastopt.Adam, {"lr": 0.01}),
    ("adam", fastopt.Adam, {"lr": 0.01, "amsgrad": True}),
    ("adam", fastopt.Adam, {"lr": 0.01, "betas": (0.8, 0.99), "weight_decay": 0.1}),
    ("adam", fastopt.Adam, {"lr": 0.01, "maximize": True, "eps": 1e-6}),
    ("adam", fastopt.Adam, {"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True}),
    ("adam", fastopt.AdamW, {"lr": 0.01}),
    ("adam", fastopt.AdamW, {"lr": 0.01, "amsgrad": True, "weight_decay": 0.5}),
    ("adamax", fastopt.Adamax, {"lr": 0.01}),
    ("adamax", fastopt.Adamax, {"lr": 0.01, "betas": (0.3, 0.9), "weight_decay": 0.1}),
    ("adamax", fastopt.Adamax, {"lr": 0.01, "eps": 1e-3, "maximize": True}),
    ("nadam", fastopt.NAdam, {"lr": 0.01}),
    ("nadam", fastopt.NAdam, {"lr": 0.01, "weight_decay": 0.1, "momentum_decay": 0.01}),
    ("nadam", fastopt.NAdam, {"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True}),
    ("nadam", fastopt.NAdam, {"lr": 0.01, "betas": (0.6, 0.99), "maximize": True}),
    ("lion", fastopt.Lion, {"lr": 0.01, "weight_decay": 0.01}),
    ("lion", fastopt.Lion, {"lr": 0.01, "betas": (0.5, 0.9), "weight_decay": 0.1}),
    ("ademamix", fastopt.AdEMAMix, {"lr": 0.01}),
    ("ademamix", fastopt.AdEMAMix, {"lr": 0.01, "alpha": 2.0, "t_alpha_beta3": 5.0}),
    ("ademamix", fastopt.AdEMAMix, {"lr": 0.01, "weight_decay": 0.1}),
    (
        "ademamix",
        fastopt.AdEMAMix,
        {"lr": 0.01, "weight_decay": 0.1, "weight_decouple": True, "maximize": True},
    ),
    (
        "ademamix",
        fastopt.AdEMAMix,
        {"lr": 0.01, "weight_decay": 0.1, "weight_decouple": True, "fixed_decay": True},
    ),
    ("adan", fastopt.Adan, {"lr": 0.01}),
    ("adan", fastopt.Adan, {"lr": 0.01, "weight_decay": 0.1}),
    ("adan", fastopt.Adan, {"lr": 0.01, "weight_decay": 0.1, "weight_decouple": True}),
    ("adan", fastopt.Adan, {"lr": 0.01, "betas": (0.9, 0.8, 0.95), "maximize": True}),
    ("lamb", fastopt.Lamb, {"lr": 0.01}),
    ("lamb", fastopt.Lamb, {"lr": 0.01, "weight_decay": 0.1}),
    ("lamb", fastopt.Lamb, {"lr": 0.01, "weight_decay": 0.1, "weight_decouple": False}),
    ("lamb", fastopt.Lamb, {"lr": 0.01, "weight_decay": 0.1, "fixed_decay": True}),
    ("lamb", fastopt.Lamb, {"lr": 0.01, "grad_averaging": False, "adam": True, "maximize": True}),
    ("lars", fastopt.LARS, {"lr": 0.1}),
    ("lars", fastopt.LARS, {"lr": 0.1, "weight_decay": 0.1, "trust_coefficient": 0.02}),
    ("lars", fastopt.LARS, {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
    ("lars", fastopt.LARS, {"lr": 0.1, "momentum": 0.0, "weight_decay": 0.1}),
    ("lars", fastopt.LARS, {"lr": 0.1, "dampening": 0.5, "maximize": True}),
    ("schedule_free_sgd", SCHEDULE_FREE_SGD, {"lr": 0.1}),
    ("schedule_free_sgd", SCHEDULE_FREE_SGD, {"lr": 0.1, "momentum": 0.5, "weight_decay": 0.1}),
    ("schedule_free_sgd", SCHEDULE_FREE_SGD, {"lr": 0.1, "warmup_steps": 4, "r": 1.0}),
    ("schedule_free_adamw", SCHEDULE_FREE_ADAMW, {"lr": 0.01}),
    ("schedule_free_adamw", SCHEDULE_FREE_ADAMW, {"lr": 0.01, "weight_decay": 0.1}),
    (
        "schedule_free_adamw",
        SCHEDULE_FREE_ADAMW,
        {"lr": 0.01, "betas": (0.5, 0.9), "warmup_steps": 3, "weight_lr_power": 1.0},
    ),
    ("adadelta", fastopt.Adadelta, {"lr": 1.0}),
    ("adadelta", fastopt.Adadelta, {"lr": 0.5, "rho": 0.5, "weight_decay": 0.1}),
    ("adadelta", fastopt.Adadelta, {"lr": 1.0, "eps": 1e-4, "maximize": True}),
    ("radam", fastopt.RAdam, {"lr": 0.01}),
    ("radam", fastopt.RAdam, {"lr": 0.01, "betas": (0.8, 0.9), "weight_decay": 0.1}),
    ("radam", fastopt.RAdam, {"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True}),
    ("radam", fastopt.RAdam, {"lr": 0.01, "betas": (0.9, 0.0), "eps": 1e-6, "maximize": True}),
    ("rprop", fastopt.Rprop, {"lr": 0.01}),
    ("rprop", fastopt.Rprop, {"lr": 0.1, "etas": (0.3, 1.5), "step_sizes": (0.05, 0.2)}),
    ("rprop", fastopt.Rprop, {"lr": 0.01, "step_sizes": (0.0, 1.0), "maximize": True}),
    ("asgd", fastopt.ASGD, {"lr": 0.05}),
    ("asgd", fastopt.ASGD, {"lr": 0.05, "t0": 2.0, "lambd": 0.01, "alpha": 0.5}),
    ("asgd", fastopt.ASGD, {"lr": 0.05, "t0": 1.0, "weight_decay": 0.1, "maximize": True}),
]


def case_id(case: tuple[str, type, dict[str, Any]]) -> str:
    _, cls, kwargs = case
    options = ",".join(f"{k}={v}" for k, v in kwargs.items() if k != "lr")
    return f"{cls.__name__}({options})"


def problem(size: int, dtype: type, steps: int, seed: int = 0):
    """A parameter and ``steps`` gradients, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    param = rng.standard_normal(size).astype(dtype)
    grads = [rng.standard_normal(size).astype(dtype) for _ in range(steps)]
    return param, grads


def _defaults(cls: type[fastopt.Optimizer], kwargs: dict[str, Any]) -> dict[str, Any]:
    probe = cls(np.zeros(1), **kwargs)
    return dict(probe.defaults)


def run_reference(
    rule: str, cls: type[fastopt.Optimizer], kwargs: dict[str, Any], param: np.ndarray, grads
) -> ReferenceState:
    """Apply the reference rule to ``param`` in place; return its state arrays by name (and
    its host scalars as ``.scalars``)."""
    hp = _defaults(cls, kwargs)
    state: dict[str, np.ndarray] = {}
    scalars: dict[str, float] = {}
    for step, grad in enumerate(grads, start=1):
        _declared_reference(cls._rule, hp, param, grad, state, scalars, step)
    group = state.pop("group", {})
    return ReferenceState(state, scalars, group)


class ReferenceState(dict):
    """The reference's state arrays by name; ``scalars``: its host scalars by name;
    ``group``: the group values its steps advanced (Schedule-Free's ``k``...)."""

    def __init__(
        self,
        arrays: dict[str, np.ndarray],
        scalars: dict[str, float],
        group: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(arrays)
        self.scalars = scalars
        self.group = group or {}


def _declared_reference(rule, hp, param, grad, state, scalars, step) -> None:
    """One update of a declared rule by its reference, ``reference.<rule>_step``: the state
    arrays and host scalars come from the declaration."""
    for declared in rule.state:
        if declared.present(hp) and declared.name not in state:
            initial = (
                param.copy() if declared.from_param else np.full_like(param, declared.initial(hp))
            )
            state[declared.name] = initial
    for declared in rule.scalars:
        scalars.setdefault(declared.name, declared.initial_value(hp, np.dtype(np.float32)))
    arrays = [state.get(declared.name) for declared in rule.state]
    options = {h.name: hp[h.name] for h in rule.hyperparameters}
    # The group's values a step advances (Schedule-Free's k...), kept with the arrays.
    kept = state.setdefault("group", {}) if rule.group_state else {}
    if rule.counts_steps:
        options["step"] = step
    returned = getattr(reference, f"{rule.snake_name}_step")(
        param, grad, *arrays, **options, **scalars, **kept
    )
    for name, value in (returned or {}).items():
        (scalars if name in rule.scalar_names else kept)[name] = value


def assert_close(actual: np.ndarray, desired: np.ndarray, err_msg: str = "") -> None:
    """Equal to rounding: rtol 1e-12 (float64) or 1e-5 (float32), with an absolute floor of
    the same size relative to the array's largest magnitude (elements that cancel to near 0
    carry the rounding error of their larger inputs, e.g. fused multiply-adds)."""
    rtol = 1e-12 if desired.dtype == np.float64 else 1e-5
    finite = np.abs(desired[np.isfinite(desired)])
    scale = float(np.max(finite, initial=1.0))
    np.testing.assert_allclose(actual, desired, rtol=rtol, atol=rtol * scale, err_msg=err_msg)


def newton_schulz_in_dtype(grad, coefficients, steps, eps):
    """``torch.optim._muon._zeropower_via_newtonschulz`` in the gradient's dtype instead of
    bfloat16, with torch's own operations: what fastopt's Muon computes (a test patches it in
    to compare with torch tightly)."""
    import torch

    a, b, c = coefficients
    x = grad.T if grad.size(0) > grad.size(1) else grad
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if grad.size(0) > grad.size(1) else x


def run_low_precision_steps(rule, hp, param, grads, new_state, master, comp, key_of):
    """The rule's reference over ``grads`` by :func:`reference.low_precision_step`, the
    group's hyperparameters ``hp``: ``new_state(declared)`` makes a state array when the
    options first need it, ``key_of(step)`` is the random key of update ``step`` (or None);
    ``param``, ``master`` and ``comp`` are updated in place. Returns the state arrays."""
    step_function = getattr(reference, f"{rule.snake_name}_step")
    state, scalars, kept = {}, {}, {}
    for step, grad in enumerate(grads, start=1):
        for declared in rule.state:
            if declared.present(hp) and declared.name not in state:
                state[declared.name] = new_state(declared)
        for declared in rule.scalars:
            scalars.setdefault(declared.name, declared.initial_value(hp, np.dtype(np.float32)))
        arrays = [state.get(declared.name) for declared in rule.state]
        options = {h.name: hp[h.name] for h in rule.hyperparameters}
        if rule.counts_steps:
            options["step"] = step
        returned = reference.low_precision_step(
            step_function,
            param,
            grad,
            *arrays,
            master_param=master,
            kahan_comp=comp,
            rounding_key=key_of(step),
            **options,
            **scalars,
            **kept,
        )
        for name, value in (returned or {}).items():
            (scalars if name in rule.scalar_names else kept)[name] = value
    return state
