"""Every option of carryon's run commands, declared once (PRoot keeps its options the same way, in one
table in `src/cli/proot.h`): the archive launcher's `--carryon-*` options and `carryon exec`'s
PRoot-style ones. Parsing, `--carryon-help`/`carryon exec --help`, the environment variables, the flag
list the sh launcher needs (put into it at pack time) and README's option block all come from here;
what each option *does* stays with the command that takes it (runtime/launch/, runtime/cli_exec.py).

A row: `name` (the attribute it sets), `kind` (`flag`: on/off; `count`: a flag that adds one each time
and takes `=N`; `value`; `list`: a repeatable value), `metavar`, `help`, and which commands take it:
`archive` (spelled `--carryon-NAME`, `_` as `-`, also read from `CARRYON_NAME` when the command line
does not set it; lists there are newline-separated) and `exec` (its PRoot spellings, short and long;
long ones take `--x=V` too, short ones `-xV`). An option whose kind or meaning differs between the
two commands is two rows. This module is imported on every warm start: stdlib-free.
"""

from __future__ import annotations

from runtime.errors import CarryonError

FLAG, COUNT, VALUE, LIST = "flag", "count", "value", "list"


class Option:
    __slots__ = ("name", "kind", "metavar", "help", "archive", "exec")

    def __init__(self, name: str, kind: str, help: str, metavar: str = "", archive: bool = False,
                 exec: tuple[str, ...] = ()) -> None:
        self.name, self.kind, self.help, self.metavar = name, kind, help, metavar
        self.archive, self.exec = archive, exec

    @property
    def archive_flag(self) -> str:
        return "--carryon-" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "CARRYON_" + self.name.upper()

    @property
    def takes_value(self) -> bool:
        return self.kind in (VALUE, LIST)


