"""carryon-nsrun (runtime/launch/nsrun.c): the userns engine's runs executed in C.

- an archive's warm start runs the plan the Python runtime stored, with no Python (seen here by a
  record added to the stored plan: only nsrun reads it), with the Python path's answers: env, cwd,
  ids, mounts, exit codes, 127/126, stdin, ARGS replacing Cmd, a fresh container each run, signals;
- it falls back to the Python runtime for options, CARRYON_* variables, `auto` where auto would not
  take userns, a stale plan (another kernel), a corrupt one, one others could write or that is
  another user's (and the Python runtime then writes a good one again);
- `carryon exec` on userns goes through nsrun too, and a refusal there gives the next rung.
Runs as whoever runs pytest (CI: root, then carryon-test); the planted plan of another user needs
root to set up the two users.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from archive_run_support import archive, clean_env, run, workdir
from conftest import REPO

ROOT = os.geteuid() == 0
VICTIM, ATTACKER = "carryon-test", "carryon-other"
RUNUSER = shutil.which("runuser") or "/usr/sbin/runuser"

pytestmark = pytest.mark.skipif(subprocess.run(["unshare", "-Urm", "true"], capture_output=True).returncode != 0,
                                reason="user namespaces refused here")

PROBE = ('echo "cwd=$(pwd)"; id; env | sort; cut -d" " -f5 /proc/self/mountinfo | sort; '
         'cat /etc/hostname; echo "args=$#"; exit 3')


@pytest.fixture
def cache() -> Path:
    import tempfile
    return Path(tempfile.mkdtemp(prefix="nsrun-cache-", dir=workdir()))


def _env(cache: Path, **extra: str) -> dict[str, str]:
    e = clean_env(cache=cache, CARRYON_ENGINE="userns", TERM="xterm-test")
    e.update(extra)
    return e


def _plan(cache: Path) -> Path:
    plans = list(cache.glob("nsplan-*"))
    assert len(plans) == 1, plans
    return plans[0]


def _mark(plan: Path, value: str = "fast") -> bytes:
    """Add an env record MARK=value to the stored plan (a valid plan of ours still): a run that
    shows MARK ran the plan, with no Python."""
    data = plan.read_bytes()
    assert data.endswith(b"end\0")
    marked = data[:-4] + b"env\0MARK=" + value.encode() + b"\0end\0"
    plan.write_bytes(marked)
    return marked


def _warm(cache: Path) -> tuple[Path, Path]:
    """The bb archive run once (extraction, Python runtime: the plan is stored), its plan marked."""
    bb = archive("bb")
    p = run(bb, "true", env=_env(cache))
    assert p.returncode == 0, p.stderr
    plan = _plan(cache)
    assert plan.stat().st_uid == os.geteuid() and plan.stat().st_mode & 0o777 == 0o600
    _mark(plan)
    return bb, plan


def _python_path(cache: Path, **extra: str) -> dict[str, str]:
    """The same run by the Python runtime alone (CARRYON_NSRUN=0: no plan used, nsrun not exec'd)."""
    return _env(cache, CARRYON_NSRUN="0", **extra)


def test_warm_start_runs_the_plan_and_answers_like_the_python_path(cache):
    bb, plan = _warm(cache)
    fast = run(bb, "/bin/sh", "-c", PROBE, "x", "y", env=_env(cache))
    slow = run(bb, "/bin/sh", "-c", PROBE, "x", "y", env=_python_path(cache))
    assert "MARK=fast" in fast.stdout and "MARK" not in slow.stdout, fast.stdout + slow.stdout
    assert fast.returncode == slow.returncode == 3
    assert fast.stdout.replace("MARK=fast\n", "") == slow.stdout and fast.stderr == slow.stderr == ""
    assert "cwd=/home/app" in fast.stdout and "args=1" in fast.stdout and "TERM=xterm-test" in fast.stdout
    # the image's Cmd when no ARGS are given (Entrypoint + Cmd)
    fast = run(bb, env=_env(cache))
    slow = run(bb, env=_python_path(cache))
    assert (fast.returncode, fast.stdout) == (slow.returncode, slow.stdout) and fast.returncode == 0
    assert fast.stdout.startswith("entrypoint: ok\nargc=2\narg1=[hello]\narg2=[from cmd]\n"), fast.stdout
    # nothing is left behind: no run directory (removed once the status is out), the plan unchanged
    for _ in range(100):
        if not [n for n in os.listdir(cache) if n.startswith(".run-")]:
            break
        time.sleep(0.05)
    assert not [n for n in os.listdir(cache) if n.startswith(".run-")]
    assert b"MARK=fast" in plan.read_bytes()


def test_carryon_clean_removes_the_plan(cache):
    bb, plan = _warm(cache)
    other = cache / (plan.name + "0")           # another uid's name: not ours to remove
    other.write_bytes(b"x")
    p = run(bb, "--carryon-clean", env=_env(cache))
    assert p.returncode == 0, p.stderr
    assert not plan.exists() and other.exists()
    assert not [e for e in cache.iterdir() if e.is_dir() and not e.name.startswith("rt-")], list(cache.iterdir())


def test_warm_start_errors_stdin_and_a_fresh_container_each_run(cache):
    bb, _ = _warm(cache)
    for args in (["nosuchcmd"], ["/nope/x"], ["/etc/passwd"], ["/bin/sh", "-c", "kill -TERM $$"]):
        fast = run(bb, *args, env=_env(cache))
        slow = run(bb, *args, env=_python_path(cache))
        assert (fast.returncode, fast.stdout, fast.stderr) == (slow.returncode, slow.stdout, slow.stderr), args
    assert run(bb, "nosuchcmd", env=_env(cache)).returncode == 127
    assert run(bb, "/etc/passwd", env=_env(cache)).returncode == 126
    assert run(bb, "/bin/sh", "-c", "kill -TERM $$", env=_env(cache)).returncode == 128 + signal.SIGTERM
    p = run(bb, "/bin/sh", "-c", "cat; echo $MARK", env=_env(cache), input="from stdin\n")
    assert (p.returncode, p.stdout) == (0, "from stdin\nfast\n"), p.stderr
    p = run(bb, "/bin/sh", "-c", "test -e /home/app/left && echo seen; echo x > /home/app/left; rm /bin/ls; "
            "echo $MARK", env=_env(cache))
    assert (p.returncode, p.stdout) == (0, "fast\n"), p.stderr
    p = run(bb, "/bin/sh", "-c", "test -e /home/app/left && echo seen; test -e /bin/ls && echo ls", env=_env(cache))
    assert (p.returncode, p.stdout) == (0, "ls\n"), p.stderr


def test_warm_start_forwards_signals_and_leaves_no_guest(cache):
    bb, _ = _warm(cache)
    script = ('trap "echo got TERM; exit 7" TERM; echo $MARK; (sleep 3171 &); echo ready; '
              'while :; do sleep 0.05; done')
    p = subprocess.Popen([str(bb), "/bin/sh", "-c", script], env=_env(cache), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    assert p.stdout is not None
    assert p.stdout.readline() == "fast\n"
    assert p.stdout.readline() == "ready\n"
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=30)
    assert (p.returncode, out) == (7, "got TERM\n"), err
    time.sleep(0.2)
    left = subprocess.run(["pgrep", "-u", str(os.geteuid()), "-f", "sleep 3171"], capture_output=True, text=True)
    assert left.stdout == "", "a guest outlived the run"


def _no_mark(bb: Path, cache: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    p = run(bb, *args, "/bin/sh", "-c", "echo mark=$MARK", env=_env(cache, **env))
    assert p.returncode == 0 and p.stdout.endswith("mark=\n"), (p.stdout, p.stderr)
    return p


def test_falls_back_to_the_python_runtime_for_anything_but_a_plain_run(cache):
    bb, plan = _warm(cache)
    _no_mark(bb, cache, "--carryon-engine=userns")                # an option
    _no_mark(bb, cache, CARRYON_NSRUN="1")                        # another CARRYON_* variable
    _no_mark(bb, cache, CARRYON_ENGINE="auto")  # auto does not take userns for this image (owners)
    _no_mark(bb, cache, CARRYON_ENGINE="seccomp")
    assert b"MARK=fast" in plan.read_bytes()
    # the Python runtime is what runs then: without it, those runs fail; the plain one does not
    rt = next(cache.glob("rt-*"))
    (rt / "carryon-runtime").rename(rt / "carryon-runtime.away")
    try:
        assert run(bb, "/bin/sh", "-c", "echo $MARK", env=_env(cache)).stdout == "fast\n"
        assert run(bb, "--carryon-engine=userns", "true", env=_env(cache)).returncode != 0
    finally:
        (rt / "carryon-runtime.away").rename(rt / "carryon-runtime")


@pytest.mark.parametrize("spoil", ["kernel", "corrupt", "group-writable", "symlink", "other-user"])
def test_a_stale_or_untrusted_plan_is_not_used(cache, spoil):
    bb, plan = _warm(cache)
    data = plan.read_bytes()
    if spoil == "kernel":           # made on another kernel
        release = os.uname().release.encode()
        plan.write_bytes(data.replace(b"kernel\0" + release, b"kernel\0" + release + b"-old"))
    elif spoil == "corrupt":
        plan.write_bytes(data[:len(data) // 2])
    elif spoil == "group-writable":
        plan.chmod(0o620)
    elif spoil == "symlink":
        elsewhere = cache.parent / f"{cache.name}-elsewhere"
        elsewhere.write_bytes(data)
        plan.unlink()
        plan.symlink_to(elsewhere)
    else:
        if not ROOT:
            pytest.skip("needs root to give the plan to another user")
        os.chown(plan, 54321, 54321)
    _no_mark(bb, cache)
    if spoil in ("kernel", "corrupt"):      # the Python runtime wrote a good plan again
        assert b"MARK" not in plan.read_bytes() and plan.stat().st_mode & 0o777 == 0o600
        _mark(plan)
        assert run(bb, "/bin/sh", "-c", "echo $MARK", env=_env(cache)).stdout == "fast\n"


def test_a_refusal_on_the_warm_start_goes_to_the_python_runtime(cache):
    """A set-up step the kernel refuses (here a bind whose source is gone) before the guest ran:
    the run's directory is removed and the Python runtime decides, told of the refusal (asked for
    by name, userns then fails with the Python rung's line)."""
    bb, plan = _warm(cache)
    data = plan.read_bytes()
    plan.write_bytes(data[:-4] + b"bind\0/nonexistent-nsrun-test\0/mnt/x\0-\0end\0")
    p = run(bb, "/bin/sh", "-c", "echo ran", env=_env(cache))
    assert p.returncode == 125 and p.stdout == "", p.stderr
    assert p.stderr.startswith("carryon: user namespace refused: mount "), p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert not [n for n in os.listdir(cache) if n.startswith(".run-")]


@pytest.mark.skipif(not ROOT or not os.path.exists(RUNUSER), reason="needs root to run two users")
def test_a_plan_planted_by_another_user_is_never_run(cache):
    """In a cache both can write (sticky, like /tmp), carryon-other plants a plan named for
    carryon-test's runs (made from a real one, with a variable of its own): never used."""
    import pwd
    for u in (VICTIM, ATTACKER):
        try:
            pwd.getpwnam(u)
        except KeyError:
            pytest.skip(f"no user {u}")
    bb = archive("bb")
    shared = cache / "shared"
    shared.mkdir()
    os.chmod(cache, 0o755)
    os.chmod(shared, 0o1777)
    env = _env(shared)

    def victim(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([RUNUSER, "-u", VICTIM, "--", str(bb), *args], env=env, capture_output=True,
                              text=True, timeout=300, cwd="/")
    assert victim("true").returncode == 0
    plan = _plan(shared)
    data = plan.read_bytes()
    plan.unlink()
    planted = shared / "planted"
    planted.write_bytes(data[:-4] + b"env\0PWNED=1\0end\0")
    os.chmod(planted, 0o644)
    pw = pwd.getpwnam(ATTACKER)
    os.chown(planted, pw.pw_uid, pw.pw_gid)
    subprocess.run([RUNUSER, "-u", ATTACKER, "--", "mv", str(planted), str(plan)], check=True)
    for _ in range(2):
        p = victim("/bin/sh", "-c", "echo pwned=$PWNED")
        assert (p.returncode, p.stdout) == (0, "pwned=\n"), p.stderr
    assert plan.stat().st_uid == pw.pw_uid          # never replaced nor removed (sticky dir)


def _exec(rootfs: Path, *args: str, jail: tuple[str, ...] = (), **env: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "packer.cli", "exec", "-r", str(rootfs), *args]
    if jail:
        cmd = [str(REPO / "scripts" / "kernel-jail"), *jail, *cmd]
    e = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "LANG": "C.UTF-8", **env}
    return subprocess.run(cmd, capture_output=True, text=True, env=e, cwd="/", timeout=120)


@pytest.mark.skipif(shutil.which("strace") is None, reason="no strace")
def test_carryon_exec_on_userns_runs_through_nsrun(busybox_rootfs, tmp_path):
    from runtime.launch import nsrun
    if nsrun.path() is None:
        pytest.skip("no carryon-nsrun (no C compiler)")
    out = tmp_path / "trace"
    p = subprocess.run(["strace", "-f", "-qq", "-e", "trace=execve", "-o", str(out), sys.executable, "-m",
                        "packer.cli", "exec", "-r", str(busybox_rootfs), "/bin/sh", "-c", "echo hi; exit 4"],
                       capture_output=True, text=True, timeout=120, cwd="/",
                       env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "CARRYON_ENGINE": "userns"})
    assert (p.returncode, p.stdout) == (4, "hi\n"), p.stderr
    assert "carryon-nsrun" in out.read_text()
    for args, code, msg in ((["nosuch"], 127, "carryon exec: nosuch: executable file not found in the guest's $PATH"),
                            (["/etc/passwd"], 126, "carryon exec: /etc/passwd: permission denied")):
        fast = _exec(busybox_rootfs, *args, CARRYON_ENGINE="userns")
        slow = _exec(busybox_rootfs, *args, CARRYON_ENGINE="userns", CARRYON_NSRUN="0")
        assert (fast.returncode, fast.stderr) == (slow.returncode, slow.stderr) and fast.returncode == code
        assert fast.stderr.startswith(msg), fast.stderr


def test_a_refusal_in_nsrun_gives_the_next_rung(busybox_rootfs, tmp_path):
    """A cached verdict says user namespaces work, the kernel (kernel-jail) refuses them: nsrun
    finds it out, the Python runtime is started again and `auto` takes the seccomp rung."""
    import json
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    jail = ("--no-userns",)
    assert _exec(busybox_rootfs, "/bin/true", jail=jail, CARRYON_CACHE=str(cache)).returncode == 0
    verdict = next(cache.glob("engine-*.json"))
    data = json.loads(verdict.read_text())
    assert data["rungs"]["userns"]
    data["rungs"]["userns"] = None              # stale: says user namespaces work in the jail
    with open(verdict, "w") as f:
        json.dump(data, f)
    p = _exec(busybox_rootfs, "-v", "1", "/bin/sh", "-c", "echo hi; env | grep -c _CARRYON; true", jail=jail,
              CARRYON_CACHE=str(cache))
    assert (p.returncode, p.stdout) == (0, "hi\n0\n"), p.stderr
    said = [ln for ln in p.stderr.splitlines() if ln.startswith("carryon: engine: ")]
    assert said[0].startswith("carryon: engine: userns (cached verdict"), p.stderr
    assert said[-1].startswith("carryon: engine: seccomp (userns: refused: user namespace refused: unshare"), p.stderr
    assert json.loads(verdict.read_text())["rungs"]["userns"]      # rewritten: refused
