"""CARE mode (`carryon pack SOURCE --trace ...`): run the image on the workstation, keep what it touched.

`trace_runs` writes the squashed tree to a temp dir (a private one in /dev/shm when that tmpfs can take
it, else the pack's work dir) the way a node's cache holds it (the runtime's own rootless extraction,
`runtime.extract`, fed the tree's entries directly), then runs the image's
command, or each `--trace-run 'ARGS'` (split like a shell; leading `--carryon-*` options are the
archive's own: binds for inputs, env, workdir...), exactly as the archive would run it
(`runtime.launch.runspec.build_spec`, copy-on-write state, the seccomp engine else ptrace, never a
namespace engine: the tracer must see the paths), with a `runtime.trace.Recorder` in the RunSpec. The
guest's stdin is /dev/null and its stdout goes to pack's stderr (`-o -` stays clean). A run that
exits non-zero stops the pack (InputError naming it and its status) unless `allow_failure`.

`select` turns the recorded guest paths into the entries to keep, in the image's own tree: every
component on the way of each path (`runtime.path.confine.join`, the symlinks met and their targets,
the last one followed), parents of everything kept, every name of a hardlinked node once one is
kept, every entry at or below a `--keep` glob (fnmatch on the absolute path, `*` crosses `/`), and
all the names of a directory the guest opened (it may list them: getdents is not traced) unless
`prune_listings`. Metadata is the image's (the same squash nodes are written). The result is
deterministic: sorted sets, no timing in the record.
"""

from __future__ import annotations

import fnmatch
import os
import platform as host_platform
import shlex
import sys
import tempfile
from dataclasses import dataclass, field

from packer.rootfs import content_size, walk
from packer.squash import Node, Squasher
from runtime.errors import CarryonError, InputError
from runtime.path.confine import SymlinkLoop, join, split_path
from runtime.trace import OPENED, Recorder, encode_removed

_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "i686": "386",
         "i386": "386", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}


@dataclass
class TraceOptions:
    runs: list[str] = field(default_factory=list)   # argument strings; none: the image's command
    keep: list[str] = field(default_factory=list)   # globs of absolute image paths always kept
    prune_listings: bool = False
    allow_failure: bool = False


@dataclass
class Selection:
    keep: set[str]          # "./path" names for packer.rootfs.walk
    removed: list[str]      # absolute image paths left out, sorted
    before: dict
    after: dict


def host_arch() -> str:
    m = host_platform.machine()
    return _ARCH.get(m, m)


def check_platform(image_platform: str | None) -> None:
    """Refuse (one line) an image this machine cannot run to trace it."""
    plat = image_platform or ""
    parts = plat.split("/")
    arch = parts[1] if len(parts) > 1 else ""
    if (parts[0] and parts[0] != "linux") or (arch and arch != host_arch()):
        raise InputError(f"--trace: the image is {plat}; this machine (linux/{host_arch()}) cannot run "
                         "it to trace it (pack without --trace, or trace on a linux/"
                         f"{arch or '?'} machine)")


class _Shim:
    """What `runspec.build_spec` reads of an archive: the manifest's config and a key."""

    def __init__(self, config: dict) -> None:
        self.manifest = {"config": config}
        self.key = "trace"


_TYPE = {"d": b"5", "f": b"0", "l": b"2", "p": b"6", "c": b"3", "b": b"4"}


def _entries(sq: Squasher):
    """The squashed tree as (runtime.extract.Entry, data) pairs in the rootfs tar's order and form."""
    from runtime.extract import Entry
    sq.spool.flush()
    first: dict[int, str] = {}
    for path, node in walk(sq.root):
        xattrs = {k: v.encode("utf-8", "surrogateescape") for k, v in node.xattrs.items()} or None
        if node.kind != "d" and id(node) in first:
            yield Entry(path, b"1", node.mode, node.uid, node.gid, 0, node.mtime, first[id(node)]), None
            continue
        first[id(node)] = path
        size = node.size if node.kind == "f" else 0
        yield (Entry(path, _TYPE[node.kind], node.mode, node.uid, node.gid, size, node.mtime, node.linkname,
                     node.devmajor, node.devminor, xattrs),
               sq.read_content(node) if node.kind == "f" else None)


