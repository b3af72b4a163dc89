"""The kernels of a declared rule, generated as a source file that numba can cache.

numba caches a compiled function on disk keyed by its source file and qualified name, and
cannot cache closures or functions that take other compiled functions as arguments. So the
drivers of a :class:`~fastopt.rule.Rule` are written out as a real Python module, one per rule,
and imported: every function in it is an ordinary module-level function that numba caches.

The module's name carries a hash of its own text and of the sources it is compiled from (the
rule's module, :mod:`fastopt._storage`, :mod:`fastopt._codecs` and :mod:`fastopt._u32`,
:mod:`fastopt._jit`, :mod:`fastopt._launch` and this
generator): numba does not notice when a function that a cached one inlines changes, so a
changed source gives a new file instead of a stale cache. Files live in the kernel cache
directory: ``$FASTOPT_CACHE_DIR``, else ``$XDG_CACHE_HOME/fastopt`` (``~/.cache/fastopt``),
else a directory under the system's temporary one. Each is written atomically (concurrent
processes write the same text); older versions of a rule's file are removed.

The generated functions, for a rule with state arrays ``s1 ... sk``:

- ``unpack(h, param, base, stochastic)``: the float64 row ``h`` as the kernel's scalars: the
  gradient's scale, clip value and sign flag, the stores' rounding (``h[3]`` is the
  segment's random key, used when ``stochastic`` is not None; ``base`` is the offset of the
  kernel's element 0 inside its parameter) and the rule's named row, each rounded once to the
  compute type;
- ``<rule>_update(i, param, grad, s1, ..., sk, master, comp, scalars)``: element ``i``: load,
  the gradient preamble (scale, clip by value, maximize), the rule's update on values, store
  (see :mod:`fastopt._storage`; ``master`` and ``comp`` are None unless a low-precision
  parameter has a master copy or a compensation buffer);
- ``block``, ``serial``, ``parallel``: the CPU drivers of :mod:`fastopt._launch`;
- ``<rule>_values``, ``quantized_values``, ``quantized_block``, ``quantized_serial``,
  ``quantized_parallel``: the drivers of a step with 8-bit state (see
  :mod:`fastopt._quantized`), block by block: the new values into a scratch block, the
  parameter stored from it, each state array encoded with its block's new scale.

The CUDA kernels (:mod:`fastopt.cuda`) compile ``unpack`` and ``<rule>_update`` as device
functions, so the CPU and the GPU run the same generated element code.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import os
import sys
import tempfile
import textwrap
import threading
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from fastopt._launch import MatrixKernels, NormKernels, RuleKernels

if TYPE_CHECKING:
    from fastopt.rule import Rule

__all__ = [
    "RESERVED_NAMES",
    "LazyKernels",
    "cache_directory",
    "kernel_source",
    "kernels_of",
    "rule_named",
]

_RULES: dict[str, Rule] = {}
_BUILT: dict[str, RuleKernels] = {}
_SOURCES: dict[str, tuple[int, bytes]] = {}
_LOCK = threading.Lock()

# The drivers of an element function: a block over a slice, the serial walk over the segments,
# the parallel one over one contiguous chunk per thread (the update's, and a matrix step's
# direction pass with its output array).
_DRIVERS = """

@kernel
def {prefix}block(h, base, param, grad{arrays}, stochastic):
    # Unpacked before the loop: as far as LLVM knows, h could alias the arrays. Element i
    # of the slice is element base + i of its parameter.
    scalars = _unpack(h, param, base, stochastic)
    for i in range(param.size):
        {element}


@kernel
def {prefix}serial(bounds, hyper, param, grad{arrays}, stochastic):
    for s in range(bounds.size - 1):
        lo, hi = bounds[s], bounds[s + 1]
        {prefix}block(hyper[s], 0, param[lo:hi], grad[lo:hi]{segments}, stochastic)


@parallel_kernel
def {prefix}parallel(n_chunks, bounds, hyper, param, grad{arrays}, stochastic):
    n = param.size
    chunk = chunk_length(n, n_chunks)
    for c in prange(n_chunks):
        lo = min(c * chunk, n)
        hi = min(lo + chunk, n)
        s = first_segment(bounds, lo)
        while lo < hi:
            end = min(hi, bounds[s + 1])
            {prefix}block(
                hyper[s], lo - bounds[s], param[lo:end], grad[lo:end]{chunk_segments}, stochastic
            )
            lo = end
            s += 1
