"""Tracer-side questions about a tracee's socket, answered without running code in the tracee.

- protocol: the `system.sockprotoname` xattr of the socket inode behind `/proc/TID/fd/N` ("TCP",
  "UDPv6", ...): one syscall, any kernel since 2.6.
- local / peer address: a copy of the tracee's descriptor taken with `pidfd_getfd` (Linux 5.6+) and
  asked with `getsockname`/`getpeername`. Where that is missing, `probe_free_port` finds a free port
  from the tracer instead, and getsockname/getpeername are translated at their exit stop.
"""

from __future__ import annotations

import _socket as socket  # (the C module: `socket` imports enum and selectors)
import ctypes
import errno
import os

from runtime.tracee import ffi

_SYS_PIDFD_GETFD = 438          # x86_64
_PROTOS = {b"TCP": "tcp", b"TCPv6": "tcp", b"MPTCP": "tcp", b"UDP": "udp", b"UDPv6": "udp",
           b"UDPLITE": "udp", b"UDPLITEv6": "udp"}

_libc = ffi.libc
_syscall = ffi._syscall                 # libc's syscall(), returning a long


def socket_proto(tid: int, fd: int) -> str | None:
    """"tcp", "udp", or None (not a socket, another protocol, or the process is gone)."""
    try:
        name = os.getxattr(f"/proc/{tid}/fd/{fd}", "system.sockprotoname")
    except OSError:
        return None
    return _PROTOS.get(name.rstrip(b"\x00"))


