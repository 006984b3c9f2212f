"""The native stop loop (`fastloop.c`): Python's fast paths, without Python, for settled threads.

Why: on the measured VM a stop that Python handles costs 30-50 us of tracer time even when the answer
is known in advance (a cached path), mostly because every switch between the guest and the
interpreter's large working set refills the CPU's caches; the same work in C costs a few us (the
`floor` rows of scripts/bench_engine.py). So the event loop waits through `cf_wait`, which handles
by itself, for threads Python marked settled (`set`), the stops whose answer needs no decision:
absolute paths found in a path cache Python fills (`put`), plain names that are not symlinks,
NULL/empty paths, signal deliveries (not of stop signals), the call of carryon's loader after an
exec (`load`, runtime.execve.loader). Everything else comes back to Python
unchanged, group-stops included (Python keeps them: job control, runtime/tracee/loop.py).

What Python must keep true (runtime/tracee/loop.py, runtime/syscall/enter.py, runtime.path.binding):
- a thread is settled only while nothing about it waits for its next stop (an exec probe, a forget
  call settling, an exit stop, an injected call, a pending execve) and it uses the run's top-level
  mapper (not an emulated chroot); a gone thread is unsettled by cf_wait itself;
- the path cache holds, for clean absolute guest paths (and whether the last component is
  followed), host paths that depend on the image's tree alone (`Mapper.last_pure`: no bind, no
  /proc link, no component refused but for its absence, the answer inside the rootfs): only a
  forget-call (unlink, rename, rmdir, link, symlink) can change them, and every `Mapper.forget()`
  of the top-level mapper empties the cache; nothing is added while a forget-call may still run;
- only one-path calls whose handler is the plain path rewrite (no extension hooked on them, no
  forget, not a write when a read-only bind exists) get a spec.

The values both sides must agree on (thread state bits, queued event kinds, QUEUE_MAX, the socket
call kinds PM_* and flags PMF_*, protocol bits, table limits, cache key markers, the register
indices of runtime/tracee/ffi.py, the follow rules and flag bits of runtime/syscall/table.py) are
written twice, here and in the C sources; tests/test_engine_abi.py parses the C sources and fails
on any difference (and on a C constant it does not know), so a drift fails the tests, not a run.
`ABI` (`cf_abi()`) still guards a prebuilt library against sources of another version.

`load()` gives None (the pure Python loop) when `CARRYON_NATIVE=0`, when the library is stale (the
source beside it is newer: rebuild with `python -m runtime.tracee.native`), or when it cannot be had.
The frozen runtime ships it prebuilt; a source checkout gets it from scripts/setup-env.sh; an
installed copy without it (`pip install .`) builds it once into the user's cache
(`~/.cache/carryon/native/`) when a C compiler is there.
"""

from __future__ import annotations

import ctypes
import os
import sys

