"""Component-by-component canonicalisation of a guest path inside the guest root.

`resolve` walks the guest path one component at a time, `lstat`ing each prefix on the HOST through
the bindings (`Mapper.bind_hosts`), the way the kernel walks a path under a real `chroot`:

- a symlink's target is read; an absolute target restarts from the GUEST root, a relative one
  continues from the link's directory; more than 40 links in one walk -> OSError(ELOOP);
- `..` pops one guest component (so it leaves a bind for the guest directory the bind sits in) and
  stays at `/` at the guest root; `.` and empty components are dropped; as a non-root user, a `..`
  out of a directory without search permission stops the walk (the kernel says EACCES);
- the last component is followed only when `follow_last` is true, or when the path ends with `/`,
  `/.` or `/..` (lookup semantics: `lstat("link/")` follows and requires a directory) unless
  `parent_op` (calls that act on the directory entry itself: unlink, rmdir, rename, mkdir, mknod,
  symlink's and link's new path): those never follow the last component, like the kernel;
- the walk stops at the first prefix the host refuses (missing, not a directory, no search
  permission, name too long): the remaining components are appended *lexically* to its host path,
  so the real syscall fails with the kernel's own errno (ENOENT, ENOTDIR, EACCES, ENAMETOOLONG)
  and a missing last component (`mkdir -p`, `open(O_CREAT)`, `rename` targets) is created where
  it belongs. The kernel never gets past the failing component, so the lexical rest cannot escape;
- a prefix that is a regular file followed by more components is handled the same way (ENOTDIR);
- a missing guest directory that is an ancestor of a bind point (`-b /x:/mnt/a/b` with no
  `/mnt/a` in the image) is walked as an (empty) directory so the bind stays reachable;
- the host path handed back keeps a trailing `/` when the guest path had one (or ended in `/.`,
  `/..`), so the kernel checks "is a directory" itself (ENOTDIR); with `parent_op` a last `.`/`..`,
  the guest root or a bind point come back as `HOST/.`, which the kernel refuses (EINVAL, EBUSY,
  EEXIST, ENOTDIR) instead of acting on a directory or bound host file the guest never named;
- symlinks below the guest directory where the host's /proc is bound are handed to
  `runtime.path.proc.follow` (`/proc/self`, `/proc/PID/{exe,cwd,root,fd/N}` ...) when `pid` is given.

Nothing from one call is kept for the next, except the optional caches of the mapper (guest path ->
host path of directories seen, the spelling of a directory reached through symlinks -> its
canonical guest and host paths, and the names in the image's own tree seen not to be symlinks; see
`Mapper.forget`): with them, a path whose parent is a known directory and that has no `.`, `..`,
`//` or trailing `/` (most paths) costs one `lstat` of its last component the first time, and none
after that or when the last component is not followed. Every host path built here
is made of components that `lstat` showed not to be symlinks (bind host paths are realpath'ed once),
so the kernel follows no host symlink while walking it except one the last component names when the
caller asked not to follow it: the guest stays inside its root and binds. This is containment, not
a security boundary: the tree can change between our `lstat` and the real syscall.

This walker is kept apart from `runtime.path.confine.join`, the confined join every other caller
(packer, extraction, launcher) uses, as PRoot keeps its `canonicalize` apart: the symlink, `..` and
hop-limit rules are the same (`MAXSYMLINKS` is confine's `MAX_SYMLINKS`), but here binds overlay
the tree, /proc links are answered per process, the first component the host refuses ends the walk
with a lexical rest, and the walk is written for the tracer's hot path (no call per component).
"""

from __future__ import annotations

import errno
import os

from runtime.path import proc
from runtime.path.confine import MAX_SYMLINKS

TYPE_CHECKING = False           # not `typing.TYPE_CHECKING`: importing typing slows start-up
if TYPE_CHECKING:
    from runtime.path.binding import Mapper