def _extract(where: str, sq: Squasher) -> str:
    """The squashed tree on disk as a cache entry holds it (WHERE/entry/rootfs and the metadata JSON
    beside it), by the runtime's own extraction (runtime.extract.extract_entries), no tar in between."""
    from runtime.extract import extract_entries
    entry = os.path.join(where, "entry")
    os.mkdir(entry, 0o700)
    extract_entries(_entries(sq), os.path.join(entry, "rootfs"))
    return entry


def _scratch(work: str, need: int) -> str | None:
    """A private directory in /dev/shm for the traced copy when that tmpfs is exec-capable and has
    twice the room (creating thousands of files there costs a tenth of what a disk's journal asks:
    1.2 s -> 0.25 s for debian-python); None: the pack's work directory (TMPDIR) instead."""
    try:
        st = os.statvfs("/dev/shm")
        if st.f_flag & os.ST_NOEXEC or st.f_bavail * st.f_frsize < 2 * need + (64 << 20):
            return None
        return tempfile.mkdtemp(prefix="carryon-trace-", dir="/dev/shm")
    except OSError:
        return None


class _GuestStdio:
    """stdin from /dev/null, stdout to stderr, for the traced runs (the engine's child inherits them)."""

    def __enter__(self) -> _GuestStdio:
        sys.stdout.flush()
        sys.stderr.flush()
        self.saved = (os.dup(0), os.dup(1))
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.dup2(2, 1)
        return self

    def __exit__(self, *exc) -> None:
        sys.stdout.flush()
        os.dup2(self.saved[0], 0)
        os.dup2(self.saved[1], 1)
        os.close(self.saved[0])
        os.close(self.saved[1])


def _run_one(entry: str, config: dict, text: str, rec: Recorder) -> tuple[list[str], int]:
    """Run one trace run; (the guest argv, its exit status)."""
    from runtime import cache, engine
    from runtime.launch import install, runspec
    from runtime.launch.options import parse_options
    try:
        words = shlex.split(text)
    except ValueError as e:
        raise CarryonError(f"--trace-run {text!r}: {e}") from None
    opts = parse_options(words, {})
    for name in ("help", "info", "clean"):
        if getattr(opts, name):
            raise CarryonError(f"--trace-run {text!r}: --carryon-{name} is not a run")
    if opts.extract:
        raise CarryonError(f"--trace-run {text!r}: --carryon-extract is not a run")
    run_dir, state = install.make_run_dir(entry, "trace", opts.state)
    try:
        spec = runspec.build_spec(_Shim(config), entry, opts, run_dir, state)  # type: ignore[arg-type]  # reads .manifest/.key only
        spec.trace = rec
        engines = [opts.engine] if opts.engine != "auto" else ["seccomp", "ptrace"]
        for i, name in enumerate(engines):
            spec.engine = name
            try:
                with _GuestStdio():
                    return spec.argv, int(engine.run(spec))
            except engine.Refused:
                if i == len(engines) - 1:
                    raise
            except CarryonError as e:
                if e.exit_code in (126, 127):   # not executable / not found: the run's status
                    sys.stderr.write(f"carryon pack: --trace-run {text!r}: {e}\n")
                    return spec.argv, e.exit_code
                raise
        raise CarryonError("no engine can trace here")      # (not reached)
    finally:
        cache.remove(run_dir)


def trace_runs(work: str, sq: Squasher, config: dict, opts: TraceOptions,
               quiet: bool = False) -> tuple[Recorder, list[dict]]:
    """Run the trace runs on an extracted copy of the tree; (the recorder, the runs' records)."""
    from runtime.extract import remove_tree
    shm = _scratch(work, content_size(sq.root))
    try:
        return _trace_in(_extract(shm or work, sq), config, opts, quiet)
    finally:
        if shm is not None:
            remove_tree(shm)


