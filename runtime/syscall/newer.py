"""Guest calls newer than the node's kernel: the ones with an exact emulation from older calls.

Modern images call `statx` (coreutils' stat, ls), `faccessat2` (glibc >= 2.33's faccessat with
flags), `getrandom`, `prlimit64` (glibc >= 2.35's getrlimit/setrlimit, with no fallback) and
`renameat2`. Where the node's kernel answers ENOSYS for one of these, the tracer answers it from
older calls:

- `statx` -> `newfstatat` into a scratch `struct stat` below the stack pointer (`fstat` of the fd for
  AT_EMPTY_PATH with an empty path, since `newfstatat` accepts AT_EMPTY_PATH only from 2.6.39), the
  path translated as usual; at the exit stop the `struct statx` is written as the kernel fills it
  from the same inode: stx_mask = STATX_BASIC_STATS, the 256 bytes zeroed elsewhere (no btime, no
  mnt_id, no attributes: fields an old kernel does not know). AT_SYMLINK_NOFOLLOW and AT_EMPTY_PATH
  exact; AT_NO_AUTOMOUNT and the AT_STATX_* sync flags behave as stat(2) (exact on local file
  systems; FORCE_SYNC does not force a network file system's revalidation). EINVAL for unknown flags,
  both sync flags, or STATX__RESERVED in the mask, as the kernel.
- `faccessat2` -> `faccessat` (no flags: exact). AT_EMPTY_PATH with an empty path: the fd's own
  inode through `/proc/self/fd/N` (the cwd for AT_FDCWD): exact. AT_SYMLINK_NOFOLLOW naming a
  symlink: a symlink's permission bits grant everything, so the answer is the lookup's, asked as
  `faccessat(parent, X_OK)` (search permission on the way), then EROFS for W_OK on a read-only
  mount: exact. AT_EACCESS: exact when the caller's real, effective and filesystem ids are equal
  and its effective capabilities are what faccessat would use (the usual case), else ENOSYS (the
  node's own answer: glibc then does its own approximation, as on that kernel). EINVAL for unknown
  flags or mode bits, as the kernel.
- `getrandom` -> bytes the tracer reads from /dev/urandom, written into the guest's buffer (at most
  33554431 per call, as 3.17-5.17). GRND_NONBLOCK never blocks (urandom does not); GRND_RANDOM is
  answered from the same pool, as Linux >= 5.6 does; GRND_INSECURE accepted. Not exact only before
  the kernel's pool is initialized (early boot), where getrandom would block. EINVAL for unknown
  flags and for GRND_RANDOM|GRND_INSECURE.
- `prlimit64` for the calling process (pid 0, or any thread of its own group) -> `getrlimit` (old
  value only), `setrlimit` (new value only: same checks, EPERM/EINVAL as the kernel), or both: the
  old value read from /proc/PID/limits, then `setrlimit`, the old value written at the exit stop
  (not atomic against another thread of the guest changing the same limit meanwhile). For another
  process: ESRCH when it does not exist, EPERM when the kernel's permission check (same real
  ids, or CAP_SYS_RESOURCE) would refuse, else ENOSYS (old calls cannot act on another process).

- `newfstatat` with AT_EMPTY_PATH (2.6.39; glibc >= 2.33's fstat() is newfstatat(fd, "",
  AT_EMPTY_PATH), its loader's too) -> `fstat(fd)` (the cwd for AT_FDCWD), the flag dropped for a
  non-empty path, AT_NO_AUTOMOUNT (2.6.38) dropped: exact. Lacking means EINVAL here.
- `renameat2` with no flags -> `renameat`: exact (glibc's own fallback would pass the arguments
  the tracer rewrote for the failed call: registers a syscall preserves are reused by the
  compiler). With flags (RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT): ENOSYS, as the
  kernel answers (no old call does them atomically).

Every other call newer than the kernel (clone3, close_range, openat2, pidfd_*, memfd_create,
preadv2, rseq, ...) gets ENOSYS as the kernel gives it (glibc falls back for clone3 and close_range,
Python for getrandom). execveat is translated into execve by runtime.syscall.enter anyway, so it
works on every kernel.

Detection (`lacking`), once per run before the fork, and only where a call may be lacking: a
kernel older than 5.8 (`uname`), or a tracer that runs under a seccomp filter (PR_GET_SECCOMP: a
container's profile may answer ENOSYS for calls it does not know; scripts/kernel-jail, whose `uname`
still names this kernel). On a current node without a filter nothing is probed or imported, and
nothing changes (same filter, same handlers, same native loop). A probe is a harmless call (statx,
faccessat2 and renameat2 with NULL paths, a 0-byte getrandom, prlimit64 with no limits: ~5 us
each), ENOSYS meaning "lacking"; under a filter all five are probed, else those newer than `uname`.
CARRYON_TEST_LACKING=name,... makes tests treat those calls as lacking on a node that has them (the
seccomp engine's path, which no filter-based emulation reaches: a stacked filter's ERRNO wins over
our TRACE).
"""

