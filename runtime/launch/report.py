"""What the archive says while it works: `--carryon-verbose` lines, the start-up timeline
(`--carryon-verbose=3`) and progress bars (on a terminal only)."""

from __future__ import annotations

import os
import sys

_T0 = __import__("time").perf_counter()


class Reporter:
    def __init__(self, verbose: int) -> None:
        self.verbose = verbose
        self.tty = _isatty(2)

    def mark(self, what: str) -> None:
        """Start-up timeline at --carryon-verbose=3 (ms since this module was imported; the first
        mark also says how old the process was then, at the kernel clock's 10 ms resolution)."""
        if self.verbose >= 3:
            import time
            if not getattr(self, "_aged", False):
                self._aged = True
                try:
                    with open("/proc/self/stat") as f:
                        start = int(f.read().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
                    age = time.clock_gettime(time.CLOCK_BOOTTIME) - (time.perf_counter() - _T0) - start
                    self.say(f"process age when runtime.launch was imported: ~{age * 1000:.0f} ms", 3)
                except (OSError, ValueError, IndexError):
                    pass
            self.say(f"+{(time.perf_counter() - _T0) * 1000:.1f} ms {what}", 3)

    def say(self, msg: str, level: int = 1) -> None:
        if self.verbose >= level:
            sys.stderr.write(f"carryon: {msg}\n")
            sys.stderr.flush()


def _isatty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


class ProgressBar:
    """`carryon: extracting NAME [#####.....] 45% 55/122 MB` on a terminal, at most 10 updates/s."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.last = 0.0
        self.shown = False

    def __call__(self, done: int, total: int) -> None:
        import time
        now = time.monotonic()
        if now - self.last < 0.1 and done < total:
            return
        self.last = now
        frac = min(1.0, done / total) if total > 0 else 0.0
        width = 30
        bar = "#" * int(frac * width) + "." * (width - int(frac * width))
        sys.stderr.write(f"\rcarryon: {self.label} [{bar}] {int(frac * 100):3d}% "
                         f"{done / 1e6:.0f}/{total / 1e6:.0f} MB")
        sys.stderr.flush()
        self.shown = True

    def done(self) -> None:
        if self.shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()

