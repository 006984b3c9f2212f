"""`carryon extract ARCHIVE DIR`: the rootless extraction the runtime uses, for people and tests.

DIR must be missing or empty. Real files, dirs, symlinks, hardlinks, FIFOs and modes land in DIR (its
own mode is the image root's); owners, xattrs and devices go to `DIR.carryon-meta.json` beside it.
"""

from __future__ import annotations

import argparse
import os

from packer.cli import EXIT_HELP
from packer.progress import Bar
from runtime.archive import read_layout, read_manifest, verify
from runtime.errors import CarryonError
from runtime.extract import extract_rootfs, meta_path_for


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        usage = " ".join(self.format_usage().split()[1:])
        raise CarryonError(f"{message} (usage: {usage})")


def main(argv: list[str]) -> int:
    p = _Parser(prog="carryon extract", description="Extract a carryon archive's rootfs (rootless).",
                epilog=EXIT_HELP)
    p.add_argument("archive", metavar="ARCHIVE")
    p.add_argument("dir", metavar="DIR")
    args = p.parse_args(argv)
    layout = read_layout(args.archive)
    verify(layout, ("manifest", "rootfs"))
    total = int(read_manifest(layout).get("rootfs", {}).get("uncompressed_bytes", 0) or 0)
    parent = os.path.dirname(os.path.abspath(args.dir))
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise CarryonError(f"cannot write {args.dir}: {parent} is not a directory")
    meta = meta_path_for(args.dir)
    try:
        with Bar("extracting", total) as bar:
            extract_rootfs(layout, args.dir, progress=lambda done, _t: bar.update(done), meta_path=meta)
    except OSError as e:  # name DIR, a path in it or the metadata file: never a temporary file
        name = os.fspath(e.filename) if e.filename else args.dir
        if os.path.basename(name).startswith("." + os.path.basename(meta) + "."):
            name = meta
        raise CarryonError(f"cannot write {name}: {e.strerror or e}") from None
    return 0
