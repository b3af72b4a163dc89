"""CUDA kernels of every rule, generated from the rule's own element-wise update.

A rule's generated element function ``update(i, param, grad, *state, scalars)`` and its
``unpack(h, param)`` (plain Python in the rule's generated module, see :mod:`fastopt._codegen`
and :class:`fastopt._launch.RuleKernels`) are compiled as CUDA device functions and called
from a grid-stride loop: ``start = cuda.grid(1)``, step ``cuda.gridsize(1)``, 64-bit indices,
so arrays past 2^31 elements work and any grid covers any size. The math is written once;
only the loop around it is CUDA's.

Two kernels per rule and set of optional state arrays:

- one segment (every optimizer step and functional call): the hyperparameter row is passed
  by value as a tuple of float64, so a step costs no host-to-device copy;
- several segments (``bounds``/``hyper`` as in :mod:`fastopt._launch`): each thread finds
  the segment of its first element by binary search and moves on only when its index leaves
  it, so the search runs once per segment a thread enters, not once per element.

numba.cuda cannot pass ``None`` as a kernel argument, so an absent optional state array is
not an argument: the generated kernel passes the constant ``None`` to the update, and numba
prunes that branch at compile time exactly as on the CPU.
"""

from __future__ import annotations

import inspect
import linecache
import os
import re
import textwrap
from functools import cache
from typing import TYPE_CHECKING, Any

import numpy as np
from numba import cuda, float32, float64

from fastopt._jit import cuda_device, cuda_kernel
from fastopt._matrix import transform_segments
from fastopt._norms import blocks_of, finish_rows
from fastopt._quantized import (
    BLOCK,
    QuantizedState,
    SignedBlock,
    SignedState,
    UnsignedBlock,
    UnsignedState,
    block_absmax,
    block_table,
    encode,
    tables,
)
from fastopt._reduce import LANES
from fastopt._storage import compute_type_of, load_param, store, store_param
from fastopt.cuda._views import SIMULATOR, as_kernel_array

if TYPE_CHECKING:
    from fastopt._launch import RuleKernels

__all__ = [
    "SIMULATOR",
    "SIMULATOR_RESIDENT_BLOCKS",
    "THREADS_PER_BLOCK",
    "fill",
    "grid_shape",
    "kernel_source",
    "launch",
    "stream_of",
]

#: Threads per block (environment variable ``FASTOPT_CUDA_THREADS_PER_BLOCK``). 256 keeps
#: enough warps per multiprocessor resident to hide memory latency in a streaming kernel
#: while leaving the block count free to fill every multiprocessor; capped by the device.
THREADS_PER_BLOCK = int(os.environ.get("FASTOPT_CUDA_THREADS_PER_BLOCK", 256))

#: The simulator has no device attributes and no occupancy calculator. This stands in for
#: "blocks resident on the device": small, so that arrays of a few hundred elements run on a
#: grid of several blocks whose threads each loop over several elements.
SIMULATOR_RESIDENT_BLOCKS = 4

_ONE_SEGMENT = '''
def {name}(row, param, grad{arrays}):
    """{rule}, one segment: hyperparameter row passed by value."""
    scalars = unpack(row, param, 0, {stochastic})
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    while i < param.size:
        {call}
        i += stride
'''

_SEGMENTED = '''
def {name}(bounds, hyper, param, grad{arrays}):
    """{rule}{what}, segments cut by bounds, row s of hyper for segment s."""
    i = cuda.grid(1)
    if i >= param.size:
        return
    stride = cuda.gridsize(1)
    s = segment_of(bounds, i, 0)
    end = bounds[s + 1]
    # Element i of the arrays is element i - bounds[s] of its parameter.
    scalars = unpack(hyper[s], param, -bounds[s], {stochastic})
    while i < param.size:
        if i >= end:
            s = segment_of(bounds, i, s + 1)
            end = bounds[s + 1]
            scalars = unpack(hyper[s], param, -bounds[s], {stochastic})
        {call}
        i += stride
'''


