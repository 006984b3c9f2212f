"""runtime/extract.py: safe rootless extraction and the metadata file."""

from __future__ import annotations

import base64
import json
import os
import stat
import tarfile

import pytest

from conftest import tar_member
from runtime import archive
from runtime.errors import InputError
from runtime.extract import escapes_root, extract_rootfs, meta_path_for, remove_tree, secure_resolve, split_path

D, F, L, H = tarfile.DIRTYPE, tarfile.REGTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE


def _tree(links: dict[str, str], dirs: set[str]):
    def kind(parts):
        p = "/".join(parts)
        if p in links:
            return "link", links[p]
        return ("dir" if p in dirs else None), ""
    return kind


@pytest.mark.parametrize("path,expect", [
    ("../../etc/x", "etc/x"),
    ("/etc/x", "etc/x"),
    ("a/../../b", "b"),
    ("lnk/x", "etc/x"),             # lnk -> /etc : re-rooted
    ("rel/x", "etc/x"),             # rel -> ../../../etc
    ("a/up/x", "x"),                # a/up -> ../.. clamps at the root
    ("lnk", "lnk"),                 # last component never followed
])
def test_secure_resolve(path, expect):
    kind = _tree({"lnk": "/etc", "rel": "../../../etc", "a/up": "../.."}, {"etc", "a"})
    assert "/".join(secure_resolve(split_path(path), kind)) == expect


def test_secure_resolve_follow_last_and_loop():
    kind = _tree({"x": "y", "y": "x"}, set())
    from runtime.extract import SymlinkLoop
    with pytest.raises(SymlinkLoop):
        secure_resolve(["x", "z"], kind)
    assert secure_resolve(["l"], _tree({"l": "/etc/passwd"}, {"etc"}), follow_last=True) == ("etc", "passwd")


def test_escapes_root():
    assert escapes_root("../x") and escapes_root("a/../../x")
    assert not escapes_root("/etc/passwd") and not escapes_root("a/../b")


def _extract(make_carryon, tmp_path, members):
    out = make_carryon(members)
    dest = tmp_path / "root"
    meta = extract_rootfs(archive.read_layout(str(out)), str(dest))
    return dest, meta


def test_extract_types_modes_and_meta(make_carryon, tmp_path):
    members = [
        tar_member("./", D, mode=0o750, uid=0, gid=0),
        tar_member("./bin", D, mode=0o755),
        tar_member("./bin/busybox", data=b"ELF", mode=0o4755),
        tar_member("./bin/sh", L, linkname="/bin/busybox"),
        tar_member("./bin/sh2", H, linkname="./bin/busybox"),
        tar_member("./locked", D, mode=0o000),
        tar_member("./locked/inner", data=b"x", mode=0o000, uid=4242, gid=4242),
        tar_member("./fifo", tarfile.FIFOTYPE, mode=0o644),
        tar_member("./dev-null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3),
        tar_member("./x", data=b"xa", xattrs={"user.fixture": b"hello", "security.capability": b"\x01\x02"}),
        tar_member("./sticky", D, mode=0o1777),
        tar_member("./naïve-😀", data=b"u"),
    ]
    dest, meta = _extract(make_carryon, tmp_path, members)
    try:
        assert stat.S_IMODE(dest.stat().st_mode) == 0o750
        assert stat.S_IMODE(os.lstat(dest / "bin/busybox").st_mode) == 0o4755
        assert os.readlink(dest / "bin/sh") == "/bin/busybox"
        assert os.lstat(dest / "bin/sh2").st_ino == os.lstat(dest / "bin/busybox").st_ino
        assert stat.S_ISFIFO(os.lstat(dest / "fifo").st_mode)
        assert stat.S_ISREG(os.lstat(dest / "dev-null").st_mode)  # placeholder, as umoci --rootless
        assert stat.S_IMODE(os.lstat(dest / "dev-null").st_mode) == 0o666 and (dest / "dev-null").stat().st_size == 0
        assert stat.S_IMODE(os.lstat(dest / "locked").st_mode) == 0
        assert stat.S_IMODE(os.lstat(dest / "sticky").st_mode) == 0o1777
        assert (dest / "naïve-😀").read_bytes() == b"u"
        assert os.getxattr(dest / "x", "user.fixture") == b"hello"
        on_disk = json.loads(open(meta_path_for(str(dest))).read())
        assert on_disk == meta
        e = meta["entries"]
        assert meta["root"] == {"mode": 0o750, "uid": 0, "gid": 0}
        assert e["/locked/inner"] == {"uid": 4242, "gid": 4242, "mode": 0, "type": "f"}
        assert e["/dev-null"]["type"] == "c" and e["/dev-null"]["rdev"] == [1, 3]
        assert e["/bin/sh"]["type"] == "l"
        assert e["/bin/sh2"]["type"] == "h" and e["/bin/sh2"]["target"] == "/bin/busybox"
        assert e["/bin/sh2"]["mode"] == 0o4755
        assert base64.b64decode(e["/x"]["xattrs"]["security.capability"]) == b"\x01\x02"
        assert not list(dest.glob("*.json"))  # meta is beside, never inside
        assert set(e) == {"/bin", "/bin/busybox", "/bin/sh", "/bin/sh2", "/locked", "/locked/inner",
                          "/fifo", "/dev-null", "/x", "/sticky", "/naïve-😀"}
    finally:
        remove_tree(str(dest))
    assert not dest.exists()


def _sentinel_check(tmp_path):
    """Nothing may appear beside the target except the target and its meta file."""
    return sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".carryon") and
                  not p.name.endswith(".zst"))