"""


def _drivers(prefix: str, names: list[str], element: str) -> str:
    """The drivers of ``element`` (a statement on index ``i``) over arrays ``names``."""
    return _DRIVERS.format(
        prefix=prefix,
        arrays="".join(f", {name}" for name in names),
        element=element,
        segments="".join(f", segment({name}, lo, hi)" for name in names),
        chunk_segments="".join(f", segment({name}, lo, end)" for name in names),
    )


# The drivers of an update with 8-bit state (see fastopt._quantized): block by block, the
# new values into a scratch block (``scratch[0]`` the parameter, ``scratch[k]`` state array
# k), then the parameter stored, then each state array: a quantized one encoded with its
# block's new scale, another stored. Chunks and segment pieces start at block boundaries of
# their parameter, so every block is one thread's, whatever the thread count.
_QUANTIZED_DRIVERS = """

def {snake}_values(i, param, grad{values_arrays}, scalars):
{preamble}
{values_body}


_values = elementwise({snake}_values)


@kernel
def quantized_values(param, grad{values_arrays}, scalars, scratch):
    # A function of its own: numba prunes the update's branches on an absent (None) array
    # only when that array is an argument.
    for j in range(param.size):
        ({targets}) = _values(j, param, grad{values_arrays}, scalars)
        scratch[0, j] = p
{keeps}


@kernel
def quantized_block(h, base, param, grad{arrays}, stochastic, scratch):
    # base, a multiple of BLOCK, is element 0's offset inside its parameter.
    n = param.size
    for lo in range(0, n, BLOCK):
        hi = min(lo + BLOCK, n)
        scalars = _unpack(h, param, base + lo, stochastic)
        param_ = param[lo:hi]
        grad_ = grad[lo:hi]
{views}
        quantized_values(param_, grad_{view_arguments}, scalars, scratch)
        for j in range(hi - lo):
            old_param = load_param(param_, master_, j)
            store_param(param_, master_, comp_, j, old_param, scratch[0, j], scalars[3])
{finishes}


@kernel
def quantized_serial(bounds, blocks, hyper, param, grad{arrays}, stochastic, scratch):
    for s in range(bounds.size - 1):
        lo, hi = bounds[s], bounds[s + 1]
        quantized_block(
            hyper[s], 0, param[lo:hi], grad[lo:hi]{serial_segments}, stochastic, scratch[0]
        )


@parallel_kernel
def quantized_parallel(n_chunks, bounds, blocks, hyper, param, grad{arrays}, stochastic, scratch):
    n = param.size
    chunk = chunk_length(n, n_chunks)
    for c in prange(n_chunks):
        lo = block_start(bounds, min(c * chunk, n))
        hi = block_start(bounds, min((c + 1) * chunk, n))
        s = first_segment(bounds, lo)
        while lo < hi:
            end = min(hi, bounds[s + 1])
            offset = lo - bounds[s]
            first_block = blocks[s] + offset // BLOCK
            quantized_block(
                hyper[s],
                offset,
                param[lo:end],
                grad[lo:end]{parallel_segments},
                stochastic,
                scratch[c],
            )
            lo = end
            s += 1
"""


def _quantized_drivers(snake: str, names: list[str], extra: list[str], values_body: str) -> str:
    """The 8-bit state drivers over state arrays ``names`` (then ``extra``: the transformed
    array, if any, and the precision arrays) and the values function they inline."""
    arrays = [*names, *extra]
    read = [*names, *(name for name in extra if name != "comp")]
    views = [f"{name}_ = block_of({name}, lo, hi)" for name in names]
    views += [f"{name}_ = segment({name}, lo, hi)" for name in extra]
    results = [f"new_{name}" for name in names]
    rows = enumerate(names, start=1)
    return _QUANTIZED_DRIVERS.format(
        snake=snake,
        preamble=_PREAMBLE,
        values_body=values_body,
        values_arrays="".join(f", {name}" for name in read),
        arrays="".join(f", {name}" for name in arrays),
        views=textwrap.indent("\n".join(views), " " * 8),
        targets=", ".join(["p", *results]) + ("," if not results else ""),
        view_arguments="".join(f", {name}_" for name in read),
        keeps="\n".join(f"        keep(scratch, {k}, j, new_{name})" for k, name in rows),
        finishes="\n".join(
            f"        finish({name}, lo, hi, scratch, {k}, scalars[3], {k})"
            for k, name in enumerate(names, start=1)
        ),
        serial_segments="".join(
            f", quantized_segment({name}, lo, hi, blocks[s])" for name in arrays
        ),
        parallel_segments="".join(
            f", quantized_segment({name}, lo, end, first_block)" for name in arrays
        ),
    )


# The gradient preamble of every element function, written into each (the CUDA device
# functions are compiled from them, and the simulator runs them as Python: no helper call).
_PREAMBLE = """    grad_scale, clip_value, maximize, rounding, row = scalars
    g = load(grad, i) * grad_scale
    # Comparisons, not min/max: NaN propagates and the loop vectorizes.
    g = clip_value if g > clip_value else g
    g = -clip_value if g < -clip_value else g
    if maximize:
        g = -g"""

# An element function on index ``i``: the gradient preamble, then the rule's function (the
# update, the norms' measure or the matrix step's direction) on the loaded values.
_ELEMENT = """

