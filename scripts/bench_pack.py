#!/usr/bin/env python3
"""Pack benchmark: carryon pack vs `umoci unpack --rootless` + `tar | zstd`, on debian-python.

    /opt/cvenv/bin/python scripts/bench_pack.py [IMAGE.oci.tar] [--rounds N] [--quick] [--care-only]

Prints one markdown table, all numbers measured in this run (machines are noisy: compare the ratios).
Goals (issue 2): pack time <= the umoci pipeline's; rootfs payload at the default level <= the gzip'd
OCI archive; at --level 19 <= 1.05 x `zstd -19` of the same squashed tar. `--quick` skips level 19.
Needs umoci, tar and zstd on PATH. Pack time excludes building the runtime (`--bare`).

CARE mode (issue 21, also alone with `--care-only`): the full archive against the one `--trace` packs from
a run of the image's command (debian-python: `fib.py 20`), both complete self-extracting files (the frozen
runtime is built once before): file and rootfs sizes, pack time, cold start (a fresh CARRYON_CACHE: the
runtime and the image extracted) and warm start. Goals: traced <= 15 % of the full size, cold start
<= 30 % of the full one's, pack with tracing <= 2x the full pack.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from packer.rootfs import DEFAULT_LEVEL  # noqa: E402
from runtime.archive import open_section, read_layout  # noqa: E402
from runtime.extract import remove_tree  # noqa: E402

DEFAULT_IMAGE = REPO.parent / "shared" / "images" / "debian-python" / "debian-python.oci.tar"


def timed(cmd: list[str] | str, **kw) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, **kw)
    return time.perf_counter() - t


def carryon_pack(image: Path, out: Path, level: int) -> tuple[float, int]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    t = timed([sys.executable, "-m", "packer.cli", "pack", "--bare", str(image), "-o", str(out),
               "--level", str(level)], env=env, stderr=subprocess.DEVNULL)
    return t, read_layout(str(out)).sections["rootfs"].length


def umoci_pipeline(layout: Path, work: Path) -> tuple[float, float, int]:
    bundle = work / "bundle"
    if bundle.exists():
        remove_tree(str(bundle))
    t1 = timed(["umoci", "unpack", "--rootless", "--image", f"{layout}:latest", str(bundle)],
               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = work / "umoci.tar.zst"
    t2 = timed(f"tar -C '{bundle}/rootfs' -cf - . | zstd -q -3 -T1 -c > '{out}'", shell=True)
    return t1, t2, out.stat().st_size


def _start(archive: Path, cache: Path | None, home: Path) -> float:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}
    if cache is not None:
        env["CARRYON_CACHE"] = str(cache)
    return timed([str(archive)], env=env, stdout=subprocess.DEVNULL)


def care_rows(image: Path, work: Path, rounds: int) -> None:
    """The CARE-mode table: full vs traced archive of the image's command, interleaved rounds."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cli = [sys.executable, "-m", "packer.cli", "pack", "-q", str(image)]
    subprocess.run(cli + ["-o", str(work / "warmup.run")], check=True, env=env)   # the frozen runtime, once
    kinds = {"full": [], "traced": ["--trace"], "traced, --trace-prune-listings": ["--trace", "--trace-prune-listings"]}
    packs: dict[str, list[float]] = {k: [] for k in kinds}
    colds: dict[str, list[float]] = {k: [] for k in kinds}
    warms: dict[str, list[float]] = {k: [] for k in kinds}
    home = work / "home"
    home.mkdir(exist_ok=True)
    for r in range(rounds):
        for k in (list(kinds) if r % 2 == 0 else list(kinds)[::-1]):
            out = work / f"{k.replace(' ', '')}.run"
            packs[k].append(timed(cli + kinds[k] + ["-o", str(out)], env=env, stderr=subprocess.DEVNULL))
            cache = work / f"cache-{r}"
            colds[k].append(_start(out, cache, home))
            warms[k].append(_start(out, cache, home))
            remove_tree(str(cache))
    size = {k: (work / f"{k.replace(' ', '')}.run").stat().st_size for k in kinds}
    rootfs = {k: read_layout(str(work / f"{k.replace(' ', '')}.run")).sections["rootfs"].length for k in kinds}
    med = {k: (statistics.median(packs[k]), statistics.median(colds[k]), statistics.median(warms[k])) for k in kinds}
    print(f"\n## CARE mode: full vs `--trace` (the image's command), {image.name}, median of {rounds}\n")
    print("| archive | file (MB) | rootfs section (MB) | pack (s) | cold start, fresh cache (s) | warm start (s) |")
    print("|---|---:|---:|---:|---:|---:|")
    for k in kinds:
        print(f"| {k} | {size[k] / 1e6:.2f} | {rootfs[k] / 1e6:.2f} | {med[k][0]:.2f} | {med[k][1]:.3f} "
              f"| {med[k][2]:.3f} |")
    f, t, pr = med["full"], med["traced"], med["traced, --trace-prune-listings"]
    goals = [("traced size <= 15 % of full (whole file)", size["traced"] / size["full"], 0.15),
             ("traced size <= 15 % of full (rootfs section)", rootfs["traced"] / rootfs["full"], 0.15),
             ("traced cold start <= 30 % of full", t[1] / f[1], 0.30),
             ("pack with tracing <= 2x full pack", t[0] / f[0], 2.0),
             ("pruned listings: rootfs section <= 15 % of full",
              rootfs["traced, --trace-prune-listings"] / rootfs["full"], 0.15),
             ("pruned listings: cold start <= 30 % of full", pr[1] / f[1], 0.30)]
    print("\n| goal | ratio | met |")
    print("|---|---:|---|")
    for name, ratio, limit in goals:
        print(f"| {name} | {ratio:.2f} | {'yes' if ratio <= limit else 'NO'} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("image", nargs="?", default=str(DEFAULT_IMAGE))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="skip the --level 19 measurements")
    ap.add_argument("--care-only", action="store_true", help="only the CARE-mode (--trace) table")
    args = ap.parse_args()
    image = Path(args.image)
    if not image.exists():
        print(f"bench_pack: {image} not found", file=sys.stderr)
        return 1
    if args.care_only:
        with tempfile.TemporaryDirectory(prefix="bench-pack-care-") as d:
            care_rows(image, Path(d), args.rounds)
        return 0
    for tool in ("umoci", "tar", "zstd"):
        if shutil.which(tool) is None:
            print(f"bench_pack: {tool} not on PATH", file=sys.stderr)
            return 1
    with tempfile.TemporaryDirectory(prefix="bench-pack-") as d:
        work = Path(d)
        layout = work / "layout"
        layout.mkdir()
        t_untar = timed(["tar", "-C", str(layout), "-xf", str(image)])
        packs, unpacks, tarzs = [], [], []
        size_default = size_umoci = 0
        for _ in range(args.rounds):  # interleaved rounds
            t, size_default = carryon_pack(image, work / "default.run", DEFAULT_LEVEL)
            packs.append(t)
            t1, t2, size_umoci = umoci_pipeline(layout, work)
            unpacks.append(t1)
            tarzs.append(t2)
        pack_t = statistics.median(packs)
        pipe_t = statistics.median([a + b for a, b in zip(unpacks, tarzs)])
        gz_size = image.stat().st_size
        rows = [
            (f"carryon pack (default level {DEFAULT_LEVEL}), median of {args.rounds}", pack_t, size_default),
            ("umoci unpack --rootless", statistics.median(unpacks), None),
            ("tar \\| zstd -3 of that rootfs", statistics.median(tarzs), size_umoci),
            ("umoci pipeline total (unpack + tar \\| zstd)", pipe_t, size_umoci),
            ("  (+ tar -x of the oci-archive umoci needs first)", pipe_t + t_untar, None),
            ("gzip'd OCI archive (input)", None, gz_size),
        ]
        goals = [("pack time <= umoci pipeline", pack_t <= pipe_t, f"{pack_t / pipe_t:.2f}x"),
                 ("default payload <= gzip'd OCI archive", size_default <= gz_size, f"{size_default / gz_size:.2f}x")]
        if not args.quick:
            t19, size19 = carryon_pack(image, work / "l19.run", 19)
            lay = read_layout(str(work / "default.run"))
            tarfile_ = work / "squashed.tar"
            import zstandard
            with open_section(lay, "rootfs") as src, open(tarfile_, "wb") as dst:
                zstandard.ZstdDecompressor().copy_stream(src, dst)
            t_z19 = timed(["zstd", "-q", "-19", "-T1", "-f", "-o", str(work / "sq19.zst"), str(tarfile_)])
            z19 = (work / "sq19.zst").stat().st_size
            rows += [("carryon pack --level 19", t19, size19),
                     ("zstd -19 -T1 of the same squashed tar", t_z19, z19)]
            goals.append(("level-19 payload <= 1.05 x zstd -19", size19 <= 1.05 * z19, f"{size19 / z19:.3f}x"))
        print(f"\n## carryon pack benchmark: {image.name} ({os.cpu_count()} CPUs)\n")
        print("| step | time (s) | rootfs payload (MB) |")
        print("|---|---:|---:|")
        for name, t, size in rows:
            ts = f"{t:.2f}" if t is not None else ""
            ss = f"{size / 1e6:.2f}" if size is not None else ""
            print(f"| {name} | {ts} | {ss} |")
        print("\n| goal | ratio | met |")
        print("|---|---:|---|")
        for name, ok, ratio in goals:
            print(f"| {name} | {ratio} | {'yes' if ok else 'NO'} |")
        remove_tree(str(work / "bundle")) if (work / "bundle").exists() else None
        care_rows(image, work, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