_MEASURE = '''
def {name}(starts, stops, segment_of_block, hyper, param, grad{arrays}, out):
    """{rule}'s norms: the sums of squares of block b, lane by lane as on the CPU."""
    b = cuda.grid(1)
    stride = cuda.gridsize(1)
    while b < starts.size:
        scalars = unpack(hyper[segment_of_block[b]], param, 0, None)
        acc = cuda.local.array(({lanes}, {count}), float64)
        for j in range({lanes}):
            for k in range({count}):
                acc[j, k] = 0.0
        lo = starts[b]
        for t in range(stops[b] - lo):
            values = measure(lo + t, param, grad{state}, scalars)
            j = t % {lanes}
{accumulate}
        for k in range({count}):
            total = 0.0
            for j in range({lanes}):
                total += acc[j, k]
            out[b, k] = total
        b += stride
'''


# A step with 8-bit state (see fastopt._quantized): one thread per 256-element block of the
# launch, as one CPU thread does it. The block's new values go into a scratch block in the
# thread's local memory, the parameter is stored from it, and each quantized array gets the
# block's new scale and codes (``blocks``: each segment's first block, then their total).
_QUANTIZED = '''
def {name}(bounds, blocks, hyper, param, grad{arrays}):
    """{rule} with 8-bit state, one thread per block."""
    scratch = cuda.local.array(({rows}, {block}), {dtype})
    b = cuda.grid(1)
    stride = cuda.gridsize(1)
    total = blocks[blocks.size - 1]
    while b < total:
        s = segment_of(blocks, b, 0)
        lo = bounds[s] + (b - blocks[s]) * {block}
        hi = lo + {block} if lo + {block} < bounds[s + 1] else bounds[s + 1]
        n = hi - lo
        scalars = unpack(hyper[s], param, lo - bounds[s], {stochastic})
        param_ = param[lo:hi]
        grad_ = grad[lo:hi]
{views}
        for j in range(n):
            ({targets}) = values(j, param_, grad_{value_arguments}, scalars)
            scratch[0, j] = p
{keeps}
        for j in range(n):
            old = load_param(param_, {master}, j)
            store_param(param_, {master}, {comp}, j, old, scratch[0, j], scalars[3])
{finishes}
        b += stride
'''

# Encoding a quantized array's block: its largest magnitude (NaN wins), then each value's
# nearest code of x / scale in float32 (clamped by encode), as fastopt._quantized does.
_ENCODE = """        largest = block_absmax(scratch, {k}, n)
        floor = largest if not largest < tiny else tiny
        inverse = unit / floor
        for j in range(n):
            x = float32(scratch[{k}, j])
            y = x * inverse if n == {block} else x / floor
            {name}_codes[lo + j] = encode(y, {table})
        {name}_absmax[b] = largest"""


def segment_of(bounds, index, lo):
    """The segment holding element ``index``, knowing ``bounds[lo] <= index``.

    Binary search for the last ``s`` with ``bounds[s] <= index < bounds[s + 1]``; empty
    segments (equal bounds) are skipped because ``index`` cannot lie in them.
    """
    hi = bounds.size - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if bounds[mid] <= index:
            lo = mid
        else:
            hi = mid
    return lo


_segment_of = cuda_device(segment_of)


def _rule_name(kernels: RuleKernels) -> str:
    return kernels.update.__name__.removesuffix("_update")


def _element_function(kernels: RuleKernels, stage: str):
    if stage == "norms":
        return kernels.norms.measure
    if stage == "direction":
        return kernels.matrix.direction
    return kernels.update


def state_names(kernels: RuleKernels, stage: str = "update") -> tuple[str, ...]:
    """Names of the array arguments of a stage's element function after ``grad``: the
    state, then (the update's) the transformed array, then the parameter's master copy and
    (the update's) compensation buffer."""
    names = list(inspect.signature(_element_function(kernels, stage)).parameters)
    return tuple(names[3:-1])


