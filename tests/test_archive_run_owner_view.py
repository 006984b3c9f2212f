"""The userns engine's owner view (issue #18): a root guest over an image whose recorded owners one
mapped id cannot show (debian-python: /etc/gshadow root:shadow, gid 42) runs on userns under
`auto`, and every call of the stat family shows exactly what the seccomp engine shows.

Runs as whoever runs pytest (scripts/test runs the suite as root and as carryon-test)."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

from archive_run_support import archive, clean_env, run, workdir
from conftest import ENGINE_VARIANTS

pytestmark = pytest.mark.skipif(
    "userns" not in ENGINE_VARIANTS or tuple(int(x) for x in re.findall(r"\d+", os.uname().release)[:2]) < (5, 6),
    reason="user namespaces refused here, or Linux older than 5.6 (no owner view)")

# each line: the call, the path, uid:gid (raw x86_64 system calls via ctypes where Python's os
# module would take newfstatat; stat(1) and ls(1) from coreutils take statx)
PROBE = r"""
import ctypes, os, shutil, subprocess
libc = ctypes.CDLL(None, use_errno=True)
def raw(nr, arg, fd=False):
    buf = ctypes.create_string_buffer(144)
    r = libc.syscall(nr, ctypes.c_long(arg) if fd else arg.encode(), buf)
    if r != 0:
        return "err %d" % ctypes.get_errno()
    return "%d:%d" % (int.from_bytes(buf.raw[28:32], "little"), int.from_bytes(buf.raw[32:36], "little"))
def ids(s):
    return "%d:%d" % (s.st_uid, s.st_gid)
out = []
paths = ["/etc/gshadow", "/etc/shadow", "/usr/bin/chage", "/usr/bin/expiry", "/etc", "/etc/hostname",
         "/usr/bin/python3"]
for p in paths:
    out.append("stat %s %s" % (p, ids(os.stat(p))))
    out.append("SYS_stat %s %s" % (p, raw(4, p)))
os.symlink("/etc/gshadow", "/tmp/gs-abs")
os.symlink("../etc/shadow", "/tmp/sh-rel")
for p in ("/tmp/gs-abs", "/tmp/sh-rel"):
    out.append("stat %s %s lstat %s" % (p, ids(os.stat(p)), ids(os.lstat(p))))
    out.append("SYS_lstat %s %s" % (p, raw(6, p)))
fd = os.open("/etc/gshadow", os.O_RDONLY)
out.append("fstat gshadow %s SYS_fstat %s" % (ids(os.fstat(fd)), raw(5, fd, fd=True)))
os.chdir("/etc")
out.append("relative gshadow %s ../usr/bin/chage %s" % (ids(os.stat("gshadow")), ids(os.stat("../usr/bin/chage"))))
d = os.open("/usr", os.O_RDONLY | os.O_DIRECTORY)
out.append("dirfd bin/chage %s" % ids(os.stat("bin/chage", dir_fd=d)))
open("/tmp/made", "w").close()
shutil.copy("/etc/gshadow", "/tmp/gs-copy")
out.append("made %s copy %s" % (ids(os.stat("/tmp/made")), ids(os.stat("/tmp/gs-copy"))))
out.append(subprocess.run(["stat", "-c", "%u:%g %n", "/etc/gshadow", "/usr/bin/chage", "/etc/hostname",
                           "/tmp/gs-abs", "/tmp/made"], capture_output=True, text=True).stdout.strip())
out.append(subprocess.run(["stat", "-L", "-c", "%u:%g %n", "/tmp/gs-abs"], capture_output=True,
                          text=True).stdout.strip())
