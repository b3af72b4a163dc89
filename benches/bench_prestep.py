"""The fused pre-step pipeline against torch's: loss unscaling, clipping by norm, Adam.

    PYTHONPATH=. python benches/bench_prestep.py                      # 2^24 float32, all cores
    PYTHONPATH=. python benches/bench_prestep.py --size 16 --repeats 3 --threads 2   # smoke run

What is timed, per optimizer step (the gradients are given, backpropagation is not timed):

``fastopt pipeline``
    ``LossScaler.step(Adam(..., max_norm=1.0), grads); LossScaler.update()``: one read pass
    over the gradients (global 2-norm and finite check), then the Adam kernel with the
    unscale and clip coefficient folded into its gradient scalar. 32 bytes per element moved.
``torch pipeline``
    ``GradScaler("cpu").unscale_(opt)`` (``torch._amp_foreach_non_finite_check_and_unscale_``:
    reads and writes the gradients), ``clip_grad_norm_(params, 1.0)`` (a norm pass, then a
    multiply pass that reads and writes the gradients), ``GradScaler.step(opt)`` with
    ``torch.optim.Adam(fused=True)``, ``GradScaler.update()``. 48 bytes per element moved.
``fastopt Adam`` / ``torch fused Adam``
    The optimizer step alone (28 bytes per element), to show what the pre-step costs.

torch's unscale_ divides the gradients in place, so each torch iteration starts from a fresh
copy of the scaled gradients, made outside the timed region. Both sides run float32 with the
same data and settings; the final parameters are compared at the end.

Each implementation runs in its own process: torch and numba each bring an OpenMP runtime,
and two runtimes' spinning threads in one process would slow each other down (the other
remedy, ``OMP_WAIT_POLICY=PASSIVE``, penalizes both). Thread counts are set explicitly on
both sides. Timings are medians over ``--repeats`` steps after ``--warmup`` steps; on a busy
machine they mean little, so measure on an idle one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MAX_NORM = 1.0
LOSS_SCALE = 2.0**16
LR = 1e-3
# Bytes moved per element (float32): reads + writes of the passes each pipeline makes.
TRAFFIC = {
    "fastopt Adam": 28,
    "fastopt pipeline": 4 + 28,
    "torch fused Adam": 28,
    "torch pipeline": 8 + 4 + 8 + 28,  # unscale r/w, norm r, clip multiply r/w, Adam
}


def problem(size: int, tensors: int, seed: int = 0):
    """Parameters and scaled gradients: ``tensors`` float32 arrays totalling ``size``."""
    rng = np.random.default_rng(seed)
    cuts = np.linspace(0, size, tensors + 1).astype(int)
    lengths = np.diff(cuts)
    params = [rng.standard_normal(n).astype(np.float32) for n in lengths]
    grads = [(rng.standard_normal(n) * 1e-3 * LOSS_SCALE).astype(np.float32) for n in lengths]
    return params, grads


def _timed(step, warmup: int, repeats: int, prepare=None) -> list[float]:
    times = []
    for number in range(warmup + repeats):
        if prepare is not None:
            prepare()
        start = time.perf_counter()
        step()
        if number >= warmup:
            times.append(time.perf_counter() - start)
    return times


def run_fastopt(args) -> dict[str, object]:
    import numba

    import fastopt

    numba.set_num_threads(args.threads)
    results = {}
    params, grads = problem(1 << args.size, args.tensors)
    plain = fastopt.Adam([p.copy() for p in params], lr=LR)
    unscaled = [g / np.float32(LOSS_SCALE) for g in grads]
    results["fastopt Adam"] = _timed(lambda: plain.step(unscaled), args.warmup, args.repeats)

    opt = fastopt.Adam(params, lr=LR, max_norm=MAX_NORM)
    scaler = fastopt.LossScaler(init_scale=LOSS_SCALE, growth_interval=10**9)

    def pipeline():
        scaler.step(opt, grads)
        scaler.update()

    results["fastopt pipeline"] = _timed(pipeline, args.warmup, args.repeats)
    return {"times": results, "params": params, "layer": numba.threading_layer()}


def run_torch(args) -> dict[str, object]:
    import torch

    torch.set_num_threads(args.threads)
    results = {}
    params, grads = problem(1 << args.size, args.tensors)
    scaled = [torch.from_numpy(g) for g in grads]

    plain = [torch.from_numpy(p.copy()).requires_grad_() for p in params]
    plain_opt = torch.optim.Adam(plain, lr=LR, fused=True)
    for p, g in zip(plain, scaled, strict=True):
        p.grad = g / LOSS_SCALE
    results["torch fused Adam"] = _timed(plain_opt.step, args.warmup, args.repeats)

    tensors = [torch.from_numpy(p).requires_grad_() for p in params]  # shares the arrays
    opt = torch.optim.Adam(tensors, lr=LR, fused=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=LOSS_SCALE, growth_interval=10**9)

    def prepare():
        scaler.scale(torch.ones(()))  # as scaling the loss does
        for p, g in zip(tensors, scaled, strict=True):
            p.grad = g.clone()

    def pipeline():
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(tensors, MAX_NORM)
        scaler.step(opt)
        scaler.update()

    with torch.no_grad():
        results["torch pipeline"] = _timed(pipeline, args.warmup, args.repeats, prepare)
    return {"times": results, "params": params, "layer": f"torch {torch.__version__}"}


def copy_bandwidth(size: int) -> float:
    """GB/s of one large float32 copy (read + write), the memory ceiling of this machine."""
    source = np.ones(size, np.float32)
    target = np.empty_like(source)
    best = min(_timed(lambda: np.copyto(target, source), 2, 5))
    return 2 * source.nbytes / best / 1e9


def child(args) -> None:
    outcome = run_fastopt(args) if args.impl == "fastopt" else run_torch(args)
    np.savez(args.out, *outcome["params"])
    print(json.dumps({"times": outcome["times"], "layer": outcome["layer"]}))


def parent(args) -> None:
    size = 1 << args.size
    print(f"{size:,} float32 elements in {args.tensors} arrays, {args.threads} threads")
    print(f"copy bandwidth: {copy_bandwidth(size):.1f} GB/s")
    finals, rows = {}, {}
    with tempfile.TemporaryDirectory() as directory:
        for impl in ("fastopt", "torch"):
            out = Path(directory) / f"{impl}.npz"
            command = [sys.executable, __file__, "--impl", impl, "--out", str(out)]
            command += [f"--{k}={v}" for k, v in vars(args).items() if k not in ("impl", "out")]
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
            done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
            report = json.loads(done.stdout.splitlines()[-1])
            print(f"{impl}: {report['layer']}")
            rows.update(report["times"])
            with np.load(out) as data:
                finals[impl] = [data[key] for key in data.files]
    print(f"{'':<18} {'median ms':>10} {'min ms':>8} {'GB/s':>7}")
    for name, times in rows.items():
        median, best = float(np.median(times)), min(times)
        rate = TRAFFIC[name] * size / median / 1e9
        print(f"{name:<18} {median * 1e3:>10.3f} {best * 1e3:>8.3f} {rate:>7.1f}")
    speedup = np.median(rows["torch pipeline"]) / np.median(rows["fastopt pipeline"])
    overhead = np.median(rows["fastopt pipeline"]) / np.median(rows["fastopt Adam"]) - 1
    print(f"fused pipeline speed-up over torch's: {speedup:.2f}x")
    print(f"fastopt pre-step cost over the Adam step alone: {overhead:+.0%}")
    difference = max(
        float(np.max(np.abs(a - b), initial=0.0))
        for a, b in zip(finals["fastopt"], finals["torch"], strict=True)
    )
    print(f"largest parameter difference after the same steps: {difference:.2e}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=24, help="log2 of the element count")
    parser.add_argument("--tensors", type=int, default=1, help="split into this many arrays")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--impl", choices=["fastopt", "torch"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.impl:
        child(args)
    else:
        parent(args)


if __name__ == "__main__":
    main()
