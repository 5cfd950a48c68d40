"""Which disks may be written, and why not. Pure: no I/O, only the `Disk` dataclasses.

Each rule looks at one disk and returns a human reason naming the thing in the way (the
partition, the mount point, the holder), or None. A disk is eligible when no rule objects.
The I/O these rules need (mounts, holders, swap, open file descriptors) is collected by
`bty_live.disk.discovery`; which disks hold / and the images by `bty_live.disk.boot_medium`, called from
`context_for` and `capture_context`, the helpers here that read anything. The read rules
(`READ_RULES`, for `bty capture`) are at the end.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bty_live.disk.boot_medium import boot_medium_devnums, protect
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


# -- reading a disk (`bty capture`): the same rules, read the other way ----------------------------
#
# A capture writes nothing to the disk, so read-only disks and disks too small for an image are
# fine, and the boot medium is not refused as such: what would make the image inconsistent is
# a filesystem, swap area or holder (dm, md, bcache) that writes to the disk while it is read,
# and each of those is refused by name. The boot medium in use always has one of them (its /
# or its images partition is mounted), so only an idle one can be captured. The one new rule:
# the output file must not live on the disk being read.


def capture_context(output: Path) -> EligibilityContext:
    """What a capture must not read: the disk(s) the output file's directory lives on, and a loop
    device backed by the output file itself."""
    real = Path(os.path.realpath(output))
    try:
        st = real.stat()
        files = frozenset({(st.st_dev, st.st_ino)})
    except OSError:
        files = frozenset()
    entry = Protected(path=str(real), what="the output file", devnums=boot_medium_devnums([real.parent]),
                      files=files)
    return EligibilityContext(protected=(entry,))


def capture_into_context(directory: Path) -> EligibilityContext:
    """What a capture into `directory` must not read, before the file is named (the TUI lists
    the disks that may be captured into its images directory): the disk(s) it lives on."""
    real = Path(os.path.realpath(directory))
    entry = Protected(path=str(real), what="the images directory", devnums=boot_medium_devnums([real]))
    return EligibilityContext(protected=(entry,))


def _holds_output(disk: Disk, ctx: EligibilityContext) -> str | None:
    hits = [entry for entry in ctx.protected if _devnums(disk) & entry.devnums]
    if not hits:
        return None
    return "; ".join(f"holds {entry.what} {entry.path} (its filesystem is on this disk): write the capture "
                     "to another disk" for entry in hits)


def _mounted_while_read(disk: Disk, ctx: EligibilityContext) -> str | None:
    mounts = disk.mounts()
    if not mounts:
        return None
    where = ", ".join(f"{mountpoint} mounted (from {node})" for node, mountpoint in mounts)
    return (f"has {where}; unmount {'it' if len(mounts) == 1 else 'them'} first, "
            "a mounted filesystem changes while it is read")


def _swap_while_read(disk: Disk, ctx: EligibilityContext) -> str | None:
    nodes = disk.swap_nodes()
    if not nodes:
        return None
    return (f"has active swap on {', '.join(nodes)}; swapoff {' '.join(f'/dev/{n}' for n in nodes)} first, "
            "swap changes while it is read")


def _held_while_read(disk: Disk, ctx: EligibilityContext) -> str | None:
    held = _held(disk, ctx)
    if held is None:
        return None
    return (f"{held}; release it first (vgchange -an, dmsetup remove, mdadm --stop), "
            "a holder writes to the disk while it is read")


#: the rules for reading a disk, in the order reasons are reported
READ_RULES: tuple[Rule, ...] = (_holds_output, _backs_protected, _no_medium, _mounted_while_read,
                               _held_while_read, _open_for_writing, _swap_while_read)


def read_reasons(disk: Disk, ctx: EligibilityContext) -> tuple[str, ...]:
    """Why `disk` must not be captured (read into an image); the empty tuple means it may be."""
    return tuple(reason for rule in READ_RULES if (reason := rule(disk, ctx)) is not None)


def require_readable(disk: Disk, ctx: EligibilityContext) -> None:
    """Raise TargetRefusedError naming every reason when `disk` must not be captured."""
    found = read_reasons(disk, ctx)
    if found:
        raise TargetRefusedError(f"refusing to capture {disk.path}: " + "; ".join(found))
