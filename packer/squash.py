"""Squash image layers into one tree: one streaming pass per layer, linear in the image size.

The tree lives in memory (`Node`s: metadata + where a regular file's content is), file contents are
spooled to one temp file as they stream by. Rules (OCI image spec "changesets", as umoci/docker apply
them):
- every entry path and hardlink target (untrusted: they come from the image) is joined inside the
  root by `runtime.path.confine.join`, umoci's SecureJoin semantics (leading `/` dropped, `..`
  clamped, a symlink met on the way followed with its target re-rooted); the last component is never
  followed; missing parent directories are created with mode 0755;
- `.wh.NAME` removes NAME from lower layers; `.wh..wh..opq` hides everything lower in its directory
  (processed at the end of the layer, so it may come before or after the directory's entry); entries of
  the same layer are never hidden by that layer's whiteouts; a whiteout whose parent is not a directory
  is ignored;
- an entry replaces whatever was at its path (a directory replaced by a file or symlink loses its whole
  subtree); a directory entry over a directory only updates its metadata;
- hardlinks name the same node (a link set survives a partial whiteout); a hardlink whose target is
  outside the root, missing or a directory is refused;
- a sparse member (GNU sparse 0.0/0.1/1.0, old GNU `S`) keeps only its data in the spool and its map
  in the node (checked as Go's archive/tar checks it: in order, not overlapping, inside the size);
  `read_content` gives the holes as zeros, so a huge sparse file costs neither disk nor memory here.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from packer.layers import TarStream, iter_members, sparse_map
from runtime.errors import InputError
from runtime.extract import type_letter
from runtime.path.confine import SymlinkLoop, escapes_root, join, split_path

_CHUNK = 1 << 20
_ZEROS = bytes(_CHUNK)
WH = ".wh."
OPAQUE = ".wh..wh..opq"


@dataclass(eq=False)
class Node:
    kind: str                     # d f l p c b
    mode: int = 0o755
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    xattrs: dict[str, str] = field(default_factory=dict)   # PAX SCHILY.xattr.* values (surrogateescape str)
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    size: int = 0
    offset: int = 0               # of the content in the spool
    sparse: list[tuple[int, int]] | None = None  # (offset in the file, length) of the data, in order
    children: dict[str, Node] | None = None
    stamps: dict[str, int] | None = None   # child name -> layer index that last set/traversed it


def _new_dir(mode: int = 0o755, uid: int = 0, gid: int = 0, mtime: int = 0) -> Node:
    return Node("d", mode, uid, gid, mtime, children={}, stamps={})


def _lookup(cur: Node, name: str) -> tuple[Node | None, str | None]:
    """confine.join's lookup for reading the tree: a missing or non-directory component ends the walk."""
    child = cur.children.get(name)  # type: ignore[union-attr]
    if child is None:
        return None, None
    if child.kind == "l":
        return None, child.linkname
    return (child, None) if child.kind == "d" else (None, None)


