"""Layer blobs as verified, decompressed byte streams.

The compression is detected by magic bytes (media types lie): gzip `1f 8b`, zstd `28 b5 2f fd`, else
a plain tar. The compressed bytes are hashed against the blob digest and the decompressed bytes against
the config's diff_id; `LayerReader.finish()` drains the stream and raises InputError naming the blob on
a mismatch. Truncated or corrupt compressed data is an InputError too.
"""

from __future__ import annotations

import hashlib
import io
import zlib
from collections.abc import Callable
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