def tgid_of(tid: int) -> int:
    try:
        with open(f"/proc/{tid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Tgid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return tid


_PIDFDS: dict[int, int] = {}     # tid -> pidfd of its process (a few cached, oldest closed first)
_PIDFD_CACHE = 64


def _pidfd(tid: int) -> int:
    pidfd = _PIDFDS.get(tid)
    if pidfd is not None:
        return pidfd
    try:
        pidfd = os.pidfd_open(tid)
    except OSError as e:                    # a thread, not a process leader: EINVAL, or ENOENT
        tgid = tgid_of(tid)                 # on recent kernels; its process's pidfd will do
        if e.errno not in (errno.EINVAL, errno.ENOENT) or tgid == tid:
            raise
        pidfd = os.pidfd_open(tgid)
    if len(_PIDFDS) >= _PIDFD_CACHE:
        os.close(_PIDFDS.pop(next(iter(_PIDFDS))))
    _PIDFDS[tid] = pidfd
    return pidfd


def forget(tid: int) -> None:
    """The thread is gone: drop its cached pidfd (its id may be reused)."""
    pidfd = _PIDFDS.pop(tid, None)
    if pidfd is not None:
        os.close(pidfd)


def _pidfd_getfd(tid: int, fd: int) -> int:
    """A duplicate of descriptor `fd` of the process of thread `tid`."""
    for attempt in (0, 1):
        res = _syscall(_SYS_PIDFD_GETFD, _pidfd(tid), fd, 0)
        if res >= 0:
            return int(res)
        err = ctypes.get_errno()
        if err != errno.ESRCH or attempt:
            raise OSError(err, os.strerror(err))
        forget(tid)                         # a stale pidfd of a dead process whose id came back
    raise AssertionError("unreachable")


_getsockname = _libc.getsockname
_getpeername = _libc.getpeername
_NAMEBUF = ctypes.create_string_buffer(128)
_NAMELEN = ctypes.c_uint32()


def sock_name(tid: int, fd: int, peer: bool = False) -> bytes | None:
    """Raw getsockname (or getpeername) of the tracee's socket `fd`, None on any error."""
    try:
        dup = _pidfd_getfd(tid, fd)
    except (OSError, AttributeError):
        return None
    try:
        _NAMELEN.value = 128
        call = _getpeername if peer else _getsockname
        if call(dup, _NAMEBUF, ctypes.byref(_NAMELEN)) != 0:
            return None
        return _NAMEBUF.raw[:min(_NAMELEN.value, 128)]
    finally:
        os.close(dup)


_getsockopt = _libc.getsockopt
_OPTVAL = ctypes.c_int()
_OPTLEN = ctypes.c_uint32()
_SOL_SOCKET, _SO_PROTOCOL = 1, 38
_IPPROTOS = {6: "tcp", 262: "tcp", 17: "udp", 136: "udp"}     # TCP, MPTCP, UDP, UDP-Lite


def _proto_of(dup: int) -> str | None:
    _OPTLEN.value = 4
    if _getsockopt(dup, _SOL_SOCKET, _SO_PROTOCOL, ctypes.byref(_OPTVAL), ctypes.byref(_OPTLEN)) != 0:
        return None
    return _IPPROTOS.get(_OPTVAL.value)


def socket_proto_fast(tid: int, fd: int) -> str | None:
    """`socket_proto` through a descriptor copy (3 cheap syscalls instead of a /proc path walk),
    falling back to the xattr where pidfd_getfd is missing."""
    try:
        dup = _pidfd_getfd(tid, fd)
    except (OSError, AttributeError):
        return socket_proto(tid, fd)
    try:
        return _proto_of(dup)
    finally:
        os.close(dup)


def name_and_proto(tid: int, fd: int, peer: bool, proto_for=None) -> tuple[bytes | None, str | None]:
    """Raw getsockname (getpeername) and protocol of the tracee's socket, via one descriptor copy.
    `proto_for(raw) -> bool` (optional): ask for the protocol only when it says so (else None)."""
    try:
        dup = _pidfd_getfd(tid, fd)
    except (OSError, AttributeError):
        return None, None
    try:
        _NAMELEN.value = 128
        if (_getpeername if peer else _getsockname)(dup, _NAMEBUF, ctypes.byref(_NAMELEN)) != 0:
            return None, None
        raw = _NAMEBUF.raw[:min(_NAMELEN.value, 128)]
        if proto_for is not None and not proto_for(raw):
            return raw, None
        return raw, _proto_of(dup)
    finally:
        os.close(dup)


_bind = _libc.bind


def bind_copy(tid: int, fd: int, raw: bytes) -> tuple[int, int]:
    """Bind the tracee's socket `fd` to sockaddr `raw` from the tracer, on a pidfd_getfd copy (the
    same socket): (0, the local port it got) or (errno, 0). (-1, 0) when the copy cannot be had
    (no pidfd_getfd, process gone): the guest's own call must then run."""
    try:
        dup = _pidfd_getfd(tid, fd)
    except (OSError, AttributeError):
        return -1, 0
    try:
        buf = ctypes.create_string_buffer(raw, len(raw))
        if _bind(dup, buf, len(raw)) != 0:
            return ctypes.get_errno() or errno.EINVAL, 0
        _NAMELEN.value = 128
        if _getsockname(dup, _NAMEBUF, ctypes.byref(_NAMELEN)) != 0 or _NAMELEN.value < 4:
            return ctypes.get_errno() or errno.EINVAL, 0
        return 0, (_NAMEBUF.raw[2] << 8) | _NAMEBUF.raw[3]
    finally:
        os.close(dup)


def bound_port(tid: int, fd: int) -> int | None:
    """Local port of the tracee's socket `fd`, None when it cannot be read."""
    raw = sock_name(tid, fd)
    return (raw[2] << 8) | raw[3] if raw is not None and len(raw) >= 4 else None


def can_read_bound_ports() -> bool:
    """True when `bound_port` works on this kernel (pidfd_open and pidfd_getfd, Linux 5.6+)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind(("127.0.0.1", 0))
        return bound_port(os.getpid(), s.fileno()) == s.getsockname()[1]
    finally:
        s.close()


def probe_free_port(fam: int, proto: str, address: str) -> int:
    """A port free right now on `address` (or on the wildcard), chosen by the kernel for the tracer.

    The fallback for kernels without pidfd_getfd: the port is released before the guest binds it, so
    another process may take it in between (the guest then sees EADDRINUSE). 0 when no port was found.
    """
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    for addr in (address, "::" if fam == socket.AF_INET6 else "0.0.0.0"):
        try:
            s = socket.socket(fam, kind)
            try:
                s.bind((addr.split("%", 1)[0], 0))
                return int(s.getsockname()[1])
            finally:
                s.close()
        except OSError:
            continue
    return 0
