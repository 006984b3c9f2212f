"""The native stop loop (runtime/tracee/fastloop.c via runtime.tracee.native): built, used, and
giving the answers Python gives, in the cases where its shortcuts could go wrong."""

from __future__ import annotations

import os
import re
import shutil
import sys

import pytest

from conftest import ENGINE_USERS, REPO
from engine_util import carryon_exec

sys.path.insert(0, str(REPO))
from runtime.tracee import native  # noqa: E402

HAVE_CC = shutil.which(os.environ.get("CC") or "cc") is not None
STATS = re.compile(r"native stop loop: (.*)")


def stats_of(stderr: str) -> dict[str, int]:
    m = STATS.search(stderr)
    assert m, f"no native stats in:\n{stderr}"
    return {k: int(v) for k, v in (item.rsplit(" ", 1) for item in m.group(1).split(", "))}


@pytest.mark.skipif(not HAVE_CC, reason="no C compiler: the engine runs its Python loop only")
def test_library_is_built_and_loads():
    """scripts/setup-env.sh builds it where a compiler exists; a stale or missing one is not used."""
    assert os.path.exists(native.LIBRARY), "runtime/tracee/_fastloop.so missing (scripts/setup-env.sh)"
    assert os.stat(native.LIBRARY).st_mtime >= native._newest_source(), "stale library"
    assert native.library() is not None


@pytest.mark.skipif(not HAVE_CC, reason="no C compiler")
def test_build_and_stale_detection(tmp_path, monkeypatch):
    for f in (*native.SOURCES, native.HEADER):
        shutil.copy(f, tmp_path)
    src = tmp_path / "fastport.c"
    lib = tmp_path / "_fastloop.so"
    monkeypatch.setattr(native, "SOURCES", tuple(str(tmp_path / os.path.basename(f)) for f in native.SOURCES))
    monkeypatch.setattr(native, "HEADER", str(tmp_path / "fastloop.h"))
    monkeypatch.setattr(native, "LIBRARY", str(lib))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(native, "_lib", None)
    got = native.library()                          # missing beside the source: built in the cache
    assert got is not None and got.cf_abi() == native.ABI
    assert len(list((tmp_path / "cache" / "carryon" / "native").glob("fastloop-*.so"))) == 1
    native.build(str(lib))
    monkeypatch.setattr(native, "_lib", None)
    assert native.library() is not None
    os.utime(src, (os.stat(lib).st_mtime + 10,) * 2)
    monkeypatch.setattr(native, "_lib", None)
    assert native.library() is None                 # a source changed since: not used
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setenv("CARRYON_NATIVE", "0")
    os.utime(src, (os.stat(lib).st_mtime - 10,) * 2)
    assert native.library() is None                 # turned off
    bad = tmp_path / "bad.c"
    bad.write_text("this is not C\n")
    monkeypatch.setattr(native, "SOURCES", (*native.SOURCES, str(bad)))
    with pytest.raises(OSError, match="failed"):
        native.build(str(tmp_path / "bad.so"))
    assert not (tmp_path / "bad.so").exists()


@pytest.mark.skipif(not HAVE_CC, reason="no C compiler")
def test_stops_are_handled_natively(debian_rootfs):
    """A shell loop: its path stops, fork events, signals, exits and exec checks go through the
    native loop (the counts fail if a bookkeeping slip sends them all back to Python)."""
    script = "trap 'echo trapped' USR1; for i in 1 2 3 4 5; do /bin/true; done; kill -USR1 $$; echo done"
    p = carryon_exec(debian_rootfs, "sh", "-c", script, engine="seccomp", user=ENGINE_USERS[0],
                     opts=("-v", "2"))
    assert p.returncode == 0, p.stderr
    assert p.stdout == "trapped\ndone\n"
    st = stats_of(p.stderr)
    assert st["cached"] >= 10 and st["forks"] >= 5 and st["exits"] >= 5 and st["execs"] >= 5, st
    assert st["signals"] >= 5, st
    p = carryon_exec(debian_rootfs, "sh", "-c", script, engine="seccomp-python", user=ENGINE_USERS[0],
                     opts=("-v", "2"))
    assert p.returncode == 0 and p.stdout == "trapped\ndone\n", p.stderr
    assert not STATS.search(p.stderr)


