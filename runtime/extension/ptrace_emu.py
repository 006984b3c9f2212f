"""Ptrace emulation for guests (PRoot's extension/ptrace, own code): strace, gdb and a nested
carryon inside a run.

The tracer is every guest's real tracer, so a guest's own ptrace(2) would fail (a traced thread
cannot be traced again). The `ptrace` system call (the one call this adds to the seccomp filter;
the plain engine stops on everything anyway) is answered here: the guest that asks (the emulated
tracer) gets the kernel's answers, and its requests on its emulated tracees are carried out by
the real tracer, which holds them stopped.

Contract:
- Nothing changes for a run whose guests never call ptrace (the module is imported at the first
  call). A thread becomes *special* once it takes part (an emulated tracer, or a tracee): the
  native loop hands every stop of it to Python (`Loop.run` passes them to `stop`), and it is
  resumed with PTRACE_SYSCALL, the system calls being translated at their syscall-entry stop in
  both engines (the seccomp stop that may follow is let through). So its wait4/waitid (a
  tracer) and its syscall stops (a tracee) are seen without adding them to anyone's filter.
- A tracee's stops are the real ones, reported to its tracer with the kernel's wait statuses:
  syscall stops (SIGTRAP, | 0x80 with PTRACE_O_TRACESYSGOOD) only while its tracer resumed it
  with PTRACE_SYSCALL, event stops (status >> 16: fork/vfork/clone/exec/exit/vfork-done as its
  options ask, PTRACE_EVENT_STOP for a seized tracee), signal-delivery stops and group-stops; the
  exit of a tracee that is not the tracer's own child (a thread, a grandchild under `strace -f`)
  is reported too (the kernel gives the others through the real wait). Each report sends the
  tracer SIGCHLD, as the kernel does, which also brings a tracer blocked in a real wait4 into a
  stop. The tracer sees the guest's view: a syscall-entry stop is reported BEFORE the paths are
  translated (they are translated once the tracer resumes it, with what it may have changed),
  the exit stop with the result the guest gets and the guest's own argument registers.
- wait4/waitid of a tracer with matching tracees: a pending report is answered from here; else
  the real call runs with WNOHANG added (the tracer's real children), and a blocking call with
  nothing to give is held (rewound onto its `syscall` instruction, kept stopped) until a report
  for it comes or a guest process ends.
- Requests: TRACEME, ATTACH, SEIZE, INTERRUPT, LISTEN, CONT, SYSCALL, SINGLESTEP, DETACH, KILL,
  SETOPTIONS, GETEVENTMSG, GETSIGINFO/SETSIGINFO, PEEK/POKE TEXT/DATA/USER (debug registers
  included), GETREGS/SETREGS, GETFPREGS/SETFPREGS, GETREGSET/SETREGSET (any note type),
  GET_SYSCALL_INFO, GETSIGMASK/SETSIGMASK, ARCH_PRCTL: done by the real tracer on the tracee,
  with the data copied between the two processes. PTRACE_O_TRACESECCOMP (and SUSPEND_SECCOMP)
  are refused with EINVAL, as a kernel before 3.5 would: a nested carryon then takes its plain
  ptrace engine. SYSEMU and other requests: EIO.
Not emulated: a tracer that is itself a guest's tracee sees its wait calls answered but its own
tracer is not told of them; a held wait4 does not end with EINTR for a signal (it is delivered
once the wait ends); kernels before 4.8 (seccomp stop before the syscall-entry stop) are not
special-cased.
"""

from __future__ import annotations

import _signal as signal
import ctypes
import errno
import os

from runtime.tracee import ffi, mem
from runtime.tracee.actions import CHANGED, EXIT, SKIP
from runtime.tracee.mem import NeedScratch

TYPE_CHECKING = False           # not `typing.TYPE_CHECKING`: importing typing slows start-up
if TYPE_CHECKING:
    from typing import Any

M64 = (1 << 64) - 1
SIGTRAP, SIGSTOP, SIGCHLD, SIGKILL = signal.SIGTRAP, signal.SIGSTOP, signal.SIGCHLD, signal.SIGKILL
STOP_SIGNALS = (signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU)
SIG_SECCOMP_STOP = SIGTRAP | (ffi.PTRACE_EVENT_SECCOMP << 8)
SIG_SYSCALL = SIGTRAP | 0x80
NR_PTRACE, NR_WAIT4, NR_WAITID = 101, 61, 247
_SYS_TGKILL = 234

