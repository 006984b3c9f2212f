"""Every run starts from the image as packed (the isolation issue's acceptance tests).

What is tested, on the packed archives of ../shared/images (`py` = debian-python, root user,
WorkingDir /app; `bb` = busybox-multilayer, user 1000:1000) and on one tiny image built here (`tmp`:
busybox with files under /tmp and a WorkingDir that the image lacks):

- a run sees the image plus its own changes (write, delete, mkdir, chmod, rename of files and image
  directories, `rm -rf` + `mkdir`, `dpkg -i`, `python3 -m venv`), with overlay semantics in
  directory listings; the next run sees none of them;
- concurrent runs of one archive do not see each other's writes;
- the cache entry (`<cache>/<32-hex key>/rootfs`) is never modified by a run: a digest of its tree
  (names, types, modes, sizes, mtimes, symlink targets) is taken right after extraction and compared;
- the image's own /tmp content is visible; a missing WorkingDir / `--carryon-workdir` is created;
- `--carryon-state DIR` / `CARRYON_STATE` keeps a run's changes for the next run with the same DIR;
  a DIR made by the other archive is refused (125, one line);
- a SIGKILLed run leaves nothing once the next run has started (no `.run-*` in the cache dir, no
  guest process);
- `carryon exec --overlay UPPER -r ROOTFS` writes to UPPER only; plain `carryon exec` keeps PRoot's
  meaning (writes go into ROOTFS).

Archive runs happen as root and as the unprivileged `carryon-test` (when pytest runs as root, like
tests/test_engine_run.py), with both engines (`CARRYON_ENGINE=seccomp|ptrace`) where the semantics
pass through the tracer's path handling. Each (user, image) pair gets its own fresh cache dir for the
whole module, so the entry's digest right after extraction is known.

Reading a failure: "the next run still sees ..." / "cache entry changed: ..." means a run's writes
went into the shared cache entry (the pre-isolation behaviour); "unknown option" in the output means
`--carryon-state` or `exec --overlay` is not implemented; a diff of paths lists what a run changed in
the entry or in ROOTFS.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from archive_run_support import archive, clean_env, guest_pids, workdir
from conftest import ENGINE_USERS, ENGINE_VARIANTS, run_carryon, tar_member, user_popen_kwargs, write_oci
from engine_util import carryon_exec

ENGINES = ["seccomp", "ptrace"] + [e for e in ENGINE_VARIANTS if e == "userns"]
# debian_rootfs is root's: an unprivileged caller's user namespace maps none of its owners, so it
# could not write over them in an overlay (the userns rung is not eligible: auto takes seccomp)
OTHERS_ROOTFS = "userns: an overlay over another user's rootfs is not eligible"
HOST_USER = ENGINE_USERS[0]            # "root" when pytest runs as root, else "self"


# ---------------------------------------------------------------- helpers

def owned_dir(parent: Path, name: str, user: str, mode: int = 0o700) -> Path:
    """A fresh dir `parent/name` belonging to `user` (the cache and HOME of that user's runs)."""
    d = parent / name
    d.mkdir(parents=True)
    if user not in ("root", "self"):
        shutil.chown(d, user, user)
    os.chmod(d, mode)
    return d


def remove(path: Path) -> None:
    from runtime.extract import remove_tree
    try:
        remove_tree(str(path))
    except OSError:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def udir(request):
    """factory: udir(user) -> a fresh dir of `user` under the world-readable workdir (pytest's tmp_path
    is private to root), removed after the test."""
    made: list[Path] = []

    def make(user: str, mode: int = 0o700) -> Path:
        base = workdir() / "isolation-tmp"
        base.mkdir(exist_ok=True)
        os.chmod(base, 0o755)
        d = owned_dir(base, f"{request.node.name[:60]}-{len(made)}-{os.getpid()}".replace("/", "_"), user,
                      mode)
        made.append(d)
        return d
    yield make
    for d in made:
        remove(d)


def run_archive(name: str, user: str, cache: Path, *args: str, engine: str | None = None,
                timeout: float = 180, **env_extra: str) -> subprocess.CompletedProcess:
    """`./NAME.run ARGS` as `user` with a clean environment, HOME = the cache's parent dir."""
    env = clean_env(cache.parent, cache, **env_extra)
    if engine:
        env["CARRYON_ENGINE"] = engine
    path = archive(name) if name in ("bb", "py") else name
    return subprocess.run([str(path), *args], env=env, capture_output=True, text=True, timeout=timeout,
                          cwd="/", **user_popen_kwargs(user))


def py_sh(script: str, *argv: str) -> list[str]:
    """Arguments that run `sh -c SCRIPT ARGV...` in the py image (its Entrypoint is python3)."""
    return ["--carryon-entrypoint", "/bin/sh", "-c", script, *argv]


def ok(p: subprocess.CompletedProcess) -> str:
    assert p.returncode == 0, f"rc={p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    return p.stdout


def tree_digest(root: Path) -> dict[str, tuple]:
    """path -> (type, mode, size, mtime_ns, symlink target) for every entry under `root` (os.lstat)."""
    out: dict[str, tuple] = {}

    def walk(d: str, rel: str) -> None:
        for name in sorted(os.listdir(d)):
            p = os.path.join(d, name)
            r = f"{rel}/{name}"
            st = os.lstat(p)
            kind = stat.S_IFMT(st.st_mode)
            target = os.readlink(p) if stat.S_ISLNK(st.st_mode) else ""
            size = st.st_size if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode) else 0
            out[r] = (kind, stat.S_IMODE(st.st_mode), size, st.st_mtime_ns, target)
            if stat.S_ISDIR(st.st_mode):
                walk(p, r)
    st = os.lstat(root)
    out["."] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), 0, st.st_mtime_ns, "")
    walk(str(root), ".")
    return out


