"""Unit tests of runtime.net: sockaddr codec, `-p`/`--carryon-publish` parsing, port table, ports file."""

from __future__ import annotations

import errno
import json
import os
import socket

import pytest

from runtime.errors import CarryonError
from runtime.net import portsfile, publish, sockaddr, sockinfo
from runtime.net.localaddr import LocalAddresses
from runtime.net.portmap import AUTO, PortTable
from runtime.spec import PortMapping


def _raw(family: int, ip: str, port: int) -> bytes:
    return sockaddr.make(family, socket.inet_pton(family, ip), port)


# --- sockaddr ------------------------------------------------------------------------------------

def test_sockaddr_matches_the_kernel_layout():
    # The bytes Python's own socket module hands the kernel: bind a real socket, compare getsockname.
    for fam, ip in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        raw = _raw(fam, ip, 4321)
        assert sockaddr.family(raw) == fam and sockaddr.port(raw) == 4321
        assert sockaddr.is_inet(raw) and len(raw) == sockaddr.inet_len(fam)
        assert sockaddr.address_text(raw) == ip
        with socket.socket(fam, socket.SOCK_DGRAM) as s:
            s.bind((ip, 0))
            real = s.getsockname()[1]
        moved = sockaddr.with_port(raw, real)
        assert sockaddr.port(moved) == real and sockaddr.ip(moved) == sockaddr.ip(raw)


def test_sockaddr_classifies_addresses():
    def v4(s):
        return socket.inet_pton(socket.AF_INET, s)

    def v6(s):
        return socket.inet_pton(socket.AF_INET6, s)

    assert sockaddr.is_loopback(v4("127.3.2.1")) and sockaddr.is_loopback(v6("::1"))
    assert sockaddr.is_loopback(v6("::ffff:127.0.0.1"))
    assert not sockaddr.is_loopback(v4("10.0.0.1")) and not sockaddr.is_loopback(v6("::2"))
    assert sockaddr.is_wildcard(v4("0.0.0.0")) and sockaddr.is_wildcard(v6("::"))
    assert sockaddr.is_wildcard(v6("::ffff:0.0.0.0")) and not sockaddr.is_wildcard(v6("::1"))
    assert sockaddr.is_ipv4(_raw(socket.AF_INET6, "::ffff:127.0.0.1", 1))
    assert not sockaddr.is_ipv4(_raw(socket.AF_INET6, "::1", 1))
    assert not sockaddr.is_inet(b"\x01\x00/tmp/sock")          # AF_UNIX is left alone
    assert not sockaddr.is_inet(_raw(socket.AF_INET6, "::1", 1)[:20])
    local = LocalAddresses(v4={v4("192.0.2.7")}, v6={v6("fd00::2")})
    assert v4("192.0.2.7") in local and v6("::ffff:192.0.2.7") in local and v6("fd00::2") in local
    assert v4("127.0.0.1") in local and v6("::") in local
    assert v4("192.0.2.8") not in local and v6("fd00::3") not in local


def test_local_addresses_of_this_host_include_loopback():
    local = LocalAddresses()
    assert socket.inet_aton("127.0.0.1") in local
    assert socket.inet_aton("8.8.8.8") not in local


# --- parsing ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["abc", "70000:1", "1:", ":80", "0:80", "1:2:3", "80:70000", "80:-1",
                                 "80/sctp", "", "８０:1", " :1"])
def test_exec_port_rejects_malformed(bad):
    with pytest.raises(CarryonError) as e:
        publish.parse_exec_ports([bad])
    assert e.value.exit_code == 125 and "\n" not in str(e.value)


def test_exec_port_is_guest_then_host_for_both_protocols():
    assert publish.parse_exec_ports(["7777:17777"]) == [
        PortMapping(guest=7777, host=17777, proto="tcp"), PortMapping(guest=7777, host=17777, proto="udp")]
    assert publish.parse_exec_ports(["53:5353/udp"]) == [PortMapping(guest=53, host=5353, proto="udp")]
    assert publish.parse_exec_ports(["8080"])[0].host == 0          # kernel's choice
    assert publish.parse_exec_ports(["8080:0/tcp"]) == [PortMapping(guest=8080, host=0, proto="tcp")]


