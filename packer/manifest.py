"""The archive manifest (JSON, keys sorted, no timestamps) built from the image and the squashed rootfs."""

from __future__ import annotations

from dataclasses import dataclass

from packer.rootfs import RootfsStats
from packer.sources import Image
from runtime import __version__

CONFIG_KEYS = ("Entrypoint", "Cmd", "Env", "WorkingDir", "User", "ExposedPorts", "Volumes", "StopSignal", "Labels")
_DEFAULTS: dict[str, object] = {"Entrypoint": None, "Cmd": None, "Env": [], "WorkingDir": "", "User": "",
                               "ExposedPorts": {}, "Volumes": {}, "StopSignal": "", "Labels": {}}


@dataclass
class LayerResult:
    digest: str          # sha256 of the blob as read
    diff_id: str
    size: int
    media_type: str
    compression: str     # detected: gzip | zstd | none


def image_config(config: dict) -> dict:
    """The run-relevant part of an image config, with empty defaults for absent keys."""
    c = config.get("config") or {}
    out = {}
    for k in CONFIG_KEYS:
        v = c.get(k)
        out[k] = v if v is not None else _DEFAULTS[k]
    return out


def build_manifest(image: Image, layers: list[LayerResult], stats: RootfsStats, level: int) -> dict:
    return {
        "format": 1,
        "tool": {"name": "carryon", "version": __version__},
        "image": {
            "source": image.source,
            "format": image.format,
            "manifest_digest": image.manifest_digest,
            "config_digest": image.config_digest,
            "layers": [{"digest": ly.digest, "diff_id": ly.diff_id, "size": ly.size, "media_type": ly.media_type,
                        "compression": ly.compression} for ly in layers],
            "platform": image.platform,
            "tag": image.tag,
        },
        "config": image_config(image.config),
        "rootfs": {
            "compression": "zstd",
            "level": level,
            "format": "tar",
            "files": stats.files,
            "dirs": stats.dirs,
            "symlinks": stats.symlinks,
            "hardlinks": stats.hardlinks,
            "other": stats.other,
            "total_entries": stats.total_entries,
            "uncompressed_bytes": stats.uncompressed_bytes,
            "tar_bytes": stats.tar_bytes,
            "sha256": stats.sha256,
        },
    }