ls = subprocess.run(["ls", "-ln", "/etc/gshadow", "/etc/shadow"], capture_output=True, text=True).stdout
out.append(" ".join(" ".join(ln.split()[2:4]) for ln in ls.splitlines()))
print("\n".join(out))
"""


@pytest.fixture(scope="module")
def cache():
    d = workdir() / "cache-owner-view"
    d.mkdir(exist_ok=True)
    return d


def test_auto_takes_userns_for_a_root_image_with_other_owners(cache, tmp_path):
    py = archive("py")
    p = run(py, "--carryon-doctor", env=clean_env(tmp_path, cache))
    assert re.search(r"this archive:\s+userns\b", p.stdout + p.stderr), p.stdout + p.stderr
    p = run(py, "--carryon-verbose", "-c", "print(open('/proc/self/status').read())",
            env=clean_env(tmp_path, cache, CARRYON_ENGINE="auto"))
    assert p.returncode == 0, p.stderr
    assert "carryon: engine: userns" in p.stderr and "owner view: 8 image files" in p.stderr, p.stderr
    assert re.search(r"^Seccomp:\s+2$", p.stdout, re.M), p.stdout     # the view's filter


def test_stat_family_shows_what_the_seccomp_engine_shows(cache, tmp_path):
    py = archive("py")
    got = {}
    for eng in ("auto", "seccomp"):
        p = run(py, "--carryon-verbose", "-c", PROBE, env=clean_env(tmp_path, cache, CARRYON_ENGINE=eng))
        assert p.returncode == 0, p.stderr
        assert f"carryon: engine {'userns' if eng == 'auto' else 'seccomp'}," in p.stderr, p.stderr
        got[eng] = p.stdout.splitlines()
    assert got["auto"] == got["seccomp"]
    lines = got["auto"]
    assert "stat /etc/gshadow 0:42" in lines and "SYS_stat /usr/bin/chage 0:42" in lines
    assert "stat /etc/hostname 0:0" in lines and "stat /etc 0:0" in lines
    assert "stat /tmp/gs-abs 0:42 lstat 0:0" in lines and "stat /tmp/sh-rel 0:42 lstat 0:0" in lines
    assert "fstat gshadow 0:42 SYS_fstat 0:42" in lines
    assert "relative gshadow 0:42 ../usr/bin/chage 0:42" in lines and "dirfd bin/chage 0:42" in lines
    assert "made 0:0 copy 0:0" in lines
    assert "0:42 /etc/gshadow" in lines and "0:42 /tmp/gs-abs" in lines and "0 42 0 42" in lines


CHOWN = r"""
import os, subprocess
def ids(p, follow=True):
    s = os.stat(p) if follow else os.lstat(p)
    return "%d:%d" % (s.st_uid, s.st_gid)
open("/tmp/f", "w").close()
os.symlink("/tmp/f", "/tmp/l")
os.chown("/tmp/f", 1000, 1001)
print("chown", ids("/tmp/f"))
os.chown("/tmp/f", -1, 5)
print("keep uid", ids("/tmp/f"))
os.lchown("/tmp/l", 7, 8)
print("lchown", ids("/tmp/l", False), ids("/tmp/l"))
os.chown("/etc/gshadow", 0, 0)
print("image file", ids("/etc/gshadow"))
os.chown("/tmp/f", 0, 0)
print("back", ids("/tmp/f"))
subprocess.run(["chown", "-R", "11:12", "/app"], check=True)
print("fchownat", subprocess.run(["stat", "-c", "%u:%g", "/app/fib.py", "/app"], capture_output=True,
                                 text=True).stdout.split())
