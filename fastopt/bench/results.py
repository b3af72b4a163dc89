"""A benchmark run as data: saving, loading, and the figures derived from its rows.

A run is one JSON object (:data:`SCHEMA` in ``"schema"``) holding the machine description,
the configuration, the rows of :func:`fastopt.bench.suite.run_suite` and the optional
overhead, bandwidth and compile-time measurements. Throughput, bandwidth, fraction of the
ceiling, speed-ups and their spreads are derived from the rows when shown, never stored.

A row's spread is the interquartile range of its samples over their median
(:func:`spread`); runs saved before the quartiles were recorded have none, and their figures
are shown without one. A ratio's spread combines the spreads of its two times
(:func:`combined_spread`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fastopt.bench.cases import RULES

__all__ = [
    "CEILING_LIMIT",
    "NOISY_SPREAD",
    "SCHEMA",
    "Results",
    "combined_spread",
    "is_noisy",
    "load",
    "save",
    "spread",
    "throughput",
]

SCHEMA = "fastopt-bench/1"
#: A figure whose spread (interquartile range over median) is above this is too noisy to mean
#: much: the machine changed speed while it was measured.
NOISY_SPREAD = 0.10
#: The same-bytes ceiling is what a kernel moving the rule's bytes can reach; a fraction of it
#: above this is the machine's bandwidth changing between samples, not a faster kernel.
CEILING_LIMIT = 1.0
_REQUIRED = ("machine", "config", "rows")


@dataclass
class Results:
    """A run's data with lookups by case.

    Attributes
    ----------
    data
        The JSON object (see the module docstring).
    """

    data: dict[str, Any]

    def __post_init__(self) -> None:
        self._index = {
            (r["case"], r["rule"], r["dtype"], r["size"], r["implementation"]): r
            for r in self.data["rows"]
        }

    @property
    def rows(self) -> list[dict[str, Any]]:
        return self.data["rows"]

    def get(self, case: str, rule: str, dtype: str, size: int, implementation: str):
        """The row of one case, or None."""
        return self._index.get((case, rule, dtype, size, implementation))

    def time_ns(self, case: str, rule: str, dtype: str, size: int, implementation: str):
        """Median ns per step of a case, or None when it was not measured."""
        row = self.get(case, rule, dtype, size, implementation)
        if row is None or row.get("status") != "ok":
            return None
        return float(row["median_ns"])

    def speedup(
        self,
        case: str,
        rule: str,
        dtype: str,
        size: int,
        baseline: str,
        implementation: str = "fastopt",
    ) -> float | None:
        """How many times faster ``implementation`` is than ``baseline`` (None if either is
        missing)."""
        ours = self.time_ns(case, rule, dtype, size, implementation)
        theirs = self.time_ns(case, rule, dtype, size, baseline)
        if ours is None or theirs is None:
            return None
        return theirs / ours

    def fraction_of_ceiling(
        self, rule: str, dtype: str, size: int, implementation: str = "fastopt"
    ) -> float | None:
        """Ceiling time over the implementation's time, same bytes (1.0 = at the roofline)."""
        return self.speedup("single", rule, dtype, size, "ceiling", implementation)

    def time_spread(
        self, case: str, rule: str, dtype: str, size: int, implementation: str
    ) -> float | None:
        """:func:`spread` of a measured case, or None (not measured, or no quartiles saved)."""
        if self.time_ns(case, rule, dtype, size, implementation) is None:
            return None
        return spread(self.get(case, rule, dtype, size, implementation))

    def speedup_spread(
        self,
        case: str,
        rule: str,
        dtype: str,
        size: int,
        baseline: str,
        implementation: str = "fastopt",
    ) -> float | None:
        """:func:`combined_spread` of the two times of :meth:`speedup`, or None.

        An implementation against itself is exactly 1: its spread is 0.
        """
        if baseline == implementation:
            known = self.time_spread(case, rule, dtype, size, implementation) is not None
            return 0.0 if known else None
        return combined_spread(
            self.time_spread(case, rule, dtype, size, implementation),
            self.time_spread(case, rule, dtype, size, baseline),
        )

    def ceiling_spread(
        self, rule: str, dtype: str, size: int, implementation: str = "fastopt"
    ) -> float | None:
        """:func:`combined_spread` of the two times of :meth:`fraction_of_ceiling`, or None."""
        return self.speedup_spread("single", rule, dtype, size, "ceiling", implementation)

    def dtypes(self) -> list[str]:
        return list(dict.fromkeys(r["dtype"] for r in self.rows if r["case"] == "single"))

    def sizes(self, dtype: str) -> list[int]:
        return sorted(
            {r["size"] for r in self.rows if r["case"] == "single" and r["dtype"] == dtype}
        )

    def rules(self, dtype: str | None = None) -> list[str]:
        present = {
            r["rule"]
            for r in self.rows
            if r["case"] == "single" and (dtype is None or r["dtype"] == dtype)
        }
        return [name for name in RULES if name in present]

    def implementations(self, case: str = "single") -> list[str]:
        return list(dict.fromkeys(r["implementation"] for r in self.rows if r["case"] == case))


