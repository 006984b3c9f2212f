"""runtime/options.py is the one place options are declared: parsing, help, the environment, the sh
launcher's flag list and README's option block all follow the table."""

from __future__ import annotations

import os
import subprocess

import pytest

from conftest import REPO
from runtime import options as table
from runtime.launch import options as launch_options


@pytest.fixture
def made_up(monkeypatch):
    """Two options that exist nowhere but in the table: a flag and a value."""
    extra = (table.Option("frobnicate", table.FLAG, "frobnicate the guest", archive=True),
             table.Option("frob_level", table.VALUE, "how much to frobnicate", "N", archive=True,
                          exec=("-F", "--frob-level")))
    monkeypatch.setattr(table, "OPTIONS", table.OPTIONS + extra)
    return extra


def test_a_made_up_option_is_parsed_helped_and_read_from_the_environment(made_up):
    o = launch_options.parse_options(["--carryon-frobnicate", "--carryon-frob-level", "3", "cmd"], {})
    assert o.frobnicate is True and o.frob_level == "3" and o.args == ["cmd"]
    o = launch_options.parse_options(["--carryon-frob-level=7", "x"], {"CARRYON_FROBNICATE": "yes"})
    assert o.frobnicate is True and o.frob_level == "7"
    o = launch_options.parse_options([], {"CARRYON_FROB_LEVEL": "9"})
    assert o.frob_level == "9" and o.frobnicate is False
    text = launch_options.help_text("app.run")
    assert "--carryon-frobnicate" in text and "frobnicate the guest" in text
    assert "--carryon-frob-level N" in text
    values, cmd = table.parse_exec(["-F", "2", "--frob-level=5", "true"])
    assert values["frob_level"] == "5" and cmd == ["true"]
    assert "-F, --frob-level=N" in table.exec_help()


def _launcher_finds_cache(tmp_path, args: list[str]) -> bool:
    """Run the archive launcher made now and tell whether it took `--carryon-cache DIR` after `args`:
    DIR holds a published runtime dir (the key of a made-up runtime) whose loader only says so."""
    from packer.embed import make_launcher
    sh = tmp_path / "launcher.sh"
    sh.write_bytes(make_launcher(1 << 20, "0" * 64))
    rt = tmp_path / "cache" / ("rt-" + "0" * 32)
    (rt / "_internal").mkdir(parents=True, exist_ok=True)
    (rt / ".complete").write_text("")
    ld = rt / "_internal" / "ld-linux-x86-64.so.2"
    ld.write_text("#!/bin/sh\necho took the cache\n")
    ld.chmod(0o755)
    p = subprocess.run(["sh", str(sh), *args, "--carryon-cache", str(tmp_path / "cache"), "true"],
                       env={"PATH": os.environ["PATH"], "HOME": str(tmp_path / "home")},
                       capture_output=True, text=True)
    return p.stdout == "took the cache\n"


def test_the_sh_launcher_accepts_a_made_up_option(tmp_path, made_up):
    assert _launcher_finds_cache(tmp_path, ["--carryon-frobnicate", "--carryon-frob-level", "2"])


def test_the_sh_launcher_needs_the_table_to_know_a_flag(tmp_path):
    # the control: a flag the table does not know is taken as an option with a value, which
    # swallows the next argument (so the launcher's flag list really comes from the table)
    assert not _launcher_finds_cache(tmp_path, ["--carryon-frobnicate"])
    assert _launcher_finds_cache(tmp_path, ["--carryon-netcoop"])


def test_readme_option_block_is_the_table():
    readme = (REPO / "README.md").read_text()
    assert table.archive_help() in readme, "README's --carryon-* block differs from runtime/options.py"
    for o in table.exec_options():
        for s in o.exec:
            if s.startswith("--"):
                assert s in table.exec_help()


def test_every_archive_option_has_an_attribute_and_a_unique_spelling():
    seen: set[str] = set()
    for o in table.OPTIONS:
        for s in ([o.archive_flag] if o.archive else []) + list(o.exec):
            assert s not in seen, f"{s} declared twice"
            seen.add(s)
    defaults = launch_options.Options()
    for o in table.archive_options():
        assert hasattr(defaults, o.name)
    assert set(launch_options.Options.__annotations__) - {"args"} == {o.name for o in table.archive_options()}


def test_engine_names_agree():
    from runtime import engine
    assert launch_options.ENGINES == engine.NAMES
