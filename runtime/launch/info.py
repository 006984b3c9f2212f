"""The archive's commands that do not run the image: `--carryon-info`, `--carryon-extract DIR` and
`--carryon-clean`."""

from __future__ import annotations

import os
import sys

from runtime import cache
from runtime.errors import CarryonError
from runtime.launch.options import Options
from runtime.launch.report import ProgressBar, Reporter
from runtime.launch.selfarchive import Archive
from runtime.trailer import SECTIONS


def engine_support(choice: str = "auto") -> str:
    try:
        from runtime import engine
    except ImportError:
        return "unknown (no engine in this runtime)"
    try:
        return engine.describe(choice)
    except Exception as e:   # a probe failure is information, not a crash
        return f"unknown ({e})"


def kernel_lines(choice: str = "auto") -> list[str]:
    """The kernel, the interface found (issue 19) and the engine used here, with auto's reasons."""
    try:
        from runtime import choice as ch, probe
        from runtime.engine import LADDER
        iface = probe.interface()
        rungs = {"userns": probe.userns_refusal(), "seccomp": iface.seccomp, "ptrace": iface.ptrace}
        rungs = {n: rungs.get(n) for n in dict.fromkeys(("userns",) + tuple(e.name for e in LADDER))}
        used = choice if choice != "auto" else next(
            (e.name for e in LADDER if not (e.eligible() or rungs.get(e.name))), "none")
        why = ch.refusal_line(rungs)
    except Exception as e:   # a probe failure is information, not a crash
        return [f"kernel interface: unknown ({e})"]
    return [f"kernel:         {os.uname().release}",
            f"kernel interface: {iface.line()}",
            f"engine used:    {used}" + (f" ({choice}; refused: {why})" if why else f" ({choice})")]


def show_info(arch: Archive, opts: Options, rt: str | None, rep: Reporter) -> int:
    import json
    m = arch.manifest
    img, cfg, rfs = m.get("image", {}), m.get("config", {}), m.get("rootfs", {})
    secs = arch.sections
    cands = cache.candidates(opts.cache)
    entry = cache.find_entry(cands, arch.key, say=rep.say)
    lines = [
        f"archive:        {arch.path} ({arch.size} bytes)",
        f"carryon:        {m.get('tool', {}).get('name', 'carryon')} {m.get('tool', {}).get('version', '?')}"
        f" (format {m.get('format')})",
        f"image:          {img.get('source', '?')}" + (f" (tag {img['tag']})" if img.get("tag") else ""),
        f"image digest:   {img.get('manifest_digest', '?')}",
        f"config digest:  {img.get('config_digest', '?')}",
        f"platform:       {img.get('platform', '?')}",
        f"layers:         {len(img.get('layers') or [])}",
        f"entrypoint:     {json.dumps(cfg.get('Entrypoint'))}",
        f"cmd:            {json.dumps(cfg.get('Cmd'))}",
        f"env:            {json.dumps(cfg.get('Env') or [])}",
        f"workdir:        {cfg.get('WorkingDir') or '/'}",
        f"user:           {cfg.get('User') or '(root)'}",
        f"exposed ports:  {' '.join(sorted(cfg.get('ExposedPorts') or {})) or '-'}",
        f"stop signal:    {cfg.get('StopSignal') or 'SIGTERM'}",
        "sections:       " + ", ".join(f"{n} {secs[n][1]}" for n in SECTIONS),
        f"rootfs:         {rfs.get('compression', '?')} level {rfs.get('level', '?')}, "
        f"{rfs.get('uncompressed_bytes', '?')} bytes in {rfs.get('total_entries', '?')} entries "
        f"({rfs.get('files', '?')} files, {rfs.get('dirs', '?')} dirs, {rfs.get('symlinks', '?')} symlinks)",
        f"engine:         {engine_support(opts.engine)}",
        *kernel_lines(opts.engine),
        "writes:         " + (f"copy-on-write, kept in {opts.state} (--carryon-state)" if opts.state else
                              "copy-on-write: every run starts from the image, its changes go at exit"),
        f"cache key:      {arch.key}",
        f"cache entry:    {entry + ' (extracted)' if entry else 'not extracted yet'}",
        "cache dirs:     " + ", ".join(c.path for c in cands),
        f"runtime dir:    {rt or '-'}",
    ]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def do_extract(arch: Archive, dest: str, rep: Reporter) -> int:
    from runtime.extract import extract_rootfs
    bar = ProgressBar(f"extracting into {dest}") if rep.tty else None
    try:
        extract_rootfs(arch.layout, dest, progress=bar)
    except OSError as e:
        raise CarryonError(f"cannot extract into {dest}: {e.strerror or e}") from None
    finally:
        if bar:
            bar.done()
    rep.say(f"extracted into {dest}")
    return 0


def do_clean(arch: Archive, opts: Options, rep: Reporter) -> int:
    """Our entries of this archive, its warm-start plans and our stale temp dirs, in the trusted cache
    dirs only: nothing another user owns, nothing behind a symlink."""
    for c in cache.candidates(opts.cache):
        st, why = cache.check_candidate(c)
        if st is None:
            if why != cache.MISSING:
                rep.say(f"cache dir {c.path} not cleaned: {why}")
            continue
        entry = os.path.join(c.path, arch.key)
        if cache.remove_entry(entry):
            rep.say(f"removed {entry}")
        elif os.path.lexists(entry):
            rep.say(f"{entry} left alone: not a directory of ours")
        for p in _our_plans(c.path, arch.key):
            os.unlink(p)
            rep.say(f"removed {p}")
        for p in cache.clean_stale(c.path):
            rep.say(f"removed {p}")
    return 0


def _our_plans(cache_dir: str, key: str) -> list[str]:
    """This archive's warm-start plans of ours in `cache_dir` (runtime.launch.nsrun's
    `nsplan-KEY-HOST-UID`, any host): regular files we own, never through a symlink."""
    import stat
    uid = os.getuid()
    out: list[str] = []
    try:
        names = sorted(os.listdir(cache_dir))
    except OSError:
        return out
    for name in names:
        if name.startswith(f"nsplan-{key}-") and name.endswith(f"-{uid}"):
            p = os.path.join(cache_dir, name)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and st.st_uid == uid:
                out.append(p)
    return out

