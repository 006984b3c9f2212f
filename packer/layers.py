"""Layer blobs as verified, decompressed byte streams.

The compression is detected by magic bytes (media types lie): gzip `1f 8b`, zstd `28 b5 2f fd`, else
a plain tar. The compressed bytes are hashed against the blob digest and the decompressed bytes against
the config's diff_id; `LayerReader.finish()` drains the stream and raises InputError naming the blob on
a mismatch. Truncated or corrupt compressed data is an InputError too.

`iter_members` reads the tar itself (untrusted: it comes from the image) one member at a time, with
Go archive/tar's idea of where it ends (Docker and umoci read layers with it): the end-of-archive
blocks may be missing, and so may the padding after the last member's data (`umoci insert` writes
neither), or part of it. Still refused, as Docker and umoci refuse them: a header or a member's data
cut short, a bad header checksum, a header after an end-of-archive block. Trailing zeros that are not
a whole block are taken as the end too (Go refuses them; they cannot hide anything). Headers are
parsed by `tarfile.TarInfo.fromtarfile` (ustar, PAX, GNU long names and links, base-256 numbers, GNU
sparse 0.0/0.1/1.0 and old GNU `S` members); names are decoded as UTF-8 with surrogateescape, so
bytes that are not UTF-8 are kept as they are.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import zlib
from collections.abc import Callable, Iterator
from typing import BinaryIO

import zstandard

from packer.sources import GZIP_MAGIC, ZSTD_MAGIC, LayerRef
from runtime.errors import InputError

_IN_CHUNK = 256 << 10


def sniff_compression(head: bytes) -> str:
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    if head.startswith(b"BZh") or head.startswith(b"\xfd7zXZ\x00"):
        return "unsupported"
    return "none"


class LayerReader(io.RawIOBase):
    """Readable stream of a layer's uncompressed tar, hashing both sides as it goes."""

    def __init__(self, ref: LayerRef, on_read: Callable[[int], None] | None = None) -> None:
        super().__init__()
        self.ref = ref
        self.what = f"layer {ref.index} {ref.digest or ref.name}"
        self._raw: BinaryIO = ref.opener()
        self._head = self._raw.read(16)
        self.compression = sniff_compression(self._head)
        if self.compression == "unsupported":
            self._raw.close()
            raise InputError(f"{self.what}: unsupported compression (only gzip, zstd and plain tar)")
        self.blob_hash = hashlib.sha256()
        self.diff_hash = hashlib.sha256()
        self.blob_bytes = 0
        self.tar_bytes = 0
        # current gzip member / zstd frame decompressor
        self._dec: zlib._Decompress | zstandard.ZstdDecompressionObj | None = None
        self._started = False     # a member/frame has begun and not ended
        self._pending = b""
        self._pos = 0
        self._eof = False
        self._on_read = on_read

    def readable(self) -> bool:
        return True

    def _new_decoder(self) -> zlib._Decompress | zstandard.ZstdDecompressionObj:
        if self.compression == "gzip":
            return zlib.decompressobj(wbits=31)
        return zstandard.ZstdDecompressor().decompressobj()

    def _decode(self, data: bytes) -> bytes:
        out = []
        while data:
            if self._dec is None:
                if not data.strip(b"\0"):
                    break  # zero padding after the last member
                self._dec = self._new_decoder()
            try:
                out.append(self._dec.decompress(data))
            except (zlib.error, zstandard.ZstdError) as e:
                raise InputError(f"{self.what}: corrupt {self.compression} data ({e})") from None
            if self._dec.eof:
                data = self._dec.unused_data
                self._dec = None
            else:
                data = b""
        return b"".join(out)

    def _fill(self) -> None:
        chunk = self._head if self._head else self._raw.read(_IN_CHUNK)
        self._head = b""
        if not chunk:
            if self._dec is not None:
                raise InputError(f"{self.what}: truncated {self.compression} stream")
            self._eof = True
            return
        self.blob_hash.update(chunk)
        self.blob_bytes += len(chunk)
        if self._on_read is not None:
            self._on_read(len(chunk))
        out = chunk if self.compression == "none" else self._decode(chunk)
        self.diff_hash.update(out)
        self.tar_bytes += len(out)
        self._pending = out
        self._pos = 0

    def readinto(self, b) -> int:  # type: ignore[override]
        while self._pos >= len(self._pending):
            if self._eof:
                return 0
            self._fill()
        n = min(len(b), len(self._pending) - self._pos)
        b[:n] = self._pending[self._pos:self._pos + n]
        self._pos += n
        return n

    def finish(self) -> None:
        """Read to the end and check the blob digest and diff_id."""
        while not self._eof:
            self._pos = len(self._pending)
            self._fill()
        blob = "sha256:" + self.blob_hash.hexdigest()
        diff = "sha256:" + self.diff_hash.hexdigest()
        if self.ref.digest and blob != self.ref.digest:
            raise InputError(f"{self.what}: digest mismatch (blob content is {blob})")
        if diff != self.ref.diff_id:
            raise InputError(f"{self.what}: uncompressed content {diff} does not match the config's "
                             f"diff_id {self.ref.diff_id}")

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