def _trace_in(entry: str, config: dict, opts: TraceOptions, quiet: bool) -> tuple[Recorder, list[dict]]:
    rec = Recorder()
    runs: list[dict] = []
    for text in opts.runs or [""]:
        argv, rc = _run_one(entry, config, text, rec)
        runs.append({"args": text, "argv": argv, "exit": rc})
        if rc != 0 and not opts.allow_failure:
            what = f"--trace-run {text!r}" if text else f"the image's command {shlex.join(argv)!r}"
            raise InputError(f"{what} exited with status {rc}: nothing packed (--trace-allow-failure "
                             "packs what it touched anyway)")
        if not quiet:
            sys.stderr.write(f"carryon pack: traced {shlex.join(argv)}: exit {rc}, "
                             f"{len(rec.paths)} paths so far\n")
    return rec, runs


# ---------------------------------------------------------------- selection

def _follow(root: Node, path: str, keep: set[str]) -> tuple[str, Node] | None:
    """Walk guest `path` in the tree (symlinks followed, the last one too), adding every name met to
    `keep` ("a/b" form); the (path, node) it ends at, or None when it ends at a missing name."""
    def lookup(h: tuple[str, Node], name: str) -> tuple[tuple[str, Node] | None, str | None]:
        p, node = h
        if node.children is None:
            return None, None
        child = node.children.get(name)
        if child is None:
            return None, None
        cp = p + "/" + name if p else name
        keep.add(cp)
        if child.kind == "l":
            return None, child.linkname
        return (cp, child), None

    try:
        walked = join(("", root), split_path(path), lookup, follow_last=True)
    except SymlinkLoop:
        return None
    if walked is None:
        return None
    handles, names = walked
    return handles[-1] if len(handles) > len(names) else None


def _counts(items: list[tuple[str, Node]]) -> dict:
    seen: set[int] = set()
    size = 0
    for _, node in items:
        if node.kind == "f" and id(node) not in seen:
            seen.add(id(node))
            size += node.size
    return {"entries": len(items), "bytes": size}


def select(sq: Squasher, rec: Recorder, opts: TraceOptions) -> Selection:
    """The entries to keep (see the module docstring)."""
    keep: set[str] = set()
    for path in sorted(rec.paths):
        end = _follow(sq.root, path, keep)
        if end is not None and rec.paths[path] & OPENED and end[1].kind == "d":
            if not opts.prune_listings:
                p = end[0]
                for name in end[1].children or {}:
                    keep.add(p + "/" + name if p else name)
    full = list(walk(sq.root))
    globs = [g if g.startswith("/") else "/" + g for g in opts.keep]
    roots: set[str] = set()             # a plain path is also followed like a traced one (`/bin/ls`)
    for g in globs:
        if not any(c in g for c in "*?["):
            end = _follow(sq.root, g, keep)
            if end is not None and end[0]:
                roots.add(end[0])
    by_node: dict[int, list[str]] = {}
    globbed: set[str] = set()
    for dotted, node in full[1:]:
        p = dotted[2:]
        if globs:
            parent = p.rpartition("/")[0]
            if (parent and parent in globbed) or p in roots or any(fnmatch.fnmatchcase("/" + p, g) for g in globs):
                globbed.add(p)
                keep.add(p)
        if node.kind != "d":
            by_node.setdefault(id(node), []).append(p)
    for names in by_node.values():              # hard links stay together
        if len(names) > 1 and any(n in keep for n in names):
            keep.update(names)
    for p in list(keep):                        # and every parent
        while "/" in p:
            p = p.rpartition("/")[0]
            if p in keep:
                break
            keep.add(p)
    dotted_keep = {"./" + p for p in keep}
    kept = [(d, n) for d, n in full if d == "." or d in dotted_keep]
    removed = ["/" + d[2:] for d, _ in full[1:] if d not in dotted_keep]
    return Selection(dotted_keep, removed, _counts(full), _counts(kept))


def record(runs: list[dict], opts: TraceOptions, sel: Selection) -> dict:
    """The manifest's `trace` record."""
    return {"runs": runs, "keep": list(opts.keep), "listings": "pruned" if opts.prune_listings else "kept",
            "before": sel.before, "after": sel.after, "removed": encode_removed(sel.removed)}