def _publishes(specs):
    from runtime.launch.runspec import parse_publish
    return publish.check([parse_publish(x) for x in specs])


def test_publish_is_docker_order():
    assert _publishes(["18000:8000"]) == [PortMapping(guest=8000, host=18000, proto="tcp")]
    assert _publishes(["127.0.0.1:18000:8000/udp"]) == [
        PortMapping(guest=8000, host=18000, proto="udp", address="127.0.0.1")]
    assert _publishes(["[::1]:18000:8000"]) == [
        PortMapping(guest=8000, host=18000, proto="tcp", address="::1")]
    assert _publishes(["0:8000"])[0].host == 0           # the kernel's choice


@pytest.mark.parametrize("bad", ["abc", "1:", "1:70000", "70000:1", "300.1.1.1:1:2", "[::1:1:2",
                                 "a:b:c:d", "80:80/xyz", "[::1]:80"])
def test_publish_rejects_malformed(bad):
    with pytest.raises(CarryonError) as e:
        _publishes([bad])
    assert e.value.exit_code == 125 and "\n" not in str(e.value)


def test_conflicting_mappings_are_refused():
    with pytest.raises(CarryonError, match="mapped twice"):
        publish.parse_exec_ports(["80:8080", "80:8081"])
    with pytest.raises(CarryonError, match="host port 8080"):
        publish.parse_exec_ports(["80:8080", "81:8080"])
    with pytest.raises(CarryonError, match="mapped twice"):
        _publishes(["8080:80", "8081:80"])
    # one host port per protocol: tcp and udp may share it
    assert len(_publishes(["8080:80/tcp", "8080:80/udp"])) == 2


# --- port table --------------------------------------------------------------------------------------

def test_table_static_mapping():
    t = PortTable(publish.parse_exec_ports(["7777:17777/tcp"]), auto=False)
    assert t.active
    assert t.bind_target("tcp", 7777) == 17777 and t.connect_target("tcp", 7777) == 17777
    assert t.bind_target("udp", 7777) is None and t.connect_target("tcp", 7778) is None
    assert t.guest_port("tcp", 17777) == 7777 and t.guest_port("tcp", 7777) is None
    assert t.same_host(7777) is None                          # TCP only: the protocol matters
    assert PortTable(publish.parse_exec_ports(["7777:17777"]), auto=False).same_host(7777) == 17777
    assert t.bind_target("tcp", 0) is None
    assert not PortTable([], auto=False).active


def test_table_auto_mode_learns_once_per_proto_and_port():
    seen = []
    t = PortTable([], auto=True, on_change=lambda entries, new: seen.append(new))
    assert t.bind_target("tcp", 8000) == AUTO and t.connect_target("tcp", 8000) is None
    t.record("tcp", 8000, 41234, "0.0.0.0", True)
    assert t.bind_target("tcp", 8000) == 41234 and t.connect_target("tcp", 8000) == 41234
    assert t.bind_target("udp", 8000) == AUTO and t.bind_target("tcp", 0) is None
    t.record("tcp", 8000, 41234, "::", False)
    t.record("tcp", 8000, 41234, "0.0.0.0", True)           # again: nothing new
    t.record("tcp", 80, 41300, "::1", False)
    t.record("tcp", 81, 41301, "127.0.0.1", True)
    assert len(seen) == 4
    assert [(e.guest, e.address) for e in t.entries()] == [
        (8000, "0.0.0.0"), (81, "127.0.0.1"), (8000, "::"), (80, "::1")]


def test_table_static_auto_port():
    t = PortTable(_publishes(["0:8000", "9000:90"]), auto=False)
    assert t.bind_target("tcp", 8000) == AUTO and t.bind_target("tcp", 8001) is None
    assert t.bind_target("tcp", 90) == 9000


# --- ports file ------------------------------------------------------------------------------------

