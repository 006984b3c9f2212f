"""PRoot's `-k RELEASE` (the guest's uname) and what `-0`'s fake root makes succeed: device nodes,
privileged xattrs and owners, each seen by later stat/getxattr/listxattr calls in the same run."""

from __future__ import annotations

import os

import pytest

from engine_util import carryon_exec

UNAME = "import os; u = os.uname(); print(u.sysname, u.nodename, u.release, u.version, u.machine, sep='|')"


def test_kernel_release(debian_rootfs, engine, user):
    real = os.uname()
    p = carryon_exec(debian_rootfs, "sh", "-c", "uname -r; uname -s", engine=engine, user=user,
                     opts=("-k", "2.6.32-carryon"))
    assert p.returncode == 0, p.stderr
    assert p.stdout == f"2.6.32-carryon\n{real.sysname}\n"
    # PRoot's full form: \sysname\nodename\release\version\machine\domainname\hwcap\ (an empty
    # field keeps the real value; hwcap is optional and ignored)
    p = carryon_exec(debian_rootfs, "python3", "-c", UNAME, engine=engine, user=user,
                     opts=("-0", "--kernel-release=\\Fake\\\\3.1.4\\#1 test\\mach64\\dom\\"))
    assert p.returncode == 0, p.stderr
    assert p.stdout == f"Fake|{real.nodename}|3.1.4|#1 test|mach64\n"
    p = carryon_exec(debian_rootfs, "python3", "-c", UNAME, engine=engine, user=user)
    assert p.stdout == "|".join(real) + "\n", p.stderr


MKNOD = r"""
import errno, os, stat, subprocess
d = "/tmp/mknod-%d" % os.getpid()
os.mkdir(d)
os.mknod(d + "/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
st = os.stat(d + "/null")
print(stat.S_ISCHR(st.st_mode), os.major(st.st_rdev), os.minor(st.st_rdev), oct(st.st_mode & 0o7777 & ~0o022),
      st.st_size, st.st_uid)
os.mknod(d + "/sda", 0o600 | stat.S_IFBLK, os.makedev(8, 1), dir_fd=os.open(d, os.O_RDONLY))
st = os.lstat(d + "/sda"); print(stat.S_ISBLK(st.st_mode), os.major(st.st_rdev), os.minor(st.st_rdev))
print(subprocess.run(["mknod", d + "/zero", "c", "1", "5"]).returncode)
print(subprocess.run(["stat", "-c", "%F %t,%T", d + "/zero"], capture_output=True, text=True).stdout.strip())
try:
    os.mknod(d + "/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
except FileExistsError:
    print("EEXIST")
os.mknod(d + "/fifo", 0o600 | stat.S_IFIFO)
print(stat.S_ISFIFO(os.stat(d + "/fifo").st_mode))
os.rename(d + "/null", d + "/null2")                    # the node is the inode, not its name
print(stat.S_ISCHR(os.stat(d + "/null2").st_mode))
for n in ("null2", "sda", "zero", "fifo"):
    os.unlink(d + "/" + n)
open(d + "/null2", "w").close()                         # a new file by the old name is a file
print(stat.S_ISREG(os.stat(d + "/null2").st_mode), os.stat(d + "/null2").st_rdev)
os.unlink(d + "/null2"); os.rmdir(d)
os.setuid(1000)                                         # no longer root: the kernel's answer
try:
    os.mknod("/tmp/mknod-user-%d" % os.getpid(), 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    os.unlink("/tmp/mknod-user-%d" % os.getpid())
    print("created")
except PermissionError:
    print("EPERM")
"""


# the userns rung gives one real id, not an emulation: a namespace's root has no CAP_MKNOD and no
# privileged xattrs, and an unprivileged caller's guest cannot chown to ids it does not map (all
# three fail loudly there: EPERM/EINVAL; README "Engines")
NO_FAKE_ROOT = "the userns rung does not emulate what -0 fakes (one mapped id, real kernel answers)"


def test_fake_root_mknod(debian_rootfs, engine, user):
    if engine == "userns":
        pytest.skip(NO_FAKE_ROOT)
    p = carryon_exec(debian_rootfs, "python3", "-c", MKNOD, engine=engine, user=user, opts=("-0",))
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[:9] == ["True 1 3 0o644 0 0", "True 8 1", "0", "character special file 1,5",
                         "EEXIST", "True", "True", "True 0", "EPERM" if user != "root" else "created"], p.stderr


XATTR = r"""
import errno, os
p = "/tmp/xattr-%d" % os.getpid()
cap = bytes.fromhex("0100000200200000000000000000000000000000")   # cap_net_bind_service=ep
open(p, "w").close()
os.setxattr(p, "security.capability", cap)
print(os.getxattr(p, "security.capability") == cap, os.getxattr(p, "security.capability",
      follow_symlinks=False) == cap)
os.setxattr(p, "trusted.note", b"t1")
os.setxattr(p, "user.note", b"u1")
print(sorted(n for n in os.listxattr(p) if n != "security.selinux"))
fd = os.open(p, os.O_RDONLY)
print(os.getxattr(fd, "trusted.note"), sorted(n for n in os.listxattr(fd) if n != "security.selinux"))
os.setxattr(fd, "trusted.note", b"t2")
print(os.getxattr(p, "trusted.note"))
try:
    os.setxattr(p, "trusted.note", b"t3", os.XATTR_CREATE)
except FileExistsError:
    print("EEXIST")
try:
    os.setxattr(p, "trusted.other", b"x", os.XATTR_REPLACE)
except OSError as e:
    print(errno.errorcode[e.errno])
os.rename(p, p + ".new")
print(os.getxattr(p + ".new", "security.capability") == cap)
os.removexattr(p + ".new", "trusted.note")
try:
    os.getxattr(p + ".new", "trusted.note")
except OSError as e:
    print(errno.errorcode[e.errno])
print(sorted(n for n in os.listxattr(p + ".new") if n != "security.selinux"))
os.close(fd)
os.unlink(p + ".new")
"""


