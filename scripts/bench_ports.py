#!/usr/bin/env python3
"""Port translation speed: the seed's socket loop (`/app/sock.py PORT N`, debian-python image).

One server bind+listen, one client connect, send b"OK!", accept+recv, close both, N times (N=2000).
Runs, interleaved round by round: natively (`chroot` as root), under `carryon exec -p` and `-n` (the
seccomp engine, and the userns engine: only the socket calls stop), and
under Debian's `proot -p` / `-n` when installed. Each round's time is the loop's own timing (what
sock.py prints), so start-up is not counted. Prints medians and ratios to native, measured in one run.
As root every run gets a fresh network namespace (see `fresh_netns_prefix`), so no run pays for the
TIME_WAIT sockets an earlier one left behind.

usage: scripts/bench_ports.py [--rootfs DIR] [--n 2000] [--rounds 5] [--quick] [--no-proot] [--no-floor]
                             [--shared-netns]
The rootfs defaults to the debian-python image of ../shared/images, packed and extracted once into a
cache directory (`carryon pack --bare` + `carryon extract`).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
IMAGE = REPO.parent / "shared" / "images" / "debian-python" / "debian-python.oci.tar"
CARRYON = [sys.executable, "-m", "packer.cli"]
LOOP_RE = re.compile(r"round trips on \S+ in ([0-9.]+)s")


def carryon(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(CARRYON + list(args), env=env, capture_output=True, text=True)


def build_rootfs() -> Path:
    """debian-python's rootfs, extracted once per user into the temp dir."""
    cache = Path(tempfile.gettempdir()) / f"carryon-bench-{os.getuid()}" / "debian-python"
    if (cache / "usr" / "bin" / "python3").exists():
        return cache
    if not IMAGE.exists():
        sys.exit(f"bench_ports: {IMAGE} is missing; pass --rootfs DIR")
    work = cache.parent
    work.mkdir(parents=True, exist_ok=True)
    archive = work / "debian-python.carryon"
    for cmd in (("pack", "--bare", str(IMAGE), "-o", str(archive)), ("extract", str(archive), str(cache))):
        p = carryon(*cmd)
        if p.returncode != 0:
            shutil.rmtree(cache, ignore_errors=True)
            sys.exit(f"bench_ports: carryon {cmd[0]} failed: {p.stderr.strip()}")
    return cache


def _proot_has_ports(proot: str) -> bool:
    p = subprocess.run([proot, "--help"], capture_output=True, text=True)
    return "--netcoop" in p.stdout + p.stderr


def _floor(work: str) -> list[str] | None:
    """scripts/floor_tracer.c with carryon's filter under port translation (see bench_engine.py):
    the loop stops where `carryon exec -p` stops, and nothing is done there."""
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "scripts"))
    from bench_engine import build_floor
    from runtime.extension.portmap import PortMap

    class Calls:
        enter_calls = PortMap.enter_calls
        enter_calls_if_arg = PortMap.enter_calls_if_arg

    return build_floor(work, [Calls])


def _floor_userns(seccomp_floor: list[str], work: str) -> list[str]:
    """The same tracer with the userns rung's filter under `-p` (runtime.userns._tracer_parts: the
    port calls and the affinity calls, nothing else): what that rung's stops cost by themselves."""
    from bench_engine import write_filter
    from runtime.extension.portmap import PortMap
    from runtime.syscall.sysnums import NUMBERS
    from runtime.userns import filter_program
    cond = dict(PortMap.enter_calls_if_arg)
    traced = {nr for nr in PortMap.enter_calls if nr not in cond}
    traced |= {NUMBERS["sched_getaffinity"], NUMBERS["sched_setaffinity"]}
    return [seccomp_floor[0], write_filter(os.path.join(work, "filter-userns.bpf"), filter_program(traced, cond))]


def fresh_netns_prefix() -> list[str]:
    """Command prefix running its command in a new network namespace with loopback up ([] when that
    cannot be had: not root, no `unshare` or `ip`)."""
    unshare, ip = shutil.which("unshare"), shutil.which("ip")
    if os.geteuid() != 0 or not unshare or not ip:
        return []
    prefix = [unshare, "-n", "sh", "-c", f'{ip} link set lo up && exec "$@"', "netns"]
    p = subprocess.run(prefix + ["true"], capture_output=True, text=True)
    return prefix if p.returncode == 0 else []


