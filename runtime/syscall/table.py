"""The table of every x86_64 system call that takes a path (or must be refused), PRoot-style.

Each path-taking call lists its path arguments: which register holds the path, which holds the
directory fd it is relative to (None: the cwd), how to decide whether the last component is
followed, whether `AT_EMPTY_PATH` / a NULL path means "the fd itself" (nothing to translate), and
whether the call writes (for read-only binds: EROFS). `special` names a dedicated handler in
`runtime.syscall.enter` for calls whose work is more than a path rewrite (execve, getcwd, readlink,
chroot, sockets, openat2); the socket calls that give an AF_UNIX name back are listed too. The
seccomp filter is built from this table: only these calls stop.
"""

from __future__ import annotations

import errno

from runtime.syscall.sysnums import NUMBERS

# How the last component is treated.
FOLLOW = 0          # always followed (stat, open without flags, chdir, ...)
NOFOLLOW = 1        # never followed (lstat, readlink, unlink, ...)
OPEN_FLAGS = 2      # open flags: O_NOFOLLOW, or O_CREAT|O_EXCL -> not followed
AT_NOFOLLOW = 3     # AT_SYMLINK_NOFOLLOW in the flags argument -> not followed
AT_FOLLOW = 4       # followed only with AT_SYMLINK_FOLLOW (linkat, name_to_handle_at)
INOTIFY = 5         # IN_DONT_FOLLOW in the mask -> not followed
FANOTIFY = 6        # FAN_MARK_DONT_FOLLOW in the flags -> not followed
OPENAT2 = 7         # O_NOFOLLOW / RESOLVE_NO_SYMLINKS in struct open_how

# Whether the call modifies the tree (refused with EROFS inside a read-only bind).
W_NO = 0
W_YES = 1
W_OPEN = 2          # depends on the open flags (O_WRONLY, O_RDWR, O_CREAT, O_TRUNC)

O_WRONLY, O_RDWR, O_CREAT, O_EXCL, O_TRUNC = 0o1, 0o2, 0o100, 0o200, 0o1000
O_NOFOLLOW = 0o400000
O_WRITE_MASK = O_WRONLY | O_RDWR | O_CREAT | O_TRUNC
AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_REMOVEDIR = 0x200
AT_SYMLINK_FOLLOW = 0x400
AT_EMPTY_PATH = 0x1000
IN_DONT_FOLLOW = 0x02000000
FAN_MARK_DONT_FOLLOW = 0x4


class PathArg:
    """One path argument of a call (plain class: this table is built at every start-up)."""

    __slots__ = ("arg", "dirfd", "follow", "flags", "empty_ok", "parent_op")

    def __init__(self, arg: int, dirfd: int | None = None, follow: int = FOLLOW,
                 flags: int | None = None, empty_ok: bool = False, parent_op: bool = False) -> None:
        self.arg = arg                  # register index (0..5) of the path
        self.dirfd = dirfd              # register index of its dirfd; None: relative to the cwd
        self.follow = follow            # one of FOLLOW ... OPENAT2
        self.flags = flags              # register index of the flags the follow rule reads
        self.empty_ok = empty_ok        # "" with AT_EMPTY_PATH (or NULL): the fd itself
        self.parent_op = parent_op      # the call acts on the entry itself (unlink, mkdir, ...)


class Call:
    """One system call the tracer stops on or refuses."""

    __slots__ = ("name", "nr", "paths", "write", "write_flags", "special", "forget", "refuse",
                 "trace_if_arg", "fd_bypass")

    def __init__(self, name: str, paths: tuple[PathArg, ...] = (), write: int = W_NO,
                 write_flags: int | None = None, special: str | None = None, forget: bool = False,
                 refuse: int = 0, trace_if_arg: int | None = None,
                 fd_bypass: tuple[int, int] | None = None) -> None:
        self.name = name
        self.nr = NUMBERS[name]
        self.paths = paths
        self.write = write
        self.write_flags = write_flags      # register index of the open flags for W_OPEN
        self.special = special              # dedicated handler name in runtime.syscall.enter
        self.forget = forget                # may remove/replace entries or create symlinks: drop the caches
        self.refuse = refuse                # errno returned without running the call
        self.trace_if_arg = trace_if_arg    # stop only when this argument is non-zero (seccomp)
        # (dirfd arg, flags arg): no stop for the fstat pattern (dirfd >= 0, flags == AT_EMPTY_PATH)
        self.fd_bypass = fd_bypass


