"""Cold starts under stress: concurrency, SIGKILL mid-extraction, unusable caches, corrupted files."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from archive_run_support import ROOT, archive, clean_env, entries, expected_run, run
from runtime.errors import CarryonError


def _one_line_error(p: subprocess.CompletedProcess) -> None:
    assert p.returncode != 0
    assert p.stdout == ""
    assert len(p.stderr.splitlines()) == 1, p.stderr
    assert "Traceback" not in p.stderr


def test_sixteen_simultaneous_cold_starts(tmp_path):
    bb = archive("bb")
    cache = tmp_path / "cache"
    env = clean_env(tmp_path, cache)
    with ThreadPoolExecutor(16) as ex:
        results = list(ex.map(lambda _: run(bb, env=env, timeout=600), range(16)))
    for p in results:
        assert (p.returncode, p.stdout, p.stderr) == (0, expected_run(), "")
    e = entries(cache)
    assert len(e["image"]) == 1 and len(e["runtime"]) == 1
    assert e["other"] == []                      # the losers removed their temp dirs


def _wait_for(pred, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return False


@pytest.mark.parametrize("stage", ["runtime", "rootfs"])
def test_sigkill_during_first_extraction(tmp_path, stage):
    py = archive("py")
    cache = tmp_path / "cache"
    env = clean_env(tmp_path, cache)
    p = subprocess.Popen([str(py)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         start_new_session=True)

    def in_stage() -> bool:
        if not cache.is_dir():
            return False
        names = os.listdir(cache)
        if stage == "runtime":
            return any(n.startswith(".tmp-rt-") and os.path.isdir(cache / n / "_internal") for n in names)
        for n in names:
            if n.startswith(".tmp-") and not n.startswith(".tmp-rt-") and (cache / n / "rootfs").is_dir():
                return len(os.listdir(cache / n / "rootfs")) > 3
        return False
    assert _wait_for(in_stage, 120), "never reached the stage"
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    time.sleep(0.2)
    e = entries(cache)
    assert e["image"] == []                      # nothing half-written was published
    if stage == "runtime":
        assert e["runtime"] == []
    q = run(py, env=env)
    assert (q.returncode, q.stdout, q.stderr) == (0, expected_run("debian-python"), "")
    e = entries(cache)
    assert len(e["image"]) == 1 and len(e["runtime"]) == 1
    # the dead run's temp dir went (the warm start's plan of a userns run stays: issue #18's owner view)
    assert [n for n in e["other"] if not n.startswith((".tmp-rt-", "nsplan-"))] == []


def _flip(src, dst, offset: int) -> None:
    shutil.copyfile(src, dst)
    os.chmod(dst, 0o755)
    with open(dst, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x20 if b not in (b" ", b"\n") else ord("x")]))


def _sections(path):
    from runtime.archive import read_layout
    return read_layout(str(path)).sections


@pytest.mark.parametrize("where", ["launcher-comment", "launcher-code", "runtime-gzip-header", "runtime-middle",
                                   "manifest", "rootfs", "trailer-hash", "trailer-length", "trailer-padding"])
def test_a_flipped_byte_is_refused(tmp_path, where):
    bb = archive("bb")
    s = _sections(bb)
    size = os.path.getsize(bb)
    text = open(bb, "rb").read(s["launcher"].length)
    offset = {
        "launcher-comment": text.index(b"payload is found"),
        "launcher-code": text.index(b"rt_main=carryon-runtime") + 10,
        "runtime-gzip-header": s["runtime"].offset + 5,          # gzip's mtime: decompression still works
        "runtime-middle": s["runtime"].offset + s["runtime"].length // 2,
        "manifest": s["manifest"].offset + s["manifest"].length // 2,
        "rootfs": s["rootfs"].offset + s["rootfs"].length // 2,
        "trailer-hash": size - 512 + len("CARRYON-ARCHIVE 1\nlauncher 1234 ") + 3,
        "trailer-length": size - 512 + len("CARRYON-ARCHIVE 1\nlauncher ") + 1,
        "trailer-padding": size - 100,
    }[where]
    bad = tmp_path / "bad.run"
    _flip(bb, bad, offset)
    p = run(bad, env=clean_env(tmp_path, tmp_path / "cache"))
    _one_line_error(p)
    assert p.returncode == 125 or where.startswith("launcher-code")
    e = entries(tmp_path / "cache")
    assert e["image"] == [] and e["runtime"] == []         # nothing trusted later
    # the good archive still runs with that cache
    q = run(bb, env=clean_env(tmp_path, tmp_path / "cache"))
    assert (q.returncode, q.stdout) == (0, expected_run())


@pytest.mark.skipif(ROOT, reason="root writes through mode 0555: see the read-only mount variant")
def test_read_only_cache_by_chmod(tmp_path):
    bb = archive("bb")
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o555)
    try:
        p = run(bb, env=clean_env(tmp_path, cache))
        _one_line_error(p)
        assert str(cache) in p.stderr and "not writable" in p.stderr
    finally:
        cache.chmod(0o755)
    assert entries(cache) == {"image": [], "runtime": [], "other": []}
    q = run(bb, env=clean_env(tmp_path, cache))
    assert (q.returncode, q.stdout) == (0, expected_run())


def _ns(script: str, **env: str) -> subprocess.CompletedProcess:
    """Run `script` (sh) as root in a private mount namespace."""
    return subprocess.run(["unshare", "-m", "sh", "-c", "mount --make-rprivate / && " + script],
                          capture_output=True, text=True, env=dict(clean_env(), **env), timeout=600)


@pytest.mark.skipif(not ROOT, reason="read-only bind mounts need root (the non-root user uses chmod)")
def test_read_only_cache_by_mount(tmp_path):
    bb = archive("bb")
    cache = tmp_path / "cache"
    cache.mkdir()
    p = _ns('mount --bind "$C" "$C" && mount -o remount,bind,ro "$C" && exec env HOME="$H" CARRYON_CACHE="$C" "$A"',
            C=str(cache), H=str(tmp_path), A=str(bb))
    _one_line_error(p)
    assert str(cache) in p.stderr and ("read-only" in p.stderr or "not writable" in p.stderr)
    assert entries(cache) == {"image": [], "runtime": [], "other": []}
    q = run(bb, env=clean_env(tmp_path, cache))
    assert (q.returncode, q.stdout) == (0, expected_run())


@pytest.mark.skipif(not ROOT, reason="mounting a small tmpfs needs root")
@pytest.mark.parametrize("size_mb,what", [(8, "runtime"), (60, "image")])
def test_full_cache(tmp_path, size_mb, what):
    py = archive("py")
    cache = tmp_path / "cache"
    cache.mkdir()
    script = (f'mount -t tmpfs -o size={size_mb}m tmpfs "$C" && env HOME="$H" CARRYON_CACHE="$C" "$A"; rc=$?; '
              'ls -A "$C" >&2; exit $rc')
    p = _ns(script, C=str(cache), H=str(tmp_path), A=str(py))
    assert p.returncode == 125 and p.stdout == ""
    msg, _, listing = p.stderr.partition("\n")
    assert "MB free" in msg or "MB needed" in msg, p.stderr
    assert "CARRYON_CACHE" in msg
    names = listing.split()
    assert not [n for n in names if len(n) == 32]          # no image entry published
    assert not [n for n in names if n.startswith(".tmp-") and what == "image"]   # temp dir removed
    if what == "image":
        assert [n for n in names if n.startswith("rt-")]   # the runtime fit; only the image did not
    # with room, the same (fresh) cache works
    p = _ns('mount -t tmpfs -o size=400m tmpfs "$C" && env HOME="$H" CARRYON_CACHE="$C" "$A"',
            C=str(cache), H=str(tmp_path), A=str(py))
    assert (p.returncode, p.stdout, p.stderr) == (0, expected_run("debian-python"), "")


@pytest.mark.skipif(not ROOT, reason="mounting a small tmpfs needs root")
def test_disk_full_during_extraction_is_a_clear_error(tmp_path, monkeypatch):
    """The space check passed but the disk fills up mid-way: temp dir removed, nothing published."""
    from runtime.launch import install, selfarchive
    from runtime.launch.options import Options
    from runtime.launch.report import Reporter
    bb = archive("bb")
    cache = tmp_path / "cache"
    cache.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(cache)], check=True)
    try:
        monkeypatch.setattr(selfarchive, "rootfs_needs", lambda manifest: (0, 0))
        arch = selfarchive.open_archive(str(bb), verify_all=True)
        opts = Options(cache=str(cache))
        with pytest.raises(CarryonError) as e:
            install.ensure_entry(arch, opts, Reporter(0), verified=True)
        assert "disk full" in str(e.value) and "\n" not in str(e.value)
        assert os.listdir(cache) == []
    finally:
        subprocess.run(["umount", str(cache)])


def test_a_flipped_runtime_byte_is_refused_without_sha256sum(tmp_path):
    """Nodes without sha256sum: gzip's CRC and zstd's checksum (their exit statuses) guard the unpack
    instead: of carryon-unzstd (the gzip'd first stage) and of the runtime (the zstd frame)."""
    bb = archive("bb")
    s = _sections(bb)
    tools = tmp_path / "bin"
    tools.mkdir()
    for t in ("tail", "head", "gzip", "tar", "mkdir", "chmod", "rm", "mv", "df", "id", "sh", "ls"):
        src = shutil.which(t)
        assert src, t
        os.symlink(src, tools / t)
    for k, offset in enumerate((s["runtime"].offset + s["runtime"].length // 3,
                                s["runtime"].offset + s["runtime"].length - 12,
                                s["runtime"].offset + 200,                          # the first stage
                                s["runtime"].offset + s["runtime"].length - 2)):    # zstd's checksum
        bad = tmp_path / f"bad{k}.run"
        _flip(bb, bad, offset)
        p = run(bad, env=dict(clean_env(tmp_path, tmp_path / f"cache{k}"), PATH=str(tools)))
        _one_line_error(p)
        assert entries(tmp_path / f"cache{k}")["runtime"] == []
    # the good archive unpacks there, and without `head` too: gzip stops at the end of the first
    # stage, carryon-unzstd at the end of its frame (the rest of the file is never theirs)
    for k, gone in enumerate(((), ("head",))):
        for t in gone:
            (tools / t).unlink()
        p = run(bb, env=dict(clean_env(tmp_path, tmp_path / f"good{k}"), PATH=str(tools)))
        assert (p.returncode, p.stdout) == (0, expected_run()), p.stderr
        assert len(entries(tmp_path / f"good{k}")["runtime"]) == 1