def throughput(row: Mapping[str, Any]) -> tuple[float, float] | None:
    """``(million elements per second, GB/s)`` of a measured row, else None."""
    if row.get("status") != "ok":
        return None
    ns = float(row["median_ns"])
    return row["size"] / ns * 1e3, row["size"] * row["bytes_per_element"] / ns


def spread(row: Mapping[str, Any]) -> float | None:
    """Interquartile range of a row's samples over their median.

    None when the row was not measured, has fewer than two samples or was saved without
    quartiles (runs from before they were recorded).

    Examples
    --------
    >>> from fastopt.bench.results import spread
    >>> spread({"status": "ok", "median_ns": 12.0, "q1_ns": 11.0, "q3_ns": 13.0, "samples": 5})
    0.16666666666666666
    >>> spread({"status": "ok", "median_ns": 12.0, "samples": 5}) is None
    True
    """
    if row.get("status") != "ok" or "q1_ns" not in row or "q3_ns" not in row:
        return None
    median = float(row["median_ns"])
    if row.get("samples", 0) < 2 or median <= 0:
        return None
    return (float(row["q3_ns"]) - float(row["q1_ns"])) / median


def combined_spread(*spreads: float | None) -> float | None:
    """Spread of a ratio of times: the root of the sum of their spreads' squares.

    That is how independent relative errors add up; the times of one case taken round-robin
    share the machine's drift, so for them it errs on the high side. None if any is None.

    Examples
    --------
    >>> from fastopt.bench.results import combined_spread
    >>> round(combined_spread(0.03, 0.04), 6)
    0.05
    >>> combined_spread(0.03, None) is None
    True
    """
    known = [value for value in spreads if value is not None]
    if len(known) < len(spreads):
        return None
    return math.sqrt(sum(value * value for value in known))


def is_noisy(value: float | None) -> bool:
    """Whether a spread is above :data:`NOISY_SPREAD` (False when it is unknown)."""
    return value is not None and value > NOISY_SPREAD


def save(data: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Write a run as JSON."""
    with open(path, "w", encoding="utf-8") as file:
        json.dump(dict(data), file, indent=1)
        file.write("\n")


def load(path: str | os.PathLike[str]) -> Results:
    """Read a run written by :func:`save` (``fastopt bench --json``).

    Raises
    ------
    ValueError
        If the file is not JSON or not a fastopt benchmark run.
    """
    try:
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not JSON: {error}") from error
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ValueError(f"{path} is not a fastopt benchmark run (schema {SCHEMA!r})")
    missing = [key for key in _REQUIRED if key not in data]
    if missing:
        raise ValueError(f"{path} lacks {missing}")
    return Results(data)
