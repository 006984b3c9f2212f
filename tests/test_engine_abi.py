"""The native stop loop's constants against Python's: the C sources (runtime/tracee/fastloop.h,
fastloop.c, fastpath.c, fastport.c) and the Python modules that drive them (runtime.tracee.native,
ffi, mem, loop; runtime.syscall.table, sysnums) write each shared value twice; this test reads
every integer `#define` and `enum` of the C sources and compares it with its Python counterpart.
A C constant this test does not know (neither shared nor listed as the C side's own) fails too, so
a new one must be classified here before it can drift."""

from __future__ import annotations

import re
import socket
import sys
from pathlib import Path

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO))
from runtime.execve import loader  # noqa: E402
from runtime.syscall import enter, table  # noqa: E402
from runtime.syscall.sysnums import MAX_KNOWN, NUMBERS  # noqa: E402
from runtime.tracee import ffi, loop, mem, native  # noqa: E402

C_FILES = [Path(native.HEADER), *map(Path, native.SOURCES)]

# C name -> the Python value it must equal
SHARED: dict[str, int] = {
    # fastloop.h: registers (the kernel's layout itself is checked by _Static_assert in fastloop.c)
    "NREGS": len(ffi.REG_NAMES),
    "R_R10": ffi.R_R10, "R_R9": ffi.R_R9, "R_R8": ffi.R_R8, "R_RAX": ffi.R_RAX, "R_RDX": ffi.R_RDX, "R_RSI": ffi.R_RSI,
    "R_RDI": ffi.R_RDI, "R_ORIG_RAX": ffi.R_ORIG_RAX, "R_RSP": ffi.R_RSP,
    "MAXNR": native.MAXNR,
    "PATH_LIMIT": mem.PATH_MAX,
    "RED_ZONE": mem.RED_ZONE,
    # queued events
    "Q_EXIT": native.Q_EXIT, "Q_FORK": native.Q_FORK, "Q_VFORK": native.Q_VFORK,
    "Q_EXEC": native.Q_EXEC, "Q_BOUND": native.Q_BOUND,
    "QUEUE_MAX": native.QUEUE_MAX,
    # cf_stats's counters, in Native.stats's order
    **{f"C_{name.upper()}": i for i, name in enumerate(native.STATS)},
    "C_COUNT": len(native.STATS),
    # fastloop.c
    "CF_ABI": native.ABI,
    "SECCOMP_STOP": loop.SIG_SECCOMP_STOP, "SYSCALL_STOP": loop.SIG_SYSCALL,
    "EVENT_FORK": ffi.PTRACE_EVENT_FORK, "EVENT_VFORK": ffi.PTRACE_EVENT_VFORK,
    "EVENT_STOP": ffi.PTRACE_EVENT_STOP,
    "NR_CLONE": loop.NR_CLONE, "NR_FORK": loop.NR_FORK, "CLONE_VM_": loop.CLONE_VM,
    "SYS_KCMP_": ffi._SYS_KCMP, "KCMP_VM_": ffi.KCMP_VM,
    "LOADER_CALL": loader.NR, "SYS_OPENAT_": loader.NR_OPENAT,
    "O_RDONLY_CLOEXEC_": loader.O_RDONLY_CLOEXEC,
    "ST_SETTLED": native.SETTLED, "ST_FORKS": native.FORKS, "ST_HELD": native.HELD,
    "ST_OWN_END": native.OWN_END,
    "ST_PYTHON": native.SETTLED | native.FORKS | native.HELD | native.OWN_END,
    # fastpath.c: follow rules and the flag bits they read, cache keys
    "AT_FDCWD_": table.AT_FDCWD,
    "FOLLOW": table.FOLLOW, "NOFOLLOW": table.NOFOLLOW, "OPEN_FLAGS": table.OPEN_FLAGS,
    "AT_NOFOLLOW": table.AT_NOFOLLOW, "AT_FOLLOW": table.AT_FOLLOW, "INOTIFY": table.INOTIFY,
    "FANOTIFY": table.FANOTIFY,
    "O_WRONLY_": table.O_WRONLY, "O_CREAT_": table.O_CREAT, "O_EXCL_": table.O_EXCL,
    "O_NOFOLLOW_": table.O_NOFOLLOW, "AT_SYMLINK_NOFOLLOW_": table.AT_SYMLINK_NOFOLLOW,
    "AT_SYMLINK_FOLLOW_": table.AT_SYMLINK_FOLLOW, "IN_DONT_FOLLOW_": table.IN_DONT_FOLLOW,
    "FAN_MARK_DONT_FOLLOW_": table.FAN_MARK_DONT_FOLLOW,
    "KEY_FOLLOWED": native.KEY_FOLLOWED, "KEY_NOT_FOLLOWED": native.KEY_NOT_FOLLOWED,
    "KEY_DIR": native.KEY_DIR,
    # fastport.c
    "PM_BIND": native.PM_BIND, "PM_CONNECT": native.PM_CONNECT, "PM_SENDTO": native.PM_SENDTO,
    "PM_ACCEPT": native.PM_ACCEPT, "PM_GETSOCKNAME": native.PM_GETSOCKNAME,
    "PM_GETPEERNAME": native.PM_GETPEERNAME, "PM_UNIX": native.PM_UNIX,
    "PM_UNIX_SENDTO": native.PM_UNIX_SENDTO,
    "PMF_BOUND_CLIENTS": native.PMF_BOUND_CLIENTS, "PMF_REDIRECTED": native.PMF_REDIRECTED,
    "PMF_READBACK": native.PMF_READBACK, "PMF_AUTO": native.PMF_AUTO,
    "PM_MAX": native.PORT_TABLE_MAX, "PUB_SIZE": native.PUB_SIZE, "PUB_KEY": native.PUB_KEY,
    "PF_TCP": native.PROTO_BITS["tcp"], "PF_UDP": native.PROTO_BITS["udp"],
    "AF_UNIX_": socket.AF_UNIX, "AF_INET_": socket.AF_INET, "AF_INET6_": socket.AF_INET6,
    "SYS_PIDFD_OPEN_": NUMBERS["pidfd_open"], "SYS_PIDFD_GETFD_": NUMBERS["pidfd_getfd"],
}
# the C side's own: sizes of its tables, its own state bits
C_ONLY = {"PID_LIMIT", "ST_INITIAL", "ST_PROBE", "PROBES", "FIRST_CHUNK", "CACHE_SLOTS",
          "CACHE_MAX", "BOUND_SLOTS", "BOUND_MAX", "LOAD_SLOTS", "LOAD_MAX"}
