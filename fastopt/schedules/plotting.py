"""Draw schedules to a PNG file with matplotlib, imported only when plotting."""

from __future__ import annotations

import os
from collections.abc import Sequence

from fastopt._checks import plural
from fastopt.schedules.base import Schedule, integer


def plot(
    schedules: Schedule | Sequence[Schedule],
    steps: int,
    path: str | os.PathLike[str],
    labels: Sequence[str] | None = None,
    title: str | None = None,
    figsize: tuple[float, float] = (8.0, 4.5),
    dpi: int = 100,
) -> str | os.PathLike[str]:
    """Plot the values of one or several schedules over steps ``0 .. steps - 1`` to a PNG.

    The image is exactly ``figsize[0] * dpi`` by ``figsize[1] * dpi`` pixels.

    Parameters
    ----------
    schedules : Schedule or sequence of Schedule
        What to draw, one line each.
    steps : int
        Number of steps to evaluate; >= 1.
    path : str or os.PathLike
        Output PNG file.
    labels : sequence of str, optional
        Legend entries, one per schedule; defaults to each schedule's ``repr``.
    title : str, optional
        Figure title.
    figsize : tuple of float
        Width and height in inches.
    dpi : int
        Pixels per inch; >= 1.

    Returns
    -------
    str or os.PathLike
        ``path``.

    Raises
    ------
    ImportError
        If matplotlib is not installed.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            "fastopt.schedules.plot needs matplotlib; install it with `pip install matplotlib`"
        ) from error

    if isinstance(schedules, Schedule):
        schedules = [schedules]
    for i, schedule in enumerate(schedules):
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedules[{i}] must be a Schedule, got {type(schedule).__name__}")
    steps = integer("steps", steps, minimum=1)
    dpi = integer("dpi", dpi, minimum=1)
    if labels is None:
        labels = [repr(schedule) for schedule in schedules]
    if len(labels) != len(schedules):
        raise ValueError(
            f"got {plural(len(labels), 'label')} for {plural(len(schedules), 'schedule')}"
        )

    # A bare Figure on the Agg canvas leaves pyplot's global state and backend untouched.
    figure = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    x = range(steps)
    for schedule, label in zip(schedules, labels, strict=True):
        axes.plot(x, [schedule(step) for step in x], label=label)
    axes.set_xlabel("step")
    axes.set_ylabel("value")
    if title is not None:
        axes.set_title(title)
    # Long labels (a composed schedule's repr) may overflow the axes rather than squeeze them.
    axes.legend(fontsize="small").set_in_layout(False)
    axes.grid(alpha=0.3)
    figure.savefig(path, format="png", dpi=dpi)
    return path
