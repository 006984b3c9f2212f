"""Real programs under the engine: debian-python and busybox-multilayer rootfs trees, both engines,
as root and as the unprivileged test user."""

from __future__ import annotations

import os
import re

import pytest

from engine_util import carryon_exec, native_as, world_dir


def run_ok(rootfs, *args, engine, user, **kw):
    p = carryon_exec(rootfs, *args, engine=engine, user=user, **kw)
    assert p.returncode == 0, f"rc={p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    return p


def test_fib(debian_rootfs, engine, user):
    p = run_ok(debian_rootfs, "python3", "/app/fib.py", "25", engine=engine, user=user)
    assert p.stdout == "fib(25) = 75025\n"


STDLIB = r"""
import json, sqlite3, ssl, subprocess, asyncio, threading, multiprocessing, hashlib, os, sys
assert json.loads(json.dumps({"a": [1, 2]})) == {"a": [1, 2]}
db = sqlite3.connect("/tmp/t-%d.db" % os.getpid())
db.execute("create table t (x)"); db.executemany("insert into t values (?)", [(i,) for i in range(100)])
assert db.execute("select sum(x) from t").fetchone()[0] == 4950
db.close(); os.unlink("/tmp/t-%d.db" % os.getpid())
ctx = ssl.create_default_context()
assert ctx.verify_mode == ssl.CERT_REQUIRED
out = subprocess.run(["sh", "-c", "echo sub $0", "x"], capture_output=True, text=True).stdout
assert out == "sub x\n", out
with multiprocessing.Pool(4) as pool:
    assert pool.map(abs, range(-50, 50)) == [abs(i) for i in range(-50, 50)]
async def job(i):
    await asyncio.sleep(0.01)
    return i * 2
async def main():
    return await asyncio.gather(*(job(i) for i in range(10)))
assert asyncio.run(main()) == [i * 2 for i in range(10)]
res = []
ts = [threading.Thread(target=lambda i=i: res.append(hashlib.sha256(b"%d" % i).hexdigest())) for i in range(8)]
[t.start() for t in ts]; [t.join() for t in ts]
assert len(res) == 8
print("stdlib ok", sys.executable)
"""


def test_python_stdlib(debian_rootfs, engine, user):
    p = run_ok(debian_rootfs, "python3", "-c", STDLIB, engine=engine, user=user)
    assert p.stdout == "stdlib ok /usr/bin/python3\n"


def test_sh_pipelines(debian_rootfs, engine, user):
    p = run_ok(debian_rootfs, "sh", "-c", "seq 1 100 | grep 7 | wc -l; echo a b c | tr ' ' '\\n' | sort -r | head -1",
               engine=engine, user=user)
    assert p.stdout == "19\nc\n"


def test_dpkg_list(debian_rootfs, engine, user):
    p = run_ok(debian_rootfs, "dpkg", "-l", engine=engine, user=user)
    assert re.search(r"^ii\s+python3\s", p.stdout, re.M)
    assert re.search(r"^ii\s+libc6:amd64\s", p.stdout, re.M)


def test_find_xdev_counts_the_tree(debian_rootfs, engine, user):
    p = carryon_exec(debian_rootfs, "sh", "-c", "find / -xdev 2>/dev/null | wc -l", engine=engine,
                     user=user)
    native = native_as(user, ["sh", "-c", f"find {debian_rootfs} -xdev 2>/dev/null | wc -l"])
    assert p.returncode == 0, p.stderr
    assert int(p.stdout) == int(native.stdout) > 5000


def test_ls_proc_self_fd(debian_rootfs, engine, user):
    p = run_ok(debian_rootfs, "sh", "-c", "ls -l /proc/self/fd; readlink /proc/self/exe /proc/self/root",
               engine=engine, user=user)
    assert re.search(r" 0 -> ", p.stdout) and re.search(r" 2 -> ", p.stdout)
    assert re.search(r" 3 -> /proc/\d+/fd$", p.stdout, re.M), p.stdout
    assert p.stdout.endswith("/usr/bin/readlink\n/\n")
    assert str(debian_rootfs) not in p.stdout


