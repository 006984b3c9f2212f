"""zstd decompression for the runtime: libzstd's decoder through ctypes, else the `zstandard` package.

The frozen runtime only ever decompresses (the rootfs section, the manifest's removed-paths list),
so packer/embed.py links libzstd.a's decoder into `_zstd.so` beside this module and leaves the
`zstandard` package (its compressors too: ~1 MB, with `typing`) out. In a source checkout, or a
runtime built where libzstd.a is missing, `zstandard` does the same work. Both release the GIL while
they decompress (runtime/extract.py decompresses ahead on a thread). Errors: `errors()` lists the
exception types a corrupted stream raises (ZstdError, and zstandard's own when it is in use).
"""

from __future__ import annotations

import ctypes
import io
import os

HERE = os.path.dirname(os.path.abspath(__file__))
LIBRARY = os.path.join(HERE, "_zstd.so")
EXPORTS = ("ZSTD_createDCtx", "ZSTD_freeDCtx", "ZSTD_decompressStream", "ZSTD_isError", "ZSTD_getErrorName",
           "ZSTD_DStreamInSize")


class ZstdError(Exception):
    """A corrupted or truncated zstd stream (the native decoder's message)."""


class _InBuffer(ctypes.Structure):
    _fields_ = [("src", ctypes.c_void_p), ("size", ctypes.c_size_t), ("pos", ctypes.c_size_t)]


class _OutBuffer(ctypes.Structure):
    _fields_ = [("dst", ctypes.c_void_p), ("size", ctypes.c_size_t), ("pos", ctypes.c_size_t)]


_lib = None


def library():
    """The ctypes library (CARRYON_ZSTD=package: never), or None."""
    global _lib
    if _lib is not None:
        return _lib or None
    _lib = False
    if os.environ.get("CARRYON_ZSTD") == "package" or not os.path.exists(LIBRARY):
        return None
    try:
        lib = ctypes.CDLL(LIBRARY)
        lib.ZSTD_createDCtx.restype = ctypes.c_void_p
        lib.ZSTD_freeDCtx.argtypes = [ctypes.c_void_p]
        lib.ZSTD_decompressStream.restype = ctypes.c_size_t
        lib.ZSTD_decompressStream.argtypes = [ctypes.c_void_p, ctypes.POINTER(_OutBuffer),
                                              ctypes.POINTER(_InBuffer)]
        lib.ZSTD_isError.argtypes = [ctypes.c_size_t]
        lib.ZSTD_getErrorName.restype = ctypes.c_char_p
        lib.ZSTD_getErrorName.argtypes = [ctypes.c_size_t]
        lib.ZSTD_DStreamInSize.restype = ctypes.c_size_t
    except (OSError, AttributeError):
        return None
    _lib = lib
    return lib


def errors() -> tuple[type[BaseException], ...]:
    if library() is not None:
        return (ZstdError,)
    import zstandard  # carryon: not frozen
    return (ZstdError, zstandard.ZstdError)


class _Reader(io.RawIOBase):
    """Decompressed bytes of every frame read from `raw` until its end (a file object of ours)."""

    def __init__(self, lib, raw, read_size: int) -> None:
        super().__init__()
        self._lib, self._raw = lib, raw
        self._dctx = lib.ZSTD_createDCtx()
        if not self._dctx:
            raise MemoryError("zstd: cannot create a decoder")
        self._buf = bytearray(read_size)
        self._cbuf = (ctypes.c_char * read_size).from_buffer(self._buf)
        self._in = _InBuffer(ctypes.addressof(self._cbuf), 0, 0)
        self._out = _OutBuffer(None, 0, 0)
        self._open_frame = False        # the last call left a frame unfinished
        self._eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        view = memoryview(b).cast("B")
        if not len(view):
            return 0
        dst = (ctypes.c_char * len(view)).from_buffer(view)
        out = self._out
        out.dst, out.size, out.pos = ctypes.addressof(dst), len(view), 0
        lib, inb = self._lib, self._in
        while True:
            if inb.pos == inb.size and not self._eof:
                got = self._raw.readinto(self._buf)
                if got:
                    inb.size, inb.pos = got, 0
                else:
                    self._eof = True
            if inb.pos == inb.size and not self._open_frame:
                return 0                        # the input ended where a frame did (never call on none:
                #                                 a decoder between frames asks for a header)
            ret = lib.ZSTD_decompressStream(self._dctx, ctypes.byref(out), ctypes.byref(inb))
            if lib.ZSTD_isError(ret):
                raise ZstdError(lib.ZSTD_getErrorName(ret).decode("ascii", "replace"))
            self._open_frame = ret != 0
            if out.pos:
                return out.pos
            if self._eof and inb.pos == inb.size:
                if self._open_frame:
                    raise ZstdError("truncated input")
                return 0

    def close(self) -> None:
        if self._dctx:
            self._lib.ZSTD_freeDCtx(self._dctx)
            self._dctx = None
        super().close()


def stream_reader(raw, read_size: int = 1 << 20):
    """A binary file object (a context manager too) over the decompression of `raw`, across frames."""
    lib = library()
    if lib is not None:
        return io.BufferedReader(_Reader(lib, raw, read_size), buffer_size=read_size)
    import zstandard  # carryon: not frozen
    return zstandard.ZstdDecompressor().stream_reader(raw, read_size=read_size, read_across_frames=True)


def decompress(data: bytes) -> bytes:
    with stream_reader(io.BytesIO(data), 1 << 16) as r:
        return r.read()


def build(dest: str = LIBRARY, libzstd_a: str = "/usr/lib/x86_64-linux-gnu/libzstd.a",
          cc: list[str] | None = None) -> str:
    """Link libzstd.a's decoder into `dest` (atomically), exporting EXPORTS only; OSError otherwise."""
    from runtime.tracee.native import compile_c
    undefined = [f"-Wl,-u,{name}" for name in EXPORTS]
    script = dest + ".map"
    with open(script, "w") as f:
        f.write("{ global: " + " ".join(f"{n};" for n in EXPORTS) + " local: *; };\n")
    try:
        return compile_c(dest, ["-shared", "-s", *undefined, f"-Wl,--version-script={script}"], [libzstd_a],
                         "the zstd decoder", cc)
    finally:
        os.unlink(script)