rule_{kind} = elementwise(RULE.{source})


def {snake}_{kind}(i, param, grad{state}, scalars):
{preamble}
{body}


_{kind} = elementwise({snake}_{kind})
"""


def _element(kind: str, source: str, snake: str, names: list[str], body: str) -> str:
    """The element function ``<snake>_<kind>`` of the rule's ``source`` over arrays ``names``."""
    state = "".join(f", {name}" for name in names)
    return _ELEMENT.format(
        kind=kind, source=source, snake=snake, state=state, preamble=_PREAMBLE, body=body
    )


_HEADER = '''"""Kernels of {name}, generated by fastopt._codegen from {module}; do not edit."""

import numpy as np
from numba import prange

from fastopt._codegen import rule_named
from fastopt._jit import elementwise, kernel, parallel_kernel, segment
from fastopt._launch import chunk_length, first_segment
from fastopt._quantized import BLOCK, block_of, block_start, finish, keep, quantized_segment
from fastopt._storage import compute_scalar, load, load_param, rounding_of, store, store_param

RULE = rule_named({key!r})
Row = RULE.row_type


def unpack(h, param, base, stochastic):
    return (
        compute_scalar(h[0], param),
        compute_scalar(h[1], param),
        h[2] != 0,
        rounding_of(h[3], base, stochastic),
        Row({fields}),
    )


_unpack = elementwise(unpack)
'''


_MEASURE = """

@kernel
def measure_block(h, param, grad{state}, master, lanes, out):
    # Lane j sums elements j, j + lanes, ... of the block (see fastopt._reduce).
    scalars = _unpack(h, param, 0, None)
{zeros}
    rows = param.size // lanes
    for r in range(rows):
        base = r * lanes
        for j in range(lanes):
            ({values},) = _measure(base + j, param, grad{state}, master, scalars)
{accumulate}
    base = rows * lanes
    for j in range(param.size - base):
        ({values},) = _measure(base + j, param, grad{state}, master, scalars)
{accumulate_tail}
{totals}

{drivers}"""

# The read pass's two drivers: the same loop over blocks, by one thread or by all.
_MEASURE_DRIVER = """

@{decorator}
def measure_{kind}(
    starts, stops, segment_of_block, hyper, param, grad{state}, master, lanes, out
):
    for b in {loop}(starts.size):
        lo, hi = starts[b], stops[b]
        measure_block(
            hyper[segment_of_block[b]],
            param[lo:hi],
            grad[lo:hi]{segments},
            segment(master, lo, hi),
            lanes,
            out[b],
        )
"""


def _measure_drivers(state: str, segments: str) -> str:
    return "".join(
        _MEASURE_DRIVER.format(
            decorator=decorator, kind=kind, loop=loop, state=state, segments=segments
        )
        for decorator, kind, loop in (
            ("kernel", "serial", "range"),
            ("parallel_kernel", "parallel", "prange"),
        )
    )


#: The array a matrix step's update reads its transformed element from (a driver argument
#: after the state arrays).
TRANSFORMED = "transformed"

#: The arrays after the state (and the transformed array) in the update's arguments: the
#: parameter's float32 master copy and its Kahan compensation buffer, each None when absent
#: (see fastopt._storage.store_param).
PRECISION = ("master", "comp")

_DIRECTION_STORE = "store(out, i, _direction(i, param, grad{state}, master, scalars), None, 0)"


