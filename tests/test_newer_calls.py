"""Guest calls newer than the node's kernel (runtime.syscall.newer): where the kernel lacks statx,
faccessat2, getrandom, prlimit64 or renameat2, the tracer answers them from older calls, and the guest sees the
same answers as on a kernel that has them; the calls with no emulation stay ENOSYS, as the kernel
gives it. Under scripts/kernel-jail --linux-2.6.32 (the plain ptrace engine: seccomp filters are
refused there), and with CARRYON_TEST_LACKING on every engine (the seccomp engine's path, which
no filter-based emulation reaches), as root and as the unprivileged test user."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, user_popen_kwargs
from engine_util import exec_cmd, exec_env, world_dir

JAIL = [str(REPO / "scripts" / "kernel-jail"), "--linux-2.6.32"]
ALL = "statx,faccessat2,getrandom,prlimit64,renameat2,fstatat-empty-path"


@pytest.fixture(scope="module")
def probe_dir(engine_tmp) -> Path:
    """/work in the guest: the static test program and a dangling symlink."""
    if shutil.which("gcc") is None:
        pytest.skip("no C compiler")
    work = world_dir(engine_tmp, "newer-calls")
    exe = work / "newer_calls"
    if not exe.exists():
        src = Path(__file__).parent / "data" / "newer_calls.c"
        p = subprocess.run(["gcc", "-O1", "-static", "-o", str(exe), str(src)], capture_output=True,
                           text=True)
        if p.returncode != 0:
            pytest.skip(f"cannot build a static program: {p.stderr.strip()[-200:]}")
        os.chmod(exe, 0o755)
        os.symlink("/nonexistent-newer-calls", work / "dangling")
    return work


def _run(rootfs, args, user: str, engine: str = "ptrace", jail: bool = False,
         env: dict | None = None, opts=()) -> str:
    cmd = (JAIL if jail else []) + exec_cmd(rootfs, args, opts)
    p = subprocess.run(cmd, capture_output=True, text=True, env=exec_env(engine, env), cwd="/tmp",
                       timeout=120, **user_popen_kwargs(user))
    assert p.returncode == 0, p.stderr
    return p.stdout


def _calls(rootfs, work: Path, user: str, **kw) -> tuple[list[str], dict[str, tuple[int, int]]]:
    """(the lines compared, {label: (result, errno)} of the X lines)."""
    out = _run(rootfs, ["/work/newer_calls", "/work"], user, opts=("-b", f"{work}:/work"), **kw)
    lines = out.splitlines()
    assert len(lines) > 50, out
    same = [ln for ln in lines if not ln.startswith("X ")]
    differ = {ln.split()[1]: (int(ln.split()[2]), int(ln.split()[3])) for ln in lines
              if ln.startswith("X ")}
    return same, differ


def test_emulated_under_2_6_32(debian_rootfs, probe_dir, user):
    native, native_x = _calls(debian_rootfs, probe_dir, user)
    assert native_x["pidfd_open"] == (0, 0)                 # this kernel has them
    old, old_x = _calls(debian_rootfs, probe_dir, user, jail=True)
    assert old == native
    assert any(ln.startswith("statx-file 0 0 mask=0x7ff") for ln in old)
    # no emulation: ENOSYS, as 2.6.32 answers
    for name in ("clone3", "close_range", "openat2", "pidfd_open", "memfd_create", "prlimit64-parent",
                 "renameat2-noreplace"):
        assert old_x[name] == (-1, errno.ENOSYS), name
    # another user's process: the kernel's permission check still answers
    if user != "root":
        assert old_x["prlimit64-init"] == (-1, errno.EPERM)


@pytest.mark.parametrize("engine", ["seccomp", "seccomp-python", "ptrace"])
def test_emulated_on_every_engine(debian_rootfs, probe_dir, engine, user):
    native, _ = _calls(debian_rootfs, probe_dir, user, engine=engine)
    forced, forced_x = _calls(debian_rootfs, probe_dir, user, engine=engine,
                              env={"CARRYON_TEST_LACKING": ALL})
    assert forced == native
    assert forced_x["prlimit64-parent"] == (-1, errno.ENOSYS)     # the emulation answered


def _stat_ls(rootfs, user: str, jail: bool) -> list[str]:
    script = ("stat /etc/passwd /usr/bin /etc/os-release /dev/null /usr/lib/python3.11/os.py; "
              "stat -L /etc/os-release; ls -l --time-style=full-iso /etc /usr/lib/python3.11/json; "
              "ls -lLd /bin /etc/os-release")
    out = _run(rootfs, ["sh", "-c", script], user, jail=jail)
    # the fields an old kernel does not know (btime), and access times (reads may change them)
    return [ln for ln in out.splitlines() if not ln.lstrip().startswith(("Birth:", "Access: 2"))]


def test_stat_and_ls_the_same_under_2_6_32(debian_rootfs, user):
    native = _stat_ls(debian_rootfs, user, False)
    assert len(native) > 40
    assert _stat_ls(debian_rootfs, user, True) == native


def test_what_is_probed():
    """Under the emulation (a seccomp filter: every call probed) the five calls are lacking; probed
    by `uname`'s release only, none is (this kernel is newer); without the emulation none is."""
    code = ("from runtime.syscall import newer; from runtime.tracee import ffi; "
            "print(sorted(newer.lacking(True)), sorted(newer.lacking(False)), "
            "ffi._prctl(21, 0, 0, 0, 0))")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    p = subprocess.run(JAIL + [sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["[302,", "316,", "318,", "332,", "439]", "[]", "2"]
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert p.stdout.split()[:2] == ["[]", "[]"]          # (a container may filter: not 0)


def test_filter_unchanged_unless_lacking():
    from runtime.engine import filter_program
    from runtime.syscall import seccomp
    from runtime.syscall.newer import GETRANDOM, PRLIMIT64
    assert filter_program([], True) == filter_program([], True, frozenset())
    plain = filter_program([], True)
    more = filter_program([], True, frozenset({GETRANDOM, PRLIMIT64}))
    for nr in (GETRANDOM, PRLIMIT64):
        assert seccomp.evaluate(plain, nr) == seccomp.RET_ALLOW
        assert seccomp.evaluate(more, nr) == seccomp.RET_TRACE


def test_statx_from_stat_matches_the_kernel(tmp_path):
    """The conversion against this kernel's own statx of the same file (the fields old kernels know)."""
    import ctypes
    import struct

    from runtime.syscall.newer import statx_from_stat
    libc = ctypes.CDLL(None, use_errno=True)
    f = tmp_path / "f"
    f.write_bytes(b"x" * 5000)
    st, sx = ctypes.create_string_buffer(144), ctypes.create_string_buffer(256)
    path = str(f).encode()
    assert libc.syscall(262, -100, path, st, 0) == 0                 # newfstatat
    assert libc.syscall(332, -100, path, 0, 0x7FF, sx) == 0          # statx, STATX_BASIC_STATS
    ours = statx_from_stat(st.raw)
    assert len(ours) == 256
    assert struct.unpack_from("<I", ours)[0] == 0x7FF
    # blksize .. mode, ino size blocks, atime, ctime/mtime, rdev and dev: as the kernel's
    for lo, hi in ((4, 8), (16, 30), (32, 56), (64, 76), (96, 108), (112, 124), (128, 144)):
        assert ours[lo:hi] == sx.raw[lo:hi], (lo, hi)


def test_memory_writes_without_proc_mem_writes(monkeypatch):
    """Before 2.6.39 /proc/PID/mem opens for writing but refuses the write (EINVAL): from then on
    tracee memory is written through process_vm_writev / PTRACE_POKEDATA (runtime.tracee.mem)."""
    import ctypes

    from runtime.tracee import mem
    refused = []

    def pwrite_2_6_32(fd, data, offset):
        refused.append(offset)
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(mem, "_no_mem_writes", False)

    class Self:
        pid = os.getpid()
        memfd = os.open("/proc/self/mem", os.O_RDWR)

    buf = ctypes.create_string_buffer(32)
    try:
        mem.write(Self, ctypes.addressof(buf), b"first", _pwrite=pwrite_2_6_32)
        mem.write(Self, ctypes.addressof(buf) + 8, b"second", _pwrite=pwrite_2_6_32)
    finally:
        os.close(Self.memfd)
    assert buf.raw[:5] == b"first" and buf.raw[8:14] == b"second"
    assert len(refused) == 1                    # chosen once


def test_copy_up_without_copy_file_range_nor_sendfile_to_a_file(tmp_path, monkeypatch):
    """The copy-on-write copy of a file on Linux 2.6.32: no copy_file_range (4.5), and sendfile
    refuses a file as its target (2.6.33): plain reads and writes."""
    from runtime.path import overlay

    def refused(code):
        def call(*args):
            raise OSError(code, os.strerror(code))
        return call

    monkeypatch.setattr(os, "copy_file_range", refused(errno.ENOSYS))
    monkeypatch.setattr(os, "sendfile", refused(errno.EINVAL))
    src = tmp_path / "src"
    src.write_bytes(os.urandom(3 << 20) + b"end")
    overlay._copy_file(str(src), str(tmp_path / "dst"), src.stat())
    assert (tmp_path / "dst").read_bytes() == src.read_bytes()
