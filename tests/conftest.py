"""Shared pytest fixtures: where the images are, and small builders for test archives/images.

- `shared_images`: `<repo>/../shared/images` (tests that need it skip when it is absent).
- `project_fixtures`: `<repo>/fixtures/build`, built by `scripts/build-fixtures` when missing.
- `make_carryon`: write a bare carryon archive from a list of tar members (for extractor tests).
- `make_oci`: write a small OCI layout dir / archive from layer member lists (for packer tests).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_IMAGES = REPO.parent / "shared" / "images"
FIXTURES_BUILD = REPO / "fixtures" / "build"
CARRYON = [sys.executable, "-m", "packer.cli"]


def run_carryon(*args: str, check: bool = False, env_extra: dict | None = None,
                **kw) -> subprocess.CompletedProcess:
    """Run `carryon ARGS` in a subprocess (captured, text; `input` may be bytes)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), **(env_extra or {}))
    binary = isinstance(kw.get("input"), bytes)
    p = subprocess.run(CARRYON + list(args), capture_output=True, text=not binary, env=env,
                       cwd=kw.pop("cwd", REPO), **kw)
    if binary:
        p.stdout = p.stdout.decode("utf-8", "replace")
        p.stderr = p.stderr.decode("utf-8", "replace")
    if check and p.returncode != 0:
        raise AssertionError(f"carryon {' '.join(args)} -> {p.returncode}\n{p.stderr}")
    return p


@pytest.fixture(scope="session")
def shared_images() -> Path:
    if not SHARED_IMAGES.is_dir():
        pytest.skip(f"{SHARED_IMAGES} not present")
    return SHARED_IMAGES


@pytest.fixture(scope="session")
def project_fixtures() -> Path:
    """The project's own fixture images (built once by scripts/build-fixtures if missing)."""
    if not (FIXTURES_BUILD / "DONE").exists():
        p = subprocess.run([sys.executable, str(REPO / "scripts" / "build-fixtures")], capture_output=True, text=True)
        assert p.returncode == 0, f"scripts/build-fixtures failed:\n{p.stdout}\n{p.stderr}"
    return FIXTURES_BUILD


def tar_member(name: str, type_: bytes = tarfile.REGTYPE, data: bytes = b"", mode: int | None = None,
               uid: int = 0, gid: int = 0, linkname: str = "", mtime: int = 1_700_000_000,
               xattrs: dict[str, bytes] | None = None, devmajor: int = 0, devminor: int = 0
               ) -> tuple[tarfile.TarInfo, bytes]:
    ti = tarfile.TarInfo(name)
    ti.type = type_
    ti.mode = mode if mode is not None else (0o755 if type_ == tarfile.DIRTYPE else 0o644)
    ti.uid, ti.gid = uid, gid
    ti.linkname = linkname
    ti.mtime = mtime
    ti.devmajor, ti.devminor = devmajor, devminor
    ti.size = len(data) if type_ in (tarfile.REGTYPE, tarfile.AREGTYPE) else 0
    for k, v in (xattrs or {}).items():
        ti.pax_headers["SCHILY.xattr." + k] = v.decode("utf-8", "surrogateescape")
    return ti, data


def tar_bytes(members: list[tuple[tarfile.TarInfo, bytes]], fmt: int = tarfile.PAX_FORMAT,
              end_blocks: bool = True) -> bytes:
    buf = io.BytesIO()
    tf = tarfile.open(fileobj=buf, mode="w", format=fmt)
    for ti, data in members:
        tf.addfile(ti, io.BytesIO(data) if ti.isreg() else None)
    offset = tf.offset
    tf.close()
    data = buf.getvalue()
    return data if end_blocks else data[:offset]


@pytest.fixture
def make_carryon(tmp_path):
    """make_carryon(members, name='a.carryon') -> path of a bare archive whose rootfs holds members."""
    def make(members, name: str = "a.carryon") -> Path:
        import zstandard

        from runtime.archive import write_archive

        raw = tar_bytes(members)
        rootfs = tmp_path / (name + ".rootfs.zst")
        rootfs.write_bytes(zstandard.ZstdCompressor(level=3, write_checksum=True).compress(raw))
        manifest = {"format": 1, "rootfs": {"compression": "zstd", "format": "tar",
                                            "sha256": hashlib.sha256(rootfs.read_bytes()).hexdigest(),
                                            "uncompressed_bytes": sum(len(d) for _, d in members)}}
        out = tmp_path / name
        write_archive(str(out), manifest=manifest, rootfs_path=str(rootfs))
        return out
    return make


def _blob(layout: Path, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    d = layout / "blobs" / "sha256"
    d.mkdir(parents=True, exist_ok=True)
    (d / digest).write_bytes(data)
    return "sha256:" + digest


def write_oci(layout: Path, layers: list[list[tuple[tarfile.TarInfo, bytes]] | bytes],
              config: dict | None = None, compress: str = "gzip", tag: str = "latest",
              platform: str = "linux/amd64") -> Path:
    """An OCI image layout dir with one image (its config says `platform`, OS/ARCH); a layer is a
    member list or raw tar bytes."""
    import zstandard

    layout.mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    descs, diff_ids = [], []
    for layer in layers:
        raw = layer if isinstance(layer, bytes) else tar_bytes(layer)
        diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
        if compress == "gzip":
            blob, mt = gzip.compress(raw, mtime=0), "application/vnd.oci.image.layer.v1.tar+gzip"
        elif compress == "zstd":
            blob, mt = zstandard.ZstdCompressor().compress(raw), "application/vnd.oci.image.layer.v1.tar+zstd"
        else:
            blob, mt = raw, "application/vnd.oci.image.layer.v1.tar"
        descs.append({"mediaType": mt, "digest": _blob(layout, blob), "size": len(blob)})
    os_, arch = platform.split("/")
    cfg = {"architecture": arch, "os": os_,
           "config": config if config is not None else {"Cmd": ["/bin/sh"]},
           "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    cfg_data = json.dumps(cfg).encode()
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "digest": _blob(layout, cfg_data), "size": len(cfg_data)},
                "layers": descs}
    mdata = json.dumps(manifest).encode()
    index = {"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": _blob(layout, mdata),
         "size": len(mdata), "annotations": {"org.opencontainers.image.ref.name": tag}}]}
    (layout / "index.json").write_text(json.dumps(index))
    return layout


