"""Pull an image from a registry (OCI distribution API) into an OCI layout the normal reader opens.

Contract: `fetch_layout(ref, platform, workdir, opts)` resolves `docker://[REGISTRY/]REPO[:TAG|@DIGEST]`
(`parse_reference`: Docker Hub defaults `docker.io` -> `registry-1.docker.io`, `library/` for one-part
names, tag `latest`), picks the `platform` entry of an index (attestation manifests and
`unknown/unknown` entries are never candidates), downloads the config and layer blobs and writes
`WORKDIR/registry/` as an OCI image layout: `index.json` naming the one chosen manifest, the manifest,
and the blobs (symlinks into the blob cache, or files when there is no cache). `packer.sources` then
reads that layout like any other, so digests, diff_ids and squashing are checked by the shared code.
With `with_layers=False` (`carryon inspect`) only the manifest and the config are fetched.

Everything the registry sends is untrusted: manifests are size-capped and must parse, a digest reference
is checked against the manifest bytes, every blob is hashed and counted while it streams and refused
(InputError naming the blob) when its digest or size is not the descriptor's.

HTTP: `urllib.request`; proxies from the standard environment variables by its rules (`https_proxy`
through a CONNECT tunnel, `http_proxy`, `no_proxy`; lower case first). HTTPS first; only with
`--tls-verify=false` is the certificate not checked and plain HTTP tried after HTTPS fails (skopeo's
rule). Auth: the registry's `WWW-Authenticate` challenge decides -- Bearer (token endpoint, anonymous
or with the credentials) or Basic. Credentials: `--creds USER[:PASS]`, else `--authfile FILE`, else the
first of `$XDG_RUNTIME_DIR/containers/auth.json`, `~/.config/containers/auth.json`,
`~/.docker/config.json` with an `auth` entry for the registry (base64 `USER:PASS`). The Authorization
header is never sent on after a redirect (blobs are often redirected to a storage host).

Blob cache: `$XDG_CACHE_HOME/carryon/blobs/sha256/HEX` (else `~/.cache/carryon/...`), used only when the
directories pass `runtime.cache.check_candidate`'s rule for default locations (real directory of ours,
not writable by group or others); `--no-cache` (or no trusted place) downloads into the work dir. A
cached blob is re-hashed before use (a bad one is fetched again), so a repack downloads nothing. A
download goes to `HEX.partial` (locked with flock; a second concurrent pack of the same blob uses a
private file) and is renamed once verified; a cut connection resumes with an HTTP Range request, also
in a later run. 5xx answers, connection resets and timeouts are retried with back-off; HTTP 429 is
one error naming the registry's rate limit and its Retry-After.

Downloads run JOBS at a time (threads; the Client's auth renewal and counters are locked). The first
failure, or Ctrl-C, stops the others at once (`Client.abort`: a cancel flag checked at every step,
and the sockets being read shut down); what they received is kept in their partial files, and that
first failure is raised once all have stopped. Progress: a `packer.progress.Board` on a terminal (a
line per blob and a total), nothing otherwise; `Pulled` (also left in `RegistryOptions.pulled`)
counts the bytes and blobs received.

Errors are CarryonError/InputError, one line each (unknown host, refused connection, TLS failure,
401/403 with the credentials tried, missing repository or tag, no entry for the platform with the
ones there, digest mismatch naming the blob, a full disk).
"""

from __future__ import annotations

import argparse
import base64
import errno
import fcntl
import getpass
import hashlib
import http.client
import json
import os
import re
import socket
import ssl
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import BinaryIO

from packer.progress import Board
from runtime import cache as rcache
from runtime.errors import CarryonError, InputError

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_DOCKER_V1 = ("application/vnd.docker.distribution.manifest.v1+json",
                "application/vnd.docker.distribution.manifest.v1+prettyjws")
INDEX_TYPES = (MT_OCI_INDEX, MT_DOCKER_LIST)
ACCEPT = ", ".join((MT_OCI_INDEX, MT_DOCKER_LIST, MT_OCI_MANIFEST, MT_DOCKER_MANIFEST))
REF_NAME = "org.opencontainers.image.ref.name"
ATTESTATION_KEY = "vnd.docker.reference.type"

MANIFEST_LIMIT = 4 << 20          # the distribution spec's recommended cap
TOKEN_LIMIT = 1 << 20
CHUNK = 1 << 20
TIMEOUT = 60.0                    # seconds without progress on one socket operation
RETRIES = 5                       # failed attempts in a row (no byte received) before giving up
BACKOFF = 0.5                     # first pause; doubles, capped at MAX_BACKOFF
MAX_BACKOFF = 8.0
JOBS = 3                          # blobs downloaded at once (docker pull's default)

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPO_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_HOST_RE = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
                      r"|\[[0-9A-Fa-f:]+\])(?::[0-9]+)?$")


# ---------------------------------------------------------------- references

