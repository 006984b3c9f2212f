"""Hostile layers: nothing is ever written outside the extraction target.

The target sits deep inside a sentinel directory `box/`; the hostile paths aim at `box/` itself (by
`..`, by absolute path, by a symlink to box's real absolute path), so any escape shows up as a change
in box's listing.
"""

from __future__ import annotations

import os
import tarfile

import pytest

from conftest import run_carryon, tar_member as M, write_oci


def _snapshot(box):
    out = []
    for dirpath, dirnames, filenames in os.walk(box):
        for n in dirnames + filenames:
            out.append(os.path.relpath(os.path.join(dirpath, n), box))
    return sorted(out)


@pytest.fixture
def box(tmp_path):
    b = tmp_path / "box"
    (b / "l1" / "l2").mkdir(parents=True)
    (b / "secret").write_text("do not touch")
    return b


def _pack_extract(tmp_path, box, layers):
    src = write_oci(tmp_path / "img", layers)
    out = tmp_path / "app.run"
    p = run_carryon("pack", "--bare", str(src), "-o", str(out))
    if p.returncode != 0:
        return p, None
    target = box / "l1" / "l2" / "target"
    before = _snapshot(box)
    p = run_carryon("extract", str(out), str(target))
    after = _snapshot(box)
    new = sorted(set(after) - set(before))
    outside = [n for n in new if not (n.startswith("l1/l2/target") or n == "l1/l2/target.carryon-meta.json")]
    assert outside == [], f"written outside the target: {outside}"
    assert (box / "secret").read_text() == "do not touch"
    return p, target


def test_dotdot_path_lands_inside(tmp_path, box):
    p, target = _pack_extract(tmp_path, box, [[M("../../../escaped", data=b"evil")]])
    assert p.returncode == 0, p.stderr
    assert (target / "escaped").read_bytes() == b"evil"


def test_absolute_path_lands_inside(tmp_path, box):
    p, target = _pack_extract(tmp_path, box, [[M(str(box / "abs-escaped"), data=b"evil")]])
    assert p.returncode == 0, p.stderr
    assert (target / str(box).lstrip("/") / "abs-escaped").read_bytes() == b"evil"


@pytest.mark.parametrize("split_layers", [False, True])
def test_write_through_symlink_lands_inside(tmp_path, box, split_layers):
    link = M("lnk", tarfile.SYMTYPE, linkname=str(box))
    write = M("lnk/through-link", data=b"evil")
    layers = [[link], [write]] if split_layers else [[link, write]]
    p, target = _pack_extract(tmp_path, box, layers)
    assert p.returncode == 0, p.stderr
    assert os.readlink(target / "lnk") == str(box)   # kept verbatim
    assert (target / str(box).lstrip("/") / "through-link").read_bytes() == b"evil"


@pytest.mark.parametrize("linkname", ["../../../secret", "../../../../etc/passwd"])
def test_hardlink_outside_is_refused(tmp_path, box, linkname):
    p, target = _pack_extract(tmp_path, box, [[M("ok", data=b"x"), M("h", tarfile.LNKTYPE, linkname=linkname)]])
    assert p.returncode != 0 and target is None
    assert "outside the image root" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "app.run").exists()


def test_hardlink_to_absolute_host_path_is_not_a_host_file(tmp_path, box):
    """`/…/box/secret` names a path inside the image (missing there): refused, host file untouched."""
    p, target = _pack_extract(tmp_path, box, [[M("h", tarfile.LNKTYPE, linkname=str(box / "secret"))]])
    assert p.returncode != 0 and "does not exist" in p.stderr
    assert os.stat(box / "secret").st_nlink == 1


def test_symlink_to_etc_then_write_through_it(tmp_path, box):
    name = f"carryon-hostile-{os.getpid()}"
    p, target = _pack_extract(tmp_path, box, [[M("evil", tarfile.SYMTYPE, linkname="/etc")],
                                              [M(f"evil/{name}", data=b"evil")]])
    assert p.returncode == 0, p.stderr
    assert (target / "etc" / name).read_bytes() == b"evil"
    assert not os.path.lexists(f"/etc/{name}")