def test_pwd_through_symlink(debian_rootfs, engine, user):
    p = run_ok(debian_rootfs, "sh", "-c", "cd /bin && pwd && pwd -P && cd -P .. && pwd && /bin/pwd",
               engine=engine, user=user)
    assert p.stdout == "/bin\n/usr/bin\n/usr\n/usr\n"


def test_cwd_option_and_getcwd(debian_rootfs, engine, user):
    p = run_ok(debian_rootfs, "python3", "-c", "import os; print(os.getcwd()); os.chdir('..'); print(os.getcwd())",
               engine=engine, user=user, opts=("-w", "/usr/share"))
    assert p.stdout == "/usr/share\n/usr\n"


def test_cwd_defaults_to_the_callers_like_proot(debian_rootfs, engine_tmp, engine, user):
    """No -w: the caller's directory when the guest has it (through binds too), else / (silently);
    a relative -w is joined to it; `-b .` binds the caller's directory at its own path."""
    here = world_dir(engine_tmp, "caller-cwd")
    (here / "sub").mkdir(exist_ok=True)
    outside = world_dir(engine_tmp, "not-in-guest")
    show = ("sh", "-c", "pwd; /bin/pwd")
    p = run_ok(debian_rootfs, *show, engine=engine, user=user, cwd="/usr/share")
    assert (p.stdout, p.stderr) == ("/usr/share\n" * 2, "")
    p = run_ok(debian_rootfs, *show, engine=engine, user=user, cwd=outside)
    assert (p.stdout, p.stderr) == ("/\n" * 2, "")
    p = run_ok(debian_rootfs, *show, engine=engine, user=user, cwd=here, opts=("-b", "."))
    assert (p.stdout, p.stderr) == (f"{here}\n" * 2, "")
    p = run_ok(debian_rootfs, *show, engine=engine, user=user, cwd=here, opts=("-b", ".", "-w", "sub"))
    assert p.stdout == f"{here}/sub\n" * 2
    p = run_ok(debian_rootfs, *show, engine=engine, user=user, cwd="/usr", opts=("-w", "share"))
    assert p.stdout == "/usr/share\n" * 2


def test_root_defaults_to_slash_and_a_bind_on_slash_is_the_root(debian_rootfs, engine_tmp, engine, user):
    """PRoot's: no -r is `-r /`; `-b X:/` makes X the root (the last of -r/-R/-b X:/ wins)."""
    here = world_dir(engine_tmp, "caller-cwd")
    p = run_ok(None, "/bin/sh", "-c", "pwd; test -f /app/fib.py || echo host", engine=engine, user=user,
               cwd=here)
    assert p.stdout == f"{here}\nhost\n"
    p = run_ok(None, "python3", "/app/fib.py", "10", engine=engine, user=user,
               opts=("-b", f"{debian_rootfs}:/"))
    assert p.stdout == "fib(10) = 55\n"
    p = run_ok(None, "sh", "-c", "test -f /app/fib.py || echo host", engine=engine, user=user,
               opts=("-b", f"{debian_rootfs}:/", "-r", "/"))
    assert p.stdout == "host\n"


def test_proc_self_exe_and_argv0(debian_rootfs, engine, user):
    code = ("import os, sys; print(os.readlink('/proc/self/exe'), sys.orig_argv[0], flush=True);"
            "os.execv('/usr/bin/python3', ['my-name', '-c', 'import sys, os; "
            "print(sys.orig_argv[0], os.readlink(\"/proc/self/exe\"))'])")
    p = run_ok(debian_rootfs, "python3", "-c", code, engine=engine, user=user)
    assert p.stdout == "/usr/bin/python3.11 python3\nmy-name /usr/bin/python3.11\n"


