"""/proc magic links as the guest must see them.

The tracer runs its own `lstat`/`readlink` on the host, so the host's answers for `/proc/self`
(the *tracer's* pid), `/proc/PID/exe` (the guest's dynamic loader when programs are started through
it, and a host path anyway), `/proc/PID/cwd` and `/proc/PID/root` (host paths) are wrong for the
guest. This module gives the guest's answers. It only applies under the guest directory where the
host's `/proc` is bound (`Mapper.proc_root`, normally "/proc"); a rootfs' own empty `/proc` is a
plain directory.

Two uses:

1. Path walks (open/stat/chdir/... through a magic link), called by `canon` whenever it meets a
   symlink below the proc root:

   | link (PID numeric, or `task/TID/` forms)  | followed as                                                |
   |---|---|
   | `/proc/self`                              | relative link to `TGID` of the calling process               |
   | `/proc/thread-self`                       | relative link to `TGID/task/TID`                             |
   | `/proc/PID/root`                          | guest `/` (so `/proc/self/root/etc/passwd` is guest `/etc/passwd`) |
   | `/proc/PID/cwd`                           | the process's guest cwd (`ProcState.cwd_guest`), then the walk continues in the guest |
   | `/proc/PID/exe`                           | the process's guest program (`ProcState.exe_guest`)          |
   | `/proc/PID/fd/N`, `/proc/PID/map_files/X` | last component: not translated, the kernel follows its own magic link (it names an already-open file, so this reopens pipes, sockets, deleted and memfd files exactly as natively); in the middle of a path (`/proc/self/fd/3/sub`): the host target translated to a guest path and the walk continues in the guest; a target outside the guest leaves the rest of the path to the kernel |
   | `/proc/PID/ns/*` and other magic links    | not translated (kernel magic)                                |

   For a PID that is not a guest process (`lookup` returns None), `exe`/`cwd` are read on the host
   and translated to the guest; a target outside the guest is read as a guest path, like an
   absolute symlink (`/proc/1/cwd/x` with init's cwd `/` is guest `/x`); `root` is still guest
   `/`. So no walk through `/proc/PID/{root,cwd,exe}` leaves the guest root (an fd the guest holds
   on a host directory still reaches it through `/proc/self/fd/N/...`, as `openat(N, ...)` would).

2. `readlink` results: `readlink_target` gives the string the guest must read for a magic link
   (exe, cwd, root, fd/N, map_files/X); None means "not a magic link we rewrite, let the kernel
   answer" (the kernel answers `/proc/self` right by itself since the tracee makes the call).
"""  # noqa: E501 -- the table's rows above cannot wrap

from __future__ import annotations

import os

TYPE_CHECKING = False           # not `typing.TYPE_CHECKING`: importing typing slows start-up
if TYPE_CHECKING:
    from collections.abc import Callable

    from runtime.path.binding import Mapper

    Lookup = Callable[[int], "ProcState | None"]


class ProcState:
    """What the tracer knows about one guest process."""

    __slots__ = ("exe_guest", "cwd_guest", "tgid")

    def __init__(self, exe_guest: str, cwd_guest: str, tgid: int | None = None) -> None:
        self.exe_guest = exe_guest  # guest path of the program it executes (what /proc/PID/exe reads as)
        self.cwd_guest = cwd_guest  # its guest working directory (canonical, absolute)
        self.tgid = tgid            # its thread-group id when the tracer knows it (for /proc/self from a thread)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not ProcState:
            return NotImplemented
        return (self.exe_guest, self.cwd_guest, self.tgid) == (other.exe_guest, other.cwd_guest,  # type: ignore[attr-defined]
                                                                other.tgid)  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ProcState(exe_guest={self.exe_guest!r}, cwd_guest={self.cwd_guest!r}, tgid={self.tgid!r})"

# Returned by `follow` for a symlink below /proc that is not magic: read it like any symlink.
ORDINARY = object()


