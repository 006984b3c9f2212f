"""Layer robustness (issue #20): layer tars that Docker and umoci accept pack to the tree `umoci unpack`
makes of them; what they refuse is still refused, with one line.

Layers are written by the real tools where there is one (GNU tar for long names, links and sparse
files, `umoci insert` for a layer without end-of-archive blocks and padding), by Python's tarfile cut
to size for the malformed endings. Comparisons need umoci (`umoci unpack --rootless`, the project's
reference unpacker) and GNU tar; without them those tests skip.
"""

from __future__ import annotations

import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import zstandard

from conftest import REPO, listing, run_carryon, sha256_listing, tar_bytes, tar_member as M, write_oci
from packer.pack import pack
from runtime import archive
from runtime.errors import InputError
from runtime.extract import extract_rootfs, remove_tree

D, L, H = tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE


def _gnu_tar() -> bool:
    try:
        out = subprocess.run(["tar", "--version"], capture_output=True, text=True).stdout
    except FileNotFoundError:
        return False
    return "GNU tar" in out


needs_umoci = pytest.mark.skipif(shutil.which("umoci") is None, reason="umoci (the reference unpacker) missing")
needs_gnu_tar = pytest.mark.skipif(not _gnu_tar(), reason="GNU tar missing")


def carryon_tree(tmp_path: Path, layers: list) -> Path:
    """Pack an OCI image of `layers` (raw tar bytes or member lists) and extract it; returns the root."""
    src = write_oci(tmp_path / "img", layers, compress="none")
    pack(str(src), str(tmp_path / "app.run"), bare=True)
    root = tmp_path / "root"
    extract_rootfs(archive.read_layout(str(tmp_path / "app.run")), str(root))
    return root


def umoci_tree(tmp_path: Path, layout: Path) -> Path:
    bundle = tmp_path / "bundle"
    subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{layout}:latest", str(bundle)],
                   check=True, capture_output=True)
    return bundle / "rootfs"


def same_as_umoci(tmp_path: Path, layers: list) -> Path:
    """carryon's tree of `layers` equals umoci's (types, modes, names, link targets, contents)."""
    root = carryon_tree(tmp_path, layers)
    ref = umoci_tree(tmp_path, tmp_path / "img")
    assert listing(root) == listing(ref)
    assert sha256_listing(root) == sha256_listing(ref)
    return root


def gnu_tar(src: Path, *opts: str) -> bytes:
    """A layer written by GNU tar from the directory `src` (sorted names, fixed owner and mtime)."""
    return subprocess.run(["tar", "-c", "-f", "-", "--sort=name", "--owner=0", "--group=0", "--numeric-owner",
                           "--mtime=@1700000000", *opts, "-C", str(src), "."],
                          check=True, capture_output=True).stdout


# ------------------------------------------------------------------------ endings

def _two_files() -> bytes:
    """a (700 bytes) and b (3 bytes): b's header at 1536, its data at 2048, padded to 2560, then the
    end-of-archive blocks."""
    raw = tar_bytes([M("a", data=b"a" * 700), M("b", data=b"b" * 3)], fmt=tarfile.GNU_FORMAT)
    assert raw[2048:2051] == b"bbb" and not raw[2051:].strip(b"\0")
    return raw


ACCEPTED = {
    "no-end-blocks": 2560,                 # ends after the padding
    "data-not-padded": 2048 + 3,           # ends right after b's data
    "padding-cut-short": 2048 + 100,
    "one-end-block": 2560 + 512,
}


@needs_umoci
@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_endings_docker_and_umoci_accept(tmp_path, case):
    root = same_as_umoci(tmp_path, [_two_files()[:ACCEPTED[case]]])
    assert (root / "a").read_bytes() == b"a" * 700 and (root / "b").read_bytes() == b"bbb"


