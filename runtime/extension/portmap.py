"""Port translation: a guest that binds GUEST really binds HOST, and sees GUEST everywhere.

Forward (at the system call's entry): `bind` to a translated port gets the host port (or port 0 in
automatic mode, the kernel's choice being read back at the exit stop); `connect`, `sendto`,
`sendmsg`, `sendmmsg` to a translated port on a local address (loopback, wildcard, this node's own
addresses) go to the host port. The rewritten sockaddr is a copy pushed below the stack pointer: the
guest's memory is never changed.

Reverse: `getsockname`, `getpeername` (answered at the entry from the tracer's own look at the
socket), `accept`/`accept4`, `recvfrom`, `recvmsg`, `recvmmsg` (at the exit stop) give back the guest
port for a host port of the table (on a local address, for peers).

State is per run (the port table), per thread (the one call in flight, for the exit stop: several
binds in flight in several threads and processes each have their own), and per socket where it
matters: a bound port is read back from the socket itself (the descriptor copied with pidfd_getfd,
which dup(), fork() and threads share), never from a "last bind" slot.

Exit stops are asked for only where a result can need translation:
- received addresses (recvfrom/recvmsg/recvmmsg) carry a host port only once a guest socket sent to
  a translated port (`redirected`), or a bound client exists;
- an accepted peer shows a host port only when a guest socket bound to a translated port connected
  (`bound_clients`: noticed when the thread that bound it connects with it, the usual pattern of
  clients that bind).
The seccomp filter does not even stop `sendto`/`recvfrom`/`accept`/`accept4` with a NULL address.

Automatic host ports are bound by the tracer itself at the entry of the guest's bind (on a
pidfd_getfd copy of the socket; the guest's call is skipped), so the first bind of a guest port is
complete before any other guest call is looked at. Without pidfd_getfd (Linux < 5.6) the tracer
finds a free port and hands it to the guest's bind instead.

Limits: without pidfd_getfd, two first binds of one (proto, guest port) in flight at the very same
time get two host ports (both published; connects go to the first); a learnt host port is reused for later binds of
its guest port, so if another program took it meanwhile that bind fails with EADDRINUSE; a wildcard
bind moved onto a `--carryon-publish IP:` address shows that address in getsockname.
"""

from __future__ import annotations

import sys

from runtime.errors import CarryonError
from runtime.extension import Base
from runtime.net import portsfile, sockaddr, sockinfo
from runtime.net.localaddr import LocalAddresses
from runtime.net.portmap import AUTO, PortEntry, PortTable
from runtime.spec import RunSpec
from runtime.syscall.sysnums import NUMBERS
from runtime.tracee import mem
from runtime.tracee.actions import CHANGED, EXIT, SKIP
from runtime.tracee.ffi import ARG, R_ORIG_RAX, R_RAX

A0, A1, A2, A3, A4, A5 = ARG

BIND = NUMBERS["bind"]
CONNECT = NUMBERS["connect"]
SENDTO = NUMBERS["sendto"]
SENDMSG = NUMBERS["sendmsg"]
SENDMMSG = NUMBERS["sendmmsg"]
GETSOCKNAME = NUMBERS["getsockname"]
GETPEERNAME = NUMBERS["getpeername"]
ACCEPT = NUMBERS["accept"]
ACCEPT4 = NUMBERS["accept4"]
RECVFROM = NUMBERS["recvfrom"]
RECVMSG = NUMBERS["recvmsg"]
RECVMMSG = NUMBERS["recvmmsg"]

CALLS = frozenset((BIND, CONNECT, SENDTO, SENDMSG, SENDMMSG, GETSOCKNAME, GETPEERNAME,
                   ACCEPT, ACCEPT4, RECVFROM, RECVMSG, RECVMMSG))
