"""CPU placement of the tracer and the guest: one CPU while the guest runs one thing at a time.

Every stop wakes the tracer and then the tracee again. When both sit on the same CPU that is two
plain context switches; when the scheduler spreads them over two CPUs each wake-up crosses CPUs
(an IPI, often an idle CPU leaving its sleep state; in a VM a hypervisor exit), which costs several
times more per stop. A guest running one process at a time (a shell script, `find`, a compiler
driver, Python starting up) loses nothing by sharing one CPU with the tracer, so:

`CARRYON_PIN` (environment):
- unset / `auto` (default): the tracer and the guest start pinned to the CPU the tracer runs on,
  and are unpinned for the rest of the run (every guest thread and process back to the original
  CPU set, the tracer too) as soon as the guest may want more than one CPU or could see the pin:
    * it creates a thread (PTRACE_EVENT_CLONE);
    * it calls sched_getaffinity / sched_setaffinity (nproc, OpenMP and Go runtimes, taskset...)
      — the call then runs unpinned and sees (or sets) the real thing; after a guest
      sched_setaffinity the tracer never touches CPU sets again;
    * it opens a `/proc/.../status` file by its absolute path (Cpus_allowed shows the CPU set);
    * its threads (and the tracer) wait for the CPU: checked every CHECK_INTERVAL seconds by a
      helper thread of the tracer (no signals: the archive launcher forwards those), unpinned when
      more than CONTENTION of that time was spent runnable but not running
      (`/proc/TID/schedstat`), or when the guest has more than MAX_WATCHED threads;
- `1` / `on`: pinned for the whole run (a parallel guest then shares that one CPU);
- `0` / `off`: no placement at all.
Nothing is pinned when the tracer may run on one CPU only anyway.

The CONTENTION threshold: the stop ping-pong itself shows as waiting (after PTRACE_CONT the guest is
runnable while the tracer finishes its loop): 0.2-0.25 of the time for 200 x /bin/true, under 0.1
for Python starting up, measured on a 2-vCPU VM. One other busy process on the pinned CPU (a
neighbour job on a shared node) makes a CPU-bound guest wait about half of the time while the
scheduler could have run it elsewhere at full speed: 0.4 sits between the two.
"""

from __future__ import annotations

import _thread
import os
import time

CHECK_INTERVAL = 0.05       # seconds between two contention checks while pinned
CONTENTION = 0.4            # share of the interval spent waiting for the CPU that unpins
MAX_WATCHED = 32            # more live guest threads than this: unpin without looking

_OFF = ("0", "no", "off", "false")
_ON = ("1", "yes", "on", "true", "always")


class Placement:
    def __init__(self, setting: str | None = None) -> None:
        setting = (os.environ.get("CARRYON_PIN", "auto") if setting is None else setting).strip().lower()
        self.mode = "never" if setting in _OFF else "always" if setting in _ON else "auto"
        self.cpu: int | None = None             # the CPU everything is pinned to, while pinned
        self.mask: set[int] = set()             # the tracer's CPU set at start
        self.pinned = False
        self.released = False                   # unpinned after having been pinned (auto mode)
        self.hands_off = False                  # the guest set CPU sets itself: never touch them
        self.tracees: dict | None = None        # the loop's tid -> Tracee (for unpin and checks)
        self._last: tuple[float, int] | None = None
        self._watching = False
        self.tracer_tid = 0
        if self.mode == "never":
            return
        try:
            self.mask = os.sched_getaffinity(0)
            from runtime.tracee.ffi import libc
            cpu = libc.sched_getcpu()
        except (OSError, AttributeError):
            return
        if len(self.mask) > 1 and cpu in self.mask:
            self.cpu = cpu

    # ---- the tracer's side ------------------------------------------------------------------
    def pin_self(self) -> None:
        """Pin the calling process (the tracer before it forks the guest, which inherits it)."""
        if self.cpu is None:
            return
        try:
            self.tracer_tid = _thread.get_native_id()
            os.sched_setaffinity(0, {self.cpu})
            self.pinned = True
        except OSError:
            self.cpu = None

    def start(self, tracees: dict) -> None:
        """The guest runs: watch for contention (auto mode)."""
        self.tracees = tracees
        if not self.pinned or self.mode != "auto":
            return
        self._check()                           # the baseline
        self._watching = True
        try:
            _thread.start_new_thread(self._watch, ())
        except RuntimeError:                    # no thread: no checks, so no pin either
            self._watching = False
            self.release()

    def stop(self) -> None:
        """End of the run: no more checks, the tracer back on its CPU set."""
        self._watching = False
        if self.pinned:
            self.pinned = False
            try:
                os.sched_setaffinity(self.tracer_tid, self.mask)
            except OSError:
                pass

    def _watch(self) -> None:
        """The helper thread: a contention check every CHECK_INTERVAL while pinned."""
        while True:
            time.sleep(CHECK_INTERVAL)
            if not (self._watching and self.pinned):
                return
            try:
                self._check()
            except Exception:           # never let a check break the run: just unpin
                self.release()

    # ---- unpinning ----------------------------------------------------------------------------
    def release(self) -> None:
        """Auto mode: everything back to the original CPU set, for the rest of the run."""
        if not self.pinned or self.mode != "auto":
            return
        self.pinned = False
        self.released = True
        self._watching = False
        mask = self.mask
        for tid in list(self.tracees or ()):
            try:
                os.sched_setaffinity(tid, mask)
            except OSError:
                pass
        try:
            os.sched_setaffinity(self.tracer_tid, mask)
        except OSError:
            pass

    def new_tracee(self, tid: int) -> None:
        """A thread or process appeared: after a release, one forked while it happened may still
        carry the pin it inherited."""
        if self.released and not self.hands_off:
            try:
                if os.sched_getaffinity(tid) == {self.cpu}:
                    os.sched_setaffinity(tid, self.mask)
            except OSError:
                pass

    def guest_affinity_call(self, setting: bool) -> None:
        """The guest calls sched_getaffinity (setting=False) or sched_setaffinity (True)."""
        self.release()
        if setting:
            self.hands_off = True

    def _check(self) -> None:
        if not self.pinned:
            return
        tids = list(self.tracees or ())
        if len(tids) > MAX_WATCHED:
            self.release()
            return
        waited = _run_delay("self")
        for tid in tids:
            waited += _run_delay(str(tid))
        now = time.monotonic()
        last = self._last
        self._last = (now, waited)
        if last is not None and waited - last[1] > CONTENTION * (now - last[0]) * 1e9:
            self.release()


def _run_delay(tid: str) -> int:
    """Nanoseconds thread `tid` spent runnable but waiting for a CPU (0 when unknown)."""
    try:
        with open(f"/proc/{tid}/schedstat", "rb") as f:
            return int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
