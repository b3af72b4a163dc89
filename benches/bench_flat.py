"""One launch over a flat buffer against one per array, and fastopt.torch against torch's Adam.

Two comparisons, both timed by one run of this script:

1. ``fastopt.Adam`` over many float32 arrays (200 by default, sizes spread log-uniformly,
   2^20 elements in all): ``step()`` over a :class:`fastopt.FlatParams` (one launch) against
   ``step(grads)`` over the same arrays held separately (one launch per array).
2. A model with at least 100 parameter tensors (an MLP of 64 linear layers: 128 tensors,
   about 2^20 parameters): ``step()`` of ``fastopt.torch.Adam`` against
   ``torch.optim.Adam(fused=True)`` and ``torch.optim.Adam(foreach=True)``, on fixed
   gradients (the optimizer step alone).

Two OpenMP runtimes: torch and numba each keep a thread pool, and an idle pool that
spin-waits steals cores from the other. So every measurement runs in a process of its own:
part 1 without torch; torch's optimizers without fastopt; the adapter (which needs both) with
``OMP_WAIT_POLICY=PASSIVE``. Thread counts are the defaults (one thread per core) everywhere.

Run from the repository root::

    PYTHONPATH=. python benches/bench_flat.py            # the real sizes
    PYTHONPATH=. python benches/bench_flat.py --quick    # tiny sizes: a smoke run

Times are per step (median over repeats, and the best); GB/s counts the bytes an Adam step
must move (parameter, gradient and two moments: 28 bytes per float32 element).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

BYTES_PER_ELEMENT = 28  # Adam, float32: read p, g, m, v (16) and write p, m, v (12)


def time_steps(step: Callable[[], object], steps: int, repeats: int) -> dict[str, float]:
    """Seconds per call of ``step``: median and best over ``repeats`` runs of ``steps`` calls."""
    for _ in range(3):  # compile, create the state, touch every page
        step()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        samples.append((time.perf_counter() - start) / steps)
    return {"median_s": statistics.median(samples), "best_s": min(samples)}


# ---------------------------------------------------------------------- part 1 (no torch)
def array_sizes(count: int, total: int, seed: int = 0) -> list[int]:
    """``count`` sizes spread log-uniformly over three decades, summing to ``total``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    weights = 10.0 ** rng.uniform(0, 3, count)
    sizes = np.maximum(1, np.floor(weights / weights.sum() * total)).astype(int)
    sizes[np.argmax(sizes)] += total - sizes.sum()
    return sizes.tolist()


def worker_arrays(config: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    import fastopt

    sizes = array_sizes(config["arrays"], config["elements"])
    rng = np.random.default_rng(1)
    arrays = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    grads = [rng.standard_normal(n).astype(np.float32) for n in sizes]

    flat = fastopt.FlatParams.from_arrays(arrays)
    flat.accumulate(grads)
    flat_opt = fastopt.Adam(flat, lr=1e-3)
    separate = [array.copy() for array in arrays]
    separate_opt = fastopt.Adam(separate, lr=1e-3)
    steps, repeats = config["steps"], config["repeats"]
    return {
        "flat": time_steps(flat_opt.step, steps, repeats),
        "per_array": time_steps(lambda: separate_opt.step(grads), steps, repeats),
        "elements": sum(sizes),
        "arrays": len(sizes),
    }


# ---------------------------------------------------------------------- part 2 (torch)
def model_with_grads(config: dict[str, Any]):
    import torch

    torch.manual_seed(0)
    width = config["width"]
    model = torch.nn.Sequential(*(torch.nn.Linear(width, width) for _ in range(config["layers"])))
    for param in model.parameters():
        param.grad = torch.randn_like(param)
    return model


def worker_torch(config: dict[str, Any]) -> dict[str, Any]:
    import torch

    model = model_with_grads(config)
    if config["variant"] == "fastopt.torch":
        import fastopt.torch

        opt = fastopt.torch.Adam(model.parameters(), lr=1e-3)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, **{config["variant"]: True})
    result = time_steps(opt.step, config["steps"], config["repeats"])
    result["tensors"] = len(list(model.parameters()))
    result["elements"] = sum(p.numel() for p in model.parameters())
    result["threads"] = torch.get_num_threads()
    return result


WORKERS = {"arrays": worker_arrays, "torch": worker_torch}


def run_worker(kind: str, config: dict[str, Any], env: dict[str, str] | None = None) -> dict:
    """Run one measurement in a fresh process and return what it printed (JSON)."""
    command = [sys.executable, __file__, "--worker", kind, "--config", json.dumps(config)]
    completed = subprocess.run(
        command, env={**os.environ, **(env or {})}, capture_output=True, text=True, check=False
    )
    if completed.returncode:
        raise RuntimeError(f"worker {kind} {config} failed:\n{completed.stderr}")
    return json.loads(completed.stdout)


def describe(label: str, timing: dict[str, float], elements: int) -> str:
    rate = elements * BYTES_PER_ELEMENT / timing["median_s"] / 1e9
    return (
        f"  {label:<34} {timing['median_s'] * 1e6:9.1f} us/step "
        f"(best {timing['best_s'] * 1e6:8.1f})  {rate:6.1f} GB/s"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a smoke run")
    parser.add_argument("--repeat", type=int, default=None, help="timed runs per measurement")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--config", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(WORKERS[args.worker](json.loads(args.config))))
        return {}

    repeats = args.repeat or (3 if args.quick else 15)
    steps = 5 if args.quick else 50
    arrays_config = {
        "arrays": 200,
        "elements": 1 << (14 if args.quick else 20),
        "steps": steps,
        "repeats": repeats,
    }
    model_config = {"layers": 64, "width": 16 if args.quick else 128, "steps": steps}
    model_config["repeats"] = repeats

    results: dict[str, Any] = {"quick": args.quick, "cpu_count": os.cpu_count()}
    part1 = run_worker("arrays", arrays_config)
    results["arrays"] = part1
    elements = part1["elements"]
    print(f"1. fastopt.Adam, float32, {part1['arrays']} arrays, {elements} elements")
    print(describe("FlatParams, one launch", part1["flat"], elements))
    print(describe(f"per array, {part1['arrays']} launches", part1["per_array"], elements))
    speedup = part1["per_array"]["median_s"] / part1["flat"]["median_s"]
    print(f"  one launch is {speedup:.1f}x faster\n")

    variants = {
        "fastopt.torch": {"OMP_WAIT_POLICY": "PASSIVE"},
        "fused": {},
        "foreach": {},
    }
    results["model"] = {}
    for variant, env in variants.items():
        results["model"][variant] = run_worker("torch", {**model_config, "variant": variant}, env)
    adapter = results["model"]["fastopt.torch"]
    print(
        f"2. Adam step on an MLP of {model_config['layers']} layers: {adapter['tensors']} "
        f"tensors, {adapter['elements']} float32 parameters, {adapter['threads']} threads"
    )
    labels = {
        "fastopt.torch": "fastopt.torch.Adam",
        "fused": "torch.optim.Adam(fused=True)",
        "foreach": "torch.optim.Adam(foreach=True)",
    }
    for variant, label in labels.items():
        print(describe(label, results["model"][variant], adapter["elements"]))
    speedup = results["model"]["fused"]["median_s"] / adapter["median_s"]
    print(f"  fastopt.torch is {speedup:.1f}x faster than torch's fused Adam")
    print("  (each in its own process; the adapter's with OMP_WAIT_POLICY=PASSIVE)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    return results


if __name__ == "__main__":
    main()
