"""A rule declared once: hyperparameters, state, host row and the element-wise update.

Everything else is derived from a :class:`Rule` by :func:`build`: the CPU kernels (serial,
parallel and the flat one-launch path, generated as source files that numba caches), the
CUDA kernels, the NumPy optimizer class and the functional step (and, in
:mod:`fastopt.torch`, the ``torch.optim`` class).

The update is written once, on values: ``update(p, g, *state, h)`` takes the parameter
element, the gradient element (already unscaled, clipped and, with ``maximize``, negated by
the generated kernel) and one value per state array (``None`` for an array the group does not
use), and returns the new parameter and state values in the same order. ``h`` is the host row:
a named tuple of the fields the rule's ``row`` function computed in float64 on the host, each
rounded once to the compute type. How the elements are loaded and stored is
:mod:`fastopt._storage`'s business, not the rule's.

Examples
--------
A toy rule, "sign descent", declared and built:

>>> import numpy as np
>>> from fastopt.rule import Hyperparameter, Rule, build
>>> from fastopt._checks import check_nonnegative
>>> def sign_update(p, g, h):
...     return (p - h.lr * (1.0 if g > 0 else (-1.0 if g < 0 else 0.0)),)
>>> SignDescent = build(Rule(
...     name="SignDescent",
...     update=sign_update,
...     fields=("lr",),
...     row=lambda group, step, created, scalars: (group["lr"],),
...     hyperparameters=(Hyperparameter("lr", 0.1, check_nonnegative, scheduled=True),),
...     maximize=None,
... )).optimizer
>>> w = np.array([1.0, -2.0, 0.0])
>>> SignDescent(w, lr=0.5).step(np.array([3.0, -1.0, 0.0]))
>>> w
array([ 0.5, -1.5,  0. ])
"""

from __future__ import annotations

import collections
import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from fastopt._checks import check_betas, check_bool, check_nonnegative

if TYPE_CHECKING:
    from fastopt._codegen import LazyKernels
    from fastopt._launch import RuleKernels
    from fastopt.optimizer import Optimizer

__all__ = [
    "BuiltRule",
    "GroupState",
    "HostState",
    "Hyperparameter",
    "MatrixStep",
    "Norms",
    "Rule",
    "Scalar",
    "State",
    "betas",
    "build",
    "flag",
    "real",
    "variant",
]


def _always(group: Mapping[str, Any]) -> bool:
    return True


def _zero(group: Mapping[str, Any]) -> float:
    return 0.0


def _any_ndim(ndim: int) -> bool:
    return True


@dataclass(frozen=True)
class Hyperparameter:
    """One hyperparameter of a rule, as its class and functional step take it.

    Attributes
    ----------
    name : str
        The keyword (torch's name where torch has the rule).
    default : object
        The default value.
    check : callable
        ``check(name, value)`` raises ``TypeError``/``ValueError`` for an invalid value.
    scheduled : bool
        Whether a schedule (a callable of the step count) may drive it; for a pair such as
        ``betas``, each element may be one.
    keyword_only : bool
        Whether it follows the ``*`` in the class signature (as ``maximize`` in torch).
    annotation : str
        Its type, for the generated signatures.
    """

    name: str
    default: Any
    check: Callable[[str, Any], object]
    scheduled: bool = False
    keyword_only: bool = False
    annotation: str = "float"


def real(name: str, default: float, *, scheduled: bool = False) -> Hyperparameter:
    """A hyperparameter that is a finite real number ``>= 0`` (a weight decay, an eps)."""
    return Hyperparameter(name, default, check_nonnegative, scheduled=scheduled)


def flag(name: str, default: bool = False, *, keyword_only: bool = False) -> Hyperparameter:
    """A hyperparameter that is a ``bool`` (``amsgrad``, ``maximize``, ...)."""
    return Hyperparameter(name, default, check_bool, keyword_only=keyword_only, annotation="bool")


def betas(default: tuple[float, ...]) -> Hyperparameter:
    """``betas``: a tuple of decay rates in ``[0, 1)``, each of which a schedule may drive."""
    count = len(default)
    return Hyperparameter(
        "betas",
        default,
        lambda name, value: check_betas(name, value, count),
        scheduled=True,
        annotation=f"tuple[{', '.join(['float'] * count)}]",
    )