def kernel_source(
    kernels: RuleKernels,
    present: tuple[bool, ...],
    segmented: bool,
    stage: str = "update",
    stochastic: bool = False,
) -> str:
    """Python source of the CUDA kernel for a rule and a set of present arrays (those of
    :func:`state_names`): the update's (its stores rounding ``stochastic``-ally), or a read
    pass: of its norms (``stage="norms"``) or the first pass of its matrix step
    (``"direction"``, segmented), where an 8-bit state array is ``"signed"`` or
    ``"unsigned"`` in ``present`` (its codes and scales, two arguments)."""
    names = state_names(kernels, stage)
    if len(present) != len(names):
        raise ValueError(f"{_rule_name(kernels)} has {len(names)} state arrays, got {present}")
    arrays, state = "", ""
    for name, here in zip(names, present, strict=True):
        if here in ("signed", "unsigned"):  # 8-bit state (a read pass): two arrays
            arrays += f", {name}_codes, {name}_absmax"
            kind = "SignedState" if here == "signed" else "UnsignedState"
            state += f", {kind}({name}_codes, {name}_absmax)"
        else:
            arrays += f", {name}" if here else ""
            state += f", {name}" if here else ", None"
    rule = _rule_name(kernels)
    if stage == "direction":  # the segmented loop, writing the directions to out
        return _SEGMENTED.format(
            name=f"_{rule}_cuda_direction",
            rule=rule,
            what="'s matrix step, first pass",
            arrays=f"{arrays}, out",
            call=f"out[i] = direction(i, param, grad{state}, scalars)",
            stochastic=None,
        )
    if stage == "norms":
        count = len(kernels.norms.declaration.names)
        accumulate = "\n".join(
            f"            v = float64(values[{k}])\n            acc[j, {k}] += v * v"
            for k in range(count)
        )
        return _MEASURE.format(
            name=f"_{rule}_cuda_norms",
            rule=rule,
            arrays=arrays,
            state=state,
            lanes=LANES,
            count=count,
            accumulate=accumulate,
        )
    template = _SEGMENTED if segmented else _ONE_SEGMENT
    name = f"_{rule}_cuda_segmented" if segmented else f"_{rule}_cuda"
    call = f"update(i, param, grad{state}, scalars)"
    return template.format(
        name=name,
        rule=rule,
        what="",
        arrays=arrays,
        call=call,
        stochastic=True if stochastic else None,
    )


def quantized_kernel_source(
    kernels: RuleKernels, kinds: tuple[str, ...], dtype: str, stochastic: bool = False
) -> str:
    """Python source of the CUDA kernel of a step with 8-bit state. ``kinds`` has one entry
    per array of :func:`state_names` (the rule's state, the master copy, the compensation):
    ``"signed"`` or ``"unsigned"`` (quantized: its codes and scales are two arguments),
    ``"array"`` or ``"none"``; ``dtype`` is the compute type's name."""
    names = state_names(kernels)
    if len(kinds) != len(names):
        raise ValueError(f"{_rule_name(kernels)} has {len(names)} state arrays, got {kinds}")
    # The rule's state; then a matrix step's transformed array, the master copy, comp.
    rule_names = names[: len(names) - 2 - (kernels.matrix is not None)]
    arrays, views = "", []
    for name, kind in zip(names, kinds, strict=True):
        if kind in ("signed", "unsigned"):
            arrays += f", {name}_codes, {name}_absmax"
            block = "SignedBlock" if kind == "signed" else "UnsignedBlock"
            views.append(f"{name}_ = {block}({name}_codes[lo:hi], {name}_absmax[b])")
        elif kind == "array":
            arrays += f", {name}"
            views.append(f"{name}_ = {name}[lo:hi]")
        else:
            views.append(f"{name}_ = None")
    rows = {name: k for k, name in enumerate(rule_names, start=1)}
    keeps, finishes = [], []
    for name, kind in zip(rule_names, kinds, strict=False):
        k = rows[name]
        if kind == "none":
            continue
        keeps.append(f"            scratch[{k}, j] = new_{name}")
        if kind == "array":
            finishes.append(
                f"        for j in range(n):\n"
                f"            store({name}_, j, scratch[{k}, j], scalars[3], {k})"
            )
        else:
            table = "SIGNED_TABLE" if kind == "signed" else "UNSIGNED_TABLE"
            finishes.append(_ENCODE.format(k=k, name=name, block=BLOCK, table=table))
    rule = _rule_name(kernels)
    return _QUANTIZED.format(
        name=f"_{rule}_cuda_quantized",
        rule=rule,
        arrays=arrays,
        rows=1 + len(rule_names),
        block=BLOCK,
        dtype=dtype,
        stochastic=True if stochastic else None,
        views=textwrap.indent("\n".join(views), " " * 8),
        targets=", ".join(["p", *(f"new_{name}" for name in rule_names)]),
        value_arguments="".join(f", {name}_" for name in names[:-1]),
        keeps="\n".join(keeps),
        master=f"{names[-2]}_",
        comp=f"{names[-1]}_",
        finishes="\n".join(finishes),
    )


