"""The archive's trailer: the last 512 bytes of every carryon archive, and the only reader of it.

    CARRYON-ARCHIVE 1
    launcher <length> <sha256hex>
    runtime  <length> <sha256hex>      (one line per section, in file order)
    manifest <length> <sha256hex>
    rootfs   <length> <sha256hex>
    <spaces>
    CARRYON-END

Sections lie end to end before it, so offsets are computed from the end of the file (a launcher of any
length can be put in front). The sh launcher (runtime/launcher.sh) reads the same lines with `read`.
Used by the packer (runtime.archive) and on every warm start of an archive (runtime.launch): imports
nothing but `os` and carryon's errors. Only the canonical bytes that `render` writes are accepted.
"""

from __future__ import annotations

import os

from runtime.errors import InputError

TRAILER_SIZE = 512
SECTIONS = ("launcher", "runtime", "manifest", "rootfs")
MAGIC = "CARRYON-ARCHIVE 1"
END = "CARRYON-END"
_HEX = frozenset("0123456789abcdef")


def render(sections: dict[str, tuple[int, str]]) -> bytes:
    """The 512-byte trailer for `{name: (length, sha256hex)}` (every name of SECTIONS)."""
    head = MAGIC + "\n" + "".join(f"{n} {sections[n][0]} {sections[n][1]}\n" for n in SECTIONS)
    tail = END + "\n"
    pad = TRAILER_SIZE - len(head) - len(tail) - 1
    if pad < 0:
        raise ValueError("carryon trailer does not fit in 512 bytes")
    return (head + " " * pad + "\n" + tail).encode("ascii")


def parse(data: bytes, what: str) -> dict[str, tuple[int, str]]:
    """`{name: (length, sha256hex)}` from untrusted trailer bytes; InputError naming `what` when they
    are not a trailer, or not the canonical bytes `render` writes (an edited trailer)."""
    bad = InputError(f"{what}: not a carryon archive (no valid carryon trailer at its end)")
    if len(data) != TRAILER_SIZE:
        raise bad
    lines = [ln.split() for ln in data.decode("ascii", "replace").split("\n") if ln.strip()]
    if len(lines) != len(SECTIONS) + 2 or lines[0] != MAGIC.split() or lines[-1] != [END]:
        raise bad
    out: dict[str, tuple[int, str]] = {}
    for parts, name in zip(lines[1:-1], SECTIONS):
        if len(parts) != 3 or parts[0] != name or not parts[1].isdigit() or len(parts[2]) != 64 \
                or not _HEX.issuperset(parts[2]):
            raise bad
        out[name] = (int(parts[1]), parts[2])
    if render(out) != data:
        raise InputError(f"{what}: corrupted carryon archive (the trailer was modified)")
    return out


def locate(size: int, rec: dict[str, tuple[int, str]], what: str) -> dict[str, tuple[int, int, str]]:
    """`{name: (offset, length, sha256hex)}` in file order, from the end of a file of `size` bytes;
    InputError when the recorded lengths do not add up to the file's size."""
    end = size - TRAILER_SIZE
    out: dict[str, tuple[int, int, str]] = {}
    for name in reversed(SECTIONS[1:]):
        length, digest = rec[name]
        end -= length
        if end < 0:
            raise InputError(f"{what}: corrupted carryon archive (section {name} runs past the start)")
        out[name] = (end, length, digest)
    if end != rec["launcher"][0]:
        raise InputError(f"{what}: corrupted carryon archive (launcher is {end} bytes, the trailer says "
                         f"{rec['launcher'][0]}: section sizes do not add up to the file's size)")
    out["launcher"] = (0, end, rec["launcher"][1])
    return {n: out[n] for n in SECTIONS}


def read(f, what: str) -> tuple[int, bytes, dict[str, tuple[int, int, str]]]:
    """(file size, trailer bytes, located sections) of the open binary file `f`."""
    size = os.fstat(f.fileno()).st_size
    if size < TRAILER_SIZE:
        raise InputError(f"{what}: not a carryon archive (too small)")
    f.seek(size - TRAILER_SIZE)
    data = f.read(TRAILER_SIZE)
    return size, data, locate(size, parse(data, what), what)
