"""The `userns` engine: the guest runs in a new user + mount namespace, with no tracer.

`run(spec) -> exit status`, `eligible() -> None | why not` (cheap: sysctls, no fork),
`eligible_for(spec) -> None | why not` (this run: the state directory's format, owners, bind
points), `describe()`. The record is `USERNS` (runtime.engine puts it first in the ladder).

Set-up, in the forked child (the parent waits on pipes, so a refusal is known before the guest ran
anything: `Refused`, and `auto` takes the next rung):
- `unshare(CLONE_NEWUSER | CLONE_NEWNS)`; the parent writes the maps: an unprivileged caller's one
  id pair, `setgroups` denied (the caller -> the guest's uid/gid: the image's user, 0 under `-0`,
  or the caller's own ids when the spec has none); a root caller's whole id range 0..2^32-2 mapped
  to itself (the guest then really is the spec's uid/gid: setgroups([gid]) + setresgid + setresuid
  just before the exec, so chown & co. are real).
- every mount private; the new root: with `spec.overlay` (archives: a per-run copy-on-write state)
  a real overlayfs (lowerdir = the image's rootfs, upper and work dirs in the state directory:
  `ns-upper`, `ns-work`, mounted on `ns-root`), else the rootfs bound onto itself (MS_BIND|MS_REC);
- the binds (`/dev`, `/proc`, `/sys`, the run's /etc files, `-b`/`--carryon-bind`), parents before
  children (stable), each target resolved inside the new root (symlinks followed there, never out
  of it); a missing mount point is made in the overlay (the run's upper dir), never in the image;
  without an overlay it is made in the rootfs (as the ptrace rungs do), and one that would be made
  in the host directory of another bind makes the run not eligible; `:ro` binds are remounted
  read-only (keeping the source's locked flags);
- `pivot_root(".", ".")` + detach of the old root (chroot where pivot_root is refused); the cwd
  (made in the overlay when missing, like Docker); the command looked up in the guest's PATH
  (runtime.engine.find_command, on the real guest tree), then execve.

The parent is the guests' child subreaper (PR_SET_CHILD_SUBREAPER): orphans come back to it, so
`wait_all` (carryon exec) waits for every guest process and archives end with the main one, the
others killed (SIGKILL, until none is left). Signals are forwarded as by the ptrace engines
(runtime.engine._Forwarder: SIGTERM as the stop signal, every catchable one for archives). Job
control is the kernel's (the guest shares carryon's process group; no tracer holds its stops).
Exit status: the main process's, 128+N for signal N.

State directories: the ptrace rungs keep `upper/` + `overlay.log` (their own format, deletions
without whiteouts); this rung keeps `ns-upper/`, `ns-work/` and `ns-overlay` (its image ident). A
state directory is used by the format that made it: this rung is not eligible for a ptrace-made one
(so `auto` runs it on seccomp), and the ptrace rungs refuse an overlayfs-made one with one line
(runtime.path.overlay).

Runs with no tracer part are executed by carryon-nsrun (runtime/launch/nsrun.c) in this process's
place where the command's entry point allows it (runtime/launch/nsrun.py): the same steps from a
plan this module's decisions make; the code below is their reference and the fallback.

Ports and `-k` (a tracer only for them): the child is seized (PTRACE_SEIZE, before it execs; the
tracer stays outside the namespaces) and installs a filter that stops only the socket calls of
runtime.extension.portmap (and `uname` for runtime.extension.kernel_release); the ptrace engines'
loop, native stop loop and CPU placement answer them, with no path translation (`_tracer_parts`).
Where ptrace is refused, ports go by seccomp user notification instead (runtime.userns_notify).

Identities are real, not emulated: one mapped id cannot chown to others (EINVAL), a namespace's
root cannot mknod a device (EPERM): loud failures where the ptrace rungs fake success. The rootfs's
files are the caller's and show as the guest's ids (unprivileged caller) or root's (a root caller):
a fake identity over files the extraction recorded as someone else's would differ silently, so
such runs are not eligible (`_owner_difference`), except a root guest's (uid and gid 0) that
carryon-nsrun executes on Linux 5.6+: its *owner view* (`owner_view`: the differing entries, at
most OWNER_VIEW_MAX, in the plan) answers the stat family with the recorded owners (seccomp user
notification, runtime/launch/nsrun.c; its chowns are recorded there too); nor is an overlay over
another user's rootfs (its files could not be written over).
`last_resort`: where every ptrace rung refused, `auto` runs an owner-difference run here anyway,
with a warning.
"""

from __future__ import annotations

import _signal as signal
import errno
import os
import sys

from runtime.errors import CarryonError, CommandNotExecutable, CommandNotFound
from runtime.spec import RunSpec

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC = 32, 1024, 2048, 4096, 16384
MS_PRIVATE = 1 << 18
MS_RELATIME = 1 << 21
MNT_DETACH = 2
SYS_PIVOT_ROOT = 155
PR_SET_CHILD_SUBREAPER = 36
PR_SET_PDEATHSIG = 1
# statvfs f_flag bits -> the MS_ flags a read-only remount must keep (locked in a user namespace)
_LOCKED = ((1 << 1, MS_NOSUID), (1 << 2, MS_NODEV), (1 << 3, MS_NOEXEC), (1 << 10, MS_NOATIME),
           (1 << 11, MS_NODIRATIME), (1 << 12, MS_RELATIME))