def assert_same_tree(before: dict[str, tuple], after: dict[str, tuple], what: str) -> None:
    if before == after:
        return
    added = sorted(set(after) - set(before))
    gone = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    raise AssertionError(f"{what} changed: added {added[:10]}, removed {gone[:10]}, "
                         f"changed {[(k, before[k], after[k]) for k in changed[:10]]}")


def entry_rootfs(cache: Path) -> Path:
    """`<cache>/<32-hex key>/rootfs` of the one image entry in `cache`."""
    keys = [n for n in os.listdir(cache) if len(n) == 32 and all(c in "0123456789abcdef" for c in n)]
    assert len(keys) == 1, f"expected one image entry in {cache}: {sorted(os.listdir(cache))}"
    return cache / keys[0] / "rootfs"


def run_leftovers(cache: Path) -> list[str]:
    return sorted(n for n in os.listdir(cache) if n.startswith(".run-"))


# ---------------------------------------------------------------- per-module caches

class Caches:
    """One fresh cache dir per (user, image) for this module, with the entry's digest taken right after
    the first (extracting) run, before any other run touched it."""

    def __init__(self, base: Path):
        self.base = base
        self.made: dict[tuple[str, str], Path] = {}
        self.digests: dict[tuple[str, str], dict[str, tuple]] = {}

    def get(self, user: str, name: str) -> Path:
        if (user, name) not in self.made:
            if name in ("bb", "py"):
                archive(name)           # skips (../shared missing) before anything is made
            home = owned_dir(self.base, f"{user}-{Path(str(name)).stem}", user)
            cache = owned_dir(home, "cache", user)
            first = py_sh("true") if name == "py" else ["true"]
            ok(run_archive(name, user, cache, *first))
            self.made[(user, name)] = cache
            self.digests[(user, name)] = tree_digest(entry_rootfs(cache))
        return self.made[(user, name)]

    def assert_untouched(self, user: str, name: str) -> None:
        cache = self.get(user, name)
        assert_same_tree(self.digests[(user, name)], tree_digest(entry_rootfs(cache)),
                         f"cache entry {entry_rootfs(cache)} (user {user})")


