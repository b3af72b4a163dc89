r"""Hyperparameter schedules: pure functions of the optimizer step count.

A schedule maps :math:`t`, the number of optimizer updates already applied (0 before the
first), to the value used by the next update, in float64 on the host. Every schedule is an
immutable, picklable :class:`Schedule` built by a snake_case constructor function below;
its ``repr`` is the constructor call that rebuilds it. Schedules take their base value
explicitly (``base_lr``, ``init_value``, ...) instead of multiplying the optimizer's lr as
torch schedulers do, so the same objects drive a learning rate, a momentum or an Adam
:math:`\beta`.

Constructors named after a torch scheduler take that scheduler's parameter names, and
``schedule(t)`` equals the lr torch's scheduler sets after ``t`` calls to ``step()`` (the
lr of the :math:`(t+1)`-th update), except where an entry below says otherwise.
:func:`warmup_cosine_decay_schedule` takes optax's names and semantics. Arguments are
validated at construction (``ValueError`` naming the parameter, ``TypeError`` for a wrong
type); ``schedule(t)`` raises ``TypeError`` for a non-integer and ``ValueError`` for a
negative ``t``.

>>> from fastopt.schedules import cosine_annealing, warmup
>>> schedule = warmup(cosine_annealing(0.1, T_max=100), warmup_steps=10)
>>> schedule(0), schedule(5), schedule(10), schedule(110)
(0.0, 0.05, 0.1, 0.0)
>>> schedule
warmup(schedule=cosine_annealing(base_lr=0.1, T_max=100, eta_min=0.0),
       warmup_steps=10, start_value=0.0)

Schedules (torch = ``torch.optim.lr_scheduler``)
------------------------------------------------
``constant(value)``
    torch: a plain float lr. optax: ``constant_schedule``.
``constant_factor(base_lr, factor=1/3, total_iters=5)``
    torch: ``ConstantLR``. optax: ``piecewise_constant_schedule``.
``step_decay(base_lr, step_size, gamma=0.1)``
    torch: ``StepLR``. optax: ``exponential_decay(..., staircase=True)``.
``multi_step_decay(base_lr, milestones, gamma=0.1)``
    torch: ``MultiStepLR``. optax: ``piecewise_constant_schedule``.
``exponential_decay(base_lr, gamma)``
    torch: ``ExponentialLR``. optax: ``exponential_decay(base_lr, 1, gamma)``.
``polynomial_decay(base_lr, total_iters=5, power=1.0)``
    torch: ``PolynomialLR``. optax: ``polynomial_schedule(base_lr, 0.0, power, total_iters)``.
``linear(base_lr, start_factor=1/3, end_factor=1.0, total_iters=5)``
    torch: ``LinearLR``. optax: ``linear_schedule``.
``cosine_annealing(base_lr, T_max, eta_min=0.0)``
    torch: ``CosineAnnealingLR`` (equal up to ``T_max``; holds ``eta_min`` after).
    optax: ``cosine_decay_schedule``.
``cosine_annealing_warm_restarts(base_lr, T_0, T_mult=1, eta_min=0.0)``
    torch: ``CosineAnnealingWarmRestarts``. optax: ``sgdr_schedule``.
``one_cycle(max_lr, total_steps, pct_start=0.3, anneal_strategy="cos", div_factor=25.0, ...)``
    torch: ``OneCycleLR`` (lr; holds the final value from ``total_steps - 1`` on, where
    torch raises past ``total_steps``). optax: close to ``cosine_onecycle_schedule`` /
    ``linear_onecycle_schedule``, whose phase boundaries differ by a step.
``one_cycle_momentum(total_steps, pct_start=0.3, anneal_strategy="cos", base_momentum=0.85, ...)``
    torch: ``OneCycleLR`` momentum (``cycle_momentum=True``). optax: none.
``cyclic(base_lr, max_lr, step_size_up=2000, step_size_down=None, mode="triangular", gamma=1.0)``
    torch: ``CyclicLR`` (lr). optax: none.
``cyclic_momentum(base_momentum=0.8, max_momentum=0.9, step_size_up=2000, ...)``
    torch: ``CyclicLR`` momentum (``cycle_momentum=True``). optax: none.
``inverse_time_decay(base_lr, decay_rate, decay_steps=1, staircase=False)``
    torch: ``LambdaLR`` with that rule. optax: none.
``inverse_sqrt(d_model, warmup_steps, factor=1.0)``
    The Transformer ("Noam") rule. torch: ``LambdaLR`` with that rule. optax: none.
``linear_warmup(peak_value, warmup_steps, start_value=0.0)``
    torch: ``LinearLR(start_factor=start_value / peak_value, total_iters=warmup_steps)``.
    optax: ``warmup_constant_schedule``.
``warmup_cosine_decay_schedule(init_value, peak_value, warmup_steps, decay_steps, ...)``
    torch: ``SequentialLR`` of ``LinearLR`` and ``CosineAnnealingLR``.
    optax: ``warmup_cosine_decay_schedule`` (same semantics; ``decay_steps`` includes
    the warmup).

Composition
-----------
``join(schedules, boundaries)``
    Schedule ``i`` runs from ``boundaries[i-1]`` and sees ``t - boundaries[i-1]``.
    torch: ``SequentialLR``. optax: ``join_schedules``.
``warmup(schedule, warmup_steps, start_value=0.0)``
    Linear ramp to ``schedule(0)``, then ``schedule(t - warmup_steps)``.
    torch: ``SequentialLR([LinearLR, ...])``. optax: ``join_schedules`` after
    ``linear_schedule``.
``chain(schedules)``, ``a * b``, ``0.5 * a``
    Pointwise product at the same step. torch: ``ChainedScheduler``. optax: none.

Metric-driven
-------------
``ReduceLROnPlateau(optimizer, mode="min", factor=0.1, patience=10, threshold=1e-4, ...)``
    Stateful; ``step(metric)``. torch: ``ReduceLROnPlateau``. optax:
    ``contrib.reduce_on_plateau``.

Plotting
--------
``plot(schedules, steps, path, labels=None, title=None, figsize=(8.0, 4.5), dpi=100)``
    Draws schedules over ``steps`` steps to a PNG (needs matplotlib).
"""

from fastopt.schedules.base import Schedule, chain, constant
from fastopt.schedules.compose import join, linear_warmup, warmup
from fastopt.schedules.cosine import (
    cosine_annealing,
    cosine_annealing_warm_restarts,
    warmup_cosine_decay_schedule,
)
from fastopt.schedules.cyclic import cyclic, cyclic_momentum, one_cycle, one_cycle_momentum
from fastopt.schedules.decay import (
    constant_factor,
    exponential_decay,
    inverse_sqrt,
    inverse_time_decay,
    linear,
    multi_step_decay,
    polynomial_decay,
    step_decay,
)
from fastopt.schedules.plateau import ReduceLROnPlateau
from fastopt.schedules.plotting import plot

__all__ = [
    "ReduceLROnPlateau",
    "Schedule",
    "chain",
    "constant",
    "constant_factor",
    "cosine_annealing",
    "cosine_annealing_warm_restarts",
    "cyclic",
    "cyclic_momentum",
    "exponential_decay",
    "inverse_sqrt",
    "inverse_time_decay",
    "join",
    "linear",
    "linear_warmup",
    "multi_step_decay",
    "one_cycle",
    "one_cycle_momentum",
    "plot",
    "polynomial_decay",
    "step_decay",
    "warmup",
    "warmup_cosine_decay_schedule",
]
