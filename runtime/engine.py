"""`run(spec) -> exit status`: run a command in a rootfs under the ptrace userspace chroot.

Start-up: fork; the child waits on a pipe while the tracer attaches it: PTRACE_SEIZE with its
options (seccomp engine, Linux 3.8+; no stop needed, and no exec events: see runtime.tracee.loop),
else the classic way (the child stops itself with PTRACE_TRACEME + SIGSTOP so the tracer can set
its options). The child then installs the seccomp filter (seccomp engine, with
SECCOMP_FILTER_FLAG_SPEC_ALLOW where known) and execs the command by its GUEST path: that first
execve is translated like every later one.

Engines: each is an `Engine` record (`eligible() -> None | reason`, `run(spec) -> exit status`,
`describe() -> str`) in `LADDER`, best first: `seccomp` (ptrace stops only on the translated calls),
then `ptrace` (plain PTRACE_SYSCALL stepping). `select(spec.engine)` is the one place the choice is
made: a named engine, or for "auto" the eligible ones in ladder order, the next one tried only when
the kernel refused the previous one before the guest ran (`Refused`: PTRACE_O_TRACESECCOMP or the
filter refused). `spec.engine` is all the engine reads: `CARRYON_ENGINE` belongs to the command
lines (runtime.cli_exec, runtime.launch), which put it into the RunSpec.

Exit status: the main process's (128+N when killed by signal N). SIGINT/SIGHUP/SIGQUIT sent to the
tracer are forwarded to the main guest process, SIGTERM as `spec.stop_signal` (keyboard signals
are not forwarded when the tracer is in the terminal's foreground process group: the kernel has
already sent them to the guest, which shares that group). If the tracer dies, PTRACE_O_EXITKILL
and the child's PR_SET_PDEATHSIG kill the guest tree.

CPU placement (`runtime.tracee.placement`, `CARRYON_PIN=auto|1|0`): by default the tracer and the
guest share one CPU (much cheaper stops) until the guest shows it may want more (a thread,
sched_getaffinity, CPU contention...), then everything is unpinned for the rest of the run.

Limits (containment, not a security boundary): the tree can change between the tracer's checks and
the real call; file descriptors inherited from the caller lead where they lead. Not translated:
AF_UNIX paths in `sendmsg` and in the results of recvfrom/recvmsg (getsockname, getpeername and
accept give the guest's path); the contents of /proc/PID/maps, mountinfo and the like. 32-bit
(i386/x32) calls fail with ENOSYS, so 32-bit programs do not run. Job control works for guests as
natively (a stopped guest shows as `t (tracing stop)` in /proc, not `T`: see runtime.tracee.loop),
except where the kernel has no PTRACE_SEIZE (before 3.4): there a stopped guest runs on. Rewritten
paths are written below the tracee's stack pointer; a process with nothing writable there gets a
private scratch mapping (injected mmap), but a signal handler running on a small `sigaltstack` could
see the memory below that stack overwritten (as under PRoot).
"""

from __future__ import annotations

import _signal as signal  # the C module: `signal` itself imports `enum` (slow start-up)
import errno
import os
import stat
import sys

from runtime.errors import CarryonError, CommandNotExecutable, CommandNotFound
from runtime.spec import RunSpec

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_SECCOMP_REFUSED = 200   # child exit code: the seccomp filter could not be installed


class Refused(CarryonError):
    """The kernel refused this engine before the guest ran anything: "auto" tries the next one."""


class Engine:
    """One way to run a RunSpec. A plain record (`__slots__`, no dataclasses: this module is on
    every run's start-up path)."""

    __slots__ = ("name", "eligible", "run", "describe", "eligible_for")

    def __init__(self, name: str, eligible, run, describe, eligible_for=None) -> None:
        self.name = name
        # () -> None when it can run here, else why not; cheap (no fork: it runs before every run)
        self.eligible = eligible
        # (spec) -> the exit status (128+N for signal N); raises Refused when the kernel refuses it
        self.run = run
        # () -> "NAME: usable" or "NAME: not usable (why)", for --carryon-info (may fork: ms)
        self.describe = describe
        # (spec) -> None when it can run this spec here, else why not (cheap); None: `eligible`
        self.eligible_for = eligible_for

    def __repr__(self) -> str:
        return f"Engine({self.name!r})"


def _release() -> tuple[int, int]:
    try:
        major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    except ValueError:
        return (99, 0)
    return (major, minor)


def _kernel_before_4_8() -> bool:
    return _release() < (4, 8)


def _seccomp_eligible() -> str | None:
    if _release() < (3, 5):
        return f"seccomp filters need Linux 3.5 or later (this is {os.uname().release})"
    return None


def _ptrace_eligible() -> str | None:
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope", "rb") as f:
            if f.read().strip() == b"3":
                return "ptrace is disabled on this node (kernel.yama.ptrace_scope = 3)"
    except OSError:
        pass
    return None


