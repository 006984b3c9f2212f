"""CLI details: default output name, progress bars only on a TTY, inspect text output."""

from __future__ import annotations

import io
import json
import os
import pty
import subprocess
import sys
import tarfile

from conftest import REPO, run_carryon, tar_member as M, write_oci
from packer.pack import default_output
from packer.progress import Bar

LAYER = [M("etc", tarfile.DIRTYPE), M("etc/hello", data=b"hello\n" * 10), M("dev-null", tarfile.CHRTYPE,
                                                                            mode=0o666, devmajor=1, devminor=3)]


def test_default_output_names():
    assert default_output("/x/debian-python.oci.tar") == "debian-python.run"
    assert default_output("busybox-multilayer.docker.tar") == "busybox-multilayer.run"
    assert default_output("img.docker-save.tar.gz") == "img.docker-save.run"
    assert default_output("-") == "image.run"
    assert default_output("/some/oci/") == "oci.run"


def test_bar_is_silent_unless_tty():
    s = io.StringIO()
    with Bar("reading", 100, stream=s) as b:
        b.update(50)
        b.update(100)
    assert s.getvalue() == ""
    s = io.StringIO()
    with Bar("reading", 100, stream=s, enabled=True) as b:
        b.update(100)
    assert "reading" in s.getvalue() and "100.0%" in s.getvalue()


def test_pack_says_one_line_when_piped_and_shows_progress_on_a_tty(tmp_path):
    src = write_oci(tmp_path / "img", [LAYER])
    p = run_carryon("pack", "--bare", str(src), "-o", str(tmp_path / "a.run"))
    assert p.returncode == 0 and p.stdout == "" and len(p.stderr.splitlines()) == 1, p.stderr
    assert "\r" not in p.stderr and p.stderr.startswith(f"carryon pack: wrote {tmp_path}/a.run: ")
    # stderr on a pseudo-terminal: the bars appear there
    rc, out = _pack_on_a_terminal("--bare", str(src), "-o", str(tmp_path / "b.run"))
    assert rc == 0
    assert b"reading" in out and b"compressing" in out
    assert (tmp_path / "a.run").read_bytes() == (tmp_path / "b.run").read_bytes()


def test_pack_default_output_in_cwd(tmp_path):
    src = write_oci(tmp_path / "myimage", [LAYER])
    p = run_carryon("pack", "--bare", str(src), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "myimage.run").is_file()


def test_inspect_text(tmp_path):
    src = write_oci(tmp_path / "img", [LAYER], config={"Entrypoint": ["/bin/sh", "-c"], "Cmd": ["echo hi"],
                                                       "Env": ["A=1"], "ExposedPorts": {"80/tcp": {}}})
    out = tmp_path / "a.run"
    run_carryon("pack", "--bare", str(src), "-o", str(out), check=True)
    text = run_carryon("inspect", "--files", str(out), check=True).stdout
    assert 'entrypoint  ["/bin/sh", "-c"]' in text
    assert "env         A=1" in text and "ports       80/tcp" in text
    assert "rootfs      4 entries: 1 files, 2 dirs, 0 symlinks, 0 hardlinks, 1 other" in text
    assert "-rw-r--r-- 0:0        60 /etc/hello" in text
    assert "crw-rw-rw- 0:0       1,3 /dev-null" in text


def _pack_proc(*args: str, cwd, stdout) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "packer.cli", "pack", *args], stdout=stdout,
                          stderr=subprocess.PIPE, env=env, cwd=cwd)


def test_pack_output_dash_writes_the_archive_to_stdout(tmp_path):
    src = write_oci(tmp_path / "img", [LAYER])
    run_carryon("pack", "--bare", str(src), "-o", str(tmp_path / "a.run"), check=True)
    work = tmp_path / "work"
    work.mkdir()
    with open(tmp_path / "b.run", "wb") as f:
        p = _pack_proc("--bare", str(src), "-o", "-", cwd=work, stdout=f)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "b.run").read_bytes() == (tmp_path / "a.run").read_bytes()
    p = _pack_proc("--bare", str(src), "-o", "-", cwd=work, stdout=subprocess.PIPE)  # through a pipe
    assert p.returncode == 0 and p.stdout == (tmp_path / "a.run").read_bytes()
    assert os.listdir(work) == []  # no file named "-", no temporary file left


def test_pack_output_dash_refuses_a_terminal(tmp_path):
    src = write_oci(tmp_path / "img", [LAYER])
    master, slave = pty.openpty()
    try:
        p = _pack_proc("--bare", str(src), "-o", "-", cwd=tmp_path, stdout=slave)
    finally:
        os.close(slave)
        os.close(master)
    err = p.stderr.decode()
    assert p.returncode == 125 and len(err.splitlines()) == 1 and "terminal" in err, err
    assert not (tmp_path / "-").exists()


def test_pack_summary_line_and_quiet(tmp_path):
    src = write_oci(tmp_path / "img", [LAYER])
    p = run_carryon("pack", "--bare", str(src), "-o", "a.run", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    manifest = json.loads(run_carryon("inspect", "--json", str(tmp_path / "a.run"), check=True).stdout)
    size = os.path.getsize(tmp_path / "a.run") / 1e6
    assert p.stderr == (f"carryon pack: wrote a.run: {size:.1f} MB, image {manifest['image']['manifest_digest']}, "
                        f"1 files\n")
    for q in ("-q", "--quiet"):
        p = run_carryon("pack", q, "--bare", str(src), "-o", "b.run", cwd=tmp_path)
        assert p.returncode == 0 and p.stdout == "" and p.stderr == "", p.stderr
    # -q also silences the progress bars on a terminal
    rc, seen = _pack_on_a_terminal("-q", "--bare", str(src), "-o", str(tmp_path / "c.run"))
    assert rc == 0 and seen == b""


def _pack_on_a_terminal(*args: str) -> tuple[int, bytes]:
    """`carryon pack ARGS` with its stderr on a pseudo-terminal: (exit status, what it showed there)."""
    master, slave = pty.openpty()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "packer.cli", "pack", *args], stderr=slave,
                          stdout=subprocess.PIPE, env=env, cwd=REPO)
    os.close(slave)
    out = b""
    try:
        while chunk := os.read(master, 4096):
            out += chunk
    except OSError:
        pass
    os.close(master)
    return proc.returncode, out
