"""runtime/zstd.py: libzstd's decoder through ctypes (what the frozen runtime uses) gives the bytes
the zstandard package gives, across frames, in reads of any size, and raises ZstdError on a
truncated or corrupted stream; without the library, zstandard does the work."""

from __future__ import annotations

import io
import os
import random

import pytest
import zstandard

from packer import embed
from runtime import zstd


@pytest.fixture
def native(tmp_path, monkeypatch):
    if not os.path.exists(embed.LIBZSTD_A):
        pytest.skip("no libzstd.a (apt-get install libzstd-dev)")
    lib = str(tmp_path / "_zstd.so")
    zstd.build(lib, embed.LIBZSTD_A)
    monkeypatch.setattr(zstd, "LIBRARY", lib)
    monkeypatch.setattr(zstd, "_lib", None)
    assert zstd.library() is not None
    return lib


def _frames(rng: random.Random) -> tuple[bytes, bytes]:
    parts = [rng.randbytes(rng.randrange(0, 3000)) * rng.randrange(1, 400) for _ in range(rng.randrange(1, 5))]
    blob = b"".join(zstandard.ZstdCompressor(level=3, write_checksum=True).compress(p) for p in parts)
    return blob, b"".join(parts)


def test_native_decoder_matches_zstandard(native):
    rng = random.Random(22)
    for _ in range(20):
        blob, want = _frames(rng)
        assert zstd.decompress(blob) == want
        with zstd.stream_reader(io.BytesIO(blob), read_size=4096) as r:
            got = b""
            while chunk := r.read(rng.randrange(1, 70000)):
                got += chunk
        assert got == want
    assert zstd.decompress(b"") == b""
    assert zstd.errors() == (zstd.ZstdError,)


def test_native_decoder_refuses_truncated_and_corrupted_streams(native):
    blob, _ = _frames(random.Random(5))
    with pytest.raises(zstd.ZstdError, match="truncated"):
        zstd.decompress(blob[:-5])
    bad = bytearray(blob)
    bad[len(bad) // 2] ^= 0xFF
    with pytest.raises(zstd.ZstdError):
        zstd.decompress(bytes(bad))


def test_without_the_library_zstandard_decodes(monkeypatch):
    monkeypatch.setattr(zstd, "_lib", False)
    blob, want = _frames(random.Random(7))
    assert zstd.decompress(blob) == want
    assert zstandard.ZstdError in zstd.errors()
    bad = bytearray(blob)
    bad[len(bad) // 2] ^= 0xFF
    with pytest.raises(zstd.errors()):               # (a truncated stream it ends quietly: tar notices)
        zstd.decompress(bytes(bad))
