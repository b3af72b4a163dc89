"""The optimizer base class: parameter groups, state, checkpoints and the step driver.

A rule (``SGD``, ``Adam``, ...) subclasses :class:`Optimizer` and supplies: its hyperparameter
check, the names of its state arrays and their initial value, its kernels, the kernel's
hyperparameter row and the order of its state arrays. Everything else (the ``params`` forms,
gradient pairing and validation before any write, schedules, ``state_dict``) lives here once.

Arrays may live in host memory (NumPy) or on a CUDA device (see :mod:`fastopt.cuda`); the
few operations that differ (allocation, flat views, host copies) go through the parameters'
array backend (:mod:`fastopt._backend`).
"""

from __future__ import annotations

import bisect
import itertools
import math
import operator
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, NamedTuple, TypeAlias

import numpy as np

from fastopt._backend import HOST, ArrayBackend, backend_of, is_device_array, location_of
from fastopt._checks import check_bool, check_grad, check_keywords, check_param, plural
from fastopt._flatstep import FlatStep
from fastopt._launch import launch, serial_driver, single_segment
from fastopt._quantized import block_count, dequantize, quantize, quantized_state
from fastopt._state_dict import read_state_dict
from fastopt._state_store import OwnArrays, StateStore
from fastopt._storage import ROUNDING_KEY
from fastopt.flat import FlatParams
from fastopt.gradients import (
    GRADIENT_OPTIONS,
    PLAIN_STEP,
    FlatGradients,
    NonfiniteGradientError,
    NonfinitePolicy,
    Prestep,
    StepStats,
    check_gradient_options,
    check_loss_scale,
    prestep,
)
from fastopt.precision import (
    ABSMAX_SUFFIX,
    BFLOAT16,
    KAHAN_COMP,
    MASTER_PARAM,
    QUANTIZED,
    absmax_name,
    check_seed,
    precision_state,
    quantizes,
    rounding_key,
    rounds_stochastically,
    state_dtype_of,
)

__all__ = ["GradsT", "Optimizer", "ParamsT", "ScheduleLike"]

FLOAT32 = np.dtype(np.float32)

ParamsT: TypeAlias = "np.ndarray | Iterable[np.ndarray] | Iterable[Mapping[str, Any]]"
GradsT: TypeAlias = "np.ndarray | Sequence[np.ndarray | None]"
ScheduleLike: TypeAlias = "float | Callable[[int], float]"


class StateLayout(NamedTuple):
    """How a parameter keeps its state: the rule's state arrays, those of its precision (a
    master copy, a compensation buffer), the dtype of the rule's arrays, and whether its
    16-bit writes round stochastically."""

    names: tuple[str, ...]
    precision: tuple[str, ...]
    dtype: np.dtype
    stochastic: bool
    #: The rule's arrays kept quantized (``state_dtype="int8"``), each with its scales.
    quantized: tuple[str, ...] = ()


def _is_scheduled(value: object) -> bool:
    return callable(value) or (isinstance(value, tuple) and any(callable(v) for v in value))


def _evaluate(spec: Any, step: int) -> Any:
    if isinstance(spec, tuple):
        return tuple(float(v(step)) if callable(v) else v for v in spec)
    return float(spec(step))


# Stands in a group's checked hyperparameters for a value that can change in place (a list):
# no value is this object, so such a value is checked again at every step.
_MUTABLE = object()


def _is_fixed(value: object) -> bool:
    """Whether ``value`` cannot change in place (a number, a string, a tuple of those...)."""
    if value is None or type(value) in (bool, int, float, str) or isinstance(value, np.generic):
        return True
    return type(value) is tuple and all(map(_is_fixed, value))


def _checked_values(values: tuple[Any, ...]) -> tuple[Any, ...]:
    """What a group's hyperparameters are compared with at each step, once checked: the
    values themselves, compared by identity (an equal value of another type, ``1`` where
    ``True`` was checked, is checked again), with :data:`_MUTABLE` for values that can
    change in place."""
    return tuple(value if _is_fixed(value) else _MUTABLE for value in values)


def _is_one_array(obj: object) -> bool:
    # Checked before "iterable": a device tensor iterates over its rows.
    return isinstance(obj, np.ndarray) or is_device_array(obj)


def _as_groups(params: object) -> list[dict[str, Any]]:
    if _is_one_array(params):
        return [{"params": [params]}]
    if isinstance(params, (Mapping, str, bytes)) or not isinstance(params, Iterable):
        raise TypeError(
            "params must be an ndarray, a list of ndarrays or a list of parameter-group dicts, "
            f"got {type(params).__name__}"
        )
    items = list(params)
    if not items:
        raise ValueError("params is empty: the optimizer got no parameters")
    if all(isinstance(item, Mapping) for item in items):
        return [dict(item) for item in items]
    if any(isinstance(item, Mapping) for item in items):
        raise TypeError("params mixes parameter-group dicts and arrays; use one form")
    return [{"params": items}]


def _memory_owner(array: Any) -> Any:
    """The object that owns an array's memory, through views and buffers (``frombuffer``).

    A device array is its own owner (device arrays are compared by byte span).
    """
    while True:
        if isinstance(array, np.ndarray) and array.base is not None:
            array = array.base
        elif isinstance(array, memoryview):
            array = array.obj
        else:
            return array