SCRIPTS = {
    "plain": ("#!/bin/sh\necho plain \"$0\" \"$@\"\n", 0o755),
    "witharg": ("#!/bin/sh -e\necho witharg \"$0\" \"$@\"\n", 0o755),
    "nested": ("#!/work/plain\n", 0o755),
    "py": ("#!/usr/bin/env python3\nimport sys; print('py', sys.argv)\n", 0o755),
    "missing": ("#!/no/such/interpreter\n", 0o755),
    "noexec": ("#!/bin/sh\necho never\n", 0o644),
    "garbage": ("this is not a program\n", 0o755),
}

SCRIPT_CHECK = r"""
import errno, subprocess, os
for name in ["plain", "witharg", "nested", "py"]:
    print(subprocess.run(["/work/" + name, "a b", "c"], capture_output=True, text=True).stdout, end="")
for name in ["missing", "noexec", "garbage", "", "nosuchfile"]:
    try:
        os.execv("/work/" + name, ["x"])
    except OSError as e:
        print(name or "dir", errno.errorcode[e.errno])
"""


def test_exec_scripts_and_errors(debian_rootfs, engine_tmp, engine, user):
    work = world_dir(engine_tmp, f"scripts-{engine}-{user}")
    for name, (text, mode) in SCRIPTS.items():
        path = work / name
        path.write_text(text)
        os.chmod(path, mode)
    p = run_ok(debian_rootfs, "python3", "-c", SCRIPT_CHECK, engine=engine, user=user,
               opts=("-b", f"{work}:/work"))
    assert p.stdout.splitlines() == [
        "plain /work/plain a b c",
        "witharg /work/witharg a b c",
        "plain /work/plain /work/nested a b c",
        "py ['/work/py', 'a b', 'c']",
        "missing ENOENT",
        "noexec EACCES",
        "garbage ENOEXEC",
        "dir EACCES",
        "nosuchfile ENOENT",
    ]


LONG_SHEBANGS = {      # #! lines at the kernel's limits (Linux >= 5.1: 256 bytes, the line <= 255)
    "l200": b"#!/bin/echo " + b"a" * 188 + b"\n",
    "l254": b"#!/bin/echo " + b"b" * 242 + b"\n",
    "cut": b"#!/bin/echo " + b"c" * 300 + b"\n",
    "pad200": b"#!" + b" " * 190 + b"/bin/echo x\n",
    "nameend": b"#!" + b" " * 244 + b"/bin/echo x\n",
    "namecut": b"#!" + b" " * 245 + b"/bin/echo x\n",
    "nul": b"#!/bin/echo a\0b\n",
    "nulname": b"#!/bin/echo\0junk\n",
}

SHEBANG_CHECK = r"""
import errno, subprocess, sys
for name in sys.argv[2:]:
    try:
        print(name, subprocess.run([sys.argv[1] + "/" + name], capture_output=True).stdout)
    except OSError as e:
        print(name, errno.errorcode[e.errno])
"""


def test_long_and_odd_shebang_lines_like_the_kernel(debian_rootfs, engine_tmp, engine, user):
    work = world_dir(engine_tmp, "long-shebangs")
    for name, text in LONG_SHEBANGS.items():
        (work / name).write_bytes(text)
        os.chmod(work / name, 0o755)
    want = native_as(user, ["python3", "-c", SHEBANG_CHECK, str(work), *LONG_SHEBANGS])
    assert want.returncode == 0 and "l200 b'" + "a" * 188 in want.stdout and "namecut ENOEXEC" in want.stdout
    p = run_ok(debian_rootfs, "python3", "-c", SHEBANG_CHECK, str(work), *LONG_SHEBANGS, engine=engine,
               user=user, opts=("-b", f"{work}:{work}"))
    assert p.stdout == want.stdout