from __future__ import annotations

import errno
import os
import struct

from runtime.syscall.sysnums import NUMBERS
from runtime.tracee import mem
from runtime.tracee.actions import CHANGED, EXIT, SKIP
from runtime.tracee.ffi import ARG, R_ORIG_RAX, R_RAX, _syscall

STATX, FACCESSAT2, GETRANDOM, PRLIMIT64, RENAMEAT2 = (
    NUMBERS[n] for n in ("statx", "faccessat2", "getrandom", "prlimit64", "renameat2"))
FSTAT, NEWFSTATAT, FACCESSAT = NUMBERS["fstat"], NUMBERS["newfstatat"], NUMBERS["faccessat"]
GETRLIMIT, SETRLIMIT, RENAMEAT = NUMBERS["getrlimit"], NUMBERS["setrlimit"], NUMBERS["renameat"]
# the calls emulated where lacking (NEWFSTATAT: its AT_EMPTY_PATH flag, 2.6.39)
EMULATED = {"statx": STATX, "faccessat2": FACCESSAT2, "getrandom": GETRANDOM, "prlimit64": PRLIMIT64,
            "renameat2": RENAMEAT2, "fstatat-empty-path": NEWFSTATAT}
# the Linux release that added each (x86_64)
SINCE = {STATX: (4, 11, 0), FACCESSAT2: (5, 8, 0), GETRANDOM: (3, 17, 0), PRLIMIT64: (2, 6, 36),
         RENAMEAT2: (3, 15, 0), NEWFSTATAT: (2, 6, 39)}
# a harmless call of each, and the error that means "lacking" (the 144 of newfstatat: a buffer)
_PROBE_ARGS = {STATX: (-1, 0, 0, 0, 0), FACCESSAT2: (-1, 0, 0, 0), GETRANDOM: (0, 0, 0),
               PRLIMIT64: (0, 0, 0, 0), RENAMEAT2: (-1, 0, -1, 0, 0),
               NEWFSTATAT: (-100, b"", 144, 0x1000)}
_LACKING_ERRNO = {NEWFSTATAT: errno.EINVAL}

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW, AT_EACCESS, AT_NO_AUTOMOUNT, AT_EMPTY_PATH = 0x100, 0x200, 0x800, 0x1000
AT_STATX_SYNC_TYPE = 0x6000
STATX_FLAGS = AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT | AT_EMPTY_PATH | AT_STATX_SYNC_TYPE
STATX_BASIC_STATS = 0x7FF
STATX__RESERVED = 0x80000000
STAT_SIZE, STATX_SIZE = 144, 256
W_OK, X_OK = 2, 1
GRND_NONBLOCK, GRND_RANDOM, GRND_INSECURE = 1, 2, 4
GETRANDOM_MAX = 33554431
RLIM_NLIMITS = 16
RLIM_INFINITY = (1 << 64) - 1
CAP_SYS_RESOURCE = 24
M64 = (1 << 64) - 1
_STAT = struct.Struct("<QQQIII4xQqqqqqqqqq")
_STATX = struct.Struct("<IIQIIIH2xQQQQqI4xqI4xqI4xqI4xIIII")


def _release() -> tuple[int, ...]:
    out = []
    for part in os.uname().release.split(".")[:3]:
        digits = ""
        for c in part:
            if not c.isdigit():
                break
            digits += c
        out.append(int(digits or 0))
    return tuple(out + [0] * (3 - len(out)))


def _probe(nr: int) -> bool:
    """True when this kernel answers ENOSYS (EINVAL: the flag) to the call (the tracer asks it)."""
    import ctypes
    args: list = []
    for a in _PROBE_ARGS[nr]:
        if isinstance(a, bytes):
            args.append(ctypes.c_char_p(a))
        elif nr == NEWFSTATAT and a == STAT_SIZE:
            args.append(ctypes.create_string_buffer(STAT_SIZE))
        else:
            args.append(ctypes.c_long(a))
    return _syscall(ctypes.c_long(nr), *args) == -1 and \
        ctypes.get_errno() == _LACKING_ERRNO.get(nr, errno.ENOSYS)


