"""A one-line progress bar for `carryon sweep`, drawn on stderr only when stderr is a terminal."""

from __future__ import annotations

import sys
from typing import TextIO


class Progress:
    def __init__(self, total: int, done: int = 0, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.total, self.ok, self.failed, self.base = total, 0, 0, done
        self._draw()

    def row_done(self, ok: bool) -> None:
        if ok:
            self.ok += 1
        else:
            self.failed += 1
        self._draw()

    def set_counts(self, ok: int, failed: int) -> None:
        if (ok, failed) != (self.ok, self.failed):
            self.ok, self.failed = ok, failed
            self._draw()

    def _draw(self) -> None:
        if not self.enabled:
            return
        done = self.base + self.ok + self.failed
        width = 30
        fill = width * done // max(1, self.total)
        bar = "#" * fill + "-" * (width - fill)
        fail = f", {self.failed} failed" if self.failed else ""
        self.stream.write(f"\rsweep [{bar}] {done}/{self.total}{fail} ")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
