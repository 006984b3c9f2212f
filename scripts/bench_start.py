#!/usr/bin/env python3
"""Start-up cost of a self-extracting archive, in one run (medians; compare ratios, not absolute times).

    python scripts/bench_start.py [--archive py.run] [--baseline OLD.run] [--rounds 15] [--cold 3] [--onefile]

Rows (all run `python3 -c pass` in the debian-python image):
  native chroot        `chroot ROOTFS /usr/bin/python3 -c pass` (root only)
  unshare chroot       the same in a new user + mount namespace (util-linux `unshare -Urm`, any user):
                       the floor of a namespace engine
  carryon exec         `carryon exec -R ROOTFS -0 -w /app /usr/bin/python3 -c pass` on the extracted tree
  archive warm         `./py.run -c pass` with the cache populated
  archive cold         `./py.run -c pass` with an empty cache (runtime unpack, full check, extraction)
  runtime only         the frozen runtime printing --carryon-help (interpreter start-up, onedir via ld.so)
  runtime onefile      the same runtime as a PyInstaller onefile (with --onefile; builds it, ~1 min)
With --baseline (the same image packed by another carryon, e.g. main's), its archive warm, archive
cold and runtime-only rows are timed too, interleaved with ours.
Goals: warm start - carryon exec <= 30 ms; cold start of debian-python <= 2 s; on the userns
engine, warm start - native <= 10 ms (#18; the same against `unshare chroot` where not root).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
IMAGE = os.path.join(REPO, "..", "shared", "images", "debian-python", "debian-python.oci.tar")


CPU: dict[str, list[float]] = {}


def timed(cmd: list[str], env: dict[str, str] | None = None, name: str | None = None) -> float:
    """Wall time of one run; its CPU time (user+sys of the process tree) goes to CPU[name]."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    p = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    dt = time.perf_counter() - t
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        raise SystemExit(f"bench: {' '.join(cmd[:4])}... failed ({p.returncode}): {p.stderr.decode()[-300:]}")
    if name:
        CPU.setdefault(name, []).append(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime)
    return dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archive", help="debian-python archive (default: pack ../shared/images/debian-python)")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--cold", type=int, default=3)
    ap.add_argument("--baseline", help="the same image packed by another carryon: timed interleaved")
    ap.add_argument("--onefile", action="store_true", help="also build and time a onefile runtime")
    args = ap.parse_args()
    from runtime.extract import remove_tree

    work = tempfile.mkdtemp(prefix="carryon-bench-start-")
    try:
        archive = args.archive
        if not archive:
            archive = os.path.join(work, "py.run")
            subprocess.run([sys.executable, "-m", "packer.cli", "pack", IMAGE, "-o", archive], check=True,
                           cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO))
        archive = os.path.abspath(archive)
        base_env = {"PATH": "/usr/bin:/bin", "HOME": work, "LANG": "C.UTF-8"}
        warm_cache = os.path.join(work, "warm")
        env_warm = dict(base_env, CARRYON_CACHE=warm_cache)
        timed([archive, "-c", "pass"], env_warm)                 # populate
        entry = next(os.path.join(warm_cache, d) for d in os.listdir(warm_cache)
                     if not d.startswith((".", "rt-", "engine-", "nsplan-")))   # auto's verdict, warm plans
        rt = next(os.path.join(warm_cache, d) for d in os.listdir(warm_cache) if d.startswith("rt-"))
        rootfs = os.path.join(entry, "rootfs")
        archives = {"": archive}
        if args.baseline:
            archives[" (baseline)"] = os.path.abspath(args.baseline)

        rows: dict[str, list[float]] = {}
        cmds: dict[str, tuple[list[str], dict[str, str] | None]] = {}
        if os.geteuid() == 0:
            cmds["native chroot"] = (["chroot", rootfs, "/usr/bin/python3", "-c", "pass"], None)
        chroot = shutil.which("chroot", path="/usr/sbin:/usr/bin:/sbin:/bin")
        if shutil.which("unshare") and chroot:
            cmds["unshare chroot"] = (["unshare", "--user", "--map-root-user", "--mount", chroot, rootfs,
                                       "/usr/bin/python3", "-c", "pass"], None)
        carryon = [sys.executable, "-m", "packer.cli"]
        cmds["carryon exec"] = (carryon + ["exec", "-R", rootfs, "-0", "-w", "/app", "/usr/bin/python3", "-c",
                                           "pass"], dict(os.environ, PYTHONPATH=REPO))
        for tag, arch in archives.items():
            warm = os.path.join(work, "warm" + tag.strip(" ()"))
            env = dict(base_env, CARRYON_CACHE=warm)
            timed([arch, "-c", "pass"], env)                   # populate (ours: done above)
            rt = next(os.path.join(warm, d) for d in os.listdir(warm) if d.startswith("rt-"))
            cmds["archive warm" + tag] = ([arch, "-c", "pass"], env)
            if not tag:
                for engine in ("userns", "seccomp"):    # `auto` above: the userns rung where it may
                    cmds[f"archive warm {engine}"] = ([arch, "-c", "pass"], dict(env, CARRYON_ENGINE=engine))
            ld = os.path.join(rt, "_internal", "ld-linux-x86-64.so.2")
            rt_env = dict(base_env, _CARRYON_ARCHIVE=arch, _PYI_ARCHIVE_FILE=os.path.join(rt, "carryon-runtime"),
                          _PYI_PARENT_PROCESS_LEVEL="-1")
            cmds["runtime only" + (tag or " (onedir)")] = (
                [ld, "--inhibit-cache", "--library-path", os.path.join(rt, "_internal"),
                 os.path.join(rt, "carryon-runtime"), "--carryon-help"], rt_env)
        if args.onefile:
            from packer import embed
            one_dir = os.path.join(work, "onefile")
            os.makedirs(one_dir)
            built = embed.build_runtime(os.path.join(one_dir, "work"), one_dir,
                                        log=os.path.join(one_dir, "build.log"), onefile=True)
            cmds["runtime only (onefile)"] = ([built.tgz, "--carryon-help"],
                                             dict(base_env, _CARRYON_ARCHIVE=archive))
        for cmd, env in cmds.values():                          # warm-up
            timed(cmd, env)
        for _ in range(args.rounds):                            # interleaved rounds
            for name, (cmd, env) in cmds.items():
                rows.setdefault(name, []).append(timed(cmd, env, name))
        for i in range(args.cold):
            for tag, arch in sorted(archives.items(), reverse=i % 2 == 1):   # alternate who goes first
                cold_cache = os.path.join(work, f"cold{i}" + tag.strip(" ()"))
                rows.setdefault("archive cold" + tag, []).append(
                    timed([arch, "-c", "pass"], dict(base_env, CARRYON_CACHE=cold_cache), "archive cold" + tag))
            # Cold caches are removed only at the end (with `work`): mass deletes just before an
            # extraction make ext4 without a journal check recently freed inodes on every create,
            # a cost of this benchmark's own making that a real node does not pay.

        med = {k: statistics.median(v) * 1000 for k, v in rows.items()}
        cpu = {k: statistics.median(v) * 1000 for k, v in CPU.items()}
        ref = med.get("native chroot")
        exe = med["carryon exec"]
        print(f"\nstart-up of python3 -c pass (debian-python), medians of {args.rounds} rounds "
              f"({args.cold} cold runs), {os.cpu_count()} CPUs, uid {os.geteuid()}, "
              f"load {os.getloadavg()[0]:.1f}")
        print(f"| {'what':24} | {'wall ms':>8} | {'x native':>8} | {'- carryon exec':>14} | {'cpu ms':>7} |")
        print(f"|{'-' * 26}|{'-' * 10}|{'-' * 10}|{'-' * 16}|{'-' * 9}|")
        for k, v in med.items():
            ratio = f"{v / ref:.1f}x" if ref else "-"
            print(f"| {k:24} | {v:8.1f} | {ratio:>8} | {v - exe:+13.1f}  | {cpu.get(k, 0):7.1f} |")
        over = med["archive warm"] - exe
        print(f"\nwarm overhead over carryon exec: {over:.1f} ms wall, "
              f"{cpu['archive warm'] - cpu['carryon exec']:.1f} ms cpu "
              f"(goal <= 30 ms: {'ok' if over <= 30 else 'MISSED'})")
        for ref_name in ("native chroot", "unshare chroot"):
            if ref_name in med and "archive warm userns" in med:
                over = med["archive warm userns"] - med[ref_name]
                print(f"userns warm start - {ref_name}: {over:.1f} ms (goal <= 10 ms: "
                      f"{'ok' if over <= 10 else 'MISSED'})")
        cold = med.get("archive cold")
        if cold is not None:            # --cold 0: no cold runs
            print(f"cold start: {cold / 1000:.2f} s (goal <= 2 s: {'ok' if cold <= 2000 else 'MISSED'})")
    finally:
        remove_tree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