def test_ports_file_is_replaced_and_removed(tmp_path):
    path = str(tmp_path / "ports.json")
    t = PortTable([], auto=True, on_change=lambda e, _new: portsfile.write(path, e))
    portsfile.write(path, t.entries())
    assert json.loads(open(path).read()) == {"ports": []}
    t.record("tcp", 8000, 41234, "::", False)
    t.record("tcp", 8000, 41234, "0.0.0.0", True)
    assert json.loads(open(path).read()) == {"ports": [
        {"proto": "tcp", "guest": 8000, "host": 41234, "address": "0.0.0.0"},
        {"proto": "tcp", "guest": 8000, "host": 41234, "address": "::"}]}
    assert os.listdir(tmp_path) == ["ports.json"]            # no temporary left behind
    portsfile.remove(path)
    portsfile.remove(path)
    assert os.listdir(tmp_path) == []


def test_ports_file_checks(tmp_path):
    portsfile.check_writable(str(tmp_path / "p.json"))
    with pytest.raises(CarryonError, match="no such directory"):
        portsfile.check_writable(str(tmp_path / "missing" / "p.json"))
    with pytest.raises(CarryonError, match="directory"):
        portsfile.check_writable(str(tmp_path))


# --- tracer-side socket inspection ---------------------------------------------------------------

def test_sockinfo_on_own_sockets():
    pid = os.getpid()
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as t, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        assert sockinfo.socket_proto(pid, t.fileno()) == "tcp"
        assert sockinfo.socket_proto(pid, u.fileno()) == "udp"
        assert sockinfo.socket_proto_fast(pid, t.fileno()) == "tcp"
        assert sockinfo.socket_proto_fast(pid, u.fileno()) == "udp"
        u.bind(("127.0.0.1", 0))
        if sockinfo.can_read_bound_ports():
            assert sockinfo.bound_port(pid, u.fileno()) == u.getsockname()[1]
    r, w = os.pipe()
    try:
        assert sockinfo.socket_proto(pid, r) is None and sockinfo.socket_proto_fast(pid, r) is None
    finally:
        os.close(r)
        os.close(w)
    port = sockinfo.probe_free_port(socket.AF_INET, "tcp", "127.0.0.1")
    assert 0 < port < 65536


def test_sockinfo_from_a_thread_id():
    """Threads are not process leaders: pidfd_open(tid) fails (EINVAL, or ENOENT on 6.x)."""
    import threading
    if not sockinfo.can_read_bound_ports():
        pytest.skip("no pidfd_getfd on this kernel")
    got: dict[str, int] = {}
    ready, done = threading.Event(), threading.Event()

    def body():
        got["tid"] = threading.get_native_id()
        ready.set()
        done.wait(10)

    th = threading.Thread(target=body)
    th.start()
    ready.wait(10)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            assert sockinfo.bound_port(got["tid"], u.fileno()) == u.getsockname()[1]
            assert sockinfo.socket_proto_fast(got["tid"], u.fileno()) == "udp"
    finally:
        done.set()
        th.join()
        sockinfo.forget(got["tid"])


# --- the extension's handlers, with this very process as the "tracee" ------------------------------
# Pointers are ctypes buffers of this process, descriptors are real sockets of this process: the
# rewritten arguments are then handed to the real system call to see the kernel accept them.

import ctypes  # noqa: E402

from runtime.spec import RunSpec  # noqa: E402
from runtime.tracee import ffi  # noqa: E402
from runtime.tracee.actions import CHANGED, EXIT, SKIP  # noqa: E402

_libc = ctypes.CDLL(None, use_errno=True)


class SelfTracee:
    def __init__(self) -> None:
        self.pid = os.getpid()
        self.memfd = os.open("/proc/self/mem", os.O_RDWR)
        self.stack = ctypes.create_string_buffer(1 << 16)
        self.scratch = ctypes.addressof(self.stack) + len(self.stack)
        self.ext: dict = {}
        self.ret = 0

    def close(self) -> None:
        os.close(self.memfd)


@pytest.fixture
def selftracee():
    if not sockinfo.can_read_bound_ports():
        pytest.skip("no pidfd_getfd on this kernel")
    t = SelfTracee()
    yield t
    t.close()


