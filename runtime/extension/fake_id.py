"""`-0` / `-i UID:GID`: the guest sees the identity it asks for, not the real one.

- getuid/geteuid/getgid/getegid/getresuid/getresgid/getgroups answer from a per-process identity
  (inherited by children), starting at UID:GID with groups [GID];
- setuid/setgid/setreuid/setregid/setresuid/setresgid/setfsuid/setfsgid/setgroups change that
  identity and succeed (gosu, su, setpriv entrypoints), capset succeeds;
- chown/fchown/lchown/fchownat (AT_EMPTY_PATH, AT_SYMLINK_NOFOLLOW too) succeed: the call runs with
  owner and group -1 (so a missing file still fails with ENOENT) and the requested owner is
  remembered for the file's inode (st_dev, st_ino), so a rename or another hard link keeps it (dpkg
  chowns `X.dpkg-new`, then renames it); an unlink, rmdir or rename over it that removes the inode's
  last name forgets it (a later file on the same inode number is a new file);
- stat/fstat/lstat/newfstatat/statx show a remembered chown, else the owner recorded in the image
  (the extraction metadata `DIR.carryon-meta.json`) for files of the image, or, for a file of the
  rootfs that the extracting user owns (created at run time), the guest's effective uid/gid.
- an execve of a set-user-ID (set-group-ID with group execute) program, as the guest sees its owner
  (a remembered chown, else the image's owner), sets the effective and saved ids as the kernel
  would; every exec sets the saved ids to the effective ones. The new ids reach the program's
  auxiliary vector too (AT_UID, AT_EUID, AT_GID, AT_EGID; AT_SECURE when effective and real
  differ) through carryon's loader (runtime.execve.loader), and the state changes only once the
  exec succeeded (`Tracee.pending_ext`).
Nothing changes for real: files keep the real user as owner, and permission checks stay the
kernel's for the real user. What is remembered lives in the tracer's memory for the run (as PRoot
does). `-0` adds runtime.extension.fake_root (device nodes, privileged xattrs) on top of this.
"""

from __future__ import annotations

import os
import stat

from runtime.cache import json_loads  # json without `re` (start-up)
from runtime.extension import Base
from runtime.spec import RunSpec
from runtime.syscall.sysnums import NUMBERS as N
from runtime.tracee import mem
from runtime.tracee.actions import CHANGED, EXIT, SKIP
from runtime.tracee.ffi import ARG, R_ORIG_RAX, R_RAX

KEY = "fake_id"
GONE = "fake_id.gone"       # t.ext: the inode an unlink/rename in flight removes
NOCHANGE = 0xFFFFFFFF
AT_EMPTY_PATH = 0x1000
AT_SYMLINK_NOFOLLOW = 0x100
AT_FDCWD = -100
RENAME_EXCHANGE = 2

# state list indices
RUID, EUID, SUID, FSUID, RGID, EGID, SGID, FSGID, GROUPS = range(9)

_GET = {N["getuid"]: RUID, N["geteuid"]: EUID, N["getgid"]: RGID, N["getegid"]: EGID}
# stat-like calls: number -> (index of the buffer argument, is it a struct statx)
_STAT = {N["stat"]: (1, False), N["lstat"]: (1, False), N["fstat"]: (1, False),
         N["newfstatat"]: (2, False), N["statx"]: (4, True)}
STAT_HEAD = 48          # struct stat up to st_rdev: dev 0, ino 8, nlink 16, mode 24, uid 28, gid 32, rdev 40
STATX_HEAD = 144        # struct statx up to stx_dev_minor: mask 0, uid 20, gid 24, mode 28, ino 32, rdev 128
STATX_INO = 0x100       # stx_mask bit: stx_ino is valid
# chown-like calls: number -> (index of the uid argument, index of the gid argument)
_CHOWN = {N["chown"]: (1, 2), N["lchown"]: (1, 2), N["fchown"]: (1, 2), N["fchownat"]: (2, 3)}
# which object a call names: number -> (path argument, dirfd argument, flags argument, follows the
# last symlink); see `target_stat`
TARGET = {
    N["chown"]: (0, None, None, True), N["lchown"]: (0, None, None, False),
    N["fchown"]: (None, 0, None, True), N["fchownat"]: (1, 0, 4, True),
    N["unlink"]: (0, None, None, False), N["rmdir"]: (0, None, None, False),
    N["unlinkat"]: (1, 0, None, False), N["rename"]: (1, None, None, False),
    N["renameat"]: (3, 2, None, False), N["renameat2"]: (3, 2, None, False),
}
# the calls that may remove an inode's last name (the target of a rename)
_REMOVE = (N["unlink"], N["rmdir"], N["unlinkat"], N["rename"], N["renameat"], N["renameat2"])
Key = tuple[int, int]   # (st_dev, st_ino)


