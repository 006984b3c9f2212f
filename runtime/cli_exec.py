"""`carryon exec`: run a command in an extracted rootfs, with PRoot's command line.

    carryon exec [-r ROOTFS | -R ROOTFS] [-b HOST[:GUEST][:ro]]... [-w DIR] [-0 | -i UID:GID]
                 [-v N] [--kill-on-exit] [-k RELEASE] [--] [COMMAND [ARG]...]

PRoot's defaults: ROOTFS is `/` (the last of -r, -R and `-b HOST:/` is the root); the working
directory is the caller's when the guest has it (the same path, through the binds), else `/`
(silently); a relative -w, a bind's relative GUEST and a bind without GUEST are made absolute from
the caller's directory. The engine is `CARRYON_ENGINE` (auto, seccomp, ptrace; default auto), read
here and put into the RunSpec with `--confine`/`CARRYON_CONFINE=1` and where auto's verdict is cached
(runtime.choice): the engine itself never reads the environment. `-R` adds the default binds (/dev, /proc,
/sys, and the host's /etc/resolv.conf, /etc/hosts, /etc/hostname; each skipped when the host lacks
it). The environment is the caller's. Exit status: the command's; 125 for carryon's own errors,
126 command not executable, 127 command not found.
"""

from __future__ import annotations

import os
import sys

from runtime.errors import CarryonError
from runtime.spec import Bind, RunSpec, default_binds

USAGE_HEAD = """usage: carryon exec [-r ROOTFS | -R ROOTFS] [-b HOST[:GUEST][:ro]]... [-w DIR] [-0 | -i UID:GID]
                    [-p GUEST:HOST]... [-n] [--ports-file FILE] [--overlay DIR]
                    [-v N] [--kill-on-exit] [-k RELEASE] [--] [COMMAND [ARG]...]

Run COMMAND (default /bin/sh) with ROOTFS (default /) as its root directory, without privileges
(ptrace), in the current directory when ROOTFS has it (else /).

"""
USAGE_TAIL = """COMMAND without '/' is looked up in the guest's PATH. Engine: CARRYON_ENGINE=auto|userns|seccomp|ptrace
(`carryon doctor` says which auto picks here and why); CARRYON_CONFINE=1 as --confine;
CARRYON_NATIVE=0: no native stop loop (Python sees every stop); CARRYON_PIN=auto|on|off.
Exit status: the command's; 125 for carryon's own errors, 126 command not executable, 127 not found.
"""


def usage() -> str:
    from runtime.options import exec_help
    return USAGE_HEAD + exec_help() + USAGE_TAIL


def caller_cwd() -> str:
    """The caller's working directory (PRoot's default guest cwd and the base of relative paths), or
    '/' when it has none."""
    try:
        return os.getcwd()
    except OSError:
        return "/"


def guest_path(path: str, base: str) -> str:
    """`path` as an absolute, lexically clean guest path: relative ones are joined to `base`."""
    path = os.path.join(base, path)
    return "/" + os.path.normpath(path).lstrip("/")         # normpath keeps a leading '//'


def parse_bind(value: str) -> Bind:
    """HOST[:GUEST][:ro|:rw] -> Bind. HOST is made absolute; GUEST defaults to it and, relative, is
    joined to the caller's directory (PRoot's)."""
    readonly = False
    if value.endswith(":ro") or value.endswith(":rw"):
        readonly = value.endswith(":ro")
        value = value[:-3]
    host, sep, guest = value.rpartition(":")
    if not sep:
        host, guest = value, ""
    if not host:
        raise CarryonError(f"bad bind {value!r}: empty host path")
    host = os.path.abspath(os.path.expanduser(host))
    if not os.path.exists(host):
        raise CarryonError(f"bind source does not exist: {host}")
    return Bind(host=host, guest=guest_path(guest or host, caller_cwd()), readonly=readonly)


def parse_id(value: str) -> tuple[int, int]:
    uid, sep, gid = value.partition(":")
    try:
        u = int(uid)
        g = int(gid) if sep else u
    except ValueError:
        raise CarryonError(f"bad id {value!r}: expected UID:GID (numbers)") from None
    if u < 0 or g < 0 or u > 0xFFFFFFFE or g > 0xFFFFFFFE:
        raise CarryonError(f"bad id {value!r}: out of range")
    return u, g


