"""`carryon doctor [--json] [--cache DIR]` and an archive's `--carryon-doctor`: what this node lets
carryon do, the engine `auto` picks and why, and one line of advice per problem.

Reports: the kernel (release, version, machine, host); seccomp filters under ptrace; ptrace
permission (Yama's `ptrace_scope`, a seccomp filter on this process such as a container's
profile); user namespaces (and why refused: runtime.probe); overlayfs inside one (on a tmpfs, and
with its upper layer in the cache dir, whose file system matters: NFS cannot be one); the cache
location (writable, exec allowed, free space, a network file system by statfs f_type); the kernel
interface of issue 19 (seccomp filter, PTRACE_O_EXITKILL, PTRACE_SEIZE, process_vm_readv: found or
not); the engine `auto` picks and whether it confines a hostile guest. The canary it runs is fresh
(never the cached verdict), and its verdict is cached for the next runs (runtime.choice).

Exit status: 0 when some engine can run here, 125 when none can (or on a bad option). `--json`:
one object with the keys `ok`, `kernel`, `seccomp`, `ptrace`, `userns`, `overlay_userns`, `cache`,
`interface`, `engine`, `advice` (stable: new keys may come, these keep their meaning); from an
archive also `archive`: `engine` (what its default run takes), `confines`, `not_taken` ({rung: why})
and `error` (why that could not be told, e.g. no usable cache to extract it into).
"""

from __future__ import annotations

import os
import sys

# statfs f_type of the file systems a cache should not be on (slow metadata, no overlay upper)
NETWORK_FS = {0x6969: "nfs", 0x0BD00BD0: "lustre", 0x47504653: "gpfs", 0xFF534D42: "cifs",
              0xFE534D42: "smb2", 0x517B: "smb", 0x19830326: "beegfs", 0x00C36400: "ceph",
              0x5346414F: "afs", 0x01021997: "9p", 0xAAD7AAEA: "panfs", 0x65735546: "fuse"}
LOCAL_FS = {0xEF53: "ext2/3/4", 0x58465342: "xfs", 0x9123683E: "btrfs", 0x01021994: "tmpfs",
            0x794C7630: "overlay", 0x2FC12FC1: "zfs", 0x858458F6: "ramfs", 0xF2F52010: "f2fs"}

USAGE = """usage: carryon doctor [--json] [--cache DIR]

What this node lets carryon do (kernel, seccomp, ptrace, user namespaces, overlay, cache dir, the
kernel interface), the engine `auto` picks here and whether it confines, and advice per problem.
exit status: 0 some engine can run here; 125 none can (or bad usage)
"""


