"""Containment: a guest program does not reach host files outside the rootfs and binds through
symlinks, `..`, dirfds, /proc/self/root or an emulated chroot. A sentinel file sits on the host
right beside the rootfs (and at an absolute host path that does not exist in the guest)."""

from __future__ import annotations

import os

import pytest

from conftest import ENGINE_USERS, ENGINE_VARIANTS
from engine_util import carryon_exec, world_dir

SECRET = "HOST-SENTINEL-7f3a"
USERNS = [e for e in ENGINE_VARIANTS if e == "userns"]     # where user namespaces work

ATTEMPTS = r"""
import os, sys
sentinel = sys.argv[1]          # the sentinel's host path
name = os.path.basename(sentinel)
found = []
def attempt(label, fn):
    try:
        data = fn()
    except OSError:
        return
    if isinstance(data, bytes):
        data = data.decode(errors="replace")
    if "HOST-SENTINEL" in str(data) or name in str(data):
        found.append(label)
def read(p, **kw):
    with open(p, **kw) as f:
        return f.read()
attempt("absolute host path", lambda: read(sentinel))
attempt("dotdot from /", lambda: read("/../../../../" + name))
attempt("dotdot listing", lambda: os.listdir("/../../.."))
attempt("relative dotdot", lambda: (os.chdir("/"), read("../../../" + name))[1])
os.makedirs("/work/links", exist_ok=True)
for lname, target in [("root", "/"), ("up", "../../../../../.."), ("abs-up", "/../../..")]:
    p = "/work/links/" + lname
    if not os.path.lexists(p):
        os.symlink(target, p)
    attempt("symlink " + lname, lambda p=p: read(p + "/" + name))
    attempt("symlink listing " + lname, lambda p=p: os.listdir(p + "/.."))
    attempt("symlink dotdot " + lname, lambda p=p: read(p + "/../../" + name))
fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
attempt("dirfd dotdot", lambda: read("../../" + name, opener=lambda p, f: os.open(p, f, dir_fd=fd)))
up = os.open("..", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
attempt("dirfd dotdot listing", lambda: os.listdir(up))
attempt("fchdir dotdot", lambda: (os.fchdir(fd), os.chdir("../.."), os.listdir("."))[2])
attempt("proc self root", lambda: read("/proc/self/root/../../" + name))
attempt("proc self root listing", lambda: os.listdir("/proc/self/root/.."))
attempt("proc self cwd", lambda: (os.chdir("/"), read("/proc/self/cwd/../../" + name))[1])
attempt("proc pid root", lambda: read("/proc/%d/root/../%s" % (os.getpid(), name)))
assert sorted(os.listdir("/proc/self/root")) == sorted(os.listdir("/")), "proc root differs"
assert os.readlink("/proc/self/root") == "/"
print("found:", found)
"""

CHROOT_ESCAPE = r"""
import os, sys
name = os.path.basename(sys.argv[1])
os.makedirs("/work/jail/sub", exist_ok=True)
outer = os.open("/", os.O_RDONLY)
os.chroot("/work/jail")             # the cwd stays outside the new root
for _ in range(3):
    os.chdir("../../../../..")      # the classic escape: climb from outside the new root
print(name in os.listdir("."), "app" in os.listdir("."))
os.chdir("/sub")
print(os.getcwd())
os.chdir("../../..")                # inside the new root: stops at it
print(os.listdir("."))
os.fchdir(outer)
os.chdir("../../..")
print(name in os.listdir("."))
"""


@pytest.fixture(scope="module")
def sentinel(engine_tmp):
    p = engine_tmp / "sentinel-host-only.txt"
    p.write_text(SECRET + "\n")
    os.chmod(p, 0o644)
    return p


@pytest.mark.parametrize("engine", ["seccomp", "seccomp-python", "ptrace"] + USERNS)
@pytest.mark.parametrize("user", ENGINE_USERS)
def test_no_escape(debian_rootfs, engine_tmp, sentinel, engine, user):
    work = world_dir(engine_tmp, f"contain-{engine}-{user}")
    p = carryon_exec(debian_rootfs, "python3", "-c", ATTEMPTS, str(sentinel), engine=engine, user=user,
                     opts=("-b", f"{work}:/work"))
    assert p.returncode == 0, p.stderr
    assert p.stdout == "found: []\n"


@pytest.mark.parametrize("engine", ["seccomp", "ptrace"])
@pytest.mark.parametrize("user", ENGINE_USERS)
def test_chroot_is_emulated_and_contained(debian_rootfs, engine_tmp, sentinel, engine, user):
    work = world_dir(engine_tmp, f"chroot-{engine}-{user}")
    p = carryon_exec(debian_rootfs, "python3", "-c", CHROOT_ESCAPE, str(sentinel), engine=engine,
                     user=user, opts=("-0", "-b", f"{work}:/work"))
    assert p.returncode == 0, p.stderr
    # the climb stops at the run's root (the guest /, where /app lives), never the host's
    assert p.stdout == "False True\n/sub\n['sub']\nFalse\n"
    p = carryon_exec(debian_rootfs, "python3", "-c", "import os; os.chroot('/tmp')", engine=engine, user=user)
    if user == "root":
        assert p.returncode == 0, p.stderr          # real root may chroot: emulated
    else:
        assert p.returncode == 1 and "PermissionError" in p.stderr