MAXSYMLINKS = MAX_SYMLINKS
DIRCACHE_MAX = 65536                    # entries; the cache starts over when full
_S_IFMT = 0o170000
_S_IFLNK = 0o120000
_S_IFDIR = 0o040000
_ORDINARY = proc.ORDINARY


def resolve(m: Mapper, path: str, cwd: str, follow_last: bool, parent_op: bool = False,
            pid: int | None = None, tid: int | None = None) -> tuple[str, str]:
    """(guest path, host path) of guest `path` (absolute, or relative to the canonical guest `cwd`).

    The guest path is canonical up to the first component the host refused; from there on it is
    the lexical rest, like the host path. Raises OSError(ENOENT) for "", OSError(ELOOP) for too many
    links. See the module docstring for the rules.

    Two phases in one function: the fast path (the parent is a directory the caches know: at most
    one `lstat` of the last component), then the component-by-component walk. They stay together
    because every path pays for this call: a separate function for the walk measured ~0.1-0.3 µs
    more per walk (relative paths and paths with `..` take it on every call), and the loop body
    stays inline because a call per component would cost more than most of its steps. Only what
    happens once per walk, per new directory or per symlink is apart (`_remember_alias`,
    `_remember_dir`, `_link_target`)."""
    if not path:
        raise OSError(errno.ENOENT, "empty path")
    dircache = m.dircache
    if dircache is not None and "//" not in path and "/." not in path and path[-1] != "/" \
            and path[0] != ".":
        # Fast path: the parent is a directory already seen (canonical, no symlink in it), only the
        # last component needs looking at. Anything unusual goes the long way below.
        full = path if path[0] == "/" else (cwd + "/" + path if cwd != "/" else "/" + path)
        i = full.rfind("/")
        ph = dircache.get(full[:i]) if i else m.root_host
        if ph is None and i:
            # a parent reached through symlinks before (`/lib/x86_64-linux-gnu` with /lib -> usr/lib)
            alias = m.dirlinks.get(full[:i])
            if alias is not None:
                full = alias[0] + full[i:]
                i = len(alias[0])
                ph = alias[1]
        if ph is not None:
            nh = m.bind_hosts.get(full)
            if nh is None:
                nh = ph + "/" + full[i + 1:]
                # inside the image's tree (a directory of the cache may lie in a bind)
                m.last_pure = nh.startswith(m.leaf_prefix)
            else:
                m.last_pure = False     # a bind point
                if parent_op and full in m.ovl:
                    nh = ph + "/" + full[i + 1:]    # an overlay stub: the entry in its directory
            if parent_op and full in m.bind_hosts and full not in m.ovl:
                pass                    # a bind point: the long way gives HOST/.
            elif not follow_last or parent_op:
                if m.virtual and not parent_op and full in m.virtual:
                    nh = _glued(m, full, nh)
                return (full, nh or "/")
            else:
                leaves = m.leaves
                if leaves is not None and full in leaves:
                    return (full, nh or "/")   # known not to be a symlink
                # only names inside the image's own tree, never while a forget-call is running
                keep = leaves is not None and not m.settling and nh.startswith(m.leaf_prefix)
                try:
                    mode = os.lstat(nh or "/").st_mode & _S_IFMT
                except OSError as e:
                    if full not in m.virtual or e.errno != errno.ENOENT:
                        if e.errno == errno.ENOENT:
                            if keep:
                                _keep_leaf(leaves, full)    # type: ignore[arg-type]
                        else:
                            m.last_pure = False     # EACCES: a chmod may reveal a symlink
                        return (full, nh or "/")
                    nh = m.glue_dir(full)   # a missing ancestor of a bind point
                    m.last_pure = False
                    mode = _S_IFDIR
                if mode == _S_IFDIR:
                    if not m.settling:
                        _remember_dir(m, full, nh, m.last_pure)
                    return (full, nh or "/")
                if mode != _S_IFLNK:
                    if keep:
                        _keep_leaf(leaves, full)        # type: ignore[arg-type]
                    return (full, nh or "/")
    if path[0] == "/":
        gs = [""]
        hs = [m.root_host]
    else:
        stacks = m._cwd_cache.get(cwd)
        if stacks is None:
            stacks = m._cwd_stacks(cwd)
        gs = list(stacks[0])
        hs = list(stacks[1])
    comps = path.split("/")
    last = comps[-1]
    # the last name, trailing slashes aside (`d/./` ends in `.` for the kernel, as `d/.` does)
    dotlast = path.rstrip("/").rpartition("/")[2] in (".", "..")
    trailing = dotlast or last == ""
    pending = [c for c in reversed(comps) if c and c != "."]
    follow_final = follow_last or (trailing and not parent_op)
    binds = m.bind_hosts
    lstat = os.lstat
    proc_prefix = m._proc_prefix if pid is not None else None
    search_check = m.search_check
    g = gs[-1]
    h = hs[-1]
    links = 0
    # Directory alias to remember (see `Mapper.dirlinks`): the parent of a clean absolute path, once
    # its walk went through a symlink, maps to the canonical directory it reached.
    # Never below the guest's /proc: /proc/self and friends lead to a different place per process.
    alias_of = None
    mproc = m._proc_prefix
    if dircache is not None and path[0] == "/" and len(comps) > 2 and not trailing \
            and "//" not in path and "/." not in path and (mproc is None or not path.startswith(mproc)):
        alias_of = path[:path.rfind("/")]
    settled = not m.settling            # no forget-call running: the caches may grow
    # The answer depends on nothing but the image's tree (see `Mapper.last_pure`): no bind
    # crossed, no /proc magic, no component refused for another reason than its absence.
    pure = True
    m.last_pure = False
    while pending:
        if alias_of is not None and len(pending) == 1:
            if links and settled and pure and g and g != alias_of and (
                    mproc is None or not (g + "/").startswith(mproc)):
                _remember_alias(m, alias_of, g, h)
            alias_of = None
        name = pending.pop()
        if name == "..":
            if len(gs) > 1:
                if search_check and not os.access(h or "/", os.X_OK) and g not in m.virtual:
                    pending.append(name)    # `..` needs search permission: the kernel says EACCES
                    return _lexical(g, h, pending, trailing)
                gs.pop()
                hs.pop()
                g = gs[-1]
                h = hs[-1]
            continue
        ng = g + "/" + name
        nh = binds.get(ng)
        if nh is None:
            nh = h + "/" + name
        else:
            pure = False
            if parent_op and not pending and ng in m.ovl:
                nh = h + "/" + name     # an overlay stub: the entry in its directory
        if not pending and not follow_final:
            if m.virtual and not parent_op and ng in m.virtual:
                nh = _glued(m, ng, nh)
                pure = False
            gs.append(ng)
            hs.append(nh)
            g = ng
            h = nh
            break
        if dircache is not None and ng in dircache:
            gs.append(ng)
            hs.append(nh)
            g = ng
            h = nh
            continue
        try:
            mode = lstat(nh or "/").st_mode & _S_IFMT
        except OSError as e:
            if e.errno == errno.ENOENT and ng in m.virtual:
                nh = m.glue_dir(ng)     # a missing ancestor of a bind point: the run's glue
                pure = False
                gs.append(ng)
                hs.append(nh)
                g = ng
                h = nh
                continue
            m.last_pure = pure and e.errno == errno.ENOENT
            return _lexical(ng, nh, pending, trailing)
        if mode == _S_IFLNK:
            if proc_prefix is not None and ng.startswith(proc_prefix):
                pure = False
            target = _link_target(m, ng, nh, not pending, proc_prefix, pid, tid)
            if target is None:          # kernel magic, or changed under us: the kernel answers
                return _lexical(ng, nh, pending, trailing)
            links += 1
            if links > MAXSYMLINKS:
                raise OSError(errno.ELOOP, "too many levels of symbolic links", path)
            if not target:
                raise OSError(errno.ENOENT, "empty symlink target", path)
            if not pending and target != "/" and (target[-1] == "/" or target.endswith("/.")
                                                  or target == "."):
                trailing = True         # `link -> dir/` as the last component requires a directory
            if target[0] == "/":
                del gs[1:]
                del hs[1:]
                g = ""
                h = hs[0]
            for c in reversed(target.split("/")):
                if c and c != ".":
                    pending.append(c)
            continue
        gs.append(ng)
        hs.append(nh)
        g = ng
        h = nh
        if mode == _S_IFDIR:
            if dircache is not None and settled:
                _remember_dir(m, ng, nh, pure)
        elif pending:                   # a non-directory in the middle: the kernel says ENOTDIR
            return _lexical(ng, nh, pending, trailing)
    m.last_pure = pure
    if parent_op and (dotlast or len(gs) == 1 or (g in binds and g not in m.ovl)):
        return (g or "/", h + "/.")
    if trailing and h:
        return (g or "/", h + "/")
    return (g or "/", h or "/")


