"""`#!` lines, parsed the way Linux does (fs/binfmt_script.c)."""

from __future__ import annotations

import errno

BINPRM_BUF_SIZE = 256
MAX_NESTING = 4     # like the kernel's BINPRM_MAX_RECURSION: deeper -> ELOOP


def parse(head: bytes) -> tuple[bytes, bytes | None]:
    """(interpreter, optional single argument) of a `#!` script whose first bytes are `head`.

    The line ends at the first newline (or the end of the buffer); the interpreter is the first
    word, everything after it (trimmed) is ONE argument. No interpreter -> ENOEXEC."""
    line = head[2:BINPRM_BUF_SIZE]
    nl = line.find(b"\n")
    if nl >= 0:
        line = line[:nl]
    elif len(head) >= BINPRM_BUF_SIZE:
        # the kernel refuses a truncated interpreter name, accepts a truncated argument
        stripped = line.lstrip(b" \t")
        if b" " not in stripped and b"\t" not in stripped:
            raise OSError(errno.ENOEXEC, "interpreter name too long")
    line = line.replace(b"\0", b" ").strip(b" \t")
    if not line:
        raise OSError(errno.ENOEXEC, "no interpreter")
    for i, c in enumerate(line):
        if c in (0x20, 0x09):
            return line[:i], line[i:].strip(b" \t") or None
    return line, None