@pytest.mark.parametrize("engine", ["seccomp", "ptrace"])
def test_untranslatable_calls_refused(debian_rootfs, engine):
    code = r"""
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
def call(nr, *args):
    r = libc.syscall(nr, *args)
    return errno.errorcode.get(ctypes.get_errno(), "0") if r == -1 else "ok"
print(call(304, -100, 0, 0))        # open_by_handle_at
print(call(425, 1, 0))              # io_uring_setup
print(call(165, b"none", b"/mnt", b"tmpfs", 0, 0))   # mount
print(call(999))                    # unknown
"""
    p = carryon_exec(debian_rootfs, "python3", "-c", code, engine=engine, user=ENGINE_USERS[0])
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["ENOSYS", "ENOSYS", "EPERM", "ENOSYS"]


@pytest.mark.parametrize("engine", ["seccomp", "ptrace"])
def test_openat2_and_execveat(debian_rootfs, engine):
    code = r"""
import ctypes, os, struct, errno, sys
sys.stdout.reconfigure(line_buffering=True)
libc = ctypes.CDLL(None, use_errno=True)
how = struct.pack("QQQ", os.O_RDONLY, 0, 0)
fd = libc.syscall(437, -100, b"/etc/os-release", how, len(how))
print(os.read(fd, 11).decode())
root = os.open("/usr", os.O_RDONLY)
how = struct.pack("QQQ", os.O_RDONLY, 0, 0x10)          # RESOLVE_IN_ROOT
fd = libc.syscall(437, root, b"/../../lib/os-release", how, len(how))
print(os.read(fd, 11).decode())
how = struct.pack("QQQ", os.O_RDONLY, 0, 0x08)          # RESOLVE_BENEATH
r = libc.syscall(437, root, b"../etc/passwd", how, len(how))
print(r, errno.errorcode[ctypes.get_errno()])
pid = os.fork()
if pid == 0:
    fd = os.open("/bin/echo", os.O_RDONLY)
    argv = (ctypes.c_char_p * 3)(b"echo", b"via-execveat", None)
    libc.syscall(322, fd, b"", argv, None, 0x1000)       # AT_EMPTY_PATH
    os._exit(99)
print(os.waitpid(pid, 0)[1] >> 8)
"""
    p = carryon_exec(debian_rootfs, "python3", "-c", code, engine=engine, user=ENGINE_USERS[0])
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ['PRETTY_NAME', 'PRETTY_NAME', '-1 EXDEV', 'via-execveat', '0']


@pytest.mark.parametrize("engine", ["seccomp", "seccomp-python", "ptrace"] + USERNS)
@pytest.mark.parametrize("user", ENGINE_USERS)
def test_file_replaced_by_a_symlink_is_followed_in_the_guest(debian_rootfs, engine_tmp, engine, user):
    """The tracer remembers names seen not to be symlinks; `ln -sf` (a new link renamed over the
    file) and a link made at a name seen missing must still be followed inside the guest, never on
    the host (where the same absolute path holds a different file). Reading `target` in between
    puts the directory back in the cache, so the names are looked up the quick way again."""
    name = f"carryon-leaf-{engine}-{user}-{os.getpid()}"
    host_dir = f"/tmp/{name}"
    os.makedirs(host_dir, exist_ok=True)
    for leaf in ("target", "file", "late"):
        with open(f"{host_dir}/{leaf}", "w") as f:
            f.write("HOST\n")
    try:
        d = f"/tmp/{name}"
        script = (f"mkdir -p {d} && echo guest > {d}/target && echo plain > {d}/file && "
                  f"cat {d}/file {d}/file; cat {d}/late 2>/dev/null; cat {d}/late 2>/dev/null; "
                  f"ln -sf {d}/target {d}/file && cat {d}/target {d}/target >/dev/null && "
                  f"cat {d}/file && ln -s {d}/target {d}/late && cat {d}/target >/dev/null && "
                  f"cat {d}/late")
        p = carryon_exec(debian_rootfs, "sh", "-c", script, engine=engine, user=user)
        assert p.returncode == 0, p.stderr
        assert p.stdout.split() == ["plain", "plain", "guest", "guest"]
    finally:
        import shutil
        shutil.rmtree(host_dir, ignore_errors=True)


