"""Job control under the engine (issue #17): a guest stopped by SIGSTOP/SIGTSTP/SIGTTIN/SIGTTOU
stays stopped until SIGCONT, as natively; its parent's waitpid sees both; Ctrl-Z and `fg` in an
interactive shell work; a stopped guest blocks neither the tracer nor the other guests; and the
tracer shows as `carryon` on the host; stopped guests left in an orphaned group are hung up.

Under ptrace a kept stop is a ptrace stop: /proc says `t (tracing stop)` where natively it says
`T (stopped)` (see runtime.tracee.loop), so both count as stopped here; a guest that runs on says
`S` or `R`."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import time

import pytest

from engine_util import exec_cmd, exec_env, popen_exec, world_dir

STOPPED = ("T (stopped)", "t (tracing stop)")


# The guest: a child with two threads writing to a pipe, in its own process group (so that the
# terminal stop signals sent by kill are not discarded as for an orphaned group), stopped and
# continued with each stop signal, then stopped and killed. One line per step.
GUEST = r"""
import os, signal, sys, threading, time
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(r)
    os.setpgid(0, 0)
    def write(b):
        while True:
            os.write(w, b)
            time.sleep(0.005)
    threading.Thread(target=write, args=(b"t",), daemon=True).start()
    write(b"m")
os.close(w)
try:
    os.setpgid(pid, pid)
except OSError:
    pass
os.set_blocking(r, False)
def drain():
    n = 0
    while True:
        try:
            b = os.read(r, 65536)
        except BlockingIOError:
            return n
        n += len(b)
def written(t):
    drain()
    time.sleep(t)
    return drain()
def state():
    with open(f"/proc/{pid}/status") as f:
        return next(l.split(":", 1)[1].strip() for l in f if l.startswith("State:"))
time.sleep(0.2)
for sig in (signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU):
    print("running", written(0.1) > 0, flush=True)
    os.kill(pid, sig)
    _, st = os.waitpid(pid, os.WUNTRACED)
    print("waitpid stopped", os.WIFSTOPPED(st) and os.WSTOPSIG(st) == sig, flush=True)
    print("state", state(), flush=True)
    print("written while stopped", written(0.3), flush=True)
    os.kill(pid, signal.SIGCONT)
    _, st = os.waitpid(pid, os.WCONTINUED)
    print("waitpid continued", os.WIFCONTINUED(st), flush=True)
print("running", written(0.1) > 0, flush=True)
os.kill(pid, signal.SIGSTOP)
os.waitpid(pid, os.WUNTRACED)
os.kill(pid, signal.SIGKILL)
_, st = os.waitpid(pid, 0)
print("killed", os.WIFSIGNALED(st) and os.WTERMSIG(st) == signal.SIGKILL, flush=True)
"""


def test_stopped_child_stays_stopped_until_continued(debian_rootfs, engine, user):
    p = popen_exec(debian_rootfs, "python3", "-c", GUEST, engine=engine, user=user,
                   stdout=-1, stderr=-1)
    try:
        out, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 0, err
    lines = out.splitlines()
    steps = ["running True", "waitpid stopped True", "state", "written while stopped 0",
             "waitpid continued True"] * 4 + ["running True", "killed True"]
    assert len(lines) == len(steps), out
    for got, want in zip(lines, steps):
        if want == "state":
            assert got.split(" ", 1)[1] in STOPPED, out
        else:
            assert got == want, out


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("State:"))
    except (OSError, StopIteration):
        return ""


def _until(cond, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return False


def test_stopped_main_process_neither_ends_nor_blocks_the_run(debian_rootfs, engine, user, engine_tmp):
    # the main process stops itself; a background guest goes on meanwhile; the run goes on until
    # the host continues it, then ends as usual
    out_dir = world_dir(engine_tmp, f"jobctl-main-{engine}-{user}")
    count = out_dir / "count"
    count.unlink(missing_ok=True)
    script = ("i=0; (while :; do i=$((i+1)); echo $i > /out/count; sleep 0.02; done) & bg=$!; "
              "echo $$; kill -STOP $$; echo resumed; kill $bg")
    p = popen_exec(debian_rootfs, "sh", "-c", script, engine=engine, user=user,
                   opts=("-b", f"{out_dir}:/out"), stdout=-1, stderr=-1)
    try:
        main = int(p.stdout.readline())
        assert _until(lambda: _state(main) in STOPPED), _state(main)
        assert _until(lambda: count.exists() and count.read_text().strip() != "")
        first = int(count.read_text() or 0)
        assert _until(lambda: int(count.read_text() or 0) > first + 5), "other guests must go on"
        assert p.poll() is None and _state(main) in STOPPED
        assert _state(p.pid)[0] in "SR", "the tracer must not be stopped"
        os.kill(main, signal.SIGCONT)
        out, err = p.communicate(timeout=30)
    finally:
        p.kill()
    assert p.returncode == 0, err
    assert out == "resumed\n", err


def test_sigkill_of_a_stopped_main_process(debian_rootfs, engine, user):
    p = popen_exec(debian_rootfs, "sh", "-c", "echo $$; kill -STOP $$; echo resumed", engine=engine,
                   user=user, stdout=-1, stderr=-1)
    try:
        main = int(p.stdout.readline())
        assert _until(lambda: _state(main) in STOPPED), _state(main)
        os.kill(main, signal.SIGKILL)
        out, err = p.communicate(timeout=30)
    finally:
        p.kill()
    assert p.returncode == 128 + signal.SIGKILL, err
    assert out == ""


class Terminal:
    """`argv` run as `user` on a new pseudo-terminal (its controlling terminal), read with expect()."""

    def __init__(self, argv: list[str], env: dict, user: str) -> None:
        ids = None
        if user not in ("root", "self"):
            import pwd
            pw = pwd.getpwnam(user)
            ids = (pw.pw_uid, pw.pw_gid)
        pid, fd = pty.fork()
        if pid == 0:
            try:
                os.chdir("/tmp")
                if ids is not None:
                    os.setgroups([])
                    os.setgid(ids[1])
                    os.setuid(ids[0])
                os.execve(argv[0], argv, env)
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        self.seen = ""          # everything read since the last expect() matched

    def send(self, data: bytes) -> None:
        os.write(self.fd, data)

    def read(self, seconds: float) -> str:
        """What comes within `seconds`."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            if not self._read_some(left):
                break
        got, self.seen = self.seen, ""
        return got

    def expect(self, pattern: str, timeout: float = 20.0) -> str:
        """Read until `pattern` (a regex) shows; what was read up to the match's end."""
        end = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.seen)
            if m:
                got, self.seen = self.seen[:m.end()], self.seen[m.end():]
                return got
            left = end - time.monotonic()
            if left <= 0 or not self._read_some(left):
                raise AssertionError(f"no {pattern!r} in {self.seen!r}")

    def _read_some(self, timeout: float) -> bool:
        r, _, _ = select.select([self.fd], [], [], timeout)
        if not r:
            return True
        try:
            data = os.read(self.fd, 4096)
        except OSError:             # EIO: the other side is closed
            return False
        self.seen += data.decode(errors="replace").replace("\r", "")
        return bool(data)

    def close(self) -> int:
        """Its exit status, once it ended by itself (within 20 s)."""
        end = time.monotonic() + 20
        while time.monotonic() < end:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.pid = 0
                return os.waitstatus_to_exitcode(status)
            self._read_some(0.1)
        raise AssertionError("the run did not end")

    def kill(self) -> None:
        """Kill it if it still runs; close the terminal."""
        if self.pid:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            self.pid = 0
        os.close(self.fd)


