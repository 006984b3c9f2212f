"""`-0`: what PRoot's fake root makes succeed besides ids and owners (runtime.extension.fake_id),
so that `dpkg`/`apt-get install` and `setcap` work without privileges. Only while the guest process's
(fake) effective uid is 0; a process that dropped to another uid gets the kernel's answers.

- mknod/mknodat of a character or block device: when the kernel refuses it (EPERM: no CAP_MKNOD;
  real root gets a real node), the tracer creates an empty regular file there instead (the guest's
  permission bits and umask; EEXIST, ENOENT... stay the kernel's, which checks them first) and the
  call succeeds. stat/lstat/fstat/newfstatat/statx of that inode then show the device type and its
  rdev (as the extraction does for the image's device nodes).
- setxattr/lsetxattr/fsetxattr of a `security.*` or `trusted.*` attribute (`security.capability`
  is setcap's): when the kernel refuses it (EPERM, or EOPNOTSUPP), the value is kept for the inode
  (XATTR_CREATE / XATTR_REPLACE checked against what is kept) and the call succeeds;
  getxattr/lgetxattr/fgetxattr answer it, listxattr/llistxattr/flistxattr add its name to the
  kernel's list, removexattr/lremovexattr/fremovexattr remove it. A later successful real set of
  the same name drops the kept value (the kernel has it then).

Everything is keyed by inode (st_dev, st_ino) like fake_id's owners (a rename keeps it; removing
the last name forgets it), in the tracer's memory for the run, as PRoot does. The calls are hooked
only with `-0`: the path ones stop anyway, the descriptor ones (fsetxattr...) stop only then.
`setxattrat` and its siblings (Linux 6.13) are not emulated.
"""

from __future__ import annotations

import errno
import os
import stat

from runtime.extension.fake_id import EUID, FakeId, Key, target_stat
from runtime.spec import RunSpec
from runtime.syscall.sysnums import NUMBERS as N
from runtime.tracee import mem
from runtime.tracee.actions import CHANGED, EXIT, SKIP
from runtime.tracee.ffi import ARG, R_ORIG_RAX, R_RAX

M64 = (1 << 64) - 1
S_IFMT = 0o170000
XATTR_CREATE, XATTR_REPLACE = 1, 2
XATTR_NAME_MAX = 255
XATTR_SIZE_MAX = 65536
PRIVILEGED = (b"security.", b"trusted.")
REFUSED = (-errno.EPERM & M64, -errno.EOPNOTSUPP & M64)

# mknod-like calls: number -> (path argument, dirfd argument, mode argument, dev argument)
_MKNOD = {N["mknod"]: (0, None, 1, 2), N["mknodat"]: (1, 0, 2, 3)}
# xattr calls: number -> (what they name: see fake_id.target_stat)
_SET = {N["setxattr"]: (0, None, None, True), N["lsetxattr"]: (0, None, None, False),
        N["fsetxattr"]: (None, 0, None, True)}
_GET = {N["getxattr"]: (0, None, None, True), N["lgetxattr"]: (0, None, None, False),
        N["fgetxattr"]: (None, 0, None, True)}
_LIST = {N["listxattr"]: (0, None, None, True), N["llistxattr"]: (0, None, None, False),
         N["flistxattr"]: (None, 0, None, True)}
_REMOVE = {N["removexattr"]: (0, None, None, True), N["lremovexattr"]: (0, None, None, False),
           N["fremovexattr"]: (None, 0, None, True)}
_XATTR = {**_SET, **_GET, **_LIST, **_REMOVE}


