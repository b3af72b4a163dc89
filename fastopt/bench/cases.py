"""What the benchmarks run: rules with their options, sizes, dtypes and implementations.

Each :class:`RuleCase` names one rule with fixed options, the fastopt class that runs it, the
NumPy reference call that runs the same update, the ``torch.optim`` class and options that
match it, and the number of state arrays it reads and writes. From that count follows the
memory traffic of one update: every rule reads the parameter, the gradient and each state
array and writes back the parameter and each state array, so an update moves
``(3 + 2 * n_state) * itemsize`` bytes per element (Adam, float32: 28), plus what the read
passes before the update read (the per-tensor norms', LAMB: 16 more; a matrix step's
direction pass) and a matrix step's scratch direction, written and read back (Muon,
Adafactor: 8 more). A rule with a matrix step runs on near-square matrices
(:func:`matrix_shape`); the host's matrix work (Muon's Newton-Schulz products, Adafactor's
row and column sums) is not counted.

Every case is read from its rule's declaration (:mod:`fastopt.rule`) by
:func:`declared_case`: the state arrays, the reference step and the ``torch.optim`` class.
"""

from __future__ import annotations

import dis
import inspect
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import fastopt
from fastopt import reference
from fastopt.rule import HostState, Rule

__all__ = [
    "BASELINES",
    "DTYPES",
    "FULL_SIZES",
    "HEADLINE_RULES",
    "IMPLEMENTATIONS",
    "MANY_TENSORS_COUNT",
    "MANY_TENSORS_TOTAL",
    "QUICK_SIZES",
    "RULES",
    "RuleCase",
    "declared_case",
    "many_tensor_sizes",
    "matrix_shape",
    "parse_size",
    "size_label",
]


@dataclass(frozen=True)
class RuleCase:
    """One rule with fixed options, as every implementation runs it.

    Attributes
    ----------
    name
        Identifier used on the command line and in results (``"adam"``).
    label
        Human-readable name for tables and plots.
    optimizer
        The fastopt class; ``options`` are its constructor keywords.
    state
        Names of the reference's state arrays, in its positional order.
    reference_step
        ``reference_step(param, grad, *state, step=t)`` runs one NumPy reference update.
    torch_class, torch_options
        The matching ``torch.optim`` class name (or a reference package's ``"package.Class"``)
        and keywords (``lr`` included).
    initial
        The state arrays' starting values, in ``state``'s order (None: a copy of the
        parameter); empty for all zeros.
    read_pass
        Arrays read per element by the read pass before the update of a rule with per-tensor
        norms (LAMB: parameter, gradient and both moments), 0 for the others.
    prepare
        What a new optimizer needs before its first step (Schedule-Free's ``train()``).
    host_state
        The reference's state arrays that are not shaped like the parameter (Adafactor's
        row and column factors), after ``state`` in its positional order: created at zero by
        :meth:`new_state` where the parameter's shape keeps them; their traffic is not
        counted.
    scratch
        Arrays a matrix step writes before the update and the update reads (its direction).
    matrix
        Whether the parameters are matrices (:meth:`shape`): a rule with a matrix step.
    max_size
        The largest size timed (None: any), for a rule whose host work grows faster than
        its size (Muon's Newton-Schulz products, as ``n ** 1.5``).
    """

    name: str
    label: str
    optimizer: type[fastopt.Optimizer]
    options: dict[str, Any]
    state: tuple[str, ...]
    reference_step: Callable[..., None] = field(repr=False)
    torch_class: str
    torch_options: dict[str, Any]
    initial: tuple[float | None, ...] = ()
    read_pass: int = 0
    prepare: Callable[[fastopt.Optimizer], None] | None = field(default=None, repr=False)
    host_state: tuple[HostState, ...] = ()
    scratch: int = 0
    matrix: bool = False
    max_size: int | None = None

    def __post_init__(self) -> None:
        if self.initial and len(self.initial) != len(self.state):
            raise ValueError(
                f"{self.name}: {len(self.initial)} initial values for {len(self.state)} "
                "state arrays"
            )

    def make(self, params: Any) -> fastopt.Optimizer:
        """A fastopt optimizer over ``params`` with the case's options, ready to step."""
        optimizer = self.optimizer(params, **self.options)
        if self.prepare is not None:
            self.prepare(optimizer)
        return optimizer

    @property
    def n_state(self) -> int:
        """Number of state arrays read and written per element."""
        return len(self.state)

    def shape(self, n: int) -> tuple[int, ...]:
        """The shape of a parameter of ``n`` elements: a vector, or for a rule with a
        matrix step a near-square matrix (:func:`matrix_shape`)."""
        return matrix_shape(n) if self.matrix else (n,)

    @property
    def reads(self) -> int:
        """Arrays read per element: parameter, gradient and every state array (and those
        the read passes read again, and a matrix step's scratch)."""
        return 2 + self.n_state + self.read_pass + self.scratch

    @property
    def writes(self) -> int:
        """Arrays written per element: parameter, every state array and the scratch."""
        return 1 + self.n_state + self.scratch

    def bytes_per_element(self, dtype: np.dtype | type | str) -> int:
        """Bytes one update moves per element (reads plus writes)."""
        return (self.reads + self.writes) * np.dtype(dtype).itemsize

    def new_state(self, param: np.ndarray) -> list[np.ndarray]:
        """Fresh state arrays for the reference, shaped like ``param``, at their initial
        values (then the host state ``param``'s shape keeps, at zero)."""
        initial = self.initial or (0.0,) * self.n_state
        arrays = [
            param.copy() if value is None else np.full_like(param, value) for value in initial
        ]
        kept = (entry.shape(param.shape) for entry in self.host_state)
        return arrays + [np.zeros(shape, param.dtype) for shape in kept if shape is not None]


