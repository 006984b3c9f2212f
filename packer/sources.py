"""Image sources: OCI layout dir, OCI archive, docker-archive (plain or compressed, or `-` for stdin).

`open_image(source, tag, platform, workdir)` detects the format from the content, picks the image by
tag and platform, verifies the manifest and config blobs, and returns an `Image` whose layers can be
opened as raw blob streams (decompression and diff_id checks are in `packer.layers`).

The platform asked (`platform`, default DEFAULT_PLATFORM, the host's: linux/amd64) is Docker's rule:
the image packed is one for it, or none. An index entry's platform picks among several; the image
config's `os`/`architecture` decide in the end (an entry may name no platform). No image for it ->
InputError naming the platforms the source has.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, BinaryIO

from runtime.archive import SectionReader
from runtime.errors import InputError

if TYPE_CHECKING:
    from packer.registry import RegistryOptions

MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"
DEFAULT_PLATFORM = "linux/amd64"
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20


@dataclass
class LayerRef:
    index: int
    digest: str | None          # expected blob digest ("sha256:..."), None when the format has none
    diff_id: str                # expected sha256 of the uncompressed tar
    size: int                   # blob size in bytes
    media_type: str
    name: str                   # path of the blob inside the source, for messages
    opener: Callable[[], BinaryIO]


@dataclass
class Image:
    source: str                 # description: "<format> <basename>"
    format: str                 # oci-layout | oci-archive | docker-archive | registry
    tag: str | None
    platform: str
    manifest_digest: str | None
    config_digest: str
    config: dict                # the full image config JSON
    layers: list[LayerRef] = field(default_factory=list)


# ---------------------------------------------------------------- blob stores

class Store:
    """Named files of an image source (a directory or an uncompressed tar)."""

    def exists(self, name: str) -> bool:
        raise NotImplementedError

    def size(self, name: str) -> int:
        raise NotImplementedError

    def open(self, name: str) -> BinaryIO:
        raise NotImplementedError

    def read(self, name: str, limit: int = 64 << 20) -> bytes:
        with self.open(name) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise InputError(f"{name}: unexpectedly large ({limit} bytes max)")
        return data


def _norm(name: str) -> str:
    return "/".join(c for c in name.split("/") if c and c != ".")


class DirStore(Store):
    def __init__(self, root: str) -> None:
        self.root = root

    def _path(self, name: str) -> str:
        parts = _norm(name).split("/")
        if ".." in parts:
            raise InputError(f"{name}: path escapes the image directory")
        return os.path.join(self.root, *parts)

    def exists(self, name: str) -> bool:
        return os.path.isfile(self._path(name))

    def size(self, name: str) -> int:
        return os.path.getsize(self._path(name))

    def open(self, name: str) -> BinaryIO:
        try:
            return open(self._path(name), "rb")
        except FileNotFoundError:
            raise InputError(f"{name}: missing from the image") from None
        except OSError as e:
            raise InputError(f"{name}: cannot read: {e.strerror}") from None


class TarStore(Store):
    """Members of an uncompressed tar, read in place (offsets into the tar file)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.members: dict[str, tuple[int, int]] = {}
        self.links: dict[str, str] = {}
        try:
            with tarfile.open(path, mode="r:") as tf:
                for m in tf:
                    n = _norm(m.name)
                    if m.isreg():
                        self.members[n] = (m.offset_data, m.size)
                    elif m.issym():
                        self.links[n] = _norm(os.path.normpath(os.path.join(os.path.dirname(n), m.linkname)))
                    elif m.islnk():
                        self.links[n] = _norm(m.linkname)
        except (tarfile.TarError, EOFError) as e:
            raise InputError(f"{path}: not a readable tar ({e})") from None

    def _resolve(self, name: str) -> str:
        n = _norm(name)
        for _ in range(16):
            if n in self.links:
                n = self.links[n]
            else:
                return n
        raise InputError(f"{name}: too many levels of links in the image tar")

    def exists(self, name: str) -> bool:
        return self._resolve(name) in self.members

    def size(self, name: str) -> int:
        return self.members[self._resolve(name)][1]

    def open(self, name: str) -> BinaryIO:
        n = self._resolve(name)
        if n not in self.members:
            raise InputError(f"{name}: missing from the image")
        off, size = self.members[n]
        import io
        return io.BufferedReader(SectionReader(self.path, off, size), buffer_size=_CHUNK)