@pytest.fixture(scope="module")
def caches():
    base = workdir() / f"isolation-caches-{os.getpid()}"
    base.mkdir()
    os.chmod(base, 0o755)
    yield Caches(base)
    remove(base)


@pytest.fixture(params=ENGINES)
def engine(request):
    return request.param


# ---------------------------------------------------------------- 1. changes are private to the run

# /etc/issue, not /etc/hostname: the run binds the host's /etc/hostname (and /etc/hosts, /etc/resolv.conf)
# into the guest, so a chmod of it would change the host's file
PROBE_1 = ("test -f /etc/motd && echo motd=yes || echo motd=gone; stat -c %a /etc/issue; "
           "test -e /etc/leak && echo leak=yes || echo leak=no; "
           "test -e /var/newdir && echo newdir=yes || echo newdir=no; "
           "test -e /etc/debian_version && echo dv=yes || echo dv=gone; cat /var/dv.moved 2>/dev/null || echo moved=no")


def test_a_runs_changes_are_its_own(caches, user, engine):
    cache = caches.get(user, "py")
    image = ok(run_archive("py", user, cache, *py_sh(PROBE_1), engine=engine)).split("\n")
    assert image[0] == "motd=yes" and image[2:6] == ["leak=no", "newdir=no", "dv=yes", "moved=no"], \
        f"the run does not start from the image (a previous run's changes are visible): {image}"
    assert image[1] == "644", f"/etc/issue is 644 in the image: {image}"

    out = ok(run_archive("py", user, cache, *py_sh(
        "set -e; cat /etc/debian_version; echo leaked > /etc/leak; rm /etc/motd; mkdir /var/newdir; "
        "chmod 600 /etc/issue; mv /etc/debian_version /var/dv.moved; "
        "ls -l /etc/leak; cat /etc/leak; " + PROBE_1 + "; stat -c '%a %F' /var/newdir"), engine=engine))
    version, *lines = out.splitlines()
    assert lines[0].startswith("-rw") and lines[0].endswith(" /etc/leak"), out
    assert lines[1:] == ["leaked", "motd=gone", "600", "leak=yes", "newdir=yes", "dv=gone", version,
                         "755 directory"], out

    again = ok(run_archive("py", user, cache, *py_sh(PROBE_1), engine=engine)).split("\n")
    assert again == image, "the next run still sees the previous run's changes (/etc/motd, /etc/issue's mode...)"
    caches.assert_untouched(user, "py")


# ---------------------------------------------------------------- 2. concurrent runs

