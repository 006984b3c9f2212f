"""Safe rootless extraction of a carryon rootfs (umoci-style) plus the metadata it cannot apply.

One function applies one tar entry. Every entry path and hardlink target (untrusted: they come from
the image) is joined inside the root by `runtime.path.confine.join` (through `secure_resolve`,
umoci's SecureJoin semantics): a leading `/` is dropped, `..` is clamped at the root, and a symlink
met on the way is followed with its target re-rooted at the root, so nothing lands outside the root.
Device nodes become empty regular files with the node's mode (as `umoci unpack --rootless` makes
them). Owners, xattrs and device types that a non-root user cannot apply are recorded in
`DEST.carryon-meta.json`, written beside DEST (never inside it), with an entry for every path.

Speed (a cold start extracts the whole image): the tar stream is read by a small ustar/PAX/GNU reader
over large decompressed chunks (zstd runs ahead in a thread), file data is written straight from those
chunks, and an entry whose parent is a directory this extraction itself made (the packer writes
parents first) and whose name has no `..` skips the component-by-component walk (the join could only
give the same answer: no symlink and no `..` on the way); any other entry takes the full walk.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterable

from runtime.errors import InputError
from runtime.path.confine import MAX_SYMLINKS, SymlinkLoop, escapes_root, join, split_path
from runtime.spec import _Record

META_SUFFIX = ".carryon-meta.json"
_CHUNK = 1 << 20

Progress = Callable[[int, int], None]


# ---------------------------------------------------------------- path resolution (runtime.path.confine)

def secure_resolve(components: Iterable[str], kind: Callable[[tuple[str, ...]], tuple[str | None, str]],
                   follow_last: bool = False) -> tuple[str, ...]:
    """Resolve untrusted path components inside a root with `runtime.path.confine.join`; returns the
    root-relative components.

    `kind(parts)` tells what is at `parts` (already resolved components): ("link", target) for a
    symlink, anything else otherwise (a missing or non-directory component in the middle is joined
    lexically: the caller creates or replaces it). The last component is followed only when
    `follow_last`. The result may name missing paths; it never leaves the root. Raises SymlinkLoop.
    """
    def lookup(parts: tuple[str, ...], name: str) -> tuple[tuple[str, ...] | None, str | None]:
        child = parts + (name,)
        k, target = kind(child)
        if k == "link":
            return None, target
        return child, None

    root: tuple[str, ...] = ()
    walked = join(root, list(components), lookup, follow_last)
    assert walked is not None           # join returns None only when lookup ends the walk; this one never does
    return tuple(walked[1])


# ---------------------------------------------------------------- helpers

def meta_path_for(dest_dir: str) -> str:
    return os.path.normpath(os.path.abspath(dest_dir)) + META_SUFFIX


def _vanished_ok(func, path, exc_info) -> None:
    """rmtree's error handler: an entry removed meanwhile by someone else (e.g. a run's detached
    cleaner finishing its directory) is what we wanted; anything else is raised."""
    if not isinstance(exc_info[1], FileNotFoundError):
        raise exc_info[1]


def remove_tree(path: str) -> None:
    """rm -rf that also works on trees with unwritable (e.g. 0000, 0500) directories we own, and
    while another process removes parts of them (like rm -f, a vanished entry is not an error)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    try:
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(path)
            return
        os.chmod(path, 0o700)
    except FileNotFoundError:
        return
    for dirpath, dirnames, _ in os.walk(path):  # top-down: each dir is opened up before it is entered
        for d in dirnames:
            p = os.path.join(dirpath, d)
            try:
                if not os.path.islink(p):
                    os.chmod(p, 0o700)
            except OSError:
                pass
    shutil.rmtree(path, onerror=_vanished_ok)


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


# ---------------------------------------------------------------- reading the rootfs tar

class _Corrupt(Exception):
    """The rootfs tar stream is malformed (bad header checksum, truncated data, bad PAX record)."""


