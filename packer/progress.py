"""Progress on stderr, shown only when stderr is a terminal: `Bar` (one line) and `Board` (one line
per item and a total line, redrawn in place, like `docker pull`; safe to update from several threads)."""

from __future__ import annotations

import os
import sys
import threading
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


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Board:
    """`Board(title)`; `add(label, size, state)` -> item; `advance(item, n)` (n < 0: a restart);
    `set_state(item, text)`; `close()`. Item lines show a bar, MB done/size and a state ("waiting",
    "downloading", "done", "cached", ...); the total line sums the items that are not "cached".
    Silent unless the stream is a TTY. Lines are cut to the terminal's width and, when there are more
    items than the terminal has rows, the ones being worked on are shown."""

    def __init__(self, title: str, stream: TextIO | None = None, enabled: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = _is_tty(self.stream) if enabled is None else enabled
        self.title = title
        self.items: list[list] = []          # [label, size, done, state]
        self._lock = threading.Lock()
        self._last = 0.0
        self._drawn = 0                       # lines on screen from the last draw

    def add(self, label: str, size: int, state: str = "waiting") -> int:
        with self._lock:
            self.items.append([label, max(size, 0), 0, state])
            return len(self.items) - 1

    def advance(self, item: int, n: int) -> None:
        with self._lock:
            self.items[item][2] += n
            self._maybe_draw(False)

    def set_state(self, item: int, state: str) -> None:
        with self._lock:
            self.items[item][3] = state
            self._maybe_draw(False)

    def totals(self) -> tuple[int, int]:
        """(bytes done, bytes to do) over the items that are not "cached"."""
        live = [it for it in self.items if it[3] != "cached"]
        return sum(it[2] for it in live), sum(it[1] for it in live)

    def _maybe_draw(self, force: bool) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.1:
            return
        self._last = now
        self._draw()

    def _lines(self) -> list[str]:
        try:
            cols, rows = os.get_terminal_size(self.stream.fileno())
        except (AttributeError, ValueError, OSError):
            cols, rows = 0, 0
        cols, rows = cols or 80, rows or 24
        width = max(max((len(it[0]) for it in self.items), default=0), 1)
        items = self.items
        room = max(rows - 2, 1)
        if len(items) > room:  # the ones being worked on, in order
            busy = [it for it in items if it[3] not in ("waiting", "done", "cached")]
            items = (busy + [it for it in items if it not in busy and it[3] == "waiting"])[:room]
            items += [["", 0, 0, ""]] * (room - len(items))
        out = []
        for label, size, done, state in items:
            if not label:
                out.append("")
                continue
            out.append(f"{label:<{width}}  {_bar(done, size, 20)} {_of(done, size)}  {state}")
        done, total = self.totals()
        n_done = sum(1 for it in self.items if it[3] in ("done", "cached"))
        out.append(f"{self.title:<{width}}  {_bar(done, total, 20)} {_of(done, total)}  "
                   f"{n_done}/{len(self.items)} done")
        return [line[:cols - 1] for line in out]

    def _draw(self) -> None:
        lines = self._lines()
        up = f"\r\033[{self._drawn}A" if self._drawn else "\r"
        self.stream.write(up + "".join(line + "\033[K\n" for line in lines))
        self.stream.flush()
        self._drawn = len(lines)

    def close(self) -> None:
        with self._lock:
            self._maybe_draw(True)

    def __enter__(self) -> Board:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _bar(done: int, total: int, width: int) -> str:
    frac = min(done / total, 1.0) if total > 0 else 1.0
    fill = int(max(frac, 0.0) * width)
    return f"[{'#' * fill}{'.' * (width - fill)}]"


def _of(done: int, total: int) -> str:
    """`12.3/45.6 MB`, or in kB below 1 MB."""
    if total < 1_000_000:
        return f"{done / 1e3:.1f}/{total / 1e3:.1f} kB"
    return f"{done / 1e6:.1f}/{total / 1e6:.1f} MB"