@dataclass(frozen=True)
class Reference:
    registry: str          # as written, normalized (docker.io for Docker Hub)
    repo: str              # e.g. library/busybox
    tag: str | None
    digest: str | None     # sha256:HEX

    @property
    def api_host(self) -> str:
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def ref(self) -> str:
        """What to ask the manifests endpoint for: the digest when given, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        s = f"{self.registry}/{self.repo}"
        if self.tag:
            s += f":{self.tag}"
        if self.digest:
            s += f"@{self.digest}"
        return s


def parse_reference(text: str) -> Reference:
    """`docker://[REGISTRY/]REPO[:TAG][@sha256:DIGEST]` (the `docker://` is optional here)."""
    name = text[len("docker://"):] if text.startswith("docker://") else text
    bad = f"docker://{name}: not a valid image reference (expected docker://[REGISTRY/]REPO[:TAG|@sha256:DIGEST])"
    digest = None
    if "@" in name:
        name, digest = name.split("@", 1)
        alg, _, hexd = digest.partition(":")
        if alg != "sha256" or not _HEX64.match(hexd):
            raise InputError(f"docker://{text.removeprefix('docker://')}: unsupported digest {digest!r} "
                             "(only sha256:<64 hex digits>)")
    tag = None
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = name.rsplit(":", 1)
        if not _TAG_RE.match(tag):
            raise InputError(bad)
    parts = name.split("/")
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"
                           or parts[0] != parts[0].lower()):
        registry, repo = parts[0], "/".join(parts[1:])
        if not _HOST_RE.match(registry):
            raise InputError(bad)
    else:
        registry, repo = DOCKER_HUB, name
    if registry in ("index.docker.io", "registry-1.docker.io"):
        registry = DOCKER_HUB
    if registry == DOCKER_HUB and "/" not in repo:
        repo = f"library/{repo}"
    if not _REPO_RE.match(repo):
        raise InputError(bad)
    if tag is None and digest is None:
        tag = "latest"
    return Reference(registry, repo, tag, digest)


# ---------------------------------------------------------------- options and credentials

def add_registry_options(p: argparse.ArgumentParser) -> None:
    """The registry options of `carryon pack` and `carryon inspect`."""
    r = p.add_argument_group("registry (docker:// sources)")
    r.add_argument("--creds", metavar="USER[:PASS]",
                   help="credentials (asked for on the terminal when PASS is left out); default: the "
                        "registry's entry in --authfile, $XDG_RUNTIME_DIR/containers/auth.json, "
                        "~/.config/containers/auth.json or ~/.docker/config.json, else anonymous")
    r.add_argument("--authfile", metavar="FILE", help="Docker/containers auth JSON to take credentials from")
    r.add_argument("--tls-verify", metavar="BOOL", nargs="?", const="true", default="true",
                   help="--tls-verify=false: accept any certificate and fall back to plain HTTP "
                        "(a local or self-signed registry)")
    r.add_argument("--no-cache", action="store_true",
                   help="bypass the blob cache ($XDG_CACHE_HOME/carryon/blobs or ~/.cache/carryon/blobs)")


def registry_options(args: argparse.Namespace, quiet: bool) -> RegistryOptions:
    tls = args.tls_verify.lower()
    if tls not in ("true", "false", "1", "0", "yes", "no"):
        raise CarryonError(f"--tls-verify={args.tls_verify}: expected true or false")
    return RegistryOptions(creds=args.creds, authfile=args.authfile, tls_verify=tls in ("true", "1", "yes"),
                           no_cache=args.no_cache, quiet=quiet)


@dataclass
class RegistryOptions:
    creds: str | None = None         # --creds USER[:PASS]
    authfile: str | None = None      # --authfile FILE
    tls_verify: bool = True          # --tls-verify=false: no certificate check, plain HTTP allowed
    no_cache: bool = False           # --no-cache
    quiet: bool = False              # no progress, no notes
    pulled: Pulled | None = None     # set by fetch_layout: what it downloaded
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))


@dataclass
class Credentials:
    user: str
    password: str
    source: str                      # for messages: "--creds", "/root/.docker/config.json"


def default_authfiles(env: dict[str, str]) -> list[str]:
    out = []
    if env.get("XDG_RUNTIME_DIR"):
        out.append(os.path.join(env["XDG_RUNTIME_DIR"], "containers", "auth.json"))
    home = env.get("HOME") or os.path.expanduser("~")
    out.append(os.path.join(env.get("XDG_CONFIG_HOME") or os.path.join(home, ".config"), "containers", "auth.json"))
    out.append(os.path.join(home, ".docker", "config.json"))
    return out


def _auth_key(key: str) -> str:
    """An auths key as a `host[/path]`: scheme and Docker Hub's `/v1/` removed, Hub's names unified."""
    k = re.sub(r"^[a-z]+://", "", key.strip()).rstrip("/")
    if k.endswith("/v1") or k.endswith("/v2"):
        k = k[:-3]
    host, _, rest = k.partition("/")
    if host in ("index.docker.io", "registry-1.docker.io"):
        host = DOCKER_HUB
    return host + (f"/{rest}" if rest else "")


def _from_authfile(path: str, ref: Reference, explicit: bool) -> Credentials | None:
    """The entry of `path` (Docker/containers auth JSON) for `ref`: the longest `host[/repo-prefix]` key."""
    try:
        with open(path, "rb") as f:
            data = f.read(4 << 20)
    except FileNotFoundError:
        if explicit:
            raise InputError(f"--authfile {path}: no such file") from None
        return None
    except OSError as e:
        if explicit:
            raise InputError(f"--authfile {path}: cannot read: {e.strerror}") from None
        return None
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise InputError(f"{path}: not valid JSON (an auth file)") from None
    auths = doc.get("auths") if isinstance(doc, dict) else None
    if not isinstance(auths, dict):
        return None
    want = f"{ref.registry}/{ref.repo}"
    best: tuple[int, object] | None = None
    for key, entry in auths.items():
        k = _auth_key(str(key))
        if (want == k or want.startswith(k + "/")) and (best is None or len(k) > best[0]):
            best = (len(k), entry)
    if best is None or not isinstance(best[1], dict) or not best[1].get("auth"):
        return None
    try:
        user, sep, password = base64.b64decode(str(best[1]["auth"]), validate=True).decode("utf-8").partition(":")
    except (ValueError, UnicodeDecodeError):
        raise InputError(f"{path}: the auth entry for {ref.registry} is not base64 of USER:PASSWORD") from None
    if not sep:
        raise InputError(f"{path}: the auth entry for {ref.registry} is not base64 of USER:PASSWORD")
    return Credentials(user, password, path)


def find_credentials(ref: Reference, opts: RegistryOptions) -> Credentials | None:
    if opts.creds is not None:
        user, sep, password = opts.creds.partition(":")
        if not user:
            raise InputError("--creds: expected USER[:PASSWORD]")
        if not sep:
            if not sys.stdin.isatty():
                raise InputError("--creds USER without a password needs a terminal to ask for it "
                                 "(give USER:PASSWORD or use --authfile)")
            password = getpass.getpass(f"password for {user}@{ref.registry}: ")
        return Credentials(user, password, "--creds")
    if opts.authfile is not None:
        return _from_authfile(opts.authfile, ref, explicit=True)
    for path in default_authfiles(opts.env):
        c = _from_authfile(path, ref, explicit=False)
        if c is not None:
            return c
    return None


# ---------------------------------------------------------------- HTTP client

class _Retry(Exception):
    """A transient failure (5xx, reset, timeout, cut body): try again after a pause."""


class _Cancelled(Exception):
    """Another download failed (or Ctrl-C): this one stops where it is (its partial file is kept)."""


def _parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="...",service="...",scope="..."` -> ("bearer", {...}) (untrusted text)."""
    scheme, _, rest = header.strip().partition(" ")
    params = {m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
              for m in re.finditer(r'([A-Za-z_]+)\s*=\s*(?:"([^"]*)"|([^,\s]*))', rest)}
    return scheme.lower(), params