OPTIONS: tuple[Option, ...] = (
    # ---- archives (`./app.run --carryon-X ...`)
    Option("help", FLAG, "this help", archive=True),
    Option("info", FLAG, "manifest, image digest, sizes, engine on this node, cache location", archive=True),
    Option("extract", VALUE, "extract the image's root filesystem into DIR and exit", "DIR", archive=True),
    Option("bind", LIST, "bind a host path into the guest (repeatable)", "HOST:GUEST[:ro]", archive=True),
    Option("env", LIST, "set K in the guest (K alone: copy it from the host) (repeatable)", "K=V | K",
           archive=True),
    Option("workdir", VALUE, "working directory in the guest (default: the image's WorkingDir)", "DIR",
           archive=True),
    Option("entrypoint", VALUE, "run CMD instead of the image's Entrypoint (the image's Cmd is dropped)",
           "CMD", archive=True),
    Option("engine", VALUE, "syscall interception (default auto)", "userns|seccomp|ptrace|auto", archive=True),
    Option("confine", FLAG, "refuse to run (125) unless the engine confines a hostile guest (user "
           "namespaces; the ptrace rungs do not)", archive=True, exec=("--confine",)),
    Option("doctor", FLAG, "what this node allows (kernel, ptrace, user namespaces, cache) and the engine "
           "auto picks, with advice; exit 0 when some engine works", archive=True),
    Option("publish", LIST, "guest port GUEST is really HOST on the node (repeatable)",
           "[IP:]HOST:GUEST[/udp]", archive=True),
    Option("netcoop", FLAG, "every fixed port the guest binds gets a free port of the node", archive=True,
           exec=("-n", "--netcoop")),
    Option("ports_file", VALUE, "write the live port mapping there (JSON), removed at exit", "FILE",
           archive=True, exec=("--ports-file",)),
    Option("state", VALUE, "keep the run's changes in DIR; a later run with the same DIR starts from them",
           "DIR", archive=True),
    Option("cache", VALUE, "cache directory (default: ~/.cache/carryon, else $TMPDIR or /tmp)", "DIR",
           archive=True),
    Option("clean", FLAG, "remove this archive's cache entries and exit", archive=True),
    Option("verbose", COUNT, "say what happens (twice: more)", archive=True),
    # ---- `carryon exec` (PRoot's command line)
    Option("rootfs", VALUE, "guest root directory (default: /; the last of -r, -R, -b HOST:/ wins)", "ROOTFS",
           exec=("-r", "--rootfs")),
    Option("rootfs_defaults", VALUE, "same, plus the default binds: /dev /proc /sys and the host's "
           "/etc/resolv.conf /etc/hosts /etc/hostname", "ROOTFS", exec=("-R",)),
    Option("exec_bind", LIST, "make host path HOST visible at GUEST (default: the same path, made "
           "absolute; a relative GUEST is joined to the current directory; GUEST / makes HOST the root); "
           "':ro' makes it read-only (writes fail with EROFS)", "HOST[:GUEST][:ro]",
           exec=("-b", "-m", "--bind", "--mount")),
    Option("cwd", VALUE, "guest working directory (default: the current directory when the guest has it, "
           "else /; a relative DIR is joined to the current directory)", "DIR", exec=("-w", "--cwd", "--pwd")),
    Option("root_id", FLAG, "the guest sees itself as root (uid/gid 0)", exec=("-0", "--root-id")),
    Option("change_id", VALUE, "the guest sees itself as UID:GID", "UID:GID", exec=("-i", "--change-id")),
    Option("exec_verbose", VALUE, "verbosity", "N", exec=("-v", "--verbose")),
    Option("kill_on_exit", FLAG, "end when COMMAND exits, killing the processes it left",
           exec=("--kill-on-exit",)),
    Option("port", LIST, "a guest bind to port GUEST really binds HOST (no HOST: a free port), guest "
           "connects to GUEST on a local address reach it (repeatable)", "GUEST[:HOST][/tcp|/udp]",
           exec=("-p", "--port")),
    Option("overlay", VALUE, "carryon's extension: ROOTFS stays as it is, the run's changes go to DIR "
           "(copy-on-write; a later run with the same DIR starts from them)", "DIR", exec=("--overlay",)),
    Option("kernel", VALUE, "the guest's uname reports kernel release R (PRoot's \\SYSNAME\\NODENAME\\"
           "RELEASE\\VERSION\\MACHINE\\DOMAINNAME\\ form too)", "R", exec=("-k", "--kernel-release")),
    Option("exec_help", FLAG, "this help", exec=("-h", "--help")),
    Option("version", FLAG, "carryon's version", exec=("-V", "--version")),
)


def archive_options() -> list[Option]:
    return [o for o in OPTIONS if o.archive]


def exec_options() -> list[Option]:
    return [o for o in OPTIONS if o.exec]


# ---------------------------------------------------------------- help and the sh launcher

def archive_help() -> str:
    """The option lines of `--carryon-help` (and of README's block)."""
    out = []
    for o in archive_options():
        left = o.archive_flag + (" " + o.metavar if o.metavar else "")
        out.append(f"  {left:<31}{o.help}" if len(left) < 30 else f"  {left}  {o.help}")
    return "\n".join(out) + "\n"


def exec_help() -> str:
    """The option lines of `carryon exec --help`."""
    import textwrap
    out = []
    for o in exec_options():
        shorts = [s for s in o.exec if not s.startswith("--")]
        longs = [s for s in o.exec if s.startswith("--")]
        names = shorts + [f"{s}={o.metavar}" if o.metavar else s for s in longs]
        if not longs and o.metavar:
            names[-1] += " " + o.metavar
        left = ", ".join(names)
        text = textwrap.wrap(o.help, 70)
        if len(left) < 26:
            out.append(f"  {left:<26}{text[0]}")
        else:
            out.append(f"  {left}")
            out.append(" " * 28 + text[0])
        out += [" " * 28 + t for t in text[1:]]
    return "\n".join(out) + "\n"