@pytest.mark.parametrize("engine_", ENGINES)
def test_concurrent_runs_do_not_see_each_other(caches, engine_):
    cache = caches.get(HOST_USER, "py")
    base = ok(run_archive("py", HOST_USER, cache, *py_sh("ls /app"), engine=engine_)).split()
    assert "out.txt" not in base, f"a previous run's /app/out.txt is visible: {base}"
    env = clean_env(cache.parent, cache, CARRYON_ENGINE=engine_)
    script = 'echo "$0" > /app/out.txt; sleep 0.5; cat /app/out.txt; ls /app'
    procs = [subprocess.Popen([str(archive("py")), *py_sh(script, f"run-{i}")], env=env, cwd="/", text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(8)]
    results = [(p.communicate(timeout=180), p.returncode) for p in procs]
    want_ls = sorted(base + ["out.txt"])
    for i, ((out, err), rc) in enumerate(results):
        assert rc == 0, f"run-{i}: rc={rc}\n{err}"
        lines = out.split()
        assert lines[0] == f"run-{i}", f"run-{i} read another run's /app/out.txt: {lines[0]}"
        assert sorted(lines[1:]) == want_ls, f"run-{i}: ls /app = {lines[1:]}"
    after = ok(run_archive("py", HOST_USER, cache, *py_sh("ls /app"), engine=engine_)).split()
    assert after == base, "a later run still sees /app/out.txt"
    caches.assert_untouched(HOST_USER, "py")


# ---------------------------------------------------------------- 4. overlay semantics of directories

PROBE_4 = ("ls -a /etc; echo ---; ls -A /usr/share/doc | wc -l; ls /usr/share/common-licenses | wc -l; "
           "cksum < /usr/share/common-licenses/GPL-3; readlink /usr/share/common-licenses/GPL")


def test_directory_listings_deletes_and_renames(caches, user, engine):
    cache = caches.get(user, "py")
    image = ok(run_archive("py", user, cache, *py_sh(PROBE_4), engine=engine))
    etc, rest = image.split("---\n")
    etc = etc.split()
    n_doc, n_cl, gpl3, gpl_link = rest.splitlines()
    assert "motd" in etc and "isolation-added" not in etc, f"the run does not start from the image: {etc}"
    assert int(n_doc) > 0 and int(n_cl) > 0

    out = ok(run_archive("py", user, cache, *py_sh(
        "set -e; echo new > /etc/isolation-added; rm /etc/motd; ls -a /etc; echo ---; "
        "rm -rf /usr/share/doc; mkdir /usr/share/doc; ls -A /usr/share/doc; echo ---; "
        "mv /usr/share/common-licenses /usr/share/cl2; ls /usr/share/cl2 | wc -l; "
        "cksum < /usr/share/cl2/GPL-3; readlink /usr/share/cl2/GPL; cksum < /usr/share/cl2/GPL; "
        "test -e /usr/share/common-licenses && echo old=present || echo old=gone; "
        "ls /usr/share | grep -c '^common-licenses$' || true"), engine=engine))
    got_etc, got_doc, got_mv = out.split("---\n")
    assert sorted(got_etc.split()) == sorted([n for n in etc if n != "motd"] + ["isolation-added"])
    assert got_doc == "", "rm -rf + mkdir of an image dir must give an empty dir"
    assert got_mv.splitlines() == [n_cl, gpl3, gpl_link, gpl3, "old=gone", "0"]

    p = run_archive("py", user, cache, *py_sh(PROBE_4), engine=engine)
    assert (p.returncode, p.stdout) == (0, image), \
        f"the next run still sees the previous run's changes (/etc, /usr/share/doc, common-licenses):\n{p.stderr}"
    caches.assert_untouched(user, "py")


# ---------------------------------------------------------------- 5. package managers

def build_deb(dest: Path) -> Path:
    """A tiny .deb (`carryon-hello`, one shell script in /usr/bin) built with the host's dpkg-deb."""
    if not shutil.which("dpkg-deb"):
        pytest.skip("dpkg-deb not on the host")
    tree = dest / "pkg"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "usr" / "bin").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        "Package: carryon-hello\nVersion: 1.0\nArchitecture: all\nMaintainer: carryon tests <t@example.invalid>\n"
        "Description: isolation test package\n")
    script = tree / "usr" / "bin" / "carryon-hello"
    script.write_text("#!/bin/sh\necho hello from the deb\n")
    os.chmod(script, 0o755)
    for d in (tree, tree / "DEBIAN", tree / "usr", tree / "usr" / "bin"):
        os.chmod(d, 0o755)
    debs = dest / "debs"
    debs.mkdir()
    os.chmod(debs, 0o755)
    p = subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(tree), str(debs / "hello.deb")],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    os.chmod(debs / "hello.deb", 0o644)
    return debs


def test_dpkg_install_stays_in_the_run(caches, user, engine, udir):
    cache = caches.get(user, "py")
    debs = build_deb(udir(HOST_USER, 0o755))
    out = ok(run_archive("py", user, cache, f"--carryon-bind={debs}:/debs:ro", *py_sh(
        "set -e; dpkg -i /debs/hello.deb >/dev/null; carryon-hello; dpkg -s carryon-hello | grep '^Status'"),
        engine=engine))
    assert out == "hello from the deb\nStatus: install ok installed\n"
    out = ok(run_archive("py", user, cache, *py_sh(
        "test -e /usr/bin/carryon-hello && echo present || echo absent; "
        "dpkg -s carryon-hello >/dev/null 2>&1 && echo registered || echo unknown"), engine=engine))
    assert out == "absent\nunknown\n", "the next run still has the package"
    caches.assert_untouched(user, "py")


