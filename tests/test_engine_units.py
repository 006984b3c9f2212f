"""Unit tests of the tracer's pieces that need no tracee: seccomp filter, syscall table, `#!` and
ELF parsing, register layout, `carryon exec` option parsing."""

from __future__ import annotations

import errno
import os

import pytest

from runtime.errors import CarryonError
from runtime.execve import elf, shebang
from runtime.spec import RunSpec
from runtime.syscall import seccomp, table
from runtime.syscall.sysnums import MAX_KNOWN, NUMBERS
from runtime.tracee import ffi

N = NUMBERS
TRACE, ALLOW = seccomp.RET_TRACE, seccomp.RET_ALLOW


@pytest.fixture(scope="module")
def prog():
    from runtime.engine import filter_program
    return filter_program([])


def test_filter_traces_every_path_call_and_nothing_else(prog):
    from runtime.execve import loader
    for nr in range(MAX_KNOWN + 1):
        got = seccomp.evaluate(prog, nr)
        if nr in table.TRACED or (nr == loader.NR and loader.path() is not None) or nr == N["ptrace"]:
            # the loader's one call; ptrace: emulated for the guests
            assert got == TRACE, table.BY_NR[nr].name if nr in table.BY_NR else nr
        elif nr in table.REFUSED:
            assert got == seccomp.RET_ERRNO | table.REFUSED[nr], table.BY_NR[nr].name
        elif nr in table.TRACED_IF_ARG:
            assert got == ALLOW
        elif nr in table.FD_BYPASS:
            assert got == TRACE                 # flags 0: a path lookup
        else:
            assert got == ALLOW, nr


def test_filter_refuses_other_abis_and_unknown_numbers(prog):
    enosys = seccomp.RET_ERRNO | errno.ENOSYS
    assert seccomp.evaluate(prog, N["openat"], arch=0x40000003) == enosys      # i386
    assert seccomp.evaluate(prog, N["getpid"], arch=0x40000003) == enosys
    assert seccomp.evaluate(prog, 0x40000000 | N["openat"]) == enosys          # x32
    assert seccomp.evaluate(prog, MAX_KNOWN + 1) == enosys
    assert seccomp.evaluate(prog, 0xFFFFFFFF) == enosys
    assert seccomp.evaluate(prog, N["open_by_handle_at"]) == enosys
    assert seccomp.evaluate(prog, N["io_uring_setup"]) == enosys
    assert seccomp.evaluate(prog, N["mount"]) == seccomp.RET_ERRNO | errno.EPERM


def test_filter_sendto_only_with_an_address(prog):
    nr = N["sendto"]
    assert seccomp.evaluate(prog, nr, args=(3, 0x1000, 5, 0, 0, 0)) == ALLOW
    assert seccomp.evaluate(prog, nr, args=(3, 0x1000, 5, 0, 0x7FFF0000, 16)) == TRACE
    assert seccomp.evaluate(prog, nr, args=(3, 0x1000, 5, 0, 0x7F0000000000, 16)) == TRACE


def test_filter_lets_fstat_through(prog):
    nr = N["newfstatat"]
    assert seccomp.evaluate(prog, nr, args=(3, 0x1000, 0x2000, 0x1000, 0, 0)) == ALLOW   # fstat(3)
    assert seccomp.evaluate(prog, nr, args=(0xFFFFFF9C, 0x1000, 0x2000, 0x1000, 0, 0)) == TRACE  # AT_FDCWD
    assert seccomp.evaluate(prog, nr, args=(3, 0x1000, 0x2000, 0x1100, 0, 0)) == TRACE   # + NOFOLLOW
    assert seccomp.evaluate(prog, nr, args=(3, 0x1000, 0x2000, 0, 0, 0)) == TRACE
    # an extension hooking newfstatat (fake_id) makes every call stop
    from runtime.engine import filter_program

    class Ext:
        enter_calls = frozenset({nr})
    p = filter_program([Ext()])
    assert seccomp.evaluate(p, nr, args=(3, 0x1000, 0x2000, 0x1000, 0, 0)) == TRACE