class _DeclaredReference:
    """``reference_step(param, grad, *state, step=t)`` of a declared rule with fixed options.

    Calls ``fastopt.reference.<snake name>_step`` with every state array of the declaration
    (``None`` for one the options leave out), all the hyperparameters and the host scalars
    that update ``t`` starts from. With the options fixed, those scalars depend on ``t`` alone,
    so one object serves any number of arrays and runs: it remembers the scalars of the last
    two updates it ran (several arrays stepped in turn, or a run that continues) and replays
    the reference on empty arrays to reach any other step (a new run starting at 1 needs none).
    """

    def __init__(self, rule: Rule, group: Mapping[str, Any]) -> None:
        self._name = f"{rule.snake_name}_step"
        self._function = getattr(reference, self._name)
        self._present = tuple(state.present(group) for state in rule.state)
        self._host_state = rule.host_state
        self._hyperparameters = {h.name: group[h.name] for h in rule.hyperparameters}
        self._initial = {
            scalar.name: scalar.initial_value(group, np.dtype(np.float32))
            for scalar in rule.scalars
        }
        # The group values a step advances (Schedule-Free's k...) go along like the scalars.
        self._initial.update(
            (entry.name, entry.initial) for entry in rule.group_state if entry.functional
        )
        # A rule whose row ignores the update count (RMSprop) has a reference without step=.
        self._counts_steps = getattr(rule, "counts_steps", True)
        # The host scalars each remembered update starts from, by update number.
        self._starts: dict[int, dict[str, float]] = {1: self._initial}

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self._hyperparameters.items())
        return f"reference.{self._name}({options})"

    def __call__(self, param: np.ndarray, grad: np.ndarray, *state: np.ndarray, step: int) -> None:
        # Host state (Adafactor's factors) follows, where the parameter's shape keeps it.
        present = self._present + tuple(
            entry.shape(param.shape) is not None for entry in self._host_state
        )
        if len(state) != sum(present):
            raise TypeError(
                f"{self._name} takes {sum(present)} state arrays here, got {len(state)}"
            )
        if step < 1:
            raise ValueError(f"step must be >= 1, got {step}")
        arrays = iter(state)
        full = [next(arrays) if here else None for here in present]
        scalars = self._start(step, param.dtype)
        after = self._run(param, grad, full, scalars, step)
        if self._initial:
            self._starts = {step: scalars, step + 1: after}

    def _run(self, param, grad, state, scalars, step) -> dict[str, float]:
        counted = {"step": step} if self._counts_steps else {}
        new = self._function(param, grad, *state, **self._hyperparameters, **scalars, **counted)
        return {**scalars, **(new or {})}

    def _start(self, step: int, dtype: np.dtype) -> dict[str, float]:
        """The host scalars update ``step`` starts from."""
        if not self._initial:
            return {}
        if step in self._starts:
            return self._starts[step]
        known = max((t for t in self._starts if t < step), default=1)
        scalars = self._starts.get(known, self._initial)
        for earlier in range(known, step):
            empty = [np.empty(0, dtype) if present else None for present in self._present]
            scalars = self._run(np.empty(0, dtype), np.empty(0, dtype), empty, scalars, earlier)
        return scalars


