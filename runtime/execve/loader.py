"""carryon's own program loader (`loader.c`): what a guest's dynamic program is exec'd through.

The kernel reads PT_INTERP on the host, so a dynamic guest program cannot be exec'd as is. Instead of
exec'ing the guest's loader with the program as its argument (`ld.so --argv0 ARGV0 PROGRAM ...`: the
process then shows the loader's argv, comm and auxv, and musl's loader loses argv[0]), the tracer
execs `carryon-loader` with the guest's argv and envp unchanged (runtime/execve/plan.py). The kernel
then gives the process exactly the argv, /proc/PID/cmdline and /proc/PID/environ of the program;
the loader maps the program and its PT_INTERP loader, fixes the auxiliary vector, comm and brk,
and jumps to the interpreter (see loader.c).

The hand-over: the loader's first system call is `LOADER_CALL(buffer, size)` (tuxcall, ENOSYS
natively; the seccomp filter stops on it). The tracer writes the record `encode` makes into the
buffer and turns the call into `openat(AT_FDCWD, <the program's host path in that buffer>,
O_RDONLY|O_CLOEXEC)`: no path of the host ever reaches the guest's memory beyond that buffer,
which the loader unmaps. The record is made at the execve stop (runtime/syscall/enter.py); the
native stop loop keeps a copy (`cf_load`) and answers the call itself, so the common exec costs
no stop in Python; Python answers it otherwise (`Tracee.load`). Nothing goes through argv or the
environment.

Under the plain ptrace engine every system call stops twice (in Python): there the record says
PLAIN, the tracer lets the loader run without stops after that call, the loader opens the
interpreter by the host path the record holds, and stops once (an int3: SIGTRAP, which the tracer
swallows) before it jumps to it. Everything after that is traced again.

The kernel's AT_EXECFN string is the path it exec'd: the tracer pads the loader's path with
slashes (`exec_path`) so the guest's filename fits there, and the loader writes it in place.

`path()` is the loader to use, or None: `CARRYON_LOADER=0`, or no loader could be had (a source
checkout builds it in scripts/setup-env.sh; the frozen runtime ships it; an installed copy builds it
once into the user's cache when a C compiler is there, like the native stop loop). Without it the
tracer falls back to the guest loader's `--argv0` (runtime/execve/plan.py).
"""

from __future__ import annotations

import os
import sys

NR = 184                    # tuxcall: the loader's call to the tracer (loader.c LOADER_CALL)
MAGIC = 0x52444C43          # "CLDR"
IDS = 1                     # flags: the ids in the record are the guest's (faked) ids
PLAIN = 2                   # flags: the plain ptrace engine lets the loader run without stops
                            # until its int3 (so it opens the interpreter by its host path)
INFO_SIZE = 12288           # the loader's buffer
HEADER = 44                 # 11 little-endian u32: magic, flags, ruid, euid, rgid, egid, the
                            # offsets of execfn, comm, host path; the record's size; the offset
                            # of the interpreter's host path
ADDRESS = 0x600000000000    # where the loader is linked: far from programs, PIEs and the mmap area
O_RDONLY_CLOEXEC = 0o2000000
NR_OPENAT = 257
AT_FDCWD = (1 << 64) - 100
HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "loader.c")
BINARY = os.path.join(HERE, "carryon-loader")
PATH_MAX = 4096


def encode(execfn: bytes, comm: bytes, host: bytes, interp: bytes,
           ids: tuple[int, int, int, int] | None) -> bytes:
    """The record for the loader's buffer: the guest's execve filename (AT_EXECFN), its comm name
    (15 bytes at most, as the kernel keeps), the program's host path (the openat the call becomes),
    its interpreter's host path (opened by the loader itself under the plain ptrace engine), and
    (ruid, euid, rgid, egid) when the ids are faked (runtime.extension.fake_id)."""
    comm = comm[:15]
    off_execfn = HEADER
    off_comm = off_execfn + len(execfn) + 1
    off_path = off_comm + len(comm) + 1
    off_interp = off_path + len(host) + 1
    size = off_interp + len(interp) + 1
    words = [MAGIC, IDS if ids is not None else 0, *(ids or (0, 0, 0, 0)), off_execfn, off_comm,
             off_path, size, off_interp]
    return b"".join([b"".join((w & 0xFFFFFFFF).to_bytes(4, "little") for w in words),
                     execfn, b"\0", comm, b"\0", host, b"\0", interp, b"\0"])


def path_offset(record: bytes) -> int:
    return int.from_bytes(record[32:36], "little")


def plain(record: bytes) -> bytes:
    """The record with the PLAIN flag (the plain ptrace engine's copy)."""
    return record[:4] + (int.from_bytes(record[4:8], "little") | PLAIN).to_bytes(4, "little") + record[8:]


def exec_path(loader: str, room: int) -> str:
    """`loader`'s path padded with slashes to at least `room` bytes (the kernel's AT_EXECFN
    string, which the loader overwrites with the guest's filename of that length)."""
    short = room - len(loader)
    if short <= 0:
        return loader
    head, _, name = loader.rpartition("/")
    return head + "/" * (short + 1) + name


def comm_of(execfn: bytes) -> bytes:
    """The comm name the kernel gives a process exec'd by that filename: its last component."""
    return execfn.rpartition(b"/")[2][:15]


_path: str | None | bool = False


def path() -> str | None:
    """The loader binary to exec, or None (see the module docstring). Looked up once."""
    global _path
    if _path is False:
        _path = _find()
    return _path        # type: ignore[return-value]


def _find() -> str | None:
    from runtime.compiled import find
    return find(BINARY, SOURCE, "CARRYON_LOADER", "carryon-loader-{}", build)


def build(dest: str = BINARY, cc: list[str] | None = None) -> str:
    """Compile loader.c into `dest` (atomically); returns dest. OSError with the compiler's
    message on failure."""
    from runtime.tracee.native import compile_c
    return compile_c(dest, ["-Os", "-static", "-nostdlib", "-fpie", "-no-pie", "-ffreestanding",
                            "-fno-builtin", "-fno-stack-protector", "-fno-asynchronous-unwind-tables",
                            "-Wall", "-Wextra", "-Werror", f"-Wl,-Ttext-segment={ADDRESS:#x}",
                            "-Wl,--build-id=none", "-Wl,-z,noexecstack"], [SOURCE], "the loader", cc)


if __name__ == "__main__":          # python -m runtime.execve.loader [DEST]: build the loader
    try:
        print(build(sys.argv[1] if sys.argv[1:] else BINARY))
    except OSError as e:
        sys.exit(f"carryon: {e}")