def test_exit_codes(debian_rootfs, engine, user):
    assert carryon_exec(debian_rootfs, "sh", "-c", "exit 42", engine=engine, user=user).returncode == 42
    assert carryon_exec(debian_rootfs, "sh", "-c", "kill -TERM $$", engine=engine, user=user).returncode == 143
    p = carryon_exec(debian_rootfs, "no-such-command", engine=engine, user=user)
    assert p.returncode == 127 and len(p.stderr.splitlines()) == 1 and "no-such-command" in p.stderr
    p = carryon_exec(debian_rootfs, "/etc/passwd", engine=engine, user=user)
    assert p.returncode == 126 and len(p.stderr.splitlines()) == 1
    p = carryon_exec(debian_rootfs, "/etc", engine=engine, user=user)
    assert p.returncode == 126
    p = carryon_exec(debian_rootfs, "true", engine=engine, user=user, opts=("--no-such-flag",))
    assert p.returncode == 125 and len(p.stderr.splitlines()) == 1
    p = carryon_exec(debian_rootfs, "true", engine=engine, user=user, opts=("-b", "/no/such/source:/x"))
    assert p.returncode == 125 and "/no/such/source" in p.stderr
    p = carryon_exec("/no/such/rootfs", "true", engine=engine, user=user)
    assert p.returncode == 125 and len(p.stderr.splitlines()) == 1


def test_command_looked_up_in_guest_path(debian_rootfs, engine, user):
    # dpkg-query exists in the guest only (the host has it too, but at a path the guest PATH
    # resolves inside the rootfs): the guest's own file must run
    p = run_ok(debian_rootfs, "sh", "-c", "command -v python3", engine=engine, user=user)
    assert p.stdout == "/usr/bin/python3\n"
    p = carryon_exec(debian_rootfs, "python3", "-c", "print(1)", engine=engine, user=user,
                     env={"PATH": "/nowhere"})
    assert p.returncode == 127


ENTRY_OPS = r"""
import errno, os, sys
os.makedirs(sys.argv[1], exist_ok=True)
os.chdir(sys.argv[1])
os.makedirs("e", exist_ok=True)
ops = {"rmdir": os.rmdir, "mkdir": os.mkdir, "unlink": os.unlink, "rename": lambda p: os.rename(p, "z")}
for op, p in (("rmdir", "e/./"), ("rmdir", "e/.//"), ("rmdir", "./e/./"), ("mkdir", "e/./"), ("unlink", "e/./"),
              ("rename", "e/./"), ("rmdir", "e/.")):
    try:
        ops[op](p)
        print(op, p, "ok")
    except OSError as e:
        print(op, p, errno.errorcode[e.errno])
print(os.path.isdir("e"))
"""


def test_entry_calls_on_dir_dot_slash_answer_like_the_kernel(debian_rootfs, engine_tmp, engine, user):
    """`rmdir d/./` is rmdir of `d/.` for the kernel: EINVAL, d stays (so are mkdir/unlink/rename)."""
    host = world_dir(engine_tmp, f"entry-ops-{engine}-{user}")
    want = native_as(user, ["python3", "-c", ENTRY_OPS, str(host)])
    assert want.returncode == 0 and "rmdir e/./ EINVAL" in want.stdout, want.stdout + want.stderr
    p = run_ok(debian_rootfs, "python3", "-c", ENTRY_OPS, f"/tmp/entry-ops-{engine}-{user}", engine=engine,
               user=user)
    assert p.stdout == want.stdout


