"""A guest program sees what a real exec gives it (issue #17, "the process looks like the loader"):
its argv, /proc/self/cmdline, comm, environ and auxiliary vector (AT_EXECFN, AT_PHDR, AT_ENTRY,
AT_BASE...), for glibc programs (debian-python) and musl ones (the Alpine-like fixture image:
musl's loader, a multi-call program dispatching on argv[0], a program exec'ing an applet); the
host's `pgrep -x` finds a guest by its name; a set-user-ID program exec'd under `-i UID:GID`
gets the ids (and AT_UID/AT_EUID/AT_SECURE) a real exec gives. Every engine (seccomp with and
without the native loop, ptrace), as root and as the unprivileged test user; an archive of the
musl image too. Without carryon's loader (`CARRYON_LOADER=0`) the guest loader's --argv0 way
still runs programs, and says so under -v."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from conftest import ENGINE_USERS, _extracted, run_carryon
from engine_util import carryon_exec, popen_exec

AT_EXECFN = 31


def run_ok(rootfs, *args, **kw):
    p = carryon_exec(rootfs, *args, **kw)
    assert p.returncode == 0, f"rc={p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    return p


@pytest.fixture(scope="session")
def musl_rootfs(project_fixtures, engine_tmp):
    src = project_fixtures / "musl.oci.tar"
    if not src.exists():
        pytest.skip("no musl fixture image (scripts/build-fixtures needs musl-gcc)")
    return _extracted(src, engine_tmp / "musl")


# what a Python guest prints about itself: its argv, cmdline, comm, AT_EXECFN, and whether
# /proc/self/environ holds exactly its environment
SHOW = ("import ctypes, os, sys\n"
        "libc = ctypes.CDLL(None); libc.getauxval.restype = ctypes.c_ulong\n"
        "print(repr(sys.argv[1:]))\n"
        "print(repr(open('/proc/self/cmdline', 'rb').read()))\n"
        "print(open('/proc/self/comm').read().strip())\n"
        f"print(ctypes.string_at(libc.getauxval({AT_EXECFN})).decode())\n"
        "print(open('/proc/self/environ', 'rb').read() == "
        "b''.join(k + b'=' + v + b'\\0' for k, v in os.environb.items()))\n")


def test_glibc_program_sees_its_own_argv_cmdline_comm(debian_rootfs, engine, user):
    p = run_ok(debian_rootfs, "/usr/bin/python3", "-c", SHOW, "A", "B c", engine=engine, user=user)
    lines = p.stdout.splitlines()
    assert lines == [repr(["A", "B c"]),
                     repr(b"\0".join([b"/usr/bin/python3", b"-c", SHOW.encode(), b"A", b"B c", b""])),
                     "python3", "/usr/bin/python3", "True"], p.stderr
    # exec'd by a relative name with another argv[0]; and a #! script (comm and AT_EXECFN: the
    # script's name, as the kernel gives them)
    code = ("import os; os.chdir('/usr/bin'); "
            f"os.execv('./python3', ['renamed', '-c', {SHOW!r}, 'x'])")
    p = run_ok(debian_rootfs, "python3", "-c", code, engine=engine, user=user)
    assert p.stdout.splitlines() == [
        repr(["x"]), repr(b"\0".join([b"renamed", b"-c", SHOW.encode(), b"x", b""])), "python3",
        "./python3", "True"], p.stderr
    script = f"/tmp/h13-script-{user}-{engine}.py"
    p = run_ok(debian_rootfs, "sh", "-c", f"printf '#!/usr/bin/python3\\n%s' \"$1\" > {script} && "
               f"chmod 755 {script} && {script} s1; rc=$?; rm -f {script}; exit $rc", "sh", SHOW,
               engine=engine, user=user)
    assert p.stdout.splitlines() == [repr(["s1"]), repr(f"/usr/bin/python3\0{script}\0s1\0".encode()),
                                     os.path.basename(script)[:15], script, "True"], p.stderr


AUXV = r"""
import os
raw = open('/proc/self/auxv', 'rb').read()
aux = {}
for i in range(0, len(raw), 16):
    key = int.from_bytes(raw[i:i + 8], 'little')
    if key == 0:
        break
    aux[key] = int.from_bytes(raw[i + 8:i + 16], 'little')
