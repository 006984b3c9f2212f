"""What this kernel lets an unprivileged process do, asked for real by short-lived probe children.

The canary of `auto` (runtime.choice), `carryon doctor` and `--carryon-info` all ask here; an
engine may call these too (the `userns` engine: `userns_refusal`, `overlay_refusal`). Each probe
forks a child that tries the real thing and dies; nothing is left on the host (the userns probe's
mounts live in the child's private mount namespace). A few milliseconds each: never on a warm
run's path (runtime.choice caches the verdict per node and kernel).

Answers are `None` (works) or a one-line reason naming the refusal and, where the node says so,
its cause: `user.max_user_namespaces=0` (RHEL 7's default: ENOSPC),
`kernel.unprivileged_userns_clone=0` (Debian), `kernel.apparmor_restrict_unprivileged_userns=1`
(Ubuntu 24.04: unshare works, then mounts are refused), EINVAL (a kernel without user namespaces),
a seccomp filter on this process (a container's profile), `kernel.yama.ptrace_scope` 2/3 for
ptrace, EINVAL for PTRACE_O_TRACESECCOMP (before 3.5) or a refused seccomp filter.
"""

from __future__ import annotations

import errno
import os

CLONE_NEWNS, CLONE_NEWUSER = 0x00020000, 0x10000000
MS_PRIVATE, MS_REC = 1 << 18, 1 << 14
_NR_UNSHARE = 272                                   # x86_64

SYSCTLS = {                                         # the knobs that decide, as `sysctl` names them
    "user.max_user_namespaces": "/proc/sys/user/max_user_namespaces",
    "kernel.unprivileged_userns_clone": "/proc/sys/kernel/unprivileged_userns_clone",
    "kernel.apparmor_restrict_unprivileged_userns": "/proc/sys/kernel/apparmor_restrict_unprivileged_userns",
    "kernel.yama.ptrace_scope": "/proc/sys/kernel/yama/ptrace_scope",
}


def read_text(path: str, size: int = 4096) -> str | None:
    """A small /proc or /sys file, stripped (None when it is not there). Raw os calls: auto's warm
    path reads several of these on every run."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, size).decode("ascii", "replace").strip()
    except OSError:
        return None
    finally:
        os.close(fd)


def sysctl(name: str) -> str | None:
    """The value of one of SYSCTLS, None when this kernel has no such knob."""
    return read_text(SYSCTLS[name])


def seccomp_status(traced: bool = False) -> tuple[str, ...]:
    """(Seccomp, Seccomp_filters) of /proc/self/status: ("2", "1") under a filter (a container's
    profile, a jail), ("0", "0") without; "" when the kernel does not say. With `traced`, a third
    field: "traced" when this process is being traced (a run inside a run: what the kernel lets it
    do is the outer tracer's emulation), else "-"."""
    mode = filters = ""
    tracer = "-"
    text = read_text("/proc/self/status") or ""
    for line in text.splitlines():
        if line.startswith("Seccomp:"):
            mode = line.split()[1]
        elif line.startswith("Seccomp_filters:"):
            filters = line.split()[1]
        elif line.startswith("TracerPid:") and line.split()[1:] != ["0"]:
            tracer = "traced"
    return (mode, filters, tracer) if traced else (mode, filters)


def _filtered() -> bool:
    return seccomp_status()[0] == "2"


def _ename(e: int) -> str:
    return errno.errorcode.get(e, str(e))


# ---------------------------------------------------------------- user namespaces

def userns_cause(step: str, err: int) -> str:
    """The reason for a refused step of the userns probe (`unshare`, `uid_map`, `mount`,
    `overlay`), with the node's cause where one is visible."""
    what = f"{step} {_ename(err)}"
    if step == "unshare" and err == errno.ENOSPC:
        limit = sysctl("user.max_user_namespaces")
        if limit == "0":
            return "disabled by user.max_user_namespaces=0 (RHEL 7's default)"
        return f"{what} (user.max_user_namespaces={limit} reached)" if limit else what
    if step == "unshare" and err == errno.EINVAL:
        return f"{what} (a kernel without user namespaces, or RHEL 7 without namespace.unpriv_enable=1)"
    if err in (errno.EPERM, errno.EACCES):
        if step == "unshare" and sysctl("kernel.unprivileged_userns_clone") == "0":
            return "disabled by kernel.unprivileged_userns_clone=0"
        if sysctl("kernel.apparmor_restrict_unprivileged_userns") == "1":
            return f"disabled by kernel.apparmor_restrict_unprivileged_userns ({what})"
        if _filtered():
            return f"{what} (a seccomp filter on this process: a container's profile?)"
    if step == "overlay" and err in (errno.EPERM, errno.EINVAL, errno.ENODEV):
        return f"{what} (overlayfs in a user namespace needs Linux 5.11+)"
    return what


def _libc():
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                           ctypes.c_char_p)
    return ctypes, libc


