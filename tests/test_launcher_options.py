"""runtime/launch/ and runtime/options.py without running anything: option grammar, env options, docker-run
semantics."""

from __future__ import annotations

import os
import signal

import pytest

from runtime.errors import CarryonError
from runtime.launch import options as launch_options, runspec, selfarchive, start


def test_options_only_at_the_start_and_rest_untouched():
    o = launch_options.parse_options(["--carryon-env", "A=1", "--carryon-verbose", "sh", "-c", "--carryon-env",
                              "--carryon-help"], {})
    assert o.env == ["A=1"] and o.verbose == 1 and not o.help
    assert o.args == ["sh", "-c", "--carryon-env", "--carryon-help"]


def test_equals_and_separate_values_and_repeats():
    o = launch_options.parse_options(["--carryon-bind=/a:/b", "--carryon-bind", "/c:/d:ro", "--carryon-workdir=/w",
                              "--carryon-entrypoint", "/bin/sh", "--carryon-engine=ptrace", "x"], {})
    assert o.bind == ["/a:/b", "/c:/d:ro"] and o.workdir == "/w" and o.entrypoint == "/bin/sh"
    assert o.engine == "ptrace" and o.args == ["x"]


def test_double_dash_is_a_command_argument():
    assert launch_options.parse_options(["--", "--carryon-help"], {}).args == ["--", "--carryon-help"]


@pytest.mark.parametrize("argv,msg", [
    (["--carryon-nope"], "unknown option --carryon-nope"),
    (["--carryon-bind"], "needs a value"),
    (["--carryon-engine", "fast"], "seccomp, ptrace or auto"),
    (["--carryon-clean=maybe"], "expected 0/1"),
])
def test_bad_options_are_one_line_errors(argv, msg):
    with pytest.raises(CarryonError) as e:
        launch_options.parse_options(argv, {})
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_environment_options_and_command_line_wins():
    env = {"CARRYON_ENGINE": "ptrace", "CARRYON_ENV": "A=1\nB=2\n", "CARRYON_VERBOSE": "2",
           "CARRYON_CACHE": "/c", "CARRYON_BIND": "/x:/y"}
    o = launch_options.parse_options(["--carryon-env", "C=3"], env)
    assert o.engine == "ptrace" and o.verbose == 2 and o.cache == "/c" and o.bind == ["/x:/y"]
    assert o.env == ["C=3"]                       # the command line replaces the env list
    o = launch_options.parse_options(["--carryon-engine=seccomp"], {"CARRYON_ENGINE": "ptrace"})
    assert o.engine == "seccomp"
    assert launch_options.parse_options([], {"CARRYON_NETCOOP": "yes"}).netcoop is True
    assert launch_options.parse_options([], {"CARRYON_NETCOOP": "0"}).netcoop is False


@pytest.mark.parametrize("text,expect", [
    ("8080:80", (80, 8080, "tcp", None)),
    ("127.0.0.1:8080:80/udp", (80, 8080, "udp", "127.0.0.1")),
    ("[::1]:9000:90", (90, 9000, "tcp", "::1")),
    ("0:7777", (7777, 0, "tcp", None)),
])
def test_publish_parsing(text, expect):
    p = runspec.parse_publish(text)
    assert (p.guest, p.host, p.proto, p.address) == expect


@pytest.mark.parametrize("text", ["8080", "8080:", ":80", "a:80", "8080:80/sctp", "70000:80", "8080:0",
                                  "1.2.3:80:80", "[::1:80:80", "x.y.z.w:1:2", "1:2:3:4", "8080:80/",
                                  "+1:80", "8080:80 "])
def test_publish_parsing_is_strict(text):
    with pytest.raises(CarryonError) as e:
        runspec.parse_publish(text)
    assert "--carryon-publish" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("text,num", [("", signal.SIGTERM), ("SIGTERM", 15), ("SIGINT", 2), ("KILL", 9),
                                      ("9", 9), ("SIGRTMIN+3", int(signal.SIGRTMIN) + 3), ("sigusr1", 10)])
def test_stop_signal(text, num):
    assert runspec.parse_signal(text) == num


@pytest.mark.parametrize("text", ["SIGNOPE", "0", "999", "SIGRTMIN+x"])
def test_bad_stop_signal(text):
    with pytest.raises(CarryonError):
        runspec.parse_signal(text)


