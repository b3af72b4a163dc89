"""Tables and the written report (``report.md``, ``report.html``, PNG plots, ``results.json``).

Every table is built from a :class:`~fastopt.bench.results.Results` by a function here, so
``fastopt bench`` (which prints them) and ``fastopt report`` (which writes them) show the
same numbers. Speed targets are checked against the measurements and a missed target says
by how much.

Each timed figure carries its spread over the repeats in parentheses (``12.3 µs (2.1%)``, see
:func:`~fastopt.bench.results.spread`); a figure too noisy to mean much starts with
:data:`NOISY_MARK`, a fraction of the ceiling above 100% with :data:`CEILING_MARK`, and the
table's notes count them. :func:`legend` explains the units and the marks, once per output.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fastopt.bench.cases import BASELINES, MANY_TENSORS_COUNT, RULES, size_label
from fastopt.bench.document import Document
from fastopt.bench.plots import (
    convergence_plot,
    matplotlib_available,
    speedup_plot,
    throughput_plot,
)
from fastopt.bench.results import (
    CEILING_LIMIT,
    NOISY_SPREAD,
    Results,
    is_noisy,
    save,
    spread,
    throughput,
)
from fastopt.bench.seed import seed_runs
from fastopt.bench.torch_child import MISSING_NOTE, install_hint

__all__ = [
    "CEILING_MARK",
    "NOISY_MARK",
    "Table",
    "compile_table",
    "format_spread",
    "legend",
    "many_tensors_table",
    "noise_notes",
    "overhead_table",
    "rule_table",
    "summary_table",
    "targets_table",
    "times_table",
    "with_spread",
    "write_report",
]

NA = "n/a"
TIMES = "\N{MULTIPLICATION SIGN}"
#: Starts a figure whose spread is above :data:`~fastopt.bench.results.NOISY_SPREAD`.
NOISY_MARK = "~"
#: Starts a fraction of the ceiling above 100% (which only the machine's drift produces).
CEILING_MARK = "!"

_WITH_SPREAD = re.compile(r" \(<?[\d.]+%\)$")


@dataclass(frozen=True)
class Table:
    """A titled table of strings, with lines to print under it (the noise marks' counts)."""

    title: str
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    notes: tuple[str, ...] = ()


def format_time(ns: float | None) -> str:
    """``850 ns``, ``12.3 µs``, ``45.6 ms``, ``1.23 s``."""
    if ns is None:
        return NA
    ns = _three_significant(ns)  # 999.6 ns is 1.00 µs, not 1000 ns
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{format_number(ns / scale)} {unit}"
    return f"{ns:.0f} ns"


def _three_significant(value: float) -> float:
    return float(f"{value:.3g}")


def format_number(value: float) -> str:
    """Three significant digits, never rounded to zero: ``123``, ``12.3``, ``1.23``, ``0.0123``."""
    value = _three_significant(value)  # so that 9.996 prints as 10.0, not 10.00
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1 or value == 0:
        return f"{value:.2f}"
    return f"{value:.3g}"


def format_ratio(value: float | None) -> str:
    return NA if value is None else f"{format_number(value)}{TIMES}"


def format_percent(fraction: float | None) -> str:
    return NA if fraction is None else f"{format_number(100 * fraction)}%"


def format_spread(value: float) -> str:
    """A relative spread as a percentage: ``0%``, ``<0.1%``, ``2.5%``, ``14%``."""
    percent = 100 * value
    if percent == 0:
        return "0%"
    if percent < 0.05:
        return "<0.1%"
    if percent < 9.95:
        return f"{percent:.1f}%"
    return f"{percent:.0f}%"


def with_spread(text: str, spread: float | None, above_ceiling: bool = False) -> str:
    """A formatted figure with its spread in parentheses and its noise marks in front.

    Examples
    --------
    >>> from fastopt.bench.report import with_spread
    >>> with_spread("12.3 µs", 0.021)
    '12.3 µs (2.1%)'
    >>> with_spread("1.05×", 0.14)
    '~1.05× (14%)'
    >>> with_spread("104%", 0.03, above_ceiling=True)
    '!104% (3.0%)'
    >>> with_spread("98.0%", None)
    '98.0%'
    """
    if text == NA:
        return text
    marks = (CEILING_MARK if above_ceiling else "") + (NOISY_MARK if is_noisy(spread) else "")
    tail = "" if spread is None else f" ({format_spread(spread)})"
    return f"{marks}{text}{tail}"


def _time_cell(results: Results, case: str, rule: str, dtype: str, size: int, impl: str) -> str:
    return with_spread(
        format_time(results.time_ns(case, rule, dtype, size, impl)),
        results.time_spread(case, rule, dtype, size, impl),
    )


def _ratio_cell(
    results: Results,
    case: str,
    rule: str,
    dtype: str,
    size: int,
    baseline: str,
    impl: str = "fastopt",
) -> str:
    return with_spread(
        format_ratio(results.speedup(case, rule, dtype, size, baseline, impl)),
        results.speedup_spread(case, rule, dtype, size, baseline, impl),
    )


def _ceiling_cell(results: Results, rule: str, dtype: str, size: int) -> str:
    fraction = results.fraction_of_ceiling(rule, dtype, size)
    # Marked by the number shown: 100.04% prints as 100%, which is not above the ceiling.
    above = fraction is not None and _three_significant(fraction) > CEILING_LIMIT
    return with_spread(
        format_percent(fraction), results.ceiling_spread(rule, dtype, size), above_ceiling=above
    )


def noise_notes(rows: Sequence[Sequence[str]]) -> tuple[str, ...]:
    """Lines saying how many figures of ``rows`` are marked as noise, and why (or none)."""
    cells = [cell for row in rows for cell in row]
    measured = sum(bool(_WITH_SPREAD.search(cell)) for cell in cells)
    marks = [cell[: len(cell) - len(cell.lstrip(NOISY_MARK + CEILING_MARK))] for cell in cells]
    noisy = sum(NOISY_MARK in mark for mark in marks)
    above = sum(CEILING_MARK in mark for mark in marks)
    notes = []
    if noisy:
        notes.append(
            f"`{NOISY_MARK}` {noisy} of {measured} figures: spread above "
            f"{NOISY_SPREAD:.0%}, the machine was too noisy for them to mean much "
            "(rerun when it is quieter)."
        )
    if above:
        notes.append(
            f"`{CEILING_MARK}` {above} above 100% of the ceiling: a kernel moving the same "
            "bytes cannot beat it, so the machine changed speed between the samples (other "
            "programs, clock, bandwidth); read these as noise."
        )
    return tuple(notes)


def legend() -> tuple[str, ...]:
    """What the tables' units, spreads and marks mean: one line each."""
    return (
        "time/step: median time of one update over the repeats (fastopt: `opt.step(grad)`).",
        "Melt/s: million elements updated per second; GB/s: gigabytes read and written per "
        "second (B/elem: bytes read and written per element).",
        "% of ceiling: the time of a streaming kernel that reads and writes the same bytes, "
        "over fastopt's time; 100% is the memory-bandwidth roofline, so above 100% is noise.",
        f"{TIMES} X: X's time over fastopt's (above 1{TIMES}: fastopt is faster).",
        "(n%): the spread over the repeats, their interquartile range as a percentage of "
        "the median; for a % or a ratio, the spreads of its two times combined (root of the "
        "sum of squares); Melt/s and GB/s share the spread of time/step.",
        f"`{NOISY_MARK}`: spread above {NOISY_SPREAD:.0%}, too noisy to mean much; "
        f"`{CEILING_MARK}`: above 100% of the ceiling, noise.",
    )


def _table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> Table:
    rows = tuple(tuple(row) for row in rows)
    return Table(title, tuple(headers), rows, noise_notes(rows))


_IMPL_NAMES = {
    "fastopt": "fastopt",
    "fastopt-flat": "fastopt flat buffer",
    "ceiling": "ceiling",
    "numpy": "NumPy",
    "torch-fused": "torch fused",
    "torch-foreach": "torch foreach",
}


def _versus(baseline: str) -> str:
    return f"{TIMES} {_IMPL_NAMES[baseline]}"


def rule_table(results: Results, dtype: str) -> Table:
    """fastopt per rule and size: time, throughput, fraction of ceiling, speed-ups."""
    baselines = [b for b in BASELINES if b in results.implementations()]
    headers = (
        "rule",
        "size",
        "time/step",
        "Melt/s",
        "GB/s",
        "% of ceiling",
        *(_versus(b) for b in baselines),
    )
    rows = []
    for rule in results.rules(dtype):
        for size in results.sizes(dtype):
            row = results.get("single", rule, dtype, size, "fastopt")
            if row is None:
                continue
            measured = throughput(row)
            rows.append(
                (
                    RULES[rule].label,
                    size_label(size),
                    _time_cell(results, "single", rule, dtype, size, "fastopt"),
                    format_number(measured[0]) if measured else NA,
                    format_number(measured[1]) if measured else NA,
                    _ceiling_cell(results, rule, dtype, size),
                    *(_ratio_cell(results, "single", rule, dtype, size, b) for b in baselines),
                )
            )
    table = _table(f"fastopt, {dtype}", headers, rows)
    return replace(table, notes=table.notes + _twin_notes(results, dtype))


def _twin_notes(results: Results, dtype: str) -> tuple[str, ...]:
    """Which torch-side figures come from a reference package (rules torch lacks) or from
    a torch.optim class's per-tensor loop (no foreach flag)."""
    notes = {}
    for row in results.rows:
        if (
            row["dtype"] == dtype
            and row["case"] == "single"
            and row["implementation"].startswith("torch-")
            and row["status"] == "ok"
            and row["note"]
        ):
            notes.setdefault(RULES[row["rule"]].label, row["note"])
    return tuple(
        f"{_IMPL_NAMES['torch-foreach']} of {label}: {note}"
        + (
            ", the rule's reference package (torch.optim has no such rule)"
            if not note.startswith("torch.optim.")
            else ", which takes no foreach flag"
        )
        for label, note in notes.items()
    )


def times_table(results: Results, dtype: str) -> Table:
    """Median time per step of every implementation, side by side."""
    implementations = results.implementations()
    headers = ("rule", "size", *(_IMPL_NAMES.get(i, i) for i in implementations))
    rows = []
    for rule in results.rules(dtype):
        for size in results.sizes(dtype):
            cells = [
                _time_cell(results, "single", rule, dtype, size, impl) for impl in implementations
            ]
            rows.append((RULES[rule].label, size_label(size), *cells))
    return _table(f"Time per step, every implementation, {dtype}", headers, rows)


def many_tensors_table(results: Results) -> Table | None:
    """Adam over 200 arrays: per-array launches, one flat launch, NumPy, torch."""
    rows = [r for r in results.rows if r["case"] == "many_tensors"]
    if not rows:
        return None
    size, dtype = rows[0]["size"], rows[0]["dtype"]
    headers = ("implementation", "launches", "time/step", "GB/s", _versus("torch-fused"))
    table_rows = []
    for row in rows:
        impl = row["implementation"]
        measured = throughput(row)
        if row["status"] != "ok":
            cells = (f"{row['status']}: {row['note']}"[:80], NA, NA)
        else:
            cells = (
                _time_cell(results, "many_tensors", "adam", dtype, size, impl),
                format_number(measured[1]) if measured else NA,
                _ratio_cell(results, "many_tensors", "adam", dtype, size, "torch-fused", impl),
            )
        launches = "1" if impl in ("ceiling", "fastopt-flat") else str(row["arrays"])
        table_rows.append((_IMPL_NAMES.get(impl, impl), launches, *cells))
    title = f"Adam on {MANY_TENSORS_COUNT} arrays, {size_label(size)} elements in all, {dtype}"
    return _table(title, headers, table_rows)


def summary_table(results: Results) -> Table | None:
    """One row per rule at the largest float32 size: the README's results table."""
    dtype = "float32" if "float32" in results.dtypes() else (results.dtypes() or [None])[0]
    if dtype is None:
        return None
    size = results.sizes(dtype)[-1]
    baselines = [b for b in BASELINES if b in results.implementations()]
    headers = ("rule", "B/elem", "time/step", "GB/s", "% of ceiling", *map(_versus, baselines))
    rows = []
    for rule in results.rules(dtype):
        row = results.get("single", rule, dtype, size, "fastopt")
        measured = throughput(row) if row else None
        rows.append(
            (
                RULES[rule].label,
                str(RULES[rule].bytes_per_element(dtype)),
                _time_cell(results, "single", rule, dtype, size, "fastopt"),
                format_number(measured[1]) if measured else NA,
                _ceiling_cell(results, rule, dtype, size),
                *(_ratio_cell(results, "single", rule, dtype, size, b) for b in baselines),
            )
        )
    title = f"{size_label(size)} {dtype} elements, {results.data['config']['threads']} threads"
    table = _table(title, headers, rows)
    return replace(table, notes=table.notes + _twin_notes(results, dtype))


def _check(measured: float | None, goal: float, higher_is_better: bool = True) -> str:
    if measured is None:
        return "not measured"
    met = measured >= goal if higher_is_better else measured <= goal
    if met:
        return "met"
    shortfall = measured / goal if higher_is_better else goal / measured
    return f"missed ({shortfall:.2f} of the target)"


def targets_table(results: Results) -> Table:
    """The speed targets, each with its measurement and whether it is met."""
    dtype = "float32"
    sizes = results.sizes(dtype)
    large = [s for s in sizes if s >= 1 << 24]
    rows: list[tuple[str, ...]] = []
    for rule in results.rules(dtype):
        if not large:
            break
        size = large[-1]
        where = f"{RULES[rule].label}, n = {size_label(size)}"
        fraction = results.fraction_of_ceiling(rule, dtype, size)
        rows.append(
            (
                "≥ 95% of the same-bytes ceiling",
                where,
                _ceiling_cell(results, rule, dtype, size),
                _check(fraction, 0.95),
            )
        )
        implementation, baseline = "torch-fused", "torch fused"
        versus = results.speedup("single", rule, dtype, size, implementation)
        if versus is None and results.time_ns("single", rule, dtype, size, "torch-foreach"):
            implementation = "torch-foreach"
            baseline = "torch foreach (torch has no fused kernel here)"
            versus = results.speedup("single", rule, dtype, size, implementation)
        rows.append(
            (
                f"≥ parity with {baseline}",
                where,
                _ratio_cell(results, "single", rule, dtype, size, implementation),
                _check(versus, 1.0),
            )
        )
    for size, goal in ((1 << 16, 3.0), (1 << 20, 1.5)):
        if size in sizes and "adam" in results.rules(dtype):
            versus = results.speedup("single", "adam", dtype, size, "torch-fused")
            rows.append(
                (
                    f"≥ {goal:g}{TIMES} torch fused",
                    f"Adam, n = {size_label(size)}",
                    _ratio_cell(results, "single", "adam", dtype, size, "torch-fused"),
                    _check(versus, goal),
                )
            )
    many = [r for r in results.rows if r["case"] == "many_tensors"]
    if many:
        flat = results.get("many_tensors", "adam", "float32", many[0]["size"], "fastopt-flat")
        where = f"Adam, {MANY_TENSORS_COUNT} arrays, flat buffer"
        if flat is None or flat["status"] != "ok":
            note = flat["note"] if flat else "not measured"
            rows.append((f"≥ 8{TIMES} torch fused (per-tensor list)", where, NA, note))
        else:
            case = ("many_tensors", "adam", "float32", many[0]["size"], "torch-fused")
            rows.append(
                (
                    f"≥ 8{TIMES} torch fused (per-tensor list)",
                    where,
                    _ratio_cell(results, *case, "fastopt-flat"),
                    _check(results.speedup(*case, "fastopt-flat"), 8.0),
                )
            )
    overhead = results.data.get("overhead")
    if overhead:
        # The overhead is what opt.step adds to the kernel it launches (the kernel's own
        # time, numba's dispatch included, is in the per-call table beside it).
        python_ns = overhead["python_ns"]
        rows.append(
            (
                f"≤ {format_time(overhead['target_ns'])} overhead per call",
                f"`opt.step` minus the kernel alone, Adam, n = {size_label(overhead['size'])}",
                format_time(python_ns),
                _check(python_ns, overhead["target_ns"], higher_is_better=False),
            )
        )
    for rule in results.rules(dtype):
        if 1 << 24 in sizes:
            versus = results.speedup("single", rule, dtype, 1 << 24, "numpy")
            rows.append(
                (
                    f"≥ 8{TIMES} the NumPy reference",
                    f"{RULES[rule].label}, n = 2^24",
                    _ratio_cell(results, "single", rule, dtype, 1 << 24, "numpy"),
                    _check(versus, 8.0),
                )
            )
    compile_times = results.data.get("compile")
    if compile_times:
        for rule, times in compile_times["rules"].items():
            warm = times["warm"]["import_and_first_step_s"]
            rows.append(
                (
                    f"< {compile_times['warm_target_s']:g} s import + first step (warm cache)",
                    f"{RULES[rule].label}, n = 2^12",
                    f"{warm:.2f} s",
                    _check(warm, compile_times["warm_target_s"], higher_is_better=False),
                )
            )
    return _table("Speed targets (float32)", ("target", "case", "measured", "status"), rows)


def overhead_table(results: Results) -> Table | None:
    """Per-call time of ``opt.step`` at 2^12 elements, against the kernel alone."""
    overhead = results.data.get("overhead")
    if not overhead:
        return None
    parts = (
        ("`opt.step(grad)`", overhead["step"]),
        ("the serial Adam kernel alone", overhead["kernel"]),
        ("same-bytes ceiling via `launch`", overhead["ceiling"]),
    )
    rows = tuple(
        (name, format_time(t["median_ns"]), format_time(t["p10_ns"]), format_time(t["min_ns"]))
        for name, t in parts
    )
    title = (
        f"Per-call time, Adam, n = {size_label(overhead['size'])} {overhead['dtype']}, "
        f"{overhead['calls']} calls timed one by one"
    )
    return Table(title, ("call", "median", "10th percentile", "min"), rows)


def compile_table(results: Results) -> Table | None:
    """First-step latency with a cold and a warm numba cache, and the imports."""
    compile_times = results.data.get("compile")
    if not compile_times:
        return None
    headers = (
        "rule",
        "cold: first step 2^12",
        "cold: first step 2^20",
        "warm: first step 2^12",
        "warm: first step 2^20",
        "warm: import fastopt",
        "warm: import + first step",
    )
    rows = []
    for rule, times in compile_times["rules"].items():
        cold, warm = times["cold"], times["warm"]
        rows.append(
            (
                RULES[rule].label,
                *(
                    f"{value:.2f} s"
                    for value in (
                        cold["first_step_serial_s"],
                        cold["first_step_parallel_s"],
                        warm["first_step_serial_s"],
                        warm["first_step_parallel_s"],
                        warm["import_fastopt_s"],
                        warm["import_and_first_step_s"],
                    )
                ),
            )
        )
    baseline = compile_times.get("numba_baseline")
    if baseline:
        warm = baseline["warm"]
        rows.append(
            (
                "numba alone (one-loop cached function)",
                f"{baseline['cold']['first_call_s']:.2f} s",
                NA,
                f"{warm['first_call_s']:.2f} s",
                NA,
                NA,
                f"{warm['import_and_first_call_s']:.2f} s",
            )
        )
    return Table("Compile and import time (fresh processes, own numba cache)", headers, tuple(rows))


def _machine_lines(results: Results) -> list[str]:
    machine = results.data["machine"]
    versions = machine["versions"]
    caches = ", ".join(f"{k} {v}" for k, v in machine.get("caches", {}).items()) or NA
    lines = [
        f"CPU: {machine['cpu']} ({machine['architecture']}), {machine['usable_cpus']} usable "
        f"of {machine['logical_cpus']} logical CPUs; caches {caches}; "
        f"memory {machine.get('memory_gib') or NA} GiB",
        f"SIMD (LLVM, {machine['simd']['llvm_cpu']}): {' '.join(machine['simd']['llvm_features'])}",
        f"Python {machine['python']}, NumPy {versions['numpy']}, numba {versions['numba']} "
        f"(llvmlite {versions['llvmlite']}), threading layer `{machine['threading_layer']}`, "
        f"{results.data['config']['threads']} threads",
        f"torch: {versions.get('torch') or 'not installed'}",
        f"OS: {machine['os']}",
    ]
    bandwidth = results.data.get("bandwidth")
    if bandwidth:
        drift = bandwidth.get("spread")
        spread_text = "" if drift is None else f", spread {format_spread(drift)}"
        lines.append(
            f"Measured bandwidth: {bandwidth['gb_per_s']:.1f} GB/s (median; best "
            f"{bandwidth['best_gb_per_s']:.1f}{spread_text}) streaming 4 arrays in and 3 out of "
            f"{size_label(bandwidth['size'])} {bandwidth['dtype']} elements each"
        )
    return lines


def _method(results: Results) -> str:
    policy = results.data["config"]["policy"]
    torch = results.data.get("torch") or {}
    if torch.get("available"):
        torch_text = (
            f"torch {torch.get('version')} was timed in a {torch.get('isolation')}, "
            f"with {torch.get('threads')} threads, so its OpenMP threads and numba's "
            "never compete"
        )
    elif torch.get("note") == MISSING_NOTE:
        torch_text = (
            f"torch was not measured ({MISSING_NOTE}; to add it: {install_hint(markdown=True)})"
        )
    else:
        torch_text = f"torch was not measured ({torch.get('note', 'not requested')})"
    return (
        f"Each case runs {policy['warmup']} untimed warm-up calls (compilation happens there), "
        f"then batches of calls lasting at least {policy['sample_seconds'] * 1e3:g} ms each, "
        f"{policy['min_repeats']} to {policy['repeats']} batches within "
        f"{policy['max_seconds']:g} s; the tables show the median time per call "
        "(`time.perf_counter_ns`) and, in parentheses, the spread of the batches "
        "(quartiles, minima and maxima are in `results.json`). fastopt is timed through "
        "`opt.step(grad)`, the NumPy reference through its functional step, torch through "
        f"`opt.step()` with `.grad` set; {torch_text}. The same-bytes ceiling is a streaming "
        "kernel that reads and writes exactly the arrays the rule reads and writes, through "
        "the same drivers; % of ceiling is its time over fastopt's time. Bytes per element "
        "count each array read and written once (Adam float32: 28)."
    )


def _add(document: Document, table: Table | None, level: int = 2) -> None:
    if table is not None:
        document.heading(table.title, level)
        document.table(table.headers, table.rows)
        if table.notes:
            document.bullets(table.notes)


def write_report(
    results: Results, out: str | Path, log: Callable[[str], Any] = lambda _: None
) -> dict[str, Path]:
    """Write ``report.md``, ``report.html``, ``results.json`` and the PNG plots into ``out``.

    Returns the paths written, by name. Without matplotlib the report has no plots and says
    so.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {"json": out / "results.json"}
    save(results.data, written["json"])
    document = Document("fastopt benchmark report")
    created = results.data.get("created", "")
    document.paragraph(f"Measured {created} by `fastopt report`; raw data in `results.json`.")
    _add(document, summary_table(results))
    document.heading("Reading the tables", 3)
    document.bullets(legend())
    if not any(spread(row) is not None for row in results.rows):
        document.paragraph(
            "This run was saved without the quartiles of its samples: its figures have no "
            f"spread and no `{NOISY_MARK}` marks."
        )
    plots = matplotlib_available()
    bandwidth = (results.data.get("bandwidth") or {}).get("gb_per_s")
    if plots:
        for dtype in results.dtypes():
            log(f"plotting throughput ({dtype})")
            path = throughput_plot(results, dtype, bandwidth, out / f"throughput_{dtype}.png")
            written[f"throughput_{dtype}"] = path
        document.image(
            written[f"throughput_{results.dtypes()[0]}"],
            "throughput per rule against size, with the roofline",
        )
    else:
        document.paragraph("No plots: matplotlib is not installed (`pip install matplotlib`).")
    document.heading("Speed targets")
    targets = targets_table(results)
    document.table(targets.headers, targets.rows)
    if targets.notes:
        document.bullets(targets.notes)
    document.heading("Machine")
    document.bullets(_machine_lines(results))
    document.heading("Method")
    document.paragraph(_method(results))
    for dtype in results.dtypes():
        _add(document, rule_table(results, dtype))
        if plots and dtype != results.dtypes()[0]:
            document.image(written[f"throughput_{dtype}"], f"throughput per rule, {dtype}")
        if plots:
            path = speedup_plot(results, dtype, out / f"speedup_{dtype}.png")
            written[f"speedup_{dtype}"] = path
            document.image(path, f"speed-ups of fastopt, {dtype}")
        _add(document, times_table(results, dtype), level=3)
    _add(document, many_tensors_table(results))
    _add(document, overhead_table(results))
    overhead = results.data.get("overhead")
    if overhead:
        document.paragraph(
            f"The Python around the kernel (validation, schedules, the hyperparameter row, "
            f"the launch) costs {format_time(overhead['python_ns'])} per call: the median "
            "`opt.step` time minus the median time of the kernel called directly (numba's "
            "dispatch is part of the kernel's time)."
        )
    _add(document, compile_table(results))
    if results.data.get("compile"):
        document.paragraph(
            "Cold: an empty `NUMBA_CACHE_DIR`, so the kernels compile. Warm: the same cache "
            "again in a new process, so they load from disk. numba's own import and its "
            "first-call setup (type registries; SciPy's BLAS lookup when SciPy is installed) "
            "are part of every warm number; the last row shows them for a trivial function."
        )
    document.heading("Convergence on the seed problems")
    runs = seed_runs()
    if plots:
        log("plotting convergence")
        written["convergence"] = convergence_plot(runs, out / "convergence.png")
        document.image(written["convergence"], "loss per step on the seed problems")
    document.table(
        ("problem", "rule", "loss at start", "after 10 updates", "at the end"),
        [
            (
                run.problem,
                run.label,
                f"{run.losses[0]:.4g}",
                f"{run.losses[10]:.4g}",
                f"{run.losses[-1]:.4g}",
            )
            for run in runs
        ],
    )
    written["markdown"] = out / "report.md"
    written["markdown"].write_text(document.to_markdown(out), encoding="utf-8")
    written["html"] = out / "report.html"
    written["html"].write_text(document.to_html(), encoding="utf-8")
    return written
