"""The cache's trust rule (runtime/cache.py, runtime/launcher.sh) and every other shared place carryon
touches: nothing another user planted, or can still change, is ever executed, loaded or deleted.

Two parts:
- rule tests, as any user (as root, a planted dir "of another user" is made with chown);
- the attacks of issue 14, as two unprivileged users of one node (`carryon-other` plants, the test
  user `carryon-test` runs the archive), each in a private mount namespace whose `/tmp` and
  `/var/tmp` are fresh tmpfs, so nothing earlier runs left there matters (root only).
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from archive_run_support import archive, clean_env, entries, expected_run, run, user_exists
from runtime import cache
from runtime.errors import CarryonError

ROOT = os.geteuid() == 0
VICTIM, ATTACKER = "carryon-test", "carryon-other"
OTHER_UID = 54321                 # as root: the owner of "someone else's" files in rule tests


def _chown_other(path) -> None:
    os.chown(path, OTHER_UID, OTHER_UID, follow_symlinks=False)


# ---------------------------------------------------------------- the rule, one check at a time

def test_default_candidate_must_be_a_real_private_dir_of_ours(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    link = tmp_path / "carryon-link"
    link.symlink_to(target)
    st, why = cache.check_candidate(cache.Candidate(str(link)))
    assert st is None and "symbolic link" in why
    # the cold path does not create through it or use it either
    assert "symbolic link" in cache.unusable_reason(cache.Candidate(str(link)), 1)
    # an explicit cache is the user's choice: a symlink to a directory is fine
    assert cache.check_candidate(cache.Candidate(str(link), explicit=True))[1] is None

    loose = tmp_path / "carryon-loose"
    loose.mkdir()
    loose.chmod(0o775)
    st, why = cache.check_candidate(cache.Candidate(str(loose)))
    assert st is None and "writable by group or others" in why
    assert cache.check_candidate(cache.Candidate(str(tmp_path / "none")))[1] == cache.MISSING
    # ours and loose: the cold path makes it private again (and then uses it)
    assert cache.unusable_reason(cache.Candidate(str(loose)), 1) is None
    assert os.stat(loose).st_mode & 0o777 == 0o700


def test_default_candidate_in_a_parent_others_can_swap_it_in(tmp_path):
    parent = tmp_path / "open"
    parent.mkdir()
    parent.chmod(0o777)                  # world-writable, not sticky: another user could rename ours
    (parent / "carryon-x").mkdir(mode=0o700)
    st, why = cache.check_candidate(cache.Candidate(str(parent / "carryon-x")))
    assert st is None and "not sticky" in why
    parent.chmod(0o1777)                 # like /tmp
    assert cache.check_candidate(cache.Candidate(str(parent / "carryon-x")))[1] is None


@pytest.mark.skipif(not ROOT, reason="needs a directory owned by another uid (chown)")
def test_default_candidate_of_another_user_is_never_used_nor_changed(tmp_path):
    d = tmp_path / "carryon-planted"
    d.mkdir(mode=0o777)
    d.chmod(0o777)
    _chown_other(d)
    assert "owned by uid" in cache.unusable_reason(cache.Candidate(str(d)), 1)
    assert os.stat(d).st_mode & 0o777 == 0o777 and os.stat(d).st_uid == OTHER_UID   # not chmod'ed


def _published(path, mode=0o700):
    path.mkdir(mode=0o700)
    (path / cache.MARKER).write_text("")
    path.chmod(mode)
    return path


def test_entries_of_a_default_cache(tmp_path):
    c = cache.Candidate(str(tmp_path / "carryon-c"))
    os.mkdir(c.path, 0o700)
    cst, _ = cache.check_candidate(c)
    good = _published(tmp_path / "carryon-c" / "good")
    assert cache.entry_problem(str(good), False, cst) is None
    gw = _published(tmp_path / "carryon-c" / "gw", 0o770)
    assert "writable by group" in cache.entry_problem(str(gw), False, cst)
    ow = _published(tmp_path / "carryon-c" / "ow", 0o757)
    assert "writable by group or others" in cache.entry_problem(str(ow), False, cst)
    elsewhere = _published(tmp_path / "elsewhere")
    (tmp_path / "carryon-c" / "link").symlink_to(elsewhere)
    assert "symbolic link" in cache.entry_problem(str(tmp_path / "carryon-c" / "link"), False, cst)
    unpublished = tmp_path / "carryon-c" / "half"
    unpublished.mkdir()
    assert cache.entry_problem(str(unpublished), False, cst) == cache.MISSING
    marker_link = tmp_path / "carryon-c" / "ml"
    marker_link.mkdir()
    (marker_link / cache.MARKER).symlink_to(elsewhere / cache.MARKER)
    assert "marker" in cache.entry_problem(str(marker_link), False, cst)
    # find_entry skips what is not trusted and says so
    said: list[str] = []
    assert cache.find_entry([c], "gw", say=said.append) is None and "writable by group" in said[0]
    assert cache.find_entry([c], "link") is None
    assert cache.find_entry([c], "good") == str(good)


def test_entries_of_an_explicit_cache_shared_with_a_group(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o2770)
    c = cache.Candidate(str(shared), explicit=True)
    cst, _ = cache.check_candidate(c)
    gw = _published(shared / "gw", 0o770)
    os.chown(gw, -1, cst.st_gid)
    assert cache.entry_problem(str(gw), True, cst) is None          # the group the user chose
    ow = _published(shared / "ow", 0o777)
    assert "writable by group or others" in cache.entry_problem(str(ow), True, cst)
    if ROOT:
        theirs = _published(shared / "theirs", 0o755)
        _chown_other(theirs)
        assert cache.entry_problem(str(theirs), True, cst) is None    # a teammate's entry
        other_group = _published(shared / "og", 0o775)
        os.chown(other_group, -1, OTHER_UID)
        assert "writable by group" in cache.entry_problem(str(other_group), True, cst)
        # a world-writable explicit cache (CARRYON_CACHE=/tmp): only our own entries
        shared.chmod(0o1777)
        cst, _ = cache.check_candidate(c)
        assert "owned by uid" in cache.entry_problem(str(theirs), True, cst)


@pytest.mark.skipif(not ROOT, reason="needs an entry owned by another uid (chown)")
def test_publish_never_deletes_another_users_entry(tmp_path):
    c = cache.Candidate(str(tmp_path / "carryon-c"))
    os.mkdir(c.path, 0o700)
    planted = _published(tmp_path / "carryon-c" / ("a" * 32), 0o777)
    _chown_other(planted)
    tmp = cache.new_temp(c.path, "a" * 32)
    cache.write_marker(tmp)
    with pytest.raises(CarryonError) as e:
        cache.publish(tmp, str(planted), c)
    assert "not trusted" in str(e.value) and "\n" not in str(e.value)
    assert os.stat(planted).st_uid == OTHER_UID and os.path.exists(planted / cache.MARKER)
    assert not os.path.exists(tmp)


def test_publish_replaces_an_untrusted_entry_of_ours(tmp_path):
    c = cache.Candidate(str(tmp_path / "carryon-c"))
    os.mkdir(c.path, 0o700)
    loose = _published(tmp_path / "carryon-c" / ("b" * 32), 0o777)
    (loose / "planted").write_text("x")
    tmp = cache.new_temp(c.path, "b" * 32)
    cache.write_marker(tmp, "new")
    assert cache.publish(tmp, str(loose), c) == str(loose)
    assert (loose / cache.MARKER).read_text() == "new" and not (loose / "planted").exists()
    assert os.stat(loose).st_mode & 0o022 == 0


# ---------------------------------------------------------------- removal never leaves the cache

def _outside(tmp_path):
    out = tmp_path / "outside"
    (out / "sub").mkdir(parents=True)
    (out / "keep.txt").write_text("keep")
    (out / "sub" / "keep2.txt").write_text("keep")
    (out / cache.MARKER).write_text("")
    return out


def _intact(out) -> bool:
    return (out / "keep.txt").read_text() == "keep" and (out / "sub" / "keep2.txt").exists()


def test_clean_stale_with_planted_symlinks_deletes_nothing_outside(tmp_path):
    out = _outside(tmp_path)
    c = tmp_path / "cache"
    c.mkdir(mode=0o700)
    k = "d" * 32
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for name in (f".tmp-{k}-{cache.hostname()}-{dead.pid}-0", f".run-{k}-{cache.hostname()}-{dead.pid}-x",
                 f".tmp-rt-{k}-other-host-1-0"):
        (c / name).symlink_to(out)
    old = 1_000_000_000
    os.utime(c / f".tmp-rt-{k}-other-host-1-0", (old, old), follow_symlinks=False)
    # a real stale dir of ours whose content links outside: the links go, their targets stay
    real = c / f".tmp-{k}-{cache.hostname()}-{dead.pid}-1"
    (real / "deep").mkdir(parents=True)
    (real / "deep" / "to-outside").symlink_to(out)
    (real / "deep").chmod(0)
    removed = cache.clean_stale(str(c))
    assert removed == [str(real)]
    assert _intact(out) and sorted(os.listdir(out)) == [cache.MARKER, "keep.txt", "sub"]


def test_remove_does_not_follow_a_symlink_at_any_level(tmp_path):
    out = _outside(tmp_path)
    top = tmp_path / "top"
    (top / "a" / "b").mkdir(parents=True)
    (top / "a" / "b" / "ln").symlink_to(out)
    (top / "a" / "ln-dir").symlink_to(out / "sub")
    (top / "a").chmod(0o500)
    cache.remove(str(top))
    assert not top.exists() and _intact(out)
    link = tmp_path / "link"
    link.symlink_to(out)
    cache.remove(str(link))
    assert not os.path.lexists(link) and _intact(out)


def test_carryon_clean_with_a_planted_symlink_entry(tmp_path):
    bb = archive("bb")
    out = _outside(tmp_path)
    c = tmp_path / "cache"
    env = clean_env(tmp_path, c)
    assert run(bb, "true", env=env).returncode == 0
    key = entries(c)["image"][0]
    cache.remove(str(c / key))
    (c / key).symlink_to(out)                                 # named like this archive's entry
    (c / f".tmp-{key}-{cache.hostname()}-999999-0").symlink_to(out)     # like a stale temp dir
    p = run(bb, "--carryon-clean", "--carryon-verbose", env=env)
    assert p.returncode == 0, p.stderr
    assert _intact(out) and sorted(os.listdir(out)) == [cache.MARKER, "keep.txt", "sub"]
    # and a run ignores the planted entry (a symlink): extracts its own
    p = run(bb, env=env)
    assert (p.returncode, p.stdout) == (0, expected_run()), p.stderr
    assert _intact(out) and not (out / "rootfs").exists()


# ---------------------------------------------------------------- entries of the user's own cache

def test_group_or_world_writable_entries_of_our_own_cache_are_re_extracted(tmp_path):
    bb = archive("bb")
    home = tmp_path / "home"
    home.mkdir()
    env = clean_env(home)
    c = home / ".cache" / "carryon"
    assert run(bb, "true", env=env).returncode == 0
    e = entries(c)
    assert len(e["image"]) == 1 and len(e["runtime"]) == 1
    for n in e["image"] + e["runtime"]:
        (c / n).chmod(0o777)
        (c / n / "planted-by-someone").write_text("x")
    marks = {n: os.stat(c / n / cache.MARKER).st_ino for n in e["image"] + e["runtime"]}
    p = run(bb, env=env)
    assert (p.returncode, p.stdout) == (0, expected_run()), p.stderr
    for n in e["image"] + e["runtime"]:
        assert os.stat(c / n / cache.MARKER).st_ino != marks[n], f"{n} was trusted"
        assert os.stat(c / n).st_mode & 0o022 == 0 and not (c / n / "planted-by-someone").exists()
    # a loose cache dir of ours (older carryon, umask 002) is made private, its entries kept
    c.chmod(0o775)
    marks = {n: os.stat(c / n / cache.MARKER).st_ino for n in e["image"] + e["runtime"]}
    p = run(bb, env=env)
    assert (p.returncode, p.stdout) == (0, expected_run()), p.stderr
    assert os.stat(c).st_mode & 0o777 == 0o700
    assert {n: os.stat(c / n / cache.MARKER).st_ino for n in marks} == marks


# ---------------------------------------------------------------- the other shared places

def test_ports_file_never_writes_through_a_planted_symlink(tmp_path):
    from runtime.net import portsfile
    victim = tmp_path / "victims-file"
    victim.write_text("precious")
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o1777)
    # the names a predictable scheme would use (pid-based), planted as links to the victim's file
    for pid in range(os.getpid() - 5, os.getpid() + 5):
        (shared / f".ports.json.{pid}.tmp").symlink_to(victim)
    portsfile.write(str(shared / "ports.json"), [])
    assert victim.read_text() == "precious"
    assert (shared / "ports.json").read_text().startswith("{")


def test_runtime_build_cache_in_a_shared_temp_dir_is_trusted_only_when_ours(tmp_path, monkeypatch):
    from packer import embed
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir(mode=0o1777)
    tmpdir.chmod(0o1777)
    monkeypatch.setenv("HOME", "/")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("CARRYON_BUILD_CACHE", raising=False)
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)
    planted = tmp_path / "planted"
    entry = planted / embed.build_key()
    entry.mkdir(parents=True)
    (entry / cache.MARKER).write_text(embed.build_key() + "\n")
    (entry / "info.json").write_text('{"unpacked": 1, "sha256": "0"}')
    (entry / "runtime.tar.gz").write_bytes(b"planted")
    (tmpdir / f"carryon-build-{os.getuid()}").symlink_to(planted)
    with pytest.raises(CarryonError) as e:
        embed.ensure_runtime()
    assert "symbolic link" in str(e.value) and "CARRYON_BUILD_CACHE" in str(e.value)
    os.unlink(tmpdir / f"carryon-build-{os.getuid()}")
    # our own dir there, but the entry in it writable by others: not loaded
    mine = tmpdir / f"carryon-build-{os.getuid()}"
    mine.mkdir(mode=0o700)
    shutil.copytree(entry, mine / entry.name)
    (mine / entry.name).chmod(0o777)
    cand, cst = embed.build_cache_dir()
    assert cand.path == str(mine)
    assert cache.entry_problem(str(mine / entry.name), False, cst).startswith("writable")


def test_failed_runtime_build_log_goes_to_a_fresh_file(tmp_path, monkeypatch):
    import tempfile

    from packer import embed
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    victim = tmp_path / "victims-file"
    victim.write_text("precious")
    (tmp_path / f"carryon-runtime-build-{os.getuid()}.log").symlink_to(victim)   # the old fixed name
    log = tmp_path / "build.log"
    log.write_text("line 1\nPyInstaller: boom\n")
    kept = embed.keep_build_log(str(log))
    assert victim.read_text() == "precious"
    assert open(kept).read() == log.read_text() and not os.path.islink(kept)


def test_native_library_only_from_a_trusted_place(tmp_path, monkeypatch):
    from runtime.tracee import native
    if shutil.which(os.environ.get("CC") or "cc") is None:
        pytest.skip("no C compiler")
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    ndir = home / ".cache" / "carryon" / "native"
    ndir.mkdir(parents=True, mode=0o700)
    (home / ".cache" / "carryon").chmod(0o700)
    ndir.chmod(0o777)                                   # others could have swapped the library
    assert native._cached_build() is None
    ndir.chmod(0o700)
    built = native._cached_build()
    assert built and os.path.dirname(built) == str(ndir)
    os.chmod(built, 0o666)                             # a library others could have rewritten
    assert native._cached_build() is None
    os.chmod(built, 0o755)
    assert native._cached_build() == built


# ---------------------------------------------------------------- two users on one node (issue 14)

needs_two_users = pytest.mark.skipif(
    not ROOT or not user_exists(VICTIM) or not user_exists(ATTACKER) or shutil.which("unshare") is None,
    reason=f"needs root to set up two unprivileged users ({VICTIM}, {ATTACKER}) and a mount namespace")


def _keys(path) -> tuple[str, str]:
    """(runtime dir name, image entry name) of an archive, as anyone who has a copy can compute."""
    data = open(path, "rb").read()
    line = next(ln for ln in data[:8192].split(b"\n") if ln.startswith(b"rt_sha="))
    rt = "rt-" + line.split(b"=", 1)[1].decode()[:32]
    return rt, hashlib.sha256(data[-512:]).hexdigest()[:32]


PLANT_RUNTIME = r"""
d=$1/{rt}
mkdir -p "$d/_internal"
printf '#!/bin/sh\necho "PWNED as $(id -un)"\necho "PWNED as $(id -un)" > /var/tmp/pwned 2>/dev/null\n' \
    > "$d/_internal/ld-linux-x86-64.so.2"
