"""Acceptance: `carryon pack` + `carryon extract` of the shared real images gives exactly the reference
tree (EXPECTED.txt), contents (EXPECTED-sha256.txt), owners/nlink/sizes (EXPECTED-detail.txt via
`inspect --json --files`) and the image config of INFO.txt."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import SHARED_IMAGES, listing, run_carryon, sha256_listing
from runtime.extract import remove_tree

BUSYBOX_FORMATS = ["oci", "oci-zstd", "oci-uncompressed", "busybox-multilayer.oci.tar",
                   "busybox-multilayer.zstd.oci.tar", "busybox-multilayer.uncompressed.oci.tar",
                   "busybox-multilayer.docker.tar"]
CASES = [("busybox-multilayer", f) for f in BUSYBOX_FORMATS] + [("debian-python", "debian-python.oci.tar")]


def parse_detail(path: Path) -> dict[str, tuple[str, str, str]]:
    """EXPECTED-detail.txt -> {"./path": (uid:gid, nlink, size)}."""
    out = {}
    for line in path.read_text(encoding="utf-8", errors="surrogateescape").splitlines():
        _t, _m, owner, nlink, size, rest = line.split(" ", 5)
        out[rest.rsplit(" -> ", 1)[0]] = (owner, nlink, size)
    return out


def info_config(path: Path) -> tuple[dict, str]:
    """The `.config` JSON block and the config digest of INFO.txt."""
    text = path.read_text()
    block = text.split("## image config (.config) and history", 1)[1].split("\n## ", 1)[0]
    digest = re.search(r"^config\s+\S+\s+(sha256:[0-9a-f]{64})", text, re.M).group(1)
    return json.loads(block)["config"], digest


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """Pack + extract each case once per module: {case: (archive, rootfs dir, inspect json)}."""
    cache: dict = {}

    def get(image: str, fmt: str):
        key = (image, fmt)
        if key not in cache:
            src = SHARED_IMAGES / image / fmt
            if not src.exists():
                pytest.skip(f"{src} not present")
            d = tmp_path_factory.mktemp(image)
            out = d / "app.run"
            run_carryon("pack", "--bare", str(src), "-o", str(out), check=True)
            run_carryon("extract", str(out), str(d / "rootfs"), check=True)
            insp = run_carryon("inspect", "--json", "--files", str(out), check=True)
            cache[key] = (out, d / "rootfs", json.loads(insp.stdout))
        return cache[key]

    yield get
    for _out, root, _ in cache.values():
        remove_tree(str(root))


@pytest.mark.parametrize("image,fmt", CASES)
def test_tree_contents_owners_config(shared_images, packed, image, fmt):
    out, root, doc = packed(image, fmt)
    ref = shared_images / image
    assert listing(root) == (ref / "EXPECTED.txt").read_text(encoding="utf-8", errors="surrogateescape").splitlines()
    assert sha256_listing(root) == (ref / "EXPECTED-sha256.txt").read_text(
        encoding="utf-8", errors="surrogateescape").splitlines()

    # owners, link counts and sizes from `inspect --json --files`
    files = {("." + f["path"]) if f["path"] != "/" else ".": f for f in doc["files"]}
    nlink: dict[str, int] = {}
    for f in doc["files"]:
        if f["type"] == "h":
            nlink[f["link"]] = nlink.get(f["link"], 1) + 1
    detail = parse_detail(ref / "EXPECTED-detail.txt")
    assert set(files) == set(detail)
    for p, (owner, n, size) in detail.items():
        f = files[p]
        assert f"{f['uid']}:{f['gid']}" == owner, p
        if f["type"] == "f":
            assert str(f["size"]) == size, p
            assert str(nlink.get(f["path"], 1)) == n, p
        elif f["type"] == "h":
            assert n != "1", p

    cfg, cfg_digest = info_config(ref / "INFO.txt")
    assert doc["image"]["config_digest"] == cfg_digest
    for k, v in doc["config"].items():
        assert v == cfg.get(k, v if v in (None, "", [], {}) else object()), k
    for k in cfg:
        assert doc["config"][k] == cfg[k], k
    assert doc["rootfs"]["total_entries"] == len(detail)
    assert doc["sections"]["launcher"]["length"] == 0


def test_same_rootfs_from_every_busybox_format(shared_images, packed):
    shas = {fmt: packed("busybox-multilayer", fmt)[2]["rootfs"]["sha256"] for fmt in BUSYBOX_FORMATS}
    assert len(set(shas.values())) == 1, shas


def test_busybox_meta_records_what_extraction_cannot_apply(shared_images, packed):
    _out, root, _doc = packed("busybox-multilayer", "oci")
    meta = json.loads(Path(str(root) + ".carryon-meta.json").read_text())
    e = meta["entries"]
    assert e["/edge/owned-4242"]["uid"] == 4242 and e["/edge/owned-4242"]["gid"] == 4242
    assert e["/edge/xattr-file"]["xattrs"] == {"user.fixture": "aGVsbG8="}
    assert e["/edge/fifo"]["type"] == "p"
    assert e["/usr/local/bin/suid-hello"]["mode"] == 0o4755
    assert meta["root"]["mode"] == 0o755
    assert len(e) == len((shared_images / "busybox-multilayer" / "EXPECTED.txt").read_text().splitlines()) - 1


def test_full_self_extracting_file_conforms(shared_images, packed, tmp_path):
    """The same checks on a full file (launcher + runtime in front), once packer.embed exists."""
    pytest.importorskip("packer.embed")
    src = shared_images / "busybox-multilayer" / "busybox-multilayer.oci.tar"
    out = tmp_path / "full.run"
    run_carryon("pack", str(src), "-o", str(out), check=True)
    run_carryon("extract", str(out), str(tmp_path / "rootfs"), check=True)
    try:
        assert listing(tmp_path / "rootfs") == (shared_images / "busybox-multilayer" / "EXPECTED.txt").read_text(
            encoding="utf-8").splitlines()
        doc = json.loads(run_carryon("inspect", "--json", str(out), check=True).stdout)
        assert doc["sections"]["launcher"]["length"] > 0
        reference = packed("busybox-multilayer", "busybox-multilayer.oci.tar")[2]
        assert doc["rootfs"]["sha256"] == reference["rootfs"]["sha256"]
    finally:
        remove_tree(str(tmp_path / "rootfs"))
