"""CARE mode's recorder: every guest path a traced run looks up, and the hint a trimmed archive gives.

`Recorder` is put in `RunSpec.trace` (by `carryon pack --trace`, or by a trimmed archive's run under
`--carryon-verbose`). The engine then (and only then) installs it at set-up time, so an untraced run
pays nothing, not even a branch per stop:
- `attach(mapper)` wraps the run's `Mapper.to_host/resolve/canon` (instance attributes), so every path
  the tracer itself resolves is noted: the command found on PATH, `#!` interpreters, the ELF loader of
  an exec, readlink, chroot, socket names, openat2, copy-on-write;
- `wrap(dispatch)` puts a note-taker in front of the handler of every call with path arguments: it
  reads each path argument (a relative one joined to the guest directory of its dirfd or cwd) before
  the handler, whose shortcuts leave plain relative names to the kernel and never ask the mapper.
The native stop loop (runtime/tracee/fastpath.c) answers settled path stops from its own cache
without Python, so a traced run runs with the Python loop (the engine passes no native set-up).

A note is `paths[guest path as asked, made absolute] |= flags`: `OPENED` when the call was an open
that was not `O_PATH` (a directory opened that way is one the guest may list: getdents is not
traced), `SEEN` otherwise. The paths are as the guest spelt them (symlinks not followed, `..` kept):
`carryon pack` resolves them in the image's own tree, where each symlink on the way is kept too.

`hint()` is the trimmed archive's side: under `--carryon-verbose` the run is recorded the same way,
and each looked-up path that the full image had but the trimmed tree lacks is named (the manifest's
`trace.removed`: the sorted removed paths, zstd-compressed, base64; decoded only here), as is each
listed directory that lost names to the trimming.
"""

from __future__ import annotations

import os
import sys

SEEN = 1
OPENED = 2
O_PATH = 0o10000000
_OPEN_FLAGS_ARG = {"open": 1, "openat": 2}


class Recorder:
    """The guest paths of one or more traced runs (see the module docstring)."""

    def __init__(self) -> None:
        self.paths: dict[str, int] = {}
        self.top = None                 # the run's top-level Mapper (emulated chroots are not noted)

    def note(self, path: str, base: str, flags: int) -> None:
        if not path:
            return
        if path[0] != "/":
            path = (base.rstrip("/") + "/" + path) if base else "/" + path
        self.paths[path] = self.paths.get(path, 0) | flags

    # ---- set-up (runtime.engine) --------------------------------------------------------------
    def attach(self, mapper) -> None:
        """Wrap the path resolution of `mapper` (the run's top-level one) to note what it resolves."""
        self.top = mapper
        note = self.note
        to_host, resolve, canon = mapper.to_host, mapper.resolve, mapper.canon

        def to_host_noted(guest_path, cwd, follow_last, **kw):
            note(guest_path, cwd, SEEN)
            return to_host(guest_path, cwd, follow_last, **kw)

        def resolve_noted(guest_path, cwd, follow_last, **kw):
            note(guest_path, cwd, SEEN)
            return resolve(guest_path, cwd, follow_last, **kw)

        def canon_noted(guest_path, cwd, follow_last, **kw):
            note(guest_path, cwd, SEEN)
            return canon(guest_path, cwd, follow_last, **kw)

        mapper.to_host, mapper.resolve, mapper.canon = to_host_noted, resolve_noted, canon_noted

    def wrap(self, dispatch: list) -> None:
        """Put a note-taker in front of every handler of a call with path arguments (in place)."""
        from runtime.syscall import table as T
        from runtime.tracee.ffi import ARG
        for call in T.CALLS:
            if call.refuse or not call.paths or call.nr >= len(dispatch):
                continue
            specs = tuple((ARG[p.arg], None if p.dirfd is None else ARG[p.dirfd]) for p in call.paths)
            flags_arg = _OPEN_FLAGS_ARG.get(call.name)
            freg = None if flags_arg is None else ARG[flags_arg]
            opens = call.name == "openat2"
            dispatch[call.nr] = self._noting(dispatch[call.nr], specs, freg, opens)

    def _noting(self, core, specs: tuple, freg: int | None, opens: bool):
        from runtime.tracee import mem
        rec = self

        def handler(t, regs) -> int:
            try:
                flags = OPENED if opens or (freg is not None and not regs[freg] & O_PATH) else SEEN
                for reg, dreg in specs:
                    rec._note_arg(t, regs, reg, dreg, flags, mem.read_cstring)
            except Exception:   # noqa: BLE001 -- a note never changes what the guest gets
                pass
            return core(t, regs) if core is not None else 0
        return handler

    def _note_arg(self, t, regs, reg: int, dreg: int | None, flags: int, read) -> None:
        addr = regs[reg]
        if not addr or t.mapper is not self.top or self.top is None:
            return
        raw = read(t, addr)
        if not raw:
            return
        path = os.fsdecode(raw)
        if path[0] == "/":
            self.note(path, "/", flags)
            return
        dirfd = -100 if dreg is None else _int32(regs[dreg])
        try:
            host = os.readlink(f"/proc/{t.pid}/cwd" if dirfd == -100 else f"/proc/{t.pid}/fd/{dirfd}")
        except OSError:
            return
        base = self.top.to_guest(host)
        if base is not None:
            self.note(path, base, flags)