ABI = 6
# a thread's state bits Python gives (`set`)
SETTLED = 1         # its stops may be handled natively
FORKS = 2           # its fork/vfork events too
HELD = 4            # Python holds it (stopped before its parent's fork event)
OWN_END = 32        # its end goes to Python at once, not queued (runtime.extension.ptrace_emu)
# queued events (`events`): (kind, a, b, c)
Q_EXIT = 1          # (Q_EXIT, pid, wait status, 0): a process other than the main one ended
Q_FORK = 2          # (Q_FORK, parent, child, child's bits): attach stop handled natively
Q_VFORK = 3         # the same for vfork (kcmp said the child still shares its parent's memory)
Q_EXEC = 4          # (Q_EXEC, pid, its bits, 0): its execve succeeded (see `probe`)
Q_BOUND = 5         # (Q_BOUND, tid, fd, 0): a bind translated natively (port translation)
PROTO_BITS = {"tcp": 1, "udp": 2}
PMF_BOUND_CLIENTS, PMF_REDIRECTED, PMF_READBACK, PMF_AUTO = 1, 2, 4, 8
# socket calls the native loop may answer (fastport.c's PM_* kinds, given with `port_call`)
PM_BIND, PM_CONNECT, PM_SENDTO, PM_ACCEPT, PM_GETSOCKNAME, PM_GETPEERNAME = 1, 2, 3, 4, 5, 6
PM_UNIX, PM_UNIX_SENDTO = 7, 8  # bind/connect, sendto without port translation: AF_UNIX only
PORT_TABLE_MAX = 256    # entries per table of `port_table`, addresses per family of `port_local`
PUB_SIZE, PUB_KEY = 32, 24  # a published entry of `port_table`, and the room for its key
PROBING = -1        # Tracee.fast of a thread whose execve the native loop checks
QUEUE_MAX = 1024
MAXNR = 512         # system call numbers the loop keeps a spec or socket kind for: 0 .. MAXNR-1
# the byte after the NUL that ends a guest path in a path cache key (`put`, `put_dir`)
KEY_FOLLOWED, KEY_NOT_FOLLOWED, KEY_DIR = 1, 2, 3
_DIR_MARK = bytes((0, KEY_DIR))
# what `stats` counts, in the C loop's order (its C_* counters)
STATS = ("cached", "names", "signals", "forks", "exits", "execs", "sockets", "python", "loads")
HERE = os.path.dirname(os.path.abspath(__file__))
# the loop, its path stops, its socket stops, and what they share
SOURCES = tuple(os.path.join(HERE, f) for f in ("fastloop.c", "fastpath.c", "fastport.c"))
HEADER = os.path.join(HERE, "fastloop.h")
LIBRARY = os.path.join(HERE, "_fastloop.so")


