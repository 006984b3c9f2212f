"""The node cache: where an archive's runtime and rootfs are extracted once, and how they are published.

Location: `--carryon-cache DIR` / `$CARRYON_CACHE` (only that one when given), else
`$XDG_CACHE_HOME/carryon` or `~/.cache/carryon`, else per-user dirs `carryon-UID` under `$TMPDIR`, `/tmp`
and `/var/tmp`. A directory is used for a new extraction only when it is writable, exec-capable (a tiny
file is really executed: `noexec` mounts fail) and has room; the first one that fits wins.

Publication never relies on locks (`flock` is unreliable on NFS): an entry is extracted into a private
temp dir `.tmp-KEY-HOST-PID-N`, its marker `.complete` is written last, and the dir is renamed to `KEY`.
Readers trust only `KEY/.complete`. When several runs race, the losers' rename fails and they use the
winner's entry. A run killed mid-extraction leaves only a temp dir, which later cold starts remove.
The sh launcher (runtime/launcher.sh) follows the same rules for the runtime dir `rt-HASH`.
"""

from __future__ import annotations

import errno
import os
import stat
import time

from runtime.errors import CarryonError

MARKER = ".complete"
STALE_FOREIGN_SECONDS = 24 * 3600   # temp dirs of other hosts (shared NFS cache) older than this go
_TEMP_PATTERN = r"^\.(?:tmp|run)-(?:rt-)?[0-9a-f]{32}-(?P<host>.+)-(?P<pid>\d+)-[A-Za-z0-9_]+$"
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def _rand() -> str:
    return os.urandom(4).hex()


class Candidate:
    """A cache directory. A plain class (not a dataclass): this module is on every warm start, and
    `dataclasses` drags in `inspect`, `ast`, `dis`..."""

    __slots__ = ("path", "explicit")
    __hash__ = None  # type: ignore[assignment]   # mutable, like a non-frozen dataclass

    def __init__(self, path: str, explicit: bool = False) -> None:
        self.path = path
        self.explicit = explicit     # given by the user: no ownership check, no fallback to others

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return (self.path, self.explicit) == (other.path, other.explicit)  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"Candidate(path={self.path!r}, explicit={self.explicit!r})"


_JSON_WS = " \t\n\r"
_JSON_CONSTANTS = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}


class _JsonContext:
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = _JSON_CONSTANTS.__getitem__
    memo: dict = {}


def json_loads(text: str):
    """`json.loads(text)` for the warm path: the C scanner of `_json` alone, without `json.decoder`
    (which imports `re` and compiles its patterns at import). Invalid JSON raises ValueError."""
    try:
        from _json import make_scanner
    except ImportError:                     # no C accelerator: the standard way
        import json
        return json.loads(text)
    begin = len(text) - len(text.lstrip(_JSON_WS))
    try:
        value, end = make_scanner(_JsonContext)(text, begin)  # type: ignore[arg-type]  # duck-typed context
    except StopIteration as e:
        raise ValueError(f"invalid JSON at offset {e.value}") from None
    if text[end:].strip(_JSON_WS):
        raise ValueError(f"invalid JSON: extra data at offset {end}")
    return value


def hostname() -> str:
    name = os.uname().nodename or "localhost"
    return name if set(name) <= _HOST_CHARS else "localhost"


def candidates(explicit: str | None, env: dict[str, str] | os._Environ | None = None) -> list[Candidate]:
    """Cache directories in order of preference (the sh launcher computes the same list)."""
    env = os.environ if env is None else env
    if explicit:
        return [Candidate(os.path.abspath(explicit), explicit=True)]
    out: list[str] = []
    xdg = env.get("XDG_CACHE_HOME", "")
    home = env.get("HOME", "")
    if xdg and os.path.isabs(xdg):
        out.append(os.path.join(xdg, "carryon"))
    elif home and home != "/" and os.path.isabs(home):
        out.append(os.path.join(home, ".cache", "carryon"))
    uid = os.getuid()
    tmpdir = env.get("TMPDIR", "")
    for base in ([tmpdir.rstrip("/") or "/"] if tmpdir and os.path.isabs(tmpdir) else []) + ["/tmp", "/var/tmp"]:
        out.append(os.path.join(base, f"carryon-{uid}"))
    seen: list[str] = []
    for p in out:
        p = os.path.normpath(p)
        if p not in seen:
            seen.append(p)
    return [Candidate(p) for p in seen]


# ---------------------------------------------------------------- the trust rule

MISSING = "missing"        # a problem that is no problem: nothing there (yet)


def _mode(st: os.stat_result) -> str:
    return "%04o" % (st.st_mode & 0o7777)


