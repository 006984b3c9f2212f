"""carryon-nsrun (runtime/launch/nsrun.c): the userns engine's runs without a tracer, executed in C.

Python keeps every decision (runtime.userns: eligibility, the state directory, the maps, the binds in
order, the command line, the environment); `exec_plan` writes them as a *plan* (NUL-separated
tokens: a magic line, records `TAG ARGS...`, `end`) and execs carryon-nsrun in this process's place,
which runs it as runtime.userns's Python code would (its docstring is the contract) and removes what
the run's entry point would have removed at its end (`remove_after`: the archive's run directory).
Where the kernel refuses the set-up before the guest ran, nsrun execs this process's own command
line again with `_CARRYON_USERNS_REFUSED=WHY` (`enter` takes it out of the environment; userns.run
then raises `Refused` once, and `auto` takes the next rung). Only the commands' entry points
(`carryon exec`, the archive's runtime) call `enter`: a process that never did (tests, `carryon
sweep`) keeps the Python path, and so do runs with a tracer part (ports, `-k`) and
`CARRYON_NSRUN=0`.

Warm start of archives: after the Python runtime ran a *plain* archive run on userns (no
`--carryon-*` argument; no CARRYON_* variable but CARRYON_CACHE and CARRYON_ENGINE=auto|userns:
the plan records which of the two chose userns),
`save_template` stores its plan beside the runtime dir as `nsplan-KEY-HOST-UID` (KEY: the archive's
cache key, the trailer's hash), minus what differs per run: the run directory with its /etc copies
and overlay state (`rundir`, `bind ... c`), the user's ARGS (`entrypoint`/`cmd`: Entrypoint +
(ARGS or Cmd)), the host's TERM and the node name (`envhost`, `envnode`); plus what it holds for:
the archive's size and manifest hash, the kernel's release and version, the user, the image's cache
entry. It is written by atomic rename, mode 0600; nsrun uses it only when it is a regular file of
ours nobody else can write, and for anything else execs the Python runtime as the sh launcher would
(runtime/launcher.sh `start()`).
"""

from __future__ import annotations

import os
import sys

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "nsrun.c")
BINARY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "carryon-nsrun")
MAGIC = "carryon-nsplan-1"
REFUSED_ENV = "_CARRYON_USERNS_REFUSED"

_entered: list[str | None] = []     # [the refusal nsrun reported, or None] once `enter` ran
remove_after: list[str] = []        # removed by nsrun at the end of the run (the run directory)
archive: dict = {}                  # a plain archive run: what save_template needs (runtime.launch.start)
_path: list[str | None] = []
_prefix: list[str] = ["carryon exec"]


def enter(prefix: str = "carryon exec") -> None:
    """The command's entry point (`prefix`: how its error lines start): runs may exec nsrun; a
    refusal nsrun reported is taken."""
    _entered[:] = [os.environ.pop(REFUSED_ENV, None)]
    _prefix[0] = prefix


def take_refusal() -> str | None:
    """Why nsrun found user namespaces refused before this process was started again (once)."""
    if _entered and _entered[0]:
        why = _entered[0]
        _entered[0] = None
        return why
    return None


def can_exec() -> bool:
    """Runs of this process may be executed by nsrun (what runtime.userns's owner view needs)."""
    return bool(_entered) and path() is not None


def path() -> str | None:
    """The nsrun binary to exec, or None (CARRYON_NSRUN=0, no binary, a stale one, no compiler)."""
    if not _path:
        _path.append(_find())
    return _path[0]


def _find() -> str | None:
    from runtime.compiled import find
    return find(BINARY, SOURCE, "CARRYON_NSRUN", "carryon-nsrun-{}", build)


def build(dest: str = BINARY, cc: list[str] | None = None) -> str:
    """Compile nsrun.c statically into `dest` (atomically); OSError with the compiler's message.
    With musl's `musl-gcc` where there is one (and no $CC): ~95 kB and ~0.7 ms less per start than
    against glibc (~840 kB)."""
    import shutil

    from runtime.tracee.native import compile_c
    flags = ["-O2", "-static", "-Wall", "-Wextra", "-Werror", "-s"]
    musl = None if os.environ.get("CC") else shutil.which("musl-gcc")
    if musl:
        try:
            return compile_c(dest, flags, [SOURCE], "carryon-nsrun", [musl])
        except OSError:
            pass
    return compile_c(dest, flags, [SOURCE], "carryon-nsrun", cc)