def lacking(filtered: bool) -> frozenset[int]:
    """The numbers of the emulated calls this node lacks (see the module docstring): all probed
    when the tracer runs under a seccomp filter, else those newer than `uname`'s release."""
    out = set()
    rel = _release()
    for nr in _PROBE_ARGS:
        if (filtered or rel < SINCE[nr]) and _probe(nr):
            out.add(nr)
    if os.environ.get("_CARRYON_OLD_KERNEL"):
        # started through runtime/launch/oldkernel.c, which rewrites this process's own fstatat
        # calls (so a probe here would see them work): the launcher read the release
        out.add(NEWFSTATAT)
    for name in os.environ.get("CARRYON_TEST_LACKING", "").split(","):
        if name in EMULATED:
            out.add(EMULATED[name])
    return frozenset(out)


def install(dispatch: list, missing: frozenset[int]) -> None:
    """Wrap the dispatch entries of the lacking calls (after the extensions' chaining: their exit
    hooks see the older call and its result, and the conversion runs last)."""
    makers = {STATX: _statx, FACCESSAT2: _faccessat2, GETRANDOM: _getrandom, PRLIMIT64: _prlimit64,
              RENAMEAT2: _renameat2, NEWFSTATAT: _fstatat}
    for nr in missing:
        dispatch[nr] = makers[nr](dispatch[nr])


def _int32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - 0x100000000 if v & 0x80000000 else v


def _einval() -> OSError:
    return OSError(errno.EINVAL, "invalid argument")


def _exit_last(t, act: int, fn) -> int:
    """Run `fn` at the exit stop, after the exit hooks `act` asked for."""
    exits = t.exits if act & EXIT and t.exits else []
    exits.append(fn)
    t.exits = exits
    return act | CHANGED | EXIT


# ---- statx -------------------------------------------------------------------------------------
def _huge_major(dev: int) -> int:
    return ((dev >> 8) & 0xFFF) | ((dev >> 32) & ~0xFFF & 0xFFFFFFFF)


def _huge_minor(dev: int) -> int:
    return (dev & 0xFF) | ((dev >> 12) & ~0xFF & 0xFFFFFFFF)


def statx_from_stat(st: bytes) -> bytes:
    """The struct statx the kernel fills from the same inode as this x86_64 struct stat."""
    (dev, ino, nlink, mode, uid, gid, rdev, size, blksize, blocks, atime, atime_ns, mtime, mtime_ns,
     ctime, ctime_ns) = _STAT.unpack_from(st)
    head = _STATX.pack(STATX_BASIC_STATS, blksize & 0xFFFFFFFF, 0, nlink & 0xFFFFFFFF, uid, gid,
                       mode & 0xFFFF, ino, size, blocks, 0, atime, atime_ns, 0, 0, ctime, ctime_ns,
                       mtime, mtime_ns, _huge_major(rdev), _huge_minor(rdev), _huge_major(dev),
                       _huge_minor(dev))
    return head + bytes(STATX_SIZE - len(head))


def _statx(inner):
    def handler(t, regs) -> int:
        flags = regs[ARG[2]] & 0xFFFFFFFF
        if flags & ~STATX_FLAGS or flags & AT_STATX_SYNC_TYPE == AT_STATX_SYNC_TYPE \
                or regs[ARG[3]] & STATX__RESERVED:
            raise _einval()
        act = inner(t, regs) if inner is not None else 0
        if act & SKIP:
            return act
        path = regs[ARG[1]]
        user_buf = regs[ARG[4]]
        scratch = mem.push(t, bytes(STAT_SIZE))
        if flags & AT_EMPTY_PATH and (not path or mem.read(t, path, 1) == b"\0"):
            if _int32(regs[ARG[0]]) == AT_FDCWD:        # the cwd itself
                regs[R_ORIG_RAX] = NEWFSTATAT
                regs[ARG[1]] = mem.push(t, b".\0")
                regs[ARG[2]] = scratch
                regs[ARG[3]] = 0
            else:
                regs[R_ORIG_RAX] = FSTAT
                regs[ARG[1]] = scratch
        else:
            regs[R_ORIG_RAX] = NEWFSTATAT
            regs[ARG[2]] = scratch
            regs[ARG[3]] = flags & AT_SYMLINK_NOFOLLOW

        def done(t, regs) -> int:
            if regs[R_RAX] != 0:
                return 0                # the lookup's error, as statx gives it
            data = statx_from_stat(mem.read(t, scratch, STAT_SIZE))
            try:
                mem.write(t, user_buf, data)
            except OSError:
                regs[R_RAX] = -errno.EFAULT & M64
                return CHANGED
            return 0

        return _exit_last(t, act, done)
    return handler


