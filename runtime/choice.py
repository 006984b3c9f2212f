"""`auto`'s choice of engine: the fastest rung of the ladder (runtime.engine.LADDER) this node lets
run, found by a canary once per node and kernel, cached, and re-checked when it proves stale.

The canary (`canary()`) asks the kernel with probe children (runtime.probe): user namespaces,
ptrace, seccomp filters under ptrace. Its verdict (each rung: None = usable, else why not) is kept
in the cache dir as `engine-HOST-UID.json` with the key it holds for (`node_key()`: host name, boot
id, kernel release and version, uid, the runtime's version and ladder, the sysctls that decide,
this process's seccomp state, the test hooks set); a verdict with another key is not used. The
trust rule of runtime.cache holds: the file is read only from a trusted cache dir, and only when
it is a regular file of ours that nobody else can write (a verdict planted by another user is
ignored and replaced); it is written with `write_atomic`.

`Plan(spec, ladder)` is the order in which `engine.run` tries the rungs: eligible ones the verdict
calls usable, in ladder order. When one raises `Refused` (the kernel refused it before the guest
ran), the plan records the refusal, re-runs the canary if its verdict came from the cache, saves
the new verdict and goes on with the rungs not tried yet: a stale verdict never makes a run fail.
When nothing is left, `failure()` is one line naming each refusal. With `spec.confine` only the
rungs that confine a hostile guest (CONFINING: a mount namespace, no path translation to race)
are tried. Costs a warm run a few small reads (no fork); the canary (a few ms) runs only when no
verdict for this key is cached.
"""

from __future__ import annotations

import os
import stat

from runtime.errors import CarryonError

CONFINING = ("userns",)             # the rungs whose confinement holds against a hostile guest
PROBED = ("userns", "seccomp", "ptrace")    # what the canary asks about (userns even before its rung exists)
LABEL = {"userns": "user namespaces"}
TEST_HOOKS = ("CARRYON_TEST_NO_SECCOMP", "CARRYON_TEST_NO_SEIZE")   # tests: kernels that refuse more


def node_key(names: tuple[str, ...]) -> str:
    """What a verdict holds for: this node, this boot and kernel, this user and runtime, the knobs
    that decide and this process's seccomp state (and whether it is traced)."""
    from runtime import __version__, probe
    u = os.uname()
    parts = [u.nodename, probe.read_text("/proc/sys/kernel/random/boot_id") or "", u.release, u.version,
             str(os.getuid()), str(os.geteuid()), __version__, ",".join(names)]
    parts += [probe.read_text(p) or "-" for p in probe.SYSCTLS.values()]
    parts += list(probe.seccomp_status(traced=True))  # (a nested run's verdict is not the node's)
    parts += [k for k in TEST_HOOKS if os.environ.get(k)]
    return "|".join(parts)


def verdict_dir(explicit: str | None = None) -> str | None:
    """The cache dir the verdict lives in: the first trusted candidate (runtime.cache.candidates),
    made when missing; None when there is none."""
    from runtime import cache
    for c in cache.candidates(explicit):
        st, why = cache.check_candidate(c)
        if st is None and why == cache.MISSING:
            try:
                os.makedirs(c.path, mode=0o700, exist_ok=True)
            except OSError:
                continue
            st, why = cache.check_candidate(c)
        if st is not None:
            return c.path
    return None


def verdict_path(directory: str) -> str:
    from runtime.cache import hostname
    return os.path.join(directory, f"engine-{hostname()}-{os.getuid()}.json")


def load(directory: str | None, key: str) -> dict | None:
    """The cached verdict for `key` in `directory` ({name: None | reason}), or None when there is
    none, it holds for another key, or it is not to be trusted (not a regular file of ours, or
    writable by others)."""
    if not directory:
        return None
    path = verdict_path(directory)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
            return None
        text = os.read(fd, 65536).decode("utf-8", "replace")
    except OSError:
        return None
    finally:
        os.close(fd)
    from runtime.cache import json_loads
    try:
        data = json_loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("key") != key or not isinstance(data.get("rungs"), dict):
        return None
    rungs = data["rungs"]
    return {k: v if isinstance(v, str) else None for k, v in rungs.items()}


def save(directory: str | None, key: str, rungs: dict) -> bool:
    """Cache the verdict (errors ignored: the next run asks again). True when written."""
    if not directory:
        return False
    import json

    from runtime.cache import write_atomic
    try:
        write_atomic(verdict_path(directory), json.dumps({"key": key, "rungs": rungs}, indent=1) + "\n")
        return True
    except CarryonError:
        return False


def canary(names: tuple[str, ...] = PROBED) -> dict:
    """{rung: None | why not} for the rungs `names`, asked of the kernel now."""
    from runtime import probe
    out: dict = {}
    try:                                # a probe that cannot run (no fork) says nothing: try the rung
        if "userns" in names:
            out["userns"] = probe.userns_refusal()
        if "seccomp" in names or "ptrace" in names:
            iface = probe.interface()
            out["ptrace"] = iface.ptrace
            out["seccomp"] = iface.seccomp
    except OSError:
        pass
    return {n: out.get(n) for n in names}


