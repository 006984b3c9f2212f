"""Ptrace emulation (runtime/extension/ptrace_emu.py): the guest's own strace, gdb and a nested
carryon work inside a run, on every engine, as root and as the unprivileged test user.

The image: ../shared/images' debian-python plus scripts/build-fixtures' tools layer (Debian's
strace and gdb with the libraries the base lacks, and /app/crasher, built with gcc -g)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tarfile

import pytest

from conftest import FIXTURES_BUILD
from engine_util import carryon_exec, native_as
from runtime.extension import ptrace_emu as pe


@pytest.fixture(scope="session")
def tools_rootfs(debian_rootfs, engine_tmp, project_fixtures):
    layer = FIXTURES_BUILD / "tools-layer.tar"
    if not layer.exists():
        pytest.skip(f"{layer} not built (scripts/build-fixtures: no Debian mirror?)")
    dest = engine_tmp / "tools"
    subprocess.run(["cp", "-a", str(debian_rootfs), str(dest)], check=True)
    with tarfile.open(layer) as tf:
        tf.extractall(dest)
    os.chmod(dest, 0o755)
    return dest


def test_strace_follows_a_shell_and_its_children(tools_rootfs, engine, user):
    p = carryon_exec(tools_rootfs, "strace", "-f", "sh", "-c", "ls /", engine=engine, user=user)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "app\nbin\n" in p.stdout                         # ls ran, and its output is the guest's
    err = p.stderr
    assert 'execve("/usr/bin/sh", ["sh", "-c", "ls /"]' in err or \
        'execve("/bin/sh", ["sh", "-c", "ls /"]' in err, err[:2000]
    assert '"ls", "/"], ' in err and "= 0" in err             # the child's execve, as the guest wrote it
    assert str(tools_rootfs) not in err                      # guest paths only, never the host's
    assert 'openat(AT_FDCWD, "/", ' in err                   # ls opening the guest's / ...
    assert "+++ exited with 0 +++" in err
    # a real result the guest gets: a missing file
    assert "ENOENT (No such file or directory)" in err


def test_strace_follows_forks_and_gives_the_exit_status(tools_rootfs, engine, user):
    p = carryon_exec(tools_rootfs, "strace", "-f", "-e", "trace=execve,exit_group", "sh", "-c",
                     "ls /app >/dev/null; /bin/true; exit 3", engine=engine, user=user)
    assert p.returncode == 3, p.stderr[-3000:]
    err = p.stderr
    assert err.count("+++ exited with 0 +++") >= 2, err    # the two children, reported as traced
    assert "+++ exited with 3 +++" in err
    assert '[pid ' in err and 'execve("/bin/true", ["/bin/true"]' in err, err


def test_strace_where_the_tracer_cannot_seize(tools_rootfs, engine, user):
    """Kernels without PTRACE_SEIZE: the guests are attached the classic way, and so are strace's
    (its PTRACE_SEIZE is refused as such a kernel refuses it)."""
    p = carryon_exec(tools_rootfs, "strace", "-f", "-e", "trace=execve", "sh", "-c",
                     "ls / >/dev/null; exit 4", engine=engine, user=user,
                     env={"CARRYON_TEST_NO_SEIZE": "1"})
    assert p.returncode == 4, p.stderr[-3000:]
    assert '"ls", "/"], ' in p.stderr and "+++ exited with 4 +++" in p.stderr, p.stderr


def test_gdb_backtrace_of_a_crash(tools_rootfs, engine, user):
    p = carryon_exec(tools_rootfs, "gdb", "-nx", "-batch", "-ex", "run", "-ex", "bt", "/app/crasher",
                     engine=engine, user=user)
    out = p.stdout
    assert "Program received signal SIGSEGV" in out, p.stdout + p.stderr[-3000:]
    assert "about to crash" in out
    bt = out[out.index("#0"):]
    assert "deref" in bt and "crash_here (n=1)" in bt and "main ()" in bt and "crasher.c:" in bt, out


def test_gdb_attaches_to_a_running_guest_and_detaches(tools_rootfs, engine, user):
    script = ('sleep 100 & p=$!; gdb -nx -batch -p $p -ex "print 1+1" -ex detach 2>&1; '
              'kill $p; wait $p; echo "sleep: $?"')
    p = carryon_exec(tools_rootfs, "sh", "-c", script, engine=engine, user=user)
    out = p.stdout
    assert "$1 = 2" in out and ") detached]" in out, out + p.stderr[-2000:]
    assert out.endswith("sleep: 143\n"), out    # it ran on after the detach, until killed


def test_nested_carryon_exec_runs_true(engine, user):
    inner = ["env", "-u", "CARRYON_ENGINE", "-u", "CARRYON_NATIVE",
             sys.executable, "-m", "packer.cli", "exec", "-v", "1", "-r", "/"]
    p = carryon_exec("/", *inner, "true", engine=engine, user=user, defaults=False)
    assert p.returncode == 0, p.stderr[-3000:]
    # the inner run's auto engine is refused PTRACE_O_TRACESECCOMP and takes plain ptrace
    if engine != "userns":      # (on userns the kernel's ptrace: the inner run takes what it allows)
        assert "carryon: engine: ptrace (" in p.stderr and "PTRACE_O_TRACESECCOMP" in p.stderr, p.stderr
    p = carryon_exec("/", *inner, "sh", "-c", "echo inner; exit 7", engine=engine, user=user,
                     defaults=False)
    assert (p.returncode, p.stdout) == (7, "inner\n"), p.stderr[-3000:]


def test_a_guests_ptrace_answers_are_the_kernels(tools_rootfs, engine, user):
    """TRACEME, waitid of a ptrace stop, SETOPTIONS, a syscall-entry stop and its registers, an
    exit event and its message, the exit: as the same program sees them natively."""
    import ast
    probe = os.path.join(os.path.dirname(__file__), "data", "ptrace_probe.py")
    native = native_as(user, ["/usr/bin/python3", probe])
    assert native.returncode == 0, native.stderr
    p = carryon_exec(tools_rootfs, "python3", "/probe/ptrace_probe.py", engine=engine, user=user,
                     opts=("-b", f"{os.path.dirname(probe)}:/probe"))
    assert p.returncode == 0, p.stderr[-3000:]
    got, want = ast.literal_eval(p.stdout), ast.literal_eval(native.stdout)
    if engine == "userns":                                # no tracer: the kernel's own ptrace
        assert got == want
    else:
        assert got[1] == ("seccomp-option", -1, 22)      # PTRACE_O_TRACESECCOMP: EINVAL
    assert got[:1] + got[2:] == want[:1] + want[2:]
    assert got[3][:3] == ("entry", "0x857f", 231)         # exit_group(7), TRACESYSGOOD


# ---- the kernel's encodings, checked against the kernel ------------------------------------------
def test_wait_statuses_are_the_kernels():
    assert pe.syscall_status(pe.O_TRACESYSGOOD) == 0x857F
    assert pe.syscall_status(0) == 0x057F
    st = pe.stop_status(signal.SIGTRAP, pe.EV_FORK)
    assert os.WIFSTOPPED(st) and os.WSTOPSIG(st) == signal.SIGTRAP and st >> 16 == pe.EV_FORK
    pid = os.fork()
    if pid == 0:
        os.kill(os.getpid(), signal.SIGSTOP)
        os._exit(5)
    _, st = os.waitpid(pid, os.WUNTRACED)
    assert st == pe.stop_status(signal.SIGSTOP)
    os.kill(pid, signal.SIGCONT)
    info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    _, st = os.waitpid(pid, 0)
    raw = pe.waitid_info(pid, info.si_uid, st)
    assert int.from_bytes(raw[0:4], "little") == info.si_signo == signal.SIGCHLD
    assert int.from_bytes(raw[8:12], "little") == info.si_code == pe.CLD_EXITED
    assert int.from_bytes(raw[16:20], "little") == pid
    assert int.from_bytes(raw[24:28], "little") == info.si_status == 5
    killed = pe.waitid_info(pid, 0, signal.SIGKILL)
    assert int.from_bytes(killed[8:12], "little") == pe.CLD_KILLED
    assert int.from_bytes(killed[24:28], "little") == signal.SIGKILL