@pytest.mark.parametrize("members,inside", [
    ([tar_member("../../etc/x", data=b"evil")], "etc/x"),
    ([tar_member("/etc/x", data=b"evil")], "etc/x"),
    ([tar_member("./lnk", L, linkname="/etc"), tar_member("./lnk/x", data=b"evil")], None),
    ([tar_member("./up", L, linkname="../../.."), tar_member("./up/x", data=b"evil")], "x"),
])
def test_hostile_paths_stay_inside(make_carryon, tmp_path, members, inside):
    dest, meta = _extract(make_carryon, tmp_path, members)
    assert _sentinel_check(tmp_path) == ["root", "root.carryon-meta.json"]
    if inside:
        assert (dest / inside).read_bytes() == b"evil"
    else:  # written through the symlink /etc, re-rooted: lands in DEST/etc/x
        assert os.readlink(dest / "lnk") == "/etc"
        assert (dest / "etc" / "x").read_bytes() == b"evil"
        assert not os.path.exists("/etc/x") or open("/etc/x", "rb").read() != b"evil"
        assert meta["entries"]["/lnk"]["type"] == "l" and meta["entries"]["/etc/x"]["type"] == "f"


def test_hostile_hardlink_outside_is_refused(make_carryon, tmp_path):
    out = make_carryon([tar_member("./a", data=b"a"), tar_member("./h", H, linkname="../../../etc/passwd")])
    dest = tmp_path / "root"
    with pytest.raises(InputError, match="outside"):
        extract_rootfs(archive.read_layout(str(out)), str(dest))
    assert not dest.exists() and not os.path.exists(meta_path_for(str(dest)))


def test_replacements_within_one_archive(make_carryon, tmp_path):
    dest, meta = _extract(make_carryon, tmp_path, [
        tar_member("./d", D), tar_member("./d/child", data=b"c"),
        tar_member("./d", data=b"now a file"),
        tar_member("./f", data=b"f"), tar_member("./f", D, mode=0o700),
        tar_member("./deep/er/file", data=b"implicit parents"),
    ])
    assert (dest / "d").read_bytes() == b"now a file"
    assert "/d/child" not in meta["entries"]
    assert (dest / "f").is_dir() and stat.S_IMODE((dest / "f").stat().st_mode) == 0o700
    assert meta["entries"]["/deep/er"] == {"uid": 0, "gid": 0, "mode": 0o755, "type": "d"}
    assert stat.S_IMODE((dest / "deep").stat().st_mode) == 0o755


def test_destination_must_be_empty(make_carryon, tmp_path):
    out = make_carryon([tar_member("./a", data=b"a")])
    dest = tmp_path / "root"
    dest.mkdir()
    (dest / "junk").write_text("x")
    with pytest.raises(InputError, match="not empty"):
        extract_rootfs(archive.read_layout(str(out)), str(dest))
    empty = tmp_path / "empty"
    empty.mkdir()
    extract_rootfs(archive.read_layout(str(out)), str(empty))
    assert (empty / "a").read_bytes() == b"a"


def test_symlink_loop_is_an_input_error(make_carryon, tmp_path):
    out = make_carryon([tar_member("./etc", L, linkname="/etc"), tar_member("./etc/x", data=b"evil")])
    with pytest.raises(InputError, match="symlinks"):
        extract_rootfs(archive.read_layout(str(out)), str(tmp_path / "root"))
    assert not (tmp_path / "root").exists()


def test_corrupted_rootfs_is_an_input_error(make_carryon, tmp_path):
    out = make_carryon([tar_member("./big", data=bytes(range(256)) * 800 + os.urandom(1000))])
    lay = archive.read_layout(str(out))
    data = bytearray(out.read_bytes())
    s = lay.sections["rootfs"]
    data[s.offset + s.length // 2: s.offset + s.length // 2 + 64] = b"\0" * 64
    out.write_bytes(bytes(data))
    dest = tmp_path / "root"
    with pytest.raises(InputError):
        extract_rootfs(archive.read_layout(str(out)), str(dest))
    assert not dest.exists()


def test_progress_callback(make_carryon, tmp_path):
    out = make_carryon([tar_member("./a", data=b"a" * 1000), tar_member("./b", data=b"b" * 24)])
    seen = []
    extract_rootfs(archive.read_layout(str(out)), str(tmp_path / "r"), progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (1024, 1024)


def test_remove_tree_takes_entries_another_process_removed_meanwhile(tmp_path, monkeypatch):
    """A run's detached cleaner may still be removing its directory when the cache is removed
    (`--carryon-clean`, a script's cleanup): an entry that vanished is what was wanted (rm -f);
    any other failure is still raised."""
    tree = tmp_path / "t"
    (tree / "d").mkdir(parents=True)
    for name in ("a", "b", "d/c"):
        (tree / name).write_text(name)
    real = os.unlink
    gone: list[str] = []

    def racing(name, *args, **kw):          # someone else removes it first
        real(name, *args, **kw)
        gone.append(str(name))
        return real(name, *args, **kw)      # FileNotFoundError
    monkeypatch.setattr(os, "unlink", racing)
    remove_tree(str(tree))
    assert not tree.exists() and len(gone) == 3

    (tree / "d").mkdir(parents=True)
    (tree / "a").write_text("a")

    def refused(name, *args, **kw):
        raise PermissionError(13, "refused", name)
    monkeypatch.setattr(os, "unlink", refused)
    with pytest.raises(PermissionError):
        remove_tree(str(tree))
