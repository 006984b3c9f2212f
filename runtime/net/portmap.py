"""The per-run port table: which host port stands for which guest port, and what to publish.

Keyed by (proto, guest port): one host port per key, so a guest that binds one port on IPv4 and on
IPv6 gets the same host port for both (where the kernel allows it). Static mappings (`-p`,
`--carryon-publish`) are known from the start; automatic ones (netcoop, or a static mapping whose
host port is 0) are learnt when the kernel has chosen the port for the guest's first bind, and kept
for the rest of the run, so the guest binding that port again gets the same host port and clients
that read the ports file keep reaching it.
"""

from __future__ import annotations

from runtime.spec import PortMapping

TYPE_CHECKING = False           # not `typing.TYPE_CHECKING`: importing typing slows start-up
if TYPE_CHECKING:
    from collections.abc import Callable


class PortEntry:
    """One line of the ports file: a guest bind as the guest made it, and the host port it got.
    Immutable value (equality and hash on all fields)."""

    __slots__ = ("proto", "guest", "host", "address", "ipv4")
    proto: str
    guest: int
    host: int
    address: str
    ipv4: bool

    def __init__(self, proto: str, guest: int, host: int, address: str, ipv4: bool) -> None:
        set_ = object.__setattr__
        set_(self, "proto", proto)
        set_(self, "guest", guest)
        set_(self, "host", host)
        set_(self, "address", address)
        set_(self, "ipv4", ipv4)        # AF_INET or v4-mapped: listed first

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"PortEntry is immutable (cannot set {name})")

    def _key(self) -> tuple:
        return (self.proto, self.guest, self.host, self.address, self.ipv4)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not PortEntry:
            return NotImplemented
        return self._key() == other._key()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return ("PortEntry(proto={!r}, guest={!r}, host={!r}, address={!r}, ipv4={!r})"
                .format(*self._key()))


AUTO = 0                # bind_target(): let the kernel choose, read the port back at the exit stop


class PortTable:
    def __init__(self, mappings: list[PortMapping], auto: bool,
                 on_change: Callable[[list[PortEntry], PortEntry], None] | None = None) -> None:
        self.auto = auto
        self.on_change = on_change
        self.fwd: dict[tuple[str, int], int] = {}
        self.rev: dict[tuple[str, int], int] = {}
        self.auto_keys: set[tuple[str, int]] = set()
        self.restrict: dict[tuple[str, int], str] = {}
        self._entries: dict[tuple[str, int, str, int], PortEntry] = {}
        # Fast rejection on the hot path, before the socket's protocol is asked for:
        self.guest_ports: set[int] = set()     # guest ports a connect/sendto may be redirected from
        self.host_ports: set[int] = set()      # host ports a returned address may be translated back from
        self.bind_ports: set[int] = set()      # guest ports a bind is translated for (besides `auto`)
        for m in mappings:
            key = (m.proto, m.guest)
            self.bind_ports.add(m.guest)
            if m.host:
                self.fwd[key] = m.host
                self.rev[(m.proto, m.host)] = m.guest
                self.guest_ports.add(m.guest)
                self.host_ports.add(m.host)
            else:
                self.auto_keys.add(key)
            if m.address:
                self.restrict[key] = m.address

    @property
    def active(self) -> bool:
        """False when there is nothing to translate (no mapping, no automatic mode)."""
        return self.auto or bool(self.fwd) or bool(self.auto_keys)

    def bind_target(self, proto: str, guest: int) -> int | None:
        """Host port a guest bind to `guest` must use; AUTO: the kernel's choice; None: leave it."""
        if guest == 0:
            return None
        host = self.fwd.get((proto, guest))
        if host is not None:
            return host
        if self.auto or (proto, guest) in self.auto_keys:
            return AUTO
        return None

    def connect_target(self, proto: str, guest: int) -> int | None:
        """Host port standing for `guest` for a connect/sendto to a local address, or None."""
        return self.fwd.get((proto, guest))

    def same_host(self, guest: int) -> int | None:
        """The host port of `guest` when TCP and UDP both map it to the same one (exec's `-p G:H`):
        then a connect/sendto needs no look at the socket's protocol."""
        tcp = self.fwd.get(("tcp", guest))
        return tcp if tcp is not None and self.fwd.get(("udp", guest)) == tcp else None

    def same_guest(self, host: int) -> int | None:
        """The guest port of host port `host` when TCP and UDP both translate it to the same one
        (exec's `-p G:H`): then a returned address needs no look at the socket's protocol."""
        tcp = self.rev.get(("tcp", host))
        return tcp if tcp is not None and self.rev.get(("udp", host)) == tcp else None

    def guest_port(self, proto: str, host: int) -> int | None:
        """Guest port a local address with host port `host` stands for (reverse translation)."""
        return self.rev.get((proto, host))

    def record(self, proto: str, guest: int, host: int, address: str, ipv4: bool) -> None:
        """A guest bind of (proto, guest) on `address` really holds `host` now."""
        self.fwd.setdefault((proto, guest), host)
        self.rev.setdefault((proto, host), guest)
        self.guest_ports.add(guest)
        self.host_ports.add(host)
        ekey = (proto, guest, address, host)
        if ekey in self._entries:
            return
        entry = self._entries[ekey] = PortEntry(proto, guest, host, address, ipv4)
        if self.on_change is not None:
            self.on_change(self.entries(), entry)

    def published(self, proto: str, guest: int, address: str, host: int) -> bool:
        """True when this bind is already in the ports file (no need to watch it succeed)."""
        return (proto, guest, address, host) in self._entries

    def entries(self) -> list[PortEntry]:
        """Published entries, IPv4 ones first, otherwise in the order the binds happened."""
        items = list(self._entries.values())
        return [e for e in items if e.ipv4] + [e for e in items if not e.ipv4]
