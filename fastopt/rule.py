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
    "Hyperparameter",
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
    """

    name: str
    present: Callable[[Mapping[str, Any]], bool] = _always
    initial: Callable[[Mapping[str, Any]], float] = _zero

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
    doc: str = ""
    row_type: type = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Z][A-Za-z0-9]*", self.name):
            raise ValueError(f"a rule's name must be a class name, got {self.name!r}")
        names = [h.name for h in self.hyperparameters]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.name} declares a hyperparameter twice: {names}")
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
        unknown = self.flags - set(self.fields)
        if unknown:
            raise ValueError(f"{self.name}'s flags {sorted(unknown)} are not fields")
        arguments = inspect.signature(self.update).parameters
        if len(arguments) != len(self.state) + 3 or any(
            a.kind is not inspect.Parameter.POSITIONAL_OR_KEYWORD for a in arguments.values()
        ):
            raise ValueError(
                f"{self.name}'s update must take (p, g, one value per state array, h): "
                f"{len(self.state) + 3} plain arguments, got {list(arguments)}"
            )
        row_type = collections.namedtuple(f"{self.name}Row", self.fields)
        object.__setattr__(self, "row_type", row_type)

    @property
    def snake_name(self) -> str:
        """``"NAdam"`` -> ``"nadam"``, ``"ScheduleFreeSGD"`` -> ``"schedule_free_sgd"``,
        ``"AdEMAMix"`` -> ``"ademamix"`` (a capital run inside a word stays in it)."""
        return re.sub(r"(?<=[a-z0-9])(?=[A-Z][a-z]|[A-Z]+$)", "_", self.name).lower()

    @property
    def state_names(self) -> tuple[str, ...]:
        """The state arrays' names, in the update's order."""
        return tuple(state.name for state in self.state)

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
