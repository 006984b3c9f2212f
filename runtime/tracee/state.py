"""Per-process (per-thread) state the tracer keeps."""

from __future__ import annotations

import os

from runtime.tracee import mem

TYPE_CHECKING = False           # not `typing.TYPE_CHECKING`: importing typing slows start-up
if TYPE_CHECKING:
    from ctypes import Array, c_ulong


class Tracee:
    """One traced thread. Threads of a process each have one (ptrace works per thread)."""

    __slots__ = ("pid", "memfd", "scratch", "ret", "exits", "exe", "pending_exe", "mapper",
                 "in_syscall", "skip_ret", "ext", "started", "guest_root", "area", "inject", "peek",
                 "exec_probe", "exec_events", "vm_peer", "mem_stops", "settle", "fast", "load",
                 "pending_ext", "loading", "emu")

    def __init__(self, pid: int, mapper, exe: str = "", ext: dict | None = None) -> None:
        self.pid = pid
        # /proc/PID/mem, opened once the program has stopped MEMFD_AFTER times (see
        # runtime.tracee.mem); -2: not opened yet, -1: cannot be (both use process_vm_readv/writev)
        self.memfd = -2
        self.mem_stops = 0          # stops of the current program while memfd is -2
        self.scratch = 0            # next free byte below the stack pointer (set at each stop)
        self.ret = 0                # result of a skipped call (value or -errno)
        self.exits: list | None = None  # exit-stop callbacks for the current call
        self.exe = exe              # guest path of the program (/proc/PID/exe)
        self.pending_exe = ""       # what exe becomes if the current execve succeeds
        self.mapper = mapper        # path mapper (per process: chroot changes it)
        self.in_syscall = False     # plain ptrace engine: between enter and exit stops
        self.skip_ret: int | None = None  # plain ptrace engine: result to set at the exit stop
        self.ext: dict = ext if ext is not None else {}
        self.started = False        # its initial SIGSTOP was seen
        self.guest_root = "/"       # guest path of its root (chroot emulation)
        self.area = 0               # fallback scratch mapping in the tracee (0: none, -1: failed)
        self.inject: Array[c_ulong] | None = None  # saved registers while an injected mmap runs
        # (address, bytes) the engine's own handler read from the tracee at this stop, for the
        # extensions hooked on the same call (engine.py's `chained` resets it at each stop)
        self.peek: tuple[int, bytes] | None = None
        # Seized tracees without exec events (see runtime.tracee.loop): an address of the old
        # program's stack read at the next stop tells whether the execve in flight succeeded.
        self.exec_probe = 0
        self.exec_events = False    # PTRACE_O_TRACEEXEC is on for this thread
        self.vm_peer = 0            # a vfork child: its parent, whose memory it uses until it execs
        # the mappers whose caches wait for this thread's forget-call (unlink, rename...) to be
        # over: settled at its next stop or when it is gone (see runtime.path.binding)
        self.settle: tuple | None = None
        self.fast = 0               # what the native loop may do with it (runtime.tracee.native bits)
        # the record carryon's loader gets after an exec through it (runtime.execve.loader)
        self.load: bytes | None = None
        # the plain ptrace engine: carryon's loader runs unstopped until its int3
        self.loading = False
        # what `ext` gets if the current execve succeeds (an extension's state that an exec
        # changes: runtime.extension.fake_id's ids after a set-user-ID program)
        self.pending_ext: dict | None = None
        self.emu = None             # it takes part in emulated ptrace (runtime.extension.ptrace_emu)

    def open_mem(self) -> None:
        if self.memfd >= 0:
            os.close(self.memfd)
        self.memfd = mem.open_mem(self.pid)

    def count_stop(self) -> None:
        """One more stop of a program without /proc/PID/mem yet: open it at the MEMFD_AFTER-th."""
        self.mem_stops += 1
        if self.mem_stops >= mem.MEMFD_AFTER:
            self.open_mem()

    def new_image(self) -> None:
        """The thread runs a new program (a successful execve): the old memory descriptor names
        the old address space. A new one is opened later (lazily, see `count_stop`)."""
        if self.memfd >= 0:
            try:
                os.close(self.memfd)
            except OSError:
                pass
        self.memfd = -2
        self.mem_stops = 0

    def exec_done(self) -> None:
        """Its execve succeeded: the new program's /proc/PID/exe, no scratch area, no injection in
        flight, no shared memory with a vfork parent, and a memory descriptor still to open."""
        if self.pending_exe:
            self.exe = self.pending_exe
            self.pending_exe = ""
        if self.pending_ext:
            self.ext.update(self.pending_ext)
            self.pending_ext = None
        self.area = 0
        self.inject = None
        self.vm_peer = 0
        self.new_image()

    def settled(self) -> None:
        """Its forget-call is over: the caches may grow again (dropping what was added meanwhile)."""
        ms = self.settle
        self.settle = None
        if ms is not None:
            for m in ms:
                m.settling -= 1
                m.forget()

    def close(self) -> None:
        self.settled()
        self.new_image()        # closes the memory descriptor