class Squasher:
    """Apply layers in order (`apply_layer`), then walk the result (`root`, `read_content`)."""

    def __init__(self, spool: BinaryIO) -> None:
        self.root = _new_dir()
        self.spool = spool
        self._spool_end = 0
        self.layer = -1
        self._opaque: list[Node] = []
        self.what = ""
        # (components of the parent, its node) of the last entry applied; see `_resolve`
        self._last_parent: tuple[list[str], Node] | None = None
        self._linked = False

    # -------------------------------------------------------- path resolution in the tree
    def _resolve(self, comps: list[str], create: bool) -> tuple[Node, str] | tuple[None, None]:
        """(parent dir node, final name) of the untrusted path `comps` (split_path of a tar name or a
        hardlink target), joined inside the tree by `runtime.path.confine.join`; the last component
        is never followed; ("", ...) name means the root itself.

        With create, missing (or non-directory) intermediate components become 0755 directories and
        every directory walked through is stamped with this layer; without, (None, None) is returned
        when the parent is not a directory.

        With create, an entry in the same directory as the entry before it (the usual tar order)
        reuses that entry's parent node when its walk met no symlink and no `..`: the join could only
        give the same node (an entry changes nothing but its own name in its parent) and the stamps it
        would set are this layer's already; a new layer and whiteouts drop the remembered parent.
        """
        if create:
            last = self._last_parent
            if last is not None and len(comps) > 1 and comps[-1] != ".." and comps[:-1] == last[0]:
                return last[1], comps[-1]
            self._linked = False
            lookup = self._lookup_create
        else:
            lookup = _lookup
        try:
            walked = join(self.root, comps, lookup)
        except SymlinkLoop:
            raise InputError(f"{self.what}: too many levels of symlinks resolving {'/'.join(comps)}") from None
        if walked is None:
            return None, None
        nodes, names = walked
        if create:
            self._last_parent = None if self._linked or not names or ".." in comps else \
                (comps[:-1], nodes[len(names) - 1])
        if not names:
            return self.root, ""
        return nodes[len(names) - 1], names[-1]

    def _lookup_create(self, cur: Node, name: str) -> tuple[Node | None, str | None]:
        """confine.join's lookup that makes the directories a path needs (stamped with this layer)."""
        child = cur.children.get(name)  # type: ignore[union-attr]
        if child is not None:
            if child.kind == "l":
                self._linked = True
                return None, child.linkname
            if child.kind == "d":
                cur.stamps[name] = self.layer  # type: ignore[index]
                return child, None
        child = _new_dir()
        cur.children[name] = child  # type: ignore[index]
        cur.stamps[name] = self.layer  # type: ignore[index]
        return child, None

    # -------------------------------------------------------- applying entries
    def _spool(self, src: TarStream, size: int) -> int:
        off = self._spool_end
        left = size
        while left > 0:
            chunk = src.read(min(_CHUNK, left))
            if not chunk:
                raise InputError(f"{self.what}: unexpected end of data")
            self.spool.write(chunk)
            left -= len(chunk)
        self._spool_end += size
        return off

    def _dir_at(self, comps: list[str]) -> Node | None:
        """The directory at `comps` (symlinks followed), or None when missing or not a directory."""
        parent, _ = self._resolve(comps + ["(child)"], create=False)
        return parent

    def _whiteout(self, comps: list[str], base: str) -> None:
        # Whiteouts never remove a directory this layer walked through (stamps), which every directory
        # on the remembered parent's path is; forget it anyway, so the reuse never rests on that rule.
        self._last_parent = None
        parent = self._dir_at(comps[:-1])
        if parent is None:
            return  # parent is not a directory (or missing): ignored
        assert parent.children is not None and parent.stamps is not None  # a directory
        if base == OPAQUE:
            self._opaque.append(parent)
            return
        if base.startswith(WH + WH):
            return  # other aufs metadata (.wh..wh.plnk, ...)
        target = base[len(WH):]
        if target in ("", ".", "..") or "/" in target:
            return
        if parent.stamps.get(target) == self.layer:
            return  # entries of the same layer are not hidden by its whiteouts
        parent.children.pop(target, None)
        parent.stamps.pop(target, None)

    def _sparse_map(self, m: tarfile.TarInfo) -> list[tuple[int, int]]:
        """The untrusted sparse map of m, checked: in order, not overlapping, inside the file. Empty
        entries only mark the end (old GNU headers leave unused slots as zeros, read as (0, 0))."""
        end = 0
        out = []
        for off, n in sparse_map(m) or ():
            if n == 0:
                continue
            if off < end or n < 0 or off + n > m.size:
                raise InputError(f"{self.what}: {m.name}: invalid sparse map")
            end = off + n
            out.append((off, n))
        return out

    def apply_member(self, m: tarfile.TarInfo, data: TarStream) -> None:
        """Apply one member of the layer; `data` is positioned at its stored data (untrusted)."""
        comps = split_path(m.name)
        if comps and comps[-1].startswith(WH):
            self._whiteout(comps, comps[-1])
            return
        parent, name = self._resolve(comps, create=True)
        assert parent is not None and name is not None
        assert parent.children is not None and parent.stamps is not None  # a directory
        mtime = max(int(m.mtime), 0)
        xattrs = {k[len("SCHILY.xattr."):]: v for k, v in sorted(m.pax_headers.items())
                  if k.startswith("SCHILY.xattr.")}
        if name == "":
            if m.isdir():
                r = self.root
                r.mode, r.uid, r.gid, r.mtime, r.xattrs = m.mode & 0o7777, m.uid, m.gid, mtime, xattrs
            return
        existing = parent.children.get(name)
        if m.islnk():
            node = self._hardlink_target(m)
            if node is existing:
                parent.stamps[name] = self.layer
                return
        elif m.isdir() and existing is not None and existing.kind == "d":
            node = existing
            node.mode, node.uid, node.gid, node.mtime, node.xattrs = m.mode & 0o7777, m.uid, m.gid, mtime, xattrs
        else:
            kind = type_letter(m)  # not "h": hardlinks are handled above
            node = Node(kind, m.mode & 0o7777, m.uid, m.gid, mtime, xattrs)
            if kind == "d":
                node.children, node.stamps = {}, {}
            elif kind == "l":
                node.linkname = m.linkname
            elif kind in ("c", "b"):
                node.devmajor, node.devminor = m.devmajor, m.devminor
            elif kind == "f":
                node.size = m.size
                if sparse_map(m) is not None:
                    node.sparse = self._sparse_map(m)
                    stored = sum(n for _, n in node.sparse)
                else:
                    stored = m.size
                node.offset = self._spool(data, stored)
        parent.children[name] = node
        parent.stamps[name] = self.layer

    def _hardlink_target(self, m: tarfile.TarInfo) -> Node:
        if escapes_root(m.linkname):
            raise InputError(f"{self.what}: hardlink {m.name} -> {m.linkname}: target is outside the image root")
        tparent, tname = self._resolve(split_path(m.linkname), create=False)
        # _resolve's parent is a directory (children set)
        target = tparent.children.get(tname) if tparent is not None and tname else None  # type: ignore[union-attr]
        if target is None:
            raise InputError(f"{self.what}: hardlink {m.name} -> {m.linkname}: target does not exist")
        if target.kind == "d":
            raise InputError(f"{self.what}: hardlink {m.name} -> {m.linkname}: target is a directory")
        return target

    def begin_layer(self, index: int, what: str) -> None:
        self.layer = index
        self.what = what
        self._opaque = []
        self._last_parent = None

    def end_layer(self) -> None:
        """Apply the layer's opaque directories: keep only what this layer put (or went through) there."""
        seen: set[int] = set()
        for d in self._opaque:
            self._keep_only_layer(d, seen)
        self._opaque = []

    def _keep_only_layer(self, d: Node, seen: set[int]) -> None:
        L = self.layer
        todo = [d]
        while todo:
            n = todo.pop()
            if id(n) in seen:
                continue
            seen.add(id(n))
            assert n.children is not None and n.stamps is not None  # a directory
            for name in [k for k, v in n.stamps.items() if v != L] + [k for k in n.children if k not in n.stamps]:
                n.children.pop(name, None)
                n.stamps.pop(name, None)
            todo.extend(c for c in n.children.values() if c.kind == "d")

    def apply_tar(self, untrusted_tar: TarStream) -> None:
        """Apply every member of the layer's tar stream (read with `packer.layers.iter_members`)."""
        for m in iter_members(untrusted_tar, self.what):
            self.apply_member(m, untrusted_tar)

    # -------------------------------------------------------- reading back
    def read_content(self, node: Node) -> Iterator[bytes]:
        """Yield the content of a regular-file node in chunks (a sparse file's holes as zeros)."""
        if node.sparse is None:
            yield from self._read_spool(node.offset, node.size)
            return
        pos = 0
        spooled = node.offset
        for off, n in node.sparse + [(node.size, 0)]:
            yield from _zeros(off - pos)
            yield from self._read_spool(spooled, n)
            spooled += n
            pos = off + n

    def _read_spool(self, pos: int, size: int) -> Iterator[bytes]:
        left = size
        fd = self.spool.fileno()
        while left > 0:
            chunk = os.pread(fd, min(_CHUNK, left), pos)
            if not chunk:
                raise InputError("spool file shrank while packing")
            yield chunk
            pos += len(chunk)
            left -= len(chunk)


def _zeros(n: int) -> Iterator[bytes]:
    """n zero bytes in chunks (the same buffer again and again: nothing is allocated per chunk)."""
    while n >= _CHUNK:
        yield _ZEROS
        n -= _CHUNK
    if n > 0:
        yield _ZEROS[:n]