chmod 755 "$d/_internal/ld-linux-x86-64.so.2"
cp "$d/_internal/ld-linux-x86-64.so.2" "$d/carryon-runtime"
touch "$d/.complete" "$d/.carryon-runtime-files"
"""
PLANT_IMAGE = r"""
r=$1/{image}/rootfs
mkdir -p "$r/bin" "$r/app" "$r/home/app" "$r/var/tmp"
cp /bin/busybox "$r/bin/sh"
printf '#!/bin/sh\necho "PWNED as $(id -un)"\necho "PWNED" > /var/tmp/pwned 2>/dev/null\n' > "$r/app/entrypoint.sh"
chmod 755 "$r/app/entrypoint.sh"
touch "$1/{image}/.complete"
"""


def _attack(plant: str, home_usable: bool, runs: int = 1) -> tuple[list[subprocess.CompletedProcess], str]:
    """Run the attack in a private mount namespace with fresh /tmp and /var/tmp: the attacker runs
    `plant` (sh, its dirs made world-readable), then the victim runs the bb archive `runs` times.
    Returns the victim's runs and what the attacker's code left in /var/tmp/pwned (or "")."""
    bb = archive("bb")
    rt, image = _keys(bb)
    vuid = int(subprocess.run(["id", "-u", VICTIM], capture_output=True, text=True, check=True).stdout)
    plant = plant.format(rt=rt, image=image, vuid=vuid)
    home = "/var/tmp/home-victim" if home_usable else "/nonexistent"
    victim_run = (f"runuser -u {VICTIM} -- env -i PATH=/usr/bin:/bin LANG=C.UTF-8 HOME={home} /var/tmp/app/bb.run"
                  )
    script = f"""
