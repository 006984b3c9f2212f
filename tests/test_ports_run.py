"""Port translation end to end: real servers and clients under `carryon exec -p/-n`, loopback only.

The guest side is tests/ports_probe.py (bound in at /probe.py); it checks the guest's own view
(getsockname, getpeername, accept, recvfrom, recvmsg show guest ports) and, for the seed loop, what
the kernel really bound (/proc/net/tcp*). Run as root and, when root, again as the unprivileged test
user (ports below 1024 only mean something there).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import CARRYON, ENGINE_TEST_USER, ENGINE_USERS, ENGINE_VARIANTS, REPO, as_user

PROBE = Path(__file__).resolve().parent / "ports_probe.py"
TIMEOUT = 120


@pytest.fixture(autouse=True, params=["seccomp"] + [e for e in ENGINE_VARIANTS if e == "userns"])
def ports_engine(request, monkeypatch):
    """Every test on the seccomp engine and on the userns engine (its filter stops only the
    socket calls) where user namespaces work; test_plain_ptrace_engine names the plain one."""
    monkeypatch.setenv("CARRYON_ENGINE", request.param)
    return request.param


@pytest.fixture(scope="module")
def probe(engine_tmp) -> Path:
    """The probe script where every test user can read it."""
    dest = engine_tmp / "ports_probe.py"
    shutil.copyfile(PROBE, dest)
    os.chmod(dest, 0o644)
    return dest


@pytest.fixture
def shared_dir(engine_tmp):
    """A scratch dir every test user can write (ports files, served content)."""
    import tempfile
    d = Path(tempfile.mkdtemp(prefix="ports-", dir=engine_tmp))
    os.chmod(d, 0o777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def exec_cmd(rootfs: Path, *args: str) -> list[str]:
    return [*CARRYON, "exec", "-R", str(rootfs), *args]


def run(cmd: list[str], user: str = "self", env: dict | None = None, timeout: int = TIMEOUT
        ) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
    return subprocess.run(as_user(cmd, user), capture_output=True, text=True, env=full_env,
                          timeout=timeout, cwd="/tmp")


def start(cmd: list[str], user: str = "self") -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(as_user(cmd, user), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd="/tmp")


def stop(p: subprocess.Popen) -> tuple[str, str]:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
    try:
        out, err = p.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
    return out, err


def ok(p: subprocess.CompletedProcess, expect: str) -> None:
    assert p.returncode == 0 and expect in p.stdout, f"rc={p.returncode}\n{p.stdout}\n{p.stderr}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 30) -> bytes:
    """GET, retrying while the server is not listening yet (its port is published at bind time)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return r.read()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def wait_ports(path: Path, count: int, proc: subprocess.Popen, timeout: float = 60) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"run ended early ({proc.returncode}):\n{out}\n{err}")
        try:
            ports = json.loads(path.read_text())["ports"]
            if len(ports) >= count:
                return ports
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"{path} never listed {count} port(s)")


# --- command line ------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["abc", "70000:1", "1:", "0:80", "80:80/sctp"])
def test_malformed_port_is_refused_before_anything_starts(debian_rootfs, shared_dir, bad):
    marker = shared_dir / "ran"
    p = run(exec_cmd(debian_rootfs, "-b", f"{shared_dir}:/out", "-p", bad,
                     "/bin/sh", "-c", "touch /out/ran"))
    assert p.returncode == 125, p.stderr
    assert p.stderr.count("\n") == 1 and "port" in p.stderr and "Traceback" not in p.stderr
    assert not marker.exists()


def test_unwritable_ports_file_is_refused(debian_rootfs, shared_dir):
    p = run(exec_cmd(debian_rootfs, "-n", "--ports-file", str(shared_dir / "no" / "p.json"), "/bin/true"))
    assert p.returncode == 125 and p.stderr.count("\n") == 1 and "ports file" in p.stderr


# --- the seed loop, TCP, UDP -------------------------------------------------------------------

@pytest.mark.parametrize("family", ["4", "6"])
@pytest.mark.parametrize("mode", ["-p", "-n"])
def test_seed_loop_2000(debian_rootfs, probe, mode, family):
    host = free_port()
    args = ["-p", f"8000:{host}"] if mode == "-p" else ["-n"]
    real = str(host) if mode == "-p" else "auto"
    p = run(exec_cmd(debian_rootfs, "-b", f"{probe}:/probe.py", *args,
                     "python3", "/probe.py", "loop", family, "8000", "2000", real))
    ok(p, "ok loop 2000")


