"""The archive's `--carryon-*` options as a record, parsed from the command line and the environment
with runtime/options.py's table (the one place options are declared), and `--carryon-help`."""

from __future__ import annotations

import os

from runtime import options as table
from runtime.errors import CarryonError

ENGINES = ("auto", "userns", "seccomp", "ptrace")   # runtime.engine.NAMES (a test keeps them equal)

HELP_HEAD = """usage: {prog} [--carryon-OPTION[=VALUE]]... [ARGS...]

Runs the image's command like `docker run IMAGE ARGS`: Entrypoint + (ARGS or Cmd), the image's Env,
WorkingDir and User. The first run extracts the image once into a node cache. Every run starts from
the image as packed: its changes are its own (copy-on-write) and gone at exit, unless --carryon-state
DIR keeps them for the next run with that DIR (like a named container).

Options (only at the start; the first other argument ends them). Each also reads CARRYON_<NAME>
from the environment (e.g. CARRYON_CACHE, CARRYON_ENGINE); lists there are newline-separated.
"""
HELP_TAIL = """Exit status: the command's; 125 when carryon itself fails, 126 command not executable, 127 not found.
"""


def help_text(prog: str) -> str:
    return HELP_HEAD.format(prog=prog) + table.archive_help() + HELP_TAIL


class Options:
    """The archive options of one run: an attribute per row of the table (runtime/options.py), plus
    `args`, the arguments that follow them."""

    help: bool
    info: bool
    extract: str | None
    bind: list[str]
    env: list[str]
    workdir: str | None
    entrypoint: str | None
    engine: str
    confine: bool
    doctor: bool
    publish: list[str]
    netcoop: bool
    ports_file: str | None
    state: str | None
    cache: str | None
    clean: bool
    verbose: int
    args: list[str]

    def __init__(self, **values) -> None:
        self.__dict__.update(table.defaults(table.archive_options()))
        self.engine = "auto"
        self.args = []
        for k, v in values.items():
            if k not in self.__dict__:
                raise TypeError(f"Options() got an unexpected keyword argument {k!r}")
            setattr(self, k, v)

    def __eq__(self, other: object) -> bool:
        return other.__class__ is self.__class__ and self.__dict__ == other.__dict__

    __hash__ = None  # type: ignore[assignment]   # mutable

    def __repr__(self) -> str:
        return "Options(" + ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items()) + ")"


def parse_options(argv: list[str], environ: dict[str, str] | os._Environ | None = None) -> Options:
    """Leading `--carryon-*` options, then `CARRYON_<NAME>` for what the command line did not set."""
    values, args = table.parse_archive(argv, os.environ if environ is None else environ)
    o = Options()
    for k, v in values.items():
        if v is not None or k not in ("engine",):
            setattr(o, k, v)
    if o.engine is None:
        o.engine = "auto"
    o.args = args
    if o.engine not in ENGINES:
        raise CarryonError(f"--carryon-engine {o.engine}: expected userns, seccomp, ptrace or auto")
    return o
