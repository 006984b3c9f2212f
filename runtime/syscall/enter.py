"""Enter-stop handlers: rewrite the path arguments of a system call from guest to host.

`Translator.dispatch()` gives a list indexed by syscall number: None (let it run) or a handler
`h(t, regs) -> action bits` (`runtime.tracee.actions.CHANGED/EXIT/SKIP`). A handler raises OSError(errno)
to make the call fail with that errno without running it. The guest base directory of a relative
path is read from the kernel (`/proc/PID/cwd`, `/proc/PID/fd/N`) and turned back into a guest path,
so chdir/fchdir/CLONE_FS need no bookkeeping.
"""

from __future__ import annotations

import errno
import os
import stat as stat_mod
import sys

from runtime.execve import loader as exec_loader, plan as exec_plan
from runtime.path import proc as proc_links
from runtime.path.binding import Mapper
from runtime.spec import Bind
from runtime.syscall import table as T
from runtime.syscall.sysnums import NUMBERS
from runtime.tracee import mem
from runtime.tracee.actions import CHANGED, EXIT, SKIP
from runtime.tracee.ffi import ARG, R_ORIG_RAX, R_R10, R_RAX, R_RDI, R_RDX, R_RSI

TYPE_CHECKING = False           # not `typing.TYPE_CHECKING`: importing typing slows start-up
if TYPE_CHECKING:
    from weakref import WeakSet

NR_EXECVE = NUMBERS["execve"]
NR_EXECVEAT = NUMBERS["execveat"]
AF_UNIX = 1
SUN_PATH_MAX = 108
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10

_FS_ENCODING = sys.getfilesystemencoding()


def _fsdecode(b: bytes, _enc=_FS_ENCODING) -> str:
    """os.fsdecode without its type dispatch (hot path)."""
    return b.decode(_enc, "surrogateescape")


def _fsencode(s: str, _enc=_FS_ENCODING) -> bytes:
    return s.encode(_enc, "surrogateescape")
_readlink = os.readlink
_lstat = os.lstat
_S_ISLNK = stat_mod.S_ISLNK


def _int32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - 0x100000000 if v & 0x80000000 else v


def guest_base(t, dirfd: int) -> str | None:
    """Canonical guest directory a relative path is taken from: the cwd (AT_FDCWD) or the dirfd's
    directory, in the terms of the process's mapper. None when it is not a guest directory (a pipe,
    a host path outside the guest, a directory outside an emulated chroot)."""
    try:
        host = _readlink(f"/proc/{t.pid}/cwd" if dirfd == T.AT_FDCWD else f"/proc/{t.pid}/fd/{dirfd}")
    except OSError:
        return None
    m = t.mapper
    if m.ambiguous and dirfd == T.AT_FDCWD:
        return m.guest_cwd(t.pid, host)
    return m.to_guest(host)


def guest_cwd(t) -> str:
    g = guest_base(t, T.AT_FDCWD)
    return g if g is not None else "/"


# copy-on-write kinds of the calls that change the tree (see runtime.path.overlay)
_COW_RMDIR, _COW_RENAME, _COW_UNLINKAT, _COW_ENTRY, _COW_MODIFY, _COW_OPEN, _COW_UNLINK = 1, 2, 3, 4, 5, 6, 7


def _cow_kind(call: T.Call) -> int:
    if not call.write:
        return 0
    if call.name == "rmdir":
        return _COW_RMDIR
    if call.name.startswith("rename"):
        return _COW_RENAME
    if call.name == "unlinkat":
        return _COW_UNLINKAT
    if call.name == "unlink":
        return _COW_UNLINK
    if call.write == T.W_OPEN:
        return _COW_OPEN
    return _COW_ENTRY if any(p.parent_op for p in call.paths) else _COW_MODIFY