# Calls worth a stop only when an argument is non-NULL (the address): the seccomp filter lets
# `send(fd, buf, n, 0)` = sendto(..., NULL, 0), `recv` = recvfrom(..., NULL, NULL) and
# accept(fd, NULL, NULL) run without stopping.
IF_ARG = {SENDTO: 4, RECVFROM: 4, ACCEPT: 1, ACCEPT4: 1}
KEY = "portmap"          # this extension's slot in Tracee.ext: the call in flight of that thread

MSGHDR_LEN = 56          # struct msghdr on x86_64; msg_name at 0, msg_namelen (u32) at 8
MMSGHDR_LEN = 64         # struct mmsghdr: msghdr + msg_len (u32) at 56 + padding
UIO_MAXIOV = 1024        # the kernel's cap on sendmmsg/recvmmsg vlen
SOCKET_MEMORY = 1 << 12  # translated binds remembered by (thread, fd) (oldest forgotten first)


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _remember(d: dict, key) -> None:
    if key in d:
        return
    if len(d) >= SOCKET_MEMORY:
        del d[next(iter(d))]
    d[key] = None


class PortMap(Base):
    """One run's port translation (an engine extension, see `runtime.extension`)."""

    enter_calls = CALLS
    enter_calls_if_arg = IF_ARG

    def __init__(self, spec: RunSpec, stderr=sys.stderr) -> None:
        self.ports_file = spec.ports_file
        self.verbose = spec.verbose
        self.stderr = stderr
        self.table = PortTable(spec.port_map, spec.netcoop, on_change=self._published)
        self.local = LocalAddresses()
        self.readback = sockinfo.can_read_bound_ports()
        self.bound_fds: dict[tuple[int, int], None] = {}  # (tid, fd) of translated binds
        self.redirected = False
        self.bound_clients = False
        self.native = None              # the native stop loop, told the table (see attach_native)
        self._enter = {
            BIND: self._bind, CONNECT: self._connect, SENDTO: self._sendto, SENDMSG: self._sendmsg,
            SENDMMSG: self._sendmmsg, GETSOCKNAME: self._getsockname, GETPEERNAME: self._getpeername,
            ACCEPT: self._accept, ACCEPT4: self._accept, RECVFROM: self._recvfrom,
            RECVMSG: self._recvmsg, RECVMMSG: self._recvmmsg,
        }
        self._exit = {
            BIND: self._bind_exit, SENDMMSG: self._sendmmsg_exit, GETSOCKNAME: self._getsockname_exit,
            GETPEERNAME: self._peer_exit, ACCEPT: self._peer_exit, ACCEPT4: self._peer_exit,
            RECVFROM: self._peer_exit, RECVMSG: self._recvmsg_exit, RECVMMSG: self._recvmmsg_exit,
        }
        if self.ports_file:             # before the guest starts: an empty table, or a clear error
            portsfile.check_writable(self.ports_file)
            portsfile.write(self.ports_file, [])

    # --- life cycle --------------------------------------------------------------------------

    def close(self) -> None:
        """End of the run: the ports file goes away."""
        if self.ports_file:
            portsfile.remove(self.ports_file)

    # --- the native stop loop (runtime.tracee.native) -------------------------------------------


    def attach_native(self, nat, calls) -> None:
        """Let the native loop answer the socket calls (of `calls`: those no other extension
        hooks) that the table decides by itself (fastport.c's port_stop). It is told every change
        of the table and of the flags below, and queues the binds it translated (`native_bound`)."""
        from runtime.tracee import native as N
        kinds = {BIND: N.PM_BIND, CONNECT: N.PM_CONNECT, SENDTO: N.PM_SENDTO, ACCEPT: N.PM_ACCEPT,
                 ACCEPT4: N.PM_ACCEPT, GETSOCKNAME: N.PM_GETSOCKNAME, GETPEERNAME: N.PM_GETPEERNAME}
        self.native = nat
        nat.handlers[N.Q_BOUND] = self.native_bound
        for nr in calls:
            kind = kinds.get(nr)
            if kind:
                nat.port_call(nr, kind)
        nat.port_local(self.local.v4, self.local.v6)
        self._sync_native()

    def _sync_native(self) -> None:
        nat = self.native
        if nat is None:
            return
        from runtime.tracee.native import PROTO_BITS
        t = self.table
        fwd = [(PROTO_BITS[p], g, h) for (p, g), h in t.fwd.items()]
        rev = [(PROTO_BITS[p], h, g) for (p, h), g in t.rev.items()]
        pubs = [(PROTO_BITS[e.proto], e.guest, e.host, _address_key(e.address)) for e in t.entries()]
        restricted = [(PROTO_BITS[p], g) for p, g in t.restrict]
        nat.port_table(fwd, rev, pubs, restricted, sorted(t.bind_ports))
        self._sync_flags()

    def _sync_flags(self) -> None:
        if self.native is not None:
            self.native.port_flags(bound_clients=self.bound_clients, redirected=self.redirected,
                                   readback=self.readback, auto=self.table.auto)

    def native_bound(self, tid: int, fd: int, _unused: int = 0) -> None:
        """The native loop translated a bind of this socket (Q_BOUND)."""
        _remember(self.bound_fds, (tid, fd))

    def _bound(self, tid: int, fd: int) -> None:
        _remember(self.bound_fds, (tid, fd))
        if self.native is not None:
            self.native.port_bound(tid, fd)

    def fork(self, parent, child) -> None:
        sockinfo.forget(child.pid)      # a cached pidfd under a reused thread id is not this one

    def _published(self, entries: list[PortEntry], new: PortEntry) -> None:
        self._sync_native()
        if self.verbose:
            self.stderr.write(f"carryon: port {new.proto} {new.address} {new.guest} -> host {new.host}\n")
            self.stderr.flush()
        if self.ports_file:
            try:
                portsfile.write(self.ports_file, entries)
            except CarryonError as e:   # a full disk must not make the guest's bind fail
                self.stderr.write(f"carryon: {e}\n")

    # --- dispatch ----------------------------------------------------------------------------

    def enter(self, t, regs) -> int:
        """Entry of a socket call: action bits (CHANGED, EXIT, SKIP) for the engine."""
        handler = self._enter.get(regs[R_ORIG_RAX])
        if handler is None:
            return 0
        try:
            return handler(t, regs)
        except OSError:
            return 0            # bad guest pointer, vanished process: the kernel will answer

    def exit(self, t, regs) -> int:
        """Exit stop asked for by `enter`: fix the result the guest sees (in its memory)."""
        state = t.ext.pop(KEY, None)
        if state is None:
            return 0
        handler = self._exit.get(state[0])
        if handler is not None:
            try:
                handler(t, regs, state)
            except OSError:
                pass
        return 0

    def _watch(self, t, state: tuple) -> int:
        t.ext[KEY] = state
        return EXIT

    # --- helpers -----------------------------------------------------------------------------

    def _read_sockaddr(self, t, addr: int, length: int) -> bytes | None:
        """The guest's AF_INET/AF_INET6 address, all `length` bytes of it (up to 128: the copy
        handed to the kernel with the same length must hold what the kernel reads)."""
        if addr == 0 or length < sockaddr.SIN_LEN:
            return None
        size = min(length, sockaddr.MAX_LEN)
        peek = getattr(t, "peek", None)     # already read by the engine at this stop?
        if peek is not None and peek[0] == addr and len(peek[1]) == size:
            raw = peek[1]
        else:
            raw = mem.read(t, addr, size)
        return raw if sockaddr.is_inet(raw) else None

    def _forward(self, t, fd: int, raw: bytes) -> bytes | None:
        """The host-side destination for the guest destination `raw` of socket `fd` (None: it
        stays), with the bookkeeping of sockets sending to local addresses."""
        if sockaddr.ip(raw) not in self.local:
            return None
        if (t.pid, fd) in self.bound_fds and not self.bound_clients:
            if sockinfo.bound_port(t.pid, fd) in self.table.host_ports:
                self.bound_clients = True   # peers will see this socket's host port
                self._sync_flags()
        table = self.table
        gport = sockaddr.port(raw)
        if gport not in table.guest_ports:
            return None
        host = table.same_host(gport)       # the same for TCP and UDP: no need to ask which
        if host is None:
            proto = sockinfo.socket_proto_fast(t.pid, fd)
            host = table.connect_target(proto, gport) if proto else None
            if host is None:
                return None
        if not self.redirected:
            self.redirected = True
            self._sync_flags()
        return sockaddr.with_port(raw, host)

    def _watch_incoming(self) -> bool:
        """Whether received addresses can carry a host port of the table."""
        return self.redirected or self.bound_clients

    def _reverse(self, t, fd: int, addr: int, length: int, local_only: bool) -> None:
        """Write the guest port over a host port in the sockaddr the kernel returned at `addr`."""
        if addr == 0 or length < sockaddr.SIN_LEN:
            return
        raw = mem.read(t, addr, min(length, sockaddr.SIN6_LEN))
        if not sockaddr.is_inet(raw):
            return
        hport = sockaddr.port(raw)
        if hport not in self.table.host_ports or (local_only and sockaddr.ip(raw) not in self.local):
            return
        proto = sockinfo.socket_proto_fast(t.pid, fd)
        guest = self.table.guest_port(proto, hport) if proto else None
        if guest is not None:
            mem.write(t, addr + 2, guest.to_bytes(2, "big"))

    def _reverse_at_len(self, t, fd: int, addr: int, lenptr: int, local_only: bool) -> None:
        if addr == 0 or lenptr == 0:
            return
        length = int.from_bytes(mem.read(t, lenptr, 4), "little")
        self._reverse(t, fd, addr, length, local_only)

    # --- forward translation -------------------------------------------------------------------

    def _bind(self, t, regs) -> int:
        fd = regs[A0]
        table = self.table
        raw = self._read_sockaddr(t, regs[A1], regs[A2])
        if raw is None:
            return 0
        gport = sockaddr.port(raw)
        if gport == 0 or not (table.auto or gport in table.bind_ports):
            return 0
        proto = sockinfo.socket_proto_fast(t.pid, fd)
        if not proto:
            return 0
        target = table.bind_target(proto, gport)
        if target is None:
            return 0
        new = raw
        restrict = table.restrict.get((proto, gport))
        if restrict is not None and sockaddr.is_wildcard(sockaddr.ip(raw)):
            new = _restricted(raw, restrict)
        address = sockaddr.address_text(raw)
        if target == AUTO and self.readback:
            # The tracer binds the guest's socket itself (a pidfd_getfd copy) to a port the kernel
            # picks, learns it and skips the guest's call: no exit stop, and no window in which a
            # second first bind of this guest port (another thread or process) could get another.
            err, host = sockinfo.bind_copy(t.pid, fd, sockaddr.with_port(new, 0))
            if err == 0:
                self._bound(t.pid, fd)
                self.table.record(proto, gport, host, address, sockaddr.is_ipv4(raw))
                t.ret = 0
                return SKIP
            if err > 0:
                t.ret = -err
                return SKIP
            return 0
        if target == AUTO:
            target = sockinfo.probe_free_port(sockaddr.family(raw), proto, sockaddr.address_text(new))
            if not target:
                return 0
        regs[A1] = mem.push(t, sockaddr.with_port(new, target))
        self._bound(t.pid, fd)
        if target != AUTO and table.published(proto, gport, address, target):
            return CHANGED
        return CHANGED | self._watch(t, (BIND, fd, proto, gport, address, sockaddr.is_ipv4(raw), target))

    def _bind_exit(self, t, regs, state) -> None:
        if _signed(regs[R_RAX]) != 0:
            return
        _, fd, proto, gport, address, ipv4, target = state
        host = target or sockinfo.bound_port(t.pid, fd)
        if host:
            self.table.record(proto, gport, host, address, ipv4)

    def _connect(self, t, regs) -> int:
        return self._send(t, regs, A1, A2)

    def _sendto(self, t, regs) -> int:
        return self._send(t, regs, A4, A5)

    def _send(self, t, regs, addr_reg: int, len_reg: int) -> int:
        fd = regs[A0]
        raw = self._read_sockaddr(t, regs[addr_reg], regs[len_reg])
        if raw is None:
            return 0
        new = self._forward(t, fd, raw)
        if new is None:
            return 0
        regs[addr_reg] = mem.push(t, new)
        return CHANGED

    def _sendmsg(self, t, regs) -> int:
        fd, msg = regs[A0], regs[A1]
        hdr = mem.read(t, msg, MSGHDR_LEN)
        raw = self._read_sockaddr(t, int.from_bytes(hdr[0:8], "little"), int.from_bytes(hdr[8:12], "little"))
        if raw is None:
            return 0
        new = self._forward(t, fd, raw)
        if new is None:
            return 0
        name = mem.push(t, new)             # a copy of the header pointing at a copy of the name
        regs[A1] = mem.push(t, name.to_bytes(8, "little") + hdr[8:])
        return CHANGED

    def _sendmmsg(self, t, regs) -> int:
        fd, vec, vlen = regs[A0], regs[A1], min(regs[A2] & 0xFFFFFFFF, UIO_MAXIOV)
        if vlen == 0:
            return 0
        data = mem.read(t, vec, vlen * MMSGHDR_LEN)
        copy = bytearray(data)
        changed = False
        for off in range(0, vlen * MMSGHDR_LEN, MMSGHDR_LEN):
            raw = self._read_sockaddr(t, int.from_bytes(data[off:off + 8], "little"),
                                      int.from_bytes(data[off + 8:off + 12], "little"))
            if raw is None:
                continue
            new = self._forward(t, fd, raw)
            if new is not None:
                copy[off:off + 8] = mem.push(t, new).to_bytes(8, "little")
                changed = True
        if not changed:
            return 0
        regs[A1] = where = mem.push(t, bytes(copy))
        return CHANGED | self._watch(t, (SENDMMSG, vec, where))

    def _sendmmsg_exit(self, t, regs, state) -> None:
        """The kernel wrote each msg_len into the copy: give them to the guest's vector."""
        _, vec, where = state
        for i in range(max(0, min(_signed(regs[R_RAX]), UIO_MAXIOV))):
            off = i * MMSGHDR_LEN + MSGHDR_LEN
            mem.write(t, vec + off, mem.read(t, where + off, 4))

    # --- reverse translation -------------------------------------------------------------------

    def _getsockname(self, t, regs) -> int:
        return self._getname(t, regs, GETSOCKNAME)

    def _getpeername(self, t, regs) -> int:
        return self._getname(t, regs, GETPEERNAME)

    def _getname(self, t, regs, nr: int) -> int:
        """getsockname/getpeername whose answer needs translating are answered at the entry.

        The tracer asks the kernel itself (on a pidfd_getfd copy of the descriptor), writes the
        guest's view into the guest's buffer and skips the call with result 0: one stop instead of
        two. Every other case (nothing to translate, errors) runs the real call untouched."""
        if not self.table.host_ports:
            return 0
        fd, addr, lenptr = regs[A0], regs[A1], regs[A2]
        peer = nr == GETPEERNAME
        if not self.readback:               # old kernel: translate at the exit stop
            return self._watch(t, (nr, fd, addr, lenptr))
        table = self.table
        host_ports = table.host_ports

        def need_proto(raw: bytes) -> bool:     # nothing to translate, or the same for TCP and
            if not sockaddr.is_inet(raw):       # UDP: no protocol needed
                return False
            hport = sockaddr.port(raw)
            return hport in host_ports and table.same_guest(hport) is None

        raw, proto = sockinfo.name_and_proto(t.pid, fd, peer, need_proto)
        if raw is None or not sockaddr.is_inet(raw):
            return 0
        hport = sockaddr.port(raw)
        if hport not in host_ports or (peer and sockaddr.ip(raw) not in self.local):
            return 0
        guest = table.same_guest(hport)
        if guest is None:
            guest = table.guest_port(proto, hport) if proto else None
        if guest is None:
            return 0
        room = int.from_bytes(mem.read(t, lenptr, 4), "little")
        if room >= 1 << 31:
            return 0                        # negative length: the kernel's EINVAL
        mem.write(t, addr, sockaddr.with_port(raw, guest)[:room])
        mem.write(t, lenptr, len(raw).to_bytes(4, "little"))
        t.ret = 0
        return SKIP

    def _getsockname_exit(self, t, regs, state) -> None:
        if _signed(regs[R_RAX]) == 0:
            _, fd, addr, lenptr = state
            self._reverse_at_len(t, fd, addr, lenptr, local_only=False)

    def _peer_exit(self, t, regs, state) -> None:
        if _signed(regs[R_RAX]) >= 0:
            _, fd, addr, lenptr = state
            self._reverse_at_len(t, fd, addr, lenptr, local_only=True)

    def _accept(self, t, regs) -> int:
        """The peer of an accepted connection shows a host port only when a guest socket bound to
        a translated port made the connection: watched from the first time that happened."""
        if not (self.bound_clients and regs[A1]):
            return 0
        return self._watch(t, (regs[R_ORIG_RAX], regs[A0], regs[A1], regs[A2]))

    def _recvfrom(self, t, regs) -> int:
        fd, addr = regs[A0], regs[A4]
        if addr == 0 or not self._watch_incoming():     # NULL: the plain engine stops anyway
            return 0
        return self._watch(t, (RECVFROM, fd, addr, regs[A5]))

    def _recvmsg(self, t, regs) -> int:
        fd, msg = regs[A0], regs[A1]
        if not self._watch_incoming() or int.from_bytes(mem.read(t, msg, 8), "little") == 0:
            return 0
        return self._watch(t, (RECVMSG, fd, msg))

    def _recvmsg_exit(self, t, regs, state) -> None:
        if _signed(regs[R_RAX]) >= 0:
            _, fd, msg = state
            hdr = mem.read(t, msg, 12)      # msg_namelen now holds the length the kernel wrote
            self._reverse(t, fd, int.from_bytes(hdr[0:8], "little"), int.from_bytes(hdr[8:12], "little"),
                          local_only=True)

    def _recvmmsg(self, t, regs) -> int:
        if not self._watch_incoming():
            return 0
        return self._watch(t, (RECVMMSG, regs[A0], regs[A1]))

    def _recvmmsg_exit(self, t, regs, state) -> None:
        _, fd, vec = state
        for i in range(max(0, min(_signed(regs[R_RAX]), UIO_MAXIOV))):
            hdr = mem.read(t, vec + i * MMSGHDR_LEN, 12)
            self._reverse(t, fd, int.from_bytes(hdr[0:8], "little"), int.from_bytes(hdr[8:12], "little"),
                          local_only=True)


def _address_key(address: str) -> bytes:
    """The native loop's key of a published address (fastloop.c's addr_key): family, packed
    address, and for IPv6 the scope id: what `sockaddr.address_text` made the text from."""
    text, _, scope = address.partition("%")
    if ":" not in text:
        return sockaddr.AF_INET.to_bytes(2, "little") + sockaddr.pack_ip(text)
    return (sockaddr.AF_INET6.to_bytes(2, "little") + sockaddr.pack_ip(text)
            + int(scope or 0).to_bytes(4, "little"))


def _restricted(raw: bytes, address: str) -> bytes:
    """A wildcard guest bind moved onto the publication's host address (Docker's `IP:HOST:GUEST`)."""
    packed = sockaddr.pack_ip(address)
    fam = sockaddr.family(raw)
    if fam == sockaddr.AF_INET and len(packed) == 4:
        return sockaddr.with_ip(raw, packed)
    if fam == sockaddr.AF_INET6:
        return sockaddr.with_ip(raw, packed if len(packed) == 16 else b"\x00" * 10 + b"\xff\xff" + packed)
    return raw
