"""What the guest sees where PRoot and carryon used to differ (issue #17): /proc/self without a
/proc bind, missing ancestors of bind points, symlinks and working directories in binds, AF_UNIX
names. Every engine (seccomp with and without the native loop, ptrace), as root and as the
unprivileged test user."""

from __future__ import annotations

import glob
import os
import socket

import pytest

from engine_util import carryon_exec, world_dir


def run_ok(rootfs, *args, **kw):
    p = carryon_exec(rootfs, *args, **kw)
    assert p.returncode == 0, f"rc={p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    return p


def test_proc_self_is_the_guest_without_a_proc_bind(engine, user):
    """`-r /` binds nothing, yet /proc is the host's: /proc/self is the guest process (PRoot
    answers it so), not the tracer that opens paths on its behalf."""
    code = ("import os; os.chdir('/usr'); print(os.getpid() == int(open('/proc/self/stat').read()"
            ".split()[0]), os.readlink('/proc/self/exe'), os.readlink('/proc/self/cwd'),"
            " os.readlink('/proc/self/fd/0')[:5], open('/proc/self/cmdline').read().split('\\0')[-2])")
    p = run_ok("/", "/usr/bin/python3", "-c", code, "ARG", engine=engine, user=user, defaults=False,
               input="")
    assert p.stdout.split() == ["True", os.path.realpath("/usr/bin/python3"), "/usr", "pipe:",
                                "ARG"], p.stderr


def test_missing_bind_ancestors_are_directories(debian_rootfs, engine_tmp, engine, user):
    """`-b X:/a/b/c` with no /a in the image (an --overlay run leaves the image as it is, so the
    points stay missing for root too) and `-b /:/hostfs -w /hostfs`."""
    if engine == "userns" and user not in ("root", "self"):
        pytest.skip("userns: an overlay over another user's rootfs (root's) is not eligible")
    src = world_dir(engine_tmp, f"glue-{engine}-{user}")
    (src / "f").write_text("in bind\n")
    state = world_dir(engine_tmp, f"glue-state-{engine}-{user}") / "s"
    scratch = set(glob.glob("/tmp/carryon-s-*"))
    p = run_ok(debian_rootfs, "sh", "-c",
               "ls /a; ls /a/b; stat -c '%F %n' /a /a/b; cat /a/b/c/f; cd /a/b && pwd && cd c && "
               "/bin/pwd && ls .. && cd /hostfs/etc && /bin/pwd",
               engine=engine, user=user, defaults=False,
               opts=("--overlay", str(state), "-b", f"{src}:/a/b/c", "-b", "/:/hostfs"))
    assert p.stdout == ("b\nc\ndirectory /a\ndirectory /a/b\nin bind\n/a/b\n/a/b/c\nc\n"
                        "/hostfs/etc\n"), p.stderr
    p = run_ok(debian_rootfs, "sh", "-c", "pwd; /bin/pwd; cat /hostfs/etc/hostname",
               engine=engine, user=user, defaults=False,
               opts=("--overlay", str(state), "-b", "/:/hostfs", "-w", "/hostfs"))
    with open("/etc/hostname") as f:
        assert p.stdout == "/hostfs\n/hostfs\n" + f.read(), p.stderr
    assert not (debian_rootfs / "a").exists() and not (debian_rootfs / "hostfs").exists()
    assert set(glob.glob("/tmp/carryon-s-*")) <= scratch        # the glue is gone with the run


def test_symlinks_and_cwd_in_binds(debian_rootfs, engine_tmp, engine, user):
    """readlink of an absolute symlink in a bind reads the guest's path; with one host directory
    bound twice (or the rootfs bound into itself), the working directory has the name the process
    entered it by."""
    src = world_dir(engine_tmp, f"twice-{engine}-{user}")
    (src / "sub").mkdir(exist_ok=True)
    os.chmod(src / "sub", 0o777)
    if not (src / "abs").is_symlink():
        os.symlink(f"{src}/sub", src / "abs")
    p = run_ok(debian_rootfs, "sh", "-c",
               "readlink /mnt/abs; /bin/pwd; pwd -P; cd /mnt/sub && /bin/pwd; cd /srv/sub && "
               "pwd -P && /bin/pwd; cd .. && /bin/pwd; readlink /proc/self/cwd",
               engine=engine, user=user, opts=("-b", f"{src}:/mnt", "-b", f"{src}:/srv", "-w", "/srv"))
    # a real bind mount (userns) shows a symlink's own target, as Docker does; the ptrace rungs
    # translate it back to a guest path
    first = f"{src}/sub" if engine == "userns" else "/mnt/sub"
    assert p.stdout == first + "\n/srv\n/srv\n/mnt/sub\n/srv/sub\n/srv/sub\n/srv\n/srv\n", p.stderr
    p = run_ok(debian_rootfs, "sh", "-c", "bash -c pwd; cd .; pwd -P; cd /usr && /bin/pwd",
               engine=engine, user=user, opts=("-b", f"{debian_rootfs}:/mnt", "-w", "/mnt"))
    assert p.stdout == "/mnt\n/mnt\n/usr\n", p.stderr


SOCKET_CODE = r"""
import os, socket, sys
path, client = sys.argv[1], sys.argv[2]
srv = socket.socket(socket.AF_UNIX); srv.bind(path); srv.listen(1)
cl = socket.socket(socket.AF_UNIX); cl.bind(client); cl.connect(path)
conn, peer = srv.accept()
print(srv.getsockname(), cl.getpeername(), peer, cl.getsockname(), conn.getpeername())
cl.sendall(b"hi"); print(conn.recv(2).decode())
for s in (cl, conn, srv):
    s.close()
os.unlink(path); os.unlink(client)
"""


def test_unix_socket_names_are_the_guests(debian_rootfs, engine_tmp, engine, user):
    """getsockname/getpeername/accept give the guest's path back, and a path short in the guest
    but longer than sun_path (108 bytes) once translated still binds and connects."""
    long = world_dir(world_dir(engine_tmp, f"unix-{engine}-{user}"), "L" * 100)
    assert len(f"{long}/server.sock") > 108
    p = run_ok(debian_rootfs, "python3", "-c", SOCKET_CODE, "/s/server.sock", "/s/client.sock",
               engine=engine, user=user, opts=("-b", f"{long}:/s"))
    assert p.stdout.split("\n") == ["/s/server.sock /s/server.sock /s/client.sock /s/client.sock "
                                    "/s/client.sock", "hi", ""], p.stderr
    assert os.listdir(long) == []
    # a host server reached through a bind: its name is the guest's path too
    short = world_dir(engine_tmp, f"hs-{engine}-{user}")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(f"{short}/host.sock")
    os.chmod(f"{short}/host.sock", 0o777)
    srv.listen(1)
    try:
        p = run_ok(debian_rootfs, "python3", "-c",
                   "import socket; c = socket.socket(socket.AF_UNIX); c.connect('/h/host.sock');"
                   " print(c.getpeername())", engine=engine, user=user, opts=("-b", f"{short}:/h"))
        # userns: the kernel gives the name the host server bound (as in Docker); the ptrace
        # rungs translate it to the guest's path
        assert p.stdout == (f"{short}/host.sock\n" if engine == "userns" else "/h/host.sock\n"), p.stderr
    finally:
        srv.close()
        os.unlink(f"{short}/host.sock")