def declared_case(
    optimizer: type[fastopt.Optimizer],
    options: Mapping[str, Any] | None = None,
    *,
    name: str | None = None,
    label: str | None = None,
    torch_class: str | None = None,
    max_size: int | None = None,
) -> RuleCase:
    """The case of a class declared with :mod:`fastopt.rule`, read from its declaration.

    Parameters
    ----------
    optimizer
        A fastopt class built from a :class:`~fastopt.rule.Rule` (its ``_rule``), or a variant
        of one (AdamW of Adam).
    options
        Hyperparameters of the rule (``lr`` and so on), for the class, the reference and
        torch alike; the others keep the class's defaults (a variant's fixed values included).
    name, label
        The case's identifier and display name (default: the class's name in lower case, and
        as it is).
    torch_class
        The ``torch.optim`` class (default: the class's name, which is torch's where torch has
        the rule), or for a rule torch lacks its reference package's class as
        ``"package.Class"`` (its ``foreach`` path, or its per-tensor loop where it has none,
        is timed as ``torch-foreach``).
    max_size
        The largest size to time (None: any).

    Returns
    -------
    RuleCase
        With the state arrays the options give a parameter (in the declaration's order, at
        their initial values) and a reference step that keeps the rule's host scalars (NAdam's
        ``mu_product``) between calls.

    Raises
    ------
    TypeError
        If ``optimizer`` is not declared, or fixes one of the ``options``.
    ValueError
        If an option is not one of the rule's hyperparameters or has an invalid value.

    Examples
    --------
    >>> import fastopt
    >>> from fastopt.bench.cases import declared_case
    >>> case = declared_case(fastopt.NAdam, {"lr": 1e-3})
    >>> case.name, case.label, case.state, case.torch_class
    ('nadam', 'NAdam', ('exp_avg', 'exp_avg_sq'), 'NAdam')
    >>> case.bytes_per_element("float32")
    28
    """
    rule = getattr(optimizer, "_rule", None)
    if not isinstance(rule, Rule):
        raise TypeError(f"{optimizer.__qualname__} is not declared with fastopt.rule")
    options = dict(options or {})
    names = [h.name for h in rule.hyperparameters]
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise ValueError(
            f"{rule.name} has no hyperparameter {', '.join(unknown)} "
            f"(its hyperparameters: {', '.join(names)})"
        )
    # What the class runs with these options: its defaults, a variant's fixed values, checked.
    matrix = rule.matrix is not None
    probe = optimizer(np.zeros((1, 1) if matrix else (1,)), **options)
    group = {key: probe.defaults[key] for key in names}
    present = [state for state in rule.state if state.present(group)]
    # The passes before the update read again what they load of the parameter, the
    # gradient, the state and (the norms after a matrix step) the direction.
    read_pass = sum(
        _arrays_read(function, rule, group)
        for function in (
            rule.norms and rule.norms.measure,
            rule.matrix and rule.matrix.direction,
        )
        if function
    )
    return RuleCase(
        name=optimizer.__name__.lower() if name is None else name,
        label=optimizer.__name__ if label is None else label,
        optimizer=optimizer,
        options=options,
        state=tuple(state.name for state in present),
        reference_step=_DeclaredReference(rule, group),
        torch_class=optimizer.__name__ if torch_class is None else torch_class,
        torch_options=dict(options),
        initial=tuple(
            None if state.from_param else float(state.initial(group)) for state in present
        ),
        read_pass=read_pass,
        prepare=_train if "train" in rule.methods else None,
        host_state=rule.host_state,
        scratch=int(matrix),
        matrix=matrix,
        max_size=max_size,
    )


