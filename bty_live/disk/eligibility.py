"""Which disks may be written, and why not. Pure: no I/O, only the `Disk` dataclasses.

Each rule looks at one disk and returns a human reason naming the thing in the way (the
partition, the mount point, the holder), or None. A disk is eligible when no rule objects.
The I/O these rules need (mounts, holders, swap, open file descriptors) is collected by
`bty_live.disk.discovery`; which disks hold / and the images by `bty_live.disk.boot_medium`, called from
`context_for`, the one helper here that reads anything.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bty_live.disk.boot_medium import protect
from bty_live.disk.model import Devnum, Disk, Protected
from bty_live.errors import TargetRefusedError
from bty_live.units import format_sizes


@dataclass(frozen=True)
class EligibilityContext:
    """What the rules need to know beyond the disk itself.

    boot_devnums: whole disks holding the running system's / or the images directory
        (from `bty_live.disk.boot_medium.boot_medium_devnums`).
    image_size: bytes the target must hold, or None when no image is chosen yet.
    protected: "/", the images directory and the image, each with its disks and files
        (from `context_for`); lets the rules name which one a disk holds, and refuse a loop
        device whose backing file (nested loops resolved) is in the images directory.
    """

    boot_devnums: frozenset[Devnum] = frozenset()
    image_size: int | None = None
    protected: tuple[Protected, ...] = ()


def protected_paths(image: Path | None = None, images_dir: Path | None = None) -> tuple[Path, ...]:
    """The running system, the image file and the images directory (when it is one): their disks
    are off limits, and so is a loop device backed by the image or by a file in the directory."""
    paths = [Path("/")]
    if image is not None:
        paths.append(image.resolve())
    if images_dir is not None and images_dir.is_dir():
        paths.append(images_dir.resolve())
    return tuple(paths)


def context_for(paths: Sequence[Path | str], image_size: int | None = None) -> EligibilityContext:
    """The context for protected paths ("/" is the running system; any other directory is an
    images directory, a file is the image): what each holds, read now."""
    entries = []
    for path in map(Path, paths):
        if str(path) == "/":
            entries.append(protect(path, "the running system"))
        else:
            entries.append(protect(path, "the images directory" if path.is_dir() else "the image"))
    boot: frozenset[Devnum] = frozenset().union(*(entry.devnums for entry in entries))
    return EligibilityContext(boot_devnums=boot, image_size=image_size, protected=tuple(entries))


def eligibility_context(image: Path | None = None, images_dir: Path | None = None,
                        image_size: int | None = None) -> EligibilityContext:
    """The one way every front-end judges disks: `bty flash` and its dry run, the engine's check
    right before the first write (from the plan's `protected_paths`), the TUI's disk list, the
    agent's inventory and `bty disks` all protect the same paths by the same rules."""
    return context_for(protected_paths(image, images_dir), image_size)


Rule = Callable[[Disk, EligibilityContext], str | None]


def _devnums(disk: Disk) -> set[Devnum]:
    return {disk.devnum} | {p.devnum for p in disk.partitions}


def _boot_medium(disk: Disk, ctx: EligibilityContext) -> str | None:
    devnums = _devnums(disk)
    hits = [entry for entry in ctx.protected if devnums & entry.devnums]
    if hits and not any(entry.is_system for entry in hits):
        return "boot medium: holds " + ", ".join(f"{entry.what} {entry.path}" for entry in hits)
    if devnums & ctx.boot_devnums:
        return "boot medium: holds the running system or the images directory"
    return None


def _backs_protected(disk: Disk, ctx: EligibilityContext) -> str | None:
    """A loop device whose backing file (or, nested, a backing file below it) is in the images
    directory, or is the image: writing it overwrites that file. A loop over a block device node
    that holds a protected path is boot medium like that device."""
    for depth, backing in enumerate(disk.backing_chain):
        for entry in ctx.protected:
            if backing.device is not None and backing.device in entry.devnums:
                return f"boot medium: holds {entry.what} {entry.path} (through its backing device {backing.path})"
            if not entry.contains(backing):
                continue
            where = "is in it" if entry.is_dir else "is it"
            if depth == 0:
                return f"holds {entry.what} {entry.path} (its backing file {backing.path} {where})"
            return (f"holds {entry.what} {entry.path} (through {backing.loop}: its backing file "
                    f"{backing.path} {where})")
    return None


def _open_for_writing(disk: Disk, ctx: EligibilityContext) -> str | None:
    if not disk.writers:
        return None
    return "open for writing by " + ", ".join(
        f"PID {w.pid} ({w.command})" + ("" if w.node == disk.name else f" on {w.node}") for w in disk.writers
    ) + ": close it first"


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
    disk_size, image_size = format_sizes(disk.size, ctx.image_size)  # exact bytes when they round alike
    return f"too small: {disk_size} < image {image_size}"


#: in the order reasons are reported
RULES: tuple[Rule, ...] = (_boot_medium, _backs_protected, _no_medium, _read_only, _mounted, _held,
                          _open_for_writing, _swap, _too_small)


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


def refusal(disk: Disk, found: Sequence[str]) -> TargetRefusedError:
    """The one refusal message: the disk and every reason it must not be written."""
    return TargetRefusedError(f"refusing to write {disk.path}: " + "; ".join(found))


def require_eligible(disk: Disk, ctx: EligibilityContext) -> None:
    """Raise TargetRefusedError naming every reason when `disk` must not be written."""
    found = reasons(disk, ctx)
    if found:
        raise refusal(disk, found)
