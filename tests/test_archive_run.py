"""`./app.run ARGS` behaves like `docker run image ARGS` (issue 4 acceptance), with nothing but the file."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

import archive_run_support
from archive_run_support import ROOT, archive, clean_env, entries, expected_run, guest_pids, run, workdir
from conftest import ENGINE_VARIANTS


@pytest.fixture(autouse=True, params=["seccomp"] + ["auto"] * ("userns" in ENGINE_VARIANTS))
def archive_engine(request):
    """Every test on the seccomp engine and on `auto`, which takes the userns rung where user
    namespaces work and the run is eligible (debian-python; busybox-multilayer's user 1000 over
    files recorded as root's is not: seccomp)."""
    archive_run_support.ENGINE[:] = [request.param]
    yield request.param
    archive_run_support.ENGINE[:] = []


@pytest.fixture(scope="module")
def warm():
    """A cache dir shared by this module's runs (each archive extracted once into it)."""
    d = workdir() / "cache-run"
    d.mkdir(exist_ok=True)
    return d


def test_busybox_default_run_is_quiet_even_when_cold(tmp_path):
    bb = archive("bb")
    p = run(bb, env=clean_env(tmp_path, tmp_path / "cache"))
    assert p.returncode == 0, p.stderr
    assert p.stdout == expected_run()
    assert p.stderr == ""                     # first extraction included: nothing of our own
    e = entries(tmp_path / "cache")
    assert len(e["image"]) == 1 and len(e["runtime"]) == 1 and e["other"] == []
    p = run(bb, env=clean_env(tmp_path, tmp_path / "cache"))
    assert (p.returncode, p.stdout, p.stderr) == (0, expected_run(), "")


def test_busybox_user_workdir_env(warm, tmp_path):
    p = run(archive("bb"), "sh", "-c", "id; pwd; echo $VAR; echo HOME=$HOME", env=clean_env(tmp_path, warm))
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith("uid=1000") and "gid=1000" in lines[0]
    assert lines[1:] == ["/home/app", "hello world", "HOME=/home/app"]


def test_python_default_and_args(warm, tmp_path):
    py = archive("py")
    env = clean_env(tmp_path, warm)
    p = run(py, env=env)
    assert (p.returncode, p.stdout, p.stderr) == (0, expected_run("debian-python"), "")
    p = run(py, "/app/fib.py", "25", env=env)
    assert (p.returncode, p.stdout) == (0, "fib(25) = 75025\n")
    p = run(py, "-c", "import sys; sys.exit(7)", env=env)
    assert (p.returncode, p.stderr) == (7, "")
    p = run(py, "--carryon-entrypoint", "/bin/sh", "-c", "echo $PORT", env=env)
    assert (p.returncode, p.stdout) == (0, "8000\n")


def test_the_frozen_runtime_brings_the_native_stop_loop(warm, tmp_path):
    """The archive's runtime carries runtime/tracee/_fastloop.so and uses it (no compiler on nodes).
    On the seccomp engine: the userns rung that `auto` may take has no stop loop to show."""
    p = run(archive("bb"), "--carryon-verbose=2", "sh", "-c",
            "for i in 1 2 3; do /bin/true; done; cat /etc/os-release >/dev/null; echo ok",
            env=clean_env(tmp_path, warm, CARRYON_ENGINE="seccomp"))
    assert (p.returncode, p.stdout) == (0, "ok\n"), p.stderr
    stats = [ln for ln in p.stderr.splitlines() if "native stop loop:" in ln]
    assert stats, p.stderr
    counts = dict(item.rsplit(" ", 1) for item in stats[0].split(": ", 2)[2].split(", "))
    assert int(counts["forks"]) >= 3 and int(counts["exits"]) >= 3, stats


def test_root_image_identity_home_and_hostname(warm, tmp_path):
    p = run(archive("py"), "--carryon-entrypoint", "/bin/sh", "-c", "id -u; id -g; echo $HOME $HOSTNAME; pwd",
            env=clean_env(tmp_path, warm))
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["0", "0", "/root", os.uname().nodename, "/app"]


def test_host_environment_does_not_leak(warm, tmp_path):
    env = clean_env(tmp_path, warm, SECRET="x", LD_LIBRARY_PATH="/nope", LD_PRELOAD="", TERM="dumb",
                    SLURM_JOB_ID="77", PYTHONPATH="/evil")
    p = run(archive("bb"), "--carryon-env", "SLURM_JOB_ID", "--carryon-env=NEW=a b", "env", env=env)
    assert p.returncode == 0, p.stderr
    got = dict(line.split("=", 1) for line in p.stdout.splitlines() if "=" in line)
    assert "SECRET" not in got and "LD_LIBRARY_PATH" not in got and "PYTHONPATH" not in got
    assert not any(k.startswith(("_CARRYON", "_PYI", "CARRYON")) for k in got)
    assert got["TERM"] == "dumb" and got["SLURM_JOB_ID"] == "77" and got["NEW"] == "a b"
    assert got["VAR"] == "hello world" and got["EQ"] == "a=b=c" and got["EMPTY"] == ""


def test_env_options_from_environment(warm, tmp_path):
    env = clean_env(tmp_path, warm, CARRYON_ENV="A=1\nB=two words", CARRYON_WORKDIR="/etc")
    p = run(archive("bb"), "sh", "-c", 'echo "$A|$B|$(pwd)"', env=env)
    assert (p.returncode, p.stdout) == (0, "1|two words|/etc\n")


def test_stdin_and_exit_codes(warm, tmp_path):
    bb = archive("bb")
    env = clean_env(tmp_path, warm)
    p = run(bb, "cat", env=env, input="piped in\n")
    assert (p.returncode, p.stdout) == (0, "piped in\n")
    p = run(bb, "sh", "-c", "exit 3", env=env)
    assert p.returncode == 3
    p = run(bb, "/no/such/command", env=env)
    assert p.returncode == 127 and len(p.stderr.strip().splitlines()) == 1
    p = run(bb, "/etc/motd", env=env)
    assert p.returncode == 126 and len(p.stderr.strip().splitlines()) == 1


def test_every_run_starts_from_the_image_unless_a_state_is_kept(warm, tmp_path):
    bb = archive("bb")
    env = clean_env(tmp_path, warm)
    p = run(bb, "sh", "-c", "echo one > /tmp/f; ls -A /tmp; echo kept > /home/app/written", env=env)
    assert (p.returncode, p.stdout) == (0, "f\n"), p.stderr
    p = run(bb, "sh", "-c", "ls -A /tmp; cat /home/app/written 2>/dev/null || echo gone", env=env)
    assert (p.returncode, p.stdout) == (0, "gone\n")           # a fresh container each time
    assert not [n for n in os.listdir(warm) if n.startswith(".run-")]   # per-run dirs removed
    state = tmp_path / "state"
    for _ in range(2):
        p = run(bb, "--carryon-state", str(state), "sh", "-c",
                "cat /home/app/written 2>/dev/null; echo kept > /home/app/written", env=env)
        assert p.returncode == 0, p.stderr
    assert p.stdout == "kept\n"                                 # the second run saw the first's


def test_bind_option(warm, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "in.txt").write_text("from host\n")
    p = run(archive("bb"), f"--carryon-bind={data}:/data:ro", "sh", "-c",
            "cat /data/in.txt; echo x > /data/new 2>/dev/null || echo refused", env=clean_env(tmp_path, warm))
    assert (p.returncode, p.stdout) == (0, "from host\nrefused\n")
    assert not (data / "new").exists()


def test_bad_options_exit_125_one_line(warm, tmp_path):
    bb = archive("bb")
    for args in (["--carryon-nope"], ["--carryon-publish", "80"], ["--carryon-engine=x"],
                 ["--carryon-bind", "/does/not/exist:/x"]):
        p = run(bb, *args, env=clean_env(tmp_path, warm))
        assert p.returncode == 125, (args, p.stderr)
        assert p.stdout == "" and len(p.stderr.splitlines()) == 1 and p.stderr.startswith("carryon: ")


def _start(py, code: str, env) -> subprocess.Popen:
    p = subprocess.Popen([str(py), "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    line = p.stdout.readline()
    assert line == "ready\n", (line, p.stderr.read() if p.poll() is not None else "")
    return p


def test_sigterm_ends_the_guest_and_leaves_nothing(warm, tmp_path):
    marker = f"carryon-sigterm-{os.getpid()}"
    p = _start(archive("py"), f"import time; print('ready', flush=True); time.sleep(120)  # {marker}",
               clean_env(tmp_path, warm))
    assert guest_pids(marker)
    p.send_signal(signal.SIGTERM)
    rc = p.wait(timeout=20)
    assert rc == 128 + signal.SIGTERM
    deadline = time.monotonic() + 5
    while guest_pids(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert guest_pids(marker) == []


def test_the_archive_ends_when_main_exits_and_kills_the_rest(warm, tmp_path):
    marker = f"carryon-orphan-{os.getpid()}"
    t0 = time.monotonic()
    p = run(archive("bb"), "sh", "-c", f"sleep 300 & echo started; exit 0 # {marker}",
            env=clean_env(tmp_path, warm), timeout=60)
    assert (p.returncode, p.stdout) == (0, "started\n")
    assert time.monotonic() - t0 < 30
    time.sleep(0.2)
    assert [pid for pid in guest_pids("sleep 300") if pid in guest_pids(marker)] == []


def test_signals_are_forwarded_once(warm, tmp_path):
    code = ("import signal, time\n"
            "n = {}\n"
            "def h(s, f): n[s] = n.get(s, 0) + 1\n"
            "for s in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT, signal.SIGHUP, signal.SIGWINCH): "
            "signal.signal(s, h)\n"
            "print('ready', flush=True)\n"
            "t = time.time()\n"
            "while time.time() - t < 30 and len(n) < 5: time.sleep(0.02)\n"
            "time.sleep(0.5)\n"
            "print(sorted((int(k), v) for k, v in n.items()), flush=True)\n")
    p = _start(archive("py"), code, clean_env(tmp_path, warm))
    for s in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT, signal.SIGHUP, signal.SIGWINCH):
        p.send_signal(s)
        time.sleep(0.1)
    out, err = p.communicate(timeout=40)
    assert p.returncode == 0, err
    want = sorted((int(s), 1) for s in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT, signal.SIGHUP,
                                        signal.SIGWINCH))
    assert out.strip() == str(want)


def test_started_in_background_the_guest_still_has_default_dispositions(warm, tmp_path):
    py = archive("py")
    code = ("import signal; print(signal.getsignal(signal.SIGINT).__name__, "
            "signal.getsignal(signal.SIGQUIT) == signal.SIG_DFL)")
    # a non-interactive shell starts `&` jobs with SIGINT and SIGQUIT ignored
    p = subprocess.run(["sh", "-c", '"$0" -c "$1" & wait', str(py), code], env=clean_env(tmp_path, warm),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["default_int_handler", "True"]
    # ... and a SIGINT sent to it still reaches the guest
    p = subprocess.Popen(["sh", "-c", '"$0" -c "$1" & echo $!; wait', str(py),
                          "import time; print('ready', flush=True); time.sleep(60)"],
                         env=clean_env(tmp_path, warm), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pid = int(p.stdout.readline())
    assert p.stdout.readline() == "ready\n"
    t0 = time.monotonic()
    os.kill(pid, signal.SIGINT)
    _, err = p.communicate(timeout=30)
    assert "KeyboardInterrupt" in err and time.monotonic() - t0 < 20


@pytest.mark.skipif(not ROOT, reason="switching to the non-root user needs root (the suite also runs as it)")
def test_as_the_non_root_user(tmp_path):
    from archive_run_support import user_exists
    if not user_exists("carryon-test"):
        pytest.skip("user carryon-test does not exist")
    bb, py = archive("bb"), archive("py")
    home = workdir() / "nonroot-home"
    home.mkdir(exist_ok=True)
    subprocess.run(["chown", "carryon-test:", str(home)], check=True)
    cmd = (f'export HOME="{home}"; cd / && "{bb}" && "{bb}" sh -c "id -u; touch /tmp/x" && "{py}" /app/fib.py 10'
           f' && ls -A "{home}/.cache/carryon"')
    p = subprocess.run(["su", "carryon-test", "-s", "/bin/sh", "-c", cmd], capture_output=True, text=True,
                       env={"PATH": "/usr/bin:/bin", "HOME": str(home)}, timeout=600)
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert out.startswith(expected_run()) and "\n1000\nfib(10) = 55\n" in out
    assert "rt-" in out and p.stderr == ""
