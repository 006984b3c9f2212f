"""The event loop: wait for stops, dispatch system calls, follow the process tree.

Two engines share it and the handlers:
- seccomp (`seccomp=True`): the filter stops only the translated calls (PTRACE_EVENT_SECCOMP); the
  handler rewrites the arguments there and the tracee is resumed with PTRACE_CONT, or with
  PTRACE_SYSCALL when a handler asked for the exit stop (kernels >= 4.8 deliver that exit stop
  next; older ones deliver the syscall-enter stop first, which `legacy_order` skips);
- plain ptrace (`seccomp=False`): every call stops twice (PTRACE_SYSCALL); the same handlers run
  at the enter stop, a skipped call gets its result written at the exit stop.

Exec events: a seized guest (`exec_options` given, the seccomp engine on Linux 3.8+) runs without
PTRACE_O_TRACEEXEC, which saves one stop per execve. Whether an execve succeeded is then seen at the
thread's next stop: its /proc/PID/mem descriptor was opened on the old program's memory, which an
exec replaces, so reading the old stack pointer there returns nothing (`_exec_check`); a vfork
child, whose old address space is its parent's and stays alive, is compared with its (suspended)
parent by kcmp(KCMP_VM) instead. A process that makes threads gets exec events back on all its
threads (a non-leader thread's execve changes thread ids, which only the event reports), as do
CLONE_VM children that are not vfork children and a thread whose memory cannot be read that way.

carryon's loader (runtime.execve.loader) under the plain engine: after its one call it runs with
PTRACE_CONT (none of its system calls needs the tracer) until its int3, whose SIGTRAP is swallowed.

Job control: both engines seize the guest (PTRACE_SEIZE; children are seized with their parent), so
a stop signal's group-stop reaches the tracer as PTRACE_EVENT_STOP with that signal. The loop keeps
it with PTRACE_LISTEN: the process stays stopped (/proc shows `t (tracing stop)`, a ptrace stop,
where natively it is `T`), its parent's waitpid(WUNTRACED) reports it (the kernel does that for the
real parent), and the SIGCONT or SIGKILL that ends it wakes the thread, which the loop hears of as
another PTRACE_EVENT_STOP, with SIGTRAP, and resumes (SIGCONT's delivery follows as any signal's).
The loop never waits for a stopped thread: other guests, and a stopped main process, simply have no
stop to report meanwhile; when the main process ends and leaves stopped guests in an orphaned
group, the tracer hangs them up as the kernel would have (`_orphaned`). A guest attached the
classic way (PTRACE_TRACEME, kernels without PTRACE_SEIZE or CARRYON_TEST_NO_SEIZE) cannot be kept
stopped: it runs on, as before.

The native stop loop (runtime.tracee.native, seccomp engine): the loop waits through it instead of
waitpid. After each stop it handled, the loop tells it whether that thread's next stops need Python
(its `fast` bits); the stops that do not are answered in C, and what happened meanwhile (forks,
exits, successful execs, binds) is read back, in order, before the next stop is handled here.

Emulated ptrace (runtime.extension.ptrace_emu): a thread that traces or is traced by a guest has
`Tracee.emu` set; every stop of it (and its end) goes to `self.emu.stop` first, and every guest's
end to `self.emu.exited` (a tracer's held wait may be over). Nothing of it runs before a guest
calls ptrace.
"""

from __future__ import annotations

import _signal as signal  # the C module: `signal` itself imports `enum` (slow start-up)
import errno
import os
import sys

from runtime.tracee import ffi, mem
from runtime.tracee.actions import CHANGED, EXIT, SKIP
from runtime.tracee.mem import AREA_SIZE, NeedScratch
from runtime.tracee.state import Tracee

TYPE_CHECKING = False           # not `typing.TYPE_CHECKING`: importing typing slows start-up
if TYPE_CHECKING:
    from ctypes import Array, c_ulong
    from typing import Any

    from runtime.tracee.native import Native

