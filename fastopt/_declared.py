"""The NumPy optimizer class and the functional step of a declared rule.

:func:`optimizer_class` makes the :class:`~fastopt.Optimizer` subclass a rule's users see
(torch's signature from the declaration's hyperparameters, then the gradient options), and
:func:`functional_step` the ``<rule>_step(param, grad, *state, *, ..., step)`` function. Both
validate everything before the first write and launch the rule's generated kernels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from inspect import Parameter, Signature
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from fastopt._backend import backend_of
from fastopt._checks import (
    check_bool,
    check_disjoint,
    check_grad,
    check_param,
    check_real,
    check_state,
    check_step,
    same_place,
)
from fastopt._codegen import LazyKernels
from fastopt._launch import RuleKernels, launch, single_segment
from fastopt._storage import ROUNDING_KEY
from fastopt.gradients import kernel_gradient_terms
from fastopt.optimizer import Optimizer
from fastopt.precision import (
    KAHAN_COMP,
    MASTER_PARAM,
    PRECISION_DEFAULTS,
    check_precision,
    check_seed,
    is_low_precision,
    rounding_key,
)

if TYPE_CHECKING:
    from fastopt.rule import Rule

__all__ = [
    "PREAMBLE_WIDTH",
    "DeclaredOptimizer",
    "advance_scalars",
    "check_hyperparameters",
    "functional_step",
    "optimizer_class",
    "row_of",
]

#: Row entries before the rule's own fields: the gradient's scale, its clip value, the
#: maximize flag (the generated kernels' gradient preamble) and the segment's random key for
#: stochastic rounding (column :data:`ROUNDING_KEY`, see :mod:`fastopt._storage`).
PREAMBLE_WIDTH = ROUNDING_KEY + 1


_NO_SCALARS: Mapping[str, float] = MappingProxyType({})


def check_hyperparameters(rule: Rule, group: Mapping[str, Any]) -> None:
    """Each hyperparameter's own check, then the rule's checks across them."""
    for hyperparameter in rule.hyperparameters:
        hyperparameter.check(hyperparameter.name, group[hyperparameter.name])
    if rule.check is not None:
        rule.check(group)


def row_of(
    rule: Rule,
    group: Mapping[str, Any],
    step: int,
    created: bool,
    grad_scale: float = 1.0,
    clip_value: float = math.inf,
    scalars: Mapping[str, float] | None = None,
) -> tuple[float, ...]:
    """The kernel's float64 row: the gradient preamble (with a random key of 0), then the
    rule's fields."""
    maximize = rule.maximize is not None and group[rule.maximize]
    fields = rule.row(group, step, created, _NO_SCALARS if scalars is None else scalars)
    if rule.norms is not None:  # written by the read pass (fastopt._norms)
        fields = (*fields, *[0.0] * len(rule.norms.fields))
    return (grad_scale, clip_value, 1.0 if maximize else 0.0, 0.0, *fields)


def advance_scalars(
    rule: Rule,
    group: Mapping[str, Any],
    step: int,
    values: Mapping[str, float],
    dtype: np.dtype,
    fresh_dtype: np.dtype | None = None,
) -> tuple[dict[str, float], dict[str, float]]:
    """The rule's host scalars for update ``step`` from their previous ``values``: those to
    store, and those the row reads (the previous value of a ``read_before`` scalar).

    ``dtype`` is the state's scalar type, ``fresh_dtype`` (default: the same) the one a
    ``recomputed`` scalar is made in."""
    fresh_dtype = dtype if fresh_dtype is None else fresh_dtype
    stored = {
        scalar.name: float(
            scalar.advance(
                group, step, values[scalar.name], fresh_dtype if scalar.recomputed else dtype
            )
        )
        for scalar in rule.scalars
    }
    seen = {
        scalar.name: float(values[scalar.name]) if scalar.read_before else stored[scalar.name]
        for scalar in rule.scalars
    }
    return stored, seen


