"""The CUDA path: every rule's update on device arrays, through the same API as on the host.

An optimizer built on device arrays, or a functional step given device arrays, runs the
rule's CUDA kernel; nothing else changes::

    import numba.cuda, fastopt
    w = numba.cuda.to_device(w_host)          # or a CuPy array, or a torch CUDA tensor
    opt = fastopt.Adam(w, lr=1e-3)
    opt.step(grad_on_device)

Accepted without copies: numba device arrays and any object exposing
``__cuda_array_interface__`` (CuPy arrays, torch CUDA tensors), of float32, float64 or
float16, and bfloat16 arrays as :class:`BFloat16Array` (their ``uint16`` bits: the CUDA Array
Interface has no bfloat16 type). The precision options work as on the host
(``master_weights``, ``kahan_sum``, ``stochastic_rounding``, ``state_dtype="bfloat16"``, and
``state_dtype="int8"`` but for Muon: one thread per 256-element block). A
parameter, its gradient and its state must all be on the device (mixing in a host array
raises ``TypeError`` before anything is written); state arrays are allocated on the device,
``state_dict()`` returns host copies and ``load_state_dict`` copies them back.

The kernels are compiled from each rule's element-wise update, the same Python that the CPU
kernels inline (see :mod:`fastopt.cuda._kernels`). This package is imported only when a
device array is first used: ``import fastopt`` and all CPU use never load ``numba.cuda``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["BFloat16Array", "availability"]


def __getattr__(name: str) -> Any:
    # BFloat16Array imports numba.cuda: loaded on first use only.
    if name == "BFloat16Array":
        from fastopt.cuda._arrays import BFloat16Array

        return BFloat16Array
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def availability() -> tuple[bool, str]:
    """Whether updates can run on a CUDA device here, and why (not).

    Returns
    -------
    (bool, str)
        ``(True, description of the device)`` or ``(False, the reason)``: numba.cuda
        missing, no driver or GPU, or no NVVM (the CUDA toolkit's compiler library).
        Under numba's simulator (``NUMBA_ENABLE_CUDASIM=1``) it is ``True`` and says so.

    Examples
    --------
    >>> import fastopt.cuda
    >>> usable, reason = fastopt.cuda.availability()
    >>> isinstance(usable, bool) and isinstance(reason, str)
    True
    """
    try:
        from numba import cuda
        from numba.core import config
    except ImportError as error:  # pragma: no cover - numba without its CUDA target
        return False, f"numba.cuda cannot be imported: {error}"
    if config.ENABLE_CUDASIM:
        return True, "numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1): correct, very slow"
    if not cuda.is_available():
        reason = " ".join(str(cuda.cuda_error() or "no CUDA driver or GPU").split())
        return False, f"no usable CUDA GPU: {reason}"
    from numba.cuda.cudadrv import nvvm

    if not nvvm.is_available():
        return False, "a CUDA GPU is present but NVVM (the CUDA toolkit's libnvvm) is not found"
    device = cuda.get_current_device()
    name = device.name.decode() if isinstance(device.name, bytes) else str(device.name)
    major, minor = device.compute_capability
    return True, (
        f"{name} (compute capability {major}.{minor}, "
        f"{device.MULTIPROCESSOR_COUNT} multiprocessors), numba.cuda {cuda.implementation}"
    )
