"""PyTorch adapter: ``torch.optim`` optimizers whose step is one fastopt launch.

``fastopt.torch.Adam(model.parameters(), lr=1e-3)`` (and every other rule of :mod:`fastopt`:
``AdamW``, ``SGD``, ``Adagrad``, ``RMSprop``, ``Adamax``, ``NAdam``, ``RAdam``, ``Adadelta``,
``Rprop``, ``ASGD``, ``Muon``, ``Adafactor``, ``Lion``, ``AdEMAMix``, ``Adan``, ``Lamb``, ``LARS``,
``ScheduleFreeSGD``, ``ScheduleFreeAdamW``) is a :class:`torch.optim.Optimizer` with torch's
signature (the NumPy class's for rules torch lacks), parameter groups, ``zero_grad``,
``state_dict`` format, hooks and learning-rate scheduler support. On construction it copies the
parameters into one :class:`~fastopt.FlatParams` and rebinds each ``p.data`` to its view (zero
copy, through :func:`torch.from_numpy`). ``step()`` is then one fused kernel launch over every
parameter and group instead of one per tensor.

Notes
-----
- CPU tensors of float32, float64, bfloat16 or float16 (one dtype per optimizer); others
  raise ``TypeError``. Every class takes fastopt's precision options (``state_dtype``,
  ``master_weights``, ``kahan_sum``, ``stochastic_rounding``, ``seed``: see
  :mod:`fastopt.precision`) as keywords, per group too; ``state_dict()`` carries the seed
  and the master copies and compensation buffers as state tensors. Importing :mod:`fastopt`
  does not import torch; this module does (``pip install "fastopt[torch]"``).
- Gradients follow torch exactly: ``p.grad`` is ``None`` until a backward pass (or the user)
  gives ``p`` a gradient, ``zero_grad()`` sets it back to ``None`` (``set_to_none=True``, the
  default) or zeroes it, and ``step()`` updates exactly the parameters whose ``p.grad`` is not
  ``None``. Zero copy: when backward reaches a parameter whose ``p.grad`` is ``None``, a hook
  hands autograd a zeroed view of the flat gradient buffer as ``p.grad``, and autograd
  accumulates into it in place (if that backward pass leaves it untouched, as
  :func:`torch.autograd.grad` does, ``p.grad`` is ``None`` again when the pass ends). A
  gradient tensor from elsewhere (``p.grad = g``) is copied in at the next step, correct but
  slower; ``p.grad`` is then a view of the buffer.
- Move or convert the model (``model.to(...)``, ``.double()``) *before* making the optimizer:
  that replaces ``p.data``, and ``step`` then raises ``ValueError`` instead of training memory
  the model no longer uses.
- ``state_dict()`` / ``load_state_dict()`` use torch's format: a checkpoint of
  ``torch.optim.Adam`` loads into ``fastopt.torch.Adam`` and the other way round, a group key
  that an older checkpoint lacks takes the constructor's default, and
  ``register_load_state_dict_pre_hook`` / ``_post_hook`` act as in torch. The state tensors
  view fastopt's flat state buffers.
- float64 results equal torch's to rounding; float32 ones differ from torch's in the last bit
  here and there (torch's CPU kernels fuse multiply-adds, fastopt's do not, so that its
  serial and parallel paths agree bitwise), which a long or chaotic run amplifies.
- torch's implementation switches are accepted where they describe what fastopt does, and kept
  in ``param_groups``: ``foreach`` ``None`` or ``False``, ``fused`` ``None`` or ``True``,
  ``capturable=False``, ``differentiable=False``; other values raise ``ValueError``. They
  describe this optimizer, so ``load_state_dict`` keeps them.
- The gradient options of :class:`fastopt.Optimizer` are keyword arguments of every class
  here: ``nonfinite="propagate" | "skip" | "raise"``, ``max_norm`` with ``norm_type``
  (``torch.nn.utils.clip_grad_norm_``'s arithmetic) and ``clip_value``, fused into the step
  (one read pass, then the update); ``last_step`` tells what the last step found. They are
  settings of the object, not part of ``state_dict()``.

Examples
--------
>>> import torch, fastopt.torch
>>> _ = torch.manual_seed(0)
>>> model = torch.nn.Linear(4, 1)
>>> opt = fastopt.torch.Adam(model.parameters(), lr=0.1)
>>> x, y = torch.randn(32, 4), torch.randn(32, 1)
>>> for _ in range(3):
...     opt.zero_grad()
...     loss = torch.nn.functional.mse_loss(model(x), y)
...     loss.backward()
...     opt.step()
>>> sorted(opt.state_dict()["state"][0])
['exp_avg', 'exp_avg_sq', 'step']
>>> opt.zero_grad()
>>> model.weight.grad is None
True
"""

