"""GPU benchmark of every rule: throughput and % of the device's copy bandwidth.

    PYTHONPATH=. python benches/bench_cuda.py               # all rules, 2^24 ... 2^28, float32
    PYTHONPATH=. python benches/bench_cuda.py --rules adam --sizes 28 --json adam.json

Timed with CUDA events after warm-up; torch's fused CUDA optimizers and CuPy running the
NumPy reference are timed in the same run when installed. See fastopt.cuda.bench.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fastopt.cuda import availability, bench


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", nargs="+", default=list(bench.RULES), choices=list(bench.RULES))
    parser.add_argument(
        "--sizes",
        nargs="+",
        type=int,
        default=[size.bit_length() - 1 for size in bench.SIZES],
        metavar="EXPONENT",
        help="array sizes as powers of two (default: 24 25 26 27 28)",
    )
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--no-baselines", action="store_true", help="time fastopt only")
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    args = parser.parse_args(argv)

    usable, reason = availability()
    print(f"device: {reason}")
    if not usable:
        return 1
    print(bench.format_table([]))
    results = bench.run(
        args.rules,
        [1 << exponent for exponent in args.sizes],
        args.dtype,
        args.warmup,
        args.repeats,
        baselines=not args.no_baselines,
        report=lambda m: print(bench.format_table([m]).splitlines()[1], flush=True),
    )
    if args.json:
        args.json.write_text(json.dumps([m.as_dict() for m in results], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
