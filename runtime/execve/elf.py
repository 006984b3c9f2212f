"""Just enough ELF to exec like the kernel: is it a 64-bit x86_64 ELF, and its PT_INTERP (if any)."""

from __future__ import annotations

import errno
import os

PT_INTERP = 3
EM_X86_64 = 62

# (host path, st_ino, st_mtime_ns, st_size) -> interpreter or None
_cache: dict[tuple[str, int, int, int], str | None] = {}


def is_elf(head: bytes) -> bool:
    return head[:4] == b"\x7fELF"


def interpreter(fd: int, head: bytes, key: tuple[str, int, int, int] | None = None) -> str | None:
    """The PT_INTERP path of the ELF open on `fd` (`head`: its first bytes), None for a static one.

    OSError(ENOEXEC) for what the kernel would refuse: not 64-bit little-endian x86_64 (32-bit
    programs are not supported), not an executable or shared object, broken program headers."""
    if key is not None and key in _cache:
        return _cache[key]
    if len(head) < 64 or head[4] != 2 or head[5] != 1:
        raise OSError(errno.ENOEXEC, "not a 64-bit little-endian ELF")
    e_type = int.from_bytes(head[16:18], "little")
    machine = int.from_bytes(head[18:20], "little")
    if e_type not in (2, 3) or machine != EM_X86_64:
        raise OSError(errno.ENOEXEC, "not an x86_64 executable")
    phoff = int.from_bytes(head[32:40], "little")
    phentsize = int.from_bytes(head[54:56], "little")
    phnum = int.from_bytes(head[56:58], "little")
    if phentsize < 56 or phnum == 0 or phnum > 4096:
        raise OSError(errno.ENOEXEC, "bad program headers")
    table = os.pread(fd, phentsize * phnum, phoff)
    if len(table) < phentsize * phnum:
        raise OSError(errno.ENOEXEC, "truncated program headers")
    interp: str | None = None
    for i in range(phnum):
        ph = table[i * phentsize:(i + 1) * phentsize]
        if int.from_bytes(ph[0:4], "little") != PT_INTERP:
            continue
        off = int.from_bytes(ph[8:16], "little")
        size = int.from_bytes(ph[32:40], "little")
        if size < 2 or size > 4096:
            raise OSError(errno.ENOEXEC, "bad PT_INTERP")
        raw = os.pread(fd, size, off)
        if len(raw) != size or raw[-1] != 0:
            raise OSError(errno.ENOEXEC, "bad PT_INTERP")
        interp = os.fsdecode(raw[:-1])
        break
    if key is not None:
        if len(_cache) > 1024:
            _cache.clear()
        _cache[key] = interp
    return interp


_argv0_cache: dict[tuple[str, int, int], bool] = {}


def _rodata(fd: int) -> bytes | None:
    """The `.rodata` section of the ELF open on `fd` (where a loader keeps its option names), or
    None when the section headers are missing or odd (stripped to the bone)."""
    head = os.pread(fd, 64, 0)
    if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
        return None
    shoff = int.from_bytes(head[40:48], "little")
    shentsize = int.from_bytes(head[58:60], "little")
    shnum = int.from_bytes(head[60:62], "little")
    shstrndx = int.from_bytes(head[62:64], "little")
    if shentsize < 64 or not 0 < shnum <= 256 or shstrndx >= shnum:
        return None
    table = os.pread(fd, shentsize * shnum, shoff)
    if len(table) < shentsize * shnum:
        return None

    def section(i: int) -> tuple[int, int, int]:        # (name offset, file offset, size)
        sh = table[i * shentsize:(i + 1) * shentsize]
        return (int.from_bytes(sh[0:4], "little"), int.from_bytes(sh[24:32], "little"),
                int.from_bytes(sh[32:40], "little"))

    _, str_off, str_size = section(shstrndx)
    names = os.pread(fd, min(str_size, 1 << 16), str_off)
    for i in range(shnum):
        name, off, size = section(i)
        if names[name:name + 8] == b".rodata\0" and 0 < size <= 8 << 20:
            return os.pread(fd, size, off)
    return None


def loader_has_argv0(host_path: str, st: os.stat_result) -> bool:
    """Whether this dynamic loader understands `--argv0` (glibc >= 2.33, musl >= 1.2.? has it too):
    looked up once per loader file by searching its read-only data (the whole file when it has no
    section headers) for the option string."""
    key = (host_path, st.st_ino, st.st_mtime_ns)
    hit = _argv0_cache.get(key)
    if hit is None:
        try:
            fd = os.open(host_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            hit = False
        else:
            try:
                data = _rodata(fd)
                if data is None:
                    data = os.pread(fd, min(os.fstat(fd).st_size, 8 << 20), 0)
                hit = b"--argv0" in data
            except OSError:
                hit = False
            finally:
                os.close(fd)
        _argv0_cache[key] = hit
    return hit