NS_UPPER, NS_WORK, NS_ROOT, NS_IDENT = "ns-upper", "ns-work", "ns-root", "ns-overlay"
PTRACE_LOG = "overlay.log"      # runtime.path.overlay.LOG: the ptrace rungs' state
OWNER_VIEW_MAX = 4096           # image entries carryon-nsrun's owner view holds at most

_libc: list = []


def _c():
    """libc through ctypes, loaded on first use: ctypes costs ~1.8 ms of start-up, which the runs
    carryon-nsrun executes (and eligibility checks) never need."""
    if not _libc:
        import ctypes
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
        libc.syscall.restype = ctypes.c_long
        _libc.append(libc)
    return _libc[0]


def _check(r: int, what: str) -> None:
    if r < 0:
        import ctypes
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def mount(src: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(_c().mount(os.fsencode(src) if src is not None else None, os.fsencode(target),
                  fstype.encode() if fstype else None, flags, data.encode() if data else None),
           f"mount {target}")


# ---- eligibility --------------------------------------------------------------------------------
def _release() -> tuple[int, int]:
    try:
        major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    except ValueError:
        return (99, 0)
    return (major, minor)


def _sysctl(path: str) -> int | None:
    try:
        with open(path, "rb") as f:
            return int(f.read().strip() or b"0")
    except (OSError, ValueError):
        return None


def eligible() -> str | None:
    """None when user namespaces may work on this node, else why not (sysctls only: no fork)."""
    if os.environ.get("CARRYON_TEST_NO_USERNS"):        # tests: a node that refuses them
        return "user namespaces refused (CARRYON_TEST_NO_USERNS)"
    if _release() < (3, 8):
        return f"user namespaces need Linux 3.8 or later (this is {os.uname().release})"
    if _sysctl("/proc/sys/user/max_user_namespaces") == 0:
        return "user namespaces are disabled (user.max_user_namespaces = 0)"
    if os.geteuid() != 0:
        if _sysctl("/proc/sys/kernel/unprivileged_userns_clone") == 0:
            return "unprivileged user namespaces are disabled (kernel.unprivileged_userns_clone = 0)"
        if _sysctl("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == 1:
            return "user namespaces are disabled by kernel.apparmor_restrict_unprivileged_userns"
    return None


def eligible_for(spec: RunSpec, owners: bool = True) -> str | None:
    """None when this rung can run `spec` as the ptrace rungs would, else why not (cheap; with
    `owners`, the image's recorded owners are checked too: reads the extraction's metadata)."""
    why = eligible()
    if why:
        return why
    if spec.overlay:
        if _release() < (5, 11):
            return f"overlayfs in a user namespace needs Linux 5.11 or later (this is {os.uname().release})"
        if any(c in p for p in (spec.rootfs, spec.overlay) for c in ",:\\"):
            return "the rootfs or state path holds ',', ':' or '\\' (overlayfs options)"
        if os.path.exists(os.path.join(spec.overlay, PTRACE_LOG)):
            return f"the state directory {spec.overlay} was made by the ptrace engines"
        try:
            owner = os.stat(spec.rootfs).st_uid
        except OSError:
            owner = os.geteuid()
        if os.geteuid() != 0 and owner != os.geteuid():
            return (f"the rootfs belongs to uid {owner}: the namespace could not write over its "
                    "files in the overlay")
    missing = _missing_mount_point(spec)
    if missing:
        return f"the mount point {missing} is missing in the directory of another bind"
    if getattr(spec, "trace", None) is not None:
        return "recording the paths the run looks up (CARE mode) needs a ptrace rung"
    if spec.overlay and os.path.exists(os.path.join(spec.overlay, NS_IDENT)):
        return None                     # a state this rung made is used by this rung
    return _owner_difference(spec, root_too=True) if owners else None


def _owner_difference(spec: RunSpec, root_too: bool = False) -> str | None:
    """`_first_difference`, unless carryon-nsrun's owner view shows the recorded owners to this
    root guest (`owner_view`)."""
    why = _first_difference(spec, root_too)
    if why and root_too and _view_possible(spec) and owner_view(spec) is not None:
        return None
    return why


def _view_possible(spec: RunSpec) -> bool:
    """The owner view can be had for `spec`: a run carryon-nsrun executes (no tracer part), on
    Linux 5.6+ (seccomp user notification with CONTINUE: 5.5; openat2: 5.6)."""
    if spec.port_map or spec.netcoop or spec.kernel_release is not None:
        return False
    if _release() < (5, 6) or os.environ.get("CARRYON_TEST_NO_OWNER_VIEW"):
        return False
    from runtime.launch import nsrun
    return nsrun.can_exec()


def owner_view(spec: RunSpec) -> list[tuple[str, int, int]] | None:
    """The image entries whose recorded owner differs from what a root guest's namespace shows
    (every file shows as 0:0): (guest path, uid, gid), at most OWNER_VIEW_MAX; None when the
    guest is not root (uid and gid 0), there is no metadata, nothing differs, or too much does."""
    if not spec.meta_path:
        return None
    guest = (spec.uid if spec.uid is not None else os.getuid(),
             spec.gid if spec.gid is not None else os.getgid())
    if guest != (0, 0):
        return None
    if spec.meta_path not in _views:
        _views[spec.meta_path] = _read_view(spec.meta_path)
    return _views[spec.meta_path]


_views: dict[str, list[tuple[str, int, int]] | None] = {}


def _read_view(meta_path: str) -> list[tuple[str, int, int]] | None:
    try:
        with open(meta_path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    entries = _other_owners(data)
    if entries is None:
        from runtime.cache import json_loads
        try:
            entries = json_loads(data.decode("utf-8", "replace")).get("entries", {})
        except (ValueError, AttributeError):
            return None
    view = []
    for path, e in entries.items():
        try:
            owner = (int(e.get("uid", 0)), int(e.get("gid", 0)))
        except (AttributeError, ValueError, TypeError):
            continue
        if owner != (0, 0) and path.startswith("/") and "\0" not in path:
            view.append((path, owner[0], owner[1]))
            if len(view) > OWNER_VIEW_MAX:
                return None
    return view or None


def _other_owners(data: bytes) -> dict | None:
    """The entries with a non-zero uid or gid, from the compact JSON the extraction writes (each
    entry a flat object): ~1 ms where parsing a Debian image's metadata costs ~5 ms; None when the
    data is not in that form (the caller parses it all)."""
    import json
    import re
    if b'": ' in data:
        return None
    out: dict = {}
    for m in re.finditer(rb'"[ug]id":[1-9]', data):
        end = data.rfind(b'":{', 0, m.start())
        begin = data.rfind(b',"', 0, end)
        begin = (begin if begin >= 0 else data.rfind(b'{"', 0, end)) + 1
        close = data.find(b"}", m.end())
        try:
            one = json.loads(b"{" + data[begin:close + 1] + b"}")
        except ValueError:
            return None
        if len(one) != 1 or not isinstance(next(iter(one.values())), dict):
            return None
        out.update(one)
    return out


def _first_difference(spec: RunSpec, root_too: bool = False) -> str | None:
    """Why the mapping would show owners differently from the ptrace rungs' fake ids, or None.
    The rootfs's files are the caller's (it extracted them): in the namespace they show as the
    guest's ids (an unprivileged caller's one mapped id) or as root's (a root caller maps every
    id to itself). With no fake identity nothing differs from a native run. Else, when the
    extraction recorded other owners, the run is not eligible (for a fake root, with `root_too`: the
    image's files of other owners would show as root's)."""
    if (spec.uid is None and spec.gid is None) or not spec.meta_path:
        return None
    guest = (spec.uid if spec.uid is not None else os.getuid(),
             spec.gid if spec.gid is not None else os.getgid())
    want = (0, 0) if os.geteuid() == 0 else guest
    if guest == (0, 0) and not root_too:
        return None
    try:
        with open(spec.meta_path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    if want == (0, 0) and b'": ' not in data:
        # the common case (a fake root), on every run of a root image: in the compact JSON the
        # extraction writes, counting costs ~0.05 ms where parsing a Debian image's metadata costs
        # ~4 ms (JSON has no leading zeros, and a quote inside a path is escaped)
        if data.count(b'id":0') == data.count(b'id":'):
            return None
        import re
        m = re.search(rb'"(uid|gid)":([1-9]\d*)', data)
        if m is None:
            return None
        start = data.rfind(b'":{', 0, m.start())
        path = data[data.rfind(b'"', 0, start) + 1:start].decode("utf-8", "replace") if start > 0 else "?"
        return (f"the image records {m.group(1).decode()} {int(m.group(2))} for {path}, which the user "
                f"namespace shows as 0")
    from runtime.cache import json_loads
    try:
        entries = json_loads(data.decode("utf-8", "replace")).get("entries", {})
    except (ValueError, AttributeError):
        return None
    for path, e in entries.items():
        try:
            owner = (int(e.get("uid", 0)), int(e.get("gid", 0)))
        except (AttributeError, ValueError, TypeError):
            continue
        if owner != want:
            return (f"the image records owner {owner[0]}:{owner[1]} for {path}, which the user "
                    f"namespace shows as {want[0]}:{want[1]}")
    return None


def _resolve(root: str, guest: str, make: str | None = None) -> str | None:
    """Host path of `guest` inside `root`, symlinks resolved inside it (an absolute target restarts
    at `root`, `..` stops there). Missing: None, or with `make` ("dir"/"file") the missing part
    is made (directories 0755, the last one a file when `make` is "file")."""
    parts = [p for p in guest.split("/") if p and p != "."]
    done: list[str] = []
    hops = 0
    while parts:
        name = parts.pop(0)
        if name == "..":
            if done:
                done.pop()
            continue
        here = os.path.join(root, *done, name)
        try:
            target = os.readlink(here)
        except FileNotFoundError:
            if make is None:
                return None
            if parts or make == "dir":
                os.mkdir(here, 0o755)
            else:
                os.close(os.open(here, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644))
            done.append(name)
            continue
        except OSError:                 # not a symlink
            done.append(name)
            continue
        hops += 1
        if hops > 40:
            return None
        if target.startswith("/"):
            done = []
        parts = [p for p in target.split("/") if p and p != "."] + parts
    return os.path.join(root, *done) if done else root


def _ordered_binds(spec: RunSpec) -> list:
    """The binds to mount, parents before children (stable: the last of two for a path wins)."""
    binds = [b for b in spec.binds if not (b.optional and not os.path.exists(b.host))]
    return sorted(binds, key=lambda b: len([p for p in b.guest.split("/") if p]))


def _missing_mount_point(spec: RunSpec) -> str | None:
    """A bind point that would have to be made inside the host directory of another bind (never
    written to), or None. Those missing in the rootfs are made at run time (in the overlay, or in
    the rootfs as the ptrace rungs do)."""
    binds = _ordered_binds(spec)
    for i, b in enumerate(binds):
        for c in reversed(binds[:i]):
            if b.guest.startswith(c.guest.rstrip("/") + "/"):
                rest = b.guest[len(c.guest.rstrip("/")):]
                if _resolve(c.host, rest) is None:
                    return b.guest
                break
    return None


def describe() -> str:
    why = eligible()
    return f"userns: not usable ({why})" if why else "userns: usable"


# ---- the run ------------------------------------------------------------------------------------
def _unmake_state(spec: RunSpec) -> None:
    """Undo a fresh `_state` (the kernel refused this rung: the next one gets the directory as it
    was, not one it would refuse as this rung's)."""
    for d in (NS_UPPER, NS_WORK + "/work", NS_WORK, NS_ROOT):
        try:
            os.rmdir(os.path.join(spec.overlay or "", d))
        except FileNotFoundError:
            continue
        except OSError:
            return
    try:
        os.unlink(os.path.join(spec.overlay or "", NS_IDENT))
    except OSError:
        pass


def _tidy_work(spec: RunSpec) -> None:
    """Remove overlayfs's own empty dirs in the work dir (`work/`, mode 000: a plain `rm -rf` of a
    kept state directory could not enter it). The mount is gone with the run's namespace."""
    work = os.path.join(spec.overlay or "", NS_WORK)
    try:
        names = os.listdir(work)
    except OSError:
        return
    for name in names:
        try:
            os.rmdir(os.path.join(work, name))
        except OSError:
            pass


def _state(spec: RunSpec) -> tuple[str, str, str] | None:
    """(lowerdir, upperdir, workdir + the mount point) of the overlay, the state dir made ready."""
    if not spec.overlay:
        return None
    ident = spec.overlay_ident or os.path.realpath(spec.rootfs)
    state = os.path.realpath(spec.overlay)
    try:
        os.makedirs(state, 0o700, exist_ok=True)
        mark = os.path.join(state, NS_IDENT)
        try:
            with open(mark, encoding="utf-8", errors="surrogateescape") as f:
                have = f.read().strip()
            if have != "I " + ident:
                raise CarryonError(f"the state directory {spec.overlay} was made for another image")
        except FileNotFoundError:
            with open(mark, "w", encoding="utf-8", errors="surrogateescape") as f:
                f.write("I " + ident + "\n")
        for d in (NS_UPPER, NS_WORK, NS_ROOT):
            os.makedirs(os.path.join(state, d), 0o755, exist_ok=True)
    except OSError as e:
        raise CarryonError(f"cannot use the state directory {spec.overlay}: {e.strerror or e}") from None
    return (os.path.realpath(spec.rootfs), os.path.join(state, NS_UPPER),
            os.path.join(state, NS_WORK) + "\0" + os.path.join(state, NS_ROOT))


def _write_maps(pid: int, spec: RunSpec) -> None:
    """The child's uid/gid maps (see the module docstring)."""
    if os.geteuid() == 0:
        uid_map = gid_map = "0 0 4294967295\n"
    else:
        uid = spec.uid if spec.uid is not None else os.geteuid()
        gid = spec.gid if spec.gid is not None else os.getegid()
        with open(f"/proc/{pid}/setgroups", "w") as f:
            f.write("deny")
        uid_map = f"{uid} {os.geteuid()} 1\n"
        gid_map = f"{gid} {os.getegid()} 1\n"
    with open(f"/proc/{pid}/uid_map", "w") as f:
        f.write(uid_map)
    with open(f"/proc/{pid}/gid_map", "w") as f:
        f.write(gid_map)


def last_resort(spec: RunSpec) -> str | None:
    """The owner difference (see `_owner_difference`) when it is all that keeps this rung from
    `spec`: `auto` runs it anyway, saying so, when every ptrace rung refused. Else None."""
    why = _owner_difference(spec, root_too=True)
    if why and eligible_for(spec, owners=False) is None:
        return why
    return None


def run(spec: RunSpec, check: bool = True) -> int:
    """Run `spec` in a user + mount namespace; the main process's exit status (128+N). `check`:
    refuse a spec this rung is not eligible for (`eligible_for`)."""
    from runtime.engine import Refused, _Forwarder
    why = eligible_for(spec) if check else None
    if why:
        raise Refused(f"the userns engine cannot run this: {why}")
    from runtime.launch import nsrun
    refused = nsrun.take_refusal()      # carryon-nsrun found the namespace refused: next rung
    if refused:
        raise Refused(f"user namespace refused: {refused}")
    if not os.path.isdir(spec.rootfs):
        raise CarryonError(f"rootfs not found or not a directory: {spec.rootfs}")
    overlay = _state(spec)
    traced = spec.port_map or spec.netcoop or spec.kernel_release is not None
    view = None
    if spec.uid == 0 or spec.verbose >= 1:
        why = _first_difference(spec, root_too=True) if spec.uid == 0 else None
        if why and _view_possible(spec):
            view = owner_view(spec)
        if view and spec.verbose >= 1:
            sys.stderr.write(f"carryon: userns: owner view: {len(view)} image files show their "
                             "recorded owners (stat by seccomp user notification)\n")
        elif why and spec.verbose >= 1:
            sys.stderr.write(f"carryon: userns: the guest is root with one id: {why} (and chown "
                             "to other ids fails)\n")
    if spec.verbose >= 1:
        sys.stderr.write(f"carryon: engine userns, rootfs {spec.rootfs}, command {spec.argv[0] if spec.argv else ''} "
                         f"(cwd {spec.cwd or '/'}, {len(spec.binds)} binds"
                         f"{', overlayfs' if overlay else ''})\n")
    if not traced:                      # executed by carryon-nsrun where it can (never returns)
        nsrun.exec_plan(spec, overlay, _ordered_binds(spec), check, view)
    env_b = {os.fsencode(k): os.fsencode(v) for k, v in spec.env.items()}
    tracer = _tracer_parts(spec) if traced else None
    # where ptrace is refused, ports alone (no -k) can do with seccomp user notification
    notify = None
    if tracer is not None and spec.kernel_release is None and _release() >= (5, 9):
        from runtime import userns_notify
        notify = userns_notify.program()
    up_r, up_w = os.pipe2(os.O_CLOEXEC)          # child -> parent: "unshared"
    go_r, go_w = os.pipe2(os.O_CLOEXEC)          # parent -> child: "maps written"
    err_r, err_w = os.pipe2(os.O_CLOEXEC)        # child -> parent: what failed (EOF: exec'd)
    parent = os.getpid()
    sys.stdout.flush()
    sys.stderr.flush()
    # (before we become a subreaper: else the watchdog, orphaned, would come back to us)
    dog = _NsWatchdog() if tracer is None else None     # traced guests die by PTRACE_O_EXITKILL
    _c().prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    if tracer is not None:
        tracer[1].pin_self()            # the guest inherits it (runtime.tracee.placement)
    pid = os.fork()
    if pid == 0:
        _child(spec, parent, overlay, env_b, up_w, go_r, err_w, tracer[3] if tracer else None, notify)
    os.close(up_w)
    os.close(go_r)
    os.close(err_w)
    forward = _Forwarder(pid, spec.stop_signal, spec.forward_all_signals)
    opts = 0
    notified = False
    handed = False                      # the extensions are the loop's / supervisor's to close
    try:
        if tracer is not None:          # seized before it execs (nothing to stop until then)
            from runtime.tracee import ffi
            opts = (ffi.PTRACE_O_TRACESYSGOOD | ffi.PTRACE_O_TRACEFORK | ffi.PTRACE_O_TRACEVFORK
                    | ffi.PTRACE_O_TRACECLONE | ffi.PTRACE_O_EXITKILL | ffi.PTRACE_O_TRACESECCOMP)
            try:
                ffi.seize(pid, opts)
                os.write(go_w, b"s")
            except OSError as e:
                if notify is None:
                    _reap(pid)
                    raise Refused(f"ptrace refused (the tracer of -p/-n/-k): {e.strerror}") from None
                os.write(go_w, b"n")     # user notification instead (runtime.userns_notify)
                notified = True
                if spec.verbose >= 1:
                    sys.stderr.write(f"carryon: ptrace refused ({e.strerror}): ports by seccomp "
                                     "user notification\n")
        if os.read(up_r, 1) == b"u":
            try:
                _write_maps(pid, spec)
                os.write(go_w, b"m")
            except OSError as e:
                os.write(go_w, b"x" + str(e.errno or 0).encode())
        listener = -1
        if notified:                    # the child says its listener's number (or dies)
            line = os.read(up_r, 32)
            if line.startswith(b"L"):
                from runtime.net.sockinfo import _pidfd_getfd
                try:
                    listener = _pidfd_getfd(pid, int(line[1:]))
                except OSError:
                    listener = -1
            try:
                os.write(go_w, b"g" if listener >= 0 else b"x")
            except OSError:             # it died: its report says why
                pass
        os.close(go_w)
        go_w = -1
        forward.install()
        report = b""
        while True:
            chunk = os.read(err_r, 4096)
            if not chunk:
                break
            report += chunk
        if report:
            _reap(pid)
            kind, _, msg = report.decode("utf-8", "replace").partition(" ")
            if kind == "refused":
                if overlay is not None:
                    _unmake_state(spec)
                raise Refused(f"user namespace refused: {msg}")
            if kind == "notfound":
                raise CommandNotFound(msg)
            if kind == "notexec":
                raise CommandNotExecutable(msg)
            if kind == "exec":
                err = int(msg or 0)
                text = f"{spec.argv[0]}: {os.strerror(err)}"
                raise CommandNotFound(text) if err == errno.ENOENT else CommandNotExecutable(text)
            raise CarryonError(f"engine failure: {msg}")
        handed = True
        if dog is not None:
            dog.watch(pid)
        if notified:
            assert tracer is not None
            from runtime import userns_notify
            pm = tracer[0][-1]          # the PortMap (the only extension: no -k here)
            supervisor = userns_notify.Supervisor(listener, pm)
            try:
                status = _wait(pid, spec.wait_all)
            finally:
                supervisor.stop()
                pm.close()
        elif tracer is not None:
            forward.restore()           # _trace forwards them itself
            from runtime.engine import _trace
            exts, placement, dispatch, _prog, native_setup, mapper = tracer
            status = _trace(spec, pid, mapper, exts, placement, dispatch, native_setup, True, opts,
                            [], seized=True, exitkill=True)
        else:
            status = _wait(pid, spec.wait_all)
        if dog is not None:
            dog.done()
    finally:
        if dog is not None:
            dog.close()
        forward.restore()
        for fd in (up_r, go_w, err_r):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        _c().prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
        if tracer is not None:
            tracer[1].stop()
            if not handed:              # refused or failed before the guest ran: no ports file left
                for ext in tracer[0]:
                    ext.close()
        if overlay is not None:
            _tidy_work(spec)
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


class _NsWatchdog:
    """No guest outlives a SIGKILLed carryon: orphans go to init (we were their subreaper), so a
    small process forked twice (init adopts it) waits on a pipe, and when it closes without our
    "done", kills every process of the run's user namespace until none is left. Costs one fork per
    run without a tracer (a traced run's guests die by PTRACE_O_EXITKILL)."""

    def __init__(self) -> None:
        r, w = os.pipe2(os.O_CLOEXEC)
        child = os.fork()
        if child == 0:
            try:
                os.close(w)
                if os.fork() == 0:
                    _ns_watch(r)
            finally:
                os._exit(0)
        os.close(r)
        os.waitpid(child, 0)
        self.fd = w

    def watch(self, pid: int) -> None:
        """The guests are the processes of `pid`'s user namespace."""
        try:
            os.write(self.fd, b"N" + os.fsencode(os.readlink(f"/proc/{pid}/ns/user")) + b"\n")
        except OSError:
            pass

    def done(self) -> None:
        """The run is over: nothing to kill."""
        try:
            os.write(self.fd, b"E")
        except OSError:
            pass
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _ns_watch(fd: int) -> None:
    """The watchdog process (never returns): see _NsWatchdog. It keeps no descriptor of the run's
    (a pipe's end held here would keep carryon, or whoever reads the run's output, waiting)."""
    import time  # (`signal` is the C module _signal here: no enum import)
    null = os.open("/dev/null", os.O_RDWR)
    for std in (0, 1, 2):
        if std != fd:
            os.dup2(null, std)
    keep = sorted({0, 1, 2, fd})
    for lo, hi in zip(keep, keep[1:] + [65536]):
        os.closerange(lo + 1, hi)
    from runtime.engine import watchdog_read
    got = watchdog_read(fd)
    done = b"E" in got or not got.startswith(b"N")      # over, or no guest ever ran
    ns = got[1:].split(b"\n", 1)[0].decode("utf-8", "replace")
    deadline = time.monotonic() + 5
    while not done and time.monotonic() < deadline:
        found = False
        me = os.getpid()
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) == me:
                continue
            try:
                if os.readlink(f"/proc/{name}/ns/user") != ns:
                    continue
                os.kill(int(name), signal.SIGKILL)
                found = True
            except OSError:
                pass
        if not found:
            break
        time.sleep(0.02)
    os._exit(0)


class _NoMapper:
    """The tracer's path mapper where nothing is translated (the guest's paths are real)."""

    native_clear = native_dir = None


def filter_program(traced: set[int], if_arg: dict[int, int]) -> list[tuple[int, int, int, int]]:
    """The traced run's filter: `traced` stop, `if_arg` stop when that argument is non-zero,
    nothing else (no path call, nothing refused)."""
    from runtime.syscall import seccomp
    return seccomp.build(traced, None, if_arg, None)


def _tracer_parts(spec: RunSpec) -> tuple:
    """(extensions, CPU placement, dispatch, seccomp program, native loop setup, mapper) of a run
    whose socket calls need the port translation (runtime.extension.portmap), or whose uname the
    kernel release (`-k`, runtime.extension.kernel_release): the filter stops only on those calls,
    the tracer (outside the namespaces) answers them; no path is translated."""
    from runtime.syscall.sysnums import MAX_KNOWN, NUMBERS
    from runtime.tracee import ffi, loop, state  # noqa: F401 (loaded before the fork)
    from runtime.tracee.actions import EXIT
    from runtime.tracee.placement import Placement

    exts: list = []
    if spec.kernel_release is not None:
        from runtime.extension.kernel_release import KernelRelease
        exts.append(KernelRelease(spec.kernel_release))
    if spec.port_map or spec.netcoop:
        from runtime.extension.portmap import PortMap
        exts.append(PortMap(spec))
    dispatch: list = [None] * (MAX_KNOWN + 1)
    traced: set[int] = set()
    if_arg: dict[int, int] = {}
    for ext in exts:                    # (their calls are disjoint: one hook per call)
        cond = getattr(ext, "enter_calls_if_arg", {})
        for nr in ext.enter_calls:
            if nr in cond:
                if_arg[nr] = cond[nr]
            else:
                traced.add(nr)

            def hook(t, regs, _ext=ext):
                t.exits = None
                t.peek = None
                act = _ext.enter(t, regs)
                if act & EXIT:
                    t.exits = [_ext.exit]
                return act
            dispatch[nr] = hook
    # CPU placement as on the ptrace rungs (cheaper stops on one shared CPU, released when the
    # guest may want more); the affinity calls stop too (the guest's own view of its CPUs). A
    # guest reading Cpus_allowed in /proc/PID/status is not seen (no path stops here).
    placement = Placement()
    if placement.mode == "auto" and placement.cpu is not None:
        for name, setting in (("sched_getaffinity", False), ("sched_setaffinity", True)):
            def affinity(t, regs, _s=setting):
                placement.guest_affinity_call(_s)
                return 0
            traced.add(NUMBERS[name])
            dispatch[NUMBERS[name]] = affinity
    program = ffi.seccomp_program(filter_program(traced, if_arg))
    mapper = _NoMapper()

    def native_setup(nat):              # the native stop loop answers what the table decides
        for ext in exts:
            attach = getattr(ext, "attach_native", None)
            if attach is not None:
                attach(nat, sorted(ext.enter_calls))
        return mapper
    return exts, placement, dispatch, program, native_setup, mapper


def _reap(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
    try:
        os.waitpid(pid, 0)
    except OSError:
        pass


def _children() -> list[int]:
    """Our live children (orphaned guests come back to us: we are their subreaper)."""
    me = os.getpid()
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{me}/task"):
            with open(f"/proc/{me}/task/{tid}/children", "rb") as f:
                out += [int(x) for x in f.read().split()]
        return out
    except (OSError, ValueError):
        pass
    for name in os.listdir("/proc"):    # no /proc/PID/task/TID/children (CONFIG_PROC_CHILDREN)
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
                if int(fields[1]) == me:
                    out.append(int(name))
            except (OSError, ValueError, IndexError):
                pass
    return out


def _wait(main: int, wait_all: bool) -> int:
    """The main process's wait status; with `wait_all` after every guest process ended, else the
    others killed once the main one ended."""
    status = None
    flags = 0
    while True:
        try:
            pid, st = os.waitpid(-1, flags)
        except ChildProcessError:
            break
        if pid == main and status is None and not os.WIFSTOPPED(st):
            status = st
            if not wait_all:
                break
            flags = os.WUNTRACED        # a guest stopping now may be left for ever: see below
            _hang_up_orphans()
        elif status is not None and os.WIFSTOPPED(st):
            _hang_up_orphans()
    if not wait_all:
        while True:
            kids = _children()
            if not kids:
                break
            for k in kids:
                try:
                    os.kill(k, signal.SIGKILL)
                except OSError:
                    pass
            for _ in kids:
                try:
                    os.waitpid(-1, 0)
                except ChildProcessError:
                    break
    assert status is not None
    return status


def _hang_up_orphans() -> None:
    """The main process ended while guests are stopped: natively their process group (carryon's)
    is orphaned once no member has its parent in another group of the session, and the kernel
    sends its members SIGHUP and SIGCONT. carryon is a member whose parent (a shell, with carryon
    as its job) keeps the group from being orphaned: it does the kernel's part, as if it were not
    in the group (as runtime.tracee.loop's `_orphaned` does for the ptrace rungs). With no guest
    left (none of our children: every surviving guest is one, or a descendant of one, as we are
    their subreaper) there is nothing to hang up, and no /proc walk is paid."""
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WSTOPPED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return
    from runtime.tracee.loop import hang_up, orphaned_group
    members = orphaned_group()
    if not members:
        return
    for pid in members:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                if f.read().rsplit(b")", 1)[1].split()[0] in (b"T", b"t"):
                    hang_up(members)
                    return
        except (OSError, IndexError):
            pass


class _Here:
    """find_command's mapper once inside the new root: guest paths are real paths."""

    @staticmethod
    def to_host(guest: str, cwd: str, follow: bool) -> str:
        return os.path.join(cwd, guest)


def _child(spec: RunSpec, parent: int, overlay, env_b: dict, up_w: int, go_r: int, err_w: int,
           program, notify) -> None:
    """The forked child: never returns. What failed goes to the parent on `err_w`: "refused WHY"
    (the kernel refused the namespace or a mount: nothing of the guest ran), "notfound MSG",
    "notexec MSG", "exec ERRNO", "error MSG"."""
    code = 125
    stage = "refused"
    try:
        for s in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGHUP,
                  signal.SIGQUIT):
            signal.signal(s, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        _c().prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(125)
        mode = b""
        if program is not None:         # the tracer seizes us first, or has us notify it
            mode = os.read(go_r, 1)
            if mode not in (b"s", b"n"):
                os._exit(125)
        _check(_c().unshare(CLONE_NEWUSER | CLONE_NEWNS), "unshare")
        os.write(up_w, b"u")
        answer = os.read(go_r, 16)
        if answer != b"m":
            e = int(answer[1:] or b"0") if answer[:1] == b"x" else 0
            raise OSError(e, f"writing the id maps: {os.strerror(e)}")
        mount(None, "/", None, MS_REC | MS_PRIVATE)
        if overlay is not None:
            lower, upper, rest = overlay
            work, root = rest.split("\0")
            opts = f"lowerdir={lower},upperdir={upper},workdir={work}"
            try:
                mount("overlay", root, "overlay", 0, opts + ",userxattr")
            except OSError:
                mount("overlay", root, "overlay", 0, opts)
        else:
            root = os.path.realpath(spec.rootfs)
            mount(root, root, None, MS_BIND | MS_REC)
        for b in _ordered_binds(spec):
            kind = "dir" if os.path.isdir(b.host) else "file"
            target = _resolve(root, b.guest, kind)
            if target is None:
                raise OSError(errno.ENOENT, f"mount point {b.guest}: missing in the rootfs")
            mount(b.host, target, None, MS_BIND | MS_REC)
            if b.readonly:
                flags = MS_BIND | MS_REMOUNT | MS_RDONLY
                try:
                    f_flag = os.statvfs(target).f_flag
                except OSError:
                    f_flag = 0
                for bit, ms in _LOCKED:
                    if f_flag & bit:
                        flags |= ms
                mount(None, target, None, flags)
        os.chdir(root)
        if _c().syscall(SYS_PIVOT_ROOT, b".", b".") == 0:
            _check(_c().umount2(b".", MNT_DETACH), "umount the old root")
        else:
            os.chroot(".")
        os.chdir("/")
        stage = "error"
        cwd = spec.cwd or "/"
        if not os.path.isdir(cwd):
            made = False
            if overlay is not None and not spec.cwd_optional:
                try:
                    os.makedirs(cwd, 0o755, exist_ok=True)      # like Docker: a missing one is made
                    made = True
                except OSError:
                    pass
            if not made:
                if not spec.cwd_optional or spec.verbose >= 1:
                    sys.stderr.write(f"carryon: warning: can't chdir to {cwd!r} in the guest, using '/'\n")
                    sys.stderr.flush()
                cwd = "/"
        os.chdir(cwd)
        if os.geteuid() == 0 and (spec.uid or spec.gid):        # a root caller: real ids
            gid = spec.gid or 0
            os.setgroups([gid])
            os.setresgid(gid, gid, gid)
            os.setresuid(spec.uid or 0, spec.uid or 0, spec.uid or 0)
        from runtime.engine import find_command
        try:
            prog = find_command(_Here, spec.argv[0] if spec.argv else "", spec.env.get("PATH"), cwd)
        except CommandNotFound as e:
            os.write(err_w, f"notfound {e}".encode())
            os._exit(127)
        except CommandNotExecutable as e:
            os.write(err_w, f"notexec {e}".encode())
            os._exit(126)
        if mode == b"s":                # the socket calls stop (port translation)
            from runtime.tracee import ffi
            ffi.install_seccomp(program)
        elif mode == b"n":              # ... or go to carryon's listener (runtime.userns_notify),
            from runtime import userns_notify  # which takes it with pidfd_getfd (close-on-exec)
            listener = userns_notify.install(notify)
            os.write(up_w, b"L%d" % listener)
            if os.read(go_r, 1) != b"g":
                raise OSError(errno.EPERM, "carryon could not take the notification listener")
        stage = "exec"
        os.execve(prog, list(spec.argv), env_b)
    except OSError as e:
        try:
            if stage == "exec":
                os.write(err_w, f"exec {e.errno or 0}".encode())
                code = 127 if e.errno == errno.ENOENT else 126
            else:
                os.write(err_w, f"{stage} {e.strerror or e}".encode())
        except OSError:
            pass
    except BaseException as e:
        try:
            os.write(err_w, f"error {type(e).__name__}: {e}".encode())
        except OSError:
            pass
    os._exit(code)