def _parent_problem(path: str) -> str | None:
    """A default cache dir's parent must keep others from swapping the dir: owned by root or us, and
    not writable by others unless sticky (like /tmp)."""
    parent = os.path.dirname(path) or "/"
    try:
        pst = os.stat(parent)
    except OSError as e:
        return f"cannot stat its parent {parent} ({e.strerror})"
    if pst.st_uid not in (0, os.getuid()):
        return f"its parent {parent} is owned by uid {pst.st_uid}"
    if pst.st_mode & 0o022 and not pst.st_mode & stat.S_ISVTX:
        return f"its parent {parent} is writable by others and not sticky (mode {_mode(pst)})"
    return None


def check_candidate(c: Candidate) -> tuple[os.stat_result | None, str | None]:
    """(stat of the cache dir, None) when `c` may be read and written; (None, why) when not, with why
    == MISSING when it does not exist. Creates nothing.

    A default candidate must be a real directory (not a symlink), owned by us, not writable by group or
    others, in a parent that others cannot swap it in. An explicit one (`--carryon-cache`,
    `$CARRYON_CACHE`) is the user's choice: any directory, symlinks followed; its entries are checked
    by `entry_problem`."""
    try:
        st = os.stat(c.path) if c.explicit else os.lstat(c.path)
    except FileNotFoundError:
        return None, MISSING
    except OSError as e:
        return None, f"cannot stat ({e.strerror})"
    if stat.S_ISLNK(st.st_mode):
        return None, "is a symbolic link (carryon makes this directory itself)"
    if not stat.S_ISDIR(st.st_mode):
        return None, "not a directory"
    if c.explicit:
        return st, None
    if st.st_uid != os.getuid():
        return None, f"owned by uid {st.st_uid}, not {os.getuid()}"
    if st.st_mode & 0o022:
        return None, f"writable by group or others (mode {_mode(st)})"
    why = _parent_problem(c.path)
    return (None, why) if why else (st, None)


