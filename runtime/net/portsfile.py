"""The ports file: the live mapping of one run as JSON, for schedulers and clients outside.

`{"ports": [{"proto": "tcp", "guest": 8000, "host": 41234, "address": "0.0.0.0"}, ...]}`, replaced
atomically (write a sibling temporary file, then rename it over the old one) so a reader never sees
half a file, and removed when the run ends. An entry appears as soon as the guest's bind succeeded:
a TCP server may not be listening yet, so a client seeing a fresh entry retries on ECONNREFUSED.
"""

from __future__ import annotations

import os

from runtime.errors import CarryonError
from runtime.net.portmap import PortEntry


def render(entries: list[PortEntry]) -> str:
    import json  # (only where a ports file is asked for)
    ports = [{"proto": e.proto, "guest": e.guest, "host": e.host, "address": e.address} for e in entries]
    return json.dumps({"ports": ports}, indent=1) + "\n"


def write(path: str, entries: list[PortEntry]) -> None:
    """Atomically replace `path` with the current entries (runtime.cache.write_atomic)."""
    from runtime.cache import write_atomic
    write_atomic(path, render(entries), what="ports file")


def remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError:
        pass


def check_writable(path: str) -> None:
    """Fail before the run starts when the ports file cannot be created."""
    directory = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(directory):
        raise CarryonError(f"cannot write ports file {path}: no such directory {directory}")
    if os.path.isdir(path):
        raise CarryonError(f"cannot write ports file {path}: it is a directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise CarryonError(f"cannot write ports file {path}: directory {directory} is not writable")