def test_venv_stays_in_the_run(caches, user, engine):
    # debian-python has the venv module but no ensurepip (python3-venv is not installed: `python3 -m venv
    # /opt/v` fails "ensurepip is not available"), so the venv is made --without-pip.
    cache = caches.get(user, "py")
    out = ok(run_archive("py", user, cache, *py_sh(
        "set -e; python3 -m venv --without-pip /opt/v; /opt/v/bin/python -c 'import sys; print(sys.prefix)'"),
        engine=engine))
    assert out == "/opt/v\n"
    out = ok(run_archive("py", user, cache, *py_sh("test -e /opt/v && echo present || echo absent"),
                         engine=engine))
    assert out == "absent\n", "the next run still has /opt/v"
    caches.assert_untouched(user, "py")


# ---------------------------------------------------------------- 6. --carryon-state

def test_state_dir_keeps_changes_for_the_next_run_with_it(caches, user, udir):
    cache = caches.get(user, "py")
    state = udir(user) / "state"                 # does not exist yet: the first run makes it
    out = ok(run_archive("py", user, cache, f"--carryon-state={state}", *py_sh(
        "set -e; echo one > /etc/kept; rm /etc/motd; cat /etc/kept")))
    assert out == "one\n"
    assert state.is_dir() and os.listdir(state), "--carryon-state DIR holds nothing after the run"
    out = ok(run_archive("py", user, cache, "--carryon-state", str(state), *py_sh(
        "set -e; cat /etc/kept; test -e /etc/motd && echo motd=yes || echo motd=gone; echo two >> /etc/kept")))
    assert out == "one\nmotd=gone\n"
    out = ok(run_archive("py", user, cache, *py_sh(
        "cat /etc/kept; test -e /etc/motd && echo motd=yes || echo motd=gone"), CARRYON_STATE=str(state)))
    assert out == "one\ntwo\nmotd=gone\n", "CARRYON_STATE=DIR does not start from DIR's changes"
    p = run_archive("py", user, cache, *py_sh(
        "test -e /etc/kept && echo kept=yes || echo kept=no; test -e /etc/motd && echo motd=yes"))
    assert ok(p) == "kept=no\nmotd=yes\n", "a run without --carryon-state sees the state dir's changes"
    caches.assert_untouched(user, "py")

    bb_cache = caches.get(user, "bb")
    p = run_archive("bb", user, bb_cache, f"--carryon-state={state}", "sh", "-c", "echo should not run")
    assert p.returncode == 125, (p.returncode, p.stdout, p.stderr)
    assert p.stdout == ""
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("carryon: ") and str(state) in lines[0], p.stderr
    caches.assert_untouched(user, "bb")


@pytest.mark.skipif("userns" not in ENGINES, reason="user namespaces are refused here")
def test_state_dir_is_used_by_the_format_that_made_it(caches, user, udir):
    """The userns rung keeps overlayfs state (ns-upper, whiteouts), the ptrace rungs their own
    (upper + overlay.log): a DIR made by one is refused by the other with one line, and `auto`
    runs a ptrace-made DIR on a ptrace rung (the userns rung is not eligible for it)."""
    cache = caches.get(user, "py")
    for maker, other, says in (("userns", "seccomp", "made by the userns engine"),
                               ("ptrace", "userns", "made by the ptrace engines")):
        state = udir(user) / f"state-{maker}"
        out = ok(run_archive("py", user, cache, f"--carryon-state={state}", *py_sh(
            "set -e; echo one > /etc/kept; rm /etc/motd; cat /etc/kept"), engine=maker))
        assert out == "one\n"
        p = run_archive("py", user, cache, f"--carryon-state={state}", *py_sh("echo should not run"),
                        engine=other)
        assert (p.returncode, p.stdout) == (125, ""), (p.returncode, p.stdout, p.stderr)
        lines = p.stderr.splitlines()
        assert len(lines) == 1 and says in lines[0] and str(state) in lines[0], p.stderr
        out = ok(run_archive("py", user, cache, f"--carryon-state={state}", *py_sh(
            "cat /etc/kept; test -e /etc/motd && echo motd=yes || echo motd=gone"), engine="auto"))
        assert out == "one\nmotd=gone\n", f"auto on a {maker}-made state: {out}"
    caches.assert_untouched(user, "py")