class DeclaredOptimizer(Optimizer):
    """An :class:`~fastopt.Optimizer` whose rule interface is read from a declaration."""

    _rule: ClassVar[Rule]
    _kernels: ClassVar[RuleKernels]
    #: Read from the declaration once (the step reads them on every call).
    _required_states: ClassVar[tuple[str, ...]]
    _optional_states: ClassVar[tuple[tuple[str, Callable[[Mapping[str, Any]], bool]], ...]]
    #: Hyperparameters a variant fixes (AdamW's ``decoupled_weight_decay=True``).
    _fixed: ClassVar[Mapping[str, Any]] = {}

    def _new_entry(self, group: Mapping[str, Any]) -> dict[str, Any]:
        entry: dict[str, Any] = {"step": 0}
        entry.update(
            (scalar.name, scalar.initial_value(group, self._scalar_dtype))
            for scalar in self._rule.scalars
        )
        return entry

    def _advance(self, entry: dict[str, Any], group: Mapping[str, Any]) -> tuple[float, ...]:
        if not self._rule.scalars:
            return ()
        stored, seen = advance_scalars(
            self._rule, group, entry["step"], entry, self._scalar_dtype, self._fresh_scalar_dtype
        )
        entry.update(stored)
        return tuple(seen.values())

    def _check_group(self, group: Mapping[str, Any]) -> None:
        check_hyperparameters(self._rule, group)
        check_precision(group)
        if self._rule.host_state:
            _check_host_state_group(self._rule, group)
        for entry in self._rule.group_state:
            entry.check(entry.name, group[entry.name])

    def _state_names(self, group: Mapping[str, Any]) -> tuple[str, ...]:
        # Called on every step: the arrays every group has, then the optional ones present.
        names = self._required_states
        for name, present in self._optional_states:
            if present(group):
                names += (name,)
        return names

    def _all_state_names(self) -> frozenset[str]:
        return frozenset(self._rule.state_names) | {entry.name for entry in self._rule.host_state}

    def _param_state_names(self, group: Mapping[str, Any], param: Any) -> tuple[str, ...]:
        names = super()._param_state_names(group, param)
        if not self._rule.host_state:
            return names
        shape = self._arrays.dtype_shape(param)[1]
        own = len(self._state_names(group))
        host = tuple(e.name for e in self._rule.host_state if e.shape(shape) is not None)
        return names[:own] + host + names[own:]

    def _state_shape(self, name: str, shape: tuple[int, ...]) -> tuple[int, ...] | None:
        for entry in self._rule.host_state:
            if entry.name == name:
                kept = entry.shape(shape)
                return None if kept is None else tuple(kept)
        return super()._state_shape(name, shape)

    def _initial_value(self, name: str, group: Mapping[str, Any]) -> float | None:
        if any(entry.name == name for entry in self._rule.host_state):
            return 0.0
        (state,) = (state for state in self._rule.state if state.name == name)
        return None if state.from_param else float(state.initial(group))

    def _row(self, group, step, created, grad_scale, clip_value, scalars=()) -> tuple[float, ...]:
        rule = self._rule
        named = _NO_SCALARS
        if rule.scalars:
            if scalars:
                named = dict(zip(rule.scalar_names, scalars, strict=True))
            else:  # a parameter fresh at this step (the padding's row)
                dtype = self._scalar_dtype
                initial = {s.name: s.initial_value(group, dtype) for s in rule.scalars}
                fresh = self._fresh_scalar_dtype
                named = advance_scalars(rule, group, step, initial, dtype, fresh)[1]
        return row_of(rule, group, step, created, grad_scale, clip_value, named)

    def _kernel_state(self, group, views) -> tuple[np.ndarray | None, ...]:
        arrays = tuple(
            views[state.name] if state.present(group) else None for state in self._rule.state
        )
        # The matrix step's host state, after the kernels' arrays (see fastopt._launch).
        return arrays + tuple(views.get(entry.name) for entry in self._rule.host_state)


