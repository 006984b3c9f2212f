"""Safe rootless extraction of a carryon rootfs (umoci-style) plus the metadata it cannot apply.

One function applies one tar entry. Every entry path is joined inside the root with securejoin
semantics (`secure_resolve`): a leading `/` is dropped, `..` is clamped at the root, and a symlink met
on the way is followed with its target re-rooted at the root, so nothing lands outside the root.
Device nodes become empty regular files with the node's mode (as `umoci unpack --rootless` makes
them). Owners, xattrs and device types that a non-root user cannot apply are recorded in
`DEST.carryon-meta.json`, written beside DEST (never inside it), with an entry for every path.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import tarfile
import tempfile
from dataclasses import dataclass, field
from typing import Callable, Iterable

from runtime.errors import InputError

MAX_SYMLINKS = 40
META_SUFFIX = ".carryon-meta.json"
_CHUNK = 1 << 20

Progress = Callable[[int, int], None]


class SymlinkLoop(Exception):
    """More than MAX_SYMLINKS symlinks met while resolving one path."""


# ---------------------------------------------------------------- path resolution (shared with the packer)

def split_path(path: str) -> list[str]:
    """Components of a tar/guest path, with empty and `.` parts dropped (`..` kept)."""
    return [c for c in path.split("/") if c and c != "."]


def secure_resolve(components: Iterable[str], kind: Callable[[tuple[str, ...]], tuple[str | None, str]],
                   follow_last: bool = False) -> tuple[str, ...]:
    """Resolve a path inside a root, securejoin style; returns the root-relative components.

    `kind(parts)` tells what is at `parts` (already resolved components): ("link", target) for a
    symlink, anything else otherwise. `..` pops a component (never above the root); a symlink in the
    middle (or at the end when `follow_last`) is replaced by its target, restarting from the root when
    the target is absolute. The result may name missing paths; it never leaves the root.
    """
    stack: list[str] = []
    todo = list(reversed(list(components)))
    links = 0
    while todo:
        c = todo.pop()
        if c in ("", "."):
            continue
        if c == "..":
            if stack:
                stack.pop()
            continue
        if not todo and not follow_last:
            stack.append(c)
            break
        k, target = kind(tuple(stack) + (c,))
        if k == "link":
            links += 1
            if links > MAX_SYMLINKS:
                raise SymlinkLoop("/".join(stack + [c]))
            if target.startswith("/"):
                stack = []
            todo.extend(reversed(target.split("/")))
        else:
            stack.append(c)
    return tuple(stack)


def escapes_root(path: str) -> bool:
    """True when a root-relative path (e.g. a hardlink target) climbs above the root lexically."""
    depth = 0
    for c in split_path(path.lstrip("/")):
        if c == "..":
            depth -= 1
            if depth < 0:
                return True
        else:
            depth += 1
    return False


# ---------------------------------------------------------------- helpers

def meta_path_for(dest_dir: str) -> str:
    return os.path.normpath(os.path.abspath(dest_dir)) + META_SUFFIX


def remove_tree(path: str) -> None:
    """rm -rf that also works on trees with unwritable (e.g. 0000, 0500) directories we own."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return
    os.chmod(path, 0o700)
    for dirpath, dirnames, _ in os.walk(path):  # top-down: each dir is opened up before it is entered
        for d in dirnames:
            p = os.path.join(dirpath, d)
            try:
                if not os.path.islink(p):
                    os.chmod(p, 0o700)
            except OSError:
                pass
    shutil.rmtree(path)


def type_letter(m: tarfile.TarInfo) -> str:
    if m.isdir():
        return "d"
    if m.issym():
        return "l"
    if m.islnk():
        return "h"
    if m.ischr():
        return "c"
    if m.isblk():
        return "b"
    if m.isfifo():
        return "p"
    return "f"


def xattrs_of(m: tarfile.TarInfo) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for k, v in m.pax_headers.items():
        if k.startswith("SCHILY.xattr."):
            out[k[len("SCHILY.xattr."):]] = v.encode("utf-8", "surrogateescape")
    return out


# ---------------------------------------------------------------- extraction

@dataclass
class _State:
    root: str
    tf: tarfile.TarFile
    meta: dict[str, dict] = field(default_factory=dict)
    root_meta: dict = field(default_factory=lambda: {"mode": 0o755, "uid": 0, "gid": 0})
    root_mtime: float | None = None
    dirs: dict[str, tuple[int, float]] = field(default_factory=dict)  # host path -> (mode, mtime)
    done: int = 0
    total: int = 0
    progress: Progress | None = None


def _host(st: _State, parts: tuple[str, ...]) -> str:
    return os.path.join(st.root, *parts) if parts else st.root


