"""Adam's step in two checkouts of fastopt, side by side: ``old`` and ``new``.

Each checkout runs in its own long-lived process (``PYTHONPATH`` set to it), with the
same-bytes stream and torch's fused Adam in processes of their own; every size is timed in
turn, round after round, and the medians of the per-round ratios are printed. All processes
wait passively (``OMP_WAIT_POLICY=PASSIVE``): a spinning OpenMP pool in one would steal the
cores of the next. Run from anywhere::

    python benches/compare_checkouts.py OLD_CHECKOUT NEW_CHECKOUT --rounds 9 --sizes 2^12 2^26
    python benches/compare_checkouts.py OLD NEW --case flat200 --sizes 2^20
    python benches/compare_checkouts.py OLD NEW --deepspeed --sizes 2^16 2^20 2^26

``--deepspeed`` adds DeepSpeed's ``DeepSpeedCPUAdam`` (Adam, not AdamW) in a process of its
own. ``flat200``: Adam over 200 float32 arrays (sizes spread log-uniformly) in one FlatParams.
"""

from __future__ import annotations

import argparse

from side_by_side import Workers, median_ratio, medians, parse_size

WORKER = r"""
import sys
import numpy as np
kind, case = sys.argv[1], sys.argv[2]
if kind == "torch":
    import torch
elif kind == "deepspeed":
    import os
    import torch

    # make(), with what DeepSpeed prints (its logger, its op's build and C++ code write to
    # standard output) sent to stderr, off the timing protocol.
    def quietly(make):
        out = os.dup(1)
        os.dup2(2, 1)
        try:
            return make()
        finally:
            sys.stdout.flush()
            os.dup2(out, 1)
            os.close(out)

    DeepSpeedCPUAdam = quietly(lambda: __import__("deepspeed.ops.adam").ops.adam.DeepSpeedCPUAdam)
else:
    import fastopt
    from fastopt.bench.ceiling import stream_step

def sizes(n):
    weights = 10.0 ** np.random.default_rng(0).uniform(0, 3, 200)
    return [int(k) for k in np.maximum(1, np.floor(weights / weights.sum() * n))]

def setup(n):
    rng = np.random.default_rng(0)
    if kind in ("torch", "deepspeed"):
        shapes = sizes(n) if case == "flat200" else [n]
        params = [torch.nn.Parameter(torch.randn(k)) for k in shapes]
        for p in params:
            p.grad = torch.randn_like(p)
        if kind == "deepspeed":
            step = quietly(lambda: DeepSpeedCPUAdam(params, lr=1e-3, adamw_mode=False).step)
            quietly(step)  # the first step builds nothing more, but may print
            return step
        return torch.optim.Adam(params, lr=1e-3, fused=True).step
    if case == "flat200":
        flat = fastopt.FlatParams([(k,) for k in sizes(n)], np.float32)
        flat.grad_buffer[...] = rng.standard_normal(flat.grad_buffer.size).astype(np.float32)
        return fastopt.Adam(flat, lr=1e-3).step
    w = rng.standard_normal(n).astype(np.float32)
    g = rng.standard_normal(n).astype(np.float32)
    if kind == "stream":
        m, v = np.zeros_like(w), np.zeros_like(w)
        return lambda: stream_step(w, g, m, v)
    opt = fastopt.Adam(w, lr=1e-3)
    return lambda: opt.step(g)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--case", choices=["adam", "flat200"], default="adam")
    parser.add_argument("--sizes", nargs="+", default=["2^12", "2^16", "2^20", "2^24", "2^26"])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument(
        "--deepspeed",
        action="store_true",
        help="also time DeepSpeed's DeepSpeedCPUAdam (pip install deepspeed; it builds its "
        "C++ op with g++ and ninja on first use)",
    )
    args = parser.parse_args()
    kinds = {
        "old": ("fastopt", args.old),
        "new": ("fastopt", args.new),
        "torch": ("torch", args.new),
    }
    if args.deepspeed:
        kinds["deepspeed"] = ("deepspeed", args.new)
    if args.case == "adam":
        kinds["stream"] = ("stream", args.new)
    workers = Workers(
        {
            name: (WORKER, (kind, args.case), {"PYTHONPATH": path})
            for name, (kind, path) in kinds.items()
        }
    )
    for n in map(parse_size, args.sizes):
        times = workers.rounds(n, args.rounds)
        line = ", ".join(medians(times))
        line += f"; new/old {median_ratio(times, 'new', 'old'):.3f}"
        line += f"; torch/new {median_ratio(times, 'torch', 'new'):.2f}"
        if "deepspeed" in times:
            line += f"; deepspeed/new {median_ratio(times, 'deepspeed', 'new'):.2f}"
        if "stream" in times:
            line += f"; new at {median_ratio(times, 'stream', 'new'):.0%} of the stream"
        print(f"{args.case} n={n}: {line}", flush=True)
    workers.close()


if __name__ == "__main__":
    main()
