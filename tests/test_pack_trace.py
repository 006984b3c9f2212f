"""CARE mode (issue 21): `carryon pack SOURCE --trace [--trace-run 'ARGS']... [--keep GLOB]...` runs the image
under the tracer on this machine and packs only what the runs looked up. Run as root and as carryon-test
(scripts/test): the traced runs and the archives use the engine."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tarfile
from pathlib import Path

import pytest

from archive_run_support import SOURCES, clean_env, run
from conftest import run_carryon, tar_bytes, tar_member
from packer.layers import TarStream
from packer.squash import Squasher
from packer.trace import TraceOptions, select
from runtime.trace import OPENED, SEEN, Recorder

PY_RUNS = ("/app/fib.py 20", "/app/fib.py 25", "-c 'import json; print(1)'")


def _need(name: str) -> Path:
    src = SOURCES[name]
    if not src.exists():
        pytest.skip(f"{src} not present")
    return src


def _pack(src: Path, out: Path, *args: str, bare: bool = False):
    extra = ("--bare",) if bare else ()
    return run_carryon("pack", "-q", str(src), "-o", str(out), *extra, *args, cwd="/tmp")


def _manifest(archive: Path) -> dict:
    p = run_carryon("inspect", "--json", str(archive), check=True)
    return json.loads(p.stdout)


def _files(archive: Path) -> dict[str, dict]:
    p = run_carryon("inspect", "--json", "--files", str(archive), check=True)
    return {e["path"]: e for e in json.loads(p.stdout)["files"]}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("trace")
    os.chmod(d, 0o755)
    return d


@pytest.fixture(scope="module")
def traced_py(work) -> Path:
    """debian-python traced with fib.py 20, fib.py 25 and `-c 'import json; print(1)'`."""
    out = work / "py-traced.run"
    args = [a for r in PY_RUNS for a in ("--trace-run", r)]
    p = _pack(_need("py"), out, *args)
    assert p.returncode == 0, p.stderr
    return out


@pytest.fixture(scope="module")
def fib_only(work) -> Path:
    """debian-python traced with the image's own command (fib.py 20) only."""
    out = work / "py-fib.run"
    p = _pack(_need("py"), out, "--trace")
    assert p.returncode == 0, p.stderr
    return out


def test_traced_python_archive_runs_what_was_traced(traced_py, work, tmp_path):
    env = clean_env(tmp_path, tmp_path / "cache")
    p = run(traced_py, env=env)
    assert (p.returncode, p.stdout, p.stderr) == (0, "fib(20) = 6765\n", "")
    p = run(traced_py, "/app/fib.py", "25", env=env)
    assert (p.returncode, p.stdout) == (0, "fib(25) = 75025\n"), p.stderr
    p = run(traced_py, "-c", "import json; print(1)", env=env)
    assert (p.returncode, p.stdout) == (0, "1\n"), p.stderr
    m = _manifest(traced_py)
    tr = m["trace"]
    assert [(r["args"], r["exit"]) for r in tr["runs"]] == [(r, 0) for r in PY_RUNS]
    assert tr["runs"][0]["argv"] == ["/usr/bin/python3", "/app/fib.py", "20"]
    assert tr["after"]["entries"] == m["rootfs"]["total_entries"] < tr["before"]["entries"]
    assert tr["after"]["bytes"] == m["rootfs"]["uncompressed_bytes"] < tr["before"]["bytes"] / 4
    assert tr["removed"]["count"] == tr["before"]["entries"] - tr["after"]["entries"]
    shown = run_carryon("inspect", str(traced_py), check=True).stdout
    assert "trace       trimmed:" in shown and "exit 0: /usr/bin/python3 /app/fib.py 25" in shown


