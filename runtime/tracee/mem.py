"""Tracee memory: read C strings / bytes and push data below the stack pointer.

One `pread` on /proc/PID/mem per string (up to the end of its page, then page by page), `pwrite` for
writes (kernels before 2.6.39 refuse those: then as below, see `write`); `process_vm_readv/writev`
until the program has stopped MEMFD_AFTER times, and when /proc/PID/mem cannot be opened. Scratch
data goes below the tracee's stack pointer, past the 128-byte red zone, 16-byte aligned; it is dead
once the system call returns, so nothing needs restoring.

Why not open /proc/PID/mem at once: most programs of a shell script stop only a handful of times
(`/bin/true`: its execve, the loader's four opens). Opening the file costs a path walk and a
permission check, and the descriptor keeps the address space alive after the program is gone, so
its tear-down (at exit, or after an execve) is paid in the tracer's close() instead of in the guest.
On the measured VM that made up about a tenth of the tracer's work per `/bin/true`; the long-lived
programs that stop hundreds of times get the cheaper pread/pwrite from their MEMFD_AFTER-th stop.
"""

from __future__ import annotations

import errno
import os

from runtime.tracee import ffi

PATH_MAX = 4096
FIRST_CHUNK = 256           # read_cstring's first read (never past the end of the page)
FIRST_WORDS = 16            # read_words's first read, in pointers
RED_ZONE = 128
AREA_SIZE = 256 * 1024      # the fallback scratch mapping (see NeedScratch)
MEMFD_AFTER = 8             # stops of one program before its /proc/PID/mem is opened


class NeedScratch(Exception):
    """The stack below the stack pointer is not writable (Linux >= 6.5 no longer grows a stack
    for a remote write, and a thread may sit at the very bottom of its stack): the loop then
    makes the tracee mmap a private scratch area for itself and restarts the call."""


def open_mem(pid: int) -> int:
    """fd of /proc/PID/mem, or -1 (then the process_vm_* calls are used)."""
    try:
        return os.open(f"/proc/{pid}/mem", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return -1


def read(t, addr: int, size: int, _pread=os.pread) -> bytes:
    """Exactly `size` bytes at `addr`, or OSError(EFAULT)."""
    fd = t.memfd
    try:
        data = _pread(fd, size, addr) if fd >= 0 else ffi.vm_read(t.pid, addr, size)
    except (OSError, OverflowError, ValueError):
        raise OSError(errno.EFAULT, "bad address") from None
    if len(data) != size:
        raise OSError(errno.EFAULT, "bad address")
    return data


def read_cstring(t, addr: int, limit: int = PATH_MAX, _pread=os.pread) -> bytes:
    """The NUL-terminated string at `addr` (without the NUL). EFAULT / ENAMETOOLONG like the kernel."""
    fd = t.memfd
    out = b""
    n = 4096 - (addr & 4095)
    if n > FIRST_CHUNK:
        n = FIRST_CHUNK                 # most paths are short: copy less
    while True:
        try:
            chunk = _pread(fd, n, addr) if fd >= 0 else ffi.vm_read(t.pid, addr, n)
        except (OSError, OverflowError, ValueError):
            chunk = b""
        if not chunk:
            raise OSError(errno.EFAULT, "bad address")
        i = chunk.find(0)
        if i >= 0:
            out += chunk[:i]
            if len(out) >= limit:
                raise OSError(errno.ENAMETOOLONG, "name too long")
            return out
        out += chunk
        if len(out) >= limit:
            raise OSError(errno.ENAMETOOLONG, "name too long")
        addr += len(chunk)
        n = 4096 - (addr & 4095)


def read_words(t, addr: int, max_words: int = 1 << 20) -> list[int]:
    """A NULL-terminated array of pointers (argv, envp): the pointers, without the final NULL.
    Read FIRST_WORDS at first (most argv arrays are short), then up to a page at a time."""
    out: list[int] = []
    n = (4096 - (addr & 4095)) // 8 or 1
    if n > FIRST_WORDS:
        n = FIRST_WORDS
    while True:
        words = memoryview(read(t, addr, n * 8)).cast("Q").tolist()
        try:
            end = words.index(0)
        except ValueError:
            end = -1
        if end >= 0:
            out += words[:end]
            if len(out) > max_words:
                break
            return out
        out += words
        if len(out) >= max_words:
            break
        addr += n * 8
        n = (4096 - (addr & 4095)) // 8 or 1
    raise OSError(errno.E2BIG, "argument list too long")


# Kernels before 2.6.39 open /proc/PID/mem for writing but refuse the write (EINVAL): from the
# first such refusal on, writes go through ffi.vm_write (process_vm_writev, else PTRACE_POKEDATA).
_no_mem_writes = False


def write(t, addr: int, data: bytes, _pwrite=os.pwrite) -> None:
    global _no_mem_writes
    fd = t.memfd
    try:
        n = _pwrite(fd, data, addr) if fd >= 0 and not _no_mem_writes \
            else ffi.vm_write(t.pid, addr, data)
    except (OSError, OverflowError, ValueError) as e:
        n = -1
        if fd >= 0 and isinstance(e, OSError) and e.errno == errno.EINVAL and not _no_mem_writes:
            _no_mem_writes = True
            try:
                n = ffi.vm_write(t.pid, addr, data)
            except (OSError, OverflowError, ValueError):
                pass
    if n != len(data):
        raise OSError(errno.EFAULT, "cannot write tracee memory")


def push(t, data: bytes) -> int:
    """Write `data` below the scratch pointer (set by the loop to rsp - red zone); return its address.

    When the stack is not writable there, the tracee's own scratch area is used (NeedScratch when
    it has none yet)."""
    addr = (t.scratch - len(data)) & ~15
    try:
        write(t, addr, data)
    except OSError:
        addr = _area_addr(t, len(data))
        write(t, addr, data)
    t.scratch = addr
    return addr


def push_built(t, size: int, build) -> int:
    """`push` for data that holds pointers into itself: `build(address)` gives the `size` bytes to
    write at `address`. Returns the address."""
    addr = (t.scratch - size) & ~15
    try:
        write(t, addr, build(addr))
    except OSError:
        addr = _area_addr(t, size)
        write(t, addr, build(addr))
    t.scratch = addr
    return addr


def _area_addr(t, size: int) -> int:
    """Where `size` bytes go in the tracee's scratch area (the stack was not writable)."""
    area = t.area
    if area <= 0:
        if area == 0:
            raise NeedScratch() from None
        raise OSError(errno.EFAULT, "cannot write tracee memory")
    if not area < t.scratch <= area + AREA_SIZE:
        t.scratch = area + AREA_SIZE
    addr = (t.scratch - size) & ~15
    if addr < area:
        raise OSError(errno.E2BIG, "too much data for the scratch area") from None
    return addr


def push_cstring(t, s: bytes) -> int:
    return push(t, s + b"\0")
