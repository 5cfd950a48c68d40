"""The TOML manifest beside each image: what the image is and the digest it must have.

`demo.img.zst` is described by `demo.img.zst.toml`:

    name = "demo"
    description = "Debian 12 demo system"
    os = "debian-12"
    arch = "x86_64"
    size = 268435456            # bytes of the decompressed image
    blake3 = "9f2c...64 hex"    # of the decompressed image: what lands on the disk
    sha256 = "..."              # optional, of the file as shipped
    [index]                     # optional: a blake3 per 2 MiB block (bty_live.image.block_index)
    block_size = 2097152
    blocks = ["...", "zero", ...]
    [tune]                      # optional, used by post-flash tuning
    task = "demo.task.yaml"
    config = "demo.config.toml"
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import tomli_w

from bty_live.errors import ImageError
from bty_live.image.block_index import BlockIndex, parse_index

MANIFEST_SUFFIX = ".toml"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class TuneSpec:
    task: str | None = None  # CIJOE task file, relative to the images directory
    config: str | None = None  # CIJOE config file, relative to the images directory
    #: which partition holds the root filesystem, when the partition types do not say: a
    #: partition number, a GPT partition name or a filesystem label
    root: str | None = None


@dataclass(frozen=True)
class Manifest:
    name: str
    size: int
    blake3: str
    description: str = ""
    os: str = ""
    arch: str = ""
    sha256: str | None = None
    tune: TuneSpec = field(default_factory=TuneSpec)
    #: a blake3 per block of the decompressed image, for differential flashes (None: older manifests)
    index: BlockIndex | None = None
    #: keys this version does not know, kept so a rewrite does not drop them
    extra: dict[str, Any] = field(default_factory=dict)

    def with_digests(self, size: int, blake3: str, sha256: str | None,
                     index: BlockIndex | None = None) -> Manifest:
        return replace(self, size=size, blake3=blake3, sha256=sha256, index=index)

    def to_toml(self) -> str:
        data: dict[str, Any] = {"name": self.name}
        if self.description:
            data["description"] = self.description
        if self.os:
            data["os"] = self.os
        if self.arch:
            data["arch"] = self.arch
        data["size"] = self.size
        data["blake3"] = self.blake3
        if self.sha256:
            data["sha256"] = self.sha256
        data.update(self.extra)
        tune = {k: v for k, v in (("task", self.tune.task), ("config", self.tune.config),
                                  ("root", self.tune.root)) if v}
        if tune:
            data["tune"] = tune
        if self.index is not None:  # last: a long list, after what people read
            data["index"] = self.index.to_toml()
        return tomli_w.dumps(data)


def manifest_path_for(image: Path) -> Path:
    return image.with_name(image.name + MANIFEST_SUFFIX)


def parse_manifest(text: str, source: str) -> Manifest:
    """Validate a manifest's TOML; errors name the file, the key and the fix."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ImageError(f"manifest {source} is not valid TOML ({exc}); fix it or rerun `bty images add`") from exc

    def bad(key: str, why: str) -> ImageError:
        return ImageError(f"manifest {source}: {key} {why}; fix it or rerun `bty images add`")

    for key in ("name", "size", "blake3"):
        if key not in data:
            raise bad(key, "is missing")
    name, size, digest = data.pop("name"), data.pop("size"), data.pop("blake3")
    if not isinstance(name, str) or not name.strip():
        raise bad("name", "must be a non-empty string")
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise bad("size", "must be a positive number of bytes")
    if not isinstance(digest, str) or not _HEX64.match(digest.lower()):
        raise bad("blake3", "must be 64 hexadecimal characters")
    sha256 = data.pop("sha256", None)
    if sha256 is not None and (not isinstance(sha256, str) or not _HEX64.match(sha256.lower())):
        raise bad("sha256", "must be 64 hexadecimal characters")
    strings = {}
    for key in ("description", "os", "arch"):
        value = data.pop(key, "")
        if not isinstance(value, str):
            raise bad(key, "must be a string")
        strings[key] = value
    tune_data = data.pop("tune", {})
    if not isinstance(tune_data, dict):
        raise bad("tune", "must be a table ([tune] with task = ... and config = ...)")
    root = tune_data.get("root")
    if root is not None and (isinstance(root, bool) or not isinstance(root, (int, str))):
        raise bad("tune.root", "must be a partition number, a partition name or a filesystem label")
    tune = TuneSpec(task=tune_data.get("task"), config=tune_data.get("config"),
                    root=str(root) if root is not None else None)
    index = None
    if "index" in data:
        try:
            index = parse_index(data.pop("index"))
        except ValueError as exc:
            raise bad("index", str(exc)) from exc
    return Manifest(
        name=name.strip(),
        size=size,
        blake3=digest.lower(),
        sha256=sha256.lower() if sha256 else None,
        tune=tune,
        index=index,
        extra=data,
        **strings,
    )


def load_manifest(image: Path) -> Manifest | None:
    """The manifest beside `image`, or None when there is none. A broken one raises ImageError."""
    path = manifest_path_for(image)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ImageError(f"manifest {path.name} cannot be read ({exc}); re-copy it") from exc
    return parse_manifest(text, path.name)


def write_manifest(image: Path, manifest: Manifest) -> Path:
    """Write atomically (temp file + rename) so a power cut never leaves half a manifest."""
    path = manifest_path_for(image)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(manifest.to_toml())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path