def _overlapping_pair(
    arrays: Sequence[np.ndarray], backend: ArrayBackend
) -> tuple[int, int] | None:
    """Indices of two arrays whose memory overlaps, or None (sorted sweep, O(n log n))."""
    spans = []
    for index, array in enumerate(arrays):
        start, end = backend.span(array)
        spans.append((start, end, index))
    spans.sort()
    for (_, end, first), (start, _, second) in itertools.pairwise(spans):
        if start < end:
            return first, second
    return None


class Optimizer:
    """Base class of fastopt's optimizers (torch.optim's vocabulary, NumPy arrays).

    Parameters
    ----------
    params
        One C-contiguous float32/float64 array, a list of them, or a list of parameter-group
        dicts (``{"params": [...], "lr": ...}``) whose other keys override ``defaults``.
        NumPy arrays, or CUDA device arrays (numba's, CuPy's, torch CUDA tensors: see
        :mod:`fastopt.cuda`); one optimizer's parameters are all on the host or all on the
        device. The arrays may be the views of a :class:`~fastopt.FlatParams` (or the
        FlatParams itself): then ``step()`` reads its gradient buffer and updates every group
        in one launch.
    defaults
        The rule's hyperparameters. A value may be a schedule (any callable of the step count,
        see :mod:`fastopt.schedules`); it is evaluated once per step before the update.
    nonfinite : {"propagate", "skip", "raise"}, default "propagate"
        What a step does with NaN or Inf gradients (see :mod:`fastopt.gradients`): let them
        through (torch.optim's behavior), skip the step leaving everything bit-identical
        (``GradScaler``'s), or raise ``FloatingPointError`` before anything changes.
    max_norm : float, optional
        Clip the gradients by their global norm, as ``torch.nn.utils.clip_grad_norm_`` does
        (``math.inf`` reports the norm without clipping). Fused into the step.
    norm_type : float, default 2.0
        The norm ``max_norm`` refers to: 2.0 or ``math.inf``.
    clip_value : float, optional
        Clamp each gradient element to ``[-clip_value, clip_value]`` after the other
        scalings, as ``torch.nn.utils.clip_grad_value_`` does. Fused into the update kernel.
    seed : int, default 0
        The seed of stochastic rounding's random bits (see :mod:`fastopt.precision`); kept in
        the state_dict.

    Attributes
    ----------
    param_groups : list of dict
        The groups with their current hyperparameters; edit them between steps to change the
        settings (no recompilation). The next step checks an edited value as the constructor
        checks its arguments, before it writes anything. ``group["schedules"]`` holds the
        scheduled ones.
    state : dict of int to dict
        Per-parameter state, keyed by the parameter's position in the flat parameter list.
    step_count : int
        Number of completed steps; schedules are evaluated at this value.
    nonfinite, max_norm, norm_type, clip_value
        The gradient options above; they may be changed between steps.
    last_step : StepStats or None
        What the last call to :meth:`step` found: the global norm before clipping, the clip
        coefficient, whether the gradients were finite and whether the step was applied
        (also after a step refused with :class:`~fastopt.NonfiniteGradientError`).
    """

    #: Hyperparameters that may be given per group, in the rule's signature order.
    hyperparameters: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        params: ParamsT,
        defaults: Mapping[str, Any],
        *,
        nonfinite: NonfinitePolicy = "propagate",
        max_norm: float | None = None,
        norm_type: float = 2.0,
        clip_value: float | None = None,
        seed: int = 0,
    ) -> None:
        options = check_gradient_options(nonfinite, max_norm, norm_type, clip_value)
        self.seed = check_seed(seed)
        self.nonfinite, self.max_norm, self.norm_type, self.clip_value = options
        self.last_step: StepStats | None = None
        self.defaults = dict(defaults)
        # Every step compares each group's hyperparameters with the checked ones (users may
        # edit them between steps); a C-level getter keeps that off the per-step cost.
        keys = tuple(self.defaults)
        if len(keys) > 1:
            self._hyper_values = operator.itemgetter(*keys)
        else:  # itemgetter of one key returns the value, not a tuple
            self._hyper_values = lambda group: tuple(group[key] for key in keys)
        self.param_groups: list[dict[str, Any]] = []
        self.state: dict[int, dict[str, Any]] = {}
        self.step_count = 0
        self._params: list[np.ndarray] = []
        self._grad_names: list[str] = []  # "grads[i]", for error messages
        self._views: dict[int, dict[str, np.ndarray]] = {}
        # Per parameter: the group's checked values and the state layout it was made for,
        # and the launch arguments (see _launch_plan).
        self._plans: dict[int, tuple[tuple[Any, ...], StateLayout, tuple[Any, ...]]] = {}
        self._row_layout = struct.Struct(f"={self._hyper_width}d")
        self._checked: list[tuple[Any, ...]] = []
        self._attached: dict[str, Any] = {}
        self._arrays: ArrayBackend = HOST
        self._written_spans: tuple[list[int], list[int], list[str]] | None = None
        self._written_owners: set[int] = set()
        # Host state arrays are views of one flat buffer per name and dtype (made on first
        # use, again when groups are added); the flat path's plan (built by the first step()
        # without grads, dropped when groups change) launches over those buffers, and a count
        # of changes to the state entries made outside it (per-array steps, load_state_dict)
        # tells it to read them again.
        self._store: StateStore | OwnArrays | None = None
        self._flat_step: FlatStep | None = None
        self._flat_owners: dict[int, FlatParams] = {}
        self._state_version = 0
        # What keys each parameter's random stream (stochastic rounding) besides the seed and
        # its update count: its position, unless a sharded optimizer gives its pieces others.
        self._rounding_ids: Sequence[int] | None = None
        for group in _as_groups(params):
            self.add_param_group(group)

    # ------------------------------------------------------------------ rule interface
    def _check_gradient_keywords(self, keywords: Mapping[str, Any]) -> None:
        """Refuse keywords other than the gradient options, naming the class called.

        A rule's constructor calls this before passing its ``**gradient_options`` on, so that
        ``Adam(w, learning_rate=0.1)`` raises ``Adam.__init__() got an unexpected keyword
        argument 'learning_rate'``, as Python would for a keyword Adam itself lacks.
        """
        check_keywords(f"{type(self).__qualname__}.__init__", keywords, GRADIENT_OPTIONS)

    def _check_group(self, group: Mapping[str, Any]) -> None:
        """Raise ``TypeError``/``ValueError`` if a hyperparameter of ``group`` is invalid."""
        raise NotImplementedError

    def _state_names(self, group: Mapping[str, Any]) -> tuple[str, ...]:
        """Names of the state arrays a parameter of ``group`` needs."""
        raise NotImplementedError

    def _initial_value(self, name: str, group: Mapping[str, Any]) -> float | None:
        """The value a new state array ``name`` starts from (None: a copy of its parameter)."""
        return 0.0

    #: The state arrays kept apart from a FlatParams' flat state buffers (a rule's host
    #: state, see :class:`fastopt.rule.HostState`).
    _host_state: ClassVar[frozenset[str]] = frozenset()

    def _state_shape(self, name: str, shape: tuple[int, ...]) -> tuple[int, ...] | None:
        """The shape of state array ``name`` of a parameter of ``shape``: the parameter's,
        but one scale per block for a quantized array's scales, and for a rule's host state
        (:class:`fastopt.rule.HostState`) any shape, or None where such a parameter does not
        keep it."""
        if name.endswith(ABSMAX_SUFFIX) and name not in self._all_state_names():
            return (block_count(int(np.prod(shape))),)
        return shape

    #: The number of dimensions every parameter must have (a rule with a matrix step: 2),
    #: or None for any.
    _param_ndim: ClassVar[int | None] = None
    #: ``ready(param_groups)`` raises if the optimizer may not step now (a rule's
    #: :attr:`fastopt.rule.Rule.ready`), checked before anything is read or written.
    _ready_check: ClassVar[Callable[[list[dict[str, Any]]], None] | None] = None
    #: ``advance(group)``: a rule's per-group values moved on by one update, once per group
    #: and applied step, before the rows (:attr:`fastopt.rule.Rule.advance_group`).
    _group_advance: ClassVar[Callable[[dict[str, Any]], None] | None] = None

    #: The rule's (serial, parallel) CPU drivers, see :mod:`fastopt._launch`.
    _kernels: ClassVar[tuple[Callable[..., None], Callable[..., None]]]

    def _new_entry(self, group: Mapping[str, Any]) -> dict[str, Any]:
        """A parameter's state before its first update: its update count (and the rule's
        per-parameter host scalars, if it has any)."""
        return {"step": 0}

    #: Names of the rule's per-parameter host scalars (see :class:`fastopt.rule.Scalar`).
    _scalar_names: ClassVar[tuple[str, ...]] = ()
    #: The type those scalars are computed in: float32, as torch keeps them by default (the
    #: torch adapter: torch's default dtype, then the parameters' after a checkpoint loads).
    _scalar_dtype: np.dtype = np.dtype(np.float32)
    #: The type a scalar computed afresh each update is made in (torch's default dtype).
    _fresh_scalar_dtype: np.dtype = np.dtype(np.float32)

    def _advance(self, entry: dict[str, Any], group: Mapping[str, Any]) -> tuple[float, ...]:
        """Move a parameter's host scalars to update ``entry["step"]`` (just counted) and
        return them, in :attr:`_scalar_names` order (the row depends on them)."""
        return ()

    def _row(
        self,
        group: Mapping[str, Any],
        step: int,
        created: bool,
        grad_scale: float,
        clip_value: float,
        scalars: tuple[float, ...] = (),
    ) -> tuple[float, ...]:
        """The kernel's hyperparameter row for update number ``step`` of a parameter.

        ``created`` tells whether its state arrays were made for this step (torch's first-step
        rules) and ``scalars`` are its host scalars from :meth:`_advance`. Entries 0 and 1 of
        every rule's row are ``grad_scale``, which multiplies the
        gradient inside the kernel (1 for none), and ``clip_value``, to which the scaled
        gradient is then clamped (``inf`` for none).
        """
        raise NotImplementedError

    def _kernel_state(
        self, group: Mapping[str, Any], views: Mapping[str, np.ndarray]
    ) -> tuple[np.ndarray | None, ...]:
        """The state arrays in the kernel's order, ``None`` for those ``group`` does not use.

        It must depend on ``group`` only through :meth:`_state_names` (launch plans are kept
        while those names stay the same)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ groups
    @property
    def params(self) -> list[np.ndarray]:
        """All parameters, in the order ``step`` expects their gradients."""
        return list(self._params)

    def add_param_group(self, param_group: Mapping[str, Any]) -> None:
        """Add a group of parameters with its own hyperparameters (torch's semantics)."""
        if not isinstance(param_group, Mapping):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        if "params" not in param_group:
            raise ValueError("param_group must have a 'params' entry")
        group = dict(param_group)
        number = len(self.param_groups)
        params = group["params"]
        params = [params] if _is_one_array(params) else list(params)
        if not params:
            raise ValueError(f"param_groups[{number}] has no parameters")
        for i, param in enumerate(params):
            check_param(f"param_groups[{number}]['params'][{i}]", param)
        arrays = self._check_one_place(number, params)
        if self._param_ndim is not None:
            for i, param in enumerate(params):
                shape = arrays.dtype_shape(param)[1]
                if len(shape) != self._param_ndim:
                    raise ValueError(
                        f"{type(self).__name__} only supports {self._param_ndim}-D parameters, "
                        f"but param_groups[{number}]['params'][{i}] has shape {shape}"
                    )
        unknown = set(group) - set(self.defaults) - {"params", "schedules"}
        if unknown:
            raise ValueError(f"param_groups[{number}] has unknown keys {sorted(unknown)}")
        overlap = _overlapping_pair(self._params + params, arrays)
        if overlap is not None:
            raise ValueError(
                "a parameter appears twice (or two parameters share memory): positions "
                f"{overlap[0]} and {overlap[1]} of the parameter list"
            )
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        schedules = dict(group.get("schedules", {}))
        schedules.update(
            {k: v for k, v in group.items() if k in self.defaults and _is_scheduled(v)}
        )
        for key, spec in schedules.items():
            group[key] = _evaluate(spec, self.step_count)
        group["schedules"] = schedules
        group["params"] = params
        self._check_group(group)
        self.param_groups.append(group)
        self._checked.append(_checked_values(self._hyper_values(group)))
        self._grad_names.extend(
            f"grads[{i}]" for i in range(len(self._params), len(self._params) + len(params))
        )
        self._params.extend(params)
        self._arrays = arrays
        self._written_spans = None
        self._flat_step = None
        # A store laid out for the new parameters: the next step moves the state there.
        self._store = None
        self._views.clear()
        self._plans.clear()
        # The FlatParams whose views these are stay alive as long as the optimizer: its
        # step() without gradients reads their gradient buffers.
        self._flat_owners.update(
            {id(owner): owner for owner in map(FlatParams.owner_of, params) if owner is not None}
        )

    def _check_one_place(self, number: int, params: Sequence[Any]) -> ArrayBackend:
        """The backend of ``params``: the same for all of them and for earlier groups."""
        first = self._params[0] if self._params else params[0]
        backend = backend_of(first)
        assert backend is not None
        for i, param in enumerate(params):
            if backend_of(param) is not backend:
                raise TypeError(
                    f"param_groups[{number}]['params'][{i}] is {location_of(param)} but the "
                    f"optimizer's parameters are in {backend.location}: put them all in "
                    "one place"
                )
        return backend

    def attach(self, name: str, obj: Any) -> None:
        """Carry ``obj.state_dict()`` (a scheduler's, say) in this optimizer's checkpoints."""
        self._attached[name] = obj

    # ------------------------------------------------------------------ step
    def _pair_grads(self, grads: GradsT) -> Sequence[np.ndarray | None]:
        """The gradients as a sequence, one per parameter, each checked (dtype, shape,
        layout, place) and disjoint from every array the step writes (any parameter or
        state array): otherwise the result would depend on the order of the updates."""
        count = len(self._params)
        if type(grads) is list or type(grads) is tuple:
            pass  # the usual case, without the slower checks below
        elif _is_one_array(grads):
            if count != 1:
                raise TypeError(
                    f"grads must be a list of {plural(count, 'array')} (one per parameter)"
                )
            grads = [grads]
        elif not isinstance(grads, Sequence) or isinstance(grads, (str, bytes)):
            raise TypeError(f"grads must be an ndarray or a list of them, got {type(grads)}")
        else:
            grads = list(grads)  # read once: what is checked is what the update reads
        if len(grads) != count:
            raise ValueError(
                f"grads has {plural(len(grads), 'entry', 'entries')}, expected {count} "
                "(one per parameter)"
            )
        if self._written_spans is None:
            self._index_written_arrays()
        written_owners = self._written_owners
        on_host = self._arrays is HOST
        for index, grad in enumerate(grads):
            if grad is None:
                continue
            param = self._params[index]
            if not (
                # The common case accepted at a glance; check_grad tests it again, with
                # everything else, and names what is wrong.
                on_host
                and type(grad) is np.ndarray
                and grad.dtype is param.dtype
                and grad.shape == param.shape
                and grad.flags.c_contiguous
            ):
                check_grad(self._grad_names[index], grad, param, check_aliasing=False)
            if isinstance(grad, np.ndarray):
                # NumPy arrays overlap only if they share the object that owns their memory
                # (found through .base: views, reshapes, frombuffer); most gradients own
                # theirs, a set lookup. Only then, and for device arrays, are spans compared.
                base = grad.base
                if base is None:
                    if id(grad) not in written_owners:
                        continue
                else:
                    owner = _memory_owner(base)
                    # An ndarray that owns its memory shares it with no other owner; any
                    # other owner (a buffer, numpy's stand-in behind as_strided) is not
                    # known to be unique: compare spans.
                    if isinstance(owner, np.ndarray) and id(owner) not in written_owners:
                        continue
            self._check_span_disjoint(index, grad)
        return grads

    def _check_span_disjoint(self, index: int, grad: Any) -> None:
        """``grads[index]`` overlaps no written array, by byte spans. Written arrays are
        contiguous and disjoint, so their spans, sorted once, are sorted by end too: one
        bisection finds any overlap."""
        starts, ends, owners = self._written_spans  # type: ignore[misc]
        start, end = self._arrays.span(grad)
        position = bisect.bisect_right(ends, start)
        if start < end and position < len(starts) and starts[position] < end:
            raise ValueError(
                f"grads[{index}] shares memory with {owners[position]}, which the step "
                "writes; pass a separate array"
            )

    def _index_written_arrays(self) -> None:
        is_array = self._arrays.is_array
        written = [(p, f"parameter {i}") for i, p in enumerate(self._params)]
        written += [
            (value, f"state {name!r} of parameter {i}")
            for i, entry in self.state.items()
            for name, value in entry.items()
            if is_array(value)
        ]
        # Owners stay alive as long as the arrays that view them, so their ids stay unique.
        self._written_owners = {id(_memory_owner(array)) for array, _ in written}
        spans = sorted((*self._arrays.span(array), owner) for array, owner in written)
        spans = [span for span in spans if span[0] < span[1]]
        self._written_spans = tuple(map(list, zip(*spans, strict=True))) or ([], [], [])

    def _refresh_hyperparameters(self) -> None:
        hyper_values, checked = self._hyper_values, self._checked
        for number, group in enumerate(self.param_groups):
            schedules = group["schedules"]
            if schedules:
                for key, spec in schedules.items():
                    group[key] = _evaluate(spec, self.step_count)
            values = hyper_values(group)
            # By identity: the common case (nothing edited) stays a C-level loop, and any
            # replaced value is checked again, even one equal to the checked one.
            if not all(map(operator.is_, values, checked[number])):
                self._check_group(group)
                checked[number] = _checked_values(values)

    def _advance_groups(self) -> None:
        """Move every group's per-group values on by one update (rules that keep some)."""
        advance = self._group_advance
        if advance is not None:
            for number, group in enumerate(self.param_groups):
                advance(group)
                # What the rule advanced is valid: the next step need not check it again.
                self._checked[number] = _checked_values(self._hyper_values(group))

    def _layout(self, group: Mapping[str, Any], dtype: np.dtype, size: int = 0) -> StateLayout:
        """How a parameter of ``dtype`` and ``size`` elements in ``group`` keeps its state
        (see :class:`StateLayout`); a launch plan holds while this stays the same."""
        names = self._state_names(group)
        return StateLayout(
            names,
            precision_state(group, dtype),
            state_dtype_of(group, dtype),
            rounds_stochastically(group, dtype),
            self._quantized_of(group, names, size),
        )

    #: The rule's state arrays that ``state_dtype="int8"`` may quantize, and those that are
    #: never negative (coded with the unsigned map), see :class:`fastopt.rule.State`.
    _quantizable_states: ClassVar[frozenset[str]] = frozenset()
    _nonnegative_states: ClassVar[frozenset[str]] = frozenset()

    def _quantized_of(
        self, group: Mapping[str, Any], names: tuple[str, ...], size: int
    ) -> tuple[str, ...]:
        """Which of ``names`` a parameter of ``size`` elements in ``group`` keeps quantized."""
        if not quantizes(group, size):
            return ()
        return tuple(name for name in names if name in self._quantizable_states)

    def _quantized_names(self, group: Mapping[str, Any], param: Any) -> tuple[str, ...]:
        """The rule's state arrays of ``param`` in ``group`` kept quantized."""
        size = math.prod(self._arrays.dtype_shape(param)[1])
        return self._quantized_of(group, self._state_names(group), size)

    def _param_state_names(self, group: Mapping[str, Any], param: Any) -> tuple[str, ...]:
        """The state arrays of ``param`` in ``group``: the rule's, then those of its
        precision (a master copy or a compensation buffer, see :mod:`fastopt.precision`),
        then the scales of its quantized arrays."""
        dtype = self._arrays.dtype_shape(param)[0]
        scales = tuple(absmax_name(name) for name in self._quantized_names(group, param))
        return self._state_names(group) + precision_state(group, dtype) + scales

    def _state_dtype(self, name: str, group: Mapping[str, Any], param: Any) -> np.dtype:
        """The dtype of state array ``name`` of ``param`` in ``group``."""
        dtype = self._arrays.dtype_shape(param)[0]
        if name == MASTER_PARAM:
            return np.dtype(np.float32)
        if name == KAHAN_COMP:
            return dtype
        if name in self._quantized_names(group, param):
            return QUANTIZED
        if name not in self._all_state_names():  # a quantized array's scales
            return np.dtype(np.float32)
        return state_dtype_of(group, dtype)

    def _state_store(self) -> StateStore | OwnArrays:
        """Where the state arrays live: views of flat buffers on the host, arrays of their
        own on a device (see :mod:`fastopt._state_store`); made on first use."""
        if self._store is None:
            params = self._params
            self._store = (
                StateStore(params) if self._arrays is HOST else OwnArrays(self._arrays, params)
            )
        return self._store

    def _move_into_store(self, index: int) -> bool:
        """Make parameter ``index``'s host state arrays views of the store (copies of those
        that are not: loaded, set from outside, or made for an earlier layout); whether any
        moved."""
        store = self._state_store()
        state = self.state[index]
        moved = [
            name
            for name, value in state.items()
            if isinstance(value, np.ndarray)
            and name not in self._host_state
            and not store.holds(index, name, value)
        ]
        for name in moved:
            state[name] = store.put(index, name, state[name], state[name].dtype)
        return bool(moved)

    def _prepare_state(self, index: int, param: np.ndarray, group: Mapping[str, Any]) -> bool:
        state = self.state.get(index)
        if state is None:
            state = self.state[index] = self._new_entry(group)
        moved = self._move_into_store(index)
        names = self._param_state_names(group, param)
        arrays = self._arrays
        quantized = self._quantized_names(group, param)
        # An array kept in another dtype than the group now says is converted (an 8-bit one
        # decoded with its scales, which go; one to quantize encoded, with new scales).
        converted = [
            name
            for name in names
            if name in state
            and arrays.dtype_shape(state[name])[0] != self._state_dtype(name, group, param)
        ]
        for name in converted:
            value = state[name]
            if arrays.dtype_shape(value)[0] == QUANTIZED:
                scales = arrays.to_host(state.pop(absmax_name(name)))
                signed = name not in self._nonnegative_states
                value = dequantize(arrays.to_host(value), scales, signed)
            self._set_state(index, state, name, value, group, param, quantized)
        # Scales left without their codes (the array was decoded above) go.
        stale = [
            name
            for name in state
            if name.endswith(ABSMAX_SUFFIX)
            and name not in names
            and getattr(state.get(name[: -len(ABSMAX_SUFFIX)]), "dtype", None) != QUANTIZED
        ]
        for name in stale:
            del state[name]
        missing = [name for name in names if name not in state]
        for name in missing:
            dtype = self._state_dtype(name, group, param)
            if name == MASTER_PARAM:
                state[name] = self._state_store().put(index, name, param, dtype)
            elif name == KAHAN_COMP:
                state[name] = self._state_store().put(index, name, 0.0, dtype)
            elif name not in self._all_state_names():
                continue  # a quantized array's scales: made with it
            else:
                value = self._initial_value(name, group)
                shape = arrays.dtype_shape(param)[1]
                kept = self._state_shape(name, shape)
                if kept != shape:  # host state, where the parameter lives
                    state[name] = arrays.from_host(np.full(kept, value, dtype), param)
                elif name in quantized:
                    start = param if value is None else arrays.full_like(param, value, FLOAT32)
                    self._set_state(index, state, name, start, group, param, quantized)
                else:
                    start = param if value is None else value
                    state[name] = self._state_store().put(index, name, start, dtype)
        if missing or converted or stale or moved:
            self._state_version += 1
        if missing or converted or stale or moved or index not in self._views:
            self._refresh_views(index)
        return bool(missing)

    def _set_state(
        self,
        index: int,
        state: dict[str, Any],
        name: str,
        value: Any,
        group: Mapping[str, Any],
        param: Any,
        quantized: tuple[str, ...],
    ) -> None:
        """Store ``value`` as state array ``name``: encoded, with its scales, if quantized."""
        if name in quantized:
            host = value if isinstance(value, np.ndarray) else self._arrays.to_host(value)
            codes, scales = quantize(host, name not in self._nonnegative_states)
            scales_name = absmax_name(name)
            state[name] = self._state_store().put(index, name, codes, QUANTIZED)
            state[scales_name] = self._state_store().put(index, scales_name, scales, FLOAT32)
        else:
            dtype = self._state_dtype(name, group, param)
            state[name] = self._state_store().put(index, name, value, dtype)

    def _refresh_views(self, index: int) -> None:
        self._written_spans = None
        flat = self._arrays.flat
        views = {"param": flat(self._params[index])}
        views.update(
            (name, flat(value))
            for name, value in self.state[index].items()
            if self._arrays.is_array(value)
        )
        self._views[index] = views
        self._plans.pop(index, None)

    def step(
        self,
        grads: GradsT | None = None,
        *,
        loss_scale: float = 1.0,
        nonfinite: NonfinitePolicy | None = None,
    ) -> None:
        """Update every parameter in place from its gradient.

        Parameters
        ----------
        grads
            One gradient per parameter, in the order of :attr:`params` (an ndarray when there
            is a single parameter). A ``None`` entry skips that parameter, as torch does for a
            parameter without ``.grad``. Everything is validated before anything is written.
            Leave it out when the parameters are views of one :class:`~fastopt.FlatParams`:
            the step then reads its gradient buffer (the mean of what
            :meth:`~fastopt.FlatParams.accumulate` added) and updates all of them in one
            launch per state layout.
        loss_scale
            The factor the loss was multiplied by (mixed precision): the gradients are divided
            by it inside the kernels (torch's fused optimizers call this ``grad_scale``).
        nonfinite
            Overrides the optimizer's ``nonfinite`` policy for this step.

        Raises
        ------
        NonfiniteGradientError
            (a ``FloatingPointError``) With the ``"raise"`` policy, when a gradient holds NaN
            or Inf; nothing changed but :attr:`last_step`, which tells what was found.

        Notes
        -----
        The outcome is in :attr:`last_step`. A skipped step advances no step count, so
        schedules, bias corrections and torch's first-step rules resume where they were.
        """
        if grads is None:
            self._step_flat(None, loss_scale, nonfinite)
            return
        if self._ready_check is not None:
            self._ready_check(self.param_groups)
        paired = self._pair_grads(grads)
        self._apply(paired, self._prestep(paired, loss_scale, nonfinite))

    def _apply(self, paired: Sequence[np.ndarray | None], outcome: Prestep) -> None:
        """The update of a step whose gradients are paired and whose read pass is done (a
        sharded optimizer does that pass across processes, see :mod:`fastopt.distributed`)."""
        self.last_step = outcome.stats
        if not outcome.stats.applied:
            return
        self._refresh_hyperparameters()
        self._advance_groups()
        index = 0
        for group, checked in zip(self.param_groups, self._checked, strict=True):
            # The parameters of a group usually share their update count: their row (bias
            # corrections and all) is computed once per step, not once per array.
            rows: dict[tuple[Any, ...], tuple[float, ...]] = {}
            for param in group["params"]:
                grad = paired[index]
                if grad is not None:
                    self._update_one(index, param, grad, group, checked, outcome, rows)
                index += 1
        self.step_count += 1

    def _prestep(
        self,
        grads: Sequence[np.ndarray | None] | FlatGradients,
        loss_scale: float,
        nonfinite: NonfinitePolicy | None,
        **flat: Any,
    ) -> Prestep:
        """Validate the gradient options, then the read pass (norm and finite check).

        ``flat`` passes the flat path's ``gradient_factor`` to :func:`prestep`.
        """
        if (
            nonfinite is None
            and type(loss_scale) is float
            and loss_scale == 1.0
            and type(self.nonfinite) is str
            and self.nonfinite == "propagate"
            and self.max_norm is None
            and type(self.norm_type) is float
            and self.norm_type == 2.0
            and self.clip_value is None
        ):
            return PLAIN_STEP  # the defaults: no read pass, nothing to check (hot path)
        policy, max_norm, norm_type, clip_value = check_gradient_options(
            self.nonfinite if nonfinite is None else nonfinite,
            self.max_norm,
            self.norm_type,
            self.clip_value,
        )
        try:
            return prestep(
                grads,
                loss_scale=check_loss_scale(loss_scale),
                nonfinite=policy,
                max_norm=max_norm,
                norm_type=norm_type,
                clip_value=clip_value,
                **flat,
            )
        except NonfiniteGradientError as error:
            self.last_step = error.stats
            raise

    def _flat_plan(self) -> FlatStep:
        """The flat path's plan, built on first use (raises if the params are not flat views)."""
        if self._flat_step is None:
            self._flat_step = FlatStep(self)
        return self._flat_step

    def _step_flat(
        self,
        active: np.ndarray | None = None,
        loss_scale: float = 1.0,
        nonfinite: NonfinitePolicy | None = None,
    ) -> bool:
        """One update of the FlatParams the parameters view, from its gradient buffer.

        ``active`` (a bool per parameter) restricts the update to some parameters, as torch
        skips those without a gradient. Returns whether state arrays were created (False
        also when the step was skipped).
        """
        if self._ready_check is not None:
            self._ready_check(self.param_groups)
        plan = self._flat_plan()
        outcome = self._prestep(
            plan.gradients(active), loss_scale, nonfinite, gradient_factor=plan.flat.grad_scale
        )
        self.last_step = outcome.stats
        if not outcome.stats.applied:
            return False
        self._refresh_hyperparameters()
        self._advance_groups()
        created = plan.step(active, outcome.grad_scale, outcome.clip_value)
        self.step_count += 1
        return created

    def _update_one(
        self,
        index: int,
        param: np.ndarray,
        grad: np.ndarray,
        group: Mapping[str, Any],
        checked: tuple[Any, ...],
        outcome: Prestep,
        rows: dict[tuple[Any, ...], tuple[float, ...]],
    ) -> None:
        """Advance parameter ``index`` by one update (everything already validated).

        ``checked`` is the group's checked hyperparameter values; ``rows`` holds the group's
        hyperparameter rows made so far in this step, by update count and whether the state
        was just made."""
        created, (hyper, bounds, flat, state_arrays, shapes, precision, serial) = self._launch_plan(
            index, param, group, checked
        )
        state = self.state[index]
        state["step"] += 1
        master, comp, stochastic = precision
        scalars = self._advance(state, group) if self._scalar_names else ()
        key = (state["step"], created, scalars)
        row = rows.get(key)
        if row is None:
            row = rows[key] = self._row(
                group, key[0], created, outcome.grad_scale, outcome.clip_value, scalars
            )
        # struct writes the float64 row straight into the (C-contiguous, native-endian)
        # buffer: about half the cost of NumPy converting a tuple, on every step.
        self._row_layout.pack_into(hyper, 0, *row)
        if stochastic:
            stream = index if self._rounding_ids is None else self._rounding_ids[index]
            hyper[0, ROUNDING_KEY] = rounding_key(self.seed, stream, state["step"])
        if serial is not None:  # what launch() would call, without its dispatch
            serial(bounds, hyper, flat, self._arrays.flat(grad), *state_arrays, *precision)
            return
        launch(
            self._kernels,
            bounds,
            hyper,
            flat,
            self._arrays.flat(grad),
            *state_arrays,
            master=master,
            comp=comp,
            stochastic=stochastic,
            shapes=shapes,
        )

    def _launch_plan(
        self, index: int, param: np.ndarray, group: Mapping[str, Any], checked: tuple[Any, ...]
    ) -> tuple[bool, tuple[Any, ...]]:
        """The kernel arguments of parameter ``index`` but its gradient, made once and kept
        while the group's options need the same state arrays (the per-step cost of a small
        array is mostly this bookkeeping), and the serial driver when :func:`launch` would
        only call that. Also tells whether state arrays were just made.

        The layout is a function of the group's hyperparameters: while the group's checked
        values are the same object (:meth:`_refresh_hyperparameters` replaces it when one
        changes), the plan holds without computing the layout again."""
        cached = self._plans.get(index)
        if cached is not None and cached[0] is checked:
            return False, cached[2]
        dtype, shape = self._arrays.dtype_shape(param)
        names = self._layout(group, dtype, math.prod(shape))
        if cached is not None and cached[1] == names:
            self._plans[index] = (checked, names, cached[2])
            return False, cached[2]
        created = self._prepare_state(index, param, group)
        views = self._views[index]
        state = self._quantized_views(self._kernel_state(group, views), names.quantized, views)
        plan = (
            np.empty((1, self._hyper_width)),
            single_segment(views["param"].size),
            views["param"],
            state,
            (shape,),
            (views.get(MASTER_PARAM), views.get(KAHAN_COMP), True if names.stochastic else None),
            serial_driver(self._kernels, views["param"], state),
        )
        self._plans[index] = (checked, names, plan)
        return created, plan

    #: Length of the rule's kernel hyperparameter row.
    _hyper_width: ClassVar[int] = 0

    def _quantized_views(
        self, arrays: tuple[Any, ...], quantized: tuple[str, ...], views: Mapping[str, Any]
    ) -> tuple[Any, ...]:
        """The kernel's state arguments with each quantized array as its codes and scales
        (see :mod:`fastopt._quantized`)."""
        if not quantized:
            return arrays
        by_id = {id(views[name]): name for name in quantized}
        return tuple(
            quantized_state(array, views[absmax_name(name)], name not in self._nonnegative_states)
            if (name := by_id.get(id(array))) is not None
            else array
            for array in arrays
        )

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self, *, dequantize: bool = False) -> dict[str, Any]:
        """A checkpoint: host copies of every state array, the hyperparameters, the step.

        The layout is torch's (``"state"`` keyed by parameter position, ``"param_groups"``
        with ``"params"`` as positions) plus ``"step_count"``, the random ``"seed"`` and the
        state of attached objects (``"attached"``). Schedules are not stored: rebuild the
        optimizer with the same schedules and the restored ``step_count`` continues them
        exactly. ``dequantize=True`` gives the rule's bfloat16 and 8-bit state arrays as
        float32 (without the 8-bit arrays' ``"<name>_absmax"`` scales), and their groups'
        ``state_dtype`` as None: what a float32 optimizer loads
        (:meth:`load_state_dict` takes either form, in the dtype its groups then say).
        """
        check_bool("dequantize", dequantize)
        groups, start = [], 0
        for group in self.param_groups:
            saved = {k: v for k, v in group.items() if k not in ("params", "schedules")}
            saved["params"] = list(range(start, start + len(group["params"])))
            start += len(group["params"])
            groups.append(saved)
        to_host, is_array = self._arrays.to_host, self._arrays.is_array
        state = {
            index: {k: to_host(v) if is_array(v) else v for k, v in entry.items()}
            for index, entry in self.state.items()
        }
        if dequantize:  # and the groups say so
            for saved in groups:
                if saved["state_dtype"] in ("bfloat16", "int8"):
                    saved["state_dtype"] = None
            for entry in state.values():
                self._dequantize_entry(entry)
        attached = {name: obj.state_dict() for name, obj in self._attached.items()}
        return {
            "state": state,
            "param_groups": groups,
            "step_count": self.step_count,
            "seed": self.seed,
            "attached": attached,
        }

    def _dequantize_entry(self, entry: dict[str, Any]) -> None:
        """A host state entry's bfloat16 and 8-bit arrays (their scales dropped) as float32,
        in place."""
        for name, value in list(entry.items()):
            if name in (MASTER_PARAM, KAHAN_COMP) or not isinstance(value, np.ndarray):
                continue
            if value.dtype == BFLOAT16:
                entry[name] = value.astype(np.float32)
            elif value.dtype == QUANTIZED:
                signed = name not in self._nonnegative_states
                entry[name] = dequantize(value, entry.pop(absmax_name(name)), signed)

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a checkpoint made by :meth:`state_dict` (validated whole before any change).

        Raises
        ------
        ValueError
            If the checkpoint does not match this optimizer: group count, parameter counts,
            hyperparameters, state array names, shapes or dtypes.
        """
        loaded = read_state_dict(self, state_dict)
        self._load_attached(loaded.attached)
        for number, merged in enumerate(loaded.groups):
            self.param_groups[number].update(
                {k: v for k, v in merged.items() if k in self.defaults}
            )
            self._checked[number] = _checked_values(self._hyper_values(self.param_groups[number]))
        self.state = loaded.state
        self._state_version += 1
        self._views.clear()
        self._plans.clear()
        for index in self.state:
            self._move_into_store(index)
            self._refresh_views(index)
        self.step_count = loaded.step_count
        self.seed = loaded.seed

    def _load_attached(self, attached: Mapping[str, Any]) -> None:
        """Load the attached objects' states, all or none: if one refuses its state, those
        already loaded get their previous state back and the error propagates."""
        loaded: list[tuple[Any, Any]] = []
        try:
            for name, obj in self._attached.items():
                if name in attached:
                    previous = obj.state_dict()
                    obj.load_state_dict(attached[name])
                    loaded.append((obj, previous))
        except BaseException:
            for obj, previous in reversed(loaded):
                obj.load_state_dict(previous)
            raise

    def _all_state_names(self) -> frozenset[str]:
        """Every state array name this rule may use, whatever the options."""
        raise NotImplementedError

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for number, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {number}")
            for key in self.defaults:
                lines.append(f"    {key}: {group[key]}")
        lines.append(")")
        return "\n".join(lines)
