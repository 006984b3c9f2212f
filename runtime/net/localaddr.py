"""Which addresses are "this node": a guest `connect`/`sendto` to a mapped port is redirected only
when it targets loopback, the wildcard (connecting to 0.0.0.0 / :: means the local host) or one of
the node's own interface addresses. Read once per run from /proc (per network namespace, readable by
any user); a missing /proc file just leaves loopback and the wildcard."""

from __future__ import annotations

import _socket as socket  # (the C module: `socket` imports enum and selectors)

from runtime.net import sockaddr


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _ipv4_local(fib_trie: str) -> set[bytes]:
    """Addresses the kernel routes as LOCAL: a `|-- A.B.C.D` line followed by `/32 host LOCAL`."""
    out: set[bytes] = set()
    last = ""
    for line in fib_trie.splitlines():
        s = line.strip()
        if s.startswith("|-- "):
            last = s[4:]
        elif s.startswith("/32 host LOCAL") and last:
            try:
                out.add(socket.inet_aton(last))
            except OSError:
                pass
    return out


def _ipv6_local(if_inet6: str) -> set[bytes]:
    out: set[bytes] = set()
    for line in if_inet6.splitlines():
        hexaddr = line.split(" ", 1)[0]
        if len(hexaddr) == 32:
            try:
                out.add(bytes.fromhex(hexaddr))
            except ValueError:
                pass
    return out


class LocalAddresses:
    """Membership test on packed addresses (4 or 16 bytes, v4-mapped judged as IPv4)."""

    def __init__(self, v4: set[bytes] | None = None, v6: set[bytes] | None = None) -> None:
        if v4 is None:
            v4 = _ipv4_local(_read("/proc/net/fib_trie"))
        if v6 is None:
            v6 = _ipv6_local(_read("/proc/net/if_inet6"))
        self.v4 = v4
        self.v6 = v6

    def __contains__(self, packed: bytes) -> bool:
        if sockaddr.is_loopback(packed) or sockaddr.is_wildcard(packed):
            return True
        v4 = sockaddr.ipv4_part(packed)
        return v4 in self.v4 if v4 is not None else packed in self.v6