@dataclass(frozen=True)
class State:
    """One state array per parameter, shaped like it.

    Attributes
    ----------
    name : str
        Its key in ``optimizer.state[i]`` (torch's name where torch has the rule).
    present : callable
        ``present(group)``: whether a parameter of ``group`` has it (e.g. AMSGrad's
        maximum only with ``amsgrad=True``); an absent array is ``None`` in the update.
    initial : callable
        ``initial(group)``: the value a new array starts from.
    from_param : bool
        Whether a new array starts as a copy of its parameter instead (Schedule-Free's ``z``).
    nonnegative : bool
        Whether its values are never negative (a second moment): 8-bit state codes it with
        the unsigned dynamic map, which spends every code on ``[0, 1]``.
    quantizable : bool
        Whether ``state_dtype="int8"`` may quantize it; False for state that holds parameter
        values (Schedule-Free's ``z``, ASGD's average), which 8 bits cannot carry.
    """

    name: str
    present: Callable[[Mapping[str, Any]], bool] = _always
    initial: Callable[[Mapping[str, Any]], float] = _zero
    from_param: bool = False
    nonnegative: bool = False
    quantizable: bool = True

    @property
    def optional(self) -> bool:
        """Whether some groups go without it (it declares a ``present``)."""
        return self.present is not _always


@dataclass(frozen=True)
class Scalar:
    """One number per parameter, kept on the host (torch keeps it as a 0-d state tensor),
    such as NAdam's ``mu_product``: the row reads it, the kernels never do.

    Attributes
    ----------
    name : str
        Its key in ``optimizer.state[i]``.
    initial : float or callable
        Its value before the first update, or ``initial(group)`` (ASGD's ``eta`` starts at the
        lr); rounded to the scalar type.
    advance : callable
        ``advance(group, step, value, dtype) -> value``: its value for update number ``step``
        from the previous one, computed in the scalar type ``dtype`` (NumPy's float32 as torch's
        default, float64 under ``torch.set_default_dtype(torch.float64)`` in the adapter).
    read_before : bool
        Whether the row of update ``step`` reads the value from before that update's advance
        (ASGD's update uses the ``eta`` and ``mu`` the previous one stored) rather than after
        (NAdam's ``mu_product`` includes this update's factor).
    recomputed : bool
        Whether each update computes it afresh from the group and the step (torch's
        ``torch.as_tensor(...)``: in torch's default dtype, even after a loaded checkpoint cast
        the state to the parameters' dtype) rather than from its value in place (NAdam's
        ``mu_product *= mu``, in the state's dtype).
    """

    name: str
    initial: float | Callable[[Mapping[str, Any]], float]
    advance: Callable[[Mapping[str, Any], int, Any, Any], Any]
    read_before: bool = False
    recomputed: bool = False

    def initial_value(self, group: Mapping[str, Any], dtype: Any) -> float:
        """The value before the first update for a parameter of ``group``, in ``dtype``."""
        value = self.initial(group) if callable(self.initial) else self.initial
        return float(dtype.type(value))


@dataclass(frozen=True)
class GroupState:
    """A value kept per parameter group and advanced by every step, not a hyperparameter
    (Schedule-Free's update count ``k`` and averaging weights, as its package keeps them in
    the group): in ``param_groups`` and ``state_dict()``, out of the class signature.

    Attributes
    ----------
    name : str
        Its key in the group.
    initial : object
        Its value before the first step.
    check : callable
        ``check(name, value)``, as a hyperparameter's (a loaded checkpoint is checked).
    functional : bool
        Whether the functional step takes it (as before the update) and returns it (after);
        a mode flag such as ``train_mode`` is the class's business only.
    """

    name: str
    initial: Any
    check: Callable[[str, Any], object]
    functional: bool = True