@cache
def _quantized_kernel(
    kernels: RuleKernels, kinds: tuple[str, ...], dtype: str, stochastic: bool = False
):
    namespace = {
        "__name__": __name__,
        "cuda": cuda,
        "float32": float32,
        "float64": float64,
        "values": cuda_device(kernels.values),
        "unpack": _device_functions(kernels)[1],
        "segment_of": _segment_of,
        "SignedBlock": SignedBlock,
        "UnsignedBlock": UnsignedBlock,
        "SIGNED_TABLE": tables(True)[1],
        "UNSIGNED_TABLE": tables(False)[1],
        "block_absmax": block_absmax,
        "encode": encode,
        "load_param": load_param,
        "store_param": store_param,
        "store": store,
        "tiny": np.float32(1e-38),
        "unit": np.float32(1.0),
    }
    source = quantized_kernel_source(kernels, kinds, dtype, stochastic)
    (name,) = re.findall(r"^def (\w+)", source, flags=re.MULTILINE)
    filename = f"<fastopt.cuda {name} {kinds} {dtype} {'stochastic' if stochastic else ''}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    exec(compile(source, filename, "exec"), namespace)
    return cuda_kernel(namespace[name])


def _split_host_state(kernels: RuleKernels, state: tuple[Any, ...]) -> tuple[tuple, list]:
    """The kernels' state arrays, and the matrix step's host state that follows them, as
    on the CPU (kernel views, None where a tensor keeps none; none without a matrix step)."""
    if kernels.matrix is None:
        return state, []
    count = len(state) - len(kernels.matrix.declaration.state)
    held = [None if array is None else as_kernel_array(array) for array in state[count:]]
    return state[:count], held


def _launch_quantized(kernels, bounds, hyper, param, grad, state, master, comp, stochastic, shapes):
    """A step with 8-bit state on the device: one thread per 256-element block (after a
    matrix step's direction pass, which decodes the state, and its host transform)."""
    state, held = _split_host_state(kernels, state)
    kinds, arguments = [], []
    for array in (*state, master, comp):
        if isinstance(array, QuantizedState):
            kinds.append("signed" if isinstance(array, SignedState) else "unsigned")
            arguments.append((as_kernel_array(array.codes), as_kernel_array(array.absmax)))
        elif array is None:
            kinds.append("none")
            arguments.append(())
        else:
            kinds.append("array")
            arguments.append((as_kernel_array(array),))
    stream = stream_of(grad)
    # The read passes take the state and the master copy.
    present = tuple(kind if kind in ("signed", "unsigned") else kind == "array" for kind in kinds)
    read = [array for pair in arguments[:-1] for array in pair]
    if kernels.matrix is not None:
        transformed = _transformed(
            kernels, present[:-1], bounds, hyper, param, grad, read, stream, shapes, held
        )
        # The update reads the transformed array after the state.
        kinds.insert(len(state), "array")
        arguments.insert(len(state), (transformed,))
    if kernels.norms is not None:
        _measure_norms(kernels, present[:-1], bounds, hyper, param, grad, read, stream, shapes)
    arrays = [array for pair in arguments for array in pair]
    blocks = block_table(bounds)
    tables_ = [
        cuda.to_device(np.ascontiguousarray(t), stream=stream) for t in (bounds, blocks, hyper)
    ]
    dtype = compute_type_of(param.dtype).name
    kernel = _quantized_kernel(kernels, tuple(kinds), dtype, stochastic is not None)
    _run(kernel, int(blocks[-1]), stream, (*tables_, param, grad, *arrays))