def test_seed_script_itself(debian_rootfs):
    """The image's own /app/sock.py under both modes."""
    for args in (["-p", f"8000:{free_port()}"], ["-n"]):
        p = run(exec_cmd(debian_rootfs, *args, "python3", "/app/sock.py", "8000", "300"))
        ok(p, "sock: 300 round trips on 127.0.0.1:8000")


def test_without_translation_the_kernel_port_is_the_guest_port(debian_rootfs, probe):
    """The probe's /proc/net check can fail: no mapping, the guest port is really bound."""
    port = str(free_port())
    p = run(exec_cmd(debian_rootfs, "-b", f"{probe}:/probe.py",
                     "python3", "/probe.py", "loop", "4", port, "3", "auto"))
    assert p.returncode != 0 and f"really bound port {port}" in p.stderr


@pytest.mark.parametrize("mode", ["-p", "-n"])
def test_udp_reaches_own_server(debian_rootfs, probe, mode):
    args = ["-p", f"9000:{free_port()}/udp"] if mode == "-p" else ["-n"]
    ok(run(exec_cmd(debian_rootfs, "-b", f"{probe}:/probe.py", *args, "python3", "/probe.py", "udp", "9000")),
       "ok udp")


def test_native_stop_loop_answers_the_seed_loop(debian_rootfs, probe):
    """The port table's plain answers come from the native stop loop (runtime/tracee/fastloop.c):
    the loop's binds, connects, accepts and getsocknames, all but the first few, never reach Python."""
    import re
    import shutil
    if shutil.which("cc") is None:
        pytest.skip("no C compiler: the engine runs its Python loop only")
    for args, real in ((["-p", f"8000:{free_port()}"], None), (["-n"], "auto")):
        p = run(exec_cmd(debian_rootfs, "-v", "2", "-b", f"{probe}:/probe.py", *args,
                         "python3", "/probe.py", "loop", "4", "8000", "300", real or args[1].split(":")[1]))
        ok(p, "ok loop 300")
        m = re.search(r"native stop loop: .*sockets (\d+), python (\d+)", p.stderr)
        assert m and int(m.group(1)) >= 3 * 300 and int(m.group(2)) < 300, p.stderr


@pytest.mark.parametrize("family", ["4", "6"])
def test_python_stop_loop_too(debian_rootfs, probe, family):
    """The same translation with Python seeing every stop (CARRYON_NATIVE=0: where the native
    library is missing), both modes, TCP and UDP, a bound client."""
    env = {"CARRYON_NATIVE": "0"}
    host = free_port()
    ok(run(exec_cmd(debian_rootfs, "-b", f"{probe}:/probe.py", "-p", f"8000:{host}",
                    "python3", "/probe.py", "loop", family, "8000", "200", str(host)), env=env), "ok loop 200")
    ok(run(exec_cmd(debian_rootfs, "-b", f"{probe}:/probe.py", "-n",
                    "python3", "/probe.py", "loop", family, "8000", "200", "auto"), env=env), "ok loop 200")
    ok(run(exec_cmd(debian_rootfs, "-b", f"{probe}:/probe.py", "-n", "python3", "/probe.py", "udp", "9000"),
           env=env), "ok udp")
    ok(run(exec_cmd(debian_rootfs, "-b", f"{probe}:/probe.py", "-n",
                    "python3", "/probe.py", "bound-client", "8200", "8201"), env=env), "ok bound-client")


def test_plain_ptrace_engine(debian_rootfs, probe):
    env = {"CARRYON_ENGINE": "ptrace"}
    ok(run(exec_cmd(debian_rootfs, "-b", f"{probe}:/probe.py", "-n",
                    "python3", "/probe.py", "loop", "6", "8000", "50", "auto"), env=env), "ok loop 50")
    ok(run(exec_cmd(debian_rootfs, "-b", f"{probe}:/probe.py", "-n", "python3", "/probe.py", "udp", "9000"),
           env=env), "ok udp")


def test_dual_stack_gets_one_host_port(debian_rootfs, probe):
    p = run(exec_cmd(debian_rootfs, "-v", "1", "-b", f"{probe}:/probe.py", "-n",
                     "python3", "/probe.py", "dual", "8100"))
    ok(p, "ok dual")
    lines = [ln.split() for ln in p.stderr.splitlines() if ln.startswith("carryon: port tcp")]
    assert [ln[3] for ln in lines] == ["0.0.0.0", "::"], p.stderr
    assert lines[0][-1] == lines[1][-1] != "8100"


