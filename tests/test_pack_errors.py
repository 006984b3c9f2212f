"""Bad input to `carryon pack`: one-line error, exit status 125, no OUT file (and no temp file) left."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile

import pytest

from conftest import run_carryon, tar_bytes, tar_member as M, write_oci

LAYER = [M("etc", tarfile.DIRTYPE), M("etc/hello", data=b"hello\n" * 2000)]


def _layer_blob(src, i=0):
    idx = json.loads((src / "index.json").read_text())
    m = json.loads((src / "blobs/sha256" / idx["manifests"][0]["digest"].split(":")[1]).read_bytes())
    return src / "blobs/sha256" / m["layers"][i]["digest"].split(":")[1]


def assert_fails(tmp_path, source, *extra, match: str, stdin: bytes | None = None):
    out = tmp_path / "outdir" / "app.run"
    out.parent.mkdir(exist_ok=True)
    p = run_carryon("pack", "--bare", str(source), "-o", str(out), *extra,
                    input=stdin)
    assert p.returncode == 125, p.stderr
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert match in lines[0], lines[0]
    assert os.listdir(out.parent) == []
    return lines[0]


def test_not_an_image(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(os.urandom(3000))
    assert_fails(tmp_path, junk, match="not a container image")
    empty_dir = tmp_path / "emptydir"
    empty_dir.mkdir()
    assert_fails(tmp_path, empty_dir, match="not a container image")
    plain_tar = tmp_path / "plain.tar"
    plain_tar.write_bytes(tar_bytes([M("hello.txt", data=b"hi")]))
    assert_fails(tmp_path, plain_tar, match="not a container image")
    assert_fails(tmp_path, tmp_path / "does-not-exist", match="no such file")
    assert_fails(tmp_path, "-", match="empty input", stdin=b"")


def test_missing_blob(tmp_path):
    src = write_oci(tmp_path / "img", [LAYER])
    _layer_blob(src).unlink()
    assert_fails(tmp_path, src, match="missing")


def test_missing_config_blob(tmp_path):
    src = write_oci(tmp_path / "img", [LAYER])
    idx = json.loads((src / "index.json").read_text())
    m = json.loads((src / "blobs/sha256" / idx["manifests"][0]["digest"].split(":")[1]).read_bytes())
    (src / "blobs/sha256" / m["config"]["digest"].split(":")[1]).unlink()
    assert_fails(tmp_path, src, match="missing")


def test_digest_mismatch(tmp_path):
    src = write_oci(tmp_path / "img", [LAYER], compress="none")
    blob = _layer_blob(src)
    data = bytearray(blob.read_bytes())
    data[600] ^= 0x20  # inside the file content: still a valid tar
    blob.write_bytes(bytes(data))
    line = assert_fails(tmp_path, src, match="digest mismatch")
    assert blob.name in line


def test_diff_id_mismatch(tmp_path):
    src = write_oci(tmp_path / "img", [LAYER])
    idx = json.loads((src / "index.json").read_text())
    mpath = src / "blobs/sha256" / idx["manifests"][0]["digest"].split(":")[1]
    m = json.loads(mpath.read_bytes())
    cpath = src / "blobs/sha256" / m["config"]["digest"].split(":")[1]
    cfg = json.loads(cpath.read_bytes())
    cfg["rootfs"]["diff_ids"] = ["sha256:" + "0" * 64]
    _rewrite_config(src, json.dumps(cfg).encode())
    assert_fails(tmp_path, src, match="diff_id")


@pytest.mark.parametrize("compress", ["gzip", "zstd"])
def test_truncated_layer(tmp_path, compress):
    big = [M("blob", data=os.urandom(50_000) + b"z" * 100_000)]
    src = write_oci(tmp_path / "img", [big], compress=compress)
    blob = _layer_blob(src)
    blob.write_bytes(blob.read_bytes()[: blob.stat().st_size * 2 // 3])
    assert_fails(tmp_path, src, match=f"truncated {compress}")


def test_corrupt_manifest_json(tmp_path):
    src = write_oci(tmp_path / "img", [LAYER])
    (src / "index.json").write_text("{not json")
    assert_fails(tmp_path, src, match="not valid JSON")


def test_tag_selection(tmp_path):
    src = write_oci(tmp_path / "img", [LAYER], tag="one")
    other = write_oci(tmp_path / "img2", [[M("two", data=b"2")]], tag="two")
    idx = json.loads((src / "index.json").read_text())
    idx["manifests"] += json.loads((other / "index.json").read_text())["manifests"]
    for p in (other / "blobs/sha256").iterdir():
        shutil.copy(p, src / "blobs/sha256" / p.name)
    (src / "index.json").write_text(json.dumps(idx))
    line = assert_fails(tmp_path, src, match="several images")
    assert "one" in line and "two" in line
    assert_fails(tmp_path, src, "--tag", "three", match="no image tagged 'three'")
    for args in (["--tag", "two"], []):
        out = tmp_path / "ok.run"
        source = str(src) if args else f"{src}:two"
        p = run_carryon("pack", "--bare", source, "-o", str(out), *args)
        assert p.returncode == 0, p.stderr
        doc = json.loads(run_carryon("inspect", "--json", "--files", str(out), check=True).stdout)
        assert doc["image"]["tag"] == "two"
        assert [f["path"] for f in doc["files"]] == ["/", "/two"]
        out.unlink()


def test_platform_selection(tmp_path):
    amd = write_oci(tmp_path / "amd", [[M("amd64", data=b"a")]])
    arm = write_oci(tmp_path / "arm", [[M("arm64", data=b"b")]], platform="linux/arm64")
    for p in (arm / "blobs/sha256").iterdir():
        shutil.copy(p, amd / "blobs/sha256" / p.name)
    entries = []
    for layout, arch in ((arm, "arm64"), (amd, "amd64")):
        e = json.loads((layout / "index.json").read_text())["manifests"][0]
        e.pop("annotations")
        e["platform"] = {"os": "linux", "architecture": arch}
        entries.append(e)
    nested = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                         "manifests": entries}).encode()
    nd = hashlib.sha256(nested).hexdigest()
    (amd / "blobs/sha256" / nd).write_bytes(nested)
    (amd / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": "sha256:" + nd, "size": len(nested),
         "annotations": {"org.opencontainers.image.ref.name": "multi"}}]}))
    for plat, name in ((None, "/amd64"), ("linux/arm64", "/arm64")):
        out = tmp_path / "p.run"
        p = run_carryon("pack", "--bare", str(amd), "-o", str(out), *(["--platform", plat] if plat else []))
        assert p.returncode == 0, p.stderr
        doc = json.loads(run_carryon("inspect", "--json", "--files", str(out), check=True).stdout)
        assert [f["path"] for f in doc["files"]][1] == name
        out.unlink()
    assert_fails(tmp_path, amd, "--platform", "linux/s390x",
                 match="no image for platform linux/s390x (available: linux/amd64, linux/arm64)")
    assert_fails(tmp_path, amd, "--platform", "bogus", match="--platform")


def _docker_archive(path, platform: str):
    """A docker-archive tar of one image whose config says `platform` (OS/ARCH)."""
    raw = tar_bytes(LAYER)
    os_, arch = platform.split("/")
    cfg = json.dumps({"architecture": arch, "os": os_, "config": {},
                      "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(raw).hexdigest()]}})
    cd = hashlib.sha256(cfg.encode()).hexdigest()
    with tarfile.open(path, mode="w") as tf:
        for name, data in ((f"{cd}.json", cfg.encode()), ("abc123/layer.tar", raw),
                           ("manifest.json", json.dumps([{"Config": f"{cd}.json",
                                                          "Layers": ["abc123/layer.tar"]}]).encode())):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return path


def test_a_single_image_for_another_platform_is_refused(tmp_path):
    """Docker's: an image is packed for the platform asked (default linux/amd64) or not at all; what
    its config says counts (an OCI index entry often has no platform); the error lists the source's."""
    amd = write_oci(tmp_path / "amd", [LAYER])
    arm = write_oci(tmp_path / "arm", [LAYER], platform="linux/arm64")
    damd = _docker_archive(tmp_path / "amd.tar", "linux/amd64")
    darm = _docker_archive(tmp_path / "arm.tar", "linux/arm64")
    for src in (amd, damd):
        assert_fails(tmp_path, src, "--platform", "linux/arm64",
                     match="no image for platform linux/arm64 (available: linux/amd64)")
    for src in (arm, darm):
        assert_fails(tmp_path, src, match="no image for platform linux/amd64 (available: linux/arm64)")
        assert_fails(tmp_path, src, "--platform", "linux/amd64",
                     match="no image for platform linux/amd64 (available: linux/arm64)")
    for src, plat in ((amd, None), (damd, None), (amd, "linux/amd64"), (arm, "linux/arm64"),
                      (darm, "linux/arm64")):
        out = tmp_path / "ok.run"
        p = run_carryon("pack", "--bare", str(src), "-o", str(out), *(["--platform", plat] if plat else []))
        assert p.returncode == 0, p.stderr
        doc = json.loads(run_carryon("inspect", "--json", str(out), check=True).stdout)
        assert doc["image"]["platform"] == (plat or "linux/amd64")
        out.unlink()