class FakeRoot(FakeId):
    def __init__(self, spec: RunSpec) -> None:
        super().__init__(spec)
        self.devices: dict[Key, tuple[int, int]] = {}          # inode -> (S_IFCHR/S_IFBLK, rdev)
        self.xattrs: dict[Key, dict[bytes, bytes]] = {}         # inode -> {name: value}
        self.enter_calls = self.enter_calls | frozenset(_MKNOD) | frozenset(_XATTR)
        for nr in _MKNOD:
            self._handlers[nr] = self._mknod
            self._exits[nr] = self._mknod_exit
        for nr in _SET:
            self._handlers[nr] = self._setxattr
            self._exits[nr] = self._setxattr_exit
        for nr in _GET:
            self._handlers[nr] = self._getxattr
        for nr in _LIST:
            self._handlers[nr] = self._listxattr
            self._exits[nr] = self._listxattr_exit
        for nr in _REMOVE:
            self._handlers[nr] = self._removexattr

    def remembers(self, key: Key) -> bool:
        return key in self.chowned or key in self.devices or key in self.xattrs

    def remembers_any(self) -> bool:
        return bool(self.devices or self.xattrs)

    def forget(self, key: Key) -> None:
        super().forget(key)
        self.devices.pop(key, None)
        self.xattrs.pop(key, None)

    def _root(self, t) -> bool:
        return self._state(t)[EUID] == 0

    # ---- device nodes -----------------------------------------------------------------------
    def _mknod(self, t, regs, nr) -> int:
        mode = regs[ARG[_MKNOD[nr][2]]] & 0xFFFFFFFF
        if (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)) and self._root(t):
            return EXIT
        return 0

    def _mknod_exit(self, t, regs) -> int:
        if regs[R_RAX] != -errno.EPERM & M64:
            return 0
        path_arg, dirfd_arg, mode_arg, dev_arg = _MKNOD[regs[R_ORIG_RAX]]
        raw = mem.read_cstring(t, regs[ARG[path_arg]])
        if raw[:1] == b"/":
            name = os.fsdecode(raw)
        else:
            fd = regs[ARG[dirfd_arg]] & 0xFFFFFFFF if dirfd_arg is not None else 0xFFFFFF9C
            base = f"/proc/{t.pid}/cwd" if fd == 0xFFFFFF9C else f"/proc/{t.pid}/fd/{fd}"
            name = base + "/" + os.fsdecode(raw)
        mode = regs[ARG[mode_arg]] & 0xFFFFFFFF
        # the kernel checked the name (EEXIST, ENOENT, EACCES come before EPERM): create the
        # placeholder; an error here (a race) is the guest's result
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, mode & 0o7777 & ~_umask(t.pid))
            st = os.fstat(fd)
        finally:
            os.close(fd)
        self.devices[(st.st_dev, st.st_ino)] = (stat.S_IFMT(mode), regs[ARG[dev_arg]] & 0xFFFFFFFF)
        regs[R_RAX] = 0
        return CHANGED

    def stat_more(self, t, buf: int, head: bytes, key: Key, is_statx: bool) -> None:
        dev = self.devices.get(key)
        if dev is None:
            return
        kind, rdev = dev
        try:
            if is_statx:
                mode = int.from_bytes(head[28:30], "little")
                mem.write(t, buf + 28, ((mode & ~S_IFMT) | kind).to_bytes(2, "little"))
                mem.write(t, buf + 128, os.major(rdev).to_bytes(4, "little") + os.minor(rdev).to_bytes(4, "little"))
            else:
                mode = int.from_bytes(head[24:28], "little")
                mem.write(t, buf + 24, ((mode & ~S_IFMT) | kind).to_bytes(4, "little"))
                mem.write(t, buf + 40, rdev.to_bytes(8, "little"))
        except OSError:
            pass

    # ---- extended attributes ------------------------------------------------------------------
    @staticmethod
    def _name(t, regs) -> bytes:
        return mem.read_cstring(t, regs[ARG[1]], XATTR_NAME_MAX + 1)

    def _kept(self, t, regs, nr) -> tuple[Key | None, dict[bytes, bytes] | None]:
        """(inode, the attributes kept for it) of the object an xattr call names."""
        st = target_stat(t, regs, _XATTR[nr])
        if st is None:
            return None, None
        key = (st.st_dev, st.st_ino)
        return key, self.xattrs.get(key)

    def _setxattr(self, t, regs, nr) -> int:
        name = self._name(t, regs)
        return EXIT if name.startswith(PRIVILEGED) and self._root(t) else 0

    def _setxattr_exit(self, t, regs) -> int:
        ret = regs[R_RAX]
        nr = regs[R_ORIG_RAX]
        if ret == 0:
            if self.xattrs:         # the kernel has it now: what was kept is stale
                key, kept = self._kept(t, regs, nr)
                if kept is not None:
                    kept.pop(self._name(t, regs), None)
            return 0
        if ret not in REFUSED:
            return 0
        name = self._name(t, regs)
        size = regs[ARG[3]]
        flags = regs[ARG[4]] & 0xFFFFFFFF
        if size > XATTR_SIZE_MAX:
            raise OSError(errno.E2BIG, "value too large")
        value = mem.read(t, regs[ARG[2]], size) if size else b""
        key, kept = self._kept(t, regs, nr)
        if key is None:
            return 0
        have = kept is not None and name in kept
        if flags & XATTR_CREATE and have:
            raise OSError(errno.EEXIST, "attribute exists")
        if flags & XATTR_REPLACE and not have:
            raise OSError(errno.ENODATA, "no such attribute")
        self.xattrs.setdefault(key, {})[name] = value
        regs[R_RAX] = 0
        return CHANGED

    def _getxattr(self, t, regs, nr) -> int:
        if not self.xattrs:
            return 0
        name = self._name(t, regs)
        if not name.startswith(PRIVILEGED):
            return 0
        _key, kept = self._kept(t, regs, nr)
        if kept is None or name not in kept:
            return 0
        value = kept[name]
        size = regs[ARG[3]]
        if size:
            if size < len(value):
                raise OSError(errno.ERANGE, "buffer too small")
            mem.write(t, regs[ARG[2]], value)
        t.ret = len(value)
        return SKIP

    def _listxattr(self, t, regs, nr) -> int:
        return EXIT if self.xattrs else 0

    def _listxattr_exit(self, t, regs) -> int:
        ret = regs[R_RAX]
        if ret >= 1 << 63:
            return 0
        _key, kept = self._kept(t, regs, regs[R_ORIG_RAX])
        if not kept:
            return 0
        buf, size = regs[ARG[1]], regs[ARG[2]]
        have = set(mem.read(t, buf, ret).split(b"\0")) if size and ret else set()
        extra = b"".join(n + b"\0" for n in kept if n not in have)
        if size:
            if ret + len(extra) > size:
                raise OSError(errno.ERANGE, "buffer too small")
            mem.write(t, buf + ret, extra)
        regs[R_RAX] = ret + len(extra)
        return CHANGED

    def _removexattr(self, t, regs, nr) -> int:
        if not self.xattrs:
            return 0
        name = self._name(t, regs)
        key, kept = self._kept(t, regs, nr)
        if key is None or kept is None or name not in kept:
            return 0
        del kept[name]
        if not kept:
            del self.xattrs[key]
        t.ret = 0
        return SKIP


def _umask(pid: int) -> int:
    """The process's umask (/proc/PID/status, Linux 4.7+; 0o022 when it is not there)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022

