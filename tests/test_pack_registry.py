"""`carryon pack docker://...` against a real registry (Debian's docker-registry, started here on a free
loopback port) filled with the project's fixture images by skopeo; a small HTTP proxy in front of it
counts requests, cuts connections, answers 429/503 or plays a bearer-token service. Also skopeo's
`oci:`, `oci-archive:`, `docker-archive:` names, and the reference/credential parsing.

Registry tests skip (with the reason) when `docker-registry`, `skopeo` or `htpasswd` is missing."""

from __future__ import annotations

import base64
import hashlib
import http.client
import http.server
import json
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import CARRYON, REPO
from packer.registry import Reference, RegistryOptions, _from_authfile, parse_reference, pick_platform
from runtime.errors import InputError

ACCEPT = ("application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, "
          "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json")


def _need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (apt-get install docker-registry skopeo apache2-utils)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Registry:
    """docker-registry on 127.0.0.1:PORT with its storage in `root` (optionally htpasswd auth)."""

    def __init__(self, root: Path, htpasswd: Path | None = None, tls: tuple[Path, Path] | None = None) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        auth = (f"auth:\n  htpasswd:\n    realm: carryon-test\n    path: {htpasswd}\n" if htpasswd else "")
        (root / "config.yml").write_text(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n"
            + (f"  tls:\n    certificate: {tls[0]}\n    key: {tls[1]}\n" if tls else "") + auth)
        self.log = open(root / "registry.log", "wb")
        self.proc = subprocess.Popen(["docker-registry", "serve", str(root / "config.yml")], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    log = (root / "registry.log").read_text()
                    raise AssertionError(f"docker-registry did not start: {log}") from None
                time.sleep(0.05)
        self.host = f"127.0.0.1:{self.port}"

    def push(self, src: str, name: str, *extra: str) -> None:
        """skopeo copy SRC docker://HOST/NAME (--dest-tls-verify=false: plain HTTP or a self-signed cert)."""
        p = subprocess.run(["skopeo", "--insecure-policy", "copy", "-q", "--dest-tls-verify=false", *extra, src,
                            f"docker://{self.host}/{name}"], capture_output=True, text=True)
        assert p.returncode == 0, f"skopeo copy {src} -> {name}: {p.stderr}"

    def manifest(self, name: str, ref: str, auth: str | None = None) -> tuple[bytes, dict]:
        req = urllib.request.Request(f"http://{self.host}/v2/{name}/manifests/{ref}", headers={"Accept": ACCEPT})
        if auth:
            req.add_header("Authorization", auth)
        with urllib.request.urlopen(req, timeout=10) as r:
            body = r.read()
        return body, json.loads(body)

    def blob_file(self, digest: str) -> Path:
        hexd = digest.split(":", 1)[1]
        return self.root / "data" / "docker" / "registry" / "v2" / "blobs" / "sha256" / hexd[:2] / hexd / "data"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class Proxy:
    """An HTTP proxy to `upstream` (host:port) that logs (path, Range), and on demand cuts a blob body
    after `cut_after` bytes (`cuts` times; `die` then stops listening), answers `fail` rules
    ([regex, status, headers, times]) itself (`after_trickle` rules once a trickle began and `ready()`
    says so), or
    demands a bearer token from its own /token. It counts the blob GETs in flight at once (`most`);
    with `gate` N a blob GET waits (up to 10 s) until N were in flight together. A blob whose path
    matches `trickle` gets 1000 bytes, then one byte every 50 ms for 10 s, then a cut; a failed write
    meanwhile (the client went away) sets `aborted`."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.log: list[tuple[str, str | None]] = []
        self.cut_after = 0
        self.cuts = 0
        self.die = False
        self.fail: list[list] = []
        self.bearer: str | None = None
        self.rotate = False
        self.gate = 0
        self.inflight = self.most = 0
        self.cond = threading.Condition()
        self.trickle: str | None = None
        self.trickling = threading.Event()
        self.aborted = threading.Event()
        self.after_trickle: list[list] = []
        self.ready: Callable[[], bool] = lambda: True
        px = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a) -> None:
                pass

            def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                px.log.append((self.path, self.headers.get("Range")))
                if "/blobs/" not in self.path:
                    self._get()
                    return
                with px.cond:
                    px.inflight += 1
                    px.most = max(px.most, px.inflight)
                    px.cond.notify_all()
                    px.cond.wait_for(lambda: px.most >= px.gate, timeout=10)
                try:
                    self._get()
                finally:
                    with px.cond:
                        px.inflight -= 1

            def _trickle(self, data: bytes) -> None:
                self.close_connection = True
                try:
                    self.wfile.write(data[:1000])
                    self.wfile.flush()
                    px.trickling.set()
                    for i in range(200):
                        time.sleep(0.05)
                        self.wfile.write(data[1000 + i:1001 + i])
                        self.wfile.flush()
                except OSError:
                    px.aborted.set()

            def _get(self) -> None:
                if px.bearer is not None:
                    if self.path.startswith("/token"):
                        self._send(200, json.dumps({"token": px.bearer}).encode(), {})
                        return
                    if self.headers.get("Authorization") != f"Bearer {px.bearer}":
                        realm = f"http://127.0.0.1:{px.port}/token"
                        self._send(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}',
                                   {"WWW-Authenticate": f'Bearer realm="{realm}",service="carryon-test"'})
                        return
                for rule in px.fail + px.after_trickle:
                    if rule[3] > 0 and re.search(rule[0], self.path):
                        rule[3] -= 1
                        if rule in px.after_trickle:
                            px.trickling.wait(10)
                            wait_until(px.ready)
                        self._send(rule[1], b'{"errors":[]}', rule[2])
                        return
                conn = http.client.HTTPConnection(px.upstream, timeout=30)
                hdrs = {k: v for k in ("Accept", "Range", "Authorization") if (v := self.headers.get(k))}
                if px.bearer is not None:
                    hdrs.pop("Authorization", None)
                conn.request("GET", self.path, headers=hdrs)
                r = conn.getresponse()
                data = r.read()
                conn.close()
                if px.rotate and "/manifests/" in self.path:   # the token expires: a new one from now on
                    px.rotate = False
                    px.bearer = "tok-" + os.urandom(8).hex()
                self.send_response(r.status)
                for k, v in r.getheaders():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "keep-alive"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if px.trickle and re.search(px.trickle, self.path) and r.status == 200:
                    self._trickle(data)
                    return
                if "/blobs/" in self.path and px.cuts > 0 and len(data) > px.cut_after:
                    px.cuts -= 1
                    self.wfile.write(data[:px.cut_after])
                    self.wfile.flush()
                    self.close_connection = True
                    if px.die:
                        px.stop()
                    return
                self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()
        self._stopped = False

    def blob_gets(self) -> list[tuple[str, str | None]]:
        return [e for e in self.log if "/blobs/" in e[0]]

    def stop(self) -> None:
        """Stop listening now (connections are refused from here on)."""
        if not self._stopped:
            self._stopped = True
            self.server.socket.close()
            threading.Thread(target=self.server.shutdown, daemon=True).start()


class ForwardProxy:
    """A forward HTTP proxy as `http_proxy`/`https_proxy` name one: absolute-URL GETs and CONNECT
    tunnels (HTTPS), each logged as (method, target); `auth` keeps the Proxy-Authorization headers."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str]] = []
        self.auth: list[str | None] = []
        px = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a) -> None:
                pass

            def do_GET(self) -> None:
                px.log.append(("GET", self.path))
                u = urllib.parse.urlsplit(self.path)
                conn = http.client.HTTPConnection(u.netloc, timeout=30)
                hdrs = {k: v for k, v in self.headers.items()
                        if k.lower() not in ("host", "connection", "proxy-connection", "keep-alive")}
                conn.request("GET", u.path + (f"?{u.query}" if u.query else ""), headers=hdrs)
                r = conn.getresponse()
                data = r.read()
                conn.close()
                self.send_response(r.status)
                for k, v in r.getheaders():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "keep-alive"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_CONNECT(self) -> None:
                px.log.append(("CONNECT", self.path))
                px.auth.append(self.headers.get("Proxy-Authorization"))
                host, port = self.path.rsplit(":", 1)
                up = socket.create_connection((host, int(port)), timeout=30)
                self.send_response(200, "Connection established")
                self.end_headers()
                self.close_connection = True
                sel = selectors.DefaultSelector()
                sel.register(self.connection, selectors.EVENT_READ, up)
                sel.register(up, selectors.EVENT_READ, self.connection)
                try:
                    while True:
                        for key, _ in sel.select(30):
                            data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                            if not data:
                                return
                            key.data.sendall(data)
                except OSError:
                    pass
                finally:
                    up.close()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.hostport = f"127.0.0.1:{self.server.server_address[1]}"
        self.url = f"http://{self.hostport}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