@dataclass(frozen=True)
class Norms:
    """Per-tensor L2 norms a rule's update needs (LAMB's and LARS's trust ratios), and the
    row fields made from them.

    Each update of a tensor is then two passes: ``measure`` reads the tensor (nothing is
    written) and returns, per element, the quantities whose norms over the tensor are taken;
    the host turns the norms into fields of the row (``finish``); the update runs with them.
    The sums of squares are taken in float64 in the deterministic block scheme of
    :mod:`fastopt._reduce` (fixed blocks per tensor, fixed lanes per block), so the norms, and
    the results, are the same bits on every path and thread count.

    Attributes
    ----------
    measure : callable
        ``measure(p, g, *state, h) -> tuple of values``, on values: the same arguments as the
        update (the gradient after the preamble, the state before the update; the norm fields
        of ``h`` are 0), one returned value per name in ``names``.
    names : tuple of str
        The norms' names, in ``measure``'s order.
    fields : tuple of str
        The row fields made from the norms; they follow the rule's own fields in ``h``.
    finish : callable
        ``finish(h, norms, ndim) -> tuple of arrays``, on the host, vectorized over the
        tensors of a launch: ``h`` is the row (a named tuple of float64 arrays, one entry per
        tensor), ``norms`` maps each name to the float64 array of the tensors' norms, ``ndim``
        is the tensors' numbers of dimensions (LARS leaves vectors alone); one array per
        field.
    needed : callable
        ``needed(ndim)``: whether a tensor of ``ndim`` dimensions needs its norms (LARS: 2 or
        more); a launch of none of those skips the read pass (``finish`` sees norms of 0).
    counts : bool
        Whether ``finish`` also takes the tensors' element counts, ``finish(h, norms, ndim,
        sizes)`` (``sizes`` an int64 array, 0 for padding): Adafactor's root mean squares.
    """

    measure: Callable[..., tuple[Any, ...]]
    names: tuple[str, ...]
    fields: tuple[str, ...]
    finish: Callable[..., tuple[Any, ...]]
    needed: Callable[[int], bool] = _any_ndim
    counts: bool = False


@dataclass(frozen=True)
class HostState:
    """A per-tensor state array that a matrix step keeps on the host, shaped by the tensor's
    shape rather than like it (Adafactor's row and column second moments).

    Attributes
    ----------
    name : str
        Its key in ``optimizer.state[i]``.
    shape : callable
        ``shape(param_shape) -> tuple of int or None``: its shape for a parameter of that
        shape, or None where such a parameter does not keep it (Adafactor's ``row_var`` for
        a vector); it starts at zero, in the state's dtype.
    """

    name: str
    shape: Callable[[tuple[int, ...]], tuple[int, ...] | None]


@dataclass(frozen=True)
class MatrixStep:
    """Matrix work on the host between two element-wise passes (Muon's Newton-Schulz
    iterations on its momentum).

    A step then reads the tensor once to write ``direction`` into a scratch buffer, the host
    transforms each tensor's matrix of it (``transform``, NumPy), and the update runs with
    the transformed element ``o`` as an argument: ``update(p, g, *state, o, h)``.

    Attributes
    ----------
    direction : callable
        ``direction(p, g, *state, h) -> value``, on values: read-only, the same arguments as
        the update but ``o``.
    transform : callable
        ``transform(matrix, h) -> matrix``: the tensor's directions as a 2-D array of the
        parameters' dtype and the tensor's row (``h``, float64 fields), on the host. It may
        write its result over ``matrix`` and return it.
    ndim : int or None
        The parameters' number of dimensions (2 for Muon); others are refused. None: any
        (the transform then takes each tensor in its own shape, 0-d and empty ones included;
        empty ones are not transformed).
    state : tuple of HostState
        Per-tensor state the transform reads and updates in place (none for Muon); it is
        called ``transform(matrix, h, *state)``, each array in its declared shape, None where
        the tensor does not keep it. Such state is not shaped like the parameters: it has
        no flat buffer, each tensor keeps arrays of its own (where the parameter lives), and
        a :class:`~fastopt.FlatParams` step still runs in one launch, the transform taking
        each tensor's arrays in turn.
    """

    direction: Callable[..., Any]
    transform: Callable[..., Any]
    ndim: int | None = 2
    state: tuple[HostState, ...] = ()