set -e
mount -t tmpfs -o mode=1777 tmpfs /var/tmp
mkdir /var/tmp/app /var/tmp/home-victim
cp {shlex.quote(str(bb))} /var/tmp/app/bb.run
chmod 755 /var/tmp/app /var/tmp/app/bb.run
chown {VICTIM}: /var/tmp/home-victim
chmod 700 /var/tmp/home-victim
mount -t tmpfs -o mode=1777 tmpfs /tmp
runuser -u {ATTACKER} -- sh -e -c {shlex.quote(plant)}
set +e
for i in $(seq {runs}); do
  {victim_run} >/var/tmp/out.$i 2>/var/tmp/err.$i; echo $? >/var/tmp/rc.$i
done
for i in $(seq {runs}); do
  echo "=== run $i rc=$(cat /var/tmp/rc.$i)"; cat /var/tmp/out.$i; echo "=== stderr"; cat /var/tmp/err.$i
done
echo "=== pwned"; cat /var/tmp/pwned 2>/dev/null
echo "=== caches"; ls -la /tmp /var/tmp /tmp/carryon-{vuid}/ /var/tmp/carryon-{vuid}/ \
    /var/tmp/home-victim/.cache/carryon 2>&1
true
"""
    p = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout
    results = []
    for i in range(1, runs + 1):
        block = out.split(f"=== run {i} rc=", 1)[1]
        rc, rest = block.split("\n", 1)
        stdout, rest = rest.split("=== stderr\n", 1)
        stderr = rest.split("=== ", 1)[0]
        results.append(subprocess.CompletedProcess([], int(rc), stdout, stderr))
    pwned = out.split("=== pwned\n", 1)[1].split("=== caches", 1)[0]
    return results, pwned + ("" if "PWNED" not in out else out)


ATTACKER_DIR = "mkdir -m 755 /tmp/carryon-{vuid}\n"


@needs_two_users
@pytest.mark.parametrize("home_usable", [True, False], ids=["home", "no-home"])
@pytest.mark.parametrize("what", ["runtime", "image", "both-behind-a-symlink"])
def test_planted_entries_never_run(what, home_usable):
    if what == "runtime":
        plant = ATTACKER_DIR + "set -- /tmp/carryon-{vuid}\n" + PLANT_RUNTIME
    elif what == "image":
        plant = ATTACKER_DIR + "set -- /tmp/carryon-{vuid}\n" + PLANT_IMAGE
    else:
        plant = ("mkdir -m 755 /tmp/attackers\nset -- /tmp/attackers\n" + PLANT_RUNTIME + PLANT_IMAGE +
                 "ln -s /tmp/attackers /tmp/carryon-{vuid}\n")
    (r1, r2), pwned = _attack(plant, home_usable, runs=2)
    assert pwned == ""
    for r in (r1, r2):                                        # cold, then warm
        assert (r.returncode, r.stdout, r.stderr) == (0, expected_run(), "")


@needs_two_users
def test_every_default_place_planted_is_a_one_line_refusal():
    plant = ("mkdir -m 755 /tmp/carryon-{vuid} /var/tmp/carryon-{vuid}\n"
             "set -- /tmp/carryon-{vuid}\n" + PLANT_RUNTIME + PLANT_IMAGE +
             "set -- /var/tmp/carryon-{vuid}\n" + PLANT_RUNTIME + PLANT_IMAGE)
    (r,), pwned = _attack(plant, home_usable=False)
    assert pwned == "" and "PWNED" not in r.stdout + r.stderr
    assert r.returncode == 125 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    vuid = subprocess.run(["id", "-u", VICTIM], capture_output=True, text=True).stdout.strip()
    assert f"/tmp/carryon-{vuid}: owned by uid" in lines[0] and f"/var/tmp/carryon-{vuid}: owned by uid" in lines[0]
    assert "CARRYON_CACHE" in lines[0]


def test_sweep_never_uses_a_directory_others_made_or_can_write(tmp_path):
    from test_sweep import make_standin, sweep, write_csv
    exe = make_standin(tmp_path)
    table = write_csv(tmp_path / "t.csv", ["n"], [[5]])
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    open_dir = shared / "open.sweep"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    p = sweep(exe, "--params", table, "--out", open_dir, "--", "/app/fib.py", "{n}", cwd=tmp_path)
    assert p.returncode == 125 and "writable by everyone" in p.stderr and len(p.stderr.splitlines()) == 1
    assert os.listdir(open_dir) == []
    if ROOT:
        theirs = tmp_path / "theirs"
        theirs.mkdir()
        _chown_other(theirs)
        (shared / "t.sweep").symlink_to(theirs)              # the default DIR for t.csv, planted
        p = sweep(exe, "--params", table, "--out", shared / "t.sweep", "--", "/app/fib.py", "{n}",
                  cwd=tmp_path)
        assert p.returncode == 125 and "owned by uid" in p.stderr, p.stderr
        assert os.listdir(theirs) == [] and os.path.islink(shared / "t.sweep")
    p = sweep(exe, "--params", table, "--out", shared / "mine.sweep", "--", "/app/fib.py", "{n}", cwd=tmp_path)
    assert p.returncode == 0, p.stderr


def test_run_scratch_dirs_of_dead_tracers_are_reaped_and_nothing_else(busybox_rootfs, tmp_path):
    """The per-run directory in /tmp (glue for bind points missing from the image, short socket
    names) of a tracer that was SIGKILLed is removed by the next run that needs one; a live run's,
    another user's and a symlink named like one stay."""
    from conftest import run_carryon
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    mine_dead = Path(f"/tmp/carryon-s-{dead.pid}-test1")
    mine_live = Path(f"/tmp/carryon-s-{os.getpid()}-test2")
    link = Path(f"/tmp/carryon-s-{dead.pid}-test3")
    out = _outside(tmp_path)
    try:
        for d in (mine_dead, mine_live):
            (d / "glue").mkdir(parents=True)
        link.symlink_to(out)
        # (--overlay: the rootfs stays as it is, so the bind point's parents need glue directories)
        # (the seccomp rung: the userns rung mounts, it makes no such directories)
        p = run_carryon("exec", "--overlay", str(tmp_path / "upper"), "-r", str(busybox_rootfs),
                        "-b", f"{tmp_path}:/no/such/dir", "/bin/sh", "-c", "ls -d /no/such/dir", cwd="/",
                        env_extra={"CARRYON_ENGINE": "seccomp"})
        assert (p.returncode, p.stdout) == (0, "/no/such/dir\n"), p.stderr
        assert not mine_dead.exists() and mine_live.is_dir() and link.is_symlink() and _intact(out)
    finally:
        for d in (mine_dead, mine_live):
            shutil.rmtree(d, ignore_errors=True)
        if link.is_symlink():
            link.unlink()