def test_fake_root_xattrs(debian_rootfs, engine, user):
    if engine == "userns":
        pytest.skip(NO_FAKE_ROOT)
    p = carryon_exec(debian_rootfs, "python3", "-c", XATTR, engine=engine, user=user, opts=("-0",))
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == [
        "True True", "['security.capability', 'trusted.note', 'user.note']",
        "b't1' ['security.capability', 'trusted.note', 'user.note']", "b't2'", "EEXIST", "ENODATA",
        "True", "ENODATA", "['security.capability', 'user.note']"], p.stderr


CHOWN = r"""
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
d = "/tmp/chown-%d" % os.getpid()
os.mkdir(d)
f, ln = d + "/f", d + "/link"
open(f, "w").close()
os.symlink("f", ln)
os.chown(f, 10, 20)
print("chown", os.stat(f).st_uid, os.stat(f).st_gid)
os.lchown(ln, 30, 40)
print("lchown", os.lstat(ln).st_uid, os.lstat(ln).st_gid, os.stat(ln).st_uid)
fd = os.open(f, os.O_RDONLY)
os.fchown(fd, 50, -1)
print("fchown", os.fstat(fd).st_uid, os.fstat(fd).st_gid)
print("fchownat", libc.fchownat(fd, b"", 60, 70, 0x1000), os.stat(f).st_uid, os.stat(f).st_gid)
os.rename(f, d + "/g")                                  # dpkg: unpack to .dpkg-new, chown, rename
print("rename", os.stat(d + "/g").st_uid, os.stat(d + "/g").st_gid, os.fstat(fd).st_uid)
os.link(d + "/g", d + "/h")
print("link", os.stat(d + "/h").st_uid)
os.close(fd)
for n in ("g", "h", "link"):
    os.unlink(d + "/" + n)
open(d + "/g", "w").close()                             # a new file by the old name: the creator's
print("new", os.stat(d + "/g").st_uid, os.stat(d + "/g").st_gid)
os.unlink(d + "/g"); os.rmdir(d)
"""


def test_fake_root_chown(debian_rootfs, engine, user):
    if engine == "userns" and user != "root":
        pytest.skip(NO_FAKE_ROOT + "; a root caller maps every id: its chown is real")
    p = carryon_exec(debian_rootfs, "python3", "-c", CHOWN, engine=engine, user=user, opts=("-0",))
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["chown 10 20", "lchown 30 40 10", "fchown 50 20",
                                     "fchownat 0 60 70", "rename 60 70 60", "link 60", "new 0 0"], p.stderr


def test_kernel_release_parse():
    from runtime.errors import CarryonError
    from runtime.extension.kernel_release import parse_release
    assert parse_release("3.10.0") == {2: b"3.10.0"}
    assert parse_release("\\a\\\\3.1\\v\\m\\d\\") == {0: b"a", 2: b"3.1", 3: b"v", 4: b"m", 5: b"d"}
    assert parse_release("\\\\\\4.0\\\\\\\\0x1f\\") == {2: b"4.0"}         # with PRoot's hwcap field
    assert parse_release("x" * 100) == {2: b"x" * 64}
    for bad in ("", "\\a\\b\\", "\\a\\b\\c\\d\\e\\f", "\\1\\2\\3\\4\\5\\6\\7\\8\\"):
        with pytest.raises(CarryonError):
            parse_release(bad)


def test_hooks_only_with_their_options(tmp_path):
    """No -0/-k: the filter stops on neither uname nor fsetxattr (and only -0 hooks mknod/xattrs)."""
    from runtime import extension
    from runtime.engine import filter_program
    from runtime.spec import RunSpec
    from runtime.syscall import seccomp
    from runtime.syscall.sysnums import NUMBERS as N

    def traps(spec, name):
        prog = filter_program(extension.build(spec))
        return seccomp.evaluate(prog, N[name], args=(3, 0x1000, 0x2000, 4, 0, 0)) == seccomp.RET_TRACE

    plain = RunSpec(str(tmp_path), ["true"])
    assert extension.build(plain) == []
    assert not traps(plain, "uname") and not traps(plain, "fsetxattr")
    assert traps(RunSpec(str(tmp_path), ["true"], kernel_release="3.10"), "uname")
    ids = RunSpec(str(tmp_path), ["true"], uid=1000, gid=1000)
    assert not traps(ids, "fsetxattr") and not traps(ids, "uname")
    root = RunSpec(str(tmp_path), ["true"], uid=0, gid=0)
    assert traps(root, "fsetxattr") and traps(root, "flistxattr") and not traps(root, "uname")
    assert [type(e).__name__ for e in extension.build(root)] == ["FakeRoot"]