def _check_host_state_group(rule: Rule, group: Mapping[str, Any]) -> None:
    """A rule with host state keeps it in its float32 or float64 parameters' dtype: no
    8-bit or bfloat16 state, no 16-bit parameters."""
    if group["state_dtype"] is not None:
        raise ValueError(
            f"{rule.name} keeps its state in the parameters' dtype: state_dtype must be None, "
            f"got {group['state_dtype']!r}"
        )
    for i, param in enumerate(group["params"]):
        dtype = backend_of(param).dtype_shape(param)[0]
        if dtype not in (np.float32, np.float64):
            raise TypeError(
                f"{rule.name} supports float32 and float64 parameters, params[{i}] is {dtype}"
            )


def _class_signature(
    rule: Rule, defaults: Mapping[str, Any], fixed: Mapping[str, Any]
) -> Signature:
    parameters = [
        Parameter("self", Parameter.POSITIONAL_OR_KEYWORD),
        Parameter("params", Parameter.POSITIONAL_OR_KEYWORD, annotation="ParamsT"),
    ]
    for hyperparameter in rule.hyperparameters:
        if hyperparameter.name in fixed:
            continue
        kind = (
            Parameter.KEYWORD_ONLY
            if hyperparameter.keyword_only
            else Parameter.POSITIONAL_OR_KEYWORD
        )
        annotation = hyperparameter.annotation
        if hyperparameter.scheduled:
            annotation = annotation.replace("float", "ScheduleLike")
        default = defaults.get(hyperparameter.name, hyperparameter.default)
        parameters.append(
            Parameter(hyperparameter.name, kind, default=default, annotation=annotation)
        )
    parameters += _PRECISION_PARAMETERS
    parameters.append(Parameter("seed", Parameter.KEYWORD_ONLY, default=0, annotation="int"))
    parameters.append(
        Parameter("gradient_options", Parameter.VAR_KEYWORD, annotation="Unpack[GradientOptions]")
    )
    return Signature(parameters, return_annotation="None")


#: The precision options every rule's class takes (see fastopt.precision), keyword-only.
_PRECISION_PARAMETERS = [
    Parameter(
        name,
        Parameter.KEYWORD_ONLY,
        default=default,
        annotation="str | None" if name == "state_dtype" else "bool",
    )
    for name, default in PRECISION_DEFAULTS.items()
]


def optimizer_class(
    rule: Rule,
    kernels: LazyKernels,
    *,
    name: str | None = None,
    defaults: Mapping[str, Any] | None = None,
    fixed: Mapping[str, Any] | None = None,
    doc: str | None = None,
    base: type[DeclaredOptimizer] | None = None,
) -> type[DeclaredOptimizer]:
    """The NumPy optimizer class of ``rule`` (named after it, in the rule's module).

    A variant (AdamW of Adam) takes another ``name``, other ``defaults``, hyperparameters
    ``fixed`` to a value (left out of its signature, kept in its groups) and subclasses
    ``base``.
    """
    name = name or rule.name
    fixed = dict(fixed or {})
    signature = _class_signature(rule, defaults or {}, fixed)
    names = [h.name for h in rule.hyperparameters if h.name not in fixed]

    def __init__(self, params, *args, **kwargs):
        try:
            bound = signature.bind(self, params, *args, **kwargs)
        except TypeError as error:
            raise TypeError(f"{type(self).__qualname__}.__init__() {error}") from None
        bound.apply_defaults()
        gradient_options = bound.arguments["gradient_options"]
        self._check_gradient_keywords(gradient_options)
        values = {key: bound.arguments[key] for key in names} | fixed
        ordered = {h.name: values[h.name] for h in rule.hyperparameters}
        ordered.update((entry.name, entry.initial) for entry in rule.group_state)
        ordered.update((key, bound.arguments[key]) for key in PRECISION_DEFAULTS)
        Optimizer.__init__(self, params, ordered, seed=bound.arguments["seed"], **gradient_options)

    __init__.__signature__ = signature  # type: ignore[attr-defined]
    __init__.__qualname__ = f"{name}.__init__"
    namespace = {
        "__init__": __init__,
        "__doc__": doc if doc is not None else rule.doc,
        "__module__": rule.update.__module__,
        "__qualname__": name,
        "hyperparameters": tuple(h.name for h in rule.hyperparameters),
        "_rule": rule,
        "_kernels": kernels,
        "_fixed": fixed,
        "_hyper_width": PREAMBLE_WIDTH + len(rule.all_fields),
        "_ready_check": None if rule.ready is None else staticmethod(rule.ready),
        "_param_ndim": None if rule.matrix is None else rule.matrix.ndim,
        "_group_advance": (
            None if rule.advance_group is None else staticmethod(rule.advance_group)
        ),
        **rule.methods,
        "_scalar_names": rule.scalar_names,
        "_host_state": frozenset(entry.name for entry in rule.host_state),
        "_required_states": tuple(state.name for state in rule.state if not state.optional),
        "_quantizable_states": frozenset(s.name for s in rule.state if s.quantizable),
        "_nonnegative_states": frozenset(s.name for s in rule.state if s.nonnegative),
        "_optional_states": tuple(
            (state.name, state.present) for state in rule.state if state.optional
        ),
    }
    return type(name, (base or DeclaredOptimizer,), namespace)


