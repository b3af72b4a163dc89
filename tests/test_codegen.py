"""The generated kernel modules of declared rules (:mod:`fastopt._codegen`).

What is promised:

- **Fresh.** A rule's kernels are imported from a file in the kernel cache directory that
  holds exactly :func:`fastopt._codegen.kernel_source` of the rule, named after the rule and a
  fingerprint of that text and of the sources it is compiled from. A changed rule gets a new
  file, the old one and what numba cached for it are removed, and the results follow the
  new update.
- **Where.** The directory is ``$FASTOPT_CACHE_DIR``, else ``$XDG_CACHE_HOME/fastopt`` (or
  ``~/.cache/fastopt``), else one under the system's temporary directory: the first one that
  can be made and written, with ``kernels/`` in it.
- **Cached across processes.** The generated functions are ordinary module-level functions,
  so numba caches them on disk next to the module, and a second process loads them.
- **Vectorized.** The element loop the CPU drivers run compiles to SIMD instructions.

Rules written here go to temporary directories (``FASTOPT_CACHE_DIR`` is set per test), never
to the user's cache.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numba
import numpy as np
import pytest
from numba.core import config, types

import fastopt
from fastopt._codegen import _fingerprint, _key, cache_directory, kernel_source
from fastopt._declared import DeclaredOptimizer
from fastopt._jit import JIT_OPTIONS
from fastopt.rule import build

REPO = Path(__file__).resolve().parent.parent


def _declared_classes() -> list[type[DeclaredOptimizer]]:
    """One class per declared rule of fastopt (AdamW shares Adam's rule and kernels)."""
    classes: dict[str, type[DeclaredOptimizer]] = {}
    for value in vars(fastopt).values():
        if isinstance(value, type) and issubclass(value, DeclaredOptimizer):
            classes.setdefault(value._rule.name, value)
    return list(classes.values())


declared = pytest.mark.parametrize(
    "rule_class", _declared_classes(), ids=lambda cls: cls._rule.name
)


def module_file(kernels) -> Path:
    """The file a rule's kernels were imported from."""
    return Path(inspect.getsourcefile(kernels.serial.py_func))


def numba_cache_files(module: Path) -> list[Path]:
    """What numba cached for a generated module: ``__pycache__/<stem>.*.nbi`` and ``.nbc``."""
    if config.CACHE_DIR:
        pytest.skip("NUMBA_CACHE_DIR is set: numba caches away from the generated modules")
    return sorted((module.parent / "__pycache__").glob(f"{module.stem}.*"))


# ---------------------------------------------------------------------- rules written here

RULE_SOURCE = '''\
"""A one-line rule, written by tests/test_codegen.py."""

from fastopt._checks import check_nonnegative
from fastopt.rule import Hyperparameter, Rule
{imports}

def update(p, g, h):
    return ({update},)


RULE = Rule(
    name="Descent",
    update=update,
    fields=("lr",),
    row=lambda group, step, created, scalars: (group["lr"],),
    hyperparameters=(Hyperparameter("lr", 0.5, check_nonnegative),),
    maximize=None,
)
'''

HELPER_SOURCE = '''\
"""A helper the rule's update calls, written by tests/test_codegen.py."""

from fastopt._jit import elementwise


@elementwise
def direction(g):
    return {body}
'''


class Modules:
    """Python modules written into a temporary directory on ``sys.path`` and imported from
    there (again, after a rewrite); rules built meanwhile go to a temporary cache."""

    def __init__(self, directory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.directory = directory
        self.names: list[str] = []
        directory.mkdir()
        monkeypatch.syspath_prepend(str(directory))
        # No .pyc: a rewrite within the same second must not be served from a stale one.
        monkeypatch.setattr(sys, "dont_write_bytecode", True)

    def write(self, name: str, text: str):
        """Write module ``name`` and import it (reload it if it was imported before)."""
        (self.directory / f"{name}.py").write_text(text)
        importlib.invalidate_caches()
        if name in sys.modules:
            return importlib.reload(sys.modules[name])
        self.names.append(name)
        return importlib.import_module(name)

    def rule(self, name: str, update: str, imports: str = ""):
        """A rule module whose update returns ``(<update>,)``."""
        return self.write(name, RULE_SOURCE.format(update=update, imports=imports))


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A fresh kernel cache directory for this test (``FASTOPT_CACHE_DIR``)."""
    monkeypatch.setenv("FASTOPT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "kernels"


@pytest.fixture
def modules(tmp_path, monkeypatch, cache):
    made = Modules(tmp_path / "src", monkeypatch)
    yield made
    for name in made.names:
        sys.modules.pop(name, None)


def step_ones(built, size: int = 4) -> np.ndarray:
    """One step from ones with a gradient of ones, default hyperparameters (lr=0.5)."""
    param = np.ones(size)
    built.optimizer(param).step(np.ones(size))
    return param


# ---------------------------------------------------------------------- (a) fresh


@declared
def test_kernels_come_from_the_current_generated_source(rule_class):
    """Every declared rule's kernels (drivers, element update and unpack) were imported from
    one file in the kernel cache directory that holds exactly ``kernel_source(rule)`` and is
    named ``<module>_<Rule>_<fingerprint>.py``."""
    rule, kernels = rule_class._rule, rule_class._kernels
    path = module_file(kernels)
    text = kernel_source(rule)
    assert path.read_text() == text
    assert path.name == f"{_key(rule).replace('.', '__')}_{_fingerprint(rule, text)}.py"
    assert path.parent == cache_directory()
    for function in (kernels.parallel.py_func, kernels.update, kernels.unpack):
        assert Path(inspect.getsourcefile(function)) == path
    assert sys.modules[f"fastopt._kernels_{path.stem}"].__file__ == str(path)


# ---------------------------------------------------------------------- (b) a changed rule


def test_a_changed_rule_gets_a_new_module_and_the_old_one_goes(modules, cache):
    """Rewriting a rule's module (a different update, same declaration) gives a new file:
    the generated text is the same, the fingerprint of the sources is not. The old file and
    numba's cache of it are removed, and the results follow the new update. Rebuilding an
    unchanged rule keeps its file and numba's cache."""
    first = build(modules.rule("changing_rule", "p - h.lr * g").RULE)
    assert step_ones(first).tolist() == [0.5] * 4
    old = module_file(first.kernels)
    assert old.parent == cache
    assert numba_cache_files(old), "numba cached the first version's kernels"

    same = build(modules.rule("changing_rule", "p - h.lr * g").RULE)
    assert module_file(same.kernels) == old
    assert numba_cache_files(old)

    second = build(modules.rule("changing_rule", "p - h.lr * (g + g)").RULE)
    new = module_file(second.kernels)
    assert kernel_source(second.rule) == kernel_source(first.rule)
    assert new != old and new.exists()
    assert not old.exists(), "the old version's module is left behind"
    assert numba_cache_files(old) == [], "numba's cache of the old version is left behind"
    assert step_ones(second).tolist() == [0.0] * 4


# How an update may reach a compiled helper in another module (the helper module's name is
# {helper}): what the rule module imports, and the update's expression.
HELPER_CALLS = {
    "imported": ("from {helper} import direction\n", "p - h.lr * direction(g)"),
    "module-attribute": ("import {helper}\n", "p - h.lr * {helper}.direction(g)"),
    "through-a-local-function": (
        "from fastopt._jit import elementwise\n"
        "from {helper} import direction\n\n\n"
        "@elementwise\n"
        "def local_direction(g):\n"
        "    return direction(g)\n",
        "p - h.lr * local_direction(g)",
    ),
}


@pytest.mark.parametrize(
    ("imports", "update"),
    [pytest.param(*HELPER_CALLS[kind], id=kind) for kind in HELPER_CALLS],
)
def test_a_changed_helper_of_the_update_gets_a_new_module(modules, imports, update, request):
    """The update may call compiled helpers from other modules (Adamax's ``maximum``),
    directly, as a module's attribute or through a function of its own module: a change to
    such a helper must give a new file too, and results that follow it (numba's disk cache
    is keyed on the generated file alone, so the same file would serve the old code)."""
    helper = f"codegen_helper_{request.node.callspec.id.replace('-', '_')}"
    rule_module = f"helped_rule_{request.node.callspec.id.replace('-', '_')}"
    imports, update = imports.format(helper=helper), update.format(helper=helper)
    modules.write(helper, HELPER_SOURCE.format(body="g"))
    first = build(modules.rule(rule_module, update, imports).RULE)
    assert step_ones(first).tolist() == [0.5] * 4

    modules.write(helper, HELPER_SOURCE.format(body="g + g"))
    second = build(modules.rule(rule_module, update, imports).RULE)
    assert step_ones(second).tolist() == [0.0] * 4
    assert module_file(second.kernels) != module_file(first.kernels)


# ---------------------------------------------------------------------- (c) the directory


def test_fastopt_cache_dir_is_honoured(modules, cache):
    """With ``FASTOPT_CACHE_DIR`` set, ``cache_directory()`` is its ``kernels/`` (made on
    demand) and rules built then write their modules there."""
    assert cache_directory() == cache
    assert cache.is_dir()
    built = build(modules.rule("placed_rule", "p - h.lr * g").RULE)
    assert module_file(built.kernels).parent == cache


@pytest.fixture
def candidates(tmp_path, monkeypatch):
    """The three candidate directories, each under ``tmp_path``: ``FASTOPT_CACHE_DIR``, the
    XDG cache and the temporary directory (``tempfile.tempdir``)."""
    fastopt_dir, xdg, temporary = tmp_path / "fastopt-dir", tmp_path / "xdg", tmp_path / "tmp"
    monkeypatch.setenv("FASTOPT_CACHE_DIR", str(fastopt_dir))
    monkeypatch.setenv("XDG_CACHE_HOME", str(xdg))
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    return {
        "fastopt": fastopt_dir / "kernels",
        "xdg": xdg / "fastopt" / "kernels",
        "temporary": temporary / f"fastopt-{os.getuid()}" / "kernels",
    }


def unusable(path: Path) -> Path:
    """A directory path that cannot be made: its parent is a regular file (even for root)."""
    path.parent.parent.mkdir(parents=True, exist_ok=True)
    path.parent.write_text("not a directory")
    return path


def test_cache_directory_falls_back_in_order(candidates, monkeypatch, tmp_path):
    """Each candidate that cannot be made is passed over for the next: ``FASTOPT_CACHE_DIR``,
    then the XDG cache, then the temporary directory; none at all is an ``OSError``."""
    assert cache_directory() == candidates["fastopt"]

    monkeypatch.setenv("FASTOPT_CACHE_DIR", str(unusable(tmp_path / "file" / "cache")))
    assert cache_directory() == candidates["xdg"]

    monkeypatch.setenv("XDG_CACHE_HOME", str(unusable(tmp_path / "file2" / "xdg")))
    assert cache_directory() == candidates["temporary"]

    monkeypatch.setattr(tempfile, "tempdir", str(unusable(tmp_path / "file3" / "tmp")))
    with pytest.raises(OSError, match="no writable directory"):
        cache_directory()


def test_cache_directory_defaults_to_the_home_cache(candidates, monkeypatch, tmp_path):
    """Without either variable, the directory is ``~/.cache/fastopt/kernels``."""
    monkeypatch.delenv("FASTOPT_CACHE_DIR")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_directory() == tmp_path / "home" / ".cache" / "fastopt" / "kernels"


@pytest.mark.parametrize("made", [False, True], ids=["missing", "read-only-kernels"])
def test_read_only_cache_dir_falls_back(candidates, monkeypatch, tmp_path, made):
    """A ``FASTOPT_CACHE_DIR`` under a read-only directory, or whose ``kernels/`` is
    read-only, is passed over for the next candidate."""
    read_only = tmp_path / "read-only"
    (read_only / "cache" / "kernels").mkdir(parents=True)
    target = read_only / "cache" if made else read_only / "new"
    locked = target / "kernels" if made else read_only
    locked.chmod(0o555)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("permissions do not restrict this user (root): chmod has no effect")
        monkeypatch.setenv("FASTOPT_CACHE_DIR", str(target))
        assert cache_directory() == candidates["xdg"]
    finally:
        locked.chmod(0o755)


# ---------------------------------------------------------------------- (d) across processes

STEP_SCRIPT = """
import numpy as np, fastopt
w = np.zeros(3, dtype=np.float32)
fastopt.Adamax(w, lr=0.1).step(np.ones(3, dtype=np.float32))
print("result", w.tolist())
"""


def run_step(cache_dir: Path, **environment: str) -> subprocess.CompletedProcess:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("NUMBA_CACHE_DIR", "NUMBA_DISABLE_JIT", "NUMBA_DEBUG_CACHE")
    }
    env.update(FASTOPT_CACHE_DIR=str(cache_dir), **environment)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run(
        [sys.executable, "-c", STEP_SCRIPT],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )


@pytest.mark.slow
def test_compiled_kernels_are_reused_by_the_next_process(tmp_path):
    """A process that steps ``fastopt.Adamax`` on float32 leaves numba's index and data files
    beside the generated module; the next process with the same cache directory loads the
    compiled driver from them (numba reports it with ``NUMBA_DEBUG_CACHE=1``) instead of
    compiling it again, and computes the same result."""
    first = run_step(tmp_path)
    (module,) = (tmp_path / "kernels").glob("fastopt__rules__adamax__Adamax_*.py")
    index = [path for path in numba_cache_files(module) if path.suffix == ".nbi"]
    assert index, f"no numba index beside {module.name}"

    second = run_step(tmp_path, NUMBA_DEBUG_CACHE="1")
    output = second.stdout + second.stderr
    ours = [line for line in output.splitlines() if module.stem in line]
    assert any(line.startswith("[cache] data loaded from") for line in ours), output
    assert not any(line.startswith("[cache] data saved to") for line in ours), output
    assert first.stdout.splitlines()[-1] == second.stdout.splitlines()[-1]


# ---------------------------------------------------------------------- (e) vectorized

_VECTOR_ARITHMETIC = re.compile(r"= (?:fadd|fsub|fmul|fdiv|fneg)\b[^<\n]*<(\d+) x (float|double)>")


def vector_lanes(llvm_ir: str, element: str) -> list[int]:
    """The lane counts of the SIMD floating-point arithmetic in LLVM IR (``<8 x float>``)."""
    return [int(lanes) for lanes, kind in _VECTOR_ARITHMETIC.findall(llvm_ir) if kind == element]


def fresh_llvm(function, signature) -> str:
    """The optimized LLVM IR of ``function`` compiled with fastopt's options, no disk cache
    (numba cannot inspect code it loaded from its cache)."""
    options = {key: value for key, value in JIT_OPTIONS.items() if key != "cache"}
    dispatcher = numba.njit(**options)(function)
    dispatcher.compile(signature)
    return dispatcher.inspect_llvm(signature)


def running_sum(x):
    """A loop that cannot vectorize: each element depends on the one before (a float sum is
    not reassociated without fast-math)."""
    total = x.dtype.type(0)
    for i in range(x.size):
        total = total + x[i]
        x[i] = total


ELEMENT = {np.float32: "float", np.float64: "double"}


def test_a_loop_that_cannot_vectorize_has_no_vector_arithmetic():
    """The check below means something: a scalar loop has no SIMD arithmetic at all."""
    array = types.Array(types.float32, 1, "C")
    assert vector_lanes(fresh_llvm(running_sum, (array,)), "float") == []


# How the arrays of a block are stored: (parameter, gradient, state, master copy) kernel
# dtypes (None: absent), whether stores round stochastically, and the compute type.
STORAGE = {
    "float32": (np.float32, np.float32, np.float32, None, False, np.float32),
    "float64": (np.float64, np.float64, np.float64, None, False, np.float64),
    "bf16-master": (np.uint16, np.uint16, np.float32, np.float32, False, np.float32),
    "bf16-stochastic": (np.uint16, np.float32, np.uint16, None, True, np.float32),
    "f16-params": (np.int16, np.int16, np.float32, None, False, np.float32),
}


# The 16-bit formats are the same loads and stores whatever the rule: checked on rules with
# two state arrays, a host scalar and the norms' read pass.
SIXTEEN_BIT_RULES = {"Adam", "NAdam", "Lamb"}


@pytest.mark.parametrize(
    ("rule_class", "storage"),
    [
        pytest.param(cls, storage, id=f"{storage}-{cls._rule.name}")
        for storage in STORAGE
        for cls in _declared_classes()
        if storage in ("float32", "float64") or cls._rule.name in SIXTEEN_BIT_RULES
    ],
)
def test_generated_cpu_loop_vectorizes(rule_class, storage):
    """The loop that a rule's serial and parallel drivers run over each segment (the
    generated ``block``, with the update inlined) compiles to SIMD arithmetic on 4 or more
    float32 lanes (2 or more float64), with every state array and with the optional ones
    absent (``None``, pruned at compile time), for every storage format: the 16-bit ones
    decoded and rounded (to nearest or stochastically) in registers."""
    rule = rule_class._rule
    block = rule_class._kernels.serial.py_func.__globals__["block"]
    param_type, grad_type, state_type, master_type, stochastic, compute = STORAGE[storage]

    def array(dtype):
        return (
            types.none if dtype is None else types.Array(numba.from_dtype(np.dtype(dtype)), 1, "C")
        )

    row = types.Array(types.float64, 1, "C")
    layouts = {tuple(True for _ in rule.state), tuple(not s.optional for s in rule.state)}
    for present in sorted(layouts):
        state = [array(state_type) if here else types.none for here in present]
        if rule.matrix is not None:  # the transformed directions the update reads
            state.append(array(compute))
        precision = (array(master_type), types.none, types.boolean if stochastic else types.none)
        signature = (row, types.int64, array(param_type), array(grad_type), *state, *precision)
        lanes = vector_lanes(fresh_llvm(block.py_func, signature), ELEMENT[compute])
        assert max(lanes, default=0) >= (4 if compute == np.float32 else 2), (
            f"{rule.name} with state {present}: no SIMD arithmetic"
        )