# requests (linux/ptrace.h, x86_64)
TRACEME, PEEKTEXT, PEEKDATA, PEEKUSR, POKETEXT, POKEDATA, POKEUSR = 0, 1, 2, 3, 4, 5, 6
CONT, KILL, SINGLESTEP, GETREGS, SETREGS, GETFPREGS, SETFPREGS = 7, 8, 9, 12, 13, 14, 15
ATTACH, DETACH, SYSCALL, ARCH_PRCTL = 16, 17, 24, 30
SETOPTIONS, GETEVENTMSG, GETSIGINFO, SETSIGINFO = 0x4200, 0x4201, 0x4202, 0x4203
GETREGSET, SETREGSET, SEIZE, INTERRUPT, LISTEN = 0x4204, 0x4205, 0x4206, 0x4207, 0x4208
GETSIGMASK, SETSIGMASK, GET_SYSCALL_INFO = 0x420A, 0x420B, 0x420E

O_TRACESYSGOOD, O_TRACEFORK, O_TRACEVFORK, O_TRACECLONE = 0x1, 0x2, 0x4, 0x8
O_TRACEEXEC, O_TRACEVFORKDONE, O_TRACEEXIT, O_TRACESECCOMP = 0x10, 0x20, 0x40, 0x80
O_EXITKILL, O_SUSPEND_SECCOMP = 0x100000, 0x200000
O_ALLOWED = 0x7F | O_EXITKILL          # TRACESECCOMP and SUSPEND_SECCOMP: EINVAL (see above)
EV_FORK, EV_VFORK, EV_CLONE, EV_EXEC, EV_VFORK_DONE, EV_EXIT = 1, 2, 3, 4, 5, 6
EV_STOP = 128
_EVENT_OPTION = {EV_FORK: O_TRACEFORK, EV_VFORK: O_TRACEVFORK, EV_CLONE: O_TRACECLONE,
                 EV_EXEC: O_TRACEEXEC, EV_VFORK_DONE: O_TRACEVFORKDONE, EV_EXIT: O_TRACEEXIT}

# wait options and siginfo codes
WNOHANG, WSTOPPED, WEXITED, WNOWAIT = 1, 2, 4, 0x01000000
P_ALL, P_PID, P_PGID = 0, 1, 2
CLD_EXITED, CLD_KILLED, CLD_DUMPED, CLD_TRAPPED = 1, 2, 3, 4
SIGINFO_SIZE, RUSAGE_SIZE = 128, 144

# what a held tracee is stopped at (Link.held)
K_ENTRY, K_EXIT, K_SIGNAL, K_GROUP, K_EVENT = 1, 2, 3, 4, 5
_EINVAL = b""                           # siginfo override: GETSIGINFO fails with EINVAL

# the registers a syscall takes (restored at its exit stop when the translation changed them)
_ARG_REGS = (ffi.R_ORIG_RAX, *ffi.ARG)
_R_RIP = ffi.REG_NAMES.index("rip")


# ---- the kernel's encodings ---------------------------------------------------------------------
def stop_status(sig: int, event: int = 0) -> int:
    """wait status of a ptrace stop: WIFSTOPPED, WSTOPSIG = sig, status >> 16 = event."""
    return 0x7F | (sig << 8) | (event << 16)


def syscall_status(options: int) -> int:
    """wait status of a syscall stop under the tracer's `options`."""
    return stop_status(SIGTRAP | (0x80 if options & O_TRACESYSGOOD else 0))


def waitid_info(pid: int, uid: int, status: int) -> bytes:
    """The siginfo_t waitid(2) gives for a wait status (x86_64 layout)."""
    if status & 0x7F == 0:                              # exited
        code, st = CLD_EXITED, (status >> 8) & 0xFF
    elif status & 0xFF != 0x7F:                         # killed
        code, st = (CLD_DUMPED if status & 0x80 else CLD_KILLED), status & 0x7F
    else:                                               # a ptrace stop: the whole exit_code
        code, st = CLD_TRAPPED, (status >> 8) & 0xFFFF
    head = (SIGCHLD.to_bytes(4, "little") + bytes(4) + code.to_bytes(4, "little") + bytes(4)
            + pid.to_bytes(4, "little") + uid.to_bytes(4, "little") + st.to_bytes(4, "little"))
    return head + bytes(SIGINFO_SIZE - len(head))


def _stop_siginfo(sig: int, code: int = 0) -> bytes:
    """A synthesized siginfo (the classic tracer's SIGSTOP of a new child, a step's SIGTRAP)."""
    head = sig.to_bytes(4, "little") + bytes(4) + code.to_bytes(4, "little", signed=True)
    return head + bytes(SIGINFO_SIZE - len(head))


def _int32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v


def _int64(v: int) -> int:
    return v - (1 << 64) if v & (1 << 63) else v


def _proc_ids(pid: int) -> tuple[int, int, int]:
    """(tgid, parent's tgid, uid) of a thread; zeros when it is gone."""
    tgid = ppid = uid = 0
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Tgid:"):
                    tgid = int(line.split()[1])
                elif line.startswith(b"PPid:"):
                    ppid = int(line.split()[1])
                elif line.startswith(b"Uid:"):
                    uid = int(line.split()[1])
                    break
    except (OSError, ValueError, IndexError):
        pass
    return tgid, ppid, uid


