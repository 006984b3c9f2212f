"""The archive this runtime was started from, opened for a run: its sections (runtime/trailer.py),
its manifest, and its cache key. On a warm start only the trailer and the manifest are read and the
manifest's hash checked (two reads, no heavy imports); on a cold start every section is verified."""

from __future__ import annotations

from runtime import cache, trailer
from runtime.errors import CarryonError


class Archive:
    """An opened archive. A plain class: `dataclasses` costs ms on every warm start."""

    __slots__ = ("path", "size", "sections", "key", "manifest", "_layout")

    def __init__(self, path: str, size: int, sections: dict[str, tuple[int, int, str]], key: str,
                 manifest: dict, _layout: object = None) -> None:
        self.path, self.size, self.sections = path, size, sections   # name -> (offset, length, sha256)
        self.key = key            # cache key: sha256 of the trailer, which records every section's hash
        self.manifest = manifest
        self._layout = _layout

    @property
    def layout(self):
        """runtime.archive's Layout (imported only when needed: extraction, full verification)."""
        if self._layout is None:
            from runtime import archive as fmt
            self._layout = fmt.read_layout(self.path)
        return self._layout


def _sha256_hex(data: bytes) -> str:
    try:
        import _sha256  # builtin: no OpenSSL start-up on the warm path
        return _sha256.sha256(data).hexdigest()
    except ImportError:
        import hashlib
        return hashlib.sha256(data).hexdigest()


def read_fast(path: str) -> tuple[int, dict[str, tuple[int, int, str]], bytes, bytes]:
    """(file size, sections, trailer bytes, manifest bytes) with two reads and no heavy imports.
    Refuses anything but a canonical trailer whose recorded sizes add up to the file's size."""
    try:
        with open(path, "rb") as f:
            size, data, sections = trailer.read(f, path)
            off, length, _ = sections["manifest"]
            f.seek(off)
            manifest = f.read(length)
    except OSError as e:
        raise CarryonError(f"{path}: cannot read: {e.strerror or e}") from None
    return size, sections, data, manifest


def open_archive(path: str, verify_all: bool) -> Archive:
    size, sections, tbytes, mbytes = read_fast(path)
    layout = None
    if verify_all:
        from runtime import archive as fmt
        layout = fmt.read_layout(path)
        fmt.verify(layout)
    elif _sha256_hex(mbytes) != sections["manifest"][2]:
        raise CarryonError(f"{path}: corrupted carryon archive (section manifest fails its sha256 check)")
    try:
        manifest = cache.json_loads(mbytes.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise CarryonError(f"{path}: corrupted carryon archive (manifest is not JSON)") from None
    if not isinstance(manifest, dict) or manifest.get("format") != 1:
        raise CarryonError(f"{path}: unsupported carryon manifest format")
    if sections["rootfs"][1] == 0:
        raise CarryonError(f"{path}: corrupted carryon archive (empty rootfs)")
    return Archive(path=path, size=size, sections=sections, key=_sha256_hex(tbytes)[:32], manifest=manifest,
                   _layout=layout)


def rootfs_needs(manifest: dict) -> tuple[int, int]:
    """(bytes, inodes) an extraction needs, with block rounding and some slack."""
    r = manifest.get("rootfs", {})
    files = int(r.get("files", 0) or 0)
    entries = int(r.get("total_entries", 0) or 0)
    dirs = int(r.get("dirs", 0) or 0)
    data = int(r.get("uncompressed_bytes", 0) or 0)
    return data + (files + dirs) * 4096 + entries * 256 + (8 << 20), entries + 64