def _error_codes(body: bytes) -> list[str]:
    try:
        doc = json.loads(body.decode("utf-8", "replace"))
        return [str(e.get("code")) for e in doc.get("errors", []) if isinstance(e, dict)]
    except (ValueError, AttributeError):
        return []


def _backoff(attempt: int) -> float:
    return min(BACKOFF * (2 ** attempt), MAX_BACKOFF)


class Client:
    """One registry, one repository: scheme detection, auth, requests with retries."""

    def __init__(self, ref: Reference, opts: RegistryOptions) -> None:
        self.ref = ref
        self.opts = opts
        self.host = ref.api_host
        self.name = f"docker://{ref}"
        self.base = ""                        # https://HOST or http://HOST once known
        self.creds = find_credentials(ref, opts)
        self.auth_header: str | None = None
        self.auth_scheme = ""                 # the challenge's, once seen
        self.requests = 0
        self.fetched = 0                      # blob bytes received
        self.lock = threading.Lock()          # auth state and counters, shared by the download threads
        self.auth_lock = threading.Lock()
        self.cancel = threading.Event()       # set: every download stops at its next step
        self.active: set[http.client.HTTPResponse] = set()   # blob bodies being read (for abort())
        ctx = ssl.create_default_context()
        if not opts.tls_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        self.opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=ctx))

    # -- low level

    def _tried(self) -> str:
        if self.creds is None:
            return "no credentials (anonymous)"
        return f"user {self.creds.user!r} from {self.creds.source}"

    def _raw(self, url: str, headers: dict[str, str], auth: str | None,
             method: str = "GET") -> http.client.HTTPResponse:
        """One request; HTTP errors come back as responses (never raised), network errors as OSError."""
        req = urllib.request.Request(url, method=method, headers=headers)
        if auth:
            req.add_unredirected_header("Authorization", auth)
        with self.lock:
            self.requests += 1
        try:
            return self.opener.open(req, timeout=TIMEOUT)
        except urllib.error.HTTPError as e:
            return e  # type: ignore[return-value]   # an HTTPError is a response too
        except urllib.error.URLError as e:
            reason = e.reason
            if isinstance(reason, OSError):
                raise reason from None
            raise OSError(str(reason)) from None
        except http.client.HTTPException as e:
            raise ConnectionResetError(f"bad HTTP answer ({e.__class__.__name__})") from None

    def _sleep(self, seconds: float) -> None:
        """A back-off pause that ends early, with _Cancelled, when the downloads are being stopped."""
        if self.cancel.wait(seconds):
            raise _Cancelled()

    def abort(self) -> None:
        """Stop every download now: set `cancel` and shut down the sockets being read (a read blocked
        on a stalled server returns at once; the thread then sees `cancel`)."""
        self.cancel.set()
        with self.lock:
            active = list(self.active)
        for resp in active:
            sock = getattr(getattr(getattr(resp, "fp", None), "raw", None), "_sock", None)
            if isinstance(sock, socket.socket):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _network_error(self, e: OSError, host: str) -> CarryonError:
        if isinstance(e, socket.gaierror):
            return CarryonError(f"{self.name}: unknown registry host {host.rsplit(':', 1)[0]!r} ({e.strerror or e})")
        if isinstance(e, ConnectionRefusedError):
            return CarryonError(f"{self.name}: connection refused by {host}")
        if isinstance(e, ssl.SSLError | ssl.CertificateError):
            hint = "; for a plain-HTTP or self-signed registry use --tls-verify=false" if self.opts.tls_verify else ""
            return CarryonError(f"{self.name}: TLS with {host} failed ({getattr(e, 'reason', None) or e}){hint}")
        if isinstance(e, TimeoutError):
            return CarryonError(f"{self.name}: {host} did not answer (timed out after {TIMEOUT:.0f} s)")
        return CarryonError(f"{self.name}: cannot reach {host}: {e.strerror or e}")

    def _connect(self) -> None:
        """Find the scheme (GET /v2/) and remember the auth challenge. With --tls-verify=false any
        failure of HTTPS moves on to plain HTTP; transient failures are retried on the last scheme."""
        schemes = ["https"] if self.opts.tls_verify else ["https", "http"]
        last: OSError | None = None
        first: OSError | None = None
        for k, scheme in enumerate(schemes):
            final = k == len(schemes) - 1
            for attempt in range(RETRIES):
                try:
                    resp = self._raw(f"{scheme}://{self.host}/v2/", {}, None)
                except (ConnectionResetError, TimeoutError) as e:
                    last = e
                    if not final:
                        break
                    self._sleep(_backoff(attempt))
                    continue
                except OSError as e:
                    last = e
                    break
                with resp:
                    resp.read(64 << 10)
                if resp.status >= 500:
                    last = None
                    self._sleep(_backoff(attempt))
                    continue
                self.base = f"{scheme}://{self.host}"
                if resp.status == 401:
                    self._challenge(resp.headers.get("WWW-Authenticate", ""))
                return
            first = first or last
            if last is not None and isinstance(last, socket.gaierror):
                break  # the name does not resolve for any scheme
        if isinstance(last, ConnectionRefusedError) and first is not None and not isinstance(
                first, ConnectionRefusedError):
            last = first  # https answered something (a TLS error): that says more than http's refusal
        if last is None:
            raise CarryonError(f"{self.name}: the registry keeps failing (HTTP 5xx)")
        raise self._network_error(last, self.host)

    def _challenge(self, header: str) -> None:
        """Answer a WWW-Authenticate challenge: a Bearer token (anonymous or with creds) or Basic."""
        scheme, params = _parse_challenge(header)
        self.auth_scheme = scheme
        if scheme == "basic":
            if self.creds is None:
                raise CarryonError(f"{self.name}: the registry requires credentials (HTTP 401); tried "
                                   f"{self._tried()}; use --creds USER:PASS or --authfile FILE")
            raw = f"{self.creds.user}:{self.creds.password}".encode()
            self.auth_header = "Basic " + base64.b64encode(raw).decode("ascii")
        elif scheme == "bearer":
            self.auth_header = "Bearer " + self._token(params)
        else:
            raise CarryonError(f"{self.name}: unsupported authentication scheme {scheme or '(none)'!r} "
                               f"(HTTP 401)")

    def _token(self, params: dict[str, str]) -> str:
        realm = params.get("realm", "")
        u = urllib.parse.urlsplit(realm)
        if u.scheme not in ("https", "http") or not u.netloc or (u.scheme == "http" and self.opts.tls_verify
                                                                    and not self.base.startswith("http:")):
            raise CarryonError(f"{self.name}: the registry's token endpoint {realm!r} is not an https URL")
        query = [("service", params["service"])] if params.get("service") else []
        query.append(("scope", f"repository:{self.ref.repo}:pull"))
        url = realm + ("&" if u.query else "?") + urllib.parse.urlencode(query)
        auth = None
        if self.creds is not None:
            auth = "Basic " + base64.b64encode(f"{self.creds.user}:{self.creds.password}".encode()).decode("ascii")
        for attempt in range(RETRIES):
            try:
                resp = self._raw(url, {}, auth)
            except (ConnectionResetError, TimeoutError):
                self._sleep(_backoff(attempt))
                continue
            except OSError as e:
                raise self._network_error(e, u.netloc) from None
            with resp:
                body = resp.read(TOKEN_LIMIT + 1)
            if resp.status >= 500:
                self._sleep(_backoff(attempt))
                continue
            if resp.status in (401, 403):
                raise CarryonError(f"{self.name}: the token service {u.netloc} refused access (HTTP {resp.status}); "
                                   f"tried {self._tried()}")
            if resp.status == 429:
                raise self._rate_limited(resp)
            if resp.status != 200 or len(body) > TOKEN_LIMIT:
                raise CarryonError(f"{self.name}: the token service {u.netloc} answered HTTP {resp.status}")
            try:
                doc = json.loads(body.decode("utf-8"))
                token = doc.get("token") or doc.get("access_token")
            except (ValueError, UnicodeDecodeError, AttributeError):
                token = None
            if not isinstance(token, str) or not token or any(c in token for c in "\r\n"):
                raise CarryonError(f"{self.name}: the token service {u.netloc} sent no usable token")
            return token
        raise CarryonError(f"{self.name}: the token service {u.netloc} keeps failing")

    def _rate_limited(self, resp: http.client.HTTPResponse) -> CarryonError:
        after = (resp.headers.get("Retry-After") or "").strip()
        when = f"; it says retry after {after} s" if after.isdigit() else (f"; it says retry after {after}"
                                                                          if after else "")
        return CarryonError(f"{self.name}: the registry's rate limit was reached (HTTP 429){when}")

    def get(self, path: str, headers: dict[str, str], what: str) -> http.client.HTTPResponse:
        """GET BASE+path with auth; returns a 2xx response (caller closes it). 401/403/404/429 -> one-line
        errors; 5xx and resets -> _Retry (the caller's loop decides about pausing)."""
        if not self.base:
            self._connect()
        renewed = False
        while True:
            if self.cancel.is_set():
                raise _Cancelled()
            sent = self.auth_header
            try:
                resp = self._raw(self.base + path, headers, sent)
            except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError, TimeoutError) as e:
                raise _Retry(f"{what}: {e}") from None
            except OSError as e:
                raise self._network_error(e, self.host) from None
            if resp.status == 401 and not renewed:
                # a token for another scope, or an expired one: answer the new challenge once
                hdr = resp.headers.get("WWW-Authenticate", "")
                resp.close()
                if not hdr:
                    raise CarryonError(f"{self.name}: access denied to {what} (HTTP 401); tried {self._tried()}")
                with self.auth_lock:   # one new token for all the threads that met the challenge
                    if self.auth_header == sent:
                        self._challenge(hdr)
                renewed = True
                continue
            if 200 <= resp.status < 300:
                return resp
            body = resp.read(64 << 10)
            resp.close()
            if resp.status in (401, 403):
                raise CarryonError(f"{self.name}: access denied to {what} (HTTP {resp.status}); "
                                   f"tried {self._tried()}")
            if resp.status == 429:
                raise self._rate_limited(resp)
            if resp.status >= 500:
                raise _Retry(f"{what}: HTTP {resp.status}")
            if resp.status == 404:
                if "NAME_UNKNOWN" in _error_codes(body) or (path.startswith(f"/v2/{self.ref.repo}/manifests/")
                                                            and not self._repo_exists()):
                    raise InputError(f"{self.name}: repository {self.ref.repo!r} not found on {self.ref.registry}")
                raise InputError(f"{self.name}: {what} not found")
            raise CarryonError(f"{self.name}: {what}: the registry answered HTTP {resp.status}")

    def _repo_exists(self) -> bool:
        """After a manifest 404 (many registries say MANIFEST_UNKNOWN for an unknown repository too):
        False only when the tags list says NAME_UNKNOWN."""
        try:
            resp = self._raw(f"{self.base}/v2/{self.ref.repo}/tags/list?n=1", {}, self.auth_header)
            with resp:
                body = resp.read(64 << 10)
        except OSError:
            return True
        return not (resp.status == 404 and "NAME_UNKNOWN" in _error_codes(body))

    def get_small(self, path: str, headers: dict[str, str], what: str, limit: int) -> tuple[bytes, str]:
        """The whole body (at most `limit` bytes) and its Content-Type, with retries."""
        for attempt in range(RETRIES):
            try:
                with self.get(path, headers, what) as resp:
                    body = resp.read(limit + 1)
                    ctype = (resp.headers.get("Content-Type") or "").split(";")[0].strip()
                if len(body) > limit:
                    raise InputError(f"{self.name}: {what} is larger than {limit} bytes")
                return body, ctype
            except _Retry:
                self._sleep(_backoff(attempt))
            except (http.client.IncompleteRead, ConnectionResetError, TimeoutError):
                self._sleep(_backoff(attempt))
        raise CarryonError(f"{self.name}: {what}: the registry keeps failing (gave up after {RETRIES} tries)")