def _arrays_read(function: Callable[..., Any], rule: Rule, group: Mapping[str, Any]) -> int:
    """How many of its array arguments (all but the last, the row) a pass's element function
    reads: the parameter, the gradient, the state the options keep (and a direction)."""
    names = list(inspect.signature(function).parameters)[:-1]
    present = [True, True] + [state.present(group) for state in rule.state]
    present += [True] * (len(names) - len(present))  # the direction a matrix step made
    loaded = _loaded_names(function)
    return sum(here and name in loaded for name, here in zip(names, present, strict=True))


def _train(optimizer: fastopt.Optimizer) -> None:
    optimizer.train()  # type: ignore[attr-defined]


def _loaded_names(function: Callable[..., Any]) -> set[str]:
    """The local names a function reads (the arguments its body uses)."""
    names: set[str] = set()
    for instruction in dis.get_instructions(function):
        if instruction.opname.startswith("LOAD_FAST"):
            value = instruction.argval
            names.update(value if isinstance(value, tuple) else (value,))
    return names


def matrix_shape(n: int) -> tuple[int, int]:
    """The most nearly square ``(rows, columns)`` of ``n`` elements, rows <= columns.

    >>> from fastopt.bench.cases import matrix_shape
    >>> matrix_shape(1 << 20), matrix_shape(1 << 13), matrix_shape(300), matrix_shape(7)
    ((1024, 1024), (64, 128), (15, 20), (1, 7))
    """
    rows = math.isqrt(n)
    while rows > 1 and n % rows:
        rows -= 1
    return max(rows, 1), n // max(rows, 1)


#: Muon's Newton-Schulz products take about 6 ns_steps r^2 c flops on an r x c matrix
#: (r <= c): 0.2 s per step at 2^20 elements on a 2-core host, 13 s at 2^26.
MUON_MAX_SIZE = 1 << 20

RULES: dict[str, RuleCase] = {
    case.name: case
    for case in (
        declared_case(fastopt.SGD, {"lr": 1e-3}),
        declared_case(
            fastopt.SGD, {"lr": 1e-3, "momentum": 0.9}, name="sgd_momentum", label="SGD momentum"
        ),
        declared_case(fastopt.Adagrad, {"lr": 1e-2}),
        declared_case(fastopt.RMSprop, {"lr": 1e-2}),
        declared_case(
            fastopt.RMSprop,
            {"lr": 1e-2, "centered": True},
            name="rmsprop_centered",
            label="RMSprop centered",
        ),
        declared_case(fastopt.Adam, {"lr": 1e-3}),
        declared_case(fastopt.AdamW, {"lr": 1e-3, "weight_decay": 1e-2}),
        declared_case(
            fastopt.Adam, {"lr": 1e-3, "amsgrad": True}, name="amsgrad", label="Adam AMSGrad"
        ),
        declared_case(fastopt.Adamax, {"lr": 2e-3}),
        declared_case(fastopt.NAdam, {"lr": 2e-3}),
        # Rules torch lacks: the twin is the reference package's class.
        declared_case(fastopt.Lion, {"lr": 1e-4}, torch_class="lion_pytorch.Lion"),
        declared_case(fastopt.AdEMAMix, {"lr": 1e-3}, torch_class="pytorch_optimizer.AdEMAMix"),
        declared_case(fastopt.Adan, {"lr": 1e-3}, torch_class="pytorch_optimizer.Adan"),
        declared_case(fastopt.Lamb, {"lr": 1e-3}, torch_class="pytorch_optimizer.Lamb"),
        declared_case(fastopt.LARS, {"lr": 1e-3}, torch_class="pytorch_optimizer.LARS"),
        declared_case(
            fastopt.ScheduleFreeSGD,
            {"lr": 1.0},
            name="schedule_free_sgd",
            torch_class="schedulefree.SGDScheduleFree",
        ),
        declared_case(
            fastopt.ScheduleFreeAdamW,
            {"lr": 2.5e-3},
            name="schedule_free_adamw",
            torch_class="schedulefree.AdamWScheduleFree",
        ),
        declared_case(fastopt.Adadelta, {"lr": 1.0}),
        declared_case(fastopt.RAdam, {"lr": 1e-3}),
        declared_case(fastopt.Rprop, {"lr": 1e-2}),
        declared_case(fastopt.ASGD, {"lr": 1e-2}),
        declared_case(
            fastopt.NAdam,
            {"lr": 2e-3, "weight_decay": 1e-2, "decoupled_weight_decay": True},
            name="nadam_decoupled",
            label="NAdamW",
        ),
        # Rules with a matrix step, on near-square matrices.
        declared_case(fastopt.Adafactor, {"lr": 1e-2}),
        declared_case(fastopt.Muon, {"lr": 1e-3}, max_size=MUON_MAX_SIZE),
    )
}

