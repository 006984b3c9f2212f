"""`carryon inspect ARCHIVE|IMAGE [--json] [--files]`: config, layers, counts and sizes; per-file metadata.

`--json` prints the manifest with two more keys: `sections` (offset/length/sha256 of each section)
and, with `--files`, `files`: one object per path (`/` first) with type, mode, uid, gid, size, mtime,
link target, xattrs (base64) and rdev. Works on bare payloads and on full self-extracting files.

An image -- whatever `carryon pack` takes: `docker://REF` (only its manifest and config are
downloaded), `oci:DIR`, `oci-archive:FILE`, `docker-archive:FILE`, an image directory, or a file that
is not an archive but an image -- shows the same image part (`--json`: the manifest's `image` and
`config` keys), picked by `--platform` and SOURCE:TAG/`--tag` as pack picks it.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shlex
import stat
import sys
import tarfile
import tempfile

from packer.cli import EXIT_HELP
from packer.registry import add_registry_options, registry_options
from packer.sources import split_transport
from runtime.archive import iter_rootfs, read_layout, read_manifest
from runtime.errors import CarryonError, InputError
from runtime.extract import split_path, type_letter, xattrs_of

_MODE_BITS = {"d": stat.S_IFDIR, "f": stat.S_IFREG, "h": stat.S_IFREG, "l": stat.S_IFLNK, "p": stat.S_IFIFO,
              "c": stat.S_IFCHR, "b": stat.S_IFBLK}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        usage = " ".join(self.format_usage().split()[1:])
        raise CarryonError(f"{message} (usage: {usage})")


def _guest(name: str) -> str:
    return "/" + "/".join(split_path(name))


def iter_files(layout):
    """One dict per rootfs entry, in archive order."""
    from runtime import zstd
    bad: tuple[type[BaseException], ...] = (tarfile.TarError, EOFError, *zstd.errors())
    try:
        with iter_rootfs(layout) as tf:
            for m in tf:
                letter = type_letter(m)
                e = {"path": _guest(m.name), "type": letter, "mode": m.mode & 0o7777, "uid": m.uid,
                     "gid": m.gid, "size": m.size if m.isreg() else 0, "mtime": int(m.mtime)}
                if m.issym():
                    e["link"] = m.linkname
                elif m.islnk():
                    e["link"] = _guest(m.linkname)
                xa = xattrs_of(m)
                if xa:
                    e["xattrs"] = {k: base64.b64encode(v).decode("ascii") for k, v in sorted(xa.items())}
                if m.ischr() or m.isblk():
                    e["rdev"] = [m.devmajor, m.devminor]
                yield e
    except bad as ex:
        raise InputError(f"{layout.path}: corrupted rootfs ({ex})") from None


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def _text(layout, manifest: dict, files: bool, out) -> None:
    rf = manifest.get("rootfs", {})
    secs = ", ".join(f"{n} {_size(s.length)}" for n, s in layout.sections.items())
    w = out.write
    w(f"archive     {layout.path} ({_size(layout.size)}: {secs})\n")
    tool = manifest.get("tool", {})
    w(f"tool        {tool.get('name', '?')} {tool.get('version', '?')}\n")
    _image_text(manifest, out)
    w(f"rootfs      {rf.get('total_entries')} entries: {rf.get('files')} files, {rf.get('dirs')} dirs, "
      f"{rf.get('symlinks')} symlinks, {rf.get('hardlinks')} hardlinks, {rf.get('other')} other\n")
    w(f"            {_size(rf.get('uncompressed_bytes', 0))} in files, tar {_size(rf.get('tar_bytes', 0))}, "
      f"zstd level {rf.get('level')} {_size(layout.sections['rootfs'].length)}\n")
    tr = manifest.get("trace")
    if tr:                              # CARE mode (packer.trace): what was traced and kept
        before, after = tr.get("before", {}), tr.get("after", {})
        listing = "directories the runs listed kept whole" if tr.get("listings") == "kept" else "listings pruned"
        w(f"trace       trimmed: {after.get('entries')} of {before.get('entries')} entries, "
          f"{_size(after.get('bytes', 0))} of {_size(before.get('bytes', 0))} in files; {listing}\n")
        for r in tr.get("runs", []):
            w(f"  run       exit {r.get('exit')}: {shlex.join(r.get('argv') or [])}"
              f"{'  (--trace-run ' + repr(r['args']) + ')' if r.get('args') else ''}\n")
        for g in tr.get("keep", []):
            w(f"  keep      {g}\n")
    if files:
        for e in iter_files(layout):
            mode = stat.filemode(_MODE_BITS[e["type"]] | e["mode"])
            size = f"{e['rdev'][0]},{e['rdev'][1]}" if "rdev" in e else str(e["size"])
            link = f" -> {e['link']}" if "link" in e else ""
            hl = "(hardlink)" if e["type"] == "h" else ""
            w(f"{mode} {e['uid']}:{e['gid']} {size:>9} {e['path']}{link}{hl}\n")


def _image_text(manifest: dict, out) -> None:
    """The image and config lines (an archive's manifest, or an image's description)."""
    img, cfg = manifest.get("image", {}), manifest.get("config", {})
    w = out.write
    w(f"image       {img.get('source')}  tag {img.get('tag')}  {img.get('platform')}\n")
    w(f"manifest    {img.get('manifest_digest')}\n")
    w(f"config      {img.get('config_digest')}\n")
    w(f"layers      {len(img.get('layers', []))}\n")
    for i, layer in enumerate(img.get("layers", [])):
        w(f"  [{i}] {layer.get('digest')}  {_size(layer.get('size', 0)):>9}  {layer.get('media_type')}\n")
    for k in ("Entrypoint", "Cmd"):
        w(f"{k.lower():<11} {json.dumps(cfg.get(k), ensure_ascii=False)}\n")
    for e in cfg.get("Env") or []:
        w(f"env         {e}\n")
    w(f"workdir     {cfg.get('WorkingDir') or '(none)'}\n")
    w(f"user        {cfg.get('User') or '(default: root)'}\n")
    w(f"ports       {' '.join(sorted(cfg.get('ExposedPorts') or {})) or '(none)'}\n")
    w(f"volumes     {' '.join(sorted(cfg.get('Volumes') or {})) or '(none)'}\n")
    if cfg.get("StopSignal"):
        w(f"stopsignal  {cfg['StopSignal']}\n")
    for k, v in sorted((cfg.get("Labels") or {}).items()):
        w(f"label       {k}={v}\n")


def describe_image(source: str, tag: str | None, platform: str | None, registry) -> dict:
    """An image's `image` and `config` as a packed archive's manifest has them (layers as described:
    digest, diff_id, size, media type; a registry's layers are not downloaded)."""
    from packer.manifest import image_config
    from packer.sources import open_image

    with tempfile.TemporaryDirectory(prefix="carryon-inspect-") as work:
        image = open_image(source, tag, platform, work, registry, layers=False)
    return {"image": {"source": image.source, "format": image.format, "manifest_digest": image.manifest_digest,
                      "config_digest": image.config_digest, "platform": image.platform, "tag": image.tag,
                      "layers": [{"digest": ly.digest, "diff_id": ly.diff_id, "size": ly.size,
                                  "media_type": ly.media_type} for ly in image.layers]},
            "config": image_config(image.config)}


def _is_image(source: str) -> bool:
    """Is SOURCE an image reference rather than an archive? (transport names, directories; a file
    only when it is not an archive, decided by the caller)"""
    return split_transport(source)[0] is not None or os.path.isdir(source) or (
        not os.path.exists(source) and ":" in source)


def main(argv: list[str]) -> int:
    p = _Parser(prog="carryon inspect", epilog=EXIT_HELP,
                description="Show a carryon archive's manifest, or an image's (any SOURCE carryon pack takes).")
    p.add_argument("archive", metavar="ARCHIVE|IMAGE")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--files", action="store_true", help="also list every file with owner and mode (archives)")
    p.add_argument("--tag", help="image tag/name to pick when an image source holds several")
    p.add_argument("--platform", help="OS/ARCH[/VARIANT] of an image index to show (default linux/amd64)")
    add_registry_options(p)
    args = p.parse_args(argv)
    layout = None
    if args.files and _is_image(args.archive):
        raise CarryonError(f"--files: {args.archive} is an image, not an archive (pack it to list its files)")
    if not _is_image(args.archive):
        try:
            layout = read_layout(args.archive)
        except InputError as e:
            if "not a carryon archive" not in str(e):
                raise
            try:  # perhaps an image file (OCI or docker archive)
                image = describe_image(args.archive, args.tag, args.platform, registry_options(args, True))
            except InputError as e2:
                if "not a container image" in str(e2):
                    raise InputError(f"{e}, nor a container image") from None
                raise
    else:
        image = describe_image(args.archive, args.tag, args.platform, registry_options(args, True))
    if layout is None and args.files:
        raise CarryonError(f"--files: {args.archive} is an image, not an archive (pack it to list its files)")
    try:
        if layout is None:
            _print_image(image, args, sys.stdout)
        else:
            _print(layout, read_manifest(layout), args, sys.stdout)
        sys.stdout.flush()
    except BrokenPipeError:  # `carryon inspect ... | head`: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    return 0


def _print_image(image: dict, args, out) -> None:
    if args.json:
        json.dump(image, out, sort_keys=True, indent=1, ensure_ascii=False)
        out.write("\n")
    else:
        _image_text(image, out)


def _print(layout, manifest: dict, args, out) -> None:
    if args.json:
        doc = dict(manifest)
        doc["sections"] = {n: {"offset": s.offset, "length": s.length, "sha256": s.sha256}
                           for n, s in layout.sections.items()}
        if args.files:
            doc["files"] = list(iter_files(layout))
        json.dump(doc, out, sort_keys=True, indent=1, ensure_ascii=False)
        out.write("\n")
    else:
        _text(layout, manifest, args.files, out)