def _template_names() -> frozenset[str]:
    """Every name the generated module's code uses (globals, functions, arguments, locals,
    the builtins it calls), from the templates rendered for a rule without state."""
    text = _HEADER.format(name="X", module="m", key="k", fields="")
    text += _element("update", "update", "x", list(PRECISION), _update_body_of([], ()))
    text += _drivers("", list(PRECISION), "_update(i, param, grad, master, comp, scalars)")
    text += _element("measure", "norms.measure", "x", ["master"], "    return (g,)")
    text += _MEASURE.format(
        state="",
        zeros="    acc0 = np.zeros(lanes)",
        values="x0",
        accumulate="            v = np.float64(x0)\n            acc0[j] += v * v",
        accumulate_tail="        v = np.float64(x0)\n        acc0[j] += v * v",
        totals="    out[0] = 0.0\n    for j in range(lanes):\n        out[0] += acc0[j]",
        drivers=_measure_drivers("", ""),
    )
    text += _element("direction", "matrix.direction", "x", ["master"], "    return g")
    text += _drivers("direction_", ["master", "out"], _DIRECTION_STORE.format(state=""))
    text += _quantized_drivers("x", [], list(PRECISION), "    return (p0,)")
    names = {TRANSFORMED}
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, (ast.FunctionDef, ast.alias)):
            names.add(node.asname or node.name if isinstance(node, ast.alias) else node.name)
    # Named after the rule: see Rule.
    return frozenset(names - {"x_update", "x_measure", "x_direction", "x_values"})


def rule_named(key: str) -> Rule:
    """The rule a generated module was made for (registered by :func:`kernels_of`)."""
    return _RULES[key]


def _key(rule: Rule) -> str:
    return f"{rule.update.__module__}.{rule.name}"


def _branches(rule: Rule, leaf) -> str:
    """One branch per absent/present combination of the optional state arrays, so that the
    inlined update sees a literal ``None`` for an absent one (numba prunes ``is None`` tests
    on constants and arguments only); ``leaf(present, indent)`` writes the lines of one."""
    names = rule.state_names

    def lines(position: int, present: tuple[bool, ...], indent: str) -> list[str]:
        if position == len(names):
            return leaf(present, indent)
        if not rule.state[position].optional:
            return lines(position + 1, (*present, True), indent)
        name = names[position]
        return [
            f"{indent}if {name} is None:",
            *lines(position + 1, (*present, False), indent + "    "),
            f"{indent}else:",
            *lines(position + 1, (*present, True), indent + "    "),
        ]

    return "\n".join(lines(0, (), "    "))


def _arguments(
    names: tuple[str, ...], present: tuple[bool, ...], transformed: bool = False, param: str = ""
) -> str:
    values = [f"load({n}, i)" if here else "None" for n, here in zip(names, present)]
    if transformed:
        values.append(f"load({TRANSFORMED}, i)")
    return ", ".join([param or "load_param(param, master, i)", "g", *values, "row"])


def _update_leaf(names: tuple[str, ...], transformed: bool):
    """The lines of one branch of the update: load, update, store (the parameter through
    its master copy or compensation, state array k in random slot k + 1)."""

    def leaf(present: tuple[bool, ...], indent: str) -> list[str]:
        results = [f"new_{n}" for n in names]
        targets = ", ".join(["p", *results]) + ("," if not results else "")
        arguments = _arguments(names, present, transformed, param="p0")
        out = [
            f"{indent}p0 = load_param(param, master, i)",
            f"{indent}({targets}) = rule_update({arguments})",
            f"{indent}store_param(param, master, comp, i, p0, p, rounding)",
        ]
        out += [
            f"{indent}store({n}, i, {r}, rounding, {slot})"
            for slot, (n, r, here) in enumerate(zip(names, results, present), start=1)
            if here
        ]
        return out

    return leaf


def _update_body_of(names: list[str], present: tuple[bool, ...]) -> str:
    """The update's body for a rule without optional state (the template names' walk)."""
    return "\n".join(_update_leaf(tuple(names), False)(present, "    "))


def _update_body(rule: Rule) -> str:
    """Load, update, store."""
    return _branches(rule, _update_leaf(rule.state_names, rule.matrix is not None))


#: Names a state array may not take (the state arrays become arguments of the generated
#: functions): every name the generated code uses.
RESERVED_NAMES = _template_names()