# ---------------------------------------------------------------- 7. SIGKILL

def test_sigkilled_run_is_reaped_by_the_next_start(user, udir):
    home = udir(user)
    cache = owned_dir(home, "cache", user)
    marker = f"30.{os.getpid() % 1000:03d}{ENGINE_USERS.index(user)}"      # `sleep 30.NNNN`: ours only
    p = subprocess.Popen([str(archive("py")), *py_sh('echo ready; exec sleep "$0"', marker)],
                         env=clean_env(home, cache), cwd="/", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, **user_popen_kwargs(user))

    def guests() -> list[int]:     # the runtime (p.pid: the launcher exec'd it) carries the marker too
        return [pid for pid in guest_pids(marker) if pid != p.pid]
    try:
        line = p.stdout.readline()
        assert line == "ready\n", f"the guest did not start: {line!r} {p.stderr.read() if p.poll() else ''}"
        assert guests()
        os.kill(p.pid, signal.SIGKILL)
        p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    deadline = time.monotonic() + 10
    while guests() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert guests() == [], "the guest survived the SIGKILLed runtime"
    ok(run_archive("py", user, cache, *py_sh("true")))
    assert run_leftovers(cache) == [], "the next start did not reap the killed run's directory"


# ---------------------------------------------------------------- 8. the image's /tmp, a missing WorkingDir

@pytest.fixture(scope="module")
def tmp_image(busybox_rootfs):
    """`tmp.run`: a static busybox with /tmp/seed.txt and /tmp/seeddir/inner in the image, and
    WorkingDir /srv/job, which the image lacks (root user)."""
    busybox = (busybox_rootfs / "bin" / "busybox").read_bytes()
    D = tarfile.DIRTYPE
    members = [tar_member("bin/", D), tar_member("bin/busybox", data=busybox, mode=0o755),
               tar_member("etc/", D), tar_member("etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\n"),
               tar_member("etc/group", data=b"root:x:0:\n"), tar_member("root/", D, mode=0o700),
               tar_member("tmp/", D, mode=0o1777), tar_member("tmp/seed.txt", data=b"seeded by the image\n"),
               tar_member("tmp/seeddir/", D), tar_member("tmp/seeddir/inner", data=b"inner\n")]
    members += [tar_member(f"bin/{a}", tarfile.SYMTYPE, linkname="busybox")
                for a in ("sh", "cat", "ls", "pwd", "stat", "echo", "test", "true")]
    base = workdir() / f"isolation-tmpimage-{os.getpid()}"
    base.mkdir()
    os.chmod(base, 0o755)
    layout = write_oci(base / "oci", [members], config={
        "Cmd": ["/bin/sh"], "Env": ["PATH=/bin"], "WorkingDir": "/srv/job"})
    out = base / "tmp.run"
    p = run_carryon("pack", str(layout), "-o", str(out), "-q")
    assert p.returncode == 0, p.stderr
    os.chmod(out, 0o755)
    yield out
    remove(base)


