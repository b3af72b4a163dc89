"""Adam in fewer bytes, side by side: fastopt's precision modes against float32 and torch.

Every implementation runs in its own long-lived process (:mod:`side_by_side`), timed in turn,
round after round; the table gives medians of per-round ratios against fastopt's float32
Adam, and the bytes each step moves per element over the median time (GB/s).

    python benches/compare_precision.py --sizes 2^24 2^26 --rounds 7

The modes (bytes per element a step reads and writes):

- ``fastopt f32``: float32 parameter, gradient and state (28);
- ``fastopt bf16``: bfloat16 parameter, gradient and state (14), rounded to nearest;
- ``fastopt bf16 sr``: the same with stochastic rounding (14);
- ``fastopt bf16+master``: bfloat16 gradient, float32 master copy and state, the bfloat16
  parameter written (not read) from the master in the same pass (2 + 8 + 16 + 2 = 28);
- ``fastopt f32 bf16-state``: float32 parameter and gradient, bfloat16 state (20);
- ``fastopt f32 int8-state``: float32 parameter and gradient, 8-bit block-wise state (16,
  and a float32 scale per 256 elements per state array);
- ``bnb f32 int8-state``: bitsandbytes' ``Adam8bit`` on CPU tensors, the same format (16);
- ``stream f32``, ``stream bf16``: the memory wall, :func:`fastopt.bench.ceiling.stream_step`
  on a parameter, a gradient and two state arrays of float32 (28) or bfloat16 (14): the same
  reads and writes as Adam with an addition per array instead of its arithmetic;
- ``stream f32 p+g``: the same on a float32 parameter and gradient alone (12): below what a
  step with 8-bit state moves (16), a floor for its time;
- ``torch f32``: ``torch.optim.Adam(fused=True)`` in float32 (28);
- ``torch bf16``: the same on bfloat16 parameters, gradients and state (14);
- ``torch bf16+master``: what torch needs for a master copy: the bfloat16 gradient cast to a
  float32 one, fused float32 Adam on the master, the master cast to the bfloat16 parameter
  (three passes: 2 + 4, 28, 4 + 2 = 40).
"""

from __future__ import annotations

import argparse
import statistics
import textwrap

from side_by_side import Workers, median_ratio, parse_size

FASTOPT = """
import sys
import ml_dtypes, numpy as np, fastopt
from fastopt._storage import kernel_view
from fastopt.bench.ceiling import stream_step
BF16 = ml_dtypes.bfloat16
MODE = sys.argv[1]

def setup(n):
    rng = np.random.default_rng(0)
    p = rng.standard_normal(n, dtype=np.float32)
    g = rng.standard_normal(n, dtype=np.float32) * np.float32(1e-3)
    if MODE == "f32":
        opt = fastopt.Adam(p, lr=1e-4)
    elif MODE == "bf16":
        p, g = p.astype(BF16), g.astype(BF16)
        opt = fastopt.Adam(p, lr=1e-4, state_dtype="bfloat16")
    elif MODE == "bf16-sr":
        p, g = p.astype(BF16), g.astype(BF16)
        opt = fastopt.Adam(p, lr=1e-4, state_dtype="bfloat16", stochastic_rounding=True)
    elif MODE == "bf16-master":
        p, g = p.astype(BF16), g.astype(BF16)
        opt = fastopt.Adam(p, lr=1e-4, master_weights=True)
    elif MODE == "f32-bf16-state":
        opt = fastopt.Adam(p, lr=1e-4, state_dtype="bfloat16")
    elif MODE == "f32-int8-state":
        opt = fastopt.Adam(p, lr=1e-4, state_dtype="int8")
    elif MODE.startswith("stream"):  # the same bytes with an addition per array, no Adam
        dtype, count = {
            "stream-f32": (np.float32, 2),
            "stream-bf16": (BF16, 2),
            "stream-f32-pg": (np.float32, 0),
        }[MODE]
        state = [np.zeros(n, dtype) for _ in range(count)]
        arrays = [kernel_view(x) for x in (p.astype(dtype), g.astype(dtype), *state)]
        return lambda: stream_step(*arrays)
    return lambda: opt.step(g)
"""