@pytest.fixture
def rootfs(tmp_path):
    r = tmp_path / "rootfs"
    (r / "etc").mkdir(parents=True)
    (r / "real").mkdir()
    (r / "real" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001:app:/home/app:/bin/sh\nnohome:x:1002:1002::"
        ":/bin/sh\n")
    os.symlink("/real/passwd", r / "etc" / "passwd")     # absolute: resolved inside the rootfs
    (r / "etc" / "group").write_text("root:x:0:\nstaff:x:50:app\napp:x:1001:\n")
    return str(r)


@pytest.mark.parametrize("user,expect", [
    ("", (0, 0, "/root")), ("app", (1000, 1001, "/home/app")), ("1000", (1000, 1001, "/home/app")),
    ("app:staff", (1000, 50, "/home/app")), ("1000:7", (1000, 7, "/home/app")),
    ("4242", (4242, 0, None)), ("4242:4242", (4242, 4242, None)), ("nohome", (1002, 1002, None)),
    ("root:app", (0, 1001, "/root")),
])
def test_user_resolution(rootfs, user, expect):
    assert runspec.resolve_user(user, rootfs) == expect


@pytest.mark.parametrize("user", ["ghost", "app:ghosts"])
def test_unknown_user_or_group(rootfs, user):
    with pytest.raises(CarryonError, match="unable to find"):
        runspec.resolve_user(user, rootfs)


def test_passwd_symlink_cannot_escape_the_rootfs(tmp_path):
    r = tmp_path / "r"
    (r / "etc").mkdir(parents=True)
    os.symlink("../../../../../../etc/passwd", r / "etc" / "passwd")   # host's: must not be read
    with pytest.raises(CarryonError):
        runspec.resolve_user("root", str(r))


def test_env_like_docker(monkeypatch):
    monkeypatch.setenv("TERM", "xterm-test")
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("LEAK", "no")
    monkeypatch.delenv("NOT_THERE", raising=False)
    cfg = {"Env": ["PATH=/x", "A=a=b", "EMPTY=", "HOME=/img"]}
    o = launch_options.Options(env=["B=2", "SLURM_JOB_ID", "NOT_THERE", "A=over"])
    env = runspec.build_env(cfg, o, "/home/u")
    assert env["PATH"] == "/x" and env["A"] == "over" and env["EMPTY"] == "" and env["B"] == "2"
    assert env["HOME"] == "/img"                  # the image's own HOME wins over passwd
    assert env["TERM"] == "xterm-test" and env["SLURM_JOB_ID"] == "42"
    assert "LEAK" not in env and "NOT_THERE" not in env and "HOSTNAME" in env
    env = runspec.build_env({"Env": []}, launch_options.Options(), None)
    assert env["HOME"] == "/" and env["PATH"] == runspec.DEFAULT_PATH


def test_bind_parsing(tmp_path):
    b = runspec.parse_bind(f"{tmp_path}:/data:ro")
    assert (b.host, b.guest, b.readonly) == (str(tmp_path), "/data", True)
    b = runspec.parse_bind(str(tmp_path))
    assert b.guest == str(tmp_path) and not b.readonly
    for bad in (f"{tmp_path}:data", f"{tmp_path}/missing:/x", ":/x"):
        with pytest.raises(CarryonError):
            runspec.parse_bind(bad)


def test_rootfs_needs_rounds_up():
    need, inodes = selfarchive.rootfs_needs({"rootfs": {"uncompressed_bytes": 10 << 20, "files": 100, "dirs": 10,
                                                   "total_entries": 120}})
    assert need > (10 << 20) + 110 * 4096 and inodes >= 120


def test_scrub_environment_restores_library_path(monkeypatch):
    monkeypatch.setenv("_CARRYON_RT", "/c/rt-x")
    monkeypatch.setenv("_CARRYON_ARCHIVE", "/a.run")
    monkeypatch.setenv("LD_LIBRARY_PATH", "/c/rt-x/_internal:/opt/lib")
    monkeypatch.delenv("LD_LIBRARY_PATH_ORIG", raising=False)
    internal = start._scrub_environment()
    assert internal["_CARRYON_ARCHIVE"] == "/a.run"
    assert "_CARRYON_RT" not in os.environ and os.environ["LD_LIBRARY_PATH"] == "/opt/lib"
