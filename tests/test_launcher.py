"""The sh launcher in front of the payload, and the archive's own options (--carryon-*)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from archive_run_support import archive, clean_env, entries, expected_run, run, without_shared_caches, workdir
from conftest import REPO, run_carryon


@pytest.mark.parametrize("shell", ["dash", "busybox sh", "bash --posix"])
def test_runs_under_every_sh(tmp_path, shell):
    if shutil.which(shell.split()[0]) is None:
        pytest.skip(f"{shell} not installed")
    bb = archive("bb")
    env = clean_env(tmp_path, tmp_path / "cache")
    for _ in range(2):                                       # cold, then warm
        p = subprocess.run(shell.split() + [str(bb)], env=env, capture_output=True, text=True, timeout=300)
        assert (p.returncode, p.stdout, p.stderr) == (0, expected_run(), "")


def test_relative_path_and_path_lookup(tmp_path):
    bb = archive("bb")
    d = tmp_path / "bin"
    d.mkdir()
    shutil.copyfile(bb, d / "bb.run")
    os.chmod(d / "bb.run", 0o755)
    env = clean_env(tmp_path, tmp_path / "cache")
    p = subprocess.run(["./bb.run", "sh", "-c", "echo ok"], cwd=d, env=env, capture_output=True, text=True)
    assert (p.returncode, p.stdout) == (0, "ok\n"), p.stderr
    env["PATH"] = f"{d}:{env['PATH']}"
    p = subprocess.run(["bb.run", "sh", "-c", "echo ok"], cwd="/", env=env, capture_output=True, text=True)
    assert (p.returncode, p.stdout) == (0, "ok\n"), p.stderr


def test_warm_start_reuses_the_entry(tmp_path):
    bb = archive("bb")
    cache = tmp_path / "cache"
    env = clean_env(tmp_path, cache)
    assert run(bb, env=env).returncode == 0
    e = entries(cache)
    marks = {n: os.stat(cache / n / ".complete").st_ino for n in e["image"] + e["runtime"]}
    assert run(bb, env=env).returncode == 0
    assert {n: os.stat(cache / n / ".complete").st_ino for n in marks} == marks
    assert entries(cache) == e


def test_cache_option_forms_win_over_the_environment(tmp_path):
    bb = archive("bb")
    env = clean_env(tmp_path, tmp_path / "env-cache")
    p = run(bb, "--carryon-cache", str(tmp_path / "a"), "sh", "-c", "echo a", env=env)
    assert (p.returncode, p.stdout) == (0, "a\n"), p.stderr
    p = run(bb, f"--carryon-cache={tmp_path / 'b'}", "--carryon-verbose=0", "sh", "-c", "echo b", env=env)
    assert (p.returncode, p.stdout) == (0, "b\n"), p.stderr
    for d in ("a", "b"):
        e = entries(tmp_path / d)
        assert len(e["image"]) == 1 and len(e["runtime"]) == 1
    assert not (tmp_path / "env-cache").exists()
    # an argument of the command that looks like an option is not ours
    p = run(bb, "echo", "--carryon-cache", str(tmp_path / "c"), env=env)
    assert (p.returncode, p.stdout) == (0, f"--carryon-cache {tmp_path / 'c'}\n")
    assert not (tmp_path / "c").exists()


def test_default_cache_falls_back_when_home_is_unusable(tmp_path):
    bb = archive("bb")
    home = tmp_path / "home-is-a-file"
    home.write_text("")
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    env = clean_env(home, None, TMPDIR=str(tmpdir))
    p = subprocess.run(without_shared_caches([str(bb)]), env=env, capture_output=True, text=True, timeout=300)
    assert (p.returncode, p.stdout, p.stderr) == (0, expected_run(), "")
    (made,) = os.listdir(tmpdir)                  # carryon-UID (UID as the run saw itself)
    assert made.startswith("carryon-")
    e = entries(tmpdir / made)
    assert len(e["image"]) == 1 and len(e["runtime"]) == 1
    assert (os.stat(tmpdir / made).st_mode & 0o777) == 0o700


def test_xdg_cache_home(tmp_path):
    bb = archive("bb")
    env = clean_env(tmp_path / "home", None, XDG_CACHE_HOME=str(tmp_path / "xdg"))
    assert run(bb, "true", env=env).returncode == 0
    assert len(entries(tmp_path / "xdg" / "carryon")["image"]) == 1


def test_help_info_and_verbose(tmp_path):
    bb = archive("bb")
    env = clean_env(tmp_path, tmp_path / "cache")
    p = run(bb, "--carryon-help", env=env)
    assert p.returncode == 0 and "--carryon-entrypoint" in p.stdout and "bb.run" in p.stdout
    p = run(bb, "--carryon-info", env=env)
    assert p.returncode == 0, p.stderr
    info = dict(line.split(":", 1) for line in p.stdout.splitlines())
    manifest = json.loads(run_carryon("inspect", str(bb), "--json", check=True).stdout)
    digest = manifest.get("image", manifest).get("manifest_digest") if isinstance(manifest, dict) else None
    assert info["image digest"].strip() == digest
    assert "not extracted yet" in info["cache entry"] and str(tmp_path / "cache") in info["cache dirs"]
    assert info["engine"].strip()
    p = run(bb, "--carryon-verbose", "true", env=env)
    assert p.returncode == 0 and "carryon: extracted into" in p.stderr
    p = run(bb, "--carryon-info", env=env)
    assert "(extracted)" in p.stdout


def test_clean_removes_this_archives_entries(tmp_path):
    bb = archive("bb")
    cache = tmp_path / "cache"
    env = clean_env(tmp_path, cache)
    assert run(bb, "sh", "-c", "echo dirty > /home/app/f", env=env).returncode == 0
    p = run(bb, "--carryon-clean", env=env)
    assert (p.returncode, p.stdout, p.stderr) == (0, "", "")
    assert entries(cache)["image"] == []
    p = run(bb, "sh", "-c", "cat /home/app/f 2>/dev/null || echo reset", env=env)
    assert (p.returncode, p.stdout) == (0, "reset\n")


def test_extract_option(tmp_path):
    bb = archive("bb")
    dest = tmp_path / "tree"
    p = run(bb, "--carryon-extract", str(dest), env=clean_env(tmp_path, tmp_path / "cache"))
    assert (p.returncode, p.stdout, p.stderr) == (0, "", "")
    assert (dest / "etc" / "motd").read_text().startswith("busybox-multilayer")
    assert os.readlink(dest / "bin" / "sh") == "/bin/busybox"
    p = run(bb, "--carryon-extract", str(dest), env=clean_env(tmp_path, tmp_path / "cache"))
    assert p.returncode == 125 and len(p.stderr.splitlines()) == 1


def test_packer_tools_accept_the_self_extracting_file(tmp_path):
    bb = archive("bb")
    p = run_carryon("inspect", str(bb))
    assert p.returncode == 0, p.stderr
    p = run_carryon("extract", str(bb), str(tmp_path / "t"))
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "t" / "app" / "entrypoint.sh").exists()


def test_no_usable_cache_is_one_clear_line(tmp_path):
    bb = archive("bb")
    f = tmp_path / "file"
    f.write_text("")
    p = run(bb, env=clean_env(tmp_path, f / "sub"))
    assert p.returncode == 125 and p.stdout == ""
    assert len(p.stderr.splitlines()) == 1
    assert "no usable cache directory" in p.stderr and "CARRYON_CACHE" in p.stderr


def test_launcher_is_generated_from_the_template():
    from packer import embed
    from runtime.errors import CarryonError
    text = embed.make_launcher(123 * 1024, "ab" * 32).decode()
    assert "rt_kb=124" in text and "@CARRYON_" not in text and "rt_sha=" + "ab" * 32 in text
    with pytest.raises(CarryonError):
        embed.make_launcher(1, "not-a-hash")
    assert text.startswith("#!/bin/sh\n")
    p = subprocess.run(["sh", "-n"], input=text, text=True, capture_output=True)
    assert p.returncode == 0, p.stderr


def test_runtime_bundle_is_self_contained():
    """Every ELF in the runtime resolves all its libraries inside the bundle, with our loader."""
    from packer import embed
    built = embed.ensure_runtime()
    d = workdir() / "runtime-unpacked"
    if not d.exists():
        d.mkdir()
        embed.unpack_section(built.tgz, str(d), built.gz)
    lib = d / "_internal"
    assert (lib / embed.LOADER).exists() and (d / embed.RUNTIME_MAIN).exists()
    for name in ("libc.so.6", "libm.so.6", "libpython3.11.so.1.0", "libgcc_s.so.1"):
        assert (lib / name).exists(), name
    elfs = [p for p in d.rglob("*") if p.is_file() and p.read_bytes()[:4] == b"\x7fELF" and p.name != embed.LOADER]
    for p in elfs:
        out = subprocess.run([str(lib / embed.LOADER), "--inhibit-cache", "--library-path", str(lib), "--list",
                              str(p)], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if "=>" in line:
                target = line.split("=>")[1].split("(")[0].strip()
                assert target.startswith(str(lib)), f"{p.name}: {line.strip()}"


def test_build_key_tracks_sources():
    from packer import embed
    k = embed.build_key()
    assert k == embed.build_key() and len(k) == 32
    assert os.path.join(REPO, "runtime", "launch", "start.py") in embed._runtime_sources()


def test_fast_trailer_reader_agrees_with_the_format_module():
    from runtime import archive as fmt, trailer as trailer_module
    from runtime.launch import selfarchive
    bb = archive("bb")
    size, sections, trailer, manifest = selfarchive.read_fast(str(bb))
    lay = fmt.read_layout(str(bb))
    assert size == lay.size
    assert sections == {n: (s.offset, s.length, s.sha256) for n, s in lay.sections.items()}
    assert trailer_module.render({n: (s.length, s.sha256) for n, s in lay.sections.items()}) == trailer
    assert fmt.format_trailer({n: (s.length, s.sha256) for n, s in lay.sections.items()}) == trailer
    assert selfarchive.open_archive(str(bb), verify_all=False).manifest == fmt.read_manifest(lay)