def parse(argv: list[str]) -> RunSpec | str:
    """The RunSpec for this command line, or "help"/"version" (options: runtime/options.py)."""
    from runtime.options import parse_exec
    v, command = parse_exec(argv)
    if v["exec_help"]:
        return "help"
    if v["version"]:
        return "version"
    rootfs = "/"                                # PRoot's default
    defaults = False
    binds: list[Bind] = []
    nbind = 0
    for name in v.get("_order", []):            # -r / -R / -b X:/ : the last one is the root
        if name in ("rootfs", "rootfs_defaults"):
            rootfs = v[name]
            defaults = defaults or name == "rootfs_defaults"
        elif name == "exec_bind":
            b = parse_bind(v["exec_bind"][nbind])
            nbind += 1
            if b.guest == "/":
                rootfs = b.host
            else:
                binds.append(b)
    here = caller_cwd()
    cwd = os.path.join(here, v["cwd"]) if v["cwd"] else here    # PRoot's default: the caller's
    uid: int | None = None
    gid: int | None = None
    for name in v.get("_order", []):            # -0 / -i: the last one wins
        if name == "root_id":
            uid, gid = 0, 0
        elif name == "change_id":
            uid, gid = parse_id(v["change_id"])
    verbose = 0
    if v["exec_verbose"] is not None:
        try:
            verbose = int(v["exec_verbose"])
        except ValueError:
            raise CarryonError(f"bad verbosity {v['exec_verbose']!r}") from None
    wait_all = not v["kill_on_exit"]
    ports: list[str] = v["port"]
    netcoop = v["netcoop"]
    ports_file = os.path.abspath(v["ports_file"]) if v["ports_file"] else None
    port_map = []
    if ports:
        from runtime.net.publish import parse_exec_ports
        port_map = parse_exec_ports(ports)      # malformed -p: one line, 125, before anything runs
    command = command or ["/bin/sh"]
    if not os.path.isdir(rootfs):
        raise CarryonError(f"rootfs not found or not a directory: {rootfs}")
    rootfs = os.path.abspath(rootfs)
    all_binds = (default_binds() if defaults else []) + binds
    meta = rootfs + ".carryon-meta.json" if rootfs != "/" else ""
    overlay = None
    if v["overlay"]:
        overlay = os.path.abspath(v["overlay"])
        try:
            os.makedirs(overlay, mode=0o700, exist_ok=True)
        except OSError as e:
            raise CarryonError(f"--overlay {v['overlay']}: {e.strerror or e}") from None
    engine = os.environ.get("CARRYON_ENGINE") or "auto"
    confine = bool(v["confine"]) or os.environ.get("CARRYON_CONFINE", "").strip().lower() in ("1", "yes", "true", "on")
    verdicts: str | None = None
    if engine == "auto":                        # where auto's verdict is cached (runtime.choice)
        from runtime.choice import verdict_dir
        verdicts = verdict_dir(os.environ.get("CARRYON_CACHE") or None)
    return RunSpec(rootfs=rootfs, argv=command, env=dict(os.environ), cwd=cwd, binds=all_binds,
                   overlay=overlay, confine=confine, verdict_dir=verdicts,
                   uid=uid, gid=gid, engine=engine,
                   wait_all=wait_all,
                   meta_path=meta if meta and os.path.isfile(meta) else None, verbose=verbose,
                   port_map=port_map, netcoop=netcoop, ports_file=ports_file,
                   cwd_optional=not v["cwd"], kernel_release=v["kernel"])


def main(argv: list[str]) -> int:
    from runtime.launch import nsrun
    nsrun.enter()                       # (runs may exec carryon-nsrun: runtime/launch/nsrun.py)
    try:
        spec = parse(argv)
        if spec == "help":
            sys.stdout.write(usage())
            return 0
        if spec == "version":
            from runtime import __version__
            print(f"carryon {__version__}")
            return 0
        assert isinstance(spec, RunSpec)
        from runtime.engine import run
        return run(spec)
    except CarryonError as e:
        sys.stderr.write(f"carryon exec: {e}\n")
        return e.exit_code
    except OSError as e:
        sys.stderr.write(f"carryon exec: engine failure: {e.strerror or e}\n")
        return 125
    except KeyboardInterrupt:
        return 130


def finish(rc: int) -> None:
    """End the `carryon` process with `rc`: flush what is buffered and leave with os._exit.
    Interpreter finalization (module teardown, garbage collection) costs ~10 ms of every start and
    frees nothing the kernel would not; everything that must happen at exit (ports file removal,
    guest clean-up) is done by the commands before they return."""
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        rc = rc or 1
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os._exit(rc)
