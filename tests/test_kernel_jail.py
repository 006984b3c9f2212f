"""scripts/kernel-jail: the test tool that makes this kernel refuse what other nodes refuse (ptrace,
user namespaces) or answer like Linux 2.6.32's interface. Checked call by call here, so that tests
of carryon's fallbacks built on it test what they claim; and carryon's answer on a node that refuses
ptrace: one line, exit 125 (the engine ladder will add a rung that needs no ptrace)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO, run_carryon

JAIL = str(REPO / "scripts" / "kernel-jail")

PROBE = r"""
import ctypes, os, signal
libc = ctypes.CDLL(None, use_errno=True)
def call(*a):
    r = libc.syscall(*[ctypes.c_long(x) for x in a])
    return 0 if r >= 0 else ctypes.get_errno()
out = {}
out["recvmmsg"] = call(299, -1, 0, 0, 0, 0)            # 2.6.33: ENOSYS under 2.6.32
out["process_vm_readv"] = call(310, os.getpid(), 0, 0, 0, 0, 0)
out["getrandom"] = call(318, 0, 0, 0)
out["perf_event_open"] = call(298, 0, 0, -1, -1, 0)     # 2.6.31: the kernel's own answer (EFAULT)
out["no_new_privs"] = 0 if libc.prctl(39, 0, 0, 0, 0) >= 0 else ctypes.get_errno()
out["unshare_user"] = call(272, 0x10000000)
pid = os.fork()
if pid == 0:
    libc.ptrace(0, 0, 0, 0)                              # PTRACE_TRACEME
    os.kill(os.getpid(), signal.SIGSTOP)
    os._exit(0)
os.waitpid(pid, os.WUNTRACED)
out["seize"] = call(101, 0x4206, os.getppid(), 0, 0)
out["getregset"] = call(101, 0x4204, pid, 1, 0)
out["setoptions_exitkill"] = call(101, 0x4200, pid, 0, 0x100000)
out["setoptions_seccomp"] = call(101, 0x4200, pid, 0, 0x80)
out["setoptions_2_6"] = call(101, 0x4200, pid, 0, 0x1 | 0x2 | 0x4 | 0x8 | 0x10)   # SYSGOOD, FORK...
os.kill(pid, signal.SIGKILL)
os.waitpid(pid, 0)
print(" ".join(f"{k}={v}" for k, v in out.items()))
"""


def _probe(*flags: str) -> dict[str, int]:
    p = subprocess.run([JAIL, *flags, sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return {k: int(v) for k, v in (kv.split("=") for kv in p.stdout.split())}


def test_linux_2_6_32_interface():
    import errno
    got = _probe("--linux-2.6.32")
    assert got["recvmmsg"] == got["process_vm_readv"] == got["getrandom"] == errno.ENOSYS
    assert got["perf_event_open"] not in (0, errno.ENOSYS)      # a 2.6.32 call: the kernel answers
    assert got["no_new_privs"] == errno.EINVAL
    assert got["unshare_user"] == errno.EPERM
    assert got["seize"] == got["getregset"] == errno.EIO
    assert got["setoptions_exitkill"] == got["setoptions_seccomp"] == errno.EINVAL
    assert got["setoptions_2_6"] == 0


def test_without_the_jail_the_probe_sees_todays_kernel():
    import errno
    p = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60)
    got = {k: int(v) for k, v in (kv.split("=") for kv in p.stdout.split())}
    assert got["getrandom"] == 0 and got["no_new_privs"] == 0 and got["setoptions_exitkill"] == 0
    assert got["recvmmsg"] != errno.ENOSYS


def test_no_ptrace_and_no_userns():
    import errno
    got = _probe("--no-ptrace")
    assert got["seize"] == got["getregset"] == errno.EPERM and got["getrandom"] == 0
    got = _probe("--no-userns")
    assert got["unshare_user"] == errno.EPERM and got["seize"] != errno.EPERM


def _exec_in_jail(flags: list[str], rootfs, *args: str, env: dict | None = None):
    return subprocess.run([JAIL, *flags, sys.executable, "-m", "packer.cli", "exec", "-r", str(rootfs),
                           *args], capture_output=True, text=True, timeout=120, cwd="/",
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", **(env or {})})


def test_a_node_that_refuses_ptrace_and_userns_gets_one_line_and_125(busybox_rootfs):
    p = _exec_in_jail(["--no-ptrace", "--no-userns"], busybox_rootfs, "/bin/true")
    assert p.returncode == 125 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "ptrace" in p.stderr


def test_userns_refused_is_a_refusal_and_the_ptrace_rungs_run(busybox_rootfs):
    """With user namespaces refused, the userns rung raises Refused before the guest ran (named:
    one line, 125; auto: the seccomp rung runs it, and says so under -v)."""
    p = _exec_in_jail(["--no-userns"], busybox_rootfs, "/bin/echo", "hi", env={"CARRYON_ENGINE": "userns"})
    assert p.returncode == 125 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "user namespace refused" in p.stderr
    p = _exec_in_jail(["--no-userns"], busybox_rootfs, "-v", "1", "/bin/echo", "hi")
    assert (p.returncode, p.stdout) == (0, "hi\n"), p.stderr
    assert "engine: seccomp (userns: refused: " in p.stderr and "engine seccomp" in p.stderr, p.stderr


def test_ptrace_refused_the_userns_rung_runs_the_archive(shared_images, engine_tmp):
    """The acceptance of issue 18: with ptrace refused, debian-python's archive runs fib.py 20
    and serves --carryon-publish on the userns rung."""
    import os
    import socket
    import time
    import urllib.request

    from conftest import ENGINE_VARIANTS, run_carryon as pack
    if "userns" not in ENGINE_VARIANTS:
        pytest.skip("user namespaces are refused here")
    app = engine_tmp / "jail-debian-python.run"
    if not app.exists():
        pack("pack", str(shared_images / "debian-python" / "debian-python.oci.tar"), "-o", str(app),
             check=True)
        os.chmod(app, 0o755)
    env = {"HOME": str(engine_tmp / "jail-home"), "PATH": "/usr/bin:/bin"}
    p = subprocess.run([JAIL, "--no-ptrace", str(app), "--carryon-verbose", "fib.py", "20"],
                       capture_output=True, text=True, timeout=300, env=env, cwd="/")
    assert (p.returncode, p.stdout) == (0, "fib(20) = 6765\n"), p.stderr
    assert "engine userns" in p.stderr, p.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = subprocess.Popen([JAIL, "--no-ptrace", str(app), "--carryon-publish", f"127.0.0.1:{port}:8000",
                            "/app/serve.py", "8000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, env=env, cwd="/")
    try:
        body = ""
        for _ in range(600):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                    body = r.read().decode()
                break
            except OSError:
                assert srv.poll() is None, srv.communicate()
                time.sleep(0.1)
        assert "hello from debian-python fixture" in body
    finally:
        srv.terminate()
        srv.wait(timeout=60)


@pytest.mark.parametrize("bad", [[], ["--frob", "true"], ["--no-ptrace"]])
def test_usage(bad):
    p = subprocess.run([JAIL, *bad], capture_output=True, text=True)
    assert p.returncode == 125 and p.stderr.startswith("kernel-jail:")
    assert run_carryon("--version").returncode == 0


def test_at_flags_2_6_32():
    """--at-flags-2.6.32: the *at flags added after 2.6.32 fail with EINVAL, the others work."""
    import errno
    code = r"""
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
st = ctypes.create_string_buffer(144)
def call(*a):
    r = libc.syscall(*[x if isinstance(x, (bytes, ctypes.Array)) else ctypes.c_long(x) for x in a])
    return 0 if r >= 0 else ctypes.get_errno()
