"""What a run needs in the node cache: the runtime dir published after the archive checks out (and the
runtime re-executed from there), and the image's cache entry, found or extracted once (runtime/cache.py
has the rules: trust, publication by rename, no locks); the run's private /tmp."""

from __future__ import annotations

import os
import sys

from runtime import cache
from runtime.errors import CarryonError
from runtime.launch import selfarchive
from runtime.launch.options import Options
from runtime.launch.report import ProgressBar, Reporter
from runtime.launch.selfarchive import Archive

ENTRY_ROOTFS = "rootfs"


def _runtime_exec_argv(rt: str, argv: list[str]) -> list[str]:
    ld = os.path.join(rt, "_internal", "ld-linux-x86-64.so.2")
    return [ld, "--inhibit-cache", "--library-path", os.path.join(rt, "_internal"),
            os.path.join(rt, "carryon-runtime")] + argv


def publish_runtime(rt_tmp: str, dest: str, arch: Archive, argv: list[str]) -> None:
    """The runtime dir was unpacked unverified by the sh launcher; the archive is now verified: publish
    it (rename) and re-exec from its final place (the running one's paths die with the rename)."""
    cache.write_marker(rt_tmp, arch.sections["runtime"][2] + "\n")
    final = cache.publish(rt_tmp, dest)
    env = dict(os.environ)
    env.update({"_CARRYON_ARCHIVE": arch.path, "_CARRYON_RT": final, "_CARRYON_RT_PUBLISHED": "1",
                "_CARRYON_RT_DEST": final, "_CARRYON_VERIFIED": arch.key,
                "_PYI_ARCHIVE_FILE": os.path.join(final, "carryon-runtime"), "_PYI_PARENT_PROCESS_LEVEL": "-1"})
    for k in ("_PYI_APPLICATION_HOME_DIR", "_PYI_LINUX_PROCESS_NAME", "_PYI_SPLASH_IPC"):
        env.pop(k, None)
    args = _runtime_exec_argv(final, argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(args[0], args, env)


# ---------------------------------------------------------------- rootfs entry

def ensure_entry(arch: Archive, opts: Options, rep: Reporter, verified: bool) -> str:
    """The published cache entry of this archive, extracting it first when no candidate has it."""
    cands = cache.candidates(opts.cache)
    entry = cache.find_entry(cands, arch.key, say=rep.say if rep.verbose else None)
    if entry:
        rep.say(f"cache entry {entry}", 2)
        return entry
    from runtime import archive as fmt
    if not verified:
        fmt.verify(arch.layout)
    need, inodes = selfarchive.rootfs_needs(arch.manifest)
    where = cache.choose(cands, need, inodes, what=f"{os.path.basename(arch.path)}'s image")
    cand = next(c for c in cands if c.path == where)
    for c in cands:
        if cache.check_candidate(c)[0] is not None:
            cache.clean_stale(c.path)
    tmp = cache.new_temp(where, arch.key, shared=cand.explicit)
    bar = ProgressBar(f"extracting {os.path.basename(arch.path)}") if rep.tty else None
    import time
    t0 = time.monotonic()
    try:
        from runtime.extract import extract_rootfs
        try:
            extract_rootfs(arch.layout, os.path.join(tmp, ENTRY_ROOTFS), progress=bar)
        finally:
            if bar:
                bar.done()
        info = {"archive": os.path.basename(arch.path), "key": arch.key,
                "image": arch.manifest.get("image", {}).get("manifest_digest"), "extracted": int(time.time())}
        import json
        cache.write_marker(tmp, json.dumps(info, sort_keys=True) + "\n")
        final = cache.publish(tmp, os.path.join(where, arch.key), cand)
    except OSError as e:
        cache.remove(tmp)
        raise CarryonError(f"cannot extract the image into {where}: {e.strerror or e}"
                           + (" (disk full: free some space or set CARRYON_CACHE)" if e.errno in (28, 122) else "")
                           ) from None
    except BaseException:
        cache.remove(tmp)
        raise
    rep.say(f"extracted into {final} in {time.monotonic() - t0:.1f} s")
    return final



def make_run_dir(entry: str, key: str, state: str | None) -> tuple[str, str]:
    """(the run's own directory, to remove at exit; its copy-on-write state directory).

    The run directory `.run-KEY-HOST-PID-RAND` lies in the entry's cache dir (known exec-capable,
    the same file system as the image, so copy-on-write can hard-link image files), else in $TMPDIR
    or /tmp. It holds the run's copies of the host's /etc/resolv.conf, hosts and hostname, and the
    state (runtime.path.overlay) unless `state` (`--carryon-state DIR`) keeps it elsewhere. Run
    directories of runs that died (SIGKILL) are removed first."""
    cache_dir = os.path.dirname(entry)
    reap_dead_runs(cache_dir, key)
    last: OSError | None = None
    for d in (cache_dir, os.environ.get("TMPDIR") or "/tmp", "/tmp"):
        try:
            run_dir = cache.new_temp(d, key, kind="run")
            break
        except (OSError, CarryonError) as e:
            last = e if isinstance(e, OSError) else last
    else:
        raise CarryonError(f"cannot create the run's directory: {last.strerror if last else 'no place'}")
    if state is None:
        return run_dir, os.path.join(run_dir, "state")
    state = os.path.abspath(state)
    try:
        os.makedirs(state, mode=0o700, exist_ok=True)
        st = os.stat(state)
    except OSError as e:
        cache.remove(run_dir)
        raise CarryonError(f"--carryon-state {state}: {e.strerror or e}") from None
    if st.st_uid != os.getuid() or st.st_mode & 0o002:
        cache.remove(run_dir)
        raise CarryonError(f"--carryon-state {state}: not a directory of yours that only you can write")
    return run_dir, state


def reap_dead_runs(cache_dir: str, key: str) -> None:
    """Remove the run directories of this archive that runs on this host left when they died
    (their process is gone). Cheap: one listing of the cache dir, no `re` on the warm path."""
    prefix = f".run-{key}-"
    me = cache.hostname()
    try:
        names = [n for n in os.listdir(cache_dir) if n.startswith(prefix)]
    except OSError:
        return
    for n in names:
        parts = n[len(prefix):].rsplit("-", 2)     # HOST-PID-RAND (HOST may hold "-")
        if len(parts) != 3 or parts[0] != me or not parts[1].isdigit():
            continue
        pid = int(parts[1])
        if pid == os.getpid() or cache.pid_alive(pid):
            continue
        p = os.path.join(cache_dir, n)
        try:
            if os.lstat(p).st_uid == os.getuid():
                cache.remove(p)
        except OSError:
            pass