def _step_signature(rule: Rule) -> Signature:
    parameters = [
        Parameter("param", Parameter.POSITIONAL_OR_KEYWORD, annotation="np.ndarray"),
        Parameter("grad", Parameter.POSITIONAL_OR_KEYWORD, annotation="np.ndarray"),
    ]
    for state in rule.state:
        required = not state.optional
        parameters.append(
            Parameter(
                state.name,
                Parameter.POSITIONAL_OR_KEYWORD,
                default=Parameter.empty if required else None,
                annotation="np.ndarray" if required else "np.ndarray | None",
            )
        )
    parameters += [
        Parameter(
            entry.name,
            Parameter.POSITIONAL_OR_KEYWORD,
            default=None,
            annotation="np.ndarray | None",
        )
        for entry in rule.host_state
    ]
    for hyperparameter in rule.hyperparameters:
        parameters.append(
            Parameter(
                hyperparameter.name,
                Parameter.KEYWORD_ONLY,
                default=hyperparameter.default,
                annotation=hyperparameter.annotation,
            )
        )
    parameters += [
        Parameter(scalar.name, Parameter.KEYWORD_ONLY, annotation="float")
        for scalar in rule.scalars
    ]
    parameters += [
        Parameter(entry.name, Parameter.KEYWORD_ONLY, default=entry.initial)
        for entry in _functional_group_state(rule)
    ]
    if rule.counts_steps:
        parameters.append(Parameter("step", Parameter.KEYWORD_ONLY, annotation="int"))
    parameters += [
        Parameter("loss_scale", Parameter.KEYWORD_ONLY, default=1.0, annotation="float"),
        Parameter("clip_value", Parameter.KEYWORD_ONLY, default=None, annotation="float | None"),
        Parameter(
            MASTER_PARAM, Parameter.KEYWORD_ONLY, default=None, annotation="np.ndarray | None"
        ),
        Parameter(KAHAN_COMP, Parameter.KEYWORD_ONLY, default=None, annotation="np.ndarray | None"),
        Parameter("stochastic_rounding", Parameter.KEYWORD_ONLY, default=False, annotation="bool"),
        Parameter("seed", Parameter.KEYWORD_ONLY, default=0, annotation="int"),
    ]
    returns = "dict[str, float]" if rule.scalars else "None"
    if _functional_group_state(rule):
        returns = "dict[str, Any]"
    return Signature(parameters, return_annotation=returns)