def _portmap(ports: list[str], auto: bool = False):
    from runtime.extension.portmap import PortMap
    return PortMap(RunSpec(rootfs="/", argv=["x"], port_map=publish.parse_exec_ports(ports), netcoop=auto))


def _buf(data: bytes):
    b = ctypes.create_string_buffer(data, len(data))
    return b, ctypes.addressof(b)


def _call(regs, nr: int) -> int:
    r = _libc.syscall(ctypes.c_long(nr), *[ctypes.c_ulong(regs[ffi.ARG[i]]) for i in range(6)])
    return r if r >= 0 else -ctypes.get_errno()


def _regs(nr: int, *args: int):
    regs = ffi.Regs()
    regs[ffi.R_ORIG_RAX] = nr
    for i, a in enumerate(args):
        regs[ffi.ARG[i]] = a
    return regs


def test_extension_sendmmsg_and_recvmmsg(selftracee):
    from runtime.extension import portmap as pm
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as srv, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as cli:
        srv.bind(("127.0.0.1", 0))
        host = srv.getsockname()[1]
        ext = _portmap([f"5300:{host}/udp"])
        payload, p_addr = _buf(b"dgram")
        iov, iov_addr = _buf(p_addr.to_bytes(8, "little") + (5).to_bytes(8, "little"))
        name, name_addr = _buf(_raw(socket.AF_INET, "127.0.0.1", 5300))
        hdr = (name_addr.to_bytes(8, "little") + (16).to_bytes(4, "little") + bytes(4)
               + iov_addr.to_bytes(8, "little") + (1).to_bytes(8, "little") + bytes(24) + bytes(8))
        vec, vec_addr = _buf(hdr * 2)
        regs = _regs(pm.SENDMMSG, cli.fileno(), vec_addr, 2, 0)
        act = ext.enter(selftracee, regs)
        assert act == CHANGED | EXIT and regs[ffi.ARG[1]] != vec_addr
        assert name.raw == _raw(socket.AF_INET, "127.0.0.1", 5300)        # guest memory untouched
        regs[ffi.R_RAX] = _call(regs, pm.SENDMMSG)
        assert regs[ffi.R_RAX] == 2
        ext.exit(selftracee, regs)
        assert [int.from_bytes(vec.raw[64 * i + 56:64 * i + 60], "little") for i in (0, 1)] == [5, 5]
        srv.settimeout(5)
        assert srv.recvfrom(100) == (b"dgram", ("127.0.0.1", cli.getsockname()[1]))
        # the reply comes from the host port; recvmmsg shows the guest port
        srv.sendto(b"back", cli.getsockname())
        names, names_addr = _buf(bytes(32))
        rbuf, rbuf_addr = _buf(bytes(16))
        riov, riov_addr = _buf(rbuf_addr.to_bytes(8, "little") + (16).to_bytes(8, "little"))
        rhdr = (names_addr.to_bytes(8, "little") + (16).to_bytes(4, "little") + bytes(4)
                + riov_addr.to_bytes(8, "little") + (1).to_bytes(8, "little") + bytes(24) + bytes(8))
        rvec, rvec_addr = _buf(rhdr)
        regs = _regs(pm.RECVMMSG, cli.fileno(), rvec_addr, 1, 0, 0)
        assert ext.enter(selftracee, regs) == EXIT          # a socket sent to a translated port
        regs[ffi.R_RAX] = _call(regs, pm.RECVMMSG)
        assert regs[ffi.R_RAX] == 1
        ext.exit(selftracee, regs)
        assert sockaddr.port(names.raw[:16]) == 5300 and rbuf.raw[:4] == b"back"