# ---- faccessat2 --------------------------------------------------------------------------------
def _status(pid: int) -> dict[bytes, list[int]]:
    """Uid/Gid (real, effective, saved, fs) and CapPrm/CapEff of a process, from /proc."""
    out: dict[bytes, list[int]] = {}
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            key, _, value = line.partition(b":")
            if key in (b"Uid", b"Gid"):
                out[key] = [int(x) for x in value.split()]
            elif key in (b"CapPrm", b"CapEff"):
                out[key] = [int(value.strip(), 16)]
    return out


def _eaccess_plain(pid: int) -> bool:
    """Would faccessat (real ids, caps as faccessat sets them) answer as AT_EACCESS would?"""
    try:
        s = _status(pid)
        uid, gid, prm, eff = s[b"Uid"], s[b"Gid"], s[b"CapPrm"][0], s[b"CapEff"][0]
    except (OSError, KeyError, ValueError, IndexError):
        return False
    return (uid[0] == uid[1] == uid[3] and gid[0] == gid[1] == gid[3]
            and eff == (prm if uid[0] == 0 else 0))


def _faccessat2(inner):
    def handler(t, regs) -> int:
        mode = regs[ARG[2]] & 0xFFFFFFFF
        flags = regs[ARG[3]] & 0xFFFFFFFF
        if mode & ~7 or flags & ~(AT_EACCESS | AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH):
            raise _einval()
        if flags & AT_EACCESS and not _eaccess_plain(t.pid):
            raise OSError(errno.ENOSYS, "faccessat2 with AT_EACCESS")   # the node's answer
        act = inner(t, regs) if inner is not None else 0
        if act & SKIP:
            return act
        regs[R_ORIG_RAX] = FACCESSAT
        regs[ARG[3]] = 0
        path = regs[ARG[1]]
        if flags & (AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) == 0 or not path:
            return act | CHANGED
        raw = mem.read_cstring(t, path)
        dirfd = _int32(regs[ARG[0]])
        if not raw:
            if flags & AT_EMPTY_PATH:           # the fd itself (the cwd for AT_FDCWD)
                if dirfd != AT_FDCWD and not os.path.exists(f"/proc/{t.pid}/fd/{dirfd}"):
                    raise OSError(errno.EBADF, "bad file descriptor")
                regs[ARG[1]] = mem.push(t, b".\0" if dirfd == AT_FDCWD else b"/proc/self/fd/%d\0" % dirfd)
                regs[ARG[0]] = AT_FDCWD & M64
            return act | CHANGED
        if not flags & AT_SYMLINK_NOFOLLOW:
            return act | CHANGED
        # the (translated) path, as the tracer sees it
        if raw[0] == 47:
            seen = raw
        else:
            seen = (b"/proc/%d/cwd/" % t.pid if dirfd == AT_FDCWD
                    else b"/proc/%d/fd/%d/" % (t.pid, dirfd)) + raw
        try:
            is_link = os.path.islink(seen)
        except (OSError, ValueError):
            is_link = False
        if not is_link:
            return act | CHANGED
        # a symlink grants everything: what remains is the lookup (search permission on the way)
        parent = raw.rstrip(b"/").rpartition(b"/")
        regs[ARG[1]] = mem.push(t, (parent[0] or (b"/" if parent[1] else b".")) + b"\0")
        regs[ARG[2]] = X_OK
        if not mode & W_OK:
            return act | CHANGED

        def read_only(t, regs) -> int:
            if regs[R_RAX] != 0:
                return 0
            try:
                ro = os.statvfs(os.path.dirname(seen) or b".").f_flag & os.ST_RDONLY
            except OSError:
                ro = 0
            if ro:
                regs[R_RAX] = -errno.EROFS & M64
                return CHANGED
            return 0

        return _exit_last(t, act, read_only)
    return handler


# ---- getrandom ---------------------------------------------------------------------------------
_urandom: list[int] = []


def _getrandom(inner):
    def handler(t, regs) -> int:
        buf, count, flags = regs[ARG[0]], regs[ARG[1]], regs[ARG[2]] & 0xFFFFFFFF
        if flags & ~(GRND_NONBLOCK | GRND_RANDOM | GRND_INSECURE) \
                or flags & (GRND_RANDOM | GRND_INSECURE) == GRND_RANDOM | GRND_INSECURE:
            raise _einval()
        count = min(count, GETRANDOM_MAX)
        if count:
            if not _urandom:
                try:
                    _urandom.append(os.open("/dev/urandom", os.O_RDONLY | os.O_CLOEXEC))
                except OSError:
                    raise OSError(errno.ENOSYS, "no /dev/urandom either") from None
            data = b""
            while len(data) < count:
                data += os.read(_urandom[0], min(count - len(data), 1 << 20))
            mem.write(t, buf, data)             # EFAULT, as the kernel
        t.ret = count
        return SKIP
    return handler