def test_docker_archive_variants_and_stdin(tmp_path):
    """docker save style: legacy <id>/layer.tar as a real file, gzip'd, and read from stdin."""
    raw = tar_bytes(LAYER)
    diff = hashlib.sha256(raw).hexdigest()
    cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"]},
                      "rootfs": {"type": "layers", "diff_ids": ["sha256:" + diff]}}).encode()
    cd = hashlib.sha256(cfg).hexdigest()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in ((f"{cd}.json", cfg), ("abc123/layer.tar", raw),
                           ("manifest.json", json.dumps([{"Config": f"{cd}.json", "RepoTags": ["demo:v1"],
                                                          "Layers": ["abc123/layer.tar"]}]).encode())):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    gz = gzip.compress(buf.getvalue(), mtime=0)
    out = tmp_path / "d.run"
    p = run_carryon("pack", "--bare", "-", "-o", str(out), input=gz)
    assert p.returncode == 0, p.stderr
    doc = json.loads(run_carryon("inspect", "--json", str(out), check=True).stdout)
    assert doc["image"]["tag"] == "demo:v1" and doc["image"]["format"] == "docker-archive"
    assert doc["image"]["layers"][0]["diff_id"] == "sha256:" + diff
    assert doc["config"]["Cmd"] == ["/bin/sh"] and doc["config"]["Env"] == []