def test_extension_getsockname_is_answered_at_entry(selftracee):
    from runtime.extension import portmap as pm
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
        s.bind(("::1", 0))
        host = s.getsockname()[1]
        ext = _portmap([f"8080:{host}/tcp"])
        out, out_addr = _buf(bytes(128))
        length, len_addr = _buf((128).to_bytes(4, "little"))
        regs = _regs(pm.GETSOCKNAME, s.fileno(), out_addr, len_addr)
        selftracee.ret = 99
        assert ext.enter(selftracee, regs) == SKIP and selftracee.ret == 0
        assert int.from_bytes(length.raw, "little") == 28
        assert sockaddr.port(out.raw) == 8080 and sockaddr.address_text(out.raw[:28]) == "::1"
        # a short buffer gets the truncated address and the full length, as from the kernel
        out2, out2_addr = _buf(bytes(8))
        length2, len2_addr = _buf((8).to_bytes(4, "little"))
        assert ext.enter(selftracee, _regs(pm.GETSOCKNAME, s.fileno(), out2_addr, len2_addr)) == SKIP
        assert int.from_bytes(length2.raw, "little") == 28 and sockaddr.port(out2.raw) == 8080
        # an unmapped socket, a bad descriptor: the real call runs untouched
        with socket.socket() as other:
            other.bind(("127.0.0.1", 0))
            assert ext.enter(selftracee, _regs(pm.GETSOCKNAME, other.fileno(), out_addr, len_addr)) == 0
        assert ext.enter(selftracee, _regs(pm.GETSOCKNAME, 999, out_addr, len_addr)) == 0


def test_extension_bind_publish_address_and_auto(selftracee):
    from runtime.extension import portmap as pm
    from runtime.extension.portmap import PortMap
    from runtime.launch.runspec import parse_publish
    ext = PortMap(RunSpec(rootfs="/", argv=["x"], port_map=[parse_publish("127.0.0.1:0:8000")]))
    with socket.socket() as s:
        name, name_addr = _buf(_raw(socket.AF_INET, "0.0.0.0", 8000))
        regs = _regs(pm.BIND, s.fileno(), name_addr, 16)
        selftracee.ret = 99
        # an automatic host port: the tracer binds the socket itself, the guest's call is skipped
        assert ext.enter(selftracee, regs) == SKIP and selftracee.ret == 0
        real = s.getsockname()
        assert real[0] == "127.0.0.1" and real[1] != 8000
        assert [(e.guest, e.host, e.address) for e in ext.table.entries()] == [(8000, real[1], "0.0.0.0")]
        # a second socket binding the same guest port gets the learnt host port (real call)
        with socket.socket() as s2:
            s2.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            regs2 = _regs(pm.BIND, s2.fileno(), name_addr, 16)
            assert ext.enter(selftracee, regs2) & CHANGED
    # a failing automatic bind gives the kernel's error to the guest
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        name, name_addr = _buf(_raw(socket.AF_INET, "127.0.0.1", 8001))
        auto = _portmap([], auto=True)
        assert auto.enter(selftracee, _regs(pm.BIND, s.fileno(), name_addr, 16)) == SKIP
        assert selftracee.ret == -errno.EINVAL          # already bound
    # port 0 and unmapped ports are left alone, even in automatic mode for port 0
    auto = _portmap([], auto=True)
    with socket.socket() as s:
        name, name_addr = _buf(_raw(socket.AF_INET, "127.0.0.1", 0))
        assert auto.enter(selftracee, _regs(pm.BIND, s.fileno(), name_addr, 16)) == 0
    with socket.socket(socket.AF_UNIX) as s:
        name, name_addr = _buf(b"\x01\x00/tmp/x\x00")
        assert auto.enter(selftracee, _regs(pm.BIND, s.fileno(), name_addr, 9)) == 0


def test_extension_without_pidfd_getfd(selftracee):
    """Kernels before 5.6: the free port is probed by the tracer, getsockname fixed at its exit."""
    from runtime.extension import portmap as pm
    ext = _portmap([], auto=True)
    ext.readback = False
    with socket.socket() as s:
        name, name_addr = _buf(_raw(socket.AF_INET, "127.0.0.1", 80))
        regs = _regs(pm.BIND, s.fileno(), name_addr, 16)
        assert ext.enter(selftracee, regs) == CHANGED | EXIT
        assert _call(regs, pm.BIND) == 0
        ext.exit(selftracee, _regs(pm.BIND))
        host = s.getsockname()[1]
        assert host >= 1024 and ext.table.connect_target("tcp", 80) == host
        out, out_addr = _buf(bytes(16))
        length, len_addr = _buf((16).to_bytes(4, "little"))
        regs = _regs(pm.GETSOCKNAME, s.fileno(), out_addr, len_addr)
        assert ext.enter(selftracee, regs) == EXIT
        regs[ffi.R_RAX] = _call(regs, pm.GETSOCKNAME)
        ext.exit(selftracee, regs)
        assert sockaddr.port(out.raw) == 80