def _pgid(pid: int) -> int:
    try:
        return os.getpgid(pid)
    except OSError:
        return -1


def _real(req: int, pid: int, addr: int = 0, data: int = 0) -> int:
    """The real ptrace call (errno as OSError); PEEK requests give the word."""
    ctypes.set_errno(0)
    r = ffi._ptrace(req, pid, addr or None, data or None)
    if r == -1:
        e = ctypes.get_errno()
        if e:
            raise OSError(e, os.strerror(e))
    return r


def _tgkill(tgid: int, tid: int, sig: int) -> None:
    ffi._syscall(_SYS_TGKILL, tgid, tid, sig)


class Link:
    """The emulation's state of one special thread (`Tracee.emu`)."""

    __slots__ = ("tgid", "uid", "tracer", "seized", "options", "mode", "held", "status", "siginfo",
                 "real_child", "tracees", "queue", "waiting", "wait", "saved", "changed",
                 "exec_seen", "silent", "listening", "step_trap", "real_opts", "auto")

    def __init__(self, pid: int) -> None:
        self.tgid, _, self.uid = _proc_ids(pid)
        self.tgid = self.tgid or pid
        # as a tracee
        self.tracer: Any = None     # the emulated tracer's Tracee, or None
        self.seized = False
        self.options = 0
        self.mode = CONT            # how its tracer last resumed it
        self.held = 0               # K_*: kept stopped for its tracer
        self.status: int | None = None   # the stop's wait status, until its tracer waits for it
        self.siginfo: bytes | None = None  # GETSIGINFO's answer when not the real one
        self.real_child = False     # its exit reaches the tracer through the real wait
        self.auto = False           # attached by its parent's fork event: its first stop is reported
        self.listening = False
        self.step_trap = False      # a single-step over a syscall: a SIGTRAP at its exit
        self.real_opts = -1         # the real ptrace options it has (-1: not set by us yet)
        # as a tracer
        self.tracees: list = []
        self.queue: list = []       # reports not waited for: [pid, status, Tracee or None (exit)]
        self.waiting = False        # held in a blocking wait
        self.wait: Any = None       # a wait4/waitid running with WNOHANG added (a tuple)
        # its system call in flight
        self.saved: list | None = None  # argument registers before the translation
        self.changed = False
        self.exec_seen = False
        self.silent = False         # the next syscall-entry stop is our restart: not reported