def test_traced_busybox_archive_runs_the_pipeline(work, tmp_path):
    out = work / "bb-traced.run"
    p = _pack(_need("bb"), out, "--trace-run", "sh -c 'echo a b c | wc -w'")
    assert p.returncode == 0, p.stderr
    p = run(out, "sh", "-c", "echo a b c | wc -w", env=clean_env(tmp_path, tmp_path / "cache"))
    assert (p.returncode, p.stdout.strip()) == (0, "3"), p.stderr
    files = _files(out)
    assert files["/bin/sh"]["type"] == "l" and "/bin/busybox" in files     # the symlink and its target
    assert len(files) < 40


def test_untraced_module_fails_like_python_and_verbose_names_it_then_keep_fixes_it(fib_only, work, tmp_path):
    env = clean_env(tmp_path, tmp_path / "cache")
    code = "import xml.dom.minidom as m; print(m.parseString('<a/>').documentElement.tagName)"
    p = run(fib_only, "-c", code, env=env)
    assert p.returncode == 1
    assert p.stderr.splitlines()[-1] == "ModuleNotFoundError: No module named 'xml.dom'"
    p = run(fib_only, "--carryon-verbose", "-c", code, env=env)
    assert p.returncode == 1
    hints = [ln for ln in p.stderr.splitlines() if ln.startswith("carryon: trimmed image:")]
    assert any("/usr/lib/python3.11/xml/__init__.py was in the image" in h for h in hints), p.stderr
    assert any(h.startswith("carryon: trimmed image: listed /usr/lib/python3.11/xml,") and "dom" in h
               for h in hints), p.stderr
    p = run(fib_only, "--carryon-verbose", "--carryon-entrypoint", "/bin/ls", "/", env=env)
    assert p.returncode == 127                          # ENOENT, as the kernel says it
    assert "carryon: trimmed image: /bin/ls: /bin was in the image but not traced (repack with --keep /bin/ls)" \
        in p.stderr, p.stderr
    p = run(fib_only, "/app/fib.py", "10", env=env)     # no hint without --carryon-verbose
    assert (p.returncode, p.stdout, p.stderr) == (0, "fib(10) = 55\n", "")
    kept = work / "py-keep.run"
    p = _pack(SOURCES["py"], kept, "--trace", "--keep", "/usr/lib/python3.11/xml")
    assert p.returncode == 0, p.stderr
    p = run(kept, "-c", code, env=env)
    assert (p.returncode, p.stdout) == (0, "a\n"), p.stderr
    assert _manifest(kept)["trace"]["keep"] == ["/usr/lib/python3.11/xml"]


def _tree(root: Path) -> dict[str, tuple]:
    """path -> (type, mode, size, mtime, sha256 or link target) of an extracted tree."""
    out = {}
    for d, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(d) / name
            st = p.lstat()
            rel = "/" + str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                what = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                what = hashlib.sha256(p.read_bytes()).hexdigest() if st.st_mode & 0o400 else "?"
            else:
                what = ""
            out[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_size if not stat.S_ISDIR(
                st.st_mode) else 0, int(st.st_mtime) if not stat.S_ISLNK(st.st_mode) else 0, what)
    return out


def test_trimmed_tree_is_a_subset_with_the_same_metadata(work, tmp_path):
    src = _need("py")
    full, trimmed = tmp_path / "full.car", tmp_path / "trimmed.car"
    assert _pack(src, full, bare=True).returncode == 0
    p = _pack(src, trimmed, "--trace", "--keep", "/etc/apt", bare=True)
    assert p.returncode == 0, p.stderr
    for a in (full, trimmed):
        run_carryon("extract", str(a), str(tmp_path / a.stem), check=True)
    ft, tt = _tree(tmp_path / "full"), _tree(tmp_path / "trimmed")
    assert set(tt) < set(ft) and len(tt) < len(ft) / 4
    assert {p: tt[p] for p in tt} == {p: ft[p] for p in tt}     # type, mode, size, mtime, content/target
    fm = json.loads((tmp_path / "full.carryon-meta.json").read_text())
    tm = json.loads((tmp_path / "trimmed.carryon-meta.json").read_text())
    assert tm["root"] == fm["root"]
    assert tm["entries"] == {p: fm["entries"][p] for p in tm["entries"]}   # owners, xattrs, types
    # what the run needs: the loader and libraries, the program through its symlinks, the directories
    for p in ("/lib64", "/usr/lib64/ld-linux-x86-64.so.2", "/usr/lib/x86_64-linux-gnu/libc.so.6",
              "/usr/bin/python3", "/usr/bin/python3.11", "/app/fib.py", "/usr/lib/python3.11/encodings/utf_8.py"):
        assert p in tt, p
    assert "/usr/bin/perl" in ft and "/usr/bin/perl" not in tt
    assert "/etc/apt/trusted.gpg.d/debian-archive-bookworm-automatic.asc" in tt    # --keep: the subtree
    # a directory the guest listed keeps all its names (Python lists each sys.path directory)
    assert "/usr/lib/python3.11/csv.py" in tt