def _measure_source(rule: Rule, state: str, segments: str) -> str:
    """The norms' read pass: the measured values' per-block sums of squares, in float64."""
    count = len(rule.norms.names)
    values = ", ".join(f"x{k}" for k in range(count))
    accumulate = "\n".join(f"v = np.float64(x{k})\nacc{k}[j] += v * v" for k in range(count))
    # After a matrix step the measure reads its result, as the update does.
    transformed = rule.matrix is not None
    measure = _element(
        "measure",
        "norms.measure",
        rule.snake_name,
        [*rule.state_names, *([TRANSFORMED] if transformed else []), "master"],
        _branches(
            rule,
            lambda present, indent: [
                f"{indent}return rule_measure({_arguments(rule.state_names, present, transformed)})"
            ],
        ),
    )
    return measure + _MEASURE.format(
        state=state,
        zeros="\n".join(f"    acc{k} = np.zeros(lanes)" for k in range(count)),
        values=values,
        accumulate=textwrap.indent(accumulate, " " * 12),
        accumulate_tail=textwrap.indent(accumulate, " " * 8),
        totals="\n".join(
            f"    out[{k}] = 0.0\n    for j in range(lanes):\n        out[{k}] += acc{k}[j]"
            for k in range(count)
        ),
        drivers=_measure_drivers(state, segments),
    )


def kernel_source(rule: Rule) -> str:
    """The text of ``rule``'s generated kernel module."""
    names = list(rule.state_names)
    state = "".join(f", {name}" for name in names)
    arrays = [*names, *([TRANSFORMED] if rule.matrix is not None else []), *PRECISION]
    fields = ", ".join(
        f"h[{4 + k}] != 0" if name in rule.flags else f"compute_scalar(h[{4 + k}], param)"
        for k, name in enumerate(rule.all_fields)
    )
    segments = "".join(f", segment({name}, lo, hi)" for name in names)
    text = _HEADER.format(
        name=rule.name, module=rule.update.__module__, key=_key(rule), fields=fields
    )
    text += _element("update", "update", rule.snake_name, arrays, _update_body(rule))
    listed = "".join(f", {name}" for name in arrays)
    text += _drivers("", arrays, f"_update(i, param, grad{listed}, scalars)")
    values = _branches(
        rule,
        lambda present, indent: [
            f"{indent}return rule_update("
            f"{_arguments(rule.state_names, present, rule.matrix is not None)})"
        ],
    )
    text += _quantized_drivers(rule.snake_name, names, arrays[len(names) :], values)
    if rule.norms is not None:
        if rule.matrix is None:
            text += _measure_source(rule, state, segments)
        else:
            read = f"{state}, {TRANSFORMED}"
            text += _measure_source(rule, read, f"{segments}, segment({TRANSFORMED}, lo, hi)")
    if rule.matrix is not None:
        body = _branches(
            rule,
            lambda present, indent: [
                f"{indent}return rule_direction({_arguments(rule.state_names, present)})"
            ],
        )
        text += _element("direction", "matrix.direction", rule.snake_name, [*names, "master"], body)
        text += _drivers(
            "direction_", [*names, "master", "out"], _DIRECTION_STORE.format(state=state)
        )
    return text


def _source_of(module_name: str) -> bytes:
    """A module's source (its code objects where it has no source file), read once per
    change of the file: every rule's fingerprint hashes the shared modules again."""
    module = importlib.import_module(module_name)
    path = getattr(module, "__file__", None)
    try:
        stamp = os.stat(path).st_mtime_ns if path else None
    except OSError:
        stamp = None
    if stamp is None:  # frozen, interactive: its code objects
        return repr([getattr(value, "__code__", None) for value in vars(module).values()]).encode()
    cached = _SOURCES.get(path)
    if cached is None or cached[0] != stamp:
        cached = _SOURCES[path] = (stamp, Path(path).read_bytes())
    return cached[1]


def _modules_called(function: object, modules: set[str], seen: set[object]) -> None:
    """Add the modules of ``function`` and of everything it calls by a global name, through
    numba-compiled helpers and other functions transitively (a global module, called as
    ``helper.f(...)``, counts whole)."""
    function = getattr(function, "py_func", function)
    code = getattr(function, "__code__", None)
    if code is None or code in seen:
        return
    seen.add(code)
    if getattr(function, "__module__", None):
        modules.add(function.__module__)
    namespace = getattr(function, "__globals__", {})
    for name in code.co_names:
        value = namespace.get(name)
        if isinstance(value, ModuleType):
            modules.add(value.__name__)
        elif callable(value):
            _modules_called(value, modules, seen)