def entry_problem(path: str, explicit: bool, cache_st: os.stat_result) -> str | None:
    """None when `path` is a published entry (runtime dir or image entry) of a trusted cache dir that
    we may use; MISSING when it is absent or unpublished (no marker); else why it is not trusted.

    An entry is a real directory, not writable by others, with a regular file as its marker. In a
    default cache it is ours and not group-writable. In an explicit cache that is not world-writable
    (a cache the user shares with a group), another user's entry is trusted too, and a group-writable
    one only for the cache dir's group: everyone who can write the cache can run code as its users."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return MISSING
    except OSError as e:
        return f"cannot stat ({e.strerror})"
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return "not a directory"
    shared = explicit and not cache_st.st_mode & 0o002
    if st.st_uid != os.getuid() and not shared:
        return f"owned by uid {st.st_uid}, not {os.getuid()}"
    if st.st_mode & 0o002 or (st.st_mode & 0o020 and not (shared and st.st_gid == cache_st.st_gid)):
        return f"writable by group or others (mode {_mode(st)})"
    try:
        mst = os.lstat(os.path.join(path, MARKER))
    except FileNotFoundError:
        return MISSING
    except OSError as e:
        return f"cannot stat its marker ({e.strerror})"
    if not stat.S_ISREG(mst.st_mode):
        return "its marker is not a regular file"
    if not os.access(path, os.R_OK | os.X_OK):
        return "not readable"
    return None


def find_entry(cands: list[Candidate], name: str, say=None) -> str | None:
    """The first trusted published entry `name` among the trusted candidates; what is skipped for
    not being trusted goes to `say` (--carryon-verbose)."""
    for c in cands:
        st, why = check_candidate(c)
        if st is None:
            if say and why != MISSING:
                say(f"cache dir {c.path} not used: {why}")
            continue
        p = os.path.join(c.path, name)
        why = entry_problem(p, c.explicit, st)
        if why is None:
            return p
        if say and why != MISSING:
            say(f"cache entry {p} not used: {why}")
    return None


def candidate_of(path: str, explicit: str | None = None) -> Candidate:
    """The candidate a cache dir path stands for: a default one (strict rules) when it is one of the
    default locations, else an explicit one."""
    path = os.path.normpath(path)
    for c in candidates(explicit):
        if c.path == path:
            return c
    return Candidate(path, explicit=True)


# ---------------------------------------------------------------- choosing a place to extract

def _make_private(c: Candidate) -> None:
    """A default cache dir of ours that others could write (an older carryon, a loose umask): made
    private again, through a descriptor of the real directory (never a symlink's target). Its
    entries are still checked one by one."""
    try:
        fd = os.open(c.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return
    try:
        st = os.fstat(fd)
        if st.st_uid == os.getuid() and st.st_mode & 0o022:
            os.fchmod(fd, 0o700)
    except OSError:
        pass
    finally:
        os.close(fd)


def unusable_reason(c: Candidate, need_bytes: int, need_inodes: int = 0) -> str | None:
    """Why `c` cannot take a new extraction of `need_bytes` (None: it can). Creates the dir."""
    try:
        os.makedirs(c.path, mode=0o700, exist_ok=True)
    except OSError as e:
        return f"cannot create ({e.strerror})"
    st, why = check_candidate(c)
    if st is None and not c.explicit and why and why.startswith("writable by group"):
        _make_private(c)
        st, why = check_candidate(c)
    if st is None:
        return why
    try:
        vfs = os.statvfs(c.path)
    except OSError as e:
        return f"cannot statvfs ({e.strerror})"
    if vfs.f_flag & os.ST_RDONLY:
        return "read-only file system"
    if vfs.f_flag & os.ST_NOEXEC:
        return "mounted noexec"
    if not os.access(c.path, os.W_OK | os.X_OK):
        return "not writable"
    free = vfs.f_bavail * vfs.f_frsize
    if free < need_bytes:
        return f"only {free // 2**20} MB free, {need_bytes // 2**20 + 1} MB needed"
    if vfs.f_files and need_inodes and vfs.f_favail < need_inodes:
        return f"only {vfs.f_favail} inodes free, {need_inodes} needed"
    reason = exec_test(c.path)
    if reason:
        return reason
    return None


def exec_test(d: str) -> str | None:
    """Really execute a tiny file in `d` (noexec mounts, read-only or full dirs all fail here)."""
    path = os.path.join(d, f".exec-test-{hostname()}-{os.getpid()}-{_rand()}")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o700)
    except OSError as e:
        return "not writable" if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else \
            f"cannot create files ({e.strerror})"
    try:
        try:
            os.write(fd, b"#!/bin/sh\nexit 0\n")
        finally:
            os.close(fd)
        try:
            pid = os.posix_spawn(path, [path], {})
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EPERM):
                return "mounted noexec (cannot execute files there)"
            if e.errno == errno.ENOENT and not os.path.exists("/bin/sh"):
                return None     # no /bin/sh to run the probe with: trust statvfs's noexec flag
            return f"cannot execute files there ({e.strerror})"
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            return "cannot execute files there"
        return None
    except OSError as e:
        return f"cannot write there ({e.strerror})"
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass


def choose(cands: list[Candidate], need_bytes: int, need_inodes: int = 0, what: str = "the image") -> str:
    """The first candidate that can take an extraction; CarryonError listing why none fits."""
    why = []
    for c in cands:
        reason = unusable_reason(c, need_bytes, need_inodes)
        if reason is None:
            return c.path
        why.append(f"{c.path}: {reason}")
    hint = "set CARRYON_CACHE or --carryon-cache to a writable, exec-capable directory with room " \
           "(e.g. node-local scratch)"
    raise CarryonError(f"no usable cache directory for {what} ({need_bytes // 2**20 + 1} MB): "
                       + "; ".join(why) + f"; {hint}")


# ---------------------------------------------------------------- temp dirs and publication

def new_temp(cache_dir: str, key: str, kind: str = "tmp", shared: bool = False) -> str:
    """A new dir `.KIND-KEY-HOST-PID-RAND` in `cache_dir`: 0700, or 0755 for an entry of an explicit
    cache (`shared`: its other users read it). `mkdir` never follows a planted symlink."""
    for _ in range(100):
        p = os.path.join(cache_dir, f".{kind}-{key}-{hostname()}-{os.getpid()}-{_rand()}")
        try:
            os.mkdir(p, 0o700)
            if shared:
                os.chmod(p, 0o755)
            return p
        except FileExistsError:
            continue
    raise CarryonError(f"cannot create a temp dir in {cache_dir}")


def write_marker(d: str, text: str = "") -> None:
    fd = os.open(os.path.join(d, MARKER), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o644)
    with open(fd, "w") as f:
        f.write(text)
        f.flush()


def write_atomic(path: str, text: str, mode: int = 0o644, what: str = "") -> None:
    """Replace `path` with `text` (a reader sees the old file or the new one, never half of one)
    through a fresh sibling name created exclusively: the directory may be a shared one (/tmp),
    where a predictable name could be a planted symlink to one of the user's files. An error is a
    CarryonError naming `path` (after `what`), never the temporary file."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.{_rand()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
        with open(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise CarryonError(f"cannot write {what + ' ' if what else ''}{path}: {e.strerror or e}") from None


def publish(tmp: str, dest: str, cand: Candidate | None = None) -> str:
    """Rename finished `tmp` (marker inside) to `dest`. When a trusted entry is already there (another
    run won), drop `tmp` and use it; an untrusted or unpublished one of ours is replaced; one of
    another user is refused (never deleted)."""
    cand = cand or candidate_of(os.path.dirname(dest))
    for _ in range(5):
        try:
            os.rename(tmp, dest)
            return dest
        except OSError as e:
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.ENOTDIR):
                raise
        cst, why = check_candidate(cand)
        if cst is None:
            raise CarryonError(f"cannot publish {dest}: the cache dir {cand.path} {why}")
        why = entry_problem(dest, cand.explicit, cst)
        if why is None:
            remove(tmp)
            return dest
        try:
            owner = os.lstat(dest).st_uid
        except FileNotFoundError:
            continue
        if owner != os.getuid():
            remove(tmp)
            raise CarryonError(f"{dest} is in the way and not trusted ({why}; owned by uid {owner}): "
                               "remove it or set CARRYON_CACHE to another directory")
        aside = dest + f".trash-{hostname()}-{os.getpid()}-{_rand()}"
        try:
            os.rename(dest, aside)
        except FileNotFoundError:
            continue
        remove(aside)
    raise CarryonError(f"cannot publish the cache entry {dest}")


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def remove(path: str) -> None:
    """rm -rf that never follows a symlink (each directory is opened with O_NOFOLLOW and emptied
    through its descriptor, so a link swapped in meanwhile leads nowhere) and also empties our own
    unwritable dirs (images have mode-000 and 0500 dirs)."""
    parent, name = os.path.split(os.path.abspath(path))
    try:
        pfd = os.open(parent or "/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        _remove_at(pfd, name)
    except FileNotFoundError:
        pass
    finally:
        os.close(pfd)


def _open_dir_at(pfd: int, name: str) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=pfd)
    except PermissionError:
        pass
    # our own dir without read/search permission: open it with O_PATH, chmod it through /proc
    opath = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
    try:
        if os.fstat(opath).st_uid != os.getuid():
            raise PermissionError(errno.EACCES, "not ours", name)
        os.chmod(f"/proc/self/fd/{opath}", 0o700)
        return os.open(f"/proc/self/fd/{opath}", _DIR_FLAGS & ~os.O_NOFOLLOW)
    finally:
        os.close(opath)


def _remove_at(pfd: int, name: str) -> None:
    st = os.lstat(name, dir_fd=pfd)
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=pfd)
        return
    fd = _open_dir_at(pfd, name)
    try:
        if st.st_uid == os.getuid() and st.st_mode & 0o300 != 0o300:
            os.fchmod(fd, 0o700)                 # to delete its entries
        for e in os.scandir(fd):
            try:
                _remove_at(fd, e.name)
            except FileNotFoundError:
                pass
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=pfd)


