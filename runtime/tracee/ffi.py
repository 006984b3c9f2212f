"""Raw kernel interface of the tracer: ptrace, prctl, seccomp, process_vm_readv, via ctypes.

python-ptrace's `ptrace.binding` offers the same calls, but importing it costs ~35 ms here (it imports
`logging` and runs `ctypes.util.find_library`, which spawns `ldconfig`): more than the whole start-up
budget. So the tracer binds libc itself; the register layout is python-ptrace's `user_regs_struct`
for x86_64 (checked against it by the tests), kept as a flat array of 27 words for fast indexing.
"""

from __future__ import annotations

import ctypes
import errno
import os

libc = ctypes.CDLL("libc.so.6", use_errno=True)

_ptrace = libc.ptrace
_ptrace.argtypes = (ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p)
_ptrace.restype = ctypes.c_long

_syscall = libc["syscall"]          # its own function object (restype set here only)
_syscall.restype = ctypes.c_long

_prctl = libc.prctl
_prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)
_prctl.restype = ctypes.c_int

# ptrace requests (linux/ptrace.h)
PTRACE_TRACEME = 0
PTRACE_PEEKDATA = 2
PTRACE_POKEDATA = 5
PTRACE_CONT = 7
PTRACE_KILL = 8
PTRACE_GETREGS = 12
PTRACE_SETREGS = 13
PTRACE_ATTACH = 16
PTRACE_DETACH = 17
PTRACE_SYSCALL = 24
PTRACE_SEIZE = 0x4206
PTRACE_LISTEN = 0x4208
PTRACE_SETOPTIONS = 0x4200
PTRACE_GETEVENTMSG = 0x4201
PTRACE_GETSIGINFO = 0x4202

PTRACE_O_TRACESYSGOOD = 0x1
PTRACE_O_TRACEFORK = 0x2
PTRACE_O_TRACEVFORK = 0x4
PTRACE_O_TRACECLONE = 0x8
PTRACE_O_TRACEEXEC = 0x10
PTRACE_O_TRACESECCOMP = 0x80
PTRACE_O_EXITKILL = 0x100000

PTRACE_EVENT_FORK = 1
PTRACE_EVENT_VFORK = 2
PTRACE_EVENT_CLONE = 3
PTRACE_EVENT_EXEC = 4
PTRACE_EVENT_VFORK_DONE = 5
PTRACE_EVENT_EXIT = 6
PTRACE_EVENT_SECCOMP = 7
PTRACE_EVENT_STOP = 128

WALL = 0x40000000  # __WALL: wait for threads and children of any kind

# prctl
PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
PR_GET_NAME = 16
PR_SET_SECCOMP = 22
PR_SET_NO_NEW_PRIVS = 38
SECCOMP_MODE_FILTER = 2

# x86_64 struct user_regs_struct: 27 unsigned longs, in this order.
REG_NAMES = ("r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx", "rdx",
             "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base", "gs_base",
             "ds", "es", "fs", "gs")
Regs = ctypes.c_ulong * len(REG_NAMES)
R_R10, R_R9, R_R8, R_RAX, R_RDX, R_RSI, R_RDI, R_ORIG_RAX, R_RIP, R_RSP = (
    REG_NAMES.index(n) for n in ("r10", "r9", "r8", "rax", "rdx", "rsi", "rdi", "orig_rax", "rip", "rsp"))
# System call argument registers, in argument order.
ARG = (R_RDI, R_RSI, R_RDX, R_R10, R_R8, R_R9)


def _raise(what: str) -> None:
    e = ctypes.get_errno()
    raise OSError(e, f"{what}: {os.strerror(e)}")


def ptrace(request: int, pid: int, addr: int = 0, data: int = 0) -> int:
    r = _ptrace(request, pid, addr, data)
    if r == -1:
        _raise(f"ptrace({request}, {pid})")
    return r


def getregs(pid: int, regs, _p=_ptrace, _req=PTRACE_GETREGS, addressof=ctypes.addressof) -> int:
    """Fill `regs` (a Regs array); returns -1 when the tracee vanished (killed meanwhile)."""
    return _p(_req, pid, None, addressof(regs))


def setregs(pid: int, regs, _p=_ptrace, _req=PTRACE_SETREGS, addressof=ctypes.addressof) -> int:
    return _p(_req, pid, None, addressof(regs))


def resume(request: int, pid: int, sig: int = 0, _p=_ptrace) -> int:
    """PTRACE_CONT / PTRACE_SYSCALL; returns -1 (ESRCH) when the tracee is already gone."""
    return _p(request, pid, None, sig)


def cont_to_end(pid: int) -> int:
    """Let a (probe) tracee run on through every stop until it ends; its wait status."""
    resume(PTRACE_CONT, pid, 0)
    while True:
        _, status = os.waitpid(pid, WALL)
        if not os.WIFSTOPPED(status):
            return status
        resume(PTRACE_CONT, pid, 0)