def _userns_child(w: int, overlay: bool, base: str | None) -> None:
    """In the probe child: enter a new user + mount namespace, map ourselves to 0, make the
    mounts private, mount a tmpfs (and an overlay: `overlay`); write "ok" or "STEP ERRNO" to w."""
    step = "unshare"
    try:
        ctypes, libc = _libc()
        uid, gid = os.getuid(), os.getgid()
        if libc.syscall(_NR_UNSHARE, CLONE_NEWUSER | CLONE_NEWNS) != 0:
            raise OSError(ctypes.get_errno(), "")
        step = "uid_map"
        for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
            try:
                fd = os.open(f"/proc/self/{name}", os.O_WRONLY)
            except FileNotFoundError:
                if name == "setgroups":         # kernels before 3.19
                    continue
                raise
            try:
                os.write(fd, text.encode())
            finally:
                os.close(fd)
        step = "mount"
        if libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
            raise OSError(ctypes.get_errno(), "")
        top = base or "/tmp"
        if base is None and libc.mount(b"tmpfs", top.encode(), b"tmpfs", 0, b"mode=0700") != 0:
            raise OSError(ctypes.get_errno(), "")
        if overlay:
            step = "overlay"
            for d in ("l", "u", "w", "m"):
                os.makedirs(os.path.join(top, d), exist_ok=True)
            opts = f"lowerdir={top}/l,upperdir={top}/u,workdir={top}/w".encode()
            if libc.mount(b"overlay", f"{top}/m".encode(), b"overlay", 0, opts) != 0:
                raise OSError(ctypes.get_errno(), "")
            with open(f"{top}/m/probe", "w") as f:  # a write goes to the upper layer
                f.write("x")
        os.write(w, b"ok")
    except OSError as e:
        os.write(w, f"{step} {e.errno or 0}".encode())
    except BaseException:
        pass


def _userns_probe(overlay: bool, base: str | None = None) -> str | None:
    r, w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            _userns_child(w, overlay, base)
        finally:
            os._exit(0)
    os.close(w)
    try:
        answer = os.read(r, 64).decode()
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    if answer == "ok":
        return None
    step, _, err = answer.partition(" ")
    if not err.isdigit():
        return "the probe failed"
    return userns_cause(step, int(err))


def userns_refusal() -> str | None:
    """None when this process may make a user + mount namespace and mount in it (a tmpfs), else why
    not (see userns_cause)."""
    return _userns_probe(False)


def overlay_refusal(base: str | None = None) -> str | None:
    """None when an overlay mount works inside a user namespace (upper layer on a tmpfs, or in a
    fresh temp dir made under `base`, e.g. the cache dir, whose file system then matters: NFS
    cannot be an upper layer), else why not."""
    if base is None:
        return _userns_probe(True)
    import tempfile
    try:
        top = tempfile.mkdtemp(prefix=".overlay-probe-", dir=base)
    except OSError as e:
        return f"cannot make a probe dir in {base} ({e.strerror})"
    try:
        return _userns_probe(True, top)
    finally:
        from runtime.cache import remove
        remove(top)


# ---------------------------------------------------------------- ptrace and seccomp (issue 19's interface)

def ptrace_cause(err: int) -> str:
    """The reason for a refused PTRACE_TRACEME/SEIZE."""
    what = _ename(err)
    if err == errno.EPERM:
        scope = sysctl("kernel.yama.ptrace_scope")
        if scope == "3":
            return "disabled by kernel.yama.ptrace_scope=3"
        if scope == "2" and os.geteuid() != 0:
            return "EPERM (kernel.yama.ptrace_scope=2: only with CAP_SYS_PTRACE)"
        if _filtered():
            return "EPERM (a container's seccomp profile?)"
    return what


class Interface:
    """What the probe found of the kernel's tracing interface (issue 19): each field True/False;
    `ptrace` is None when allowed, else why not; `seccomp` None when a seccomp filter can be
    installed under ptrace with PTRACE_O_TRACESECCOMP (the seccomp engine), else why not."""

    __slots__ = ("ptrace", "seize", "exitkill", "tracesecomp", "seccomp_filter", "process_vm_readv",
                 "seccomp")

    def __init__(self) -> None:
        self.ptrace: str | None = None
        self.seize = self.exitkill = self.tracesecomp = False
        self.seccomp_filter = self.process_vm_readv = False
        self.seccomp: str | None = None

    def as_dict(self) -> dict:
        return {"seccomp_filter": self.seccomp_filter, "PTRACE_O_EXITKILL": self.exitkill,
                "PTRACE_SEIZE": self.seize, "process_vm_readv": self.process_vm_readv,
                "PTRACE_O_TRACESECCOMP": self.tracesecomp}

    def line(self) -> str:
        """e.g. "seccomp filter: yes, PTRACE_O_EXITKILL: no, PTRACE_SEIZE: yes, process_vm_readv: yes"."""
        if self.ptrace:
            return f"ptrace refused ({self.ptrace})"
        d = self.as_dict()
        return ", ".join(f"{k.replace('_filter', ' filter')}: {'yes' if d[k] else 'no'}"
                         for k in ("seccomp_filter", "PTRACE_O_EXITKILL", "PTRACE_SEIZE", "process_vm_readv"))


