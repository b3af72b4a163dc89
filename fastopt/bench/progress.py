"""A progress bar on stderr: tqdm's when it is installed, a one-line counter otherwise."""

from __future__ import annotations

import sys
from typing import Any, TextIO

__all__ = ["Progress"]


class Progress:
    """Counts finished cases and shows the one now running.

    Parameters
    ----------
    total
        Number of cases expected (see :meth:`reset`).
    enabled
        Show nothing when False.
    stream
        Where to draw; stderr by default, so tables on stdout stay clean.
    """

    def __init__(self, total: int = 0, enabled: bool = True, stream: TextIO | None = None):
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.total = total
        self.done = 0
        self._bar: Any = None
        self._width = 0

    def reset(self, total: int) -> None:
        """Start again with ``total`` cases."""
        self.close()
        self.total, self.done = total, 0
        if not self.enabled:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            return
        self._bar = tqdm(
            total=total, file=self.stream, unit="case", leave=False, dynamic_ncols=True
        )

    def advance(self, label: str, count: int = 1) -> None:
        """Count ``count`` more cases as started; ``label`` names the one now running."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.set_description_str(label, refresh=False)
            self._bar.update(count)
            return
        self.done += count
        line = f"[{min(self.done, self.total)}/{self.total}] {label}"
        if self.stream.isatty():
            padding = " " * max(0, self._width - len(line))
            self.stream.write(f"\r{line}{padding}")
            self._width = len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Remove the bar (the counter ends its line)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.enabled and self._width:
            self.stream.write("\n")
            self.stream.flush()
            self._width = 0