exe = os.path.realpath('/proc/self/exe')
head = open('/proc/self/exe', 'rb').read(64)
entry, phoff = int.from_bytes(head[24:32], 'little'), int.from_bytes(head[32:40], 'little')
phnum = int.from_bytes(head[56:58], 'little')
bases = {}
for line in open('/proc/self/maps'):
    f = line.split()
    if len(f) >= 6 and int(f[2], 16) == 0:
        bases.setdefault(os.path.basename(f[5]), int(f[0].split('-')[0], 16))
base = bases[os.path.basename(exe)]
bias = 0 if int.from_bytes(head[16:18], 'little') == 2 else base    # ET_EXEC: absolute addresses
import ctypes
libc = ctypes.CDLL(None)
libc.sbrk.restype = ctypes.c_void_p
grown = libc.sbrk(256 << 20) not in (None, (1 << 64) - 1)      # glibc's malloc uses brk
heap = [ln for ln in open('/proc/self/maps') if ln.rstrip().endswith('[heap]')]
print(aux[9] == bias + entry, aux[3] == base + phoff, aux[4], aux[5] == phnum,
      aux[7] == bases['ld-linux-x86-64.so.2'], len(heap), grown)
"""


def test_glibc_program_gets_the_auxv_a_real_exec_gives(debian_rootfs, engine, user):
    """AT_ENTRY, AT_PHDR, AT_PHENT, AT_PHNUM describe the program, AT_BASE its loader (in
    /proc/self/auxv too), and the program has its brk heap, which grows by 256 MB; `ld.so --list`
    still runs."""
    p = run_ok(debian_rootfs, "/usr/bin/python3", "-c", AUXV, engine=engine, user=user)
    assert p.stdout.split() == ["True", "True", "56", "True", "True", "1", "True"], p.stderr
    p = run_ok(debian_rootfs, "/lib64/ld-linux-x86-64.so.2", "--list", "/bin/true", engine=engine,
               user=user)
    assert "libc.so.6" in p.stdout


def test_musl_programs_and_applets_see_their_argv(musl_rootfs, engine, user):
    p = run_ok(musl_rootfs, "/bin/sh", "-c", "/bin/showargs a 'b c'; /bin/execer; hello x; /bin/xstack",
               engine=engine, user=user)
    assert p.stdout.splitlines() == [
        "argv[0]=/bin/showargs", "argv[1]=a", "argv[2]=b c", "cmdline=/bin/showargs|a|b c|",
        "comm=showargs", "execfn=/bin/showargs",
        "applet=hello", "argv[0]=hello", "argv[1]=child", "cmdline=hello|child|", "comm=hello",
        "execfn=/bin/hello",
        "applet=hello", "argv[0]=hello", "argv[1]=x", "cmdline=hello|x|", "comm=hello",
        "execfn=/bin/hello",
        "stack=rwxp"], p.stderr            # its PT_GNU_STACK asks for an executable stack


def test_setuid_programs_under_fake_ids(musl_rootfs, debian_rootfs, engine, user):
    """`-i 1000:1000`: a set-user-ID (set-group-ID) program of the image, and a copy chowned and
    chmodded in the run, get effective and saved ids from their owner, the auxv says so
    (AT_SECURE 1); a plain program keeps the caller's ids (AT_SECURE 0)."""
    if engine == "userns":
        pytest.skip("fake ids are the ptrace rungs' (userns maps one id: such runs take a ptrace rung)")
    tmp = f"/tmp/h13-ids-{user}-{engine}"
    p = run_ok(musl_rootfs, "/bin/sh", "-c",
               f"/bin/ids; /bin/suid-ids; /bin/sgid-ids; mkdir {tmp} && cp /bin/multi {tmp}/ids && "
               f"chown 7:8 {tmp}/ids && chmod 6755 {tmp}/ids && {tmp}/ids; rm -rf {tmp}",
               engine=engine, user=user,
               opts=("-i", "1000:1000"))
    assert p.stdout.splitlines() == [
        "resuid=1000,1000,1000 resgid=1000,1000,1000 auxv=1000,1000,1000,1000,0",
        "resuid=1000,0,0 resgid=1000,1000,1000 auxv=1000,0,1000,1000,1",
        "resuid=1000,1000,1000 resgid=1000,42,42 auxv=1000,1000,1000,42,1",
        "resuid=1000,7,7 resgid=1000,8,8 auxv=1000,7,1000,8,1"], p.stderr
    sp = f"/tmp/h13-sp-{user}-{engine}"
    code = ("import os; a = open('/proc/self/auxv', 'rb').read(); "
            "v = {int.from_bytes(a[i:i+8], 'little'): int.from_bytes(a[i+8:i+16], 'little') "
            "for i in range(0, len(a), 16)}; print(os.getresuid(), v[11], v[12], v[23])")
    p = run_ok(debian_rootfs, "sh", "-c", f"cp /usr/bin/python3.11 {sp} && chown 0:0 {sp} && "
               f"chmod 4755 {sp} && {sp} -c \"$1\"; rc=$?; rm -f {sp}; exit $rc", "sh", code,
               engine=engine, user=user, opts=("-i", "1000:1000"))
    assert p.stdout.split() == ["(1000,", "0,", "0)", "1000", "0", "1"], p.stderr