def _p(arg: int, follow: int = FOLLOW, flags: int | None = None, empty_ok: bool = False,
       parent_op: bool = False) -> PathArg:
    return PathArg(arg, None, follow, flags, empty_ok, parent_op)


def _at(dirfd: int, arg: int, follow: int = FOLLOW, flags: int | None = None, empty_ok: bool = False,
        parent_op: bool = False) -> PathArg:
    return PathArg(arg, dirfd, follow, flags, empty_ok, parent_op)


_ENT = _p(0, parent_op=True, follow=NOFOLLOW)

CALLS: tuple[Call, ...] = (
    # open / create
    Call("open", (_p(0, OPEN_FLAGS, flags=1),), W_OPEN, write_flags=1),
    Call("creat", (_p(0, OPEN_FLAGS),), W_YES),
    Call("openat", (_at(0, 1, OPEN_FLAGS, flags=2),), W_OPEN, write_flags=2),
    Call("openat2", (_at(0, 1, OPENAT2),), W_OPEN, special="openat2"),
    Call("open_tree", (_at(0, 1, AT_NOFOLLOW, flags=2, empty_ok=True),)),
    Call("open_tree_attr", (_at(0, 1, AT_NOFOLLOW, flags=2, empty_ok=True),)),
    Call("name_to_handle_at", (_at(0, 1, AT_FOLLOW, flags=4, empty_ok=True),)),
    # stat / access
    Call("stat", (_p(0),)),
    Call("lstat", (_p(0, NOFOLLOW),)),
    # glibc's fstat(fd) is newfstatat(fd, "", AT_EMPTY_PATH): the seccomp filter lets that exact
    # pattern through without a stop (see runtime.syscall.seccomp)
    Call("newfstatat", (_at(0, 1, AT_NOFOLLOW, flags=3, empty_ok=True),), fd_bypass=(0, 3)),
    Call("statx", (_at(0, 1, AT_NOFOLLOW, flags=2, empty_ok=True),)),
    Call("access", (_p(0),)),
    Call("faccessat", (_at(0, 1),)),
    Call("faccessat2", (_at(0, 1, AT_NOFOLLOW, flags=3, empty_ok=True),)),
    Call("statfs", (_p(0),)),
    Call("readlink", (_p(0, NOFOLLOW),), special="readlink"),
    Call("readlinkat", (_at(0, 1, NOFOLLOW, empty_ok=True),), special="readlink"),
    # directories and cwd
    Call("chdir", (_p(0),)),
    Call("getcwd", special="getcwd"),
    Call("chroot", (_p(0),), special="chroot"),
    Call("mkdir", (_ENT,), W_YES),
    Call("mkdirat", (_at(0, 1, NOFOLLOW, parent_op=True),), W_YES),
    Call("rmdir", (_ENT,), W_YES, forget=True),
    # directory entries
    Call("unlink", (_ENT,), W_YES, forget=True),
    Call("unlinkat", (_at(0, 1, NOFOLLOW, parent_op=True),), W_YES, forget=True),
    Call("rename", (_ENT, _p(1, NOFOLLOW, parent_op=True)), W_YES, forget=True),
    Call("renameat", (_at(0, 1, NOFOLLOW, parent_op=True), _at(2, 3, NOFOLLOW, parent_op=True)),
         W_YES, forget=True),
    Call("renameat2", (_at(0, 1, NOFOLLOW, parent_op=True), _at(2, 3, NOFOLLOW, parent_op=True)),
         W_YES, forget=True),
    Call("link", (_p(0, NOFOLLOW), _p(1, NOFOLLOW, parent_op=True)), W_YES, forget=True),
    Call("linkat", (_at(0, 1, AT_FOLLOW, flags=4, empty_ok=True), _at(2, 3, NOFOLLOW, parent_op=True)),
         W_YES, forget=True),
    Call("symlink", (_p(1, NOFOLLOW, parent_op=True),), W_YES, forget=True),      # the target is content
    Call("symlinkat", (_at(1, 2, NOFOLLOW, parent_op=True),), W_YES, forget=True),
    Call("mknod", (_ENT,), W_YES),
    Call("mknodat", (_at(0, 1, NOFOLLOW, parent_op=True),), W_YES),
    # attributes
    Call("chmod", (_p(0),), W_YES),
    Call("fchmodat", (_at(0, 1),), W_YES),
    Call("fchmodat2", (_at(0, 1, AT_NOFOLLOW, flags=3, empty_ok=True),), W_YES),
    Call("chown", (_p(0),), W_YES),
    Call("lchown", (_p(0, NOFOLLOW),), W_YES),
    Call("fchownat", (_at(0, 1, AT_NOFOLLOW, flags=4, empty_ok=True),), W_YES),
    Call("truncate", (_p(0),), W_YES),
    Call("utime", (_p(0),), W_YES),
    Call("utimes", (_p(0),), W_YES),
    Call("futimesat", (_at(0, 1),), W_YES),
    Call("utimensat", (_at(0, 1, AT_NOFOLLOW, flags=3, empty_ok=True),), W_YES),
    Call("file_getattr", (_at(0, 1, AT_NOFOLLOW, flags=4, empty_ok=True),)),
    Call("file_setattr", (_at(0, 1, AT_NOFOLLOW, flags=4, empty_ok=True),), W_YES),
    # extended attributes
    Call("setxattr", (_p(0),), W_YES),
    Call("lsetxattr", (_p(0, NOFOLLOW),), W_YES),
    Call("getxattr", (_p(0),)),
    Call("lgetxattr", (_p(0, NOFOLLOW),)),
    Call("listxattr", (_p(0),)),
    Call("llistxattr", (_p(0, NOFOLLOW),)),
    Call("removexattr", (_p(0),), W_YES),
    Call("lremovexattr", (_p(0, NOFOLLOW),), W_YES),
    Call("setxattrat", (_at(0, 1, AT_NOFOLLOW, flags=2, empty_ok=True),), W_YES),
    Call("getxattrat", (_at(0, 1, AT_NOFOLLOW, flags=2, empty_ok=True),)),
    Call("listxattrat", (_at(0, 1, AT_NOFOLLOW, flags=2, empty_ok=True),)),
    Call("removexattrat", (_at(0, 1, AT_NOFOLLOW, flags=2, empty_ok=True),), W_YES),
    # notification, accounting, quota
    Call("inotify_add_watch", (_p(1, INOTIFY, flags=2),)),
    Call("fanotify_mark", (_at(3, 4, FANOTIFY, flags=1, empty_ok=True),)),
    Call("acct", (_p(0),)),
    Call("quotactl", (_p(1),)),
    # exec
    Call("execve", (_p(0),), special="execve"),
    Call("execveat", (_at(0, 1, AT_NOFOLLOW, flags=4, empty_ok=True),), special="execve"),
    # AF_UNIX socket addresses
    Call("bind", special="sockaddr"),
    Call("connect", special="sockaddr"),
    Call("sendto", special="sockaddr", trace_if_arg=4),    # only with a destination address
    # AF_UNIX names given back (host -> guest); accept only with an address buffer
    Call("getsockname", special="sockname"),
    Call("getpeername", special="sockname"),
    Call("accept", special="sockname", trace_if_arg=1),
    Call("accept4", special="sockname", trace_if_arg=1),
    # never run: no translation possible, or they would change the host's mounts
    Call("open_by_handle_at", refuse=errno.ENOSYS),
    Call("io_uring_setup", refuse=errno.ENOSYS),
    Call("uselib", refuse=errno.ENOSYS),
    Call("mount", refuse=errno.EPERM),
    Call("umount2", refuse=errno.EPERM),
    Call("pivot_root", refuse=errno.EPERM),
    Call("swapon", refuse=errno.EPERM),
    Call("swapoff", refuse=errno.EPERM),
    Call("move_mount", refuse=errno.EPERM),
    Call("fsconfig", refuse=errno.EPERM),
    Call("fspick", refuse=errno.EPERM),
    Call("mount_setattr", refuse=errno.EPERM),
)

BY_NR: dict[int, Call] = {c.nr: c for c in CALLS}
TRACED: frozenset[int] = frozenset(c.nr for c in CALLS if not c.refuse and c.trace_if_arg is None
                                   and c.fd_bypass is None)
FD_BYPASS: dict[int, tuple[int, int]] = {c.nr: c.fd_bypass for c in CALLS if c.fd_bypass is not None}
TRACED_IF_ARG: dict[int, int] = {c.nr: c.trace_if_arg for c in CALLS if c.trace_if_arg is not None}
REFUSED: dict[int, int] = {c.nr: c.refuse for c in CALLS if c.refuse}
