"""The guest's view of the host: a rootfs directory with binds overlaid on it.

`Mapper(rootfs, binds)` answers, for the tracer's hot path:
- `to_host(guest_path, cwd, follow_last)`: the host path the real syscall must get (`canon.resolve`);
- `to_guest(host_path)`: what a host path the kernel handed out (getcwd, /proc/PID/fd/N) is in the
  guest, or None when it lies outside the rootfs and every bind;
- `readonly(host_path)`: whether a host path lies inside a read-only bind (writes -> EROFS).

Binds overlay the guest tree and the longest guest prefix wins. Each bind's host side is
`realpath`ed once; its guest side is canonicalised once *in the guest* (through the image's symlinks
and the binds given before it), like PRoot: `-b X:/var/run/x` with `/var/run -> /run` in the image
binds `/run/x`, and a bind over an image symlink (`/etc/resolv.conf -> ../run/...`) lands on the
symlink's target, so both names reach it.

Bind points missing from the image: paths at and below them resolve regardless (`canon` walks a
missing ancestor of a bind point as a directory). `ensure_mount_points()` creates them the way
Docker does for `-v`: called once at run start, it creates the missing bind points (a directory,
or an empty file for a file bind, and missing parent directories) inside the rootfs when the rootfs is
writable there. It never writes outside the rootfs (a point whose parent is itself inside a bind is
left virtual). Where it cannot create one (read-only rootfs), a missing ancestor (`virtual`) is
given a host directory of the run's glue tree (`glue_dir`, PRoot's "glue": made on first use in
the run's private `scratch` directory), which holds the names of its children, so it can be
entered, listed and `stat`ed; `synthetic_entries(dir)` lists the names still missing from a
directory of the image (the engine does not add them to its listing).

Paths that come back from the kernel: `to_guest` picks the longest host prefix. When one host
directory has two guest names (`ambiguous`: two binds of it, a bind of a directory inside the
rootfs or another bind), the engine notes each chdir (`note_cwd`) and `guest_cwd` answers a
process's working directory by the name it entered it by. A symlink inside a bind whose absolute
target names a host path the guest sees reads as that guest path (`bind_owner`, PRoot's
detranslation of readlink); following it still takes the target from the guest root. AF_UNIX
names longer than `sun_path` once translated go through a short symlink of their directory in
`scratch` (`socket_dir`; `from_socket_name` undoes it for the names the kernel gives back).

Nothing about the tree is cached across calls unless `cache_dirs=True`: then guest paths seen to be
real directories are remembered, which saves one `lstat` per known directory component, and so are
the last components inside the image's own tree (not in a bind) seen not to be symlinks (`leaves`:
files, directories, missing names), which saves the `lstat` of a followed last component. Only a
syscall that removes, replaces or creates a directory entry as a symlink can make these wrong, so
the engine must call `forget()` at the entry of every syscall that can remove or replace an entry
(rmdir, unlink*, rename*) and of those that create symlinks (symlink*, link* which can link a
symlink), and count the caller in `settling` until that thread's next stop (by then its call is
over): while a forget-call may still be running, another guest process could otherwise cache what
the call is about to replace (`ln -sf` renames a new symlink over a file). The same caches keep the
resolution of the programs and ELF interpreters `execve` ran (`exec_paths`). Every Mapper of a run
(one per emulated chroot) must be told. Changes made to the rootfs from outside the guest during
the run are not seen; that is why `leaves` leaves the binds (host directories other programs may
be writing to) alone.
"""

from __future__ import annotations

import errno
import os
import stat

from runtime.errors import CarryonError
from runtime.path import canon
from runtime.spec import Bind

TYPE_CHECKING = False           # not `typing.TYPE_CHECKING`: importing typing slows start-up
if TYPE_CHECKING:
    from runtime.path.overlay import Overlay
    from runtime.path.proc import Lookup