from __future__ import annotations

import copy
import inspect
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import numpy as np

try:
    import torch
except ImportError as error:  # pragma: no cover - exercised in a venv without torch
    raise ImportError(
        "fastopt.torch needs PyTorch, which is not installed: pip install 'fastopt[torch]' "
        "(for the CPU build: pip install torch --index-url https://download.pytorch.org/whl/cpu)"
    ) from error
from torch.autograd import Variable
from torch.optim.optimizer import ParamsT

import fastopt
from fastopt._checks import check_bool
from fastopt._quantized import dequantize as dequantize_codes
from fastopt._words import plural
from fastopt.flat import FlatParams
from fastopt.gradients import (
    GradientOptions,
    StepStats,
    check_gradient_options,
)
from fastopt.precision import (
    ABSMAX_SUFFIX,
    BFLOAT16,
    KAHAN_COMP,
    MASTER_PARAM,
    PRECISION_DEFAULTS,
    absmax_name,
    check_seed,
)

__all__ = [
    "ASGD",
    "LARS",
    "SGD",
    "AdEMAMix",
    "Adadelta",
    "Adafactor",
    "Adagrad",
    "Adam",
    "AdamW",
    "Adamax",
    "Adan",
    "Lamb",
    "Lion",
    "Muon",
    "NAdam",
    "RAdam",
    "RMSprop",
    "Rprop",
    "ScheduleFreeAdamW",
    "ScheduleFreeSGD",
]

_NUMPY_DTYPE = {
    torch.float32: np.dtype(np.float32),
    torch.float64: np.dtype(np.float64),
    torch.bfloat16: BFLOAT16,
    torch.float16: np.dtype(np.float16),
}


def _tensor_of(array: np.ndarray) -> torch.Tensor:
    """A tensor sharing ``array``'s memory (bfloat16 through its bits: NumPy's bfloat16 is
    ``ml_dtypes``', which torch does not know)."""
    if array.dtype == BFLOAT16:
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def _array_of(tensor: torch.Tensor) -> np.ndarray:
    """A CPU tensor's memory as a NumPy array (bfloat16 as ``ml_dtypes.bfloat16``)."""
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(BFLOAT16)
    return tensor.numpy()


_GRADIENT_OPTIONS = frozenset(GradientOptions.__annotations__)

#: torch's implementation switches, the values that describe fastopt's step, and why others
#: cannot be had.
_IMPLEMENTATION = {
    "foreach": ((None, False), "the step is one fused launch, not torch's foreach loop"),
    "fused": ((None, True), "the step is always fused"),
    "capturable": ((False,), "fastopt.torch steps CPU tensors, outside CUDA graphs"),
    "differentiable": ((False,), "the step is not recorded by autograd"),
}


