"""Entry point of the frozen runtime inside a self-extracting archive (`./app.run ARGS`).

The sh launcher (runtime/launcher.sh) finds or unpacks the runtime and starts it with, in the
environment, `_CARRYON_ARCHIVE` (the archive's path), `_CARRYON_RT` (the runtime dir in use) and, when
that dir still waits for publication, `_CARRYON_RT_PUBLISHED=0` + `_CARRYON_RT_DEST`. This module then:
checks the archive (every section on a cold start; sizes and the manifest on a warm one), extracts the
rootfs once into the node cache, and runs the image's command like `docker run` would.

Launcher options come first, AppImage style (`--carryon-X VALUE` or `--carryon-X=VALUE`; the first
other argument ends them); each also reads `CARRYON_X` from the environment (the command line wins).
"""

from __future__ import annotations

import _signal as signal    # the C module: `signal` imports `enum` (slow start-up); `Signals` is lazy
import os
import sys

from runtime import cache
from runtime.errors import CarryonError

_T0 = __import__("time").perf_counter()

TRAILER_SIZE = 512
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ENTRY_ROOTFS = "rootfs"
INTERNAL_ENV = ("_CARRYON_ARCHIVE", "_CARRYON_RT", "_CARRYON_RT_PUBLISHED", "_CARRYON_RT_DEST",
                "_CARRYON_VERIFIED", "_PYI_ARCHIVE_FILE", "_PYI_PARENT_PROCESS_LEVEL",
                "_PYI_APPLICATION_HOME_DIR", "_PYI_LINUX_PROCESS_NAME", "_PYI_SPLASH_IPC")

HELP = """usage: {prog} [--carryon-OPTION[=VALUE]]... [ARGS...]

Runs the image's command like `docker run IMAGE ARGS`: Entrypoint + (ARGS or Cmd), the image's Env,
WorkingDir and User. The first run extracts the image once into a node cache; each run gets a private
/tmp (removed at exit); other writes land in the cache entry (--carryon-clean resets it).

Options (only at the start; the first other argument ends them). Each also reads CARRYON_<NAME>
from the environment (e.g. CARRYON_CACHE, CARRYON_ENGINE); lists there are newline-separated.
  --carryon-help                 this help
  --carryon-info                 manifest, image digest, sizes, engine on this node, cache location
  --carryon-extract DIR          extract the image's root filesystem into DIR and exit
  --carryon-bind HOST:GUEST[:ro] bind a host path into the guest (repeatable)
  --carryon-env K=V | K          set K in the guest (K alone: copy it from the host) (repeatable)
  --carryon-workdir DIR          working directory in the guest (default: the image's WorkingDir)
  --carryon-entrypoint CMD       run CMD instead of the image's Entrypoint (the image's Cmd is dropped)
  --carryon-engine seccomp|ptrace|auto   syscall interception (default auto)
  --carryon-publish [IP:]HOST:GUEST[/udp]  guest port GUEST is really HOST on the node (repeatable)
  --carryon-netcoop              every fixed port the guest binds gets a free port of the node
  --carryon-ports-file FILE      write the live port mapping there (JSON)
  --carryon-cache DIR            cache directory (default: ~/.cache/carryon, else $TMPDIR or /tmp)
  --carryon-clean                remove this archive's cache entries and exit
  --carryon-verbose              say what happens (twice: more)
Exit status: the command's; 125 when carryon itself fails, 126 command not executable, 127 not found.
"""


# ---------------------------------------------------------------- options

class _Plain:
    """Keyword/positional construction, `==` and repr like a dataclass, without importing `dataclasses`
    (it drags `inspect`, `ast`, `dis`... into every warm start). Subclasses list `_FIELDS` as
    (name, default factory)."""

    _FIELDS: tuple = ()
    __hash__ = None  # type: ignore[assignment]   # mutable, like a non-frozen dataclass

    def __init__(self, *args, **kwargs) -> None:
        if len(args) > len(self._FIELDS):
            raise TypeError(f"{type(self).__name__}() takes at most {len(self._FIELDS)} positional arguments")
        names = [n for n, _ in self._FIELDS]
        for n, v in zip(names, args):
            if n in kwargs:
                raise TypeError(f"{type(self).__name__}() got multiple values for argument {n!r}")
            kwargs[n] = v
        for n, make in self._FIELDS:
            setattr(self, n, kwargs.pop(n) if n in kwargs else make())
        if kwargs:
            raise TypeError(f"{type(self).__name__}() got an unexpected keyword argument {next(iter(kwargs))!r}")

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n, _ in self._FIELDS)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(" + ", ".join(f"{n}={getattr(self, n)!r}" for n, _ in self._FIELDS) + ")"


