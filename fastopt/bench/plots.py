"""The report's figures, drawn with matplotlib's Agg canvas (no display, no pyplot state)."""

from __future__ import annotations

import math
from pathlib import Path

from fastopt.bench.cases import BASELINES, RULES, size_label
from fastopt.bench.results import Results, throughput
from fastopt.bench.seed import SeedRun

__all__ = ["convergence_plot", "matplotlib_available", "speedup_plot", "throughput_plot"]

_STYLE = {
    "fastopt": {"color": "#d62728", "marker": "o", "linewidth": 2.2, "zorder": 5},
    "ceiling": {"color": "black", "linestyle": "--", "linewidth": 1.2},
    "numpy": {"color": "#1f77b4", "marker": "s"},
    "torch-fused": {"color": "#2ca02c", "marker": "^"},
    "torch-foreach": {"color": "#9467bd", "marker": "v"},
}
_LABEL = {
    "fastopt": "fastopt",
    "ceiling": "same-bytes ceiling",
    "numpy": "NumPy reference",
    "torch-fused": "torch fused",
    "torch-foreach": "torch foreach",
}


def matplotlib_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(figure)
    return figure


def _grid(count: int) -> tuple[int, int]:
    columns = min(3, count)
    return math.ceil(count / columns), columns


def throughput_plot(results: Results, dtype: str, bandwidth_gbps: float | None, path: Path):
    """Elements per second against size, one panel per rule (log-log), roofline drawn."""
    rules = results.rules(dtype)
    rows, columns = _grid(len(rules))
    figure = _figure(4.3 * columns, 3.4 * rows)
    axes_list = figure.subplots(rows, columns, squeeze=False).ravel()
    for axes, rule in zip(axes_list, rules, strict=False):
        for implementation in results.implementations():
            points = []
            for size in results.sizes(dtype):
                row = results.get("single", rule, dtype, size, implementation)
                measured = throughput(row) if row else None
                if measured:
                    points.append((size, measured[0]))
            if points:
                xs, ys = zip(*points, strict=True)
                axes.plot(
                    xs,
                    ys,
                    label=_LABEL.get(implementation, implementation),
                    **_STYLE.get(implementation, {}),
                )
        if bandwidth_gbps:
            per_element = RULES[rule].bytes_per_element(dtype)
            roofline = bandwidth_gbps * 1e3 / per_element
            axes.axhline(
                roofline,
                color="gray",
                linestyle=":",
                linewidth=1.5,
                label=f"DRAM roofline ({bandwidth_gbps:.1f} GB/s measured)",
            )
        axes.set_xscale("log", base=2)
        axes.set_yscale("log")
        axes.set_title(f"{RULES[rule].label} ({RULES[rule].bytes_per_element(dtype)} B/elem)")
        axes.set_xlabel("elements")
        axes.set_ylabel("million elements / s")
        axes.grid(alpha=0.3, which="both")
    for axes in axes_list[len(rules) :]:
        axes.set_visible(False)
    handles, labels = axes_list[0].get_legend_handles_labels()
    figure.legend(
        handles,
        labels,
        loc="lower center",
        ncol=min(6, len(labels)),
        fontsize="small",
        frameon=False,
    )
    figure.suptitle(f"Update throughput, {dtype}, {results.data['config']['threads']} threads")
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    figure.savefig(path, format="png")
    return path


def speedup_plot(results: Results, dtype: str, path: Path):
    """fastopt's speed-up over each baseline, per rule, at the smallest and largest sizes."""
    baselines = [b for b in BASELINES if b in results.implementations()]
    sizes = results.sizes(dtype)
    shown = sorted({sizes[0], sizes[-1]})
    rules = results.rules(dtype)
    figure = _figure(max(6.0, 1.2 * len(rules) * len(shown)), 4.0)
    axes_list = figure.subplots(1, len(shown), squeeze=False).ravel()
    width = 0.8 / max(1, len(baselines))
    for axes, size in zip(axes_list, shown, strict=True):
        for k, baseline in enumerate(baselines):
            xs, ys = [], []
            for i, rule in enumerate(rules):
                ratio = results.speedup("single", rule, dtype, size, baseline)
                if ratio:
                    xs.append(i + (k - (len(baselines) - 1) / 2) * width)
                    ys.append(ratio)
            axes.bar(
                xs, ys, width=width, label=f"vs {_LABEL[baseline]}", color=_STYLE[baseline]["color"]
            )
        axes.axhline(1.0, color="black", linewidth=0.8)
        axes.set_yscale("log")
        axes.set_xticks(
            range(len(rules)), [RULES[r].label for r in rules], rotation=20, fontsize="small"
        )
        axes.set_title(f"n = {size_label(size)}")
        axes.set_ylabel("speed-up of fastopt (times)")
        axes.grid(alpha=0.3, axis="y", which="both")
    axes_list[0].legend(fontsize="small")
    figure.suptitle(f"fastopt speed-up per step, {dtype} (higher is better)")
    figure.tight_layout()
    figure.savefig(path, format="png")
    return path


def convergence_plot(runs: list[SeedRun], path: Path):
    """Loss per update of each rule on the seed tutorial's problems (log scale)."""
    figure = _figure(11.0, 4.0)
    quadratic, regression = figure.subplots(1, 2)
    for run in runs:
        axes = quadratic if run.problem == "quadratic" else regression
        # log scale: an exact zero (a step landing on the minimum) would drop the line
        losses = [max(loss, 1e-300) for loss in run.losses]
        axes.plot(range(len(losses)), losses, label=run.label)
    quadratic.set_title("f(x) = x², x₀ = 10")
    regression.set_title("fit y = w·x + b to y = 2x, x ∈ {1, 2, 3, 4}")
    for axes, xlabel in ((quadratic, "step"), (regression, "update (one sample each)")):
        axes.set_yscale("log")
        axes.set_xlabel(xlabel)
        axes.set_ylabel("loss")
        axes.grid(alpha=0.3, which="both")
        axes.legend(fontsize="small")
    figure.suptitle("The seed tutorial's problems with fastopt (float64)")
    figure.tight_layout()
    figure.savefig(path, format="png")
    return path
