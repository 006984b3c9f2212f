"""`carryon sweep` local pool: run the rows' scripts N at a time, each in its own session (a Ctrl-C
reaches the sweep only, which then stops the running rows itself and keeps the finished ones)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass

from packer.sweep_progress import Progress


@dataclass
class PoolOutcome:
    finished: list[str]       # rows whose script ran to its end
    interrupted: list[str]    # rows stopped by the interrupt (their partial results are to be discarded)
    signal: int = 0           # the signal that stopped the sweep (SIGINT, SIGTERM), 0 if none


def _stop(procs: dict[str, subprocess.Popen], grace: float = 10.0) -> None:
    for p in procs.values():
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    for p in procs.values():
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()


def run_pool(scripts: dict[str, str], jobs: int, progress: Progress) -> PoolOutcome:
    """scripts: row id -> run.sh path, in order. SIGINT/SIGTERM (even when inherited as ignored, as
    `carryon sweep ... &` in a script does) stop the pool: no new rows start, the running ones are
    stopped and listed as interrupted. The handlers only record the signal, so a signal arriving while a
    row is being started cannot leave that row running unsupervised."""
    pending = list(scripts.items())
    running: dict[str, subprocess.Popen] = {}
    finished: list[str] = []
    stop: list[int] = []

    def on_signal(signum, frame):
        stop.append(signum)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while (pending or running) and not stop:
            while pending and len(running) < jobs and not stop:
                row, script = pending.pop(0)
                running[row] = subprocess.Popen(["/bin/sh", script], stdin=subprocess.DEVNULL,
                                                start_new_session=True)
            # wait for any child: poll every 50 ms (rows run for much longer than that)
            done = [r for r, p in running.items() if p.poll() is not None]
            if not done:
                time.sleep(0.05)
                continue
            for r in done:
                rc = running.pop(r).returncode
                finished.append(r)
                progress.row_done(rc == 0)
    finally:
        # rows that ended before the signal was seen are finished rows, not interrupted ones
        for r in [r for r, p in running.items() if p.poll() is not None]:
            running.pop(r)
            finished.append(r)
        _stop(running)
        for s, h in old.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
    return PoolOutcome(finished, list(running), stop[0] if stop else 0)