@pytest.fixture
def make_oci(tmp_path):
    """make_oci(layers, name='img', **kw) -> OCI layout dir (see write_oci)."""
    def make(layers, name: str = "img", **kw) -> Path:
        return write_oci(tmp_path / name, layers, **kw)
    return make


def listing(root: Path) -> list[str]:
    """`find . -printf '%y %m %p -> %l\\n' | LC_ALL=C sort` of a tree."""
    p = subprocess.run(["find", ".", "-printf", r"%y %m %p -> %l\n"], cwd=root, capture_output=True, check=True)
    lines = p.stdout.split(b"\n")
    return [ln.decode("utf-8", "surrogateescape") for ln in sorted(x for x in lines if x)]


def sha256_listing(root: Path) -> list[str]:
    """`find . -type f | sort | xargs sha256sum` of a tree."""
    out = []
    for dirpath, _dirnames, filenames in os.walk(root):
        for f in filenames:
            p = Path(dirpath) / f
            if p.is_symlink() or not p.is_file():
                continue
            rel = "./" + str(p.relative_to(root))
            try:
                data = p.read_bytes()
            except PermissionError:  # mode 000 as a normal user
                os.chmod(p, 0o400)
                data = p.read_bytes()
                os.chmod(p, 0)
            out.append((rel.encode("utf-8", "surrogateescape"), hashlib.sha256(data).hexdigest()))
    return [f"{h}  {r.decode('utf-8', 'surrogateescape')}" for r, h in sorted(out)]


# ---- engine tests (tests/test_engine_*.py): rootfs trees and the non-root user -----------------
ENGINE_TEST_USER = "carryon-test"


def _user_exists(name: str) -> bool:
    import pwd
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


# who runs the guest in engine tests: as root, both root and the unprivileged user; otherwise self
ENGINE_USERS = (["root", ENGINE_TEST_USER] if os.geteuid() == 0 and _user_exists(ENGINE_TEST_USER)
                else ["self"])


def _userns_usable() -> bool:
    """User namespaces work here (the `userns` engine, runtime.userns), as this user."""
    r = subprocess.run(["unshare", "-Urm", "true"], capture_output=True)
    return r.returncode == 0


# the engine variants of the engine tests: the seccomp engine with and without its native stop
# loop (CARRYON_NATIVE=0: Python sees every stop), the plain ptrace engine, and the user namespace
# engine where this node allows it
PTRACE_VARIANTS = ["seccomp", "seccomp-python", "ptrace"]
ENGINE_VARIANTS = PTRACE_VARIANTS + (["userns"] if _userns_usable() else [])


@pytest.fixture(params=ENGINE_USERS)
def user(request):
    """Who runs the guest (root and the unprivileged test user as root; else the caller)."""
    return request.param


@pytest.fixture(params=ENGINE_VARIANTS)
def engine(request):
    """The engine variant (a test file may narrow it with a fixture of its own)."""
    return request.param


def as_user(cmd: list[str], user: str) -> list[str]:
    """`cmd` run as `user` ("root"/"self": unchanged; else through `runuser -u USER --`)."""
    if user in ("root", "self"):
        return cmd
    return ["runuser", "-u", user, "--"] + cmd


@pytest.fixture(scope="session")
def engine_tmp():
    """A world-readable scratch dir (the non-root test user must read the trees built in it)."""
    import shutil
    import tempfile
    base = Path(tempfile.mkdtemp(prefix="carryon-engine-", dir="/tmp"))
    os.chmod(base, 0o755)
    yield base

    def fix(func, path, exc):
        try:
            os.chmod(os.path.dirname(path), 0o755)
            os.chmod(path, 0o755)
            func(path)
        except OSError:
            pass
    shutil.rmtree(base, onerror=fix)


def _extracted(src: Path, dest: Path) -> Path:
    bare = dest.with_suffix(".bare")
    run_carryon("pack", "--bare", str(src), "-o", str(bare), check=True, cwd="/tmp")
    run_carryon("extract", str(bare), str(dest), check=True, cwd="/tmp")
    bare.unlink()
    os.chmod(dest, 0o755)
    return dest


@pytest.fixture(scope="session")
def debian_rootfs(shared_images, engine_tmp) -> Path:
    """debian-python extracted with `carryon pack --bare` + `carryon extract` (meta json beside it)."""
    return _extracted(shared_images / "debian-python" / "debian-python.oci.tar", engine_tmp / "debian")


@pytest.fixture(scope="session")
def busybox_rootfs(shared_images, engine_tmp) -> Path:
    """busybox-multilayer extracted the same way."""
    return _extracted(shared_images / "busybox-multilayer" / "oci", engine_tmp / "busybox")


def user_popen_kwargs(user: str) -> dict:
    """subprocess keyword arguments that run the child directly as `user` (no intermediate
    process, so signals sent to it reach carryon itself)."""
    if user in ("root", "self"):
        return {}
    import pwd
    pw = pwd.getpwnam(user)
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