TORCH = """
import sys
import torch
MODE = sys.argv[1]

def setup(n):
    torch.manual_seed(0)
    if MODE == "f32":
        p = torch.randn(n)
        p.grad = torch.randn(n) * 1e-3
        opt = torch.optim.Adam([p], lr=1e-4, fused=True)
        return opt.step
    if MODE == "bf16":
        p = torch.randn(n).bfloat16()
        p.grad = (torch.randn(n) * 1e-3).bfloat16()
        opt = torch.optim.Adam([p], lr=1e-4, fused=True)
        return opt.step
    # bf16 parameters and gradients, a float32 master copy: cast, step, cast.
    param = torch.randn(n).bfloat16()
    grad = (torch.randn(n) * 1e-3).bfloat16()
    master = param.float()
    master.grad = torch.empty(n)
    opt = torch.optim.Adam([master], lr=1e-4, fused=True)

    def step():
        master.grad.copy_(grad)
        opt.step()
        param.copy_(master)

    return step
"""

BITSANDBYTES = """
import torch, bitsandbytes

def setup(n):
    torch.manual_seed(0)
    p = torch.randn(n)
    p.grad = torch.randn(n) * 1e-3
    opt = bitsandbytes.optim.Adam8bit([p], lr=1e-4)
    return opt.step
"""

#: name: (worker source, mode, bytes per element a step moves)
IMPLEMENTATIONS = {
    "fastopt f32": (FASTOPT, "f32", 28),
    "fastopt bf16": (FASTOPT, "bf16", 14),
    "fastopt bf16 sr": (FASTOPT, "bf16-sr", 14),
    "fastopt bf16+master": (FASTOPT, "bf16-master", 28),
    "fastopt f32 bf16-state": (FASTOPT, "f32-bf16-state", 20),
    "fastopt f32 int8-state": (FASTOPT, "f32-int8-state", 16),
    "bnb f32 int8-state": (BITSANDBYTES, "", 16),
    "stream f32": (FASTOPT, "stream-f32", 28),
    "stream bf16": (FASTOPT, "stream-bf16", 14),
    "stream f32 p+g": (FASTOPT, "stream-f32-pg", 12),
    "torch f32": (TORCH, "f32", 28),
    "torch bf16": (TORCH, "bf16", 14),
    "torch bf16+master": (TORCH, "bf16-master", 40),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["2^24", "2^26"])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--only", nargs="*", help="implementations to time (default: all)")
    args = parser.parse_args()
    chosen = {
        name: spec for name, spec in IMPLEMENTATIONS.items() if not args.only or name in args.only
    }
    workers = Workers({name: (source, [mode], {}) for name, (source, mode, _) in chosen.items()})
    try:
        for text in args.sizes:
            n = parse_size(text)
            times = workers.rounds(n, args.rounds, bytes_per_element=20)
            print(f"\n## n = {text} ({n} elements), {args.rounds} rounds\n")
            print(
                "| implementation | bytes/element | median time | GB/s | speedup on fastopt f32 "
                "| on torch f32 |"
            )
            print("| --- | --- | --- | --- | --- | --- |")
            for name, (_, _, width) in chosen.items():
                median = statistics.median(times[name])
                speed = median_ratio(times, "fastopt f32", name) if "fastopt f32" in times else 0
                versus_torch = median_ratio(times, "torch f32", name) if "torch f32" in times else 0
                print(
                    f"| {name} | {width} | {median * 1e3:.2f} ms | {width * n / median / 1e9:.1f} "
                    f"| {speed:.2f} | {versus_torch:.2f} |"
                )
            pairs = [
                ("fastopt bf16", "torch bf16"),
                ("fastopt bf16+master", "torch bf16+master"),
                ("fastopt bf16 sr", "torch bf16"),
                ("fastopt f32 int8-state", "bnb f32 int8-state"),
                ("fastopt f32", "stream f32"),
                ("fastopt bf16", "stream bf16"),
                ("fastopt f32 int8-state", "stream f32 p+g"),
                ("stream bf16", "stream f32"),
            ]
            for ours, theirs in pairs:
                if ours in times and theirs in times:
                    ratio = median_ratio(times, theirs, ours)
                    print(f"\n{ours}: {ratio:.2f} times as fast as {theirs}")
    finally:
        workers.close()
    print(
        textwrap.dedent("""
        (speedups: the median over rounds of the other's time over this one's: above 1 is
        faster.)""")
    )


if __name__ == "__main__":
    main()
