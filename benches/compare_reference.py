"""A rule's step in fastopt and in its torch twin (torch.optim's class, or for a rule torch
lacks its reference package's), side by side.

fastopt and the twin each run in their own long-lived process (torch and numba never share
one), with the same-bytes ceiling in fastopt's; every size is timed in turn, round after
round, and the medians of the per-round ratios are printed. All processes wait passively
(``OMP_WAIT_POLICY=PASSIVE``). ``--case single`` steps one matrix of ``n / 1024 x 1024``
elements; ``--case many`` steps 200 tensors (weight matrices and bias
vectors, :func:`fastopt.bench.cases.many_tensor_sizes`) through one FlatParams launch, the
twin over the same tensors (its foreach path where it has one)::

    python benches/compare_reference.py lamb --sizes 2^16 2^20 2^24 2^26 --rounds 7
    python benches/compare_reference.py lars --case many --sizes 2^20
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

WORKER = r"""
import inspect, json, sys, time
import numpy as np
kind, rule, case = sys.argv[1], sys.argv[2], sys.argv[3]
import fastopt
from fastopt.bench.cases import RULES, declared_case, many_tensor_sizes
# A benchmark case, or a fastopt class with its defaults (Muon: 2-D only, not a case).
spec = RULES[rule] if rule in RULES else declared_case(getattr(fastopt, rule))

def shapes(n):
    if case == "single":  # a matrix, as LARS's and LAMB's trust ratios (and Muon) want
        return [(n // 1024, 1024)] if n % 1024 == 0 else [(n,)]
    sizes = many_tensor_sizes(total=n)
    out = []
    for k, size in enumerate(sizes):
        if k % 2:
            out.append((size,))  # a bias: its width
        else:
            width = sizes[k + 1]
            out.append((max(1, size // width), width))
    return out

def setup(n):
    rng = np.random.default_rng(0)
    if kind == "twin":
        import torch
        from fastopt.bench.torch_child import twin_class
        cls = twin_class(spec.torch_class)
        flags = {"foreach": True} if "foreach" in inspect.signature(cls).parameters else {}
        params = [torch.nn.Parameter(torch.randn(*s)) for s in shapes(n)]
        for p in params:
            p.grad = torch.randn_like(p)
        opt = cls(params, **spec.torch_options, **flags)
        if hasattr(opt, "train"):
            opt.train()
        return opt.step
    from fastopt.bench.suite import _ceiling_step
    if kind == "ceiling":
        total = sum(int(np.prod(s)) for s in shapes(n))
        w = rng.standard_normal(total).astype(np.float32)
        return _ceiling_step(spec, w, rng.standard_normal(total).astype(np.float32))
    flat = fastopt.FlatParams(shapes(n), np.float32)
    flat.buffer[...] = rng.standard_normal(flat.buffer.size).astype(np.float32)
    flat.grad_buffer[...] = rng.standard_normal(flat.grad_buffer.size).astype(np.float32)
    opt = spec.make(list(flat.params))
    return opt.step

steps = {}
for line in sys.stdin:
    n, reps = json.loads(line)
    if n not in steps:
        steps[n] = setup(n)
        for _ in range(3):
            steps[n]()
    step = steps[n]
    start = time.perf_counter()
    for _ in range(reps):
        step()
    print(json.dumps((time.perf_counter() - start) / reps), flush=True)
"""


def parse_size(text: str) -> int:
    base, _, power = text.partition("^")
    return int(base) ** int(power) if power else int(base)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "rule", help="a case of fastopt.bench.cases.RULES (lamb, lars, ...) or a class (Muon)"
    )
    parser.add_argument("--case", choices=["single", "many"], default="single")
    parser.add_argument("--sizes", nargs="+", default=["2^16", "2^20", "2^24", "2^26"])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    workers = {}
    for kind in ("fastopt", "ceiling", "twin"):
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
        workers[kind] = subprocess.Popen(
            [sys.executable, "-c", WORKER, kind, args.rule, args.case],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

    def timed(kind: str, n: int, reps: int) -> float:
        worker = workers[kind]
        worker.stdin.write(json.dumps([n, reps]) + "\n")
        worker.stdin.flush()
        return json.loads(worker.stdout.readline())

    for n in map(parse_size, args.sizes):
        reps = max(3, int(2e8 // (n * 28)))
        times = {kind: [] for kind in workers}
        for _ in range(args.rounds):
            for kind in workers:
                times[kind].append(timed(kind, n, reps))

        def ratio(a: str, b: str, times: dict[str, list[float]] = times) -> float:
            return statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))

        line = ", ".join(f"{k} {statistics.median(v) * 1e6:.1f} µs" for k, v in times.items())
        line += f"; twin/fastopt {ratio('twin', 'fastopt'):.2f}"
        line += f"; fastopt at {ratio('ceiling', 'fastopt'):.0%} of the ceiling"
        print(f"{args.rule} {args.case} n={n}: {line}", flush=True)
    for worker in workers.values():
        worker.stdin.close()
        worker.wait()


if __name__ == "__main__":
    main()