SCRIPT = r"""
set -e
d=$1
mkdir -p $d/a
echo one > $d/a/f
cat $d/a/f $d/a/f
# the last component a symlink: followed for open, not for lstat/readlink, asked twice each
ln -s $d/a/f $d/ln
cat $d/ln; cat $d/ln
stat -c %F $d/ln; stat -c %F $d/ln; readlink $d/ln; test -L $d/ln && echo is-link
stat -L -c %F /lib64/ld-linux-x86-64.so.2; stat -c %F /lib64/ld-linux-x86-64.so.2
# a relative name that is a symlink (absolute target: in the guest)
cd $d && cat ln && cd /
# a directory renamed away and replaced, then replaced by a symlink
mv $d/a $d/b
mkdir $d/a; echo two > $d/a/f
cat $d/a/f
rm -r $d/a; ln -s $d/b $d/a
cat $d/a/f
# a missing name seen, then made a symlink
cat $d/late 2>/dev/null || echo missing
ln -s $d/b/f $d/late
cat $d/late
# exec errors: the native exec check sees the same program go on
/nonexistent-cmd 2>/dev/null || echo "rc $?"
printf 'x\n' > $d/noexec; $d/noexec 2>/dev/null || echo "rc $?"
sh -c 'exit 3' || echo "rc $?"
echo "$(echo sub)"
# a name behind a directory without search permission (non-root: EACCES), then allowed: a symlink
mkdir $d/locked; ln -s $d/b/f $d/locked/link; chmod 000 $d/locked
cat $d/locked/link 2>/dev/null || echo denied; cat $d/locked/link 2>/dev/null || echo denied
chmod 755 $d/locked; cat $d/locked/link
# a path through /proc/self/cwd is the calling process's
mkdir $d/pa $d/pb; echo A > $d/pa/f; echo B > $d/pb/f; ln -s /proc/self/cwd $d/here
(cd $d/pa && cat $d/here/f && cat $d/here/f); (cd $d/pb && cat $d/here/f)
# a bind point in a directory known from the image's tree: the bind's file, every time
cat /etc/debian_version >/dev/null; cat /etc/carryon-bound; cat /etc/carryon-bound
"""
EXPECTED = ["one", "one", "one", "one", "symbolic link", "symbolic link", "{d}/a/f", "is-link",
            "regular file", "symbolic link", "one", "two", "one", "missing", "one", "rc 127",
            "rc 126", "rc 3", "sub", "{denied}", "{denied}", "one", "A", "A", "B", "bound", "bound"]


@pytest.mark.parametrize("engine", ["seccomp", "seccomp-python", "ptrace"])
@pytest.mark.parametrize("user", ENGINE_USERS)
def test_same_answers_as_python(debian_rootfs, engine, user):
    """Cases where a cached answer or a skipped look would be wrong. The same absolute paths exist
    on the host with other contents: an answer taken there shows."""
    d = f"/tmp/carryon-native-{engine}-{user}-{os.getpid()}"
    os.makedirs(f"{d}/a", exist_ok=True)
    os.makedirs(f"{d}/b", exist_ok=True)
    os.makedirs(f"{d}/locked", exist_ok=True)
    for f in ("a/f", "b/f", "late", "locked/link"):
        with open(f"{d}/{f}", "w") as fh:
            fh.write("HOST\n")
    try:
        with open(f"{d}/bound", "w") as fh:
            fh.write("bound\n")
        os.chmod(f"{d}/bound", 0o644)
        p = carryon_exec(debian_rootfs, "sh", "-c", SCRIPT, "sh", d, engine=engine, user=user,
                         opts=("-b", f"{d}/bound:/etc/carryon-bound"))
        assert p.returncode == 0, p.stderr
        denied = "one" if user == "root" else "denied"     # root searches any directory
        assert p.stdout.splitlines() == [e.format(d=d, denied=denied) for e in EXPECTED]
    finally:
        shutil.rmtree(d, ignore_errors=True)


BURST = ("import os, time; print('go', flush=True); "
         "[os.stat('/etc/debian_version') for _ in range(300000)]; time.sleep(60)")


def _tgkill(tgid: int, tid: int, sig: int) -> None:
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(234, tgid, tid, sig) != 0:              # tgkill (x86_64)
        raise OSError(ctypes.get_errno(), "tgkill")


@pytest.mark.parametrize("engine", ["seccomp", "seccomp-python"])
def test_sigterm_during_native_work_reaches_the_guest(debian_rootfs, engine):
    """SIGTERM for the tracer while the native loop is busy answering stops, the guest then idle:
    its Python handler (which forwards it) must still run soon (the native loop's tick), not when
    the guest happens to stop for Python again (here: never, for 60 s). The signal is sent to the
    tracer's other thread (CPU placement's) where there is one: the kernel may pick that thread
    for a signal to the process, and then the main thread's wait is not interrupted at all."""
    import signal
    import subprocess
    import time

    from engine_util import popen_exec
    for _ in range(3):
        p = popen_exec(debian_rootfs, "python3", "-c", BURST, engine=engine, user=ENGINE_USERS[0],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert p.stdout.readline() == "go\n"
        time.sleep(0.3)                             # in the middle of the stat burst
        others = [int(t) for t in os.listdir(f"/proc/{p.pid}/task") if int(t) != p.pid]
        if others:
            _tgkill(p.pid, others[0], signal.SIGTERM)
        else:
            p.send_signal(signal.SIGTERM)
        try:
            rc = p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            pytest.fail("SIGTERM was not forwarded while the guest was idle")
        finally:
            p.stdout.close()
            p.stderr.close()
        assert rc == 128 + signal.SIGTERM


def test_too_many_bind_names_for_the_native_loop_fall_back_to_python(debian_rootfs, tmp_path):
    """Bind point names beyond the native loop's room: the run goes on with Python's loop alone."""
    src = tmp_path / "src"
    src.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chmod(src, 0o755)
    base = f"/tmp/carryon-many-{os.getpid()}"
    opts = ["-v", "2"]
    for i in range(30):
        opts += ["-b", f"{src}:{base}/{'n' * 80}{i}"]
    p = carryon_exec(debian_rootfs, "sh", "-c", f"ls -d {base}/*0 | wc -l; /bin/true", engine="seccomp",
                     user=ENGINE_USERS[0], opts=tuple(opts))
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["3"]
    assert not STATS.search(p.stderr)
