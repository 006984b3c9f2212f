"""`carryon pack SOURCE [-o OUT] [--tag T] [--platform P] [--level N] [-q]`: image -> carryon archive.

SOURCE may also be `docker://[REGISTRY/]REPO[:TAG|@DIGEST]` (pulled by packer.registry, with
`--creds`, `--authfile`, `--tls-verify`, `--no-cache`) or skopeo's `oci:`, `oci-archive:`,
`docker-archive:` names. Reads the image (packer.sources), squashes its layers in one streaming pass
each (packer.squash), writes the rootfs (packer.rootfs) and the archive (runtime.archive.write_archive:
temp file + rename, so an error or Ctrl-C never leaves a half-written OUT). Without the hidden `--bare`
flag the launcher and the frozen runtime come from `packer.embed.runtime_parts()` -- the single integration point.

OUT `-` is stdout: the archive is built in the work directory as for a file, then streamed out (refused
before any work when stdout is a terminal); nothing named `-` is created. Success prints one line on
stderr (`carryon pack: wrote OUT: SIZE, image DIGEST, N files`); `-q` prints nothing but errors.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
from typing import BinaryIO

from packer.cli import EXIT_HELP
from packer.layers import LayerReader, TarStream
from packer.manifest import LayerResult, build_manifest, image_config
from packer.progress import Bar
from packer.registry import RegistryOptions, parse_reference
from packer.rootfs import DEFAULT_LEVEL, content_size, write_rootfs
from packer.sources import open_image, split_transport
from packer.squash import Squasher
from packer.trace import TraceOptions
from runtime.archive import write_archive
from runtime.errors import CarryonError, InputError

_COMPRESSED_MT = {"gzip": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                  "zstd": "application/vnd.docker.image.rootfs.diff.tar.zstd",
                  "none": "application/vnd.docker.image.rootfs.diff.tar"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 125 via the CLI edge
        usage = " ".join(self.format_usage().split()[1:])
        raise CarryonError(f"{message} (usage: {usage})")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="carryon pack", description="Turn a container image into a carryon archive.",
                epilog=EXIT_HELP)
    p.add_argument("source", metavar="SOURCE",
                   help="OCI layout dir, OCI archive, docker-archive (optionally gzip'd), or - for stdin; "
                        "SOURCE:TAG picks a tag; also skopeo's oci:DIR[:REF], oci-archive:FILE[:REF], "
                        "docker-archive:FILE[:REF], and docker://[REGISTRY/]REPO[:TAG|@sha256:DIGEST] "
                        "to pull from a registry (Docker Hub when no REGISTRY)")
    p.add_argument("-o", "--output", metavar="OUT",
                   help="output file (default: NAME.run in the current dir); - writes the archive to stdout")
    p.add_argument("--tag", help="image tag/name to pick when the source holds several")
    p.add_argument("--platform", help="OS/ARCH[/VARIANT] to pack (default linux/amd64): picked from a "
                   "multi-platform index; an image for another platform is refused")
    p.add_argument("--level", type=int, default=DEFAULT_LEVEL, help=f"zstd level 1-22 (default {DEFAULT_LEVEL})")
    r = p.add_argument_group("registry (docker:// sources)")
    r.add_argument("--creds", metavar="USER[:PASS]",
                   help="credentials (asked for on the terminal when PASS is left out); default: the "
                        "registry's entry in --authfile, $XDG_RUNTIME_DIR/containers/auth.json, "
                        "~/.config/containers/auth.json or ~/.docker/config.json, else anonymous")
    r.add_argument("--authfile", metavar="FILE", help="Docker/containers auth JSON to take credentials from")
    r.add_argument("--tls-verify", metavar="BOOL", nargs="?", const="true", default="true",
                   help="--tls-verify=false: accept any certificate and fall back to plain HTTP "
                        "(a local or self-signed registry)")
    r.add_argument("--no-cache", action="store_true",
                   help="bypass the blob cache ($XDG_CACHE_HOME/carryon/blobs or ~/.cache/carryon/blobs)")
    t = p.add_argument_group("CARE mode: trace runs, pack only what they touched")
    t.add_argument("--trace", action="store_true",
                   help="run the image's command (or each --trace-run) here under the tracer and pack "
                        "only the image paths it looked up")
    t.add_argument("--trace-run", metavar="'ARGS'", action="append", default=[],
                   help="a run to trace (repeatable; implies --trace): the archive's arguments as one "
                        "shell-quoted string, --carryon-* options first (e.g. '--carryon-bind in:/in "
                        "/app/fib.py 20')")
    t.add_argument("--keep", metavar="GLOB", action="append", default=[],
                   help="always keep the image paths matching GLOB and everything below them (repeatable)")
    t.add_argument("--trace-prune-listings", action="store_true",
                   help="a directory the runs listed keeps only the names they used, not all its names")
    t.add_argument("--trace-allow-failure", action="store_true",
                   help="pack even when a traced run exits non-zero")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="print nothing but errors (no progress bars, no summary line)")
    p.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)
    return p


def default_output(source: str) -> str:
    if source == "-":
        return "image.run"
    transport, rest = split_transport(source)
    if transport == "docker":
        try:
            return parse_reference(source).repo.rsplit("/", 1)[-1] + ".run"
        except CarryonError:
            return "image.run"
    if transport is not None:
        source = rest
    name = os.path.basename(os.path.normpath(source.rsplit(":", 1)[0] if not os.path.exists(source) else source))
    for suffix in (".gz", ".tgz", ".zst", ".tar", ".oci", ".docker", ".uncompressed", ".zstd"):
        if name.endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
    for suffix in (".oci", ".docker", ".uncompressed", ".zstd"):
        if name.endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
    return (name or "image") + ".run"


def _runtime_parts() -> tuple[bytes, str]:
    try:
        from packer.embed import runtime_parts
    except ModuleNotFoundError as e:
        if e.name == "packer.embed":
            raise CarryonError("this carryon cannot build self-extracting files (packer.embed is missing)") from None
        raise
    launcher, runtime_tgz = runtime_parts()
    return launcher, runtime_tgz


def _read_layer(sq: Squasher, ref, bar: Bar, done: list[int]) -> LayerResult:
    def on_read(n: int) -> None:
        done[0] += n
        bar.update(done[0])

    reader = LayerReader(ref, on_read=on_read)
    with reader:
        sq.begin_layer(ref.index, reader.what)
        buffered = io.BufferedReader(reader, 256 << 10)
        try:
            # an empty layer (no bytes at all) is a tar without members, as for Docker and umoci
            sq.apply_tar(TarStream(buffered))
        except InputError:
            reader.finish()  # a digest mismatch explains a broken tar best
            raise
        finally:
            buffered.detach()  # else closing the buffer would close `reader`
        reader.finish()  # what the tar did not read is hashed too (below the buffer)
        sq.end_layer()
    media_type = ref.media_type if ref.digest and ref.media_type.startswith("application/vnd.oci") \
        else _COMPRESSED_MT[reader.compression]
    return LayerResult("sha256:" + reader.blob_hash.hexdigest(), ref.diff_id, reader.blob_bytes,
                       media_type, reader.compression)


def _stream_out(path: str, dest: BinaryIO) -> None:
    """Copy the finished archive at `path` to `dest` (stdout); a closed pipe is one error line."""
    try:
        with open(path, "rb") as f:
            shutil.copyfileobj(f, dest, 1 << 20)
        dest.flush()
    except OSError as e:
        if isinstance(e, BrokenPipeError):  # the reader went away: nothing more can reach it
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, dest.fileno())
        raise CarryonError(f"cannot write the archive to stdout: {e.strerror or e}") from None


def pack(source: str, out: str, *, tag: str | None = None, platform: str | None = None,
         level: int = DEFAULT_LEVEL, bare: bool = False, quiet: bool = False,
         registry: RegistryOptions | None = None, trace: TraceOptions | None = None) -> dict:
    """Pack SOURCE into OUT (`-`: stdout); returns the manifest. Errors name what the user gave (OUT,
    SOURCE) or the temporary space, never a temporary file."""
    if not 1 <= level <= 22:
        raise CarryonError(f"--level {level}: must be between 1 and 22")
    to_stdout = out == "-"
    if to_stdout and os.isatty(sys.stdout.fileno()):
        raise CarryonError("-o -: stdout is a terminal; redirect it to a file or a pipe")
    if not to_stdout and os.path.isdir(out):
        raise InputError(f"{out}: is a directory")
    launcher, runtime_tgz = (b"", None) if bare else _runtime_parts()
    tmp_top = tempfile.gettempdir()
    try:
        with tempfile.TemporaryDirectory(prefix="carryon-pack-") as work:
            rootfs, manifest = _build_rootfs(work, source, tag, platform, level, quiet, registry, trace)
            if to_stdout:
                target = os.path.join(work, "archive.run")
                write_archive(target, manifest=manifest, rootfs_path=rootfs, launcher=launcher,
                              runtime_path=runtime_tgz)
                sys.stdout.flush()
                _stream_out(target, sys.stdout.buffer)
                return manifest
            try:  # write_archive's temp file sits beside OUT: its errors are about OUT
                write_archive(out, manifest=manifest, rootfs_path=rootfs, launcher=launcher,
                              runtime_path=runtime_tgz)
            except OSError as e:
                raise CarryonError(f"cannot write {out}: {e.strerror or e}") from None
    except OSError as e:
        name = os.fspath(e.filename) if e.filename else ""
        if name.startswith(os.path.join(tmp_top, "carryon-pack-")):
            raise CarryonError(f"cannot write temporary files in {tmp_top}: {e.strerror or e}") from None
        raise
    return manifest


def _build_rootfs(work: str, source: str, tag: str | None, platform: str | None, level: int,
                  quiet: bool, registry: RegistryOptions | None = None,
                  trace: TraceOptions | None = None) -> tuple[str, dict]:
    """Read and squash the image, write WORK/rootfs.tar.zst; returns (its path, the manifest).
    With `trace` (CARE mode, packer.trace): only what the traced runs touched."""
    image = open_image(source, tag, platform, work, registry)
    if trace is not None:
        from packer import trace as care
        care.check_platform(image.platform)
    with open(os.path.join(work, "spool"), "w+b") as spool:
        sq = Squasher(spool)
        done = [0]
        with Bar("reading", sum(ly.size for ly in image.layers), enabled=False if quiet else None) as bar:
            layers = [_read_layer(sq, ref, bar, done) for ref in image.layers]
        keep = record = None
        if trace is not None:
            rec, runs = care.trace_runs(work, sq, image_config(image.config), trace, quiet)
            sel = care.select(sq, rec, trace)
            keep, record = sel.keep, care.record(runs, trace, sel)
        rootfs = os.path.join(work, "rootfs.tar.zst")
        written = [0]
        with Bar("compressing", content_size(sq.root, keep), enabled=False if quiet else None) as bar2:
            def progress(n: int) -> None:
                written[0] += n
                bar2.update(written[0])
            stats = write_rootfs(sq, rootfs, level, progress, keep)
    manifest = build_manifest(image, layers, stats, level)
    if record is not None:
        manifest["trace"] = record
    return rootfs, manifest


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    out = args.output or default_output(args.source)
    tls = args.tls_verify.lower()
    if tls not in ("true", "false", "1", "0", "yes", "no"):
        raise CarryonError(f"--tls-verify={args.tls_verify}: expected true or false")
    registry = RegistryOptions(creds=args.creds, authfile=args.authfile, tls_verify=tls in ("true", "1", "yes"),
                               no_cache=args.no_cache, quiet=args.quiet)
    trace = None
    if args.trace or args.trace_run:
        trace = TraceOptions(runs=args.trace_run, keep=args.keep, prune_listings=args.trace_prune_listings,
                             allow_failure=args.trace_allow_failure)
    elif args.keep or args.trace_prune_listings or args.trace_allow_failure:
        raise CarryonError("--keep, --trace-prune-listings and --trace-allow-failure need --trace")
    try:
        manifest = pack(args.source, out, tag=args.tag, platform=args.platform, level=args.level,
                        bare=args.bare, quiet=args.quiet, registry=registry, trace=trace)
    except OSError as e:
        raise CarryonError(f"{e.filename or out}: {e.strerror or e}") from None
    if not args.quiet:
        sys.stderr.write(f"carryon pack: {summary(out, manifest)}\n")
    return 0


def summary(out: str, manifest: dict) -> str:
    """`wrote app.run: 47.5 MB, image sha256:..., 5758 files` (from OUT's size and the manifest)."""
    img, rootfs = manifest.get("image", {}), manifest.get("rootfs", {})
    digest = f"image {img['manifest_digest']}" if img.get("manifest_digest") else f"config {img.get('config_digest')}"
    where = "the archive to stdout" if out == "-" else f"{out}: {os.path.getsize(out) / 1e6:.1f} MB"
    return f"wrote {where}, {digest}, {rootfs.get('files', 0)} files"
