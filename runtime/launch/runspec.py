"""The image's config and the command line turned into a RunSpec, with `docker run`'s semantics:
Entrypoint + (ARGS or Cmd), Env, WorkingDir, User (against the image's /etc/passwd and /etc/group),
StopSignal, binds and published ports."""

from __future__ import annotations

import _signal as signal  # the C module: `signal` imports `enum` (slow start-up); `Signals` is lazy
import os

from runtime import cache
from runtime.errors import CarryonError
from runtime.launch.install import ENTRY_ROOTFS
from runtime.launch.options import Options
from runtime.launch.selfarchive import Archive

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _guest_file(rootfs: str, guest_path: str) -> str | None:
    """Host path of a guest file, symlinks resolved inside the rootfs (an absolute target restarts at
    the guest root, `..` stops at it): never a path outside the rootfs. None on a symlink loop."""
    from runtime.path.confine import SymlinkLoop, join, split_path

    def lookup(host: str, name: str) -> tuple[str | None, str | None]:
        p = os.path.join(host, name)
        try:
            return None, os.readlink(p)
        except OSError:                  # not a symlink (or missing): a plain component
            return p, None

    try:
        walked = join(rootfs, split_path(guest_path), lookup, follow_last=True)
    except SymlinkLoop:
        return None
    return walked[0][-1] if walked is not None else None


def _read_db(rootfs: str, guest_path: str) -> list[list[str]]:
    p = _guest_file(rootfs, guest_path)
    if not p:
        return []
    try:
        with open(p, encoding="utf-8", errors="replace") as f:
            return [ln.rstrip("\n").split(":") for ln in f if ln.strip() and not ln.startswith("#")]
    except OSError:
        return []


def resolve_user(user: str, rootfs: str) -> tuple[int, int, str | None]:
    """Docker's `User` (name, uid, name:group, uid:gid) against the image's /etc/passwd and /etc/group:
    (uid, gid, home or None)."""
    name, _, group = user.partition(":")
    passwd = [e for e in _read_db(rootfs, "/etc/passwd") if len(e) >= 7]
    entry = None
    if not name:
        uid = 0
        entry = next((e for e in passwd if e[2] == "0"), None)
    elif name.isdigit():
        uid = int(name)
        entry = next((e for e in passwd if e[2] == name), None)
    else:
        entry = next((e for e in passwd if e[0] == name), None)
        if entry is None:
            raise CarryonError(f"unable to find user {name}: no matching entries in passwd file")
        if not entry[2].isdigit():
            raise CarryonError(f"bad passwd entry for user {name}")
        uid = int(entry[2])
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            groups = [e for e in _read_db(rootfs, "/etc/group") if len(e) >= 3]
            g = next((e for e in groups if e[0] == group), None)
            if g is None or not g[2].isdigit():
                raise CarryonError(f"unable to find group {group}: no matching entries in group file")
            gid = int(g[2])
    else:
        gid = int(entry[3]) if entry is not None and entry[3].isdigit() else 0
    home = entry[5] if entry is not None and entry[5] else None
    return uid, gid, home


def parse_signal(text: str) -> int:
    t = (text or "").strip().upper()
    if not t:
        return signal.SIGTERM
    if t.isdigit():
        n = int(t)
    else:
        if not t.startswith("SIG"):
            t = "SIG" + t
        if t.startswith("SIGRTMIN+") or t.startswith("SIGRTMAX-"):
            base, off = (signal.SIGRTMIN, 1) if "+" in t else (signal.SIGRTMAX, -1)
            digits = t.split("+" if "+" in t else "-", 1)[1]
            if not digits.isdigit():
                raise CarryonError(f"invalid StopSignal {text!r} in the image config")
            n = int(base) + off * int(digits)
        else:
            import signal as signal_module  # (imports enum: only for a named StopSignal)
            try:
                n = int(getattr(signal_module.Signals, t))
            except AttributeError:
                raise CarryonError(f"invalid StopSignal {text!r} in the image config") from None
    if not 0 < n < signal.NSIG:
        raise CarryonError(f"invalid StopSignal {text!r} in the image config")
    return n


def parse_bind(text: str):
    from runtime.spec import Bind
    parts = text.split(":")
    ro = False
    if len(parts) == 3 and parts[2] in ("ro", "rw"):
        ro = parts[2] == "ro"
        parts = parts[:2]
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise CarryonError(f"--carryon-bind {text}: expected HOST:GUEST[:ro]")
    host, guest = os.path.abspath(parts[0]), parts[1]
    if not guest.startswith("/"):
        raise CarryonError(f"--carryon-bind {text}: the guest path must be absolute")
    if not os.path.exists(host):
        raise CarryonError(f"--carryon-bind {text}: {host} does not exist")
    return Bind(host=host, guest=os.path.normpath(guest), readonly=ro)


def _port(text: str, what: str, spec_text: str, lo: int) -> int:
    if not text.isdigit() or len(text) > 5 or not lo <= int(text) <= 65535:
        raise CarryonError(f"--carryon-publish {spec_text}: bad {what} port {text!r} "
                           f"(expected [IP:]HOST:GUEST[/tcp|/udp], ports {lo}-65535)")
    return int(text)