def test_prune_listings_keeps_only_the_names_used(tmp_path):
    out = tmp_path / "pruned.car"
    p = _pack(_need("py"), out, "--trace", "--trace-prune-listings", bare=True)
    assert p.returncode == 0, p.stderr
    files = _files(out)
    assert "/usr/lib/python3.11/csv.py" not in files and "/usr/lib/python3.11/encodings/utf_8.py" in files
    assert _manifest(out)["trace"]["listings"] == "pruned"


def test_relative_names_and_symlinks_on_the_way_are_recorded(tmp_path):
    """A plain relative name (left to the kernel by the tracer's shortcut) and a symlinked directory."""
    out = tmp_path / "bb.car"
    p = _pack(_need("bb"), out, "--trace-run", "sh -c 'cd /etc && cat passwd >/dev/null && ls /home >/dev/null'",
              bare=True)
    assert p.returncode == 0, p.stderr
    files = _files(out)
    assert "/etc/passwd" in files and "/etc/group" not in files
    assert "/home/app" in files                     # listed by ls: all its names


def test_a_trace_run_takes_the_archive_options_binds_env_workdir(tmp_path):
    data = tmp_path / "in"
    data.mkdir()
    (data / "case.txt").write_text("input\n")
    os.chmod(tmp_path, 0o755)
    out = tmp_path / "opts.car"
    run_ = (f"--carryon-bind {data}:/in:ro --carryon-env X=1 --carryon-workdir /etc "
            "sh -c 'grep -q input /in/case.txt && cat passwd >/dev/null && test \"$X\" = 1 && test $PWD = /etc'")
    p = _pack(_need("bb"), out, "--trace-run", run_, bare=True)
    assert p.returncode == 0, p.stderr
    files = _files(out)
    assert "/etc/passwd" in files and not any(f.startswith("/in") for f in files)
    assert _manifest(out)["trace"]["runs"][0]["argv"][-1].startswith("grep -q input")


def test_the_ptrace_engine_records_what_the_seccomp_engine_records(tmp_path):
    run_ = "sh -c 'cd /etc && cat passwd group >/dev/null && ls -l /bin/sh /home >/dev/null'"
    got = []
    for engine in ("seccomp", "ptrace"):
        out = tmp_path / f"{engine}.car"
        p = _pack(_need("bb"), out, "--trace-run", f"--carryon-engine {engine} {run_}", bare=True)
        assert p.returncode == 0, p.stderr
        got.append(_files(out))
    assert got[0] == got[1] and "/etc/group" in got[0]


def test_same_image_and_runs_give_a_byte_identical_file(tmp_path):
    src = _need("py")
    a, b = tmp_path / "a.car", tmp_path / "b.car"
    for out in (a, b):
        p = _pack(src, out, "--trace-run", "/app/fib.py 12", "--keep", "/etc/*.conf", bare=True)
        assert p.returncode == 0, p.stderr
    assert a.read_bytes() == b.read_bytes()


