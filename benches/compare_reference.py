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

from side_by_side import Workers, median_ratio, medians, parse_size

WORKER = r"""
import inspect, sys
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
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "rule", help="a case of fastopt.bench.cases.RULES (lamb, lars, ...) or a class (Muon)"
    )
    parser.add_argument("--case", choices=["single", "many"], default="single")
    parser.add_argument("--sizes", nargs="+", default=["2^16", "2^20", "2^24", "2^26"])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    workers = Workers(
        {
            kind: (WORKER, (kind, args.rule, args.case), {})
            for kind in ("fastopt", "ceiling", "twin")
        }
    )
    for n in map(parse_size, args.sizes):
        times = workers.rounds(n, args.rounds)
        line = ", ".join(medians(times))
        line += f"; twin/fastopt {median_ratio(times, 'twin', 'fastopt'):.2f}"
        line += f"; fastopt at {median_ratio(times, 'ceiling', 'fastopt'):.0%} of the ceiling"
        print(f"{args.rule} {args.case} n={n}: {line}", flush=True)
    workers.close()


if __name__ == "__main__":
    main()