def test_image_tmp_is_visible_and_missing_workdir_is_created(caches, tmp_image, user, engine):
    cache = caches.get(user, str(tmp_image))
    probe = ("pwd; stat -c %a /tmp; cat /tmp/seed.txt /tmp/seeddir/inner; ls -A /tmp; "
             "echo mine > /tmp/mine; echo x > /srv/job/f; ls -A /tmp")
    p = run_archive(str(tmp_image), user, cache, "/bin/sh", "-c", probe, engine=engine)
    want = "/srv/job\n1777\nseeded by the image\ninner\nseed.txt\nseeddir\nmine\nseed.txt\nseeddir\n"
    assert (p.returncode, p.stdout, p.stderr) == (0, want, ""), p.stderr
    p = run_archive(str(tmp_image), user, cache, "/bin/sh", "-c", "pwd; ls -A /tmp; echo --; ls -A /srv/job",
                    engine=engine)
    assert (p.returncode, p.stdout, p.stderr) == (0, "/srv/job\nseed.txt\nseeddir\n--\n", ""), \
        "the next run still sees the previous run's /tmp/mine or /srv/job/f"
    caches.assert_untouched(user, str(tmp_image))


def test_missing_carryon_workdir_is_created(caches, user):
    cache = caches.get(user, "bb")
    p = run_archive("bb", user, cache, "--carryon-workdir", "/does/not/exist", "sh", "-c",
                    "pwd; stat -c %a /tmp; echo x > /tmp/f; ls -A /tmp")
    assert (p.returncode, p.stdout, p.stderr) == (0, "/does/not/exist\n1777\nf\n", "")
    p = run_archive("bb", user, cache, "sh", "-c", "ls -A /tmp; test -e /does && echo /does-kept; pwd")
    assert (p.returncode, p.stdout) == (0, "/home/app\n"), p.stderr
    caches.assert_untouched(user, "bb")


# ---------------------------------------------------------------- 9. carryon exec --overlay

def test_exec_overlay_writes_go_to_upper(debian_rootfs, user, engine, udir):
    if engine == "userns" and user not in ("root", "self"):
        pytest.skip(OTHERS_ROOTFS)
    upper = udir(user) / "upper"                 # an empty dir of the user, like a fresh -r ROOTFS would be
    upper.mkdir()
    if user not in ("root", "self"):
        shutil.chown(upper, user, user)
    before = tree_digest(debian_rootfs)
    opts = ["-0", "--overlay", str(upper)]
    p = carryon_exec(debian_rootfs, "sh", "-c", "set -e; echo x > /etc/new; rm /etc/motd; cat /etc/new",
                     engine=engine, user=user, opts=opts, defaults=False)
    assert (p.returncode, p.stdout) == (0, "x\n"), p.stderr
    assert_same_tree(before, tree_digest(debian_rootfs), f"ROOTFS {debian_rootfs}")
    assert upper.is_dir() and os.listdir(upper), "UPPER holds nothing after a run that wrote"
    # no redirection to /dev/null: the run without --overlay (no -R, no /dev bind) would create it
    probe = "test -e /etc/new && cat /etc/new || echo new=absent; test -e /etc/motd && echo motd=yes || echo motd=gone"
    p = carryon_exec(debian_rootfs, "sh", "-c", probe, engine=engine, user=user, opts=opts, defaults=False)
    assert (p.returncode, p.stdout) == (0, "x\nmotd=gone\n"), p.stderr
    p = carryon_exec(debian_rootfs, "sh", "-c", probe, engine=engine, user=user, opts=["-0"], defaults=False)
    assert (p.returncode, p.stdout) == (0, "new=absent\nmotd=yes\n"), p.stderr
    assert_same_tree(before, tree_digest(debian_rootfs), f"ROOTFS {debian_rootfs}")


FD_CHANGES = """
import os
fd = os.open("/etc/debian_version", os.O_RDONLY)     # an image file, opened for reading
os.fchmod(fd, 0o600)
os.utime(fd, (1, 1))
print(oct(os.stat("/etc/debian_version").st_mode & 0o777), int(os.stat("/etc/debian_version").st_mtime))
"""


