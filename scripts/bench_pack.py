#!/usr/bin/env python3
"""Pack benchmark: carryon pack vs `umoci unpack --rootless` + `tar | zstd`, on debian-python.

    /opt/cvenv/bin/python scripts/bench_pack.py [IMAGE.oci.tar] [--rounds N] [--quick]

Prints one markdown table, all numbers measured in this run (machines are noisy: compare the ratios).
Goals (issue 2): pack time <= the umoci pipeline's; rootfs payload at the default level <= the gzip'd
OCI archive; at --level 19 <= 1.05 x `zstd -19` of the same squashed tar. `--quick` skips level 19.
Needs umoci, tar and zstd on PATH. Pack time excludes building the runtime (`--bare`).
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("image", nargs="?", default=str(DEFAULT_IMAGE))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="skip the --level 19 measurements")
    args = ap.parse_args()
    image = Path(args.image)
    if not image.exists():
        print(f"bench_pack: {image} not found", file=sys.stderr)
        return 1
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