"""


def test_chown_by_the_root_guest_is_seen_by_stat(cache, tmp_path):
    """chown, lchown and chown -R (fchownat) to ids one mapped id cannot show: the view records the
    owner (the seccomp engine's answers), where the userns rung alone said EINVAL."""
    py = archive("py")
    got = {}
    for eng in ("auto", "seccomp"):
        p = run(py, "-c", CHOWN, env=clean_env(tmp_path, cache, CARRYON_ENGINE=eng))
        assert p.returncode == 0, p.stderr
        got[eng] = p.stdout
    assert got["auto"] == got["seccomp"]
    assert got["auto"].splitlines() == [
        "chown 1000:1001", "keep uid 1000:5", "lchown 7:8 1000:5", "image file 0:0", "back 0:0",
        "fchownat ['11:12', '11:12']"]


def test_the_warm_start_keeps_the_owner_view(cache, tmp_path):
    """The second plain run starts from the stored plan (no Python): the view is in it."""
    py = archive("py")
    env = clean_env(tmp_path, cache)
    code = "import os; print(os.stat('/etc/gshadow').st_gid, os.stat('/etc/passwd').st_gid)"
    for _ in range(2):
        p = run(py, "-c", code, env=env)
        assert (p.returncode, p.stdout, p.stderr) == (0, "42 0\n", "")
    assert any(f.name.startswith("nsplan-") and b"owner\0/etc/gshadow\0" in f.read_bytes()
               for f in cache.iterdir())


def test_without_the_view_the_rule_stays(cache, tmp_path):
    """Where the view cannot be had (here: forced off), auto keeps today's rule: seccomp."""
    py = archive("py")
    p = run(py, "--carryon-verbose", "-c", "pass",
            env=clean_env(tmp_path, cache, CARRYON_TEST_NO_OWNER_VIEW="1"))
    assert p.returncode == 0, p.stderr
    assert "carryon: engine seccomp," in p.stderr, p.stderr


NO_SECCOMP = r"""
import ctypes, os, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
rules = [(0x20, 0, 0, 0), (0x15, 0, 1, 317), (0x06, 0, 0, 0x00050000 | 1), (0x06, 0, 0, 0x7fff0000)]
code = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *r) for r in rules))
class Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
prog = Prog(len(rules), ctypes.addressof(code))
assert libc.prctl(38, 1, 0, 0, 0) == 0 and libc.prctl(22, 2, ctypes.byref(prog), 0, 0) == 0
os.execv(sys.argv[1], sys.argv[1:])
"""


def test_a_refused_filter_is_a_refusal(cache, tmp_path):
    """Where seccomp() is refused (EPERM for every filter), the owner view's filter cannot be had:
    the userns rung is refused before the guest ran, and the next usable rung shows the owners."""
    py = archive("py")
    p = run(Path(sys.executable), "-c", NO_SECCOMP, str(py), "--carryon-verbose", "-c",
            "import os; print(os.stat('/etc/gshadow').st_gid)", env=clean_env(tmp_path, cache))
    assert (p.returncode, p.stdout) == (0, "42\n"), p.stderr
    assert "seccomp user notification (owner view)" in p.stderr and "carryon: engine ptrace," in p.stderr


SETID = r"""
import os
def m(p):
    s = os.stat(p)
    return "%o %d:%d" % (s.st_mode & 0o7777, s.st_uid, s.st_gid)
open("/tmp/g", "w").close()
os.chmod("/tmp/g", 0o2644)
os.mkdir("/tmp/d")
os.chmod("/tmp/d", 0o2755)
for p, ids in (("/usr/bin/passwd", (0, 0)), ("/usr/bin/chage", (0, -1)), ("/usr/bin/expiry", (-1, -1)),
               ("/tmp/g", (5, -1)), ("/tmp/d", (5, 6))):
    before = m(p)
    os.chown(p, *ids)
    print(p, before, "->", m(p))
"""


def test_chown_clears_set_id_bits_as_the_kernel_does(cache, tmp_path):
    """A root guest's chown of set-id files (the image's passwd 4755 root:root, chage and expiry
    2755 root:shadow): set-user-ID and set-group-ID with group execute are gone, the ids not given
    (-1) are kept, as `docker run` shows; a set-group-ID file without group execute and a directory
    keep theirs. The owner view (chage and expiry are in it) and the seccomp engine agree."""
    py = archive("py")
    got = {}
    for eng in ("auto", "seccomp"):
        p = run(py, "-c", SETID, env=clean_env(tmp_path, cache, CARRYON_ENGINE=eng))
        assert p.returncode == 0, p.stderr
        got[eng] = p.stdout.splitlines()
    assert got["auto"] == [
        "/usr/bin/passwd 4755 0:0 -> 755 0:0", "/usr/bin/chage 2755 0:42 -> 755 0:42",
        "/usr/bin/expiry 2755 0:42 -> 755 0:42", "/tmp/g 2644 0:0 -> 2644 5:0", "/tmp/d 2755 0:0 -> 2755 5:6"]
    assert got["seccomp"] == got["auto"]