def test_binds_readonly_and_missing_guest_path(debian_rootfs, engine_tmp, engine, user):
    src = world_dir(engine_tmp, f"ro-{engine}-{user}")
    (src / "data.txt").write_text("bound\n")
    os.chmod(src / "data.txt", 0o666)
    rw = world_dir(engine_tmp, f"rw-{engine}-{user}")
    p = carryon_exec(debian_rootfs, "sh", "-c",
                     "cat /mnt/new/ro/data.txt; echo x > /mnt/new/ro/data.txt; echo rc=$?;"
                     "mkdir /mnt/new/ro/d; echo rc=$?; echo w > /srv/rw/f && cat /srv/rw/f",
                     engine=engine, user=user,
                     opts=("-b", f"{src}:/mnt/new/ro:ro", "-b", f"{rw}:/srv/rw"))
    assert p.stdout == "bound\nrc=2\nrc=1\nw\n", p.stderr
    assert "Read-only file system" in p.stderr
    assert (src / "data.txt").read_text() == "bound\n"
    assert (rw / "f").read_text() == "w\n"


def test_unix_socket_paths(debian_rootfs, engine_tmp, engine, user):
    work = world_dir(engine_tmp, f"sock-{engine}-{user}")
    code = r"""
import socket, os, threading
path = "/work/s.sock"
srv = socket.socket(socket.AF_UNIX); srv.bind(path); srv.listen(1)
def serve():
    c, _ = srv.accept(); c.sendall(c.recv(10).upper()); c.close()
th = threading.Thread(target=serve); th.start()
cl = socket.socket(socket.AF_UNIX); cl.connect(path); cl.sendall(b"hello"); print(cl.recv(10).decode())
th.join(); print(os.path.exists(path))
"""
    p = run_ok(debian_rootfs, "python3", "-c", code, engine=engine, user=user, opts=("-b", f"{work}:/work"))
    assert p.stdout == "HELLO\nTrue\n"
    assert (work / "s.sock").exists()


def test_busybox_entrypoint(busybox_rootfs, shared_images, engine, user):
    if engine == "userns":
        pytest.skip("-i 1000:1000 over an image whose files the extraction recorded as root's: the "
                    "userns rung is not eligible (auto takes a ptrace rung)")
    env = {"VAR": "hello world", "EQ": "a=b=c", "EMPTY": "",
           "PATH": "/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"}
    p = carryon_exec(busybox_rootfs, "/app/entrypoint.sh", "hello", "from cmd", engine=engine, user=user,
                     opts=("-i", "1000:1000", "-w", "/home/app"), env=env)
    expected = (shared_images / "busybox-multilayer" / "EXPECTED-run.txt").read_text()
    assert p.returncode == 0, p.stderr
    assert p.stdout == expected


def test_busybox_applets(busybox_rootfs, engine, user):
    p = run_ok(busybox_rootfs, "sh", "-c",
               "echo $((6*7)); ls /app; readlink /edge/abs-symlink; cat /edge/rel-symlink | head -1;"
               "cat /edge/escape-symlink | head -1; basename $(readlink -f /bin/sh)",
               engine=engine, user=user, defaults=False)
    lines = p.stdout.splitlines()
    assert lines[0] == "42" and lines[1] == "entrypoint.sh" and lines[2] == "/etc/passwd"
    assert lines[3].startswith("root:") and lines[4].startswith("root:")   # the guest's files
    assert lines[5] == "busybox"


def test_no_room_below_the_stack_pointer(debian_rootfs, engine_tmp, engine, user):
    """A call made with nothing mapped below the stack pointer (Linux >= 6.5 no longer grows a
    stack for the tracer's write): the tracee gets its own scratch area and the call still works."""
    import shutil
    import subprocess
    from pathlib import Path
    if shutil.which("gcc") is None:
        pytest.skip("no C compiler")
    work = world_dir(engine_tmp, "lowstack")
    exe = work / "lowstack"
    if not exe.exists():
        src = Path(__file__).parent / "data" / "engine_lowstack.c"
        subprocess.run(["gcc", "-O1", "-o", str(exe), str(src)], check=True)
        os.chmod(exe, 0o755)
    p = run_ok(debian_rootfs, "/work/lowstack", engine=engine, user=user, opts=("-b", f"{work}:/work"))
    assert p.stdout == "stat=0\nstat=0\nstat=0\n"