@pytest.mark.parametrize("mode", ["-p", "-n"])
def test_reuseport_group_shares_the_host_port(debian_rootfs, probe, mode):
    args = ["-p", f"8150:{free_port()}"] if mode == "-p" else ["-n"]
    ok(run(exec_cmd(debian_rootfs, "-b", f"{probe}:/probe.py", *args, "python3", "/probe.py", "reuseport", "8150")),
       "ok reuseport")


def test_simultaneous_first_binds_share_one_host_port(debian_rootfs, probe):
    """Automatic mode: first binds of one guest port made at the same moment by four threads all get
    the same host port (the tracer binds at the call's entry; nothing is left in flight)."""
    for _ in range(3):
        ok(run(exec_cmd(debian_rootfs, "-b", f"{probe}:/probe.py", "-n",
                        "python3", "/probe.py", "first-binds", "8170")), "ok first-binds")


def test_bound_client_is_seen_with_its_guest_port(debian_rootfs, probe):
    ok(run(exec_cmd(debian_rootfs, "-b", f"{probe}:/probe.py", "-n",
                    "python3", "/probe.py", "bound-client", "8200", "8201")), "ok bound-client")


@pytest.mark.parametrize("mode", ["-p", "-n"])
def test_binds_in_flight_in_threads_and_processes(debian_rootfs, probe, mode):
    args = ["-n"] if mode == "-n" else [a for i in range(6) for a in ("-p", f"{8300 + i}:0")]
    ok(run(exec_cmd(debian_rootfs, "-b", f"{probe}:/probe.py", *args,
                    "python3", "/probe.py", "parallel", "8300")), "ok parallel")


@pytest.mark.parametrize("user", ENGINE_USERS)
def test_privileged_port_in_automatic_mode(debian_rootfs, probe, user):
    """Port 80 is not bindable by a normal user: -n gives it a free high port."""
    p = run(exec_cmd(debian_rootfs, "-b", f"{probe}:/probe.py", "-n",
                     "python3", "/probe.py", "loop", "4", "80", "20", "auto"), user=user)
    ok(p, "ok loop 20")
    if user == ENGINE_TEST_USER or (user == "self" and os.geteuid() != 0):
        q = run(exec_cmd(debian_rootfs, "-b", f"{probe}:/probe.py",
                         "python3", "/probe.py", "loop", "4", "80", "1"), user=user)
        assert q.returncode != 0 and "Permission denied" in q.stderr    # natively: EACCES


# --- acceptance: real servers, clients inside and outside -------------------------------------

def test_busybox_nc_echo_server(busybox_rootfs):
    host = free_port()
    server = start(exec_cmd(busybox_rootfs, "-p", f"7777:{host}", "/bin/busybox", "nc", "-ll", "-p", "7777",
                            "-e", "cat"))
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                c = socket.create_connection(("127.0.0.1", host), timeout=5)
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, stop(server)
                time.sleep(0.05)
        with c:
            c.sendall(b"hello from the host\n")
            got = b""
            while not got.endswith(b"\n"):
                chunk = c.recv(100)
                assert chunk, "connection closed"
                got += chunk
        assert got == b"hello from the host\n"
        p = run(exec_cmd(busybox_rootfs, "-p", f"7777:{host}", "/bin/sh", "-c",
                         "echo hello from a guest | /bin/busybox nc -w 3 127.0.0.1 7777"))
        assert p.stdout == "hello from a guest\n", p.stderr
    finally:
        stop(server)


