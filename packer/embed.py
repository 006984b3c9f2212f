"""The parts `carryon pack` puts in front of a payload: the sh launcher and the frozen runtime.

The runtime is `runtime/` frozen with PyInstaller in onedir mode (onefile re-extracts the interpreter on
every run), plus — the way staticx does it — the loader `ld-linux-x86-64.so.2` and every shared library
the bootloader, libpython and the extension modules need, all in `_internal/`. The launcher starts it as
`_internal/ld-linux-x86-64.so.2 --library-path _internal carryon-runtime`, so it runs on a node whose
glibc is older than ours, or that has none at all.

It is built on first use into a per-user cache keyed by a hash of the runtime sources and of the
versions of everything that goes in (Python, PyInstaller, python-ptrace, zstandard, glibc, libzstd.a). Several
packs may start at once: each build happens in a private temp dir published with an atomic rename.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

from packer.sources import sha256_path
from runtime import cache
from runtime.errors import CarryonError

RECIPE = 12                        # bump when the build recipe below changes
RUNTIME_MAIN = "carryon-runtime"   # the PyInstaller bootloader executable
LIBDIR = "_internal"               # PyInstaller's contents dir; the bundled loader and libs go there too
LOADER = "ld-linux-x86-64.so.2"
OLDKERNEL = "carryon-oldkernel"    # static helper that starts the runtime on Linux < 2.6.39
UNZSTD = "carryon-unzstd"          # static decompressor of the runtime section's second stage
ZSTD_LEVEL = 19                    # of that stage (built once per runtime; unpacking speed is the same)
LIBZSTD_A = "/usr/lib/x86_64-linux-gnu/libzstd.a"   # its decoder, linked into UNZSTD (apt: libzstd-dev)
FILES_MARKER = ".carryon-runtime-files"  # last member of the tar.gz: its presence = complete unpack
HOST_LOADER = "/lib64/ld-linux-x86-64.so.2"
# Loaded by glibc at run time rather than linked: unwinding for pthread_cancel/pthread_exit.
EXTRA_LIBS = ("libgcc_s.so.1",)
HIDDEN_IMPORTS = ("zstandard.backend_c",)    # when zstandard is bundled (no libzstd.a: see build_runtime)
# left out when runtime/zstd.py's `_zstd.so` (libzstd.a's decoder, 0.24 MB) is built: zstandard with its
# compressors (1 MB) and what only it imports
WITHOUT_ZSTANDARD = ("zstandard", "typing", "_typing", "platform")
EXCLUDES = ("packer", "tkinter", "_tkinter", "pytest", "_pytest", "PyInstaller", "setuptools", "pip",
            "distutils", "lib2to3", "pydoc", "doctest", "unittest", "zstandard._cffi", "cffi", "pydistorm",
            "ptrace.debugger", "ptrace.disasm", "readline", "curses", "sqlite3", "xmlrpc", "email.mime")
# Left out although PyInstaller's graph reaches them (it follows every import, even one inside a stdlib
# function the runtime never calls): python-ptrace (runtime/tracee/ffi.py binds libc itself) and what
# only it needs; tarfile's and shutil's compressors and archivers (the rootfs is zstd, read as "r|");
# importlib.metadata and what only it needs; decimal & co.; OpenSSL (_hashlib: libcrypto is 4.7 MB;
# runtime/digest.c hashes as fast, hashlib falls back to the builtin _sha256 & co.); dataclasses with
# inspect, ast, dis (runtime/ has none; traceback's lazy `import ast` is guarded and finds no source
# lines in a frozen runtime anyway; typing stays: zstandard imports it on Python < 3.12); the
# pure-Python fallbacks of C modules the runtime has (_abc, _thread._local, zstandard's backend_c);
# the CJK codecs (see KEPT_ENCODINGS).
# tests/test_runtime_imports.py runs every import statement of runtime/ inside the frozen runtime.
RUNTIME_EXCLUDES = (
    "ptrace", "logging", "datetime", "_strptime", "calendar",
    "bz2", "_bz2", "lzma", "_lzma", "gzip", "zipfile", "py_compile",
    "importlib.metadata", "importlib.resources", "email", "csv", "quopri", "urllib", "pathlib",
    "decimal", "_decimal", "_pydecimal", "fractions", "statistics", "numbers", "contextvars", "_contextvars",
    "argparse", "gettext", "getopt", "pprint", "pickle", "_compat_pickle", "tracemalloc",
    "_py_abc", "_threading_local", "zstandard.backend_cffi", "_hashlib", "ssl", "_ssl",
    "dataclasses", "inspect", "ast", "dis",
    "_multibytecodec", "_codecs_cn", "_codecs_hk", "_codecs_iso2022", "_codecs_jp", "_codecs_kr", "_codecs_tw")
# The frozen interpreter runs in UTF-8 mode (`-X utf8`) and ignores PYTHON* variables, so the locale
# never picks a codec: keep the ones Python or the runtime may name (socket's idna), not the other ~100.
KEPT_ENCODINGS = ("aliases", "ascii", "charmap", "latin_1", "iso8859_1", "iso8859_15", "cp1252", "utf_8",
                  "utf_8_sig", "utf_7", "utf_16", "utf_16_le", "utf_16_be", "utf_32", "utf_32_le",
                  "utf_32_be", "idna", "punycode", "raw_unicode_escape", "unicode_escape")
DROPPED_RUNTIME_HOOKS = ("pyi_rth_inspect",)
# apt packages that provide the tools PyInstaller needs on Linux
TOOLS = {"objdump": "binutils", "objcopy": "binutils", "strip": "binutils", "ldd": "libc-bin"}

Progress = Callable[[str], None]

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class BuiltRuntime:
    tgz: str          # path of the runtime section (see write_section)
    unpacked: int     # bytes of the unpacked runtime (the launcher checks free space against it)
    key: str
    sha256: str = ""  # of the section: the launcher finds a warm runtime dir by it without reading the trailer
    gz: int = 0       # bytes of its gzip'd first stage; 0: the whole section is one tar.gz


# ---------------------------------------------------------------- keys and places

def _runtime_sources() -> list[str]:
    base = os.path.join(_REPO, "runtime")
    out = []
    for d, dirs, files in os.walk(base):
        dirs[:] = sorted(x for x in dirs if x != "__pycache__")
        out += [os.path.join(d, f) for f in sorted(files) if f.endswith((".py", ".c", ".h"))]
    return out


def _dist_version(name: str) -> str:
    from importlib import metadata
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "missing"


def build_key() -> str:
    """Hash of everything that makes up the runtime: sources, this recipe, dependency versions."""
    h = hashlib.sha256()
    h.update(f"recipe {RECIPE}\n".encode())
    for name in ("pyinstaller", "python-ptrace", "zstandard"):
        h.update(f"{name} {_dist_version(name)}\n".encode())
    libc = os.confstr("CS_GNU_LIBC_VERSION") if "CS_GNU_LIBC_VERSION" in os.confstr_names else "?"
    h.update(f"python {sys.version} {platform.machine()} {libc}\n".encode())
    try:                                    # the decoder linked into carryon-unzstd and _zstd.so
        st = os.stat(LIBZSTD_A)
        h.update(f"libzstd.a {st.st_size} {st.st_mtime_ns}\n".encode())
    except OSError:
        h.update(b"libzstd.a missing\n")
    for path in _runtime_sources() + [os.path.abspath(__file__)]:
        with open(path, "rb") as f:
            data = f.read()
        h.update(f"{os.path.relpath(path, _REPO)} {len(data)}\n".encode())
        h.update(data)
    return h.hexdigest()[:32]


def build_cache_candidates() -> list[cache.Candidate]:
    """`$CARRYON_BUILD_CACHE` (the user's choice), else `$XDG_CACHE_HOME/carryon/runtime-build` or
    `~/.cache/carryon/runtime-build`, else `$TMPDIR/carryon-build-UID` (a shared temp dir: used only
    under runtime.cache's trust rule, since a planted build would go into every archive we pack)."""
    env = os.environ.get("CARRYON_BUILD_CACHE")
    if env:
        return [cache.Candidate(os.path.abspath(env), explicit=True)]
    out = []
    xdg = os.environ.get("XDG_CACHE_HOME")
    home = os.environ.get("HOME") or os.path.expanduser("~")
    if xdg and os.path.isabs(xdg):
        out.append(os.path.join(xdg, "carryon", "runtime-build"))
    elif home and home != "/" and os.path.isabs(home):
        out.append(os.path.join(home, ".cache", "carryon", "runtime-build"))
    out.append(os.path.join(tempfile.gettempdir(), f"carryon-build-{os.getuid()}"))
    return [cache.Candidate(os.path.normpath(p)) for p in out]


def build_cache_dir() -> tuple[cache.Candidate, os.stat_result]:
    """The first build cache dir that exists (made now, 0700) and passes runtime.cache's trust rule."""
    why = []
    for c in build_cache_candidates():
        try:
            os.makedirs(c.path, mode=0o700, exist_ok=True)
        except OSError as e:
            why.append(f"{c.path}: cannot create ({e.strerror})")
            continue
        st, problem = cache.check_candidate(c)
        if st is not None:
            return c, st
        why.append(f"{c.path}: {problem}")
    raise CarryonError("no trusted runtime build cache (" + "; ".join(why) +
                       "); set CARRYON_BUILD_CACHE to a directory of yours")


def launcher_template() -> str:
    with open(os.path.join(_REPO, "runtime", "launcher.sh"), encoding="utf-8") as f:
        return f.read()


def make_launcher(unpacked_bytes: int, runtime_sha256: str, gz_bytes: int = 0) -> bytes:
    if len(runtime_sha256) != 64 or runtime_sha256.strip("0123456789abcdef"):
        raise CarryonError("make_launcher: bad runtime sha256")
    from runtime.options import sh_flag_pattern
    text = (launcher_template().replace("@CARRYON_RUNTIME_KB@", str(unpacked_bytes // 1024 + 1))
            .replace("@CARRYON_RUNTIME_SHA256@", runtime_sha256)
            .replace("@CARRYON_RUNTIME_GZ@", str(int(gz_bytes)))
            .replace("@CARRYON_FLAG_OPTIONS@", sh_flag_pattern()))
    if "@CARRYON_" in text:
        raise CarryonError("runtime/launcher.sh: unknown placeholder left in the launcher template")
    return text.encode("utf-8")


# ---------------------------------------------------------------- public API

def runtime_parts(progress: Progress | None = None) -> tuple[bytes, str]:
    """(launcher bytes, path of the runtime section), building the runtime first when it is missing."""
    built = ensure_runtime(progress)
    return make_launcher(built.unpacked, built.sha256, built.gz), built.tgz


def ensure_runtime(progress: Progress | None = None, force: bool = False) -> BuiltRuntime:
    key = build_key()
    cand, cst = build_cache_dir()
    bcache = cand.path
    entry = os.path.join(bcache, key)

    def load() -> BuiltRuntime | None:
        why = cache.entry_problem(entry, cand.explicit, cst)
        if why is None:
            return _load_entry(entry, key)
        if why != cache.MISSING:
            _stderr(f"carryon: ignoring the runtime build {entry}: {why}")
        return None

    if not force:
        found = load()
        if found:
            return found
    lock = _lock(bcache)
    try:
        if not force:
            found = load()
            if found:
                return found
        say = progress or _stderr
        say(f"carryon: building the frozen runtime (first use, about a minute) into {entry}")
        tmp = tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=bcache)
        try:
            built = build_runtime(os.path.join(tmp, "work"), tmp, log=os.path.join(tmp, "build.log"))
            info = {"key": key, "unpacked": built.unpacked, "built": int(time.time()),
                    "sha256": sha256_path(built.tgz), "gz": built.gz}
            with open(os.path.join(tmp, "info.json"), "w") as f:
                json.dump(info, f)
            shutil.rmtree(os.path.join(tmp, "work"), ignore_errors=True)
            with open(os.path.join(tmp, ".complete"), "w") as f:
                f.write(key + "\n")
            if force or cache.entry_problem(entry, cand.explicit, cst) not in (None, cache.MISSING):
                cache.remove_entry(entry)        # ours only: another user's entry stays (and fails below)
            try:
                os.rename(tmp, entry)
            except OSError:
                if not load():                   # another build's entry is there and trusted: take it
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        say("carryon: runtime built")
        found = load()
        if not found:
            raise CarryonError(f"runtime build cache {entry} is unusable after the build")
        return found
    finally:
        if lock is not None:
            os.close(lock)


def keep_build_log(log: str) -> str:
    """Copy a failed build's log (its directory is removed) to a fresh file in the temp dir: a new
    name created exclusively (mkstemp), since a predictable one there could be a planted symlink."""
    fd, keep = tempfile.mkstemp(prefix="carryon-runtime-build-", suffix=".log")
    with open(fd, "wb") as out, open(log, "rb") as src:
        shutil.copyfileobj(src, out)
    return keep


def _stderr(msg: str) -> None:
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


def _load_entry(entry: str, key: str) -> BuiltRuntime | None:
    try:
        with open(os.path.join(entry, ".complete")) as f:
            if f.read().strip() != key:
                return None
        with open(os.path.join(entry, "info.json")) as f:
            info = json.load(f)
        tgz = os.path.join(entry, "runtime.tar.gz")
        if not os.path.isfile(tgz):
            return None
        return BuiltRuntime(tgz=tgz, unpacked=int(info["unpacked"]), key=key, sha256=str(info["sha256"]),
                            gz=int(info.get("gz", 0)))
    except (OSError, ValueError, KeyError):
        return None


def _lock(cache: str) -> int | None:
    """Serialize builds on one machine (saves duplicate work); correctness never depends on it."""
    try:
        import fcntl
        fd = os.open(os.path.join(cache, ".build.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:
        pass
    return fd


# ---------------------------------------------------------------- the build

def check_tools() -> None:
    """One-line error naming the apt package when a tool PyInstaller needs is missing."""
    missing = sorted({pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None})
    if missing:
        tools = ", ".join(t for t, p in TOOLS.items() if p in missing and shutil.which(t) is None)
        raise CarryonError(f"building the frozen runtime needs {tools}: apt-get install {' '.join(missing)}")
    if not os.path.exists(HOST_LOADER):
        raise CarryonError(f"building the frozen runtime needs the glibc loader {HOST_LOADER} "
                           "(x86-64 glibc system): apt-get install libc6")
    try:
        import PyInstaller  # noqa: F401
    except ImportError:
        raise CarryonError(f"building the frozen runtime needs PyInstaller in {sys.executable}: "
                           "pip install pyinstaller") from None


def build_native(workdir: str) -> str:
    """runtime/tracee/fastloop.c compiled into workdir (the system's cc, else PyPI's ziglang)."""
    from runtime.tracee import native
    return _compile(native.build, os.path.join(workdir, os.path.basename(native.LIBRARY)),
                    "native stop loop")


def build_loader(workdir: str) -> str:
    """runtime/execve/loader.c (carryon's program loader) compiled into workdir, like the loop."""
    from runtime.execve import loader
    return _compile(loader.build, os.path.join(workdir, os.path.basename(loader.BINARY)),
                    "program loader")


def build_digest(workdir: str) -> str:
    """runtime/digest.c (the cold start's SHA-256) compiled into workdir, like the loop."""
    from runtime import digest
    return _compile(digest.build, os.path.join(workdir, os.path.basename(digest.LIBRARY)), "SHA-256 library")


def build_zstd(workdir: str) -> str | None:
    """runtime/zstd.py's `_zstd.so` (libzstd.a's decoder) into workdir; None without libzstd.a or a
    compiler (the runtime then bundles the zstandard package)."""
    from runtime import zstd
    if not os.path.exists(LIBZSTD_A):
        return None
    try:
        return _compile(lambda dest, cc: zstd.build(dest, LIBZSTD_A, cc),
                        os.path.join(workdir, os.path.basename(zstd.LIBRARY)), "zstd decoder")
    except CarryonError:
        return None
def build_nsrun(workdir: str) -> str:
    """runtime/launch/nsrun.c (the userns engine's executor, static) compiled into workdir."""
    from runtime.launch import nsrun
    return _compile(nsrun.build, os.path.join(workdir, os.path.basename(nsrun.BINARY)), "userns executor")


def _compile(build, dest: str, what: str) -> str:
    compilers: list[list[str]] = []
    if os.environ.get("CC") or shutil.which("cc"):
        compilers.append([os.environ.get("CC") or "cc"])
    from importlib.util import find_spec
    if find_spec("ziglang") is not None:
        compilers.append([sys.executable, "-m", "ziglang", "cc", "-target", "x86_64-linux-gnu.2.17"])
    if not compilers:
        raise CarryonError(f"building the frozen runtime needs a C compiler for its {what}: "
                           "apt-get install gcc (or pip install ziglang)")
    try:
        return build(dest, compilers[0])
    except OSError as e:
        raise CarryonError(f"building the {what} failed: {e}") from None


OLDKERNEL_FLAGS = ["-Os", "-static", "-nostdlib", "-fno-pie", "-no-pie", "-ffreestanding", "-fno-builtin",
                   "-fno-stack-protector", "-fno-asynchronous-unwind-tables", "-Wall", "-Wextra", "-Werror",
                   "-Wl,--build-id=none", "-Wl,-z,noexecstack", "-s"]


def build_oldkernel(libdir: str) -> str | None:
    """runtime/launch/oldkernel.c compiled into libdir: freestanding and static (no libc, a few KB;
    the launcher starts the runtime through it on Linux before 2.6.39, whose fstatat refuses the
    bundled glibc's AT_EMPTY_PATH). None when it cannot be built here: such nodes then get a
    one-line error."""
    src = os.path.join(_REPO, "runtime", "launch", "oldkernel.c")
    dest = os.path.join(libdir, OLDKERNEL)
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        return None
    p = subprocess.run([cc, *OLDKERNEL_FLAGS, "-o", dest, src], capture_output=True)
    return dest if p.returncode == 0 else None


def build_unzstd(workdir: str) -> str | None:
    """runtime/launch/unzstd.c with libzstd.a's decoder, freestanding and static like the old-kernel
    helper, into workdir. None without a C compiler or libzstd.a (apt-get install libzstd-dev): the
    runtime section is then one tar.gz, ~1 MB bigger."""
    src = os.path.join(_REPO, "runtime", "launch", "unzstd.c")
    dest = os.path.join(workdir, UNZSTD)
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc or not os.path.exists(LIBZSTD_A):
        return None
    # -fno-tree-loop-distribute-patterns: unzstd.c's own memcpy/memset must not become calls to themselves
    flags = [f for f in OLDKERNEL_FLAGS if f != "-Os"] + ["-O2", "-fno-tree-loop-distribute-patterns"]
    p = subprocess.run([cc, *flags, "-o", dest, src, LIBZSTD_A], capture_output=True)
    return dest if p.returncode == 0 else None


def runtime_excludes() -> tuple[str, ...]:
    """RUNTIME_EXCLUDES and every `encodings.*` codec but KEPT_ENCODINGS (listed from this Python)."""
    import encodings
    import pkgutil
    codecs = sorted(m.name for m in pkgutil.iter_modules(encodings.__path__) if m.name not in KEPT_ENCODINGS)
    return RUNTIME_EXCLUDES + tuple(f"encodings.{m}" for m in codecs)


def build_runtime(workdir: str, outdir: str, log: str, onefile: bool = False) -> BuiltRuntime:
    """Freeze the runtime into `workdir`, bundle loader+libs, write `outdir/runtime.tar.gz`."""
    check_tools()
    os.makedirs(workdir, exist_ok=True)
    entry = os.path.join(workdir, "carryon_runtime_entry.py")
    with open(entry, "w") as f:
        f.write("import sys\nfrom runtime.launch.start import main\nsys.exit(main())\n")
    opts = ["--onefile" if onefile else "--onedir", "--name", RUNTIME_MAIN, "--strip",
            "--specpath", workdir, "--paths", _REPO, "--collect-submodules", "runtime",
            "--python-option", "X utf8", "--python-option", "W ignore",
            # docstrings and asserts left out (-OO): nothing in the runtime reads __doc__
            "--optimize", "2"]
    if not onefile:
        # modules as plain .pyc files in _internal instead of one zlib'd PYZ: ~30 ms faster warm start
        opts += ["--debug", "noarchive"]
    zstd_lib = build_zstd(workdir)
    if zstd_lib is not None:
        opts += ["--add-binary", f"{zstd_lib}:runtime"]     # beside runtime/zstd.py
    for m in (() if zstd_lib else HIDDEN_IMPORTS):
        opts += ["--hidden-import", m]
    # the native stop loop (runtime/tracee/fastloop.c), beside runtime/tracee/native.py
    opts += ["--add-binary", f"{build_native(workdir)}:runtime/tracee"]
    # carryon's program loader (runtime/execve/loader.c), beside runtime/execve/loader.py
    opts += ["--add-binary", f"{build_loader(workdir)}:runtime/execve"]
    # the SHA-256 of the cold start's check (runtime/digest.c), beside runtime/digest.py
    opts += ["--add-binary", f"{build_digest(workdir)}:runtime"]
    # the userns engine's executor (runtime/launch/nsrun.c), beside runtime/launch/nsrun.py
    opts += ["--add-binary", f"{build_nsrun(workdir)}:runtime/launch"]
    for m in EXCLUDES + runtime_excludes() + (WITHOUT_ZSTANDARD if zstd_lib else ()):
        opts += ["--exclude-module", m]
    env = dict(os.environ)
    env["PYINSTALLER_CONFIG_DIR"] = os.path.join(workdir, "pyinstaller-config")
    env.pop("PYTHONPATH", None)
    makespec = [sys.executable, "-c", "import sys; from PyInstaller.utils.cliutils.makespec import run; "
                "sys.argv[0] = 'pyi-makespec'; run()"]
    with open(log, "wb") as lf:
        rc = subprocess.run(makespec + opts + [entry], cwd=workdir, stdout=lf, stderr=subprocess.STDOUT,
                            env=env).returncode
        if rc == 0:
            spec = os.path.join(workdir, RUNTIME_MAIN + ".spec")
            with open(spec, encoding="utf-8") as f:
                text = f.read()
            anchor = "pyz = PYZ("
            if anchor not in text:
                raise CarryonError(f"PyInstaller wrote an unexpected spec file ({spec}: no {anchor!r})")
            # PyInstaller's runtime hook for `inspect` imports zipfile (and with it shutil, bz2, lzma,
            # pathlib, urllib...) at every start, to serve inspect.getsource: not needed, ~20 ms
            text = text.replace(anchor, "a.scripts = [s for s in a.scripts if s[0] not in "
                                        f"{sorted(DROPPED_RUNTIME_HOOKS)!r}]\n" + anchor, 1)
            with open(spec, "w", encoding="utf-8") as f:
                f.write(text)
            rc = subprocess.run([sys.executable, "-m", "PyInstaller", "--noconfirm", "--clean", "--log-level",
                                 "WARN", "--distpath", os.path.join(workdir, "dist"), "--workpath",
                                 os.path.join(workdir, "build"), spec],
                                cwd=workdir, stdout=lf, stderr=subprocess.STDOUT, env=env).returncode
    if rc != 0:
        with open(log, "rb") as lf:
            tail = [ln for ln in lf.read().decode("utf-8", "replace").splitlines() if ln.strip()][-1:]
        keep = keep_build_log(log)
        raise CarryonError(f"PyInstaller failed ({tail[0] if tail else rc}); full log: {keep}")
    if onefile:
        exe = os.path.join(workdir, "dist", RUNTIME_MAIN)
        return BuiltRuntime(tgz=exe, unpacked=os.path.getsize(exe), key="onefile")
    rtdir = os.path.join(workdir, "dist", RUNTIME_MAIN)
    bundle_libraries(rtdir)
    build_oldkernel(os.path.join(rtdir, LIBDIR))
    with open(os.path.join(rtdir, FILES_MARKER), "w") as f:
        f.write("carryon runtime\n")
    tgz = os.path.join(outdir, "runtime.tar.gz")
    unzstd = build_unzstd(workdir)
    if unzstd is None:
        return BuiltRuntime(tgz=tgz, unpacked=write_tgz(rtdir, tgz), key="")
    unpacked, gz = write_section(rtdir, unzstd, tgz)
    return BuiltRuntime(tgz=tgz, unpacked=unpacked, key="", gz=gz)


# ---------------------------------------------------------------- loader + library closure

def _is_elf(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


_LIST_RE = re.compile(r"^\s*(\S+)\s+=>\s+(\S+)\s+\(0x[0-9a-f]+\)")
_NOTFOUND_RE = re.compile(r"^\s*(\S+)\s+=>\s+not found")


def _needed(libdir: str, path: str) -> dict[str, str]:
    """{soname: resolved path} of `path`'s dependency closure as our bundled search path sees it."""
    out = subprocess.run([HOST_LOADER, "--inhibit-cache", "--library-path", libdir, "--list", path],
                         capture_output=True, text=True)
    deps: dict[str, str] = {}
    for line in out.stdout.splitlines():
        m = _NOTFOUND_RE.match(line)
        if m:
            raise CarryonError(f"{os.path.basename(path)} needs {m.group(1)}, which is not installed here "
                               "(install the package that provides it and rebuild)")
        m = _LIST_RE.match(line)
        if m:
            deps[m.group(1)] = m.group(2)
    return deps


def _system_lib(soname: str) -> str | None:
    out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True) if shutil.which("ldconfig") else None
    if out is not None:
        for line in out.stdout.splitlines():
            parts = line.strip().split(" => ")
            if len(parts) == 2 and parts[0].split()[0] == soname and "x86-64" in parts[0]:
                return parts[1]
    for d in ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64"):
        p = os.path.join(d, soname)
        if os.path.exists(p):
            return p
    return None


def bundle_libraries(rtdir: str) -> list[str]:
    """Copy the loader and the shared-library closure of every ELF in `rtdir` into `rtdir/_internal`."""
    libdir = os.path.join(rtdir, LIBDIR)
    added: list[str] = []

    def add(src: str, name: str) -> None:
        dst = os.path.join(libdir, name)
        if not os.path.exists(dst):
            shutil.copyfile(os.path.realpath(src), dst)
            os.chmod(dst, 0o755)
            added.append(name)

    add(HOST_LOADER, LOADER)
    for name in EXTRA_LIBS:
        src = _system_lib(name)
        if src:
            add(src, name)
    real_libdir = os.path.realpath(libdir)
    done: set[str] = set()
    while True:
        elfs = [os.path.join(d, f) for d, _, fs in os.walk(rtdir) for f in sorted(fs)
                if not os.path.islink(os.path.join(d, f)) and _is_elf(os.path.join(d, f))]
        todo = [p for p in elfs if p not in done and os.path.basename(p) != LOADER]
        if not todo:
            break
        for path in todo:
            done.add(path)
            for soname, resolved in _needed(libdir, path).items():
                if os.path.dirname(os.path.realpath(resolved)) == real_libdir:
                    continue
                if os.path.basename(resolved) == LOADER or soname == LOADER:
                    continue
                add(resolved, soname)
    return added


# ---------------------------------------------------------------- deterministic section

def write_section(rtdir: str, unzstd: str, out: str) -> tuple[int, int]:
    """The runtime section in two stages: a tar.gz of `_internal/carryon-unzstd` alone, then one zstd
    frame (level ZSTD_LEVEL, content checksum) of the tar write_tgz would write. The launcher unpacks
    the first with gzip, checks the section's sha256, then pipes the second through that program.
    Deterministic. Returns (unpacked bytes, bytes of the first stage)."""
    import zstandard
    stage = tempfile.mkdtemp(prefix="unzstd-", dir=os.path.dirname(out))
    try:
        os.makedirs(os.path.join(stage, LIBDIR))
        shutil.copyfile(unzstd, os.path.join(stage, LIBDIR, UNZSTD))
        os.chmod(os.path.join(stage, LIBDIR, UNZSTD), 0o755)
        first = out + ".gz-part"
        small = write_tgz(stage, first, marker=False)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    tar = out + ".tar-part"
    total = write_tgz(rtdir, tar, compress=False)
    gz = os.path.getsize(first)
    tmp = out + ".part"
    with open(tmp, "wb") as dst:
        with open(first, "rb") as src:
            shutil.copyfileobj(src, dst)
        cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True, write_content_size=True)
        with open(tar, "rb") as src:
            cctx.copy_stream(src, dst, size=os.path.getsize(tar))
    os.unlink(first)
    os.unlink(tar)
    os.replace(tmp, out)
    return total + small, gz


def unpack_section(section: str, dest: str, gz: int) -> None:
    """Unpack a runtime section into `dest` as the launcher does (for tests and measurements)."""
    import zstandard
    with open(section, "rb") as f:
        head = f.read(gz) if gz else f.read()
        with tarfile.open(fileobj=gzip.GzipFile(fileobj=io.BytesIO(head)), mode="r|") as tf:
            tf.extractall(dest)
        if gz:
            with zstandard.ZstdDecompressor().stream_reader(f) as z, tarfile.open(fileobj=z, mode="r|") as tf:
                tf.extractall(dest)


def write_tgz(rtdir: str, out: str, compress: bool = True, marker: bool = True) -> int:
    """tar.gz (a plain tar without `compress`) of `rtdir`'s contents: sorted, owner 0, mtime 0,
    FILES_MARKER last (`marker`). Returns unpacked bytes."""
    members: list[str] = []
    for d, dirs, files in os.walk(rtdir):
        dirs.sort()
        rel = os.path.relpath(d, rtdir)
        if rel != ".":
            members.append(rel)
        members += [os.path.normpath(os.path.join(rel, f)) for f in sorted(files)]
    members = sorted(m for m in members if m != FILES_MARKER) + ([FILES_MARKER] if marker else [])
    total = 0
    tmp = out + ".part"
    with open(tmp, "wb") as raw:
        with (gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) if compress
              else contextlib.nullcontext(raw)) as gz:
            with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tf:
                for rel in members:
                    path = os.path.join(rtdir, rel)
                    ti = tf.gettarinfo(path, arcname="./" + rel)
                    ti.uid = ti.gid = 0
                    ti.uname = ti.gname = ""
                    ti.mtime = 0
                    if ti.isreg():
                        ti.mode = 0o755 if os.access(path, os.X_OK) else 0o644
                        total += ti.size
                        with open(path, "rb") as f:
                            tf.addfile(ti, f)
                    else:
                        if ti.isdir():
                            ti.mode = 0o755
                        total += 4096 if ti.isdir() else 0
                        tf.addfile(ti)
    os.replace(tmp, out)
    return total


# ---------------------------------------------------------------- scripts/build-runtime

def main(argv: list[str] | None = None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="build-runtime",
                                 description="Build (or find in the cache) the frozen carryon runtime.")
    ap.add_argument("--force", action="store_true", help="rebuild even when the cache has it")
    ap.add_argument("--print-key", action="store_true", help="print the build key and exit")
    ap.add_argument("--onefile", metavar="DIR",
                    help="also build a PyInstaller onefile variant into DIR (for measurements)")
    args = ap.parse_args(argv)
    try:
        if args.print_key:
            print(build_key())
            return 0
        built = ensure_runtime(force=args.force)
        print(f"{built.tgz} ({os.path.getsize(built.tgz) / 1e6:.1f} MB, {built.unpacked / 1e6:.1f} MB unpacked)")
        if args.onefile:
            os.makedirs(args.onefile, exist_ok=True)
            work = tempfile.mkdtemp(prefix="onefile-", dir=args.onefile)
            one = build_runtime(work, args.onefile, log=os.path.join(args.onefile, "onefile-build.log"),
                                onefile=True)
            dst = os.path.join(args.onefile, RUNTIME_MAIN + "-onefile")
            shutil.move(one.tgz, dst)
            shutil.rmtree(work, ignore_errors=True)
            print(dst)
    except CarryonError as e:
        sys.stderr.write(f"build-runtime: {e}\n")
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
