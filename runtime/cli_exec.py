"""`carryon exec`: run a command in an extracted rootfs, with PRoot's command line.

    carryon exec [-r ROOTFS | -R ROOTFS] [-b HOST[:GUEST][:ro]]... [-w DIR] [-0 | -i UID:GID]
                 [-v N] [--kill-on-exit] [-k RELEASE] [--] [COMMAND [ARG]...]

The engine is `CARRYON_ENGINE` (auto, seccomp, ptrace; default auto), read here and put into the
RunSpec: the engine itself never reads the environment. `-R` adds the default binds (/dev, /proc, /sys, and the host's /etc/resolv.conf, /etc/hosts,
/etc/hostname; each skipped when the host lacks it). The environment is the caller's. Exit status:
the command's; 125 for carryon's own errors, 126 command not executable, 127 command not found.
"""

from __future__ import annotations

import os
import sys

from runtime.errors import CarryonError
from runtime.spec import Bind, RunSpec, default_binds

USAGE = """usage: carryon exec [-r ROOTFS | -R ROOTFS] [-b HOST[:GUEST][:ro]]... [-w DIR] [-0 | -i UID:GID]
                    [-p GUEST:HOST]... [-n] [--ports-file FILE]
                    [-v N] [--kill-on-exit] [-k RELEASE] [--] [COMMAND [ARG]...]

Run COMMAND (default /bin/sh) with ROOTFS as its root directory, without privileges (ptrace).
  -r, --rootfs=ROOTFS       guest root directory
  -R ROOTFS                 same, plus the default binds: /dev /proc /sys and the host's
                            /etc/resolv.conf /etc/hosts /etc/hostname
  -b, -m, --bind=HOST[:GUEST][:ro]
                            make host path HOST visible at GUEST (default: the same path);
                            ':ro' makes it read-only (writes fail with EROFS)
  -w, --cwd=DIR, --pwd=DIR  guest working directory (default /)
  -0, --root-id             the guest sees itself as root (uid/gid 0)
  -i, --change-id=UID:GID   the guest sees itself as UID:GID
  -v, --verbose=N           verbosity
  --kill-on-exit            end when COMMAND exits, killing the processes it left
  -p, --port=GUEST[:HOST][/tcp|/udp]
                            a guest bind to port GUEST really binds HOST (no HOST: a free port),
                            guest connects to GUEST on a local address reach it (repeatable)
  -n, --netcoop             every fixed port the guest binds gets a free port of the node
  --ports-file=FILE         keep the live port mapping there (JSON), removed at exit
  -k, --kernel-release=R    accepted for PRoot compatibility (ignored)
COMMAND without '/' is looked up in the guest's PATH. Engine: CARRYON_ENGINE=auto|seccomp|ptrace;
CARRYON_NATIVE=0: no native stop loop (Python sees every stop); CARRYON_PIN=auto|on|off.
"""

_WITH_ARG = {"-r": "rootfs", "--rootfs": "rootfs", "-R": "rootfs_defaults", "-b": "bind", "-m": "bind",
             "--bind": "bind", "--mount": "bind", "-w": "cwd", "--cwd": "cwd", "--pwd": "cwd",
             "-i": "change_id", "--change-id": "change_id", "-v": "verbose", "--verbose": "verbose",
             "-k": "kernel", "--kernel-release": "kernel",
             "-p": "port", "--port": "port", "--ports-file": "ports_file"}
_FLAGS = {"-0": "root_id", "--root-id": "root_id", "--kill-on-exit": "kill_on_exit",
          "-h": "help", "--help": "help", "-V": "version", "--version": "version",
          "-n": "netcoop", "--netcoop": "netcoop"}