def label(name: str) -> str:
    return LABEL.get(name, name)


def refusal_line(reasons: dict) -> str:
    """ "ptrace: EPERM (...); user namespaces: disabled by ..." : each refused rung once (seccomp is
    left out when it is refused for ptrace's reason)."""
    parts = []
    for name, why in reasons.items():
        if not why or (name == "seccomp" and why == reasons.get("ptrace")):
            continue
        parts.append(f"{label(name)}: {why}")
    return "; ".join(parts)


class Plan:
    """The rungs `auto` tries for one run, in order (iterate), told of refusals (`refused`)."""

    def __init__(self, spec, ladder, verdict_at: str | None = "") -> None:
        self.spec = spec
        self.names = tuple(e.name for e in ladder)
        self.ladder = ladder
        self.probed = tuple(dict.fromkeys(("userns",) + self.names))   # userns first: the fastest
        self.key = node_key(self.names)
        self.dir = verdict_dir() if verdict_at == "" else verdict_at
        cached = load(self.dir, self.key)
        self.fresh = cached is None or any(n not in cached for n in self.probed)
        self.rungs: dict = canary(self.probed) if self.fresh else cached    # type: ignore[assignment]
        if self.fresh:
            save(self.dir, self.key, self.rungs)
        self.tried: list[str] = []
        self.errors: dict[str, str] = {}
        self.not_for_run: dict[str, str] = {}   # usable here, but not for this run (Engine.eligible_for)

    def _why_not(self, engine) -> str | None:
        if self.spec.confine and engine.name not in CONFINING:
            return "does not confine"
        why = engine.eligible() or self.rungs.get(engine.name)
        if why is None and engine.eligible_for is not None:
            why = engine.eligible_for(self.spec)        # this run's needs (cheap: no fork)
            if why:
                self.not_for_run[engine.name] = why
        return why

    def pick(self) -> str | None:
        """The rung this run would take first (nothing is run), None when none would."""
        return next((e.name for e in self.ladder if not self._why_not(e)), None)

    def usable(self, name: str) -> bool:
        """Does the verdict call rung `name` usable on this node (whatever this run needs)?"""
        return name in self.names and self.rungs.get(name) is None and name not in self.errors

    def summary(self) -> str:
        """The rungs tried and why each could not run, in one phrase."""
        return "; ".join(f"{label(n)}: {self.errors[n]}" for n in self.tried if n in self.errors) \
            or "no other engine could run"

    def __iter__(self):
        while True:
            for engine in self.ladder:
                if engine.name in self.tried or self._why_not(engine):
                    continue
                self.tried.append(engine.name)
                if self.spec.verbose >= 1:
                    self.say(engine.name)
                yield engine
                break
            else:
                if self.fresh:
                    return
                self.recheck()

    def recheck(self) -> None:
        """The cached verdict proved stale: ask the kernel again and cache the answer."""
        self.fresh = True
        self.rungs = canary(self.probed)
        self.rungs.update(self.errors)
        save(self.dir, self.key, self.rungs)

    def refused(self, engine, e: Exception) -> None:
        why = str(e)
        self.errors[engine.name] = why
        if not self.fresh:
            self.recheck()
        else:
            self.rungs[engine.name] = why
            save(self.dir, self.key, self.rungs)

    def reasons(self) -> dict:
        """{rung: why it was not used} for the rungs before the one chosen, in the canary's order."""
        out = {}
        for name in self.probed:
            why = self.errors.get(name) or self.rungs.get(name)
            if why is None and name in self.not_for_run:
                why = f"not for this run: {self.not_for_run[name]}"
            if why is None and name not in self.names:
                why = "usable, not in this runtime"
            out[name] = why
        return out

    def say(self, chosen: str) -> None:
        import sys
        before = []
        for name, why in self.reasons().items():
            if name == chosen:
                break
            if why:
                plain = "not in this runtime" in why or why.startswith("not for this run")
                before.append(f"{name}: {'' if plain else 'refused: '}{why}")
        how = "canary" if self.fresh else "cached verdict"
        where = verdict_path(self.dir) if self.dir else "not cached"
        sys.stderr.write(f"carryon: engine: {chosen} ({'; '.join(before + [f'{how}: {where}'])})\n")

    def failure(self) -> CarryonError:
        reasons = {n: self.errors.get(n) or self.rungs.get(n) for n in self.probed}
        for e in self.ladder:
            reasons[e.name] = reasons.get(e.name) or e.eligible()
        if self.spec.confine:
            usable = [n for n in self.names if n not in CONFINING and not reasons.get(n)]
            why = reasons.get("userns") or ("usable, but this runtime has no such engine"
                                            if "userns" not in self.names else "refused")
            return CarryonError(
                f"confinement asked for, but no confining engine can run here (user namespaces: {why}); "
                + (f"the ptrace rungs ({', '.join(usable)}) would run but do not confine a hostile guest"
                   if usable else refusal_line(reasons)))
        return CarryonError("no engine can run here: " + refusal_line(reasons))
