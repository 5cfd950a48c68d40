"""The name a captured image gets in the images directory: a default from the disk, the file it
becomes, and why a typed name is refused. Pure but for the one `exists` check."""

from __future__ import annotations

import re
import time
from pathlib import Path

from bty_live.disk.model import Disk
from bty_live.image.catalog import image_stem
from bty_live.image.manifest import manifest_path_for

#: the captured image's suffix: a packed (multi-frame) zstd image
SUFFIX = ".img.zst"
MAX_NAME = 64
_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_UNSAFE_RUN = re.compile(r"[^A-Za-z0-9._-]+")


def default_image_name(disk: Disk, now: float) -> str:
    """model-serial-YYYY-MM-DD (the disk's name when it reports neither), as a safe file name."""
    ids = [part for part in (disk.model, disk.serial) if part] or [disk.name]
    raw = "-".join(ids + [time.strftime("%Y-%m-%d", time.localtime(now))])
    safe = _UNSAFE_RUN.sub("_", raw).strip("._-")
    return safe[-MAX_NAME:].lstrip("._-") or "capture"


def output_for(images_dir: Path, name: str) -> Path:
    """NAME -> images_dir/NAME.img.zst (a typed suffix such as .img or .img.zst is not doubled)."""
    return images_dir / (image_stem(Path(name.strip())) + SUFFIX)


def name_problem(name: str, images_dir: Path) -> str | None:
    """Why `name` cannot be the captured image's name, or None when it can."""
    name = name.strip()
    if not name:
        return "Type a name for the image."
    if len(name) > MAX_NAME:
        return f"The name is {len(name)} characters long; keep it to {MAX_NAME}."
    if not _SAFE.fullmatch(name):
        return ("Use letters, digits, '.', '_' and '-' only, starting with a letter or digit "
                "(the name becomes a file name).")
    output = output_for(images_dir, name)
    for path in (output, manifest_path_for(output)):
        if path.exists():
            return f"{path.name} already exists in {images_dir}: choose another name."
    return None
