"""What to run and how: the one contract between the CLIs (`carryon exec`, the archive launcher,
`carryon sweep`) and the tracer engine (`runtime.engine.run(spec) -> exit status`)."""

from __future__ import annotations

import signal
from dataclasses import dataclass, field


@dataclass
class Bind:
    host: str                 # host path (absolute)
    guest: str                # guest path (absolute, canonical)
    readonly: bool = False    # writes through it fail with EROFS
    optional: bool = False    # default binds: skipped silently when the host source is missing


@dataclass
class PortMapping:
    guest: int                # port the guest binds / connects to
    host: int                 # port really used on the host
    proto: str = "tcp"        # "tcp" or "udp"
    address: str | None = None  # host address restriction (archives: `--carryon-publish IP:HOST:GUEST`)


@dataclass
class RunSpec:
    rootfs: str                          # host path of the guest root
    argv: list[str]                      # argv[0] is looked up in the guest PATH when it has no '/'
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = "/"                       # guest working directory
    binds: list[Bind] = field(default_factory=list)
    uid: int | None = None               # fake identity seen by the guest; None = the real one
    gid: int | None = None
    engine: str = "auto"                 # "auto" | "seccomp" | "ptrace"
    wait_all: bool = True                # True: end when all guest processes ended (carryon exec, PRoot);
                                         # False: end when the main process exits, kill the rest (archives, Docker)
    meta_path: str | None = None         # DIR.carryon-meta.json of the extraction (owners, devices, xattrs)
    stop_signal: int = signal.SIGTERM    # what a SIGTERM sent to carryon is delivered to the guest as
    port_map: list[PortMapping] = field(default_factory=list)
    netcoop: bool = False                # automatic per-run ports for every fixed-port bind
    ports_file: str | None = None        # where the live port mapping is published (JSON)
    verbose: int = 0


# The default binds for running an image (`carryon exec -R`, the archives): each is skipped when
# the host lacks it.
DEFAULT_BIND_PATHS = ("/dev", "/proc", "/sys", "/etc/resolv.conf", "/etc/hosts", "/etc/hostname")


def default_binds() -> list[Bind]:
    return [Bind(host=p, guest=p, optional=True) for p in DEFAULT_BIND_PATHS]
