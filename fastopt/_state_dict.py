"""Reading a checkpoint into an optimizer: everything checked, before anything changes.

:func:`read_state_dict` takes what :meth:`fastopt.Optimizer.state_dict` wrote (or a torch-format
checkpoint converted by :mod:`fastopt.torch`, or one that went through JSON) and returns the
groups, the state entries (arrays in the optimizer's backend) and the step count the
optimizer then installs; it raises ``TypeError``/``ValueError`` naming what does not match
(group and parameter counts, hyperparameters, state names, dtypes, shapes, steps).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from fastopt._backend import HOST, backend_of
from fastopt._checks import plural
from fastopt._quantized import quantize
from fastopt.precision import (
    ABSMAX_SUFFIX,
    BFLOAT16,
    KAHAN_COMP,
    MASTER_PARAM,
    MIN_QUANTIZED_SIZE,
    QUANTIZED,
    absmax_name,
    check_seed,
)

if TYPE_CHECKING:
    from fastopt.optimizer import Optimizer

__all__ = ["LoadedState", "checked_entry", "checked_scalar", "read_state_dict"]


class LoadedState(NamedTuple):
    """A checkpoint, checked against an optimizer."""

    #: Each group's settings after the load (the optimizer's, updated by the checkpoint's).
    groups: list[dict[str, Any]]
    #: The state entries by parameter position.
    state: dict[int, dict[str, Any]]
    step_count: int
    #: The attached objects' states, by name.
    attached: dict[str, Any]
    #: The random seed of stochastic rounding.
    seed: int


def read_state_dict(optimizer: Optimizer, state_dict: Mapping[str, Any]) -> LoadedState:
    """Check ``state_dict`` against ``optimizer`` whole; nothing is changed."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
    for key in ("state", "param_groups"):
        if key not in state_dict:
            raise ValueError(f"state_dict has no {key!r} entry")
    saved_groups = state_dict["param_groups"]
    if not isinstance(saved_groups, (list, tuple)) or not all(
        isinstance(saved, Mapping) and isinstance(saved.get("params", ()), (list, tuple))
        for saved in saved_groups
    ):
        raise ValueError("state_dict param_groups must be a list of dicts with a params list")
    if not isinstance(state_dict["state"], Mapping) or not isinstance(
        state_dict.get("attached", {}), Mapping
    ):
        raise ValueError("state_dict state and attached must be dicts")
    if len(saved_groups) != len(optimizer.param_groups):
        raise ValueError(
            f"state_dict has {plural(len(saved_groups), 'parameter group')}, "
            f"the optimizer has {len(optimizer.param_groups)}"
        )
    merged_groups = []
    for number, (saved, group) in enumerate(
        zip(saved_groups, optimizer.param_groups, strict=False)
    ):
        if len(saved.get("params", ())) != len(group["params"]):
            raise ValueError(
                f"state_dict param_groups[{number}] has "
                f"{plural(len(saved.get('params', ())), 'parameter')}, the optimizer's has "
                f"{len(group['params'])}"
            )
        merged = dict(group)
        merged.update({k: v for k, v in saved.items() if k in optimizer.defaults})
        optimizer._check_group(merged)
        merged_groups.append(merged)
    group_of = [g for g in merged_groups for _ in g["params"]]
    new_state = {}
    for raw_index, entry in dict(state_dict["state"]).items():
        # Positions are ints, or their decimal strings once a checkpoint went through JSON.
        is_int = isinstance(raw_index, (int, np.integer)) and not isinstance(raw_index, bool)
        if not (is_int or (isinstance(raw_index, str) and raw_index.isdecimal())):
            raise ValueError(f"state_dict state key {raw_index!r} is not a parameter position")
        index = int(raw_index)
        if not 0 <= index < len(optimizer._params):
            raise ValueError(f"state_dict has state for parameter {raw_index}, which is absent")
        if not isinstance(entry, Mapping):
            raise ValueError(f"state_dict state[{raw_index!r}] must be a dict")
        new_state[index] = checked_entry(optimizer, index, entry, group_of[index])
    step_count = state_dict.get("step_count", 0)
    if isinstance(step_count, bool) or not isinstance(step_count, (int, np.integer)):
        raise ValueError(f"state_dict step_count must be an int, got {step_count!r}")
    if step_count < 0:
        raise ValueError(f"state_dict step_count must be >= 0, got {step_count}")
    try:
        seed = check_seed(state_dict.get("seed", optimizer.seed))
    except (TypeError, ValueError) as error:
        raise ValueError(f"state_dict {error}") from None
    return LoadedState(
        merged_groups, new_state, int(step_count), dict(state_dict.get("attached", {})), seed
    )


