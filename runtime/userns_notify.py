"""Port translation on the userns rung where ptrace is refused: seccomp user notification (5.5+).

The guest's filter (`program`) sends bind, connect, sendto (with an address), sendmsg,
getsockname and getpeername to a listener descriptor (SECCOMP_FILTER_FLAG_NEW_LISTENER; the child
passes it to carryon over a socketpair) instead of stopping them for a tracer. `Supervisor`, a
thread of carryon, answers each with runtime.extension.portmap's table and decisions:

- bind to a translated port: carryon binds the guest's socket itself (a pidfd_getfd copy) to the
  host port (or one the kernel picks), records it and answers the call's result (the guest's call
  does not run);
- connect/sendto/sendmsg to a translated local port: the host port is written into the guest's own
  sockaddr, then the call continues (SECCOMP_USER_NOTIF_FLAG_CONTINUE): the guest's structure holds
  the host port afterwards (the ptrace engines hand the kernel a copy instead);
- getsockname/getpeername of a translated socket: answered from carryon's own look at the socket
  (PortMap._getname), the guest's port written into its buffer.
Not translated here (the ptrace engines do it at the exit stop, which a notification has not):
the peer address of accept/recvfrom/recvmsg from a guest socket bound to a translated port.
Everything else continues untouched. Guest memory is read and written with process_vm_readv/writev
(runtime.tracee.mem), which Yama's ptrace_scope 3 would refuse too.
"""

from __future__ import annotations

import ctypes
import errno
import os

from runtime.syscall.sysnums import NUMBERS

RET_TRACE, RET_USER_NOTIF = 0x7FF00000, 0x7FC00000
SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
NOTIF_RECV, NOTIF_SEND = 0xC0502100, 0xC0182101
FLAG_CONTINUE = 1
NOTIF_SIZE, RESP_SIZE = 80, 24          # struct seccomp_notif / seccomp_notif_resp (x86_64)

BIND, CONNECT, SENDTO, SENDMSG = (NUMBERS[n] for n in ("bind", "connect", "sendto", "sendmsg"))
GETSOCKNAME, GETPEERNAME = NUMBERS["getsockname"], NUMBERS["getpeername"]
CALLS = (BIND, CONNECT, SENDMSG, GETSOCKNAME, GETPEERNAME)
IF_ARG = {SENDTO: 4}

_libc = ctypes.CDLL("libc.so.6", use_errno=True)
_ioctl = _libc.ioctl
_ioctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)
_syscall = _libc["syscall"]
_syscall.restype = ctypes.c_long


def rules() -> list[tuple[int, int, int, int]]:
    """The filter: the calls above go to the listener, nothing else is touched."""
    from runtime.syscall import seccomp
    prog = seccomp.build(set(CALLS), None, IF_ARG, None)
    return [(c, jt, jf, RET_USER_NOTIF if k == RET_TRACE and c == 0x06 else k) for c, jt, jf, k in prog]


def program():
    """`rules()` as a ready `struct sock_fprog`."""
    from runtime.tracee import ffi
    return ffi.seccomp_program(rules())


def install(prog) -> int:
    """In the child: install `prog` with a listener; the listener's descriptor."""
    from runtime.tracee import ffi
    ffi.prctl(ffi.PR_SET_NO_NEW_PRIVS, 1)
    fd = _syscall(317, 1, SECCOMP_FILTER_FLAG_NEW_LISTENER, ctypes.c_void_p(ctypes.addressof(prog)))
    if fd < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"seccomp user notification: {os.strerror(e)}")
    return fd


class _Guest:
    """What runtime.tracee.mem and PortMap need of a thread (`Tracee`'s fields)."""

    __slots__ = ("pid", "memfd", "ext", "ret", "peek", "scratch", "area")

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.memfd = -1
        self.ext: dict = {}
        self.ret = 0
        self.peek = None
        self.scratch = self.area = 0


