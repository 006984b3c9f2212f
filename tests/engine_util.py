"""Helpers shared by tests/test_engine_*.py: run `carryon exec` as a given user with a given engine."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO, user_popen_kwargs

GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def exec_cmd(rootfs, args, opts=(), defaults=True) -> list[str]:
    """`rootfs` None: no -r/-R (PRoot's default root, `/`, or the one `opts` name)."""
    root = [] if rootfs is None else ["-R" if defaults else "-r", str(rootfs)]
    return [sys.executable, "-m", "packer.cli", "exec", *opts, *root, "--", *args]


def exec_env(engine: str, extra: dict | None = None) -> dict:
    """`engine`: seccomp (with the native stop loop when it is built), seccomp-python (the same
    engine with Python seeing every stop: what runs where the library is missing), ptrace."""
    env = {"PATH": GUEST_PATH, "PYTHONPATH": str(REPO), "CARRYON_ENGINE": engine, "LANG": "C.UTF-8",
           "HOME": "/root"}
    if engine == "seccomp-python":
        env.update(CARRYON_ENGINE="seccomp", CARRYON_NATIVE="0")
    env.update(extra or {})
    return env


def carryon_exec(rootfs, *args, engine: str, user: str, opts=(), defaults=True, env=None,
                 timeout: float = 120, input: str | None = None, cwd="/tmp") -> subprocess.CompletedProcess:
    return subprocess.run(exec_cmd(rootfs, args, opts, defaults), capture_output=True, text=True,
                          env=exec_env(engine, env), cwd=cwd, timeout=timeout, input=input,
                          **user_popen_kwargs(user))


def popen_exec(rootfs, *args, engine: str, user: str, opts=(), defaults=True, env=None,
               **kw) -> subprocess.Popen:
    return subprocess.Popen(exec_cmd(rootfs, args, opts, defaults), env=exec_env(engine, env),
                            cwd="/tmp", text=True, **user_popen_kwargs(user), **kw)


def native_as(user: str, args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a host command as `user` (for reference results)."""
    return subprocess.run(args, capture_output=True, text=True, cwd="/tmp", timeout=timeout,
                          env={"PATH": GUEST_PATH, "LANG": "C.UTF-8"}, **user_popen_kwargs(user))


def world_dir(base, name: str):
    """A host directory every test user can write (for binds)."""
    d = base / name
    d.mkdir(exist_ok=True)
    os.chmod(d, 0o1777)
    return d
