"""Progress on a terminal (stderr) through tqdm, silent when asked or when stderr is not a terminal.

tqdm draws the bars (rate, elapsed time, width of the terminal) and keeps notes from tearing them.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO


class TerminalProgress:
    """Bars nest: a loop inside a loop (calibration inside the int8 search's trials) draws a second
    bar below the first; ``advance`` moves the innermost, ``finish`` closes it."""

    def __init__(self, stream: TextIO | None = None, enabled: bool | None = None):
        self.stream = stream or sys.stderr
        self.enabled = _is_terminal(self.stream) if enabled is None else enabled
        self._bars: list[Any] = []

    def note(self, text: str) -> None:
        if self.enabled:
            from tqdm import tqdm

            tqdm.write(text, file=self.stream)

    def start(self, label: str, total: int | None = None) -> None:
        if self.enabled:
            from tqdm import tqdm

            self._bars.append(tqdm(total=total, desc=label, file=self.stream, leave=not self._bars, position=len(self._bars),
                                   dynamic_ncols=True, mininterval=0.1))

    def advance(self, count: int = 1) -> None:
        if self._bars:
            self._bars[-1].update(count)

    def finish(self) -> None:
        if self._bars:
            self._bars.pop().close()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or file-like stream without a terminal
        return False
