"""One exit-status rule for every `carryon` subcommand (Docker's): 125 when carryon itself fails (bad
usage or option, bad input, I/O error), 0 on success; `sweep` 1 when some row failed (tests in
test_sweep.py); `exec` the command's status otherwise (tests in test_engine_run.py)."""

from __future__ import annotations

import tarfile

import pytest

from conftest import run_carryon, tar_member as M, write_oci

LAYER = [M("etc", tarfile.DIRTYPE), M("etc/hello", data=b"hello\n")]


def test_help_exits_0_and_states_the_rule():
    p = run_carryon("--help")
    assert p.returncode == 0 and p.stderr == ""
    assert "125 carryon itself failed" in p.stdout and "exit status" in p.stdout
    for cmd in ("pack", "inspect", "extract", "exec", "sweep"):
        p = run_carryon(cmd, "--help")
        assert p.returncode == 0, (cmd, p.stderr)
        assert "125" in p.stdout and "xit status" in p.stdout, (cmd, p.stdout)


def test_no_command_and_unknown_command_are_usage_errors_125():
    p = run_carryon()
    assert p.returncode == 125 and p.stdout == "" and "usage: carryon COMMAND" in p.stderr
    p = run_carryon("frobnicate")
    assert p.returncode == 125 and p.stdout == ""
    assert p.stderr.startswith("carryon: unknown command 'frobnicate'\n") and "usage: carryon COMMAND" in p.stderr


@pytest.mark.parametrize("args", [
    ["pack"],                                   # missing SOURCE
    ["pack", "--bogus", "x"],
    ["inspect"],
    ["extract", "only-one"],
    ["exec", "--bogus"],
    ["sweep", "--bogus"],
    ["sweep", "a.run"],                         # missing --params
    ["sweep", "a.run", "--params", "t.csv", "--jobs", "0"],
])
def test_bad_usage_is_125_in_every_subcommand(args, tmp_path):
    p = run_carryon(*args, cwd=tmp_path)
    assert p.returncode == 125, (args, p.returncode, p.stderr)
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr, p.stderr


def test_bad_input_is_125_in_every_subcommand(tmp_path):
    junk = tmp_path / "junk"
    junk.write_bytes(b"x" * 1000)
    (tmp_path / "t.csv").write_text("n\n1\n")
    cases = [
        ["pack", "--bare", str(junk), "-o", str(tmp_path / "a.run")],                 # not an image
        ["pack", "--bare", str(tmp_path / "missing"), "-o", str(tmp_path / "a.run")],
        ["inspect", str(junk)],                                                        # not an archive
        ["extract", str(junk), str(tmp_path / "d")],
        ["exec", "-r", str(tmp_path / "no-rootfs"), "/bin/true"],
        ["sweep", str(tmp_path / "missing.run"), "--params", str(tmp_path / "t.csv"), "--", "x"],
        ["sweep", str(junk), "--params", str(tmp_path / "no.csv"), "--", "x"],
        ["sweep", "--collect", str(tmp_path)],                                         # holds no sweep
    ]
    for args in cases:
        p = run_carryon(*args, cwd=tmp_path)
        assert p.returncode == 125, (args, p.returncode, p.stderr)
        assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr, p.stderr


def test_pack_output_error_and_bad_level_are_125(tmp_path):
    src = write_oci(tmp_path / "img", [LAYER])
    for extra in (["-o", str(tmp_path / "nonexist" / "x.run")], ["-o", str(tmp_path)],
                  ["-o", str(tmp_path / "a.run"), "--level", "99"]):
        p = run_carryon("pack", "--bare", str(src), *extra)
        assert p.returncode == 125, (extra, p.stderr)
