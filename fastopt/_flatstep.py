"""One optimizer step over a FlatParams: every parameter group in as few launches as possible.

The kernels take a segment table (``bounds``) and one hyperparameter row per segment
(``hyper``), so one launch over the flat buffer updates segments of different parameter groups,
each with its own settings; the rows are rewritten in place each step, so a new learning rate
needs no recompilation. Launches split only where the kernel's arguments must differ: a group
with AMSGrad passes ``max_exp_avg_sq`` and one without passes ``None`` (a different compiled
variant), so each maximal run of consecutive segments sharing a state layout is one launch.

The padding between segments is launched with the run around it under a *neutral* row
(``lr = 0``, ``weight_decay = 0``, ``eps = 1``, ``grad_scale = 0``, step 1): zero parameters
and gradients stay exactly zero under every rule, even when the group's ``eps`` is 0, and so
does the state wherever a zero gradient keeps a zero state (Adamax's infinity norm becomes
``eps``: finite, and never seen).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from fastopt._launch import launch
from fastopt._quantized import block_table
from fastopt._state_store import StateStore
from fastopt._storage import ROUNDING_KEY, kernel_view
from fastopt.flat import FlatParams
from fastopt.gradients import FlatGradients
from fastopt.precision import (
    ABSMAX_SUFFIX,
    KAHAN_COMP,
    MASTER_PARAM,
    QUANTIZED,
    absmax_name,
    rounding_key,
)

if TYPE_CHECKING:
    from fastopt.optimizer import Optimizer, StateLayout

__all__ = ["FlatStep"]

FLOAT32 = np.dtype(np.float32)

# Launch plans kept per optimizer (one per pattern of active parameters and state layouts).
_MAX_PLANS = 8


def _locate(params: list[np.ndarray]) -> tuple[FlatParams, np.ndarray]:
    """The FlatParams that every parameter is a view of, and each one's position in it."""
    flat = FlatParams.owner_of(params[0])
    positions = []
    for index, param in enumerate(params):
        position = None if flat is None else flat.locate(param)
        if position is None:
            raise TypeError(
                "step() without grads updates a FlatParams: every parameter must be one of the "
                f"views of a single FlatParams (its .params), but parameter {index} is not; "
                "pass grads instead, or build the optimizer from the FlatParams"
            )
        positions.append(position)
    segment_of_param = np.array(positions, dtype=np.int64)
    if np.unique(segment_of_param).size != segment_of_param.size:
        raise ValueError("a FlatParams array appears twice among the optimizer's parameters")
    return flat, segment_of_param  # type: ignore[return-value]


def _neutral(group: dict[str, Any]) -> dict[str, Any]:
    """The group under which padding stays zero (see the module docstring): ``eps`` 1, or
    each of a tuple of them (Adafactor's) 1."""
    eps = group.get("eps", 1.0)
    eps = tuple(1.0 for _ in eps) if isinstance(eps, (tuple, list)) else 1.0
    return dict(group, lr=0.0, eps=eps, weight_decay=0.0)