def parse_bind(value: str) -> Bind:
    """HOST[:GUEST][:ro|:rw] -> Bind (HOST made absolute; GUEST must be absolute)."""
    readonly = False
    if value.endswith(":ro") or value.endswith(":rw"):
        readonly = value.endswith(":ro")
        value = value[:-3]
    host, sep, guest = value.rpartition(":") if ":" in value else (value, "", value)
    if not sep:
        host, guest = value, value
    if not host:
        raise CarryonError(f"bad bind {value!r}: empty host path")
    host = os.path.abspath(os.path.expanduser(host))
    if not guest:
        guest = host
    if not guest.startswith("/"):
        raise CarryonError(f"bad bind {value!r}: the guest path must be absolute")
    if not os.path.exists(host):
        raise CarryonError(f"bind source does not exist: {host}")
    return Bind(host=host, guest=os.path.normpath(guest), readonly=readonly)


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
    """The RunSpec for this command line, or "help"/"version"."""
    rootfs: str | None = None
    defaults = False
    binds: list[Bind] = []
    cwd = "/"
    uid: int | None = None
    gid: int | None = None
    verbose = 0
    wait_all = True
    ports: list[str] = []
    netcoop = False
    ports_file: str | None = None
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            i += 1
            break
        if not a.startswith("-") or a == "-":
            break
        name, eq, inline = a.partition("=") if a.startswith("--") else (a, "", "")
        if name in _FLAGS and not eq:
            what = _FLAGS[name]
            if what in ("help", "version"):
                return what
            if what == "root_id":
                uid, gid = 0, 0
            elif what == "kill_on_exit":
                wait_all = False
            elif what == "netcoop":
                netcoop = True
            i += 1
            continue
        if name not in _WITH_ARG:
            # -bHOST style (short option glued to its value)
            if len(a) > 2 and a[:2] in _WITH_ARG and not a.startswith("--"):
                name, inline, eq = a[:2], a[2:], "="
            else:
                raise CarryonError(f"unknown option {a!r} (try: carryon exec --help)")
        what = _WITH_ARG[name]
        if eq:
            value = inline
            i += 1
        else:
            if i + 1 >= len(argv):
                raise CarryonError(f"option {a} needs a value")
            value = argv[i + 1]
            i += 2
        if what in ("rootfs", "rootfs_defaults"):
            rootfs = value
            defaults = defaults or what == "rootfs_defaults"
        elif what == "bind":
            binds.append(parse_bind(value))
        elif what == "cwd":
            cwd = value if value.startswith("/") else "/" + value
        elif what == "change_id":
            uid, gid = parse_id(value)
        elif what == "port":
            ports.append(value)
        elif what == "ports_file":
            ports_file = os.path.abspath(value)
        elif what == "verbose":
            try:
                verbose = int(value)
            except ValueError:
                raise CarryonError(f"bad verbosity {value!r}") from None
    port_map = []
    if ports:
        from runtime.net.publish import parse_exec_ports
        port_map = parse_exec_ports(ports)      # malformed -p: one line, 125, before anything runs
    command = argv[i:] or ["/bin/sh"]
    if rootfs is None:
        raise CarryonError("no rootfs given (-r ROOTFS or -R ROOTFS)")
    if not os.path.isdir(rootfs):
        raise CarryonError(f"rootfs not found or not a directory: {rootfs}")
    rootfs = os.path.abspath(rootfs)
    all_binds = (default_binds() if defaults else []) + binds
    meta = rootfs.rstrip("/") + ".carryon-meta.json"
    return RunSpec(rootfs=rootfs, argv=command, env=dict(os.environ), cwd=cwd, binds=all_binds,
                   uid=uid, gid=gid, engine=os.environ.get("CARRYON_ENGINE") or "auto",
                   wait_all=wait_all,
                   meta_path=meta if os.path.isfile(meta) else None, verbose=verbose,
                   port_map=port_map, netcoop=netcoop, ports_file=ports_file)


def main(argv: list[str]) -> int:
    try:
        spec = parse(argv)
        if spec == "help":
            sys.stdout.write(USAGE)
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
