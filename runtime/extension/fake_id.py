"""`-0` / `-i UID:GID`: the guest sees the identity it asks for, not the real one.

- getuid/geteuid/getgid/getegid/getresuid/getresgid/getgroups answer from a per-process identity
  (inherited by children), starting at UID:GID with groups [GID];
- setuid/setgid/setreuid/setregid/setresuid/setresgid/setfsuid/setfsgid/setgroups change that
  identity and succeed (gosu, su, setpriv entrypoints), capset succeeds;
- chown/fchown/lchown/fchownat succeed: the call runs with owner and group -1 (so a missing file
  still fails with ENOENT) and the requested owner is remembered for `stat`;
- stat/fstat/lstat/newfstatat/statx show the owner recorded in the image (the extraction metadata
  `DIR.carryon-meta.json`) for files of the image, a remembered chown, or, for a file of the rootfs
  that the extracting user owns (created at run time), the guest's effective uid/gid.
Nothing changes for real: files keep the real user as owner, and permission checks stay the
kernel's for the real user.
"""

from __future__ import annotations

import os

from runtime.cache import json_loads  # json without `re` (start-up)
from runtime.extension import Base
from runtime.spec import RunSpec
from runtime.syscall.sysnums import NUMBERS as N
from runtime.tracee import mem
from runtime.tracee.actions import CHANGED, EXIT, SKIP
from runtime.tracee.ffi import ARG, R_ORIG_RAX, R_RAX

KEY = "fake_id"
NOCHANGE = 0xFFFFFFFF
AT_EMPTY_PATH = 0x1000

# state list indices
RUID, EUID, SUID, FSUID, RGID, EGID, SGID, FSGID, GROUPS = range(9)

_GET = {N["getuid"]: RUID, N["geteuid"]: EUID, N["getgid"]: RGID, N["getegid"]: EGID}
# stat-like calls: number -> (index of the buffer argument, offset of uid in it, offset of gid)
_STAT = {N["stat"]: (1, 28, 32), N["lstat"]: (1, 28, 32), N["fstat"]: (1, 28, 32),
         N["newfstatat"]: (2, 28, 32), N["statx"]: (4, 20, 24)}
# chown-like calls: number -> (index of the uid argument, index of the gid argument)
_CHOWN = {N["chown"]: (1, 2), N["lchown"]: (1, 2), N["fchown"]: (1, 2), N["fchownat"]: (2, 3)}


def _u32(v: int) -> int:
    return v & 0xFFFFFFFF


class FakeId(Base):
    def __init__(self, spec: RunSpec) -> None:
        uid = spec.uid if spec.uid is not None else os.getuid()
        gid = spec.gid if spec.gid is not None else os.getgid()
        self.initial = [uid, uid, uid, uid, gid, gid, gid, gid, (gid,)]
        self.meta_path = spec.meta_path
        self._meta: dict[str, tuple[int, int]] | None = None
        self.chowned: dict[str, tuple[int, int]] = {}
        self.real_uid = os.getuid()
        self.real_gid = os.getgid()
        calls = set(_GET) | set(_STAT) | set(_CHOWN)
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
        if regs[R_RAX] != 0:
            return 0
        nr = regs[R_ORIG_RAX]
        buf_arg, uoff, goff = _STAT[nr]
        buf = regs[ARG[buf_arg]]
        owner = self._owner_of(t, regs, nr)
        if owner is None or not buf:
            return 0
        try:
            cur = mem.read(t, buf + uoff, 4)
            cur_uid = int.from_bytes(cur, "little")
        except OSError:
            return 0
        uid, gid = owner
        if uid == -1:           # "owned by the extracting user": show the guest's own identity
            if cur_uid != self.real_uid:
                return 0
            st = self._state(t)
            uid, gid = st[EUID], st[EGID]
        try:
            mem.write(t, buf + uoff, _u32(uid).to_bytes(4, "little"))
            mem.write(t, buf + goff, _u32(gid).to_bytes(4, "little"))
        except OSError:
            pass
        return 0

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

    def _owner_of(self, t, regs, nr) -> tuple[int, int] | None:
        if nr == N["fstat"]:
            gp = self._guest_path(t, regs, nr, None, 0, None)
        elif nr == N["newfstatat"]:
            gp = self._guest_path(t, regs, nr, 1, 0, 3)
        elif nr == N["statx"]:
            gp = self._guest_path(t, regs, nr, 1, 0, 2)
        else:
            gp = self._guest_path(t, regs, nr, 0, None, None)
        if gp is None:
            return None
        guest, host = gp
        hit = self.chowned.get(guest)
        if hit is not None:
            return hit
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
        if nr == N["fchown"]:
            gp = self._guest_path(t, regs, nr, None, 0, None)
        elif nr == N["fchownat"]:
            gp = self._guest_path(t, regs, nr, 1, 0, 4)
        else:
            gp = self._guest_path(t, regs, nr, 0, None, None)
        if gp is not None and (uid != NOCHANGE or gid != NOCHANGE):
            guest = gp[0]
            old = self.chowned.get(guest) or self.meta().get(guest)
            if old is None:
                st = self._state(t)
                old = (st[EUID], st[EGID])
            self.chowned[guest] = (old[0] if uid == NOCHANGE else uid,
                                   old[1] if gid == NOCHANGE else gid)
        regs[ARG[ua]] = NOCHANGE
        regs[ARG[ga]] = NOCHANGE
        return CHANGED

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