class Native:
    """The loaded library, bound to one register buffer (the loop's `regs`)."""

    def __init__(self, lib, regs) -> None:
        self.lib = lib
        self.out = (ctypes.c_int * 4)()
        self.queue = (ctypes.c_int * (4 * QUEUE_MAX))()
        self.out_addr = ctypes.c_void_p(ctypes.addressof(self.out))    # built once: no argtypes
        if lib.cf_init(ctypes.c_void_p(ctypes.addressof(regs))) != 0:    # (resets a used one)
            raise OSError("native loop: out of memory")
        self.set = lib.cf_set               # (pid, bits)
        self.clear = lib.cf_clear
        self._put = lib.cf_put
        self._wait = lib.cf_wait
        self._probe = lib.cf_probe
        self.handlers: dict[int, object] = {}   # queued event kind -> extension's handler

    def wait(self) -> int:
        """0 with self.out = (pid, status, regs fetched, events queued), or -errno."""
        return self._wait(self.out_addr)

    def events(self) -> list[tuple[int, int, int, int]]:
        """The queued events, oldest first (the queue is then empty)."""
        q = self.queue
        n = self.lib.cf_events(q, QUEUE_MAX)
        return [(q[i], q[i + 1], q[i + 2], q[i + 3]) for i in range(0, 4 * n, 4)]

    def probe(self, pid: int, peer: int, fd: int, addr: int, after: int) -> bool:
        """Its execve goes ahead without an exec event: at its next stop, tell whether it
        succeeded (kcmp with the vfork parent `peer`, else a read of `addr` through the old
        memory's descriptor `fd`, as Loop._exec_check does); if so queue Q_EXEC and give it the
        bits `after`. False when the native loop has no room (Python checks itself)."""
        return self._probe(pid, peer, fd, ctypes.c_ulong(addr), after) == 0

    def load(self, pid: int, record: bytes | None) -> bool:
        """pid's next call of carryon's loader gets `record` (runtime.execve.loader), answered
        natively; None: no record. False when the native loop has no room (Python answers)."""
        rec = record or b""
        return self.lib.cf_load(pid, rec, len(rec)) == 0

    # port translation (runtime/extension/portmap.py's attach_native)
    def port_call(self, nr: int, kind: int) -> None:
        self.lib.cf_port_call(nr, kind)

    def port_table(self, fwd, rev, pubs, restricted, bind_ports) -> None:
        """fwd/rev: (proto bit, from port, to port); pubs: (proto bit, guest, host, key bytes);
        restricted: (proto bit, guest port); bind_ports: guest ports."""
        p = b"".join((bytes((proto, len(key))) + guest.to_bytes(2, "little") + host.to_bytes(2, "little")
                      + bytes(PUB_SIZE - 6 - PUB_KEY) + key.ljust(PUB_KEY, b"\0")[:PUB_KEY])
                     for proto, guest, host, key in pubs)
        if self.lib.cf_port_table(_ints(fwd), len(fwd), _ints(rev), len(rev), p or b"\0", len(pubs),
                                  _ints(restricted), len(restricted), _ints([(b,) for b in bind_ports]),
                                  len(bind_ports)) != 0:
            self.port_off()

    def port_off(self) -> None:
        """A table too big for the native loop: Python answers every socket call."""
        for nr in range(MAXNR):
            self.lib.cf_port_call(nr, 0)

    def port_flags(self, bound_clients: bool, redirected: bool, readback: bool, auto: bool) -> None:
        self.lib.cf_port_flags((PMF_BOUND_CLIENTS if bound_clients else 0)
                               | (PMF_REDIRECTED if redirected else 0)
                               | (PMF_READBACK if readback else 0) | (PMF_AUTO if auto else 0))

    def port_bound(self, tid: int, fd: int) -> None:
        self.lib.cf_port_bound(tid, fd)

    def port_local(self, v4: set[bytes], v6: set[bytes]) -> None:
        v4l, v6l = sorted(v4), sorted(v6)
        if len(v4) > PORT_TABLE_MAX or len(v6) > PORT_TABLE_MAX:
            self.port_off()
            return
        self.lib.cf_port_local(b"".join(v4l) or b"\0", len(v4l), b"".join(v6l) or b"\0", len(v6l))

    def tick(self, signo: int, interval_s: float) -> bool:
        """Interrupt the loop's waits every `interval_s` with `signo` (0: stop): a signal whose
        Python handler is pending then runs within that time. False if the kernel refused."""
        return self.lib.cf_tick(signo, int(interval_s * 1e9)) == 0

    def main(self, pid: int) -> None:
        """The main process: its end is never queued (the loop acts on it at once)."""
        self.lib.cf_main(pid)

    def put(self, guest: bytes, host: bytes) -> None:
        self._put(guest, len(guest), host, len(host))

    def put_dir(self, guest: str, host: str) -> None:
        """A directory of the image's tree (guest path, "" for the root; host path), reached
        through nothing but the image's tree: names in it are answered natively (fastpath.c)."""
        g = os.fsencode(guest.rstrip("/")) + _DIR_MARK
        h = os.fsencode(host)
        self._put(g, len(g), h, len(h))

    def spec(self, nr: int, path_reg: int, dirfd_reg: int, rule: int, flag_reg: int,
             cached: bool, wmask: int = 0) -> None:
        """Path stops of call `nr` answered here; with `wmask`, not those whose flags (in
        `flag_reg`) have one of its bits (opens for writing under copy-on-write: Python's)."""
        self.lib.cf_spec(nr, path_reg, dirfd_reg, rule, flag_reg, int(cached), wmask)

    def names(self, names) -> None:
        """The plain names Python must see (bind points and their missing ancestors, . and ..).
        Too many: OSError, and from then on every plain name is Python's."""
        buf = b"".join(n + b"\0" for n in names)
        if self.lib.cf_names(buf, len(buf)) != 0:
            raise OSError("native loop: too many special names")

    def relative_to_python(self) -> None:
        """From now on every relative path is Python's (a working directory may be stale)."""
        self.lib.cf_relative(1)

    def stats(self) -> dict[str, int]:
        out = (ctypes.c_ulong * len(STATS))()
        self.lib.cf_stats(out)
        return dict(zip(STATS, out))



def _ints(rows):
    """A C int array of the rows' numbers, flat (at least one element: never a NULL pointer)."""
    flat = [x for row in rows for x in row]
    return (ctypes.c_int * (len(flat) or 1))(*flat)


_lib = None