def _plain(value: Any, name: str) -> Any:
    """A hyperparameter as fastopt takes it (torch allows one-element tensors, e.g. lr)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"Tensor {name} must be 1-element")
        return value.item()
    if isinstance(value, (tuple, list)):
        return tuple(_plain(item, name) for item in value)
    return value


def _same(a: Any, b: Any) -> bool:
    """Equal values of the same types (a tuple's items too): ``1`` is not ``True``."""
    if type(a) is not type(b):
        return False
    if isinstance(a, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _scalar_dtype() -> np.dtype:
    """The dtype torch gives ``state["step"]`` (float64 only under a float64 default dtype)."""
    return np.dtype(np.float64 if torch.get_default_dtype() == torch.float64 else np.float32)


def _check_implementation(group: Mapping[str, Any], keys: Iterable[str], where: str) -> None:
    """Refuse torch implementation switches that ask for something fastopt does not do."""
    for key in keys:
        value = group[key]
        allowed, reason = _IMPLEMENTATION[key]
        if not (value is None or isinstance(value, bool)):
            raise TypeError(f"{where}{key} must be a bool or None, got {type(value).__name__}")
        if value not in allowed:
            choices = " or ".join(repr(choice) for choice in allowed)
            raise ValueError(f"{where}{key}={value!r} is not available: {reason} (use {choices})")


def _remove_hooks(handles: list[Any]) -> None:
    for handle in handles:
        handle.remove()
    handles.clear()


def _lending_hook(optimizer: weakref.ref[_FlatOptimizer], index: int) -> Callable[[Any], None]:
    """A tensor hook that lends parameter ``index`` its gradient view before autograd
    accumulates (weak: a dropped optimizer lends nothing)."""

    def hook(grad: torch.Tensor) -> None:
        owner = optimizer()
        if owner is not None:
            owner._lend(index)

    return hook


class _FlatOptimizer(torch.optim.Optimizer):
    """A torch optimizer whose parameters live in one FlatParams, stepped by a fastopt rule
    (see the module notes)."""

    #: The fastopt rule that does the arithmetic.
    _rule: ClassVar[type[fastopt.Optimizer]]
    #: The group keys the rule reads; other keys (``initial_lr``...) are carried along.
    _hyperparameters: ClassVar[tuple[str, ...]]
    #: torch's implementation switches of this class (keys of ``_IMPLEMENTATION``).
    _implementation: ClassVar[tuple[str, ...]]
    #: Group keys this class fixes whatever the arguments or a checkpoint say.
    _fixed: ClassVar[dict[str, Any]] = {}
    #: Whether torch keeps a ``"step"`` tensor in the state (SGD does not).
    _step_in_state: ClassVar[bool] = True
    #: Whether torch creates the state in the constructor (Adagrad) rather than lazily.
    _state_at_init: ClassVar[bool] = False
    #: The values a step advances per group, with their initial values (none for most).
    _group_state: ClassVar[dict[str, Any]] = {}

    def __init__(
        self,
        params: ParamsT,
        defaults: dict[str, Any],
        gradient_options: dict[str, Any],
        seed: int = 0,
    ) -> None:
        name = type(self).__name__
        self._seed = check_seed(seed)
        for key in gradient_options:
            if key not in _GRADIENT_OPTIONS:
                raise TypeError(f"{name}.__init__() got an unexpected keyword argument {key!r}")
        _check_implementation(defaults, self._implementation, "")
        if isinstance(defaults["lr"], torch.Tensor):
            _plain(defaults["lr"], "lr")
        options = {
            "nonfinite": "propagate",
            "max_norm": None,
            "norm_type": 2.0,
            "clip_value": None,
            **gradient_options,
        }
        nonfinite, max_norm, norm_type, clip_value = check_gradient_options(
            options["nonfinite"], options["max_norm"], options["norm_type"], options["clip_value"]
        )
        self._gradient_options = {
            "nonfinite": nonfinite,
            "max_norm": max_norm,
            "norm_type": norm_type,
            "clip_value": clip_value,
        }
        self._inner: fastopt.Optimizer | None = None
        self._hooks: list[Any] = []
        weakref.finalize(self, _remove_hooks, self._hooks)
        super().__init__(params, {**defaults, **self._fixed})
        self._build()

    @property
    def last_step(self) -> StepStats | None:
        """What the last :meth:`step` found (see :attr:`fastopt.Optimizer.last_step`):
        the gradients' global norm, the clip coefficient, whether they were finite and
        whether the step was applied."""
        return self._inner.last_step if self._inner is not None else None

    # ------------------------------------------------------------------ groups
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (torch's semantics); later additions move every parameter to a new
        flat buffer, keeping the state."""
        if not isinstance(param_group, Mapping):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        if "params" not in param_group:
            raise ValueError("param_group must have a 'params' entry")
        param_group = dict(param_group)
        params = param_group["params"]
        if isinstance(params, torch.Tensor):
            params = [params]
        elif not isinstance(params, set):  # torch rejects sets itself
            params = list(params)
        param_group["params"] = params
        number = len(self.param_groups)
        if not params:
            raise ValueError(f"param_groups[{number}] has no parameters")
        self._check_tensors(number, params)
        _check_implementation(
            {**self.defaults, **param_group}, self._implementation, f"param_groups[{number}] "
        )
        if "lr" in param_group:
            _plain(param_group["lr"], "lr")
        super().add_param_group(param_group)
        self.param_groups[-1].update(self._fixed)
        if self._inner is not None:
            try:
                self._build()
            except Exception:
                self.param_groups.pop()
                raise

    def _check_tensors(self, number: int, params: Iterable[Any]) -> None:
        known = [p for group in self.param_groups for p in group["params"]]
        dtype = known[0].dtype if known else None
        for i, item in enumerate(params):
            tensor = item[1] if isinstance(item, tuple) and len(item) == 2 else item
            if not isinstance(tensor, torch.Tensor):
                continue  # torch's own check names it
            where = f"param_groups[{number}]['params'][{i}]"
            if tensor.device.type != "cpu":
                raise TypeError(
                    f"{where} is on {tensor.device}: fastopt.torch updates CPU tensors only"
                )
            if tensor.layout != torch.strided:
                raise TypeError(f"{where} has layout {tensor.layout}; only dense tensors")
            if tensor.dtype not in _NUMPY_DTYPE:
                raise TypeError(
                    f"{where} must have dtype float32, float64, bfloat16 or float16, got "
                    f"{tensor.dtype}"
                )
            if dtype is None:
                dtype = tensor.dtype
            elif tensor.dtype != dtype:
                raise TypeError(
                    f"{where} has dtype {tensor.dtype}, the others {dtype}: the parameters of "
                    "one optimizer share one flat buffer and so one dtype"
                )

    def _build(self) -> None:
        """Copy the parameters into a new FlatParams, then rebind them (checked first)."""
        params = [p for group in self.param_groups for p in group["params"]]
        flat = FlatParams([tuple(p.shape) for p in params], _NUMPY_DTYPE[params[0].dtype])
        for view, param in zip(flat.params, params, strict=True):
            view[...] = _array_of(param.detach())
        for index, param in enumerate(params):
            if param.grad is not None:
                self._check_grad(index, param, param.grad)
        groups, start = [], 0
        for group in self.param_groups:
            end = start + len(group["params"])
            settings = {key: _plain(group[key], key) for key in self._hyperparameters}
            groups.append({"params": list(flat.params[start:end]), **settings})
            start = end
        inner = self._rule(groups, seed=self._seed, **self._gradient_options)
        # Host scalars in torch's default dtype (the state's dtype changes when a checkpoint
        # loads; what is made afresh each update stays in the default one).
        inner._scalar_dtype = inner._fresh_scalar_dtype = _scalar_dtype()
        if self._inner is not None:
            saved = self._inner.state_dict()
            moved = inner.state_dict()
            moved.update(state=saved["state"], step_count=saved["step_count"])
            inner.load_state_dict(moved)
        if self._state_at_init:
            inner._flat_plan().ensure_state(np.arange(len(params)))

        # Everything is checked: rebind. A gradient a parameter has is copied in; one without
        # keeps None, and a hook lends it its view when backward reaches it.
        grads = [_tensor_of(view) for view in flat.grads]
        for param, view, grad in zip(params, flat.params, grads, strict=True):
            if param.grad is not None:
                grad.copy_(param.grad.detach())
            param.data = _tensor_of(view)
            if param.grad is not None:
                param.grad = grad
        if self._inner is not None:
            inner.last_step = self._inner.last_step
        _remove_hooks(self._hooks)
        me = weakref.ref(self)
        self._hooks.extend(
            param.register_hook(_lending_hook(me, index))
            for index, param in enumerate(params)
            if param.requires_grad
        )
        self._flat = flat
        self._inner = inner
        self._params = params
        self._grads = grads
        self._data_pointers = [param.data_ptr() for param in params]
        self._grad_pointers = [grad.data_ptr() for grad in grads]
        # Whether gradient view i is known to hold zeros and is not handed out.
        self._clean = [param.grad is None for param in params]
        # Views lent during the running backward pass, with their version when lent.
        self._lent: list[tuple[int, int]] = []
        self._settle_queued = False
        self._expose_state()

    def _lend(self, index: int) -> None:
        """Make gradient view ``index`` the parameter's ``.grad`` before autograd accumulates
        into it (called by the parameter's hook during backward)."""
        param = self._params[index]
        if param.grad is not None or param.data_ptr() != self._data_pointers[index]:
            return  # autograd accumulates into that .grad, or allocates: step() sorts it out
        view = self._grads[index]
        if not self._clean[index]:
            view.zero_()
        self._clean[index] = False
        param.grad = view
        self._lent.append((index, view._version))
        if not self._settle_queued:
            Variable._execution_engine.queue_callback(self._settle)
            self._settle_queued = True

    def _settle(self) -> None:
        """At the end of a backward pass: a lent view that autograd did not write (the
        parameter got no gradient, e.g. under torch.autograd.grad) is taken back, so that
        ``.grad`` is None again as torch leaves it."""
        self._settle_queued = False
        for index, version in self._lent:
            view = self._grads[index]
            if view._version == version and self._params[index].grad is view:
                self._params[index].grad = None
                self._clean[index] = True
        self._lent.clear()

    @staticmethod
    def _check_grad(index: int, param: torch.Tensor, grad: torch.Tensor) -> None:
        where = f"parameter {index}'s .grad"
        if grad.device.type != "cpu" or grad.layout != torch.strided:
            raise TypeError(
                f"{where} must be a dense CPU tensor, got {grad.layout} on {grad.device}"
            )
        if grad.dtype != param.dtype:
            raise TypeError(
                f"{where} must have the parameter's dtype {param.dtype}, got {grad.dtype}"
            )
        if grad.shape != param.shape:
            raise ValueError(
                f"{where} must have the parameter's shape {tuple(param.shape)}, "
                f"got {tuple(grad.shape)}"
            )

    def _expose_state(self) -> None:
        """``self.state`` in torch's layout: tensors that view fastopt's flat state buffers.

        Entries fastopt does not keep (a hook's or the user's own keys) stay as they are.
        """
        inner = self._inner
        previous = getattr(self, "state", {})
        managed = self._managed_state()
        count = len(self._params)
        # The step counts and host scalars, as 0-d tensors viewing these mirrors.
        self._steps = np.zeros(count, dtype=_scalar_dtype())
        self._scalars = {name: np.ones(count, inner._scalar_dtype) for name in inner._scalar_names}
        state: defaultdict[torch.Tensor, dict[str, Any]] = defaultdict(dict)
        for index, param in enumerate(self._params):
            exposed = {
                key: value for key, value in previous.get(param, {}).items() if key not in managed
            }
            entry = inner.state.get(index)
            if entry:
                if self._step_in_state:
                    self._steps[index] = entry["step"]
                    exposed["step"] = torch.from_numpy(self._steps[index : index + 1].reshape(()))
                for name, mirror in self._scalars.items():
                    mirror[index] = entry[name]
                    exposed[name] = torch.from_numpy(mirror[index : index + 1].reshape(()))
                for name, value in entry.items():
                    if isinstance(value, np.ndarray):
                        exposed[name] = _tensor_of(value)
            if exposed:
                state[param] = exposed
        self.state = state

    def _managed_state(self) -> frozenset[str]:
        """The state keys fastopt keeps: the step, the rule's arrays and host scalars, the
        master copies and compensation buffers."""
        inner = self._inner
        names = inner._all_state_names()
        scales = {absmax_name(name) for name in names}
        return names | scales | {"step", *inner._scalar_names, MASTER_PARAM, KAHAN_COMP}

    # ------------------------------------------------------------------ step
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset every gradient, as torch does: to ``None`` (``set_to_none=True``, the
        default), or to zero where a gradient exists; one pass over the flat gradient buffer.
        """
        self._flat.grad_buffer.fill(0)
        params, grads = self._params, self._grads
        if set_to_none:
            for param in params:
                if param.grad is not None:
                    param.grad = None
            self._clean = [True] * len(params)
            return
        for param, grad in zip(params, grads, strict=True):
            own = param.grad
            if own is not None and own is not grad:  # someone else's tensor: zeroed in place
                if own.grad_fn is not None:
                    own.detach_()
                else:
                    own.requires_grad_(False)
                own.zero_()
        self._clean = [param.grad is not grad for param, grad in zip(params, grads, strict=True)]

    def _active(self) -> np.ndarray:
        """Which parameters have a gradient; gradients from elsewhere are copied in (all
        checked first)."""
        active = []
        replaced = []
        grads, pointers = self._grads, self._grad_pointers
        for index, (param, pointer) in enumerate(
            zip(self._params, self._data_pointers, strict=True)
        ):
            if param.data_ptr() != pointer:
                raise ValueError(
                    f"parameter {index} (shape {tuple(param.shape)}) no longer views fastopt's "
                    "flat buffer: its .data was replaced after the optimizer was made (by "
                    "model.to(), .double(), p.data = ... or an assigning load). Make the "
                    "optimizer after such changes."
                )
            grad = param.grad
            if grad is None:
                active.append(False)
                continue
            if not (grad is grads[index] and grad.data_ptr() == pointers[index]):
                self._check_grad(index, param, grad)
                replaced.append(index)
            active.append(True)
        for index in replaced:
            fresh = _tensor_of(self._flat.grads[index])
            fresh.copy_(self._params[index].grad.detach())
            self._params[index].grad = fresh
            self._grads[index] = fresh
            self._clean[index] = False
        return np.array(active, dtype=bool)

    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One update of every parameter that has a gradient: one fused launch.

        Parameters
        ----------
        closure
            Re-evaluates the model and returns the loss (torch's protocol); optional.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        inner = self._push_groups()
        inner._refresh_hyperparameters()
        active = self._active()
        created = inner._step_flat(active)
        self._pull_group_state()
        if created:
            self._expose_state()
        elif inner.last_step.applied:
            if self._step_in_state:
                self._steps += active
            for name, mirror in self._scalars.items():
                for index in np.flatnonzero(active).tolist():
                    mirror[index] = inner.state[index][name]
        return loss

    def _push_groups(self) -> fastopt.Optimizer:
        """Copy the groups' settings (edited by the user, a scheduler or a loaded
        checkpoint) to the fastopt optimizer; returns it."""
        inner = self._inner
        for group, inner_group in zip(self.param_groups, inner.param_groups, strict=True):
            for key in self._hyperparameters:
                if key in group:
                    value = _plain(group[key], key)
                    # The same value keeps the checked object: the rule re-checks a new one.
                    if not _same(value, inner_group[key]):
                        inner_group[key] = value
        return inner

    def _pull_group_state(self) -> None:
        """Copy the values a step advances per group (Schedule-Free's ``k``...) back."""
        if self._group_state:
            for group, inner_group in zip(self.param_groups, self._inner.param_groups):
                group.update((key, inner_group[key]) for key in self._group_state)

    # ------------------------------------------------------------------ checkpoints
    @classmethod
    def _group_defaults(cls) -> dict[str, Any]:
        """The constructor's defaults: what a group key an older checkpoint lacks becomes."""
        return (
            {
                name: parameter.default
                for name, parameter in inspect.signature(cls.__init__).parameters.items()
                if parameter.default is not inspect.Parameter.empty
            }
            | cls._group_state
            | cls._fixed
        )

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load a checkpoint in torch's format (from this class or from ``torch.optim``).

        As in torch, the load-state-dict pre-hooks may rewrite the checkpoint first, group
        keys it lacks take the constructor's defaults, and the post-hooks run last (what they
        write to :attr:`state` is kept). Everything is checked (group and parameter counts,
        state names, shapes, steps, hyperparameters) before anything changes; tensors are
        cast to the parameters' dtype.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        state_dict = dict(state_dict)
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        for key in ("state", "param_groups"):
            if key not in state_dict:
                raise ValueError(f"state_dict has no {key!r} entry")
        saved_groups = copy.deepcopy(list(state_dict["param_groups"]))
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"state_dict has {plural(len(saved_groups), 'parameter group')}, "
                f"the optimizer has {len(self.param_groups)}"
            )
        defaults = self._group_defaults()
        for saved, group in zip(saved_groups, self.param_groups, strict=True):
            if not isinstance(saved, dict):
                raise ValueError("state_dict param_groups must be a list of dicts")
            for key in group:
                if key in PRECISION_DEFAULTS:  # a torch.optim checkpoint: ours stay
                    saved.setdefault(key, group[key])
                elif key in defaults:
                    saved.setdefault(key, defaults[key])
            saved.update({key: group[key] for key in self._implementation})
            saved.update(self._fixed)
        seed = state_dict.get("seed", self._inner.seed)
        self._inner.load_state_dict(self._to_fastopt(state_dict["state"], saved_groups, seed))
        if self._inner._scalar_names and state_dict["state"]:
            # torch casts loaded state to the parameters' dtype, host scalars included.
            self._inner._scalar_dtype = np.dtype(_NUMPY_DTYPE[self._params[0].dtype])

        # Checked and loaded: torch's side.
        for saved, group in zip(saved_groups, self.param_groups, strict=True):
            saved["params"] = group["params"]
            if "param_names" in group and "param_names" not in saved:
                saved["param_names"] = group["param_names"]
        self.param_groups = saved_groups
        # Keys fastopt does not keep stay in the state, as torch keeps them.
        params = [p for group in self.param_groups for p in group["params"]]
        index_of = {
            saved_id: index
            for index, saved_id in enumerate(i for g in saved_groups for i in g.get("params", ()))
        }
        self.state = defaultdict(dict)
        managed = self._managed_state()
        for saved_id, entry in dict(state_dict["state"]).items():
            extra = {k: copy.deepcopy(v) for k, v in dict(entry).items() if k not in managed}
            if extra:
                self.state[params[index_of[saved_id]]] = extra
        self._expose_state()
        post_hooks = list(self._optimizer_load_state_dict_post_hooks.values())
        for post_hook in post_hooks:
            post_hook(self)
        if post_hooks:  # what the hooks wrote to self.state becomes the state
            written = super().state_dict()
            self._inner.load_state_dict(
                self._to_fastopt(written["state"], written["param_groups"], self._inner.seed)
            )
            self._expose_state()

    def state_dict(self, *, dequantize: bool = False) -> dict[str, Any]:
        """torch's ``state_dict()``, with the seed of stochastic rounding (``"seed"``, which
        ``torch.optim``'s ``load_state_dict`` ignores).

        ``dequantize=True`` gives 8-bit state (``state_dtype="int8"``) as float32 tensors,
        without their ``"<name>_absmax"`` scales, and those groups' ``state_dtype`` as None:
        what ``torch.optim`` (and a float32 optimizer) loads. bfloat16 state needs no such
        step: torch casts state to the parameters' dtype as it loads.
        """
        check_bool("dequantize", dequantize)
        state_dict = super().state_dict()
        state_dict["seed"] = self._inner.seed
        if dequantize:
            for group in state_dict["param_groups"]:
                if group.get("state_dtype") == "int8":
                    group["state_dtype"] = None
            nonnegative = self._inner._nonnegative_states
            for entry in state_dict["state"].values():
                for name, value in list(entry.items()):
                    scales = entry.get(absmax_name(name))
                    if isinstance(value, torch.Tensor) and value.dtype == torch.uint8:
                        values = dequantize_codes(
                            value.numpy(), scales.numpy(), name not in nonnegative
                        )
                        entry[name] = torch.from_numpy(values)
                        del entry[absmax_name(name)]
        return state_dict

    def _to_fastopt(self, saved_state: Any, saved_groups: list[Any], seed: Any) -> dict[str, Any]:
        """A torch-format checkpoint as :meth:`fastopt.Optimizer.load_state_dict` takes it."""
        index_of, groups, start = {}, [], 0
        for number, (saved, group) in enumerate(zip(saved_groups, self.param_groups, strict=True)):
            ids = list(saved.get("params", ()))
            if len(ids) != len(group["params"]):
                raise ValueError(
                    f"state_dict param_groups[{number}] has {plural(len(ids), 'parameter')}, "
                    f"the optimizer's has {len(group['params'])}"
                )
            index_of.update((saved_id, start + j) for j, saved_id in enumerate(ids))
            settings = {k: _plain(saved[k], k) for k in self._hyperparameters if k in saved}
            groups.append({"params": list(range(start, start + len(ids))), **settings})
            start += len(ids)
        state = {}
        managed = self._managed_state()
        scalars = {"step", *self._inner._scalar_names}
        for saved_id, entry in dict(saved_state).items():
            if saved_id not in index_of:
                raise ValueError(
                    f"state_dict has state for parameter {saved_id!r}, which is absent"
                )
            index = index_of[saved_id]
            param_dtype = self._params[index].dtype
            converted: dict[str, Any] = {}
            for name, value in dict(entry).items():
                if name not in managed:
                    continue  # kept in self.state, as torch keeps it
                if name in scalars:
                    converted[name] = _plain(value, name)
                elif isinstance(value, torch.Tensor) and (
                    value.dtype == torch.uint8 or name.endswith(ABSMAX_SUFFIX)
                ):  # 8-bit state: codes and their scales, as they are
                    converted[name] = _array_of(value.detach().to(device="cpu"))
                elif isinstance(value, torch.Tensor):
                    # torch keeps a 16-bit parameter's state in its dtype: here float32 (exact),
                    # then the group's state dtype; a master copy stays float32.
                    wide = name == MASTER_PARAM or (
                        name != KAHAN_COMP and param_dtype in (torch.bfloat16, torch.float16)
                    )
                    dtype = torch.float32 if wide else param_dtype
                    converted[name] = _array_of(value.detach().to(device="cpu", dtype=dtype))
                elif value is not None:  # torch once saved momentum_buffer=None
                    converted[name] = value
            state[index] = converted
        return {
            "state": state,
            "param_groups": groups,
            "step_count": self._inner.step_count,
            "seed": seed,
        }


def _declared_adapter(
    rule_class: type[fastopt.Optimizer],
    *,
    step_in_state: bool = True,
    state_at_init: bool = False,
    group_keys: Mapping[str, Any] | None = None,
) -> type[_FlatOptimizer]:
    """The ``torch.optim`` class of a declared rule (or variant): torch's signature where
    torch has the rule (implementation switches included), the NumPy class's otherwise.

    ``step_in_state`` and ``state_at_init`` say what torch's class does: whether it keeps a
    ``"step"`` per parameter (SGD does not) and whether it makes the state in its constructor
    (Adagrad) rather than at the first step. ``group_keys`` are constant group entries the
    reference's checkpoints carry and its class reads (Schedule-Free's ``foreach``), so that
    it loads this class's checkpoints.
    """
    rule = rule_class._rule
    name = rule_class.__name__
    torch_class = getattr(torch.optim, name, None)
    source = inspect.signature(torch_class if torch_class is not None else rule_class)
    parameters = [
        parameter
        for parameter in source.parameters.values()
        if parameter.kind is not inspect.Parameter.VAR_KEYWORD
    ]
    # fastopt's precision options (the NumPy class's signature has them already).
    keyword = inspect.Parameter.KEYWORD_ONLY
    precision = [
        inspect.Parameter(key, keyword, default=default)
        for key, default in {**PRECISION_DEFAULTS, "seed": 0}.items()
        if key not in source.parameters
    ]
    options = inspect.Parameter("gradient_options", inspect.Parameter.VAR_KEYWORD)
    signature = inspect.Signature([*parameters, *precision, options])

    def __init__(self, params, *args, **kwargs):
        try:
            bound = signature.bind(params, *args, **kwargs)
        except TypeError as error:
            raise TypeError(f"{type(self).__qualname__}.__init__() {error}") from None
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        gradient_options = arguments.pop("gradient_options")
        seed = arguments.pop("seed")
        del arguments["params"]
        defaults = {**arguments, **self._group_state}
        _FlatOptimizer.__init__(self, params, defaults, gradient_options, seed)

    self_parameter = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    __init__.__signature__ = signature.replace(
        parameters=[self_parameter, *signature.parameters.values()]
    )
    __init__.__qualname__ = f"{name}.__init__"
    namespace = {
        "__init__": __init__,
        "__doc__": (
            f"``torch.optim.{name}`` (same arguments, results and checkpoints), one fused "
            f"launch per step.\n\nThe update is written out in :class:`fastopt.{name}`; see "
            ":mod:`fastopt.torch` for gradients, checkpoints and the flat buffer."
        ),
        "__module__": __name__,
        "__qualname__": name,
        "_rule": rule_class,
        "_hyperparameters": tuple(h.name for h in rule.hyperparameters)
        + tuple(entry.name for entry in rule.group_state)
        + tuple(PRECISION_DEFAULTS),
        "_group_state": {entry.name: entry.initial for entry in rule.group_state},
        "_implementation": tuple(key for key in _IMPLEMENTATION if key in source.parameters),
        "_fixed": {**rule_class._fixed, **(group_keys or {})},
        "_step_in_state": step_in_state,
        "_state_at_init": state_at_init,
    }
    namespace.update(
        (method, _forwarded(method, function)) for method, function in rule.methods.items()
    )
    return type(name, (_FlatOptimizer,), namespace)


def _forwarded(name: str, function: Callable[..., None]) -> Callable[[_FlatOptimizer], None]:
    """A rule's extra method (Schedule-Free's ``train``/``eval``) on the torch class: run on
    the fastopt optimizer, whose parameters the tensors view, with the groups kept in step."""

    def method(self: _FlatOptimizer) -> None:
        getattr(self._push_groups(), name)()
        self._pull_group_state()

    method.__name__ = name
    method.__doc__ = function.__doc__
    return method


SGD = _declared_adapter(fastopt.SGD, step_in_state=False)
Adagrad = _declared_adapter(fastopt.Adagrad, state_at_init=True)
Adadelta = _declared_adapter(fastopt.Adadelta)
RMSprop = _declared_adapter(fastopt.RMSprop)
Adam = _declared_adapter(fastopt.Adam)
AdamW = _declared_adapter(fastopt.AdamW)
Adamax = _declared_adapter(fastopt.Adamax)
NAdam = _declared_adapter(fastopt.NAdam)
RAdam = _declared_adapter(fastopt.RAdam)
Rprop = _declared_adapter(fastopt.Rprop)
Lion = _declared_adapter(fastopt.Lion)
AdEMAMix = _declared_adapter(fastopt.AdEMAMix)
Adan = _declared_adapter(fastopt.Adan)
Lamb = _declared_adapter(fastopt.Lamb)
Muon = _declared_adapter(fastopt.Muon, step_in_state=False)
Adafactor = _declared_adapter(fastopt.Adafactor)
LARS = _declared_adapter(fastopt.LARS)
# schedulefree's classes read "foreach" from their groups: False (its per-tensor loop) lets
# them load these checkpoints.
ScheduleFreeSGD = _declared_adapter(
    fastopt.ScheduleFreeSGD, step_in_state=False, group_keys={"foreach": False}
)
ScheduleFreeAdamW = _declared_adapter(
    fastopt.ScheduleFreeAdamW, step_in_state=False, group_keys={"foreach": False}
)
ASGD = _declared_adapter(fastopt.ASGD)
