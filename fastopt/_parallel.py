"""Launching ``prange`` kernels: numba's threading layers differ in whether two threads may
launch at once."""

from __future__ import annotations

import threading
from collections.abc import Callable

import numba

from fastopt._jit import PARALLEL_THRESHOLD

__all__ = ["run_by_size", "run_parallel"]

_PARALLEL_LOCK = threading.Lock()
# None until the first parallel launch has started numba's threading layer (only then can it
# be asked which one it chose); then whether that layer accepts concurrent launches.
_layer_is_threadsafe: bool | None = None


def run_parallel(kernel: Callable[..., object], *args: object) -> None:
    """Call a ``prange`` kernel, serialized when the threading layer is not thread-safe."""
    global _layer_is_threadsafe
    if _layer_is_threadsafe:
        kernel(*args)
        return
    with _PARALLEL_LOCK:
        kernel(*args)
        _layer_is_threadsafe = numba.threading_layer() != "workqueue"


def run_by_size(
    serial: Callable[..., object], parallel: Callable[..., object], size: int, *args: object
) -> None:
    """Call ``serial`` for fewer than :data:`~fastopt._jit.PARALLEL_THRESHOLD` elements (the
    thread pool costs more than the work), else the ``prange`` kernel ``parallel``."""
    if size < PARALLEL_THRESHOLD:
        serial(*args)
    else:
        run_parallel(parallel, *args)