def checked_entry(
    optimizer: Optimizer, index: int, entry: Mapping[str, Any], group: Mapping[str, Any]
) -> dict[str, Any]:
    """Parameter ``index``'s state entry from a checkpoint: its step, host scalars and arrays
    (in the optimizer's backend), with what a new entry has where the checkpoint has none."""
    param = optimizer._params[index]
    names = optimizer._all_state_names()
    allowed = names | {MASTER_PARAM, KAHAN_COMP} | {absmax_name(name) for name in names}
    quantized = optimizer._quantized_names(group, param)
    arrays = optimizer._arrays
    checked: dict[str, Any] = {}
    encoded: dict[str, Any] = {}  # the scales of arrays that came dequantized
    for name, value in entry.items():
        where = f"state_dict state[{index}][{name!r}]"
        if name == "step":
            step = float(value) if isinstance(value, np.ndarray) else value
            if isinstance(step, bool) or not isinstance(step, (int, float, np.number)):
                raise ValueError(f"{where} must be a number, got {type(value).__name__}")
            if not (math.isfinite(step) and step >= 0 and step == int(step)):
                raise ValueError(f"{where} must be a whole number >= 0, got {step}")
            checked[name] = int(step)
            continue
        if name in optimizer._scalar_names:
            checked[name] = checked_scalar(where, value)
            continue
        if name not in allowed:
            raise ValueError(f"{where} is not a state of {type(optimizer).__name__}")
        value_backend = backend_of(value)
        if value_backend is None:
            raise ValueError(f"{where} must be an ndarray, got {type(value).__name__}")
        if value_backend is not HOST:
            value = value_backend.to_host(value)
        shape = optimizer._state_shape(name, arrays.dtype_shape(param)[1])
        if shape is None:
            raise ValueError(
                f"{where} is not kept for a parameter of shape {arrays.dtype_shape(param)[1]}"
            )
        dtype = optimizer._state_dtype(name, group, param)
        if name in (MASTER_PARAM, KAHAN_COMP) and name not in optimizer._param_state_names(
            group, param
        ):
            raise ValueError(
                f"{where} is not kept with these options (a 16-bit parameter's "
                f"{'master_weights' if name == MASTER_PARAM else 'kahan_sum'})"
            )
        if name.endswith(ABSMAX_SUFFIX) and name[: -len(ABSMAX_SUFFIX)] not in quantized:
            raise ValueError(
                f"{where} is kept for quantized state only (state_dtype='int8', parameters "
                f"of {MIN_QUANTIZED_SIZE} elements or more)"
            )
        # bfloat16 and 8-bit state may come dequantized, as float32 (state_dict(dequantize=True)).
        accepted = {dtype, np.dtype(np.float32)} if dtype in (BFLOAT16, QUANTIZED) else {dtype}
        if value.dtype not in accepted or value.shape != shape:
            raise ValueError(
                f"{where} must have dtype {dtype} and shape {shape}, "
                f"got {value.dtype} {value.shape}"
            )
        if dtype == QUANTIZED and value.dtype != QUANTIZED:
            codes, scales = quantize(value, name not in optimizer._nonnegative_states)
            checked[name] = arrays.from_host(codes, like=param)
            encoded[absmax_name(name)] = scales
            continue
        checked[name] = arrays.from_host(value.astype(dtype, copy=False), like=param)
    checked.update(encoded)  # over any scales that came with dequantized values
    for name in quantized:  # codes come with their scales
        scales = absmax_name(name)
        if (name in checked) != (scales in checked):
            present, absent = (name, scales) if name in checked else (scales, name)
            raise ValueError(f"state_dict state[{index}] has {present!r} but not {absent!r}")
    # A master copy or compensation buffer the checkpoint lacks is made by the next step.
    kept = set(optimizer._param_state_names(group, param)) - {MASTER_PARAM, KAHAN_COMP}
    missing = (kept | set(optimizer._scalar_names)) - set(checked)
    if missing and checked.get("step", 0) > 0:
        raise ValueError(f"state_dict state[{index}] lacks {sorted(missing)}")
    for key, value in optimizer._new_entry(group).items():
        checked.setdefault(key, value)
    return checked


def checked_scalar(where: str, value: object) -> float:
    """A host scalar from a checkpoint: a real number (or a one-element array of one)."""
    if isinstance(value, np.ndarray) and value.size == 1 and value.dtype.kind in "fiu":
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{where} must be a number, got {type(value).__name__}")
    return float(value)