@pytest.mark.parametrize("end", [2560 + 100, 2560 + 512 + 300])
def test_trailing_zeros_short_of_a_block_end_the_layer(tmp_path, end):
    """Go refuses these (unexpected EOF); zeros cannot hide an entry, so they end the layer here."""
    root = carryon_tree(tmp_path, [_two_files()[:end]])
    assert sorted(os.listdir(root)) == ["a", "b"]


@needs_umoci
def test_layer_written_by_umoci_insert(tmp_path):
    """`umoci insert` writes a layer with neither the padding after the last file nor end blocks."""
    layout = write_oci(tmp_path / "img", [[M("a", data=b"a")]], compress="gzip")
    (tmp_path / "f3").write_bytes(b"abc")
    subprocess.run(["umoci", "insert", "--rootless", "--image", f"{layout}:latest", str(tmp_path / "f3"), "/x/f3"],
                   check=True, capture_output=True)
    idx = json.loads((layout / "index.json").read_text())
    manifest = json.loads((layout / "blobs/sha256" / idx["manifests"][0]["digest"][7:]).read_bytes())
    import gzip
    raw = gzip.decompress((layout / "blobs/sha256" / manifest["layers"][1]["digest"][7:]).read_bytes())
    assert len(raw) % 512 == 3     # what this test is about: header + 3 bytes of data, nothing after
    pack(str(layout), str(tmp_path / "app.run"), bare=True)
    root = tmp_path / "root"
    extract_rootfs(archive.read_layout(str(tmp_path / "app.run")), str(root))
    ref = umoci_tree(tmp_path, layout)
    assert listing(root) == listing(ref) and sha256_listing(root) == sha256_listing(ref)
    assert (root / "x/f3").read_bytes() == b"abc"


def _bad_checksum() -> bytes:
    raw = bytearray(_two_files())
    raw[1536 + 10] ^= 1            # b's header
    return bytes(raw)