BLOCK = 512
# tarfile's own header errors (documented by their behaviour only: typeshed leaves them out)
_EMPTY: type[Exception] = tarfile.EmptyHeaderError          # type: ignore[attr-defined]  # no bytes left
_EOF_BLOCK: type[Exception] = tarfile.EOFHeaderError        # type: ignore[attr-defined]  # a zero block
_TRUNCATED: type[Exception] = tarfile.TruncatedHeaderError  # type: ignore[attr-defined]  # a partial block


class TarStream:
    """Forward-only view of an untrusted tar byte stream with the `read`/`tell`/`seek` that
    `tarfile.TarInfo.fromtarfile` uses; `read` is short only at the end of the stream."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._pos = 0
        self.last = b""           # what the last read() returned

    def read(self, n: int = -1) -> bytes:
        parts = []
        got = 0
        while n < 0 or got < n:
            chunk = self._raw.read(-1 if n < 0 else n - got)
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
        data = b"".join(parts)
        self._pos += len(data)
        self.last = data
        return data

    def tell(self) -> int:
        return self._pos

    def skip(self, n: int) -> int:
        """Skip up to n bytes; returns how many there were."""
        left = n
        while left > 0:
            chunk = self._raw.read(min(left, _IN_CHUNK))
            if not chunk:
                break
            left -= len(chunk)
        self._pos += n - left
        return n - left

    def seek(self, pos: int, whence: int = 0) -> int:
        if whence != 0 or pos < self._pos:
            raise tarfile.StreamError("seeking backwards is not allowed")
        self.skip(pos - self._pos)
        return self._pos


class _Headers:
    """What `tarfile.TarInfo.fromtarfile` needs of a TarFile: the stream, the name decoding, the
    global PAX headers (updated by `g` members) and where the next header starts (`offset`)."""

    def __init__(self, stream: TarStream) -> None:
        self.fileobj = stream
        self.encoding = "utf-8"
        self.errors = "surrogateescape"
        self.pax_headers: dict[str, str] = {}
        self.offset = 0


def sparse_map(m: tarfile.TarInfo) -> list[tuple[int, int]] | None:
    """(offset, length) of each data segment of a sparse member as tarfile read it (untrusted), or None."""
    segments: list[tuple[int, int]] | None = m.sparse  # type: ignore[assignment]  # typeshed: list[int]
    return segments


def stored_size(m: tarfile.TarInfo) -> int:
    """Bytes of data the archive holds for member m (a sparse member's data blocks only)."""
    segments = sparse_map(m)
    if segments is not None:
        return sum(n for _, n in segments)
    if m.isreg() or m.type not in tarfile.SUPPORTED_TYPES:
        return m.size
    return 0


def iter_members(stream: TarStream, what: str) -> Iterator[tarfile.TarInfo]:
    """The members of the untrusted tar on `stream` (see the module docstring for where it ends).

    When a member is yielded the stream is at its data (`stored_size(m)` bytes, the consumer may read
    any part of it); the rest of the data is skipped before the next header is read (cut short: an
    InputError), the padding after it may be missing. Errors are one-line InputErrors naming `what`.
    """
    hdr = _Headers(stream)
    while True:
        try:
            m = tarfile.TarInfo.fromtarfile(hdr)  # type: ignore[arg-type]  # uses only what _Headers has
        except _EMPTY:
            return                                # the end, without end-of-archive blocks
        except _EOF_BLOCK:
            if stream.read(BLOCK).strip(b"\0"):
                raise InputError(f"{what}: not a valid tar (a header after an end-of-archive block)") from None
            return
        except _TRUNCATED:
            if stream.last.strip(b"\0"):
                raise InputError(f"{what}: not a valid tar (truncated header)") from None
            return                                # a short run of trailing zeros
        except (tarfile.HeaderError, tarfile.ReadError, ValueError) as e:
            raise InputError(f"{what}: not a valid tar ({e or 'invalid header'})") from None
        data_end = m.offset_data + stored_size(m)
        yield m
        if stream.tell() > data_end:
            raise InputError(f"{what}: {m.name}: read past the member's data")  # a consumer bug, not input
        want = data_end - stream.tell()
        if stream.skip(want) != want:
            raise InputError(f"{what}: not a valid tar (unexpected end of data)")
        stream.skip(max(hdr.offset, data_end) - data_end)   # padding: may be short at the end