Env = dict[str, str | None]


def wait_until(cond: Callable[[], bool], limit: float = 20) -> bool:
    """Poll `cond` until it holds (True) or `limit` seconds pass (False)."""
    deadline = time.monotonic() + limit
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _has_bytes(path: Path, n: int) -> Callable[[], bool]:
    return lambda: path.exists() and path.stat().st_size >= n


def carryon(*args: str, env: Env | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`carryon ARGS` with the test's environment changed by `env` (a None value removes the variable)."""
    e = dict(os.environ, PYTHONPATH=str(REPO))
    for k, v in (env or {}).items():
        if v is None:
            e.pop(k, None)
        else:
            e[k] = v
    return subprocess.run(CARRYON + list(args), capture_output=True, text=True, env=e, cwd=cwd or REPO)


def rootfs_sha(run: Path) -> str:
    p = carryon("inspect", "--json", str(run))
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)["rootfs"]["sha256"]


def pack_ok(src: str, out: Path, cache: Path, *extra: str, env: Env | None = None) -> dict:
    p = carryon("pack", "--bare", "-q", *extra, src, "-o", str(out), env={"XDG_CACHE_HOME": str(cache), **(env or {})})
    assert p.returncode == 0, p.stderr
    doc = json.loads(carryon("inspect", "--json", str(out)).stdout)
    return doc


def pack_fails(src: str, out: Path, cache: Path, *extra: str, env: Env | None = None) -> str:
    p = carryon("pack", "--bare", *extra, src, "-o", str(out), env={"XDG_CACHE_HOME": str(cache), **(env or {})})
    assert p.returncode == 125, (p.returncode, p.stderr)
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("carryon pack: ") and "Traceback" not in p.stderr, p.stderr
    assert not out.exists()
    return lines[0]


# ---------------------------------------------------------------- a registry with the fixture images