REFUSED = {
    "data-cut-short": (lambda: _two_files()[:2048 + 2], "unexpected end of data"),
    "header-cut-short": (lambda: _two_files()[:1536 + 300], "truncated header"),
    "header-after-end-block": (lambda: _two_files()[:2560] + bytes(512) + tar_bytes([M("c", data=b"c")]),
                               "a header after an end-of-archive block"),
    "bad-checksum": (_bad_checksum, "bad checksum"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_broken_layers_are_refused_with_one_line(tmp_path, case):
    """umoci refuses each of these too (`read next entry: unexpected EOF` / `invalid tar header`)."""
    make, why = REFUSED[case]
    src = write_oci(tmp_path / "img", [make()], compress="none")
    with pytest.raises(InputError) as e:
        pack(str(src), str(tmp_path / "app.run"), bare=True)
    assert why in str(e.value) and "\n" not in str(e.value) and str(e.value).startswith("layer 0 sha256:")
    assert not (tmp_path / "app.run").exists()


# ------------------------------------------------------------------------ whiteouts before their directory

LOWER = [M("o", D), M("o/lower", data=b"l"), M("o/sub", D), M("o/sub/lower2", data=b"l"), M("x", D),
         M("x/old", data=b"o"), M("x/keep", data=b"k"), M("t", D), M("t/a", data=b"a"), M("s", L, linkname="t")]
WHITEOUTS_FIRST = {
    "opaque-then-dir": [M("o/.wh..wh..opq"), M("o", D, mode=0o750), M("o/new", data=b"n")],
    "opaque-then-child-then-dir": [M("o/.wh..wh..opq"), M("o/sub/f", data=b"n"), M("o", D)],
    "whiteout-then-same-name": [M(".wh.x"), M("x", D), M("x/new", data=b"n")],
    "whiteout-child-then-dir": [M("x/.wh.old"), M("x", D, mode=0o700)],
    "whiteout-then-type-change": [M("o/.wh.lower"), M("o/lower", D), M("o/lower/x", data=b"n")],
    "opaque-through-symlink": [M("s/.wh..wh..opq"), M("s", D), M("s/new", data=b"n")],
    "opaque-of-a-new-dir": [M("n/.wh..wh..opq"), M("n", D), M("n/new", data=b"n")],
}


@needs_umoci
@pytest.mark.parametrize("case", sorted(WHITEOUTS_FIRST))
def test_whiteouts_before_their_directory(tmp_path, case):
    same_as_umoci(tmp_path, [tar_bytes(LOWER), tar_bytes(WHITEOUTS_FIRST[case])])


# ------------------------------------------------------------------------ long names, sparse files

def _long_tree(src: Path) -> None:
    src.mkdir()
    deep = src / ("d" * 90) / ("e" * 90)
    deep.mkdir(parents=True)
    (deep / ("f" * 120)).write_bytes(b"long name")
    os.link(deep / ("f" * 120), src / "zlink")        # hardlink with a long target (LongLink / linkpath)
    os.symlink("t" * 300, src / "symlong")              # symlink with a long target
    (src / "short").write_bytes(b"s")


@needs_umoci
@needs_gnu_tar
@pytest.mark.parametrize("fmt", ["gnu", "oldgnu", "pax", "posix"])
def test_long_names_and_link_targets_by_gnu_tar(tmp_path, fmt):
    _long_tree(tmp_path / "src")
    root = same_as_umoci(tmp_path, [gnu_tar(tmp_path / "src", f"--format={fmt}")])
    deep = root / ("d" * 90) / ("e" * 90) / ("f" * 120)
    assert os.lstat(deep).st_ino == os.lstat(root / "zlink").st_ino and deep.read_bytes() == b"long name"
    assert os.readlink(root / "symlong") == "t" * 300


def _sparse_tree(src: Path) -> None:
    src.mkdir()
    with open(src / "holes", "wb") as f:           # many segments (> 4: old GNU extension headers too)
        for i in range(10):
            f.seek(i * 70_000 + 1)
            f.write(b"seg%d" % i)
        f.truncate(1_000_000)                      # ends with a hole
    with open(src / "lead", "wb") as f:            # data at offset 0, a hole, data at the end
        f.write(b"head")
        f.seek(300_000)
        f.write(b"tail")
    (src / "empty-sparse").write_bytes(b"")
    os.truncate(src / "empty-sparse", 200_000)     # all hole


SPARSE_FORMATS = {"gnu": ["--format=gnu"], "oldgnu": ["--format=oldgnu"],
                  "pax-0.0": ["--format=pax", "--sparse-version=0.0"],
                  "pax-0.1": ["--format=pax", "--sparse-version=0.1"],
                  "pax-1.0": ["--format=pax", "--sparse-version=1.0"]}


@needs_umoci
@needs_gnu_tar
@pytest.mark.parametrize("fmt", sorted(SPARSE_FORMATS))
def test_sparse_members_by_gnu_tar(tmp_path, fmt):
    _sparse_tree(tmp_path / "src")
    layer = gnu_tar(tmp_path / "src", "--sparse", *SPARSE_FORMATS[fmt])
    assert len(layer) < 100_000                     # really stored sparse
    # umoci 0.4 refuses old GNU `S` members ("unknown typeflag"): there the source files are the reference
    root = carryon_tree(tmp_path, [layer]) if fmt in ("gnu", "oldgnu") else same_as_umoci(tmp_path, [layer])
    assert listing(root) == listing(tmp_path / "src")
    for name in ("holes", "lead", "empty-sparse"):
        assert (root / name).read_bytes() == (tmp_path / "src" / name).read_bytes(), name


def test_invalid_sparse_map_is_refused(tmp_path):
    ti = tarfile.TarInfo("f")
    ti.size = 8
    ti.pax_headers = {"GNU.sparse.map": "4,4,2,4", "GNU.sparse.size": "100"}  # overlapping segments
    raw = ti.tobuf(tarfile.PAX_FORMAT) + b"abcdefgh" + bytes(504)
    src = write_oci(tmp_path / "img", [raw], compress="none")
    with pytest.raises(InputError, match="f: invalid sparse map$"):
        pack(str(src), str(tmp_path / "app.run"), bare=True)


_BIG = 9 << 30     # 9 GiB: over the 8 GiB an octal size field holds


def _limited_pack(src: str, out: str) -> subprocess.CompletedProcess:
    """`carryon pack --bare` with files limited to 1 GiB and the address space to 4 GiB: packing a
    9 GiB sparse file may write neither it nor its zeros anywhere."""
    def limits() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 30, 1 << 30))
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "packer.cli", "pack", "--bare", "-q", src, "-o", out],
                          capture_output=True, text=True, env=env, preexec_fn=limits, cwd=REPO)