def _u32(v: int) -> int:
    return v & 0xFFFFFFFF


def stat_key(head: bytes) -> Key:
    """(st_dev, st_ino) of a struct stat's head."""
    return int.from_bytes(head[0:8], "little"), int.from_bytes(head[8:16], "little")


def statx_key(head: bytes) -> Key | None:
    """(st_dev, st_ino) of a struct statx's head, encoded as stat(2) does (None without stx_ino)."""
    if not int.from_bytes(head[0:4], "little") & STATX_INO:
        return None
    return (os.makedev(int.from_bytes(head[136:140], "little"), int.from_bytes(head[140:144], "little")),
            int.from_bytes(head[32:40], "little"))


def target_stat(t, regs, where: tuple[int | None, int | None, int | None, bool]) -> os.stat_result | None:
    """The stat of the object a call names, seen from the tracer (None when there is none). Runs
    at the enter stop after the engine's translation (an absolute path is a host path; a relative
    one is relative to a dirfd the engine left alone) or at the exit stop (the arguments are intact)."""
    path_arg, dirfd_arg, flags_arg, follow = where
    raw = b""
    if path_arg is not None:
        addr = regs[ARG[path_arg]]
        raw = mem.read_cstring(t, addr) if addr else b""
    if flags_arg is not None:
        flags = regs[ARG[flags_arg]]
        if flags & AT_SYMLINK_NOFOLLOW:
            follow = False
        if not raw and not flags & AT_EMPTY_PATH:
            return None
    elif path_arg is not None and not raw:
        return None
    if raw and raw[0] == 47:
        name = os.fsdecode(raw)
    else:
        fd = regs[ARG[dirfd_arg]] & 0xFFFFFFFF if dirfd_arg is not None else AT_FDCWD
        if fd >= 0x80000000:
            fd -= 1 << 32
        base = f"/proc/{t.pid}/cwd" if fd == AT_FDCWD else f"/proc/{t.pid}/fd/{fd}"
        name = base + "/" + os.fsdecode(raw) if raw else base
        follow = follow or not raw      # the descriptor's own object
    try:
        return os.stat(name, follow_symlinks=follow)
    except (OSError, ValueError):
        return None


