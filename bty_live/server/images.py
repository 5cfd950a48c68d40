"""Which images the server offers: the same catalog as `bty images`, restricted to verifiable ones.

A machine flashed from the network has nobody watching, so the server only hands out images with
a manifest (`bty images add`): the plan then carries the decompressed size and blake3 the agent
must see, and the disk is verified against them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from bty_live.errors import ImageError
from bty_live.image.catalog import CatalogEntry, find_image, is_image_file, list_images
from bty_live.image.formats import VIRTUAL_DISKS, Compression
from bty_live.image.manifest import load_manifest
from bty_live.protocol.wire import ImageRef

IMAGES_ROUTE = "/images"


@dataclass(frozen=True)
class ServedImage:
    name: str
    file_name: str
    file_size: int
    size: int
    blake3: str
    tune_task: str | None

    def ref(self) -> ImageRef:
        return ImageRef(name=self.name, file_name=self.file_name, url=image_url(self.file_name),
                        file_size=self.file_size, size=self.size, blake3=self.blake3)

    def to_dict(self) -> dict[str, Any]:
        return {**self.ref().to_dict(), "tune_task": self.tune_task}


def image_url(file_name: str) -> str:
    return f"{IMAGES_ROUTE}/{quote(file_name)}"


def served(entry: CatalogEntry) -> ServedImage:
    """The entry as the server offers it, or ImageError saying why it cannot be offered."""
    if entry.problem:
        raise ImageError(f"image {entry.path.name} cannot be served: {entry.problem}")
    if entry.compression == Compression.ZIP:
        raise ImageError(f"image {entry.path.name} is a zip archive, which a machine cannot stream (its directory "
                         "is at its end); unzip it (or recompress it with zstd) on the server and `bty images add` it")
    if entry.compression in VIRTUAL_DISKS:
        raise ImageError(f"image {entry.path.name} is a {entry.compression} virtual disk, which a machine cannot "
                         f"stream; convert it on the server (qemu-img convert -O raw IN OUT.img; zstd OUT.img) "
                         "and `bty images add` it")
    if entry.manifest is None:
        raise ImageError(f"image {entry.path.name} has no manifest, so a machine could not verify it; "
                         f"run `bty images add {entry.path}` on the server")
    return ServedImage(name=entry.name, file_name=entry.path.name, file_size=entry.file_size,
                       size=entry.manifest.size, blake3=entry.manifest.blake3, tune_task=entry.manifest.tune.task)


def find_served(spec: str, images_dir: Path) -> ServedImage:
    """An image of `images_dir` by name, file name or blake3 prefix (as `bty flash` finds them)."""
    if "/" in spec:
        raise ImageError(f"image {spec!r}: give a name from the server's images directory, not a path")
    return served(find_image(spec, images_dir))


def list_served(images_dir: Path) -> list[dict[str, Any]]:
    """Every image of the directory: offered ones with their ref, the others with the reason."""
    found: list[dict[str, Any]] = []
    for entry in list_images(images_dir):
        try:
            found.append({**served(entry).to_dict(), "problem": None})
        except ImageError as exc:
            found.append({"name": entry.name, "file_name": entry.path.name, "problem": str(exc)})
    return found


def image_file(images_dir: Path, file_name: str) -> Path | None:
    """The file to send for GET /images/FILE: only image files directly in the directory, with a
    valid manifest (what the server offers), and never through a symlink that leads out of it.
    The answer is the resolved path, so what is sent is what was checked."""
    if not file_name or "/" in file_name or "\\" in file_name or file_name.startswith(".") or "\0" in file_name:
        return None
    path = images_dir / file_name
    try:
        real = path.resolve(strict=True)
        inside = real.parent == images_dir.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not inside or not is_image_file(path) or not real.is_file():
        return None
    try:
        if load_manifest(path) is None:
            return None
    except ImageError:
        return None
    return real
