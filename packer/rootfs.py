"""Write a squashed tree as the archive's rootfs: a deterministic PAX tar in one zstd frame.

Entries: `./` first (the root's mode/owner), then a depth-first walk with siblings sorted by their
UTF-8 bytes (parents before children); with `keep` (CARE mode, packer.trace) only the entries
named in it (`./path`; a name left out leaves out its subtree). Numeric uid/gid, empty uname/gname, the image's mtimes,
xattrs as `SCHILY.xattr.*`, the 2nd+ name of a hardlinked node as a LNK entry to the first name.
"""

from __future__ import annotations

import hashlib
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import zstandard

from packer.squash import Node, Squasher

BLOCK = 512
_BATCH = 1 << 20
RECORD = 20 * BLOCK
DEFAULT_LEVEL = 3
WINDOW_LOG = 27          # 128 MiB: the default decoder limit, so any zstd can read it without --long
_TYPES = {"d": tarfile.DIRTYPE, "f": tarfile.REGTYPE, "l": tarfile.SYMTYPE, "p": tarfile.FIFOTYPE,
          "c": tarfile.CHRTYPE, "b": tarfile.BLKTYPE}


@dataclass
class RootfsStats:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    other: int = 0
    total_entries: int = 0
    uncompressed_bytes: int = 0
    tar_bytes: int = 0
    compressed_bytes: int = 0
    sha256: str = ""


def _sort_key(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def walk(root: Node, keep: set[str] | None = None) -> Iterator[tuple[str, Node]]:
    """("./path", node) in archive order: the root first (as "."), then depth-first, sorted; with
    `keep`, only the paths in it (and never below a path that is not)."""
    yield ".", root
    assert root.children is not None    # the root is a directory
    names = sorted(root.children, key=_sort_key)
    yield from _emit_depth_first([("./" + n, root.children[n]) for n in names], keep)


def _emit_depth_first(items: list[tuple[str, Node]], keep: set[str] | None = None) -> Iterator[tuple[str, Node]]:
    todo = list(reversed(items))
    while todo:
        path, node = todo.pop()
        if keep is not None and path not in keep:
            continue
        yield path, node
        if node.kind == "d" and node.children:
            names = sorted(node.children, key=_sort_key)
            todo.extend((path + "/" + n, node.children[n]) for n in reversed(names))


def content_size(root: Node, keep: set[str] | None = None) -> int:
    """Sum of regular file sizes (each hardlinked node once)."""
    seen: set[int] = set()
    total = 0
    for _, node in walk(root, keep):
        if node.kind == "f" and id(node) not in seen:
            seen.add(id(node))
            total += node.size
    return total


def compressor(level: int) -> zstandard.ZstdCompressor:
    """Deterministic single-threaded zstd with a large window (long-distance matching from level 10)."""
    params = zstandard.ZstdCompressionParameters.from_level(
        level, window_log=WINDOW_LOG, enable_ldm=level >= 10, write_checksum=True, threads=0)
    return zstandard.ZstdCompressor(compression_params=params)


class _HashingWriter:
    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.h = hashlib.sha256()
        self.n = 0

    def write(self, b) -> int:
        self.f.write(b)
        self.h.update(b)
        self.n += len(b)
        return len(b)

    def flush(self) -> None:
        self.f.flush()


def _tarinfo(path: str, node: Node) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(path)
    ti.type = _TYPES[node.kind]
    ti.mode = node.mode
    ti.uid, ti.gid = node.uid, node.gid
    ti.uname = ti.gname = ""
    ti.mtime = node.mtime
    if node.kind == "l":
        ti.linkname = node.linkname
    elif node.kind in ("c", "b"):
        ti.devmajor, ti.devminor = node.devmajor, node.devminor
    elif node.kind == "f":
        ti.size = node.size
    for k, v in node.xattrs.items():
        ti.pax_headers["SCHILY.xattr." + k] = v  # type: ignore[index]  # a dict (typeshed: Mapping)
    return ti


def write_rootfs(sq: Squasher, out_path: str, level: int = DEFAULT_LEVEL,
                 progress: Callable[[int], None] | None = None, keep: set[str] | None = None) -> RootfsStats:
    """Write the tree of `sq` as a zstd-compressed tar to `out_path`; return counts and the sha256.
    `keep`: only these entries (see `walk`)."""
    sq.spool.flush()
    st = RootfsStats()
    first_name: dict[int, str] = {}
    with open(out_path, "wb") as raw:
        hw = _HashingWriter(raw)
        # zstandard calls write() and flush() only (its stubs ask for a whole IO[bytes])
        zw = compressor(level).stream_writer(hw, write_size=1 << 20, closefd=False)  # type: ignore[arg-type]
        pos = 0
        buf = bytearray()

        def put(b: bytes) -> None:
            nonlocal pos
            pos += len(b)
            if len(b) >= _BATCH:
                if buf:
                    zw.write(buf)
                    buf.clear()
                zw.write(b)
                return
            buf.extend(b)
            if len(buf) >= _BATCH:
                zw.write(buf)
                buf.clear()

        for path, node in walk(sq.root, keep):
            st.total_entries += 1
            key = id(node)
            if node.kind != "d" and key in first_name:
                ti = tarfile.TarInfo(path)
                ti.type = tarfile.LNKTYPE
                ti.linkname = first_name[key]
                ti.mode, ti.uid, ti.gid, ti.mtime = node.mode, node.uid, node.gid, node.mtime
                ti.uname = ti.gname = ""
                put(ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
                st.hardlinks += 1
                continue
            first_name[key] = path
            put(_tarinfo(path, node).tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
            if node.kind == "d":
                st.dirs += 1
            elif node.kind == "l":
                st.symlinks += 1
            elif node.kind == "f":
                st.files += 1
                st.uncompressed_bytes += node.size
                for chunk in sq.read_content(node):
                    put(chunk)
                    if progress is not None:
                        progress(len(chunk))
                pad = -node.size % BLOCK
                if pad:
                    put(b"\0" * pad)
            else:
                st.other += 1
        put(b"\0" * (2 * BLOCK))
        pad = -pos % RECORD
        if pad:
            put(b"\0" * pad)
        if buf:
            zw.write(buf)
        zw.close()
        st.tar_bytes = pos
        st.compressed_bytes = hw.n
        st.sha256 = hw.h.hexdigest()
    return st
