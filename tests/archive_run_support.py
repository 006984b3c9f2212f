"""Shared by the archive tests (test_archive_run*.py, test_launcher*.py): the self-extracting archives,
packed once per pytest process from ../shared/images, and a way to run them with a clean environment."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import SHARED_IMAGES, run_carryon

SOURCES = {
    "bb": SHARED_IMAGES / "busybox-multilayer" / "busybox-multilayer.oci.tar",
    "py": SHARED_IMAGES / "debian-python" / "debian-python.oci.tar",
}
ROOT = os.geteuid() == 0
_built: dict[str, Path] = {}
_workdir: list[str] = []


def workdir() -> Path:
    """A world-readable scratch dir for this pytest process (the non-root user runs archives from it)."""
    if not _workdir:
        d = tempfile.mkdtemp(prefix="carryon-archive-tests-")
        os.chmod(d, 0o755)
        _workdir.append(d)
        atexit.register(_cleanup, d)
    return Path(_workdir[0])


def _cleanup(d: str) -> None:
    from runtime.extract import remove_tree
    try:
        remove_tree(d)
    except OSError:
        shutil.rmtree(d, ignore_errors=True)


def archive(name: str) -> Path:
    """The `bb` (busybox-multilayer) or `py` (debian-python) archive, packed on first use."""
    src = SOURCES[name]
    if not src.exists():
        pytest.skip(f"{src} not present")
    if name not in _built:
        out = workdir() / f"{name}.run"
        p = run_carryon("pack", str(src), "-o", str(out))
        assert p.returncode == 0, f"carryon pack {src} failed:\n{p.stderr}"
        os.chmod(out, 0o755)
        _built[name] = out
    return _built[name]


def expected_run(name: str = "busybox-multilayer") -> str:
    return (SHARED_IMAGES / name / "EXPECTED-run.txt").read_text()


# the engine archive runs get (CARRYON_ENGINE) unless a test names one: set per test by the
# `archive_engine` fixture of test_archive_run.py; None: the launcher's default (auto)
ENGINE: list[str] = []


def clean_env(home: Path | None = None, cache: Path | None = None, **extra: str) -> dict[str, str]:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
    if ENGINE:
        env["CARRYON_ENGINE"] = ENGINE[0]
    if home is not None:
        env["HOME"] = str(home)
    if cache is not None:
        env["CARRYON_CACHE"] = str(cache)
    env.update(extra)
    return env


def run(path: Path, *args: str, env: dict[str, str], timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(path), *args], env=env, capture_output=True, text=True, timeout=timeout, **kw)


def entries(cache: Path) -> dict[str, list[str]]:
    """What a cache dir holds: published image entries, runtime dirs, anything else."""
    out: dict[str, list[str]] = {"image": [], "runtime": [], "other": []}
    if not cache.is_dir():
        return out
    for n in sorted(os.listdir(cache)):
        if n.startswith("rt-"):
            out["runtime"].append(n)
        elif len(n) == 32 and all(c in "0123456789abcdef" for c in n):
            out["image"].append(n)
        elif n.startswith("engine-") and n.endswith(".json"):
            out.setdefault("verdict", []).append(n)     # auto's cached verdict (runtime.choice)
        else:
            out["other"].append(n)
    return out


def guest_pids(marker: str) -> list[int]:
    """PIDs whose command line contains `marker`."""
    found = []
    for n in os.listdir("/proc"):
        if not n.isdigit():
            continue
        try:
            with open(f"/proc/{n}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(n))
        except OSError:
            pass
    return found


def user_exists(name: str) -> bool:
    return subprocess.run(["id", name], capture_output=True).returncode == 0


def without_shared_caches(cmd: list[str]) -> list[str]:
    """`cmd` run where the default cache dirs under /tmp and /var/tmp hold nothing earlier runs left
    (tests must not depend on them): as root, in a private mount namespace with an empty tmpfs on
    /tmp/carryon-0 and /var/tmp/carryon-0; otherwise in a user namespace as its root (uid 0), where
    those dirs, like /tmp itself, belong to an unmapped owner and so are never trusted."""
    if os.geteuid() == 0:
        script = ('for d in /tmp/carryon-0 /var/tmp/carryon-0; do mkdir -p -m 700 "$d" && '
                  'mount -t tmpfs -o mode=700 tmpfs "$d" || exit 125; done; exec "$@"')
        return ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", *cmd]
    return ["unshare", "-Ur", *cmd]