def library():
    """The ctypes library, or None (see the module docstring)."""
    global _lib
    if _lib is not None:
        return _lib or None
    _lib = False
    if os.environ.get("CARRYON_NATIVE", "1") == "0":
        return None
    try:
        path = LIBRARY
        if not os.path.exists(path):
            path = _cached_build()
            if path is None:
                return None
        elif _newest_source() > os.stat(path).st_mtime:
            return None                     # stale: rebuilt by scripts/setup-env.sh or `build`
        lib = ctypes.CDLL(path)
        if lib.cf_abi() != ABI:
            return None
    except OSError:
        return None
    _lib = lib
    return lib


def _newest_source() -> float:
    """mtime of the newest source file (0 when there are none: the frozen runtime)."""
    newest = 0.0
    for f in (*SOURCES, HEADER):
        try:
            newest = max(newest, os.stat(f).st_mtime)
        except OSError:
            pass
    return newest


def _cached_build() -> str | None:
    """The library built from the sources in the user's cache (built there now if needed), or
    None. Named after the sources' sizes and mtimes: a changed source gets a new build."""
    return cached_build((*SOURCES, HEADER), "fastloop-{}.so", build)


def cached_build(sources: tuple[str, ...], name: str, builder) -> str | None:
    """`builder(dest)` run once into the user's cache for these sources (`name` with a tag of
    their sizes and mtimes for `{}`), or None (no sources: frozen or broken; no trusted cache dir;
    the build failed). Also runtime/execve/loader.py's."""
    try:
        sts = [os.stat(f) for f in sources]
    except OSError:
        return None                         # frozen without them, or a broken install
    import hashlib
    tag = hashlib.sha256(repr([(st.st_size, st.st_mtime_ns) for st in sts]).encode()).hexdigest()[:16]
    from runtime import cache
    first = cache.candidates(None)[0]
    if first.explicit or os.path.basename(first.path) != "carryon":
        return None             # no XDG/home cache: a shared temp dir is no place to load code from
    # what is built is code we run: only from dirs that pass runtime.cache's trust rule (real,
    # ours, not writable by others), and only a regular file of ours that others cannot write
    ndir = cache.Candidate(os.path.join(first.path, "native"))
    try:
        os.makedirs(first.path, mode=0o700, exist_ok=True)
        if not os.path.lexists(ndir.path):
            os.mkdir(ndir.path, 0o700)
    except OSError:
        return None
    if cache.check_candidate(first)[0] is None or cache.check_candidate(ndir)[0] is None:
        return None
    path = os.path.join(ndir.path, name.format(tag))
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        try:
            return builder(path)
        except OSError:
            return None
    except OSError:
        return None
    import stat
    if stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o022:
        return path
    return None


def load(regs) -> Native | None:
    lib = library()
    if lib is None:
        return None
    try:
        return Native(lib, regs)
    except OSError:
        return None


def build(dest: str = LIBRARY, cc: list[str] | None = None) -> str:
    """Compile the sources into `dest` (atomically); returns dest. Raises OSError with the
    compiler's message on failure."""
    return compile_c(dest, ["-O2", "-shared", "-fPIC", "-Wall", "-Werror"], [*SOURCES, "-lrt"],
                     "the native stop loop", cc)    # -lrt: timer_create, librt before glibc 2.34


def compile_c(dest: str, flags: list[str], sources: list[str], what: str,
              cc: list[str] | None = None) -> str:
    """`cc FLAGS -o DEST SOURCES`, atomically (the compiler writes a fresh temporary name);
    returns dest. OSError naming `what`, with the compiler's message, on failure."""
    import subprocess  # not at the top: start-up time (the runtime only loads)
    cc = cc or [os.environ.get("CC") or "cc"]
    tmp = f"{dest}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    cmd = [*cc, *flags, "-o", tmp, *sources]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True)
    except FileNotFoundError:
        raise OSError(f"no C compiler ({cc[0]}) to build {what}") from None
    if p.returncode != 0:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise OSError(f"{' '.join(cmd)} failed: {p.stderr.strip()}")
    os.chmod(tmp, 0o755)
    os.replace(tmp, dest)
    return dest


if __name__ == "__main__":          # python -m runtime.tracee.native [DEST]: build the library
    try:
        print(build(sys.argv[1] if sys.argv[1:] else LIBRARY))
    except OSError as e:
        sys.exit(f"carryon: {e}")