@cache
def _device_functions(kernels: RuleKernels) -> tuple[Any, Any]:
    return cuda_device(kernels.update), cuda_device(kernels.unpack)


@cache
def _kernel(
    kernels: RuleKernels,
    present: tuple[bool, ...],
    segmented: bool,
    stage: str = "update",
    stochastic: bool = False,
):
    update, unpack = _device_functions(kernels)
    namespace = {
        "__name__": __name__,
        "cuda": cuda,
        "float64": float64,
        "update": update,
        "unpack": unpack,
        "segment_of": _segment_of,
    }
    if stage == "norms":
        namespace["measure"] = cuda_device(kernels.norms.measure)
    if stage == "direction":
        namespace["direction"] = cuda_device(kernels.matrix.direction)
    # A read pass takes 8-bit state as its codes and scales.
    namespace["SignedState"], namespace["UnsignedState"] = SignedState, UnsignedState
    source = kernel_source(kernels, present, segmented, stage, stochastic)
    (name,) = re.findall(r"^def (\w+)", source, flags=re.MULTILINE)
    # Registered with linecache so that compiler errors and tracebacks can show the source.
    filename = f"<fastopt.cuda {name} {present} {'stochastic' if stochastic else ''}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    exec(compile(source, filename, "exec"), namespace)
    return cuda_kernel(namespace[name])