class PtraceEmu:
    """The emulation for one run: `request` is the ptrace handler of the dispatch table,
    `stop` takes every stop of a special thread (see `runtime.tracee.loop`), `exited` hears of
    every guest process that ends."""

    def __init__(self, loop, dispatch: list) -> None:
        self.loop = loop
        self.dispatch = dispatch
        self.waiters: set = set()       # tracers held in a blocking wait
        self.ends = 0                   # guest processes ended so far (a held wait's retry)

    # ---- becoming special ------------------------------------------------------------------
    def _special(self, t) -> Link:
        e = t.emu
        if e is not None:
            return e
        e = t.emu = Link(t.pid)
        loop = self.loop
        loop.emu = self
        nat = loop.native
        if nat is not None:
            # its stops and its end are Python's (the end at once: a tracer's wait may hang on it)
            from runtime.tracee.native import HELD, OWN_END, PROBING
            if t.fast == PROBING:       # its execve in flight: checked natively, then Python's
                nat.probe(t.pid, t.vm_peer, t.memfd, t.exec_probe, OWN_END)
            else:                       # (a child held until its parent's fork event stays so)
                nat.set(t.pid, OWN_END | (HELD if t.pid in loop.held else 0))
            t.fast = 0
        return e

    def _real_options(self, b, e: Link) -> None:
        """The (stopped) thread's real options: the run's with exec events, and the events only
        its tracer asked for."""
        loop = self.loop
        want = loop.exec_options or loop.options
        if e.tracer is not None:
            want |= e.options & (O_TRACEEXIT | O_TRACEVFORKDONE)
        if want != e.real_opts:
            try:
                ffi.setoptions(b.pid, want)
            except OSError:
                return
            e.real_opts = want
            if loop.exec_options:
                b.exec_events = True

    # ---- the ptrace system call ---------------------------------------------------------------
    def request(self, t, regs) -> int:
        """dispatch[ptrace]: the result is set at the exit stop (which the caller, special from
        now on, always gets: the seccomp filter would overwrite a result set at the entry)."""
        req = regs[ffi.R_RDI] & 0xFFFFFFFF
        try:
            ret = self._request(t, req, _int32(regs[ffi.R_RSI]), regs[ffi.R_RDX], regs[ffi.R_R10])
        except OSError as ex:
            ret = -(ex.errno or errno.EIO)
        if t.emu is not None and t.emu.saved is None:
            t.emu.saved = [regs[i] for i in _ARG_REGS]
            t.emu.changed = True
        regs[ffi.R_ORIG_RAX] = M64
        t.skip_ret = ret
        return CHANGED | EXIT

    def _request(self, t, req: int, pid: int, addr: int, data: int) -> int:
        if req == TRACEME:
            return self._traceme(t)
        if req in (ATTACH, SEIZE):
            return self._attach(t, pid, req == SEIZE, addr, data)
        b = self.loop.tracees.get(pid)
        e = b.emu if b is not None else None
        if e is None or e.tracer is not t:
            raise OSError(errno.ESRCH, "no such tracee")
        if req == KILL:
            _tgkill(e.tgid, pid, SIGKILL)
            return 0
        if req == INTERRUPT:
            if not e.seized:
                raise OSError(errno.EIO, "not seized")
            _real(INTERRUPT, pid)
            return 0
        if not e.held or e.listening:
            raise OSError(errno.ESRCH, "tracee not stopped")
        if req in (CONT, SYSCALL, SINGLESTEP, DETACH, LISTEN):
            if data > 64:
                raise OSError(errno.EIO, "bad signal")
            if req == LISTEN:
                if not e.seized or e.held != K_GROUP:
                    raise OSError(errno.EIO, "not in a group-stop")
                e.held = 0
                e.status = None
                e.listening = True
                _real(LISTEN, pid)
                return 0
            if req == DETACH:
                self._unlink(t, b, e)
            else:
                e.mode = req
            self._continue(b, e, data)
            return 0
        return self._data_request(t, b, e, req, pid, addr, data)

    def _data_request(self, t, b, e: Link, req: int, pid: int, addr: int, data: int) -> int:
        """The requests that read or change the stopped tracee, data copied to/from the tracer."""
        if req in (PEEKTEXT, PEEKDATA, PEEKUSR):
            word = _real(req, pid, addr) & M64
            mem.write(t, data, word.to_bytes(8, "little"))
            return 0
        if req in (POKETEXT, POKEDATA, POKEUSR):
            return _real(req, pid, addr, data)
        if req == SETOPTIONS:
            if data & ~O_ALLOWED:
                raise OSError(errno.EINVAL, "option not supported")
            e.options = data
            self._real_options(b, e)
            return 0
        if req == GETSIGINFO and e.siginfo is not None:
            if e.siginfo == _EINVAL:
                raise OSError(errno.EINVAL, "no siginfo in a group-stop")
            mem.write(t, data, e.siginfo)
            return 0
        out = {GETREGS: ctypes.sizeof(ffi.Regs), GETFPREGS: 512, GETSIGINFO: SIGINFO_SIZE,
               GETEVENTMSG: 8}.get(req)
        if out is not None:
            buf = ctypes.create_string_buffer(out)
            _real(req, pid, 0, ctypes.addressof(buf))
            mem.write(t, data, buf.raw)
            return 0
        size = {SETREGS: ctypes.sizeof(ffi.Regs), SETFPREGS: 512, SETSIGINFO: SIGINFO_SIZE}.get(req)
        if size is not None:
            buf = ctypes.create_string_buffer(mem.read(t, data, size), size)
            return _real(req, pid, 0, ctypes.addressof(buf))
        if req in (GETREGSET, SETREGSET):
            iov = mem.read(t, data, 16)
            base, length = int.from_bytes(iov[:8], "little"), int.from_bytes(iov[8:], "little")
            length = min(length, 1 << 16)
            if req == SETREGSET:
                buf = ctypes.create_string_buffer(mem.read(t, base, length), length)
            else:
                buf = ctypes.create_string_buffer(length)
            local = ffi.IoVec(ctypes.addressof(buf), length)
            _real(req, pid, addr, ctypes.addressof(local))
            if req == GETREGSET:
                mem.write(t, base, buf.raw[:local.len])
                mem.write(t, data + 8, local.len.to_bytes(8, "little"))
            return 0
        if req == GET_SYSCALL_INFO:
            size = min(addr, 256)
            buf = ctypes.create_string_buffer(max(size, 1))
            n = _real(req, pid, size, ctypes.addressof(buf))
            if size:
                mem.write(t, data, buf.raw[:min(n, size)])
            return n
        if req in (GETSIGMASK, SETSIGMASK):
            if addr != 8:
                raise OSError(errno.EINVAL, "bad sigset size")
            buf = ctypes.create_string_buffer(mem.read(t, data, 8) if req == SETSIGMASK else 8, 8)
            _real(req, pid, 8, ctypes.addressof(buf))
            if req == GETSIGMASK:
                mem.write(t, data, buf.raw)
            return 0
        if req == ARCH_PRCTL:
            if data in (0x1003, 0x1004):        # ARCH_GET_FS/GS: the value goes to *addr
                buf = ctypes.create_string_buffer(8)
                _real(req, pid, ctypes.addressof(buf), data)
                mem.write(t, addr, buf.raw)
                return 0
            return _real(req, pid, addr, data)
        raise OSError(errno.EIO, "request not emulated")

    def _traceme(self, t) -> int:
        if t.emu is not None and t.emu.tracer is not None:
            raise OSError(errno.EPERM, "already traced")
        tgid, ppid, _ = _proc_ids(t.pid)
        p = self.loop.tracees.get(ppid)
        if p is None or p.emu is not None and p.emu.tracer is t:
            raise OSError(errno.EPERM, "the parent is not a guest")
        self._special(p)
        e = self._special(t)
        self._link(p, t, e, seized=False, options=0, real_child=tgid == t.pid)
        return 0

    def _attach(self, t, pid: int, seize: bool, addr: int, data: int) -> int:
        if seize and not self.loop.seized:
            # our own attach is the classic one (a kernel without PTRACE_SEIZE): so is theirs
            raise OSError(errno.EIO, "PTRACE_SEIZE not supported")
        if seize and (addr or data & ~O_ALLOWED):
            raise OSError(errno.EIO if addr else errno.EINVAL, "bad PTRACE_SEIZE")
        loop = self.loop
        b = loop.tracees.get(pid)
        if b is None:
            raise OSError(errno.EPERM if os.path.exists(f"/proc/{pid}") else errno.ESRCH,
                          "not a guest thread")
        te = self._special(t)
        if b is t or (b.emu is not None and b.emu.tracer is not None):
            raise OSError(errno.EPERM, "already traced")
        tgid, ppid, _ = _proc_ids(pid)
        if tgid == te.tgid:
            raise OSError(errno.EPERM, "own thread group")
        e = self._special(b)
        self._link(t, b, e, seized=seize, options=data if seize else 0,
                   real_child=tgid == pid and ppid == te.tgid)
        if pid in loop.stopped:             # kept in a group-stop: re-trapped for its tracer
            loop.stopped.discard(pid)
            try:
                _real(INTERRUPT, pid)
            except OSError:
                pass
        if not seize:
            _tgkill(e.tgid, pid, SIGSTOP)
        return 0

    def _link(self, tracer, b, e: Link, seized: bool, options: int, real_child: bool) -> None:
        e.tracer = tracer
        e.seized = seized
        e.options = options
        e.mode = CONT
        e.held = 0
        e.status = None
        e.siginfo = None
        e.listening = False
        e.real_child = real_child
        e.auto = False
        tracer.emu.tracees.append(b)

    def _unlink(self, tracer, b, e: Link) -> None:
        te = tracer.emu
        if b in te.tracees:
            te.tracees.remove(b)
        te.queue = [q for q in te.queue if q[2] is not b]
        e.tracer = None
        e.status = None

    # ---- reports ---------------------------------------------------------------------------
    def _report(self, b, e: Link, status: int, kind: int, siginfo: bytes | None = None) -> None:
        """Keep the tracee stopped and tell its tracer."""
        e.held = kind
        e.status = status
        e.siginfo = siginfo
        a = e.tracer
        a.emu.queue.append([b.pid, status, b])
        self._notify(a)

    def _notify(self, a) -> None:
        ae = a.emu
        try:
            os.kill(ae.tgid, SIGCHLD)
        except OSError:
            pass
        if ae.waiting:
            self._wake(a)

    def _wake(self, a) -> None:
        a.emu.waiting = False
        self.waiters.discard(a)
        ffi.resume(ffi.PTRACE_SYSCALL, a.pid, 0)

    def exited(self, pid: int) -> None:
        """A guest process ended: a held wait may now get it from the kernel."""
        self.ends += 1
        for a in list(self.waiters):
            self._wake(a)

    # ---- resuming ----------------------------------------------------------------------------
    def _resume(self, t, e: Link, sig: int = 0) -> None:
        if e.tracer is not None and e.mode == SINGLESTEP and not t.in_syscall:
            regs = ffi.Regs()
            if ffi.getregs(t.pid, regs) != -1:
                try:
                    insn = ffi.peek(t.pid, regs[_R_RIP]) & 0xFFFF
                except OSError:
                    insn = 0
                if insn != 0x050F:          # not a `syscall`: the kernel steps it
                    ffi.resume(SINGLESTEP, t.pid, sig)
                    return
                e.step_trap = True          # its exit stop ends the step (see _exit)
        ffi.resume(ffi.PTRACE_SYSCALL, t.pid, sig)

    def _continue(self, b, e: Link, sig: int) -> None:
        """Its tracer resumed it: on from the stop it is held at."""
        kind = e.held
        e.held = 0
        e.status = None
        e.siginfo = None
        if kind == K_ENTRY:
            self._run_entry(b, e, sig)
            return
        if kind == K_GROUP:
            sig = 0
        self._resume(b, e, sig)

    # ---- the stops of special threads ---------------------------------------------------------
    def stop(self, t, status: int) -> bool:
        """Every stop (and the end) of a special thread: True when handled here (the end: False,
        the loop's own bookkeeping follows)."""
        e = t.emu
        loop = self.loop
        pid = t.pid
        if status & 0xFF != 0x7F:
            self._gone(t, e, status)
            return False
        self._real_options(t, e)
        if t.exec_probe:
            loop._exec_check(t)
        s8 = status >> 8
        sig, event = s8 & 0xFF, s8 >> 8
        if s8 == SIG_SECCOMP_STOP:
            if t.in_syscall:                # translated at its syscall-entry stop already
                ffi.resume(ffi.PTRACE_SYSCALL, pid, 0)
            else:                           # entered without an entry stop (resumed with CONT)
                self._run_entry(t, e, 0)
            return True
        if s8 == SIG_SYSCALL:
            if not t.in_syscall:
                if e.tracer is not None and e.mode == SYSCALL and not e.silent:
                    t.in_syscall = True
                    self._report(t, e, syscall_status(e.options), K_ENTRY)
                else:
                    e.silent = False
                    self._run_entry(t, e, 0)
            else:
                self._exit(t, e)
            return True
        if not t.started and (sig == SIGSTOP or event):
            t.started = True
            if e.tracer is not None and e.auto:
                self._report_initial(t, e)
            elif event and sig != SIGTRAP:
                ffi.listen(pid)
                loop.stopped.add(pid)
            else:
                self._resume(t, e)
            return True
        if event == EV_STOP:
            if sig in STOP_SIGNALS:         # a group-stop
                if e.tracer is not None:
                    if e.seized:
                        self._report(t, e, status, K_GROUP)
                    else:
                        self._report(t, e, stop_status(sig), K_GROUP, _EINVAL)
                else:
                    ffi.listen(pid)
                    loop.stopped.add(pid)
            else:                           # PTRACE_INTERRUPT, or the end of a listened stop
                loop.stopped.discard(pid)
                e.listening = False
                if e.tracer is not None and e.seized:
                    self._report(t, e, status, K_EVENT)
                else:
                    self._resume(t, e)
            return True
        if event:
            self._event(t, e, event)
            return True
        if e.tracer is not None:            # a signal-delivery stop
            self._report(t, e, status, K_SIGNAL)
        elif sig in STOP_SIGNALS and not loop.seized and not ffi.has_siginfo(pid):
            self._resume(t, e)
        else:
            self._resume(t, e, sig)
        return True

    def _report_initial(self, c, e: Link) -> None:
        """The first stop of a new tracee (auto-attached): PTRACE_EVENT_STOP for a seized one,
        else the SIGSTOP the kernel starts it with."""
        if e.seized:
            self._report(c, e, stop_status(SIGTRAP, EV_STOP), K_EVENT)
        else:
            self._report(c, e, stop_status(SIGSTOP), K_SIGNAL, _stop_siginfo(SIGSTOP))

    def _event(self, t, e: Link, event: int) -> None:
        loop = self.loop
        pid = t.pid
        regs = ffi.Regs()
        wanted = e.tracer is not None and e.options & _EVENT_OPTION.get(event, 0)
        if event in (EV_FORK, EV_VFORK, EV_CLONE):
            t.in_syscall = True
            try:
                child = ffi.geteventmsg(pid)
            except OSError:
                child = 0
            held = bool(wanted) and child in loop.held
            if held:
                loop.held.discard(child)    # it stays stopped for the tracer (not resumed)
            loop._event_stop(t, pid, event, regs)
            c = loop.tracees.get(child)
            if wanted and c is not None:
                ce = self._special(c)
                ctgid, _, _ = _proc_ids(child)
                self._link(e.tracer, c, ce, seized=e.seized, options=e.options,
                           real_child=ctgid == child and e.tracer.emu.tgid == e.tgid)
                ce.auto = True
                if held:
                    c.started = True
                    self._real_options(c, ce)
                    self._report_initial(c, ce)
            if wanted:
                self._report(t, e, stop_status(SIGTRAP, event), K_EVENT)
            else:
                self._resume(t, e)
            return
        if event == EV_EXEC:
            loop._event_stop(t, pid, event, regs)
            t.in_syscall = True             # its exit stop follows
            e.exec_seen = True
            if wanted:
                self._report(t, e, stop_status(SIGTRAP, event), K_EVENT)
                return
            if e.tracer is not None and not e.seized:
                _tgkill(e.tgid, pid, SIGTRAP)   # the legacy SIGTRAP after a successful execve
        elif event == EV_VFORK_DONE:
            t.in_syscall = True
            if wanted:
                self._report(t, e, stop_status(SIGTRAP, event), K_EVENT)
                return
        elif event == EV_EXIT and wanted:
            self._report(t, e, stop_status(SIGTRAP, event), K_EVENT)
            return
        self._resume(t, e)

    def _run_entry(self, t, e: Link, sig: int) -> None:
        """A syscall-entry stop: the emulated wait, or the run's own handler (the translation),
        then on to its exit stop."""
        loop = self.loop
        pid = t.pid
        regs = ffi.Regs()
        t.in_syscall = True
        if ffi.getregs(pid, regs) == -1:
            return
        nr = regs[ffi.R_ORIG_RAX]
        if (nr == NR_WAIT4 or nr == NR_WAITID) and (e.tracees or e.queue) \
                and self._wait_enter(t, e, regs, sig):
            return
        dispatch = self.dispatch
        if nr < len(dispatch):
            h = dispatch[nr]
        elif nr == M64:
            h = None
        else:
            h = _enosys
        if h is not None:
            e.saved = [regs[i] for i in _ARG_REGS]
            t.scratch = _scratch_top(regs)
            try:
                act = h(t, regs)
            except OSError as ex:
                t.ret = -(ex.errno or errno.EIO)
                act = SKIP
            except NeedScratch:
                e.silent = True             # the call is restarted once the area is mapped
                loop._inject_mmap(t, pid, regs)
                return
            except Exception as ex:
                act = loop._internal_error(t, nr, ex)
            if act & SKIP:
                regs[ffi.R_ORIG_RAX] = M64
                t.skip_ret = t.ret
                ffi.setregs(pid, regs)
                e.changed = True
            elif act & CHANGED:
                ffi.setregs(pid, regs)
                e.changed = True
        self._resume(t, e, sig)

    def _exit(self, t, e: Link) -> None:
        loop = self.loop
        pid = t.pid
        t.in_syscall = False
        regs = ffi.Regs()
        if t.inject is not None:
            loop._injected(t, pid, regs)
            ffi.resume(ffi.PTRACE_SYSCALL, pid, 0)
            return
        if t.skip_ret is not None or t.exits:
            loop._exit_stop(t, pid, regs)
        if e.wait is not None:
            self._wait_exit(t, e)
            return
        if e.changed:
            e.changed = False
            saved = e.saved
            if not e.exec_seen and saved is not None and ffi.getregs(pid, regs) != -1:
                for i, v in zip(_ARG_REGS, saved):
                    regs[i] = v
                ffi.setregs(pid, regs)
        e.saved = None
        e.exec_seen = False
        if e.step_trap:                     # a single-step over a syscall ends after it
            e.step_trap = False
            if e.tracer is not None and e.mode == SINGLESTEP:
                _tgkill(e.tgid, pid, SIGTRAP)
        if e.tracer is not None and e.mode == SYSCALL:
            self._report(t, e, syscall_status(e.options), K_EXIT)
            return
        ffi.resume(ffi.PTRACE_SYSCALL, pid, 0)

    # ---- wait4 / waitid of a tracer -------------------------------------------------------------
    def _matches(self, a, e: Link, nr: int, regs, exit_ok: bool):
        """(pid, status, tracee or None) of the first report the call may take, or None;
        second value: whether any of its tracees match at all."""
        if nr == NR_WAIT4:
            wpid = _int32(regs[ffi.R_RDI])
            kind = P_ALL if wpid == -1 else P_PID if wpid > 0 else P_PGID
            ident = wpid if wpid > 0 else (_pgid(a.pid) if wpid == 0 else -wpid)
        else:
            kind = regs[ffi.R_RDI] & 0xFFFFFFFF
            ident = _int32(regs[ffi.R_RSI])
            if kind == P_PGID and ident == 0:
                ident = _pgid(a.pid)
            if kind not in (P_ALL, P_PID, P_PGID):
                return None, False

        def ok(pid: int) -> bool:
            if kind == P_ALL:
                return True
            if kind == P_PID:
                return pid == ident
            return _pgid(pid) in (ident, -1)

        any_tracee = any(ok(b.pid) for b in e.tracees)
        for q in e.queue:
            if ok(q[0]) and (q[2] is not None or exit_ok):
                return q, True
        return None, any_tracee or any(ok(q[0]) for q in e.queue)

    def _wait_enter(self, a, e: Link, regs, sig: int) -> bool:
        """The entry of a tracer's wait4/waitid: True when handled (answered or on its way)."""
        nr = regs[ffi.R_ORIG_RAX]
        opt_reg = ffi.R_RDX if nr == NR_WAIT4 else ffi.R_R10
        options = regs[opt_reg] & 0xFFFFFFFF
        exit_ok = nr == NR_WAIT4 or bool(options & WEXITED)
        q, any_match = self._matches(a, e, nr, regs, exit_ok)
        if not any_match:
            return False
        e.saved = [regs[i] for i in _ARG_REGS]
        if q is not None:
            pid, status, b = q
            try:
                if nr == NR_WAIT4:
                    if regs[ffi.R_RSI]:
                        mem.write(a, regs[ffi.R_RSI], (status & 0xFFFFFFFF).to_bytes(4, "little"))
                    if regs[ffi.R_R10]:
                        mem.write(a, regs[ffi.R_R10], bytes(RUSAGE_SIZE))
                    ret = pid
                else:
                    uid = b.emu.uid if b is not None else 0
                    if regs[ffi.R_RDX]:
                        mem.write(a, regs[ffi.R_RDX], waitid_info(pid, uid, status))
                    if regs[ffi.R_R8]:
                        mem.write(a, regs[ffi.R_R8], bytes(RUSAGE_SIZE))
                    ret = 0
            except OSError as ex:
                ret = -(ex.errno or errno.EFAULT)
            else:
                if not (nr == NR_WAITID and options & WNOWAIT):
                    e.queue.remove(q)
                    if b is not None and b.emu is not None:
                        b.emu.status = None
            regs[ffi.R_ORIG_RAX] = M64
            a.skip_ret = ret
            ffi.setregs(a.pid, regs)
            e.changed = True
            ffi.resume(ffi.PTRACE_SYSCALL, a.pid, sig)
            return True
        # nothing reported yet: the real call, without blocking (the tracer's real children)
        info = regs[ffi.R_RDX] if nr == NR_WAITID else 0
        scratch = 0
        if nr == NR_WAITID and not info:
            a.scratch = regs[ffi.R_RSP] - 128
            try:
                scratch = mem.push(a, bytes(SIGINFO_SIZE))
            except (OSError, NeedScratch):
                return False
            regs[ffi.R_RDX] = scratch
        e.wait = (nr, opt_reg, options, not options & WNOHANG, scratch or info, bool(scratch),
                  self.ends)
        regs[opt_reg] = options | WNOHANG
        ffi.setregs(a.pid, regs)
        ffi.resume(ffi.PTRACE_SYSCALL, a.pid, sig)
        return True

    def _wait_exit(self, a, e: Link) -> None:
        nr, opt_reg, options, blocking, info, scratch, ends = e.wait
        e.wait = None
        e.changed = False
        regs = ffi.Regs()
        pid = a.pid
        if ffi.getregs(pid, regs) == -1:
            return
        regs[opt_reg] = options
        if scratch:
            regs[ffi.R_RDX] = 0
        rax = _int64(regs[ffi.R_RAX])
        if rax == -errno.ECHILD:            # no real child, but tracees: "nothing yet"
            rax = 0
            if nr == NR_WAITID and not scratch:
                try:
                    mem.write(a, info, bytes(SIGINFO_SIZE))
                except OSError:
                    pass
        got = rax != 0
        if nr == NR_WAITID and rax == 0:
            try:
                got = mem.read(a, info + 16, 4) != bytes(4)     # si_pid
            except OSError:
                got = True
        if got or not blocking:
            regs[ffi.R_RAX] = rax & M64
            ffi.setregs(pid, regs)
            ffi.resume(ffi.PTRACE_SYSCALL, pid, 0)
            return
        # nothing anywhere: back onto the `syscall` instruction, held until something comes
        regs[_R_RIP] -= 2
        regs[ffi.R_RAX] = regs[ffi.R_ORIG_RAX]
        ffi.setregs(pid, regs)
        a.in_syscall = False
        q, any_match = self._matches(a, e, nr, regs, nr == NR_WAIT4 or bool(options & WEXITED))
        if q is not None or not any_match or ends != self.ends:
            # a report, or an end (a real child's, its tracee's) came meanwhile: again at once
            ffi.resume(ffi.PTRACE_SYSCALL, pid, 0)
            return
        e.waiting = True
        self.waiters.add(a)

    # ---- the end of a special thread ------------------------------------------------------------
    def _gone(self, t, e: Link, status: int) -> None:
        a = e.tracer
        if a is not None:
            ae = a.emu
            self._unlink(a, t, e)
            if not e.real_child:            # the real wait will not tell its tracer
                ae.queue.append([t.pid, status, None])
                self._notify(a)
        for b in list(e.tracees):
            be = b.emu
            self._unlink(t, b, be)
            if be.options & O_EXITKILL:
                _tgkill(be.tgid, b.pid, SIGKILL)
            elif be.held:
                be.mode = CONT
                self._continue(b, be, 0)
        e.queue = []
        self.waiters.discard(t)
        e.waiting = False
        self.exited(t.pid)


def _scratch_top(regs) -> int:
    """Where our data for the call may go: below the red zone, and below what an emulated tracer
    (a nested carryon, PRoot) put under the stack pointer for it (the lowest argument pointing
    there, less a margin: its data lies above the pointers it passes)."""
    sp = regs[ffi.R_RSP]
    low = sp - 128
    for i in ffi.ARG:
        v = regs[i]
        if sp - (1 << 20) <= v < low:
            low = v - 1024
    return low


def _enosys(t, regs) -> int:
    raise OSError(errno.ENOSYS, "unknown system call")