# ---- prlimit64 ---------------------------------------------------------------------------------
def _limits(pid: int, resource: int) -> bytes:
    """The process's (soft, hard) limit of `resource` as a struct rlimit, from /proc/PID/limits."""
    with open(f"/proc/{pid}/limits", "rb") as f:
        line = f.read().split(b"\n")[resource + 1]
    soft, hard = line[26:].split()[:2]
    return b"".join(RLIM_INFINITY.to_bytes(8, "little") if v == b"unlimited"
                    else int(v).to_bytes(8, "little") for v in (soft, hard))


def _other_process(t, pid: int) -> OSError:
    """prlimit64 on another process: the kernel's ESRCH/EPERM, else ENOSYS (see the docstring)."""
    if pid < 0 or not os.path.isdir(f"/proc/{pid}"):
        return OSError(errno.ESRCH, "no such process")
    try:
        me, them = _status(t.pid), _status(pid)
        uid, gid = me[b"Uid"][0], me[b"Gid"][0]
        allowed = (them[b"Uid"][:3] == [uid] * 3 and them[b"Gid"][:3] == [gid] * 3) \
            or bool(me[b"CapEff"][0] >> CAP_SYS_RESOURCE & 1)
    except (OSError, KeyError, ValueError, IndexError):
        return OSError(errno.ESRCH, "no such process")
    if not allowed:
        return OSError(errno.EPERM, "operation not permitted")
    return OSError(errno.ENOSYS, "prlimit64 on another process")


def _prlimit64(inner):
    def handler(t, regs) -> int:
        pid, resource = _int32(regs[ARG[0]]), regs[ARG[1]] & 0xFFFFFFFF
        new, old = regs[ARG[2]], regs[ARG[3]]
        if new:
            cur, top = struct.unpack("<QQ", mem.read(t, new, 16))      # EFAULT first, as the kernel
        if pid and pid != t.pid and not os.path.exists(f"/proc/{t.pid}/task/{pid}"):
            raise _other_process(t, pid)
        if resource >= RLIM_NLIMITS or (new and cur > top):
            raise _einval()
        if not new:
            if not old:
                t.ret = 0
                return SKIP
            regs[R_ORIG_RAX] = GETRLIMIT
            regs[ARG[0]], regs[ARG[1]] = resource, old
            return CHANGED
        before = _limits(t.pid, resource) if old else b""
        regs[R_ORIG_RAX] = SETRLIMIT
        regs[ARG[0]], regs[ARG[1]] = resource, new
        if not old:
            return CHANGED

        def done(t, regs) -> int:
            if regs[R_RAX] != 0:
                return 0
            try:
                mem.write(t, old, before)
            except OSError:
                regs[R_RAX] = -errno.EFAULT & M64
                return CHANGED
            return 0

        return _exit_last(t, 0, done)
    return handler


# ---- renameat2 ---------------------------------------------------------------------------------
def _renameat2(inner):
    def handler(t, regs) -> int:
        if regs[ARG[4]] & 0xFFFFFFFF:
            raise OSError(errno.ENOSYS, "renameat2 with flags")     # the node's answer
        act = inner(t, regs) if inner is not None else 0
        if act & SKIP:
            return act
        regs[R_ORIG_RAX] = RENAMEAT
        return act | CHANGED
    return handler


# ---- newfstatat's AT_EMPTY_PATH ----------------------------------------------------------------
def _fstatat(inner):
    def handler(t, regs) -> int:
        flags = regs[ARG[3]] & 0xFFFFFFFF
        if not flags & (AT_EMPTY_PATH | AT_NO_AUTOMOUNT):
            return inner(t, regs) if inner is not None else 0
        act = inner(t, regs) if inner is not None else 0
        if act & SKIP:
            return act
        path = regs[ARG[1]]
        if flags & AT_EMPTY_PATH and (not path or mem.read(t, path, 1) == b"\0"):
            if _int32(regs[ARG[0]]) == AT_FDCWD:        # the cwd itself
                regs[ARG[1]] = mem.push(t, b".\0")
                regs[ARG[3]] = 0
            else:
                regs[R_ORIG_RAX] = FSTAT
                regs[ARG[1]] = regs[ARG[2]]
        else:       # any other flag: the node's kernel answers for it
            regs[ARG[3]] = flags & ~(AT_EMPTY_PATH | AT_NO_AUTOMOUNT)
        return act | CHANGED
    return handler