def remove_entry(entry: str) -> bool:
    """Unpublish our entry (rename aside: it stops being trusted at once), then delete it. Someone
    else's, or anything but a real directory, is left alone (False)."""
    try:
        st = os.lstat(entry)
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        return False
    aside = os.path.join(os.path.dirname(entry),
                         f".tmp-{os.path.basename(entry)}-{hostname()}-{os.getpid()}-{_rand()}")
    try:
        os.rename(entry, aside)
    except FileNotFoundError:
        return False
    remove(aside)
    return True


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(cache_dir: str, only_key: str | None = None) -> list[str]:
    """Remove our temp dirs left by dead runs: this host's whose process is gone, other hosts' older
    than a day. Only real directories we own: a symlink or another user's file named like one stays."""
    import re
    temp_re = re.compile(_TEMP_PATTERN)
    removed: list[str] = []
    try:
        names = os.listdir(cache_dir)
    except OSError:
        return removed
    me = hostname()
    now = time.time()
    for name in names:
        m = temp_re.match(name)
        if not m or (only_key and only_key not in name):
            continue
        p = os.path.join(cache_dir, name)
        try:
            st = os.lstat(p)
        except OSError:
            continue
        if st.st_uid != os.getuid() or not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
            continue
        if m.group("host") == me:
            if int(m.group("pid")) == os.getpid() or pid_alive(int(m.group("pid"))):
                continue
        elif now - st.st_mtime < STALE_FOREIGN_SECONDS:
            continue
        try:
            remove(p)
            removed.append(p)
        except OSError:
            pass
    return removed