def test_interrupt_leaves_no_output(tmp_path, monkeypatch):
    from packer import pack as pack_mod
    src = write_oci(tmp_path / "img", [LAYER])
    out = tmp_path / "outdir" / "app.run"
    out.parent.mkdir()

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(pack_mod, "write_rootfs", boom)
    with pytest.raises(KeyboardInterrupt):
        pack_mod.pack(str(src), str(out), bare=True)
    assert os.listdir(out.parent) == []


def test_bad_flags_are_one_line(tmp_path):
    src = write_oci(tmp_path / "img", [LAYER])
    assert_fails(tmp_path, src, "--level", "99", match="--level")
    assert_fails(tmp_path, src, "--bogus", match="unrecognized arguments")


def test_inspect_and_extract_refuse_non_archives(tmp_path):
    junk = tmp_path / "junk"
    junk.write_bytes(b"x" * 1000)
    for args in (["inspect", str(junk)], ["extract", str(junk), str(tmp_path / "d")]):
        p = run_carryon(*args)
        assert p.returncode == 125 and len(p.stderr.strip().splitlines()) == 1
        assert "not a carryon archive" in p.stderr
    assert not (tmp_path / "d").exists()


def test_output_errors_name_what_the_user_gave(tmp_path):
    """Not the temporary files carryon writes first (`.x.run.6219ko_x.part`, `.D.carryon-meta.json.*`)."""
    src = write_oci(tmp_path / "img", [LAYER])
    p = run_carryon("pack", "--bare", str(src), "-o", str(tmp_path / "nonexist" / "x.run"))
    assert p.returncode == 125
    assert p.stderr == f"carryon pack: cannot write {tmp_path}/nonexist/x.run: No such file or directory\n"
    arc = tmp_path / "a.run"
    run_carryon("pack", "--bare", str(src), "-o", str(arc), check=True)
    p = run_carryon("extract", str(arc), str(tmp_path / "nonexist" / "d"))
    assert p.returncode == 125
    assert p.stderr == f"carryon extract: cannot write {tmp_path}/nonexist/d: No such file or directory\n"
    (tmp_path / "afile").write_text("")
    p = run_carryon("extract", str(arc), str(tmp_path / "afile" / "d"))
    assert p.returncode == 125
    assert p.stderr == f"carryon extract: cannot write {tmp_path}/afile/d: {tmp_path}/afile is not a directory\n"
    # the metadata file beside DIR cannot be written (a directory is in its way)
    (tmp_path / "d.carryon-meta.json").mkdir()
    (tmp_path / "d.carryon-meta.json" / "x").write_text("")
    p = run_carryon("extract", str(arc), str(tmp_path / "d"))
    assert p.returncode == 125 and len(p.stderr.splitlines()) == 1, p.stderr
    assert p.stderr.startswith(f"carryon extract: cannot write {tmp_path}/d.carryon-meta.json: "), p.stderr
    assert not (tmp_path / "d").exists()


