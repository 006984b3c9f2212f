"""Copy-on-write over the read-only image tree: every run starts from the image as packed.

The cache entry's rootfs is the LOWER tree and is never written. A run's changes live in its UPPER
tree (a directory of the run's state). The two are combined the way overlayfs does it for a user, but
with plain directories and the Mapper's bind table (runtime/path/binding.py), so that reading costs
nothing and the kernel lists directories itself:

- At first, nothing is in UPPER and the guest's `/` is LOWER's: a run that writes nothing pays for
  nothing (no bind, no lookup, no stop beyond those the tracer makes anyway).
- Before the first change inside a directory D, D is *materialized*: UPPER/D becomes a real directory
  holding D's entries, regular files as hard links to LOWER's (copied when a link is impossible:
  another file system, a link count at its limit), symlinks and FIFOs as copies, and each
  subdirectory S as an empty directory of the same metadata, a *stub*, bound to LOWER/D/S in the
  Mapper (a bind, like `-b LOWER/D/S:D/S`, but one that `rmdir`/`rename` may act on). Materializing D
  materializes its parents first; materializing `/` makes UPPER the guest's root.
- Directories the guest creates, and materialized ones, have no bind: a name under them is UPPER's.
  Listings of a materialized directory are UPPER's, done by the kernel with no stop: the image's
  entries and the run's, without the deleted ones (a deletion is an `unlink` in UPPER: nothing
  like a whiteout is needed).
- A regular file that is still a hard link to LOWER (its inode in `linked`) is *copied up* before
  anything changes it: opened for writing, truncated, chmod/chown/utimes/xattr (also through a
  descriptor: fchmod, fchown, fsetxattr, fremovexattr, `AT_EMPTY_PATH`), or linked (so a new name
  shares the run's copy). The copy is written beside it and renamed over it: a reader never sees
  half a file; a full disk fails the guest's call with ENOSPC and leaves nothing behind.
- `rmdir` of a stub materializes it first (so a directory with image content is ENOTEMPTY);
  `rename` of a directory materializes it and everything below (it keeps its whole content under
  the new name); a stub that `rename` would replace is materialized too.

What the guest sees differently from a real overlayfs: the link count of an image file it has not
changed counts the run's hard link (`st_nlink` 2 instead of 1, one more per concurrent run), and
changing an image file through a descriptor opened read-only before the change (fchmod after
open(O_RDONLY)) changes the run's copy, while that descriptor still shows the image's inode.

State of a run (`--carryon-state DIR` keeps it for the next run): `DIR/upper/` and `DIR/overlay.log`,
an append-only record of the stubs bound (`+ PATH`), materialized (`- PATH`) and the image inodes
linked (`L DEV INO`), replayed at start; its first line names the image (`I IDENT`), and a state made
for another image is refused, as is one made by the userns engine (overlayfs: runtime.userns).
"""

from __future__ import annotations

import errno
import os
import stat

from runtime.errors import CarryonError

TYPE_CHECKING = False           # not `typing.TYPE_CHECKING`: importing typing slows start-up
if TYPE_CHECKING:
    from runtime.path.binding import Mapper

LOG = "overlay.log"
UPPER = "upper"
_ROOT = os.geteuid() == 0