def _describe(name: str, eligible) -> str:
    why = eligible() or _probed_refusal(name)
    return f"{name}: not usable ({why})" if why else f"{name}: usable"


SECCOMP = Engine("seccomp", _seccomp_eligible, lambda spec: _traced(spec, True),
                 lambda: _describe("seccomp", _seccomp_eligible))
PTRACE = Engine("ptrace", _ptrace_eligible, lambda spec: _traced(spec, False),
                lambda: _describe("ptrace", _ptrace_eligible))


def _userns(attr: str):
    def call(*args):
        from runtime import userns  # (ctypes: loaded when the rung is looked at)
        return getattr(userns, attr)(*args)
    return call


# the user + mount namespace engine, no tracer (runtime.userns)
USERNS = Engine("userns", _userns("eligible"), _userns("run"), _userns("describe"),
                _userns("eligible_for"))
LADDER: tuple[Engine, ...] = (USERNS, SECCOMP, PTRACE)      # best first: what "auto" tries, in order
NAMES = ("auto",) + tuple(e.name for e in LADDER)   # what RunSpec.engine may say


def _why_not(e: Engine, spec: RunSpec | None) -> str | None:
    if spec is not None and e.eligible_for is not None:
        why = e.eligible_for(spec)
        if why and spec.verbose >= 1:
            sys.stderr.write(f"carryon: {e.name} engine: not for this run ({why})\n")
        return why
    return e.eligible()


def select(name: str, spec: RunSpec | None = None):
    """The engines to try for RunSpec.engine `name`, in order: the named one (CarryonError when it
    is unknown or not eligible here, or for `spec`), or for "auto" the eligible ones of the ladder
    (an iterator: a later one is looked at only when the earlier ones were refused)."""
    if name == "auto":
        return (e for e in LADDER if _why_not(e, spec) is None)
    for e in LADDER:
        if e.name == name:
            why = _why_not(e, spec)
            if why:
                raise CarryonError(f"the {name} engine cannot run here: {why}")
            return iter((e,))
    raise CarryonError(f"unknown engine {name!r} (one of: {', '.join(NAMES)})")


def describe(choice: str = "auto") -> str:
    """For --carryon-info: the engine `choice` gets on this node, then each engine's state, e.g.
    "seccomp (auto; seccomp: usable; ptrace: usable)". Forks a probe child: a few milliseconds."""
    states = [e.describe() for e in LADDER]
    try:
        wanted = [e.name for e in select(choice)]
    except CarryonError as e:
        return f"none ({e})"
    usable = [n for n in wanted if f"{n}: usable" in states]
    return f"{usable[0] if usable else 'none usable'} ({choice}; {'; '.join(states)})"


def find_command(mapper, argv0: str, path_env: str | None, cwd: str) -> str:
    """Guest path of the command, looked up in the GUEST's PATH when it has no '/'.
    CommandNotFound (127) / CommandNotExecutable (126) like `docker run`."""
    if not argv0:
        raise CommandNotFound("empty command")

    def check(guest: str) -> int:   # 0 ok, 1 missing, 2 not executable
        try:
            host = mapper.to_host(guest, cwd, True)
            st = os.stat(host)
        except OSError as e:
            return 2 if e.errno == errno.EACCES else 1
        if not stat.S_ISREG(st.st_mode) or not os.access(host, os.X_OK):
            return 2
        return 0

    if "/" in argv0:
        r = check(argv0)
        if r == 1:
            raise CommandNotFound(f"{argv0}: no such file or directory in the guest")
        if r == 2:
            raise CommandNotExecutable(f"{argv0}: permission denied (not an executable file)")
        return argv0
    for d in (path_env if path_env is not None else DEFAULT_PATH).split(":"):
        cand = (d.rstrip("/") or "") + "/" + argv0 if d else argv0
        r = check(cand)
        if r == 0:
            return cand if cand.startswith("/") else "./" + cand
    raise CommandNotFound(f"{argv0}: executable file not found in the guest's $PATH")


def run(spec: RunSpec) -> int:
    """Run `spec.argv` in `spec.rootfs` with the engine `spec.engine` selects; returns the exit
    status (128+N for signal N). "auto" tries the rungs in the order of runtime.choice.Plan."""
    name = spec.engine or "auto"
    plan = None
    if name == "auto":
        from runtime.choice import Plan
        plan = Plan(spec, LADDER, spec.verdict_dir)
        engines = iter(plan)
    else:
        if name == "userns":            # asked for by name: an owner difference is no refusal
            from runtime import userns
            why = userns.eligible_for(spec)
            if why and userns.last_resort(spec):
                if spec.verbose >= 1:
                    sys.stderr.write(f"carryon: userns engine (asked for) although {why}\n")
                return userns.run(spec, check=False)
        engines = select(name, spec)
        if spec.confine:
            from runtime.choice import CONFINING
            if name not in CONFINING:
                raise CarryonError(f"confinement asked for, but the {name} engine does not confine a "
                                   f"hostile guest (only {', '.join(CONFINING)} does)")
    try:
        for engine in engines:
            try:
                return engine.run(spec)
            except Refused as e:
                if plan is None:
                    raise
                plan.refused(engine, e)
        if plan is not None and plan.usable("userns"):
            # every other rung refused: userns although it is not for this run, saying how it differs
            from runtime import userns
            why = userns.last_resort(spec)
            if why:
                sys.stderr.write(f"carryon: warning: {plan.summary()}; using the userns engine although {why}\n")
                try:
                    return userns.run(spec, check=False)
                except Refused as e:
                    plan.refused(USERNS, e)
    finally:
        _prepared.clear()
    assert plan is not None
    raise plan.failure()


