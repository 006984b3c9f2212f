"""Raw `struct sockaddr_in` / `sockaddr_in6` bytes as the tracee passes them (x86_64 layout).

The stop handler works on the bytes it read from the tracee: no objects, no parsing beyond what a
decision needs. Both families keep the port big-endian at offset 2; the address is at offset 4
(4 bytes) for AF_INET and at offset 8 (16 bytes) for AF_INET6. A v4-mapped IPv6 address
(`::ffff:a.b.c.d`) is judged by its IPv4 part.

The C modules only (`_socket`; `ipaddress` when inet_pton refuses a text): `socket` imports `enum`,
`selectors` and more, milliseconds of every start of a run with port translation.
"""

from __future__ import annotations

import _socket as socket

AF_INET = socket.AF_INET        # 2
AF_INET6 = socket.AF_INET6      # 10
SIN_LEN = 16                    # sizeof(struct sockaddr_in)
SIN6_LEN = 28                   # sizeof(struct sockaddr_in6)
MAX_LEN = 128                   # sizeof(struct sockaddr_storage)

_V4MAPPED_PREFIX = b"\x00" * 10 + b"\xff\xff"
_V6_ANY = b"\x00" * 16
_V6_LOOPBACK = b"\x00" * 15 + b"\x01"


def family(raw: bytes) -> int:
    """Address family of a raw sockaddr (0 when too short to tell)."""
    return raw[0] | (raw[1] << 8) if len(raw) >= 2 else 0


def inet_len(fam: int) -> int:
    """Bytes needed to hold a sockaddr of an inet family, 0 for anything else."""
    return SIN_LEN if fam == AF_INET else SIN6_LEN if fam == AF_INET6 else 0


def is_inet(raw: bytes) -> bool:
    """True for a complete AF_INET (16 B) or AF_INET6 (24 B at least: scope id optional) address."""
    fam = family(raw)
    return (fam == AF_INET and len(raw) >= SIN_LEN) or (fam == AF_INET6 and len(raw) >= 24)


def port(raw: bytes) -> int:
    return (raw[2] << 8) | raw[3]


def with_port(raw: bytes, new_port: int) -> bytes:
    return raw[:2] + new_port.to_bytes(2, "big") + raw[4:]


def ip(raw: bytes) -> bytes:
    """The packed address: 4 bytes (AF_INET) or 16 bytes (AF_INET6)."""
    return raw[4:8] if family(raw) == AF_INET else raw[8:24]


def with_ip(raw: bytes, packed: bytes) -> bytes:
    if family(raw) == AF_INET:
        return raw[:4] + packed + raw[8:]
    return raw[:8] + packed + raw[24:]


def ipv4_part(packed: bytes) -> bytes | None:
    """The IPv4 address of a 4-byte address or of a v4-mapped IPv6 one; None for a real IPv6 one."""
    if len(packed) == 4:
        return packed
    if packed[:12] == _V4MAPPED_PREFIX:
        return packed[12:]
    return None


def is_wildcard(packed: bytes) -> bool:
    """0.0.0.0, :: or ::ffff:0.0.0.0."""
    v4 = ipv4_part(packed)
    return v4 == b"\x00\x00\x00\x00" if v4 is not None else packed == _V6_ANY


def is_loopback(packed: bytes) -> bool:
    """127.0.0.0/8 (also v4-mapped) or ::1."""
    v4 = ipv4_part(packed)
    return v4[0] == 127 if v4 is not None else packed == _V6_LOOPBACK


def is_ipv4(raw: bytes) -> bool:
    """AF_INET, or AF_INET6 carrying a v4-mapped address (behaves as IPv4 on the wire)."""
    return family(raw) == AF_INET or ipv4_part(raw[8:24]) is not None


_TEXTS: dict[bytes, str] = {}      # address bytes (family, IP, scope) -> text; servers rebind the same


def address_text(raw: bytes) -> str:
    """Printable address as the guest gave it: `0.0.0.0`, `::`, `::ffff:127.0.0.1`, `fe80::1%2`."""
    fam = family(raw)
    key = raw[0:2] + raw[4:8] if fam == AF_INET else raw[0:2] + raw[8:28]
    text = _TEXTS.get(key)
    if text is not None:
        return text
    if fam == AF_INET:
        text = socket.inet_ntop(AF_INET, raw[4:8])
    else:
        text = socket.inet_ntop(AF_INET6, raw[8:24])
        scope = int.from_bytes(raw[24:28], "little") if len(raw) >= 28 else 0
        if scope:
            text = f"{text}%{scope}"
    if len(_TEXTS) >= 256:
        _TEXTS.clear()
    _TEXTS[key] = text
    return text


def pack_ip(text: str) -> bytes:
    """Packed form of an IPv4 or IPv6 address given as text (ValueError if it is neither)."""
    for fam in (AF_INET, AF_INET6):
        try:
            return socket.inet_pton(fam, text)
        except OSError:
            pass
    import ipaddress  # the rare forms (a scope, `%eth0`) and its error
    return ipaddress.ip_address(text).packed


def make(fam: int, packed: bytes, port_no: int) -> bytes:
    """Build a sockaddr (used by tests and by the tracer-side probes)."""
    p = port_no.to_bytes(2, "big")
    if fam == AF_INET:
        return AF_INET.to_bytes(2, "little") + p + packed + b"\x00" * 8
    return AF_INET6.to_bytes(2, "little") + p + b"\x00" * 4 + packed + b"\x00" * 4