# ---------------------------------------------------------------- manifests and platforms

@dataclass
class Descriptor:
    media_type: str
    digest: str
    size: int


def _descriptor(d: object, what: str, name: str) -> Descriptor:
    if not isinstance(d, dict):
        raise InputError(f"{name}: {what}: not a descriptor")
    digest, size = d.get("digest"), d.get("size")
    alg, _, hexd = str(digest).partition(":")
    if alg != "sha256" or not _HEX64.match(hexd):
        raise InputError(f"{name}: {what}: unsupported or malformed digest {digest!r}")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InputError(f"{name}: {what} {digest}: bad size {size!r}")
    return Descriptor(str(d.get("mediaType") or ""), str(digest), size)


def _plat(p: dict) -> str:
    return f"{p.get('os', '?')}/{p.get('architecture', '?')}" + (f"/{p['variant']}" if p.get("variant") else "")


def pick_platform(entries: list, want: str, name: str) -> dict:
    """The index entry for `want` (OS/ARCH[/VARIANT]); attestations and unknown platforms are skipped;
    an entry without a platform is taken when it is the only candidate (the config decides later)."""
    w_os, w_arch, *rest = want.split("/")
    w_var = rest[0] if rest else ""
    cands = []
    for e in entries:
        if not isinstance(e, dict):
            continue
        a = e.get("annotations")
        ann: dict = a if isinstance(a, dict) else {}
        p = e.get("platform") if isinstance(e.get("platform"), dict) else None
        if ann.get(ATTESTATION_KEY) or (p and (p.get("os") == "unknown" or p.get("architecture") == "unknown")):
            continue
        cands.append((e, p))
    if len(cands) == 1 and cands[0][1] is None:
        return cands[0][0]
    best: tuple[int, int] | None = None
    for i, (_e, p) in enumerate(cands):
        if not p or (p.get("os"), p.get("architecture")) != (w_os, w_arch):
            continue
        score = 2 if p.get("variant", "") == w_var else (1 if not w_var else 0)
        if score and (best is None or score > best[0]):
            best = (score, i)
    if best is None:
        found = ", ".join(sorted({_plat(p) for _e, p in cands if p})) or "none"
        raise InputError(f"{name}: no image for platform {want} (available: {found})")
    return cands[best[1]][0]


