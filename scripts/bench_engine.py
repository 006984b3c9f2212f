#!/usr/bin/env python3
"""Engine benchmark: the same guest workloads natively (`chroot`, root only), under Debian's `proot`
and under `carryon exec` (seccomp engine and plain ptrace engine), in ONE run, interleaved rounds
(each round starting with the next engine), medians and ratios to native.

    scripts/bench_engine.py [--quick] [--rounds N] [--image OCI_TAR | --rootfs DIR] [--cache DIR]
                            [--engines native,proot,seccomp,ptrace,ptrace-2.6.32,floor,isolated,userns,unshare]
                            [--workloads a,b,d,e,start,w,c]
                            [--carryon CMD] [--proot PATH] [--json FILE] [--no-path-micro]

`floor` (root and a C compiler only): the workload in a chroot under `scripts/floor_tracer.c`, a
minimal C tracer that stops on exactly the system calls carryon's seccomp filter stops on and does
nothing there (PTRACE_GETREGS, PTRACE_CONT): what the ptrace stops cost by themselves, so the rest
of the seccomp column is the tracer's own work (reading paths, lstat, writing the new ones).
`ptrace-2.6.32`: the plain ptrace engine (every system call stops twice) under
`scripts/kernel-jail --linux-2.6.32`, where the kernel answers like Linux 2.6.32 (no seccomp filters,
no process_vm_readv: tracee memory through /proc/PID/mem and PTRACE_POKEDATA; the calls newer than
2.6.32 that the guest makes are emulated or ENOSYS, runtime.syscall.newer): what a node at the
floor costs. `userns`: `carryon exec` on the user namespace engine (no tracer: runtime/userns.py).
`isolated`: the seccomp engine with the archives' copy-on-write (`carryon exec --overlay`, a state
emptied before each run): rows a-e must cost what `seccomp` costs; `w` appends to a 100 MB file of
the image (the copy-up), `c` copies that file (the reference for what the copy costs).
`unshare`: util-linux `unshare --user --map-root-user --mount chroot ROOTFS` (root and non-root): a
user + mount namespace and a chroot, nothing else: the floor any namespace engine pays, so the
`userns` column minus this one is what carryon itself adds.

The rootfs is built once with `carryon pack --bare IMAGE` + `carryon extract` into a cache directory
keyed by the image's sha256 (default image: ../shared/images/debian-python/debian-python.oci.tar).
Every engine gets the same flags (`-r ROOTFS`, no binds, no `-0`) and the same environment. Each
workload's output is checked against the native output (or the first engine that ran it): a run
that exits non-zero, times out or prints something else counts as FAILED, not as a time.

The tables:
1. the medians (ms) and each engine's ratio to the first column (native where it runs): what a user
   sees, start-up included (for `carryon exec` that is its own Python start-up, ~20 ms, paid once
   per command line however long the guest runs);
2. "net of start-up" (when the `start` workload ran): each workload's median minus that engine's
   `start` median plus the first column's `start` median, and its ratio to the first column: the
   constant start-up cost taken out, what is left is what the engine costs the guest per call
   while it runs (1.00 = the guest runs at native speed once started);
3. the cost of one guest->host path translation (`Mapper.to_host`) in the tracer.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_IMAGE = os.path.join(REPO, "..", "shared", "images", "debian-python", "debian-python.oci.tar")

WORKLOADS: dict[str, tuple[str, list[str]]] = {
    "a": ("20 x python3 -c pass", ["sh", "-c", "for i in $(seq 20); do python3 -c pass; done"]),
    "b": ("python3 /app/fib.py 32", ["python3", "/app/fib.py", "32"]),
    "d": ("200 x /bin/true", ["sh", "-c", "for i in $(seq 200); do /bin/true; done"]),
    "e": ("find /usr -type f | wc -l", ["sh", "-c", "find /usr -type f | wc -l"]),
    "start": ("/bin/true (start-up)", ["/bin/true"]),
    # copy-on-write: changing a 100 MB image file copies it up first (`isolated`); `cp` of the same
    # file (in the guest, natively: `c`) is the reference for what that copy costs
    "w": ("append to a 100 MB image file", ["sh", "-c", "echo x >> /var/tmp/big100"]),
    "c": ("cp of that file (reference)", ["sh", "-c", "cp /var/tmp/big100 /tmp/c && rm /tmp/c"]),
}
ENGINES = ["native", "proot", "seccomp", "ptrace", "ptrace-2.6.32", "floor", "isolated", "userns",
           "unshare"]
UNSHARE = ["unshare", "--user", "--map-root-user", "--mount"]
JAIL = [sys.executable, os.path.join(REPO, "scripts", "kernel-jail"), "--linux-2.6.32"]
BIG = "var/tmp/big100"
GUEST_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
}
TIMEOUT = 900.0


def die(msg: str) -> None:
    sys.stderr.write(f"bench_engine: {msg}\n")
    raise SystemExit(1)


def find_carryon(given: str | None) -> list[str]:
    if given:
        return shlex.split(given)
    beside = os.path.join(os.path.dirname(sys.executable), "carryon")
    for cand in (beside, os.path.join(REPO, ".venv", "bin", "carryon"), shutil.which("carryon"),
                 "/opt/cvenv/bin/carryon"):
        if cand and os.access(cand, os.X_OK):
            return [cand]
    return [sys.executable, "-c",
            f"import sys; sys.path.insert(0, {REPO!r}); from packer.cli import main; sys.exit(main())"]


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build_rootfs(carryon: list[str], image: str, cache: str) -> str:
    """`carryon pack --bare` + `carryon extract` into CACHE/<sha256[:16]>/rootfs, once."""
    if not os.path.isfile(image):
        die(f"image not found: {image} (give --image or --rootfs)")
    key = sha256_file(image)[:16]
    entry = os.path.join(cache, key)
    rootfs = os.path.join(entry, "rootfs")
    if os.path.isfile(os.path.join(entry, "ok")):
        return rootfs
    os.makedirs(cache, exist_ok=True)
    work = tempfile.mkdtemp(prefix=f".{key}.", dir=cache)
    try:
        archive = os.path.join(work, "image.run")
        pack = carryon + ["pack", "--bare", image, "-o", archive]
        p = subprocess.run(pack, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if p.returncode != 0 and "--bare" in p.stderr:
            # a packer without --bare (no frozen runtime inside): the rootfs is the same
            pack.remove("--bare")
            p = subprocess.run(pack, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if p.returncode != 0:
            die(f"{shlex.join(pack)} failed ({p.returncode}): {p.stderr.strip()[-500:]}")
        extract = carryon + ["extract", archive, os.path.join(work, "rootfs")]
        p = subprocess.run(extract, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if p.returncode != 0:
            die(f"{shlex.join(extract)} failed ({p.returncode}): {p.stderr.strip()[-500:]}")
        os.unlink(archive)
        with open(os.path.join(work, "ok"), "w") as f:
            f.write(image + "\n")
        try:
            os.rename(work, entry)
        except OSError:                 # someone else published it first
            if not os.path.isfile(os.path.join(entry, "ok")):
                raise
    finally:
        if os.path.isdir(work):
            shutil.rmtree(work, ignore_errors=True)
    return rootfs


def build_floor(work: str, exts: list | None = None) -> list[str] | None:
    """[floor_tracer, filter file]: scripts/floor_tracer.c compiled into `work` with carryon's
    seccomp filter (the engine's own, plus the calls of `exts`) beside it; None without a C
    compiler or root (the guest runs in a chroot)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None or os.geteuid() != 0:
        return None
    exe = os.path.join(work, "floor_tracer")
    src = os.path.join(REPO, "scripts", "floor_tracer.c")
    p = subprocess.run([cc, "-O2", "-o", exe, src], capture_output=True, text=True)
    if p.returncode != 0:
        sys.stderr.write(f"bench: floor_tracer.c does not build: {p.stderr.strip()[-300:]}\n")
        return None
    sys.path.insert(0, REPO)
    from runtime.engine import filter_program
    return [exe, write_filter(os.path.join(work, "filter.bpf"), filter_program(exts or [], affinity=True))]


def write_filter(path: str, prog) -> str:
    """`prog` ((code, jt, jf, k) rows) as the struct sock_filter records floor_tracer reads; `path`."""
    with open(path, "wb") as f:
        f.write(b"".join(code.to_bytes(2, "little") + bytes((jt, jf)) + k.to_bytes(4, "little")
                         for code, jt, jf, k in prog))
    return path


FLOOR: list[str] = []           # set by main: [floor_tracer, filter file]


def prefix_for(engine: str, rootfs: str, carryon: list[str], proot: str) -> tuple[list[str], dict[str, str]]:
    env = dict(GUEST_ENV)
    if engine == "native":
        return (["chroot", rootfs], env)
    if engine == "floor":
        return (FLOOR + ["chroot", rootfs], env)
    if engine == "unshare":             # the namespace floor (root or not)
        return (UNSHARE + ["chroot", rootfs], env)
    if engine == "proot":
        return ([proot, "-r", rootfs], env)
    env["CARRYON_ENGINE"] = {"isolated": "seccomp", "ptrace-2.6.32": "ptrace"}.get(engine, engine)
    # carryon itself may live in a venv: give it the caller's PATH and PYTHON* variables too
    for k in ("PYTHONPATH", "VIRTUAL_ENV"):
        if k in os.environ:
            env[k] = os.environ[k]
    if engine == "isolated":            # the archives' copy-on-write (state emptied before each run)
        return (carryon + ["exec", "--overlay", overlay_dir(rootfs), "-r", rootfs, "--"], env)
    if engine == "ptrace-2.6.32":
        return (JAIL + carryon + ["exec", "-r", rootfs, "--"], env)
    return (carryon + ["exec", "-r", rootfs, "--"], env)


def overlay_dir(rootfs: str) -> str:
    """The `isolated` column's state directory: beside the rootfs (the same file system, so the
    image's files are hard-linked, as an archive's cache entry and its runs are)."""
    return rootfs.rstrip("/") + ".bench-state"


def reset_overlay(rootfs: str) -> None:
    d = overlay_dir(rootfs)
    shutil.rmtree(d, ignore_errors=True)
    os.mkdir(d, 0o700)


def run_once(cmd: list[str], env: dict[str, str]) -> tuple[float, int, str, str]:
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        return (time.perf_counter() - t0, -1, "", "timeout")
    dt = time.perf_counter() - t0
    return (dt, p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace"))


PATH_CASES = [
    # (guest path, cwd, follow_last): what python3 start-up and find do all the time
    ("/usr/lib/python3.11/os.py", "/", True),
    ("/usr/lib/python3.11/encodings/__init__.py", "/", True),
    ("/lib/x86_64-linux-gnu/libc.so.6", "/", True),
    ("/usr/share/doc", "/", False),
    ("fib.py", "/app", True),
]


def bench_to_host(rootfs: str) -> list[tuple[str, float, float]]:
    """µs per `Mapper.to_host` call (no cache / warm directory cache) for typical guest paths."""
    import timeit
    sys.path.insert(0, REPO)
    from runtime.path import Mapper
    from runtime.spec import Bind
    binds = [Bind("/proc", "/proc"), Bind("/dev", "/dev"), Bind("/sys", "/sys")]
    plain = Mapper(rootfs, binds)
    cached = Mapper(rootfs, binds, cache_dirs=True)
    out = []
    for path, cwd, follow in PATH_CASES:
        row = []
        for m in (plain, cached):
            m.to_host(path, cwd, follow)
            n = 20000
            t = min(timeit.repeat(lambda: m.to_host(path, cwd, follow), number=n, repeat=3))  # noqa: B023 -- run here
            row.append(t / n * 1e6)
        out.append((f"{path} (cwd {cwd}{', nofollow' if not follow else ''})", row[0], row[1]))
    return out


def net_of_start(meds: dict[str, dict[str, float | None]], w: str, e: str, base: str) -> float | None:
    """Workload `w`'s median under engine `e` with `e`'s start-up replaced by `base`'s: med(w, e)
    - med(start, e) + med(start, base). None when one of them failed."""
    start = meds["start"]
    got, own, ref = meds[w].get(e), start.get(e), start.get(base)
    if got is None or own is None or ref is None:
        return None
    return got - own + ref


def print_net(meds: dict[str, dict[str, float | None]], workloads: list[str], live: list[str],
              base: str) -> None:
    """The second table: each workload net of its engine's start-up (see the module docstring)."""
    print()
    print(f"# net of start-up: median - that engine's `start` + {base}'s `start`; ratios to {base}")
    head = ["workload"] + [f"{e} ms" for e in live] + [f"{e} ×" for e in live[1:]]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for w in workloads:
        net = {e: net_of_start(meds, w, e, base) for e in live}
        cells = [f"{w} {WORKLOADS[w][0]}".replace("|", "\\|")]
        cells += [f"{net[e] * 1000:.1f}" if net[e] is not None else "-" for e in live]
        ref = net[base]
        for e in live[1:]:
            v = net[e]
            cells.append(f"{v / ref:.2f}" if v is not None and ref else "-")
        print("| " + " | ".join(cells) + " |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 rounds (default 5)")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--image", default=DEFAULT_IMAGE)
    ap.add_argument("--rootfs", help="use this extracted rootfs instead of building one")
    ap.add_argument("--cache", default=os.path.join(os.environ.get("XDG_CACHE_HOME")
                                                    or os.path.expanduser("~/.cache"), "carryon-bench"))
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--carryon", help="command to run carryon (default: the one beside this Python)")
    ap.add_argument("--proot", default="/usr/bin/proot")
    ap.add_argument("--json", help="also write the raw times here")
    ap.add_argument("--no-path-micro", action="store_true",
                    help="skip the Mapper.to_host micro-benchmark")
    args = ap.parse_args(argv)

    rounds = args.rounds or (2 if args.quick else 5)
    if rounds < 1:
        die("--rounds must be >= 1")
    engines = [e for e in args.engines.split(",") if e]
    workloads = [w for w in args.workloads.split(",") if w]
    for e in engines:
        if e not in ENGINES:
            die(f"unknown engine {e!r} (one of {', '.join(ENGINES)})")
    for w in workloads:
        if w not in WORKLOADS:
            die(f"unknown workload {w!r} (one of {', '.join(WORKLOADS)})")
    carryon = find_carryon(args.carryon)
    notes: list[str] = []
    if "native" in engines and os.geteuid() != 0:
        engines.remove("native")
        notes.append("native: skipped (chroot needs root); ratios are to the first column")
    if "proot" in engines and not os.access(args.proot, os.X_OK):
        engines.remove("proot")
        notes.append(f"proot: skipped ({args.proot} not found; apt-get install proot)")
    floor_dir = tempfile.mkdtemp(prefix="carryon-floor-")
    if "floor" in engines:
        built = build_floor(floor_dir)
        if built is None:
            engines.remove("floor")
            notes.append("floor: skipped (needs root and a C compiler: apt-get install gcc)")
        else:
            FLOOR[:] = built
            notes.append("floor: scripts/floor_tracer.c, the same seccomp stops with no work at "
                         "them (guest in a chroot): the cost of the stops alone")

    if args.rootfs:
        rootfs = os.path.abspath(args.rootfs)
        if not os.path.isdir(rootfs):
            die(f"rootfs not found: {rootfs}")
    else:
        rootfs = build_rootfs(carryon, os.path.abspath(args.image), args.cache)
    if ("w" in workloads or "c" in workloads) and not os.path.exists(os.path.join(rootfs, BIG)):
        with open(os.path.join(rootfs, BIG), "wb") as f:        # the 100 MB "image file" of w and c
            for _ in range(100):
                f.write(os.urandom(1 << 20))

    # Preflight: each engine must run /bin/true; an engine that cannot is reported, not timed.
    broken: dict[str, str] = {}
    for e in engines:
        pre, env = prefix_for(e, rootfs, carryon, args.proot)
        dt, rc, out, err = run_once(pre + ["/bin/true"], env)
        if rc != 0:
            last = (err.strip().splitlines() or [f"exit {rc}"])[-1]
            broken[e] = last[:100]
    live = [e for e in engines if e not in broken]
    for e, why in broken.items():
        notes.append(f"{e}: not run, `exec /bin/true` failed: {why}")

    times: dict[tuple[str, str], list[float]] = {(w, e): [] for w in workloads for e in live}
    failed: dict[tuple[str, str], str] = {}
    reference: dict[str, str] = {}
    tty = sys.stderr.isatty()
    for r in range(rounds):
        for w in workloads:
            # each round starts with another engine: none always runs right after another workload
            for e in live[r % len(live):] + live[:r % len(live)]:
                if (w, e) in failed:
                    continue
                if tty:
                    sys.stderr.write(f"\rround {r + 1}/{rounds}  {w:5s} {e:8s}   ")
                    sys.stderr.flush()
                pre, env = prefix_for(e, rootfs, carryon, args.proot)
                if e == "isolated":
                    reset_overlay(rootfs)
                dt, rc, out, err = run_once(pre + WORKLOADS[w][1], env)
                if rc != 0:
                    failed[(w, e)] = f"exit {rc}: " + (err.strip().splitlines() or [""])[-1][:80]
                    continue
                ref = reference.setdefault(w, out)
                if out != ref:
                    failed[(w, e)] = f"output {out.strip()[:40]!r} != {ref.strip()[:40]!r}"
                    continue
                times[(w, e)].append(dt)
    if tty:
        sys.stderr.write("\r" + " " * 40 + "\r")

    base_engine = live[0] if live else None
    head = ["workload"] + [f"{e} ms" for e in live] + [f"{e} ×" for e in live[1:]]
    print(f"# engine benchmark: {rounds} round(s), medians; rootfs {rootfs}")
    print(f"# carryon: {shlex.join(carryon)}; ratios to {base_engine or '-'}")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    raw: dict[str, dict[str, object]] = {}
    meds: dict[str, dict[str, float | None]] = {}
    for w in workloads:
        med = meds[w] = {}
        for e in live:
            ts = times[(w, e)]
            med[e] = statistics.median(ts) if ts and (w, e) not in failed else None
            raw.setdefault(w, {})[e] = {"times": ts, "failed": failed.get((w, e))}
        cells = [f"{w} {WORKLOADS[w][0]}".replace("|", "\\|")]
        cells += [f"{med[e] * 1000:.1f}" if med[e] is not None else "FAILED" for e in live]
        base = med.get(base_engine) if base_engine else None
        for e in live[1:]:
            cells.append(f"{med[e] / base:.2f}" if med[e] is not None and base else "-")
        print("| " + " | ".join(cells) + " |")
    if base_engine and "start" in meds and any(w != "start" for w in workloads):
        print_net(meds, [w for w in workloads if w != "start"], live, base_engine)
    for (w, e), why in sorted(failed.items()):
        notes.append(f"{w} under {e}: FAILED ({why})")
    for n in notes:
        print(f"# {n}")
    if not args.no_path_micro:
        print()
        print("| Mapper.to_host (tracer side, per call) | µs, no cache | µs, dir cache |")
        print("|---|---|---|")
        for label, plain, cached in bench_to_host(rootfs):
            print(f"| {label} | {plain:.1f} | {cached:.1f} |")
    shutil.rmtree(floor_dir, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rounds": rounds, "rootfs": rootfs, "engines": live, "broken": broken,
                       "results": raw}, f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
