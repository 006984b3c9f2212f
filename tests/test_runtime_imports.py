"""The frozen runtime carries every module the runtime can import, and prints errors cleanly.

packer/embed.py leaves out of the frozen runtime what PyInstaller finds but the runtime never imports
(RUNTIME_EXCLUDES, the codecs not in KEPT_ENCODINGS). A module missing at run time would break users'
nodes, so here every import statement of runtime/ (the lazy ones inside functions too, all but the
`if TYPE_CHECKING:` ones) and every codec it names runs inside the FROZEN interpreter, under a UTF-8,
the C and a latin-1 locale: the built runtime is unpacked, and its `runtime/launch/start.pyc` (what
the bootloader's entry script imports) is swapped for a checker compiled from CHECKER.
"""

from __future__ import annotations

import ast
import os
import py_compile
import shutil
import subprocess
from pathlib import Path

import pytest

from archive_run_support import archive, clean_env, run, workdir
from conftest import ENGINE_VARIANTS, REPO

RUNTIME = REPO / "runtime"

CHECKER = '''
import codecs
import sys
import traceback

STATEMENTS = {statements!r}
CODECS = {codecs!r}


def main():
    bad = []
    for stmt in STATEMENTS:
        try:
            exec(stmt, {{}})
        except BaseException as e:
            bad.append(f"{{stmt}}: {{type(e).__name__}}: {{e}}")
    for name in CODECS:
        try:
            codecs.lookup(name)
        except LookupError as e:
            bad.append(f"codec {{name}}: {{e}}")
    try:
        raise ValueError("caf\\u00e9 \\u2713")
    except ValueError:
        traceback.print_exc()
    sys.stderr.write("carryon: caf\\u00e9 \\u2713\\n")
    sys.stdout.write("".join(f"MISSING {{b}}\\n" for b in bad))
    sys.stdout.write(f"checked {{len(STATEMENTS)}} imports, {{len(CODECS)}} codecs\\n")
    return 1 if bad else 0
'''


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _runtime_files() -> list[Path]:
    return sorted(p for p in RUNTIME.rglob("*.py") if "__pycache__" not in p.parts)


def _type_checking_only(tree: ast.Module, lines: list[str]) -> set[int]:
    """Imports under `if TYPE_CHECKING:`, and the ones marked `# carryon: not frozen` (code that
    runs on the workstation or in a source checkout only: runtime/zstd.py's fallback, the packer's
    side of runtime/trace.py)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)) and "# carryon: not frozen" in lines[node.lineno - 1]:
            skip.add(id(node))
    return skip


def import_statements() -> list[str]:
    """Every import statement in runtime/ as absolute source, plus an import of every runtime module."""
    out = set()
    for path in _runtime_files():
        mod = _module_name(path)
        out.add(f"import {mod}")
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text)
        skip = _type_checking_only(tree, text.splitlines())
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                out.add(ast.unparse(node))
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
                    base = base[:len(base) - node.level + 1]
                    node = ast.ImportFrom(module=".".join(base + ([node.module] if node.module else [])),
                                          names=node.names, level=0)
                out.add(ast.unparse(node))
    return sorted(out)


def codec_names() -> list[str]:
    """The codecs runtime/ names (`.encode(x)`, `.decode(x)`, `encoding=x`) and the ones Python may look up
    for it (socket encodes host names with idna; UTF-8 mode, the C and a latin-1 locale)."""
    names = {"utf-8", "ascii", "latin-1", "iso8859-1", "idna"}
    for path in _runtime_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            args = list(node.args[:1]) if isinstance(node.func, ast.Attribute) and node.func.attr in (
                "encode", "decode") else []
            args += [k.value for k in node.keywords if k.arg == "encoding"]
            names |= {a.value for a in args if isinstance(a, ast.Constant) and isinstance(a.value, str)}
    return sorted(names)


def test_the_scan_sees_lazy_and_relative_imports():
    stmts = import_statements()
    assert "from runtime import zstd" in stmts          # lazy, inside runtime/extract.py's functions
    assert "import zstandard" not in stmts              # marked `# carryon: not frozen`
    assert "import runtime.launch.start" in stmts and "import runtime.tracee.ffi" in stmts
    assert not any(s.startswith("from .") for s in stmts)
    assert "idna" in codec_names() and "surrogateescape" not in codec_names()


def test_no_runtime_import_is_excluded_from_the_build():
    """Cheap guard (no build): nothing runtime/ imports is on the build's exclusion lists."""
    from packer import embed
    excluded = set(embed.EXCLUDES) | set(embed.runtime_excludes())
    hits = []
    for stmt in import_statements():
        node = ast.parse(stmt).body[0]
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        for name in names:
            parts = name.split(".")
            if any(".".join(parts[:i]) in excluded for i in range(1, len(parts) + 1)):
                hits.append(stmt)
    assert not hits