# defines that are not integer constants
NOT_VALUES = {"HIDDEN", "sigev_notify_thread_id"}
# names a C constant expression may use besides the file's own constants
C_NAMES = {"SIGTRAP": 5}

_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
_DEFINE = re.compile(r"^[ \t]*#[ \t]*define[ \t]+(\w+)(\()?[ \t]*(.*)$", re.M)
_ENUM = re.compile(r"\benum\s*\w*\s*\{([^}]*)\}", re.S)


def _value(expr: str, known: dict[str, int]) -> int | None:
    """A C integer constant expression as Python evaluates it, or None."""
    e = re.sub(r"\b(0[xX][0-9a-fA-F]+|\d+)[uUlL]+\b", r"\1", expr.strip())
    e = re.sub(r"\b0([0-7]+)\b", r"0o\1", e)                   # C octal
    if not e or not re.fullmatch(r"[\w\s()|&<>+\-*/~]+", e):
        return None
    e = e.replace("/", "//")                # integer division (the constants here are positive)
    try:
        v = eval(e, {"__builtins__": {}}, {**C_NAMES, **known})   # noqa: S307 (our own sources)
    except Exception:
        return None
    return v if isinstance(v, int) else None


def c_constants(path: Path) -> tuple[dict[str, int], set[str]]:
    """(name -> value of every integer #define and enum member, the names of other #defines)."""
    text = _COMMENT.sub(" ", path.read_text())
    values: dict[str, int] = {}
    others: set[str] = set()
    for name, function_like, body in _DEFINE.findall(text):
        if function_like or not body.strip():
            continue                        # macros with arguments, include guards, _GNU_SOURCE
        v = _value(body, values)
        if v is None:
            others.add(name)
        else:
            values[name] = v
    for body in _ENUM.findall(text):
        nxt = 0
        for item in filter(None, (i.strip() for i in body.split(","))):
            name, _, expr = item.partition("=")
            v = _value(expr, values) if expr else nxt
            assert v is not None, f"{path.name}: enum member {item!r} not understood"
            values[name.strip()] = v
            nxt = v + 1
    return values, others


def all_c_constants() -> dict[str, int]:
    merged: dict[str, int] = {}
    for path in C_FILES:
        values, others = c_constants(path)
        assert others <= NOT_VALUES, f"{path.name}: defines this test cannot read: {others - NOT_VALUES}"
        for name, v in values.items():
            assert merged.setdefault(name, v) == v, f"{name} differs between the C files"
    return merged


def test_parser_reads_c_constants(tmp_path):
    """The reader itself: octal, hex, suffixes, expressions, implicit enum values."""
    src = tmp_path / "x.c"
    src.write_text("#define A 0400 /* c */\n#define B (1u << 17)\n#define C (SIGTRAP | (7 << 8))\n"
                   "#define F(x) x\n#define G\n#define H (-100)\n#define I (B / 2)\n#define J B % 2\n"
                   "enum { P = 3, Q, R = 0x10,\n S };\n#define N __attribute__((x))\n")
    values, others = c_constants(src)
    assert values == {"A": 0o400, "B": 1 << 17, "C": 5 | 7 << 8, "H": -100, "I": 1 << 16, "P": 3,
                      "Q": 4, "R": 16, "S": 17}
    assert others == {"J", "N"}         # `%` is not read (never needed): reported, not guessed


