"""The ports file: the live mapping of one run as JSON, for schedulers and clients outside.

`{"ports": [{"proto": "tcp", "guest": 8000, "host": 41234, "address": "0.0.0.0"}, ...]}`, replaced
atomically (write a sibling temporary file, then rename it over the old one) so a reader never sees
half a file, and removed when the run ends. An entry appears as soon as the guest's bind succeeded:
a TCP server may not be listening yet, so a client seeing a fresh entry retries on ECONNREFUSED.
"""

from __future__ import annotations

import json
import os

from runtime.errors import CarryonError
from runtime.net.portmap import PortEntry


def render(entries: list[PortEntry]) -> str:
    ports = [{"proto": e.proto, "guest": e.guest, "host": e.host, "address": e.address} for e in entries]
    return json.dumps({"ports": ports}, indent=1) + "\n"


def write(path: str, entries: list[PortEntry]) -> None:
    """Atomically replace `path` with the current entries."""
    directory = os.path.dirname(os.path.abspath(path))
    # a fresh name, created exclusively: the directory may be a shared one (/tmp), where a
    # predictable name could be a planted symlink to one of the user's files
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.{os.urandom(6).hex()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        with open(fd, "w", encoding="utf-8") as f:
            f.write(render(entries))
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise CarryonError(f"cannot write ports file {path}: {e.strerror or e}") from None


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
