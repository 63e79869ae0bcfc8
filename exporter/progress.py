"""Progress on a terminal (stderr), silent when asked or when stderr is not a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class TerminalProgress:
    def __init__(self, stream: TextIO | None = None, enabled: bool | None = None):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self._label = ""
        self._total: int | None = None
        self._done = 0
        self._last_draw = 0.0
        self._started = 0.0

    def note(self, text: str) -> None:
        if self.enabled:
            print(text, file=self.stream, flush=True)

    def start(self, label: str, total: int | None = None) -> None:
        self._label, self._total, self._done = label, total, 0
        self._started = time.perf_counter()
        self._draw(force=True)

    def advance(self, count: int = 1) -> None:
        self._done += count
        self._draw()

    def finish(self) -> None:
        if self.enabled and self._label:
            self._draw(force=True)
            print(f"  ({time.perf_counter() - self._started:.1f}s)", file=self.stream, flush=True)
        self._label = ""

    def _draw(self, force: bool = False) -> None:
        now = time.perf_counter()
        if not self.enabled or (not force and now - self._last_draw < 0.1):
            return
        self._last_draw = now
        if self._total:
            width = 28
            filled = int(width * min(self._done, self._total) / self._total)
            bar = "#" * filled + "-" * (width - filled)
            text = f"\r{self._label:<14} [{bar}] {self._done}/{self._total}"
        else:
            text = f"\r{self._label:<14} {self._done}"
        self.stream.write(text)
        self.stream.flush()