def geteventmsg(pid: int) -> int:
    v = ctypes.c_ulong()
    ptrace(PTRACE_GETEVENTMSG, pid, 0, ctypes.addressof(v))
    return v.value


def has_siginfo(pid: int) -> bool:
    """False for a group-stop (PTRACE_GETSIGINFO fails with EINVAL), True for a signal-delivery stop."""
    buf = ctypes.create_string_buffer(128)
    return _ptrace(PTRACE_GETSIGINFO, pid, None, ctypes.addressof(buf)) != -1


def listen(pid: int, _p=_ptrace, _req=PTRACE_LISTEN) -> int:
    """PTRACE_LISTEN: a seized thread in a group-stop stays stopped (as natively) until a SIGCONT
    or SIGKILL, which the tracer hears of (a PTRACE_EVENT_STOP with SIGTRAP, or its end); returns
    -1 when it is gone or no longer in that stop."""
    return _p(_req, pid, None, None)


def setoptions(pid: int, options: int) -> None:
    ptrace(PTRACE_SETOPTIONS, pid, 0, options)


def seize(pid: int, options: int) -> None:
    """PTRACE_SEIZE (Linux 3.8+ without the 3.4-3.7 "devel" flag): attach without stopping it."""
    ptrace(PTRACE_SEIZE, pid, 0, options)


_SYS_KCMP = 312                     # x86_64
KCMP_VM = 1


def kcmp_vm(pid1: int, pid2: int) -> int:
    """kcmp(KCMP_VM): 0 when both share one address space, 1 or 2 when not, -1 when it cannot be
    told (no kcmp in this kernel, a process gone)."""
    r = _syscall(_SYS_KCMP, pid1, pid2, KCMP_VM, 0, 0)
    return int(r) if r >= 0 else -1


def traceme() -> None:
    ptrace(PTRACE_TRACEME, 0)


def prctl(option: int, a2: int = 0, a3: int = 0, a4: int = 0, a5: int = 0) -> None:
    if _prctl(option, a2, a3, a4, a5) == -1:
        _raise(f"prctl({option})")


def get_name() -> bytes:
    """The calling thread's name (its comm, what `ps` shows)."""
    buf = ctypes.create_string_buffer(16)
    prctl(PR_GET_NAME, ctypes.addressof(buf))
    return buf.value


def set_name(name: bytes) -> None:
    """Name the calling thread (PR_SET_NAME: at most 15 bytes kept)."""
    buf = ctypes.create_string_buffer(name[:15], 16)
    prctl(PR_SET_NAME, ctypes.addressof(buf))


class SockFilter(ctypes.Structure):
    _fields_ = (("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32))


class SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter)))


def seccomp_program(program: list[tuple[int, int, int, int]]):
    """The classic-BPF `program` as a ready `struct sock_fprog` (built before the fork, so that the
    child only has to install it)."""
    blob = b"".join(code.to_bytes(2, "little") + bytes((jt, jf)) + k.to_bytes(4, "little")
                    for code, jt, jf, k in program)
    buf = ctypes.create_string_buffer(blob, len(blob))
    prog = SockFprog(len(program), ctypes.cast(buf, ctypes.POINTER(SockFilter)))
    prog._keep = buf                    # the filter array lives as long as the header
    return prog


_SYS_SECCOMP = 317                  # x86_64
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_SPEC_ALLOW = 4  # Linux 4.17+


def install_seccomp(prog) -> None:
    """prctl(PR_SET_NO_NEW_PRIVS) then install `prog` (`seccomp_program`, or the list it takes) as
    a seccomp filter.

    With SECCOMP_FILTER_FLAG_SPEC_ALLOW: on kernels whose speculation mitigations default to
    "seccomp" (4.17 to 5.15, e.g. RHEL 8 nodes), a filter installed without it force-disables
    speculative store bypass (and enables IBPB) for the guest, which then computes slower than
    natively. This filter only tells the tracer where to stop; it is no sandbox to harden.
    Kernels without the flag (or without seccomp(2)) get the plain prctl."""
    if isinstance(prog, list):
        prog = seccomp_program(prog)
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    if _syscall(_SYS_SECCOMP, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_SPEC_ALLOW,
               ctypes.c_void_p(ctypes.addressof(prog))) == 0:
        return
    if ctypes.get_errno() not in (errno.EINVAL, errno.ENOSYS):
        _raise("seccomp filter")
    if _prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(prog), 0, 0) == -1:
        _raise("seccomp filter")


class IoVec(ctypes.Structure):
    _fields_ = (("base", ctypes.c_void_p), ("len", ctypes.c_size_t))


_pvr = libc.process_vm_readv
_pvr.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong,
                 ctypes.c_ulong)
_pvr.restype = ctypes.c_ssize_t
_pvw = libc.process_vm_writev
_pvw.argtypes = _pvr.argtypes
_pvw.restype = ctypes.c_ssize_t


_string_at = ctypes.string_at

