"""SHA-256 of a file range: runtime/digest.c through ctypes when it is there, else hashlib.

The frozen runtime carries no OpenSSL (libcrypto is 4.7 MB of a ~22 MB runtime); Python's builtin
_sha256 then does ~250 MB/s and holds the GIL. The cold start hashes every section of the archive,
so `file_sha256` calls `cd_sha256_fd` of `_digest.so` (beside this module, built into the frozen
runtime by packer/embed.py), which uses the CPU's SHA extensions when it has them (several times
faster than the portable C, which matches _sha256) and releases the GIL. When the library is
missing, stale (older than digest.c: a source checkout) or fails to load, hashlib does the work:
the answers are the same (tests/test_digest.py).
"""

from __future__ import annotations

import os

HERE = os.path.dirname(os.path.abspath(__file__))
LIBRARY = os.path.join(HERE, "_digest.so")
SOURCE = os.path.join(HERE, "digest.c")
ABI = 1
_CHUNK = 1 << 20

_lib = None


def library():
    """The ctypes library, or None."""
    global _lib
    if _lib is not None:
        return _lib or None
    _lib = False
    try:
        st = os.stat(LIBRARY)
        try:
            if os.stat(SOURCE).st_mtime > st.st_mtime:
                return None
        except OSError:
            pass                        # the frozen runtime: no sources
        import ctypes
        lib = ctypes.CDLL(LIBRARY)
        if lib.cd_abi() != ABI:
            return None
        lib.cd_sha256_fd.argtypes = [ctypes.c_int, ctypes.c_ulonglong, ctypes.c_ulonglong, ctypes.c_char_p,
                                     ctypes.c_int]
    except (OSError, AttributeError):
        return None
    _lib = lib
    return lib


def file_sha256(f, offset: int, length: int, allow_ni: bool = True) -> str:
    """Hex SHA-256 of `length` bytes of the open binary file `f` from `offset` (its position is
    left alone natively, moved by the hashlib fallback). EOFError when the file ends early, OSError
    when reading fails."""
    lib = library()
    if lib is not None:
        out = bytes(32)
        rc = lib.cd_sha256_fd(f.fileno(), offset, length, out, 1 if allow_ni else 0)
        if rc == 0:
            return out.hex()
        if rc == 1:
            raise EOFError
        raise OSError(-rc, os.strerror(-rc))
    import hashlib
    h = hashlib.sha256()
    f.seek(offset)
    left = length
    while left:
        chunk = f.read(min(_CHUNK, left))
        if not chunk:
            raise EOFError
        h.update(chunk)
        left -= len(chunk)
    return h.hexdigest()


def build(dest: str = LIBRARY, cc: list[str] | None = None) -> str:
    """Compile digest.c into `dest` (atomically); returns dest. OSError with the compiler's message."""
    from runtime.tracee.native import compile_c
    return compile_c(dest, ["-O2", "-shared", "-fPIC", "-Wall", "-Wextra", "-Werror"], [SOURCE],
                     "the SHA-256 library", cc)


if __name__ == "__main__":          # python -m runtime.digest [DEST]: build the library
    import sys
    try:
        print(build(sys.argv[1] if sys.argv[1:] else LIBRARY))
    except OSError as e:
        sys.exit(f"carryon: {e}")