class FlatStep:
    """The launch plan, state buffers and hyperparameter table of one optimizer's flat steps.

    The optimizer's ``state`` keeps its usual form (per parameter: ``"step"`` and arrays shaped
    like the parameter); those arrays are views of the optimizer's flat state buffers
    (:class:`fastopt._state_store.StateStore`, laid out like the FlatParams), which the
    launches pass whole. The step counts are mirrored here in one array, read again
    (:meth:`adopt`) when the entries changed elsewhere (per-array steps, ``load_state_dict``).
    """

    def __init__(self, optimizer: Optimizer) -> None:
        params = optimizer._params
        self.optimizer = optimizer
        self.flat, self.segment_of_param = _locate(params)
        flat = self.flat
        count = len(params)
        param_of_segment = np.full(len(flat), -1, dtype=np.int64)
        param_of_segment[self.segment_of_param] = np.arange(count)
        kinds = flat._launch_segment  # array index per kernel segment, -1 for padding
        self.is_padding = kinds < 0
        # Per kernel segment: the optimizer parameter it holds (-1: padding, or not ours).
        self.launch_param = np.where(self.is_padding, -1, param_of_segment[np.maximum(kinds, 0)])
        self.launch_of_param = np.empty(count, dtype=np.int64)
        ours = self.launch_param >= 0
        self.launch_of_param[self.launch_param[ours]] = np.flatnonzero(ours)
        sizes = [len(group["params"]) for group in optimizer.param_groups]
        self.group_of_param = np.repeat(np.arange(len(sizes), dtype=np.int64), sizes)
        # Padding takes the neutral row of the group before it (the first segment starts at 0).
        self.padding = np.flatnonzero(self.is_padding)
        before = self.launch_param[self.padding - 1]
        self.padding_group = np.where(before >= 0, self.group_of_param[np.maximum(before, 0)], -1)
        self.padded = self.padding_group >= 0
        # Per kernel segment, its row in [group rows..., neutral rows...] (the usual step's
        # table); segments that are not ours point anywhere, they are never launched.
        group_count = len(optimizer.param_groups)
        self.row_of_launch = np.zeros(kinds.size, dtype=np.int64)
        self.row_of_launch[ours] = self.group_of_param[self.launch_param[ours]]
        self.row_of_launch[self.padding[self.padded]] = (
            group_count + self.padding_group[self.padded]
        )
        self.hyper = np.zeros((kinds.size, optimizer._hyper_width))
        # Per kernel segment, its array's shape (None for padding).
        self.shapes = tuple(flat.shapes[kind] if kind >= 0 else None for kind in kinds.tolist())
        store = optimizer._state_store()
        assert isinstance(store, StateStore) and store.flat is flat
        self.store = store
        self.all_params = np.arange(count)
        self.entries: list[dict[str, Any] | None] = [None] * count
        self.steps = np.zeros(count, dtype=np.int64)  # mirrors each entry's "step"
        self.uniform = True  # all steps equal
        self.complete = np.zeros(count, dtype=bool)
        self.group_layouts: list[StateLayout | None] = [None] * len(optimizer.param_groups)
        # Per group, its layout and the state buffers it names (see _state_arrays).
        self.group_arrays: dict[int, tuple[StateLayout, dict[str, np.ndarray]]] = {}
        # 8-bit state: each parameter's quantized arrays (its group's layout and its size
        # decide), and each kernel segment's first block in the scale buffers.
        self.quantized_of_param: list[tuple[str, ...]] = [()] * count
        self.quantized_version = 0
        self.blocks = block_table(flat._launch_bounds)
        self.synced_version: int | None = None
        self.synced_step_count: int | None = None
        self.plans: dict[tuple[Any, ...], list[tuple[Any, ...]]] = {}
        self.read_plans: dict[bytes | None, FlatGradients] = {}

    # ------------------------------------------------------------------ state
    def _state_arrays(self, number: int, quantized: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
        """Group ``number``'s state buffers by name (in the dtypes of its layout, with
        ``quantized`` arrays as codes and their scales); made once per layout, as every
        step's launch plan looks them up."""
        layout = self.group_layouts[number]
        assert layout is not None
        cached = self.group_arrays.get((number, quantized))
        if cached is not None and cached[0] == layout:
            return cached[1]
        optimizer, group = self.optimizer, self.optimizer.param_groups[number]
        buffer = self.store.buffer
        arrays = {}
        for name in layout.names + layout.precision:
            if name in quantized:
                arrays[name] = buffer(name, QUANTIZED)
                arrays[absmax_name(name)] = buffer(absmax_name(name), FLOAT32)
            elif name in layout.precision:
                dtype = optimizer._state_dtype(name, group, self.flat.params[0])
                arrays[name] = buffer(name, dtype)
            else:
                arrays[name] = buffer(name, layout.dtype)
        self.group_arrays[(number, quantized)] = (layout, arrays)
        return arrays

    def adopt(self) -> None:
        """Take the optimizer's state entries as they are now: read every parameter's step
        count, and check every parameter's state arrays again at its next step."""
        optimizer = self.optimizer
        self.entries = [optimizer.state.get(index) for index in range(len(self.entries))]
        self.steps = np.array([e["step"] if e else 0 for e in self.entries], dtype=np.int64)
        self.uniform = bool(self.steps.min() == self.steps.max())
        self.complete[:] = False
        self.synced_version = optimizer._state_version
        self.synced_step_count = optimizer.step_count
        self.plans.clear()  # they hold the host state arrays (a rule's), now maybe others

    def ensure_state(self, params: np.ndarray) -> np.ndarray | None:
        """Create the missing state of ``params`` (indices): a bool per parameter, True where
        something was created, or None when nothing was."""
        optimizer = self.optimizer
        # A new state_dict, or a per-array step (it counts steps in the state entries), means
        # the state changed behind the flat buffers and the step mirror: take it again.
        if (self.synced_version, self.synced_step_count) != (
            optimizer._state_version,
            optimizer.step_count,
        ):
            self.adopt()
        groups = optimizer.param_groups
        lengths = self.flat.segments[self.segment_of_param, 1]
        for number, group in enumerate(groups):
            layout = optimizer._layout(group, self.flat.dtype)
            if layout != self.group_layouts[number]:
                self.group_layouts[number] = layout
                members = np.flatnonzero(self.group_of_param == number)
                self.complete[members] = False
                for index in members.tolist():
                    size = int(lengths[index])
                    self.quantized_of_param[index] = optimizer._quantized_of(
                        group, layout.names, size
                    )
                self.quantized_version += 1
        todo = params[~self.complete[params]]
        if not todo.size:
            return None
        created = np.zeros(len(self.entries), dtype=bool)
        for index in todo.tolist():
            group = groups[self.group_of_param[index]]
            created[index] = optimizer._prepare_state(index, optimizer._params[index], group)
            self.entries[index] = optimizer.state[index]
            self.complete[index] = True
        # What was just made or moved is what the plan holds: nothing to read again.
        self.synced_version = optimizer._state_version
        return created if created.any() else None

    # ------------------------------------------------------------------ step
    def gradients(self, active: np.ndarray | None) -> FlatGradients:
        """The gradients the read pass before a step reads (see :mod:`fastopt.gradients`):
        the active parameters' segments of the gradient buffer, read in one launch."""
        key = None if active is None else active.tobytes()
        cached = self.read_plans.get(key)
        if cached is None:
            params = self.all_params if active is None else np.flatnonzero(active)
            segments = self.flat.segments[self.segment_of_param[params]]
            if len(self.read_plans) >= _MAX_PLANS:
                self.read_plans.clear()
            cached = self.read_plans[key] = FlatGradients.of(
                self.flat.grad_buffer, segments[:, 0], segments[:, 1], params.tolist()
            )
        return cached

    def step(
        self, active: np.ndarray | None, grad_scale: float = 1.0, clip_value: float = math.inf
    ) -> bool:
        """Advance the ``active`` parameters (bool per parameter; None: all) by one update.

        ``grad_scale`` and ``clip_value`` come from the read pass (unscaling and clipping);
        the FlatParams' own mean over micro-batches multiplies ``grad_scale`` here. Returns
        whether state arrays were created. Hyperparameters must be checked already; the
        caller counts the step (``optimizer.step_count += 1``) right after.
        """
        optimizer = self.optimizer
        groups = optimizer.param_groups
        if active is not None and active.all():
            active = None
        params = self.all_params if active is None else np.flatnonzero(active)
        created = self.ensure_state(params)
        self.synced_step_count = optimizer.step_count + 1
        if not params.size:
            return False
        if active is None:
            self.steps += 1
            steps = self.steps
            entries = self.entries
        else:
            self.steps[params] += 1
            self.uniform = bool(self.steps.min() == self.steps.max())
            steps = self.steps[params]
            entries = [self.entries[i] for i in params.tolist()]
        for entry, step in zip(entries, steps.tolist(), strict=True):
            entry["step"] = step  # type: ignore[index]

        scale = self.flat.grad_scale * grad_scale
        neutral = [optimizer._row(_neutral(group), 1, False, 0.0, math.inf) for group in groups]
        if optimizer._scalar_names:
            self._rows_with_scalars(params, entries, created, scale, clip_value)
            padding = self.padding[self.padded]
            self.hyper[padding] = np.array(neutral)[self.padding_group[self.padded]]
        elif created is None and active is None and self.uniform:
            # The usual step: every parameter at the same step, one row per group.
            step = int(self.steps[0])
            rows = [optimizer._row(group, step, False, scale, clip_value) for group in groups]
            np.take(np.array(rows + neutral), self.row_of_launch, axis=0, out=self.hyper)
        else:
            self._rows_by_key(params, steps, created, scale, clip_value)
            padding = self.padding[self.padded]
            self.hyper[padding] = np.array(neutral)[self.padding_group[self.padded]]

        self._rounding_keys(params, steps)
        for arrays, shapes, precision in self._plan(active, params):
            launch(optimizer._kernels, *arrays, shapes=shapes, **precision)
        return created is not None

    def _rounding_keys(self, params: np.ndarray, steps: np.ndarray) -> None:
        """Each segment's random key, for the groups whose stores round stochastically."""
        stochastic = [bool(layout and layout.stochastic) for layout in self.group_layouts]
        if not any(stochastic):
            return
        chosen = np.array(stochastic)[self.group_of_param[params]]
        keys = rounding_key(self.optimizer.seed, params[chosen], steps[chosen])
        self.hyper[self.launch_of_param[params[chosen]], ROUNDING_KEY] = keys

    def _rows_with_scalars(
        self,
        params: np.ndarray,
        entries: list[dict[str, Any]],
        created: np.ndarray | None,
        scale: float,
        clip_value: float,
    ) -> None:
        """The rows of ``params`` for a rule with host scalars: each parameter's scalars move
        to its new step, and one row is made per distinct (group, step, created, scalars).

        A scalar's next value depends only on the group, the step and its previous value, so
        parameters that start the step with the same scalars (a model's tensors, stepped
        together since the first step) share one advance and one row."""
        optimizer = self.optimizer
        groups = optimizer.param_groups
        names = optimizer._scalar_names
        # (group, step, created, scalars before) -> (scalars after, row)
        known: dict[tuple[Any, ...], tuple[tuple[Any, ...], tuple[float, ...]]] = {}
        table = []
        for index, entry in zip(params.tolist(), entries, strict=True):
            number = int(self.group_of_param[index])
            was_created = bool(created is not None and created[index])
            key = (number, entry["step"], was_created, *(entry[name] for name in names))
            found = known.get(key)
            if found is None:
                scalars = optimizer._advance(entry, groups[number])
                row = optimizer._row(
                    groups[number], entry["step"], was_created, scale, clip_value, scalars
                )
                found = known[key] = (tuple(entry[name] for name in names), row)
            else:
                entry.update(zip(names, found[0]))
            table.append(found[1])
        self.hyper[self.launch_of_param[params]] = np.array(table, dtype=np.float64)

    def _rows_by_key(
        self,
        params: np.ndarray,
        steps: np.ndarray,
        created: np.ndarray | None,
        scale: float,
        clip_value: float,
    ) -> None:
        """The rows of ``params``: one per distinct (group, step, created)."""
        groups = self.optimizer.param_groups
        flags = np.zeros(params.size, dtype=np.int64) if created is None else created[params]
        keys = (steps * 2 + flags) * len(groups) + self.group_of_param[params]
        unique, inverse = np.unique(keys, return_inverse=True)
        rows = []
        for key in unique.tolist():
            rest, number = divmod(key, len(groups))
            step, was_created = divmod(rest, 2)
            row = self.optimizer._row(groups[number], step, bool(was_created), scale, clip_value)
            rows.append(row)
        self.hyper[self.launch_of_param[params]] = np.array(rows, dtype=np.float64)[inverse]

    def _plan(self, active: np.ndarray | None, params: np.ndarray) -> list[tuple[Any, ...]]:
        """Launch arguments and the segments' tensor shapes, one pair per run of active
        segments sharing a state layout."""
        optimizer = self.optimizer
        groups = optimizer.param_groups
        numbers = (
            range(len(groups))
            if active is None
            else np.unique(self.group_of_param[params]).tolist()
        )
        # A group under state_dtype="int8" may quantize some of its parameters only.
        kinds = {(number, ()) for number in numbers if groups[number]["state_dtype"] != "int8"}
        if len(kinds) < len(numbers):
            quantized = self.quantized_of_param
            kinds |= {
                (int(self.group_of_param[i]), quantized[i])
                for i in params.tolist()
                if groups[int(self.group_of_param[i])]["state_dtype"] == "int8"
            }
        layouts: dict[tuple[int, tuple[str, ...]], tuple[Any, ...]] = {}
        for number, names in sorted(kinds):
            layout = self.group_layouts[number]
            assert layout is not None
            state = optimizer._kernel_state(groups[number], self._state_arrays(number, names))
            layouts[(number, names)] = (tuple(array is None for array in state), layout, names)
        key = (
            None if active is None else active.tobytes(),
            tuple(layouts.items()),
            tuple(self.store.buffers),
            self.quantized_version,
        )
        plan = self.plans.get(key)
        if plan is None:
            if len(self.plans) >= _MAX_PLANS:
                self.plans.clear()
            plan = self.plans[key] = self._build_plan(active, layouts)
        return plan

    def _build_plan(
        self, active: np.ndarray | None, layouts: dict[tuple[int, tuple[str, ...]], Any]
    ) -> list[tuple[Any, ...]]:
        runs = []
        start, run_kind = None, None
        # The read pass of per-tensor norms and a matrix step's direction pass slice 8-bit
        # state by offsets inside one parameter: such parameters launch one by one.
        kernels = self.optimizer._kernels
        alone = kernels.norms is not None or kernels.matrix is not None
        for position, param in enumerate(self.launch_param.tolist()):
            if self.is_padding[position]:
                if start is not None and alone and run_kind[1]:
                    runs.append((start, position, run_kind))
                    start = None
                continue  # joins the open run, if any, under its neutral row
            if param >= 0 and (active is None or active[param]):
                kind = (int(self.group_of_param[param]), self.quantized_of_param[param])
                if start is not None and alone and kind[1]:
                    runs.append((start, position, run_kind))
                    start = None
                if start is not None and layouts[kind] == layouts[run_kind]:
                    continue
                if start is not None:
                    runs.append((start, position, run_kind))
                start, run_kind = position, kind
            elif start is not None:
                runs.append((start, position, run_kind))
                start = None
        if start is not None:
            runs.append((start, self.launch_param.size, run_kind))

        bounds = self.flat._launch_bounds
        groups = self.optimizer.param_groups
        plan = []
        for first, end, (group, quantized) in runs:
            lo, hi = int(bounds[first]), int(bounds[end])
            scales = slice(int(self.blocks[first]), int(self.blocks[end]))
            buffers = {
                name: buffer[scales] if name.endswith(ABSMAX_SUFFIX) else kernel_view(buffer[lo:hi])
                for name, buffer in self._state_arrays(group, quantized).items()
            }
            state = self.optimizer._quantized_views(
                self.optimizer._kernel_state(groups[group], buffers), quantized, buffers
            )
            if kernels.matrix is not None and kernels.matrix.declaration.state:
                state = self._with_host_state(state, first, end)
            arrays = (
                bounds[first : end + 1] - lo,
                self.hyper[first:end],
                kernel_view(self.flat.buffer[lo:hi]),
                kernel_view(self.flat.grad_buffer[lo:hi]),
                *state,
            )
            precision = {
                "master": buffers.get(MASTER_PARAM),
                "comp": buffers.get(KAHAN_COMP),
                "stochastic": True if layouts[(group, quantized)][1].stochastic else None,
            }
            plan.append((arrays, self.shapes[first:end], precision))
        return plan

    def _with_host_state(self, state: tuple[Any, ...], first: int, end: int) -> tuple[Any, ...]:
        """The kernel state of kernel segments ``first:end`` with a matrix step's host state
        (last, one entry per declared array) as a tuple of each segment's array, None for
        padding and where a tensor keeps none (see :func:`fastopt._matrix.transform_segments`)."""
        declared = self.optimizer._kernels.matrix.declaration.state
        entries = [
            None if param < 0 else self.entries[param]
            for param in self.launch_param[first:end].tolist()
        ]
        host = tuple(
            tuple(None if entry is None else entry.get(held.name) for entry in entries)
            for held in declared
        )
        return state[: len(state) - len(declared)] + host
