"""`#!` lines, parsed the way Linux (>= 5.1) does (fs/binfmt_script.c, `load_script`).

The kernel looks at the first BINPRM_BUF_SIZE (256) bytes of the file, NUL-padded when the file is
shorter; the line is what comes before the first newline of those bytes, and never the buffer's last
byte (255 characters at most, `#!` included). Without a newline there, the interpreter's name must
end (a space, tab or NUL, that last byte included) within the 256 bytes, else the name is taken as
truncated: ENOEXEC. The argument may be cut: the interpreter can read the script itself.

Trailing spaces and tabs are dropped; the interpreter is the first word after the leading ones; the
rest, after the spaces and tabs that follow the name, is ONE argument, up to a NUL (a NUL right after
the name: no argument). No name at all -> ENOEXEC; an empty one (`#!` then NUL) -> EACCES, what
the kernel answers when it execs that empty path.
"""

from __future__ import annotations

import errno

BINPRM_BUF_SIZE = 256
MAX_NESTING = 4     # like the kernel's BINPRM_MAX_RECURSION: deeper -> ELOOP

_SPACETAB = b" \t"


def _non_spacetab(buf: bytes, first: int, last: int) -> int:
    """Index of the first byte in buf[first:last + 1] that is neither space nor tab, or -1."""
    while first <= last:
        if buf[first] not in _SPACETAB:
            return first
        first += 1
    return -1


def _terminator(buf: bytes, first: int, last: int) -> int:
    """Index of the first space, tab or NUL in buf[first:last + 1], or -1."""
    while first <= last:
        if buf[first] in _SPACETAB or buf[first] == 0:
            return first
        first += 1
    return -1


def parse(head: bytes) -> tuple[bytes, bytes | None]:
    """(interpreter, optional single argument) of a `#!` script whose first bytes are `head` (at
    least BINPRM_BUF_SIZE of them, or the whole file). See the module docstring; ENOEXEC when the
    kernel would say it. The steps are the kernel's, its bounds inclusive as there."""
    buf = head[:BINPRM_BUF_SIZE].ljust(BINPRM_BUF_SIZE, b"\0")
    buf_end = BINPRM_BUF_SIZE - 1
    i_end = buf.find(b"\n")
    if i_end < 0:
        i_end = _non_spacetab(buf, 2, buf_end)
        if i_end < 0:
            raise OSError(errno.ENOEXEC, "no interpreter")
        if _terminator(buf, i_end, buf_end) < 0:
            raise OSError(errno.ENOEXEC, "interpreter name too long")
        i_end = buf_end                 # the byte there ends the line (the kernel puts a NUL there)
    while buf[i_end - 1] in _SPACETAB:  # stops at the `!` of `#!`
        i_end -= 1
    i_name = _non_spacetab(buf, 2, i_end)
    if i_name < 0 or i_name == i_end:
        raise OSError(errno.ENOEXEC, "no interpreter")
    i_sep = _terminator(buf, i_name, i_end)
    if i_sep < 0:
        return buf[i_name:i_end], None
    interp = buf[i_name:i_sep]
    if not interp:                      # `#!` then NUL: the kernel execs "" and says EACCES
        raise OSError(errno.EACCES, "empty interpreter name")
    if buf[i_sep] == 0:
        return interp, None
    i_arg = _non_spacetab(buf, i_sep, i_end)
    if i_arg < 0:
        return interp, None
    arg = buf[i_arg:i_end]
    nul = arg.find(b"\0")
    return interp, arg[:nul] if nul >= 0 else arg