class Overlay:
    """The copy-on-write state of one run (see the module docstring)."""

    def __init__(self, mapper: Mapper, state_dir: str, ident: str) -> None:
        self.m = mapper
        self.lower = mapper.rootfs_host
        self.state_dir = os.path.realpath(state_dir)
        self.upper = os.path.join(self.state_dir, UPPER)
        self.linked: set[tuple[int, int]] = set()
        self.started = False            # UPPER is the guest's root (`/` materialized)
        self._log_fd = -1
        self._load(ident)

    # ---- state ----------------------------------------------------------------------------
    def _load(self, ident: str) -> None:
        path = os.path.join(self.state_dir, LOG)
        if os.path.exists(os.path.join(self.state_dir, "ns-overlay")):     # runtime.userns.NS_IDENT
            raise CarryonError(f"the state directory {self.state_dir} was made by the userns engine "
                               "(overlayfs); use it with --carryon-engine userns, or another directory")
        stubs: set[str] = set()
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                lines = f.read().split("\n")
        except FileNotFoundError:
            lines = []
        if lines and lines[0]:
            if lines[0] != "I " + ident:
                raise CarryonError(f"the state directory {self.state_dir} was made for another image "
                                   f"({lines[0][2:] or '?'}); use another directory")
            for ln in lines[1:]:
                if ln.startswith("+ "):
                    stubs.add(ln[2:])
                elif ln.startswith("- "):
                    stubs.discard(ln[2:])
                elif ln == "R":
                    self.started = True
                elif ln.startswith("L "):
                    parts = ln.split()
                    if len(parts) == 3:
                        self.linked.add((int(parts[1]), int(parts[2])))
        self._ident = ident if not lines or not lines[0] else None     # to write with the first change
        if self.started:
            self._root_to_upper()
            for g in stubs:
                self._bind_stub(g)
            self.m.overlay_changed()

    def _log(self, line: str) -> None:
        if self._log_fd < 0:            # the first change: a run that changes nothing writes nothing
            os.makedirs(self.upper, mode=0o755, exist_ok=True)
            self._log_fd = os.open(os.path.join(self.state_dir, LOG),
                                   os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            if self._ident is not None:
                os.write(self._log_fd, f"I {self._ident}\n".encode("utf-8", "surrogateescape"))
                self._ident = None
        os.write(self._log_fd, (line + "\n").encode("utf-8", "surrogateescape"))

    def close(self) -> None:
        if self._log_fd >= 0:
            os.close(self._log_fd)
            self._log_fd = -1

    # ---- binds ----------------------------------------------------------------------------
    def _root_to_upper(self) -> None:
        m = self.m
        m.root_host = self.upper
        m.bind_hosts[""] = self.upper
        m.ovl.add("")

    def _bind_stub(self, g: str) -> None:
        if g in self.m.user_binds:
            return                      # a bind the user asked for wins
        self.m.bind_hosts[g] = self.lower + g
        self.m.ovl.add(g)

    # ---- queries --------------------------------------------------------------------------
    def in_lower(self, host: str) -> bool:
        lw = self.lower
        return host.startswith(lw) and (len(host) == len(lw) or host[len(lw)] == "/")

    def is_stub(self, g: str) -> bool:
        return g != "" and g in self.m.ovl

    # ---- materialization -------------------------------------------------------------------
    def materialize(self, g: str, deep: bool = False) -> None:
        """Make the guest directory `g` (internal form: "" is `/`, else "/a/b"; canonical, a
        directory reached through materialized parents and stubs) a real directory of UPPER; with
        `deep`, everything below it too. Raises OSError (EACCES for an unreadable image dir,
        ENOSPC, ...) for the guest's call."""
        if not self.started:           # `/` first: UPPER becomes the guest's root
            self._log("S")              # (creates UPPER and the log)
            self._populate("", self.lower)
            self._root_to_upper()
            self.started = True
            self._log("R")
            self.m.overlay_changed()
        if g != "":
            parent = g.rpartition("/")[0]
            if parent and self._needs(parent):
                self.materialize(parent)
            if self.is_stub(g):
                src = self.m.bind_hosts[g]
                self._populate(g, src)
                del self.m.bind_hosts[g]
                self.m.ovl.discard(g)
                self._log("- " + g)
                self.m.overlay_changed()
        if deep:
            d = self.upper + g
            try:
                names = os.listdir(d)
            except OSError:
                return
            for n in names:
                sub = g + "/" + n
                if self.is_stub(sub):
                    if self._stub_is_dir(sub):
                        self.materialize(sub, deep=True)
                    else:
                        self._own_file(sub)
                elif os.path.isdir(d + "/" + n) and not os.path.islink(d + "/" + n):
                    self.materialize(sub, deep=True)

    def _needs(self, g: str) -> bool:
        """True when guest directory `g` is not yet a real directory of UPPER."""
        if not self.started:
            return True
        parent = g.rpartition("/")[0]
        return self.is_stub(g) or (parent != "" and self._needs(parent))

    def _populate(self, g: str, src: str) -> None:
        """Fill UPPER/g (existing stub, or UPPER itself for "") with the entries of `src`."""
        dst = self.upper + g
        with os.scandir(src) as it:
            entries = [(e.name, e.stat(follow_symlinks=False)) for e in it]
        if not _ROOT and not os.access(dst, os.W_OK | os.X_OK):
            os.chmod(dst, 0o700)        # ours: writable while it is filled (its mode is set at the end)
        stubs = []
        try:
            for name, st in entries:
                s, d = src + "/" + name, dst + "/" + name
                mode = st.st_mode
                try:
                    os.lstat(d)
                    continue            # already there (a half-done earlier materialization)
                except FileNotFoundError:
                    pass
                if stat.S_ISDIR(mode):
                    os.mkdir(d, 0o700)
                    _copy_meta(d, st, follow=True)
                    stubs.append(g + "/" + name)
                elif stat.S_ISREG(mode):
                    try:
                        os.link(s, d, follow_symlinks=False)
                        if (st.st_dev, st.st_ino) not in self.linked:
                            self.linked.add((st.st_dev, st.st_ino))
                            self._log(f"L {st.st_dev} {st.st_ino}")
                    except OSError as e:
                        if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EACCES):
                            raise
                        try:
                            _copy_file(s, d, st)
                        except PermissionError:
                            # a file we may neither link nor read (another user's, e.g. /etc/shadow
                            # of an image extracted by root): an empty placeholder for the listing,
                            # and the name stays bound to the image's file, as unreadable as before
                            fd = os.open(d, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0)
                            os.close(fd)
                            stubs.append(g + "/" + name)
                elif stat.S_ISLNK(mode):
                    os.symlink(os.readlink(s), d)
                    _copy_meta(d, st, follow=False)
                elif stat.S_ISFIFO(mode):
                    os.mkfifo(d, 0o600)
                    _copy_meta(d, st, follow=True)
                elif _ROOT and (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)):
                    os.mknod(d, mode, st.st_rdev)
                    _copy_meta(d, st, follow=True)
                # sockets: not content; a rootless extraction has no device nodes either
        finally:
            for sg in stubs:
                self._bind_stub(sg)
                self._log("+ " + sg)
            try:
                _copy_meta(dst, os.stat(src), follow=True)
            except OSError:
                pass

    # ---- before a change ------------------------------------------------------------------
    def entry(self, g: str) -> None:
        """The directory entry `g` (canonical guest path, not followed) is about to be created,
        removed or renamed: its directory becomes a real one of UPPER."""
        parent = g.rpartition("/")[0] if g not in ("", "/") else ""
        if self._needs(parent):
            self.materialize(parent)

    def remove(self, g: str) -> None:
        """`unlink g`: its directory becomes the run's own, and a name still bound to the image's
        file (see `_populate`) stops being so with it."""
        self.entry(g)
        if self.is_stub(g) and not self._stub_is_dir(g):
            self._unbind(g)

    def remove_dir(self, g: str) -> None:
        """`rmdir g` (or what a rename replaces): a directory's content must be real for ENOTEMPTY."""
        self.entry(g)
        if self.is_stub(g):
            if self._stub_is_dir(g):
                self.materialize(g)
            else:
                self._unbind(g)

    def _stub_is_dir(self, g: str) -> bool:
        try:
            return stat.S_ISDIR(os.lstat(self.m.bind_hosts[g]).st_mode)
        except OSError:
            return False

    def _unbind(self, g: str) -> None:
        del self.m.bind_hosts[g]
        self.m.ovl.discard(g)
        self._log("- " + g)
        self.m.overlay_changed()

    def _own_file(self, g: str) -> None:
        """A name bound to an image file we could not copy: copy it now (EACCES as before if we
        still cannot read it), so that the run has a file of its own to change."""
        src = self.m.bind_hosts[g]
        dst = self.upper + g
        st = os.lstat(src)
        tmp = f"{dst.rpartition('/')[0]}/.carryon-copy-up-{os.getpid()}-{os.urandom(4).hex()}"
        _copy_file(src, tmp, st)
        os.rename(tmp, dst)
        self._unbind(g)

    def move(self, g: str) -> None:
        """`rename g ...`: a directory keeps its whole content under its new name."""
        self.entry(g)
        if self.is_stub(g) and not self._stub_is_dir(g):
            self._own_file(g)
        h = self.upper + g
        try:
            st = os.lstat(h)
        except OSError:
            return
        if stat.S_ISDIR(st.st_mode):
            self.materialize(g, deep=True)

    def modify(self, g: str, host: str, truncate: bool = False) -> str:
        """The object at canonical guest path `g` (host path `host`, as resolved before) is about to
        change (or be created, with its directory): returns the host path to act on instead, in
        UPPER, with a file of its own (copied up)."""
        if self.in_lower(host):
            try:
                isdir = stat.S_ISDIR(os.lstat(host).st_mode)
            except OSError:
                isdir = False
            if isdir:
                self.materialize(g if g != "/" else "")
            else:
                self.entry(g)
                if self.is_stub(g):
                    self._own_file(g)
            host = self.upper + (g if g != "/" else "")
        try:
            st = os.lstat(host)
        except OSError:
            return host
        if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) in self.linked:
            self.copy_up(host, st, truncate)
        return host

    def copy_up(self, host: str, st: os.stat_result, truncate: bool = False) -> None:
        """Replace the hard link `host` (an image file) by a copy of its own, atomically."""
        d, _, name = host.rpartition("/")
        tmp = f"{d}/.carryon-copy-up-{os.getpid()}-{os.urandom(4).hex()}"
        try:
            if truncate:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                os.close(fd)
                _copy_meta(tmp, st, follow=True, xattrs_from=host)
            else:
                _copy_file(host, tmp, st)
            os.rename(tmp, host)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise


def _copy_file(src: str, dst: str, st: os.stat_result) -> None:
    """A copy of regular file `src` at new name `dst` with its metadata (ENOSPC raised, `dst` removed)."""
    fd_in = os.open(src, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        fd_out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            left = st.st_size
            while left > 0:
                try:
                    n = os.copy_file_range(fd_in, fd_out, min(left, 1 << 30))
                except OSError as e:
                    if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                        raise
                    try:
                        n = os.sendfile(fd_out, fd_in, None, min(left, 1 << 30))
                    except OSError as e2:   # a file as sendfile's target: Linux 2.6.33
                        if e2.errno not in (errno.EINVAL, errno.ENOSYS):
                            raise
                        data = os.read(fd_in, min(left, 1 << 20))
                        done = 0
                        while done < len(data):
                            done += os.write(fd_out, data[done:])
                        n = len(data)
                if n == 0:
                    break
                left -= n
        finally:
            os.close(fd_out)
    except BaseException:
        try:
            os.unlink(dst)
        except OSError:
            pass
        raise
    finally:
        os.close(fd_in)
    _copy_meta(dst, st, follow=True, xattrs_from=src)


def _copy_meta(path: str, st: os.stat_result, follow: bool, xattrs_from: str | None = None) -> None:
    """Owner (as root), mode, times and extended attributes of `st` onto `path`."""
    if _ROOT:
        try:
            os.chown(path, st.st_uid, st.st_gid, follow_symlinks=follow)
        except OSError:
            pass
    if follow:
        os.chmod(path, stat.S_IMODE(st.st_mode))
    if xattrs_from is not None:
        try:
            for k in os.listxattr(xattrs_from, follow_symlinks=False):
                try:
                    os.setxattr(path, k, os.getxattr(xattrs_from, k, follow_symlinks=False),
                                follow_symlinks=False)
                except OSError:
                    pass
        except OSError:
            pass
    try:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=follow)
    except (OSError, NotImplementedError):
        pass