# One static buffer and iovec pair for the hot path (the tracer's calls come from one thread).
_VM_BUF_SIZE = 8192
_vm_buf = ctypes.create_string_buffer(_VM_BUF_SIZE)
_vm_local = IoVec(ctypes.addressof(_vm_buf), 0)
_vm_remote = IoVec(0, 0)
# Hot-path variants without argtypes, called with ready-made ctypes arguments: the argtypes
# conversion alone costs more than a microsecond per call.
_pvr_fast = libc["process_vm_readv"]
_pvr_fast.restype = ctypes.c_ssize_t
_pvw_fast = libc["process_vm_writev"]
_pvw_fast.restype = ctypes.c_ssize_t
_VM_LOCAL = ctypes.c_void_p(ctypes.addressof(_vm_local))
_VM_REMOTE = ctypes.c_void_p(ctypes.addressof(_vm_remote))
_ONE = ctypes.c_ulong(1)
_ZERO = ctypes.c_ulong(0)


# Kernels before 3.2 have no process_vm_readv/writev (ENOSYS, seen once: the choice holds for the
# run): reads then go through /proc/PID/mem (readable by the tracer since 2.6.x), writes through
# PTRACE_POKEDATA, word by word (/proc/PID/mem is writable only since 2.6.39). Nothing of this
# runs where the calls exist.
_vm_missing = False


def _vm_read_old(pid: int, addr: int, size: int) -> bytes:
    try:
        fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        fd = -1
    if fd >= 0:
        try:
            return os.pread(fd, size, addr)
        finally:
            os.close(fd)
    out = bytearray()
    for a in range(addr & ~7, addr + size, 8):
        out += peek(pid, a).to_bytes(8, "little")
    off = addr & 7
    return bytes(out[off:off + size])


def peek(pid: int, addr: int) -> int:
    """PTRACE_PEEKDATA: the word at `addr` (OSError when unmapped)."""
    ctypes.set_errno(0)
    v = _ptrace(PTRACE_PEEKDATA, pid, addr, None)
    if v == -1 and ctypes.get_errno():
        _raise("ptrace(PEEKDATA)")
    return v & 0xFFFFFFFFFFFFFFFF


def _vm_write_old(pid: int, addr: int, data: bytes) -> int:
    start, end = addr & ~7, (addr + len(data) + 7) & ~7
    buf = bytearray()
    if start != addr:
        buf += peek(pid, start).to_bytes(8, "little")[: addr - start]
    buf += data
    if len(buf) % 8:
        last = peek(pid, end - 8).to_bytes(8, "little")
        buf += last[len(buf) % 8:]
    for i in range(0, len(buf), 8):
        if _ptrace(PTRACE_POKEDATA, pid, start + i, int.from_bytes(buf[i:i + 8], "little")) == -1:
            _raise("ptrace(POKEDATA)")
    return len(data)


def vm_read(pid: int, addr: int, size: int) -> bytes:
    """process_vm_readv: what a program reads before its /proc/PID/mem is opened (see
    runtime.tracee.mem), or when it cannot be. Short read at unmapped pages."""
    if _vm_missing:
        return _vm_read_old(pid, addr, size)
    if size > _VM_BUF_SIZE:
        buf = ctypes.create_string_buffer(size)
        local = IoVec(ctypes.addressof(buf), size)
        remote = IoVec(addr, size)
        n = _pvr(pid, ctypes.addressof(local), 1, ctypes.addressof(remote), 1, 0)
        if n < 0:
            if ctypes.get_errno() == errno.ENOSYS:
                _no_vm()
                return _vm_read_old(pid, addr, size)
            _raise("process_vm_readv")
        return buf.raw[:n]
    _vm_local.len = size
    _vm_remote.base = addr
    _vm_remote.len = size
    n = _pvr_fast(pid, _VM_LOCAL, _ONE, _VM_REMOTE, _ONE, _ZERO)
    if n < 0:
        if ctypes.get_errno() == errno.ENOSYS:
            _no_vm()
            return _vm_read_old(pid, addr, size)
        _raise("process_vm_readv")
    return _string_at(_vm_buf, n)


def _no_vm() -> None:
    global _vm_missing
    _vm_missing = True


def vm_write(pid: int, addr: int, data: bytes) -> int:
    if _vm_missing:
        return _vm_write_old(pid, addr, data)
    size = len(data)
    if size > _VM_BUF_SIZE:
        buf = ctypes.create_string_buffer(data, size)
        local = IoVec(ctypes.addressof(buf), size)
        remote = IoVec(addr, size)
        n = _pvw(pid, ctypes.addressof(local), 1, ctypes.addressof(remote), 1, 0)
    else:
        ctypes.memmove(_vm_buf, data, size)
        _vm_local.len = size
        _vm_remote.base = addr
        _vm_remote.len = size
        n = _pvw_fast(pid, _VM_LOCAL, _ONE, _VM_REMOTE, _ONE, _ZERO)
    if n < 0:
        if ctypes.get_errno() == errno.ENOSYS:
            _no_vm()
            return _vm_write_old(pid, addr, data)
        _raise("process_vm_writev")
    return n
