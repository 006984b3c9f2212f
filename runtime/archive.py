"""The carryon archive format (v1): sections laid end to end, located by a fixed trailer at the end.

    [launcher][runtime][manifest][rootfs][trailer: 512 bytes]

The trailer is 512 ASCII bytes of `\\n`-terminated lines: `CARRYON-ARCHIVE 1`, one line
`<name> <length> <sha256hex>` per section in file order, a line of spaces (padding) and `CARRYON-END`.
Offsets are computed from the end of the file, so a launcher can be put in front of a payload by
rewriting only the trailer's `launcher` line. Imported by the packer and by the frozen runtime.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile

from runtime import trailer
from runtime.errors import InputError
from runtime.spec import _Record  # plain records: no `dataclasses`/`typing` in the frozen runtime
from runtime.trailer import END, MAGIC, SECTIONS, TRAILER_SIZE  # noqa: F401 -- the format's names, here too

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import BinaryIO

FORMAT_VERSION = 1
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_CHUNK = 1 << 20


class Section(_Record):
    __slots__ = ("name", "offset", "length", "sha256")

    def __init__(self, name: str, offset: int, length: int, sha256: str) -> None:
        self.name, self.offset, self.length, self.sha256 = name, offset, length, sha256


class Layout(_Record):
    __slots__ = ("path", "size", "sections")

    def __init__(self, path: str, size: int, sections: dict[str, Section]) -> None:
        self.path, self.size, self.sections = path, size, sections


# ---------------------------------------------------------------- trailer (runtime/trailer.py)

format_trailer = trailer.render


def parse_trailer(data: bytes, what: str = "file") -> dict[str, tuple[int, str]]:
    """Parse a trailer; raise InputError naming `what` when it is not one."""
    return trailer.parse(data, what)


def read_layout(path: str) -> Layout:
    """Locate the sections of the carryon archive at `path` (InputError if it is not one)."""
    try:
        with open(path, "rb") as f:
            size, _, located = trailer.read(f, path)
    except IsADirectoryError:
        raise InputError(f"{path}: not a carryon archive (is a directory)") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror or e}") from None
    return Layout(path, size, {n: Section(n, *located[n]) for n in SECTIONS})


def _layout(path_or_layout: str | os.PathLike | Layout) -> Layout:
    if isinstance(path_or_layout, Layout):
        return path_or_layout
    return read_layout(os.fspath(path_or_layout))


# ---------------------------------------------------------------- reading sections

class SectionReader(io.RawIOBase):
    """A read-only, seekable window [offset, offset+length) of a file."""

    def __init__(self, path: str, offset: int, length: int) -> None:
        super().__init__()
        self._f = open(path, "rb", buffering=0)
        self._start = offset
        self._length = length
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            new = pos
        elif whence == io.SEEK_CUR:
            new = self._pos + pos
        elif whence == io.SEEK_END:
            new = self._length + pos
        else:
            raise ValueError(f"bad whence {whence}")
        if new < 0:
            raise ValueError("negative seek position")
        self._pos = new
        return new

    def readinto(self, b) -> int:  # type: ignore[override]
        left = self._length - self._pos
        if left <= 0:
            return 0
        view = memoryview(b)
        n = min(len(view), left)
        got = os.preadv(self._f.fileno(), [view[:n]], self._start + self._pos)
        self._pos += got
        return got

    def close(self) -> None:
        if not self.closed:
            self._f.close()
        super().close()


def open_section(layout: Layout, name: str) -> BinaryIO:
    """A buffered binary file object limited to section `name` (seek/read/tell)."""
    s = layout.sections[name]
    return io.BufferedReader(SectionReader(layout.path, s.offset, s.length), buffer_size=_CHUNK)


def read_manifest(path_or_layout: str | os.PathLike | Layout) -> dict:
    layout = _layout(path_or_layout)
    with open_section(layout, "manifest") as f:
        data = f.read()
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise InputError(f"{layout.path}: corrupted carryon archive (manifest is not JSON)") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_VERSION:
        raise InputError(f"{layout.path}: unsupported carryon manifest format {manifest.get('format')!r}"
                         if isinstance(manifest, dict) else f"{layout.path}: corrupted carryon manifest")
    return manifest


def verify(layout: Layout, names: tuple[str, ...] | list[str] = SECTIONS) -> None:
    """Re-hash sections; InputError naming the first one whose sha256 differs from the trailer's."""
    from runtime.digest import file_sha256
    with open(layout.path, "rb") as f:
        for name in names:
            s = layout.sections[name]
            try:
                got = file_sha256(f, s.offset, s.length)
            except EOFError:
                got = ""                # the file shrank under us
            if got != s.sha256:
                raise InputError(f"{layout.path}: corrupted carryon archive (section {name} fails its sha256 check)")


