"""A minimal progress bar on stderr, shown only when stderr is a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


class Bar:
    """`Bar(label, total)`; `update(done)`; `close()`. Silent unless the stream is a TTY."""

    def __init__(self, label: str, total: int, stream: TextIO | None = None, enabled: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            try:
                enabled = self.stream.isatty()
            except (AttributeError, ValueError):
                enabled = False
        self.enabled = enabled
        self.label = label
        self.total = max(total, 0)
        self.done = 0
        self._last = 0.0
        self._shown = False
        self.detail = ""          # shown after the numbers (e.g. the blob being fetched)

    def update(self, done: int) -> None:
        self.done = done
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < 0.1 and done < self.total:
            return
        self._last = now
        self._draw()

    def _draw(self) -> None:
        width = 30
        if self.total:
            frac = min(self.done / self.total, 1.0)
            fill = int(frac * width)
            text = f"\r{self.label:<12} [{'#' * fill}{'.' * (width - fill)}] {frac * 100:5.1f}% {_mb(self.done)}"
        else:
            text = f"\r{self.label:<12} {_mb(self.done)}"
        self.stream.write(text + self.detail + "\033[K")
        self.stream.flush()
        self._shown = True

    def close(self) -> None:
        if self.enabled:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()
        elif self.enabled and self._shown:
            self.stream.write("\n")