def _parse_manifest(body: bytes, what: str, name: str) -> dict:
    try:
        doc = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise InputError(f"{name}: {what} is not valid JSON") from None
    if not isinstance(doc, dict):
        raise InputError(f"{name}: {what} is not a manifest")
    return doc


# ---------------------------------------------------------------- blob cache

def cache_dir(env: dict[str, str]) -> tuple[str | None, str | None]:
    """(the blob cache's `.../blobs/sha256` dir, None) or (None, why not). Creates what is missing
    (mode 0700) and checks every level with the cache's trust rule for default locations."""
    xdg = env.get("XDG_CACHE_HOME", "")
    home = env.get("HOME", "")
    if xdg and os.path.isabs(xdg):
        top = os.path.join(xdg, "carryon")
    elif home and home != "/" and os.path.isabs(home):
        top = os.path.join(home, ".cache", "carryon")
    else:
        return None, "neither $XDG_CACHE_HOME nor $HOME is set"
    path = top
    for sub in ("", "blobs", "sha256"):
        path = os.path.join(path, sub) if sub else path
        try:
            os.makedirs(path, mode=0o700, exist_ok=True)
        except OSError as e:
            return None, f"{path}: cannot create ({e.strerror})"
        st, why = rcache.check_candidate(rcache.Candidate(path))
        if st is None:
            return None, f"{path}: {why}"
    return path, None