def _two_platform_layout(fx: Path, dst: Path) -> None:
    """An OCI layout whose index has edge as linux/amd64, demo (config rewritten to arm64) as
    linux/arm64/v8, and a buildkit-style attestation manifest (unknown/unknown)."""
    blobs = dst / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> str:
        h = hashlib.sha256(data).hexdigest()
        (blobs / h).write_bytes(data)
        return "sha256:" + h

    for b in (fx / "edge" / "oci" / "blobs" / "sha256").iterdir():
        shutil.copy(b, blobs / b.name)
    with tarfile.open(fx / "demo.oci.tar") as tf:
        idx = json.load(tf.extractfile("index.json"))  # type: ignore[arg-type]
        for m in tf.getmembers():
            if m.isreg() and m.name.startswith("blobs/sha256/"):
                (blobs / m.name.rsplit("/", 1)[1]).write_bytes(tf.extractfile(m).read())  # type: ignore[union-attr]
    demo_m = json.loads((blobs / idx["manifests"][0]["digest"].split(":")[1]).read_text())
    cfg = json.loads((blobs / demo_m["config"]["digest"].split(":")[1]).read_text())
    cfg["architecture"], cfg["variant"] = "arm64", "v8"
    cdata = json.dumps(cfg).encode()
    demo_m["config"] = dict(demo_m["config"], digest=put(cdata), size=len(cdata))
    arm = json.dumps(demo_m).encode()
    edge_entry = json.loads((fx / "edge" / "oci" / "index.json").read_text())["manifests"][0]
    empty = put(b"{}")
    att = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                      "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": empty,
                                 "size": 2}, "layers": []}).encode()
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": edge_entry["digest"],
         "size": edge_entry["size"], "platform": {"os": "linux", "architecture": "amd64"}},
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": put(arm), "size": len(arm),
         "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": put(att), "size": len(att),
         "platform": {"os": "unknown", "architecture": "unknown"},
         "annotations": {"vnd.docker.reference.type": "attestation-manifest",
                         "vnd.docker.reference.digest": edge_entry["digest"]}}]}).encode()
    (dst / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (dst / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": put(index), "size": len(index),
         "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}))


@pytest.fixture(scope="module")
def reg(project_fixtures: Path, tmp_path_factory):
    _need("docker-registry", "skopeo")
    top = tmp_path_factory.mktemp("registry")
    r = Registry(top / "reg")
    try:
        fx = project_fixtures
        # zstd first: skopeo would reuse the gzip blobs already in the registry
        r.push(f"oci-archive:{fx / 'demo.oci.tar'}", "demo-zstd:latest", "--dest-compress-format", "zstd")
        r.push(f"oci-archive:{fx / 'edge.zstd.oci.tar'}", "edge-zstd:latest")
        r.push(f"oci:{fx / 'edge' / 'oci'}", "edge:latest")
        r.push(f"docker-archive:{fx / 'edge.docker.tar'}", "edge-docker:v1")
        r.push(f"oci-archive:{fx / 'demo.oci.tar'}", "demo:latest")
        r.push(f"docker-archive:{fx / 'multi.docker.tar'}:carryon-fixtures/demo:latest", "ns/demo2:latest")
        _two_platform_layout(fx, top / "multi")
        r.push(f"oci:{top / 'multi'}:latest", "multi:latest", "--all")
        r.multi_layout = top / "multi"  # type: ignore[attr-defined]
        yield r
    finally:
        r.stop()


@pytest.fixture(scope="module")
def local_shas(project_fixtures: Path, tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("local")
    out = {}
    for name, src in (("edge", "edge/oci"), ("demo", "demo.oci.tar")):
        p = carryon("pack", "--bare", "-q", str(project_fixtures / src), "-o", str(d / f"{name}.run"))
        assert p.returncode == 0, p.stderr
        out[name] = rootfs_sha(d / f"{name}.run")
    return out


@pytest.mark.parametrize("name,local", [("edge", "edge"), ("edge-zstd", "edge"), ("edge-docker:v1", "edge"),
                                        ("demo", "demo"), ("ns/demo2", "demo"), ("multi", "edge"),
                                        ("demo-zstd", "demo")])
def test_registry_pack_gives_the_local_tree(reg, local_shas, tmp_path, name, local):
    doc = pack_ok(f"docker://{reg.host}/{name}", tmp_path / "a.run", tmp_path / "cache", "--tls-verify=false")
    assert doc["rootfs"]["sha256"] == local_shas[local]
    assert doc["image"]["format"] == "registry" and doc["image"]["source"].startswith(f"registry {reg.host}/")
    if name == "demo-zstd":  # recompressed by skopeo
        assert {ly["compression"] for ly in doc["image"]["layers"]} == {"zstd"}
    if name == "edge-zstd":  # as in edge.zstd.oci.tar (its plain layer gzip'd by skopeo's push)
        assert [ly["compression"] for ly in doc["image"]["layers"]] == ["zstd", "zstd", "gzip", "zstd"]
    if name == "edge-docker:v1":
        assert doc["image"]["tag"] == f"{reg.host}/edge-docker:v1"


def test_default_output_name_and_progress_quiet_in_pipes(reg, tmp_path):
    p = carryon("pack", "--bare", "--tls-verify=false", f"docker://{reg.host}/demo:latest", cwd=tmp_path,
                env={"XDG_CACHE_HOME": str(tmp_path / "c")})
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "demo.run").is_file()
    assert p.stderr.startswith("carryon pack: wrote demo.run") and len(p.stderr.splitlines()) == 1


def test_platform_pick_from_a_two_platform_index(reg, local_shas, tmp_path):
    c = tmp_path / "cache"
    src = f"docker://{reg.host}/multi:latest"
    doc = pack_ok(src, tmp_path / "arm.run", c, "--tls-verify=false", "--platform", "linux/arm64")
    assert doc["rootfs"]["sha256"] == local_shas["demo"] and doc["image"]["platform"] == "linux/arm64/v8"
    line = pack_fails(src, tmp_path / "s.run", c, "--tls-verify=false", "--platform", "linux/s390x")
    assert "no image for platform linux/s390x (available: linux/amd64, linux/arm64/v8)" in line
    assert "unknown" not in line
    # the same layout packed locally picks the same entries
    local = pack_ok(f"oci:{reg.multi_layout}", tmp_path / "l.run", c, "--platform", "linux/arm64")
    assert local["rootfs"]["sha256"] == local_shas["demo"]


def test_digest_reference_is_verified(reg, local_shas, tmp_path):
    body, _ = reg.manifest("edge", "latest")
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    doc = pack_ok(f"docker://{reg.host}/edge@{digest}", tmp_path / "d.run", tmp_path / "c", "--tls-verify=false")
    assert doc["rootfs"]["sha256"] == local_shas["edge"] and doc["image"]["manifest_digest"] == digest
    px = Proxy(reg.host)
    try:
        line = pack_fails(f"docker://{px.host}/demo@{digest}", tmp_path / "x.run", tmp_path / "c",
                          "--tls-verify=false")
        assert f"manifest {digest} not found" in line  # the registry has edge's manifest, not under demo
        # a lying registry (here the proxy) answers the digest with other bytes: caught
        px.fail.append([re.escape(f"/manifests/{digest}"), 200,
                        {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}, 1])
        line = pack_fails(f"docker://{px.host}/edge@{digest}", tmp_path / "y.run", tmp_path / "c",
                          "--tls-verify=false")
        lie = "sha256:" + hashlib.sha256(b'{"errors":[]}').hexdigest()
        assert "does not match the digest asked" in line and lie in line
    finally:
        px.stop()


def test_missing_tag_repository_and_unreachable_registry(reg, tmp_path):
    c = tmp_path / "c"
    line = pack_fails(f"docker://{reg.host}/edge:nope", tmp_path / "a.run", c, "--tls-verify=false")
    assert "tag 'nope' not found" in line and f"{reg.host}/edge:nope" in line
    line = pack_fails(f"docker://{reg.host}/nothere:latest", tmp_path / "a.run", c, "--tls-verify=false")
    assert "repository 'nothere' not found" in line
    port = _free_port()
    line = pack_fails(f"docker://127.0.0.1:{port}/edge", tmp_path / "a.run", c, "--tls-verify=false")
    assert f"connection refused by 127.0.0.1:{port}" in line
    line = pack_fails("docker://carryon-no-such-host.invalid/edge", tmp_path / "a.run", c)
    assert "unknown registry host 'carryon-no-such-host.invalid'" in line
    line = pack_fails(f"docker://{reg.host}/edge", tmp_path / "a.run", c)   # https to a plain-HTTP registry
    assert "TLS" in line and "--tls-verify=false" in line


def test_a_repack_downloads_nothing_and_no_cache_bypasses(reg, tmp_path):
    px = Proxy(reg.host)
    try:
        c = tmp_path / "cache"
        pack_ok(f"docker://{px.host}/edge", tmp_path / "1.run", c, "--tls-verify=false")
        first = px.blob_gets()
        assert len(first) >= 3
        cached = sorted(p.name for p in (c / "carryon" / "blobs" / "sha256").iterdir())
        assert all(re.fullmatch(r"[0-9a-f]{64}", n) for n in cached) and len(cached) == len(first)
        assert (c / "carryon" / "blobs").stat().st_mode & 0o077 == 0
        px.log.clear()
        p = carryon("pack", "--bare", "--tls-verify=false", f"docker://{px.host}/edge", "-o", str(tmp_path / "2.run"),
                    env={"XDG_CACHE_HOME": str(c)})
        assert p.returncode == 0 and "; downloaded nothing (all 5 blobs from the cache)" in p.stderr, p.stderr
        assert px.blob_gets() == [] and any("/manifests/" in p for p, _ in px.log)
        assert rootfs_sha(tmp_path / "1.run") == rootfs_sha(tmp_path / "2.run")
        px.log.clear()
        p = carryon("pack", "--bare", "--tls-verify=false", "--no-cache", f"docker://{px.host}/edge", "-o",
                    str(tmp_path / "3.run"), env={"XDG_CACHE_HOME": str(c)})
        size = sum((c / "carryon" / "blobs" / "sha256" / n).stat().st_size for n in cached)
        assert p.returncode == 0 and f"; downloaded 5 of 5 blobs ({size / 1e6:.1f} MB)" in p.stderr, p.stderr
        assert len(px.blob_gets()) == len(first)
        # a damaged cache entry is fetched again, not used
        victim = c / "carryon" / "blobs" / "sha256" / cached[0]
        victim.write_bytes(b"x" * victim.stat().st_size)
        px.log.clear()
        pack_ok(f"docker://{px.host}/edge", tmp_path / "4.run", c, "--tls-verify=false")
        assert [p for p, _ in px.blob_gets()] == [f"/v2/edge/blobs/sha256:{cached[0]}"]
        assert hashlib.sha256(victim.read_bytes()).hexdigest() == cached[0]
    finally:
        px.stop()


def test_untrusted_cache_dir_is_not_used(reg, tmp_path):
    c = tmp_path / "cache"
    (c / "carryon").mkdir(parents=True)
    (c / "carryon").chmod(0o777)
    p = carryon("pack", "--bare", "--tls-verify=false", f"docker://{reg.host}/demo", "-o", str(tmp_path / "a.run"),
                env={"XDG_CACHE_HOME": str(c)})
    assert p.returncode == 0, p.stderr
    assert "note: no blob cache" in p.stderr and "writable by group or others" in p.stderr
    assert not (c / "carryon" / "blobs").exists()


def test_cut_connection_resumes_with_range_in_the_same_run(reg, local_shas, tmp_path):
    px = Proxy(reg.host)
    try:
        px.cut_after, px.cuts = 1000, 1
        doc = pack_ok(f"docker://{px.host}/edge", tmp_path / "a.run", tmp_path / "c", "--tls-verify=false")
        assert doc["rootfs"]["sha256"] == local_shas["edge"]
        assert ("bytes=1000-" in [r for _, r in px.blob_gets()])
    finally:
        px.stop()


def test_registry_dying_mid_blob_fails_cleanly_and_a_rerun_resumes(reg, local_shas, tmp_path):
    c = tmp_path / "c"
    px = Proxy(reg.host)
    px.cut_after, px.cuts, px.die = 4096, 1, True
    line = pack_fails(f"docker://{px.host}/edge", tmp_path / "a.run", c, "--tls-verify=false")
    assert "connection refused" in line
    # the cut blob is kept to resume (the other downloads, stopped with it, may have left some too)
    partial = {p.name: p.stat().st_size for p in (c / "carryon" / "blobs" / "sha256").iterdir()
               if p.name.endswith(".partial")}
    assert 4096 in partial.values() and 0 not in partial.values()
    px2 = Proxy(reg.host)
    try:
        doc = pack_ok(f"docker://{px2.host}/edge", tmp_path / "a.run", c, "--tls-verify=false")
        assert doc["rootfs"]["sha256"] == local_shas["edge"]
        ranges = {p.rsplit(":", 1)[1]: r for p, r in px2.blob_gets()}
        assert {n[:-len(".partial")]: f"bytes={k}-" for n, k in partial.items()}.items() <= ranges.items()
        assert not [p for p in (c / "carryon" / "blobs" / "sha256").iterdir() if p.name.endswith(".partial")]
    finally:
        px2.stop()


def test_blobs_download_several_at_once(reg, local_shas, tmp_path):
    px = Proxy(reg.host)
    try:
        px.gate = 2        # each blob GET waits until two were in flight together (10 s at most)
        doc = pack_ok(f"docker://{px.host}/edge", tmp_path / "a.run", tmp_path / "c", "--tls-verify=false")
        assert doc["rootfs"]["sha256"] == local_shas["edge"]
        assert 2 <= px.most <= 3 and len(px.blob_gets()) == 5
    finally:
        px.stop()


def test_a_failed_download_stops_the_others_at_once(reg, tmp_path):
    _, m = reg.manifest("edge", "latest")
    slow, bad = m["layers"][0]["digest"], m["layers"][1]["digest"]
    px = Proxy(reg.host)
    try:
        c = tmp_path / "c"
        px.trickle = re.escape(slow)          # layer 0 comes at 20 bytes/s: 10 s, then a cut
        px.after_trickle.append([re.escape(bad), 403, {}, 1])   # once carryon has written 1000 bytes of it
        px.ready = _has_bytes(c / "carryon" / "blobs" / "sha256" / (slow.split(":")[1] + ".partial"), 1000)
        line = pack_fails(f"docker://{px.host}/edge", tmp_path / "a.run", c, "--tls-verify=false")
        assert f"access denied to layer 1 {bad} (HTTP 403)" in line
        # the slow download was stopped by the client (not left to run its 10 s): what it got is kept to
        # resume, nothing is in the cache under the blob's name
        assert px.trickling.is_set() and px.aborted.wait(5)
        blobs = c / "carryon" / "blobs" / "sha256"
        assert not (blobs / slow.split(":")[1]).exists()
        assert (blobs / (slow.split(":")[1] + ".partial")).stat().st_size >= 1000
    finally:
        px.stop()


def test_ctrl_c_stops_every_download_and_keeps_the_partial_blob(reg, tmp_path):
    _, m = reg.manifest("edge", "latest")
    slow = m["layers"][0]["digest"]
    px = Proxy(reg.host)
    try:
        px.trickle = re.escape(slow)
        c = tmp_path / "c"
        p = subprocess.Popen(CARRYON + ["pack", "--bare", "--tls-verify=false", f"docker://{px.host}/edge", "-o",
                                        str(tmp_path / "a.run")], stderr=subprocess.PIPE, text=True,
                             env=dict(os.environ, PYTHONPATH=str(REPO), XDG_CACHE_HOME=str(c)), cwd=REPO)
        partial = c / "carryon" / "blobs" / "sha256" / (slow.split(":")[1] + ".partial")
        assert px.trickling.wait(20) and wait_until(_has_bytes(partial, 1000))
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
        assert p.returncode == 130 and err == "carryon pack: interrupted\n", (p.returncode, err)
        assert px.aborted.wait(5) and not (tmp_path / "a.run").exists()
        assert partial.exists() and 1000 <= partial.stat().st_size < m["layers"][0]["size"]
    finally:
        px.stop()


def test_progress_per_blob_and_total_on_a_terminal(reg, tmp_path):
    import fcntl
    import pty
    import struct
    import termios
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = dict(os.environ, PYTHONPATH=str(REPO), XDG_CACHE_HOME=str(tmp_path / "c"))
    p = subprocess.Popen(CARRYON + ["pack", "--bare", "--tls-verify=false", f"docker://{reg.host}/edge",
                                    "-o", str(tmp_path / "a.run")], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=slave, env=env, cwd=REPO)
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert p.wait() == 0, out
    text = out.decode()
    _, m = reg.manifest("edge", "latest")
    # the board's last frame: a line per blob and the total, all done
    last = list(re.finditer(r"\r\x1b\[(\d+)A", text))[-1]
    frame = [ln.replace("\x1b[K", "").strip() for ln in text[last.end():].split("\n")[:int(last.group(1))]]
    want = [f"config {m['config']['digest'][7:19]}"] + [f"layer {i} {ly['digest'][7:19]}"
                                                        for i, ly in enumerate(m["layers"])]
    assert [ln.split("  ")[0] for ln in frame] == want + ["total"], frame
    assert all(ln.endswith("  done") for ln in frame[:-1]) and frame[-1].endswith("5/5 done"), frame
    size = sum(ly["size"] for ly in m["layers"]) + m["config"]["size"]
    assert f"/{size / 1e6:.1f} MB" in frame[-1]
    assert "carryon pack: wrote" in text


def test_5xx_is_retried_and_429_names_the_rate_limit(reg, local_shas, tmp_path):
    px = Proxy(reg.host)
    try:
        px.fail.append([r"/manifests/", 503, {}, 2])
        px.fail.append([r"/blobs/", 502, {}, 1])
        doc = pack_ok(f"docker://{px.host}/demo", tmp_path / "a.run", tmp_path / "c", "--tls-verify=false")
        assert doc["rootfs"]["sha256"] == local_shas["demo"]
        px.fail.append([r"/manifests/", 429, {"Retry-After": "30"}, 1])
        line = pack_fails(f"docker://{px.host}/demo", tmp_path / "b.run", tmp_path / "c", "--tls-verify=false")
        assert "rate limit" in line and "HTTP 429" in line and "retry after 30 s" in line
    finally:
        px.stop()


def test_corrupted_blob_in_the_registry_is_refused(project_fixtures, tmp_path):
    _need("docker-registry", "skopeo")
    r = Registry(tmp_path / "reg")
    try:
        r.push(f"oci-archive:{project_fixtures / 'demo.oci.tar'}", "demo:latest")
        _, m = r.manifest("demo", "latest")
        layer = m["layers"][0]["digest"]
        f = r.blob_file(layer)
        data = bytearray(f.read_bytes())
        data[len(data) // 2] ^= 0xFF
        f.write_bytes(bytes(data))
        c = tmp_path / "c"
        line = pack_fails(f"docker://{r.host}/demo", tmp_path / "a.run", c, "--tls-verify=false")
        assert f"layer 0 {layer}: digest mismatch" in line
        assert not (c / "carryon" / "blobs" / "sha256" / layer.split(":")[1]).exists()
    finally:
        r.stop()


def test_basic_auth_credentials(project_fixtures, local_shas, tmp_path):
    _need("docker-registry", "skopeo", "htpasswd")
    pw = tmp_path / "htpasswd"
    subprocess.run(["htpasswd", "-Bbc", str(pw), "alice", "s3cret"], check=True, capture_output=True)
    r = Registry(tmp_path / "reg", htpasswd=pw)
    try:
        r.push(f"oci-archive:{project_fixtures / 'demo.oci.tar'}", "team/demo:latest", "--dest-creds", "alice:s3cret")
        src, c, out = f"docker://{r.host}/team/demo", tmp_path / "c", tmp_path / "a.run"
        home = tmp_path / "home"
        home.mkdir()
        env = {"HOME": str(home), "XDG_RUNTIME_DIR": str(tmp_path / "run"), "XDG_CONFIG_HOME": str(home / ".config")}
        line = pack_fails(src, out, c, "--tls-verify=false", env=env)
        assert "requires credentials" in line and "tried no credentials (anonymous)" in line
        line = pack_fails(src, out, c, "--tls-verify=false", "--creds", "alice:wrong", env=env)
        assert "access denied" in line and "HTTP 401" in line and "user 'alice' from --creds" in line
        assert pack_ok(src, out, c, "--tls-verify=false", "--creds", "alice:s3cret", env=env)["rootfs"]["sha256"] \
            == local_shas["demo"]
        auth = base64.b64encode(b"alice:s3cret").decode()
        af = tmp_path / "auth.json"
        af.write_text(json.dumps({"auths": {f"{r.host}/team": {"auth": auth}, "other.example": {"auth": "eA=="}}}))
        out.unlink()
        pack_ok(src, out, c, "--tls-verify=false", "--authfile", str(af), "--no-cache", env=env)
        # the defaults: ~/.docker/config.json, then $XDG_RUNTIME_DIR/containers/auth.json first
        (home / ".docker").mkdir()
        (home / ".docker" / "config.json").write_text(json.dumps({"auths": {r.host: {"auth": auth}}}))
        out.unlink()
        pack_ok(src, out, c, "--tls-verify=false", "--no-cache", env=env)
        (tmp_path / "run" / "containers").mkdir(parents=True)
        bad = base64.b64encode(b"alice:nope").decode()
        (tmp_path / "run" / "containers" / "auth.json").write_text(json.dumps({"auths": {r.host: {"auth": bad}}}))
        out.unlink()
        line = pack_fails(src, out, c, "--tls-verify=false", "--no-cache", env=env)
        assert f"user 'alice' from {tmp_path / 'run' / 'containers' / 'auth.json'}" in line
    finally:
        r.stop()


def test_anonymous_bearer_token_flow(reg, local_shas, tmp_path):
    px = Proxy(reg.host)
    try:
        px.bearer = "tok-" + os.urandom(8).hex()
        doc = pack_ok(f"docker://{px.host}/ns/demo2", tmp_path / "a.run", tmp_path / "c", "--tls-verify=false")
        assert doc["rootfs"]["sha256"] == local_shas["demo"]
        tokens = [p for p, _ in px.log if p.startswith("/token")]
        assert tokens and "scope=repository%3Ans%2Fdemo2%3Apull" in tokens[0] and "service=carryon-test" in tokens[0]
        # the token expires after the manifest: the parallel blob downloads all meet the new challenge,
        # one of them fetches a new token, the others use it
        px.log.clear()
        px.rotate = True
        doc = pack_ok(f"docker://{px.host}/edge", tmp_path / "b.run", tmp_path / "c2", "--tls-verify=false")
        assert len([p for p, _ in px.log if p.startswith("/token")]) == 2
    finally:
        px.stop()


def test_self_signed_https_registry_needs_tls_verify_false(project_fixtures, local_shas, tmp_path):
    _need("docker-registry", "skopeo", "openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    r = Registry(tmp_path / "reg", tls=(cert, key))
    try:
        r.push(f"oci-archive:{project_fixtures / 'demo.oci.tar'}", "demo:latest")
        c, out = tmp_path / "c", tmp_path / "a.run"
        line = pack_fails(f"docker://{r.host}/demo", out, c)
        assert "TLS with" in line and "CERTIFICATE_VERIFY_FAILED" in line and "--tls-verify=false" in line
        # a TLS-only port: success means HTTPS without certificate checks, not the plain-HTTP fallback
        doc = pack_ok(f"docker://{r.host}/demo", out, c, "--tls-verify=false")
        assert doc["rootfs"]["sha256"] == local_shas["demo"]
    finally:
        r.stop()


NO_PROXIES: Env = {k: None for n in ("http", "https", "no", "all") for k in (f"{n}_proxy", f"{n.upper()}_PROXY")}


def test_proxies_from_the_environment(reg, project_fixtures, local_shas, tmp_path):
    """HTTP through `http_proxy`/`HTTP_PROXY`, HTTPS through a CONNECT tunnel of `https_proxy`, and
    `no_proxy` goes direct (urllib's rules, as curl's and Go's)."""
    _need("openssl")
    fp = ForwardProxy()
    c = tmp_path / "c"
    try:
        for var in ("http_proxy", "HTTP_PROXY"):
            fp.log.clear()
            doc = pack_ok(f"docker://{reg.host}/edge", tmp_path / "a.run", c, "--tls-verify=false", "--no-cache",
                          env={**NO_PROXIES, var: fp.url})
            assert doc["rootfs"]["sha256"] == local_shas["edge"]
            gets = [t for m, t in fp.log if m == "GET"]
            assert f"http://{reg.host}/v2/edge/manifests/latest" in gets
            assert len([t for t in gets if t.startswith(f"http://{reg.host}/v2/edge/blobs/sha256:")]) == 5
        fp.log.clear()
        pack_ok(f"docker://{reg.host}/edge", tmp_path / "a.run", c, "--tls-verify=false", "--no-cache",
                env={**NO_PROXIES, "http_proxy": fp.url, "no_proxy": "127.0.0.1"})
        assert fp.log == []
        cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                        "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out",
                        str(cert)], check=True, capture_output=True)
        r = Registry(tmp_path / "reg", tls=(cert, key))
        try:
            r.push(f"oci-archive:{project_fixtures / 'demo.oci.tar'}", "demo:latest")
            doc = pack_ok(f"docker://{r.host}/demo", tmp_path / "b.run", c, "--tls-verify=false", "--no-cache",
                          env={**NO_PROXIES, "HTTPS_PROXY": f"http://bob:pw@{fp.hostport}"})
            assert doc["rootfs"]["sha256"] == local_shas["demo"]
            assert ("CONNECT", r.host) in fp.log and not [t for m, t in fp.log if m == "GET"]
            assert set(fp.auth) == {"Basic " + base64.b64encode(b"bob:pw").decode()}
        finally:
            r.stop()
    finally:
        fp.stop()


def _private_mounts() -> list[str]:
    """`unshare` options for a private mount namespace this user may mount a tmpfs in (root: -m;
    others: -r -m, a user namespace), or skip."""
    opts = ["-m"] if os.geteuid() == 0 else ["-r", "-m"]
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        pytest.skip("needs unshare and mount (util-linux)")
    p = subprocess.run(["unshare", *opts, "sh", "-c", 'mount -t tmpfs -o size=64k tmpfs "$0"', "/tmp"],
                       capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a private mount namespace here ({p.stderr.strip()})")
    return opts


def pack_in_small_tmpfs(small: list[Path], *args: str, env: Env) -> tuple[str, dict[Path, list[str]]]:
    """`carryon pack --bare ARGS` with each of `small` a 256 KiB tmpfs (a private mount namespace):
    its one error line, and what each small dir holds afterwards."""
    mounts = " && ".join(f'mount -t tmpfs -o size=256k,mode=0700 tmpfs "{d}"' for d in small)
    lists = "; ".join(f'echo "== {d}"; ls -A "{d}"' for d in small)
    for d in small:
        d.mkdir(exist_ok=True)
    e = dict(os.environ, PYTHONPATH=str(REPO), **{k: v for k, v in env.items() if v is not None})
    p = subprocess.run(["unshare", *_private_mounts(), "sh", "-c", f'{mounts} && {{ "$@"; rc=$?; {lists}; exit $rc; }}',
                        "sh", *CARRYON, "pack", "--bare", *args], capture_output=True, text=True, env=e, cwd=REPO)
    assert p.returncode == 125, (p.returncode, p.stderr)
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("carryon pack: ") and "Traceback" not in p.stderr, p.stderr
    held: dict[Path, list[str]] = {}
    for part in p.stdout.split("== ")[1:]:
        head, *names = part.splitlines()
        held[Path(head)] = names
    return lines[0], held


def test_disk_full_in_the_blob_cache_at_out_and_in_the_temp_dir(reg, tmp_path):
    src = f"docker://{reg.host}/edge"
    c, o, t = tmp_path / "c", tmp_path / "o", tmp_path / "t"
    line, _ = pack_in_small_tmpfs([c], "--tls-verify=false", src, "-o", str(tmp_path / "a.run"),
                                  env={"XDG_CACHE_HOME": str(c)})
    assert f"no space left in {c}/carryon/blobs/sha256 while downloading blob sha256:" in line
    assert not (tmp_path / "a.run").exists()
    line, held = pack_in_small_tmpfs([o], "--tls-verify=false", src, "-o", str(o / "a.run"),
                                     env={"XDG_CACHE_HOME": str(tmp_path / "c2")})
    assert line == f"carryon pack: cannot write {o / 'a.run'}: No space left on device" and held[o] == []
    line, held = pack_in_small_tmpfs([t], "--tls-verify=false", "--no-cache", src, "-o", str(tmp_path / "b.run"),
                                     env={"TMPDIR": str(t)})
    assert f"no space left in {t} (temporary files) while downloading blob sha256:" in line and held[t] == []
    assert not (tmp_path / "b.run").exists()


def test_inspect_takes_the_same_references(reg, project_fixtures, tmp_path):
    fx, c = project_fixtures, tmp_path / "c"
    env = {"XDG_CACHE_HOME": str(c)}
    px = Proxy(reg.host)
    try:
        p = carryon("inspect", "--json", "--tls-verify=false", f"docker://{px.host}/edge", env=env)
        assert p.returncode == 0, p.stderr
        got = json.loads(p.stdout)
        _, m = reg.manifest("edge", "latest")
        # only the manifest and the config are downloaded
        assert [q for q, _ in px.blob_gets()] == [f"/v2/edge/blobs/{m['config']['digest']}"]
        packed = pack_ok(f"docker://{px.host}/edge", tmp_path / "a.run", c, "--tls-verify=false")
        for ly in packed["image"]["layers"]:
            del ly["compression"]
        assert got == {"image": packed["image"], "config": packed["config"]}
        p = carryon("inspect", "--tls-verify=false", "--platform", "linux/arm64", f"docker://{px.host}/multi", env=env)
        ref = f"{px.host}/multi:latest"
        assert p.returncode == 0 and f"image       registry {ref}  tag {ref}  linux/arm64/v8" in p.stdout, p.stderr
        assert "entrypoint  " in p.stdout
        p = carryon("inspect", "--tls-verify=false", f"docker://{px.host}/edge:nope", env=env)
        assert p.returncode == 125 and p.stderr.count("\n") == 1 and "tag 'nope' not found" in p.stderr, p.stderr
    finally:
        px.stop()
    # the local forms, as pack names them
    want = json.loads(carryon("inspect", "--json", str(tmp_path / "a.run")).stdout)["config"]
    for src in (f"oci:{fx / 'edge' / 'oci'}", str(fx / "edge" / "oci"), f"oci-archive:{fx / 'edge.zstd.oci.tar'}",
                str(fx / "edge.docker.tar"), f"docker-archive:{fx / 'multi.docker.tar'}:carryon-fixtures/edge:latest",
                f"{fx / 'multi.docker.tar'}:carryon-fixtures/edge:latest"):
        p = carryon("inspect", "--json", src)
        assert p.returncode == 0, (src, p.stderr)
        assert json.loads(p.stdout)["config"] == want, src
    p = carryon("inspect", "--files", f"oci:{fx / 'edge' / 'oci'}")
    assert p.returncode == 125 and "is an image, not an archive" in p.stderr
    p = carryon("inspect", str(fx / "edge" / "oci" / "index.json"))
    assert p.returncode == 125 and "not a carryon archive (" in p.stderr and "), nor a container image" in p.stderr


# ---------------------------------------------------------------- skopeo's local names

def test_skopeo_transport_names_for_local_images(project_fixtures, local_shas, tmp_path):
    fx, c = project_fixtures, tmp_path / "c"
    for src in (f"oci:{fx / 'edge' / 'oci'}", f"oci:{fx / 'edge' / 'oci'}:latest",
                f"oci-archive:{fx / 'edge.zstd.oci.tar'}",
                f"docker-archive:{fx / 'multi.docker.tar'}:carryon-fixtures/edge:latest"):
        assert pack_ok(src, tmp_path / "a.run", c)["rootfs"]["sha256"] == local_shas["edge"], src
    line = pack_fails(f"oci-archive:{fx / 'edge.docker.tar'}", tmp_path / "b.run", c)
    assert "is docker-archive, not oci-archive" in line
    line = pack_fails(f"oci:{tmp_path / 'nothing'}", tmp_path / "b.run", c)
    assert "no such file or directory" in line


# ---------------------------------------------------------------- units: references, auth files, platforms

@pytest.mark.parametrize("text,want", [
    ("docker://busybox", Reference("docker.io", "library/busybox", "latest", None)),
    ("docker://docker.io/user/app:1.2", Reference("docker.io", "user/app", "1.2", None)),
    ("docker://index.docker.io/busybox:musl", Reference("docker.io", "library/busybox", "musl", None)),
    ("docker://localhost/app", Reference("localhost", "app", "latest", None)),
    ("docker://127.0.0.1:5000/a/b/c:t", Reference("127.0.0.1:5000", "a/b/c", "t", None)),
    ("docker://ghcr.io/o/r@sha256:" + "a" * 64, Reference("ghcr.io", "o/r", None, "sha256:" + "a" * 64)),
    ("docker://quay.io/o/r:t@sha256:" + "b" * 64, Reference("quay.io", "o/r", "t", "sha256:" + "b" * 64)),
])
def test_parse_reference(text, want):
    ref = parse_reference(text)
    assert ref == want
    assert (ref.api_host == "registry-1.docker.io") == (want.registry == "docker.io")


@pytest.mark.parametrize("bad", ["docker://", "docker://upper/Case", "docker://a/b:bad tag", "docker://x@md5:12",
                                 "docker://a//b", "docker://a/b@sha256:short"])
def test_parse_reference_refuses(bad):
    with pytest.raises(InputError):
        parse_reference(bad)


def test_authfile_keys_match_docker_hub_and_repo_prefixes(tmp_path):
    def enc(s: str) -> str:
        return base64.b64encode(s.encode()).decode()
    f = tmp_path / "config.json"
    f.write_text(json.dumps({"auths": {"https://index.docker.io/v1/": {"auth": enc("hub:1")},
                                       "reg.example:5000": {"auth": enc("host:2")},
                                       "reg.example:5000/team": {"auth": enc("team:3:with:colons")}}}))
    def who(src: str):
        c = _from_authfile(str(f), parse_reference(src), explicit=True)
        return c and (c.user, c.password)
    assert who("docker://busybox") == ("hub", "1")
    assert who("docker://reg.example:5000/other/x") == ("host", "2")
    assert who("docker://reg.example:5000/team/x") == ("team", "3:with:colons")
    assert who("docker://elsewhere.example/x") is None
    f.write_text('{"auths": {"reg.example:5000": {"auth": "!!"}}}')
    with pytest.raises(InputError, match="not base64"):
        who("docker://reg.example:5000/x")
    assert RegistryOptions().tls_verify


def test_pick_platform_skips_attestations_and_lists_what_is_there():
    entries = [{"digest": "a", "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
               {"digest": "b", "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
               {"digest": "c", "platform": {"os": "unknown", "architecture": "unknown"}},
               {"digest": "d", "platform": {"os": "linux", "architecture": "amd64"},
                "annotations": {"vnd.docker.reference.type": "attestation-manifest"}},
               {"digest": "e", "platform": {"os": "linux", "architecture": "amd64"}}]
    assert pick_platform(entries, "linux/amd64", "x")["digest"] == "e"
    assert pick_platform(entries, "linux/arm64", "x")["digest"] == "b"
    assert pick_platform(entries, "linux/arm/v7", "x")["digest"] == "a"
    with pytest.raises(InputError, match=r"available: linux/amd64, linux/arm/v7, linux/arm64/v8\)"):
        pick_platform(entries, "linux/riscv64", "x")
    with pytest.raises(InputError):
        pick_platform(entries, "linux/arm/v6", "x")
    assert pick_platform([{"digest": "z"}], "linux/amd64", "x")["digest"] == "z"


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
