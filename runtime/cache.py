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
        value, end = make_scanner(_JsonContext)(text, begin)
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


def find_entry(cands: list[Candidate], name: str) -> str | None:
    """The first published (marker present) entry `name` among the candidates."""
    for c in cands:
        p = os.path.join(c.path, name)
        if os.path.exists(os.path.join(p, MARKER)):
            return p
    return None


# ---------------------------------------------------------------- choosing a place to extract

def _is_private_default(c: Candidate) -> bool:
    return not c.explicit and os.path.basename(c.path).startswith("carryon-")


def unusable_reason(c: Candidate, need_bytes: int, need_inodes: int = 0) -> str | None:
    """Why `c` cannot take a new extraction of `need_bytes` (None: it can). Creates the dir."""
    try:
        os.makedirs(c.path, mode=0o700, exist_ok=True)
        st = os.stat(c.path)
    except OSError as e:
        return f"cannot create ({e.strerror})"
    if not stat.S_ISDIR(st.st_mode):
        return "not a directory"
    if not c.explicit:
        if st.st_uid != os.getuid():
            return f"owned by uid {st.st_uid}, not {os.getuid()}"
        if _is_private_default(c) and st.st_mode & 0o077:
            try:
                os.chmod(c.path, 0o700)
            except OSError:
                return "not private (mode %o)" % (st.st_mode & 0o7777)
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

def new_temp(cache_dir: str, key: str, kind: str = "tmp") -> str:
    """A private dir `.KIND-KEY-HOST-PID-RAND` in `cache_dir` (0700)."""
    for _ in range(100):
        p = os.path.join(cache_dir, f".{kind}-{key}-{hostname()}-{os.getpid()}-{_rand()}")
        try:
            os.mkdir(p, 0o700)
            return p
        except FileExistsError:
            continue
    raise CarryonError(f"cannot create a temp dir in {cache_dir}")


def write_marker(d: str, text: str = "") -> None:
    with open(os.path.join(d, MARKER), "w") as f:
        f.write(text)
        f.flush()


def publish(tmp: str, dest: str) -> str:
    """Rename finished `tmp` (marker inside) to `dest`; if another run won, drop `tmp`, use theirs."""
    for _ in range(5):
        try:
            os.rename(tmp, dest)
            return dest
        except OSError as e:
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.ENOTDIR):
                raise
        if os.path.exists(os.path.join(dest, MARKER)):
            remove(tmp)
            return dest
        # `dest` exists but was never published (only possible by hand): move it aside and retry
        aside = dest + f".trash-{hostname()}-{os.getpid()}-{_rand()}"
        try:
            os.rename(dest, aside)
        except FileNotFoundError:
            continue
        remove(aside)
    raise CarryonError(f"cannot publish the cache entry {dest}")


def remove(path: str) -> None:
    """rm -rf, also for trees with unwritable dirs (images have mode-000 and 0500 dirs)."""
    try:
        _rmtree(path)
    except FileNotFoundError:
        pass
    except OSError:
        from runtime.extract import remove_tree     # slower, fixes permissions on the way
        try:
            remove_tree(path)
        except FileNotFoundError:
            pass


def _rmtree(path: str) -> None:
    if not stat.S_ISDIR(os.lstat(path).st_mode):
        os.unlink(path)
        return
    with os.scandir(path) as it:
        for e in it:
            if e.is_dir(follow_symlinks=False):
                _rmtree(e.path)
            else:
                os.unlink(e.path)
    os.rmdir(path)


def remove_entry(entry: str) -> None:
    """Unpublish first (rename aside: the entry stops being trusted at once), then delete."""
    aside = os.path.join(os.path.dirname(entry),
                         f".tmp-{os.path.basename(entry)}-{hostname()}-{os.getpid()}-{_rand()}")
    try:
        os.rename(entry, aside)
    except FileNotFoundError:
        return
    remove(aside)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(cache_dir: str, only_key: str | None = None) -> list[str]:
    """Remove temp dirs left by dead runs: this host's whose process is gone, other hosts' older than a day."""
    import re
    temp_re = re.compile(_TEMP_PATTERN)
    removed = []
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
            age = now - os.lstat(p).st_mtime
        except OSError:
            continue
        if m.group("host") == me:
            if int(m.group("pid")) == os.getpid() or _pid_alive(int(m.group("pid"))):
                continue
        elif age < STALE_FOREIGN_SECONDS:
            continue
        try:
            remove(p)
            removed.append(p)
        except OSError:
            pass
    return removed