@needs_gnu_tar
@pytest.mark.parametrize("fmt", ["gnu", "pax"])
def test_member_over_8_gib_without_writing_it(tmp_path, fmt):
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "big", "wb") as f:
        f.write(b"start")
        f.seek(_BIG - 3)
        f.write(b"end")
    layer = gnu_tar(src, "--sparse", f"--format={fmt}")   # base-256 real size / PAX GNU.sparse.realsize
    assert len(layer) < 1 << 20
    layout = write_oci(tmp_path / "img", [layer], compress="none")
    p = _limited_pack(str(layout), str(tmp_path / "app.run"))
    assert p.returncode == 0, p.stderr
    lay = archive.read_layout(str(tmp_path / "app.run"))
    m = archive.read_manifest(lay)
    assert m["rootfs"]["uncompressed_bytes"] == _BIG and m["rootfs"]["files"] == 1
    with archive.open_section(lay, "rootfs") as section, \
            zstandard.ZstdDecompressor().stream_reader(section, read_across_frames=True) as r:
        head = r.read(64 << 10)                      # only the headers before big's data
    with tarfile.open(fileobj=io.BytesIO(head), mode="r|") as tf:
        big = next(ti for ti in tf if ti.name == "./big")
        assert big.size == _BIG and big.isreg()
        data = tf.extractfile(big)
        assert data is not None and data.read(5) == b"start"   # what fits in `head`


# ------------------------------------------------------------------------ names that are not UTF-8

@needs_gnu_tar
@pytest.mark.parametrize("fmt", ["gnu", "pax"])
def test_non_utf8_names_round_trip(tmp_path, fmt):
    src = tmp_path / "src"
    (src / "dir-\xe9").mkdir(parents=True)   # str path: the test's encoding, UTF-8; the rest raw bytes
    raw_dir = os.fsencode(str(src / "dir-\xe9"))
    os.mkdir(os.path.join(raw_dir, b"sub-\xff"))
    with open(os.path.join(raw_dir, b"sub-\xff", b"f-\xe9\xfe.txt"), "wb") as f:
        f.write(b"latin-1 name")
    os.symlink(b"f-\xe9\xfe.txt", os.path.join(raw_dir, b"sub-\xff", b"ln-\x80"))
    layout = write_oci(tmp_path / "img", [gnu_tar(src, f"--format={fmt}")], compress="none")
    run_carryon("pack", "--bare", str(layout), "-o", str(tmp_path / "app.run"), check=True)
    dest = tmp_path / "root"
    run_carryon("extract", str(tmp_path / "app.run"), str(dest), check=True)
    sub = os.path.join(os.fsencode(str(dest)), "dir-\xe9".encode(), b"sub-\xff")
    assert sorted(os.listdir(sub)) == [b"f-\xe9\xfe.txt", b"ln-\x80"]
    with open(os.path.join(sub, b"f-\xe9\xfe.txt"), "rb") as f:
        assert f.read() == b"latin-1 name"
    assert os.readlink(os.path.join(sub, b"ln-\x80")) == b"f-\xe9\xfe.txt"
    meta = json.loads(Path(str(dest) + ".carryon-meta.json").read_bytes())
    names = {os.fsencode(k) for k in meta["entries"]}
    assert b"/dir-\xc3\xa9/sub-\xff/f-\xe9\xfe.txt" in names
    if shutil.which("umoci"):
        ref = umoci_tree(tmp_path, layout)
        assert listing(dest) == listing(ref)
    remove_tree(str(dest))
