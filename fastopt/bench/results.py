"""A benchmark run as data: saving, loading, and the figures derived from its rows.

A run is one JSON object (:data:`SCHEMA` in ``"schema"``) holding the machine description,
the configuration, the rows of :func:`fastopt.bench.suite.run_suite` and the optional
overhead, bandwidth and compile-time measurements. Throughput, bandwidth, fraction of the
ceiling and speed-ups are derived from the rows when shown, never stored.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fastopt.bench.cases import RULES

__all__ = ["SCHEMA", "Results", "load", "save", "throughput"]

SCHEMA = "fastopt-bench/1"
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