# ---- the plan ------------------------------------------------------------------------------------
def _encode(records: list[tuple[str, ...]]) -> bytes:
    out = [MAGIC.encode()]
    for r in records:
        out += [os.fsencode(t) for t in r]
    out.append(b"end")
    return b"".join(t + b"\0" for t in out)


def _maps(spec) -> list[tuple[str, ...]]:
    """runtime.userns._write_maps's maps, and the real ids a root caller takes."""
    recs: list[tuple[str, ...]]
    if os.geteuid() == 0:
        recs = [("uidmap", "0 0 4294967295\n"), ("gidmap", "0 0 4294967295\n"), ("setgroups", "0")]
    else:
        uid = spec.uid if spec.uid is not None else os.geteuid()
        gid = spec.gid if spec.gid is not None else os.getegid()
        recs = [("uidmap", f"{uid} {os.geteuid()} 1\n"), ("gidmap", f"{gid} {os.getegid()} 1\n"),
                ("setgroups", "1")]
    if spec.uid or spec.gid:
        recs.append(("ids", str(spec.uid or 0), str(spec.gid or 0)))
    return recs


def _common(spec, overlay: bool) -> list[tuple[str, ...]]:
    return [("rootfs", os.path.realpath(spec.rootfs)), *_maps(spec),
            ("cwd", spec.cwd or "/", "1" if overlay and not spec.cwd_optional else "0",
             "1" if not spec.cwd_optional or spec.verbose >= 1 else "0"),
            ("signal", str(int(spec.stop_signal)), "1" if spec.forward_all_signals else "0"),
            ("waitall", "1" if spec.wait_all else "0")]


def _split(data: bytes) -> list[bytes]:
    return [t for t in data.split(b"\0") if t] if data else []


def exec_plan(spec, overlay: tuple[str, str, str] | None, binds: list, check: bool,
              owners: list[tuple[str, int, int]] | None = None) -> None:
    """Exec nsrun with the plan of `spec` (runtime.userns.run's, no tracer part); returns only
    when nsrun is not to be used here (then the Python code path runs the guest). `owners`: the
    root guest's owner view (runtime.userns.owner_view: `owner PATH UID GID` records)."""
    exe = path() if _entered else None
    if exe is None:
        return
    try:
        with open("/proc/self/cmdline", "rb") as f:
            fargv = _split(f.read())
        with open("/proc/self/environ", "rb") as f:
            fenv = _split(f.read())
    except OSError:
        return
    fexe = os.readlink("/proc/self/exe") if getattr(sys, "frozen", False) else sys.executable
    if not fargv or not fexe:
        return
    recs = [("prefix", _prefix[0]), *_common(spec, overlay is not None)]
    if overlay is not None:
        lower, upper, rest = overlay
        work, root = rest.split("\0")
        recs += [("overlay", lower, upper, work, root), ("unmake", os.path.realpath(spec.overlay)),
                 ("tidy", work)]
    recs += [("bind", b.host, b.guest, "r" if b.readonly else "-") for b in binds]
    recs += _owners(owners)
    recs += [("env", f"{k}={v}") for k, v in spec.env.items()]
    recs += [("arg", a) for a in spec.argv]
    recs += [("remove", p) for p in remove_after]
    recs.append(("fexe", fexe))
    recs += [("fargv", os.fsdecode(a)) for a in fargv]
    recs += [("fenv", os.fsdecode(e)) for e in fenv if not e.startswith(REFUSED_ENV.encode() + b"=")]
    if archive and spec.verbose == 0 and (check or spec.engine == "userns"):
        try:                            # (`auto` runs on userns without `check` only with a warning)
            save_template(spec, "auto userns" if check else "userns", owners)
        except OSError:
            pass
    data = _encode(recs)
    try:
        fd = os.memfd_create("carryon-plan", 0)
    except (AttributeError, OSError):
        import tempfile
        fd = os.dup(tempfile.TemporaryFile().fileno())
    try:
        os.write(fd, data)
        os.set_inheritable(fd, True)
    except OSError:
        os.close(fd)
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(exe, [exe, "--plan", str(fd)])
    except OSError:
        os.close(fd)


