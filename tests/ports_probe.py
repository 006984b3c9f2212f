"""Guest-side probes for the port translation tests (run by the guest's python3, bound in at /probe.py).

Each mode checks what the guest sees (its own ports everywhere) and prints one `ok ...` line;
anything unexpected raises (non-zero exit, traceback on stderr).

  loop FAMILY PORT N [REAL]  the seed loop: bind+listen, connect, send, accept+recv, close, N times;
                         REAL: the host port the kernel must really show (/proc/net), `auto`: any other
  udp PORT               UDP client -> own UDP server on PORT and back (sendto/recvfrom, sendmsg/recvmsg)
  dual PORT              one port bound on IPv4 and on IPv6 (V6ONLY); clients of both families
  reuseport PORT         two SO_REUSEPORT listeners on one port (one host port), clients reach them
  first-binds PORT       four threads bind one guest port at the same moment: one host port
  bound-client PORT CPORT  a client bound to CPORT connects to PORT: accept shows CPORT
  parallel PORT          binds in flight at once in 4 threads and 2 processes, then cross-connects
  fetch URL OUT          GET URL (retrying until a server answers), body written to OUT
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time


def _addr(family: int, port: int) -> tuple:
    return ("127.0.0.1", port) if family == socket.AF_INET else ("::1", port)


def check(what: str, got, want) -> None:
    if got != want:
        raise SystemExit(f"{what}: got {got!r}, want {want!r}")


def real_port(sock: socket.socket) -> int:
    """The port the kernel really bound (from /proc/net/tcp*, by socket inode): no translation there."""
    ino = os.fstat(sock.fileno()).st_ino
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if int(fields[9]) == ino:
                    return int(fields[1].rsplit(":", 1)[1], 16)
    raise SystemExit("socket not found in /proc/net/tcp*")


def loop(family: int, port: int, n: int, real: str | None = None) -> None:
    for i in range(n):
        srv = socket.socket(family, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(_addr(family, port))
        srv.listen(1)
        if real is not None and i == 0:
            got = real_port(srv)
            if (real == "auto" and got == port) or (real != "auto" and got != int(real)):
                raise SystemExit(f"really bound port {got}, expected {real} (guest port {port})")
        cli = socket.socket(family, socket.SOCK_STREAM)
        cli.settimeout(5)
        cli.connect(_addr(family, port))
        cli.sendall(b"OK!")
        conn, peer = srv.accept()
        data = b""
        while len(data) < 3:
            chunk = conn.recv(3 - len(data))
            if not chunk:
                break
            data += chunk
        check("payload", data, b"OK!")
        if i == 0 or i == n - 1:                  # the guest's view, everywhere
            check("server getsockname", srv.getsockname()[1], port)
            check("accepted getsockname", conn.getsockname()[1], port)
            check("client getpeername", cli.getpeername()[1], port)
            check("accept peer", peer[1], cli.getsockname()[1])
        conn.close()
        cli.close()
        srv.close()
    print(f"ok loop {n}")


def udp(port: int) -> None:
    for family in (socket.AF_INET, socket.AF_INET6):
        srv = socket.socket(family, socket.SOCK_DGRAM)
        srv.bind(_addr(family, port))
        check("udp getsockname", srv.getsockname()[1], port)
        cli = socket.socket(family, socket.SOCK_DGRAM)
        cli.settimeout(5)
        srv.settimeout(5)
        cli.sendto(b"ping", _addr(family, port))
        data, peer = srv.recvfrom(100)
        check("udp payload", data, b"ping")
        check("udp peer", peer[1], cli.getsockname()[1])
        srv.sendto(b"pong", peer)
        data, src = cli.recvfrom(100)
        check("udp reply", data, b"pong")
        check("udp reply source", src[1], port)
        # the same with sendmsg/recvmsg
        cli.sendmsg([b"ping2"], [], 0, _addr(family, port))
        data, _, _, peer = srv.recvmsg(100)
        check("recvmsg payload", data, b"ping2")
        srv.sendmsg([b"pong2"], [], 0, peer)
        data, _, _, src = cli.recvmsg(100)
        check("recvmsg reply", (data, src[1]), (b"pong2", port))
        # a connected UDP socket: getpeername shows the guest port
        cli.connect(_addr(family, port))
        check("udp getpeername", cli.getpeername()[1], port)
        cli.send(b"ping3")
        check("connected udp", srv.recvfrom(100)[0], b"ping3")
        cli.close()
        srv.close()
    print("ok udp")


def dual(port: int) -> None:
    v4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    v4.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    v4.bind(("0.0.0.0", port))
    v4.listen(4)
    v6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    v6.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    v6.bind(("::", port))
    v6.listen(4)
    for family, host, srv in ((socket.AF_INET, "127.0.0.1", v4), (socket.AF_INET6, "::1", v6),
                              (socket.AF_INET6, "::ffff:127.0.0.1", v4)):
        c = socket.create_connection((host, port), timeout=5) if family == socket.AF_INET else \
            socket.socket(family, socket.SOCK_STREAM)
        if family == socket.AF_INET6:
            c.settimeout(5)
            c.connect((host, port))
        conn, _ = srv.accept()
        c.sendall(b"x")
        check(f"dual {host}", conn.recv(1), b"x")
        check(f"dual {host} getpeername", c.getpeername()[1], port)
        conn.close()
        c.close()
    print("ok dual", flush=True)
    v4.close()
    v6.close()


def reuseport(port: int) -> None:
    listeners = []
    for _ in range(2):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("127.0.0.1", port))
        s.listen(8)
        s.setblocking(False)
        check("reuseport getsockname", s.getsockname()[1], port)
        listeners.append(s)
    for _ in range(8):
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    accepted = 0
    for s in listeners:
        while True:
            try:
                s.accept()[0].close()
                accepted += 1
            except BlockingIOError:
                break
    check("connections accepted by the group", accepted, 8)
    print("ok reuseport")


def first_binds(port: int) -> None:
    """Four threads make the first bind of one guest port at the same moment (SO_REUSEPORT): all
    four must really hold one host port, and a client reaches the group."""
    barrier = threading.Barrier(4)
    socks: list[socket.socket] = []
    lock = threading.Lock()

    def bind_one() -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        barrier.wait()
        s.bind(("127.0.0.1", port))
        s.listen(8)
        with lock:
            socks.append(s)

    threads = [threading.Thread(target=bind_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    check("binds done", len(socks), 4)
    reals = {real_port(s) for s in socks}
    check("host ports held by the four first binds", len(reals), 1)
    check("guest view", {s.getsockname()[1] for s in socks}, {port})
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    print("ok first-binds")


def bound_client(port: int, cport: int) -> None:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", port))
    srv.listen(1)
    cli = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    cli.bind(("127.0.0.1", cport))
    cli.connect(("127.0.0.1", port))
    conn, peer = srv.accept()
    check("bound client getsockname", cli.getsockname()[1], cport)
    check("accept peer of a bound client", peer[1], cport)
    check("getpeername of a bound client", conn.getpeername()[1], cport)
    print("ok bound-client")


def _serve_once(srv: socket.socket) -> None:
    conn, _ = srv.accept()
    conn.sendall(conn.recv(16))
    conn.close()


def _roundtrip(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
        c.sendall(b"%d" % port)
        check(f"echo from {port}", c.recv(16), b"%d" % port)


def parallel(port: int) -> None:
    ports = [port + i for i in range(6)]
    barrier = threading.Barrier(4)
    servers: dict[int, socket.socket] = {}

    def bind_in_thread(p: int) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        barrier.wait()                               # all four binds in flight together
        s.bind(("127.0.0.1", p))
        s.listen(1)
        servers[p] = s

    threads = [threading.Thread(target=bind_in_thread, args=(p,)) for p in ports[:4]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    children = []
    for p in ports[4:]:                              # two processes binding at the same time
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", p))
            s.listen(1)
            check("child getsockname", s.getsockname()[1], p)
            os.write(w, b"!")
            _serve_once(s)
            os._exit(0)
        os.close(w)
        children.append((pid, r))
    for _pid, r in children:
        check("child ready", os.read(r, 1), b"!")
    workers = [threading.Thread(target=_serve_once, args=(servers[p],)) for p in ports[:4]]
    for t in workers:
        t.start()
    for p in ports:
        _roundtrip(p)
    for t in workers:
        t.join()
    for pid, _ in children:
        check("child exit", os.waitpid(pid, 0)[1], 0)
    # an inherited and a duplicated descriptor still show the guest port
    s = servers[ports[0]]
    check("dup getsockname", socket.socket(fileno=os.dup(s.fileno())).getsockname()[1], ports[0])
    pid = os.fork()
    if pid == 0:
        os._exit(0 if s.getsockname()[1] == ports[0] else 3)
    check("inherited getsockname", os.waitpid(pid, 0)[1], 0)
    print("ok parallel")


def fetch(url: str, out: str) -> None:
    import urllib.request
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                body = r.read()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    with open(out, "wb") as f:
        f.write(body)
    print("ok fetch")


def main(argv: list[str]) -> None:
    mode = argv[0]
    if mode == "loop":
        family = socket.AF_INET6 if argv[1] == "6" else socket.AF_INET
        loop(family, int(argv[2]), int(argv[3]), argv[4] if len(argv) > 4 else None)
    elif mode == "udp":
        udp(int(argv[1]))
    elif mode == "dual":
        dual(int(argv[1]))
    elif mode == "first-binds":
        first_binds(int(argv[1]))
    elif mode == "reuseport":
        reuseport(int(argv[1]))
    elif mode == "bound-client":
        bound_client(int(argv[1]), int(argv[2]))
    elif mode == "parallel":
        parallel(int(argv[1]))
    elif mode == "fetch":
        fetch(argv[1], argv[2])
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main(sys.argv[1:])