def parse_publish(text: str):
    """`[IP:]HOST:GUEST[/tcp|/udp]`, strictly (IPv6 addresses in brackets)."""
    import ipaddress

    from runtime.spec import PortMapping
    usage = f"--carryon-publish {text}: expected [IP:]HOST:GUEST[/tcp|/udp]"
    body, slash, proto = text.partition("/")
    proto = proto.lower() if slash else "tcp"
    if proto not in ("tcp", "udp"):
        raise CarryonError(usage)
    address = None
    if body.startswith("["):
        close = body.find("]")
        if close < 0 or body[close + 1:close + 2] != ":":
            raise CarryonError(usage)
        address, body = body[1:close], body[close + 2:]
        try:
            ipaddress.IPv6Address(address)
        except ValueError:
            raise CarryonError(f"{usage} (bad IPv6 address {address!r})") from None
    parts = body.split(":")
    if len(parts) == 3 and address is None:
        address = parts[0]
        try:
            ipaddress.IPv4Address(address)
        except ValueError:
            raise CarryonError(f"{usage} (bad IP address {address!r})") from None
        parts = parts[1:]
    if len(parts) != 2:
        raise CarryonError(usage)
    host = _port(parts[0], "host", text, 0)
    guest = _port(parts[1], "guest", text, 1)
    return PortMapping(guest=guest, host=host, proto=proto, address=address)


def _host_env(name: str) -> str | None:
    return os.environ.get(name)


def build_env(config: dict, opts: Options, home: str | None) -> dict[str, str]:
    env: dict[str, str] = {"PATH": DEFAULT_PATH, "HOSTNAME": cache.hostname()}
    term = _host_env("TERM")
    if term:
        env["TERM"] = term
    for item in config.get("Env") or []:
        k, eq, v = item.partition("=")
        if k:
            env[k] = v
    for item in opts.env:
        k, eq, v = item.partition("=")
        if not k:
            raise CarryonError(f"--carryon-env {item!r}: expected K=V or K")
        if eq:
            env[k] = v
        else:
            hv = _host_env(k)
            if hv is not None:
                env[k] = hv
    if "HOME" not in env:
        env["HOME"] = home or "/"
    return env


HOST_FILES = ("/etc/resolv.conf", "/etc/hosts", "/etc/hostname")


def default_binds(run_dir: str) -> list:
    """/dev, /proc and /sys of the host, and the run's own copies of the host's /etc/resolv.conf,
    hosts and hostname (as Docker gives each container its own: the guest may change them, the
    host's stay as they are). Each is skipped when the host lacks it."""
    from runtime.spec import Bind
    binds = [Bind(host=p, guest=p, optional=True) for p in ("/dev", "/proc", "/sys")]
    etc = os.path.join(run_dir, "etc")
    for p in HOST_FILES:
        try:
            with open(p, "rb") as f:
                data = f.read(1 << 20)
        except OSError:
            continue
        if not os.path.isdir(etc):
            os.mkdir(etc, 0o755)
        copy = os.path.join(etc, os.path.basename(p))
        fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        with open(fd, "wb") as f:
            f.write(data)
        binds.append(Bind(host=copy, guest=p))
    return binds


def build_spec(arch: Archive, entry: str, opts: Options, run_dir: str, state: str):
    from runtime.spec import RunSpec
    config = arch.manifest.get("config") or {}
    rootfs = os.path.join(entry, ENTRY_ROOTFS)
    if opts.entrypoint is not None:
        argv = [opts.entrypoint] + opts.args
    else:
        argv = list(config.get("Entrypoint") or []) + (opts.args or list(config.get("Cmd") or []))
    if not argv or not argv[0]:
        raise CarryonError("no command specified (the image has no Entrypoint or Cmd; pass one)")
    uid, gid, home = resolve_user(config.get("User") or "", rootfs)
    cwd = opts.workdir or config.get("WorkingDir") or "/"
    if not cwd.startswith("/"):
        raise CarryonError(f"--carryon-workdir {cwd}: must be an absolute guest path")
    binds = default_binds(run_dir) + [parse_bind(b) for b in opts.bind]
    spec = RunSpec(rootfs=rootfs, argv=argv, env=build_env(config, opts, home), cwd=cwd, binds=binds,
                   uid=uid, gid=gid, engine=opts.engine, wait_all=False,
                   meta_path=os.path.join(entry, ENTRY_ROOTFS) + ".carryon-meta.json",
                   stop_signal=parse_signal(config.get("StopSignal") or ""), forward_all_signals=True,
                   port_map=[parse_publish(p) for p in opts.publish], netcoop=opts.netcoop,
                   ports_file=os.path.abspath(opts.ports_file) if opts.ports_file else None,
                   verbose=opts.verbose, overlay=state, overlay_ident=arch.key,
                   confine=opts.confine, verdict_dir=os.path.dirname(entry))
    return spec

