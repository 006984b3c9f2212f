"""Archives where the kernel offers only Linux 2.6.32's interface (scripts/kernel-jail --linux-2.6.32:
no seccomp filters, no PTRACE_SEIZE/EXITKILL, no process_vm_readv/writev, ENOSYS for every later
call), as root and as the unprivileged test user; and no guest outliving a SIGKILLed tracer, with
and without the emulation (before 3.8 there is no PTRACE_O_EXITKILL: a watchdog kills them)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from archive_run_support import archive, guest_pids, workdir
from conftest import REPO, user_popen_kwargs

JAIL = str(REPO / "scripts" / "kernel-jail")
OLD = [JAIL, "--linux-2.6.32"]


def _home(user: str) -> str:
    d = workdir() / f"home-{user}-{os.getpid()}-{time.monotonic_ns()}"
    d.mkdir()
    if user not in ("root", "self"):
        import shutil
        shutil.chown(d, user, user)
    return str(d)


def _run(cmd: list[str], user: str, home: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "HOME": home, "LANG": "C.UTF-8"}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd="/",
                          **user_popen_kwargs(user))


def test_debian_python_archive_under_2_6_32(user):
    py = str(archive("py"))
    home = _home(user)
    p = _run(OLD + [py, "/app/fib.py", "20"], user, home)        # cold start under the emulation
    assert (p.returncode, p.stdout) == (0, "fib(20) = 6765\n"), p.stderr
    p = _run(OLD + [py, "-c", "import subprocess, sys; print(subprocess.run(['/bin/echo', 'sub'], "
                    "capture_output=True, text=True).stdout.strip()); sys.exit(7)"], user, home)
    assert (p.returncode, p.stdout) == (7, "sub\n"), p.stderr
    server = ("import socket; s = socket.socket(); s.bind(('127.0.0.1', 8000)); s.listen(); "
              "c = socket.socket(); c.connect(('127.0.0.1', 8000)); a, _ = s.accept(); c.send(b'OK!'); "
              "print(a.recv(3).decode())")
    port = 20000 + os.getpid() % 20000
    p = _run(OLD + [py, f"--carryon-publish=127.0.0.1:{port}:8000", "-c", server], user, home)
    assert (p.returncode, p.stdout) == (0, "OK!\n"), p.stderr


def test_busybox_archive_under_2_6_32(user):
    bb = str(archive("bb"))
    p = _run(OLD + [bb, "sh", "-c", "echo a b c | wc -w"], user, _home(user))
    assert (p.returncode, p.stdout.strip()) == (0, "3"), p.stderr


@pytest.mark.parametrize("old", [False, True], ids=["today", "2.6.32"])
def test_no_guest_outlives_a_sigkilled_tracer(user, old):
    bb = str(archive("bb"))
    home = _home(user)
    assert _run([bb, "true"], user, home).returncode == 0        # warm: the tracer starts at once
    mark = f"{30 + (os.getpid() % 1000) / 1000:.3f}"
    guests = f"sleep\0{mark}\0"                # a guest's /proc/PID/cmdline (NUL-separated)
    env = {"PATH": "/usr/bin:/bin", "HOME": home, "LANG": "C.UTF-8"}
    cmd = (OLD if old else []) + [bb, "sh", "-c", f"sleep {mark} & sleep {mark} & sleep {mark}"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/",
                            **user_popen_kwargs(user))
    try:
        deadline = time.monotonic() + 60
        while len(guest_pids(guests)) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(guest_pids(guests)) >= 3, "the guests did not start"
        os.kill(proc.pid, signal.SIGKILL)                  # the runtime: the launcher exec'ed it
        proc.wait()
        deadline = time.monotonic() + 2
        while guest_pids(guests) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = guest_pids(guests)
        assert not left, f"guests alive 2 s after the tracer was killed: {left}"
    finally:
        for pid in guest_pids(guests):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def _static_busybox_path() -> str:
    """A PATH of the node's own tools for the 2.6.32 at-flags emulation: static busybox applets
    (this machine's dynamic tools use glibc 2.36, whose fstat that emulation refuses, as 2.6.32
    would; a real old node's own tools are built for it)."""
    import shutil
    bb = shutil.which("busybox")
    if bb is None or b"ld-linux" in open(bb, "rb").read(4096):
        pytest.skip("no static busybox (apt-get install busybox-static)")
    d = workdir() / "static-tools"
    if not d.exists():
        d.mkdir()
        for applet in ("sh", "ls", "tail", "head", "gzip", "tar", "mkdir", "mv", "rm", "chmod", "df",
                       "id", "dd", "cat"):
            os.symlink(bb, d / applet)
    return str(d)


def test_runtime_starts_before_2_6_39(user):
    """Linux before 2.6.39 refuses fstatat's AT_EMPTY_PATH, which the bundled glibc's loader and
    fstat() use: the launcher starts the runtime through its static helper (oldkernel.c) there, and
    the engine gives guests fstat for it (runtime.syscall.newer). Warm start: the cold path runs
    `#!/bin/sh` test scripts, this machine's dash."""
    py = str(archive("py"))
    home = _home(user)
    assert _run(OLD + [py, "-c", "pass"], user, home).returncode == 0     # unpacked, the usual tools
    strict = [sys.executable] + OLD + ["--at-flags-2.6.32"]     # (no python3 on that PATH)
    env = {"PATH": _static_busybox_path(), "HOME": home, "LANG": "C.UTF-8"}

    def run(args: list[str], **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(strict + ["sh", py] + args, env=dict(env, **extra), capture_output=True,
                              text=True, timeout=300, cwd="/", **user_popen_kwargs(user))

    p = run(["/app/fib.py", "5"])       # what the release check is for: no start without the helper
    assert p.returncode == 127 and "cannot stat shared object" in p.stderr, p.stderr
    p = run(["-c", "import subprocess, sys; print(subprocess.run(['/bin/ls', '/app'], "
             "capture_output=True, text=True).stdout.split()[0]); sys.exit(7)"],
            CARRYON_TEST_KERNEL_RELEASE="2.6.32-754.el6.x86_64")
    assert (p.returncode, p.stdout) == (7, "fib.py\n"), p.stderr
    p = run(["/app/fib.py", "20"], CARRYON_TEST_KERNEL_RELEASE="2.6.38")
    assert (p.returncode, p.stdout) == (0, "fib(20) = 6765\n"), p.stderr
