"""The cases of the ZeRO tests, shared by the MPI worker and the single-process reference."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from rule_cases import CASES

import fastopt
import fastopt.schedules

STEPS = 20
# Uneven sizes, an empty parameter, a 0-d one, two groups (see split_groups).
SHAPES = [(7, 3), (5,), (0,), (33,), (4, 4), (1,), ()]
MATRIX_SHAPES = [(6, 4), (5, 5), (3, 7)]


def _one_case_per_rule() -> list[tuple[str, type, dict[str, Any], list[tuple[int, ...]]]]:
    """The last (most optioned) case of every rule in the rule table, Muon and Adafactor."""
    chosen: dict[str, tuple[type, dict[str, Any]]] = {}
    for _, cls, kwargs in CASES:
        # The classes themselves (the table's Schedule-Free ones start in training mode).
        chosen[cls.__name__] = (getattr(fastopt, cls.__name__), kwargs)
    cases = [(name, cls, kwargs, SHAPES) for name, (cls, kwargs) in chosen.items()]
    cases.append(("Muon", fastopt.Muon, {"lr": 0.02, "momentum": 0.9}, MATRIX_SHAPES))
    # Row and column state not shaped like the parameters (a 3-D tensor, a vector, a 0-d one).
    shapes = [*MATRIX_SHAPES, (2, 3, 4), (5,), ()]
    cases.append(("Adafactor", fastopt.Adafactor, {"lr": 0.02, "weight_decay": 0.01}, shapes))
    # A schedule drives the learning rate (both groups: a callable is not halved).
    schedule = fastopt.schedules.linear_warmup(0.02, 8)
    cases.append(("AdamW-scheduled", fastopt.AdamW, {"lr": schedule}, SHAPES))
    # Pieces past the parallel kernels' threshold (2**16), clipped by the max-norm.
    large = [(3 * 2**16 + 7 * 2**10 + 7,), (3,)]  # every piece at 3 ranks too
    cases.append(("Adam-large-inf-norm", fastopt.Adam, {"lr": 0.01, "norm_type": math.inf}, large))
    return cases


STEP_CASES = _one_case_per_rule()
CHECKPOINT_CASE = ("Adam", fastopt.Adam, {"lr": 0.01, "amsgrad": True}, SHAPES)
# bfloat16 parameters and gradients (the all-gather moves bfloat16): a float32 master copy;
# bfloat16 state with stochastic rounding (each piece its own random stream).
BFLOAT16_CASES = [
    ("Adam-bf16-master", fastopt.Adam, {"lr": 0.01, "master_weights": True}, SHAPES),
    (
        "Adam-bf16-state-stochastic",
        fastopt.Adam,
        {"lr": 0.01, "state_dtype": "bfloat16", "stochastic_rounding": True},
        SHAPES,
    ),
]


# 8-bit state: parameters of 4,096 elements and more quantized (shards hold whole ones).
INT8_CASE = ("AdamW-int8", fastopt.AdamW, {"lr": 0.01, "state_dtype": "int8"})
INT8_SHAPES = [(70, 90), (5,), (100, 64), (3,), (4096,)]


def make_params(shapes, dtype, case: int) -> list[np.ndarray]:
    rng = np.random.default_rng([case, 12345])
    return [np.asarray(rng.standard_normal(shape), dtype=dtype) for shape in shapes]


def gradients(shapes, dtype, case: int, step: int, rank: int) -> list[np.ndarray]:
    """Rank ``rank``'s gradients: multiples of 1/64, so sums over ranks are exact."""
    rng = np.random.default_rng([case, step, rank])
    return [np.asarray(rng.integers(-64, 65, shape) / 64, dtype=dtype) for shape in shapes]


def mean_gradients(shapes, dtype, case: int, step: int, world: int) -> list[np.ndarray]:
    total = [np.zeros(shape) for shape in shapes]
    for rank in range(world):
        for t, g in zip(total, gradients(shapes, np.float64, case, step, rank), strict=True):
            t += g
    return [np.asarray(t / world, dtype=dtype) for t in total]


def split_groups(params: list[np.ndarray], kwargs: dict[str, Any]) -> list[dict[str, Any]]:
    """Two groups: the first half with the case's lr, the rest with half of it."""
    half = len(params) // 2
    lr = kwargs["lr"]
    return [
        {"params": params[:half]},
        {"params": params[half:], "lr": lr if callable(lr) else lr / 2},
    ]