def test_extension_connect_follows_the_socket_protocol(selftracee):
    """A guest port learnt for TCP only: a UDP datagram to it is not redirected."""
    from runtime.extension import portmap as pm
    ext = _portmap([], auto=True)
    ext.table.record("tcp", 8000, 41000, "0.0.0.0", True)
    name, name_addr = _buf(_raw(socket.AF_INET, "127.0.0.1", 8000))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, socket.socket() as t:
        assert ext.enter(selftracee, _regs(pm.SENDTO, u.fileno(), 0, 0, 0, name_addr, 16)) == 0
        assert not ext.redirected
        regs = _regs(pm.CONNECT, t.fileno(), name_addr, 16)
        assert ext.enter(selftracee, regs) == CHANGED and ext.redirected
        assert sockaddr.port(ctypes.string_at(regs[ffi.ARG[1]], 16)) == 41000
        far, far_addr = _buf(_raw(socket.AF_INET, "192.0.2.200", 8000))      # not this node
        if socket.inet_aton("192.0.2.200") not in ext.local:
            assert ext.enter(selftracee, _regs(pm.CONNECT, t.fileno(), far_addr, 16)) == 0


def test_seccomp_filter_skips_calls_without_an_address():
    """With the port extension, the engine's filter stops sendto/recvfrom/accept/accept4 only when
    they carry an address, and always stops the calls it must see."""
    from runtime.engine import filter_program
    from runtime.extension import portmap as pm
    from runtime.syscall import seccomp
    prog = filter_program([_portmap(["8000:18000"])])
    trace, allow = seccomp.RET_TRACE, seccomp.RET_ALLOW

    def action(nr: int, *args: int) -> int:
        return seccomp.evaluate(prog, nr, args=tuple(args) + (0,) * (6 - len(args)))

    for nr, arg in pm.IF_ARG.items():
        assert action(nr) == allow, nr
        with_addr = [0] * 6
        with_addr[arg] = 0x7FFF_0000_1000
        assert action(nr, *with_addr) == trace, nr
        with_addr[arg] = 0x1_0000_0000                      # only the high word set
        assert action(nr, *with_addr) == trace, nr
    for nr in pm.CALLS - set(pm.IF_ARG):
        assert action(nr) == trace, nr
    assert action(pm.NUMBERS["socket"]) == allow and action(pm.NUMBERS["listen"]) == allow


def test_pack_ip_matches_ipaddress():
    """pack_ip (inet_pton, ipaddress only for what it refuses) packs as ipaddress does."""
    import ipaddress
    for text in ("127.0.0.1", "0.0.0.0", "10.1.2.3", "::", "::1", "fe80::1", "::ffff:127.0.0.1",
                 "2001:db8::8:800:200c:417a", "fe80::1%2"):
        assert sockaddr.pack_ip(text) == ipaddress.ip_address(text).packed, text
    for bad in ("", "1.2.3", "256.1.1.1", "localhost", "1::2::3"):
        with pytest.raises(ValueError):
            sockaddr.pack_ip(bad)


def test_port_translation_imports_are_cheap():
    """The modules a run with -p/-n/--carryon-publish loads pull in no `socket` (enum, selectors),
    `ipaddress`, `json` (re), `threading`: milliseconds of every such start. (-S: a bare Python.)"""
    import subprocess
    import sys
    code = ("import sys; before = set(sys.modules); import runtime.extension.portmap, runtime.userns_notify; "
            "heavy = {'socket', 'enum', 'selectors', 'ipaddress', 'json', 're', 'threading', 'typing'}; "
            "print(sorted(heavy & (set(sys.modules) - before)))")
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-S", "-c", code], cwd=here, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": here}, check=True).stdout
    assert out.strip() == "[]"