def test_filter_with_extension_calls():
    p = seccomp.build(set(table.TRACED) | {N["getuid"]}, table.REFUSED)
    assert seccomp.evaluate(p, N["getuid"]) == TRACE
    assert seccomp.evaluate(p, N["getgid"]) == ALLOW


ISSUE_CALLS = """open openat openat2 creat stat lstat newfstatat statx access faccessat faccessat2 execve
execveat chdir mkdir mkdirat rmdir unlink unlinkat rename renameat renameat2 link linkat symlink
symlinkat chmod fchmodat fchmodat2 chown lchown fchownat truncate utime utimes futimesat utimensat
mknod mknodat statfs setxattr lsetxattr getxattr lgetxattr listxattr llistxattr removexattr
lremovexattr inotify_add_watch readlink readlinkat getcwd chroot bind connect""".split()


def test_table_covers_the_path_calls():
    names = {c.name for c in table.CALLS}
    assert set(ISSUE_CALLS) <= names
    for c in table.CALLS:
        assert c.name in NUMBERS
        for p in c.paths:
            assert 0 <= p.arg < 6 and (p.dirfd is None or 0 <= p.dirfd < 6)
            assert p.flags is None or 0 <= p.flags < 6
            if p.follow in (table.AT_NOFOLLOW, table.AT_FOLLOW, table.INOTIFY, table.FANOTIFY):
                assert p.flags is not None, c.name
        assert c.special or c.paths or c.refuse, c.name


@pytest.mark.parametrize("head,want", [
    (b"#!/bin/sh\n", (b"/bin/sh", None)),
    (b"#! /bin/sh -e\necho", (b"/bin/sh", b"-e")),
    (b"#!/usr/bin/env python3 -u  \n", (b"/usr/bin/env", b"python3 -u")),
    (b"#!\t/bin/bash\t-x\n", (b"/bin/bash", b"-x")),
    (b"#!/bin/sh", (b"/bin/sh", None)),
    # Linux >= 5.1 (fs/binfmt_script.c): 256 bytes looked at, the line never has the last one
    (b"#!/bin/echo " + b"a" * 190 + b"\n", (b"/bin/echo", b"a" * 190)),
    (b"#!/bin/echo " + b"a" * 300, (b"/bin/echo", b"a" * 243)),
    (b"#!/bin/echo " + b"a" * 242 + b"\n", (b"/bin/echo", b"a" * 242)),
    (b"#!" + b" " * 244 + b"/bin/echo x", (b"/bin/echo", None)),     # the name ends on the last byte
    (b"#!" + b" " * 244 + b"/bin/echo\t\n", (b"/bin/echo", None)),
    (b"#!/bin/echo\0junk\n", (b"/bin/echo", None)),                 # a NUL ends the name: no argument
    (b"#!/bin/echo a\0b\n", (b"/bin/echo", b"a")),                  # ... and the argument
    (b"#!/bin/echo \0b\n", (b"/bin/echo", b"")),
])
def test_shebang_parse(head, want):
    assert shebang.parse(head) == want


@pytest.mark.parametrize("head,err", [
    (b"#!   \n", errno.ENOEXEC), (b"#!", errno.EACCES), (b"#!\0x\n", errno.EACCES),
    (b"#!" + b" " * 245 + b"/bin/echo x", errno.ENOEXEC),              # the name may be cut: refused
    (b"#!" + b" " * 300, errno.ENOEXEC),
])
def test_shebang_refused(head, err):
    with pytest.raises(OSError) as e:
        shebang.parse(head)
    assert e.value.errno == err


def _interp(path: str):
    fd = os.open(path, os.O_RDONLY)
    try:
        return elf.interpreter(fd, os.pread(fd, 256, 0))
    finally:
        os.close(fd)


def test_elf_interpreter_of_a_dynamic_program():
    assert _interp("/bin/ls") == "/lib64/ld-linux-x86-64.so.2"


