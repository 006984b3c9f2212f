"""Layer-merge edge cases on small images built in the test (packer.squash via `pack`)."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import stat
import tarfile

import pytest

from conftest import listing, tar_bytes, tar_member as M, write_oci
from packer.pack import pack
from runtime import archive
from runtime.extract import extract_rootfs

D, F, L, H = tarfile.DIRTYPE, tarfile.REGTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE


def build(tmp_path, layers, **kw):
    """Pack an OCI image made of `layers`, extract it; returns (root, meta, manifest)."""
    src = write_oci(tmp_path / "img", layers, **kw)
    out = tmp_path / "app.run"
    manifest = pack(str(src), str(out), bare=True)
    root = tmp_path / "root"
    meta = extract_rootfs(archive.read_layout(str(out)), str(root))
    return root, meta, manifest


def tree(root) -> list[str]:
    return [ln for ln in listing(root) if ln != "d 755 . -> "]


def test_whiteouts_and_replacements(tmp_path):
    base = [M("./", D), M("etc", D), M("etc/keep", data=b"k"), M("etc/gone", data=b"g"),
            M("d2f", D), M("d2f/child", data=b"c"), M("d2f/sub", D), M("d2f/sub/gc", data=b"g"),
            M("d2l", D), M("d2l/child", data=b"c"), M("target", D), M("target/t", data=b"t"),
            M("f2d", data=b"file"), M("l2d", L, linkname="target"),
            M("recreated", D), M("recreated/old", data=b"old")]
    edits = [M("etc/.wh.gone"), M("d2f", data=b"now a file"), M("d2l", L, linkname="target"),
             M("f2d", D), M("f2d/inside", data=b"i"), M("l2d", D), M("l2d/d.txt", data=b"d"),
             M(".wh.recreated"), M("etc/keep/.wh.x"),  # whiteout under a file: ignored
             M("new/deep/file", data=b"implicit parents")]
    again = [M("recreated", D), M("recreated/new", data=b"new")]
    root, meta, _ = build(tmp_path, [base, edits, again])
    assert tree(root) == [
        "d 755 ./etc -> ", "d 755 ./f2d -> ", "d 755 ./l2d -> ", "d 755 ./new -> ", "d 755 ./new/deep -> ",
        "d 755 ./recreated -> ", "d 755 ./target -> ",
        "f 644 ./d2f -> ", "f 644 ./etc/keep -> ", "f 644 ./f2d/inside -> ", "f 644 ./l2d/d.txt -> ",
        "f 644 ./new/deep/file -> ", "f 644 ./recreated/new -> ", "f 644 ./target/t -> ",
        "l 777 ./d2l -> target"]
    assert (root / "d2f").read_bytes() == b"now a file"
    assert meta["entries"]["/new/deep"]["mode"] == 0o755


@pytest.mark.parametrize("opaque_first", [True, False])
def test_opaque_dir_before_or_after_its_entry(tmp_path, opaque_first):
    lower = [M("o", D), M("o/lower", data=b"l"), M("o/sub", D), M("o/sub/lower2", data=b"l"),
             M("other", data=b"x")]
    opq, ent = M("o/.wh..wh..opq"), M("o", D, mode=0o750)
    upper = ([opq, ent] if opaque_first else [ent, opq]) + [M("o/sub/upper", data=b"u"), M("o/up", data=b"u")]
    root, _, _ = build(tmp_path, [lower, upper])
    assert tree(root) == ["d 750 ./o -> ", "d 755 ./o/sub -> ", "f 644 ./o/sub/upper -> ", "f 644 ./o/up -> ",
                          "f 644 ./other -> "]


def test_same_layer_entries_survive_its_whiteouts(tmp_path):
    lower = [M("a", data=b"lower")]
    upper = [M("a", data=b"upper"), M(".wh.a")]  # whiteout after a same-layer entry: spec says keep it
    root, _, _ = build(tmp_path, [lower, upper])
    assert (root / "a").read_bytes() == b"upper"


def test_hardlink_set_partly_whited_out_and_replaced(tmp_path):
    l1 = [M("h", D), M("h/a", data=b"shared", mode=0o640, uid=7), M("h/b", H, linkname="h/a"),
          M("h/c", H, linkname="./h/a"), M("h/d", H, linkname="/h/a")]
    l2 = [M("h/.wh.a"), M("h/.wh.c")]       # the first name goes: b and d keep the content
    l3 = [M("h/e", H, linkname="h/b")]      # link to a name from a lower layer
    root, meta, manifest = build(tmp_path, [l1, l2, l3])
    names = sorted(os.listdir(root / "h"))
    assert names == ["b", "d", "e"]
    inos = {os.lstat(root / "h" / n).st_ino for n in names}
    assert len(inos) == 1 and os.lstat(root / "h/b").st_nlink == 3
    assert (root / "h/e").read_bytes() == b"shared"
    assert meta["entries"]["/h/d"]["type"] == "h" and meta["entries"]["/h/d"]["uid"] == 7
    assert manifest["rootfs"]["hardlinks"] == 2 and manifest["rootfs"]["files"] == 1


def test_symlinks_are_never_followed_while_merging(tmp_path):
    l1 = [M("real", D), M("real/x", data=b"x"), M("link", L, linkname="real"), M("abs", L, linkname="/real")]
    l2 = [M("link", D), M("link/new", data=b"n"),    # replaces the symlink, real/ untouched
          M("abs", data=b"file now")]                 # replaces the symlink, not /real
    root, _, _ = build(tmp_path, [l1, l2])
    assert sorted(os.listdir(root / "real")) == ["x"]
    assert (root / "link").is_dir() and not (root / "link").is_symlink()
    assert (root / "abs").read_bytes() == b"file now"


def test_write_through_symlinked_parent_lands_inside(tmp_path):
    l1 = [M("etc", D), M("lnk", L, linkname="/etc"), M("up", L, linkname="../../..")]
    l2 = [M("lnk/x", data=b"via link"), M("up/y", data=b"clamped")]
    root, _, _ = build(tmp_path, [l1, l2])
    assert (root / "etc/x").read_bytes() == b"via link"
    assert (root / "y").read_bytes() == b"clamped"


def test_modes_owners_xattrs_special_files(tmp_path):
    layer = [M("./", D, mode=0o700), M("locked", D, mode=0o000), M("locked/f", data=b"x", mode=0),
             M("suid", data=b"s", mode=0o4755), M("sgid", D, mode=0o2775), M("tmp", D, mode=0o1777),
             M("owned", data=b"o", uid=4242, gid=4343), M("fifo", tarfile.FIFOTYPE, mode=0o640),
             M("null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3),
             M("sda", tarfile.BLKTYPE, mode=0o660, devmajor=8, devminor=0),
             M("xa", data=b"x", xattrs={"user.k": b"v", "security.capability": b"\x01\x00\x00\x02"})]
    root, meta, manifest = build(tmp_path, [layer])
    try:
        assert stat.S_IMODE(os.lstat(root).st_mode) == 0o700
        assert stat.S_IMODE(os.lstat(root / "locked").st_mode) == 0
        assert stat.S_IMODE(os.lstat(root / "suid").st_mode) == 0o4755
        assert stat.S_IMODE(os.lstat(root / "sgid").st_mode) == 0o2775
        assert stat.S_IMODE(os.lstat(root / "tmp").st_mode) == 0o1777
        assert stat.S_ISFIFO(os.lstat(root / "fifo").st_mode)
        e = meta["entries"]
        assert e["/null"] == {"uid": 0, "gid": 0, "mode": 0o666, "type": "c", "rdev": [1, 3]}
        assert e["/sda"]["type"] == "b" and e["/sda"]["rdev"] == [8, 0]
        assert (e["/owned"]["uid"], e["/owned"]["gid"]) == (4242, 4343)
        assert e["/locked/f"]["mode"] == 0
        assert set(e["/xa"]["xattrs"]) == {"user.k", "security.capability"}
        assert meta["root"]["mode"] == 0o700
        assert manifest["rootfs"]["other"] == 3
    finally:
        from runtime.extract import remove_tree
        remove_tree(str(root))


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_long_and_non_ascii_names(tmp_path, fmt):
    prefix_path = "/".join(["p" * 40] * 3) + "/file.txt"      # > 100 chars, fits USTAR prefix+name
    long_name = "n" * 150                                     # needs GNU LongLink or PAX
    members = [M("d", D), M("d/" + prefix_path, data=b"prefix")]
    if fmt != tarfile.USTAR_FORMAT:
        members += [M("d/" + long_name, data=b"long"), M("d/naïve-日本語-😀.txt", data=b"utf8"),
                    M("d/" + "l" * 120, L, linkname="t" * 160)]
    raw = tar_bytes(members, fmt=fmt)
    root, _, _ = build(tmp_path, [raw])
    assert (root / "d" / prefix_path).read_bytes() == b"prefix"
    if fmt != tarfile.USTAR_FORMAT:
        assert (root / "d" / long_name).read_bytes() == b"long"
        assert (root / "d/naïve-日本語-😀.txt").read_bytes() == b"utf8"
        assert os.readlink(root / "d" / ("l" * 120)) == "t" * 160


def test_tar_without_end_blocks_and_mislabelled_media_types(tmp_path):
    l1 = tar_bytes([M("a", data=b"a" * 700), M("b", data=b"b" * 3)], end_blocks=False)
    l2 = tar_bytes([M("c", data=b"c")], end_blocks=False)
    src = write_oci(tmp_path / "img", [l1, l2], compress="none")
    # relabel: claim gzip for a plain tar, and store the 2nd layer gzip'd while labelled as plain tar
    mpath = next(p for p in (src / "blobs/sha256").iterdir() if b'"layers"' in p.read_bytes())
    m = json.loads(mpath.read_bytes())
    gz = gzip.compress(l2, mtime=0)
    digest = hashlib.sha256(gz).hexdigest()
    (src / "blobs/sha256" / digest).write_bytes(gz)
    m["layers"][0]["mediaType"] = "application/vnd.oci.image.layer.v1.tar+gzip"
    m["layers"][1].update({"digest": "sha256:" + digest, "size": len(gz),
                           "mediaType": "application/vnd.oci.image.layer.v1.tar"})
    mdata = json.dumps(m).encode()
    md = hashlib.sha256(mdata).hexdigest()
    (src / "blobs/sha256" / md).write_bytes(mdata)
    idx = json.loads((src / "index.json").read_text())
    idx["manifests"][0].update({"digest": "sha256:" + md, "size": len(mdata)})
    (src / "index.json").write_text(json.dumps(idx))
    out = tmp_path / "x.run"
    manifest = pack(str(src), str(out), bare=True)
    assert [ly["compression"] for ly in manifest["image"]["layers"]] == ["none", "gzip"]
    root = tmp_path / "root"
    extract_rootfs(archive.read_layout(str(out)), str(root))
    assert (root / "a").read_bytes() == b"a" * 700 and (root / "b").read_bytes() == b"bbb"
    assert (root / "c").read_bytes() == b"c"


def test_multi_member_gzip_and_zstd_layers(tmp_path):
    import zstandard
    raw = tar_bytes([M("a", data=b"x" * 5000)])
    half = len(raw) // 2
    src = write_oci(tmp_path / "img", [raw], compress="none")
    # rewrite the layer as a two-member gzip: still the same diff_id
    blob = gzip.compress(raw[:half], mtime=0) + gzip.compress(raw[half:], mtime=0)
    _swap_layer(src, 0, blob, "application/vnd.oci.image.layer.v1.tar+gzip")
    root, _, _ = _pack_extract(tmp_path, src, "a")
    assert (root / "a").read_bytes() == b"x" * 5000
    cz = zstandard.ZstdCompressor()
    _swap_layer(src, 0, cz.compress(raw[:half]) + cz.compress(raw[half:]),
                "application/vnd.oci.image.layer.v1.tar+zstd")
    root, _, _ = _pack_extract(tmp_path, src, "b")
    assert (root / "a").read_bytes() == b"x" * 5000


def _swap_layer(src, i, blob, media_type):
    digest = hashlib.sha256(blob).hexdigest()
    (src / "blobs/sha256" / digest).write_bytes(blob)
    idx = json.loads((src / "index.json").read_text())
    mpath = src / "blobs/sha256" / idx["manifests"][0]["digest"].split(":")[1]
    m = json.loads(mpath.read_bytes())
    m["layers"][i].update({"digest": "sha256:" + digest, "size": len(blob), "mediaType": media_type})
    mdata = json.dumps(m).encode()
    md = hashlib.sha256(mdata).hexdigest()
    (src / "blobs/sha256" / md).write_bytes(mdata)
    idx["manifests"][0].update({"digest": "sha256:" + md, "size": len(mdata)})
    (src / "index.json").write_text(json.dumps(idx))


def _pack_extract(tmp_path, src, tag):
    out = tmp_path / f"{tag}.run"
    manifest = pack(str(src), str(out), bare=True)
    root = tmp_path / f"root-{tag}"
    meta = extract_rootfs(archive.read_layout(str(out)), str(root))
    return root, meta, manifest


def test_deterministic_and_ordered(tmp_path):
    layers = [[M("b", D), M("b/z", data=b"z"), M("a-b", data=b"1"), M("a", D), M("a/b", data=b"2"),
               M("a/a", H, linkname="a/b")]]
    src = write_oci(tmp_path / "img", layers)
    pack(str(src), str(tmp_path / "1.run"), bare=True)
    pack(str(src), str(tmp_path / "2.run"), bare=True)
    assert (tmp_path / "1.run").read_bytes() == (tmp_path / "2.run").read_bytes()
    lay = archive.read_layout(str(tmp_path / "1.run"))
    with archive.iter_rootfs(lay) as tf:
        entries = [(m.name, m.type, m.linkname, m.uname, m.gname) for m in tf]
    assert [e[0] for e in entries] == [".", "./a", "./a/a", "./a/b", "./a-b", "./b", "./b/z"]
    assert entries[3][1] == tarfile.LNKTYPE and entries[3][2] == "./a/a"  # 2nd name -> link to the 1st
    assert all(e[3] == "" and e[4] == "" for e in entries)
    m = archive.read_manifest(lay)
    assert m["rootfs"]["sha256"] == lay.sections["rootfs"].sha256
    assert m["rootfs"]["total_entries"] == 7 and m["rootfs"]["uncompressed_bytes"] == 3


def _squash(layers) -> list[str]:
    """packer.squash alone on in-memory layers: 'KIND path[ -> target]' for every node, sorted."""
    import io
    import tempfile

    from packer.layers import TarStream
    from packer.squash import Squasher
    with tempfile.TemporaryFile() as spool:
        sq = Squasher(spool)
        for i, members in enumerate(layers):
            sq.begin_layer(i, f"layer {i}")
            sq.apply_tar(TarStream(io.BytesIO(tar_bytes(members))))
            sq.end_layer()
        out: list[str] = []
        todo = [("", sq.root)]
        while todo:
            path, node = todo.pop()
            for name, child in node.children.items():
                p = path + "/" + name
                out.append(f"{child.kind} {p}" + (f" -> {child.linkname}" if child.kind == "l" else ""))
                if child.kind == "d":
                    todo.append((p, child))
        return sorted(out)


def test_consecutive_entries_of_one_directory(tmp_path):
    """Entries in the parent of the entry before them (the squasher remembers that parent): the
    parent replaced, reached through a symlink or through `..`, a whiteout in between."""
    layer0 = [M("d", D), M("d/sub", D), M("d/sub/f1", data=b"1"),
              M("d/sub", data=b"now a file"),             # replaces the directory f1 was in
              M("d/sub/f2", data=b"2"),                   # a new directory again, without f1
              M("t", D), M("t/in", D), M("l", L, linkname="/t"),
              M("l/in/x", data=b"x"),                     # through the symlink: lands in t/in
              M("l", D), M("l/in/y", data=b"y"),          # l is now a directory: y lands in l/in
              M("w", D), M("w/a", D), M("w/a/keep", data=b"k"),
              M("b", D), M("a", D), M("a/l", L, linkname="../b/x/.."),
              M("a/l/x", data=b"x"),                      # a/l resolves to b through b/x ...
              M("a/l/y", data=b"y")]                      # ... which this walk makes a directory again
    layer1 = [M("w/a/one", data=b"1"), M("w/.wh.a"),       # w/a was walked through by this layer: kept
              M("w/a/two", data=b"2"),
              M("e", D), M("e/f", data=b"f"), M("e/..", D, mode=0o711), M("e/../g", data=b"g"),
              M("e/h", data=b"h")]
    assert _squash([layer0, layer1]) == sorted([
        "d /d", "d /d/sub", "f /d/sub/f2",
        "d /t", "d /t/in", "f /t/in/x",
        "d /l", "d /l/in", "f /l/in/y",
        "d /w", "d /w/a", "f /w/a/keep", "f /w/a/one", "f /w/a/two",
        "d /b", "d /a", "l /a/l -> ../b/x/..", "d /b/x", "f /b/y",
        "d /e", "f /e/f", "f /g", "f /e/h"])