def _pid_link(parts: list[str]) -> tuple[str, str | None] | None:
    """`["123", "exe"]` -> ("123", "exe"); `["123", "task", "124", "fd", "3"]` -> ("123", "fd");
    ("123", None) for other links below a pid directory; None when not below a pid directory."""
    if not parts[0].isdigit():
        return None
    rest = parts[1:]
    if len(rest) >= 2 and rest[0] == "task":
        if not rest[1].isdigit():
            return (parts[0], None)
        rest = rest[2:]
    if len(rest) == 1 and rest[0] in ("exe", "cwd", "root"):
        return (parts[0], rest[0])
    if len(rest) == 2 and rest[0] in ("fd", "map_files"):
        return (parts[0], "fd")
    return (parts[0], None)


def _host_target_in_guest(host_link: str, mapper: Mapper) -> str | None:
    try:
        target = os.readlink(host_link)
    except OSError:
        return None
    if not target.startswith("/"):
        return None
    return mapper.to_guest(target)


def follow(parts: list[str], host_link: str, final: bool, pid: int, tid: int | None,
           lookup: Lookup | None, mapper: Mapper) -> str | object | None:
    """How a path walk goes through the symlink at `<proc_root>/` + "/".join(parts).

    `host_link` is its host path. Returns a guest link target to follow (absolute: from the guest
    root; relative: from the link's directory), None when the kernel must follow it itself (stop
    translating here, the rest of the path is appended lexically), or ORDINARY for a plain symlink.
    `pid` is the calling process (its tgid when known), `tid` the calling thread."""
    head = parts[0]
    if len(parts) == 1:
        if head == "self":
            return str(_tgid(pid, lookup))
        if head == "thread-self":
            return f"{_tgid(pid, lookup)}/task/{tid if tid is not None else pid}"
    link = _pid_link(parts)
    if link is None:
        return ORDINARY
    target_pid, kind = link
    if kind is None:
        return None
    if kind == "root":
        return "/"
    if kind == "fd":
        if final:
            return None
        return _host_target_in_guest(host_link, mapper)
    state = lookup(int(target_pid)) if lookup is not None else None
    if state is not None:
        return state.exe_guest if kind == "exe" else state.cwd_guest
    try:
        target = os.readlink(host_link)
    except OSError:
        return None                     # no such process, or not ours to look at: kernel answers
    if not target.startswith("/"):
        return None
    guest = mapper.to_guest(target)
    return guest if guest is not None else target


def _tgid(pid: int, lookup: Lookup | None) -> int:
    if lookup is not None:
        state = lookup(pid)
        if state is not None and state.tgid is not None:
            return state.tgid
    return pid


def readlink_target(guest_link: str, pid: int, lookup: Lookup | None, mapper: Mapper) -> str | None:
    """The guest-visible target of the magic link at canonical guest path `guest_link`.

    `guest_link` is what `mapper.canon(path, cwd, follow_last=False, pid=pid)` gives for the
    path the guest passed to readlink (so `/proc/self/exe` arrives as `/proc/<tgid>/exe`).
    - `.../exe` -> `ProcState.exe_guest`, `.../cwd` -> `ProcState.cwd_guest` (for a pid the tracer
      does not know: the host target translated to the guest, else verbatim),
    - `.../root` -> "/",
    - `.../fd/N`, `.../map_files/X` -> the host target translated to the guest when it lies inside
      the guest (a deleted file keeps its " (deleted)" suffix), verbatim otherwise
      ("pipe:[123]", "socket:[45]", "anon_inode:[eventfd]", "/memfd:x (deleted)", host paths),
    - None for anything else, including when the host link cannot be read: the kernel answers.
    """
    root = mapper.proc_root
    if root is None or not guest_link.startswith(root + "/"):
        return None
    parts = guest_link[len(root) + 1:].split("/")
    link = _pid_link(parts)
    if link is None or link[1] is None:
        return None
    target_pid, kind = link
    if kind == "root":
        return "/"
    host_link = mapper.proc_host + "/" + "/".join(parts)
    if kind in ("exe", "cwd"):
        state = lookup(int(target_pid)) if lookup is not None else None
        if state is not None:
            return state.exe_guest if kind == "exe" else state.cwd_guest
    try:
        target = os.readlink(host_link)
    except OSError:
        return None
    if target.startswith("/"):
        guest = mapper.to_guest(target)
        if guest is not None:
            return guest
    return target
