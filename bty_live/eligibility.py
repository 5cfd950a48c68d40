"""Which disks may be written, and why not. Pure: no I/O, only the `Disk` dataclasses.

Each rule looks at one disk and returns a human reason naming the thing in the way (the
partition, the mount point, the holder), or None. A disk is eligible when no rule objects.
The I/O these rules need (mounts, holders, swap, which disks hold / and the images) is
collected by `bty_live.disks`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from bty_live.disks import Devnum, Disk
from bty_live.errors import TargetRefusedError
from bty_live.units import format_size


@dataclass(frozen=True)
class EligibilityContext:
    """What the rules need to know beyond the disk itself.

    boot_devnums: whole disks holding the running system's / or the images directory
        (from `bty_live.disks.boot_medium_devnums`).
    image_size: bytes the target must hold, or None when no image is chosen yet.
    """

    boot_devnums: frozenset[Devnum] = frozenset()
    image_size: int | None = None


Rule = Callable[[Disk, EligibilityContext], str | None]


def _boot_medium(disk: Disk, ctx: EligibilityContext) -> str | None:
    devnums = {disk.devnum} | {p.devnum for p in disk.partitions}
    if devnums & ctx.boot_devnums:
        return "boot medium: holds the running system or the images directory"
    return None


def _no_medium(disk: Disk, ctx: EligibilityContext) -> str | None:
    return "empty: no medium (size 0)" if disk.size == 0 else None


def _read_only(disk: Disk, ctx: EligibilityContext) -> str | None:
    return "read-only" if disk.read_only else None


def _mounted(disk: Disk, ctx: EligibilityContext) -> str | None:
    mounts = disk.mounts()
    if not mounts:
        return None
    return "mounted: " + ", ".join(f"{node} at {mountpoint}" for node, mountpoint in mounts)


def _swap(disk: Disk, ctx: EligibilityContext) -> str | None:
    nodes = disk.swap_nodes()
    return "active swap: " + ", ".join(nodes) if nodes else None


def _holder_kind(holder: str) -> str:
    if holder.startswith("dm-"):
        return "device-mapper/LVM"
    if holder.startswith("md"):
        return "md RAID"
    if holder.startswith("bcache"):
        return "bcache"
    return "another block device"


def _held(disk: Disk, ctx: EligibilityContext) -> str | None:
    pairs = disk.holder_pairs()
    if not pairs:
        return None
    return "in use by " + ", ".join(
        f"{holder} ({_holder_kind(holder)})" + ("" if node == disk.name else f" on {node}")
        for node, holder in pairs
    )


def _too_small(disk: Disk, ctx: EligibilityContext) -> str | None:
    if ctx.image_size is None or disk.size == 0 or disk.size >= ctx.image_size:
        return None
    return f"too small: {format_size(disk.size)} < image {format_size(ctx.image_size)}"


#: in the order reasons are reported
RULES: tuple[Rule, ...] = (_boot_medium, _no_medium, _read_only, _mounted, _held, _swap, _too_small)


def reasons(disk: Disk, ctx: EligibilityContext) -> tuple[str, ...]:
    """Why `disk` must not be written; the empty tuple means it is eligible."""
    return tuple(reason for rule in RULES if (reason := rule(disk, ctx)) is not None)


@dataclass(frozen=True)
class Assessed:
    """A disk with the reasons it is not eligible (none when it is)."""

    disk: Disk
    reasons: tuple[str, ...]

    @property
    def eligible(self) -> bool:
        return not self.reasons


def assess(disk: Disk, ctx: EligibilityContext) -> Assessed:
    return Assessed(disk, reasons(disk, ctx))


def assess_all(disks: Iterable[Disk], ctx: EligibilityContext) -> list[Assessed]:
    """Every disk with its verdict, in the given order."""
    return [assess(disk, ctx) for disk in disks]


def require_eligible(disk: Disk, ctx: EligibilityContext) -> None:
    """Raise TargetRefusedError naming every reason when `disk` must not be written."""
    found = reasons(disk, ctx)
    if found:
        raise TargetRefusedError(f"refusing to write {disk.path}: " + "; ".join(found))
