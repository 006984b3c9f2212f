"""Mapper: binds (longest prefix, file binds, missing bind points, read-only), host->guest."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile

import pytest

from runtime.path import Mapper
from runtime.spec import Bind


@pytest.fixture
def world():
    d = tempfile.mkdtemp(prefix="carryon-bind-")
    os.chmod(d, 0o755)
    yield os.path.realpath(d)
    shutil.rmtree(d, ignore_errors=True)


def _write(p: str, text: str = "x") -> None:
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "w") as f:
        f.write(text)


@pytest.fixture
def tree(world):
    r = f"{world}/root"
    _write(f"{r}/etc/passwd")
    _write(f"{r}/run/stub-resolv.conf", "guest resolv\n")
    os.symlink("../run/stub-resolv.conf", f"{r}/etc/resolv.conf")
    os.makedirs(f"{r}/var")
    os.symlink("/run", f"{r}/var/run")
    os.makedirs(f"{r}/mnt")
    os.makedirs(f"{r}/tmp")
    a = f"{world}/A"
    _write(f"{a}/sub/file")
    os.symlink("/etc/passwd", f"{a}/abs")
    os.symlink("..", f"{a}/up")
    b = f"{world}/B"
    _write(f"{b}/x")
    _write(f"{world}/resolv.host", "host resolv\n")
    return r, a, b


def test_longest_prefix_wins_and_dotdot_leaves_bind(world, tree):
    r, a, b = tree
    m = Mapper(r, [Bind(a, "/mnt/a"), Bind(b, "/mnt/a/sub")])
    assert m.to_host("/mnt/a/sub/x", "/", True) == f"{b}/x"
    assert m.to_host("/mnt/a/sub/file", "/", True) == f"{b}/file"     # shadowed by B
    assert m.to_host("/mnt/a/sub/..", "/", True) == f"{a}/"
    assert m.to_host("/mnt/a/..", "/", True) == f"{r}/mnt/"
    assert m.to_host("/mnt/a/up", "/", True) == f"{r}/mnt"             # `..` inside a bind: guest
    assert m.to_host("/mnt/a/abs", "/", True) == f"{r}/etc/passwd"     # absolute: guest root
    assert m.to_host("x", "/mnt/a/sub", True) == f"{b}/x"
    assert m.to_host("../sub/x", "/mnt/a/sub", True) == f"{b}/x"
    assert m.canon("/mnt/a/up/a/sub/x", "/", True) == "/mnt/a/sub/x"


def test_bind_guest_path_is_canonicalised_in_the_guest(world, tree):
    r, a, _ = tree
    # /var/run -> /run in the image: the bind lands on /run/x and both names reach it
    m = Mapper(r, [Bind(a, "/var/run/x"), Bind(f"{world}/resolv.host", "/etc/resolv.conf")])
    assert [x.guest for x in m.binds] == ["/run/x", "/run/stub-resolv.conf"]
    assert m.to_host("/var/run/x/sub/file", "/", True) == f"{a}/sub/file"
    assert m.to_host("/run/x/sub/file", "/", True) == f"{a}/sub/file"
    with open(m.to_host("/etc/resolv.conf", "/", True)) as f:
        assert f.read() == "host resolv\n"
    assert m.is_bind_root("/run/x") and not m.is_bind_root("/run")


def test_bind_of_host_root_and_bind_at_guest_root(world, tree):
    r, a, _ = tree
    m = Mapper(r, [Bind("/", "/host")])
    assert m.to_host("/host/etc/hostname", "/", False) == "/etc/hostname"
    assert m.to_guest("/usr/bin") == "/host/usr/bin"
    assert m.to_guest(f"{r}/etc") == "/etc"                 # the rootfs prefix is longer
    assert m.to_host("/host/..", "/", True) == r + "/"
    m = Mapper(r, [Bind(a, "/")])
    assert m.to_host("/sub/file", "/", True) == f"{a}/sub/file"
    assert m.to_guest(f"{a}/sub") == "/sub"
    assert m.to_guest(f"{r}/etc") == "/etc"
    assert m.to_guest(a) == "/"


def test_file_bind_and_missing_points_without_creating(world, tree):
    r, a, b = tree
    m = Mapper(r, [Bind(a, "/new/deep/point"), Bind(f"{world}/resolv.host", "/etc/hostfile")])
    # below a missing bind point: reachable although /new does not exist in the image
    assert m.to_host("/new/deep/point/sub/file", "/", True) == f"{a}/sub/file"
    assert m.to_host("/new/deep/point", "/", True) == a
    assert m.to_host("/new/deep/point/../../../etc/passwd", "/", True) == f"{r}/etc/passwd"
    assert m.to_host("/etc/hostfile", "/", True) == f"{world}/resolv.host"
    # the missing ancestors are directories of the run's glue (PRoot's): entered, listed, stat'ed
    glued = m.to_host("/new/deep", "/", True)
    assert not glued.startswith(r) and os.path.isdir(glued)
    assert os.listdir(glued) == ["point"] and os.listdir(m.to_host("/new", "/", False)) == ["deep"]
    assert m.to_guest(glued) == "/new/deep" and m.canon("/new/deep/..", "/", True) == "/new"
    assert m.to_host("/new/deep/point", "/", False) == a
    assert not os.path.exists(f"{r}/new")          # the image is left alone
    # listings that lack a name: the image's directories only (the glue holds its names)
    assert m.synthetic_entries("/") == ["new"]
    assert m.synthetic_entries("/new") == [] and m.synthetic_entries("/new/deep") == []
    assert m.synthetic_entries("/etc") == ["hostfile"]
    assert m.synthetic_entries("/mnt") == []
    assert m.to_guest(f"{a}/sub") == "/new/deep/point/sub"


def test_ensure_mount_points_creates_inside_rootfs_only(world, tree):
    r, a, b = tree
    m = Mapper(r, [Bind(a, "/mnt/a"), Bind(b, "/mnt/a/inner/deeper"),
                   Bind(f"{world}/resolv.host", "/etc/hostfile"), Bind(b, "/opt/x/y")])
    created = m.ensure_mount_points()
    assert sorted(created) == ["/etc/hostfile", "/mnt/a", "/opt", "/opt/x", "/opt/x/y"]
    assert stat.S_ISREG(os.lstat(f"{r}/etc/hostfile").st_mode)
    assert os.path.isdir(f"{r}/opt/x/y")
    # /mnt/a/inner would be inside bind A (a host directory): never created there
    assert not os.path.exists(f"{a}/inner")
    assert m.synthetic_entries("/mnt/a") == ["inner"]
    assert m.to_host("/mnt/a/inner/deeper/x", "/", True) == f"{b}/x"
    assert m.synthetic_entries("/") == [] and m.synthetic_entries("/opt/x") == []
    assert m.ensure_mount_points() == []                   # idempotent
    # with a host directory bound over the guest root, nothing is created in it
    m = Mapper(r, [Bind(a, "/"), Bind(b, "/newpoint")])
    assert m.ensure_mount_points() == []
    assert not os.path.exists(f"{a}/newpoint")
    assert m.synthetic_entries("/") == ["newpoint"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_ensure_mount_points_on_readonly_rootfs(world, tree):
    r, a, _ = tree
    os.chmod(r, 0o555)
    try:
        m = Mapper(r, [Bind(a, "/data")])
        assert m.ensure_mount_points() == []
        assert m.synthetic_entries("/") == ["data"]
        assert m.to_host("/data/sub/file", "/", True) == f"{a}/sub/file"
    finally:
        os.chmod(r, 0o755)


def test_readonly(world, tree):
    r, a, b = tree
    m = Mapper(r, [Bind(a, "/ro", readonly=True), Bind(b, "/ro/rw")])
    assert m.readonly(m.to_host("/ro/sub/file", "/", True))
    assert m.readonly(m.to_host("/ro/newfile", "/", False, parent_op=True))
    assert m.readonly(a)
    assert not m.readonly(m.to_host("/ro/rw/x", "/", True))
    assert not m.readonly(m.to_host("/etc/passwd", "/", True))
    assert not m.readonly(a + "-sibling/x")
    assert not Mapper(r, [Bind(a, "/rw")]).readonly(a)


def test_parent_op_on_bind_point_is_refused_by_kernel(world, tree):
    r, a, _ = tree
    m = Mapper(r, [Bind(a, "/mnt/a"), Bind(f"{world}/resolv.host", "/etc/hostfile")])
    for guest in ("/mnt/a", "/etc/hostfile"):
        h = m.to_host(guest, "/", False, parent_op=True)
        assert h.endswith("/.")
        with pytest.raises(OSError) as e:
            os.rename(h, f"{r}/renamed")
        assert e.value.errno in (errno.EBUSY, errno.ENOTDIR, errno.EINVAL)
        with pytest.raises(OSError):
            os.unlink(h)
    assert os.path.isfile(f"{world}/resolv.host") and os.path.isdir(a)


def test_to_guest(world, tree):
    r, a, b = tree
    m = Mapper(r, [Bind(a, "/mnt/a"), Bind(b, "/mnt/a/sub")])
    assert m.to_guest(r) == "/"
    assert m.to_guest(r + "/") == "/"
    assert m.to_guest(f"{r}/etc/passwd") == "/etc/passwd"
    assert m.to_guest(f"{b}/x") == "/mnt/a/sub/x"
    assert m.to_guest(f"{a}/sub/file") == "/mnt/a/sub/file"
    assert m.to_guest(f"{r}/tmp/gone (deleted)") == "/tmp/gone (deleted)"
    assert m.to_guest(r + "x/y") is None                    # a sibling sharing the prefix
    assert m.to_guest("/usr/bin") is None
    assert m.to_guest("pipe:[1234]") is None


def test_dircache_forget(world, tree):
    r, _, _ = tree
    m = Mapper(r, [], cache_dirs=True)
    os.makedirs(f"{r}/d/e")
    assert m.to_host("/d/e", "/", True) == f"{r}/d/e"
    os.rmdir(f"{r}/d/e")
    os.rmdir(f"{r}/d")
    os.symlink("/etc", f"{r}/d")
    m.forget()
    assert m.to_host("/d/passwd", "/", True) == f"{r}/etc/passwd"


def test_dirlinks_alias_cache(world, tree):
    """A directory spelt through a symlink (/lib -> usr/lib) is remembered: later paths under it give
    the same (canonical guest, host) as a walk without caches, and forget() drops it."""
    r, _, _ = tree
    os.makedirs(f"{r}/usr/lib/x86_64-linux-gnu")
    _write(f"{r}/usr/lib/x86_64-linux-gnu/libc.so.6")
    os.symlink("usr/lib", f"{r}/lib")
    os.symlink("libc.so.6", f"{r}/usr/lib/x86_64-linux-gnu/libc.so")
    cached = Mapper(r, [], cache_dirs=True)
    plain = Mapper(r, [])
    paths = ["/lib/x86_64-linux-gnu/libc.so.6", "/lib/x86_64-linux-gnu/libc.so", "/lib/x86_64-linux-gnu/nope",
             "/lib/x86_64-linux-gnu"]
    for rnd in range(2):
        for p in paths:
            for follow in (True, False):
                assert cached.resolve(p, "/", follow) == plain.resolve(p, "/", follow), (rnd, p, follow)
    assert cached.dirlinks["/lib/x86_64-linux-gnu"] == ("/usr/lib/x86_64-linux-gnu", f"{r}/usr/lib/x86_64-linux-gnu")
    assert cached.resolve("/lib/x86_64-linux-gnu/libc.so.6", "/", True)[0] == "/usr/lib/x86_64-linux-gnu/libc.so.6"
    # the guest re-points the link (the engine calls forget() at its symlink/unlink/rename calls)
    os.makedirs(f"{r}/lib2/x86_64-linux-gnu")
    _write(f"{r}/lib2/x86_64-linux-gnu/libc.so.6", "other")
    os.unlink(f"{r}/lib")
    os.symlink("lib2", f"{r}/lib")
    cached.forget()
    assert cached.dirlinks == {}
    assert cached.to_host("/lib/x86_64-linux-gnu/libc.so.6", "/", True) == f"{r}/lib2/x86_64-linux-gnu/libc.so.6"


def test_dirlinks_never_below_proc(world, tree):
    """/proc/self/... leads somewhere else for every process: never remembered as an alias."""
    r, _, _ = tree
    os.makedirs(f"{r}/proc")
    m = Mapper(r, [Bind(host="/proc", guest="/proc")], cache_dirs=True)
    me = os.getpid()
    assert m.to_host("/proc/self/fd/0", "/", False, pid=me, tid=me) == f"/proc/{me}/fd/0"
    assert not any(k.startswith("/proc") for k in m.dirlinks)
    os.symlink("/proc/self", f"{r}/myself")
    assert m.to_host("/myself/fd/0", "/", False, pid=me, tid=me) == f"/proc/{me}/fd/0"
    assert not m.dirlinks


def test_leaf_cache(world, tree):
    """Names of the image's tree seen not to be symlinks (files, directories, missing names) are
    remembered: the same answers as a walk without caches, forget() drops them (the guest made a
    symlink there), names inside binds are never remembered, nothing is added while a forget-call
    is settling."""
    r, a, _ = tree
    cached = Mapper(r, [Bind(host=a, guest="/mnt/a")], cache_dirs=True)
    plain = Mapper(r, [Bind(host=a, guest="/mnt/a")])
    paths = ["/etc/passwd", "/etc/nope", "/etc", "/etc/resolv.conf", "/mnt/a/sub/file", "/mnt/a/abs",
             "/mnt/a/new"]
    for rnd in range(2):
        for p in paths:
            for follow in (True, False):
                assert cached.resolve(p, "/", follow) == plain.resolve(p, "/", follow), (rnd, p, follow)
    assert {"/etc/passwd", "/etc/nope"} <= cached.leaves
    assert "/etc/resolv.conf" not in cached.leaves          # a symlink
    assert not any(p.startswith("/mnt/a/") for p in cached.leaves)
    # `ln -sf /run/stub-resolv.conf /etc/passwd` and a new link at a missing name, by the guest
    os.symlink("/run/stub-resolv.conf", f"{r}/etc/tmp-link")
    os.rename(f"{r}/etc/tmp-link", f"{r}/etc/passwd")
    os.symlink("/run/stub-resolv.conf", f"{r}/etc/nope")
    assert cached.to_host("/etc/passwd", "/", True) == f"{r}/etc/passwd"     # stale until told
    cached.forget()
    assert not cached.leaves
    for p in ("/etc/passwd", "/etc/nope"):
        assert cached.to_host(p, "/", True) == f"{r}/run/stub-resolv.conf" == plain.to_host(p, "/", True)
    # a forget-call in flight (the engine counts its thread until its next stop): nothing is kept
    cached.forget()
    cached.settling = 1
    assert cached.to_host("/etc/resolv.conf", "/", True) == f"{r}/run/stub-resolv.conf"
    assert cached.to_host("/run/stub-resolv.conf", "/", True) == f"{r}/run/stub-resolv.conf"
    assert not cached.leaves and not cached.dirlinks and not cached.dircache
    cached.settling = 0
    assert cached.to_host("/run/stub-resolv.conf", "/", True) == f"{r}/run/stub-resolv.conf"
    assert cached.to_host("/run/stub-resolv.conf", "/", True) == f"{r}/run/stub-resolv.conf"
    assert "/run/stub-resolv.conf" in cached.leaves


def test_non_utf8_names_round_trip(world, tree):
    r, a, _ = tree
    raw = os.fsencode(r) + b"/caf\xe9"
    os.makedirs(raw + b"/d")
    os.symlink(b"caf\xe9/d", os.fsencode(r) + b"/l\xff")
    m = Mapper(r, [])
    guest = os.fsdecode(b"/l\xff/")                 # as read from a tracee, decoded with fsdecode
    host = m.to_host(guest, "/", False)
    assert os.fsencode(host) == raw + b"/d/"
    assert os.path.isdir(host)
    assert os.fsencode(m.to_guest(host.rstrip("/"))) == b"/caf\xe9/d"


def test_last_pure_tells_answers_that_only_the_image_tree_decides(tmp_path):
    """`Mapper.last_pure` (what the native loop's path cache may keep): True for answers from the
    image's tree (its symlinks, missing names), False through a bind, /proc, or a refused name."""
    root = tmp_path / "root"
    (root / "usr" / "lib").mkdir(parents=True)
    (root / "usr" / "lib" / "f").write_text("x")
    (root / "lib").symlink_to("usr/lib")
    (root / "etc").mkdir()
    (root / "etc" / "mtab").symlink_to("../proc/self/mounts")
    (root / "proc").mkdir()
    side = tmp_path / "side"
    side.mkdir()
    (side / "g").write_text("y")
    m = Mapper(str(root), [Bind(host=str(side), guest="/srv"), Bind(host="/proc", guest="/proc")],
               cache_dirs=True)
    for path, follow, pure in (("/usr/lib/f", True, True), ("/lib/f", True, True),
                               ("/lib/f", True, True), ("/usr/lib/missing", True, True),
                               ("/no/such/dir/x", True, True), ("/lib", False, True),
                               ("/srv/g", True, False), ("/srv", True, False),
                               ("/etc/mtab", True, False), ("/proc/self/status", True, False),
                               ("/usr/lib/f", False, True), ("/srv/g", True, False)):
        m.resolve(path, "/", follow, pid=os.getpid(), tid=os.getpid())
        assert m.last_pure is pure, (path, follow)


def test_proc_of_the_host_without_a_bind_and_ambiguous_names(world, tree):
    """The guest's /proc is the host's procfs with a rootfs of "/": /proc links are answered for
    the guest as with a /proc bind. A host directory with two guest names makes the mapper
    `ambiguous`; `guest_cwd` then answers the name noted for the process (or the run's start)."""
    r, a, b = tree
    m = Mapper("/", [])
    assert m.proc_root == "/proc" and m._proc_prefix == "/proc/"
    assert Mapper(r, []).proc_root is None and not Mapper(r, []).ambiguous
    assert not Mapper(r, [Bind(a, "/mnt/a"), Bind(b, "/mnt/b")]).ambiguous
    m = Mapper(r, [Bind(a, "/mnt/a"), Bind(a, "/srv")])
    assert m.ambiguous and m.to_guest(f"{a}/sub") == "/mnt/a/sub"
    m.note_cwd(0, "/srv", a)
    assert m.guest_cwd(os.getpid(), a) == "/srv" and m.guest_cwd(os.getpid(), f"{a}/sub") == "/mnt/a/sub"
    m.note_cwd(os.getpid(), "/srv/sub/", f"{a}/sub/")
    assert m.guest_cwd(os.getpid(), f"{a}/sub") == "/srv/sub"
    assert Mapper(r, [Bind(f"{r}/etc", "/mnt/etc")]).ambiguous