def _link_target(m: Mapper, g: str, h: str, last: bool, proc_prefix: str | None,
                 pid: int | None, tid: int | None) -> str | None:
    """Target of the symlink at guest `g` (host `h`): read from the host, or answered by
    `proc.follow` below the guest's /proc (`proc_prefix`, None when no pid was given). None when
    the kernel must follow it itself (its /proc magic) or it changed under us."""
    if proc_prefix is not None and g.startswith(proc_prefix):
        # pid is not None here: the caller sets proc_prefix only with a pid
        target = proc.follow(g[len(proc_prefix):].split("/"), h, last, pid, tid, m.proc_lookup, m)  # type: ignore[arg-type]
        if target is not _ORDINARY:
            return target               # type: ignore[return-value]
    try:
        return os.readlink(h)
    except OSError:
        return None


def _remember_dir(m: Mapper, g: str, h: str, pure: bool) -> None:
    """Guest directory `g` is host directory `h` (no symlink on the way): into the directory cache,
    and into the native loop's when the answer came from the image's tree alone."""
    dircache = m.dircache
    if len(dircache) >= DIRCACHE_MAX:   # type: ignore[arg-type]
        dircache.clear()                # type: ignore[union-attr]
    dircache[g] = h                     # type: ignore[index]
    if pure and m.native_dir is not None and h.startswith(m.leaf_prefix):
        m.native_dir(g, h)