def _hash_file(f: BinaryIO, h: hashlib._Hash, limit: int) -> int:
    n = 0
    while n < limit and (chunk := f.read(min(CHUNK, limit - n))):
        h.update(chunk)
        n += len(chunk)
    return n


def _cached_ok(path: str, d: Descriptor) -> bool:
    """Is the cache file at `path` the blob `d`? (re-hashed: the cache is a convenience, not trusted)"""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not (st.st_mode & 0o170000 == 0o100000 and st.st_size == d.size and st.st_uid == os.getuid()):
            return False
        h = hashlib.sha256()
        _hash_file(f, h, d.size)
    return "sha256:" + h.hexdigest() == d.digest


# ---------------------------------------------------------------- downloads

ProgressFn = Callable[[int], None]


def _disk_error(e: OSError, where: str, d: Descriptor) -> CarryonError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return CarryonError(f"no space left in {where} while downloading blob {d.digest} ({d.size} bytes)")
    return CarryonError(f"cannot write {where}: {e.strerror or e}")


def download_blob(client: Client, d: Descriptor, dest: str, what: str, progress: ProgressFn,
                  where: str | None = None) -> None:
    """Fetch blob `d` into `dest` (verified, then renamed into place). A leftover `dest.partial` from an
    earlier run is resumed with a Range request; so is a connection cut in this run. `where` names
    dest's place in messages (default: its directory)."""
    where = where or os.path.dirname(dest)
    partial = dest + ".partial"
    try:
        fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # another pack is downloading it: a private file, no resume
            os.close(fd)
            partial = f"{dest}.partial-{os.getpid()}-{os.urandom(4).hex()}"
            fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise _disk_error(e, where, d) from None
    f = os.fdopen(fd, "r+b")
    try:
        _fetch_into(client, d, f, partial, where, what, progress)
        os.replace(partial, dest)
    except BaseException:
        private = os.path.basename(partial).startswith(os.path.basename(dest) + ".partial-")
        empty = os.fstat(f.fileno()).st_size == 0
        if private or empty:   # nothing to resume: no leftover
            _unlink(partial)
        raise
    finally:
        f.close()