def _strip(p: str) -> str:
    """Internal form: no trailing slash, the root is ""."""
    return p.rstrip("/")


def _inside(h: str, outer: str) -> bool:
    """Host path `h` (internal form) is `outer` or below it ("" is the host's root)."""
    return not outer or h == outer or h.startswith(outer + "/")


def _ambiguous(rootfs_host: str, binds: list[Bind]) -> bool:
    """Some host directory is reachable under two different guest names through the rootfs and
    the directory binds (file binds cannot be a working directory)."""
    dirs = [(_strip(b.host), _strip(b.guest)) for b in binds if os.path.isdir(b.host)]
    if not dirs:
        return False
    owners = [(rootfs_host, ""), *dirs]
    for i, (h, g) in enumerate(owners):
        for j, (o, og) in enumerate(owners):
            if i != j and _inside(h, o) and og + h[len(o):] != g:
                return True
    return False


class Mapper:
    """Guest <-> host path translation for one run (see the module docstring)."""

    def __init__(self, rootfs: str, binds: list[Bind], *, cache_dirs: bool = False,
                 proc_lookup: Lookup | None = None) -> None:
        root = os.path.realpath(rootfs)
        if not os.path.isdir(root):
            raise CarryonError(f"rootfs is not a directory: {rootfs}")
        self.rootfs = root
        self.rootfs_host = _strip(root)
        self.root_host = self.rootfs_host     # host path of guest "/" (a bind of "/" changes it)
        # guest path (internal form) -> host path (internal form) of each bind root
        self.bind_hosts: dict[str, str] = {}
        # guest paths of missing-in-image ancestors of bind points, walked as directories
        self.virtual: set[str] = set()
        # guest path -> host path of directories seen (cache_dirs=True only; see `forget`)
        self.dircache: dict[str, str] | None = {} if cache_dirs else None
        # absolute guest path -> (guest, host) of programs and ELF interpreters execve resolved
        # (cache_dirs=True only; dropped with the directory cache, see `forget`)
        self.exec_paths: dict[str, tuple[str, str]] | None = {} if cache_dirs else None
        # absolute guest directory spelt through symlinks -> (canonical guest, host) of where it
        # leads (`/lib/x86_64-linux-gnu` with /lib -> usr/lib): filled by `canon.resolve` only
        # with cache_dirs=True, dropped with the directory cache (see `forget`)
        self.dirlinks: dict[str, tuple[str, str]] = {}
        # absolute guest paths whose last component, inside the image's own tree (no bind), was
        # seen not to be a symlink (a file, a directory, or missing): the fast path of
        # `canon.resolve` then needs no `lstat` for it (cache_dirs=True only; see `forget`)
        self.leaves: set[str] | None = set() if cache_dirs else None
        self.leaf_prefix = self.rootfs_host.rstrip("/") + "/"
        # threads whose forget-call (unlink, rename, symlink...) may still be running in the
        # kernel: while there are any, nothing is added to the caches (see `forget`)
        self.settling = 0
        # emptied with the caches: the native loop's path cache (runtime.tracee.native), if any
        self.native_clear = None
        # told the directories of the image's tree seen while no forget-call runs, as the
        # directory cache learns them (guest, host): the native loop answers names in them
        self.native_dir = None
        # set by every `canon.resolve`: its answer came from the image's tree alone (through known
        # directories, or a walk that crossed no bind, no /proc magic link, and stopped, if it did,
        # only at a missing name), so it stays right until a forget-call; binds are the host's,
        # /proc's links differ per process, and a name refused for lack of permission may turn out
        # to be a symlink after a chmod
        self.last_pure = False
        self.proc_lookup: Lookup | None = proc_lookup
        self.proc_root: str | None = None     # guest dir where the host's /proc is bound
        self.proc_host: str = "/proc"
        self._proc_prefix: str | None = None
        # `..` needs search permission on the directory it leaves; root always has it
        self.search_check = os.geteuid() != 0
        self._cwd_cache: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
        # copy-on-write (runtime.path.overlay): the Overlay of the run, and the guest paths of its
        # entries in `bind_hosts` (the stubs bound to the image, and "" once `/` is the run's own):
        # binds that rmdir/rename/unlink may act on, unlike the user's
        self.cow: Overlay | None = None
        self.ovl: set[str] = set()
        self.native_names = None        # tells the native loop the plain names Python must see
        # tells the native loop that relative paths are Python's from now on: once copy-on-write
        # has replaced an image directory, a process's working directory may be the old one
        self.native_relative = None
        self.stale_cwds = False
        self.binds: list[Bind] = []           # the binds in effect, canonical guest and host paths
        # the run's own directory (`scratch`): the glue of missing bind ancestors, short names of
        # long socket paths; made on first use, removed when the tracer exits
        self._scratch: str | None = None
        self._short: dict[str, str] = {}      # host dir -> its short name (`socket_dir`)
        self.short_back: dict[str, str] = {}  # short name -> host dir
        self.glue: str | None = None          # host dir whose tree mirrors `virtual` (see `glue_dir`)
        for b in binds:
            self._add_bind(b)
        self.user_binds = frozenset(self.bind_hosts)
        # some host directory has two guest names (two binds of one directory, a bind of a
        # directory inside the rootfs or another bind): the kernel's cwd alone cannot tell which
        # one a process entered, so chdir is noted (`note_cwd`) and `guest_cwd` asks the notes
        self.ambiguous = _ambiguous(self.rootfs_host, self.binds)
        self.cwd_hints: dict[int, list[tuple[str, str]]] = {}
        self._finish()

    # ---- set-up ---------------------------------------------------------------------------
    def _add_bind(self, b: Bind) -> None:
        if not os.path.exists(b.host):
            if b.optional:
                return
            raise CarryonError(f"bind source does not exist: {b.host}")
        host = os.path.realpath(b.host)
        if not b.guest.startswith("/"):
            raise CarryonError(f"bind guest path must be absolute: {b.guest}")
        self._cwd_cache.clear()
        try:
            guest = canon.resolve(self, b.guest, "/", True)[0]
        except OSError as e:
            raise CarryonError(f"bind guest path {b.guest}: {os.strerror(e.errno or 0)}") from None
        g = _strip(guest)
        self.bind_hosts[g] = _strip(host)
        if not g:
            self.root_host = self.bind_hosts[g]
        # a missing ancestor of this point must be walkable for the canonicalisation of later binds
        parts = g.split("/")
        for i in range(1, len(parts) - 1):
            self.virtual.add("/".join(parts[: i + 1]))
        self.binds = [x for x in self.binds if _strip(x.guest) != g]
        self.binds.append(Bind(host=host, guest=guest, readonly=b.readonly, optional=b.optional))

    def _finish(self) -> None:
        self._cwd_cache.clear()
        # host prefix -> (guest prefix, readonly), longest host prefix first
        owners = [(self.rootfs_host, "", False)]
        if self.cow is not None:
            owners.append((self.cow.upper, "", False))
        owners += [(_strip(b.host), _strip(b.guest), b.readonly) for b in self.binds]
        if self.glue is not None:
            owners.append((self.glue, "", False))
        owners.sort(key=lambda o: len(o[0]), reverse=True)
        self._owners = owners
        self._any_ro = any(o[2] for o in owners)
        # Last components of the bind points and of their missing ancestors, plus "." and "..":
        # a relative path of one component not in this set never needs the base directory looked
        # at (the engine's fast path for `fstatat(dirfd, "name")`).
        self.leaf_names = frozenset({b".", b".."} | {os.fsencode(g.rpartition("/")[2])
                                                     for g in (*self.bind_hosts, *self.virtual)})
        for g, h in self.bind_hosts.items():
            if h == "/proc":
                self.proc_root = g or "/"
                self._proc_prefix = g + "/"
                break
        else:
            # no bind of the host's /proc, but the guest's /proc may be it all the same (a rootfs
            # of "/", or one where procfs is mounted): PRoot answers /proc/self & co. for the
            # guest then too
            if "/proc" not in self.bind_hosts:
                here = self.root_host + "/proc"
                try:
                    same = os.path.samestat(os.stat(here), os.stat("/proc"))
                except OSError:
                    same = False
                if same:
                    self.proc_root = "/proc"
                    self._proc_prefix = "/proc/"
                    self.proc_host = here

    def _cwd_stacks(self, cwd: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The guest/host prefix stacks of a canonical guest directory (lexical, cached)."""
        if not cwd.startswith("/"):
            raise ValueError(f"guest cwd must be absolute: {cwd!r}")
        gs = [""]
        hs = [self.root_host]
        binds = self.bind_hosts
        g = ""
        h = self.root_host
        for name in cwd.split("/"):
            if not name or name == ".":
                continue
            if name == "..":
                if len(gs) > 1:
                    gs.pop()
                    hs.pop()
                    g = gs[-1]
                    h = hs[-1]
                continue
            g = g + "/" + name
            nh = binds.get(g)
            h = nh if nh is not None else h + "/" + name
            if g in self.virtual and not os.path.lexists(h):
                h = self.glue_dir(g)
            gs.append(g)
            hs.append(h)
        stacks = (tuple(gs), tuple(hs))
        if len(self._cwd_cache) > 256:
            self._cwd_cache.clear()
        self._cwd_cache[cwd] = stacks
        return stacks

    # ---- hot path -------------------------------------------------------------------------
    def to_host(self, guest_path: str, cwd: str, follow_last: bool, *, parent_op: bool = False,
                pid: int | None = None, tid: int | None = None) -> str:
        """Host path for guest `guest_path` (absolute, or relative to the canonical guest `cwd`).

        `follow_last`: follow a symlink in the last component (stat, open without O_NOFOLLOW,
        chdir, execve...); False for lstat, readlink, O_NOFOLLOW/O_EXCL|O_CREAT, AT_SYMLINK_NOFOLLOW.
        `parent_op`: the call acts on the directory entry itself (unlink, rmdir, rename both sides,
        mkdir, mknod, symlink's new path, link's new path): the last component is never followed even
        with a trailing slash, and `.`/`..`/the root/a bind point come back as `HOST/.` so the
        kernel refuses them. `pid`/`tid`: the calling process (needed for /proc/self and friends;
        without it /proc links are read as the tracer's). Raises OSError (ENOENT for "", ELOOP)."""
        return canon.resolve(self, guest_path, cwd, follow_last, parent_op, pid, tid)[1]

    def resolve(self, guest_path: str, cwd: str, follow_last: bool, *, parent_op: bool = False,
                pid: int | None = None, tid: int | None = None) -> tuple[str, str]:
        """(canonical guest path, host path): `to_host` plus the guest path it found."""
        return canon.resolve(self, guest_path, cwd, follow_last, parent_op, pid, tid)

    def canon(self, guest_path: str, cwd: str, follow_last: bool, *, pid: int | None = None,
              tid: int | None = None) -> str:
        """Canonical guest path of `guest_path` (what `chdir` records as the new cwd, what
        `proc.readlink_target` takes)."""
        return canon.resolve(self, guest_path, cwd, follow_last, False, pid, tid)[0]

    def to_guest(self, host_path: str) -> str | None:
        """Guest path of a host path: the longest matching bind host prefix (or the rootfs) is
        replaced by its guest path; None when the path is outside the rootfs and all binds or is
        not absolute ("pipe:[12]")."""
        if not host_path.startswith("/"):
            return None
        for h, g, _ro in self._owners:
            if not h:                   # a bind of the host's "/"
                return g + host_path if host_path != "/" else (g or "/")
            if host_path.startswith(h):
                n = len(h)
                if len(host_path) == n:
                    return g or "/"
                if host_path[n] == "/":
                    return g + host_path[n:]
        return None

    def readonly(self, host_path: str) -> bool:
        """True when `host_path` lies inside a read-only bind (longest host prefix decides)."""
        if not self._any_ro:
            return False
        for h, _g, ro in self._owners:
            if host_path.startswith(h) and (len(host_path) == len(h) or host_path[len(h)] == "/"
                                            or not h):
                return ro
        return False

    def forget(self) -> None:
        """Drop the caches (see the module docstring); cheap, call it freely."""
        if self.dircache is not None:
            self.dircache.clear()
        if self.exec_paths is not None:
            self.exec_paths.clear()
        if self.leaves is not None:
            self.leaves.clear()
        self.dirlinks.clear()
        if self.native_clear is not None:
            self.native_clear()

    # ---- working directories with two guest names -----------------------------------------
    def note_cwd(self, pid: int, guest: str, host: str) -> None:
        """Process `pid` (0: the run's first) chdir'd to canonical guest `guest` = host `host`."""
        hints = self.cwd_hints
        if len(hints) > 4096:
            hints.clear()
        host = _strip(host) or "/"
        old = [x for x in hints.get(pid, ()) if x[0] != host]
        hints[pid] = [(host, _strip(guest) or "/"), *old[:3]]

    def guest_cwd(self, pid: int, host: str) -> str | None:
        """Guest path of the working directory `host` of process `pid`: `to_guest`, except that in
        an ambiguous mapper the name the process (or the nearest ancestor it inherited its
        directory from, or the run's start) entered it by wins."""
        g = self.to_guest(host)
        if g is None or not self.ambiguous:
            return g
        hints = self.cwd_hints
        host = _strip(host) or "/"
        p = pid
        seen: list[int] = []
        for _ in range(32):
            for h, hg in hints.get(p, ()):
                if h == host:
                    for q in seen:          # next time, one look
                        hints[q] = [(h, hg)]
                    return hg
            seen.append(p)
            tgid, ppid = _ids(p)
            if tgid != p:
                for h, hg in hints.get(tgid, ()):
                    if h == host:
                        return hg
            if ppid <= 1:
                break
            p = ppid
        for h, hg in hints.get(0, ()):
            if h == host:
                return hg
        return g

    # ---- the run's own directory ----------------------------------------------------------
    def scratch(self) -> str:
        """A private directory of this run (created once, removed when the tracer exits)."""
        if self._scratch is None:
            import atexit
            import tempfile
            # /tmp first: a short prefix leaves room in sun_path (see `socket_dir`)
            base = "/tmp" if os.access("/tmp", os.W_OK | os.X_OK) else tempfile.gettempdir()
            _reap_scratch(base)
            d = tempfile.mkdtemp(prefix=f"carryon-s-{os.getpid()}-", dir=base)
            os.chmod(d, 0o711)          # guest processes of another uid traverse it too
            atexit.register(self.release)   # the engine calls it itself (carryon leaves by _exit)
            self._scratch = d
        return self._scratch

    def release(self) -> None:
        """Remove the run's scratch directory (glue, socket links), if any; made anew on next use."""
        d = self._scratch
        if d is None:
            return
        import shutil
        self._scratch = None
        self.glue = None
        self._short.clear()
        self.short_back.clear()
        shutil.rmtree(d, ignore_errors=True)    # fd-based: never follows the links inside
        self._finish()
        self.forget()

    def glue_dir(self, guest: str) -> str:
        """Host path of the missing-in-image ancestor `guest` (internal form, in `virtual`) of
        bind points: a directory of the run's glue tree, which holds its missing ancestors'
        names and each bind point's, as directories (or empty files for file binds), so it can
        be entered, listed and `stat`ed, like PRoot's glue. Writes there stay in the run."""
        if self.glue is None:
            glue = os.path.join(self.scratch(), "glue")
            os.mkdir(glue, 0o755)
            for g in sorted(self.virtual | set(self.bind_hosts), key=len):
                parent = g.rpartition("/")[0]
                if not g or (g not in self.virtual and parent not in self.virtual):
                    continue            # a bind point in a directory of the image
                try:
                    os.makedirs(glue + parent, 0o755, exist_ok=True)
                    if g in self.virtual or os.path.isdir(self.bind_hosts[g] or "/"):
                        os.mkdir(glue + g, 0o755)
                    else:
                        os.close(os.open(glue + g, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
                except FileExistsError:
                    pass
            self.glue = glue
            self._finish()
        return self.glue + guest

    def socket_dir(self, host_dir: str) -> str:
        """A short name of host directory `host_dir` (a symlink in the run's directory), for
        AF_UNIX paths longer than sun_path once translated; `host_dir` for the ones outside it."""
        links = self._short
        short = links.get(host_dir)
        if short is None:
            short = os.path.join(self.scratch(), str(len(links)))
            os.symlink(host_dir, short)
            links[host_dir] = short
            self.short_back[short] = host_dir
        return short

    def from_socket_name(self, host_path: str) -> str | None:
        """Guest path of an AF_UNIX name the kernel gives back (short names undone), or None."""
        if self.short_back:
            head, _, name = host_path.rpartition("/")
            real = self.short_back.get(head)
            if real is not None:
                host_path = real + "/" + name
        return self.to_guest(host_path)

    def bind_owner(self, host_path: str) -> bool:
        """True when the longest owner of `host_path` is a user bind (not the rootfs, the run's
        copy-on-write state or its stubs, nor the glue)."""
        for h, g, _ro in self._owners:
            if host_path == h or host_path.startswith(h + "/") or not h:
                return not (h == self.rootfs_host and g == "") and g not in self.ovl and not (
                    self.cow is not None and h == self.cow.upper) and h != self.glue
        return False

    # ---- bind points --------------------------------------------------------------------
    def is_bind_root(self, guest_path: str) -> bool:
        """True when the canonical guest path is a bind point (rmdir/rename/unlink on it: EBUSY)."""
        g = _strip(guest_path)
        return g in self.bind_hosts and g not in self.ovl

    # ---- copy-on-write ------------------------------------------------------------------
    def attach_overlay(self, state_dir: str, ident: str) -> None:
        """From now on the rootfs is read-only: the run's changes go to `state_dir` (see
        runtime.path.overlay), which a state of an earlier run (same `ident`) may already hold."""
        from runtime.path.overlay import Overlay
        self.cow = Overlay(self, state_dir, ident)
        self._finish()
        self.forget()       # what was looked up before (Overlay's own set-up) saw no binds yet

    def overlay_changed(self) -> None:
        """The overlay bound or unbound directories: the caches and the names the fast paths must
        not answer change with them."""
        self._cwd_cache.clear()
        self.forget()
        if self.cow is not None and self.cow.started and not self.stale_cwds:
            self.stale_cwds = True
            if self.native_relative is not None:
                self.native_relative()
        self.leaf_names = frozenset({b".", b".."} | {os.fsencode(g.rpartition("/")[2])
                                                     for g in (*self.bind_hosts, *self.virtual) if g})
        if self.native_names is not None:
            self.native_names(self.leaf_names)

    def make_dirs(self, guest_dir: str) -> bool:
        """Create the canonical guest directory `guest_dir` and its missing parents in the run's
        state (Docker creates a missing WorkingDir). Only with copy-on-write. True when it exists."""
        if self.cow is None:
            return False
        g = ""
        for name in _strip(guest_dir).split("/")[1:]:
            g = g + "/" + name
            host = self.to_host(g, "/", True)
            if os.path.isdir(host):
                continue
            self.cow.entry(g)
            try:
                os.mkdir(self.to_host(g, "/", False, parent_op=True), 0o755)
            except OSError:
                return False
            self.forget()
        return True

    def _unbound_host(self, g: str) -> str:
        """Where guest `g` (internal form, a bind point or virtual dir) would be without its own
        bind: its parent's host path + its name."""
        parent, _, name = g.rpartition("/")
        return self.to_host(parent or "/", "/", True).rstrip("/") + "/" + name

    def synthetic_entries(self, guest_dir: str) -> list[str]:
        """Names of bind points (and their missing ancestors) directly inside canonical guest
        directory `guest_dir` that the directory itself does not hold: what an engine adds to its
        listing for a rootfs where `ensure_mount_points` could not create them."""
        d = _strip(guest_dir)
        out = []
        for g in sorted(set(self.bind_hosts) | self.virtual):
            if not g or g.rpartition("/")[0] != d:
                continue
            try:
                os.lstat(self._unbound_host(g))
            except FileNotFoundError:
                out.append(g.rpartition("/")[2])
            except OSError:
                pass
        return out

    def ensure_mount_points(self) -> list[str]:
        """Create the bind points missing from the image inside the rootfs (directories, or an empty
        file for a file bind, plus missing parent directories). Returns the guest paths created.
        Points it cannot create (read-only rootfs, parent inside another bind or a host dir) stay
        virtual; see `synthetic_entries`."""
        created: list[str] = []
        if self.cow is not None:
            return created             # the image stays as it is: the points stay virtual
        for g in sorted(self.bind_hosts, key=len):
            if not g:
                continue
            parts = g.split("/")
            for i in range(1, len(parts)):
                sub = "/".join(parts[: i + 1])
                is_point = i == len(parts) - 1
                if not is_point and sub in self.bind_hosts:
                    continue
                host = self._unbound_host(sub)
                if not self._in_rootfs(host):
                    break               # would land inside a bind: never write to the host
                try:
                    os.lstat(host)
                    continue
                except FileNotFoundError:
                    pass
                except OSError:
                    break
                try:
                    if is_point and not os.path.isdir(self.bind_hosts[g] or "/"):
                        fd = os.open(host, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
                        os.close(fd)
                    else:
                        os.mkdir(host, 0o755)
                except OSError as e:
                    if e.errno != errno.EEXIST:
                        break
                created.append(sub)
        self.forget()
        return created

    def _in_rootfs(self, host_path: str) -> bool:
        """True when the longest owner of `host_path` is the rootfs itself (not a bind)."""
        for h, g, _ro in self._owners:
            if host_path == h or host_path.startswith(h + "/") or not h:
                return h == self.rootfs_host and g == ""
        return False


def _ids(pid: int) -> tuple[int, int]:
    """(Tgid, PPid) of a process, (pid, 0) when it is gone."""
    tgid, ppid = pid, 0
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Tgid:"):
                    tgid = int(line.split()[1])
                elif line.startswith(b"PPid:"):
                    ppid = int(line.split()[1])
                    break
    except (OSError, ValueError, IndexError):
        pass
    return tgid, ppid


def _reap_scratch(base: str) -> None:
    """Remove the run directories (`carryon-s-PID-*`) that our runs whose tracer died (SIGKILL) left
    in `base`: only real directories of ours, through runtime.cache's removal (never following a
    link). Done only when a run needs such a directory, so most runs never list `base`."""
    from runtime import cache
    try:
        names = [n for n in os.listdir(base) if n.startswith("carryon-s-")]
    except OSError:
        return
    for n in names:
        pid = n[len("carryon-s-"):].split("-", 1)[0]
        if not pid.isdigit() or cache.pid_alive(int(pid)):
            continue
        p = os.path.join(base, n)
        try:
            st = os.lstat(p)
        except OSError:
            continue
        if st.st_uid == os.getuid() and stat.S_ISDIR(st.st_mode):
            try:
                cache.remove(p)
            except OSError:
                pass
