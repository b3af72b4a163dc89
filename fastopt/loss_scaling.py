"""Dynamic loss scaling for mixed-precision training, with torch's ``GradScaler`` rule."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, TypeVar

import numpy as np

from fastopt._checks import check_bool
from fastopt.optimizer import GradsT, Optimizer

__all__ = ["LossScaler"]

T = TypeVar("T")


def _to_float32(value: float) -> float:
    # torch keeps the scale in a float32 tensor; rounding the same way keeps the same values.
    with np.errstate(over="ignore"):
        return float(np.float32(value))


class LossScaler:
    r"""Dynamic loss scaling: ``torch.amp.GradScaler``'s update rule for fastopt optimizers.

    Multiply the loss by :meth:`get_scale` (or call :meth:`scale`) before backpropagation,
    then hand the scaled gradients to :meth:`step`: the optimizer divides them by the scale
    inside its kernels (with its clipping, fused in the same two passes) and skips the step if
    any is NaN or Inf, whatever its own ``nonfinite`` policy. :meth:`update` then adapts the
    scale, exactly as torch does (the scale is a float32 value there, and here):

    - a step was skipped since the last update: ``scale *= backoff_factor`` and the count of
      consecutive good steps restarts from 0;
    - otherwise the count grows by one, and when it reaches ``growth_interval`` the scale is
      multiplied by ``growth_factor`` (unless that overflows float32) and the count restarts.

    Parameters
    ----------
    init_scale : float, default 2**16
    growth_factor : float, default 2.0
        Must be > 1.
    backoff_factor : float, default 0.5
        Must be in (0, 1).
    growth_interval : int, default 2000
        Consecutive finite steps before the scale grows.
    enabled : bool, default True
        When False, :meth:`step` is a plain ``optimizer.step`` and the scale stays 1.

    Notes
    -----
    torch's sequence ``scaler.scale(loss).backward(); scaler.unscale_(opt);
    clip_grad_norm_(params, max_norm); scaler.step(opt); scaler.update()`` is
    ``opt = Adam(..., max_norm=max_norm)`` and ``scaler.step(opt, grads); scaler.update()``
    here. Attach the scaler to the optimizer (``opt.attach("scaler", scaler)``) and its state
    travels in the optimizer's checkpoints.

    Examples
    --------
    >>> import numpy as np, fastopt
    >>> w = np.zeros(2, np.float32)
    >>> opt = fastopt.SGD(w, lr=0.5, max_norm=10.0)
    >>> scaler = fastopt.LossScaler(init_scale=1024.0, growth_interval=2)
    >>> for scaled_grad in ([1024.0, 0.0], [np.inf, 0.0], [0.0, 512.0]):
    ...     scaler.step(opt, np.array(scaled_grad, np.float32))
    ...     scaler.update()
    >>> w, scaler.get_scale(), opt.step_count
    (array([-0.5, -0.5], dtype=float32), 512.0, 2)
    """

    def __init__(
        self,
        init_scale: float = 2.0**16,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
        *,
        enabled: bool = True,
    ) -> None:
        enabled = check_bool("enabled", enabled)
        self._check(init_scale, growth_factor, backoff_factor, growth_interval)
        self._enabled = enabled
        self._scale = _to_float32(init_scale) if enabled else 1.0
        self._growth_factor = float(growth_factor)
        self._backoff_factor = float(backoff_factor)
        self._growth_interval = int(growth_interval)
        self._growth_tracker = 0
        self._found_inf = False
        self._stepped = False

    @staticmethod
    def _check(scale: object, growth: object, backoff: object, interval: object) -> None:
        for name, value in (("init_scale", scale), ("growth_factor", growth)):
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
        if isinstance(backoff, bool) or not isinstance(backoff, (int, float, np.number)):
            raise TypeError(f"backoff_factor must be a real number, got {type(backoff).__name__}")
        if isinstance(interval, bool) or not isinstance(interval, (int, np.integer)):
            raise TypeError(f"growth_interval must be an int, got {type(interval).__name__}")
        if not (math.isfinite(scale) and scale > 0 and _to_float32(scale) > 0):  # type: ignore[arg-type]
            raise ValueError(f"Invalid init_scale: {scale} (must be finite and > 0 in float32)")
        if not (math.isfinite(growth) and growth > 1.0):  # type: ignore[arg-type]
            raise ValueError(f"Invalid growth_factor: {growth} (must be finite and > 1)")
        if not 0.0 < backoff < 1.0:  # type: ignore[operator]
            raise ValueError(f"Invalid backoff_factor: {backoff} (must be in (0, 1))")
        if interval < 1:  # type: ignore[operator]
            raise ValueError(f"Invalid growth_interval: {interval} (must be >= 1)")

    def is_enabled(self) -> bool:
        """Whether loss scaling is on."""
        return self._enabled

    def get_scale(self) -> float:
        """The current scale (1.0 when disabled)."""
        return self._scale

    def scale(self, outputs: T) -> T:
        """``outputs`` (a loss, or the seed of backpropagation) times the current scale."""
        return outputs * self._scale  # type: ignore[operator, return-value]

    def step(self, optimizer: Optimizer, grads: GradsT) -> None:
        """Step ``optimizer`` with the scaled ``grads``, or skip it if any is not finite.

        The outcome of the step is in ``optimizer.last_step``.
        """
        if not self._enabled:
            optimizer.step(grads)
            return
        optimizer.step(grads, loss_scale=self._scale, nonfinite="skip")
        assert optimizer.last_step is not None
        self._found_inf |= not optimizer.last_step.applied
        self._stepped = True

    def update(self, new_scale: float | None = None) -> None:
        """Adapt the scale after this iteration's :meth:`step` calls (see the class notes).

        Parameters
        ----------
        new_scale
            Set the scale to this value instead (no other change, as in torch).

        Raises
        ------
        RuntimeError
            If no :meth:`step` ran since the last update (torch raises too).
        """
        if not self._enabled:
            return
        if new_scale is not None:
            self._check(new_scale, 2.0, 0.5, 1)
            self._scale = _to_float32(new_scale)
        elif not self._stepped:
            raise RuntimeError("update() needs a step() since the last update()")
        elif self._found_inf:
            self._scale = _to_float32(self._scale * self._backoff_factor)
            self._growth_tracker = 0
        else:
            successful = self._growth_tracker + 1
            if successful == self._growth_interval:
                grown = _to_float32(self._scale * self._growth_factor)
                if math.isfinite(grown):
                    self._scale = grown
                self._growth_tracker = 0
            else:
                self._growth_tracker = successful
        self._found_inf = False
        self._stepped = False

    def state_dict(self) -> dict[str, Any]:
        """The scaler's state, with torch's ``GradScaler.state_dict`` keys."""
        if not self._enabled:
            return {}
        return {
            "scale": self._scale,
            "growth_factor": self._growth_factor,
            "backoff_factor": self._backoff_factor,
            "growth_interval": self._growth_interval,
            "_growth_tracker": self._growth_tracker,
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (a torch ``GradScaler``'s state dict works too).

        Raises
        ------
        RuntimeError
            If the scaler is disabled (as torch does).
        ValueError
            If an entry is missing or invalid; nothing changes then.
        """
        if not self._enabled:
            raise RuntimeError("load_state_dict() of a disabled LossScaler")
        if not state_dict:
            raise ValueError("state_dict is empty: it was saved by a disabled scaler")
        try:
            values = [float(state_dict[k]) for k in ("scale", "growth_factor", "backoff_factor")]
            interval, tracker = state_dict["growth_interval"], state_dict["_growth_tracker"]
        except KeyError as error:
            raise ValueError(f"state_dict lacks {error.args[0]!r}") from None
        except (TypeError, ValueError) as error:
            raise ValueError(f"state_dict has a non-numeric entry: {error}") from None
        for name, value in (("growth_interval", interval), ("_growth_tracker", tracker)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"state_dict {name} must be an int, got {value!r}")
        try:
            self._check(values[0], values[1], values[2], interval)
        except TypeError as error:
            raise ValueError(str(error)) from None
        if not 0 <= tracker < interval:
            raise ValueError(f"state_dict _growth_tracker {tracker} is not in [0, {interval})")
        self._scale = _to_float32(values[0])
        self._growth_factor, self._backoff_factor = values[1], values[2]
        self._growth_interval, self._growth_tracker = int(interval), int(tracker)
