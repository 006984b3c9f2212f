"""The archive on bare nodes: no Python anywhere, HOME unset, TMPDIR noexec; and in a chroot of a static
busybox rootfs with no libc at all (only /proc, /dev and a writable /tmp). Root only (mount namespaces)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess

import pytest

from archive_run_support import ROOT, archive, expected_run, workdir

pytestmark = pytest.mark.skipif(not ROOT or shutil.which("unshare") is None,
                                reason="needs root and unshare (private mount namespaces)")

HIDE_FILES = ["/usr/bin/python3*", "/usr/local/bin/python3*", "/usr/lib/x86_64-linux-gnu/libpython3*",
              "/usr/local/lib/libpython3*"]
HIDE_DIRS = ["/usr/lib/python3", "/usr/lib/python3.11", "/usr/local/lib/python3.11", "/opt/cvenv", "/root/.pyenv"]


def _ns(script: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["unshare", "-m", "sh", "-c", "set -e; mount --make-rprivate /; " + script],
                          env=env, capture_output=True, text=True, timeout=900)


def test_no_python_on_the_node(tmp_path):
    bb, py = archive("bb"), archive("py")
    noexec = tmp_path / "noexec-tmp"
    noexec.mkdir()
    os.makedirs("/tmp/carryon-0", exist_ok=True)
    hide = []
    for pat in HIDE_FILES:
        hide += [f'mount --bind /dev/null "{f}"' for f in glob.glob(pat) if os.path.isfile(f)]
    hide += [f'mount -t tmpfs -o size=1m tmpfs "{d}"' for d in HIDE_DIRS if os.path.isdir(d)]
    script = "; ".join(hide + [
        f'mount -t tmpfs -o noexec,size=64m tmpfs "{noexec}"',
        'mount -t tmpfs -o size=600m tmpfs /tmp/carryon-0',       # a fresh (cold) per-user cache
        'if python3 -c pass 2>/dev/null || /usr/bin/python3 -c pass 2>/dev/null; then echo PYTHON-VISIBLE; fi',
        'ls /tmp/carryon-0 | wc -l',
        f'env -i PATH=/bin TMPDIR="{noexec}" "{bb}"',
        f'env -i PATH=/bin TMPDIR="{noexec}" "{py}" /app/fib.py 12',
        f'env -i PATH=/bin TMPDIR="{noexec}" "{py}" -c "import sys; sys.exit(7)" || echo "rc=$?"',
        f'ls -A "{noexec}"/carryon-0 | wc -l',                   # nothing left in the noexec one
        # the two images (+ runtimes, verdict, the warm start's plan of a userns run)
        'ls /tmp/carryon-0 | grep -c -v -e "^rt-" -e "^engine-" -e "^nsplan-"',
    ])
    p = _ns(script, {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    assert p.returncode == 0, p.stderr
    assert "PYTHON-VISIBLE" not in p.stdout
    assert p.stdout == "0\n" + expected_run() + "fib(12) = 144\nrc=7\n0\n2\n", p.stdout
    assert p.stderr == ""


def test_in_a_chroot_of_a_static_busybox_without_libc(tmp_path):
    bb, py = archive("bb"), archive("py")
    root = workdir() / "chroot-busybox"
    if not root.exists():
        p = subprocess.run([str(bb), "--carryon-extract", str(root)], capture_output=True, text=True,
                           env={"PATH": "/usr/bin:/bin", "CARRYON_CACHE": str(tmp_path / "c")}, timeout=300)
        assert p.returncode == 0, p.stderr
    for d in ("proc", "dev", "tmp"):
        (root / d).mkdir(exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    assert not glob.glob(str(root / "**" / "libc.so*"), recursive=True)
    assert not os.path.lexists(root / "lib64" / "ld-linux-x86-64.so.2")
    shutil.copyfile(bb, root / "bb.run")
    shutil.copyfile(py, root / "py.run")
    os.chmod(root / "bb.run", 0o755)
    os.chmod(root / "py.run", 0o755)
    inner = ("cd / && env -i PATH=/bin:/usr/bin ./bb.run && env -i PATH=/bin:/usr/bin ./bb.run sh -c 'id -u' "
             "&& env -i PATH=/bin /py.run /app/fib.py 15")
    script = (f'mount -t proc proc "{root}/proc"; mount --rbind /dev "{root}/dev"; '
              f'mount -t tmpfs -o size=600m tmpfs "{root}/tmp"; '
              f'exec chroot "{root}" /bin/sh -c "$INNER"')
    p = _ns(script, {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "INNER": inner})
    assert p.returncode == 0, p.stderr
    assert p.stdout == expected_run() + "1000\nfib(15) = 610\n"
    assert p.stderr == ""