def test_every_c_constant_is_known():
    names = set(all_c_constants())
    assert names - set(SHARED) - C_ONLY == set(), "unclassified C constants: add them to SHARED or C_ONLY"
    assert set(SHARED) - names == set(), "shared constants missing from the C sources"
    assert not C_ONLY & set(SHARED)


@pytest.mark.parametrize("name", sorted(SHARED))
def test_c_and_python_agree(name):
    assert all_c_constants()[name] == SHARED[name], f"{name}: C and Python differ"


def test_value_ranges():
    c = all_c_constants()
    assert MAX_KNOWN < native.MAXNR             # every number Python gives cf_spec/cf_port_call fits
    assert not (c["ST_INITIAL"] | c["ST_PROBE"]) & c["ST_PYTHON"]    # the C loop's own bits apart
    assert len({c[n] for n in SHARED if n.startswith("Q_")}) == 5
    assert native.PUB_SIZE >= 8 + native.PUB_KEY
    # the follow rules of every call that may get a native spec (runtime.syscall.enter.simple)
    rules = {c.paths[0].follow for c in table.CALLS
             if len(c.paths) == 1 and not c.forget and c.paths[0].follow != table.OPENAT2}
    assert rules <= {c[n] for n in ("FOLLOW", "NOFOLLOW", "OPEN_FLAGS", "AT_NOFOLLOW", "AT_FOLLOW",
                                    "INOTIFY", "FANOTIFY")}
    assert (loop.NR_CLONE, loop.NR_FORK, ffi._SYS_KCMP) == (NUMBERS["clone"], NUMBERS["fork"],
                                                            NUMBERS["kcmp"])


def test_loader_constants_agree():
    """runtime/execve/loader.c (carryon's loader) and loader.py: the call, the record it gets
    (header layout, flags), the system call numbers it uses; and the native loop's copy."""
    c, others = c_constants(Path(loader.SOURCE))
    assert not others
    assert (c["LOADER_CALL"], c["INFO_MAGIC"], c["INFO_IDS"], c["INFO_PLAIN"], c["INFO_SIZE"]) == (
        loader.NR, loader.MAGIC, loader.IDS, loader.PLAIN, loader.INFO_SIZE)
    assert NUMBERS["tuxcall"] == loader.NR          # ENOSYS natively: only the tracer answers it
    for name, v in c.items():
        if name.startswith("SYS_"):
            assert NUMBERS[name[4:]] == v, name
    assert (c["O_RDONLY"] | c["O_CLOEXEC"], c["AT_FDCWD"] & (1 << 64) - 1) == (
        loader.O_RDONLY_CLOEXEC, loader.AT_FDCWD)
    rec = loader.encode(b"/bin/x", b"x", b"/host/bin/x", b"/host/ld.so", (1, 2, 3, 4))
    words = [int.from_bytes(rec[i:i + 4], "little") for i in range(0, loader.HEADER, 4)]
    assert words[:6] == [loader.MAGIC, loader.IDS, 1, 2, 3, 4] and words[9] == len(rec)
    assert [rec[o:rec.index(b"\0", o)] for o in (*words[6:9], words[10])] == [
        b"/bin/x", b"x", b"/host/bin/x", b"/host/ld.so"]
    assert loader.path_offset(rec) == words[8]
    assert loader.plain(rec)[4] == loader.IDS | loader.PLAIN and loader.plain(rec)[8:] == rec[8:]
    assert len(loader.exec_path("/a/loader", 40)) >= 40 and loader.exec_path("/a/b", 2) == "/a/b"
    # the C struct: 11 u32 (checked by their number in the source)
    src = Path(loader.SOURCE).read_text()
    body = src[src.index("struct info {"):src.index("};", src.index("struct info {"))]
    assert body.count(",") + body.count(";") == loader.HEADER // 4


def test_path_cache_keys_of_the_path_handler():
    """runtime.syscall.enter writes the followed/not followed key bytes literally (its hot path)."""
    src = Path(enter.__file__).read_text()
    assert (f'b"\\0\\{native.KEY_FOLLOWED}" if follow else b"\\0\\{native.KEY_NOT_FOLLOWED}"'
            in src)


def test_action_bits_come_from_a_leaf_module():
    """The loop and the handlers take CHANGED/EXIT/SKIP from runtime.tracee.actions, which imports
    nothing: importing the loop does not import the extensions."""
    import ast
    import subprocess

    from runtime.tracee import actions
    tree = ast.parse(Path(actions.__file__).read_text())
    assert not [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert {actions.CHANGED, actions.EXIT, actions.SKIP} == {1, 2, 4}
    from runtime import extension
    assert (extension.CHANGED, extension.EXIT, extension.SKIP) == (actions.CHANGED, actions.EXIT,
                                                                   actions.SKIP)
    code = ("import sys; import runtime.tracee.loop, runtime.syscall.enter; "
            "print(sorted(m for m in sys.modules if m.startswith('runtime.extension')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