def test_ctrl_z_and_fg_in_an_interactive_shell(debian_rootfs, engine, user):
    env = exec_env(engine, {"TERM": "dumb"})
    term = Terminal(exec_cmd(debian_rootfs, ["/bin/bash", "--norc", "--noprofile", "-i"]), env, user)
    try:
        term.send(b"PS1=READY'> '\n")
        term.expect(r"READY> ")
        # a subshell job: Ctrl-Z stops all of it (bash would run the rest of a plain list at once)
        term.send(b"(sleep 2; echo fin$((6*7)))\n")
        time.sleep(0.5)
        term.send(b"\x1a")
        term.expect(r"\[1\]\+\s+Stopped\s+\( sleep 2; echo fin\$\(\(6\*7\)\) \)")
        term.expect(r"READY> ")
        assert "fin42" not in term.read(2.5), "the stopped job must not go on"
        term.send(b"jobs -l\n")
        term.expect(r"\[1\]\+\s+\d+ Stopped")
        term.expect(r"READY> ")
        term.send(b"fg\n")
        term.expect(r"\nfin42\n")
        term.expect(r"READY> ")
        term.send(b"exit 3\n")
        assert term.close() == 3
    finally:
        term.kill()


def test_tracer_is_named_carryon(debian_rootfs, engine):
    if engine == "userns":
        pytest.skip("the userns rung has no tracer (carryon keeps its own name)")
    p = popen_exec(debian_rootfs, "sleep", "3", engine=engine, user="self")
    try:
        def comm(pid: int) -> str:
            try:
                with open(f"/proc/{pid}/comm") as f:
                    return f.read().strip()
            except OSError:
                return ""

        def guest() -> int:
            with open(f"/proc/{p.pid}/task/{p.pid}/children") as f:
                kids = f.read().split()
            return int(kids[0]) if kids else 0
        assert _until(lambda: guest() != 0 and comm(guest()) not in ("", "python3", "python"))
        assert comm(p.pid) == "carryon"
        assert comm(guest()) != "carryon", "the guest keeps its own name"
    finally:
        p.kill()
        p.wait()


def test_stopped_guest_left_by_the_main_process_is_hung_up(debian_rootfs, engine, user):
    # carryon as a job of a shell (its own process group, its parent in another one of the
    # session): the main process leaves a stopped child behind. Natively that group is then
    # orphaned and the kernel sends it SIGHUP and SIGCONT: the child ends, and so does the run.
    script = ("sleep 100 & p=$!; kill -STOP $p; "
              "until grep -q '^State:.*stop' /proc/$p/status; do :; done; echo left $p")
    p = popen_exec(debian_rootfs, "sh", "-c", script, engine=engine, user=user, stdout=-1,
                   stderr=-1, process_group=0)
    try:
        out, err = p.communicate(timeout=30)
    finally:
        p.kill()
    assert p.returncode == 0, err
    assert out.startswith("left "), err
    assert not _alive_pid(int(out.split()[1]))


def _alive_pid(pid: int) -> bool:
    return _state(pid) not in ("", "Z (zombie)", "X (dead)")
