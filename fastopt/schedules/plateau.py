"""ReduceLROnPlateau: the one schedule that depends on observed metrics, hence stateful."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from fastopt._checks import check_choice, plural
from fastopt.schedules.base import Schedule, finite, integer, is_real, non_negative

_STATE_KEYS = ("best", "num_bad_epochs", "cooldown_counter", "last_epoch")


class ReduceLROnPlateau:
    r"""Multiply each group's learning rate by ``factor`` when a metric stops improving.

    Mirrors ``torch.optim.lr_scheduler.ReduceLROnPlateau``. Call :meth:`step` with the
    monitored metric (e.g. once per epoch). A metric *improves* on the best one seen so far,
    ``best``, when

    ========  ===================================  ===============================
    mode      ``threshold_mode="rel"``             ``threshold_mode="abs"``
    ========  ===================================  ===============================
    ``min``   ``metric < best * (1 - threshold)``  ``metric < best - threshold``
    ``max``   ``metric > best * (1 + threshold)``  ``metric > best + threshold``
    ========  ===================================  ===============================

    and the first metric always improves. After more than ``patience`` consecutive
    non-improving steps, every group's lr becomes
    :math:`\max(\text{lr} \cdot \text{factor}, \text{min\_lr}_i)` (skipped for a group when
    that changes its lr by no more than ``eps``); then ``cooldown`` steps pass during which
    non-improving steps are not counted.

    The learning rates live in ``optimizer.param_groups[i]["lr"]``, which this object reads
    and writes. Groups whose lr is driven by a :class:`Schedule` are rejected: the
    schedule would overwrite the reduced value on the next update. If the optimizer has an
    ``attach(name, obj)`` method, this object attaches itself as ``"reduce_lr_on_plateau"``
    so that the optimizer's checkpoint carries :meth:`state_dict`.

    Parameters
    ----------
    optimizer
        Object with a ``param_groups`` list of dicts holding a float ``"lr"``.
    mode : {"min", "max"}
        Whether the metric should decrease or increase.
    factor : float
        Reduction factor; in ``(0, 1)``.
    patience : int
        Non-improving steps tolerated before reducing; >= 0.
    threshold : float
        Minimal improvement, relative or absolute per ``threshold_mode``; >= 0.
    threshold_mode : {"rel", "abs"}
        How ``threshold`` is applied.
    cooldown : int
        Steps after a reduction during which non-improving steps are ignored; >= 0.
    min_lr : float or sequence of float
        Lower bound on the lr, for all groups or per group; >= 0.
    eps : float
        Reductions that change an lr by at most ``eps`` are skipped; >= 0.

    Raises
    ------
    TypeError
        When a parameter has the wrong type (``mode`` or ``threshold_mode`` not a ``str``, a
        number that is not a real number).
    ValueError
        On an invalid parameter, or when a group's lr is missing, not a finite float, or
        driven by a schedule.
    """

    def __init__(
        self,
        optimizer: Any,
        mode: str = "min",
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        threshold_mode: str = "rel",
        cooldown: int = 0,
        min_lr: float | Sequence[float] = 0.0,
        eps: float = 1e-8,
    ) -> None:
        groups = optimizer.param_groups
        for i, group in enumerate(groups):
            if "lr" in group.get("schedules", {}) or isinstance(group.get("lr"), Schedule):
                raise ValueError(
                    f"param_groups[{i}] has a scheduled lr; ReduceLROnPlateau needs a constant "
                    "lr to reduce, so pass a float lr for this group"
                )
            if "lr" not in group:
                raise ValueError(f"param_groups[{i}] has no 'lr' entry")
            finite(f"param_groups[{i}]['lr']", group["lr"])
        self.optimizer = optimizer
        self.mode = check_choice("mode", mode, ("min", "max"))
        self.factor = finite("factor", factor)
        if not 0.0 < self.factor < 1.0:
            raise ValueError(f"factor must be in (0, 1), got {self.factor!r}")
        self.patience = integer("patience", patience, minimum=0)
        self.threshold = non_negative("threshold", threshold)
        self.threshold_mode = check_choice("threshold_mode", threshold_mode, ("rel", "abs"))
        self.cooldown = integer("cooldown", cooldown, minimum=0)
        self.min_lrs = self._per_group_min_lr(min_lr, len(groups))
        self.eps = non_negative("eps", eps)
        # None until the first metric: any finite metric then improves on it.
        self.best: float | None = None
        self.num_bad_epochs = 0
        self.cooldown_counter = 0
        self.last_epoch = 0
        attach = getattr(optimizer, "attach", None)
        if callable(attach):
            attach("reduce_lr_on_plateau", self)

    @staticmethod
    def _per_group_min_lr(min_lr: float | Sequence[float], num_groups: int) -> list[float]:
        if is_real(min_lr):
            return [non_negative("min_lr", min_lr)] * num_groups
        if not isinstance(min_lr, Sequence) or len(min_lr) != num_groups:
            raise ValueError(
                f"min_lr must be a float or a sequence with one value per param group "
                f"({num_groups}), got {min_lr!r}"
            )
        return [non_negative(f"min_lr[{i}]", value) for i, value in enumerate(min_lr)]

    def _improves(self, metric: float) -> bool:
        if self.best is None:
            return True
        if self.threshold_mode == "rel":
            scale = 1.0 - self.threshold if self.mode == "min" else 1.0 + self.threshold
            bar = self.best * scale
        else:
            bar = self.best - self.threshold if self.mode == "min" else self.best + self.threshold
        return metric < bar if self.mode == "min" else metric > bar

    def step(self, metric: float) -> None:
        """Record one observation of the monitored metric and reduce the lr if it plateaued.

        Raises
        ------
        ValueError
            If ``metric`` is NaN or infinite: a diverged metric should stop training, not
            silently count as a plateau.
        """
        metric = float(metric)
        if not math.isfinite(metric):
            raise ValueError(f"metric must be finite, got {metric!r}")
        self.last_epoch += 1
        if self._improves(metric):
            self.best = metric
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            self._reduce()
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0

    def _reduce(self) -> None:
        groups = self.optimizer.param_groups
        if len(groups) != len(self.min_lrs):
            raise ValueError(
                f"the optimizer has {plural(len(groups), 'param group')} but "
                f"ReduceLROnPlateau was built for {len(self.min_lrs)}"
            )
        for group, min_lr in zip(groups, self.min_lrs, strict=True):
            old_lr = float(group["lr"])
            new_lr = max(old_lr * self.factor, min_lr)
            if old_lr - new_lr > self.eps:
                group["lr"] = new_lr

    def state_dict(self) -> dict[str, Any]:
        """Return the mutable state as a JSON-serializable dict.

        The configuration (mode, factor, ...) is not included: restore into an object built
        with the same arguments.
        """
        return {key: getattr(self, key) for key in _STATE_KEYS}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the state returned by :meth:`state_dict`."""
        missing = [key for key in _STATE_KEYS if key not in state_dict]
        if missing:
            raise ValueError(f"state_dict lacks {', '.join(missing)}")
        best = state_dict["best"]
        self.best = None if best is None else finite("best", best)
        self.num_bad_epochs = integer("num_bad_epochs", state_dict["num_bad_epochs"], minimum=0)
        self.cooldown_counter = integer(
            "cooldown_counter", state_dict["cooldown_counter"], minimum=0
        )
        self.last_epoch = integer("last_epoch", state_dict["last_epoch"], minimum=0)

    def __repr__(self) -> str:
        return (
            f"ReduceLROnPlateau(mode={self.mode!r}, factor={self.factor!r}, "
            f"patience={self.patience!r}, threshold={self.threshold!r}, "
            f"threshold_mode={self.threshold_mode!r}, cooldown={self.cooldown!r}, "
            f"min_lr={self.min_lrs!r}, eps={self.eps!r})"
        )