def _remember_alias(m: Mapper, alias: str, g: str, h: str) -> None:
    """Directory `alias`, spelt through symlinks, is canonical guest `g` (host `h`): into
    `Mapper.dirlinks`, and into the native loop's cache when `h` lies in the image's tree."""
    aliases = m.dirlinks
    if len(aliases) >= DIRCACHE_MAX:
        aliases.clear()
    aliases[alias] = (g, h)
    if m.native_dir is not None and h.startswith(m.leaf_prefix):
        m.native_dir(alias, h)


def _glued(m: Mapper, g: str, h: str) -> str:
    """Host path of the missing-in-image ancestor `g` of a bind point: `h` when the image (or the
    bind it lies in) has it after all, else the run's glue directory."""
    try:
        os.lstat(h)
        return h
    except OSError:
        return m.glue_dir(g)


def _keep_leaf(leaves: set[str], full: str) -> None:
    if len(leaves) >= DIRCACHE_MAX:
        leaves.clear()
    leaves.add(full)


def _lexical(g: str, h: str, pending: list[str], trailing: bool) -> tuple[str, str]:
    if pending and pending[0] == "..":
        trailing = False                # already a directory lookup for the kernel
    if pending:
        rest = "/" + "/".join(reversed(pending))
        g += rest
        h += rest
    if trailing:
        return (g + "/", h + "/")
    return (g or "/", h or "/")
