"""`carryon` command: one entry point per sub-command; errors become one line and an exit code here.

Exit status, the same rule for every subcommand (stated in USAGE): 0 success; 125 carryon itself
failed (any CarryonError but the guest command's 126/127, an unexpected OSError, bad usage, no or an
unknown command); `exec` otherwise returns its command's status; `sweep` 1 when some row failed;
128+N when carryon is stopped by signal N.
"""

from __future__ import annotations

import sys

USAGE = """usage: carryon COMMAND [ARGS]

commands:
  pack SOURCE [-o OUT] [--tag T] [--platform P] [--level N] [-q]  image -> single-file archive
       (SOURCE: a path, oci:DIR, oci-archive:FILE, docker-archive:FILE, or docker://[REGISTRY/]REPO[:TAG])
  inspect ARCHIVE|IMAGE [--json] [--files]                        show an archive's (or an image's) manifest
  extract ARCHIVE DIR                                             rootless extraction of the rootfs
  exec [-r ROOTFS | -R ROOTFS] [-b HOST[:GUEST]]... COMMAND       run a command in a rootfs (PRoot-like)
  sweep ARCHIVE --params TABLE [...] -- ARG...                    run an archive over a table of variables
  doctor [--json] [--cache DIR]                                   what this node allows; the engine auto picks

`carryon COMMAND --help` describes each command.

exit status (every command): 0 success; 125 carryon itself failed (bad usage or option, bad input,
I/O error, anything carryon refuses); exec: otherwise the command's status (126 not executable,
127 not found, 128+N killed by signal N); sweep: 1 when some row failed; 128+N when carryon is
stopped by signal N (Ctrl-C: 130); doctor: 125 when no engine can run on this node.
"""

# the rule as each packer subcommand's --help states it
EXIT_HELP = "exit status: 0 done; 125 carryon failed (bad usage or option, bad input, I/O error); 130 interrupted"


def _commands():
    # Imported lazily: `carryon exec` must not pay for the packer's imports and vice versa.
    def pack(argv):
        from packer.pack import main as m
        return m(argv)

    def inspect(argv):
        from packer.inspect_cmd import main as m
        return m(argv)

    def extract(argv):
        from packer.extract_cmd import main as m
        return m(argv)

    def exec_(argv):
        from runtime.cli_exec import main as m
        return m(argv)

    def sweep(argv):
        from packer.sweep import main as m
        return m(argv)

    def doctor(argv):
        from runtime.doctor import main as m
        return m(argv)

    return {"pack": pack, "inspect": inspect, "extract": extract, "exec": exec_, "sweep": sweep,
            "doctor": doctor}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help", "help"):
        sys.stdout.write(USAGE)
        return 0
    if not argv:  # usage error: carryon refuses, like any other failure of its own
        sys.stderr.write(USAGE)
        return 125
    if argv[0] in ("-V", "--version"):
        from runtime import __version__
        print(f"carryon {__version__}")
        return 0
    cmd = _commands().get(argv[0])
    if cmd is None:
        sys.stderr.write(f"carryon: unknown command {argv[0]!r}\n{USAGE}")
        return 125
    from runtime.errors import CarryonError
    try:
        rc = cmd(argv[1:])
    except CarryonError as e:
        sys.stderr.write(f"carryon {argv[0]}: {e}\n")
        return e.exit_code
    except OSError as e:  # an I/O error no command turned into a message of its own: still one line
        where = f"{e.filename}: " if e.filename else ""
        sys.stderr.write(f"carryon {argv[0]}: {where}{e.strerror or e}\n")
        return 125
    except KeyboardInterrupt:
        sys.stderr.write(f"carryon {argv[0]}: interrupted\n")
        return 130
    sys.stdout.flush()
    return int(rc or 0)


def entry() -> None:
    """The installed command: main(), then a fast exit (`runtime.cli_exec.finish`)."""
    rc = main()
    from runtime.cli_exec import finish
    finish(rc)


if __name__ == "__main__":
    entry()