def test_the_host_sees_the_guest_by_its_name(debian_rootfs, engine, user):
    """`pgrep -x sleep` (the process name, comm) finds a guest `sleep`, with its own command line."""
    proc = popen_exec(debian_rootfs, "sleep", "31.4159", engine=engine, user=user,
                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        found = ""
        for _ in range(300):
            out = subprocess.run(["pgrep", "-a", "-x", "sleep"], capture_output=True, text=True).stdout
            found = next((ln for ln in out.splitlines() if ln.endswith(" sleep 31.4159")), "")
            if found or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert found, f"pgrep -x sleep: {out!r}; carryon: {proc.poll()}"
        ps = subprocess.run(["ps", "-o", "comm=", "-p", found.split()[0]], capture_output=True,
                            text=True).stdout
        assert ps.strip() == "sleep"
    finally:
        proc.kill()
        proc.communicate()


def test_without_the_loader_programs_run_through_their_own(debian_rootfs):
    """CARRYON_LOADER=0 (what a venv install without a C compiler gets): the guest loader's
    --argv0 way, with a note under -v."""
    p = run_ok(debian_rootfs, "python3", "-c", "import sys; print(sys.argv)", "a", engine="seccomp",
               user=ENGINE_USERS[0], opts=("-v", "1"), env={"CARRYON_LOADER": "0"})
    assert p.stdout == "['-c', 'a']\n"
    assert "no carryon-loader" in p.stderr


def test_an_archive_of_the_musl_image_runs_applets(project_fixtures, engine_tmp):
    src = project_fixtures / "musl.oci.tar"
    if not src.exists():
        pytest.skip("no musl fixture image (scripts/build-fixtures needs musl-gcc)")
    out = engine_tmp / "musl.run"
    if not out.exists():
        run_carryon("pack", str(src), "-o", str(out), check=True, cwd="/tmp")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(engine_tmp), "CARRYON_CACHE": str(engine_tmp / "cache-loader")}
    p = subprocess.run([str(out), "/bin/hello", "a"], capture_output=True, text=True, env=env, timeout=300)
    assert p.stdout.splitlines() == ["applet=hello", "argv[0]=/bin/hello", "argv[1]=a",
                                     "cmdline=/bin/hello|a|", "comm=hello", "execfn=/bin/hello"], p.stderr
    p = subprocess.run([str(out), "--carryon-entrypoint", "/bin/execer"], capture_output=True,
                       text=True, env=env, timeout=300)
    assert p.stdout.splitlines()[:3] == ["applet=hello", "argv[0]=hello", "argv[1]=child"], p.stderr
