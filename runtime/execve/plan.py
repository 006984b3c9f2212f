"""What a guest `execve` really runs: the kernel reads `#!` and PT_INTERP on the HOST, so the tracer
does that work in the guest's terms and hands the kernel something it can run as is.

- `#!` scripts: the interpreter (a guest path, resolved like any path) with the optional argument
  and the script's filename, nested up to 4 levels (deeper: ELOOP); a missing interpreter: ENOENT.
- dynamic ELF: carryon's own loader (runtime/execve/loader.py, when `plan` is given one) with the
  argv UNCHANGED: it maps the program and the guest loader named by PT_INTERP itself, so the
  process sees the argv, comm and auxv a real exec gives. Without it (no C compiler for a venv
  install, `CARRYON_LOADER=0`): the GUEST's loader, run with `--argv0 ARGV0 PROGRAM ARGS...`
  (PROGRAM as a guest path: the loader opens it through the tracer); a loader without `--argv0`
  (glibc < 2.33, musl < 1.2.3) gets `PROGRAM ARGS...` and the program sees its guest path as argv[0].
- static ELF: run as is.
Errors are the kernel's: ENOENT (missing), EACCES (directory, not regular, no exec permission),
ENOEXEC (neither ELF nor `#!`, or not x86_64), ELOOP (scripts nested too deep).
"""

from __future__ import annotations

import errno
import os
import stat

from runtime.execve import elf, shebang

TYPE_CHECKING = False           # not `typing.TYPE_CHECKING`: importing typing slows start-up
if TYPE_CHECKING:
    from collections.abc import Callable

    Arg = int | bytes          # a pointer to a string already in the tracee, or a new string
    Resolve = Callable[[str], tuple[str, str]]   # guest path -> (canonical guest path, host path), followed


class ExecPlan:
    __slots__ = ("host_path", "argv", "exe_guest", "program", "st", "loaded", "interp")

    def __init__(self, host_path: str, argv: list[Arg], exe_guest: str, program: str = "",
                 st: os.stat_result | None = None, loaded: bool = False, interp: str = "") -> None:
        self.host_path = host_path      # what the kernel executes
        self.argv = argv                # the new argv
        self.exe_guest = exe_guest      # what /proc/PID/exe must read as afterwards
        self.program = program          # host path of the program (the ELF the exec ends at)
        self.st = st                    # its stat (set-user-ID bits: runtime.extension.fake_id)
        self.loaded = loaded            # host_path is carryon's loader, which loads `program`
        self.interp = interp            # host path of the program's PT_INTERP loader (if loaded)


# What the headers of an executable file said, by file identity (host path, device, inode, mtime,
# ctime, size): ("elf", PT_INTERP or None) or ("script", interpreter, argument). A changed file
# changes its identity; an unreadable one is never recorded (it is run unexamined).
_HEADS: dict[tuple, tuple] = {}
_HEADS_MAX = 1024


def _head_kind(host: str) -> tuple[tuple, os.stat_result]:
    """(kind, stat) of executable `host` (see `_HEADS`); kind ("unread",) when we cannot read it.
    A file recorded there passed the exec permission check under the same identity (a chmod, an
    ACL or owner change moves its ctime), so that check is not made again."""
    st = os.stat(host)                              # ENOENT, ENOTDIR, ELOOP, EACCES
    if not stat.S_ISREG(st.st_mode):
        raise OSError(errno.EACCES, "not a regular file")
    key = (host, st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)
    kind = _HEADS.get(key)
    if kind is not None:
        return kind, st
    if not os.access(host, os.X_OK):
        raise OSError(errno.EACCES, "permission denied")
    try:
        fd = os.open(host, os.O_RDONLY | os.O_CLOEXEC)
    except PermissionError:
        return ("unread",), st
    try:
        head = os.pread(fd, shebang.BINPRM_BUF_SIZE, 0)
        if head[:2] == b"#!":
            interp, arg = shebang.parse(head)
            kind = ("script", interp, arg)
        elif not elf.is_elf(head):
            raise OSError(errno.ENOEXEC, "exec format error")
        else:
            kind = ("elf", elf.interpreter(fd, head, (host, st.st_ino, st.st_mtime_ns, st.st_size)))
    finally:
        os.close(fd)
    if len(_HEADS) >= _HEADS_MAX:
        _HEADS.clear()
    _HEADS[key] = kind
    return kind, st


def plan(resolve: Resolve, filename: str, argv: list[Arg], loader: str | None = None) -> ExecPlan:
    """Plan the exec of guest `filename` with `argv` (pointers into the tracee); `loader`:
    carryon's loader (runtime.execve.loader.path()), None for the guest loader's `--argv0` way."""
    path = filename
    depth = 0
    while True:
        guest, host = resolve(path)
        kind, st = _head_kind(host)
        if kind[0] == "unread":
            return ExecPlan(host, argv, guest, host, st)
        if kind[0] == "script":
            depth += 1
            if depth > shebang.MAX_NESTING:
                raise OSError(errno.ELOOP, "too many levels of #! interpreters")
            _, interp, arg = kind
            new: list[Arg] = [interp]
            if arg is not None:
                new.append(arg)
            new.append(os.fsencode(path))
            argv = new + argv[1:]
            path = os.fsdecode(interp)
            continue
        interp_path = kind[1]
        if interp_path is None:
            return ExecPlan(host, argv, guest, host, st)
        try:
            _lguest, lhost = resolve(interp_path)
            lst = os.stat(lhost)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                raise OSError(errno.ENOENT, "ELF interpreter not found") from None
            raise
        if not stat.S_ISREG(lst.st_mode):
            raise OSError(errno.EACCES, "ELF interpreter is not a regular file")
        if loader is not None:
            return ExecPlan(loader, argv, guest, host, st, True, lhost)
        argv0: Arg = argv[0] if argv else os.fsencode(path)
        loader_argv: list[Arg] = [os.fsencode(interp_path)]
        if elf.loader_has_argv0(lhost, lst):
            loader_argv += [b"--argv0", argv0]
        loader_argv.append(os.fsencode(guest))
        return ExecPlan(lhost, loader_argv + argv[1:], guest, host, st)
