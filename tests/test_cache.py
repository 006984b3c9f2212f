"""runtime/cache.py: where entries go, exec/space checks, lock-free publication, stale temp dirs."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from runtime import cache
from runtime.errors import CarryonError

ROOT = os.geteuid() == 0


def test_candidates_order_and_explicit(tmp_path):
    uid = os.getuid()
    env = {"HOME": "/h", "TMPDIR": "/scratch/"}
    assert [c.path for c in cache.candidates(None, env)] == [
        "/h/.cache/carryon", f"/scratch/carryon-{uid}", f"/tmp/carryon-{uid}", f"/var/tmp/carryon-{uid}"]
    env = {"XDG_CACHE_HOME": "/x", "HOME": "/h"}
    assert cache.candidates(None, env)[0].path == "/x/carryon"
    assert [c.path for c in cache.candidates(None, {})] == [f"/tmp/carryon-{uid}", f"/var/tmp/carryon-{uid}"]
    assert [c.path for c in cache.candidates(None, {"HOME": "/", "TMPDIR": "/tmp"})] == \
        [f"/tmp/carryon-{uid}", f"/var/tmp/carryon-{uid}"]
    c = cache.candidates("rel/dir", env)
    assert len(c) == 1 and c[0].explicit and c[0].path == os.path.abspath("rel/dir")


def test_usable_dir_and_exec_test(tmp_path):
    c = cache.Candidate(str(tmp_path / "c"), explicit=True)
    assert cache.unusable_reason(c, 1 << 20) is None
    assert os.path.isdir(c.path) and not [n for n in os.listdir(c.path) if n.startswith(".exec-test")]
    assert "MB needed" in cache.unusable_reason(c, 1 << 60)


def test_not_a_directory(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    assert cache.unusable_reason(cache.Candidate(str(f), explicit=True), 1) is not None
    assert cache.unusable_reason(cache.Candidate(str(f / "sub"), explicit=True), 1).startswith("cannot create")


@pytest.mark.skipif(ROOT, reason="root writes through mode 0555 (the root variant uses a read-only mount)")
def test_read_only_dir_by_chmod(tmp_path):
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    try:
        assert cache.unusable_reason(cache.Candidate(str(d), explicit=True), 1) == "not writable"
        with pytest.raises(CarryonError) as e:
            cache.choose([cache.Candidate(str(d), explicit=True)], 1)
        assert str(d) in str(e.value) and "CARRYON_CACHE" in str(e.value) and "\n" not in str(e.value)
    finally:
        d.chmod(0o755)


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


@pytest.mark.skipif(not ROOT, reason="mounting needs root")
def test_noexec_and_full_and_read_only_mounts(tmp_path):
    noexec, small, ro = tmp_path / "noexec", tmp_path / "small", tmp_path / "ro"
    for d in (noexec, small, ro):
        d.mkdir()
    _mount("-t", "tmpfs", "-o", "noexec,size=8m", "tmpfs", str(noexec))
    _mount("-t", "tmpfs", "-o", "size=2m", "tmpfs", str(small))
    _mount("--bind", str(tmp_path / "ro"), str(ro))
    _mount("-o", "remount,bind,ro", str(ro))
    try:
        assert "noexec" in cache.unusable_reason(cache.Candidate(str(noexec), explicit=True), 1)
        assert "MB needed" in cache.unusable_reason(cache.Candidate(str(small), explicit=True), 4 << 20)
        assert cache.unusable_reason(cache.Candidate(str(small), explicit=True), 1 << 20) is None
        assert "read-only" in cache.unusable_reason(cache.Candidate(str(ro), explicit=True), 1)
        cands = [cache.Candidate(str(noexec)), cache.Candidate(str(small))]
        # default candidates must be ours and private; the tmpfs roots are root's: fine as root
        assert cache.choose(cands, 1 << 20) == str(small)
        with pytest.raises(CarryonError) as e:
            cache.choose(cands, 4 << 20)
        assert "noexec" in str(e.value) and "MB needed" in str(e.value)
    finally:
        for d in (noexec, small, ro):
            subprocess.run(["umount", str(d)])


def test_default_candidate_owned_by_someone_else_is_refused(tmp_path):
    d = tmp_path / "carryon-x"
    d.mkdir()
    if ROOT:
        os.chown(d, 12345, 12345)
        assert "owned by uid 12345" in cache.unusable_reason(cache.Candidate(str(d)), 1)
    d.chmod(0o777)
    if not ROOT:
        assert cache.unusable_reason(cache.Candidate(str(d)), 1) is None
        assert (os.stat(d).st_mode & 0o777) == 0o700          # made private again


def test_publish_race_keeps_one_winner(tmp_path):
    dest = str(tmp_path / "k")
    temps = []
    for i in range(4):
        t = cache.new_temp(str(tmp_path), "0" * 32)
        with open(os.path.join(t, "who"), "w") as f:
            f.write(str(i))
        cache.write_marker(t)
        temps.append(t)
    results = {cache.publish(t, dest) for t in temps}
    assert results == {dest}
    assert open(os.path.join(dest, "who")).read() == "0"
    assert sorted(os.listdir(tmp_path)) == ["k"]                # losers' temp dirs removed


def test_publish_replaces_an_unpublished_leftover(tmp_path):
    dest = tmp_path / "k"
    (dest / "junk").mkdir(parents=True)                         # no marker: never trusted
    t = cache.new_temp(str(tmp_path), "1" * 32)
    cache.write_marker(t)
    assert cache.publish(t, str(dest)) == str(dest)
    assert os.path.exists(dest / cache.MARKER) and not (dest / "junk").exists()


def test_find_entry_needs_the_marker(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    (a / "key").mkdir(parents=True)
    (b / "key").mkdir(parents=True)
    cands = [cache.Candidate(str(a)), cache.Candidate(str(b))]
    assert cache.find_entry(cands, "key") is None
    (b / "key" / cache.MARKER).write_text("")
    assert cache.find_entry(cands, "key") == str(b / "key")


def test_clean_stale(tmp_path):
    me = cache.hostname()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    k = "a" * 32
    mine_dead = tmp_path / f".tmp-{k}-{me}-{dead.pid}-0"
    mine_alive = tmp_path / f".tmp-rt-{k}-{me}-{os.getpid()}-0"
    run_dead = tmp_path / f".run-{k}-{me}-{dead.pid}-ab12"
    foreign_new = tmp_path / f".tmp-{k}-other-host-1-0"
    foreign_old = tmp_path / f".tmp-{k}-other-host-2-0"
    entry = tmp_path / k
    for d in (mine_dead, mine_alive, run_dead, foreign_new, foreign_old, entry):
        (d / "sub").mkdir(parents=True)
    (mine_dead / "sub").chmod(0)                                # unwritable dirs are removed too
    old = time.time() - 3 * 24 * 3600
    os.utime(foreign_old, (old, old))
    removed = cache.clean_stale(str(tmp_path))
    assert sorted(removed) == sorted(map(str, (mine_dead, run_dead, foreign_old)))
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in (mine_alive, foreign_new, entry))


def test_remove_entry_unpublishes_first(tmp_path):
    e = tmp_path / ("c" * 32)
    (e / "rootfs" / "d").mkdir(parents=True)
    (e / "rootfs" / "d").chmod(0o500)
    (e / cache.MARKER).write_text("")
    cache.remove_entry(str(e))
    assert os.listdir(tmp_path) == []