_ENC = sys.getfilesystemencoding()
_REGULAR = frozenset((b"0", b"\0", b"7"))
_KNOWN = _REGULAR | frozenset((b"1", b"2", b"3", b"4", b"5", b"6"))
_LETTER = {b"0": "f", b"\0": "f", b"7": "f", b"1": "h", b"2": "l", b"3": "c", b"4": "b", b"5": "d", b"6": "p"}
_XATTR = "SCHILY.xattr."


class Entry(_Record):
    """One member of the rootfs tar (the fields extraction uses, PAX/GNU long names applied)."""
    __slots__ = ("name", "type", "mode", "uid", "gid", "size", "mtime", "linkname", "devmajor", "devminor",
                 "xattrs")

    def __init__(self, name: str, type: bytes, mode: int, uid: int, gid: int, size: int, mtime: float,
                 linkname: str = "", devmajor: int = 0, devminor: int = 0,
                 xattrs: dict[str, bytes] | None = None) -> None:
        self.name = name
        self.type = type            # tar typeflag, e.g. b"0", b"5"
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.size = size
        self.mtime = mtime
        self.linkname = linkname
        self.devmajor = devmajor
        self.devminor = devminor
        self.xattrs = xattrs


def _nts(b: bytes) -> bytes:
    i = b.find(b"\0")
    return b if i < 0 else b[:i]


def _num(b: bytes) -> int:
    """A numeric header field: octal text, or GNU base-256 (first byte 0x80 / 0xff)."""
    if b and b[0] in (0o200, 0o377):
        n = int.from_bytes(b[1:], "big")
        return n - (256 ** (len(b) - 1)) if b[0] == 0o377 else n
    t = _nts(b).strip()
    try:
        return int(t or b"0", 8)
    except ValueError:
        raise _Corrupt("invalid number in a tar header") from None


def _pax_text(v: bytes, fallback: str = "utf-8") -> str:
    try:
        return v.decode("utf-8")
    except UnicodeDecodeError:
        return v.decode(fallback, "surrogateescape")


def _parse_pax(data: bytes, into: dict[str, bytes]) -> None:
    pos, n = 0, len(data)
    while pos < n and data[pos] != 0:
        sp = data.find(b" ", pos, pos + 24)
        if sp < 0:
            raise _Corrupt("invalid PAX header")
        try:
            length = int(data[pos:sp])
        except ValueError:
            raise _Corrupt("invalid PAX header") from None
        if length <= sp - pos or pos + length > n or data[pos + length - 1] != 0x0A:
            raise _Corrupt("invalid PAX header")
        key, eq, value = data[sp + 1:pos + length - 1].partition(b"=")
        if not eq:
            raise _Corrupt("invalid PAX header")
        into[_pax_text(key)] = value
        pos += length


