"""A description of the machine and the software stack, and its measured bandwidth.

Everything here is read without importing torch (its version comes from the package
metadata), so describing the machine does not start a second OpenMP runtime.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from pathlib import Path
from typing import Any

import numba
import numpy as np

from fastopt import __version__
from fastopt._jit import PARALLEL_THRESHOLD
from fastopt._launch import single_segment
from fastopt.bench.ceiling import MAX_STATE, STREAM_KERNELS, STREAM_ROWS, stream_step
from fastopt.bench.runner import TimingPolicy, time_call

__all__ = ["cuda_status", "machine_info", "measure_bandwidth", "simd_flags"]

# Vector instruction sets worth naming (x86, Arm, POWER).
_SIMD_PREFIXES = ("sse", "ssse3", "avx", "fma", "f16c", "amx", "neon", "asimd", "sve", "altivec")
_SIMD_EXACT = {"vsx"}


def _cpuinfo() -> dict[str, str]:
    fields: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return fields
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def _cpu_model(cpuinfo: dict[str, str]) -> str:
    for key in ("model name", "Model Name", "cpu model", "Processor", "cpu"):
        if cpuinfo.get(key):
            return cpuinfo[key]
    return platform.processor() or platform.machine() or "unknown"


def _is_simd(flag: str) -> bool:
    return flag in _SIMD_EXACT or flag.startswith(_SIMD_PREFIXES)


def simd_flags() -> dict[str, Any]:
    """SIMD features: LLVM's view of the host (what numba compiles for) and /proc/cpuinfo's."""
    import llvmlite.binding as llvm

    features = llvm.get_host_cpu_features()
    enabled = sorted(name for name, on in features.items() if on and _is_simd(name))
    cpuinfo = _cpuinfo()
    listed = cpuinfo.get("flags") or cpuinfo.get("Features") or ""
    return {
        "llvm_cpu": llvm.get_host_cpu_name(),
        "llvm_features": enabled,
        "cpuinfo": sorted(flag for flag in listed.split() if _is_simd(flag)),
    }


def _caches() -> dict[str, str]:
    caches: dict[str, str] = {}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level = (index / "level").read_text().strip()
            kind = (index / "type").read_text().strip()
            size = (index / "size").read_text().strip()
        except OSError:
            continue
        name = f"L{level}" + {"Data": "d", "Instruction": "i"}.get(kind, "")
        caches[name] = size
    return caches


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def threading_layer() -> str:
    """numba's threading layer, found by running a tiny multithreaded kernel once."""
    parallel = STREAM_KERNELS[1]
    a = np.zeros(256, np.float32)
    parallel(
        numba.get_num_threads(),
        single_segment(a.size),
        STREAM_ROWS[0],
        a,
        a.copy(),
        *(None,) * MAX_STATE,
        None,  # no master copy,
        None,  # no compensation buffer,
        None,  # rounding to nearest
    )
    return numba.threading_layer()


def cuda_status() -> dict[str, Any]:
    """Whether a CUDA GPU is usable for fastopt's kernels, and why (not)."""
    from fastopt.cuda import availability

    available, detail = availability()
    return {"source": "fastopt.cuda.availability()", "available": available, "detail": detail}


def machine_info(*, cuda: bool = False) -> dict[str, Any]:
    """CPU, cores, caches, memory, software versions, numba threads and threading layer.

    ``cuda=True`` adds :func:`cuda_status` (it may take a moment to load the CUDA driver).
    """
    cpuinfo = _cpuinfo()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    info: dict[str, Any] = {
        "cpu": _cpu_model(cpuinfo),
        "architecture": platform.machine(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "caches": _caches(),
        "memory_gib": _memory_gib(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "versions": {
            "fastopt": __version__,
            "numpy": np.__version__,
            "numba": numba.__version__,
            "llvmlite": _version("llvmlite"),
            "torch": _version("torch"),
            "matplotlib": _version("matplotlib"),
            "tqdm": _version("tqdm"),
        },
        "numba_threads": numba.get_num_threads(),
        "numba_max_threads": numba.config.NUMBA_NUM_THREADS,
        "threading_layer": threading_layer(),
        "parallel_threshold": PARALLEL_THRESHOLD,
        "simd": simd_flags(),
    }
    if cuda:
        info["cuda"] = cuda_status()
    return info


def measure_bandwidth(
    size: int = 1 << 24, dtype: str = "float32", policy: TimingPolicy | None = None
) -> dict[str, Any]:
    """Memory bandwidth of an in-place stream: read 4 arrays, write 3 (Adam's traffic).

    Use a size well beyond the last-level cache (the default, 2^24 float32 elements per
    array, is 64 MiB each) for the DRAM bandwidth. ``spread`` is the samples' interquartile
    range over their median (None with a single sample).
    """
    policy = policy or TimingPolicy(repeats=10, min_repeats=5, max_seconds=2.0)
    rng = np.random.default_rng(0)
    param, grad = (rng.standard_normal(size, dtype=np.dtype(dtype).type) for _ in range(2))
    exp_avg, exp_avg_sq = np.zeros_like(param), np.zeros_like(param)
    timing = time_call(lambda: stream_step(param, grad, exp_avg, exp_avg_sq), policy)
    moved = 7 * size * np.dtype(dtype).itemsize
    return {
        "size": size,
        "dtype": dtype,
        "bytes_per_step": moved,
        "median_ns": timing.median_ns,
        "gb_per_s": moved / timing.median_ns,
        "best_gb_per_s": moved / timing.min_ns,
        "spread": timing.spread,
        "threads": numba.get_num_threads(),
    }