def loop_seconds(cmd: list[str]) -> float:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    m = LOOP_RE.search(p.stdout)
    if p.returncode != 0 or not m:
        raise RuntimeError(f"{' '.join(cmd)} -> {p.returncode}: {(p.stderr or p.stdout).strip()[-300:]}")
    return float(m.group(1))


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rootfs")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="3 rounds of N=500")
    ap.add_argument("--no-proot", action="store_true")
    ap.add_argument("--no-floor", action="store_true", help="no row for scripts/floor_tracer.c")
    ap.add_argument("--shared-netns", action="store_true",
                    help="run every variant in the machine's network namespace (default as root: a fresh one per run)")
    a = ap.parse_args(argv)
    if a.quick:
        a.n, a.rounds = 500, 3
    rootfs = Path(a.rootfs) if a.rootfs else build_rootfs()
    # Every run leaves N connections in TIME_WAIT for a minute. They slow the kernel's choice of
    # ephemeral ports for every later connect (measured: the native loop went from 137 to 696 us per
    # iteration over five back-to-back runs), which would favour whichever variant runs first in a
    # round. As root, each run therefore gets a network namespace of its own (`unshare -n`, loopback
    # up): every variant starts from the same empty TCP state. Otherwise each run at least gets
    # ports nobody used in the last minute. Guest port G, host port H (`-p G:H`); -n picks its own.
    fresh = iter(range(10000 + random.randrange(0, 8000, 2), 30000, 2))
    isolate = fresh_netns_prefix() if not a.shared_netns else []
    if not isolate:
        print("(runs share the machine's network namespace: TIME_WAIT sockets of earlier runs weigh on "
              "later ones)")

    def loop(port: int) -> list[str]:
        return ["/usr/bin/python3", "/app/sock.py", str(port), str(a.n)]

    exe = ["env", "CARRYON_ENGINE=seccomp", *CARRYON, "exec", "-R", str(rootfs)]
    userns = ["env", "CARRYON_ENGINE=userns", *CARRYON, "exec", "-R", str(rootfs)]
    variants: list[tuple[str, Callable[[int], list[str]]]] = []
    if os.geteuid() == 0:
        variants.append(("native (chroot)", lambda g: ["chroot", str(rootfs), *loop(g)]))
    else:
        print("(not root: no native chroot baseline; ratios are to the first row)")
    variants += [
        ("carryon exec (no ports)", lambda g: [*exe, *loop(g)]),
        ("carryon exec -p G:H", lambda g: [*exe, "-p", f"{g}:{g + 1}", *loop(g)]),
        ("carryon exec -n", lambda g: [*exe, "-n", *loop(g)]),
        ("userns -p G:H", lambda g: [*userns, "-p", f"{g}:{g + 1}", *loop(g)]),
        ("userns -n", lambda g: [*userns, "-n", *loop(g)]),
    ]
    floor_dir = tempfile.mkdtemp(prefix="carryon-floor-")
    floor = _floor(floor_dir) if not a.no_floor else None
    if floor:
        variants.append(("floor (C tracer, -p's stops)", lambda g: [*floor, "chroot", str(rootfs), *loop(g)]))
        floor_ns = _floor_userns(floor, floor_dir)
        variants.append(("floor (userns -p's stops)", lambda g: [*floor_ns, "chroot", str(rootfs), *loop(g)]))
    elif not a.no_floor:
        print("(no floor row: it needs root and a C compiler)")
    proot = shutil.which("proot")
    if proot and not a.no_proot and not _proot_has_ports(proot):
        print(f"({proot} has no -p/-n (PRoot 5.1; port mapping came in 5.4): no PRoot rows)")
        proot = None
    if proot and not a.no_proot:
        variants += [
            ("proot -p G:H", lambda g: [proot, "-R", str(rootfs), "-p", f"{g}:{g + 1}", *loop(g)]),
            ("proot -n", lambda g: [proot, "-R", str(rootfs), "-n", *loop(g)]),
        ]
    times: dict[str, list[float]] = {name: [] for name, _ in variants}
    broken: dict[str, str] = {}
    for _ in range(a.rounds):
        for name, cmd in variants:
            if name in broken:
                continue
            try:
                times[name].append(loop_seconds(isolate + cmd(next(fresh))))
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                broken[name] = str(e).splitlines()[-1][:160]
    base = next((statistics.median(v) for v in times.values() if v), None)
    print(f"socket loop, N={a.n}, {a.rounds} rounds, medians (sock.py's own timing)")
    print(f"| {'variant':<30} | {'median':>9} | {'per iter':>9} | {'ratio':>6} |")
    print(f"|{'-' * 32}|{'-' * 11}|{'-' * 11}|{'-' * 8}|")
    for name, _ in variants:
        if name in broken:
            print(f"| {name:<30} | {'failed':>9} | {'':>9} | {'':>6} |  {broken[name]}")
            continue
        med = statistics.median(times[name])
        ratio = f"{med / base:.2f}x" if base else ""
        print(f"| {name:<30} | {med * 1000:7.1f}ms | {med / a.n * 1e6:7.1f}us | {ratio:>6} |")
    if floor:
        print("floor: scripts/floor_tracer.c stops on the same calls as `carryon exec -p` (seccomp "
              "engine) or as the userns rung's `-p` and does nothing there (guest in a chroot): the cost "
              "of the stops alone")
    shutil.rmtree(floor_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
