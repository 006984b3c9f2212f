"""/proc magic links seen from the guest (runtime.path.proc), with the host's real /proc bound."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import pytest

from runtime.path import Mapper, ProcState
from runtime.path.proc import readlink_target
from runtime.spec import Bind


@pytest.fixture
def root():
    d = tempfile.mkdtemp(prefix="carryon-proc-")
    r = os.path.realpath(d)
    os.makedirs(f"{r}/etc")
    with open(f"{r}/etc/passwd", "w") as f:
        f.write("guest\n")
    os.makedirs(f"{r}/usr/bin")
    with open(f"{r}/usr/bin/tool", "w") as f:
        f.write("#!/bin/sh\n")
    os.makedirs(f"{r}/a/b")
    os.makedirs(f"{r}/tmp")
    os.makedirs(f"{r}/proc")
    yield r
    shutil.rmtree(d, ignore_errors=True)


ME = os.getpid()


def _mapper(r: str, states: dict[int, ProcState]) -> Mapper:
    return Mapper(r, [Bind("/proc", "/proc")], proc_lookup=states.get)


def test_self_exe_cwd_root_follow_in_guest(root):
    m = _mapper(root, {ME: ProcState("/usr/bin/tool", "/a/b", tgid=ME)})
    assert m.proc_root == "/proc"
    assert m.to_host("/proc/self/exe", "/", True, pid=ME) == f"{root}/usr/bin/tool"
    assert m.resolve("/proc/self/exe", "/", False, pid=ME) == (f"/proc/{ME}/exe", f"/proc/{ME}/exe")
    assert m.to_host("/proc/self/cwd", "/", True, pid=ME) == f"{root}/a/b"
    assert m.to_host("/proc/self/cwd/../../etc/passwd", "/", True, pid=ME) == f"{root}/etc/passwd"
    assert m.to_host("/proc/self/root/etc/passwd", "/", True, pid=ME) == f"{root}/etc/passwd"
    assert m.to_host("/proc/self/root/../../../etc", "/", True, pid=ME) == f"{root}/etc"
    assert m.to_host(f"/proc/{ME}/root", "/", True, pid=ME) == root
    assert m.to_host("/proc/thread-self/root/etc", "/", True, pid=ME, tid=ME) == f"{root}/etc"
    assert m.canon("/proc/thread-self", "/", True, pid=ME, tid=ME) == f"/proc/{ME}/task/{ME}"
    assert m.to_host(f"/proc/{ME}/task/{ME}/cwd", "/", True, pid=ME) == f"{root}/a/b"
    assert m.to_host("self/root/etc", "/proc", True, pid=ME) == f"{root}/etc"
    # plain /proc files and non-magic links pass through
    assert m.to_host("/proc/self/status", "/", True, pid=ME) == f"/proc/{ME}/status"
    assert m.to_host("/proc/mounts", "/", True, pid=ME) == f"/proc/{ME}/mounts"
    assert m.to_host("/proc/self/ns/net", "/", True, pid=ME) == f"/proc/{ME}/ns/net"


def test_self_uses_tgid_of_a_thread(root):
    m = _mapper(root, {4242: ProcState("/usr/bin/tool", "/", tgid=ME)})
    assert m.canon("/proc/self", "/", True, pid=4242) == f"/proc/{ME}"


def test_fd_links(root):
    m = _mapper(root, {ME: ProcState("/usr/bin/tool", "/", tgid=ME)})
    dfd = os.open(f"{root}/etc", os.O_RDONLY | os.O_DIRECTORY)
    r, w = os.pipe()
    gone = f"{root}/tmp/gone"
    with open(gone, "w"):
        pass
    gfd = os.open(gone, os.O_RDONLY)
    os.unlink(gone)
    try:
        # last component: the kernel follows its own magic link (reopens the same file)
        assert m.to_host(f"/proc/self/fd/{dfd}", "/", True, pid=ME) == f"/proc/{ME}/fd/{dfd}"
        assert m.to_host(f"/proc/self/fd/{r}", "/", True, pid=ME) == f"/proc/{ME}/fd/{r}"
        # in the middle: the directory it names, in the guest
        assert m.to_host(f"/proc/self/fd/{dfd}/passwd", "/", True, pid=ME) == f"{root}/etc/passwd"
        assert m.to_host(f"/proc/self/fd/{dfd}/../usr", "/", True, pid=ME) == f"{root}/usr"
        # readlink answers
        assert readlink_target(f"/proc/{ME}/fd/{dfd}", ME, m.proc_lookup, m) == "/etc"
        assert readlink_target(f"/proc/{ME}/fd/{r}", ME, m.proc_lookup, m).startswith("pipe:[")
        assert readlink_target(f"/proc/{ME}/fd/{gfd}", ME, m.proc_lookup, m) == "/tmp/gone (deleted)"
        assert readlink_target(f"/proc/{ME}/task/{ME}/fd/{dfd}", ME, m.proc_lookup, m) == "/etc"
        assert readlink_target(f"/proc/{ME}/fd/99999", ME, m.proc_lookup, m) is None
    finally:
        for fd in (dfd, r, w, gfd):
            os.close(fd)


def test_readlink_targets(root):
    m = _mapper(root, {ME: ProcState("/usr/bin/tool", "/a/b", tgid=ME)})
    look = m.proc_lookup
    link = m.canon("/proc/self/exe", "/", False, pid=ME)
    assert readlink_target(link, ME, look, m) == "/usr/bin/tool"
    assert readlink_target(f"/proc/{ME}/cwd", ME, look, m) == "/a/b"
    assert readlink_target(f"/proc/{ME}/root", ME, look, m) == "/"
    assert readlink_target(f"/proc/{ME}/task/{ME}/exe", ME, look, m) == "/usr/bin/tool"
    assert readlink_target("/proc/self", ME, look, m) is None        # the kernel answers right
    assert readlink_target(f"/proc/{ME}/status", ME, look, m) is None
    assert readlink_target("/etc/passwd", ME, look, m) is None


def test_process_unknown_to_the_tracer(root):
    """A host process the tracer does not trace: cwd translated when inside, exe verbatim."""
    p = subprocess.Popen(["sleep", "30"], cwd=f"{root}/a")
    try:
        m = _mapper(root, {})
        assert readlink_target(f"/proc/{p.pid}/cwd", ME, m.proc_lookup, m) == "/a"
        exe = readlink_target(f"/proc/{p.pid}/exe", ME, m.proc_lookup, m)
        assert exe is not None and exe.endswith("sleep") and exe.startswith("/")
        assert m.to_host(f"/proc/{p.pid}/cwd", "/", True, pid=ME) == f"{root}/a"
        # outside the guest: the host path read in the guest, never the host file
        assert m.to_host(f"/proc/{p.pid}/exe", "/", True, pid=ME) == root + exe
        q = subprocess.Popen(["sleep", "30"], cwd="/")
        try:
            assert m.to_host(f"/proc/{q.pid}/cwd/etc/passwd", "/", True, pid=ME) == f"{root}/etc/passwd"
            assert readlink_target(f"/proc/{q.pid}/cwd", ME, m.proc_lookup, m) == "/"
        finally:
            q.kill()
            q.wait()
        assert m.to_host(f"/proc/{p.pid}/root/etc", "/", True, pid=ME) == f"{root}/etc"
    finally:
        p.kill()
        p.wait()


def test_no_proc_bind_means_no_magic(root):
    m = Mapper(root, [], proc_lookup={ME: ProcState("/usr/bin/tool", "/")}.get)
    assert m.proc_root is None
    assert m.to_host("/proc/self/exe", "/", True, pid=ME) == f"{root}/proc/self/exe"
    assert readlink_target("/proc/1/exe", ME, m.proc_lookup, m) is None


def test_proc_bound_elsewhere(root):
    m = Mapper(root, [Bind("/proc", "/hostproc")], proc_lookup={ME: ProcState("/usr/bin/tool", "/")}.get)
    assert m.proc_root == "/hostproc"
    assert m.to_host("/hostproc/self/root/etc", "/", True, pid=ME) == f"{root}/etc"
    assert readlink_target(f"/hostproc/{ME}/root", ME, m.proc_lookup, m) == "/"