@dataclass(frozen=True)
class Rule:
    """The declaration of an element-wise optimizer rule (see the module docstring).

    Attributes
    ----------
    name : str
        The class name (``"Adamax"``); the functional step is its snake case + ``_step``.
    update : callable
        ``update(p, g, *state, h) -> (p, *state)`` on values, compiled by numba for the CPU
        and CUDA; plain arithmetic and ``math`` functions only.
    fields : tuple of str
        The names of ``h``'s fields, in ``row``'s order.
    row : callable
        ``row(group, step, created, scalars) -> tuple of float``: the fields for update number
        ``step`` (1 for the first) of a parameter of ``group`` (its hyperparameters, schedules
        evaluated); ``created`` tells whether its state was made for this update and
        ``scalars`` maps the names of the rule's :class:`Scalar` state to their values for
        it. Host side, float64 (bools are fine: they are flags in ``h``).
    hyperparameters : tuple of Hyperparameter
        In the class signature's order.
    state : tuple of State
        In the update's order.
    scalars : tuple of Scalar
        Per-parameter numbers the row needs (none for most rules).
    flags : frozenset of str
        The fields of ``h`` that are booleans (compared with 0 in the kernel).
    check : callable, optional
        ``check(group)``: checks across hyperparameters, after each one's own.
    maximize : str or None
        The hyperparameter that negates the gradient (``"maximize"``), or None.
    counts_steps : bool
        Whether the row depends on the update count (bias corrections, a first-step rule);
        the functional step then takes ``step=``.
    norms : Norms, optional
        The per-tensor norms the update reads through row fields (none for most rules).
    matrix : MatrixStep, optional
        Matrix work on the host whose result the update reads as ``o`` (Muon). With norms
        too, the read pass follows the matrix step and its measure takes ``o`` as the update
        does (Adafactor).
    group_state : tuple of GroupState
        Values kept per group and advanced by each step (none for most rules).
    advance_group : callable, optional
        ``advance_group(group)``: moves the group's :class:`GroupState` values on by one
        update, in place; every applied step calls it once per group before the rows.
    ready : callable, optional
        ``ready(param_groups)`` raises if the optimizer may not step now (Schedule-Free
        outside training mode); checked before anything is read or written.
    methods : mapping of str to callable
        Extra methods of the class (``train``, ``eval``), each ``method(optimizer)``; the
        torch adapter has them too.
    doc : str
        The class docstring (numpydoc, with the update formula).
    """

    name: str
    update: Callable[..., tuple[Any, ...]]
    fields: tuple[str, ...]
    row: Callable[[Mapping[str, Any], int, bool, Mapping[str, float]], tuple[float, ...]]
    hyperparameters: tuple[Hyperparameter, ...]
    state: tuple[State, ...] = ()
    scalars: tuple[Scalar, ...] = ()
    flags: frozenset[str] = frozenset()
    check: Callable[[Mapping[str, Any]], None] | None = None
    maximize: str | None = "maximize"
    counts_steps: bool = True
    norms: Norms | None = None
    matrix: MatrixStep | None = None
    group_state: tuple[GroupState, ...] = ()
    advance_group: Callable[[dict[str, Any]], None] | None = None
    ready: Callable[[Any], None] | None = None
    methods: Mapping[str, Callable[[Any], None]] = field(default_factory=dict)
    doc: str = ""
    row_type: type = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Z][A-Za-z0-9]*", self.name):
            raise ValueError(f"a rule's name must be a class name, got {self.name!r}")
        names = [h.name for h in self.hyperparameters]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.name} declares a hyperparameter twice: {names}")
        kept = [entry.name for entry in self.group_state]
        if set(kept) & set(names) or len(set(kept)) != len(kept):
            raise ValueError(f"{self.name}'s group state {kept} repeats a name")
        if (self.advance_group is None) != (not self.group_state):
            raise ValueError(f"{self.name} needs advance_group exactly when it has group state")
        from fastopt.optimizer import Optimizer

        clashing = sorted(
            name for name in self.methods if not name.isidentifier() or hasattr(Optimizer, name)
        )
        if clashing:
            raise ValueError(f"{self.name}'s methods {clashing} are taken by the optimizer")
        if self.maximize is not None and self.maximize not in names:
            raise ValueError(f"{self.name}'s maximize={self.maximize!r} is no hyperparameter")
        from fastopt._codegen import RESERVED_NAMES

        taken = sorted(
            name
            for name in self.state_names
            if name in RESERVED_NAMES or name.startswith("new_") or not name.isidentifier()
        )
        if taken:
            raise ValueError(
                f"{self.name}'s state names {taken} are not identifiers or are taken by the "
                "generated kernels (their template's names, builtins, and any 'new_...')"
            )
        unknown = self.flags - set(self.all_fields)
        if unknown:
            raise ValueError(f"{self.name}'s flags {sorted(unknown)} are not fields")
        transformed = self.matrix is not None
        functions = [("update", self.update, transformed)]
        if self.norms is not None:
            functions.append(("norms' measure", self.norms.measure, transformed))
        if self.matrix is not None:
            functions.append(("matrix step's direction", self.matrix.direction, False))
            host = [entry.name for entry in self.matrix.state]
            if set(host) & set(self.state_names) or len(set(host)) != len(host):
                raise ValueError(f"{self.name}'s host state {host} repeats a name")
        for what, function, takes_o in functions:
            arguments = inspect.signature(function).parameters
            count = len(self.state) + 3 + takes_o
            if len(arguments) != count or any(
                a.kind is not inspect.Parameter.POSITIONAL_OR_KEYWORD for a in arguments.values()
            ):
                o = ", o" if takes_o else ""
                raise ValueError(
                    f"{self.name}'s {what} must take (p, g, one value per state array{o}, h): "
                    f"{count} plain arguments, got {list(arguments)}"
                )
        row_type = collections.namedtuple(f"{self.name}Row", self.all_fields)
        object.__setattr__(self, "row_type", row_type)

    @property
    def snake_name(self) -> str:
        """``"NAdam"`` -> ``"nadam"``, ``"ScheduleFreeSGD"`` -> ``"schedule_free_sgd"``,
        ``"ScheduleFreeAdamW"`` -> ``"schedule_free_adamw"``, ``"AdEMAMix"`` ->
        ``"ademamix"`` (a capital run inside a word stays in it, as does one final capital)."""
        return re.sub(r"(?<=[a-z0-9])(?=[A-Z][a-z]|[A-Z]{2,}$)", "_", self.name).lower()

    @property
    def all_fields(self) -> tuple[str, ...]:
        """The fields of ``h``: the row's, then those made from the norms."""
        return self.fields + (self.norms.fields if self.norms is not None else ())

    @property
    def state_names(self) -> tuple[str, ...]:
        """The state arrays' names, in the update's order."""
        return tuple(state.name for state in self.state)

    @property
    def host_state(self) -> tuple[HostState, ...]:
        """The matrix step's per-tensor host state (see :class:`HostState`)."""
        return self.matrix.state if self.matrix is not None else ()

    @property
    def scalar_names(self) -> tuple[str, ...]:
        """The per-parameter host scalars' names."""
        return tuple(scalar.name for scalar in self.scalars)