# ---------------------------------------------------------------- helpers

def sha256_file(f: BinaryIO) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    while chunk := f.read(_CHUNK):
        h.update(chunk)
        n += len(chunk)
    return "sha256:" + h.hexdigest(), n


def sha256_path(path: str) -> str:
    """Hex sha256 of a file's content (no "sha256:" prefix)."""
    with open(path, "rb") as f:
        return sha256_file(f)[0].split(":", 1)[1]


def _json(data: bytes, what: str) -> object:
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise InputError(f"{what}: not valid JSON") from None


def _blob_name(digest: str) -> str:
    alg, _, hexd = str(digest).partition(":")
    if alg != "sha256" or not _HEX64.match(hexd):
        raise InputError(f"unsupported or malformed digest {digest!r}")
    return f"blobs/sha256/{hexd}"


def _verified_blob(store: Store, digest: str, what: str) -> bytes:
    name = _blob_name(digest)
    if not store.exists(name):
        raise InputError(f"{what} {digest}: blob missing from the image")
    data = store.read(name)
    got = "sha256:" + hashlib.sha256(data).hexdigest()
    if got != digest:
        raise InputError(f"{what} {digest}: digest mismatch (content is {got})")
    return data


def parse_platform(p: str) -> tuple[str, str, str]:
    parts = p.split("/")
    if len(parts) < 2 or not all(parts):
        raise InputError(f"--platform {p!r}: expected OS/ARCH[/VARIANT], e.g. linux/amd64")
    return parts[0], parts[1], parts[2] if len(parts) > 2 else ""


def _platform_str(os_: str, arch: str, variant: str = "") -> str:
    return f"{os_}/{arch}" + (f"/{variant}" if variant else "")


def _ref_matches(ref: str, tag: str) -> bool:
    """Does image reference `ref` (as stored in the source) match the user's `tag`?"""
    if not ref:
        return False
    cands = {ref}
    for prefix in ("docker.io/library/", "docker.io/", "index.docker.io/library/"):
        if ref.startswith(prefix):
            cands.add(ref[len(prefix):])
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        cands.add(last.rsplit(":", 1)[1])          # bare tag, e.g. "latest"
        cands.add(last)                            # name:tag
    return tag in cands or (":" not in tag and f"{tag}:latest" in cands)


# ---------------------------------------------------------------- OCI

def _oci_image(store: Store, fmt: str, desc: str, tag: str | None, platform: str | None,
               layers_needed: bool = True) -> Image:
    if not store.exists("index.json"):
        raise InputError(f"{desc}: no index.json (not an OCI image layout)")
    index = _json(store.read("index.json"), f"{desc}: index.json")
    entries = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(entries, list) or not entries:
        raise InputError(f"{desc}: index.json lists no images")

    def refname(e: dict) -> str:
        a = e.get("annotations") or {}
        return a.get(REF_NAME) or a.get(CONTAINERD_NAME) or ""

    names = sorted({refname(e) for e in entries if refname(e)})
    if tag is not None:
        chosen = [e for e in entries if _ref_matches(refname(e), tag)
                  or _ref_matches((e.get("annotations") or {}).get(CONTAINERD_NAME, ""), tag)]
        if not chosen:
            raise InputError(f"{desc}: no image tagged {tag!r} (available: {', '.join(names) or 'none'})")
    else:
        if len(names) > 1:
            raise InputError(f"{desc}: several images, choose one with --tag or SOURCE:TAG: {', '.join(names)}")
        chosen = entries
    chosen_tag = tag if tag is not None else (names[0] if names else None)
    desc_, mdata, mdigest = _pick_manifest(store, desc, chosen, platform)
    manifest = _json(mdata, f"{desc}: manifest {mdigest}")
    if not isinstance(manifest, dict) or "config" not in manifest or "layers" not in manifest:
        raise InputError(f"{desc}: manifest {mdigest} is not an image manifest")
    cdigest = manifest["config"].get("digest", "")
    config = _json(_verified_blob(store, cdigest, "config"), f"{desc}: config {cdigest}")
    if not isinstance(config, dict):
        raise InputError(f"{desc}: config {cdigest} is not an image config")
    diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
    layers_desc = manifest["layers"] or []
    if len(diff_ids) != len(layers_desc):
        raise InputError(f"{desc}: manifest has {len(layers_desc)} layers but the config lists "
                         f"{len(diff_ids)} diff_ids")
    layers = []
    for i, (ld, diff_id) in enumerate(zip(layers_desc, diff_ids)):
        digest = ld.get("digest", "")
        name = _blob_name(digest)
        if not store.exists(name):
            if layers_needed:
                raise InputError(f"{desc}: layer {i} {digest}: blob missing from the image")
            size = ld.get("size")   # described only (`carryon inspect` of a registry image)
            layers.append(LayerRef(i, digest, diff_id, size if isinstance(size, int) else 0,
                                   ld.get("mediaType", ""), name, partial(store.open, name)))
            continue
        layers.append(LayerRef(i, digest, diff_id, store.size(name), ld.get("mediaType", ""), name,
                               partial(store.open, name)))
    return Image(desc, fmt, chosen_tag, _config_platform(config, desc, platform), mdigest, cdigest, config,
                 layers)