class _RootfsTar(tarfile.TarFile):
    """TarFile that also closes the decompressor and section file it reads from."""

    _carryon_owned: list = []

    def close(self) -> None:
        try:
            super().close()
        finally:
            for obj in self._carryon_owned:
                obj.close()
            self._carryon_owned = []


def iter_rootfs(layout: Layout) -> tarfile.TarFile:
    """A stream-mode TarFile over the decompressed rootfs section (iterate it; use as a context)."""
    from runtime import zstd

    section = open_section(layout, "rootfs")
    reader = zstd.stream_reader(section, read_size=_CHUNK)
    bad: tuple[type[BaseException], ...] = (tarfile.TarError, *zstd.errors())
    try:
        tf = _RootfsTar.open(fileobj=reader, mode="r|", bufsize=_CHUNK)
    except bad as e:
        reader.close()
        section.close()
        raise InputError(f"{layout.path}: corrupted carryon archive (rootfs: {e})") from None
    tf._carryon_owned = [reader, section]
    return tf


# ---------------------------------------------------------------- writing

def encode_manifest(manifest: dict) -> bytes:
    return (json.dumps(manifest, sort_keys=True, indent=1, ensure_ascii=False) + "\n").encode("utf-8")


def _copy_hashing(src_path: str | None, data: bytes | None, out: BinaryIO) -> tuple[int, str]:
    h = hashlib.sha256()
    n = 0
    if data is not None:
        out.write(data)
        h.update(data)
        n = len(data)
    if src_path is not None:
        with open(src_path, "rb") as f:
            while chunk := f.read(_CHUNK):
                out.write(chunk)
                h.update(chunk)
                n += len(chunk)
    return n, h.hexdigest()


def write_archive(out_path: str, *, manifest: dict, rootfs_path: str, launcher: bytes = b"",
                  runtime_path: str | None = None) -> None:
    """Write [launcher][runtime][manifest][rootfs][trailer] to `out_path` atomically.

    A temp file in the same directory is written, fsync'ed and renamed; it is removed on any error or
    KeyboardInterrupt. The result is mode 0755 when a launcher is present, else 0644 (minus umask).
    """
    out_path = os.fspath(out_path)
    d = os.path.dirname(os.path.abspath(out_path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(out_path) + ".", suffix=".part", dir=d)
    try:
        with os.fdopen(fd, "wb") as out:
            entries = {
                "launcher": _copy_hashing(None, launcher, out),
                "runtime": _copy_hashing(runtime_path, None, out),
                "manifest": _copy_hashing(None, encode_manifest(manifest), out),
                "rootfs": _copy_hashing(rootfs_path, None, out),
            }
            out.write(format_trailer(entries))
            out.flush()
            os.fsync(out.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, (0o755 if launcher else 0o644) & ~umask)
        os.replace(tmp, out_path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def copy_section(layout: Layout, name: str, out: BinaryIO) -> int:
    """Copy one section's bytes to `out`; returns the byte count."""
    with open_section(layout, name) as f:
        shutil.copyfileobj(f, out, _CHUNK)
    return layout.sections[name].length
