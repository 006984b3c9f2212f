"""The one confined join: resolve an untrusted path inside a root (umoci's SecureJoin semantics).

Every place outside the tracer that turns a path taken from an image (a tar entry's name, a
hardlink's target, a guest file such as `/etc/passwd`) into a place inside a root goes through
`join`: the packer's squash of layers into an in-memory tree (`packer.squash`), the rootless
extraction onto disk (`runtime.extract`) and the launcher's reads of guest files (`runtime.launch`).
The rules, the same for all three:

- the path is split on `/`; empty and `.` components are dropped, so a leading `/` means nothing:
  the path is always taken from the root;
- `..` pops one resolved component and never goes above the root (it is clamped there);
- a symlink met on the way is replaced by its target: an absolute target restarts from the root (it
  is re-rooted, never read as a host path), a relative one continues from the link's directory; its
  `..` components are clamped like any other;
- more than `MAX_SYMLINKS` (40, the kernel's limit) links in one walk raise `SymlinkLoop`;
- the last component is followed only when the caller asks (`follow_last`).

The walk never touches the tree itself: the caller's `lookup(handle, name)` says what `name` is in the
directory `handle` (a node of an in-memory tree, a host path, a tuple of components ...) and returns

- `(child_handle, None)`: not a symlink, the walk descends into it (a missing name or a non-directory
  in the middle can be answered this way too: the rest is then joined lexically under it, and the
  kernel, or the caller, refuses it later);
- `(None, target)`: a symlink with that target (untrusted too: it comes from the same image);
- `(None, None)`: the walk ends here and `join` returns None (e.g. "no such directory" when the
  caller must not create it).

`join` never builds a host path and never calls the system: what it hands back is made only of names
that `lookup` saw (not symlinks) and of components of the untrusted input that were never looked up
(the last one when it is not followed), none of them `..`, `.` or empty, so putting them below the
root cannot leave it. It is containment for trees that only the caller changes (an image being
unpacked): a tree that other processes change between `lookup` and the caller's use needs
openat2(RESOLVE_IN_ROOT) or the like.

The tracer's `runtime.path.canon.resolve` is a separate walker on purpose (as PRoot keeps its
`canonicalize` apart): it follows the same rules but overlays binds, answers /proc links per process,
stops at the first component the host refuses, and is tuned for its hot path.

Stdlib only and cheap to import (the archive's warm start reaches it through `runtime.launch`): no
`re`, `pathlib`, `dataclasses` or `typing` at run time. It never imports `packer`.
"""

from __future__ import annotations

TYPE_CHECKING = False           # not `typing.TYPE_CHECKING`: importing typing slows start-up
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TypeVar
    H = TypeVar("H")

MAX_SYMLINKS = 40


class SymlinkLoop(Exception):
    """More than MAX_SYMLINKS symlinks met while resolving one path; the argument is the
    root-relative path of the link that was one too many."""


def split_path(untrusted_path: str) -> list[str]:
    """Components of an untrusted tar or guest path, empty and `.` parts dropped (`..` kept)."""
    return [c for c in untrusted_path.split("/") if c and c != "."]


def escapes_root(untrusted_path: str) -> bool:
    """True when a root-relative path (e.g. a hardlink's target) climbs above the root lexically.

    A leading `/` is dropped first (tar names are root-relative either way). `join` would clamp such
    a path; callers use this to refuse what must not be clamped (a hardlink to a host file)."""
    depth = 0
    for c in split_path(untrusted_path):
        if c == "..":
            depth -= 1
            if depth < 0:
                return True
        else:
            depth += 1
    return False


def join(root: H, untrusted_parts: list[str], lookup: Callable[[H, str], tuple[H | None, str | None]],
         follow_last: bool = False) -> tuple[list[H], list[str]] | None:
    """Resolve the components of an untrusted path inside `root` (see the module docstring).

    Returns `(handles, names)`: `names` are the resolved root-relative components (none of them `..`,
    `.` or empty; `[]` is the root itself) and `handles[i]` is the handle `lookup` gave for
    `names[:i]` (`handles[0]` is `root`). `handles` has one more entry than `names` when the last
    name was looked up, and as many when it was not (the last component, not followed): either way
    `handles[len(names) - 1]` is the directory holding the last name. Returns None when `lookup`
    ended the walk; raises SymlinkLoop after MAX_SYMLINKS links.
    """
    handles = [root]
    names: list[str] = []
    todo = untrusted_parts[::-1]
    links = 0
    while todo:
        c = todo.pop()
        if c == "" or c == ".":
            continue
        if c == "..":
            if names:
                names.pop()
                handles.pop()
            continue
        if not todo and not follow_last:
            names.append(c)
            break
        child, target = lookup(handles[-1], c)
        if target is not None:
            links += 1
            if links > MAX_SYMLINKS:
                raise SymlinkLoop("/".join(names) + "/" + c if names else c)
            if target[:1] == "/":
                del handles[1:]
                names = []
            todo.extend(target.split("/")[::-1])
            continue
        if child is None:
            return None
        handles.append(child)
        names.append(c)
    return handles, names