def sh_flag_pattern() -> str:
    """The `case` pattern of the archive options that take no value (runtime/launcher.sh skips the
    value of every other `--carryon-X` to find `--carryon-cache`)."""
    return "|".join(o.archive_flag for o in archive_options() if not o.takes_value)


# ---------------------------------------------------------------- parsing

def _flag_value(o: Option, value: str, where: str) -> int:
    v = value.strip().lower()
    if v in ("", "0", "no", "false", "off"):
        return 0
    if v in ("1", "yes", "true", "on"):
        return 1
    if o.kind == COUNT and v.isdigit():
        return int(v)
    raise CarryonError(f"{where}: expected 0/1 (or yes/no), got {value!r}")


def _default(o: Option):
    return [] if o.kind == LIST else (0 if o.kind == COUNT else (False if o.kind == FLAG else None))


def defaults(options: list[Option]) -> dict:
    return {o.name: _default(o) for o in options}


def parse_archive(argv: list[str], environ) -> tuple[dict, list[str]]:
    """Leading `--carryon-*` options (the first other argument ends them), then `CARRYON_<NAME>` for
    what the command line did not set: ({name: value}, the remaining arguments)."""
    table = {o.archive_flag[len("--carryon-"):]: o for o in archive_options()}
    values = defaults(list(table.values()))
    given: set[str] = set()
    i = 0
    while i < len(argv):
        a = argv[i]
        if not a.startswith("--carryon-"):
            break
        spelled, eq, value = a[len("--carryon-"):].partition("=")
        o = table.get(spelled)
        if o is None:
            raise CarryonError(f"unknown option --carryon-{spelled} (see --carryon-help)")
        if not o.takes_value:
            n = _flag_value(o, value, a) if eq else 1
            values[o.name] = (values[o.name] + n if not eq else n) if o.kind == COUNT else bool(n)
        else:
            if not eq:
                i += 1
                if i >= len(argv):
                    raise CarryonError(f"{o.archive_flag} needs a value (see --carryon-help)")
                value = argv[i]
            if o.kind == LIST:
                values[o.name].append(value)
            else:
                values[o.name] = value
        given.add(o.name)
        i += 1
    for o in table.values():
        if o.name in given or o.env not in environ:
            continue
        value = environ[o.env]
        if not o.takes_value:
            n = _flag_value(o, value, o.env)
            values[o.name] = n if o.kind == COUNT else bool(n)
        elif o.kind == LIST:
            values[o.name] = [v for v in value.split("\n") if v]
        elif value:
            values[o.name] = value
    return values, list(argv[i:])


def parse_exec(argv: list[str]) -> tuple[dict, list[str]]:
    """`carryon exec`'s options up to the command (or `--`): ({name: value, "_order": [names in the
    order given]}, the command)."""
    table = {s: o for o in exec_options() for s in o.exec}
    values = defaults(exec_options())
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            i += 1
            break
        if not a.startswith("-") or a == "-":
            break
        name, eq, inline = a.partition("=") if a.startswith("--") else (a, "", "")
        o = table.get(name)
        if o is None and not a.startswith("--") and len(a) > 2:
            o = table.get(a[:2])                # -bHOST: a short option glued to its value
            if o is not None and o.takes_value:
                name, eq, inline = a[:2], "=", a[2:]
            else:
                o = None
        if o is None:
            raise CarryonError(f"unknown option {a!r} (try: carryon exec --help)")
        if not o.takes_value:
            if eq:
                raise CarryonError(f"option {name} takes no value")
            values[o.name] = True
            values.setdefault("_order", []).append(o.name)
            i += 1
            continue
        if eq:
            value = inline
            i += 1
        else:
            if i + 1 >= len(argv):
                raise CarryonError(f"option {a} needs a value")
            value = argv[i + 1]
            i += 2
        if o.kind == LIST:
            values[o.name].append(value)
        else:
            values[o.name] = value
        values.setdefault("_order", []).append(o.name)
    return values, list(argv[i:])
