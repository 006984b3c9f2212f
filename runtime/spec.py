"""What to run and how: the one contract between the CLIs (`carryon exec`, the archive launcher,
`carryon sweep`) and the tracer engine (`runtime.engine.run(spec) -> exit status`).

Plain classes with `__slots__` rather than dataclasses: this module is on the start-up path of
every run, and importing `dataclasses` (with `inspect`, `re`, `enum`...) costs more than the rest of
the engine's imports together. They behave like the dataclasses they replace: keyword or positional
construction in field order, the same defaults, `==` field by field, a readable `repr`.
"""

from __future__ import annotations

SIGTERM = 15        # signal.SIGTERM on Linux (not imported: `signal` pulls in `enum`)

TYPE_CHECKING = False           # not `typing.TYPE_CHECKING`: importing typing slows start-up
if TYPE_CHECKING:
    from runtime.trace import Recorder


class _Record:
    """Field-wise equality and repr for the classes below (their `__slots__` are the fields)."""

    __slots__: tuple[str, ...] = ()

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in self.__slots__)

    __hash__ = None  # type: ignore[assignment]   # mutable, like a non-frozen dataclass

    def __repr__(self) -> str:
        body = ", ".join(f"{f}={getattr(self, f)!r}" for f in self.__slots__)
        return f"{self.__class__.__name__}({body})"


class Bind(_Record):
    __slots__ = ("host", "guest", "readonly", "optional")

    def __init__(self, host: str, guest: str, readonly: bool = False, optional: bool = False) -> None:
        self.host = host                # host path (absolute)
        self.guest = guest              # guest path (absolute, canonical)
        self.readonly = readonly        # writes through it fail with EROFS
        self.optional = optional        # default binds: skipped silently when the host source is missing


class PortMapping(_Record):
    __slots__ = ("guest", "host", "proto", "address")

    def __init__(self, guest: int, host: int, proto: str = "tcp", address: str | None = None) -> None:
        self.guest = guest              # port the guest binds / connects to
        self.host = host                # port really used on the host
        self.proto = proto              # "tcp" or "udp"
        self.address = address          # host address restriction (archives: `--carryon-publish IP:HOST:GUEST`)


class RunSpec(_Record):
    __slots__ = ("rootfs", "argv", "env", "cwd", "binds", "uid", "gid", "engine", "wait_all",
                 "meta_path", "stop_signal", "forward_all_signals", "port_map", "netcoop", "ports_file",
                 "verbose", "overlay", "overlay_ident", "cwd_optional", "kernel_release", "trace",
                 "confine", "verdict_dir")

    def __init__(self, rootfs: str, argv: list[str], env: dict[str, str] | None = None, cwd: str = "/",
                 binds: list[Bind] | None = None, uid: int | None = None, gid: int | None = None,
                 engine: str = "auto", wait_all: bool = True, meta_path: str | None = None,
                 stop_signal: int = SIGTERM, forward_all_signals: bool = False,
                 port_map: list[PortMapping] | None = None,
                 netcoop: bool = False, ports_file: str | None = None, verbose: int = 0,
                 overlay: str | None = None, overlay_ident: str | None = None,
                 cwd_optional: bool = False, kernel_release: str | None = None,
                 trace: Recorder | None = None,
                 confine: bool = False, verdict_dir: str | None = None) -> None:
        self.rootfs = rootfs            # host path of the guest root
        self.argv = argv                # argv[0] is looked up in the guest PATH when it has no '/'
        self.env: dict[str, str] = {} if env is None else env
        self.cwd = cwd                  # guest working directory
        self.binds: list[Bind] = [] if binds is None else binds
        self.uid = uid                  # fake identity seen by the guest; None = the real one
        self.gid = gid
        self.engine = engine            # "auto" | "seccomp" | "ptrace"
        # True: end when all guest processes ended (carryon exec, PRoot);
        # False: end when the main process exits, kill the rest (archives, Docker)
        self.wait_all = wait_all
        self.meta_path = meta_path      # DIR.carryon-meta.json of the extraction (owners, devices, xattrs)
        self.stop_signal = stop_signal  # what a SIGTERM sent to carryon is delivered to the guest as
        # False: SIGINT/SIGTERM/SIGHUP/SIGQUIT reach the main guest process (carryon exec, PRoot);
        # True: every catchable signal does, once (archives, Docker)
        self.forward_all_signals = forward_all_signals
        self.port_map: list[PortMapping] = [] if port_map is None else port_map
        self.netcoop = netcoop          # automatic per-run ports for every fixed-port bind
        self.ports_file = ports_file    # where the live port mapping is published (JSON)
        self.verbose = verbose
        # copy-on-write: the rootfs stays as it is, the run's changes go to this state directory
        # (runtime.path.overlay); a state made for another image (`overlay_ident`) is refused
        self.overlay = overlay
        self.overlay_ident = overlay_ident
        # True: `cwd` is a default, not a request (carryon exec without -w: the caller's directory,
        # PRoot's); missing in the guest, it is '/' without a warning, and it is never made
        self.cwd_optional = cwd_optional
        # `carryon exec -k`: what the guest's uname reports (runtime.extension.kernel_release)
        self.kernel_release = kernel_release
        # CARE mode (`carryon pack --trace`, a trimmed archive's verbose hint): a runtime.trace.Recorder
        # that notes every guest path the run looks up; None (the default) costs nothing
        self.trace = trace
        # True: only an engine that confines a hostile guest may run it (runtime.choice.CONFINING)
        self.confine = confine
        # the cache dir where `auto` keeps its verdict (runtime.choice); None: asked on every run
        self.verdict_dir = verdict_dir


# The default binds for running an image (`carryon exec -R`, the archives): each is skipped when
# the host lacks it.
DEFAULT_BIND_PATHS = ("/dev", "/proc", "/sys", "/etc/resolv.conf", "/etc/hosts", "/etc/hostname")


def default_binds() -> list[Bind]:
    return [Bind(host=p, guest=p, optional=True) for p in DEFAULT_BIND_PATHS]