def _none() -> None:
    return None


class Options(_Plain):
    help: bool
    info: bool
    extract: str | None
    bind: list[str]
    env: list[str]
    workdir: str | None
    entrypoint: str | None
    engine: str
    publish: list[str]
    netcoop: bool
    ports_file: str | None
    cache: str | None
    clean: bool
    verbose: int
    args: list[str]
    _FIELDS = (("help", bool), ("info", bool), ("extract", _none), ("bind", list), ("env", list),
               ("workdir", _none), ("entrypoint", _none), ("engine", lambda: "auto"), ("publish", list),
               ("netcoop", bool), ("ports_file", _none), ("cache", _none), ("clean", bool), ("verbose", int),
               ("args", list))


FLAGS = ("help", "info", "netcoop", "clean", "verbose")
VALUES = ("extract", "workdir", "entrypoint", "engine", "ports-file", "cache")
LISTS = ("bind", "env", "publish")
ENGINES = ("auto", "seccomp", "ptrace")


def _attr(name: str) -> str:
    return name.replace("-", "_")


def _flag_value(name: str, value: str, where: str) -> int:
    v = value.strip().lower()
    if v in ("", "0", "no", "false", "off"):
        return 0
    if v in ("1", "yes", "true", "on"):
        return 1
    if name == "verbose" and v.isdigit():
        return int(v)
    raise CarryonError(f"{where}: expected 0/1 (or yes/no), got {value!r}")


def parse_options(argv: list[str], environ: dict[str, str] | os._Environ | None = None) -> Options:
    """Leading `--carryon-*` options, then `CARRYON_<NAME>` for what the command line did not set."""
    environ = os.environ if environ is None else environ
    o = Options()
    given: set[str] = set()
    i = 0
    while i < len(argv):
        a = argv[i]
        if not a.startswith("--carryon-"):
            break
        name, eq, value = a[len("--carryon-"):].partition("=")
        if name in FLAGS:
            n = _flag_value(name, value, a) if eq else 1
            if name == "verbose":
                o.verbose = (o.verbose + n) if not eq else n
            else:
                setattr(o, name, bool(n))
        elif name in VALUES or name in LISTS:
            if not eq:
                i += 1
                if i >= len(argv):
                    raise CarryonError(f"--carryon-{name} needs a value (see --carryon-help)")
                value = argv[i]
            if name in LISTS:
                getattr(o, name).append(value)
            else:
                setattr(o, _attr(name), value)
        else:
            raise CarryonError(f"unknown option --carryon-{name} (see --carryon-help)")
        given.add(name)
        i += 1
    o.args = list(argv[i:])
    for name in FLAGS + VALUES + LISTS:
        if name in given:
            continue
        key = "CARRYON_" + _attr(name).upper()
        if key not in environ:
            continue
        value = environ[key]
        if name in FLAGS:
            n = _flag_value(name, value, key)
            setattr(o, name, n if name == "verbose" else bool(n))
        elif name in LISTS:
            setattr(o, name, [v for v in value.split("\n") if v])
        elif value:
            setattr(o, _attr(name), value)
    if o.engine not in ENGINES:
        raise CarryonError(f"--carryon-engine {o.engine}: expected seccomp, ptrace or auto")
    return o


# ---------------------------------------------------------------- output helpers

