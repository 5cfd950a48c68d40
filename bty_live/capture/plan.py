"""What to capture, decided from what `prepare.py` gathered. Pure: no I/O.

- The length: the whole disk, or with --trim the end of the last partition (for GPT plus the
  backup GPT after it, which `image.gpt_resize` regenerates), rounded up to a whole MiB and
  never beyond the disk.
- The space rule. How much the image will take is unknown until it is written (zero ranges and
  compressible data shrink to almost nothing, random data does not), so two bounds are used:
  the worst case is the length itself plus zstd's own bound (data that does not compress); a
  capture with less free space than that goes on with a warning, because it removes its partial
  file if the space runs out. The estimate is what the disk's filesystems say they use (ext2/3/4
  from their superblocks, mounted ones from statvfs; filesystems that do not say are counted as
  empty): with less free space than that the capture is refused unless --force, since it only
  fits if the data compresses.
- The manifest the image gets: what `bty images add` writes (name, size, blake3, sha256, os,
  arch, description) plus a `[captured]` table saying where it came from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bty_live.disk.model import Disk
from bty_live.errors import TargetIOError, UsageError
from bty_live.image.block_index import BlockIndex
from bty_live.image.fsprobe import FsInfo
from bty_live.image.gpt_resize import Patch, backup_gpt_bytes, resize_gpt
from bty_live.image.manifest import Manifest
from bty_live.image.pack import DEFAULT_LEVEL, FRAME_SIZE
from bty_live.image.partitions import PartitionTable
from bty_live.units import format_size

#: a trimmed image ends on a whole MiB (4 KiB-aligned for O_DIRECT and 4Kn disks, like most images)
TRIM_ALIGN = 1 << 20
#: zstd levels `--level` accepts
LEVELS = range(1, 23)
#: what the refusal for too little free space tells `bty capture`'s user to do
SPACE_FIX = "free space or write elsewhere (--force tries anyway: the data may compress enough)"


@dataclass(frozen=True)
class CaptureOptions:
    trim: bool = False
    level: int = DEFAULT_LEVEL
    force: bool = False  # replace an existing output; capture despite the space estimate
    name: str | None = None
    description: str | None = None
    os: str | None = None
    arch: str | None = None
    receipt: Path | None = None  # where to save the receipt (default: the receipts directory)
    receipts_dir: Path | None = None
    space_fix: str = SPACE_FIX  # the fix the too-little-space refusal names (a front-end's own words)


@dataclass(frozen=True)
class Space:
    """Free space for the output and the two bounds of what the image needs."""

    free: int
    worst_case: int  # the length plus zstd's bound for data that does not compress
    in_use: int | None  # bytes the disk's filesystems say they hold; None when none says


@dataclass(frozen=True)
class CapturePlan:
    disk: Disk
    disk_size: int
    output: Path
    options: CaptureOptions
    length: int  # bytes of the disk that become the image
    #: the disk's first MiB when planned: compared again once the disk is held, so the patches
    #: and the manifest's table describe what is read
    head: bytes
    table: PartitionTable | None
    filesystems: Mapping[int, FsInfo]
    patches: tuple[Patch, ...]  # bytes laid over what is read (--trim's regenerated GPT)
    name: str
    os: str
    arch: str
    space: Space
    notes: tuple[str, ...] = field(default=())

    @property
    def partial(self) -> Path:
        """Where the image is written until it is complete."""
        return self.output.with_name(self.output.name + ".partial")

    @property
    def trimmed(self) -> bool:
        return self.length < self.disk_size

    def describe(self) -> list[str]:
        disk = self.disk
        ids = ", ".join(x for x in (disk.model, f"serial {disk.serial}" if disk.serial else None) if x)
        lines = [f"capture {disk.path} ({ids or 'no model or serial'}, {format_size(self.disk_size)}) into "
                 f"{self.output}"]
        if self.trimmed:
            lines.append(f"  --trim: the first {format_size(self.length)}, up to the end of the last partition"
                         + (" and the regenerated backup GPT" if self.patches else ""))
        if self.table is not None:
            lines.append(f"  partition table: {self.table.scheme}, {len(self.table.partitions)} partitions")
        lines.append(f"  image: {self.name}" + (f", os {self.os}" if self.os else "")
                     + (f", arch {self.arch}" if self.arch else "") + f"; zstd level {self.options.level}, "
                     f"{format_size(FRAME_SIZE)} frames")
        space = self.space
        lines.append(f"  free for the output: {format_size(space.free)} (worst case {format_size(space.worst_case)}"
                     + (f"; the filesystems hold {format_size(space.in_use)}" if space.in_use is not None else "")
                     + ")")
        lines += [f"  note: {note}" for note in self.notes]
        return lines


def trim_length(table: PartitionTable | None, head: bytes, disk: Disk, disk_size: int
                ) -> tuple[int, tuple[Patch, ...]]:
    """The length --trim captures and the patches that keep a GPT valid at that length."""
    if table is None:
        raise UsageError(f"--trim needs a partition table to know where the data ends, and {disk.path} has "
                         "none; capture the whole disk without --trim")
    if table.problems:
        raise UsageError(f"the partition table of {disk.path} is damaged ({'; '.join(table.problems)}); "
                         "--trim would carry that into the image: repair it (sgdisk -v, fdisk) or capture "
                         "without --trim")
    if not table.partitions:
        raise UsageError(f"the partition table of {disk.path} lists no partitions, so --trim would keep "
                         "nothing; capture without --trim")
    end = table.end_of_partitions
    if end > disk_size:
        raise UsageError(f"partitions of {disk.path} end at {format_size(end)}, beyond the disk's "
                         f"{format_size(disk_size)}; capture without --trim")
    if table.scheme == "gpt":
        end += backup_gpt_bytes(table)
    length = min(disk_size, -(-end // TRIM_ALIGN) * TRIM_ALIGN)
    if table.scheme != "gpt" or length == disk_size:
        return length, ()
    return length, resize_gpt(head, table, length)


def worst_case_bytes(length: int) -> int:
    """zstd's bound for data that does not compress (ZSTD_COMPRESSBOUND), summed over the frames,
    with room for each frame's header and checksum."""
    frames = max(1, -(-length // FRAME_SIZE))
    return length + (length >> 8) + frames * 1024


def space_verdict(space: Space, force: bool, fix: str = SPACE_FIX) -> str | None:
    """A warning when the image may not fit; raises TargetIOError (naming `fix`) when it most
    likely will not."""
    if space.free >= space.worst_case:
        return None
    if space.in_use is not None and space.free < space.in_use and not force:
        raise TargetIOError(
            f"only {format_size(space.free)} free for the output, less than the {format_size(space.in_use)} the "
            f"disk's filesystems hold; {fix}"
        )
    return (f"{format_size(space.free)} free for the output, less than the worst case "
            f"{format_size(space.worst_case)}: it fits only if the disk compresses (if the space runs out, "
            "the partial image is removed)")


def make_capture_plan(
    *,
    disk: Disk,
    disk_size: int,
    output: Path,
    options: CaptureOptions,
    head: bytes,
    table: PartitionTable | None,
    filesystems: Mapping[int, FsInfo],
    guessed_os: str,
    name: str,
    free: int,
    notes: tuple[str, ...] = (),
) -> CapturePlan:
    if options.level not in LEVELS:
        raise UsageError(f"--level {options.level} is not a zstd level; use {LEVELS.start}..{LEVELS.stop - 1} "
                         f"(default {DEFAULT_LEVEL})")
    length, patches = trim_length(table, head, disk, disk_size) if options.trim else (disk_size, ())
    in_use = _in_use(disk)
    space = Space(free=free, worst_case=worst_case_bytes(length),
                  in_use=min(in_use, length) if in_use is not None else None)
    warning = space_verdict(space, options.force, options.space_fix)
    more = [warning] if warning else []
    if options.trim and length == disk_size:
        more.append("--trim: the partitions reach the end of the disk; the whole disk is captured")
    return CapturePlan(
        disk=disk, disk_size=disk_size, output=output, options=options, length=length, head=head, table=table,
        filesystems=dict(filesystems), patches=patches, name=options.name or name,
        os=options.os or guessed_os, arch=options.arch or (table.arch_hint if table else None) or "",
        space=space, notes=notes + tuple(more),
    )


def _in_use(disk: Disk) -> int | None:
    known = [n for n in (disk.used_bytes, *(p.used_bytes for p in disk.partitions)) if n is not None]
    return sum(known) if known else None


def capture_manifest(plan: CapturePlan, *, blake3: str, sha256: str, captured_at: str,
                     index: BlockIndex | None = None) -> Manifest:
    """The image's manifest: as `bty images add` writes it, plus where the image came from."""
    disk = plan.disk
    ids = ", ".join(x for x in (disk.model, f"serial {disk.serial}" if disk.serial else None) if x)
    description = plan.options.description or (
        f"captured from {disk.path}" + (f" ({ids})" if ids else "") + f" on {captured_at[:10]}")
    captured: dict[str, Any] = {"disk": disk.path, "disk_size": plan.disk_size, "trimmed": plan.trimmed,
                                "at": captured_at}
    for key, value in (("model", disk.model), ("serial", disk.serial), ("wwn", disk.wwn)):
        if value:
            captured[key] = value
    if plan.table is not None:
        captured["partition_table"] = plan.table.scheme
        captured["partitions"] = [_partition_summary(p.number, plan) for p in plan.table.partitions]
    return Manifest(name=plan.name, size=plan.length, blake3=blake3, sha256=sha256, description=description,
                    os=plan.os, arch=plan.arch, index=index, extra={"captured": captured})


def _partition_summary(number: int, plan: CapturePlan) -> dict[str, Any]:
    assert plan.table is not None
    part = plan.table.partition(number)
    assert part is not None
    summary: dict[str, Any] = {"number": part.number, "start": part.start, "size": part.size,
                               "type": part.type_name}
    fs = plan.filesystems.get(number)
    for key, value in (("name", part.name), ("fstype", fs.fstype if fs else None), ("label", fs.label if fs else None)):
        if value:
            summary[key] = value
    return summary