# ---- the warm start's template ---------------------------------------------------------------------
def plain(argv: list[str], environ) -> bool:
    """A run the warm start may serve (nsrun.c's `warm` checks the same)."""
    if argv and argv[0].startswith("--carryon-"):
        return False
    for k, v in environ.items():
        if k.startswith("CARRYON_") and k != "CARRYON_CACHE" and not (
                k == "CARRYON_ENGINE" and v in ("", "auto", "userns")):
            return False
    return True


def template_path(rt_dir: str, key: str) -> str:
    from runtime.cache import hostname
    return os.path.join(os.path.dirname(rt_dir), f"nsplan-{key}-{hostname()}-{os.getuid()}")


def _owners(owners: list[tuple[str, int, int]] | None) -> list[tuple[str, ...]]:
    return [("owner", p, str(u), str(g)) for p, u, g in owners or ()]


def template(spec, engines: str, owners: list[tuple[str, int, int]] | None = None) -> bytes:
    """The warm start's plan of the plain archive run `spec` (see the module docstring)."""
    from runtime.launch.runspec import DEFAULT_PATH, HOST_FILES
    arch, entry, config = archive["arch"], archive["entry"], archive["config"]
    u = os.uname()
    from runtime.cache import hostname
    off, length, sha = arch.sections["manifest"]
    recs: list[tuple[str, ...]] = [
        ("key", arch.key), ("size", str(arch.size)), ("manifest", str(off), str(length), sha),
        ("user", str(os.getuid()), str(os.geteuid())), ("kernel", u.release, u.version),
        ("host", hostname()), ("entry", entry), ("engines", engines), ("prefix", "carryon"),
        *_common(spec, True),
        ("rundir", os.path.dirname(entry), arch.key)]
    # runspec.default_binds, parents before children (runtime.userns._ordered_binds)
    binds = [("bind", p, p, "o") for p in ("/dev", "/proc", "/sys")]
    binds += [("bind", p, p, "c") for p in HOST_FILES]
    recs += sorted(binds, key=lambda b: len([x for x in b[2].split("/") if x]))
    recs += _owners(owners)
    # runspec.build_env without options: PATH, HOSTNAME, the host's TERM, the image's Env, HOME
    recs += [("env", f"PATH={DEFAULT_PATH}"), ("envnode", "HOSTNAME"), ("envhost", "TERM")]
    keys = set()
    for item in config.get("Env") or []:
        k, _, v = item.partition("=")
        if k:
            recs.append(("env", f"{k}={v}"))
            keys.add(k)
    if "HOME" not in keys:
        recs.append(("env", f"HOME={spec.env.get('HOME', '/')}"))
    recs += [("entrypoint", a) for a in config.get("Entrypoint") or []]
    recs += [("cmd", a) for a in config.get("Cmd") or []]
    return _encode(recs)


def save_template(spec, engines: str, owners: list[tuple[str, int, int]] | None = None) -> None:
    """Store the warm start's plan for CARRYON_ENGINE values `engines` (an owner difference:
    only when asked for by name) (unchanged ones are not rewritten); OSError when it cannot."""
    dest = template_path(archive["rt"], archive["arch"].key)
    data = template(spec, engines, owners)
    try:
        fd = os.open(dest, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            same = (st.st_uid == os.getuid() and not st.st_mode & 0o022 and os.read(fd, len(data) + 1) == data)
        finally:
            os.close(fd)
        if same:
            return
    except OSError:
        pass
    tmp = f"{dest}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with open(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, dest)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


if __name__ == "__main__":          # python -m runtime.launch.nsrun [DEST]: build the binary
    try:
        print(build(sys.argv[1] if sys.argv[1:] else BINARY))
    except OSError as e:
        sys.exit(f"carryon: {e}")