def _precision_arrays(name: str, arguments: Mapping[str, Any], param: Any) -> tuple[Any, Any]:
    """The functional step's master copy and compensation buffer, checked (16-bit
    parameters only; a float32 copy, a buffer of the parameter's dtype; not both)."""
    master, comp = arguments[MASTER_PARAM], arguments[KAHAN_COMP]
    if master is None and comp is None:
        return None, None
    dtype = backend_of(param).dtype_shape(param)[0]
    if not is_low_precision(dtype):
        raise ValueError(
            f"{name}(): master_param and kahan_comp are for bfloat16 and float16 parameters, "
            f"not {dtype}"
        )
    if master is not None and comp is not None:
        raise ValueError(f"{name}(): pass master_param or kahan_comp, not both")
    if master is not None:
        master = check_state(MASTER_PARAM, master, param)
        if backend_of(master).dtype_shape(master)[0] != np.float32:
            raise TypeError(f"{name}(): master_param must have dtype float32")
    if comp is not None:
        comp = check_param(KAHAN_COMP, comp)
        if backend_of(comp).dtype_shape(comp) != backend_of(param).dtype_shape(param):
            raise TypeError(f"{name}(): kahan_comp must have the parameter's dtype and shape")
    return master, comp


def _host_arrays(
    rule: Rule, name: str, arguments: Mapping[str, Any], param: Any, shape: tuple[int, ...]
) -> list[np.ndarray | None]:
    """The functional step's host state arrays, checked: each one the parameter's shape
    keeps, of its declared shape and of the parameter's dtype, where the parameter is."""
    if not rule.host_state:
        return []
    dtype = backend_of(param).dtype_shape(param)[0]
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"{name}() supports float32 and float64 parameters, got {dtype}")
    host = []
    for entry in rule.host_state:
        array, wanted = arguments[entry.name], entry.shape(shape)
        if wanted is None:
            if array is not None:
                raise ValueError(
                    f"{name}(): {entry.name} is unused for a parameter of shape {shape}"
                )
            host.append(None)
            continue
        if array is None:
            raise ValueError(f"{name}(): {entry.name} is required for a parameter of shape {shape}")
        check_param(entry.name, array)
        backend = same_place(entry.name, array, param)
        given = backend.dtype_shape(array)
        if given != (dtype, tuple(wanted)):
            raise ValueError(
                f"{name}(): {entry.name} must have dtype {dtype} and shape "
                f"{tuple(wanted)}, got {given[0]} {given[1]}"
            )
        host.append(array)
    return host


def _functional_group_state(rule: Rule) -> tuple[Any, ...]:
    return tuple(entry for entry in rule.group_state if entry.functional)


