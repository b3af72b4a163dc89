"""The CUDA path seen from a machine without a GPU (the main test run).

- CPU use never imports ``numba.cuda``;
- :func:`fastopt.cuda.availability` answers with a reason;
- every generated CUDA kernel compiles for a real GPU target: NVVM (the CUDA toolkit's
  compiler library) needs no GPU, so the kernels the simulator runs as Python are also
  type-checked, lowered and compiled to PTX here, and float32 kernels are checked to do
  float32 arithmetic only.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from rule_cases import CASES

import fastopt.cuda

ROOT = Path(__file__).parent.parent


def test_cpu_use_never_imports_numba_cuda():
    script = (
        "import sys, numpy as np, fastopt\n"
        "w = np.zeros(3)\n"
        "fastopt.Adam(w).step(np.ones(3))\n"
        "fastopt.adam_step(w, np.ones(3), np.zeros(3), np.zeros(3), step=1)\n"
        "assert 'numba.cuda' not in sys.modules, 'numba.cuda was imported'\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", script], check=True, cwd=ROOT, env=env)


def test_availability_is_a_flag_and_a_reason():
    usable, reason = fastopt.cuda.availability()
    assert isinstance(usable, bool)
    assert reason and "\n" not in reason


def _ptx_compiler_or_skip(cc: tuple[int, int]) -> None:
    """Skip unless a trivial kernel compiles to PTX here (no GPU needed, only the toolkit's
    compiler libraries: NVVM for numba's built-in CUDA target, NVRTC too for numba-cuda)."""
    from numba.core import config

    if config.ENABLE_CUDASIM:
        pytest.skip("the simulator does not compile to PTX")
    from numba import cuda
    from numba.core import types as nbtypes

    def probe(x):
        x[0] = 1.0

    try:
        cuda.compile_ptx(probe, (nbtypes.float32[::1],), cc=cc)
    except Exception as error:  # any missing piece of the toolchain
        pytest.skip(f"cannot compile CUDA kernels here: {' '.join(str(error).split())[:200]}")


def _variants():
    """(case, kernels, present state arrays, hyperparameter width) for every case."""
    seen = {}
    for case in CASES:
        _, cls, kwargs = case
        opt = cls(np.zeros(3), **kwargs)
        opt.step(np.ones(3))
        present = tuple(
            a is not None for a in opt._kernel_state(opt.param_groups[0], opt._views[0])
        )
        seen.setdefault((cls._kernels, present), (cls.__name__, cls._hyper_width))
    return [(name, kernels, present, width) for (kernels, present), (name, width) in seen.items()]


def _compile_for_sm80(monkeypatch) -> None:
    """Compile device functions for sm_80 without a device: they are compiled for the
    current device's compute capability, which needs a driver; naming one instead lets NVVM
    alone do the work (skips without a PTX compiler)."""
    _ptx_compiler_or_skip((8, 0))
    import numba.cuda.dispatcher

    if not hasattr(numba.cuda.dispatcher, "get_current_device"):
        pytest.skip("this numba.cuda compiles device functions differently")
    device = types.SimpleNamespace(compute_capability=(8, 0))
    monkeypatch.setattr(numba.cuda.dispatcher, "get_current_device", lambda: device)


# Double-precision arithmetic, or float32 values promoted to float64.
F64_ARITHMETIC = re.compile(
    r"\b(?:(?:add|sub|mul|div|fma|sqrt|neg|abs|min|max)(?:\.\w+)*\.f64|cvt\.f64\.f32)\b"
)


@pytest.mark.parametrize("segmented", [False, True], ids=["one_segment", "segmented"])
def test_every_kernel_compiles_to_ptx(segmented, monkeypatch):
    _compile_for_sm80(monkeypatch)
    from numba import cuda
    from numba.core import types as nbtypes

    from fastopt.cuda import _kernels

    for name, kernels, present, width in _variants():
        # No master copy or compensation buffer: float32/float64 parameters.
        dispatcher = _kernels._kernel(kernels, (*present, False, False), segmented)
        for dtype in (nbtypes.float32, nbtypes.float64):
            array = dtype[::1]
            if segmented:
                head = (nbtypes.int64[::1], nbtypes.float64[:, ::1])
            else:
                head = (nbtypes.UniTuple(nbtypes.float64, width),)
            signature = (*head, array, array, *[array] * sum(present))
            ptx, _ = cuda.compile_ptx(dispatcher.py_func, signature, cc=(8, 0))
            assert ".entry" in ptx
            promoted = F64_ARITHMETIC.findall(ptx)
            if dtype == nbtypes.float32:
                assert not promoted, f"{name} {present}: float64 arithmetic {promoted[:3]}"
            else:  # the pattern does find double-precision arithmetic where there is some
                assert promoted, f"{name} {present}: no float64 arithmetic in a float64 kernel"


def test_every_kernel_compiles_to_ptx_for_bfloat16_storage(monkeypatch):
    """bfloat16 parameters, gradients and state (uint16 bits) with a float32 master copy and
    stochastic rounding; float16 ones (int16 bits) with a compensation buffer: the codecs
    compile for a device, in float32 arithmetic only."""
    _compile_for_sm80(monkeypatch)
    from numba import cuda
    from numba.core import types as nbtypes

    from fastopt.cuda import _kernels

    # The loads and stores are the same whatever the rule (the storage layer): Adam with all
    # its state arrays (the norms' and the matrix step's passes: the tests around; the
    # simulator runs every rule's 16-bit paths). Each compilation takes half a minute.
    compiled = 0
    for name, kernels, present, width in _variants():
        if name != "Adam" or not all(present):
            continue
        compiled += 1
        for bits, master, comp in ((nbtypes.uint16, True, False), (nbtypes.int16, False, True)):
            dispatcher = _kernels._kernel(kernels, (*present, master, comp), False, "update", True)
            head = (nbtypes.UniTuple(nbtypes.float64, width),)
            arrays = [bits[::1]] * sum(present) + [nbtypes.float32[::1]] * master
            arrays += [bits[::1]] * comp
            signature = (*head, bits[::1], bits[::1], *arrays)
            ptx, _ = cuda.compile_ptx(dispatcher.py_func, signature, cc=(8, 0))
            assert ".entry" in ptx
            promoted = F64_ARITHMETIC.findall(ptx)
            assert not promoted, f"{name} {present}: float64 arithmetic {promoted[:3]}"
    assert compiled == 1  # Adam with every state array (amsgrad) is in the table


def test_every_read_pass_of_the_per_tensor_norms_compiles_to_ptx(monkeypatch):
    """The norms' read pass of LAMB and LARS (one thread per block, float64 lanes in local
    memory): compiled for a device, the simulator aside."""
    _compile_for_sm80(monkeypatch)
    from numba import cuda
    from numba.core import types as nbtypes

    from fastopt.cuda import _kernels

    measured = [variant for variant in _variants() if variant[1].norms is not None]
    assert {name for name, *_ in measured} == {"Lamb", "LARS"}
    for name, kernels, present, _ in measured:
        dispatcher = _kernels._kernel(kernels, (*present, False), True, "norms")
        for dtype in (nbtypes.float32, nbtypes.float64):
            array = dtype[::1]
            table = nbtypes.int64[::1]
            head = (table, table, table, nbtypes.float64[:, ::1])
            signature = (*head, array, array, *[array] * sum(present), nbtypes.float64[:, ::1])
            ptx, _ = cuda.compile_ptx(dispatcher.py_func, signature, cc=(8, 0))
            assert ".entry" in ptx and ".local" in ptx, f"{name} {present}"


def test_the_eight_bit_state_kernel_compiles_to_ptx(monkeypatch):
    """Adam with 8-bit moments (the signed and the unsigned map, their tables as constants)
    and AMSGrad's maximum quantized or kept in float32, with a float32 master copy of
    bfloat16 parameters: compiled for a device, in float32 arithmetic only; LAMB's read pass
    over 8-bit moments; Muon's direction pass and update over an 8-bit momentum."""
    _compile_for_sm80(monkeypatch)
    from numba import cuda
    from numba.core import types as nbtypes

    from fastopt.cuda import _kernels

    f32, u8, u16 = nbtypes.float32[::1], nbtypes.uint8[::1], nbtypes.uint16[::1]
    tables = (nbtypes.int64[::1], nbtypes.int64[::1], nbtypes.float64[:, ::1])
    variants = [
        (("signed", "unsigned", "unsigned", "none", "none"), (f32, f32), (u8, f32) * 3, False),
        (
            ("signed", "unsigned", "array", "array", "none"),
            (u16, u16),
            (u8, f32) * 2 + (f32, f32),
            True,
        ),
    ]
    # LAMB's read pass with both moments quantized (decoded by their maps' constant tables).
    norms = _kernels._kernel(fastopt.Lamb._kernels, ("signed", "unsigned", False), True, "norms")
    table = nbtypes.int64[::1]
    head = (table, table, table, nbtypes.float64[:, ::1])
    signature = (*head, f32, f32, u8, f32, u8, f32, nbtypes.float64[:, ::1])
    ptx, _ = cuda.compile_ptx(norms.py_func, signature, cc=(8, 0))
    assert ".entry" in ptx
    # Muon's direction pass decoding its 8-bit momentum, and its update reading the directions.
    muon = fastopt.Muon._kernels
    direction = _kernels._kernel(muon, ("signed", False), True, "direction")
    signature = (table, nbtypes.float64[:, ::1], f32, f32, u8, f32, f32)
    assert ".entry" in cuda.compile_ptx(direction.py_func, signature, cc=(8, 0))[0]
    update = _kernels._quantized_kernel(muon, ("signed", "array", "none", "none"), "float32")
    signature = (*tables, f32, f32, u8, f32, f32)
    assert ".local" in cuda.compile_ptx(update.py_func, signature, cc=(8, 0))[0]
    for kinds, param_grad, arrays, stochastic in variants:
        dispatcher = _kernels._quantized_kernel(fastopt.Adam._kernels, kinds, "float32", stochastic)
        signature = (*tables, *param_grad, *arrays)
        ptx, _ = cuda.compile_ptx(dispatcher.py_func, signature, cc=(8, 0))
        assert ".entry" in ptx and ".local" in ptx, kinds
        promoted = F64_ARITHMETIC.findall(ptx)
        assert not promoted, f"{kinds}: float64 arithmetic {promoted[:3]}"