def _frozen_runtime() -> Path:
    from packer import embed
    built = embed.ensure_runtime()
    d = workdir() / "runtime-import-check"
    if not d.exists():
        tmp = workdir() / "runtime-import-check.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        embed.unpack_section(built.tgz, str(tmp), built.gz)
        launch = tmp / embed.LIBDIR / "runtime" / "launch"
        os.rename(launch / "start.pyc", launch / "_real_start.pyc")    # imported by the check below
        src = workdir() / "runtime-import-check.py"
        stmts = import_statements() + ["import runtime.launch._real_start"]
        src.write_text(CHECKER.format(statements=stmts, codecs=codec_names()), encoding="utf-8")
        py_compile.compile(str(src), cfile=str(launch / "start.pyc"), doraise=True)
        os.chmod(tmp, 0o755)
        tmp.rename(d)
    return d


def _latin1_locale(tmp_path: Path) -> dict[str, str]:
    """LC_ALL=en_US.ISO-8859-1, compiled into tmp_path when localedef can (else a locale the node lacks)."""
    env = {"LANG": "en_US.ISO-8859-1", "LC_ALL": "en_US.ISO-8859-1"}
    if shutil.which("localedef"):
        loc = tmp_path / "locales"
        loc.mkdir()
        p = subprocess.run(["localedef", "-i", "en_US", "-f", "ISO-8859-1", str(loc / "en_US.ISO-8859-1")],
                           capture_output=True)
        if p.returncode == 0:
            env["LOCPATH"] = str(loc)
    return env


@pytest.fixture(params=["C.UTF-8", "C", "latin-1"])
def locale_env(request, tmp_path) -> dict[str, str]:
    return _latin1_locale(tmp_path) if request.param == "latin-1" else {"LANG": request.param}


def test_every_runtime_import_works_in_the_frozen_runtime(locale_env):
    from packer import embed
    d = _frozen_runtime()
    env = {"PATH": "/usr/bin:/bin", **locale_env}
    p = subprocess.run([str(d / embed.LIBDIR / embed.LOADER), "--inhibit-cache", "--library-path",
                        str(d / embed.LIBDIR), str(d / embed.RUNTIME_MAIN)], env=env, capture_output=True,
                       timeout=120)
    out = p.stdout.decode("utf-8", "replace")
    assert p.returncode == 0 and "MISSING" not in out, out + p.stderr.decode("utf-8", "replace")
    assert out.startswith(f"checked {len(import_statements()) + 1} imports")
    err = p.stderr.decode("utf-8")                      # strict: the frozen runtime writes UTF-8
    assert "ValueError: caf\u00e9 \u2713" in err and err.endswith("carryon: caf\u00e9 \u2713\n")