def _cow_prepare(m, kind: int, idx: int, regs, guest: str, base: str, follow: bool, parent_op: bool,
                 pid: int, flags: int) -> str:
    """The host path a tree-changing call acts on when the image is read-only (runtime.path.overlay):
    the directory of a created/removed/renamed entry is made the run's own first, a changed object is
    copied up. Raises OSError for the guest (ENOSPC, EACCES...)."""
    cow = m.cow
    g, host = m.resolve(guest, base, follow, parent_op=parent_op, pid=pid, tid=pid)
    gi = "" if g == "/" else g.rstrip("/")
    if parent_op:
        if kind == _COW_RMDIR or (kind == _COW_UNLINKAT and regs[ARG[2]] & T.AT_REMOVEDIR):
            cow.remove_dir(gi)
        elif kind == _COW_UNLINK or kind == _COW_UNLINKAT:
            cow.remove(gi)
        elif kind == _COW_RENAME:
            if idx == 0:
                cow.move(gi)
            else:
                cow.remove_dir(gi)
        else:
            cow.entry(gi)
        return m.to_host(guest, base, follow, parent_op=True, pid=pid, tid=pid)
    # opened for writing with O_TRUNC: the copy needs no data
    trunc = kind == _COW_OPEN and bool(flags & T.O_TRUNC) and bool(flags & 3)
    new = cow.modify(gi, host, trunc)
    if new != host and host.endswith("/") and not new.endswith("/"):
        new += "/"
    return new


def _answer_readlink(t, regs, at: bool, target: str) -> int:
    """readlink(at) answered by the tracer with `target` (cut to the guest's buffer, like the kernel)."""
    bufsiz = _int32(regs[ARG[3] if at else ARG[2]])
    if bufsiz <= 0:
        raise OSError(errno.EINVAL, "bad buffer size")
    data = _fsencode(target)[:bufsiz]
    mem.write(t, regs[ARG[2] if at else ARG[1]], data)
    t.ret = len(data)
    return SKIP


