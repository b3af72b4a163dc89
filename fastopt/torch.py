"""PyTorch adapter: ``torch.optim`` optimizers whose step is one fastopt launch.

``fastopt.torch.Adam(model.parameters(), lr=1e-3)`` (and ``AdamW``, ``SGD``, ``Adagrad``,
``RMSprop``) is a :class:`torch.optim.Optimizer` with torch's arguments, parameter groups,
``zero_grad``, ``state_dict`` format and learning-rate scheduler support. On construction it
copies the parameters into one :class:`~fastopt.FlatParams` and rebinds each ``p.data`` to its
view (zero copy, through :func:`torch.from_numpy`), and each ``p.grad`` to a view of the flat
gradient buffer, into which autograd accumulates in place. ``step()`` is then one fused
kernel launch over every parameter and group instead of one per tensor.

Notes
-----
- CPU tensors of float32 or float64 (one dtype per optimizer); others raise ``TypeError``.
  Importing :mod:`fastopt` does not import torch; this module does.
- ``zero_grad()`` zeroes the flat gradient buffer and leaves every ``p.grad`` a view of it,
  even with ``set_to_none=True`` (the default): a ``None`` would make autograd allocate a new
  tensor. A parameter whose gradient is not written between that ``zero_grad`` and ``step``
  is skipped as torch skips ``p.grad is None``. A gradient replaced by another tensor
  (``p.grad = g``, ``model.zero_grad()`` then backward) is copied in, correct but slower.
- Move or convert the model (``model.to(...)``, ``.double()``) *before* making the optimizer:
  that replaces ``p.data``, and ``step`` then raises ``ValueError`` instead of training memory
  the model no longer uses.
- ``state_dict()`` / ``load_state_dict()`` use torch's format: a checkpoint of
  ``torch.optim.Adam`` loads into ``fastopt.torch.Adam`` and the other way round. The state
  tensors view fastopt's flat state buffers.
- float64 results equal torch's to rounding; float32 ones differ from torch's in the last bit
  here and there (torch's CPU kernels fuse multiply-adds, fastopt's do not, so that its
  serial and parallel paths agree bitwise), which a long or chaotic run amplifies.
- ``foreach``, ``fused``, ``capturable`` and ``differentiable`` are not arguments: the step is
  always one fused launch.
- The gradient options of :class:`fastopt.Optimizer` are keyword arguments of every class
  here: ``nonfinite="propagate" | "skip" | "raise"``, ``max_norm`` with ``norm_type``
  (``torch.nn.utils.clip_grad_norm_``'s arithmetic) and ``clip_value``, fused into the step
  (one read pass, then the update); ``last_step`` tells what the last step found. They are
  settings of the object, not part of ``state_dict()``, like torch's ``foreach``.

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
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch.optim.optimizer import ParamsT

import fastopt
from fastopt.flat import FlatParams
from fastopt.gradients import (
    GradientOptions,
    NonfinitePolicy,
    StepStats,
    check_gradient_options,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["SGD", "Adagrad", "Adam", "AdamW", "RMSprop"]

_NUMPY_DTYPE = {torch.float32: np.float32, torch.float64: np.float64}


def _plain(value: Any) -> Any:
    """A hyperparameter as fastopt takes it (torch allows tensors, e.g. a tensor lr)."""
    if isinstance(value, torch.Tensor):
        return value.item()
    if isinstance(value, (tuple, list)):
        return tuple(_plain(item) for item in value)
    return value


def _scalar_dtype() -> np.dtype:
    """The dtype torch gives ``state["step"]`` (float64 only under a float64 default dtype)."""
    return np.dtype(np.float64 if torch.get_default_dtype() == torch.float64 else np.float32)


class _FlatOptimizer(torch.optim.Optimizer):
    """A torch optimizer whose parameters live in one FlatParams, stepped by a fastopt rule
    (see the module notes)."""

    #: The fastopt rule that does the arithmetic.
    _rule: ClassVar[type[fastopt.Optimizer]]
    #: The group keys the rule reads; other keys (``initial_lr``...) are carried along.
    _hyperparameters: ClassVar[tuple[str, ...]]
    #: Whether torch keeps a ``"step"`` tensor in the state (SGD does not).
    _step_in_state: ClassVar[bool] = True
    #: Whether torch creates the state in the constructor (Adagrad) rather than lazily.
    _state_at_init: ClassVar[bool] = False

    def __init__(
        self,
        params: ParamsT,
        defaults: dict[str, Any],
        *,
        nonfinite: NonfinitePolicy = "propagate",
        max_norm: float | None = None,
        norm_type: float = 2.0,
        clip_value: float | None = None,
    ) -> None:
        nonfinite, max_norm, norm_type, clip_value = check_gradient_options(
            nonfinite, max_norm, norm_type, clip_value
        )
        self._gradient_options = {
            "nonfinite": nonfinite,
            "max_norm": max_norm,
            "norm_type": norm_type,
            "clip_value": clip_value,
        }
        self._inner: fastopt.Optimizer | None = None
        super().__init__(params, defaults)
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
        super().add_param_group(param_group)
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
                raise TypeError(f"{where} must have dtype float32 or float64, got {tensor.dtype}")
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
            view[...] = param.detach().numpy()
        for index, param in enumerate(params):
            if param.grad is not None:
                self._check_grad(index, param, param.grad)
        groups, start = [], 0
        for group in self.param_groups:
            end = start + len(group["params"])
            settings = {key: _plain(group[key]) for key in self._hyperparameters}
            groups.append({"params": list(flat.params[start:end]), **settings})
            start = end
        inner = self._rule(groups, **self._gradient_options)
        if self._inner is not None:
            saved = self._inner.state_dict()
            moved = inner.state_dict()
            moved.update(state=saved["state"], step_count=saved["step_count"])
            inner.load_state_dict(moved)
        if self._state_at_init:
            inner._flat_plan().ensure_state(np.arange(len(params)))

        # Everything is checked: rebind.
        # A parameter whose .grad is None counts as without gradient until backward (or
        # anything else) writes its gradient view, as after zero_grad(set_to_none=True); so
        # does one that was waiting so in the previous buffer.
        waiting = set()
        if self._inner is not None:
            flags = zip(self._params, self._grads, self._pending, self._versions, strict=True)
            waiting = {
                id(param)
                for param, grad, pending, version in flags
                if pending and param.grad is grad and grad._version == version
            }
        pending = []
        for param, view in zip(params, flat.grads, strict=True):
            if param.grad is not None:
                view[...] = param.grad.detach().numpy()
            pending.append(param.grad is None or id(param) in waiting)
        self._grads = [torch.from_numpy(view) for view in flat.grads]
        for param, view, grad in zip(params, flat.params, self._grads, strict=True):
            param.data = torch.from_numpy(view)
            param.grad = grad
        if self._inner is not None:
            inner.last_step = self._inner.last_step
        self._flat = flat
        self._inner = inner
        self._params = params
        self._data_pointers = [param.data_ptr() for param in params]
        self._grad_pointers = [grad.data_ptr() for grad in self._grads]
        self._pending = pending
        self._versions = [grad._version for grad in self._grads]
        self._expose_state()

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
        """``self.state`` in torch's layout: tensors that view fastopt's flat state buffers."""
        inner = self._inner
        self._steps = np.zeros(len(self._params), dtype=_scalar_dtype())
        state: defaultdict[torch.Tensor, dict[str, Any]] = defaultdict(dict)
        for index, param in enumerate(self._params):
            entry = inner.state.get(index)
            if not entry:
                continue
            exposed: dict[str, Any] = {}
            if self._step_in_state:
                self._steps[index] = entry["step"]
                exposed["step"] = torch.from_numpy(self._steps[index : index + 1].reshape(()))
            for name, value in entry.items():
                if isinstance(value, np.ndarray):
                    exposed[name] = torch.from_numpy(value)
            if exposed:
                state[param] = exposed
        self.state = state

    # ------------------------------------------------------------------ step
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero every gradient (one pass over the flat gradient buffer).

        With ``set_to_none=True`` a parameter that gets no gradient before the next
        :meth:`step` is skipped by it, as torch skips ``p.grad is None``; ``p.grad`` itself
        stays a (zero) view of the buffer so that backward accumulates into it.
        """
        self._flat.grad_buffer.fill(0)
        for param, grad in zip(self._params, self._grads, strict=True):
            if param.grad is not grad:
                param.grad = grad
        self._pending = [set_to_none] * len(self._params)
        self._versions = [grad._version for grad in self._grads]

    def _active(self) -> np.ndarray:
        """Which parameters have a gradient; replaced gradients are copied in (checked first)."""
        active = []
        replaced = []
        grads, pending, versions = self._grads, self._pending, self._versions
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
            elif grad is grads[index] and grad.data_ptr() == self._grad_pointers[index]:
                # Ours: written since zero_grad (its version moved), or zeroed to be kept.
                active.append(not pending[index] or grad._version != versions[index])
            else:
                self._check_grad(index, param, grad)
                replaced.append(index)
                active.append(True)
        for index in replaced:
            fresh = torch.from_numpy(self._flat.grads[index])
            fresh.copy_(self._params[index].grad.detach())
            self._params[index].grad = fresh
            self._grads[index] = fresh
            self._pending[index] = False
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
        inner = self._inner
        for group, inner_group in zip(self.param_groups, inner.param_groups, strict=True):
            for key in self._hyperparameters:
                if key in group:
                    inner_group[key] = _plain(group[key])
        inner._refresh_hyperparameters()
        active = self._active()
        if inner._step_flat(active):
            self._expose_state()
        elif self._step_in_state and inner.last_step.applied:
            self._steps += active
        return loss

    # ------------------------------------------------------------------ checkpoints
    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load a checkpoint in torch's format (from this class or from ``torch.optim``).

        Everything is checked (group and parameter counts, state names, shapes, steps,
        hyperparameters) before anything changes; tensors are cast to the parameters' dtype.
        """
        self._inner.load_state_dict(self._to_fastopt(state_dict))
        super().load_state_dict(dict(state_dict))
        self._inner._flat_plan().adopt()
        self._expose_state()

    def _to_fastopt(self, state_dict: Mapping[str, Any]) -> dict[str, Any]:
        """A torch-format checkpoint as :meth:`fastopt.Optimizer.load_state_dict` takes it."""
        for key in ("state", "param_groups"):
            if key not in state_dict:
                raise ValueError(f"state_dict has no {key!r} entry")
        saved_groups = list(state_dict["param_groups"])
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"state_dict has {len(saved_groups)} parameter groups, "
                f"the optimizer has {len(self.param_groups)}"
            )
        index_of, groups, start = {}, [], 0
        for number, (saved, group) in enumerate(zip(saved_groups, self.param_groups, strict=True)):
            ids = list(saved.get("params", ()))
            if len(ids) != len(group["params"]):
                raise ValueError(
                    f"state_dict param_groups[{number}] has {len(ids)} parameters, "
                    f"the optimizer's has {len(group['params'])}"
                )
            index_of.update((saved_id, start + j) for j, saved_id in enumerate(ids))
            settings = {k: _plain(saved[k]) for k in self._hyperparameters if k in saved}
            groups.append({"params": list(range(start, start + len(ids))), **settings})
            start += len(ids)
        state = {}
        for saved_id, entry in dict(state_dict["state"]).items():
            if saved_id not in index_of:
                raise ValueError(
                    f"state_dict has state for parameter {saved_id!r}, which is absent"
                )
            index = index_of[saved_id]
            dtype = self._params[index].dtype
            converted: dict[str, Any] = {}
            for name, value in dict(entry).items():
                if name == "step":
                    converted[name] = _plain(value)
                elif isinstance(value, torch.Tensor):
                    converted[name] = value.detach().to(device="cpu", dtype=dtype).numpy()
                elif value is not None:  # torch once saved momentum_buffer=None
                    converted[name] = value
            state[index] = converted
        return {"state": state, "param_groups": groups, "step_count": self._inner.step_count}


class Adam(_FlatOptimizer):
    r"""``torch.optim.Adam`` (same arguments, results and checkpoints), one fused launch per step.

    The update is written out in :func:`fastopt.adam_step`; see :mod:`fastopt.torch` for
    ``zero_grad``, checkpoints and the flat buffer.
    """

    _rule = fastopt.Adam
    _hyperparameters = (
        "lr",
        "betas",
        "eps",
        "weight_decay",
        "amsgrad",
        "maximize",
        "decoupled_weight_decay",
    )

    def __init__(
        self,
        params: ParamsT,
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        decoupled_weight_decay: bool = False,
        **gradient_options: Unpack[GradientOptions],
    ) -> None:
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": amsgrad,
            "maximize": maximize,
            "decoupled_weight_decay": decoupled_weight_decay,
        }
        super().__init__(
            params,
            defaults,
            **gradient_options,
        )


class AdamW(Adam):
    """``torch.optim.AdamW``: :class:`Adam` with decoupled weight decay, default 1e-2."""

    def __init__(
        self,
        params: ParamsT,
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        **gradient_options: Unpack[GradientOptions],
    ) -> None:
        super().__init__(
            params,
            lr,
            betas,
            eps,
            weight_decay,
            amsgrad,
            maximize=maximize,
            decoupled_weight_decay=True,
            **gradient_options,
        )


class SGD(_FlatOptimizer):
    """``torch.optim.SGD`` (same arguments, results and checkpoints), one fused launch per step.

    The update is written out in :func:`fastopt.sgd_step`.
    """

    _rule = fastopt.SGD
    _hyperparameters = ("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize")
    _step_in_state = False

    def __init__(
        self,
        params: ParamsT,
        lr: float | torch.Tensor = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        **gradient_options: Unpack[GradientOptions],
    ) -> None:
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
            "maximize": maximize,
        }
        super().__init__(
            params,
            defaults,
            **gradient_options,
        )


class Adagrad(_FlatOptimizer):
    """``torch.optim.Adagrad`` (same arguments, results and checkpoints), one fused launch.

    As in torch, the state (``step`` and ``sum``) exists from construction on. The update is
    written out in :func:`fastopt.adagrad_step`.
    """

    _rule = fastopt.Adagrad
    _hyperparameters = (
        "lr",
        "lr_decay",
        "weight_decay",
        "initial_accumulator_value",
        "eps",
        "maximize",
    )
    _state_at_init = True

    def __init__(
        self,
        params: ParamsT,
        lr: float | torch.Tensor = 1e-2,
        lr_decay: float = 0.0,
        weight_decay: float = 0.0,
        initial_accumulator_value: float = 0.0,
        eps: float = 1e-10,
        *,
        maximize: bool = False,
        **gradient_options: Unpack[GradientOptions],
    ) -> None:
        defaults = {
            "lr": lr,
            "lr_decay": lr_decay,
            "weight_decay": weight_decay,
            "initial_accumulator_value": initial_accumulator_value,
            "eps": eps,
            "maximize": maximize,
        }
        super().__init__(
            params,
            defaults,
            **gradient_options,
        )


class RMSprop(_FlatOptimizer):
    """``torch.optim.RMSprop`` (same arguments, results and checkpoints), one fused launch.

    The update is written out in :func:`fastopt.rmsprop_step`.
    """

    _rule = fastopt.RMSprop
    _hyperparameters = ("lr", "alpha", "eps", "weight_decay", "momentum", "centered", "maximize")

    def __init__(
        self,
        params: ParamsT,
        lr: float | torch.Tensor = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        centered: bool = False,
        *,
        maximize: bool = False,
        **gradient_options: Unpack[GradientOptions],
    ) -> None:
        defaults = {
            "lr": lr,
            "alpha": alpha,
            "eps": eps,
            "weight_decay": weight_decay,
            "momentum": momentum,
            "centered": centered,
            "maximize": maximize,
        }
        super().__init__(
            params,
            defaults,
            **gradient_options,
        )