def _truncate(fd: int, size: int) -> None:
    os.ftruncate(fd, size)
    os.lseek(fd, size, os.SEEK_SET)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _fetch_into(client: Client, d: Descriptor, f: BinaryIO, partial: str, where: str, what: str,
                progress: ProgressFn) -> None:
    h = hashlib.sha256()
    have = _hash_file(f, h, d.size)            # what an earlier run left
    fd = f.fileno()                            # from here on written unbuffered: a failed write leaves
    _truncate(fd, have)                        # nothing pending in a buffer
    progress(have)
    failures = 0
    restarted = False
    path = f"/v2/{client.ref.repo}/blobs/{d.digest}"
    while True:
        if have < d.size:
            headers = {"Range": f"bytes={have}-"} if have else {}
            got = 0
            resp = None
            try:
                resp = client.get(path, headers, f"{what} {d.digest}")
                with client.lock:
                    client.active.add(resp)
                if client.cancel.is_set():      # abort() ran before the add: it could not stop this one
                    raise _Cancelled()
                with resp:
                    if have and resp.status != 206:      # the range was ignored: start over
                        _truncate(fd, 0)
                        progress(-have)
                        h, have = hashlib.sha256(), 0
                    elif have:
                        m = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range") or "")
                        if not m or int(m.group(1)) != have:
                            raise _Retry("bad Content-Range")
                    while chunk := resp.read1(CHUNK):   # what has come: kept even if a stop follows
                        if have + len(chunk) > d.size:
                            raise InputError(f"{client.name}: {what} {d.digest}: the registry sent more than "
                                             f"the {d.size} bytes its descriptor says")
                        try:
                            _write_all(fd, chunk)
                        except OSError as e:
                            _truncate(fd, 0)
                            raise _disk_error(e, where, d) from None
                        h.update(chunk)
                        have += len(chunk)
                        got += len(chunk)
                        with client.lock:
                            client.fetched += len(chunk)
                        progress(len(chunk))
                        if client.cancel.is_set():   # what came before the stop is kept, to resume
                            raise _Cancelled()
            except (_Retry, http.client.IncompleteRead, ConnectionResetError, ConnectionAbortedError,
                    TimeoutError, OSError) as e:
                if client.cancel.is_set():       # abort() shut the socket down under this read
                    raise _Cancelled() from None
                if not isinstance(e, _Retry | http.client.IncompleteRead | ConnectionResetError
                                  | ConnectionAbortedError | TimeoutError):
                    raise
                failures = 0 if got else failures + 1
                if failures >= RETRIES:
                    raise CarryonError(f"{client.name}: downloading {what} {d.digest} keeps failing "
                                       f"({e}); run again to resume") from None
                client._sleep(_backoff(failures))
                continue
            finally:
                if resp is not None:
                    with client.lock:
                        client.active.discard(resp)
                    resp.close()
            if client.cancel.is_set():
                raise _Cancelled()
            if have < d.size:   # a clean end before the size: a cut connection
                failures = 0 if got else failures + 1
                if failures >= RETRIES:
                    raise CarryonError(f"{client.name}: {what} {d.digest}: the registry sent {have} of "
                                       f"{d.size} bytes; run again to resume")
                client._sleep(_backoff(failures))
                continue
        try:
            os.fsync(fd)
        except OSError as e:
            raise _disk_error(e, where, d) from None
        got_digest = "sha256:" + h.hexdigest()
        if got_digest == d.digest:
            return
        _truncate(fd, 0)
        if have != d.size or restarted:
            raise InputError(f"{client.name}: {what} {d.digest}: digest mismatch (the registry sent "
                             f"content {got_digest})")
        # a resumed download may have started from a bad leftover: fetch it once more from the start
        restarted = True
        progress(-have)
        h, have = hashlib.sha256(), 0


def _download_all(client: Client, todo: list[tuple[str, Descriptor, str, int]], board: Board,
                  where: str | None = None) -> None:
    """Download `todo` ((what, descriptor, dest, board item)), JOBS at a time. The first failure stops
    the others (abort(): their partial files stay for a later resume) and is raised once they are
    done; so is Ctrl-C."""
    def one(what: str, d: Descriptor, dest: str, item: int) -> None:
        if client.cancel.is_set():
            raise _Cancelled()
        board.set_state(item, "downloading")
        try:
            download_blob(client, d, dest, what, lambda k: board.advance(item, k), where)
        except BaseException:
            board.set_state(item, "stopped" if client.cancel.is_set() else "failed")
            raise
        board.set_state(item, "done")

    if not todo:
        return
    with ThreadPoolExecutor(max_workers=min(JOBS, len(todo)), thread_name_prefix="carryon-pull") as pool:
        try:
            futures = [pool.submit(one, *job) for job in todo]
            wait(futures, return_when=FIRST_EXCEPTION)
        except BaseException:           # Ctrl-C: stop them all; leaving the `with` waits for them
            client.abort()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        errors = [e for fut in futures if fut.done() and not fut.cancelled()
                  and (e := fut.exception()) is not None and not isinstance(e, _Cancelled)]
        if errors:
            client.abort()
            pool.shutdown(wait=False, cancel_futures=True)
    if errors:
        raise errors[0]


# ---------------------------------------------------------------- the whole pull

def pulled_note(p: Pulled | None) -> str:
    """For pack's summary line: what the pull downloaded (nothing on a full cache hit)."""
    if p is None:
        return ""
    if not p.fetched_blobs:
        return f"; downloaded nothing (all {p.blobs} blobs from the cache)"
    return f"; downloaded {p.fetched_blobs} of {p.blobs} blobs ({p.downloaded / 1e6:.1f} MB)"