def _kind(st: _State) -> Callable[[tuple[str, ...]], tuple[str | None, str]]:
    def kind(parts: tuple[str, ...]) -> tuple[str | None, str]:
        p = _host(st, parts)
        try:
            mode = os.lstat(p).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return None, ""
        if stat.S_ISLNK(mode):
            return "link", os.readlink(p)
        return ("dir" if stat.S_ISDIR(mode) else "other"), ""
    return kind


def _guest(parts: tuple[str, ...]) -> str:
    return "/" + "/".join(parts)


def _forget(st: _State, parts: tuple[str, ...]) -> None:
    """Drop meta entries of a removed path and everything below it."""
    g = _guest(parts)
    st.meta.pop(g, None)
    prefix = g + "/"
    for k in [k for k in st.meta if k.startswith(prefix)]:
        del st.meta[k]
    host = _host(st, parts)
    hp = host + "/"
    for k in [k for k in st.dirs if k == host or k.startswith(hp)]:
        del st.dirs[k]


def _clear(st: _State, parts: tuple[str, ...], keep_dir: bool) -> bool:
    """Remove what is at `parts` (unless it is a dir and keep_dir). True if a dir is kept there."""
    p = _host(st, parts)
    try:
        mode = os.lstat(p).st_mode
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(mode):
        if keep_dir:
            return True
        remove_tree(p)
    else:
        os.unlink(p)
    _forget(st, parts)
    return False


def _ensure_parents(st: _State, parts: tuple[str, ...], kind) -> None:
    """Create missing parent directories (mode 0755, root-owned in the metadata)."""
    for i in range(1, len(parts)):
        sub = parts[:i]
        k, _ = kind(sub)
        if k == "dir":
            continue
        if k is not None:  # a non-directory is in the way: a directory replaces it
            _clear(st, sub, keep_dir=False)
        os.mkdir(_host(st, sub), 0o700)
        st.dirs[_host(st, sub)] = (0o755, 0.0)
        st.meta[_guest(sub)] = {"uid": 0, "gid": 0, "mode": 0o755, "type": "d"}


def _record(st: _State, parts: tuple[str, ...], m: tarfile.TarInfo, letter: str, **extra) -> None:
    e: dict = {"uid": m.uid, "gid": m.gid, "mode": m.mode & 0o7777, "type": letter}
    xa = xattrs_of(m)
    if xa:
        e["xattrs"] = {k: base64.b64encode(v).decode("ascii") for k, v in sorted(xa.items())}
    e.update(extra)
    st.meta[_guest(parts)] = e


def _apply_xattrs(path: str, m: tarfile.TarInfo) -> None:
    for k, v in xattrs_of(m).items():
        if not k.startswith("user."):
            continue  # trusted./security. need privileges: recorded in the metadata only
        try:
            os.setxattr(path, k, v, follow_symlinks=False)
        except OSError:
            pass


def _write_file(st: _State, path: str, m: tarfile.TarInfo) -> None:
    src = st.tf.extractfile(m)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        left = m.size
        while left > 0:
            chunk = src.read(min(_CHUNK, left)) if src is not None else b""
            if not chunk:
                raise InputError(f"rootfs entry {m.name}: unexpected end of data")
            view = memoryview(chunk)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            left -= len(chunk)
            st.done += len(chunk)
            if st.progress is not None:
                st.progress(st.done, st.total)
        os.fchmod(fd, m.mode & 0o7777)
    finally:
        os.close(fd)