class Reporter:
    def __init__(self, verbose: int) -> None:
        self.verbose = verbose
        self.tty = _isatty(2)

    def mark(self, what: str) -> None:
        """Start-up timeline at --carryon-verbose=3 (ms since this module was imported; the first
        mark also says how old the process was then, at the kernel clock's 10 ms resolution)."""
        if self.verbose >= 3:
            import time
            if not getattr(self, "_aged", False):
                self._aged = True
                try:
                    with open("/proc/self/stat") as f:
                        start = int(f.read().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
                    age = time.clock_gettime(time.CLOCK_BOOTTIME) - (time.perf_counter() - _T0) - start
                    self.say(f"process age when runtime.launch was imported: ~{age * 1000:.0f} ms", 3)
                except (OSError, ValueError, IndexError):
                    pass
            self.say(f"+{(time.perf_counter() - _T0) * 1000:.1f} ms {what}", 3)

    def say(self, msg: str, level: int = 1) -> None:
        if self.verbose >= level:
            sys.stderr.write(f"carryon: {msg}\n")
            sys.stderr.flush()


def _isatty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


class ProgressBar:
    """`carryon: extracting NAME [#####.....] 45% 55/122 MB` on a terminal, at most 10 updates/s."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.last = 0.0
        self.shown = False

    def __call__(self, done: int, total: int) -> None:
        import time
        now = time.monotonic()
        if now - self.last < 0.1 and done < total:
            return
        self.last = now
        frac = min(1.0, done / total) if total > 0 else 0.0
        width = 30
        bar = "#" * int(frac * width) + "." * (width - int(frac * width))
        sys.stderr.write(f"\rcarryon: {self.label} [{bar}] {int(frac * 100):3d}% "
                         f"{done / 1e6:.0f}/{total / 1e6:.0f} MB")
        sys.stderr.flush()
        self.shown = True

    def done(self) -> None:
        if self.shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


# ---------------------------------------------------------------- archive access

SECTIONS = ("launcher", "runtime", "manifest", "rootfs")   # runtime/archive.py's order


class Archive(_Plain):
    path: str
    size: int
    sections: dict[str, tuple[int, int, str]]   # name -> (offset, length, sha256 hex)
    key: str                 # cache key: sha256 of the trailer, which records every section's hash
    manifest: dict
    _layout: object

    def __init__(self, path: str, size: int, sections: dict[str, tuple[int, int, str]], key: str,
                 manifest: dict, _layout: object = None) -> None:
        self.path, self.size, self.sections, self.key, self.manifest = path, size, sections, key, manifest
        self._layout = _layout

    _FIELDS = (("path", _none), ("size", _none), ("sections", _none), ("key", _none), ("manifest", _none),
               ("_layout", _none))

    @property
    def layout(self):
        """runtime.archive's Layout (imported only when needed: extraction, full verification)."""
        if self._layout is None:
            from runtime import archive as fmt
            self._layout = fmt.read_layout(self.path)
        return self._layout


def _sha256_hex(data: bytes) -> str:
    try:
        import _sha256          # builtin: no OpenSSL start-up on the warm path
        return _sha256.sha256(data).hexdigest()
    except ImportError:
        import hashlib
        return hashlib.sha256(data).hexdigest()


def render_trailer(sections: dict[str, tuple[int, str]]) -> bytes:
    """The canonical 512-byte trailer (same bytes as runtime.archive.format_trailer)."""
    head = "CARRYON-ARCHIVE 1\n" + "".join(f"{n} {sections[n][0]} {sections[n][1]}\n" for n in SECTIONS)
    tail = "CARRYON-END\n"
    return (head + " " * (TRAILER_SIZE - len(head) - len(tail) - 1) + "\n" + tail).encode("ascii")


def read_fast(path: str) -> tuple[int, dict[str, tuple[int, int, str]], bytes, bytes]:
    """(file size, sections, trailer bytes, manifest bytes) with two reads and no heavy imports.
    Refuses anything but a canonical trailer whose recorded sizes add up to the file's size."""
    bad = CarryonError(f"{path}: not a carryon archive or corrupted (bad trailer)")
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < TRAILER_SIZE:
                raise bad
            f.seek(size - TRAILER_SIZE)
            trailer = f.read(TRAILER_SIZE)
            lines = [ln.split() for ln in trailer.decode("ascii", "replace").split("\n") if ln.strip()]
            if len(lines) != len(SECTIONS) + 2 or lines[0] != ["CARRYON-ARCHIVE", "1"] or \
                    lines[-1] != ["CARRYON-END"]:
                raise bad
            rec: dict[str, tuple[int, str]] = {}
            for parts, name in zip(lines[1:-1], SECTIONS):
                if len(parts) != 3 or parts[0] != name or not parts[1].isdigit() or len(parts[2]) != 64 \
                        or parts[2].strip("0123456789abcdef"):
                    raise bad
                rec[name] = (int(parts[1]), parts[2])
            if render_trailer(rec) != trailer:
                raise CarryonError(f"{path}: corrupted carryon archive (the trailer was modified)")
            sections: dict[str, tuple[int, int, str]] = {}
            end = size - TRAILER_SIZE
            for name in reversed(SECTIONS[1:]):
                length, digest = rec[name]
                end -= length
                sections[name] = (end, length, digest)
            if end != rec["launcher"][0]:
                raise CarryonError(f"{path}: corrupted carryon archive (section sizes do not add up to the "
                                   "file's size)")
            sections["launcher"] = (0, end, rec["launcher"][1])
            off, length, _ = sections["manifest"]
            f.seek(off)
            manifest = f.read(length)
    except OSError as e:
        raise CarryonError(f"{path}: cannot read: {e.strerror or e}") from None
    return size, sections, trailer, manifest


def open_archive(path: str, verify_all: bool) -> Archive:
    size, sections, trailer, mbytes = read_fast(path)
    layout = None
    if verify_all:
        from runtime import archive as fmt
        layout = fmt.read_layout(path)
        fmt.verify(layout)
    elif _sha256_hex(mbytes) != sections["manifest"][2]:
        raise CarryonError(f"{path}: corrupted carryon archive (section manifest fails its sha256 check)")
    try:
        manifest = cache.json_loads(mbytes.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise CarryonError(f"{path}: corrupted carryon archive (manifest is not JSON)") from None
    if not isinstance(manifest, dict) or manifest.get("format") != 1:
        raise CarryonError(f"{path}: unsupported carryon manifest format")
    if sections["rootfs"][1] == 0:
        raise CarryonError(f"{path}: corrupted carryon archive (empty rootfs)")
    return Archive(path=path, size=size, sections=sections, key=_sha256_hex(trailer)[:32], manifest=manifest,
                   _layout=layout)


def rootfs_needs(manifest: dict) -> tuple[int, int]:
    """(bytes, inodes) an extraction needs, with block rounding and some slack."""
    r = manifest.get("rootfs", {})
    files = int(r.get("files", 0) or 0)
    entries = int(r.get("total_entries", 0) or 0)
    dirs = int(r.get("dirs", 0) or 0)
    data = int(r.get("uncompressed_bytes", 0) or 0)
    return data + (files + dirs) * 4096 + entries * 256 + (8 << 20), entries + 64


# ---------------------------------------------------------------- runtime dir publication

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
    env.update({"_CARRYON_ARCHIVE": arch.path, "_CARRYON_RT": final, "_CARRYON_RT_PUBLISHED": "1", "_CARRYON_RT_DEST": final,
                "_CARRYON_VERIFIED": arch.key, "_PYI_ARCHIVE_FILE": os.path.join(final, "carryon-runtime"),
                "_PYI_PARENT_PROCESS_LEVEL": "-1"})
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
    entry = cache.find_entry(cands, arch.key)
    if entry:
        rep.say(f"cache entry {entry}", 2)
        return entry
    from runtime import archive as fmt
    if not verified:
        fmt.verify(arch.layout)
    need, inodes = rootfs_needs(arch.manifest)
    where = cache.choose(cands, need, inodes, what=f"{os.path.basename(arch.path)}'s image")
    for d in {c.path for c in cands if os.path.isdir(c.path)} | {where}:
        cache.clean_stale(d)
    tmp = cache.new_temp(where, arch.key)
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
        final = cache.publish(tmp, os.path.join(where, arch.key))
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


# ---------------------------------------------------------------- run semantics (docker run)

def _guest_file(rootfs: str, guest_path: str) -> str | None:
    """Host path of a guest file, symlinks resolved inside the rootfs (an absolute target restarts at
    the guest root, `..` stops at it): never a path outside the rootfs. None on a symlink loop."""
    todo = [c for c in reversed(guest_path.split("/")) if c]
    stack: list[str] = []
    links = 0
    while todo:
        c = todo.pop()
        if c == ".":
            continue
        if c == "..":
            if stack:
                stack.pop()
            continue
        host = os.path.join(rootfs, *stack, c)
        try:
            target = os.readlink(host)
        except OSError:                  # not a symlink (or missing): a plain component
            stack.append(c)
            continue
        links += 1
        if links > 40:
            return None
        if target.startswith("/"):
            stack = []
        todo.extend(c2 for c2 in reversed(target.split("/")) if c2)
    return os.path.join(rootfs, *stack)


def _read_db(rootfs: str, guest_path: str) -> list[list[str]]:
    p = _guest_file(rootfs, guest_path)
    if not p:
        return []
    try:
        with open(p, encoding="utf-8", errors="replace") as f:
            return [ln.rstrip("\n").split(":") for ln in f if ln.strip() and not ln.startswith("#")]
    except OSError:
        return []


def resolve_user(user: str, rootfs: str) -> tuple[int, int, str | None]:
    """Docker's `User` (name, uid, name:group, uid:gid) against the image's /etc/passwd and /etc/group:
    (uid, gid, home or None)."""
    name, _, group = user.partition(":")
    passwd = [e for e in _read_db(rootfs, "/etc/passwd") if len(e) >= 7]
    entry = None
    if not name:
        uid = 0
        entry = next((e for e in passwd if e[2] == "0"), None)
    elif name.isdigit():
        uid = int(name)
        entry = next((e for e in passwd if e[2] == name), None)
    else:
        entry = next((e for e in passwd if e[0] == name), None)
        if entry is None:
            raise CarryonError(f"unable to find user {name}: no matching entries in passwd file")
        if not entry[2].isdigit():
            raise CarryonError(f"bad passwd entry for user {name}")
        uid = int(entry[2])
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            groups = [e for e in _read_db(rootfs, "/etc/group") if len(e) >= 3]
            g = next((e for e in groups if e[0] == group), None)
            if g is None or not g[2].isdigit():
                raise CarryonError(f"unable to find group {group}: no matching entries in group file")
            gid = int(g[2])
    else:
        gid = int(entry[3]) if entry is not None and entry[3].isdigit() else 0
    home = entry[5] if entry is not None and entry[5] else None
    return uid, gid, home


def parse_signal(text: str) -> int:
    t = (text or "").strip().upper()
    if not t:
        return signal.SIGTERM
    if t.isdigit():
        n = int(t)
    else:
        if not t.startswith("SIG"):
            t = "SIG" + t
        if t.startswith("SIGRTMIN+") or t.startswith("SIGRTMAX-"):
            base, off = (signal.SIGRTMIN, 1) if "+" in t else (signal.SIGRTMAX, -1)
            digits = t.split("+" if "+" in t else "-", 1)[1]
            if not digits.isdigit():
                raise CarryonError(f"invalid StopSignal {text!r} in the image config")
            n = int(base) + off * int(digits)
        else:
            import signal as signal_module       # (imports enum: only for a named StopSignal)
            try:
                n = int(getattr(signal_module.Signals, t))
            except AttributeError:
                raise CarryonError(f"invalid StopSignal {text!r} in the image config") from None
    if not 0 < n < signal.NSIG:
        raise CarryonError(f"invalid StopSignal {text!r} in the image config")
    return n


def parse_bind(text: str):
    from runtime.spec import Bind
    parts = text.split(":")
    ro = False
    if len(parts) == 3 and parts[2] in ("ro", "rw"):
        ro = parts[2] == "ro"
        parts = parts[:2]
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise CarryonError(f"--carryon-bind {text}: expected HOST:GUEST[:ro]")
    host, guest = os.path.abspath(parts[0]), parts[1]
    if not guest.startswith("/"):
        raise CarryonError(f"--carryon-bind {text}: the guest path must be absolute")
    if not os.path.exists(host):
        raise CarryonError(f"--carryon-bind {text}: {host} does not exist")
    return Bind(host=host, guest=os.path.normpath(guest), readonly=ro)


def _port(text: str, what: str, spec_text: str, lo: int) -> int:
    if not text.isdigit() or len(text) > 5 or not lo <= int(text) <= 65535:
        raise CarryonError(f"--carryon-publish {spec_text}: bad {what} port {text!r} "
                           f"(expected [IP:]HOST:GUEST[/tcp|/udp], ports {lo}-65535)")
    return int(text)


def parse_publish(text: str):
    """`[IP:]HOST:GUEST[/tcp|/udp]`, strictly (IPv6 addresses in brackets)."""
    import ipaddress
    from runtime.spec import PortMapping
    usage = f"--carryon-publish {text}: expected [IP:]HOST:GUEST[/tcp|/udp]"
    body, slash, proto = text.partition("/")
    proto = proto.lower() if slash else "tcp"
    if proto not in ("tcp", "udp"):
        raise CarryonError(usage)
    address = None
    if body.startswith("["):
        close = body.find("]")
        if close < 0 or body[close + 1:close + 2] != ":":
            raise CarryonError(usage)
        address, body = body[1:close], body[close + 2:]
        try:
            ipaddress.IPv6Address(address)
        except ValueError:
            raise CarryonError(f"{usage} (bad IPv6 address {address!r})") from None
    parts = body.split(":")
    if len(parts) == 3 and address is None:
        address = parts[0]
        try:
            ipaddress.IPv4Address(address)
        except ValueError:
            raise CarryonError(f"{usage} (bad IP address {address!r})") from None
        parts = parts[1:]
    if len(parts) != 2:
        raise CarryonError(usage)
    host = _port(parts[0], "host", text, 0)
    guest = _port(parts[1], "guest", text, 1)
    return PortMapping(guest=guest, host=host, proto=proto, address=address)


def _host_env(name: str) -> str | None:
    return os.environ.get(name)


def build_env(config: dict, opts: Options, home: str | None) -> dict[str, str]:
    env: dict[str, str] = {"PATH": DEFAULT_PATH, "HOSTNAME": cache.hostname()}
    term = _host_env("TERM")
    if term:
        env["TERM"] = term
    for item in config.get("Env") or []:
        k, eq, v = item.partition("=")
        if k:
            env[k] = v
    for item in opts.env:
        k, eq, v = item.partition("=")
        if not k:
            raise CarryonError(f"--carryon-env {item!r}: expected K=V or K")
        if eq:
            env[k] = v
        else:
            hv = _host_env(k)
            if hv is not None:
                env[k] = hv
    if "HOME" not in env:
        env["HOME"] = home or "/"
    return env


def default_binds(run_tmp: str) -> list:
    from runtime.spec import Bind
    binds = [Bind(host=p, guest=p, optional=True) for p in ("/dev", "/proc", "/sys")]
    binds += [Bind(host=p, guest=p, readonly=False, optional=True)
              for p in ("/etc/resolv.conf", "/etc/hosts", "/etc/hostname")]
    binds.append(Bind(host=run_tmp, guest="/tmp"))
    return binds


def build_spec(arch: Archive, entry: str, opts: Options, run_tmp: str):
    from runtime.spec import RunSpec
    config = arch.manifest.get("config") or {}
    rootfs = os.path.join(entry, ENTRY_ROOTFS)
    if opts.entrypoint is not None:
        argv = [opts.entrypoint] + opts.args
    else:
        argv = list(config.get("Entrypoint") or []) + (opts.args or list(config.get("Cmd") or []))
    if not argv or not argv[0]:
        raise CarryonError("no command specified (the image has no Entrypoint or Cmd; pass one)")
    uid, gid, home = resolve_user(config.get("User") or "", rootfs)
    cwd = opts.workdir or config.get("WorkingDir") or "/"
    if not cwd.startswith("/"):
        raise CarryonError(f"--carryon-workdir {cwd}: must be an absolute guest path")
    binds = default_binds(run_tmp) + [parse_bind(b) for b in opts.bind]
    spec = RunSpec(rootfs=rootfs, argv=argv, env=build_env(config, opts, home), cwd=cwd, binds=binds,
                   uid=uid, gid=gid, engine=opts.engine, wait_all=False,
                   meta_path=os.path.join(entry, ENTRY_ROOTFS) + ".carryon-meta.json",
                   stop_signal=parse_signal(config.get("StopSignal") or ""), forward_all_signals=True,
                   port_map=[parse_publish(p) for p in opts.publish], netcoop=opts.netcoop,
                   ports_file=os.path.abspath(opts.ports_file) if opts.ports_file else None,
                   verbose=opts.verbose)
    return spec


def make_run_tmp(entry: str, key: str) -> tuple[str, str]:
    """(wrapper dir to remove at exit, the guest's /tmp inside it). In the entry's cache dir (known
    exec-capable); falls back to $TMPDIR or /tmp when that is read-only."""
    last: OSError | None = None
    for d in (os.path.dirname(entry), os.environ.get("TMPDIR") or "/tmp", "/tmp"):
        try:
            wrapper = cache.new_temp(d, key, kind="run")
            tmp = os.path.join(wrapper, "tmp")
            os.mkdir(tmp)
            os.chmod(tmp, 0o1777)
            return wrapper, tmp
        except (OSError, CarryonError) as e:
            last = e if isinstance(e, OSError) else last
    raise CarryonError(f"cannot create a private /tmp for the run: {last.strerror if last else 'no place'}")


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


# ---------------------------------------------------------------- info / extract / clean

def engine_support() -> str:
    try:
        from runtime import engine
    except ImportError:
        return "unknown (no engine in this runtime)"
    try:
        return engine.describe()
    except Exception as e:   # a probe failure is information, not a crash
        return f"unknown ({e})"


def show_info(arch: Archive, opts: Options, rt: str | None) -> int:
    import json
    m = arch.manifest
    img, cfg, rfs = m.get("image", {}), m.get("config", {}), m.get("rootfs", {})
    secs = arch.sections
    cands = cache.candidates(opts.cache)
    entry = cache.find_entry(cands, arch.key)
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
        f"engine:         {engine_support()}",
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
    for c in cache.candidates(opts.cache):
        entry = os.path.join(c.path, arch.key)
        if os.path.isdir(entry):
            cache.remove_entry(entry)
            rep.say(f"removed {entry}")
        for p in cache.clean_stale(c.path):
            rep.say(f"removed {p}")
    return 0


# ---------------------------------------------------------------- main

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
        publish_runtime(internal["_CARRYON_RT"], internal["_CARRYON_RT_DEST"], arch, argv)
    opts = parse_options(argv)
    if opts.publish:
        from runtime.net.publish import check as check_ports
        check_ports([parse_publish(p) for p in opts.publish])  # bad/conflicting ports: 125 before extracting
    prog = os.path.basename(archive_path)
    if opts.help:
        sys.stdout.write(HELP.format(prog=prog))
        return 0
    rep = Reporter(opts.verbose)
    verified = internal.get("_CARRYON_VERIFIED")
    rep.mark("options parsed")
    arch = open_archive(archive_path, verify_all=False)
    already = verified == arch.key
    rep.mark("archive opened")
    if opts.info:
        return show_info(arch, opts, internal.get("_CARRYON_RT"))
    if opts.clean:
        return do_clean(arch, opts, rep)
    if opts.extract:
        if not already:
            from runtime import archive as fmt
            fmt.verify(arch.layout)
        return do_extract(arch, opts.extract, rep)
    entry = ensure_entry(arch, opts, rep, verified=already)
    rep.mark("cache entry found")
    wrapper, run_tmp = make_run_tmp(entry, arch.key)
    try:
        spec = build_spec(arch, entry, opts, run_tmp)
        rep.mark("spec built")
        rep.say(f"running {spec.argv} as {spec.uid}:{spec.gid} in {spec.cwd}", 2)
        from runtime import engine
        rep.mark("engine imported")
        reset_signal_dispositions()
        return int(engine.run(spec))
    finally:
        cache.remove(wrapper)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    internal = _scrub_environment()
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