def test_the_frozen_runtime_leaves_out_what_it_never_imports():
    from packer import embed
    lib = _frozen_runtime() / embed.LIBDIR
    present = {str(p.relative_to(lib)) for p in lib.rglob("*") if p.is_file()}
    names = {p.split(".")[0].replace("/", ".") for p in present}
    dynload = {p.rsplit("/", 1)[-1].split(".")[0] for p in present if p.startswith("python3")}
    for mod in ("ptrace", "email", "logging", "_pydecimal", "zipfile", "encodings.cp932", "bz2",
                "zstandard.backend_cffi", "dataclasses", "inspect", "ast", "dis", "hashlib._hashlib"):
        assert mod not in names and not any(n.startswith(mod + ".") for n in names), mod
    for ext in ("_codecs_jp", "_multibytecodec", "_decimal", "_lzma", "_bz2"):
        assert ext not in dynload, ext
    assert not any(p.startswith(("liblzma", "libbz2")) for p in present)
    assert "_hashlib" not in dynload and not any(p.startswith(("libcrypto", "libssl")) for p in present)
    assert "runtime/_digest.so" in present and embed.OLDKERNEL in present   # runtime/digest.c does the hashing
    pyc = (lib / "runtime" / "archive.pyc").read_bytes()    # compiled -OO: no docstrings
    assert b"FORMAT_VERSION" in pyc and b"sections laid end to end" not in pyc
    oldkernel = lib / embed.OLDKERNEL
    assert oldkernel.stat().st_size < 64 * 1024             # freestanding: no static glibc in it
    if os.path.exists(embed.LIBZSTD_A):                     # two stages: gzip'd carryon-unzstd, zstd'd runtime
        built = embed.ensure_runtime()
        assert 0 < built.gz < 200 * 1024 and embed.UNZSTD in {p.rsplit("/", 1)[-1] for p in present}
        with open(built.tgz, "rb") as f:
            f.seek(built.gz)
            assert f.read(4) == b"\x28\xb5\x2f\xfd"      # a zstd frame


def test_archive_errors_print_cleanly_in_every_locale(tmp_path, locale_env):
    """A real archive's runtime paths: an error naming non-ASCII text, --carryon-info, a run."""
    bb = archive("bb")
    env = {**clean_env(tmp_path, tmp_path / "cache"), **locale_env}
    for args, rc in ((["--carryon-entrypoint", "/no/such/caf\u00e9"], 127),
                     (["--carryon-bind", "/no/such/caf\u00e9:/x", "true"], 125)):
        p = subprocess.run([str(bb), *args], env=env, capture_output=True, timeout=300)
        err = p.stderr.decode("utf-8")                  # strict: the runtime writes UTF-8
        assert p.returncode == rc and err.startswith("carryon: ") and "/no/such/caf\u00e9" in err, err
        assert len(err.splitlines()) == 1
    p = subprocess.run([str(bb), "--carryon-info"], env=env, capture_output=True, timeout=300)
    assert p.returncode == 0 and p.stdout, p.stderr
    q = run(bb, "sh", "-c", "echo ok", env=env)
    assert (q.returncode, q.stdout) == (0, "ok\n"), q.stderr


@pytest.mark.parametrize("engine", ENGINE_VARIANTS)
def test_verbose_run_imports_nothing_missing(tmp_path, engine):
    """A cold and a warm run of a real archive on every engine (the stop loops, Python's and the
    native one, import lazily), then --carryon-doctor: nothing the frozen runtime lacks."""
    bb = archive("bb")
    env = clean_env(tmp_path, tmp_path / "cache")
    env.update({"CARRYON_ENGINE": "seccomp", "CARRYON_NATIVE": "0"} if engine == "seccomp-python"
               else {"CARRYON_ENGINE": engine})
    for _ in ("cold", "warm"):
        p = run(bb, "--carryon-verbose=2", "sh", "-c", "echo ok", env=env)
        assert (p.returncode, p.stdout) == (0, "ok\n"), p.stderr
        assert "ModuleNotFoundError" not in p.stderr and "No module named" not in p.stderr
    p = subprocess.run([str(bb), "--carryon-doctor"], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and p.stdout and "Error" not in p.stderr, p.stderr
