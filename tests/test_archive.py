"""runtime/archive.py: trailer, layout, verification, atomic writes."""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile

import pytest

from conftest import tar_member
from runtime import archive
from runtime.errors import InputError


def _write(tmp_path, launcher=b"", runtime=None, rootfs=b"ROOTFS", manifest=None):
    rp = tmp_path / "rootfs.bin"
    rp.write_bytes(rootfs)
    rt = None
    if runtime is not None:
        rt = tmp_path / "runtime.tgz"
        rt.write_bytes(runtime)
    out = tmp_path / "out.run"
    archive.write_archive(str(out), manifest=manifest or {"format": 1, "x": "é"}, rootfs_path=str(rp),
                          launcher=launcher, runtime_path=str(rt) if rt else None)
    return out


def test_trailer_is_512_ascii_bytes_and_roundtrips():
    entries = {n: (i * 1000, hashlib.sha256(n.encode()).hexdigest()) for i, n in enumerate(archive.SECTIONS)}
    t = archive.format_trailer(entries)
    assert len(t) == archive.TRAILER_SIZE
    text = t.decode("ascii")
    assert text.startswith("CARRYON-ARCHIVE 1\nlauncher 0 ")
    assert text.endswith("\nCARRYON-END\n")
    assert archive.parse_trailer(t) == entries


def test_layout_sections_and_contents(tmp_path):
    out = _write(tmp_path, launcher=b"#!/bin/sh\nexit 0\n", runtime=b"RUNTIME-TGZ", rootfs=b"R" * 5000)
    lay = archive.read_layout(str(out))
    assert lay.size == out.stat().st_size
    assert list(lay.sections) == list(archive.SECTIONS)
    assert lay.sections["launcher"].offset == 0
    with archive.open_section(lay, "runtime") as f:
        assert f.read() == b"RUNTIME-TGZ"
    with archive.open_section(lay, "rootfs") as f:
        f.seek(4990)
        assert f.read() == b"R" * 10
        assert f.read() == b""
        f.seek(-3, os.SEEK_END)
        assert f.tell() == 4997
    assert archive.read_manifest(str(out)) == {"format": 1, "x": "é"}
    archive.verify(lay)
    assert stat.S_IMODE(out.stat().st_mode) & 0o111  # launcher present -> executable


def test_bare_archive_is_not_executable_and_empty_sections_hash(tmp_path):
    out = _write(tmp_path)
    lay = archive.read_layout(str(out))
    assert lay.sections["launcher"].length == 0
    assert lay.sections["launcher"].sha256 == archive.EMPTY_SHA256
    assert lay.sections["runtime"].sha256 == archive.EMPTY_SHA256
    assert not stat.S_IMODE(out.stat().st_mode) & 0o111


def test_launcher_can_be_prepended_by_rewriting_the_trailer(tmp_path):
    bare = _write(tmp_path).read_bytes()
    body, trailer = bare[:-512], bare[-512:]
    launcher = b"#!/bin/sh\necho hi\n"
    lines = trailer.decode().split("\n")
    lines[1] = f"launcher {len(launcher)} {hashlib.sha256(launcher).hexdigest()}"
    entries = archive.parse_trailer(trailer)
    entries["launcher"] = (len(launcher), hashlib.sha256(launcher).hexdigest())
    p = tmp_path / "full.run"
    p.write_bytes(launcher + body + archive.format_trailer(entries))
    lay = archive.read_layout(str(p))
    archive.verify(lay)
    assert archive.read_manifest(lay)["format"] == 1


@pytest.mark.parametrize("mutate", ["truncate", "garbage", "shortlaunch", "tiny"])
def test_not_an_archive(tmp_path, mutate):
    data = _write(tmp_path).read_bytes()
    p = tmp_path / "bad"
    if mutate == "truncate":
        p.write_bytes(data[:-1])
    elif mutate == "garbage":
        p.write_bytes(b"x" * 4096)
    elif mutate == "shortlaunch":
        p.write_bytes(b"extra" + data)  # launcher length in trailer no longer matches
    else:
        p.write_bytes(b"abc")
    with pytest.raises(InputError) as e:
        archive.read_layout(str(p))
    assert str(p) in str(e.value)


def test_directory_and_missing_file(tmp_path):
    with pytest.raises(InputError):
        archive.read_layout(str(tmp_path))
    with pytest.raises(InputError):
        archive.read_layout(str(tmp_path / "nope"))


def test_verify_names_the_bad_section(tmp_path):
    out = _write(tmp_path, rootfs=b"A" * 100)
    data = bytearray(out.read_bytes())
    lay = archive.read_layout(str(out))
    data[lay.sections["rootfs"].offset + 10] ^= 1
    out.write_bytes(bytes(data))
    archive.verify(lay, ["manifest"])
    with pytest.raises(InputError, match="rootfs"):
        archive.verify(lay)


def test_write_is_atomic_on_error(tmp_path):
    out = tmp_path / "out.run"
    with pytest.raises(FileNotFoundError):
        archive.write_archive(str(out), manifest={"format": 1}, rootfs_path=str(tmp_path / "missing"))
    assert os.listdir(tmp_path) == []


def test_deterministic_output(tmp_path):
    a = _write(tmp_path, manifest={"format": 1, "b": 1, "a": [1, 2]}).read_bytes()
    b = _write(tmp_path, manifest={"a": [1, 2], "format": 1, "b": 1}).read_bytes()
    assert a == b


def test_iter_rootfs_streams_the_tar(make_carryon):
    out = make_carryon([tar_member("./", tarfile.DIRTYPE, mode=0o755),
                        tar_member("./hello.txt", data=b"hello\n")])
    lay = archive.read_layout(str(out))
    with archive.iter_rootfs(lay) as tf:
        got = [(m.name, tf.extractfile(m).read() if m.isreg() else None) for m in tf]
    assert got == [(".", None), ("./hello.txt", b"hello\n")]