def _rewrite_config(src, data: bytes) -> None:
    """Put `data` as the image's config (the manifest and index digests updated to match)."""
    idx = json.loads((src / "index.json").read_text())
    m = json.loads((src / "blobs/sha256" / idx["manifests"][0]["digest"].split(":")[1]).read_bytes())
    cd = hashlib.sha256(data).hexdigest()
    (src / "blobs/sha256" / cd).write_bytes(data)
    m["config"].update({"digest": "sha256:" + cd, "size": len(data)})
    mdata = json.dumps(m).encode()
    md = hashlib.sha256(mdata).hexdigest()
    (src / "blobs/sha256" / md).write_bytes(mdata)
    idx["manifests"][0].update({"digest": "sha256:" + md, "size": len(mdata)})
    (src / "index.json").write_text(json.dumps(idx))


@pytest.mark.parametrize("config", [b"[]", b'"text"', b"3"])
def test_config_that_is_not_an_object(tmp_path, config):
    # valid JSON but no object: a one-line error, not a Python traceback (found by mypy)
    src = write_oci(tmp_path / "img", [LAYER])
    _rewrite_config(src, config)
    assert_fails(tmp_path, src, match="is not an image config")


def test_nested_index_that_is_not_an_object(tmp_path):
    src = write_oci(tmp_path / "img", [LAYER])
    data = b"[]"
    d = hashlib.sha256(data).hexdigest()
    (src / "blobs/sha256" / d).write_bytes(data)
    idx = json.loads((src / "index.json").read_text())
    idx["manifests"][0].update({"mediaType": "application/vnd.oci.image.index.v1+json",
                                "digest": "sha256:" + d, "size": len(data)})
    (src / "index.json").write_text(json.dumps(idx))
    assert_fails(tmp_path, src, match="is not an image index")


def test_docker_config_that_is_not_an_object(tmp_path):
    cfg = b"[]"
    cd = hashlib.sha256(cfg).hexdigest()
    src = tmp_path / "d.tar"
    with tarfile.open(src, mode="w") as tf:
        for name, data in ((f"{cd}.json", cfg), ("abc123/layer.tar", tar_bytes(LAYER)),
                           ("manifest.json", json.dumps([{"Config": f"{cd}.json",
                                                          "Layers": ["abc123/layer.tar"]}]).encode())):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    assert_fails(tmp_path, src, match="is not an image config")