JAIL_LEAF = r"""
import os, subprocess, sys
d = sys.argv[1]                                 # an absolute guest directory, also on the host
jail = "/var/tmp/leafjail"
os.makedirs(jail + d, exist_ok=True)
open(jail + d + "/target", "w").write("guest\n")
open(jail + d + "/file", "w").write("plain\n")
go_r, go_w = os.pipe()
done_r, done_w = os.pipe()
pid = os.fork()
if pid == 0:                                    # the chrooted process reads the file twice
    os.chroot(jail)
    out = [open(d + "/file").read().strip(), open(d + "/file").read().strip()]
    os.write(go_w, b"x")
    os.read(done_r, 1)
    open(d + "/target").read()                  # its directory is known again
    out.append(open(d + "/file").read().strip())
    print(" ".join(out), flush=True)
    os._exit(0)
os.read(go_r, 1)                                # meanwhile, outside the chroot: `ln -sf`
subprocess.run(["ln", "-sf", d + "/target", jail + d + "/file"], check=True)
os.write(done_w, b"x")
os.waitpid(pid, 0)
"""


@pytest.mark.parametrize("engine", ["seccomp", "seccomp-python", "ptrace"])
def test_symlink_made_outside_an_emulated_chroot_is_seen_inside(debian_rootfs, engine):
    """A process outside an emulated chroot turns a file inside it into a symlink: the chrooted
    process (whose path caches are its own) follows it in its own root, not on the host."""
    name = f"carryon-jail-{engine}-{os.getpid()}"
    host_dir = f"/tmp/{name}"
    os.makedirs(host_dir, exist_ok=True)
    with open(f"{host_dir}/target", "w") as f:
        f.write("HOST\n")
    try:
        p = carryon_exec(debian_rootfs, "python3", "-c", JAIL_LEAF, f"/tmp/{name}", engine=engine,
                         user=ENGINE_USERS[0], opts=("-0",))
        assert p.returncode == 0, p.stderr
        assert p.stdout.split() == ["plain", "plain", "guest"]
    finally:
        import shutil
        shutil.rmtree(host_dir, ignore_errors=True)


RENAME_RACE = r"""
import os, sys, threading
marker = sys.argv[1]                    # a host file outside the rootfs (absent in the guest)
base = "/race"
os.makedirs(base + "/d", exist_ok=True)
if not os.path.lexists(base + "/lnk"):
    os.symlink("/", base + "/lnk")
through = base + "/d" + marker          # "d" is a directory, or for a moment a symlink to "/"
created = base + "/d" + os.path.dirname(marker) + "/created-by-guest"
hits = []
done = threading.Event()
def swap():
    while not done.is_set():
        try:
            os.rename(base + "/d", base + "/dsave")
            os.rename(base + "/lnk", base + "/d")
            os.rename(base + "/d", base + "/lnk")
            os.rename(base + "/dsave", base + "/d")
        except OSError:
            pass
def attack(n):
    for _ in range(n):
        try:
            with open(through) as f:
                hits.append(f.read())
        except OSError:
            pass
        try:
            os.close(os.open(created, os.O_WRONLY | os.O_CREAT, 0o644))
            hits.append("created")
        except OSError:
            pass
swapper = threading.Thread(target=swap)
swapper.start()
readers = [threading.Thread(target=attack, args=(int(sys.argv[2]),)) for _ in range(3)]
for t in readers:
    t.start()
for t in readers:
    t.join()
done.set()
swapper.join()
print("hits", len(hits))
"""


@pytest.mark.parametrize("engine", ["seccomp", "ptrace"] + USERNS)
def test_rename_race_reaches_nothing_outside_the_root(debian_rootfs, engine_tmp, engine):
    """A guest thread swaps a directory for a symlink to `/` (rename) while others open a path
    through it: the ptrace rungs check the path, then the kernel uses it (the symlink may be there
    by then, and leads to the HOST's root); in a mount namespace `/` is the guest's own root.
    CARRYON_TEST_RACE_ALL=1 runs the ptrace rungs too (they fail: hits in the hundreds here)."""
    if engine != "userns" and not os.environ.get("CARRYON_TEST_RACE_ALL"):
        pytest.xfail("the ptrace rungs translate paths check-then-use: a renamed symlink can lead "
                     "out of the root between the check and the call (README: Engines)")
    import tempfile
    outside = tempfile.mkdtemp(prefix="carryon-race-", dir="/tmp")
    os.chmod(outside, 0o777)
    marker = os.path.join(outside, "marker")
    with open(marker, "w") as f:
        f.write(SECRET + "\n")
    os.chmod(marker, 0o644)
    try:
        for user in ENGINE_USERS:
            work = world_dir(engine_tmp, f"race-{engine}-{user}")
            p = carryon_exec(debian_rootfs, "python3", "-c", RENAME_RACE, marker, "4000",
                             engine=engine, user=user, opts=("-b", f"{work}:/race"), timeout=300)
            assert p.returncode == 0, p.stderr
            assert p.stdout == "hits 0\n", f"{user}: the guest reached {outside}: {p.stdout}"
            assert os.listdir(outside) == ["marker"], f"{user}: the guest created a file outside"
    finally:
        import shutil
        shutil.rmtree(outside, ignore_errors=True)
