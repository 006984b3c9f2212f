"""runtime.path.confine.join: the confined join the packer, the extraction and the launcher share.

Two kinds of trees: a dict (what `lookup` sees, handles are root-relative strings) for the rules
themselves, and a real directory on disk walked with `readlink` (the launcher's lookup) to check that
what the join gives back, put below the root, stays inside it.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from runtime.path.confine import MAX_SYMLINKS, SymlinkLoop, escapes_root, join, split_path

# root-relative path -> "d" (directory), "f" (file) or "l:TARGET" (symlink)
TREE = {
    "etc": "d", "etc/passwd": "f", "etc/alt": "l:passwd", "etc/rootusr": "l:/usr",
    "usr": "d", "usr/lib": "d", "usr/lib/libc.so": "f",
    "lib": "l:usr/lib",                 # relative, in the middle of paths
    "abs": "l:/usr/lib",                # absolute: re-rooted
    "up": "l:../../../..",              # climbs: clamped
    "hostetc": "l:/../../etc",          # absolute and climbing
    "chain1": "l:chain2", "chain2": "l:/chain3", "chain3": "l:usr/../lib",
    "loopa": "l:loopb", "loopb": "l:loopa",
    "self": "l:self",
    "filelink": "l:etc/passwd",         # a symlink to a file
    "dotdot": "l:usr/lib/..",
    "empty": "d",
}


def tree_lookup(tree: dict[str, str], stop_missing: bool = False):
    def lookup(rel: str, name: str):
        child = rel + "/" + name if rel else name
        what = tree.get(child)
        if what is not None and what.startswith("l:"):
            return None, what[2:]
        if stop_missing and what != "d":
            return None, None
        return child, None
    return lookup


def resolve(path: str, follow_last: bool = False, stop_missing: bool = False) -> str | None:
    walked = join("", split_path(path), tree_lookup(TREE, stop_missing), follow_last)
    if walked is None:
        return None
    handles, names = walked
    assert all(n not in ("", ".", "..") and "/" not in n for n in names)
    assert len(handles) in (len(names), len(names) + 1)
    for i, h in enumerate(handles):       # handles[i] names names[:i]
        assert h == "/".join(names[:i])
    return "/".join(names)


@pytest.mark.parametrize("path,expect", [
    ("", ""),
    ("/", ""),
    ("..", ""),
    ("../../etc/passwd", "etc/passwd"),          # `..` clamped at the root
    ("/etc/../../../etc/passwd", "etc/passwd"),
    ("etc/./passwd", "etc/passwd"),
    ("usr/lib/..", "usr"),
    ("lib/libc.so", "usr/lib/libc.so"),          # relative symlink in the middle
    ("abs/libc.so", "usr/lib/libc.so"),          # absolute symlink re-rooted, not the host's /usr/lib
    ("etc/rootusr/lib/libc.so", "usr/lib/libc.so"),  # absolute symlink below the root: from the root
    ("up/etc/passwd", "etc/passwd"),             # a symlink climbing out is clamped
    ("hostetc/passwd", "etc/passwd"),
    ("lib/../etc", "usr/etc"),                   # `..` after a symlink: the parent of its target
    ("chain1/libc.so", "usr/lib/libc.so"),       # chain: relative -> absolute -> with `..`
    ("dotdot/lib", "usr/lib"),
    ("missing/../etc", "etc"),                   # missing components are joined lexically
    ("missing/x", "missing/x"),
])
def test_rules(path, expect):
    assert resolve(path) == expect
    assert resolve(path, follow_last=True) == expect  # none of these ends in a symlink


@pytest.mark.parametrize("path,nofollow,follow", [
    ("lib", "lib", "usr/lib"),
    ("abs", "abs", "usr/lib"),
    ("etc/alt", "etc/alt", "etc/passwd"),
    ("chain1", "chain1", "usr/lib"),
    ("up", "up", ""),
    ("usr/../lib", "lib", "usr/lib"),
])
def test_last_component(path, nofollow, follow):
    assert resolve(path) == nofollow
    assert resolve(path, follow_last=True) == follow


def test_symlink_to_a_file_used_as_a_directory():
    # the join follows it and continues lexically below the file: the kernel (or the caller) refuses
    assert resolve("filelink/x") == "etc/passwd/x"
    assert resolve("filelink/..") == "etc"          # `..` of the link's target, never of the host
    # a caller that ends the walk on a non-directory gets None
    assert resolve("filelink/x", stop_missing=True) is None
    assert resolve("etc/passwd/x", stop_missing=True) is None
    assert resolve("etc/passwd", stop_missing=True) == "etc/passwd"   # the last is never looked up
    assert resolve("missing/x", stop_missing=True) is None


@pytest.mark.parametrize("path", ["loopa", "loopa/x", "self/x", "etc/../loopb/y"])
def test_loops(path):
    with pytest.raises(SymlinkLoop):
        resolve(path, follow_last=True)


def test_loop_not_followed_as_last_component():
    assert resolve("loopa") == "loopa"
    with pytest.raises(SymlinkLoop) as e:
        resolve("x/../self/y")
    assert e.value.args[0] == "self"


def test_hop_limit_is_exactly_max_symlinks():
    def chain(n: int) -> dict[str, str]:      # h0 -> h1 -> ... -> hn (a directory)
        t = {f"h{i}": f"l:h{i + 1}" for i in range(n)}
        t[f"h{n}"] = "d"
        return t
    ok = join("", ["h0", "x"], tree_lookup(chain(MAX_SYMLINKS)))
    assert ok is not None and ok[1] == [f"h{MAX_SYMLINKS}", "x"]
    with pytest.raises(SymlinkLoop):
        join("", ["h0", "x"], tree_lookup(chain(MAX_SYMLINKS + 1)))


def test_untrusted_input_is_not_mutated():
    parts = ["lib", "..", "etc"]
    join("", parts, tree_lookup(TREE))
    assert parts == ["lib", "..", "etc"]


def test_lookup_sees_only_resolved_directories():
    seen: list[tuple[str, str]] = []
    inner = tree_lookup(TREE)

    def lookup(rel, name):
        seen.append((rel, name))
        return inner(rel, name)
    join("", split_path("/abs/../lib/libc.so"), lookup)
    # abs -> /usr/lib walked from the root, `..` -> usr, then usr/lib; the last is not looked up
    assert seen == [("", "abs"), ("", "usr"), ("usr", "lib"), ("usr", "lib")]


def test_split_and_escapes_root():
    assert split_path("/a//./b/../c/") == ["a", "b", "..", "c"]
    assert escapes_root("../x") and escapes_root("a/../../x") and escapes_root("/../x")
    assert not escapes_root("/etc/passwd") and not escapes_root("a/../b") and not escapes_root("")


def test_on_disk_never_leaves_the_root(tmp_path):
    """The launcher's kind of lookup (readlink on the host) over hostile symlinks."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("guest\n")
    (tmp_path / "outside").write_text("host\n")
    os.symlink("/etc/passwd", root / "abs")                  # the host's /etc/passwd if not re-rooted
    os.symlink("../../outside", root / "rel")
    os.symlink("../outside", root / "etc" / "up")
    os.symlink(str(tmp_path / "outside"), root / "hostpath")  # absolute host path: re-rooted (missing)

    def lookup(host, name):
        p = os.path.join(host, name)
        try:
            return None, os.readlink(p)
        except OSError:
            return p, None

    def host_of(path):
        handles, names = join(str(root), split_path(path), lookup, follow_last=True)
        assert handles[-1] == os.path.join(str(root), *names)
        return handles[-1]
    assert open(host_of("abs")).read() == "guest\n"
    for p in ("rel", "etc/up", "../outside", "hostpath", "/../../outside"):
        h = host_of(p)
        assert os.path.realpath(h).startswith(str(root) + "/"), (p, h)
        assert not os.path.exists(h)


def test_import_is_cheap():
    """Leaf module: no `re`, `pathlib`, `dataclasses`, `typing` pulled in (the warm start imports it)."""
    code = ("import sys; before = set(sys.modules); import runtime.path.confine; "
            "import runtime.path; heavy = {'re', 'pathlib', 'dataclasses', 'typing', 'packer'}; "
            "print(sorted(heavy & (set(sys.modules) - before)))")
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-S", "-c", code], cwd=here, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": here}, check=True).stdout
    assert out.strip() == "[]"
