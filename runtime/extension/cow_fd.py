"""Copy-on-write for changes made through a file descriptor (runtime/path/overlay.py).

Path calls are made the run's own before they run (runtime/syscall/enter.py). A descriptor the guest
opened for reading on an image file still names the image's inode, so `fchmod`, `fchown`,
`fsetxattr`, `fremovexattr` and the `AT_EMPTY_PATH`/NULL-path forms of `fchmodat2`, `fchownat`,
`utimensat`, `setxattrat`, `removexattrat` on it would change the cache entry. This extension, on
runs with copy-on-write only (no stop for anyone else), copies the file up first and then:
- rewrites the `*at` forms to act on the copy's path (dirfd AT_FDCWD, no AT_EMPTY_PATH);
- does the pure descriptor calls itself on the copy and skips them (the guest gets their result).
The descriptor itself keeps naming the image's inode (its `fstat` shows the old metadata), as said
in runtime/path/overlay.py. A descriptor opened for writing names the run's copy already.
"""

from __future__ import annotations

import os

from runtime.extension import CHANGED, SKIP, Base
from runtime.syscall.sysnums import NUMBERS as N
from runtime.tracee import mem
from runtime.tracee.ffi import ARG, R_ORIG_RAX

AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
NOCHANGE = 0xFFFFFFFF
XATTR_NAME_MAX = 255
XATTR_SIZE_MAX = 65536

_PURE = {N["fchmod"]: "chmod", N["fchown"]: "chown", N["fsetxattr"]: "setxattr",
         N["fremovexattr"]: "removexattr"}
# *at calls: number -> (dirfd arg, path arg, flags arg); utimensat's NULL path means the fd too
_AT = {N["fchmodat2"]: (0, 1, 3), N["fchownat"]: (0, 1, 4), N["utimensat"]: (0, 1, 3),
       N["setxattrat"]: (0, 1, 2), N["removexattrat"]: (0, 1, 2)}
_UTIMENSAT = N["utimensat"]


class CowFd(Base):
    def __init__(self) -> None:
        self.enter_calls = frozenset(_PURE) | frozenset(_AT)

    def _copy(self, t, fd: int) -> str | None:
        """The host path of the run's own copy of what `fd` names, made now if it still is the image's
        file; None when there is nothing to copy (not an image file, a socket, a pipe...)."""
        m = t.mapper
        cow = m.cow if m is not None else None
        if cow is None:
            return None
        link = f"/proc/{t.pid}/fd/{fd}"
        try:
            host = os.readlink(link)
            st = os.stat(link)
        except OSError:
            return None                 # EBADF and the like: the kernel says so
        if not cow.in_lower(host) and (st.st_dev, st.st_ino) not in cow.linked:
            return None
        g = m.to_guest(host)
        if g is None:
            return None
        return cow.modify("" if g == "/" else g, host)

    def enter(self, t, regs) -> int:
        nr = regs[R_ORIG_RAX]
        what = _PURE.get(nr)
        if what is not None:
            new = self._copy(t, regs[ARG[0]] & 0xFFFFFFFF)
            if new is None:
                return 0
            try:
                if what == "chmod":
                    os.chmod(new, regs[ARG[1]] & 0o7777)
                elif what == "chown":
                    u, g = regs[ARG[1]] & 0xFFFFFFFF, regs[ARG[2]] & 0xFFFFFFFF
                    os.chown(new, -1 if u == NOCHANGE else u, -1 if g == NOCHANGE else g)
                elif what == "setxattr":
                    name = mem.read_cstring(t, regs[ARG[1]])[:XATTR_NAME_MAX + 1]
                    size = regs[ARG[3]]
                    if size > XATTR_SIZE_MAX:
                        raise OSError(7, "argument list too long")     # E2BIG
                    value = mem.read(t, regs[ARG[2]], size) if size else b""
                    os.setxattr(new, name, value, regs[ARG[4]] & 0xFFFFFFFF)
                else:
                    os.removexattr(new, mem.read_cstring(t, regs[ARG[1]])[:XATTR_NAME_MAX + 1])
                t.ret = 0
            except OSError as e:
                t.ret = -(e.errno or 5)
            return SKIP
        dirfd_arg, path_arg, flags_arg = _AT[nr]
        addr = regs[ARG[path_arg]]
        if addr:
            if not regs[ARG[flags_arg]] & AT_EMPTY_PATH:
                return 0                # a path: made the run's own by the path handler
            try:
                if mem.read_cstring(t, addr):
                    return 0
            except OSError:
                return 0
        elif nr != _UTIMENSAT:
            return 0                    # a NULL path means the fd for utimensat only
        fd = regs[ARG[dirfd_arg]] & 0xFFFFFFFF
        if fd == AT_FDCWD & 0xFFFFFFFF:
            return 0
        new = self._copy(t, fd)
        if new is None:
            return 0
        regs[ARG[path_arg]] = mem.push(t, os.fsencode(new) + b"\0")
        regs[ARG[dirfd_arg]] = AT_FDCWD & 0xFFFFFFFFFFFFFFFF
        regs[ARG[flags_arg]] &= ~AT_EMPTY_PATH & 0xFFFFFFFFFFFFFFFF
        return CHANGED