def _config_platform(config: dict, desc: str, platform: str | None) -> str:
    """The platform the image config says (missing fields: linux, amd64), refused (InputError) when
    its OS/ARCH is not the one asked (`platform`, default DEFAULT_PLATFORM): an index may have no
    platforms, or lie, but the config is what the layers were built for."""
    plat = _platform_str(config.get("os") or "linux", config.get("architecture") or "amd64",
                         config.get("variant") or "")
    want = platform or DEFAULT_PLATFORM
    if parse_platform(want)[:2] != parse_platform(plat)[:2]:
        raise InputError(f"{desc}: no image for platform {want} (available: {plat})")
    return plat


def _pick_manifest(store: Store, desc: str, entries: list[dict], platform: str | None,
                   depth: int = 0) -> tuple[dict, bytes, str]:
    """From index entries (possibly nested indexes), choose one image manifest by platform."""
    if depth > 4:
        raise InputError(f"{desc}: image indexes nested too deeply")
    want = parse_platform(platform or DEFAULT_PLATFORM)
    expanded: list[tuple[dict, bytes]] = []
    for e in entries:
        data = _verified_blob(store, e.get("digest", ""), "manifest")
        doc = _json(data, f"{desc}: manifest {e.get('digest')}")
        if e.get("mediaType") in (MT_OCI_INDEX, MT_DOCKER_LIST) or (isinstance(doc, dict) and "manifests" in doc):
            if not isinstance(doc, dict):
                raise InputError(f"{desc}: manifest {e.get('digest')} is not an image index")
            sub = doc.get("manifests") or []
            picked = _pick_manifest(store, desc, sub, platform, depth + 1)
            expanded.append((dict(picked[0], digest=picked[2]), picked[1]))
        else:
            expanded.append((e, data))
    if len(expanded) == 1:
        e, data = expanded[0]
        p = e.get("platform")
        if p and (p.get("os"), p.get("architecture")) != want[:2]:
            found = _platform_str(p.get("os", "?"), p.get("architecture", "?"), p.get("variant", ""))
            raise InputError(f"{desc}: no image for platform {platform or DEFAULT_PLATFORM} (available: {found})")
        return e, data, e["digest"]
    if not any(e.get("platform") for e, _ in expanded):
        raise InputError(f"{desc}: several untagged images without platforms: "
                         f"{', '.join(e.get('digest', '?') for e, _ in expanded)}")

    def score(e: dict) -> int:
        p = e.get("platform") or {}
        if (p.get("os"), p.get("architecture")) != want[:2]:
            return -1
        return 2 if want[2] and p.get("variant") == want[2] else 1
    ranked = [(score(e), i) for i, (e, _) in enumerate(expanded)]
    best = max(ranked)
    if best[0] < 0:
        found = ", ".join(sorted({_platform_str((e.get("platform") or {}).get("os", "?"),
                                                (e.get("platform") or {}).get("architecture", "?"),
                                                (e.get("platform") or {}).get("variant", ""))
                                  for e, _ in expanded}))
        raise InputError(f"{desc}: no image for platform {platform or DEFAULT_PLATFORM} (available: {found})")
    e, data = expanded[best[1]]
    return e, data, e["digest"]


# ---------------------------------------------------------------- docker-archive