@pytest.mark.parametrize("user", ENGINE_USERS)
def test_two_http_servers_on_one_guest_port(debian_rootfs, probe, shared_dir, user):
    runs = []
    try:
        for name in ("a", "b"):
            d = shared_dir / name
            d.mkdir()
            os.chmod(d, 0o777)
            (d / "marker.txt").write_text(f"server {name}\n")
            ports_file = shared_dir / f"{name}.json"
            script = ("python3 /probe.py fetch http://127.0.0.1:8000/marker.txt /srv/guest-fetch.txt "
                      ">/dev/null 2>&1 & exec python3 -m http.server 8000")
            cmd = exec_cmd(debian_rootfs, "-n", "--ports-file", str(ports_file), "-b", f"{probe}:/probe.py",
                           "-b", f"{d}:/srv", "-w", "/srv", "/bin/sh", "-c", script)
            runs.append((name, d, ports_file, start(cmd, user)))
        hosts = []
        for name, _d, ports_file, proc in runs:
            ports = wait_ports(ports_file, 1, proc)
            assert [(e["proto"], e["guest"], e["address"]) for e in ports] == [("tcp", 8000, "0.0.0.0")]
            hosts.append(ports[0]["host"])
            assert http_get(f"http://127.0.0.1:{ports[0]['host']}/marker.txt") == f"server {name}\n".encode()
        assert hosts[0] != hosts[1] and 8000 not in hosts
        for name, d, _ports_file, proc in runs:      # the client inside each run got its own server
            deadline = time.monotonic() + 60
            while not (d / "guest-fetch.txt").exists() or not (d / "guest-fetch.txt").read_text():
                assert time.monotonic() < deadline and proc.poll() is None, stop(proc)
                time.sleep(0.05)
            assert (d / "guest-fetch.txt").read_text() == f"server {name}\n"
    finally:
        for *_, proc in runs:
            stop(proc)
    for _name, _d, ports_file, _proc in runs:
        assert not ports_file.exists()                  # removed at exit


def test_ports_file_entries_and_removal(debian_rootfs, probe, shared_dir):
    """Static mappings are published as binds happen: IPv4 first, guest address as given."""
    pf = shared_dir / "p.json"
    h1, h2 = free_port(), free_port()
    script = ("import socket, time\n"
              "a = socket.socket(socket.AF_INET6); a.setsockopt(41, 26, 1); a.bind(('::', 8000)); a.listen()\n"
              "b = socket.socket(); b.bind(('127.0.0.1', 8000)); b.listen()\n"
              "u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(('0.0.0.0', 53))\n"
              "print('bound', flush=True); time.sleep(60)\n")
    proc = start(exec_cmd(debian_rootfs, "-p", f"8000:{h1}/tcp", "-p", f"53:{h2}/udp", "--ports-file", str(pf),
                          "python3", "-c", script))
    try:
        ports = wait_ports(pf, 3, proc)
        assert ports == [
            {"proto": "tcp", "guest": 8000, "host": h1, "address": "127.0.0.1"},
            {"proto": "udp", "guest": 53, "host": h2, "address": "0.0.0.0"},
            {"proto": "tcp", "guest": 8000, "host": h1, "address": "::"},
        ]
        deadline = time.monotonic() + 30
        while True:                                     # published at bind time: listen may follow
            try:
                socket.create_connection(("127.0.0.1", h1), timeout=5).close()
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
    finally:
        stop(proc)
    assert not pf.exists()


def test_archive_netcoop(shared_images, engine_tmp, probe, shared_dir):
    """Two runs of the debian-python archive in automatic mode, each serving /app/www."""
    app = engine_tmp / "debian-python.run"
    if not app.exists():
        p = subprocess.run([*CARRYON, "pack", str(shared_images / "debian-python" / "debian-python.oci.tar"),
                            "-o", str(app)], capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
        if p.returncode != 0:
            pytest.skip(f"carryon pack failed: {p.stderr.strip()[-200:]}")
        os.chmod(app, 0o755)
    procs = []
    try:
        for name, flag, env in (("a", ["--carryon-netcoop"], {}), ("b", [], {"CARRYON_NETCOOP": "1"})):
            pf = shared_dir / f"{name}.json"
            procs.append((pf, subprocess.Popen(
                [str(app), *flag, "--carryon-ports-file", str(pf), "/app/serve.py", "8000"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **env})))
        hosts = []
        for pf, proc in procs:
            ports = wait_ports(pf, 1, proc, timeout=120)
            hosts.append(ports[0]["host"])
            assert b"hello from debian-python fixture" in http_get(f"http://127.0.0.1:{ports[0]['host']}/")
        assert hosts[0] != hosts[1]
    finally:
        for _pf, proc in procs:
            stop(proc)
    for pf, _proc in procs:
        assert not pf.exists()


def test_archive_bad_publish_fails_before_extracting(shared_images, engine_tmp):
    app = engine_tmp / "debian-python.run"
    if not app.exists():
        pytest.skip("archive not built (test_archive_netcoop builds it)")
    for bad in ("abc", "70000:1", "1:"):
        p = subprocess.run([str(app), "--carryon-publish", bad, "/app/fib.py", "1"], capture_output=True,
                           text=True, timeout=60)
        assert p.returncode == 125 and p.stderr.count("\n") == 1 and "publish" in p.stderr, p.stderr