def _fingerprint(rule: Rule, text: str) -> str:
    """A hash of the generated text and of every source the kernels are compiled from: the
    rule's module and the modules of what its update calls, the storage layer, the numba
    options, the drivers' helpers and this generator. numba's disk cache is keyed on the
    generated file alone, so a change to any of them must give a new file."""
    modules = {"fastopt._storage", "fastopt._codecs", "fastopt._u32", "fastopt._jit"}
    modules.add("fastopt._quantized")
    modules |= {"fastopt._launch", __name__}
    seen: set[object] = set()
    _modules_called(rule.update, modules, seen)
    if rule.norms is not None:
        _modules_called(rule.norms.measure, modules, seen)
    if rule.matrix is not None:
        _modules_called(rule.matrix.direction, modules, seen)
    modules.add(rule.update.__module__)
    digest = hashlib.sha256(text.encode())
    for name in sorted(modules):
        digest.update(_source_of(name))
    return digest.hexdigest()[:16]


def cache_directory() -> Path:
    """The directory the generated kernel modules are written to (made if needed)."""
    configured = os.environ.get("FASTOPT_CACHE_DIR")
    candidates = [Path(configured)] if configured else []
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    candidates.append(Path(base) / "fastopt")
    candidates.append(Path(tempfile.gettempdir()) / f"fastopt-{os.getuid()}")
    for directory in candidates:
        path = directory / "kernels"
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(path, os.W_OK):
            return path
    raise OSError(f"no writable directory for fastopt's kernels among {candidates}")


def _write(path: Path, text: str) -> None:
    if path.exists() and path.read_text() == text:
        return
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
    # Older versions of this rule's module, and what numba cached for them.
    for old in path.parent.glob(f"{path.stem.rsplit('_', 1)[0]}_*.py"):
        if old != path:
            old.unlink(missing_ok=True)
            for cached in (path.parent / "__pycache__").glob(f"{old.stem}.*"):
                cached.unlink(missing_ok=True)


def _import(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class LazyKernels:
    """A rule's kernels, generated and imported on first use (``import fastopt`` then costs
    nothing for the rules a program does not run). As a class attribute it is a descriptor
    that gives the :class:`~fastopt._launch.RuleKernels` themselves."""

    __slots__ = ("_kernels", "_name", "rule")

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self._kernels: RuleKernels | None = None
        self._name: str | None = None

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    def get(self) -> RuleKernels:
        """The kernels (generated, written and imported the first time)."""
        kernels = self._kernels
        if kernels is None:
            kernels = self._kernels = kernels_of(self.rule)
        return kernels

    def __get__(self, instance: object, owner: type | None = None) -> RuleKernels:
        kernels = self.get()
        if owner is not None and self._name is not None and vars(owner).get(self._name) is self:
            # From now on a plain class attribute: a step reads it without this call.
            setattr(owner, self._name, kernels)
        return kernels


def kernels_of(rule: Rule) -> RuleKernels:
    """The compiled-on-demand kernels of ``rule`` (its generated module, imported once)."""
    key = _key(rule)
    with _LOCK:
        built = _BUILT.get(key)
        if built is not None and _RULES[key] is rule:
            return built
        _RULES[key] = rule
        text = kernel_source(rule)
        stem = f"{key.replace('.', '__')}_{_fingerprint(rule, text)}"
        path = cache_directory() / f"{stem}.py"
        _write(path, text)
        module = _import(path, f"fastopt._kernels_{stem}")
        norms = None
        if rule.norms is not None:
            norms = NormKernels(
                serial=module.measure_serial,
                parallel=module.measure_parallel,
                measure=getattr(module, f"{rule.snake_name}_measure"),
                declaration=rule.norms,
                row_type=rule.row_type,
            )
        matrix = None
        if rule.matrix is not None:
            matrix = MatrixKernels(
                serial=module.direction_serial,
                parallel=module.direction_parallel,
                direction=getattr(module, f"{rule.snake_name}_direction"),
                declaration=rule.matrix,
                row_type=rule.row_type,
            )
        built = _BUILT[key] = RuleKernels(
            serial=module.serial,
            parallel=module.parallel,
            quantized_serial=module.quantized_serial,
            quantized_parallel=module.quantized_parallel,
            update=getattr(module, f"{rule.snake_name}_update"),
            unpack=module.unpack,
            norms=norms,
            matrix=matrix,
            values=getattr(module, f"{rule.snake_name}_values"),
        )
        return built
