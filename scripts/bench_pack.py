#!/usr/bin/env python3
"""Pack benchmark: carryon pack vs `umoci unpack --rootless` + `tar | zstd`, on debian-python; and
packing from a registry vs `skopeo copy` + pack.

    /opt/cvenv/bin/python scripts/bench_pack.py [IMAGE.oci.tar] [--rounds N] [--quick] [--care-only] [--registry-only]

Prints markdown tables, all numbers measured in this run (machines are noisy: compare the ratios).
Goals (issue 2): pack time <= the umoci pipeline's; rootfs payload at the default level <= the gzip'd
OCI archive; at --level 19 <= 1.05 x `zstd -19` of the same squashed tar. `--quick` skips level 19.
Needs umoci, tar and zstd on PATH. Pack time excludes building the runtime (`--bare`).

CARE mode (issue 21, also alone with `--care-only`): the full archive against the one `--trace` packs from
a run of the image's command (debian-python: `fib.py 20`), both complete self-extracting files (the frozen
runtime is built once before): file and rootfs sizes, pack time, cold start (a fresh CARRYON_CACHE: the
runtime and the image extracted) and warm start. Goals: traced <= 15 % of the full size, cold start
<= 30 % of the full one's, pack with tracing <= 2x the full pack.

Registry (issue 20; skipped without `docker-registry` and `skopeo`): the image is pushed by skopeo to
a Debian docker-registry on loopback; then, interleaved, `carryon pack docker://...` with an empty
blob cache vs `skopeo copy docker://... oci:DIR` + `carryon pack DIR`, and a second `carryon pack
docker://...` with the cache it filled, which must download nothing. Bytes downloaded are counted from
the registry's access log (blob GETs), not from carryon's own report.
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
    runtime = read_layout(str(work / "full.run")).sections["runtime"].length
    med = {k: (statistics.median(packs[k]), statistics.median(colds[k]), statistics.median(warms[k])) for k in kinds}
    print(f"\n## CARE mode: full vs `--trace` (the image's command), {image.name}, median of {rounds}; "
          f"the frozen runtime is {runtime / 1e6:.2f} MB of each file\n")
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


class LoopbackRegistry:
    """docker-registry on 127.0.0.1 (storage and access log in `root`)."""

    def __init__(self, root: Path) -> None:
        import socket
        with socket.socket() as so:
            so.bind(("127.0.0.1", 0))
            self.port = so.getsockname()[1]
        self.host = f"127.0.0.1:{self.port}"
        (root / "config.yml").write_text(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: false\n"
            f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\nhttp:\n  addr: {self.host}\n")
        self.log = root / "access.log"
        self._logf = open(self.log, "wb")
        self.proc = subprocess.Popen(["docker-registry", "serve", str(root / "config.yml")],
                                     stdout=self._logf, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"bench_pack: docker-registry did not start: {self.log.read_text()}") from None
                time.sleep(0.05)

    def blob_bytes(self, since: int) -> int:
        """Bytes of blob bodies served since log offset `since` (combined log: `"GET ..." STATUS BYTES`)."""
        import re
        with open(self.log, "rb") as f:
            f.seek(since)
            text = f.read().decode("utf-8", "replace")
        blob_get = r'"GET /v2/[^"]*/blobs/sha256:[0-9a-f]+ HTTP/[0-9.]+" 20[06] (\d+)'
        return sum(int(m.group(1)) for m in re.finditer(blob_get, text))

    def offset(self) -> int:
        self._logf.flush()
        time.sleep(0.2)           # the registry writes its log line after the body
        return self.log.stat().st_size

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._logf.close()


def registry_rows(image: Path, work: Path, rounds: int) -> None:
    """The registry table (see the module docstring)."""
    reg = LoopbackRegistry(work)
    try:
        ref = f"{reg.host}/debian-python:latest"
        subprocess.run(["skopeo", "--insecure-policy", "copy", "-q", "--dest-tls-verify=false",
                        f"oci-archive:{image}", f"docker://{ref}"], check=True)
        env = dict(os.environ, PYTHONPATH=str(REPO))
        cold, warm, sk_copy, sk_pack = [], [], [], []
        got_cold = got_warm = got_skopeo = 0
        note = ""
        for r in range(rounds):
            cache = work / f"cache{r}"
            at = reg.offset()
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "packer.cli", "pack", "--bare", "-q", "--tls-verify=false",
                            f"docker://{ref}", "-o", str(work / "reg.run")], check=True,
                           env=dict(env, XDG_CACHE_HOME=str(cache)))
            cold.append(time.perf_counter() - t)
            got_cold = reg.blob_bytes(at)
            oci = work / f"skopeo{r}"
            at = reg.offset()
            sk_copy.append(timed(["skopeo", "--insecure-policy", "copy", "-q", "--src-tls-verify=false",
                                  f"docker://{ref}", f"oci:{oci}:latest"]))
            got_skopeo = reg.blob_bytes(at)
            sk_pack.append(timed([sys.executable, "-m", "packer.cli", "pack", "--bare", "-q", str(oci), "-o",
                                  str(work / "sk.run")], env=env))
            shutil.rmtree(oci)
            at = reg.offset()
            t = time.perf_counter()
            p = subprocess.run([sys.executable, "-m", "packer.cli", "pack", "--bare", "--tls-verify=false",
                                f"docker://{ref}", "-o", str(work / "reg2.run")], check=True,
                               env=dict(env, XDG_CACHE_HOME=str(cache)), stderr=subprocess.PIPE, text=True)
            warm.append(time.perf_counter() - t)
            got_warm = reg.blob_bytes(at)
            note = p.stderr.strip().rsplit("; ", 1)[-1]
            shutil.rmtree(cache)
        same = (read_layout(str(work / "reg.run")).sections["rootfs"].sha256
                == read_layout(str(work / "sk.run")).sections["rootfs"].sha256)
        med = statistics.median
        pipe = med([a + b for a, b in zip(sk_copy, sk_pack)])
        print(f"\n## pack from a registry: {image.name} on a loopback docker-registry (median of {rounds})\n")
        print("| step | time (s) | downloaded (MB, registry log) |")
        print("|---|---:|---:|")
        print(f"| carryon pack docker://… (empty blob cache) | {med(cold):.2f} | {got_cold / 1e6:.2f} |")
        print(f"| skopeo copy docker://… oci:DIR | {med(sk_copy):.2f} | {got_skopeo / 1e6:.2f} |")
        print(f"| carryon pack DIR | {med(sk_pack):.2f} | |")
        print(f"| skopeo copy + carryon pack total | {pipe:.2f} | {got_skopeo / 1e6:.2f} |")
        print(f"| carryon pack docker://… again (cache filled) | {med(warm):.2f} | {got_warm / 1e6:.2f} |")
        print("\n| goal / comparison | value | met |")
        print("|---|---:|---|")
        print(f"| the second pack downloads nothing | {got_warm} bytes ({note}) | {'yes' if got_warm == 0 else 'NO'} |")
        print(f"| same rootfs as skopeo copy + pack | | {'yes' if same else 'NO'} |")
        print(f"| pull + pack vs skopeo copy + pack (time) | {med(cold) / pipe:.2f}x | (no goal) |")
        print(f"| second pack vs pack of the local DIR (time) | {med(warm) / med(sk_pack):.2f}x | (no goal) |")
    finally:
        reg.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("image", nargs="?", default=str(DEFAULT_IMAGE))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="skip the --level 19 measurements")
    ap.add_argument("--care-only", action="store_true", help="only the CARE-mode (--trace) table")
    ap.add_argument("--registry-only", action="store_true", help="only the registry table")
    args = ap.parse_args()
    image = Path(args.image)
    if not image.exists():
        print(f"bench_pack: {image} not found", file=sys.stderr)
        return 1
    with_registry = all(shutil.which(t) for t in ("docker-registry", "skopeo"))
    if not with_registry:
        print("bench_pack: no registry table (needs docker-registry and skopeo)", file=sys.stderr)
    if args.care_only:
        with tempfile.TemporaryDirectory(prefix="bench-pack-care-") as d:
            care_rows(image, Path(d), args.rounds)
        return 0
    if args.registry_only:
        if not with_registry:
            return 1
        with tempfile.TemporaryDirectory(prefix="bench-pack-reg-") as d:
            registry_rows(image, Path(d), args.rounds)
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
    if with_registry:
        with tempfile.TemporaryDirectory(prefix="bench-pack-reg-") as d:
            registry_rows(image, Path(d), args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