def apply_entry(st: _State, m: tarfile.TarInfo) -> None:
    """Apply one tar entry inside st.root."""
    kind = _kind(st)
    parts = secure_resolve(split_path(m.name), kind)
    if not parts:
        if m.isdir():
            st.root_meta = {"mode": m.mode & 0o7777, "uid": m.uid, "gid": m.gid}
            st.root_mtime = m.mtime
        return
    _ensure_parents(st, parts, kind)
    path = _host(st, parts)
    letter = type_letter(m)
    if m.isdir():
        if not _clear(st, parts, keep_dir=True):
            os.mkdir(path, 0o700)
        _apply_xattrs(path, m)
        st.dirs[path] = (m.mode & 0o7777, m.mtime)
        _record(st, parts, m, "d")
        return
    if m.islnk():
        if escapes_root(m.linkname):
            raise InputError(f"rootfs entry {m.name}: hardlink to {m.linkname!r} points outside the root")
        tparts = secure_resolve(split_path(m.linkname), kind)
        tpath = _host(st, tparts)
        if not tparts or kind(tparts)[0] in (None, "dir"):
            raise InputError(f"rootfs entry {m.name}: hardlink target {m.linkname!r} is missing or a directory")
        if tparts == parts:
            return
        _clear(st, parts, keep_dir=False)
        os.link(tpath, path, follow_symlinks=False)
        target_meta = dict(st.meta.get(_guest(tparts), {}))
        target_meta.update({"type": "h", "target": _guest(tparts)})
        st.meta[_guest(parts)] = target_meta
        return
    _clear(st, parts, keep_dir=False)
    if m.isreg():
        _write_file(st, path, m)
        _apply_xattrs(path, m)
        os.utime(path, (m.mtime, m.mtime), follow_symlinks=False)
        _record(st, parts, m, "f")
    elif m.issym():
        os.symlink(m.linkname, path)
        try:
            os.utime(path, (m.mtime, m.mtime), follow_symlinks=False)
        except OSError:
            pass
        _record(st, parts, m, "l")
    elif m.isfifo():
        os.mkfifo(path, 0o600)
        os.chmod(path, m.mode & 0o7777)
        _apply_xattrs(path, m)
        os.utime(path, (m.mtime, m.mtime), follow_symlinks=False)
        _record(st, parts, m, "p")
    elif m.ischr() or m.isblk():
        # a rootless user cannot mknod: an empty regular file holds the place (as `umoci unpack
        # --rootless` does) and the metadata records the real type and device numbers
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, m.mode & 0o7777)
        finally:
            os.close(fd)
        os.utime(path, (m.mtime, m.mtime), follow_symlinks=False)
        _record(st, parts, m, letter, rdev=[m.devmajor, m.devminor])
    else:
        raise InputError(f"rootfs entry {m.name}: unsupported tar entry type {m.type!r}")


def _finish_dirs(st: _State) -> None:
    for path in sorted(st.dirs, key=lambda p: p.count("/"), reverse=True):
        mode, mtime = st.dirs[path]
        os.chmod(path, mode)
        os.utime(path, (mtime, mtime), follow_symlinks=False)
    os.chmod(st.root, st.root_meta["mode"])
    if st.root_mtime is not None:
        os.utime(st.root, (st.root_mtime, st.root_mtime))


def write_meta(meta_path: str, meta: dict) -> None:
    d = os.path.dirname(meta_path) or "."
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(meta_path) + ".", dir=d)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(meta, f, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        os.chmod(tmp, 0o644)
        os.replace(tmp, meta_path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def extract_rootfs(layout, dest_dir: str, progress: Progress | None = None,
                   meta_path: str | None = None) -> dict:
    """Extract the rootfs of carryon archive `layout` (a Layout or a path) into `dest_dir` (missing or
    empty) and write
    the metadata JSON (default `DEST.carryon-meta.json` beside it). Returns the metadata dict.

    On any error (or KeyboardInterrupt) what was extracted is removed again.
    """
    from runtime.archive import Layout, iter_rootfs, read_layout, read_manifest  # local: keep this module light

    if not isinstance(layout, Layout):
        layout = read_layout(os.fspath(layout))
    dest_dir = os.fspath(dest_dir)
    created = False
    try:
        if os.listdir(dest_dir):
            raise InputError(f"{dest_dir}: destination exists and is not empty")
    except FileNotFoundError:
        os.mkdir(dest_dir, 0o700)
        created = True
    except NotADirectoryError:
        raise InputError(f"{dest_dir}: destination exists and is not a directory") from None
    total = int(read_manifest(layout).get("rootfs", {}).get("uncompressed_bytes", 0) or 0)
    root = os.path.abspath(dest_dir)
    try:
        import zstandard

        with iter_rootfs(layout) as tf:
            st = _State(root=root, tf=tf, total=total, progress=progress)
            try:
                for m in tf:
                    apply_entry(st, m)
            except (tarfile.TarError, zstandard.ZstdError, EOFError) as e:
                raise InputError(f"{layout.path}: corrupted rootfs ({e})") from None
            except SymlinkLoop as e:
                raise InputError(f"{layout.path}: too many levels of symlinks at {e}") from None
        _finish_dirs(st)
        meta = {"format": 1, "root": st.root_meta, "entries": st.meta}
        write_meta(meta_path or meta_path_for(dest_dir), meta)
        return meta
    except BaseException:
        if created:
            remove_tree(root)
        else:
            os.chmod(root, 0o700)
            for name in os.listdir(root):
                remove_tree(os.path.join(root, name))
        raise


def load_meta(dest_dir: str) -> dict:
    with open(meta_path_for(dest_dir), encoding="utf-8") as f:
        return json.load(f)


__all__ = ["extract_rootfs", "secure_resolve", "split_path", "escapes_root", "remove_tree", "load_meta",
           "meta_path_for", "write_meta", "SymlinkLoop", "apply_entry"]