def _docker_image(store: Store, desc: str, tag: str | None, platform: str | None) -> Image:
    entries = _json(store.read("manifest.json"), f"{desc}: manifest.json")
    if not isinstance(entries, list) or not entries:
        raise InputError(f"{desc}: manifest.json lists no images")
    tags = sorted({t for e in entries for t in (e.get("RepoTags") or [])})
    if tag is not None:
        chosen = [e for e in entries if any(_ref_matches(t, tag) for t in (e.get("RepoTags") or []))]
        if not chosen:
            raise InputError(f"{desc}: no image tagged {tag!r} (available: {', '.join(tags) or 'none'})")
    else:
        chosen = entries
    if len(chosen) > 1:
        raise InputError(f"{desc}: several images, choose one with --tag or SOURCE:TAG: "
                         f"{', '.join(tags) or str(len(chosen)) + ' untagged images'}")
    e = chosen[0]
    chosen_tag = tag if tag is not None else ((e.get("RepoTags") or [None])[0])
    cname = e.get("Config", "")
    if not store.exists(cname):
        raise InputError(f"{desc}: config {cname}: missing from the image")
    cdata = store.read(cname)
    cdigest = "sha256:" + hashlib.sha256(cdata).hexdigest()
    expect = _digest_from_name(cname)
    if expect and expect != cdigest:
        raise InputError(f"{desc}: config {cname}: digest mismatch (content is {cdigest})")
    config = _json(cdata, f"{desc}: config {cname}")
    if not isinstance(config, dict):
        raise InputError(f"{desc}: config {cname} is not an image config")
    plat = _config_platform(config, desc, platform)
    diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
    names = e.get("Layers") or []
    if len(names) != len(diff_ids):
        raise InputError(f"{desc}: manifest.json has {len(names)} layers but the config lists {len(diff_ids)} diff_ids")
    layers = []
    for i, (name, diff_id) in enumerate(zip(names, diff_ids)):
        if not store.exists(name):
            raise InputError(f"{desc}: layer {i} {name}: missing from the image")
        layers.append(LayerRef(i, _digest_from_name(name), diff_id, store.size(name),
                               "application/vnd.docker.image.rootfs.diff.tar", name,
                               partial(store.open, name)))
    return Image(desc, "docker-archive", chosen_tag, plat, None, cdigest, config, layers)


def _digest_from_name(name: str) -> str | None:
    """`<hex>.tar`, `<hex>.json` or `blobs/sha256/<hex>` carry their content digest."""
    n = _norm(name)
    base = n.rsplit("/", 1)[-1]
    stem = base.split(".", 1)[0]
    if _HEX64.match(stem) and (base == stem or base[len(stem):] in (".tar", ".json")):
        return "sha256:" + stem
    return None


# ---------------------------------------------------------------- detection