def _child_wait(cmd_r: int, rep_w: int) -> None:
    """The interface probe's child: obeys one-byte commands ("T": PTRACE_TRACEME then stop, "S":
    stop, "F": install an allow-all seccomp filter and exit 0, else exit 3 with the errno on
    rep_w); never returns."""
    import _signal

    from runtime.tracee import ffi
    try:
        while True:
            c = os.read(cmd_r, 1)
            if c == b"T":
                try:
                    ffi.traceme()
                except OSError as e:
                    os.write(rep_w, f"traceme {e.errno}\n".encode())
                    os._exit(3)
                os.kill(os.getpid(), _signal.SIGSTOP)
            elif c == b"S":
                os.kill(os.getpid(), _signal.SIGSTOP)
            elif c == b"F":
                from runtime.syscall import seccomp
                try:
                    if os.environ.get("CARRYON_TEST_NO_SECCOMP"):   # tests: a kernel without it
                        raise OSError(errno.EINVAL, "refused (CARRYON_TEST_NO_SECCOMP)")
                    ffi.install_seccomp([(seccomp.RET_K, 0, 0, seccomp.RET_ALLOW)])
                except OSError as e:
                    os.write(rep_w, f"filter {e.errno}\n".encode())
                    os._exit(3)
                os._exit(0)
            else:
                os._exit(0)
    except BaseException:
        os._exit(4)


def interface() -> Interface:
    """Ask the kernel, with a probe child, what of the tracing interface it offers."""
    import _signal
    import ctypes

    from runtime.tracee import ffi
    out = Interface()
    cmd_r, cmd_w = os.pipe2(os.O_CLOEXEC)
    rep_r, rep_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        try:
            os.close(cmd_w)
            os.close(rep_r)
            ffi.prctl(ffi.PR_SET_PDEATHSIG, _signal.SIGKILL)
            _child_wait(cmd_r, rep_w)
        finally:
            os._exit(4)
    os.close(cmd_r)
    os.close(rep_w)

    def report() -> tuple[str, int]:
        text = os.read(rep_r, 64).decode().split()
        return (text[0], int(text[1])) if len(text) == 2 and text[1].isdigit() else ("", 0)

    try:
        seize_err = 0
        if not os.environ.get("CARRYON_TEST_NO_SEIZE"):
            try:
                ffi.seize(pid, 0)
                out.seize = True
            except OSError as e:
                seize_err = e.errno or 0
        else:
            seize_err = errno.EIO
        os.write(cmd_w, b"S" if out.seize else b"T")
        _, status = os.waitpid(pid, ffi.WALL)
        if not os.WIFSTOPPED(status):
            _step, err = report()
            out.ptrace = ptrace_cause(err or seize_err or errno.EPERM)
            out.seccomp = out.ptrace
            return out
        for flag in ("exitkill", "tracesecomp"):
            try:
                ffi.setoptions(pid, ffi.PTRACE_O_EXITKILL if flag == "exitkill" else ffi.PTRACE_O_TRACESECCOMP)
                setattr(out, flag, True)
            except OSError:
                pass
        buf = ctypes.create_string_buffer(8)
        local = ffi.IoVec(ctypes.addressof(buf), 8)
        remote = ffi.IoVec(ctypes.addressof(buf), 8)     # the same address in the forked child
        out.process_vm_readv = ffi._pvr(pid, ctypes.addressof(local), 1, ctypes.addressof(remote), 1, 0) == 8
        ffi.setoptions(pid, ffi.PTRACE_O_TRACESECCOMP if out.tracesecomp else 0)
        os.write(cmd_w, b"F")
        status = ffi.cont_to_end(pid)
        out.seccomp_filter = os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        if not out.tracesecomp:
            out.seccomp = "the kernel refuses PTRACE_O_TRACESECCOMP (EINVAL: Linux before 3.5?)"
        elif not out.seccomp_filter:
            _step, err = report()
            out.seccomp = f"seccomp filters refused ({_ename(err) if err else 'probe failed'})"
        return out
    except OSError as e:
        out.ptrace = out.ptrace or f"the probe failed ({e.strerror})"
        out.seccomp = out.seccomp or out.ptrace
        return out
    finally:
        for fd in (cmd_w, rep_r):
            os.close(fd)
        try:
            os.kill(pid, _signal.SIGKILL)
            os.waitpid(pid, ffi.WALL)
        except OSError:
            pass
