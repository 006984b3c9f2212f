"""`carryon` command: one entry point per sub-command; errors become one line and an exit code here."""

from __future__ import annotations

import sys

USAGE = """usage: carryon COMMAND [ARGS]

commands:
  pack SOURCE [-o OUT] [--tag T] [--platform P] [--level N]   image -> single-file archive
  inspect ARCHIVE [--json] [--files]                           show an archive's manifest
  extract ARCHIVE DIR                                          rootless extraction of the rootfs
  exec [-r ROOTFS | -R ROOTFS] [-b HOST[:GUEST]]... COMMAND     run a command in a rootfs (PRoot-like)
  sweep ARCHIVE --params TABLE [...] -- ARG...                 run an archive over a table of variables
"""


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

    return {"pack": pack, "inspect": inspect, "extract": extract, "exec": exec_, "sweep": sweep}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        sys.stdout.write(USAGE)
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from runtime import __version__
        print(f"carryon {__version__}")
        return 0
    cmd = _commands().get(argv[0])
    if cmd is None:
        sys.stderr.write(f"carryon: unknown command {argv[0]!r} (try: carryon --help)\n")
        return 2
    from runtime.errors import CarryonError
    try:
        rc = cmd(argv[1:])
    except CarryonError as e:
        sys.stderr.write(f"carryon {argv[0]}: {e}\n")
        return e.exit_code
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