class FakeId(Base):
    def __init__(self, spec: RunSpec) -> None:
        uid = spec.uid if spec.uid is not None else os.getuid()
        gid = spec.gid if spec.gid is not None else os.getgid()
        self.initial = [uid, uid, uid, uid, gid, gid, gid, gid, (gid,)]
        self.meta_path = spec.meta_path
        self._meta: dict[str, tuple[int, int]] | None = None
        self.chowned: dict[Key, tuple[int, int]] = {}
        self.real_uid = os.getuid()
        self.real_gid = os.getgid()
        calls = set(_GET) | set(_STAT) | set(_CHOWN) | set(_REMOVE)
        calls |= {N[n] for n in ("getresuid", "getresgid", "getgroups", "setuid", "setgid",
                                 "setreuid", "setregid", "setresuid", "setresgid", "setfsuid",
                                 "setfsgid", "setgroups", "capset")}
        self.enter_calls = frozenset(calls)
        self._handlers = {
            N["getresuid"]: self._getres, N["getresgid"]: self._getres,
            N["getgroups"]: self._getgroups, N["setgroups"]: self._setgroups,
            N["setuid"]: self._setid, N["setgid"]: self._setid,
            N["setreuid"]: self._setreid, N["setregid"]: self._setreid,
            N["setresuid"]: self._setresid, N["setresgid"]: self._setresid,
            N["setfsuid"]: self._setfsid, N["setfsgid"]: self._setfsid,
            N["capset"]: self._ok,
        }
        for nr in _REMOVE:
            self._handlers[nr] = self._remove
        # exit-stop handlers by call number (subclasses add theirs)
        self._exits = {nr: self._stat_exit for nr in _STAT}
        for nr in _REMOVE:
            self._exits[nr] = self._remove_exit

    # ---- state ------------------------------------------------------------------------------
    def _state(self, t) -> list:
        st = t.ext.get(KEY)
        if st is None:
            st = t.ext[KEY] = list(self.initial)
        return st

    def fork(self, parent, child) -> None:
        child.ext[KEY] = list(self._state(parent))

    def meta(self) -> dict[str, tuple[int, int]]:
        if self._meta is None:
            self._meta = {}
            if self.meta_path:
                try:
                    with open(self.meta_path, encoding="utf-8") as f:
                        entries = json_loads(f.read()).get("entries", {})
                    self._meta = {p: (int(e.get("uid", 0)), int(e.get("gid", 0)))
                                  for p, e in entries.items()}
                except (OSError, ValueError, AttributeError):
                    self._meta = {}
        return self._meta

    def remembers(self, key: Key) -> bool:
        """Whether anything is remembered for this inode (subclasses remember more)."""
        return key in self.chowned

    def forget(self, key: Key) -> None:
        """The inode is gone: drop what is remembered for it."""
        self.chowned.pop(key, None)

    # ---- hooks ------------------------------------------------------------------------------
    def enter(self, t, regs) -> int:
        nr = regs[R_ORIG_RAX]
        idx = _GET.get(nr)
        if idx is not None:
            t.ret = self._state(t)[idx]
            return SKIP
        if nr in _STAT:
            return EXIT
        ch = _CHOWN.get(nr)
        if ch is not None:
            return self._chown(t, regs, nr, ch)
        h = self._handlers.get(nr)
        return h(t, regs, nr) if h is not None else 0

    def exit(self, t, regs) -> int:
        h = self._exits.get(regs[R_ORIG_RAX])
        return h(t, regs) if h is not None else 0

    def _stat_exit(self, t, regs) -> int:
        if regs[R_RAX] != 0:
            return 0
        nr = regs[R_ORIG_RAX]
        buf_arg, is_statx = _STAT[nr]
        buf = regs[ARG[buf_arg]]
        if not buf:
            return 0
        try:
            head = mem.read(t, buf, STATX_HEAD if is_statx else STAT_HEAD)
        except OSError:
            return 0
        key = statx_key(head) if is_statx else stat_key(head)
        owner = self.chowned.get(key) if key is not None else None
        if owner is None:
            owner = self._image_owner(t, regs, nr)
        if owner is not None:
            uid, gid = owner
            uoff = 20 if is_statx else 28
            show = True
            if uid == -1:       # "owned by the extracting user": show the guest's own identity
                show = int.from_bytes(head[uoff:uoff + 4], "little") == self.real_uid
                ids = self._state(t)
                uid, gid = ids[EUID], ids[EGID]
            if show:
                try:
                    mem.write(t, buf + uoff, _u32(uid).to_bytes(4, "little") + _u32(gid).to_bytes(4, "little"))
                except OSError:
                    return 0
        if key is not None:
            self.stat_more(t, buf, head, key, is_statx)
        return 0

    def stat_more(self, t, buf: int, head: bytes, key: Key, is_statx: bool) -> None:
        """Further changes to a stat result (runtime.extension.fake_root: device nodes)."""

    def _guest_path(self, t, regs, nr, path_arg: int | None, dirfd_arg: int | None,
                    flags_arg: int | None) -> tuple[str, str] | None:
        """(guest path, host path) of the object a stat/chown call names (after translation)."""
        host = None
        if path_arg is not None:
            addr = regs[ARG[path_arg]]
            raw = mem.read_cstring(t, addr) if addr else b""
            if raw and raw[0] == 47:
                host = os.fsdecode(raw)
            elif raw:
                return None         # left untranslated (relative to a non-guest dirfd)
            elif flags_arg is None or not regs[ARG[flags_arg]] & AT_EMPTY_PATH:
                return None
        if host is None:
            fd = regs[ARG[dirfd_arg if dirfd_arg is not None else 0]] & 0xFFFFFFFF
            try:
                host = os.readlink(f"/proc/{t.pid}/fd/{fd}")
            except OSError:
                return None
        guest = t.mapper.to_guest(host.rstrip("/") or "/")
        return None if guest is None else (guest, host)

    def _image_owner(self, t, regs, nr) -> tuple[int, int] | None:
        """The owner the image records for what a stat/chown call names, (-1, -1) for a file of
        the rootfs not in the image (the creator's), None outside the rootfs."""
        if nr == N["fstat"] or nr == N["fchown"]:
            gp = self._guest_path(t, regs, nr, None, 0, None)
        elif nr == N["newfstatat"]:
            gp = self._guest_path(t, regs, nr, 1, 0, 3)
        elif nr == N["statx"]:
            gp = self._guest_path(t, regs, nr, 1, 0, 2)
        elif nr == N["fchownat"]:
            gp = self._guest_path(t, regs, nr, 1, 0, 4)
        else:
            gp = self._guest_path(t, regs, nr, 0, None, None)
        if gp is None:
            return None
        guest, host = gp
        hit = self.meta().get(guest)
        if hit is not None:
            return hit
        if self._in_rootfs(t.mapper, host):
            return (-1, -1)
        return None

    @staticmethod
    def _in_rootfs(mapper, host: str) -> bool:
        for h, _g, _ro in mapper._owners:
            if host == h or host.startswith(h + "/") or not h:
                return h == mapper.root_host
        return False

    def _chown(self, t, regs, nr, ch) -> int:
        ua, ga = ch
        uid = regs[ARG[ua]] & 0xFFFFFFFF
        gid = regs[ARG[ga]] & 0xFFFFFFFF
        if uid != NOCHANGE or gid != NOCHANGE:
            st = target_stat(t, regs, TARGET[nr])
            if st is not None:
                key = (st.st_dev, st.st_ino)
                old = self.chowned.get(key)
                if old is None:
                    # the image's record as stat shows it; else (a file the guest made, or one
                    # outside the rootfs that is the caller's) the guest's ids, as stat shows it
                    old = self._image_owner(t, regs, nr)
                    if old is None and st.st_uid != self.real_uid:
                        old = (st.st_uid, st.st_gid)
                    elif old is None or old[0] == -1:
                        ids = self._state(t)
                        old = (ids[EUID], ids[EGID])
                self.chowned[key] = (old[0] if uid == NOCHANGE else uid,
                                     old[1] if gid == NOCHANGE else gid)
        regs[ARG[ua]] = NOCHANGE
        regs[ARG[ga]] = NOCHANGE
        return CHANGED

    def _remove(self, t, regs, nr) -> int:
        """unlink/rmdir/rename: when the call removes the last name of an inode something is
        remembered for, forget it once the call succeeded."""
        if not self.chowned and not self.remembers_any():
            return 0
        if nr == N["renameat2"] and regs[ARG[4]] & RENAME_EXCHANGE:
            return 0
        st = target_stat(t, regs, TARGET[nr])
        if st is None:
            return 0
        key = (st.st_dev, st.st_ino)
        if not self.remembers(key) or (st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode)):
            return 0
        t.ext[GONE] = key
        return EXIT

    def remembers_any(self) -> bool:
        """Whether anything at all is remembered besides owners (subclasses)."""
        return False

    def _remove_exit(self, t, regs) -> int:
        key = t.ext.pop(GONE, None)
        if key is not None and regs[R_RAX] == 0:
            self.forget(key)
        return 0

    # ---- exec ---------------------------------------------------------------------------------
    def exec_ids(self, t, plan) -> tuple[int, int, int, int]:
        """The ids after the exec `plan` (runtime.execve.plan.ExecPlan) goes through, as the
        kernel sets them (set-user/group-ID bits of the program as the guest sees its owner;
        saved ids = effective ones); noted in t.pending_ext for when it succeeds. Returns
        (ruid, euid, rgid, egid) for the program's auxiliary vector."""
        st = self._state(t)
        new = list(st)
        pst = plan.st
        if pst is not None and pst.st_mode & (stat.S_ISUID | stat.S_ISGID):
            owner = self.chowned.get((pst.st_dev, pst.st_ino)) or self.meta().get(plan.exe_guest)
            if owner is None or owner[0] == -1:
                owner = (st[EUID], st[EGID])    # a file of the run's own: the guest's
            if pst.st_mode & stat.S_ISUID:
                new[EUID] = owner[0]
            if pst.st_mode & stat.S_ISGID and pst.st_mode & stat.S_IXGRP:
                new[EGID] = owner[1]
        new[SUID] = new[FSUID] = new[EUID]
        new[SGID] = new[FSGID] = new[EGID]
        t.pending_ext = {KEY: new} if new != st else None
        return new[RUID], new[EUID], new[RGID], new[EGID]

    # ---- identity calls -------------------------------------------------------------------------
    def _ok(self, t, regs, nr) -> int:
        t.ret = 0
        return SKIP

    def _getres(self, t, regs, nr) -> int:
        st = self._state(t)
        base = RUID if nr == N["getresuid"] else RGID
        for i in range(3):
            addr = regs[ARG[i]]
            if addr:
                mem.write(t, addr, _u32(st[base + i]).to_bytes(4, "little"))
        t.ret = 0
        return SKIP

    def _getgroups(self, t, regs, nr) -> int:
        groups = self._state(t)[GROUPS]
        size = regs[ARG[0]] & 0xFFFFFFFF
        if size:
            if size < len(groups):
                raise OSError(22, "buffer too small")
            mem.write(t, regs[ARG[1]], b"".join(_u32(g).to_bytes(4, "little") for g in groups))
        t.ret = len(groups)
        return SKIP

    def _setgroups(self, t, regs, nr) -> int:
        n = regs[ARG[0]] & 0xFFFFFFFF
        if n > 65536:
            raise OSError(22, "too many groups")
        data = mem.read(t, regs[ARG[1]], 4 * n) if n else b""
        self._state(t)[GROUPS] = tuple(int.from_bytes(data[i:i + 4], "little") for i in range(0, 4 * n, 4))
        t.ret = 0
        return SKIP

    def _setid(self, t, regs, nr) -> int:
        st = self._state(t)
        base = RUID if nr == N["setuid"] else RGID
        v = regs[ARG[0]] & 0xFFFFFFFF
        if st[EUID] == 0:
            st[base] = st[base + 1] = st[base + 2] = st[base + 3] = v
        else:
            st[base + 1] = st[base + 3] = v
        t.ret = 0
        return SKIP

    def _setreid(self, t, regs, nr) -> int:
        st = self._state(t)
        base = RUID if nr == N["setreuid"] else RGID
        r, e = regs[ARG[0]] & 0xFFFFFFFF, regs[ARG[1]] & 0xFFFFFFFF
        if r != NOCHANGE:
            st[base] = r
        if e != NOCHANGE:
            st[base + 1] = st[base + 3] = e
            if r != NOCHANGE or e != st[base]:
                st[base + 2] = e
        t.ret = 0
        return SKIP

    def _setresid(self, t, regs, nr) -> int:
        st = self._state(t)
        base = RUID if nr == N["setresuid"] else RGID
        for i in range(3):
            v = regs[ARG[i]] & 0xFFFFFFFF
            if v != NOCHANGE:
                st[base + i] = v
        st[base + 3] = st[base + 1]
        t.ret = 0
        return SKIP

    def _setfsid(self, t, regs, nr) -> int:
        st = self._state(t)
        idx = FSUID if nr == N["setfsuid"] else FSGID
        old = st[idx]
        v = regs[ARG[0]] & 0xFFFFFFFF
        if v != NOCHANGE:
            st[idx] = v
        t.ret = old
        return SKIP
