"""runtime/digest.c (the cold start's SHA-256, with and without the CPU's SHA extensions) gives
hashlib's answers for every length around the block and buffer boundaries, at any offset, and says
when the file ends early; runtime.digest falls back to hashlib without the library."""

from __future__ import annotations

import hashlib
import os
import random

import pytest

from runtime import digest


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("digest") / "_digest.so")
    try:
        digest.build(path)
    except OSError as e:
        pytest.skip(f"no C compiler: {e}")
    import ctypes
    so = ctypes.CDLL(path)
    so.cd_sha256_fd.argtypes = [ctypes.c_int, ctypes.c_ulonglong, ctypes.c_ulonglong, ctypes.c_char_p,
                                ctypes.c_int]
    return so


def _sha(so, fd: int, offset: int, length: int, ni: bool) -> tuple[int, str]:
    out = bytes(32)
    rc = so.cd_sha256_fd(fd, offset, length, out, int(ni))
    return rc, out.hex()


@pytest.mark.parametrize("ni", [False, True], ids=["portable", "sha-ni"])
def test_native_sha256_matches_hashlib(lib, tmp_path, ni):
    if ni and not lib.cd_sha256_ni():
        pytest.skip("this CPU has no SHA extensions")
    rng = random.Random(21)
    data = rng.randbytes((1 << 20) * 2 + 300)
    path = tmp_path / "data"
    path.write_bytes(data)
    mb = 1 << 20                                                    # digest.c's read buffer
    lengths = list(range(0, 130)) + [191, 192, 193, 4095, 4096, 4097, mb - 1, mb, mb + 1, mb + 63, 2 * mb + 100]
    lengths += [rng.randrange(0, 2 * mb) for _ in range(8)]
    fd = os.open(path, os.O_RDONLY)
    try:
        for n in lengths:
            off = rng.randrange(0, 200)
            assert _sha(lib, fd, off, n, ni) == (0, hashlib.sha256(data[off:off + n]).hexdigest()), (off, n)
        assert os.lseek(fd, 0, os.SEEK_CUR) == 0                    # pread: the offset is left alone
        assert _sha(lib, fd, len(data) - 10, 11, ni)[0] == 1        # ends early
    finally:
        os.close(fd)
    bad = os.open(tmp_path, os.O_RDONLY)                            # a directory: EISDIR
    try:
        assert _sha(lib, bad, 0, 1, ni)[0] < 0
    finally:
        os.close(bad)


def test_file_sha256_with_and_without_the_library(lib, tmp_path, monkeypatch):
    data = os.urandom(100_000)
    path = tmp_path / "data"
    path.write_bytes(data)
    want = hashlib.sha256(data[7:90_007]).hexdigest()
    for native in (lib, False):
        monkeypatch.setattr(digest, "_lib", native)
        with open(path, "rb") as f:
            assert digest.file_sha256(f, 7, 90_000) == want
            assert digest.file_sha256(f, 7, 90_000, allow_ni=False) == want
            with pytest.raises(EOFError):
                digest.file_sha256(f, 99_990, 11)
