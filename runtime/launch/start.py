"""The archive's entry point (`./app.run ARGS`), once the sh launcher has found or unpacked the runtime.

The sh launcher (runtime/launcher.sh) starts the runtime with, in the environment, `_CARRYON_ARCHIVE`
(the archive's path), `_CARRYON_RT` (the runtime dir in use) and, when that dir still waits for
publication, `_CARRYON_RT_PUBLISHED=0` + `_CARRYON_RT_DEST`. `run` then checks the archive (every
section on a cold start; sizes and the manifest on a warm one), extracts the rootfs once into the node
cache, and runs the image's command like `docker run` would. Errors become one line and an exit code
in `main` only.
"""

from __future__ import annotations

import _signal as signal  # the C module: `signal` imports `enum` (slow start-up)
import os
import sys

from runtime import cache
from runtime.errors import CarryonError
from runtime.launch import install, runspec
from runtime.launch.options import help_text, parse_options
from runtime.launch.report import Reporter
from runtime.launch.selfarchive import open_archive

INTERNAL_ENV = ("_CARRYON_ARCHIVE", "_CARRYON_RT", "_CARRYON_RT_PUBLISHED", "_CARRYON_RT_DEST",
                "_CARRYON_VERIFIED", "_PYI_ARCHIVE_FILE", "_PYI_PARENT_PROCESS_LEVEL",
                "_PYI_APPLICATION_HOME_DIR", "_PYI_LINUX_PROCESS_NAME", "_PYI_SPLASH_IPC")

# ---------------------------------------------------------------- signals

# Python's own SIG_IGN (the engine's child resets these two for the guest)
_KEEP_IGNORED = (signal.SIGPIPE, signal.SIGXFSZ)


def reset_signal_dispositions() -> None:
    """Whatever we inherited (a `cmd &` from a script leaves SIGINT/SIGQUIT ignored, nohup SIGHUP),
    start from the defaults, so the guest (forked by the engine) starts with them too, like Docker."""
    for sig in range(1, signal.NSIG):
        if sig in (signal.SIGKILL, signal.SIGSTOP) or sig in _KEEP_IGNORED:
            continue
        try:
            if signal.getsignal(sig) == signal.SIG_IGN:
                signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):
            pass
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
    except (OSError, ValueError):
        pass


def _scrub_environment() -> dict[str, str]:
    """Take our private variables out of os.environ and undo any library path set for the runtime."""
    internal = {k: os.environ.pop(k) for k in INTERNAL_ENV if k in os.environ}
    rt = internal.get("_CARRYON_RT")
    if "LD_LIBRARY_PATH_ORIG" in os.environ:
        os.environ["LD_LIBRARY_PATH"] = os.environ.pop("LD_LIBRARY_PATH_ORIG")
    elif rt and "LD_LIBRARY_PATH" in os.environ:
        keep = [p for p in os.environ["LD_LIBRARY_PATH"].split(":") if p and not p.startswith(rt)]
        if keep:
            os.environ["LD_LIBRARY_PATH"] = ":".join(keep)
        else:
            del os.environ["LD_LIBRARY_PATH"]
    return internal


def _doctor(archive_path: str, opts) -> int:
    """`--carryon-doctor`: the node's report, and the engine this archive's default run (with the
    options given) takes and why. The archive is extracted first if it is not (as its run would);
    when that fails, the report says why instead (a node with no usable cache is what doctor is for)."""
    from runtime import doctor
    rep = Reporter(opts.verbose)
    run_dir = None
    try:
        arch = open_archive(archive_path, verify_all=False)
        entry = install.ensure_entry(arch, opts, rep, verified=False)
        run_dir, state = install.make_run_dir(entry, arch.key, opts.state)
        spec = runspec.build_spec(arch, entry, opts, run_dir, state)
    except CarryonError as e:
        return doctor.run(opts.cache, spec=None, archive_error=str(e))
    try:
        return doctor.run(opts.cache, spec=spec)
    finally:
        cache.remove(run_dir)


