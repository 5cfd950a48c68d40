"""The destroy preview: what writing a disk destroys, one human line per item. Pure."""

from __future__ import annotations

from collections.abc import Sequence

from bty_live.disk.model import Disk
from bty_live.units import format_size


def _contents_line(name: str, size: int, fstype: str | None, label: str | None,
                   used: int | None, mountpoints: Sequence[str]) -> str:
    parts = [name, fstype or "no filesystem"]
    if label:
        parts.append(f"'{label}'")
    detail = format_size(size)
    if used is not None:
        detail += f", {format_size(used)} used"
    if mountpoints:
        detail += ", mounted at " + ", ".join(mountpoints)
    return "  ".join([*parts, detail])


def describe_contents(disk: Disk) -> list[str]:
    """What writing the disk destroys, one human line per item, e.g.
    "loop3p1  ext4  'rootfs'  200 MiB, 48 MiB used". Never claims a disk is blank when its
    contents could not be read."""
    if disk.probe_error:
        return [f"contents unknown: {disk.probe_error}"]
    if disk.pttype:
        count = len(disk.partitions)
        lines = [f"{disk.name}  {disk.pttype} partition table, {count} partition{'s' * (count != 1)}"]
        for p in disk.partitions:
            lines.append(_contents_line(p.name, p.size, p.fstype, p.label, p.used_bytes, p.mountpoints))
        return lines
    if disk.fstype:
        return [_contents_line(disk.name, disk.size, disk.fstype, disk.label, disk.used_bytes,
                               disk.mountpoints)]
    if disk.partitions:  # the kernel knows partitions blkid could not read
        return [_contents_line(p.name, p.size, p.fstype, p.label, p.used_bytes, p.mountpoints)
                for p in disk.partitions]
    return ["no partition table, no filesystem"]