class Translator:
    """Builds the per-syscall handlers of one run."""

    def __init__(self, mapper: Mapper, lookup, chroot_allowed: bool) -> None:
        self.mapper = mapper
        self.lookup = lookup            # pid -> ProcState | None (for /proc magic links)
        self.chroot_allowed = chroot_allowed
        # called (once) when the guest opens an absolute `/proc/.../status` path (CPU placement)
        self.on_proc_status = None
        self.extra: dict[int, object] = {}  # number -> handler for calls outside the path table
        # the mappers of emulated chroots still in use (a WeakSet once there is one): a forget-call
        # anywhere must reach their caches too
        self.jails: tuple[Mapper, ...] | WeakSet[Mapper] = ()
        # one-path plain rewrites the native loop may answer (runtime.tracee.native):
        # number -> (path reg, dirfd reg or -1, follow rule, flags reg or -1, parent_op, write)
        self.simple: dict[int, tuple] = {}
        # the native loop's path cache (guest bytes, host bytes) -> None, when it runs
        self.native_put = None
        # an AF_UNIX name was translated (bind/connect): from then on getsockname, getpeername
        # and accept give names back that need translating; `on_unix_named` (the native loop's
        # hand-over of those calls to Python) is called once then
        self.unix_named = False
        self.on_unix_named = None
        # exec: carryon's loader (runtime.execve.loader), None for the guest loader's --argv0 way;
        # `native_load(pid, record)` gives the native loop the loader's record (when it runs);
        # `exec_ids(t, plan) -> (ruid, euid, rgid, egid) | None`: the guest's ids after an exec
        # (runtime.extension.fake_id, which also notes its state's change in t.pending_ext)
        self.loader = exec_loader.path()
        self.native_load = None
        self.exec_ids = None
        # the plain ptrace engine: the loader runs without stops after its call (Tracee.loading)
        self.plain = False

    def _outside(self, t, dirfd: int):
        """(mapper, guest base) for a base directory outside the process's (chrooted) view: it is
        taken in the run's top-level guest, so `..` out of an emulated chroot stops at the run's
        root. (None, None): not a guest directory at all (left to the kernel)."""
        if t.mapper is self.mapper:
            return None, None
        try:
            host = _readlink(f"/proc/{t.pid}/cwd" if dirfd == T.AT_FDCWD else f"/proc/{t.pid}/fd/{dirfd}")
        except OSError:
            return None, None
        g = self.mapper.to_guest(host)
        return (self.mapper, g) if g is not None else (None, None)

    def _base(self, t, dirfd: int):
        """(mapper, guest base directory) of a relative path; (None, None) when the base is not a
        guest directory (the call is then left to the kernel)."""
        base = guest_base(t, dirfd)
        if base is not None:
            return t.mapper, base
        return self._outside(t, dirfd)

    # ---- generic path rewrite -------------------------------------------------------------
    def _path_specs(self, call: T.Call) -> list[tuple]:
        """(path reg, dirfd reg, follow rule, flags reg, parent_op) for each path of `call`, in
        register terms; a call with one plain path is also offered to the native loop (`simple`)."""
        specs = []
        for p in call.paths:
            specs.append((ARG[p.arg], None if p.dirfd is None else ARG[p.dirfd], p.follow,
                          None if p.flags is None else ARG[p.flags], p.parent_op))
        if len(specs) == 1 and not call.forget and call.paths[0].follow != T.OPENAT2 and not (
                call.name == "chdir" and self.mapper.ambiguous):    # noted by Python (note_cwd)
            reg, dreg, rule, freg, parent_op = specs[0]
            self.simple[call.nr] = (reg, -1 if dreg is None else dreg, rule,
                                    -1 if freg is None else freg, parent_op, call.write)
        return specs

    def _forget_caches(self, t) -> None:
        """A call that may remove, replace or create (as a symlink) a directory entry: empty the path
        caches of every mapper in use, and keep them from growing until the process's next stop."""
        ms = (self.mapper, *self.jails) if self.jails else (self.mapper,)
        for m in ms:
            m.forget()
        if t.settle is None:            # the caches stay as they are until its next stop
            t.settle = ms
            for m in ms:
                m.settling += 1

    def _proc_status_opened(self) -> None:
        """The guest opened an absolute `/proc/.../status` path: the one-shot hook (CPU placement)."""
        hook = self.on_proc_status
        self.on_proc_status = None
        if hook is not None:
            hook()

    def _path_handler(self, call: T.Call):
        """The handler of a call whose path arguments are rewritten from guest to host.

        Phases per stop: (1) a forget-call empties the path caches (`_forget_caches`); then for each
        path argument: (2) read the path, (3) whether its last component is followed (from the
        call's rule and flags), (4) for a relative path, the guest base directory (with shortcuts
        for one plain name the kernel's own lookup answers right), (5) `Mapper.to_host`, the
        read-only check, the native loop's cache, and the rewritten argument. Steps 2-5 stay inline
        in the closure: they run on every stop (the common path), where a Python call per step
        would be pure overhead; only what is built once per call kind (`_path_specs`) or happens on
        rare stops (1, and the one-shot /proc status hook) is apart."""
        specs = self._path_specs(call)
        write = call.write
        wflags = None if call.write_flags is None else ARG[call.write_flags]
        cow_kind = _cow_kind(call)
        forget = call.forget
        opens = call.name in ("open", "openat")
        is_chdir = call.name == "chdir"
        tr = self
        read_cstring = mem.read_cstring
        push = mem.push
        O_NOFOLLOW, O_CREAT, O_EXCL = T.O_NOFOLLOW, T.O_CREAT, T.O_EXCL
        OC_EXCL = O_CREAT | O_EXCL
        OPEN_FLAGS, AT_NOFOLLOW, AT_FOLLOW = T.OPEN_FLAGS, T.AT_NOFOLLOW, T.AT_FOLLOW
        INOTIFY, FANOTIFY, FOLLOW = T.INOTIFY, T.FANOTIFY, T.FOLLOW
        AT_FDCWD = T.AT_FDCWD
        outside = self._outside
        forget_caches = self._forget_caches
        top = self.mapper

        def handler(t, regs) -> int:
            mapper = t.mapper
            if forget:
                forget_caches(t)
            changed = 0
            # copy-on-write: a call that changes the tree, in a run whose image is read-only
            cw = mapper.cow is not None and write and (write == 1 or regs[wflags] & 0o1103)
            # a chdir where a directory has two guest names: the name it used is noted
            cd_note = is_chdir and mapper.ambiguous
            idx = -1
            for reg, dreg, rule, freg, parent_op in specs:
                idx += 1
                addr = regs[reg]
                if not addr:
                    continue                # NULL: the fd itself (utimensat) or EFAULT by the kernel
                raw = read_cstring(t, addr)
                if not raw:
                    continue                # "": AT_EMPTY_PATH (the fd itself) or ENOENT by the kernel
                if opens and tr.on_proc_status is not None and raw.endswith(b"/status") \
                        and raw.startswith(b"/proc/"):
                    tr._proc_status_opened()
                if rule == FOLLOW:
                    follow = True
                elif rule == OPEN_FLAGS:
                    fl = regs[freg] if freg is not None else O_CREAT | 0o1
                    follow = not (fl & O_NOFOLLOW or fl & OC_EXCL == OC_EXCL)
                elif rule == AT_NOFOLLOW:
                    follow = not regs[freg] & 0x100
                elif rule == AT_FOLLOW:
                    follow = bool(regs[freg] & 0x400)
                elif rule == INOTIFY:
                    follow = not regs[freg] & 0x02000000
                elif rule == FANOTIFY:
                    follow = not regs[freg] & 0x4
                else:
                    follow = False
                m = mapper
                if raw[0] == 47:
                    base = "/"
                else:
                    dirfd = AT_FDCWD if dreg is None else _int32(regs[dreg])
                    if m is top and 47 not in raw and raw not in m.leaf_names \
                            and not (write and m._any_ro) and not cw and not m.stale_cwds \
                            and not cd_note:
                        # One plain name that is no bind point (nor an ancestor of one): whatever
                        # the directory, the kernel's own lookup is the guest's unless the name is
                        # a symlink to follow. No need to know the directory: the kernel finds it
                        # through the tracee's own /proc link.
                        if not follow:
                            continue
                        try:
                            if not _S_ISLNK(_lstat((b"/proc/%d/cwd/" % t.pid if dirfd == AT_FDCWD
                                                    else b"/proc/%d/fd/%d/" % (t.pid, dirfd))
                                                   + raw).st_mode):
                                continue
                        except OSError:
                            continue        # missing (ENOENT / creation), EBADF, ENOTDIR: the kernel's
                    try:
                        hdir = _readlink(f"/proc/{t.pid}/cwd" if dirfd == AT_FDCWD
                                         else f"/proc/{t.pid}/fd/{dirfd}")
                    except OSError:
                        continue            # EBADF: the kernel says so
                    base = m.guest_cwd(t.pid, hdir) if m.ambiguous and dirfd == AT_FDCWD \
                        else m.to_guest(hdir)
                    if base is None:
                        m, base = outside(t, dirfd)
                        if base is None:
                            continue
                    elif 47 not in raw and raw != b"." and raw != b".." and not cd_note:
                        # One plain name in a real guest directory: the kernel's own lookup is
                        # the guest's, unless the name is a bind point or a symlink to follow.
                        name = _fsdecode(raw)
                        key = (base if base != "/" else "") + "/" + name
                        if key not in m.bind_hosts and key not in m.virtual and not cw and not (
                                m.stale_cwds and m.cow.in_lower(hdir)) and not (
                                write and m._any_ro and (write == 1 or regs[wflags] & 0o1103)
                                and m.readonly(hdir)):
                            if not follow:
                                continue
                            try:
                                if not _S_ISLNK(_lstat(hdir + "/" + name).st_mode):
                                    continue
                            except OSError:
                                continue    # missing: ENOENT / creation, both right natively
                guest = _fsdecode(raw)
                if cw and m.cow is not None:
                    host = _cow_prepare(m, cow_kind, idx, regs, guest, base, follow, parent_op, t.pid,
                                        0 if wflags is None else regs[wflags])
                elif cd_note:
                    g, host = m.resolve(guest, base, follow, pid=t.pid, tid=t.pid)
                    m.note_cwd(t.pid, g, host)
                else:
                    host = m.to_host(guest, base, follow, parent_op=parent_op, pid=t.pid, tid=t.pid)
                if write and m._any_ro and (write == 1 or regs[wflags] & 0o1103) \
                        and m.readonly(host):
                    raise OSError(errno.EROFS, "read-only bind")
                hb = _fsencode(host)
                if base == "/" and tr.native_put is not None and m.last_pure and m is top \
                        and not parent_op and not m.settling and host.startswith(m.leaf_prefix) \
                        and b"//" not in raw and b"/." not in raw and raw[-1] != 47:
                    # the same answer next time (same path, same following of the last
                    # component), from the native loop, until a forget-call empties its cache
                    tr.native_put(raw + (b"\0\1" if follow else b"\0\2"), hb)
                regs[reg] = push(t, hb + b"\0")
                changed = CHANGED
            return changed

        return handler

    # ---- special calls ----------------------------------------------------------------------
    def _getcwd(self, t, regs) -> int:
        """Emulated: the guest path of the kernel's cwd, no exit stop needed."""
        try:
            host = _readlink(f"/proc/{t.pid}/cwd")
        except OSError:
            raise OSError(errno.ENOENT, "no cwd") from None
        if host.endswith(" (deleted)") and not os.path.exists(host):
            raise OSError(errno.ENOENT, "cwd removed")
        m = t.mapper
        g = m.guest_cwd(t.pid, host) if m.ambiguous else m.to_guest(host)
        if g is None:
            raise OSError(errno.ENOENT, "cwd outside the guest")
        data = _fsencode(g) + b"\0"
        size = regs[R_RSI]
        if len(data) > size:
            raise OSError(errno.ERANGE, "buffer too small")
        mem.write(t, regs[R_RDI], data)
        t.ret = len(data)
        return SKIP

    def _readlink(self, t, regs) -> int:
        """Translate the path; /proc magic links (exe, cwd, root, fd/N) are answered directly."""
        nr = regs[R_ORIG_RAX]
        at = nr != NUMBERS["readlink"]
        preg = ARG[1] if at else ARG[0]
        addr = regs[preg]
        if not addr:
            return 0
        raw = mem.read_cstring(t, addr)
        if not raw:
            return 0
        mapper = t.mapper
        if raw[0] == 47:
            base = "/"
        else:
            mapper, base = self._base(t, _int32(regs[ARG[0]]) if at else T.AT_FDCWD)
            if base is None:
                return 0
        guest, host = mapper.resolve(_fsdecode(raw), base, False, pid=t.pid, tid=t.pid)
        if mapper.proc_root is not None:
            target = proc_links.readlink_target(guest, t.pid, self.lookup, mapper)
            if target is not None:
                return _answer_readlink(t, regs, at, target)
        if mapper.binds and mapper.bind_owner(host):
            # a symlink in a bind: an absolute target naming a host path the guest sees is
            # given back as the guest's path (PRoot's detranslation)
            try:
                target = _readlink(host)
            except OSError:
                target = ""
            guest_target = mapper.to_guest(target) if target[:1] == "/" else None
            if guest_target is not None and guest_target != target:
                return _answer_readlink(t, regs, at, guest_target)
        regs[preg] = mem.push(t, _fsencode(host) + b"\0")
        return CHANGED

    def _chroot(self, t, regs) -> int:
        """Emulated, never passed through (as real root it would really happen)."""
        addr = regs[R_RDI]
        raw = mem.read_cstring(t, addr)
        if not raw:
            raise OSError(errno.ENOENT, "empty path")
        mapper = t.mapper
        if raw[0] == 47:
            base = "/"
        else:
            mapper, base = self._base(t, T.AT_FDCWD)
            if base is None:
                raise OSError(errno.ENOENT, "cwd outside the guest")
        guest, host = mapper.resolve(_fsdecode(raw), base, True, pid=t.pid, tid=t.pid)
        st = os.stat(host)
        if not stat_mod.S_ISDIR(st.st_mode):
            raise OSError(errno.ENOTDIR, "not a directory")
        if not self.chroot_allowed:
            raise OSError(errno.EPERM, "operation not permitted")
        guest = guest.rstrip("/") or "/"
        if guest != "/":
            binds = []
            for b in mapper.binds:
                bg = b.guest.rstrip("/")
                if bg.startswith(guest + "/"):
                    binds.append(Bind(host=b.host, guest=bg[len(guest):], readonly=b.readonly))
            new = Mapper(host, binds, cache_dirs=mapper.dircache is not None,
                         proc_lookup=mapper.proc_lookup)
            if mapper.leaves is None or not (host + "/").startswith(mapper.leaf_prefix):
                new.leaves = None           # a jail inside a bind: host directories, not the image
            if not self.jails:
                import weakref
                self.jails = weakref.WeakSet()
            self.jails.add(new)             # type: ignore[union-attr]  # a WeakSet since just above
            t.mapper = new
            t.guest_root = os.path.join(t.guest_root, guest.lstrip("/"))
        t.ret = 0
        return SKIP

    def _sockaddr(self, t, regs) -> int:
        """AF_UNIX bind/connect/sendto: rewrite sun_path (abstract addresses untouched)."""
        nr = regs[R_ORIG_RAX]
        if nr == NUMBERS["sendto"]:
            areg, lreg = ARG[4], ARG[5]
        else:
            areg, lreg = ARG[1], ARG[2]
        addr = regs[areg]
        alen = regs[lreg] & 0xFFFFFFFF
        if not addr or alen < 3 or alen > 4096:
            return 0
        data = mem.read(t, addr, min(alen, 2 + SUN_PATH_MAX))
        t.peek = (addr, data)           # the port translation looks at the same bytes
        if data[0] != AF_UNIX or data[1] != 0 or data[2] == 0:
            return 0
        path = data[2:]
        nul = path.find(0)
        if nul >= 0:
            path = path[:nul]
        mapper = t.mapper
        if path[0] == 47:
            base = "/"
        else:
            mapper, base = self._base(t, T.AT_FDCWD)
            if base is None:
                return 0
        bind = nr == NUMBERS["bind"]
        guest = _fsdecode(path)
        if bind and mapper.cow is not None:     # copy-on-write: the socket is made in the run's tree
            host = _cow_prepare(mapper, _COW_ENTRY, 0, regs, guest, base, False, True, t.pid, 0)
        else:
            host = mapper.to_host(guest, base, not bind, parent_op=bind, pid=t.pid, tid=t.pid)
        if bind and mapper.readonly(host):
            raise OSError(errno.EROFS, "read-only bind")
        hb = _fsencode(host)
        if len(hb) >= SUN_PATH_MAX:
            # longer than sun_path once translated: through a short symlink of its directory,
            # which bind (it creates the last component) and connect both follow
            head, _, name = host.rpartition("/")
            hb = _fsencode(mapper.socket_dir(head or "/") + "/" + name)
            if len(hb) >= SUN_PATH_MAX:
                raise OSError(errno.ENAMETOOLONG, "socket path too long once translated")
        if host != guest and not self.unix_named:
            self.unix_named = True
            hook = self.on_unix_named
            if hook is not None:
                hook()
        new = b"\x01\x00" + hb + b"\0"
        regs[areg] = mem.push(t, new)
        regs[lreg] = len(new)
        return CHANGED

    def _sockname(self, t, regs) -> int:
        """getsockname/getpeername/accept/accept4: an AF_UNIX name the kernel gives back is
        translated to the guest's at the exit stop. Nothing at all (no exit stop) until some
        AF_UNIX name was translated in the run (`unix_named`)."""
        if not self.unix_named:
            return 0
        addr, lenptr = regs[ARG[1]], regs[ARG[2]]
        if not addr or not lenptr:
            return 0
        try:
            room = int.from_bytes(mem.read(t, lenptr, 4), "little")
        except OSError:
            return 0
        if room < 3 or room >= 1 << 31:
            return 0

        def done(t, regs) -> int:
            if regs[R_RAX] >= 1 << 63:
                return 0                # failed
            try:
                full = int.from_bytes(mem.read(t, lenptr, 4), "little")
                if full <= 2 or full > room:
                    return 0            # no name, or cut short: left as the kernel gave it
                data = mem.read(t, addr, full)
                if data[0] != AF_UNIX or data[1] != 0 or data[2] == 0:
                    return 0            # not AF_UNIX, or an abstract name
                name = data[2:]
                nul = name.find(0)
                if nul >= 0:
                    name = name[:nul]
                host = _fsdecode(name)
                guest = t.mapper.from_socket_name(host) if host[:1] == "/" else None
                if guest is None or guest == host:
                    return 0
                new = b"\x01\x00" + _fsencode(guest) + b"\0"
                mem.write(t, addr, new[:room])
                mem.write(t, lenptr, len(new).to_bytes(4, "little"))
            except OSError:
                pass                    # the guest's memory changed under it: its answer stays
            return 0

        t.exits = [done]
        return EXIT

    def _openat2(self, t, regs) -> int:
        addr = regs[ARG[1]]
        how_addr = regs[ARG[2]]
        size = regs[ARG[3]]
        if not addr or not how_addr or size < 24 or size > 4096:
            return 0
        raw = mem.read_cstring(t, addr)
        if not raw:
            return 0
        how = bytearray(mem.read(t, how_addr, size))
        flags = int.from_bytes(how[0:8], "little")
        resolve = int.from_bytes(how[16:24], "little")
        follow = not (flags & T.O_NOFOLLOW or flags & (T.O_CREAT | T.O_EXCL) == T.O_CREAT | T.O_EXCL
                      or resolve & RESOLVE_NO_SYMLINKS)
        dirfd = _int32(regs[ARG[0]])
        path = _fsdecode(raw)
        mapper = t.mapper
        if resolve & (RESOLVE_BENEATH | RESOLVE_IN_ROOT):
            mapper, root = self._base(t, dirfd)
            if root is None:
                return 0
            parts: list[str] = []
            for c in path.split("/"):
                if c in ("", "."):
                    continue
                if c == "..":
                    if not parts:
                        if resolve & RESOLVE_BENEATH:
                            raise OSError(errno.EXDEV, "path escapes the directory")
                        continue
                    parts.pop()
                else:
                    parts.append(c)
            if resolve & RESOLVE_BENEATH and path.startswith("/"):
                raise OSError(errno.EXDEV, "absolute path with RESOLVE_BENEATH")
            path = root.rstrip("/") + "/" + "/".join(parts)
            base = "/"
        elif raw[0] == 47:
            base = "/"
        else:
            mapper, base = self._base(t, dirfd)
            if base is None:
                return 0
        host = mapper.to_host(path, base, follow, pid=t.pid, tid=t.pid)
        if mapper._any_ro and flags & 0o1103 and mapper.readonly(host):
            raise OSError(errno.EROFS, "read-only bind")
        resolve &= ~(RESOLVE_BENEATH | RESOLVE_IN_ROOT | RESOLVE_NO_XDEV)
        how[16:24] = resolve.to_bytes(8, "little")
        regs[ARG[2]] = mem.push(t, bytes(how))
        regs[ARG[1]] = mem.push(t, _fsencode(host) + b"\0")
        return CHANGED

    def _execve(self, t, regs) -> int:
        nr = regs[R_ORIG_RAX]
        at = nr == NR_EXECVEAT
        if at:
            paddr, vaddr, envp, flags = regs[ARG[1]], regs[ARG[2]], regs[ARG[3]], regs[ARG[4]]
        else:
            paddr, vaddr, envp, flags = regs[ARG[0]], regs[ARG[1]], regs[ARG[2]], 0
        raw = mem.read_cstring(t, paddr) if paddr else b""
        mapper = t.mapper
        execfn = raw            # the kernel's bprm->filename (AT_EXECFN, comm)
        if at and raw[:1] != b"/":
            dfd = _int32(regs[ARG[0]])
            if dfd != T.AT_FDCWD:
                execfn = b"/dev/fd/%d" % dfd + (b"/" + raw if raw else b"")
        empty = at and not raw
        if at and not raw and flags & T.AT_EMPTY_PATH:
            try:
                host = _readlink(f"/proc/{t.pid}/fd/{_int32(regs[ARG[0]])}")
            except OSError:
                raise OSError(errno.EBADF, "bad fd") from None
            g = mapper.to_guest(host)
            if g is None:
                raise OSError(errno.ENOENT, "fd outside the guest")
            raw = _fsencode(g)
            base = "/"
        elif not raw:
            raise OSError(errno.ENOENT, "empty path")
        elif raw[0] == 47:
            base = "/"
        else:
            mapper, base = self._base(t, _int32(regs[ARG[0]]) if at else T.AT_FDCWD)
            if base is None:
                raise OSError(errno.ENOTDIR, "bad dirfd")
        argv: list = mem.read_words(t, vaddr) if vaddr else []
        pid = t.pid
        nofollow_first = [bool(at and flags & T.AT_SYMLINK_NOFOLLOW)]
        cache = mapper.exec_paths
        proc_prefix = mapper._proc_prefix

        def resolve(p: str) -> tuple[str, str]:
            if nofollow_first[0]:
                nofollow_first[0] = False
                g, h = mapper.resolve(p, base, False, pid=pid, tid=pid)
                if os.path.islink(h):
                    raise OSError(errno.ELOOP, "symbolic link")
                return g, h
            if cache is None or p[0] != "/" or (proc_prefix is not None and (
                    p.startswith(proc_prefix) or p + "/" == proc_prefix)):
                return mapper.resolve(p, base, True, pid=pid, tid=pid)
            hit = cache.get(p)
            if hit is None:
                hit = mapper.resolve(p, base, True, pid=pid, tid=pid)
                if not mapper.settling:
                    if len(cache) >= 1024:
                        cache.clear()
                    cache[p] = hit
            return hit

        p = exec_plan.plan(resolve, _fsdecode(raw), argv, self.loader)
        ids = self.exec_ids(t, p) if self.exec_ids is not None else None
        if p.loaded:
            # the comm of an execveat(fd, "", AT_EMPTY_PATH): the file's name (Linux 6.14+)
            comm = exec_loader.comm_of(raw if empty else execfn)
            t.load = rec = exec_loader.encode(execfn, comm, _fsencode(p.program), _fsencode(p.interp),
                                              ids)
            if self.native_load is not None and t.emu is None:   # (a guest tracer's tracee: Python's)
                self.native_load(t.pid, rec)
            host_b = _fsencode(exec_loader.exec_path(p.host_path, len(execfn))) + b"\0"
        else:
            t.load = None
            # One write for everything: the argv array (8-aligned), then the new path, then the strings.
            host_b = _fsencode(p.host_path) + b"\0"
        new_strings = [a + b"\0" for a in p.argv if isinstance(a, bytes)]
        arr_len = 8 * (len(p.argv) + 1)
        size = arr_len + len(host_b) + sum(len(s) for s in new_strings)

        def build(where: int) -> bytes:
            addr = where + arr_len + len(host_b)
            ptrs = []
            for a in p.argv:
                if isinstance(a, bytes):
                    ptrs.append(addr)
                    addr += len(a) + 1
                else:
                    ptrs.append(a)
            return b"".join([b"".join(x.to_bytes(8, "little") for x in ptrs), bytes(8), host_b,
                             *new_strings])

        where = mem.push_built(t, size, build)
        regs[R_RSI] = where
        regs[R_RDI] = where + arr_len
        regs[R_RDX] = envp
        if at:
            regs[R_ORIG_RAX] = NR_EXECVE
            regs[R_R10] = 0
        t.pending_exe = p.exe_guest
        return CHANGED

    def _loader_call(self, t, regs) -> int:
        """carryon's loader asks what to run after an exec through it (runtime.execve.loader):
        its record goes into its buffer and the call becomes the openat of the program. ENOSYS
        (the kernel's answer) for anyone else, and for a second call."""
        rec = t.load
        if rec is None:
            raise OSError(errno.ENOSYS, "not carryon's loader")
        buf = regs[R_RDI]
        if regs[R_RSI] < len(rec):
            raise OSError(errno.EINVAL, "loader buffer too small")
        if self.plain or t.emu is not None:
            # unstopped until its int3 (a guest tracer's tracee too: it is not shown the loader)
            rec = exec_loader.plain(rec)
            t.loading = True
        mem.write(t, buf, rec)
        t.load = None
        regs[R_ORIG_RAX] = exec_loader.NR_OPENAT
        regs[R_RDI] = exec_loader.AT_FDCWD
        regs[R_RSI] = buf + exec_loader.path_offset(rec)
        regs[R_RDX] = exec_loader.O_RDONLY_CLOEXEC
        regs[R_R10] = 0
        return CHANGED

    # ---- the dispatch list --------------------------------------------------------------------
    def dispatch(self, size: int = 512) -> list:
        out: list = [None] * size
        specials = {"getcwd": self._getcwd, "readlink": self._readlink, "chroot": self._chroot,
                    "sockaddr": self._sockaddr, "sockname": self._sockname, "openat2": self._openat2,
                    "execve": self._execve}
        for call in T.CALLS:
            if call.refuse:
                continue
            out[call.nr] = specials[call.special] if call.special else self._path_handler(call)
        for nr, h in self.extra.items():
            out[nr] = h
        if self.loader is not None:
            out[exec_loader.NR] = self._loader_call
        return out
