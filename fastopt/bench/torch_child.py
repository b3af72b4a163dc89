"""torch.optim timings, taken in a child process that imports torch and nothing of numba's.

torch and numba each bring an OpenMP runtime. In one process, torch's worker threads keep
spinning after each torch operation and take the cores from the next numba kernel (about
1.5x slower on a 2-core machine), and numba's threads do the same to torch. So the parent
never imports torch: it starts ``python -m fastopt.bench.torch_child``, sends the requests
as JSON on stdin and reads one JSON line per result from stdout. torch uses the same number
of threads as fastopt.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

from fastopt.bench._subprocess import child_env
from fastopt.bench.cases import RULES, many_tensor_sizes
from fastopt.bench.progress import Progress
from fastopt.bench.runner import TimingPolicy, time_call

__all__ = [
    "INSTALL_COMMANDS",
    "ISOLATION",
    "MISSING_NOTE",
    "install_hint",
    "make_torch_step",
    "run",
    "torch_installed",
    "twin_class",
    "twin_note",
]

ISOLATION = "separate process (torch and numba never share one)"
#: The torch description's note when torch cannot be imported.
MISSING_NOTE = "torch is not installed"
#: How to add torch: the package's ``torch`` extra, and the CPU-only build of the torch
#: version the project is tested with (a plain install from the package index is a CUDA
#: build of several GB on Linux).
INSTALL_COMMANDS: tuple[str, str] = (
    'pip install "fastopt[torch]"',
    "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu",
)


def install_hint(markdown: bool = False) -> str:
    """The commands that install torch, as a phrase (in backticks for Markdown).

    Examples
    --------
    >>> from fastopt.bench.torch_child import install_hint
    >>> install_hint().startswith('pip install "fastopt[torch]" or, for the CPU-only build, ')
    True
    """
    extra, cpu = (f"`{c}`" if markdown else c for c in INSTALL_COMMANDS)
    return f"{extra} or, for the CPU-only build, {cpu}"


def torch_installed() -> bool:
    """Whether torch can be imported (checked without importing it)."""
    return importlib.util.find_spec("torch") is not None


def _unavailable(requests: Sequence[dict[str, Any]], note: str) -> list[dict[str, Any]]:
    return [{"status": "unavailable", "note": note} for _ in requests]


def run(
    requests: Sequence[dict[str, Any]],
    threads: int,
    policy: TimingPolicy,
    seed: int,
    progress: Progress,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Time ``requests`` with torch in a child process; one result per request, in order.

    Returns the results (``status`` ``"ok"`` with the timing, or ``"unavailable"`` with a
    note: torch missing, an option torch lacks, the child failing) and a description of the
    torch run (version, threads, isolation).
    """
    info: dict[str, Any] = {"requested": True, "isolation": ISOLATION, "threads": threads}
    if not torch_installed():
        progress.advance("torch not installed", len(requests))
        info.update(available=False, note=MISSING_NOTE)
        return _unavailable(requests, "torch not installed"), info
    message = json.dumps(
        {"requests": list(requests), "threads": threads, "policy": asdict(policy), "seed": seed}
    )
    # stderr goes to a file: a chatty child must not block on a full pipe while stdout is read.
    with tempfile.TemporaryFile("w+") as errors:
        process = subprocess.Popen(
            [sys.executable, "-m", "fastopt.bench.torch_child"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            env=child_env(),
        )
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(message)
        process.stdin.close()
        labels = [_label(request) for request in requests]
        progress.advance(labels[0])
        advanced = 1
        results: list[dict[str, Any]] = []
        for line in process.stdout:
            record = json.loads(line)
            if "torch" in record:
                info.update(available=True, **record["torch"])
                continue
            results.append(record)
            if len(results) < len(requests):
                progress.advance(labels[len(results)])
                advanced += 1
        failed = process.wait() != 0 or len(results) != len(requests)
        errors.seek(0)
        last = errors.read().strip().splitlines()[-1:] or ["no message"]
    if failed:
        note = f"torch run failed: {last[0]}"
        info.update(available=False, note=note)
        if advanced < len(requests):
            progress.advance("torch failed", len(requests) - advanced)
        results += _unavailable(requests[len(results) :], note)
    return results, info


def _label(request: dict[str, Any]) -> str:
    return f"{request['rule']} {request['dtype']} n={request['size']} {request['implementation']}"


def make_torch_step(
    rule: str, dtype: str, sizes: Sequence[int], flavour: str, generator: Any = None
) -> Callable[[], object]:
    """``optimizer.step`` of the ``torch.optim`` twin of ``rule`` over tensors of ``sizes``.

    ``flavour`` is ``"fused"`` or ``"foreach"``; the gradients are set. Imports torch: call
    it only in a process that runs no numba kernels (see the module docstring).

    Raises
    ------
    RuntimeError, TypeError, ValueError
        When torch has no such implementation (RMSprop, Adamax and NAdam have no fused
        kernel) or no such class.
    """
    import torch

    case = RULES[rule]
    optimizer_class = twin_class(case.torch_class)
    flags = {flavour: True}
    if flavour not in inspect.signature(optimizer_class).parameters:
        if flavour != "foreach":
            where = (
                case.torch_class if "." in case.torch_class else f"torch.optim.{case.torch_class}"
            )
            raise TypeError(f"{where} has no {flavour} implementation")
        flags = {}  # a class without foreach (Muon, a reference package's): its own loop
    torch_dtype = getattr(torch, dtype)
    params = []
    for n in sizes:
        shape = case.shape(n)
        param = torch.randn(shape, dtype=torch_dtype, generator=generator)
        param.grad = torch.randn(shape, dtype=torch_dtype, generator=generator)
        params.append(param)
    optimizer = optimizer_class(params, **case.torch_options, **flags)
    if hasattr(optimizer, "train"):
        optimizer.train()  # Schedule-Free's classes step in training mode only
    return optimizer.step


def twin_class(name: str) -> type:
    """The torch class a case is compared with: ``torch.optim.<name>``, or for a rule torch
    lacks its reference package's class, named ``"package.Class"``.

    Raises
    ------
    ValueError
        When there is no such class (or package).
    """
    import torch

    module_name, _, class_name = name.rpartition(".")
    if not module_name:
        found = getattr(torch.optim, name, None)
        if found is None:
            raise ValueError(f"torch {torch.__version__} has no torch.optim.{name}")
        return found
    if importlib.util.find_spec(module_name) is None:
        raise ValueError(f"{module_name} is not installed (pip install 'fastopt[references]')")
    found = getattr(importlib.import_module(module_name), class_name, None)
    if found is None:
        raise ValueError(f"{module_name} has no {class_name}")
    return found


def twin_note(name: str, flavour: str) -> str:
    """How a torch-side row was run, when it is not a torch.optim class's own flavour."""
    takes_flavour = flavour in inspect.signature(twin_class(name)).parameters
    if "." not in name:
        return "" if takes_flavour else f"torch.optim.{name} (its per-tensor loop)"
    how = f"its {flavour} path" if takes_flavour else "its per-tensor loop"
    return f"{name} ({how})"


def _step_for(request: dict[str, Any], generator: Any) -> Callable[[], object]:
    many = request["case"] == "many_tensors"
    sizes = many_tensor_sizes() if many else [request["size"]]
    flavour = request["implementation"].removeprefix("torch-")
    return make_torch_step(request["rule"], request["dtype"], sizes, flavour, generator)


def _serve() -> None:
    import torch

    message = json.load(sys.stdin)
    torch.set_num_threads(message["threads"])
    policy = TimingPolicy(**message["policy"])
    generator = torch.Generator().manual_seed(message["seed"])
    header = {"version": torch.__version__, "threads": torch.get_num_threads()}
    print(json.dumps({"torch": header}), flush=True)
    for request in message["requests"]:
        try:
            step = _step_for(request, generator)
            step()
        except (RuntimeError, ValueError, TypeError) as error:
            # e.g. no fused kernel for this optimizer or dtype in this torch version
            result = {"status": "unavailable", "note": f"{type(error).__name__}: {error}"}
        else:
            note = twin_note(RULES[request["rule"]].torch_class, request["implementation"][6:])
            result = {"status": "ok", "note": note, **time_call(step, policy).as_dict()}
        # Free this case's tensors before the next case allocates its own.
        step = None
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    _serve()