def grid_shape(size: int, threads_per_block: int, resident_blocks: int) -> tuple[int, int]:
    """``(blocks, threads per block)`` for ``size`` elements.

    One block per ``threads_per_block`` elements, but never more blocks than the device
    holds at once: a single wave of resident blocks, each thread striding over the rest,
    avoids the tail of a partial second wave and the cost of launching idle blocks.
    """
    blocks = -(-size // threads_per_block)
    return max(1, min(blocks, resident_blocks)), threads_per_block


_resident: dict[tuple[Any, ...], int] = {}


def _threads_per_block() -> int:
    if SIMULATOR:
        return THREADS_PER_BLOCK
    return min(THREADS_PER_BLOCK, cuda.get_current_device().MAX_THREADS_PER_BLOCK)


def _resident_blocks(dispatcher, args: tuple[Any, ...], threads: int) -> int:
    """How many blocks of this kernel the current device runs at once (occupancy x SMs)."""
    if SIMULATOR:
        return SIMULATOR_RESIDENT_BLOCKS
    device = cuda.get_current_device()
    key = (dispatcher, device.id, threads, *(getattr(a, "dtype", None) for a in args))
    blocks = _resident.get(key)
    if blocks is None:
        compiled = dispatcher.compile(tuple(dispatcher.typeof_pyval(a) for a in args))
        # The occupancy calculator (registers, shared memory) times MULTIPROCESSOR_COUNT.
        blocks = _resident[key] = compiled.max_cooperative_grid_blocks(threads)
    return blocks


def _run(dispatcher, size: int, stream, args: tuple[Any, ...]) -> None:
    threads = _threads_per_block()
    blocks, threads = grid_shape(size, threads, _resident_blocks(dispatcher, args, threads))
    dispatcher[blocks, threads, stream](*args)


def stream_of(array) -> Any:
    """The stream an array declares: its CUDA Array Interface stream, or numba's own."""
    return getattr(array, "stream", 0) or 0


def _measure_norms(kernels, present, bounds, hyper, param, grad, arrays, stream, shapes) -> None:
    """The norms' read pass on the device (``present``/``arrays``: the state and the master
    copy), then the norm fields of ``hyper`` on the host."""
    starts, stops, segment = blocks_of(bounds)
    count = len(kernels.norms.declaration.names)
    sums = np.zeros((starts.size, count))
    needed = kernels.norms.declaration.needed
    wanted = shapes is None or any(s is not None and needed(len(s)) for s in shapes)
    if starts.size and wanted:
        out = cuda.device_array((starts.size, count), dtype=np.float64, stream=stream)
        tables = [
            cuda.to_device(np.ascontiguousarray(table), stream=stream)
            for table in (starts, stops, segment, hyper)
        ]
        kernel = _kernel(kernels, present, True, "norms")
        _run(kernel, starts.size, stream, (*tables, param, grad, *arrays, out))
        sums = out.copy_to_host(stream=stream)
        cuda.synchronize()
    finish_rows(kernels.norms, hyper, segment, sums, shapes)


def _transformed(kernels, present, bounds, hyper, param, grad, arrays, stream, shapes, held):
    """The matrix step on the device: the directions, transformed per tensor on the host
    (NumPy) and copied back; the device array the update reads ``o`` from (in the compute
    type; ``present``/``arrays``: the state and the master copy). ``held``: the matrix
    step's host state, device arrays (or None) copied to the host for the transform and
    back."""
    out = cuda.device_array(param.size, dtype=compute_type_of(param.dtype), stream=stream)
    tables = [cuda.to_device(np.ascontiguousarray(t), stream=stream) for t in (bounds, hyper)]
    _run(
        _kernel(kernels, present, True, "direction"),
        param.size,
        stream,
        (*tables, param, grad, *arrays, out),
    )
    directions = out.copy_to_host(stream=stream)
    host = [None if array is None else array.copy_to_host(stream=stream) for array in held]
    cuda.synchronize()
    transform_segments(kernels.matrix, bounds, hyper, directions, shapes, host)
    out.copy_to_device(directions, stream=stream)
    for array, values in zip(held, host, strict=True):
        if array is not None:
            array.copy_to_device(values, stream=stream)
    cuda.synchronize()
    return out


def launch(
    kernels: RuleKernels,
    bounds,
    hyper,
    param,
    grad,
    *state,
    master=None,
    comp=None,
    stochastic=None,
    shapes=None,
) -> None:
    """Run a rule's CUDA kernel: same arguments as its CPU drivers (see fastopt._launch).

    ``param``, ``grad`` and the state are device arrays (numba's or CUDA Array Interface
    exporters, validated by the caller), ``bounds`` and ``hyper`` NumPy arrays. The
    kernel runs on the stream the gradient declares (torch's current stream, CuPy's, numba's
    array stream; else the default stream), after the work that produced the gradient.
    """
    size = param.size
    if size == 0:
        return  # a grid of zero blocks cannot be launched, and there is nothing to do
    grad = as_kernel_array(grad)
    stream = stream_of(grad)

    def given(*arrays) -> tuple[tuple[bool, ...], tuple[Any, ...]]:
        present = tuple(array is not None for array in arrays)
        return present, tuple(as_kernel_array(array) for array in arrays if array is not None)

    param = as_kernel_array(param)
    if any(isinstance(array, QuantizedState) for array in state):
        _launch_quantized(
            kernels, bounds, hyper, param, grad, state, master, comp, stochastic, shapes
        )
        return
    if kernels.matrix is not None:
        state, held = _split_host_state(kernels, state)
        present, arrays = given(*state, master)
        transformed = _transformed(
            kernels, present, bounds, hyper, param, grad, arrays, stream, shapes, held
        )
        state = (*state, transformed)
    if kernels.norms is not None:
        present, arrays = given(*state, master)
        _measure_norms(kernels, present, bounds, hyper, param, grad, arrays, stream, shapes)
    present, arrays = given(*state, master, comp)
    stochastic = stochastic is not None
    if bounds.size == 2:
        row = tuple(float(value) for value in hyper[0])
        kernel = _kernel(kernels, present, False, "update", stochastic)
        _run(kernel, size, stream, (row, param, grad, *arrays))
    else:
        bounds = cuda.to_device(np.ascontiguousarray(bounds), stream=stream)
        hyper = cuda.to_device(np.ascontiguousarray(hyper), stream=stream)
        kernel = _kernel(kernels, present, True, "update", stochastic)
        _run(kernel, size, stream, (bounds, hyper, param, grad, *arrays))


@cuda_kernel
def _fill(array, value):
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    while i < array.size:
        array[i] = value
        i += stride


def fill(array, value: float) -> None:
    """Set every element of a flat device array to ``value`` (default stream)."""
    if array.size:
        _run(_fill, array.size, 0, (array, float(value)))