def fs_type(path: str) -> int | None:
    """statfs(2)'s f_type of `path` (os.statvfs does not give it), None when unknown."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(256)      # struct statfs is 120 bytes on x86_64
    if libc.statfs(os.fsencode(path), buf) != 0:
        return None
    return int.from_bytes(buf.raw[:8], "little")


def _cache(explicit: str | None) -> dict:
    from runtime import cache
    problems = {}
    for c in cache.candidates(explicit):
        why = cache.unusable_reason(c, 0)
        if why is not None:
            problems[c.path] = why
            continue
        vfs = os.statvfs(c.path)
        t = fs_type(c.path)
        net = NETWORK_FS.get(t) if t is not None else None
        return {"path": c.path, "ok": True, "writable": True, "exec": True,
                "free_bytes": vfs.f_bavail * vfs.f_frsize, "fs_type": hex(t) if t is not None else None,
                "fs_name": net or LOCAL_FS.get(t or -1) or "other", "network": net is not None,
                "problems": problems}
    return {"path": None, "ok": False, "writable": False, "exec": False, "free_bytes": None,
            "fs_type": None, "fs_name": None, "network": False, "problems": problems}


def collect(explicit_cache: str | None = None, spec=None) -> dict:
    """Everything doctor reports, as the stable `--json` object; with an archive's `spec` (its default
    run, `--carryon-doctor`), also the engine that run takes and why (key `archive`)."""
    from runtime import choice, probe
    from runtime.engine import LADDER
    u = os.uname()
    names = tuple(e.name for e in LADDER)
    probed = tuple(dict.fromkeys(("userns",) + names))
    iface = probe.interface()
    userns = probe.userns_refusal()
    overlay = probe.overlay_refusal() if userns is None else "needs user namespaces"
    rungs = {"userns": userns, "seccomp": iface.seccomp, "ptrace": iface.ptrace}
    rungs = {n: rungs.get(n) for n in probed}
    choice.save(choice.verdict_dir(explicit_cache), choice.node_key(names), rungs)
    eligible = {e.name: e.eligible() for e in LADDER}
    why_not = {n: (eligible.get(n) or rungs.get(n)) if n in eligible else
               rungs.get(n) or "usable, but this runtime has no such engine" for n in probed}
    picked = next((e.name for e in LADDER if not why_not[e.name]), None)
    mode, filters = probe.seccomp_status()
    sysctls = {k: probe.sysctl(k) for k in probe.SYSCTLS}
    cache_info = _cache(explicit_cache)
    on_cache = "needs user namespaces" if userns is not None else (
        probe.overlay_refusal(cache_info["path"]) if cache_info["path"] else "no usable cache dir")
    out = {
        "kernel": {"release": u.release, "version": u.version, "machine": u.machine, "hostname": u.nodename},
        "seccomp": {"ok": iface.seccomp is None, "detail": iface.seccomp or "filters under ptrace, "
                    "PTRACE_O_TRACESECCOMP"},
        "ptrace": {"ok": iface.ptrace is None, "detail": iface.ptrace or "allowed",
                   "yama_ptrace_scope": sysctls["kernel.yama.ptrace_scope"],
                   "seccomp_mode": mode, "seccomp_filters": filters},
        "userns": {"ok": userns is None, "detail": userns or "allowed", "sysctls": {
            k: v for k, v in sysctls.items() if k != "kernel.yama.ptrace_scope"}},
        "overlay_userns": {"ok": overlay is None, "detail": overlay or "allowed",
                           "upper_in_cache": on_cache is None, "upper_in_cache_detail": on_cache or "allowed"},
        "cache": cache_info,
        "interface": iface.as_dict(),
        "engine": {"auto": picked, "confines": picked in choice.CONFINING,
                   "rungs": why_not,
                   "confinement": _confinement(picked)},
    }
    if spec is not None:
        out["archive"] = _archive(spec, explicit_cache)
    out["advice"] = advice(out)
    out["ok"] = picked is not None
    return out


def _archive(spec, explicit_cache: str | None) -> dict:
    """The engine this archive's default run takes (auto's Plan, run nothing) and why the rungs
    before it are not taken: a rung usable on the node may not be for this image (userns and an
    image whose recorded owners one mapped id cannot show)."""
    from runtime import choice
    from runtime.engine import LADDER
    plan = choice.Plan(spec, LADDER, choice.verdict_dir(explicit_cache))
    picked = plan.pick()
    reasons = plan.reasons()
    before = {}
    for name, why in reasons.items():
        if name == picked:
            break
        before[name] = why
    return {"engine": picked, "confines": picked in choice.CONFINING, "not_taken": before, "error": None}


def _confinement(picked: str | None) -> str:
    from runtime import choice
    if picked is None:
        return "none: no engine can run here"
    if picked in choice.CONFINING:
        return "confines the guest: its own user and mount namespace, no path translation to race"
    return ("containment only, not a security boundary: a hostile guest can race the ptrace rungs' "
            "path translation (see README, Confinement)")


def advice(d: dict) -> list[str]:
    """One line per problem found."""
    out = []
    filtered = d["ptrace"]["seccomp_mode"] == "2"
    us = d["userns"]
    if not us["ok"]:
        det = us["detail"]
        if "apparmor" in det:
            out.append("user namespaces: Ubuntu's AppArmor restriction refuses them: an admin can allow "
                       "carryon (an AppArmor profile with `userns,`) or set "
                       "kernel.apparmor_restrict_unprivileged_userns=0")
        elif "unprivileged_userns_clone" in det:
            out.append("user namespaces: an admin can enable them: sysctl kernel.unprivileged_userns_clone=1")
        elif "max_user_namespaces" in det:
            out.append("user namespaces: an admin can enable them: sysctl user.max_user_namespaces=15000")
        elif filtered:
            out.append("user namespaces: this process runs under a seccomp filter (a container's profile?) "
                       "that refuses unshare: run the container with a profile that allows it")
        else:
            out.append(f"user namespaces: refused ({det}): the ptrace rungs run instead (slower, no confinement)")
    elif not d["overlay_userns"]["ok"]:
        out.append("overlay in a user namespace: refused (Linux 5.11+ allows it): isolated runs use the "
                   "ptrace rungs' copy-on-write")
    elif not d["overlay_userns"]["upper_in_cache"] and d["cache"]["ok"]:
        out.append(f"overlay in a user namespace: refused with its upper layer in {d['cache']['path']} "
                   f"({d['overlay_userns']['upper_in_cache_detail']}): set CARRYON_CACHE to node-local scratch")
    pt = d["ptrace"]
    if not pt["ok"]:
        det = pt["detail"]
        if "ptrace_scope" in det:
            out.append("ptrace: an admin can allow it: sysctl kernel.yama.ptrace_scope=1")
        elif filtered:
            out.append("ptrace: this process runs under a seccomp filter (a container's profile?) that "
                       "refuses it: run the container with a profile that allows ptrace")
        else:
            out.append(f"ptrace: refused ({det})")
    elif not d["seccomp"]["ok"]:
        out.append("seccomp: no seccomp filters under ptrace (Linux 3.5+): the plain ptrace engine stops "
                   "at every system call (slower)")
    c = d["cache"]
    if not c["ok"]:
        out.append("cache: no usable cache directory: set CARRYON_CACHE (or --carryon-cache) to a writable, "
                   "exec-capable directory with room, e.g. node-local scratch")
    else:
        if c["network"]:
            out.append(f"cache: {c['path']} is on {c['fs_name']} (a network file system): set "
                       "CARRYON_CACHE to node-local scratch for faster starts")
        if c["free_bytes"] is not None and c["free_bytes"] < 1 << 30:
            out.append(f"cache: only {c['free_bytes'] >> 20} MB free in {c['path']}")
    if d["engine"]["auto"] is None:
        out.append("no engine can run here: carryon archives cannot run on this node as it is")
    a = d.get("archive")
    if a and a["engine"] and d["engine"]["auto"] and a["engine"] != d["engine"]["auto"]:
        why = a["not_taken"].get(d["engine"]["auto"]) or ""
        if why.startswith("not for this run"):
                out.append(f"this archive runs on {a['engine']}, not on {d['engine']['auto']} ({why}); "
                       f"--carryon-engine {d['engine']['auto']} runs it there anyway")
    return out


def render(d: dict) -> str:
    def ok(part: dict) -> str:
        return ("ok" if part["ok"] else "refused") + f" ({part['detail']})"

    k, c, e = d["kernel"], d["cache"], d["engine"]
    pt = d["ptrace"]
    if c["ok"]:
        cache_line = (f"{c['path']}: writable, exec allowed, {c['free_bytes'] / 2**30:.1f} GB free, "
                      f"{c['fs_name']}{' (network file system)' if c['network'] else ''}")
    else:
        cache_line = "none usable"
    if c["problems"]:
        cache_line += " (not used: " + "; ".join(f"{p}: {w}" for p, w in c["problems"].items()) + ")"
    iface = d["interface"]
    rungs = "; ".join(f"{n}: {w or 'usable'}" for n, w in e["rungs"].items())
    lines = [
        f"kernel:             {k['release']} ({k['machine']}) on {k['hostname']}",
        f"seccomp:            {ok(d['seccomp'])}",
        f"ptrace:             {ok(pt)}; kernel.yama.ptrace_scope={pt['yama_ptrace_scope'] or '-'}, "
        f"this process {'under a seccomp filter' if pt['seccomp_mode'] == '2' else 'not under a seccomp filter'}",
        f"user namespaces:    {ok(d['userns'])}",
        f"overlay in userns:  {ok(d['overlay_userns'])}; upper layer in the cache dir: "
        f"{'ok' if d['overlay_userns']['upper_in_cache'] else d['overlay_userns']['upper_in_cache_detail']}",
        f"cache:              {cache_line}",
        "kernel interface:   " + ", ".join(f"{n.replace('_filter', ' filter')}: {'found' if iface[n] else 'not found'}"
                                           for n in ("seccomp_filter", "PTRACE_O_EXITKILL", "PTRACE_SEIZE",
                                                     "process_vm_readv")),
        f"engine (auto):      {e['auto'] or 'none'} ({rungs})",
        f"confinement:        {e['confinement']}",
    ]
    if "archive" in d:
        a = d["archive"]
        why = "; ".join(f"{n}: {w}" for n, w in a["not_taken"].items() if w)
        if a["error"]:
            lines.append(f"this archive:       cannot tell: {a['error']}")
        else:
            lines.append(f"this archive:       {a['engine'] or 'none'}" + (f" ({why})" if why else "")
                         + ("" if a["engine"] is None or a["confines"] else ", no confinement"))
    lines += ["advice:"] + [f"  - {a}" for a in d["advice"]] if d["advice"] else ["advice:             none"]
    return "\n".join(lines) + "\n"


def run(explicit_cache: str | None = None, as_json: bool = False, spec=None,
        archive_error: str | None = None) -> int:
    d = collect(explicit_cache, spec)
    if archive_error is not None:
        d["archive"] = {"engine": None, "confines": False, "not_taken": {}, "error": archive_error}
    if as_json:
        import json
        sys.stdout.write(json.dumps(d, indent=2, sort_keys=True) + "\n")
    else:
        sys.stdout.write(render(d))
    return 0 if d["ok"] else 125


def main(argv: list[str]) -> int:
    """`carryon doctor`."""
    from runtime.errors import CarryonError
    as_json = False
    explicit = os.environ.get("CARRYON_CACHE") or None
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("-h", "--help"):
            sys.stdout.write(USAGE)
            return 0
        if a == "--json":
            as_json = True
        elif a == "--cache" and i + 1 < len(argv):
            i += 1
            explicit = argv[i]
        elif a.startswith("--cache="):
            explicit = a.split("=", 1)[1]
        else:
            raise CarryonError(f"unknown argument {a!r} (try: carryon doctor --help)")
        i += 1
    return run(explicit, as_json)