M64 = (1 << 64) - 1
SIG_SECCOMP_STOP = signal.SIGTRAP | (ffi.PTRACE_EVENT_SECCOMP << 8)
SIG_SYSCALL = signal.SIGTRAP | 0x80
STOP_SIGNALS = (signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU)
NR_CLONE, NR_FORK, NR_CLONE3 = 56, 57, 435      # x86_64
CLONE_VM = 0x100
# the native loop's tick (see runtime.tracee.native.Native.tick): the tracer's own signal, never
# forwarded to the guest (runtime.engine._NOT_FORWARDED)
TICK_SIGNAL = signal.SIGRTMAX
TICK_INTERVAL = 0.1


class Loop:
    def __init__(self, dispatch: list, exts: list, seccomp: bool, wait_all: bool,
                 legacy_order: bool = False, placement=None, exec_options: int = 0,
                 native_setup=None, seized: bool = False) -> None:
        self.dispatch = dispatch
        self.placement = placement      # runtime.tracee.placement.Placement or None
        self.exts = exts
        self.seccomp = seccomp
        self.wait_all = wait_all
        self.legacy_order = legacy_order
        self.tracees: dict[int, Tracee] = {}
        self.main_pid = 0
        self.main_status: int | None = None
        self.held: set[int] = set()     # new children stopped before their parent's fork event
        self.warned = False
        # seized without exec events: the options that turn them on (0: exec events all along)
        self.exec_options = exec_options
        # seccomp engine: `native_setup(native) -> top mapper` configures the native stop loop
        # (runtime.tracee.native) when it loads; None: Python sees every stop
        self.native_setup = native_setup
        # kernels without PTRACE_O_EXITKILL (before 3.8): told every guest process that comes and
        # goes (runtime.engine._Watchdog), to kill the ones left if the tracer dies; else None
        self.watchdog: Any = None
        self.native: Native | None = None
        self.native_stats: dict[str, int] | None = None    # stops handled natively, once done
        # attached with PTRACE_SEIZE (so are the children): group-stops are kept (job control)
        self.seized = seized
        self.stopped: set[int] = set()  # threads kept in a group-stop (PTRACE_LISTEN)
        # the guests' own ptrace (runtime.extension.ptrace_emu), once one used it; the ptrace
        # options the guests are traced with (what an emulated tracee's options add to)
        self.emu: Any = None
        self.options = 0

    # ---- process tree ---------------------------------------------------------------------
    def _new_child(self, parent: Tracee, pid: int, thread: bool = False,
                   shared_vm: bool = False, vfork: bool = False, native_bits: int = -1) -> None:
        """`native_bits` >= 0: the native loop handled the event (runtime.tracee.native) and the
        child's attach stop; a vfork child then still shares its parent's memory (kcmp said so)."""
        child = self.tracees.get(pid)
        if child is None:
            child = Tracee(pid, parent.mapper, parent.exe)
            self.tracees[pid] = child
            if self.watchdog is not None:
                self.watchdog.add(pid)
        child.mapper = parent.mapper
        child.exe = parent.exe
        child.guest_root = parent.guest_root
        if self.exec_options:
            if thread and not parent.exec_events:
                self._exec_events_on(parent)
            # Inherited from the parent's options at clone time, or asked for: a child sharing
            # its parent's memory (thread, CLONE_VM) keeps it alive across its own execve, so the
            # old-memory probe cannot tell that execve's outcome. A vfork child (dash runs every
            # command that way) is told by comparing address spaces with its parent (kcmp), which
            # its parent, suspended until the child execs or exits, cannot change meanwhile.
            child.vm_peer = 0
            if shared_vm and vfork and not thread and (
                    native_bits >= 0 or ffi.kcmp_vm(parent.pid, pid) == 0):
                child.vm_peer = parent.pid
                shared_vm = False
            child.exec_events = parent.exec_events or thread or shared_vm
            if child.exec_events and pid in self.held:
                self._exec_events_on(child)     # stopped right now; else at its first stop
        for ext in self.exts:
            ext.fork(parent, child)
        placement = self.placement
        if placement is not None and placement.released:
            placement.new_tracee(pid)
        if native_bits >= 0:
            child.started = True
            child.fast = native_bits
            return
        if self.native is not None:
            self.native.set(pid, 0)     # no longer held; settled at its next stop
            child.fast = 0
        if pid in self.held:
            self.held.discard(pid)
            child.started = True
            ffi.resume(self._resume_req, pid, 0)

    def _exec_event(self, t: Tracee, pid: int) -> Tracee:
        try:
            former = ffi.geteventmsg(pid)
        except OSError:
            former = pid
        if former != pid:               # a non-leader thread called execve: it now has the tgid
            if self.native is not None:
                self.native.set(former, 0)
            old = self.tracees.pop(former, None)
            if old is not None:
                t.pending_exe = old.pending_exe or t.pending_exe
                t.ext = old.ext
                t.pending_ext = old.pending_ext
                t.load = old.load
                if self.native is not None and t.emu is None:   # its record was given for the old id
                    self.native.load(pid, t.load)
                old.close()
        t.exec_done()
        if not self.seccomp:
            t.in_syscall = True         # the execve's exit stop comes next (plain engine)
        return t

    @staticmethod
    def _shares_vm(t: Tracee, pid: int, regs) -> bool:
        """At a fork/clone event: did the parent's call (clone, clone3) ask for CLONE_VM?
        True when that cannot be read (the safe answer)."""
        if ffi.getregs(pid, regs) == -1:
            return True
        nr = regs[ffi.R_ORIG_RAX]
        if nr == NR_FORK:
            return False
        if nr == NR_CLONE:
            return bool(regs[ffi.R_RDI] & CLONE_VM)
        if nr == NR_CLONE3:
            try:
                flags = mem.read(t, regs[ffi.R_RDI], 8)
            except OSError:
                return True
            return len(flags) != 8 or bool(int.from_bytes(flags, "little") & CLONE_VM)
        return True

    def _loader_entry(self, t: Tracee, pid: int, status: int) -> bool:
        """Is this stop of a guest tracer's tracee the entry of carryon's loader's call? (answered
        as for any thread; the loader then runs unstopped: runtime.execve.loader)"""
        if t.load is None:
            return False
        stop = status >> 8
        if not (stop == SIG_SECCOMP_STOP or (stop == SIG_SYSCALL and not t.in_syscall)):
            return False
        from runtime.execve import loader
        regs = ffi.Regs()
        return ffi.getregs(pid, regs) != -1 and regs[ffi.R_ORIG_RAX] == loader.NR

    def _exec_events_on(self, t: Tracee) -> None:
        """Turn PTRACE_O_TRACEEXEC on for this (stopped) thread and the ones it will create."""
        try:
            ffi.setoptions(t.pid, self.exec_options)
            t.exec_events = True
        except OSError:
            pass

    def _exec_check(self, t: Tracee) -> None:
        """First stop of a seized thread after an execve without exec events: did it succeed?"""
        probe = t.exec_probe
        t.exec_probe = 0
        same = ffi.kcmp_vm(t.pid, t.vm_peer) if t.vm_peer else -1
        if same >= 0:
            alive = same == 0                   # still on its vfork parent's memory
        elif t.memfd >= 0:
            try:
                alive = len(os.pread(t.memfd, 1, probe)) == 1
            except OSError:
                alive = False
        else:           # a vfork child whose parent was killed meanwhile: nothing left to ask
            alive = False
        if alive:                               # the execve failed: same program, same memory
            t.pending_exe = ""
            t.pending_ext = None
            return
        t.exec_done()

    def _drain(self, nat) -> None:
        """What the native loop did meanwhile, in order: children forked, processes ended."""
        from runtime.tracee.native import Q_EXEC, Q_EXIT, Q_FORK, Q_VFORK
        tracees = self.tracees
        for kind, a, b, c in nat.events():
            if kind == Q_EXIT:
                t = tracees.pop(a, None)
                if t is not None:
                    if t.emu is not None:
                        self.emu.stop(t, b)     # an emulated tracee's end: for its tracer
                    t.close()
                    if self.watchdog is not None:
                        self.watchdog.remove(a)
                self.held.discard(a)
                self.stopped.discard(a)
                if self.emu is not None:
                    self.emu.exited(a)
                continue
            if kind == Q_EXEC:
                t = tracees.get(a)
                if t is not None:
                    t.exec_probe = 0
                    t.exec_done()
                    t.fast = b
                continue
            if kind not in (Q_FORK, Q_VFORK):
                handler = nat.handlers.get(kind)
                if handler is not None:
                    handler(a, b, c)
                continue
            parent = tracees.get(a)
            if parent is None:          # cannot be: the native loop handles known threads only
                continue
            vfork = kind == Q_VFORK
            self._new_child(parent, b, False, bool(self.exec_options) and not parent.exec_events
                            and vfork, vfork, c)

    def _orphaned(self) -> None:
        """The main process ended while guests are stopped. Natively, its process group (the
        tracer's, unless the guest made its own) is then orphaned when no member has its parent
        in another group of the same session, and the kernel sends every member SIGHUP and
        SIGCONT when one is stopped. The tracer is a member whose parent (a shell, with carryon
        as its job) keeps the group from being orphaned, so a stopped guest would wait for ever,
        and the run for it: the tracer does the kernel's part, as if it were not in the group."""
        members = orphaned_group()
        if members is not None and not self.stopped.isdisjoint(members):
            hang_up(members)

    def kill_all(self) -> None:
        for pid in list(self.tracees):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    # ---- main loop --------------------------------------------------------------------------
    def run(self, main: Tracee) -> int:
        """Trace until the end; returns the main process's wait status.

        Phases: the native loop's start (`_start_native`), the stop loop, the end (`_finish`).
        The stop loop stays one piece on purpose: it is the tracer's hottest code (every stop
        Python sees passes through it, tens of thousands per second), and a Python function call
        per stop costs about as much as the work it would move out. So the per-stop paths (the
        native loop's settle bits, seccomp stops, the ptrace engine's enter/exit stops, signal
        deliveries) are written inline with locals bound once; only the rare stops (fork, clone
        and exec events: `_event_stop`) and the once-per-run phases are functions."""
        self.main_pid = main.pid
        self.tracees[main.pid] = main
        placement = self.placement
        if placement is not None:
            placement.start(self.tracees)
        seccomp = self.seccomp
        self._resume_req = resume_req = ffi.PTRACE_CONT if seccomp else ffi.PTRACE_SYSCALL
        PTRACE_SYSCALL = ffi.PTRACE_SYSCALL
        tracees = self.tracees
        dispatch = self.dispatch
        ndisp = len(dispatch)
        waitpid = os.waitpid
        WALL = ffi.WALL
        getregs = ffi.getregs
        setregs = ffi.setregs
        resume = ffi.resume
        regs = ffi.Regs()
        R_ORIG_RAX, R_RAX, R_RSP = ffi.R_ORIG_RAX, ffi.R_RAX, ffi.R_RSP
        legacy = self.legacy_order
        exit_req = PTRACE_SYSCALL
        main_pid = main.pid
        exec_options = self.exec_options
        EVENT_STOP = ffi.PTRACE_EVENT_STOP
        seized = self.seized
        listen = ffi.listen
        stopped = self.stopped
        nat, top = self._start_native(main, regs) if seccomp else (None, None)
        if nat is not None:
            nat_wait, nat_set, out, out_addr = nat._wait, nat.set, nat.out, nat.out_addr
            from runtime.tracee.native import FORKS, HELD, PROBING, SETTLED
            nat_probe = nat.probe
            drain = self._drain
        last = None             # the thread whose stop was just handled (native loop)
        pre = 0                 # the native loop fetched the registers already
        ECHILD, EINTR = errno.ECHILD, errno.EINTR
        while True:
            if nat is None:
                try:
                    pid, status = waitpid(-1, WALL)
                except ChildProcessError:
                    break
            else:
                if last is not None:
                    # may its next stops be handled natively? (see runtime.tracee.native)
                    if (last.mapper is top and last.settle is None and last.inject is None
                            and not last.in_syscall and last.started):
                        bits = SETTLED | FORKS if not (exec_options and last.exec_events) \
                            else SETTLED
                        if last.exec_probe:     # an execve in flight: checked natively
                            if nat_probe(last.pid, last.vm_peer, last.memfd, last.exec_probe,
                                         bits):
                                bits = PROBING
                                last.fast = PROBING
                            else:
                                bits = 0
                        elif last.pending_exe:
                            bits = 0
                    else:
                        bits = 0
                    if bits != last.fast:
                        last.fast = bits
                        nat_set(last.pid, bits)
                r = nat_wait(out_addr)
                if out[3]:
                    drain(nat)
                if r:
                    if r == -ECHILD:
                        break
                    if r == -EINTR:
                        continue        # a signal for the tracer: its handler has run
                    raise OSError(-r, os.strerror(-r))
                pid = out[0]
                status = out[1]
                pre = out[2]
            t = tracees.get(pid)
            last = t
            if t is not None:
                if t.settle is not None:
                    t.settled()                     # its unlink/rename/... is over by now
                # (not carryon's loader: a guest tracer sees the exec, then the program)
                if t.emu is not None:
                    last = None                     # emulated ptrace: every stop is Python's
                    if not t.loading and not self._loader_entry(t, pid, status) and self.emu.stop(t, status):
                        continue
            if status & 0xFF == 0x7F:               # stopped
                s8 = status >> 8
                if s8 == SIG_SECCOMP_STOP and t is not None:
                    if t.exec_probe:
                        self._exec_check(t)
                    if t.memfd == -2:
                        t.count_stop()
                    if not pre and getregs(pid, regs) == -1:
                        continue
                    nr = regs[R_ORIG_RAX]
                    h = dispatch[nr] if nr < ndisp else None
                    if h is None or t.loading:
                        if t.loading:
                            # carryon's loader under a guest tracer (stepped): its call was answered
                            # at the syscall-entry stop; it runs unstopped (opening by host path)
                            t.in_syscall = False
                        resume(resume_req, pid, 0)
                        continue
                    t.scratch = regs[R_RSP] - 128
                    if t.pending_exe and exec_options and not t.exec_events:
                        t.pending_exe = ""      # an execve refused at its entry (error, SKIP)
                    try:
                        act = h(t, regs)
                    except OSError as e:
                        t.ret = -(e.errno or errno.EIO)
                        act = SKIP
                    except NeedScratch:
                        self._inject_mmap(t, pid, regs)
                        continue
                    except Exception as e:      # a tracer bug must not take the guest down
                        act = self._internal_error(t, nr, e)
                    if act & SKIP:
                        regs[R_ORIG_RAX] = M64
                        regs[R_RAX] = t.ret & M64
                        setregs(pid, regs)
                        resume(resume_req, pid, 0)
                        continue
                    if act & CHANGED:
                        setregs(pid, regs)
                    if t.pending_exe and exec_options and not t.exec_events:
                        # an execve goes ahead without an exec event: checked at the next stop,
                        # by kcmp for a vfork child, else on the old program's memory
                        if not t.vm_peer and t.memfd == -2:
                            t.open_mem()
                        if t.vm_peer or t.memfd >= 0:
                            t.exec_probe = t.scratch + 128
                        else:                   # no old-memory descriptor to tell: ask the event
                            self._exec_events_on(t)
                    if act & EXIT:
                        t.in_syscall = not legacy
                        resume(exit_req, pid, 0)
                    else:
                        resume(resume_req, pid, 0)
                    continue
                sig = s8 & 0xFF
                if sig == SIG_SYSCALL and t is not None:
                    if seccomp:
                        # exit stop requested by a handler (or, legacy order, the enter stop first)
                        if not t.in_syscall:
                            t.in_syscall = True
                            resume(exit_req, pid, 0)
                            continue
                        t.in_syscall = False
                        if t.inject is not None:
                            self._injected(t, pid, regs)
                        else:
                            self._exit_stop(t, pid, regs)
                        resume(resume_req, pid, 0)
                        continue
                    if not t.in_syscall:
                        t.in_syscall = True
                        if t.memfd == -2:
                            t.count_stop()
                        if getregs(pid, regs) == -1:
                            continue
                        nr = regs[R_ORIG_RAX]
                        if nr < ndisp:
                            h = dispatch[nr]
                        elif nr == M64:
                            h = None
                        else:
                            h = _enosys
                        if h is not None:
                            t.scratch = regs[R_RSP] - 128
                            try:
                                act = h(t, regs)
                            except OSError as e:
                                t.ret = -(e.errno or errno.EIO)
                                act = SKIP
                            except NeedScratch:
                                self._inject_mmap(t, pid, regs)
                                continue
                            except Exception as e:
                                act = self._internal_error(t, nr, e)
                            if act & SKIP:
                                regs[R_ORIG_RAX] = M64
                                t.skip_ret = t.ret
                                setregs(pid, regs)
                            elif act & CHANGED:
                                setregs(pid, regs)
                    else:
                        t.in_syscall = False
                        if t.inject is not None:
                            self._injected(t, pid, regs)
                        elif t.skip_ret is not None or t.exits:
                            self._exit_stop(t, pid, regs)
                        if t.loading:       # carryon's loader: unstopped until its int3
                            resume(ffi.PTRACE_CONT, pid, 0)
                            continue
                    resume(PTRACE_SYSCALL, pid, 0)
                    continue
                event = s8 >> 8
                if event and event != EVENT_STOP:
                    if t is not None:
                        self._event_stop(t, pid, event, regs)
                    resume(resume_req, pid, 0)
                    continue
                # signal-delivery stop, group-stop, or (seized tracees) PTRACE_EVENT_STOP: the
                # first stop of an auto-attached child, or a group-stop
                if t is None:
                    # a new child stopped before its parent's fork event: hold it until then
                    t = Tracee(pid, None)
                    t.started = True
                    tracees[pid] = t
                    self.held.add(pid)
                    if self.watchdog is not None:
                        self.watchdog.add(pid)
                    if nat is not None:
                        nat_set(pid, HELD)      # its parent's fork event comes to Python
                    continue
                if not t.started and (sig == signal.SIGSTOP or event):
                    t.started = True
                    if t.exec_events and exec_options:
                        self._exec_events_on(t)
                    if event and sig != signal.SIGTRAP:
                        listen(pid)             # a new thread of a stopped process: stopped too
                        stopped.add(pid)
                    else:
                        resume(resume_req, pid, 0)
                    continue
                if t.exec_probe:
                    self._exec_check(t)
                if event:
                    # seized: a group-stop (its stop signal) is kept until SIGCONT or SIGKILL,
                    # which end it with another stop (SIGTRAP: the thread runs on)
                    if sig != signal.SIGTRAP:
                        listen(pid)
                        stopped.add(pid)
                    else:
                        stopped.discard(pid)
                        resume(resume_req, pid, 0)
                    continue
                if sig in STOP_SIGNALS and not seized and not ffi.has_siginfo(pid):
                    # group-stop of a thread attached the classic way: without PTRACE_LISTEN a
                    # stop kept here would hide the SIGCONT that ends it, so it runs on
                    resume(resume_req, pid, 0)
                    continue
                if sig == signal.SIGTRAP and t.loading:
                    t.loading = False           # carryon's loader's int3: traced again from here
                    t.in_syscall = False
                    resume(PTRACE_SYSCALL if t.emu is not None else resume_req, pid, 0)
                    continue
                resume(resume_req, pid, sig)    # a signal to deliver (a stop signal: see above)
                continue
            # exited or killed
            last = None
            t = tracees.pop(pid, None)
            if t is not None:
                t.close()
                if self.watchdog is not None:
                    self.watchdog.remove(pid)
            self.held.discard(pid)
            stopped.discard(pid)
            if self.emu is not None:
                self.emu.exited(pid)
            if pid == main_pid:
                self.main_status = status
                if not self.wait_all:
                    self.kill_all()
                elif stopped:
                    self._orphaned()
        return self._finish(nat)

    def _start_native(self, main: Tracee, regs) -> tuple:
        """(the native stop loop, the top-level mapper) when it loads and takes this run's setup
        (runtime.tracee.native), else (None, None): Python sees every stop."""
        if self.native_setup is None:
            return None, None
        from runtime.tracee import native
        nat = native.load(regs)
        # A signal for the tracer (SIGTERM to forward) that comes while the native loop is
        # busy has its Python handler run only when cf_wait returns: the tick bounds that wait.
        if nat is None or not nat.tick(TICK_SIGNAL, TICK_INTERVAL):
            return None, None
        try:
            top = self.native_setup(nat)    # names and specs first, Python's hooks last
        except OSError:                     # too many bind point names: Python alone
            nat.tick(0, 0)
            return None, None
        self.native = nat
        nat.main(main.pid)
        return nat, top

    def _event_stop(self, t: Tracee, pid: int, event: int, regs) -> None:
        """A fork, vfork, clone or exec event of a known thread (the caller resumes it)."""
        if t.exec_probe:
            self._exec_check(t)
        if event in (ffi.PTRACE_EVENT_FORK, ffi.PTRACE_EVENT_VFORK, ffi.PTRACE_EVENT_CLONE):
            thread = event == ffi.PTRACE_EVENT_CLONE
            placement = self.placement
            if thread and placement is not None and placement.pinned:
                placement.release()     # a thread: the guest may run in parallel
            vfork = event == ffi.PTRACE_EVENT_VFORK
            shared = self.exec_options != 0 and not t.exec_events and (
                vfork or self._shares_vm(t, pid, regs))
            try:
                self._new_child(t, ffi.geteventmsg(pid), thread, shared, vfork)
            except OSError:
                pass
        elif event == ffi.PTRACE_EVENT_EXEC:
            t.exec_probe = 0
            self._exec_event(t, pid)

    def _finish(self, nat) -> int:
        """The end of the run: every tracee's state closed, the native loop's counts kept; the
        main process's wait status."""
        for t in self.tracees.values():
            t.close()
        self.tracees.clear()
        if nat is not None:
            self.native_stats = nat.stats()     # (the next run's cf_init resets it)
            self.stop_native()
        return self.main_status if self.main_status is not None else 0

    def stop_native(self) -> None:
        """No more ticks (also after an error in the loop: the engine calls it in any case)."""
        nat = self.native
        self.native = None
        if nat is not None:
            nat.tick(0, 0)

    def _internal_error(self, t: Tracee, nr: int, e: Exception) -> int:
        """A handler raised something unexpected: fail that one call with EIO, say so once."""
        if not self.warned:
            self.warned = True
            from runtime.syscall.sysnums import NAMES
            sys.stderr.write(f"carryon: warning: internal error while translating "
                             f"{NAMES.get(nr, nr)}: {e!r}; the call failed with EIO\n")
        t.ret = -errno.EIO
        return SKIP

    def _inject_mmap(self, t: Tracee, pid: int, regs) -> None:
        """Turn the current call into mmap(AREA_SIZE) for the tracee's own scratch area; the
        original call is restarted once it returns (`_injected`)."""
        saved = ffi.Regs()
        if ffi.getregs(pid, saved) == -1:
            return
        t.inject = saved
        for i in range(len(saved)):
            regs[i] = saved[i]
        regs[ffi.R_ORIG_RAX] = 9                        # mmap
        regs[ffi.R_RDI] = 0
        regs[ffi.R_RSI] = AREA_SIZE
        regs[ffi.R_RDX] = 3                             # PROT_READ | PROT_WRITE
        regs[ffi.R_R10] = 0x22                          # MAP_PRIVATE | MAP_ANONYMOUS
        regs[ffi.R_R8] = M64
        regs[ffi.R_R9] = 0
        ffi.setregs(pid, regs)
        t.in_syscall = not (self.seccomp and self.legacy_order)
        ffi.resume(ffi.PTRACE_SYSCALL, pid, 0)

    def _injected(self, t: Tracee, pid: int, regs) -> None:
        """Exit stop of the injected mmap: keep the area, restart the original call."""
        saved: Array[c_ulong] = t.inject  # type: ignore[assignment]  # not None: the callers checked
        t.inject = None
        if ffi.getregs(pid, regs) == -1:
            return
        addr = regs[ffi.R_RAX]
        t.area = -1 if addr >= M64 - 4095 else addr
        saved[ffi.R_RIP] -= 2                           # back onto the `syscall` instruction
        saved[ffi.R_RAX] = saved[ffi.R_ORIG_RAX]
        ffi.setregs(pid, saved)

    def _exit_stop(self, t: Tracee, pid: int, regs) -> None:
        if ffi.getregs(pid, regs) == -1:
            t.exits = None
            t.skip_ret = None
            return
        act = 0
        if t.skip_ret is not None:
            regs[ffi.R_RAX] = t.skip_ret & M64
            t.skip_ret = None
            act = CHANGED
        exits = t.exits
        if exits:
            t.exits = None
            for fn in exits:
                try:
                    act |= fn(t, regs)
                except OSError as e:
                    regs[ffi.R_RAX] = -(e.errno or errno.EIO) & M64
                    act |= CHANGED
                except Exception as e:
                    self._internal_error(t, regs[ffi.R_ORIG_RAX], e)
                    regs[ffi.R_RAX] = -errno.EIO & M64
                    act |= CHANGED
        if act & CHANGED:
            ffi.setregs(pid, regs)


def orphaned_group() -> list[int] | None:
    """The other members of our process group when it would be orphaned without us (no member
    has its parent in another group of the same session, we not counted), else None."""
    me, pgrp, sid = os.getpid(), os.getpgrp(), os.getsid(0)
    members = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        pid = int(name)
        ppid, group, _ = _ids(pid)
        if group != pgrp:
            continue
        members.append(pid)
        if ppid != me:
            _, pgroup, psid = _ids(ppid)
            if pgroup not in (pgrp, 0) and psid == sid:
                return None         # a parent in another group of the session: not orphaned
    return members


def hang_up(members: list[int]) -> None:
    """The kernel's part for an orphaned process group with a stopped member: SIGHUP, SIGCONT."""
    for sig in (signal.SIGHUP, signal.SIGCONT):
        for pid in members:
            try:
                os.kill(pid, sig)
            except OSError:
                pass


def _ids(pid: int) -> tuple[int, int, int]:
    """(parent pid, process group, session) of a process, (0, 0, 0) when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return int(fields[1]), int(fields[2]), int(fields[3])
    except (OSError, IndexError, ValueError):
        return 0, 0, 0


def _enosys(t, regs) -> int:
    raise OSError(errno.ENOSYS, "unknown system call")