def _sniff(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read(512)


def _decompress_to(src: str, dst: str, kind: str) -> None:
    import zstandard

    try:
        with open(src, "rb") as fi, open(dst, "wb") as fo:
            if kind == "gzip":
                with gzip.GzipFile(fileobj=fi) as g:
                    shutil.copyfileobj(g, fo, _CHUNK)
            else:
                zstandard.ZstdDecompressor().copy_stream(fi, fo, read_size=_CHUNK, write_size=_CHUNK)
    except (OSError, EOFError, zstandard.ZstdError) as e:
        raise InputError(f"{src}: corrupt {kind} image archive ({e})") from None


def _is_tar(head: bytes) -> bool:
    return len(head) >= 262 and head[257:262] == b"ustar" or (len(head) == 512 and _tar_checksum_ok(head))


def _tar_checksum_ok(block: bytes) -> bool:
    try:
        chk = int(block[148:156].replace(b"\0", b" ").strip() or b"-1", 8)
    except ValueError:
        return False
    return chk == sum(block[:148]) + 8 * 32 + sum(block[156:])


def split_source_tag(source: str, tag: str | None) -> tuple[str, str | None]:
    """`SOURCE:TAG` (when SOURCE itself does not exist but the part before the last `:` does)."""
    if source == "-" or os.path.exists(source) or ":" not in source:
        return source, tag
    i = len(source)
    while (i := source.rfind(":", 0, i)) > 0:
        base, t = source[:i], source[i + 1:]
        if t and (os.path.exists(base) or base == "-"):
            if tag is not None and tag != t:
                raise InputError(f"conflicting tags: {source!r} and --tag {tag!r}")
            return base, t
    return source, tag


TRANSPORTS = {"oci": "oci-layout", "oci-archive": "oci-archive", "docker-archive": "docker-archive"}


def split_transport(source: str) -> tuple[str | None, str]:
    """skopeo's names: `docker://REF` -> ("docker", REF); `oci:DIR[:REF]`, `oci-archive:FILE[:REF]`,
    `docker-archive:FILE[:REF]` -> (transport, rest); anything else (an existing path first) -> (None, source)."""
    if source.startswith("docker://"):
        return "docker", source[len("docker://"):]
    if source == "-" or os.path.exists(source):
        return None, source
    t, sep, rest = source.partition(":")
    if sep and t in TRANSPORTS and rest:
        return t, rest
    return None, source


def open_image(source: str, tag: str | None = None, platform: str | None = None,
               workdir: str | None = None, registry: RegistryOptions | None = None,
               layers: bool = True) -> Image:
    """Open SOURCE: a path, `-` for a tar on stdin (`workdir` holds any spooled copy), skopeo's
    `oci:`/`oci-archive:`/`docker-archive:` names for the same, or `docker://REF`, pulled from a
    registry (packer.registry, options `registry`) into an OCI layout in `workdir` and read as one;
    without `layers` a registry's layers are not downloaded (their LayerRefs only describe them)."""
    if platform is not None:
        parse_platform(platform)
    transport, rest = split_transport(source)
    if transport == "docker":
        from packer.registry import RegistryOptions as _Opts, fetch_layout

        if tag is not None:
            raise InputError(f"--tag {tag!r}: a docker:// source names its tag itself (docker://REPO:TAG)")
        if workdir is None:
            raise InputError("pulling from a registry needs a work directory")
        pulled = fetch_layout(source, platform or DEFAULT_PLATFORM, workdir, registry or _Opts(), layers)
        return _oci_image(DirStore(pulled.layout), "registry", pulled.description, None, platform, layers)
    if transport is not None:
        path, tag = split_source_tag(rest, tag)
        if not os.path.exists(path):
            raise InputError(f"{source}: {path}: no such file or directory")
        image = open_image(path, tag, platform, workdir)
        want = TRANSPORTS[transport]
        if image.format != want:
            raise InputError(f"{source}: {path} is {image.format}, not {want}")
        return image
    source, tag = split_source_tag(source, tag)
    label = os.path.basename(os.path.normpath(source)) if source != "-" else "(stdin)"
    path = source
    if source == "-":
        if workdir is None:
            raise InputError("reading an image from stdin needs a work directory")
        path = os.path.join(workdir, "stdin.tar")
        with open(path, "wb") as f:
            shutil.copyfileobj(sys.stdin.buffer, f, _CHUNK)
        if os.path.getsize(path) == 0:
            raise InputError("-: empty input on stdin (expected an image tar)")
    if os.path.isdir(path):
        store: Store = DirStore(path)
        if os.path.isfile(os.path.join(path, "index.json")):
            return _oci_image(store, "oci-layout", f"oci-layout {label}", tag, platform)
        if os.path.isfile(os.path.join(path, "manifest.json")):
            return _docker_image(store, f"docker-archive {label}", tag, platform)
        raise InputError(f"{source}: not a container image (no index.json or manifest.json in the directory)")
    if not os.path.exists(path):
        raise InputError(f"{source}: no such file or directory")
    try:
        head = _sniff(path)
    except OSError as e:
        raise InputError(f"{source}: cannot read: {e.strerror}") from None
    compressed = ""
    if head.startswith(GZIP_MAGIC):
        compressed = "gzip"
    elif head.startswith(ZSTD_MAGIC):
        compressed = "zstd"
    if compressed:
        if workdir is None:
            raise InputError(f"{source}: a compressed image archive needs a work directory")
        plain = os.path.join(workdir, "image.tar")
        _decompress_to(path, plain, compressed)
        path = plain
        head = _sniff(path)
    if not _is_tar(head):
        raise InputError(f"{source}: not a container image (expected an OCI layout directory, "
                         "an OCI archive or a docker-archive tar)")
    store = TarStore(path)
    gz = f" ({compressed})" if compressed else ""
    if store.exists("index.json"):
        return _oci_image(store, "oci-archive", f"oci-archive{gz} {label}", tag, platform)
    if store.exists("manifest.json"):
        return _docker_image(store, f"docker-archive{gz} {label}", tag, platform)
    raise InputError(f"{source}: not a container image (a tar without index.json or manifest.json)")
