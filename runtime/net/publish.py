"""Parse and check port mappings given on the command line, before anything starts.

- `carryon exec -p GUEST[:HOST][/PROTO]` — PRoot's order (guest port first). Without `/PROTO` the
  mapping holds for TCP and UDP alike, as PRoot's port table does. No HOST (or 0): a free port
  chosen by the kernel for that guest port (`PortMapping.host == 0`).
- archives: `--carryon-publish [IP:]HOST:GUEST[/PROTO]` (Docker's order) is parsed by
  `runtime.launch.parse_publish`; `check` below applies to both.
Malformed input raises `CarryonError` (one line, exit 125).
"""

from __future__ import annotations

from runtime.errors import CarryonError
from runtime.spec import PortMapping

PROTOS = ("tcp", "udp")


def _port(text: str, what: str, spec: str, allow_zero: bool) -> int:
    if not text.isdigit() or not text.isascii():
        raise CarryonError(f"invalid port mapping {spec!r}: {what} port {text!r} is not a number")
    value = int(text)
    if value > 65535 or (value == 0 and not allow_zero):
        raise CarryonError(f"invalid port mapping {spec!r}: {what} port {value} is out of range 1-65535")
    return value


def _split_proto(spec: str, default: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
    body, sep, proto = spec.rpartition("/")
    if not sep:
        return spec, default
    proto = proto.lower()
    if proto not in PROTOS:
        raise CarryonError(f"invalid port mapping {spec!r}: protocol must be tcp or udp")
    return body, (proto,)


def parse_exec_port(spec: str) -> list[PortMapping]:
    """`-p GUEST[:HOST][/tcp|/udp]` (PRoot's order)."""
    body, protos = _split_proto(spec.strip(), PROTOS)
    parts = body.split(":")
    if len(parts) > 2 or not parts[0]:
        raise CarryonError(f"invalid port mapping {spec!r}: expected GUEST:HOST (e.g. 8000:18000)")
    guest = _port(parts[0], "guest", spec, allow_zero=False)
    host = _port(parts[1], "host", spec, allow_zero=True) if len(parts) == 2 else 0
    return [PortMapping(guest=guest, host=host, proto=p) for p in protos]


def check(mappings: list[PortMapping]) -> list[PortMapping]:
    """Refuse a guest port published twice, or two guest ports sharing one host port (per protocol)."""
    guests: dict[tuple[str, int], PortMapping] = {}
    hosts: dict[tuple[str, int], PortMapping] = {}
    for m in mappings:
        if m.proto not in PROTOS or not 0 < m.guest <= 65535 or not 0 <= m.host <= 65535:
            raise CarryonError(f"invalid port mapping {m.guest}:{m.host}/{m.proto}")
        if (m.proto, m.guest) in guests:
            raise CarryonError(f"port {m.guest}/{m.proto} is mapped twice")
        guests[(m.proto, m.guest)] = m
        if m.host:
            other = hosts.get((m.proto, m.host))
            if other is not None:
                raise CarryonError(f"host port {m.host}/{m.proto} is given to guest ports "
                                   f"{other.guest} and {m.guest}")
            hosts[(m.proto, m.host)] = m
    return mappings


def parse_exec_ports(specs: list[str]) -> list[PortMapping]:
    """All `-p` values of one `carryon exec`, checked together."""
    return check([m for s in specs for m in parse_exec_port(s)])
