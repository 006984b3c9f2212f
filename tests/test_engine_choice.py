"""`auto`'s choice of engine (runtime/choice.py, runtime/probe.py), `--carryon-confine`/`--confine`
and `carryon doctor`/`--carryon-doctor`, on nodes that refuse ptrace, user namespaces or both, or
answer like Linux 2.6.32 (scripts/kernel-jail): the choice falls to the right rung and says why,
nothing left gives one line naming each refusal (exit 125), the verdict is cached per node and
kernel, a stale one never makes a run fail, and one planted by another user is ignored.

As root, every run goes as root and as the unprivileged test user (the `user` fixture)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from archive_run_support import archive, clean_env
from conftest import REPO, user_popen_kwargs
from runtime import choice, probe
from runtime.engine import LADDER

JAIL = str(REPO / "scripts" / "kernel-jail")
NAMES = tuple(e.name for e in LADDER)
HAS_USERNS = "userns" in NAMES                  # the userns rung (issue 18) once it is in the ladder
ROOT = os.geteuid() == 0
OTHER_UID = 54321
GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _uid(user: str) -> int:
    if user in ("root", "self"):
        return os.geteuid()
    import pwd
    return pwd.getpwnam(user).pw_uid


@pytest.fixture
def cache(engine_tmp, user, request) -> Path:
    """A private cache dir of the user running the guest."""
    import tempfile
    d = Path(tempfile.mkdtemp(prefix="choice-", dir=engine_tmp))
    if ROOT:
        os.chown(d, _uid(user), -1)
    return d


def exec_run(rootfs, *args: str, user: str, cache: Path, jail: tuple[str, ...] = (), opts=(),
             env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "packer.cli", "exec", *opts, "-r", str(rootfs), *args]
    if jail:
        cmd = [JAIL, *jail, *cmd]
    e = {"PATH": GUEST_PATH, "PYTHONPATH": str(REPO), "LANG": "C.UTF-8", "CARRYON_CACHE": str(cache)}
    e.update(env or {})
    return subprocess.run(cmd, capture_output=True, text=True, env=e, cwd="/", timeout=120,
                          **user_popen_kwargs(user))


def verdict_file(cache: Path) -> Path:
    files = list(cache.glob("engine-*.json"))
    assert len(files) == 1, files
    return files[0]


def one_line(p: subprocess.CompletedProcess) -> str:
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 125 and len(lines) == 1, (p.returncode, p.stderr)
    return lines[0]


# ---------------------------------------------------------------- the ladder falls, and says why

def test_user_namespaces_refused_gives_seccomp_and_says_why(busybox_rootfs, user, cache):
    p = exec_run(busybox_rootfs, "/bin/echo", "hi", user=user, cache=cache, jail=("--no-userns",),
                 opts=("-v", "1"))
    assert p.returncode == 0 and p.stdout == "hi\n", p.stderr
    assert "carryon: engine: seccomp (userns: refused: unshare EPERM" in p.stderr
    assert "canary: " + str(verdict_file(cache)) in p.stderr


def test_linux_2_6_32_gives_plain_ptrace_and_says_why(busybox_rootfs, user, cache):
    p = exec_run(busybox_rootfs, "/bin/echo", "hi", user=user, cache=cache, jail=("--linux-2.6.32",),
                 opts=("-v", "1"))
    assert p.returncode == 0 and p.stdout == "hi\n", p.stderr
    line = next(ln for ln in p.stderr.splitlines() if ln.startswith("carryon: engine: "))
    assert line.startswith("carryon: engine: ptrace (userns: refused: unshare EPERM")
    assert "seccomp: refused: the kernel refuses PTRACE_O_TRACESECCOMP (EINVAL" in line


def test_both_refused_is_one_line_naming_both_causes(busybox_rootfs, user, cache):
    p = exec_run(busybox_rootfs, "/bin/true", user=user, cache=cache, jail=("--no-ptrace", "--no-userns"))
    line = one_line(p)
    assert line.startswith("carryon exec: no engine can run here: ")
    assert "user namespaces: unshare EPERM" in line and "ptrace: EPERM (a container's seccomp profile?)" in line


def test_both_refused_archive(user, cache):
    bb = archive("bb")
    p = subprocess.run([JAIL, "--no-ptrace", "--no-userns", str(bb), "true"], capture_output=True, text=True,
                       env=clean_env(cache=cache), timeout=300, **user_popen_kwargs(user))
    line = one_line(p)
    assert line.startswith("carryon: no engine can run here: ")
    assert "user namespaces: unshare EPERM" in line and "ptrace: EPERM" in line


# ---------------------------------------------------------------- the verdict's cache

def test_verdict_is_cached_once_per_node_and_kernel(busybox_rootfs, user, cache):
    p = exec_run(busybox_rootfs, "/bin/true", user=user, cache=cache, opts=("-v", "1"))
    assert p.returncode == 0 and "canary: " in p.stderr, p.stderr
    f = verdict_file(cache)
    assert f.name == f"engine-{os.uname().nodename}-{_uid(user)}.json" and f.stat().st_uid == _uid(user)
    assert not f.stat().st_mode & 0o022
    p = exec_run(busybox_rootfs, "/bin/true", user=user, cache=cache, opts=("-v", "1"))
    assert p.returncode == 0 and "cached verdict: " in p.stderr, p.stderr
    # another kernel interface (here: a seccomp filter on the process) is another key: asked again
    p = exec_run(busybox_rootfs, "/bin/true", user=user, cache=cache, jail=("--no-userns",), opts=("-v", "1"))
    assert p.returncode == 0 and "canary: " in p.stderr, p.stderr


def test_a_stale_verdict_never_fails_a_run_and_is_rewritten(busybox_rootfs, user, cache):
    jail = ("--linux-2.6.32",)
    assert exec_run(busybox_rootfs, "/bin/true", user=user, cache=cache, jail=jail).returncode == 0
    f = verdict_file(cache)
    data = json.loads(f.read_text())
    assert data["rungs"]["seccomp"] and data["rungs"]["ptrace"] is None
    data["rungs"]["seccomp"] = None             # stale: says seccomp works where this kernel refuses it
    with open(f, "w") as out:                   # in place: the file stays the user's
        json.dump(data, out)
    p = exec_run(busybox_rootfs, "/bin/echo", "hi", user=user, cache=cache, jail=jail, opts=("-v", "1"))
    assert p.returncode == 0 and p.stdout == "hi\n", p.stderr
    said = [ln for ln in p.stderr.splitlines() if ln.startswith("carryon: engine: ")]
    assert said[0].startswith("carryon: engine: seccomp (") and "cached verdict" in said[0]
    assert said[1].startswith("carryon: engine: ptrace (") and "PTRACE_O_TRACESECCOMP" in said[1]
    assert json.loads(f.read_text())["rungs"]["seccomp"]        # rewritten: refused
    p = exec_run(busybox_rootfs, "/bin/true", user=user, cache=cache, jail=jail, opts=("-v", "1"))
    assert [ln for ln in p.stderr.splitlines() if ln.startswith("carryon: engine: ")][0].startswith(
        "carryon: engine: ptrace ("), p.stderr


def test_a_verdict_refusing_everything_is_rechecked(busybox_rootfs, user, cache):
    assert exec_run(busybox_rootfs, "/bin/true", user=user, cache=cache).returncode == 0
    f = verdict_file(cache)
    data = json.loads(f.read_text())
    data["rungs"] = {n: "stale" for n in data["rungs"]}
    with open(f, "w") as out:
        json.dump(data, out)
    p = exec_run(busybox_rootfs, "/bin/echo", "hi", user=user, cache=cache, opts=("-v", "1"))
    assert p.returncode == 0 and p.stdout == "hi\n", p.stderr
    assert "carryon: engine: " + NAMES[0] in p.stderr
    assert "stale" not in f.read_text()


def test_a_verdict_others_could_write_is_ignored(busybox_rootfs, user, cache):
    assert exec_run(busybox_rootfs, "/bin/true", user=user, cache=cache).returncode == 0
    f = verdict_file(cache)
    data = json.loads(f.read_text())
    data["rungs"] = {n: (None if n == "ptrace" else "planted") for n in data["rungs"]}
    with open(f, "w") as out:
        json.dump(data, out)
    os.chmod(f, 0o666)
    p = exec_run(busybox_rootfs, "/bin/true", user=user, cache=cache, opts=("-v", "1"))
    assert p.returncode == 0 and "canary: " in p.stderr and f"engine: {NAMES[0]} " in p.stderr, p.stderr
    assert "planted" not in f.read_text() and not f.stat().st_mode & 0o022


@pytest.mark.skipif(not ROOT, reason="plants a file of another user (chown)")
def test_another_users_planted_verdict_is_ignored(busybox_rootfs, user, cache):
    """In a shared cache dir (sticky, like /tmp), a verdict of the victim's name and key planted
    by another user, saying only ptrace works, is neither believed nor replaced."""
    os.chmod(cache, 0o1777)
    os.chown(cache, 0, 0)
    assert exec_run(busybox_rootfs, "/bin/true", user=user, cache=cache).returncode == 0
    f = verdict_file(cache)
    data = json.loads(f.read_text())
    f.unlink()
    data["rungs"] = {n: (None if n == "ptrace" else "planted") for n in data["rungs"]}
    f.write_text(json.dumps(data))
    os.chmod(f, 0o644)
    os.chown(f, OTHER_UID, OTHER_UID)
    p = exec_run(busybox_rootfs, "/bin/true", user=user, cache=cache, opts=("-v", "1"))
    assert p.returncode == 0 and "canary: " in p.stderr and f"engine: {NAMES[0]} " in p.stderr, p.stderr
    if user != "root":                          # the sticky dir keeps it there: still not believed
        assert f.stat().st_uid == OTHER_UID
        p = exec_run(busybox_rootfs, "/bin/true", user=user, cache=cache, opts=("-v", "1"))
        assert "canary: " in p.stderr and f"engine: {NAMES[0]} " in p.stderr, p.stderr


def test_load_trusts_only_our_private_regular_file(tmp_path):
    key = choice.node_key(NAMES)
    assert choice.save(str(tmp_path), key, {"seccomp": None, "ptrace": "x"})
    assert choice.load(str(tmp_path), key) == {"seccomp": None, "ptrace": "x"}
    assert choice.load(str(tmp_path), key + "other") is None
    f = Path(choice.verdict_path(str(tmp_path)))
    for garbage in ("[1]", "{", '{"key": 1}', "\0" * 10):
        f.write_text(garbage)
        assert choice.load(str(tmp_path), key) is None
    assert choice.save(str(tmp_path), key, {"seccomp": None, "ptrace": "x"})
    os.chmod(f, 0o664)
    assert choice.load(str(tmp_path), key) is None
    os.chmod(f, 0o644)
    f.rename(tmp_path / "elsewhere")
    f.symlink_to(tmp_path / "elsewhere")
    assert choice.load(str(tmp_path), key) is None


# ---------------------------------------------------------------- confinement

def test_confine_refuses_when_user_namespaces_are_refused(busybox_rootfs, user, cache):
    for opts, env in ((("--confine",), {}), ((), {"CARRYON_CONFINE": "1"})):
        p = exec_run(busybox_rootfs, "/bin/true", user=user, cache=cache, jail=("--no-userns",), opts=opts,
                     env=env)
        line = one_line(p)
        assert "confinement asked for, but no confining engine can run here (user namespaces: unshare EPERM" in line
        assert "do not confine a hostile guest" in line
    p = exec_run(busybox_rootfs, "/bin/true", user=user, cache=cache, opts=("--confine",),
                 env={"CARRYON_ENGINE": "ptrace"})
    assert "the ptrace engine does not confine" in one_line(p)


def test_archive_confine_refuses_when_user_namespaces_are_refused(user, cache):
    bb = archive("bb")
    for args, env in ((["--carryon-confine", "true"], {}), (["true"], {"CARRYON_CONFINE": "1"})):
        p = subprocess.run([JAIL, "--no-userns", str(bb), *args], capture_output=True, text=True,
                           env=clean_env(cache=cache, **env), timeout=300, **user_popen_kwargs(user))
        assert "carryon: confinement asked for, but no confining engine can run here (user namespaces: " \
               "unshare EPERM" in one_line(p)


# ---------------------------------------------------------------- doctor

def doctor(user: str, cache: Path, jail: tuple[str, ...] = (), *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "packer.cli", "doctor", *args]
    return subprocess.run([JAIL, *jail, *cmd] if jail else cmd, capture_output=True, text=True, cwd="/",
                          env={"PATH": GUEST_PATH, "PYTHONPATH": str(REPO), "CARRYON_CACHE": str(cache)},
                          timeout=120, **user_popen_kwargs(user))


def test_doctor_here(user, cache):
    p = doctor(user, cache, (), "--json")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["ok"] and d["engine"]["auto"] == NAMES[0] and d["ptrace"]["ok"] and d["seccomp"]["ok"]
    assert d["interface"] == {"seccomp_filter": True, "PTRACE_O_EXITKILL": True, "PTRACE_SEIZE": True,
                              "process_vm_readv": True, "PTRACE_O_TRACESECCOMP": True}
    assert d["cache"]["path"] == str(cache) and d["cache"]["writable"] and d["cache"]["exec"]
    assert d["cache"]["network"] is False and d["cache"]["free_bytes"] > 0
    assert d["kernel"]["release"] == os.uname().release
    if probe.userns_refusal() is None:          # this machine: user namespaces and overlay in them work
        assert d["userns"]["ok"] and d["overlay_userns"]["ok"] and d["overlay_userns"]["upper_in_cache"]
    assert not [n for n in os.listdir(cache) if n.startswith(".overlay-probe-")]     # nothing left
    assert set(d) >= {"ok", "kernel", "seccomp", "ptrace", "userns", "overlay_userns", "cache", "interface",
                      "engine", "advice"}
    text = doctor(user, cache).stdout
    assert "kernel interface:   seccomp filter: found, PTRACE_O_EXITKILL: found, PTRACE_SEIZE: found, " \
           "process_vm_readv: found" in text
    assert verdict_file(cache)                  # doctor's canary is cached for the runs


def test_doctor_without_user_namespaces(user, cache):
    p = doctor(user, cache, ("--no-userns",), "--json")
    d = json.loads(p.stdout)
    assert p.returncode == 0 and d["engine"]["auto"] == "seccomp" and not d["engine"]["confines"]
    assert not d["userns"]["ok"] and d["userns"]["detail"].startswith("unshare EPERM")
    assert d["overlay_userns"]["ok"] is False
    assert any(a.startswith("user namespaces:") for a in d["advice"])
    text = doctor(user, cache, ("--no-userns",)).stdout
    assert "user namespaces:    refused (unshare EPERM" in text and "engine (auto):      seccomp" in text
    assert "containment only" in text


def test_doctor_without_ptrace(user, cache):
    p = doctor(user, cache, ("--no-ptrace",), "--json")
    d = json.loads(p.stdout)
    assert not d["ptrace"]["ok"] and d["ptrace"]["detail"] == "EPERM (a container's seccomp profile?)"
    assert d["ptrace"]["seccomp_mode"] == "2" and not d["seccomp"]["ok"]
    assert any(a.startswith("ptrace: this process runs under a seccomp filter") for a in d["advice"])
    assert d["engine"]["auto"] == ("userns" if HAS_USERNS else None)
    assert p.returncode == (0 if HAS_USERNS else 125)


def test_doctor_with_both_refused(user, cache):
    p = doctor(user, cache, ("--no-ptrace", "--no-userns"), "--json")
    d = json.loads(p.stdout)
    assert p.returncode == 125 and d["ok"] is False and d["engine"]["auto"] is None
    assert "no engine can run here" in d["advice"][-1]
    p = doctor(user, cache, ("--no-ptrace", "--no-userns"))
    assert p.returncode == 125 and "engine (auto):      none" in p.stdout


def test_doctor_on_linux_2_6_32(user, cache):
    p = doctor(user, cache, ("--linux-2.6.32",), "--json")
    d = json.loads(p.stdout)
    assert p.returncode == 0 and d["engine"]["auto"] == "ptrace"
    assert d["interface"] == {"seccomp_filter": False, "PTRACE_O_EXITKILL": False, "PTRACE_SEIZE": False,
                              "process_vm_readv": False, "PTRACE_O_TRACESECCOMP": False}
    assert "PTRACE_O_TRACESECCOMP" in d["seccomp"]["detail"]
    text = doctor(user, cache, ("--linux-2.6.32",)).stdout
    assert "kernel interface:   seccomp filter: not found, PTRACE_O_EXITKILL: not found, PTRACE_SEIZE: not " \
           "found, process_vm_readv: not found" in text


def test_archive_doctor_and_info(user, cache):
    bb = archive("bb")
    p = subprocess.run([JAIL, "--no-userns", str(bb), "--carryon-doctor"], capture_output=True, text=True,
                       env=clean_env(cache=cache), timeout=300, **user_popen_kwargs(user))
    assert p.returncode == 0 and "user namespaces:    refused (unshare EPERM" in p.stdout, p.stderr
    assert f"cache:              {cache}: writable, exec allowed" in p.stdout
    p = subprocess.run([JAIL, "--no-userns", str(bb), "--carryon-verbose", "true"], capture_output=True,
                       text=True, env=clean_env(cache=cache), timeout=300, **user_popen_kwargs(user))
    assert p.returncode == 0 and "carryon: engine: seccomp (userns: refused: unshare EPERM" in p.stderr, p.stderr
    p = subprocess.run([JAIL, "--linux-2.6.32", str(bb), "--carryon-info"], capture_output=True, text=True,
                       env=clean_env(cache=cache), timeout=300, **user_popen_kwargs(user))
    assert p.returncode == 0, p.stderr
    assert "kernel interface: seccomp filter: no, PTRACE_O_EXITKILL: no, PTRACE_SEIZE: no, " \
           "process_vm_readv: no" in p.stdout
    assert "engine used:    ptrace (auto; refused: user namespaces: unshare EPERM" in p.stdout


@pytest.mark.parametrize("name", ["bb", "py"])
def test_archive_doctor_names_the_engine_its_run_takes(user, cache, name):
    """The node's pick may not be the archive's (userns and an image whose recorded owners one
    mapped id cannot show): `--carryon-doctor` says which engine this archive's run takes and why,
    and that is the engine the run then says it took."""
    arc = archive(name)
    kw = dict(capture_output=True, text=True, env=clean_env(cache=cache), timeout=300, **user_popen_kwargs(user))
    p = subprocess.run([str(arc), "--carryon-doctor"], **kw)
    assert p.returncode == 0, p.stderr
    line = next(x for x in p.stdout.splitlines() if x.startswith("this archive:"))
    said = line.split()[2].rstrip(",")
    r = subprocess.run([str(arc), "--carryon-verbose"] + (["-c", "pass"] if name == "py" else ["true"]), **kw)
    assert r.returncode == 0, r.stderr
    took = next(x for x in r.stderr.splitlines() if x.startswith("carryon: engine: ")).split()[2]
    assert said == took, (line, r.stderr)
    auto = next(x for x in p.stdout.splitlines() if x.startswith("engine (auto):")).split()[2]
    if said != auto:        # a rung usable on the node, not for this image: the reason and the advice
        assert f"{auto}: not for this run: " in line, line
        assert f"--carryon-engine {auto} runs it there anyway" in p.stdout


def test_doctor_usage():
    p = subprocess.run([sys.executable, "-m", "packer.cli", "doctor", "--frob"], capture_output=True, text=True,
                       env={"PATH": GUEST_PATH, "PYTHONPATH": str(REPO)})
    assert p.returncode == 125 and p.stderr.startswith("carryon doctor: unknown argument")


def test_network_file_systems_are_named():
    from runtime import doctor as doc
    assert doc.NETWORK_FS[0x6969] == "nfs" and doc.NETWORK_FS[0x0BD00BD0] == "lustre"
    assert doc.NETWORK_FS[0x47504653] == "gpfs"
    assert doc.fs_type("/proc") == 0x9FA0


# ---------------------------------------------------------------- the causes the probes name

@pytest.mark.parametrize("step,err,knobs,want", [
    ("unshare", errno.ENOSPC, {"user.max_user_namespaces": "0"},
     "disabled by user.max_user_namespaces=0 (RHEL 7's default)"),
    ("unshare", errno.ENOSPC, {"user.max_user_namespaces": "10"},
     "unshare ENOSPC (user.max_user_namespaces=10 reached)"),
    ("unshare", errno.EPERM, {"kernel.unprivileged_userns_clone": "0"},
     "disabled by kernel.unprivileged_userns_clone=0"),
    ("mount", errno.EPERM, {"kernel.apparmor_restrict_unprivileged_userns": "1"},
     "disabled by kernel.apparmor_restrict_unprivileged_userns (mount EPERM)"),
    ("unshare", errno.EINVAL, {}, "unshare EINVAL (a kernel without user namespaces"),
    ("unshare", errno.EPERM, {}, "unshare EPERM"),
])
def test_userns_causes(monkeypatch, step, err, knobs, want):
    monkeypatch.setattr(probe, "sysctl", lambda name: knobs.get(name))
    monkeypatch.setattr(probe, "_filtered", lambda: False)
    assert probe.userns_cause(step, err).startswith(want)


@pytest.mark.parametrize("scope,root,filtered,want", [
    ("3", False, False, "disabled by kernel.yama.ptrace_scope=3"),
    ("2", False, False, "EPERM (kernel.yama.ptrace_scope=2: only with CAP_SYS_PTRACE)"),
    ("1", False, True, "EPERM (a container's seccomp profile?)"),
    (None, False, False, "EPERM"),
])
def test_ptrace_causes(monkeypatch, scope, root, filtered, want):
    monkeypatch.setattr(probe, "sysctl", lambda name: scope)
    monkeypatch.setattr(probe, "_filtered", lambda: filtered)
    monkeypatch.setattr(os, "geteuid", lambda: 0 if root else 1000)
    assert probe.ptrace_cause(errno.EPERM) == want


def test_refusal_line_names_each_once():
    assert choice.refusal_line({"userns": "disabled by kernel.apparmor_restrict_unprivileged_userns",
                                "seccomp": "EPERM (x)", "ptrace": "EPERM (x)"}) == \
        "user namespaces: disabled by kernel.apparmor_restrict_unprivileged_userns; ptrace: EPERM (x)"


def test_overlay_run_sees_the_binds_from_its_first_lookup(debian_rootfs, user, cache):
    """Found on the way (the ladder now goes to plain ptrace first under 2.6.32, where Python reads
    /dev/urandom): with copy-on-write, the first lookups under a bind (`-R`'s /dev) went to the
    image's directory until the mapper's caches were dropped (ENOENT for /dev/urandom)."""
    state = cache / "state"
    p = exec_run(debian_rootfs, "/bin/sh", "-c", "head -c 3 /dev/urandom | wc -c", user=user, cache=cache,
                 opts=("--overlay", str(state), "-b", "/dev"))
    assert (p.returncode, p.stdout.strip()) == (0, "3"), p.stderr