class Supervisor:
    """Answers the listener's notifications with `portmap` (a runtime.extension.portmap.PortMap)
    in a thread, until `stop()`."""

    def __init__(self, fd: int, portmap) -> None:
        self.fd = fd
        self.pm = portmap
        self.done = False
        import threading  # (only where ptrace is refused: not on every ports run)
        self.thread = threading.Thread(target=self._loop, name="carryon-ports", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.done = True
        self.thread.join()
        os.close(self.fd)

    def _loop(self) -> None:
        notif = ctypes.create_string_buffer(NOTIF_SIZE)
        resp = ctypes.create_string_buffer(RESP_SIZE)
        import select
        poll = select.poll()
        poll.register(self.fd, select.POLLIN)
        while not self.done:
            events = poll.poll(100)
            if not events:
                continue
            if events[0][1] & (select.POLLHUP | select.POLLERR) and not events[0][1] & select.POLLIN:
                return                  # every guest process is gone
            ctypes.memset(notif, 0, NOTIF_SIZE)
            if _ioctl(self.fd, NOTIF_RECV, notif) < 0:
                if ctypes.get_errno() in (errno.EINTR, errno.ENOENT):
                    continue
                return
            raw = notif.raw
            nid = int.from_bytes(raw[0:8], "little")
            pid = int.from_bytes(raw[8:12], "little")
            nr = int.from_bytes(raw[16:20], "little")
            args = [int.from_bytes(raw[32 + 8 * i:40 + 8 * i], "little") for i in range(6)]
            try:
                result = self._answer(pid, nr, args)
            except OSError as e:
                result = -(e.errno or errno.EIO)
            except Exception:           # noqa: BLE001 -- never leave a guest call hanging
                result = None
            flags, val, err = (FLAG_CONTINUE, 0, 0) if result is None else (
                (0, result, 0) if result >= 0 else (0, 0, result))
            resp.raw = (nid.to_bytes(8, "little") + val.to_bytes(8, "little", signed=True)
                        + err.to_bytes(4, "little", signed=True) + flags.to_bytes(4, "little"))
            _ioctl(self.fd, NOTIF_SEND, resp)   # ENOENT: the guest thread went away meanwhile

    def _answer(self, pid: int, nr: int, args: list[int]) -> int | None:
        """The call's result, or None: let it run (CONTINUE)."""
        from runtime.net import sockaddr, sockinfo
        from runtime.tracee import mem
        pm = self.pm
        t = _Guest(pid)
        fd = args[0] & 0xFFFFFFFF
        if nr == BIND:
            raw = pm._read_sockaddr(t, args[1], args[2])
            if raw is None:
                return None
            gport = sockaddr.port(raw)
            table = pm.table
            if gport == 0 or not (table.auto or gport in table.bind_ports):
                return None
            proto = sockinfo.socket_proto_fast(pid, fd)
            target = table.bind_target(proto, gport) if proto else None
            if target is None:
                return None
            from runtime.extension.portmap import AUTO, _restricted
            new = raw
            restrict = table.restrict.get((proto, gport))
            if restrict is not None and sockaddr.is_wildcard(sockaddr.ip(raw)):
                new = _restricted(raw, restrict)
            err, host = sockinfo.bind_copy(pid, fd, sockaddr.with_port(new, 0 if target == AUTO else target))
            if err < 0:
                return None
            if err > 0:
                return -err
            pm._bound(pid, fd)
            if not (target != AUTO and table.published(proto, gport, sockaddr.address_text(raw), target)):
                table.record(proto, gport, host, sockaddr.address_text(raw), sockaddr.is_ipv4(raw))
            return 0
        if nr in (CONNECT, SENDTO):
            addr, length = (args[1], args[2]) if nr == CONNECT else (args[4], args[5])
            raw = pm._read_sockaddr(t, addr, length)
            new = pm._forward(t, fd, raw) if raw is not None else None
            if new is not None:
                mem.write(t, addr + 2, new[2:4])        # the port, in the guest's own sockaddr
            return None
        if nr == SENDMSG:
            hdr = mem.read(t, args[1], 16)
            addr, length = int.from_bytes(hdr[0:8], "little"), int.from_bytes(hdr[8:12], "little")
            raw = pm._read_sockaddr(t, addr, length)
            new = pm._forward(t, fd, raw) if raw is not None else None
            if new is not None:
                mem.write(t, addr + 2, new[2:4])
            return None
        if nr in (GETSOCKNAME, GETPEERNAME):
            regs = [0] * 32
            from runtime.tracee.ffi import ARG
            for i in range(3):
                regs[ARG[i]] = args[i]
            from runtime.tracee.actions import SKIP
            act = pm._getname(t, regs, nr)
            return t.ret if act & SKIP else None
        return None