class _Prefetch:
    """Decompresses ahead in a thread (zstd releases the GIL), so decompression overlaps the file
    system work of the extraction on another CPU. read() hands out whole chunks in order."""

    def __init__(self, reader, chunk: int = 1 << 20, depth: int = 8) -> None:
        import queue
        import threading

        self._reader = reader
        self._chunk = chunk
        self._q: queue.Queue = queue.Queue(depth)
        self._empty = queue.Empty
        self._stop = False
        self._eof = False
        self._thread = threading.Thread(target=self._run, name="carryon-unzstd", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop:
                data = self._reader.read(self._chunk)
                self._q.put(data)
                if not data:
                    return
        except BaseException as e:  # noqa: BLE001 -- handed to the reading thread
            self._q.put(e)

    def read(self, _size: int = -1) -> bytes:
        if self._eof:
            return b""
        data = self._q.get()
        if isinstance(data, BaseException):
            self._eof = True
            raise data
        if not data:
            self._eof = True
        return data

    def close(self) -> None:
        """Stop the thread (it may be blocked on a full queue: drain until it is gone)."""
        self._stop = True
        while self._thread.is_alive():
            try:
                self._q.get(timeout=0.05)
            except self._empty:
                pass
        self._thread.join()


class _Blocks:
    """The decompressed tar stream, read in large chunks; file data is written from them directly."""

    def __init__(self, reader, chunk: int = 1 << 22) -> None:
        self.reader = reader
        self.chunk = chunk
        self.buf = b""
        self.view = memoryview(b"")
        self.pos = 0

    def _fill(self) -> bool:
        data = self.reader.read(self.chunk)
        if not data:
            return False
        rest = len(self.buf) - self.pos
        self.buf = self.buf[self.pos:] + data if rest else data
        self.view = memoryview(self.buf)
        self.pos = 0
        return True

    def take(self, n: int) -> bytes | None:
        """Exactly n bytes; None at a clean end of stream (nothing left)."""
        while len(self.buf) - self.pos < n:
            if not self._fill():
                if self.pos == len(self.buf):
                    return None
                raise _Corrupt("unexpected end of data")
        b = self.buf[self.pos:self.pos + n]
        self.pos += n
        return b

    def _ready(self) -> int:
        """Bytes buffered and not consumed yet, refilling when there are none (at least 1)."""
        avail = len(self.buf) - self.pos
        while avail == 0:
            if not self._fill():
                raise _Corrupt("unexpected end of data")
            avail = len(self.buf) - self.pos
        return avail

    def skip(self, n: int) -> None:
        while n > 0:
            k = min(self._ready(), n)
            self.pos += k
            n -= k

    def write_to(self, fd: int, n: int, st: _State) -> None:
        """Write the next n bytes to fd (then skip the block padding)."""
        pad = -n % 512
        while n > 0:
            k = min(self._ready(), n)
            view = self.view[self.pos:self.pos + k]
            while view:
                w = os.write(fd, view)
                view = view[w:]
            self.pos += k
            n -= k
            st.done += k
            if st.progress is not None:
                st.progress(st.done, st.total)
        if pad:
            self.skip(pad)


def _header(blk: bytes) -> bool:
    """True for a valid header block (checksum over the block with the checksum field as spaces)."""
    try:
        want = _num(blk[148:156])
    except _Corrupt:
        return False
    return sum(blk) - sum(blk[148:156]) + 256 == want


def iter_entries(blocks: _Blocks):
    """Entries of a tar stream (ustar/PAX/GNU long names); data of regular files is left unread:
    the caller consumes exactly `size` bytes (+ padding) with blocks.write_to or blocks.skip."""
    glob: dict[str, bytes] = {}
    pax: dict[str, bytes] | None = None
    longname: bytes | None = None
    longlink: bytes | None = None
    first = True
    while True:
        blk = blocks.take(512)
        if blk is None:
            if first:
                raise _Corrupt("empty rootfs")
            return
        if blk.count(0) == 512:
            return
        if not _header(blk):
            raise _Corrupt("bad tar header checksum")
        first = False
        t = blk[156:157]
        size = _num(blk[124:136])
        if t in (b"x", b"g", b"L", b"K"):
            data = blocks.take(size + (-size % 512)) if size else b""
            if data is None:
                raise _Corrupt("unexpected end of data")
            data = data[:size]
            if t == b"x":
                pax = dict(glob) if pax is None else pax
                _parse_pax(data, pax)
            elif t == b"g":
                _parse_pax(data, glob)
            elif t == b"L":
                longname = _nts(data)
            else:
                longlink = _nts(data)
            continue
        hdr = pax if pax is not None else glob
        name = _nts(blk[0:100]).decode(_ENC, "surrogateescape")
        if blk[257:265] == b"ustar\x0000" or blk[257:263] == b"ustar ":
            prefix = _nts(blk[345:500])
            if prefix and blk[257:263] == b"ustar\x00":
                name = prefix.decode(_ENC, "surrogateescape") + "/" + name
        if t == b"\0" and name.endswith("/"):
            t = b"5"
        e = Entry(name=name, type=t, mode=_num(blk[100:108]), uid=_num(blk[108:116]), gid=_num(blk[116:124]),
                  size=size, mtime=_num(blk[136:148]),
                  linkname=_nts(blk[157:257]).decode(_ENC, "surrogateescape"),
                  devmajor=_num(blk[329:337]) if t in (b"3", b"4") else 0,
                  devminor=_num(blk[337:345]) if t in (b"3", b"4") else 0)
        if longname is not None:
            e.name = longname.decode(_ENC, "surrogateescape")
        if longlink is not None:
            e.linkname = longlink.decode(_ENC, "surrogateescape")
        if hdr:
            for k, v in hdr.items():
                if k == "path":
                    e.name = _pax_text(v, _ENC).rstrip("/")
                elif k == "linkpath":
                    e.linkname = _pax_text(v, _ENC)
                elif k in ("size", "uid", "gid"):
                    try:
                        setattr(e, k, int(v))
                    except ValueError:
                        setattr(e, k, 0)
                elif k == "mtime":
                    try:
                        e.mtime = float(v)
                    except ValueError:
                        e.mtime = 0
                elif k.startswith(_XATTR):
                    if e.xattrs is None:
                        e.xattrs = {}
                    e.xattrs[k[len(_XATTR):]] = v  # raw bytes (tarfile's decode/encode round trip)
                elif k.startswith("GNU.sparse."):
                    raise _Corrupt("sparse files are not supported")
        if t == b"5":
            e.name = e.name.rstrip("/")
        pax = longname = longlink = None
        if t not in _KNOWN:
            raise InputError(f"rootfs entry {e.name}: unsupported tar entry type {t!r}")
        yield e


# ---------------------------------------------------------------- extraction

class _State:
    """One extraction's bookkeeping (a plain class: no `dataclasses`, whose `inspect` & co. the
    frozen runtime leaves out)."""

    def __init__(self, root: str, total: int = 0, progress: Progress | None = None) -> None:
        self.root = root
        self.meta: dict[str, dict] = {}
        self.root_meta: dict = {"mode": 0o755, "uid": 0, "gid": 0}
        self.root_mtime: float | None = None
        self.dirs: dict[str, tuple[int, float]] = {}    # host path -> (mode, mtime)
        # root-relative paths ("usr/lib") this extraction made or saw as real directories, reached with
        # no symlink on the way; dropped when something replaces them. An entry whose parent is listed
        # here needs no component-by-component walk.
        self.real_dirs: set[str] = set()
        self.blocks: _Blocks | None = None
        self.done = 0
        self.total = total
        self.progress = progress


def _host(st: _State, parts: tuple[str, ...]) -> str:
    return st.root + "/" + "/".join(parts) if parts else st.root


def _kind(st: _State) -> Callable[[tuple[str, ...]], tuple[str | None, str]]:
    def kind(parts: tuple[str, ...]) -> tuple[str | None, str]:
        if "/".join(parts) in st.real_dirs:
            return "dir", ""
        p = _host(st, parts)
        try:
            mode = os.lstat(p).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return None, ""
        if stat.S_ISLNK(mode):
            return "link", os.readlink(p)
        if stat.S_ISDIR(mode):
            st.real_dirs.add("/".join(parts))
            return "dir", ""
        return "other", ""
    return kind


def _guest(parts: tuple[str, ...]) -> str:
    return "/" + "/".join(parts)


def _forget(st: _State, parts: tuple[str, ...]) -> None:
    """Drop meta entries (and known dirs) of a removed path and everything below it."""
    g = _guest(parts)
    st.meta.pop(g, None)
    prefix = g + "/"
    for k in [k for k in st.meta if k.startswith(prefix)]:
        del st.meta[k]
    host = _host(st, parts)
    hp = host + "/"
    for k in [k for k in st.dirs if k == host or k.startswith(hp)]:
        del st.dirs[k]
    rel = "/".join(parts)
    rp = rel + "/"
    for k in [k for k in st.real_dirs if k == rel or k.startswith(rp)]:
        st.real_dirs.discard(k)


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
        st.real_dirs.add("/".join(sub))
        st.meta[_guest(sub)] = {"uid": 0, "gid": 0, "mode": 0o755, "type": "d"}


def _resolve(st: _State, name: str) -> tuple[str, ...]:
    """Root-relative components of entry `name`, parents created. Fast when the parent is a directory
    this extraction knows to be real (the packer's order: parents first); else the securejoin walk."""
    comps = split_path(name)
    if comps and ".." not in comps:
        if len(comps) == 1 or "/".join(comps[:-1]) in st.real_dirs:
            return tuple(comps)
    kind = _kind(st)
    parts = secure_resolve(comps, kind)
    if parts:
        _ensure_parents(st, parts, kind)
    return parts


def _record(st: _State, parts: tuple[str, ...], m: Entry, letter: str) -> dict:
    e: dict = {"uid": m.uid, "gid": m.gid, "mode": m.mode & 0o7777, "type": letter}
    if m.xattrs:
        e["xattrs"] = {k: base64.b64encode(v).decode("ascii") for k, v in sorted(m.xattrs.items())}
    st.meta[_guest(parts)] = e
    return e


def _apply_xattrs(target, m: Entry) -> None:
    """user.* xattrs (trusted./security. need privileges: recorded in the metadata only)."""
    for k, v in m.xattrs.items():  # type: ignore[union-attr]
        if not k.startswith("user."):
            continue
        try:
            if isinstance(target, int):
                os.setxattr(target, k, v)
            else:
                os.setxattr(target, k, v, follow_symlinks=False)
        except OSError:
            pass


_O_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _create(st: _State, parts: tuple[str, ...], make: Callable[[], object]):
    """make() creates the path; when something is already there it is removed first (once)."""
    try:
        return make()
    except FileExistsError:
        _clear(st, parts, keep_dir=False)
        return make()


def apply_entry(st: _State, m: Entry) -> None:
    """Apply one tar entry inside st.root (a regular file's data is read from st.blocks)."""
    parts = _resolve(st, m.name)
    t = m.type
    if not parts:
        if t == b"5":
            st.root_meta = {"mode": m.mode & 0o7777, "uid": m.uid, "gid": m.gid}
            st.root_mtime = m.mtime
        elif t in _REGULAR and m.size:
            st.blocks.skip(m.size + (-m.size % 512))  # type: ignore[union-attr]
        return
    path = st.root + "/" + "/".join(parts)
    if t in _REGULAR:
        fd = _create(st, parts, lambda: os.open(path, _O_NEW, 0o600))
        try:
            if m.size:
                st.blocks.write_to(fd, m.size, st)  # type: ignore[union-attr]
            if m.xattrs:
                _apply_xattrs(fd, m)
            os.fchmod(fd, m.mode & 0o7777)
            os.utime(fd, (m.mtime, m.mtime))
        finally:
            os.close(fd)
        _record(st, parts, m, "f")
        return
    if t == b"5":
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            if not _clear(st, parts, keep_dir=True):
                os.mkdir(path, 0o700)
        if m.xattrs:
            _apply_xattrs(path, m)
        st.dirs[path] = (m.mode & 0o7777, m.mtime)
        st.real_dirs.add("/".join(parts))
        _record(st, parts, m, "d")
        return
    if t == b"1":
        if escapes_root(m.linkname):
            raise InputError(f"rootfs entry {m.name}: hardlink to {m.linkname!r} points outside the root")
        kind = _kind(st)
        tparts = secure_resolve(split_path(m.linkname), kind)
        tpath = _host(st, tparts)
        if not tparts or kind(tparts)[0] in (None, "dir"):
            raise InputError(f"rootfs entry {m.name}: hardlink target {m.linkname!r} is missing or a directory")
        if tparts == parts:
            return
        try:
            _create(st, parts, lambda: os.link(tpath, path, follow_symlinks=False))
        except FileNotFoundError:  # the target was below the path this entry replaced
            raise InputError(f"rootfs entry {m.name}: hardlink target {m.linkname!r} is missing") from None
        target_meta = dict(st.meta.get(_guest(tparts), {}))
        target_meta.update({"type": "h", "target": _guest(tparts)})
        st.meta[_guest(parts)] = target_meta
        return
    if t == b"2":
        _create(st, parts, lambda: os.symlink(m.linkname, path))
        try:
            os.utime(path, (m.mtime, m.mtime), follow_symlinks=False)
        except OSError:
            pass
        _record(st, parts, m, "l")
        return
    if t == b"6":
        _create(st, parts, lambda: os.mkfifo(path, 0o600))
        os.chmod(path, m.mode & 0o7777)
        if m.xattrs:
            _apply_xattrs(path, m)
        os.utime(path, (m.mtime, m.mtime), follow_symlinks=False)
        _record(st, parts, m, "p")
        return
    # b"3"/b"4": a rootless user cannot mknod: an empty regular file holds the place (as `umoci unpack
    # --rootless` does) and the metadata records the real type and device numbers
    fd = _create(st, parts, lambda: os.open(path, _O_NEW, 0o600))
    try:
        os.fchmod(fd, m.mode & 0o7777)
        os.utime(fd, (m.mtime, m.mtime))
    finally:
        os.close(fd)
    _record(st, parts, m, _LETTER[t])["rdev"] = [m.devmajor, m.devminor]


def _finish_dirs(st: _State) -> None:
    for path in sorted(st.dirs, key=lambda p: p.count("/"), reverse=True):
        mode, mtime = st.dirs[path]
        os.chmod(path, mode)
        os.utime(path, (mtime, mtime), follow_symlinks=False)
    os.chmod(st.root, st.root_meta["mode"])
    if st.root_mtime is not None:
        os.utime(st.root, (st.root_mtime, st.root_mtime))


def write_meta(meta_path: str, meta: dict) -> None:
    """Write the metadata JSON atomically. Paths that are not UTF-8 (kept by the image as bytes, held
    here with surrogateescape) make the whole file ASCII with `\\udcXX` escapes: still JSON, and
    `json.load` gives back the same strings, so the bytes of the names survive."""
    try:
        data = json.dumps(meta, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        data = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode("ascii")
    d = os.path.dirname(meta_path) or "."
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(meta_path) + ".", dir=d)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, 0o644)
        finally:
            os.close(fd)
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
    from runtime.archive import Layout, open_section, read_layout, read_manifest  # local: keep this module light

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
        from runtime import zstd

        st = _State(root=root, total=total, progress=progress)
        with open_section(layout, "rootfs") as section, zstd.stream_reader(section, read_size=1 << 20) as reader:
            bad: tuple[type[BaseException], ...] = (_Corrupt, EOFError, *zstd.errors())
            prefetch = _Prefetch(reader)
            st.blocks = _Blocks(prefetch)
            try:
                for m in iter_entries(st.blocks):
                    apply_entry(st, m)
            except bad as e:
                raise InputError(f"{layout.path}: corrupted rootfs ({e})") from None
            except SymlinkLoop as e:
                raise InputError(f"{layout.path}: too many levels of symlinks at {e}") from None
            finally:
                prefetch.close()
        st.blocks = None
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