print(call(262, -100, b"/", st, 0), call(262, -100, b"/", st, 0x100), call(262, -100, b"", st, 0x1000),
      call(262, -100, b"/", st, 0x800), call(260, -100, b"/nonexistent", -1, -1, 0x1000),
      call(265, -100, b"/nonexistent", -100, b"/nonexistent2", 0x400),
      call(265, -100, b"", -100, b"/nonexistent2", 0x1000))
"""
    p = subprocess.run([sys.executable, JAIL, "--at-flags-2.6.32", "/usr/bin/busybox", "true"],
                       capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        pytest.skip("no static busybox")
    p = subprocess.run([JAIL, "--at-flags-2.6.32", sys.executable, "-c", code], capture_output=True,
                       text=True, timeout=60)
    # a dynamically linked glibc >= 2.33 program cannot start there (its loader's fstat)
    assert p.returncode == 127 and "cannot stat shared object" in p.stderr, p.stderr
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    ok = [int(x) for x in p.stdout.split()]
    assert ok[:4] == [0, 0, 0, 0] and ok[4] == ok[5] == errno.ENOENT
    # the same calls through the helper the launcher uses there: its rewriting is what the runtime sees
    import tempfile

    from packer import embed
    with tempfile.TemporaryDirectory() as d:
        helper = embed.build_oldkernel(d)       # as the runtime build makes it (freestanding)
        if helper is None:
            pytest.skip("no C compiler")
        p = subprocess.run([JAIL, "--at-flags-2.6.32", helper, sys.executable, "-c", code],
                           capture_output=True, text=True, timeout=60)
    got = [int(x) for x in p.stdout.split()]
    # plain and NOFOLLOW: as before; "" + AT_EMPTY_PATH of AT_FDCWD: the helper drops the flag
    # (ENOENT, as 2.6.32 without it); AT_NO_AUTOMOUNT dropped: works; fchownat and linkat with
    # AT_EMPTY_PATH: EINVAL, as on 2.6.32 (nobody uses them at start-up); linkat's FOLLOW: allowed
    assert got == [0, 0, errno.ENOENT, 0, errno.EINVAL, errno.ENOENT, errno.EINVAL], p.stderr
