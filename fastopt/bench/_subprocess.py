"""Environment for the benchmark's child processes: they import this same fastopt."""

from __future__ import annotations

import os
from pathlib import Path

import fastopt

__all__ = ["child_env"]


def child_env(**overrides: str) -> dict[str, str]:
    """``os.environ`` with this fastopt's directory first on ``PYTHONPATH``, plus ``overrides``.

    A child started from another directory, or beside an installed copy, then measures the
    checkout the parent runs.
    """
    root = str(Path(fastopt.__file__).resolve().parent.parent)
    path = os.environ.get("PYTHONPATH")
    env = dict(os.environ, PYTHONPATH=root if not path else os.pathsep.join((root, path)))
    env.update(overrides)
    return env