def variant(
    built: BuiltRule,
    name: str,
    *,
    defaults: Mapping[str, Any] | None = None,
    fixed: Mapping[str, Any] | None = None,
    doc: str,
) -> type[Optimizer]:
    """A class of the same rule with other defaults and some hyperparameters fixed, as
    AdamW is Adam with ``decoupled_weight_decay=True`` and ``weight_decay=1e-2``; it
    subclasses the rule's class and shares its kernels."""
    from fastopt._declared import optimizer_class

    return optimizer_class(
        built.rule,
        built.lazy_kernels,
        name=name,
        defaults=defaults,
        fixed=fixed,
        doc=doc,
        base=built.optimizer,
    )


class BuiltRule(NamedTuple):
    """What :func:`build` derives from a :class:`Rule`."""

    rule: Rule
    lazy_kernels: LazyKernels
    optimizer: type[Optimizer]
    step: Callable[..., Any]

    @property
    def kernels(self) -> RuleKernels:
        """The rule's compiled-on-demand kernels (generated on first use)."""
        return self.lazy_kernels.get()


def build(rule: Rule) -> BuiltRule:
    """Derive the kernels, the optimizer class and the functional step of ``rule``.

    The kernels' source is generated into fastopt's kernel cache directory (see
    :mod:`fastopt._codegen`) when the rule is first used, so numba compiles them once per
    machine, not once per process.
    """
    from fastopt._codegen import LazyKernels
    from fastopt._declared import functional_step, optimizer_class

    kernels = LazyKernels(rule)
    return BuiltRule(rule, kernels, optimizer_class(rule, kernels), functional_step(rule, kernels))
