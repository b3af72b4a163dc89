"""The ``fastopt`` command: ``bench``, ``report`` and ``info`` (also ``python -m fastopt``).

``fastopt bench`` times every rule against the NumPy reference, torch (when installed) and
the same-bytes ceiling and prints the tables; ``fastopt report`` does the same (or reads a
saved run) and writes a Markdown and HTML report with plots; ``fastopt info`` describes the
machine and the software stack.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

__all__ = ["main"]


def _sizes(text: str) -> int:
    from fastopt.bench.cases import parse_size

    try:
        return parse_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _threads(text: str) -> int:
    import numba

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--threads must be an integer, got {text!r}") from None
    limit = numba.config.NUMBA_NUM_THREADS
    if not 1 <= value <= limit:
        raise argparse.ArgumentTypeError(
            f"--threads must be between 1 and {limit} (NUMBA_NUM_THREADS), got {value}"
        )
    return value


def _add_selection(parser: argparse.ArgumentParser) -> None:
    from fastopt.bench.cases import DTYPES, IMPLEMENTATIONS, RULES

    parser.add_argument(
        "--quick",
        action="store_true",
        help="the quick run: headline rules, 2^12 ... 2^24, float32, few samples",
    )
    parser.add_argument(
        "--rules",
        nargs="+",
        choices=list(RULES),
        metavar="RULE",
        help=f"rules to run (default: all; quick: the headline ones): {', '.join(RULES)}",
    )
    parser.add_argument(
        "--sizes",
        nargs="+",
        type=_sizes,
        metavar="N",
        help="array sizes, e.g. 4096 2^20 16M (default: 2^12 ... 2^26 in "
        "steps of 4x; quick: 2^12 2^16 2^20 2^24)",
    )
    parser.add_argument(
        "--dtype",
        nargs="+",
        choices=DTYPES,
        metavar="DTYPE",
        help="float32 and/or float64 (default: both; quick: float32)",
    )
    parser.add_argument(
        "--implementations",
        nargs="+",
        choices=IMPLEMENTATIONS,
        metavar="IMPL",
        help=f"what to time: {', '.join(IMPLEMENTATIONS)}",
    )
    parser.add_argument("--no-torch", action="store_true", help="skip torch even if installed")
    parser.add_argument(
        "--no-many-tensors", action="store_true", help="skip the 200-array Adam case"
    )
    parser.add_argument(
        "--threads",
        type=_threads,
        metavar="N",
        help="threads for fastopt and torch (default: all numba allows)",
    )
    parser.add_argument(
        "--quiet", action="store_true", help="no progress bar (none is drawn off a terminal)"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastopt", description="fastopt's benchmarks, reports and machine description."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    bench = commands.add_parser("bench", help="time the rules and print the comparison tables")
    _add_selection(bench)
    bench.add_argument("--json", metavar="FILE", help="also save the run as JSON")

    report = commands.add_parser(
        "report", help="write report.md, report.html and plots (running the benchmarks)"
    )
    _add_selection(report)
    report.add_argument(
        "--out", default="report", metavar="DIR", help="output folder (default: ./report)"
    )
    report.add_argument(
        "--from-json",
        metavar="FILE",
        help="report a run saved by `fastopt bench --json` instead of running",
    )
    report.add_argument(
        "--no-compile-time",
        action="store_true",
        help="skip the cold/warm-cache compile-time measurement",
    )

    info = commands.add_parser("info", help="versions, threads, SIMD flags, CUDA")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.add_argument(
        "--bandwidth",
        action="store_true",
        help="also measure the memory bandwidth (takes a few seconds)",
    )
    return parser


def _config(args: argparse.Namespace):
    from fastopt.bench.cases import FULL_SIZES, QUICK_SIZES
    from fastopt.bench.suite import FULL_FLOAT64_SIZES, full_config, quick_config
    from fastopt.bench.torch_child import torch_installed

    base = quick_config() if args.quick else full_config()
    dtypes = args.dtype or [dtype for dtype, _ in base.grid]

    def default_sizes(dtype: str) -> tuple[int, ...]:
        if args.quick:
            return QUICK_SIZES
        return FULL_SIZES if dtype == "float32" else FULL_FLOAT64_SIZES

    grid = tuple(
        (dtype, tuple(sorted(set(args.sizes))) if args.sizes else default_sizes(dtype))
        for dtype in dtypes
    )
    implementations = tuple(args.implementations or base.implementations)
    if args.no_torch or not torch_installed():
        implementations = tuple(i for i in implementations if not i.startswith("torch-"))
    overrides: dict[str, Any] = {
        "grid": grid,
        "implementations": implementations,
        "many_tensors": not args.no_many_tensors,
    }
    if args.rules:
        overrides["rules"] = tuple(dict.fromkeys(args.rules))
    if args.threads:
        overrides["threads"] = args.threads
    return replace(base, **overrides)


def _torch_skipped(args: argparse.Namespace) -> str:
    """Why torch was not timed, when no torch implementation was requested."""
    from fastopt.bench.torch_child import MISSING_NOTE, torch_installed

    if args.no_torch:
        return "--no-torch was given"
    if not torch_installed():
        return MISSING_NOTE
    return "no torch implementation in --implementations"


def _collect(args: argparse.Namespace, compile_times: bool):
    """Run the benchmarks the arguments ask for; return them as Results."""
    from fastopt.bench.compiletime import measure_compile_times
    from fastopt.bench.machine import machine_info, measure_bandwidth
    from fastopt.bench.overhead import measure_step_overhead
    from fastopt.bench.progress import Progress
    from fastopt.bench.results import SCHEMA, Results
    from fastopt.bench.suite import numba_threads, run_suite

    config = _config(args)
    progress = Progress(enabled=not args.quiet)
    with numba_threads(config.threads):
        rows, torch_info = run_suite(config, progress)
        if not torch_info["requested"]:
            torch_info["note"] = _torch_skipped(args)
        data: dict[str, Any] = {
            "schema": SCHEMA,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_info(),
            "config": config.as_dict(),
            "torch": torch_info,
            "rows": rows,
        }
        _note(args, "measuring the bandwidth and the opt.step overhead")
        largest = max(max(sizes) for _, sizes in config.grid)
        data["bandwidth"] = measure_bandwidth(largest, policy=config.policy)
        data["overhead"] = measure_step_overhead(calls=5_000 if args.quick else 20_000)
    if compile_times:
        rules = ["adam"] if args.quick else list(config.rules)
        _note(args, f"measuring compile times of {', '.join(rules)} (fresh processes)")
        data["compile"] = measure_compile_times(rules)
    return Results(data)


def _note(args: argparse.Namespace, text: str) -> None:
    if not args.quiet:
        print(text, file=sys.stderr, flush=True)


def _print_table(table) -> None:
    """A table with its title above it and its notes (the noise marks' counts) below."""
    from fastopt.bench.document import markdown_table

    print(f"\n{table.title}\n")
    print(markdown_table(table.headers, table.rows))
    for note in table.notes:
        print(note)


def _print_legend() -> None:
    from fastopt.bench.report import legend

    print("\nHow to read the tables:")
    for line in legend():
        print(textwrap.fill(line, width=100, initial_indent="  ", subsequent_indent="    "))


def _print_tables(results) -> None:
    from fastopt.bench.report import (
        format_spread,
        many_tensors_table,
        overhead_table,
        rule_table,
    )
    from fastopt.bench.torch_child import MISSING_NOTE, install_hint

    machine = results.data["machine"]
    torch = results.data.get("torch") or {}
    if torch.get("available"):
        torch_text = f"torch {torch['version']} in a separate process"
    elif torch.get("note") == MISSING_NOTE:
        torch_text = "torch not installed"
    else:
        torch_text = f"torch not measured ({torch.get('note') or 'not requested'})"
    print(
        f"{machine['cpu']}, {results.data['config']['threads']} threads "
        f"({machine['threading_layer']}), numba {machine['versions']['numba']}, {torch_text}",
    )
    if torch.get("note") == MISSING_NOTE:
        print(f"To add the torch.optim comparison: {install_hint()}")
    tables = [rule_table(results, dtype) for dtype in results.dtypes()]
    tables += [many_tensors_table(results), overhead_table(results)]
    for table in tables:
        if table is not None:
            _print_table(table)
    bandwidth = results.data.get("bandwidth")
    if bandwidth:
        spread = bandwidth.get("spread")
        spread_text = "" if spread is None else f" (spread {format_spread(spread)})"
        print(f"\nMeasured bandwidth: {bandwidth['gb_per_s']:.1f} GB/s{spread_text}")
    _print_legend()


def _bench(args: argparse.Namespace) -> int:
    from fastopt.bench.results import save

    results = _collect(args, compile_times=False)
    _print_tables(results)
    if args.json:
        save(results.data, args.json)
        _note(args, f"saved {args.json}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from fastopt.bench.document import markdown_table
    from fastopt.bench.report import summary_table, write_report
    from fastopt.bench.results import load

    if args.from_json:
        try:
            results = load(args.from_json)
        except (OSError, ValueError) as error:
            print(f"fastopt report: {error}", file=sys.stderr)
            return 2
    else:
        results = _collect(args, compile_times=not args.no_compile_time)
    written = write_report(results, args.out, log=lambda text: _note(args, text))
    summary = summary_table(results)
    if summary is not None:
        print(f"{summary.title}\n")
        print(markdown_table(summary.headers, summary.rows))
        for note in summary.notes:
            print(note)
        _print_legend()
    print()
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from fastopt.bench.machine import machine_info, measure_bandwidth

    info = machine_info(cuda=True)
    if args.bandwidth:
        info["bandwidth"] = measure_bandwidth()
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v)
    cuda = info["cuda"]
    lines = [
        (
            "CPU",
            f"{info['cpu']} ({info['architecture']}), {info['usable_cpus']} usable of "
            f"{info['logical_cpus']} logical CPUs",
        ),
        ("caches", ", ".join(f"{k} {v}" for k, v in info["caches"].items()) or "unknown"),
        ("memory", f"{info['memory_gib']} GiB"),
        ("OS", info["os"]),
        ("Python", info["python"]),
        ("versions", versions),
        (
            "numba threads",
            f"{info['numba_threads']} of {info['numba_max_threads']}, "
            f"threading layer {info['threading_layer']}",
        ),
        ("parallel from", f"{info['parallel_threshold']} elements"),
        ("SIMD (LLVM)", f"{info['simd']['llvm_cpu']}: {' '.join(info['simd']['llvm_features'])}"),
        ("SIMD (cpuinfo)", " ".join(info["simd"]["cpuinfo"]) or "not listed"),
        (
            "CUDA",
            f"{'available' if cuda.get('available') else 'not available'}"
            f"{': ' + cuda['detail'] if cuda.get('detail') else ''} ({cuda['source']})",
        ),
    ]
    if "bandwidth" in info:
        lines.append(("bandwidth", f"{info['bandwidth']['gb_per_s']:.1f} GB/s"))
    width = max(len(key) for key, _ in lines)
    for key, value in lines:
        print(f"{key.ljust(width)}  {value}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``fastopt`` command; returns the exit status."""
    args = _parser().parse_args(argv)
    handler = {"bench": _bench, "report": _report, "info": _info}[args.command]
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
