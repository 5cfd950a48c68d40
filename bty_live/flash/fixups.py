"""Partition-table fix-ups after the image is written, with pyparted (libparted).

An image's GPT describes a disk of the image's size: its backup header sits at the image's
last sector, not the disk's. libparted notices ("not all of the space available appears to be
used") and offers to fix it; answering Fix and committing moves the backup GPT to the end of
the disk and extends the usable area. `--grow` then extends the last partition to the end.
`sgdisk -v` checks the result.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import _ped
import parted

from bty_live.errors import FixupError, ToolError
from bty_live.system.run import run

_FIX = 1  # PED_EXCEPTION_FIX: the option bit libparted offers when it can repair
_parted_lock = threading.Lock()  # libparted's exception handler is process-global
ALIGN_SECTORS_BYTES = 1 << 20


@contextmanager
def _answer_fix(log: list[str]) -> Iterator[None]:
    def handler(kind: int, options: int, message: str) -> int:
        log.append(message.strip())
        if options & _FIX:
            return int(_ped.EXCEPTION_RESOLVE_FIX)
        return int(_ped.EXCEPTION_RESOLVE_IGNORE)

    with _parted_lock:
        _ped.register_exn_handler(handler)
        try:
            yield
        finally:
            _ped.clear_exn_handler()


def fix_partition_table(path: str, *, relocate_backup_gpt: bool, grow_last_partition: bool) -> list[str]:
    """Apply the planned fix-ups to the disk at `path`; returns what was done, in words."""
    if not relocate_backup_gpt and not grow_last_partition:
        return []
    done: list[str] = []
    messages: list[str] = []
    try:
        with _answer_fix(messages):
            device = _fresh_device(path)
            disk = parted.newDisk(device)
            if relocate_backup_gpt and disk.type == "gpt" and any("space" in m for m in messages):
                # libparted offered to use the whole disk and was answered Fix: on commit the
                # backup header and entries are written at the disk's end
                done.append("moved the backup GPT to the end of the disk")
            if grow_last_partition:
                done.extend(_grow_last(disk, device))
            disk.commit()
            device.removeFromCache()
    except (parted.PartedException, _ped.DiskException, _ped.IOException, _ped.PartitionException) as exc:
        raise FixupError(f"fixing the partition table of {path} failed ({exc}); the image was written and "
                         "verified, but the table may not cover the whole disk") from exc
    return done


def _fresh_device(path: str) -> parted.Device:
    """libparted caches devices by path, size included: a re-used node (a new loop device, a
    swapped card) would be seen at its old size. Drop the cached entry and probe again."""
    parted.getDevice(path).removeFromCache()
    return parted.getDevice(path)


def _grow_last(disk: parted.Disk, device: parted.Device) -> list[str]:
    partitions = [p for p in disk.partitions if p.type in (parted.PARTITION_NORMAL, parted.PARTITION_LOGICAL)]
    if not partitions:
        return []
    last = max(partitions, key=lambda p: p.geometry.end)
    sector = device.sectorSize
    align = max(1, ALIGN_SECTORS_BYTES // sector)
    widest = disk.calculateMaxPartitionGeometry(last, parted.Constraint(device=device))
    end = (widest.end + 1) // align * align - 1  # end on a 1 MiB boundary: no alignment warnings
    if end <= last.geometry.end:
        return []
    old = last.geometry.length * sector
    geometry = parted.Geometry(device=device, start=last.geometry.start, end=end)
    constraint = parted.Constraint(exactGeom=geometry)
    disk.setPartitionGeometry(partition=last, constraint=constraint, start=geometry.start, end=geometry.end)
    new = last.geometry.length * sector
    return [f"grew partition {last.number} from {old // (1 << 20)} MiB to {new // (1 << 20)} MiB "
            "(its filesystem is not resized)"]


def check_partition_table(path: str) -> str:
    """After the fix-ups: `sgdisk -v` must find no problems in a GPT. Returns its verdict line."""
    try:
        out = run(["sgdisk", "-v", path], check=False).stdout
    except ToolError as exc:
        raise FixupError(f"cannot check the partition table of {path}: {exc}") from exc
    if "No problems found" in out:
        return "sgdisk -v: no problems found"
    problems = [line.strip() for line in out.splitlines() if line.strip().startswith(("Problem", "Identified"))]
    raise FixupError(f"the partition table of {path} has problems after the fix-ups: "
                     f"{' '.join(problems) or out.strip()[:200]}; run `sgdisk -v {path}` for details")