def test_changes_through_a_read_only_descriptor_are_copied_up(debian_rootfs, user, engine, udir):
    if engine == "userns" and user not in ("root", "self"):
        pytest.skip(OTHERS_ROOTFS)
    upper = owned_dir(udir(user), "upper", user)
    before = tree_digest(debian_rootfs)
    opts = ["-0", "--overlay", str(upper)]
    p = carryon_exec(debian_rootfs, "/usr/bin/python3", "-c", FD_CHANGES, engine=engine, user=user,
                     opts=opts, defaults=False)
    assert (p.returncode, p.stdout) == (0, "0o600 1\n"), p.stderr
    assert_same_tree(before, tree_digest(debian_rootfs), f"ROOTFS {debian_rootfs}")


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs")
def test_full_disk_while_copying_up_is_enospc_for_the_call(tmp_path):
    """A copy-up that does not fit: the guest's call fails with ENOSPC, the run goes on, nothing
    half-copied stays, the image is unchanged."""
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(small)], check=True)
    try:
        rootfs = small / "rootfs"
        (rootfs / "bin").mkdir(parents=True)
        shutil.copy("/bin/busybox", rootfs / "bin" / "busybox")
        os.symlink("busybox", rootfs / "bin" / "sh")
        with open(rootfs / "big", "wb") as f:
            f.write(os.urandom(1 << 20) * 14)        # 14 MB: a second copy does not fit in 24 MB
        before = tree_digest(rootfs)
        upper = small / "upper"
        upper.mkdir()
        p = carryon_exec(rootfs, "/bin/sh", "-c", "echo more >> /big; echo rc=$?; echo ok > /small && echo wrote",
                         engine="seccomp", user="root", opts=["--overlay", str(upper)], defaults=False)
        assert (p.returncode, p.stdout) == (0, "rc=1\nwrote\n"), p.stderr
        assert "No space left" in p.stderr
        assert_same_tree(before, tree_digest(rootfs), "ROOTFS")
        assert not [n for n in os.listdir(upper / "upper") if n.startswith(".carryon-copy-up")]
    finally:
        subprocess.run(["umount", str(small)])


def test_exec_without_overlay_writes_into_rootfs(busybox_rootfs, user, engine):
    name = f"isolation-probe-{user}-{engine}-{os.getpid()}"
    host = busybox_rootfs / "tmp" / name             # /tmp is 1777 in the image: every user may write
    try:
        p = carryon_exec(busybox_rootfs, "sh", "-c", f"echo written > /tmp/{name}", engine=engine, user=user,
                         defaults=False)
        assert p.returncode == 0, p.stderr
        assert host.read_text() == "written\n"
    finally:
        if host.exists():
            host.unlink()


# ---------------------------------------------------------------- 3. the cache entry is never modified

def test_cache_entries_are_never_modified(caches, user):
    """Last in the module: every entry this module's runs used still has the digest it had right after
    extraction. A run of its own (root image user: deletes, chmod, rename, writes all over) first, so
    that this test checks something when run alone."""
    cache = caches.get(user, "py")
    ok(run_archive("py", user, cache, *py_sh(
        "rm -rf /app/www /etc/motd; chmod 700 /usr/share; mv /usr/bin/cksum /usr/bin/cksum2; "
        "echo x > /usr/lib/x; touch /etc/passwd; : > /app/fib.py")))
    for (u, name) in list(caches.made):
        if u == user:
            caches.assert_untouched(u, name)


UNIX_BIND = """
import os, socket
s = socket.socket(socket.AF_UNIX)
s.bind("/etc/carryon-test.sock")
print(os.path.exists("/etc/carryon-test.sock"))
"""


def test_a_unix_socket_bound_in_an_image_directory_is_the_runs(debian_rootfs, user, engine, udir):
    if engine == "userns" and user not in ("root", "self"):
        pytest.skip(OTHERS_ROOTFS)
    upper = owned_dir(udir(user), "upper", user)
    before = tree_digest(debian_rootfs)
    p = carryon_exec(debian_rootfs, "/usr/bin/python3", "-c", UNIX_BIND, engine=engine, user=user,
                     opts=["-0", "--overlay", str(upper)], defaults=False)
    assert (p.returncode, p.stdout) == (0, "True\n"), p.stderr
    assert_same_tree(before, tree_digest(debian_rootfs), f"ROOTFS {debian_rootfs}")