# the ptrace engines' preparation of the spec being run: [spec, (mapper, ...)] (see _prepare)
_prepared: list = []


def _prepare(spec: RunSpec) -> tuple:
    """(mapper, guest command, guest cwd, host cwd, environment, loop_ref) of the ptrace engines: made once
    per run, so that a fallback from seccomp to ptrace reuses it (caches forgotten) and says its
    warnings once."""
    if _prepared and _prepared[0] is spec:
        prepared = _prepared[1]
        prepared[0].forget()
        return prepared
    # imported here so that `carryon exec --help` and errors before this point stay cheap
    from runtime.path.binding import Mapper
    from runtime.path.proc import ProcState

    loop_ref: list = []

    def lookup(pid: int):
        if not loop_ref:
            return None
        t = loop_ref[0].tracees.get(pid)
        if t is None or t.mapper is None:
            return None
        from runtime.syscall.enter import guest_cwd
        tgid = pid
        try:
            with open(f"/proc/{pid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"Tgid:"):
                        tgid = int(line.split()[1])
                        break
        except (OSError, ValueError):
            pass
        return ProcState(exe_guest=t.exe, cwd_guest=guest_cwd(t), tgid=tgid)

    if not os.path.isdir(spec.rootfs):
        raise CarryonError(f"rootfs not found or not a directory: {spec.rootfs}")
    mapper = Mapper(spec.rootfs, spec.binds, cache_dirs=True, proc_lookup=lookup)
    if spec.trace is not None:          # CARE mode (runtime.trace): note what the mapper resolves
        spec.trace.attach(mapper)
    if spec.overlay:
        try:
            mapper.attach_overlay(spec.overlay, spec.overlay_ident or mapper.rootfs)
        except OSError as e:
            raise CarryonError(f"cannot use the state directory {spec.overlay}: {e.strerror or e}") from None
    mapper.ensure_mount_points()
    cwd = spec.cwd or "/"
    try:
        host_cwd = mapper.to_host(cwd, "/", True)
        ok = os.path.isdir(host_cwd)
        if not ok and mapper.cow is not None and not spec.cwd_optional:
            ok = mapper.make_dirs(mapper.canon(cwd, "/", True))     # like Docker: a missing one is made
            host_cwd = mapper.to_host(cwd, "/", True)
    except OSError:
        ok = False
    if not ok:
        if not spec.cwd_optional or spec.verbose >= 1:
            sys.stderr.write(f"carryon: warning: can't chdir to {cwd!r} in the guest, using '/'\n")
        cwd = "/"
        host_cwd = mapper.to_host("/", "/", True)
    if mapper.ambiguous:                # the name the run starts in (see Mapper.guest_cwd)
        mapper.note_cwd(0, mapper.canon(cwd, "/", True), host_cwd)
    env = dict(spec.env)
    prog = find_command(mapper, spec.argv[0] if spec.argv else "", env.get("PATH"), cwd)
    prepared = (mapper, prog, cwd, host_cwd, env, loop_ref)
    _prepared[:] = [spec, prepared]
    return prepared


def _traced(spec: RunSpec, use_seccomp: bool) -> int:
    """The seccomp engine (`use_seccomp`) or the plain ptrace engine."""
    mapper, prog, cwd, host_cwd, env, loop_ref = _prepare(spec)
    if spec.verbose >= 1:
        sys.stderr.write(f"carryon: engine {'seccomp' if use_seccomp else 'ptrace'}, rootfs "
                         f"{mapper.rootfs}, command {prog} (cwd {cwd}, {len(mapper.binds)} binds)\n")
    try:
        rc = _run_once(spec, mapper, prog, host_cwd, env, use_seccomp, loop_ref)
    except Refused:
        raise                           # the next engine runs with the same mapper (and cwd)
    except BaseException:
        mapper.release()
        raise
    mapper.release()                    # the glue and socket links of the run (binding.Mapper)
    return rc


def _build_dispatch(mapper, lookup, exts, chroot_allowed: bool, placement=None,
                    native_out: list | None = None, lacking: frozenset[int] = frozenset()) -> list:
    """The handlers by syscall number. `native_out` (a list) gets a `native_setup` function for
    the loop: it gives the native stop loop the calls it may answer (runtime.tracee.native).
    `lacking`: calls the node's kernel lacks that the tracer emulates (runtime.syscall.newer)."""
    from runtime.syscall import table
    from runtime.syscall.enter import Translator
    from runtime.syscall.sysnums import MAX_KNOWN, NUMBERS
    from runtime.tracee.actions import EXIT, SKIP

    tr = Translator(mapper, lookup, chroot_allowed)
    tr.plain = native_out is None       # the plain ptrace engine (see runtime.execve.loader)
    for ext in exts:                    # the ids an exec gives (fake_id: set-user-ID programs)
        tr.exec_ids = getattr(ext, "exec_ids", None) or tr.exec_ids
    if placement is not None and placement.mode == "auto" and placement.cpu is not None:
        tr.on_proc_status = placement.release       # the guest could read Cpus_allowed there
        for name, setting in (("sched_getaffinity", False), ("sched_setaffinity", True)):
            def affinity(t, regs, _s=setting):
                placement.guest_affinity_call(_s)
                return 0
            tr.extra[NUMBERS[name]] = affinity
    dispatch = tr.dispatch(MAX_KNOWN + 1)
    for nr, err in table.REFUSED.items():
        def refuse(t, regs, _e=err):
            raise OSError(_e, os.strerror(_e))
        dispatch[nr] = refuse
    wanted: dict[int, list] = {}
    for ext in exts:
        for nr in ext.enter_calls:
            wanted.setdefault(nr, []).append(ext)
    for nr, hooks in wanted.items():
        core = dispatch[nr]

        def chained(t, regs, _core=core, _hooks=tuple(hooks)):
            t.exits = None
            t.peek = None
            act = _core(t, regs) if _core is not None else 0
            if act & SKIP:
                return act
            for ext in _hooks:
                a = ext.enter(t, regs)
                if a & EXIT:
                    if t.exits is None:
                        t.exits = []
                    t.exits.append(ext.exit)
                act |= a
                if a & SKIP:
                    break
            return act
        dispatch[nr] = chained
    if lacking:
        from runtime.syscall import newer
        newer.install(dispatch, lacking)
    if native_out is not None:
        def native_setup(nat):
            for nr, (reg, dreg, rule, freg, parent_op, write) in tr.simple.items():
                wmask = 0
                if write and mapper.cow is not None:
                    if write != table.W_OPEN or freg < 0:
                        continue        # copy-on-write: Python's
                    wmask = table.O_WRITE_MASK      # opens for reading stay native
                if nr in wanted or nr in tr.extra or nr in table.REFUSED or nr in lacking or (
                        write and mapper._any_ro):
                    continue            # chained, replaced, refused, or EROFS to check
                nat.spec(nr, reg, dreg, rule, freg, not parent_op, wmask)
            nat.names(mapper.leaf_names)

            def names(leaf_names) -> None:
                try:
                    nat.names(leaf_names)
                except OSError:         # too many: the native loop leaves every plain name to Python
                    pass
            mapper.native_names = names
            mapper.native_relative = nat.relative_to_python
            if mapper.stale_cwds:
                nat.relative_to_python()
            tr.native_put = nat.put
            tr.native_load = nat.load
            mapper.native_clear = nat.clear
            if mapper.root_host == mapper.rootfs_host:     # no bind of "/"
                mapper.native_dir = nat.put_dir
                nat.put_dir("", mapper.rootfs_host)
            from runtime.tracee import native as N
            for name, kind in (("bind", N.PM_UNIX), ("connect", N.PM_UNIX), ("sendto", N.PM_UNIX_SENDTO)):
                if NUMBERS[name] not in wanted:     # no port translation: only AF_UNIX matters
                    nat.port_call(NUMBERS[name], kind)
            # calls that give an AF_UNIX name back: nothing to do (the native loop lets them
            # run) until the first AF_UNIX name is translated, then Python's (Translator._sockname)
            names_back = [NUMBERS[n] for n in ("getsockname", "getpeername", "accept", "accept4")]
            if not tr.unix_named:
                for nr, kind in zip(names_back, (N.PM_GETSOCKNAME, N.PM_GETPEERNAME, N.PM_ACCEPT,
                                                   N.PM_ACCEPT)):
                    if nr not in wanted:
                        nat.port_call(nr, kind)

            def unix_named() -> None:
                for nr in names_back:
                    nat.port_call(nr, 0)
            tr.on_unix_named = unix_named
            for ext in exts:
                attach = getattr(ext, "attach_native", None)
                if attach is not None:      # the calls only this extension hooks
                    attach(nat, [nr for nr, hooks in wanted.items() if hooks == [ext]
                                 and nr not in tr.extra and nr not in table.REFUSED])
            return mapper

        native_out.append(native_setup)
    return dispatch


def filter_program(exts: list, affinity: bool = False,
                   lacking: frozenset[int] = frozenset()) -> list[tuple[int, int, int, int]]:
    """The seccomp filter: the path calls of the table plus the calls the extensions hook (plus
    sched_getaffinity/sched_setaffinity with `affinity`: automatic CPU placement watches them, and
    the `lacking` calls the tracer emulates: runtime.syscall.newer)."""
    from runtime.syscall import seccomp, table
    from runtime.syscall.sysnums import NUMBERS
    traced = set(table.TRACED) | lacking | {NUMBERS["ptrace"]}    # the guests' own: emulated (_trace)
    from runtime.execve import loader
    if loader.path() is not None:
        traced.add(loader.NR)           # the call of carryon's loader after an exec through it
    if affinity:
        traced |= {NUMBERS["sched_getaffinity"], NUMBERS["sched_setaffinity"]}
    if_arg = dict(table.TRACED_IF_ARG)
    for ext in exts:
        # `enter_calls_if_arg` (optional): nr -> argument index; stop only when it is non-zero
        cond = getattr(ext, "enter_calls_if_arg", {})
        for nr in ext.enter_calls:
            if nr in cond and if_arg.get(nr, cond[nr]) == cond[nr]:
                if_arg[nr] = cond[nr]
            else:
                traced.add(nr)
    # an extension hooking newfstatat (fake_id's stat owners) makes it stop always: `traced` wins
    return seccomp.build(traced, table.REFUSED, if_arg, table.FD_BYPASS)


def _run_once(spec: RunSpec, mapper, prog: str, host_cwd: str, env: dict[str, str],
              use_seccomp: bool, loop_ref: list) -> int:
    """One run of the guest under one engine, in phases: the tracer's tables (`_tracer_parts`),
    the fork (the child: `_child`), the attach (`_attach`), the trace (`_trace`), the outcome.
    Raises Refused when the kernel refused the seccomp engine before the guest ran."""
    # everything the tracer imports is loaded before the fork: after it, the tracer shares its
    # CPU with the guest (placement) and every import would delay the guest's start
    from runtime.tracee import ffi, loop, state  # noqa: F401

    exts, placement, dispatch, native_setup, program = _tracer_parts(spec, mapper, use_seccomp)
    argv = list(spec.argv)
    env_b = {os.fsencode(k): os.fsencode(v) for k, v in env.items()}

    mode_r, mode_w = os.pipe()
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    parent = os.getpid()
    sys.stdout.flush()
    sys.stderr.flush()
    placement.pin_self()                # the guest inherits it
    try:
        pid = os.fork()
    except BaseException:
        placement.stop()
        raise
    if pid == 0:
        _child(parent, mode_r, mode_w, err_r, err_w, host_cwd, program, prog, argv, env_b)
    # ---- tracer
    os.close(mode_r)
    os.close(err_w)
    own_name = _name_tracer()
    try:
        opts, seized = _attach(pid, mode_w, use_seccomp)
        os.write(mode_w, b"s" if use_seccomp else b"p")
        os.close(mode_w)
        status = _trace(spec, pid, mapper, exts, placement, dispatch, native_setup, use_seccomp,
                        (opts | ffi.PTRACE_O_TRACESECCOMP) if seized and use_seccomp else 0,
                        loop_ref, seized, exitkill=bool(opts & ffi.PTRACE_O_EXITKILL),
                        options=opts | (ffi.PTRACE_O_TRACESECCOMP if use_seccomp else 0))
        report = os.read(err_r, 256)
    finally:
        placement.stop()
        os.close(err_r)
        if own_name:
            try:
                ffi.set_name(own_name)
            except OSError:
                pass
    if report.startswith(b"seccomp"):
        raise Refused(f"engine failure: the kernel refused the seccomp filter ({report.decode()})")
    if report.startswith(b"exec "):
        e = int(report.split()[1] or 0)
        msg = f"{spec.argv[0]}: {os.strerror(e)}"
        if e == errno.ENOENT:
            raise CommandNotFound(msg)
        raise CommandNotExecutable(msg)
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


TRACER_NAME = b"carryon"


def _name_tracer() -> bytes:
    """Name the tracer `carryon` for the host's `ps`/`top` (its comm; the frozen runtime would
    show its loader's name, a checkout `python`), after the fork: the guest keeps its own. The
    former name (restored after the run), or b"" when it could not be changed."""
    from runtime.tracee import ffi
    try:
        former = ffi.get_name()
        ffi.set_name(TRACER_NAME)
    except OSError:
        return b""
    return former


def _tracer_parts(spec: RunSpec, mapper, use_seccomp: bool) -> tuple:
    """(extensions, CPU placement, dispatch table, native loop setup or None, seccomp program or
    None): what the tracer needs, made before the fork."""
    from runtime import extension
    from runtime.tracee import ffi
    from runtime.tracee.placement import Placement

    exts = extension.build(spec)
    if spec.verbose:
        from runtime.execve import loader
        if loader.path() is None:
            sys.stderr.write("carryon: note: no carryon-loader (CARRYON_LOADER=0, or no C compiler "
                             "to build it): dynamic programs run through their own loader's "
                             "--argv0\n")
    fake_root = spec.uid == 0
    placement = Placement()
    native_out: list = []
    lacking: frozenset[int] = frozenset()
    # calls newer than the kernel (runtime.syscall.newer): nothing probed on a current node
    # without a seccomp filter of its own (PR_GET_SECCOMP: a container's profile, the kernel-jail)
    filtered = ffi._prctl(21, 0, 0, 0, 0) == 2
    if filtered or _release() < (5, 8) or "CARRYON_TEST_LACKING" in os.environ \
            or "_CARRYON_OLD_KERNEL" in os.environ:
        from runtime.syscall import newer
        lacking = newer.lacking(filtered)
    # CARE mode (runtime.trace): no native loop (it answers path stops Python never sees)
    dispatch = _build_dispatch(mapper, mapper.proc_lookup, exts, fake_root or os.geteuid() == 0,
                               placement, native_out if use_seccomp and spec.trace is None else None,
                               lacking)
    if spec.trace is not None:
        spec.trace.wrap(dispatch)
    program = None
    if use_seccomp:
        program = ffi.seccomp_program(
            filter_program(exts, placement.mode == "auto" and placement.cpu is not None, lacking))
    return exts, placement, dispatch, native_out[0] if native_out else None, program


def _child(parent: int, mode_r: int, mode_w: int, err_r: int, err_w: int, host_cwd: str, program,
           prog: str, argv: list[str], env_b: dict[bytes, bytes]):
    """The forked child: wait for the tracer's mode on `mode_r` ("s": install the seccomp filter,
    "p": plain ptrace; "T" first: attach the classic way), then exec the guest command. Never
    returns; what went wrong goes to the tracer on `err_w` ("seccomp ERRNO", "exec ERRNO")."""
    from runtime.tracee import ffi
    code = 125
    try:
        os.close(mode_w)
        os.close(err_r)
        for s in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGHUP,
                  signal.SIGQUIT):
            signal.signal(s, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        os.chdir(host_cwd)
        ffi.prctl(ffi.PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            os._exit(125)
        mode = os.read(mode_r, 1)       # the tracer seizes us meanwhile (no stop), or asks
        if mode in (b"T", b"S"):        # for a stop (S: seized, plain engine; T: the classic
            if mode == b"T":            # attach, kernels before 3.8)
                ffi.traceme()
            os.kill(os.getpid(), signal.SIGSTOP)
            mode = os.read(mode_r, 1)
        os.close(mode_r)
        if mode == b"s":
            try:
                if os.environ.get("CARRYON_TEST_NO_SECCOMP"):   # tests: a kernel without it
                    raise OSError(errno.EINVAL, "seccomp filters refused (CARRYON_TEST_NO_SECCOMP)")
                ffi.install_seccomp(program)  # type: ignore[arg-type]
            except OSError as e:
                os.write(err_w, f"seccomp {e.errno}".encode())
                os._exit(_SECCOMP_REFUSED)
        elif mode != b"p":
            os._exit(125)
        code = 127
        os.execve(prog, argv, env_b)
    except OSError as e:
        try:
            os.write(err_w, f"exec {e.errno or 0}".encode())
        except OSError:
            pass
        code = 127 if e.errno == errno.ENOENT else 126
    except BaseException:
        pass
    os._exit(code)


def _attach(pid: int, mode_w: int, use_seccomp: bool) -> tuple[int, bool]:
    """Trace the child: (the ptrace options, whether it was seized). PTRACE_SEIZE, so that the
    guest's group-stops can be kept (job control, see runtime.tracee.loop): the seccomp engine
    without exec events (one stop less per execve) and no stop; the plain engine has the child
    stop itself (SIGSTOP) once its own set-up is done, so that everything after is stepped. The
    classic PTRACE_TRACEME + SIGSTOP attach where seizing is refused. Refused when the kernel
    refuses PTRACE_O_TRACESECCOMP (the child is killed)."""
    from runtime.tracee import ffi
    opts = (ffi.PTRACE_O_TRACESYSGOOD | ffi.PTRACE_O_TRACEFORK | ffi.PTRACE_O_TRACEVFORK
            | ffi.PTRACE_O_TRACECLONE | ffi.PTRACE_O_TRACEEXEC | ffi.PTRACE_O_EXITKILL)
    seized = False
    seize_err = 0
    if not os.environ.get("CARRYON_TEST_NO_SEIZE"):     # tests: old kernels
        try:
            if use_seccomp:
                ffi.seize(pid, (opts & ~ffi.PTRACE_O_TRACEEXEC) | ffi.PTRACE_O_TRACESECCOMP)
                return opts, True
            ffi.seize(pid, opts)
            seized = True
        except OSError as e:
            seize_err = e.errno or 0
    try:
        os.write(mode_w, b"S" if seized else b"T")
    except OSError:
        pass
    _, status = os.waitpid(pid, ffi.WALL)
    if not (os.WIFSTOPPED(status) and os.WSTOPSIG(status) == signal.SIGSTOP):
        os.close(mode_w)
        if seize_err == errno.EPERM:    # ptrace refused (Yama, a seccomp profile): the next rung
            from runtime.probe import ptrace_cause
            raise Refused(f"ptrace refused: {ptrace_cause(seize_err)}")
        raise CarryonError("engine failure: the guest did not start under ptrace")
    if seized:
        return opts, True
    if use_seccomp:
        try:
            ffi.setoptions(pid, opts | ffi.PTRACE_O_TRACESECCOMP)
        except OSError:
            _abort(pid, mode_w)
            raise Refused("engine failure: the kernel refused PTRACE_O_TRACESECCOMP") from None
    else:
        try:
            ffi.setoptions(pid, opts)
        except OSError:
            ffi.setoptions(pid, opts & ~ffi.PTRACE_O_EXITKILL)   # kernels before 3.8
            opts &= ~ffi.PTRACE_O_EXITKILL
    return opts, False


class _Watchdog:
    """Where the kernel has no PTRACE_O_EXITKILL (before 3.8), a SIGKILLed tracer would leave its
    guests running (the first one dies of its PR_SET_PDEATHSIG, its children are reparented and
    live on). A small process forked from the tracer keeps the list of live guest processes (the
    loop tells it every one that comes and goes, 9 bytes a time down a pipe) and, when the pipe
    closes without the tracer's "done" (the tracer died), kills them all. Only on such kernels."""

    def __init__(self, first: int) -> None:
        r, w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:                    # forked twice: the watchdog is no child of the tracer
            try:                        # (whose loop waits for its children), init adopts it
                os.close(w)
                if os.fork() == 0:
                    _watch(r)
            finally:
                os._exit(0)
        os.close(r)
        os.waitpid(pid, 0)
        self.fd = w
        self.add(first)

    def _send(self, op: bytes, pid: int) -> None:
        try:
            os.write(self.fd, op + pid.to_bytes(8, "little"))
        except OSError:
            pass

    def add(self, pid: int) -> None:
        self._send(b"+", pid)

    def remove(self, pid: int) -> None:
        self._send(b"-", pid)

    def done(self) -> None:
        """The run is over (the guests ended or were killed by the tracer): nothing to kill."""
        self._send(b"E", 0)
        os.close(self.fd)


def watchdog_read(fd: int) -> bytes:
    """A watchdog's start (terminal signals ignored: Ctrl-C is carryon's to forward) and its
    wait: all that comes down `fd` until carryon closes it (or dies)."""
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGTSTP):
        signal.signal(s, signal.SIG_IGN)
    got = b""
    while True:
        try:
            data = os.read(fd, 65536)
        except InterruptedError:
            continue
        except OSError:
            break
        if not data:
            break
        got += data
    return got


def _watch(fd: int) -> None:
    """The watchdog process: never returns."""
    live: set[int] = set()
    buf = watchdog_read(fd)
    done = False
    while len(buf) >= 9:
        op, pid, buf = buf[:1], int.from_bytes(buf[1:9], "little"), buf[9:]
        if op == b"+":
            live.add(pid)
        elif op == b"-":
            live.discard(pid)
        else:
            done = True
    if not done:
        for pid in live:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    os._exit(0)


def _trace(spec: RunSpec, pid: int, mapper, exts: list, placement, dispatch: list, native_setup,
           use_seccomp: bool, exec_options: int, loop_ref: list, seized: bool = False,
           exitkill: bool = True, options: int = 0) -> int:
    """Run the event loop over the attached guest until the end, signals forwarded; the main
    process's wait status. Everything of the run is undone after it (even on an error)."""
    from runtime.tracee import ffi
    from runtime.tracee.loop import Loop
    from runtime.tracee.state import Tracee
    loop = Loop(dispatch, exts, use_seccomp, spec.wait_all, legacy_order=_kernel_before_4_8(),
                placement=placement, exec_options=exec_options, native_setup=native_setup,
                seized=seized)
    loop_ref[:] = [loop]
    loop.options = options
    dispatch[_NR_PTRACE] = _ptrace_emulation(loop, dispatch)
    if not exitkill:
        loop.watchdog = _Watchdog(pid)
    main = Tracee(pid, mapper, "")
    main.started = True
    forward = _Forwarder(pid, spec.stop_signal, spec.forward_all_signals)
    forward.install()
    try:
        if not exec_options:    # seized by the seccomp engine, it runs already (execs once it
            # has its mode); else it is stopped (classic attach, or interrupted: plain engine)
            ffi.resume(ffi.PTRACE_CONT if use_seccomp else ffi.PTRACE_SYSCALL, pid, 0)
        return loop.run(main)
    finally:
        placement.stop()
        forward.restore()
        loop.kill_all()
        loop.stop_native()
        if loop.watchdog is not None:
            loop.watchdog.done()
        mapper.native_clear = mapper.native_dir = None
        if spec.verbose >= 2:
            import resource
            ru = resource.getrusage(resource.RUSAGE_SELF)
            sys.stderr.write(f"carryon: tracer cpu {ru.ru_utime * 1000:.1f} ms user, "
                             f"{ru.ru_stime * 1000:.1f} ms sys\n")
            if loop.native_stats is not None:
                sys.stderr.write("carryon: native stop loop: " + ", ".join(
                    f"{k} {v}" for k, v in loop.native_stats.items()) + "\n")
        for ext in exts:
            ext.close()


_NR_PTRACE = 101                        # x86_64


def _ptrace_emulation(loop, dispatch: list):
    """The guests' ptrace(2) handler: runtime.extension.ptrace_emu, loaded at its first call."""
    def first(t, regs) -> int:
        from runtime.extension.ptrace_emu import PtraceEmu
        handler = dispatch[_NR_PTRACE] = PtraceEmu(loop, dispatch).request
        return handler(t, regs)
    return first


def _abort(pid: int, fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0x40000000)     # __WALL
    except OSError:
        pass


# Never forwarded: ours (CHLD), job control (the tracer's own: its stop holds the guest at its next
# stop, a guest's own stop is kept by the loop), faults synchronous to the tracer.
_NOT_FORWARDED = (signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD, signal.SIGCONT, signal.SIGTSTP,
                  signal.SIGTTIN, signal.SIGTTOU, signal.SIGPIPE, signal.SIGXFSZ, signal.SIGSEGV,
                  signal.SIGBUS, signal.SIGFPE, signal.SIGILL, signal.SIGTRAP, signal.SIGSYS,
                  signal.SIGRTMAX)      # the native stop loop's tick (runtime.tracee.loop)
# Sent by the terminal to its whole foreground group, guest included: forwarding would double them.
_FROM_TERMINAL = (signal.SIGINT, signal.SIGQUIT, signal.SIGWINCH)


class _Forwarder:
    """Forwards signals sent to the tracer to the main guest process, SIGTERM as the stop signal:
    SIGINT/SIGTERM/SIGHUP/SIGQUIT, or every catchable signal with `forward_all`."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)

    def __init__(self, pid: int, stop_signal: int, forward_all: bool = False) -> None:
        self.pid = pid
        self.stop_signal = int(stop_signal)
        self.signals = ([s for s in range(1, signal.NSIG) if s not in _NOT_FORWARDED] if forward_all
                        else list(self.SIGNALS))
        self.old: dict[int, object] = {}
        self.tty_fg = False
        for fd in (0, 1, 2):
            try:
                if os.isatty(fd) and os.tcgetpgrp(fd) == os.getpgrp():
                    self.tty_fg = True
                    break
            except OSError:
                pass

    def _handler(self, signum, frame) -> None:
        if self.tty_fg and signum in _FROM_TERMINAL:
            return          # typed at the terminal: the guest got it from the kernel already
        target = self.stop_signal if signum == signal.SIGTERM else signum
        try:
            os.kill(self.pid, target)
        except OSError:
            pass

    def install(self) -> None:
        for s in self.signals:
            try:
                self.old[s] = signal.signal(s, self._handler)
            except (OSError, ValueError):
                pass

    def restore(self) -> None:
        for s, h in self.old.items():
            try:
                signal.signal(s, h)  # type: ignore[arg-type]
            except (OSError, ValueError):
                pass


_probe_result: list[str] = []


def _probed_refusal(name: str) -> str | None:
    """Why the kernel refuses engine `name` (a probe child asks it, once per process), or None."""
    if not _probe_result:
        _probe_result.append(_probe_kernel())
    kind = _probe_result[0]
    if kind in (name, "seccomp"):
        return None
    if kind == "ptrace":
        return "the kernel refuses seccomp filters under ptrace"
    return kind


def _probe_kernel() -> str:
    """What this kernel allows: "seccomp", "ptrace" (no seccomp filters under ptrace), or
    "ptrace refused: ..." / the error. Forks a child that asks to be traced and installs an
    allow-everything seccomp filter; costs a few milliseconds."""
    from runtime.syscall import seccomp
    from runtime.tracee import ffi
    pid = os.fork()
    if pid == 0:
        try:
            ffi.traceme()
            os.kill(os.getpid(), signal.SIGSTOP)
            ffi.install_seccomp([(seccomp.RET_K, 0, 0, seccomp.RET_ALLOW)])
            os._exit(0)
        except BaseException:
            os._exit(3)
    try:
        _, status = os.waitpid(pid, ffi.WALL)
        if not os.WIFSTOPPED(status):
            return "ptrace refused: PTRACE_TRACEME failed"
        kind = "seccomp"
        try:
            ffi.setoptions(pid, ffi.PTRACE_O_TRACESECCOMP | ffi.PTRACE_O_EXITKILL)
        except OSError:
            kind = "ptrace"
            ffi.setoptions(pid, 0)
        status = ffi.cont_to_end(pid)
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 3:
            kind = "ptrace"
        return kind
    except OSError as e:
        return str(e.strerror)
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, ffi.WALL)
        except OSError:
            pass