def test_a_failing_run_packs_nothing_unless_allowed(tmp_path):
    src = _need("bb")
    out = tmp_path / "bad.run"
    p = _pack(src, out, "--trace-run", "sh -c 'exit 3'")
    assert p.returncode == 125
    assert p.stderr.strip().splitlines() == [
        "carryon pack: --trace-run \"sh -c 'exit 3'\" exited with status 3: nothing packed "
        "(--trace-allow-failure packs what it touched anyway)"]
    assert not out.exists() and not [n for n in os.listdir(tmp_path) if n.startswith(".bad.run")]
    p = _pack(src, out, "--trace-run", "sh -c 'exit 3'", "--trace-allow-failure", bare=True)
    assert p.returncode == 0, p.stderr
    assert [r["exit"] for r in _manifest(out)["trace"]["runs"]] == [3]


def test_options_need_trace_and_a_missing_command_is_a_failed_run(tmp_path):
    src = _need("bb")
    p = _pack(src, tmp_path / "x.run", "--keep", "/etc")
    assert p.returncode == 125 and "need --trace" in p.stderr
    p = _pack(src, tmp_path / "x.run", "--trace-run", "no-such-command")
    assert p.returncode == 125 and "exited with status 127" in p.stderr.splitlines()[-1]
    assert not (tmp_path / "x.run").exists()


def test_an_image_of_another_architecture_is_refused_in_one_line(make_oci, tmp_path):
    img = make_oci([[tar_member("bin/true", data=b"\x7fELF", mode=0o755)]], platform="linux/arm64")
    out = tmp_path / "arm.run"
    p = _pack(img, out, "--platform", "linux/arm64", "--trace")
    assert p.returncode == 125
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "linux/arm64" in lines[0] and "cannot run it" in lines[0], p.stderr
    assert not out.exists()


def _selected(tmp_path, paths: dict[str, int], **opts) -> tuple[set[str], list[str]]:
    D, L, H = tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE
    members = [tar_member("a/", D), tar_member("a/f1", data=b"one", mode=0o4750, uid=7, xattrs={"user.k": b"v"}),
               tar_member("b/", D), tar_member("b/f2", H, linkname="a/f1"), tar_member("l", L, linkname="/a/f1"),
               tar_member("lib", L, linkname="usr/lib"), tar_member("usr/lib/libc.so", data=b"c"),
               tar_member("usr/lib/other.so", data=b"o"), tar_member("d/", D), tar_member("d/x", data=b"x"),
               tar_member("d/sub/y", data=b"y"), tar_member("z/deep/q", data=b"q"), tar_member("e/gone", data=b"g")]
    with open(tmp_path / "spool", "w+b") as spool:
        sq = Squasher(spool)
        sq.begin_layer(0, "layer 0")
        sq.apply_tar(TarStream(io.BytesIO(tar_bytes(members))))
        sq.end_layer()
        rec = Recorder()
        rec.paths.update(paths)
        sel = select(sq, rec, TraceOptions(**opts))
    return {k[2:] for k in sel.keep}, sel.removed


def test_selection_follows_links_keeps_parents_hard_link_sets_listings_and_globs(tmp_path):
    paths = {"/l": SEEN, "/lib/libc.so": OPENED, "/d": OPENED, "/e/../d/x": SEEN, "/missing/x": SEEN,
             "/proc/self/status": OPENED}
    keep, removed = _selected(tmp_path, paths, keep=["/z"])
    # the symlink and its target, the hard link's other name, the directory symlink and what it led to,
    # every name of the opened directory (not below them), the glob's subtree, parents on the way
    assert keep == {"l", "a", "a/f1", "b", "b/f2", "lib", "usr", "usr/lib", "usr/lib/libc.so", "d", "d/x",
                    "d/sub", "e", "z", "z/deep", "z/deep/q"}
    assert removed == ["/d/sub/y", "/e/gone", "/usr/lib/other.so"]
    keep, _ = _selected(tmp_path, {}, keep=["/lib/libc.so"])      # a plain path is followed too
    assert keep == {"lib", "usr", "usr/lib", "usr/lib/libc.so"}
    keep, removed = _selected(tmp_path, paths, prune_listings=True)
    assert "d/sub" not in keep and "d/x" in keep and "z" not in keep