def _int32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - 0x100000000 if v & 0x80000000 else v


# ---------------------------------------------------------------- the removed-paths list

def encode_removed(paths: list[str]) -> dict:
    """The manifest's `trace.removed`: sorted absolute image paths, `\\n`-joined, zstd, base64."""
    import base64

    import zstandard  # carryon: not frozen (the packer's side)
    data = "\n".join(sorted(paths)).encode("utf-8", "surrogateescape")
    packed = zstandard.ZstdCompressor(level=12, threads=0).compress(data)
    return {"count": len(paths), "encoding": "zstd+base64", "data": base64.b64encode(packed).decode("ascii")}


def decode_removed(removed: dict) -> list[str]:
    import base64

    from runtime import zstd
    if not removed or not removed.get("count"):
        return []
    data = zstd.decompress(base64.b64decode(removed["data"]))
    return data.decode("utf-8", "surrogateescape").split("\n")


# ---------------------------------------------------------------- the trimmed archive's hint

def canonical(rootfs: str, path: str) -> str:
    """Guest `path` resolved in the tree at host `rootfs` (symlinks followed inside it, `..` clamped);
    from the first missing component on, the rest is lexical."""
    from runtime.path.confine import SymlinkLoop, join, split_path

    def lookup(host: str, name: str) -> tuple[str | None, str | None]:
        p = host + "/" + name
        try:
            return None, os.readlink(p)
        except OSError:
            return p, None

    try:
        walked = join(rootfs.rstrip("/"), split_path(path), lookup, follow_last=True)
    except SymlinkLoop:
        return path
    return "/" + "/".join(walked[1]) if walked is not None else path


def missing(rec: Recorder, rootfs: str,
            removed: list[str]) -> tuple[list[tuple[str, str]], list[tuple[str, int, list[str]]]]:
    """([(the first missing component, a looked-up path that met it)] for the looked-up paths the full
    image had and the trimmed tree lacks; [(listed directory, how many names it lost, the first few)])."""
    import bisect
    gone = set(removed)
    lost: dict[str, str] = {}
    listed: dict[str, list[str]] = {}
    root = rootfs.rstrip("/")
    for path in sorted(rec.paths):
        c = canonical(rootfs, path)
        parts = c.split("/")
        for i in range(2, len(parts) + 1):
            prefix = "/".join(parts[:i])
            if prefix in gone and not os.path.lexists(root + prefix):
                lost.setdefault(prefix, os.path.normpath(path))
                break
        if rec.paths[path] & OPENED and os.path.isdir(root + c):
            d = c.rstrip("/") + "/"
            i = bisect.bisect_left(removed, d)
            names = []
            while i < len(removed) and removed[i].startswith(d):
                if "/" not in removed[i][len(d):]:
                    names.append(removed[i][len(d):])
                i += 1
            if names:
                listed[c] = names
    return sorted(lost.items()), [(d, len(n), n[:5]) for d, n in sorted(listed.items())]


def hint(rec: Recorder, rootfs: str, trace_record: dict, out=None) -> None:
    """Name, on stderr, what the run looked up that the trimming removed (see `missing`)."""
    out = out or sys.stderr
    try:
        removed = decode_removed(trace_record.get("removed") or {})
    except Exception as e:  # noqa: BLE001 -- a hint, never a failure of the run
        out.write(f"carryon: trimmed image: cannot read the list of removed paths ({e})\n")
        return
    lost, listed = missing(rec, rootfs, removed)
    for p, asked in lost:
        via = "" if asked == p else f"{asked}: "
        out.write(f"carryon: trimmed image: {via}{p} was in the image but not traced "
                  f"(repack with --keep {asked})\n")
    for d, n, first in listed:
        more = ", ..." if n > len(first) else ""
        out.write(f"carryon: trimmed image: listed {d}, which lacks {n} name(s) of the image: "
                  f"{', '.join(first)}{more} (repack with --keep {d})\n")
    if lost or listed:
        out.flush()