#: The rules of the seed tutorial (plain SGD stands for gradient descent); the quick run's set.
HEADLINE_RULES: tuple[str, ...] = ("sgd", "sgd_momentum", "adagrad", "rmsprop", "adam")

#: Implementations in table order. ``ceiling`` is the same-bytes streaming kernel.
IMPLEMENTATIONS: tuple[str, ...] = (
    "fastopt",
    "ceiling",
    "numpy",
    "torch-fused",
    "torch-foreach",
)

#: What fastopt's speed-ups are measured against.
BASELINES: tuple[str, ...] = ("numpy", "torch-fused", "torch-foreach")

DTYPES: tuple[str, ...] = ("float32", "float64")

#: 2^12 (in L1/L2, call overhead dominates) to 2^26 (far beyond any last-level cache).
FULL_SIZES: tuple[int, ...] = tuple(1 << k for k in range(12, 27, 2))
#: Overhead-bound, L2-resident, L3-resident and DRAM-bound, one each.
QUICK_SIZES: tuple[int, ...] = (1 << 12, 1 << 16, 1 << 20, 1 << 24)

#: The many-tensors case: a model's worth of arrays, 2^20 elements in all.
MANY_TENSORS_COUNT = 200
MANY_TENSORS_TOTAL = 1 << 20

_SIZE = re.compile(r"^\s*(\d+)\s*(?:(\^|\*\*)\s*(\d+)|([kKmMgG]))?\s*$")
_SUFFIX = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(text: str) -> int:
    """A size written as ``1048576``, ``2^20``, ``2**20`` or ``1M`` (powers of 1024).

    Raises
    ------
    ValueError
        If ``text`` is none of these or is below 1.
    """
    match = _SIZE.match(str(text))
    if not match:
        raise ValueError(f"size must look like 1048576, 2^20, 2**20 or 1M, got {text!r}")
    base, _, exponent, suffix = match.groups()
    value = int(base)
    if exponent is not None:
        value = value ** int(exponent)
    elif suffix is not None:
        value *= _SUFFIX[suffix.lower()]
    if value < 1:
        raise ValueError(f"size must be >= 1, got {text!r}")
    return value


def size_label(n: int) -> str:
    """``2^20`` for powers of two, the number otherwise."""
    if n > 0 and n & (n - 1) == 0:
        return f"2^{n.bit_length() - 1}"
    return str(n)


def many_tensor_sizes(
    total: int = MANY_TENSORS_TOTAL, count: int = MANY_TENSORS_COUNT
) -> list[int]:
    """Sizes of ``count`` arrays adding up to ``total``, shaped like a model's layer list.

    Layers alternate a weight matrix and its bias; weights of a few widths (as in a stack
    of blocks of different widths), biases small. The list is the same on every call.

    Raises
    ------
    ValueError
        If ``count`` is odd or below 2, or ``total`` too small to give every array an element.
    """
    if count < 2 or count % 2:
        raise ValueError(f"count must be an even number >= 2, got {count}")
    layers = count // 2
    widths = [64 * (1 + layer % 4) for layer in range(layers)]
    bias_total = sum(widths)
    if total < bias_total + layers:
        raise ValueError(f"total must be at least {bias_total + layers}, got {total}")
    weights = np.array([w * w for w in widths], dtype=np.float64)
    weights = np.floor(weights / weights.sum() * (total - bias_total)).astype(np.int64)
    weights = np.maximum(weights, 1)
    weights[0] += total - bias_total - int(weights.sum())
    sizes: list[int] = []
    for weight, width in zip(weights.tolist(), widths, strict=True):
        sizes.extend((int(weight), width))
    return sizes
