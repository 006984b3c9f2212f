"""`-k RELEASE` (PRoot's `--kernel-release`): the guest's `uname(2)` reports RELEASE as the kernel
release (programs built against a newer glibc than the node's kernel check it: "FATAL: kernel too
old").

RELEASE is either a plain release string (`3.10.0`), or PRoot's full form
`\\SYSNAME\\NODENAME\\RELEASE\\VERSION\\MACHINE\\DOMAINNAME\\` with an optional seventh field (PRoot's
hwcap, accepted and ignored) before the closing backslash; an empty field keeps the real value. Each
value is cut to 64 bytes (the kernel's field size, 65 with the NUL).

Only `uname` stops (the seccomp filter traps it only when this extension is active): at its exit,
when the kernel succeeded, the chosen fields of the guest's `struct utsname` are overwritten. The
system calls PRoot's kompat extension also rewrites for kernels older than the release (accept4 as
accept, ...) are not emulated: every kernel carryon runs on has them.
"""

from __future__ import annotations

from runtime.errors import CarryonError
from runtime.extension import Base
from runtime.syscall.sysnums import NUMBERS as N
from runtime.tracee import mem
from runtime.tracee.actions import EXIT
from runtime.tracee.ffi import ARG, R_RAX

FIELD = 65          # bytes per field of struct new_utsname (x86_64 and the other ABIs alike)
NFIELDS = 6         # sysname, nodename, release, version, machine, domainname


def parse_release(value: str) -> dict[int, bytes]:
    """{field index: new value} for a `-k` argument; CarryonError when it is malformed."""
    if not value.startswith("\\"):
        if not value:
            raise CarryonError("-k: empty kernel release")
        return {2: value.encode()[:FIELD - 1]}
    parts = value.split("\\")
    # "\a\b\c\d\e\f\" splits into ['', a, b, c, d, e, f, '']; a hwcap field makes one more
    if len(parts) not in (NFIELDS + 2, NFIELDS + 3) or parts[-1] != "":
        raise CarryonError(f"-k {value}: expected RELEASE or "
                           "\\SYSNAME\\NODENAME\\RELEASE\\VERSION\\MACHINE\\DOMAINNAME\\")
    return {i: p.encode()[:FIELD - 1] for i, p in enumerate(parts[1:NFIELDS + 1]) if p}


class KernelRelease(Base):
    def __init__(self, value: str) -> None:
        self.fields = parse_release(value)
        self.enter_calls = frozenset({N["uname"]})

    def enter(self, t, regs) -> int:
        return EXIT

    def exit(self, t, regs) -> int:
        buf = regs[ARG[0]]
        if regs[R_RAX] != 0 or not buf:
            return 0
        for i, v in self.fields.items():
            try:
                mem.write(t, buf + i * FIELD, v.ljust(FIELD, b"\0"))
            except OSError:     # the kernel wrote there: it is writable; a race with munmap only
                return 0
        return 0