class _Given:
    """`apply_entry`'s data source for entries that come with their data (`extract_entries`)."""

    def __init__(self) -> None:
        self.data: Iterable[bytes] = ()

    def write_to(self, fd: int, n: int, st: _State) -> None:
        for chunk in self.data:
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]
            st.done += len(chunk)

    def skip(self, n: int) -> None:
        pass


def extract_entries(entries: Iterable[tuple[Entry, Iterable[bytes] | None]], dest_dir: str) -> dict:
    """Apply (entry, its data) pairs, in tar order, into the new directory `dest_dir` exactly as
    `extract_rootfs` applies a rootfs tar (the packer's CARE mode extracts a squashed tree this way,
    with no tar in between), then write the metadata JSON beside it. Returns the metadata dict."""
    os.mkdir(dest_dir, 0o700)
    st = _State(root=os.path.abspath(dest_dir))
    given = _Given()
    st.blocks = given  # type: ignore[assignment]  # write_to/skip: all apply_entry asks of it
    for m, data in entries:
        given.data = data or ()
        apply_entry(st, m)
    st.blocks = None
    _finish_dirs(st)
    meta = {"format": 1, "root": st.root_meta, "entries": st.meta}
    write_meta(meta_path_for(dest_dir), meta)
    return meta


def load_meta(dest_dir: str) -> dict:
    with open(meta_path_for(dest_dir), encoding="utf-8") as f:
        return json.load(f)


__all__ = ["extract_rootfs", "extract_entries", "Entry", "secure_resolve", "split_path", "escapes_root",
           "remove_tree", "load_meta", "meta_path_for", "write_meta", "SymlinkLoop", "MAX_SYMLINKS", "apply_entry"]