def functional_step(rule: Rule, kernels: LazyKernels) -> Callable[..., dict[str, float] | None]:
    """``<rule>_step``: one fused, in-place update of arrays whose state the caller keeps."""
    signature = _step_signature(rule)
    name = f"{rule.snake_name}_step"

    def step_function(*args: Any, **kwargs: Any) -> dict[str, float] | None:
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as error:
            raise TypeError(f"{name}() {error}") from None
        bound.apply_defaults()
        arguments = bound.arguments
        param = check_param("param", arguments["param"])
        shape = backend_of(param).dtype_shape(param)[1]
        if rule.matrix is not None and rule.matrix.ndim not in (None, len(shape)):
            raise ValueError(
                f"{name}() only supports {rule.matrix.ndim}-D parameters, got shape {shape}"
            )
        arrays = [("param", param), ("grad", check_grad("grad", arguments["grad"], param))]
        group = {h.name: arguments[h.name] for h in rule.hyperparameters}
        for entry in rule.group_state:
            group[entry.name] = arguments[entry.name] if entry.functional else entry.initial
            entry.check(entry.name, group[entry.name])
        check_hyperparameters(rule, group)
        state_arrays = []
        for state in rule.state:
            array = arguments[state.name]
            wanted = state.present(group)
            if wanted and array is None:
                raise ValueError(f"{name}(): {state.name} is required with these hyperparameters")
            if not wanted and array is not None:
                raise ValueError(f"{name}(): {state.name} is unused with these hyperparameters")
            if array is not None:
                arrays.append((state.name, check_state(state.name, array, param)))
            state_arrays.append(array)
        host = _host_arrays(rule, name, arguments, param, shape)
        arrays += [(entry.name, a) for entry, a in zip(rule.host_state, host) if a is not None]
        master, comp = _precision_arrays(name, arguments, param)
        arrays += [(n, a) for n, a in ((MASTER_PARAM, master), (KAHAN_COMP, comp)) if a is not None]
        check_disjoint(arrays)
        stochastic = check_bool("stochastic_rounding", arguments["stochastic_rounding"])
        seed = check_seed(arguments["seed"])
        step = check_step(arguments["step"]) if rule.counts_steps else 1
        grad_scale, clip = kernel_gradient_terms(arguments["loss_scale"], arguments["clip_value"])
        previous = {
            scalar.name: check_real(scalar.name, arguments[scalar.name]) for scalar in rule.scalars
        }
        if rule.advance_group is not None:
            rule.advance_group(group)
        scalars, seen = advance_scalars(rule, group, step, previous, np.dtype(np.float32))
        row = row_of(rule, group, step, rule.counts_steps and step == 1, grad_scale, clip, seen)
        hyper = np.array([row])
        if stochastic:
            hyper[0, ROUNDING_KEY] = rounding_key(seed, 0, step)
        flat = backend_of(param).flat
        launch(
            kernels.get(),
            single_segment(param.size),
            hyper,
            flat(param),
            flat(arrays[1][1]),
            *[None if array is None else flat(array) for array in state_arrays],
            *[None if array is None else flat(array) for array in host],
            master=None if master is None else flat(master),
            comp=None if comp is None else flat(comp),
            stochastic=True if stochastic else None,
            shapes=(shape,),
        )
        returned = {**scalars, **{e.name: group[e.name] for e in _functional_group_state(rule)}}
        return returned or None

    step_function.__signature__ = signature  # type: ignore[attr-defined]
    step_function.__name__ = step_function.__qualname__ = name
    step_function.__module__ = rule.update.__module__
    kept = ", ".join(f"``{entry.name}``" for entry in _functional_group_state(rule))
    step_function.__doc__ = (
        f"One fused, in-place {rule.name} step on arrays whose state you manage.\n\n"
        f"The update is :class:`{rule.name}`'s, with the same hyperparameters; the state "
        "arrays that the options leave unused are ``None``. "
        + (
            "``step`` counts the updates, this one included (1 for the first). "
            if rule.counts_steps
            else ""
        )
        + (
            "The host state arrays "
            + ", ".join(f"``{entry.name}``" for entry in rule.host_state)
            + " are those the parameter's shape keeps (the others ``None``), in their own "
            "shapes. "
            if rule.host_state
            else ""
        )
        + "``loss_scale`` divides the gradient and ``clip_value`` clamps it, inside the "
        "kernel, as :meth:`fastopt.Optimizer.step` does. A bfloat16 or float16 parameter may "
        "come with its float32 ``master_param`` or its ``kahan_comp`` buffer, and "
        "``stochastic_rounding`` rounds the 16-bit writes with random bits of ``seed`` and "
        "``step`` (see :mod:`fastopt.precision`)."
        + (
            " The per-parameter numbers "
            + ", ".join(f"``{name}``" for name in rule.scalar_names)
            + " are passed in as they were after the previous update (float32, as torch "
            "keeps them) and returned, as a dict, as they are after this one."
            if rule.scalars
            else ""
        )
        + (
            f" The group's {kept} are passed in as they were before this update (their "
            "defaults before the first) and returned, in a dict, as they are after it."
            if kept
            else ""
        )
    )
    return step_function
