"""The project's own fixtures (scripts/build-fixtures): every format of the edge image packs and extracts
to the tree `umoci unpack --rootless` made at build time; the demo image packs with its config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import listing, run_carryon, sha256_listing
from runtime.extract import remove_tree

EDGE_FORMATS = ["edge/oci", "edge.zstd.oci.tar", "edge.docker.tar", "edge.docker-save.tar.gz",
                "multi.docker.tar:carryon-fixtures/edge:latest"]


@pytest.mark.parametrize("fmt", EDGE_FORMATS)
def test_edge_image_matches_umoci_reference(project_fixtures: Path, tmp_path, fmt):
    src = str(project_fixtures / fmt)
    out = tmp_path / "edge.run"
    run_carryon("pack", "--bare", src, "-o", str(out), check=True)
    root = tmp_path / "root"
    run_carryon("extract", str(out), str(root), check=True)
    try:
        ref = project_fixtures / "edge"
        assert listing(root) == (ref / "EXPECTED.txt").read_text(encoding="utf-8").splitlines()
        assert sha256_listing(root) == (ref / "EXPECTED-sha256.txt").read_text(encoding="utf-8").splitlines()
        meta = json.loads(Path(str(root) + ".carryon-meta.json").read_text())
        for path, want in json.loads((ref / "EXPECTED-meta.json").read_text()).items():
            assert meta["entries"][path] == want, path
        assert meta["entries"]["/edge/hl/c"]["type"] == "h"
        doc = json.loads(run_carryon("inspect", "--json", str(out), check=True).stdout)
        assert doc["config"] | json.loads((ref / "CONFIG.json").read_text()) == doc["config"]
        assert doc["rootfs"]["other"] == 3  # fifo + 2 devices
    finally:
        remove_tree(str(root))


def test_edge_formats_give_one_rootfs(project_fixtures: Path, tmp_path):
    shas = set()
    for i, fmt in enumerate(EDGE_FORMATS):
        out = tmp_path / f"{i}.run"
        run_carryon("pack", "--bare", str(project_fixtures / fmt), "-o", str(out), check=True)
        shas.add(json.loads(run_carryon("inspect", "--json", str(out), check=True).stdout)["rootfs"]["sha256"])
    assert len(shas) == 1


def test_multi_image_archive_needs_a_tag(project_fixtures: Path, tmp_path):
    out = tmp_path / "m.run"
    p = run_carryon("pack", "--bare", str(project_fixtures / "multi.docker.tar"), "-o", str(out))
    assert p.returncode == 125 and "several images" in p.stderr
    assert "carryon-fixtures/demo:latest" in p.stderr and "carryon-fixtures/edge:latest" in p.stderr
    assert not out.exists()
    run_carryon("pack", "--bare", str(project_fixtures / "multi.docker.tar"), "--tag", "carryon-fixtures/demo",
                "-o", str(out), check=True)
    doc = json.loads(run_carryon("inspect", "--json", str(out), check=True).stdout)
    assert doc["config"]["Entrypoint"] == ["/app/hello.sh"] and doc["config"]["Cmd"] == ["world"]


def test_demo_image(project_fixtures: Path, tmp_path):
    out = tmp_path / "demo.run"
    run_carryon("pack", "--bare", str(project_fixtures / "demo.oci.tar"), "-o", str(out), check=True)
    doc = json.loads(run_carryon("inspect", "--json", "--files", str(out), check=True).stdout)
    want = json.loads((project_fixtures / "demo.CONFIG.json").read_text())
    for k, v in want.items():
        assert doc["config"][k] == v
    paths = {f["path"]: f for f in doc["files"]}
    assert paths["/app/hello.sh"]["mode"] == 0o755 and paths["/bin/sh"]["link"] == "/bin/busybox"
    text = run_carryon("inspect", str(out), check=True).stdout
    assert '["/app/hello.sh"]' in text and "tag latest" in text


def test_full_self_extracting_file(project_fixtures: Path, tmp_path):
    """Without --bare (needs packer.embed from the single-file work): extract/inspect still work."""
    pytest.importorskip("packer.embed")
    out = tmp_path / "demo.run"
    run_carryon("pack", str(project_fixtures / "demo.oci.tar"), "-o", str(out), check=True)
    doc = json.loads(run_carryon("inspect", "--json", str(out), check=True).stdout)
    assert doc["sections"]["launcher"]["length"] > 0 and doc["sections"]["runtime"]["length"] > 0
    assert out.stat().st_mode & 0o111
    root = tmp_path / "root"
    run_carryon("extract", str(out), str(root), check=True)
    assert (root / "app/hello.sh").exists()