@dataclass
class Pulled:
    layout: str                 # an OCI image layout dir, one manifest in index.json
    description: str            # "registry HOST/REPO:TAG"
    downloaded: int             # bytes of blobs received (0 on a full cache hit)
    requests: int               # HTTP requests made
    fetched_blobs: int          # blobs downloaded (or resumed)
    blobs: int                  # blobs the image needs (config and layers)


def fetch_layout(source: str, platform: str, workdir: str, opts: RegistryOptions, with_layers: bool = True) -> Pulled:
    """Pull `source` (docker://...) for `platform` into `workdir/registry/` (see the module doc);
    without `with_layers` only the manifest and the config (what `carryon inspect` shows)."""
    ref = parse_reference(source)
    client = Client(ref, opts)
    name = client.name
    body, ctype = client.get_small(f"/v2/{ref.repo}/manifests/{ref.ref}", {"Accept": ACCEPT},
                                   f"tag {ref.tag!r}" if not ref.digest else f"manifest {ref.digest}",
                                   MANIFEST_LIMIT)
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    if ref.digest and digest != ref.digest:
        raise InputError(f"{name}: the registry's manifest does not match the digest asked (content is {digest})")
    doc = _parse_manifest(body, "manifest", name)
    mtype = doc.get("mediaType") or ctype
    for _depth in range(4):
        if doc.get("schemaVersion") == 1 or mtype in MT_DOCKER_V1:
            raise InputError(f"{name}: Docker schema 1 manifests are not supported (re-push the image with a "
                             "current tool)")
        if mtype not in INDEX_TYPES and not ("manifests" in doc and "layers" not in doc):
            break
        entries = doc.get("manifests")
        if not isinstance(entries, list) or not entries:
            raise InputError(f"{name}: the image index lists no manifests")
        entry = pick_platform(entries, platform, name)
        d = _descriptor(entry, "index entry", name)
        body, ctype = client.get_small(f"/v2/{ref.repo}/manifests/{d.digest}", {"Accept": ACCEPT},
                                       f"manifest {d.digest}", MANIFEST_LIMIT)
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if digest != d.digest:
            raise InputError(f"{name}: manifest {d.digest}: digest mismatch (the registry sent content {digest})")
        doc = _parse_manifest(body, f"manifest {d.digest}", name)
        mtype = doc.get("mediaType") or d.media_type or ctype
    else:
        raise InputError(f"{name}: image indexes nested too deeply")
    if not isinstance(doc.get("config"), dict) or not isinstance(doc.get("layers"), list):
        raise InputError(f"{name}: manifest {digest} is not an image manifest")
    config = _descriptor(doc["config"], "config", name)
    layers = [_descriptor(ly, f"layer {i}", name) for i, ly in enumerate(doc["layers"])]

    layout = os.path.join(workdir, "registry")
    blobs = os.path.join(layout, "blobs", "sha256")
    os.makedirs(blobs, exist_ok=True)
    cdir, why = (None, "--no-cache") if opts.no_cache else cache_dir(opts.env)
    if cdir is None and not opts.no_cache and not opts.quiet:
        sys.stderr.write(f"carryon pack: note: no blob cache ({why}); downloading into the work directory\n")

    wanted: list[tuple[str, Descriptor]] = []       # each blob once (a layer may repeat)
    for what, d in [("config", config)] + ([(f"layer {i}", ly) for i, ly in enumerate(layers)] if with_layers else []):
        if all(d.digest != x.digest for _w, x in wanted):
            wanted.append((what, d))
    todo: list[tuple[str, Descriptor, str]] = []
    for what, d in wanted:
        hexd = d.digest.split(":", 1)[1]
        link = os.path.join(blobs, hexd)
        if cdir is None:
            todo.append((what, d, link))
            continue
        cached = os.path.join(cdir, hexd)
        if not _cached_ok(cached, d):
            _unlink(cached)
            todo.append((what, d, cached))
        os.symlink(cached, link)
    queued = {d.digest for _w, d, _p in todo}
    items = {d.digest: k for k, (_w, d) in enumerate(wanted)}

    with Board("total", enabled=False if opts.quiet or not todo else None) as board:
        for what, d in wanted:
            board.add(f"{what} {d.digest[7:19]}", d.size, "waiting" if d.digest in queued else "cached")
        _download_all(client, [(what, d, dest, items[d.digest]) for what, d, dest in todo], board,
                      None if cdir else f"{os.path.dirname(os.path.abspath(workdir))} (temporary files)")
    hexm = digest.split(":", 1)[1]
    with open(os.path.join(blobs, hexm), "wb") as fb:
        fb.write(body)
    index = {"schemaVersion": 2, "mediaType": MT_OCI_INDEX,
             "manifests": [{"mediaType": mtype or MT_OCI_MANIFEST, "digest": digest, "size": len(body),
                            "annotations": {REF_NAME: str(ref)}}]}
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump(index, f)
    with open(os.path.join(layout, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion": "1.0.0"}')
    opts.pulled = Pulled(layout, f"registry {ref}", client.fetched, client.requests, len(todo), len(wanted))
    return opts.pulled