def run(argv: list[str], internal: dict[str, str]) -> int:
    archive_path = internal.get("_CARRYON_ARCHIVE")
    if not archive_path:
        raise CarryonError("this is the runtime of a carryon archive: start the archive, not the runtime")
    archive_path = os.path.normpath(archive_path)
    pending = internal.get("_CARRYON_RT_PUBLISHED") == "0"
    if pending:
        # cold runtime: nothing from this archive is trusted before every section checks out
        try:
            arch = open_archive(archive_path, verify_all=True)
        except BaseException:
            cache.remove(internal["_CARRYON_RT"])
            raise
        install.publish_runtime(internal["_CARRYON_RT"], internal["_CARRYON_RT_DEST"], arch, argv)
    opts = parse_options(argv)
    if opts.publish:
        from runtime.net.publish import check as check_ports
        check_ports([runspec.parse_publish(p) for p in opts.publish])  # bad/conflicting ports: 125 before extracting
    prog = os.path.basename(archive_path)
    if opts.help:
        sys.stdout.write(help_text(prog))
        return 0
    if opts.doctor:
        return _doctor(archive_path, opts)
    rep = Reporter(opts.verbose)
    verified = internal.get("_CARRYON_VERIFIED")
    rep.mark("options parsed")
    arch = open_archive(archive_path, verify_all=False)
    already = verified == arch.key
    rep.mark("archive opened")
    if opts.info:
        from runtime.launch import info  # (not on a run's path: imported when asked for)
        return info.show_info(arch, opts, internal.get("_CARRYON_RT"), rep)
    if opts.clean:
        from runtime.launch import info
        return info.do_clean(arch, opts, rep)
    if opts.extract:
        if not already:
            from runtime import archive as fmt
            fmt.verify(arch.layout)
        from runtime.launch import info
        return info.do_extract(arch, opts.extract, rep)
    entry = install.ensure_entry(arch, opts, rep, verified=already)
    rep.mark("cache entry found")
    run_dir, state = install.make_run_dir(entry, arch.key, opts.state)
    from runtime.launch import nsrun
    nsrun.remove_after.append(run_dir)      # (carryon-nsrun removes it when it runs the guest)
    try:
        spec = runspec.build_spec(arch, entry, opts, run_dir, state)
        if internal.get("_CARRYON_RT") and nsrun.plain(argv, os.environ):
            nsrun.archive.update(arch=arch, entry=entry, config=arch.manifest.get("config") or {},
                                 rt=internal["_CARRYON_RT"])
        rep.mark("spec built")
        rep.say(f"running {spec.argv} as {spec.uid}:{spec.gid} in {spec.cwd}", 2)
        from runtime import engine
        rep.mark("engine imported")
        reset_signal_dispositions()
        traced = arch.manifest.get("trace") if opts.verbose else None
        if traced:                      # a trimmed archive (CARE mode): name what the trimming removed
            from runtime import trace
            spec.trace = trace.Recorder()
        try:
            return int(engine.run(spec))
        finally:
            if traced:
                trace.hint(spec.trace, spec.rootfs, traced)
    finally:
        cache.remove(run_dir)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    internal = _scrub_environment()
    from runtime.launch import nsrun
    nsrun.enter("carryon")              # (runs may exec carryon-nsrun: runtime/launch/nsrun.py)
    verbose = os.environ.get("CARRYON_VERBOSE", "") not in ("", "0") or any(
        a.startswith("--carryon-verbose") for a in argv[:20])
    try:
        rc = run(argv, internal)
    except CarryonError as e:
        sys.stderr.write(f"carryon: {e}\n")
        return e.exit_code if e.exit_code in (126, 127) else 125
    except KeyboardInterrupt:
        sys.stderr.write("carryon: interrupted\n")
        return 130
    except Exception as e:       # noqa: BLE001 -- never a traceback on a user's node unless asked
        if verbose:
            import traceback
            traceback.print_exc()
        sys.stderr.write(f"carryon: internal error: {type(e).__name__}: {e}\n")
        return 125
    try:
        sys.stdout.flush()
    except OSError:
        pass
    return rc

