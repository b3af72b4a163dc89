"""The benchmark's progress bar on stderr: tqdm's, with the case now running and time left."""

from __future__ import annotations

import sys
from typing import TextIO

from tqdm import tqdm

__all__ = ["Progress"]


class Progress:
    """Counts finished cases, names the one now running and estimates the time left.

    The bar is drawn only on a terminal (tqdm's ``disable=None``): with stderr redirected to
    a file or a pipe nothing is written, so logs stay clean.

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
        self._running = 0
        self._bar: tqdm | None = None

    def reset(self, total: int) -> None:
        """Start again with ``total`` cases."""
        self.close()
        self.total, self.done, self._running = total, 0, 0
        if self.enabled:
            self._bar = tqdm(
                total=total,
                file=self.stream,
                unit="case",
                leave=False,
                dynamic_ncols=True,
                disable=None,
            )

    def advance(self, label: str, count: int = 1) -> None:
        """Start ``count`` more cases, named ``label``; the ones started before are done."""
        self._finish_running()
        self._running = count
        if self._bar is not None:
            self._bar.set_description_str(label, refresh=False)
            self._bar.refresh()

    def _finish_running(self) -> None:
        self.done = min(self.done + self._running, self.total)
        if self._bar is not None and self._running:
            self._bar.update(self._running)
        self._running = 0

    def close(self) -> None:
        """Count the running cases as done and remove the bar."""
        self._finish_running()
        if self._bar is not None:
            self._bar.close()
            self._bar = None