def test_elf_static_program(busybox_rootfs):
    assert _interp(str(busybox_rootfs / "bin" / "busybox")) is None


def test_loader_argv0_support(tmp_path, busybox_rootfs):
    """glibc >= 2.33's loader has --argv0 (found in .rodata); a file without section headers is
    searched whole; a program without the option string says no."""
    ldso = os.path.realpath("/lib64/ld-linux-x86-64.so.2")
    fd = os.open(ldso, os.O_RDONLY)
    try:
        assert elf._rodata(fd) is not None
    finally:
        os.close(fd)
    assert elf.loader_has_argv0(ldso, os.stat(ldso))
    bare = tmp_path / "bare"
    bare.write_bytes(b"\x7fELF\x02\x01" + bytes(58) + b"usage: --argv0 STRING")   # e_shnum = 0
    assert elf.loader_has_argv0(str(bare), os.stat(bare))
    bb = str(busybox_rootfs / "bin" / "busybox")
    assert not elf.loader_has_argv0(bb, os.stat(bb))


def _speculation(status: str) -> list[str]:
    return [line for line in status.splitlines() if line.startswith("Speculation")]


def test_seccomp_filter_keeps_speculation_settings():
    """The tracer's filter is installed with SECCOMP_FILTER_FLAG_SPEC_ALLOW: on kernels whose
    mitigations default to "seccomp", a filter without it would change these lines for the guest."""
    with open("/proc/self/status") as f:
        mine = _speculation(f.read())
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            ffi.install_seccomp([(seccomp.RET_K, 0, 0, seccomp.RET_ALLOW)])
            with open("/proc/self/status") as f:
                status = f.read()
            os.write(w, "\n".join(_speculation(status) + ["Seccomp_filters:" + str(
                "Seccomp_filters:\t1" in status)]).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    out = os.read(r, 4096).decode().splitlines()
    os.close(r)
    assert os.waitpid(pid, 0)[1] == 0
    assert out[-1] == "Seccomp_filters:True"
    assert out[:-1] == mine


def test_elf_refuses_garbage(tmp_path):
    f = tmp_path / "x"
    f.write_bytes(b"\x7fELF\x01\x01" + bytes(100))          # 32-bit
    with pytest.raises(OSError) as e:
        _interp(str(f))
    assert e.value.errno == errno.ENOEXEC


def test_register_layout_matches_python_ptrace():
    from ptrace.binding.linux_struct import user_regs_struct
    assert tuple(n for n, _ in user_regs_struct._fields_) == ffi.REG_NAMES
    assert ffi.ARG == tuple(ffi.REG_NAMES.index(n) for n in ("rdi", "rsi", "rdx", "r10", "r8", "r9"))


# ---- carryon exec option parsing --------------------------------------------------------------
def test_cli_parse_proot_options(tmp_path):
    from runtime.cli_exec import parse
    (tmp_path / "root").mkdir()
    spec = parse(["-R", str(tmp_path / "root"), "-b", "/tmp:/host-tmp:ro", "--bind=/etc", "-w", "/x",
                  "-0", "-v", "2", "--kill-on-exit", "-k", "3.10", "--", "ls", "-l"])
    assert spec.argv == ["ls", "-l"]
    assert spec.uid == 0 and spec.gid == 0 and spec.cwd == "/x" and spec.verbose == 2
    assert spec.wait_all is False
    guests = [(b.host, b.guest, b.readonly, b.optional) for b in spec.binds]
    assert ("/dev", "/dev", False, True) in guests and ("/proc", "/proc", False, True) in guests
    assert ("/tmp", "/host-tmp", True, False) in guests and ("/etc", "/etc", False, False) in guests
    spec = parse(["--rootfs=" + str(tmp_path / "root"), "--change-id=1000:100", "id"])
    assert (spec.uid, spec.gid, spec.binds, spec.argv, spec.wait_all) == (1000, 100, [], ["id"], True)


def test_cli_parse_proot_defaults(tmp_path, monkeypatch):
    """PRoot's defaults: root /, the caller's directory as cwd (a relative -w joined to it), `-b PATH`
    at PATH made absolute (a relative guest path too), the last of -r/-R/-b X:/ is the root."""
    from runtime.cli_exec import parse
    here = os.path.realpath(tmp_path)
    for d in ("a", "b", "sub"):
        (tmp_path / d).mkdir()
    monkeypatch.chdir(tmp_path)
    spec = parse([])
    assert isinstance(spec, RunSpec)
    assert (spec.rootfs, spec.argv, spec.cwd, spec.cwd_optional, spec.binds, spec.meta_path) == \
        ("/", ["/bin/sh"], here, True, [], None)
    spec = parse(["-w", "sub", "-b", ".", "-b", "sub:mnt/", "-b", "a:/x//y/", "true"])
    assert (spec.rootfs, spec.cwd, spec.cwd_optional) == ("/", f"{here}/sub", False)
    assert [(b.host, b.guest) for b in spec.binds] == [
        (here, here), (f"{here}/sub", f"{here}/mnt"), (f"{here}/a", "/x/y")]
    roots = {("-r", "a", "-r", "b"): "b", ("-r", "a", "-b", "b:/"): "b", ("-b", "b:/", "-r", "a"): "a",
             ("-b", "a://", "-R", "b", "-b", "a:/."): "a", ("-b", "a:/", "-b", "b:/", "-b", "sub"): "b"}
    for argv, root in roots.items():
        spec = parse(list(argv))
        assert isinstance(spec, RunSpec)
        assert spec.rootfs == f"{here}/{root}", argv
        assert [b.guest for b in spec.binds if not b.optional] == ([f"{here}/sub"] if "sub" in argv else [])
    spec = parse(["-b", "a://", "-R", "b", "-b", "a:/."])
    assert isinstance(spec, RunSpec) and "/proc" in [b.guest for b in spec.binds]


@pytest.mark.parametrize("argv", [["--bogus"], ["-r"], ["-r", "/nonexistent-rootfs"],
                                  ["-r", "/", "-b", "/nonexistent-src"], ["-r", "/", "-i", "x:y"],
                                  ["-b", "/nonexistent-src:/"], ["-b", "/etc/passwd:/"]])
def test_cli_parse_errors(argv):
    from runtime.cli_exec import parse
    with pytest.raises(CarryonError):
        parse(argv)


def test_describe_finds_the_seccomp_engine(monkeypatch):
    from runtime import engine
    monkeypatch.setenv("CARRYON_ENGINE", "ptrace")      # the engine never reads it
    monkeypatch.setenv("CARRYON_TEST_NO_USERNS", "1")
    why = "userns: not usable (user namespaces refused (CARRYON_TEST_NO_USERNS))"
    assert engine.describe() == f"seccomp (auto; {why}; seccomp: usable; ptrace: usable)"  # Linux >= 3.5
    assert engine.describe("ptrace").startswith("ptrace (ptrace; ")
    assert engine.describe("bogus").startswith("none (unknown engine")
    assert [e.describe() for e in engine.LADDER] == [why, "seccomp: usable", "ptrace: usable"]
    monkeypatch.delenv("CARRYON_TEST_NO_USERNS")
    if engine.USERNS.eligible() is None:
        assert engine.describe().startswith("userns (auto; userns: usable; ")


def test_engine_choice(monkeypatch):
    """One place decides: a named engine, or for auto the eligible ones in ladder order."""
    from runtime import engine
    monkeypatch.setenv("CARRYON_ENGINE", "seccomp")     # the engine never reads it
    assert engine.NAMES == ("auto", "userns", "seccomp", "ptrace")
    assert list(engine.select("ptrace")) == [engine.PTRACE]
    assert list(engine.select("seccomp")) == [engine.SECCOMP]
    userns = [engine.USERNS] if engine.USERNS.eligible() is None else []
    assert list(engine.select("auto")) == userns + [engine.SECCOMP, engine.PTRACE]
    with pytest.raises(CarryonError, match="unknown engine"):
        engine.select("bogus")
    with pytest.raises(CarryonError, match="unknown engine"):
        engine.run(RunSpec(rootfs="/", argv=["x"], engine="bogus"))
    # an engine that is not eligible here is skipped by auto and refused by name
    from runtime import userns as userns_module
    monkeypatch.setattr(engine, "_release", lambda: (3, 2))
    monkeypatch.setattr(userns_module, "_release", lambda: (3, 2))
    assert list(engine.select("auto")) == [engine.PTRACE]
    with pytest.raises(CarryonError, match="seccomp engine cannot run here: seccomp filters need"):
        engine.select("seccomp")


def test_auto_tries_the_next_engine_when_one_is_refused(monkeypatch):
    from runtime import engine
    calls = []

    def refused(spec):
        calls.append("first")
        raise engine.Refused("engine failure: refused")

    def second(spec):
        calls.append("second")
        return 7

    monkeypatch.setattr(engine, "LADDER", (engine.Engine("a", lambda: None, refused, str),
                                           engine.Engine("b", lambda: None, second, str)))
    assert engine.run(RunSpec(rootfs="/", argv=["x"], engine="auto")) == 7
    assert calls == ["first", "second"]
    with pytest.raises(engine.Refused):                 # named: no fallback
        engine.run(RunSpec(rootfs="/", argv=["x"], engine="a"))
    monkeypatch.setattr(engine, "LADDER", (engine.Engine("a", lambda: "no", second, str),))
    with pytest.raises(CarryonError, match="no engine can run here: a: no"):
        engine.run(RunSpec(rootfs="/", argv=["x"], engine="auto"))
    assert calls == ["first", "second", "first"]


def test_cli_exec_reads_carryon_engine(monkeypatch, tmp_path):
    from runtime.cli_exec import parse
    monkeypatch.setenv("CARRYON_ENGINE", "ptrace")
    assert parse(["-r", str(tmp_path), "true"]).engine == "ptrace"
    monkeypatch.delenv("CARRYON_ENGINE")
    assert parse(["-r", str(tmp_path), "true"]).engine == "auto"


class _Self:
    """This process as a 'tracee' for runtime.tracee.mem (pread or process_vm_readv on itself)."""

    def __init__(self, memfd: int) -> None:
        self.pid = os.getpid()
        self.memfd = memfd


@pytest.mark.parametrize("use_memfd", [True, False], ids=["proc-mem", "process_vm"])
@pytest.mark.parametrize("count", [0, 1, 15, 16, 17, 600])
def test_read_words_and_strings(use_memfd, count):
    """argv-style arrays (short, exactly the first read, crossing pages) and C strings come back
    the same through /proc/PID/mem and process_vm_readv."""
    import ctypes

    from runtime.tracee import mem
    page = 4096
    raw = ctypes.create_string_buffer(4 * page)     # room for 601 pointers after any alignment
    base = (ctypes.addressof(raw) + page - 1) & ~(page - 1)
    start = base + page - 8 * 5                # 5 pointers before a page boundary
    values = [0x1000 + i for i in range(count)] + [0]
    ctypes.memmove(start, b"".join(v.to_bytes(8, "little") for v in values), 8 * len(values))
    fd = os.open("/proc/self/mem", os.O_RDWR) if use_memfd else -1
    try:
        t = _Self(fd)
        assert mem.read_words(t, start) == values[:-1]
        with pytest.raises(OSError) as e:
            mem.read_words(t, start, max_words=count - 1) if count > 1 else mem.read_words(t, 8)
        assert e.value.errno in (errno.E2BIG, errno.EFAULT)
        text = b"/usr/lib/x86_64-linux-gnu/libc.so.6"
        ctypes.memmove(base + page - 10, text + b"\0", len(text) + 1)   # across the boundary
        assert mem.read_cstring(t, base + page - 10) == text
    finally:
        if fd >= 0:
            os.close(fd)


def test_settling_counts_a_forget_call_until_its_thread_stops_again(tmp_path):
    """A thread's unlink/rename/symlink... keeps the caches from growing until its next stop or its
    end: Tracee.settled() (the loop calls it then) and close() give the count back."""
    from runtime.path.binding import Mapper
    from runtime.tracee.state import Tracee
    (tmp_path / "etc").mkdir()
    top = Mapper(str(tmp_path), [], cache_dirs=True)
    inner = Mapper(str(tmp_path), [], cache_dirs=True)
    t = Tracee(1, top)
    t.settle = (inner, top)
    for m in t.settle:
        m.settling += 1
    top.to_host("/etc/x", "/", True)
    assert not top.dircache                 # nothing added meanwhile
    t.settled()
    assert t.settle is None and top.settling == inner.settling == 0
    top.to_host("/etc/x", "/", True)
    assert "/etc" in top.dircache
    t.settle = (top,)
    top.settling += 1
    t.close()
    assert top.settling == 0 and not top.dircache


def test_userns_eligibility_for_a_run(tmp_path, monkeypatch):
    """The userns rung says why it is not for a run (cheap checks only), and `select` skips it
    for auto / refuses it by name."""
    import json

    from runtime import engine, userns
    from runtime.spec import Bind
    monkeypatch.setattr(userns, "eligible", lambda: None)
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    assert userns.eligible_for(RunSpec(rootfs=str(rootfs), argv=["x"])) is None
    state = tmp_path / "state"
    state.mkdir()
    (state / "overlay.log").write_text("I key\n")          # the ptrace rungs' format
    spec = RunSpec(rootfs=str(rootfs), argv=["x"], overlay=str(state), overlay_ident="key")
    assert "made by the ptrace engines" in userns.eligible_for(spec)
    assert engine.SECCOMP in list(engine.select("auto", spec))
    assert engine.USERNS not in list(engine.select("auto", spec))
    with pytest.raises(CarryonError, match="userns engine cannot run here: the state directory"):
        engine.select("userns", spec)
    # a point that would be made inside another bind's host directory
    host = tmp_path / "host"
    host.mkdir()
    spec = RunSpec(rootfs=str(rootfs), argv=["x"], binds=[Bind(str(host), "/h"), Bind(str(host), "/h/new")])
    assert "/h/new" in userns.eligible_for(spec)
    (host / "new").mkdir()
    assert userns.eligible_for(spec) is None
    # a fake identity (a fake root too) over files recorded as another owner's: not eligible (the
    # extraction never applies owners: one mapped id shows them all as the guest's), unless every
    # ptrace rung refused (last_resort); the metadata is compact JSON, as the extraction writes it
    def write_meta(entries):
        meta.write_text(json.dumps({"entries": entries}, separators=(",", ":")))
    meta = tmp_path / "rootfs.carryon-meta.json"
    write_meta({"/etc": {"uid": 0, "gid": 0}, "/etc/shadow": {"uid": 0, "gid": 42}})
    spec = RunSpec(rootfs=str(rootfs), argv=["x"], uid=1000, gid=1000, meta_path=str(meta))
    root_spec = RunSpec(rootfs=str(rootfs), argv=["x"], uid=0, gid=0, meta_path=str(meta))
    if os.geteuid() == 0:       # root maps every id to itself: the files show as root's (0:0)
        assert "the image records gid 42 for /etc/shadow" in userns.eligible_for(spec)
    else:
        assert "the image records owner 0:0 for /etc" in userns.eligible_for(spec)
    assert "the image records gid 42 for /etc/shadow" in userns.eligible_for(root_spec)
    assert "gid 42 for /etc/shadow" in userns.last_resort(root_spec)
    write_meta({"/etc": {"uid": 0, "gid": 0}, "/etc/x": {"uid": 0, "gid": 0}})
    assert userns.eligible_for(root_spec) is None
    meta.write_text(json.dumps({"entries": {"/etc/shadow": {"uid": 0, "gid": 42}}}))    # not compact
    assert "owner 0:42 for /etc/shadow" in userns.eligible_for(root_spec)


def test_userns_mount_targets_stay_in_the_root(tmp_path):
    """Bind targets are resolved inside the new root: an absolute symlink restarts there, `..`
    stops there; missing parts are made only when asked."""
    from runtime import userns
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    os.symlink("/etc", root / "abs")
    os.symlink("../../../../etc", root / "up")
    os.symlink(str(tmp_path / "outside"), root / "out")
    assert userns._resolve(str(root), "/abs/x") is None
    assert userns._resolve(str(root), "/up") == str(root / "etc")
    assert userns._resolve(str(root), "/out/f") is None                 # never the host's
    assert userns._resolve(str(root), "/out/f", "file") == str(root / tmp_path.relative_to("/") / "outside" / "f")
    assert not (tmp_path / "outside").exists()
    assert userns._resolve(str(root), "/abs/d/e", "dir") == str(root / "etc" / "d" / "e")


def test_userns_filters_stop_only_the_socket_calls():
    """With ports, the userns rung's filter (ptrace, or user notification where ptrace is refused)
    stops the port logic's socket calls and nothing else: no path call, no refusal."""
    from runtime import userns, userns_notify
    from runtime.extension.portmap import PortMap
    from runtime.spec import PortMapping
    from runtime.syscall import seccomp
    from runtime.syscall.sysnums import NUMBERS as N
    pm = PortMap(RunSpec(rootfs="/", argv=["x"], port_map=[PortMapping(80, 8080)]))
    if_arg = dict(pm.enter_calls_if_arg)
    prog = userns.filter_program({nr for nr in pm.enter_calls if nr not in if_arg}, if_arg)
    notif = userns_notify.rules()
    for name in ("open", "openat", "stat", "newfstatat", "execve", "read", "write", "unlink", "chown",
                 "mount", "uname", "getuid"):
        assert seccomp.evaluate(prog, N[name]) == seccomp.RET_ALLOW, name
        assert seccomp.evaluate(notif, N[name]) == seccomp.RET_ALLOW, name
    for name in ("bind", "connect", "getsockname", "getpeername", "sendmsg"):
        assert seccomp.evaluate(prog, N[name]) == seccomp.RET_TRACE, name
        assert seccomp.evaluate(notif, N[name]) == userns_notify.RET_USER_NOTIF, name
    assert seccomp.evaluate(prog, N["sendto"]) == seccomp.RET_ALLOW           # send(): no address
    assert seccomp.evaluate(prog, N["sendto"], args=(3, 1, 1, 0, 0x1000, 16)) == seccomp.RET_TRACE
    assert seccomp.evaluate(notif, N["sendto"], args=(3, 1, 1, 0, 0x1000, 16)) == userns_notify.RET_USER_NOTIF


def test_userns_orphan_hang_up_is_free_when_no_guest_is_left(monkeypatch):
    """After the main guest ended, the userns rung hangs up a stopped orphaned group (the kernel's
    part) only when some guest is left: with no child at all there is no /proc walk (it costs
    every run ~1-5 ms). Checked in a forked child, which has no children of its own."""
    from runtime import userns
    from runtime.tracee import loop

    def walk():
        raise AssertionError("orphaned_group called")

    monkeypatch.setattr(loop, "orphaned_group", walk)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            userns._hang_up_orphans()           # no children: must return at once
            code = 0
            sleeper = os.fork()                 # one child: the walk is done
            if sleeper == 0:
                os.execv("/bin/sleep", ["sleep", "5"])
            try:
                userns._hang_up_orphans()
                code = 3
            except AssertionError:
                code = 0
            os.kill(sleeper, 9)
            os.waitpid(sleeper, 0)
        except BaseException:
            code = 2
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
