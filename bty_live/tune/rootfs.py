"""Find the flashed system's root filesystem on the target disk and mount it privately.

Partitions are used through the kernel's own partition devices (/dev/sdb2, /dev/loop3p2), not
through `mount -o offset=` on the whole disk:

* a grown filesystem must be resized on the partition the kernel knows (resize2fs, xfs_growfs),
  and a partition grown by `bty.grow_rootfs` must be re-read (`partx -u`) into that device;
* scripts get a device path they can name (`[bty.target] root_partition`);
* an offset mount makes a hidden loop device of its own, with a size limit to get right and a
  detach to remember.

The engine re-reads the table after its fix-ups (BLKRRPART), which gives real disks their
partition devices. A loop device without partscan (the tests' targets) refuses BLKRRPART, and one
reused from an earlier run may still carry that run's partitions; `partx -u` adds the missing ones
and corrects stale ones through BLKPG on both, after which each partition's start and size in
sysfs must equal the table's.
"""

from __future__ import annotations

import mmap
import os
import platform
import stat
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from bty_live.errors import ToolError, TuneError
from bty_live.image.fsprobe import FsInfo, blkid_probe
from bty_live.image.partition_table import parse_partition_table
from bty_live.image.partitions import ROOT_TYPES, USR_TYPES, PartitionTable
from bty_live.system import sysfs
from bty_live.system.run import run

HEAD_BYTES = 1 << 20
#: filesystems a Linux root may have that bty mounts and tunes
LINUX_FSTYPES = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs"})
_MOUNT_OPTIONS = {"xfs": "nouuid"}  # a clone's xfs may share its UUID with a mounted one
_ROOT_NAMES = frozenset({"root", "rootfs"})


@dataclass(frozen=True)
class PartitionInfo:
    number: int
    start: int  # bytes
    size: int  # bytes
    type_id: str
    type_name: str
    name: str  # GPT partition name
    device: str  # the kernel's partition device
    fs: FsInfo


@dataclass(frozen=True)
class DiskLayout:
    disk: str  # as given
    device: str  # /dev/<kernel name>
    size: int
    sector_size: int
    table: PartitionTable | None
    partitions: tuple[PartitionInfo, ...]
    #: the filesystem on the whole disk, for an image without a partition table
    whole_disk_fs: FsInfo | None = None

    def partition(self, number: int) -> PartitionInfo | None:
        return next((p for p in self.partitions if p.number == number), None)


@dataclass(frozen=True)
class RootChoice:
    number: int  # 0: the whole disk
    device: str
    fstype: str
    found_by: str  # "hint", "type", "label", "only Linux filesystem", "whole disk"
    usr_device: str | None = None  # a Discoverable Partitions /usr partition to mount at /usr
    usr_fstype: str | None = None


@dataclass(frozen=True)
class NoRoot:
    """No Linux root to tune; `note` says what the disk holds instead."""

    note: str


# -- reading the disk ------------------------------------------------------------------------------


def _kernel_name(disk: str) -> str:
    return os.path.basename(os.path.realpath(disk))


def read_head(device: str, length: int) -> bytes:
    """The first `length` bytes with O_DIRECT: the page cache may predate the write."""
    fd = os.open(device, os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
    try:
        buf = mmap.mmap(-1, length + (-length) % 4096)
        try:
            got = os.preadv(fd, [memoryview(buf)], 0)
            return bytes(buf[: min(got, length)])
        finally:
            buf.close()
    finally:
        os.close(fd)


def kernel_partitions(disk: str) -> dict[int, tuple[str, int, int]]:
    """number -> (device, start, size) in bytes, as the kernel has them (sysfs)."""
    found: dict[int, tuple[str, int, int]] = {}
    for child in sysfs.partition_dirs(sysfs.block_dir_of_node(disk)):
        number = sysfs.read_int(child / "partition")
        start, size = sysfs.read_int(child / "start"), sysfs.read_int(child / "size")
        if number is None or start is None or size is None:
            continue
        found[number] = (f"/dev/{child.name}", start * sysfs.SECTOR, size * sysfs.SECTOR)
    return found


def sync_kernel_partitions(disk: str, table: PartitionTable) -> dict[int, str]:
    """Make the kernel's partitions match `table` (partx -u); number -> partition device."""
    wanted = {p.number: (p.start, p.size) for p in table.partitions if p.size > 0 and not p.is_container}
    have = kernel_partitions(disk)
    if any(have.get(n, ("", -1, -1))[1:] != geometry for n, geometry in wanted.items()):
        try:
            run(["partx", "-u", disk])
        except ToolError as exc:
            raise TuneError(f"cannot make the kernel see the partitions of {disk} ({exc}); is a partition "
                            "of it in use?") from exc
        have = kernel_partitions(disk)
    devices = {}
    for number, geometry in wanted.items():
        device, start, size = have.get(number, ("", -1, -1))
        if (start, size) != geometry:
            raise TuneError(f"the kernel's partition {number} of {disk} does not match the partition table "
                            f"(kernel: start {start}, size {size}; table: start {geometry[0]}, size "
                            f"{geometry[1]}); re-plug the disk or reboot, then tune again")
        if not os.path.exists(device):
            raise TuneError(f"partition {number} of {disk} has no device node {device} (is /dev a devtmpfs?)")
        devices[number] = device
    return devices


def read_layout(disk: str) -> DiskLayout:
    """The disk's partition table, its partition devices and what filesystem each holds."""
    try:
        st = os.stat(disk)
    except OSError as exc:
        raise TuneError(f"target {disk} cannot be opened for tuning ({exc.strerror}); did it vanish?") from exc
    if not stat.S_ISBLK(st.st_mode):
        raise TuneError(f"target {disk} is not a block device; tuning needs the flashed disk")
    name = _kernel_name(disk)
    sysdir = sysfs.block_dir_of_node(disk)
    size = sysfs.size_bytes(sysdir)
    sector_size = sysfs.read_int(sysdir / "queue" / "logical_block_size") or 512
    try:
        head = read_head(disk, min(HEAD_BYTES, size) if size else HEAD_BYTES)
    except OSError as exc:
        raise TuneError(f"cannot read the partition table of {disk} ({exc.strerror})") from exc
    table = parse_partition_table(head, size or None, sector_size)
    if table is None:
        return DiskLayout(disk, f"/dev/{name}", size, sector_size, None, (), blkid_probe(Path(disk)))
    devices = sync_kernel_partitions(disk, table)
    partitions = tuple(
        PartitionInfo(p.number, p.start, p.size, p.type_id, p.type_name, p.name, devices[p.number],
                      blkid_probe(Path(devices[p.number])))
        for p in table.partitions if p.number in devices
    )
    return DiskLayout(disk, f"/dev/{name}", size, sector_size, table, partitions)


# -- choosing the root ---------------------------------------------------------------------------


def _describe(fs: FsInfo) -> str:
    if fs.ambivalent:
        return "several filesystem signatures"
    return fs.fstype or "no filesystem"


def _usable(part: PartitionInfo, found_by: str) -> RootChoice | NoRoot:
    fs = part.fs
    if fs.fstype in LINUX_FSTYPES:
        return RootChoice(part.number, part.device, fs.fstype, found_by)
    if fs.usage == "crypto":
        return NoRoot(f"the root partition {part.number} is encrypted ({fs.fstype}): bty cannot open it")
    return NoRoot(f"the root partition {part.number} (found by {found_by}) holds {_describe(fs)}, not a Linux "
                  "filesystem bty can mount (ext2/3/4, xfs, btrfs)")


def _by_hint(layout: DiskLayout, hint: str) -> PartitionInfo:
    wanted = hint.strip()
    if wanted.isdigit():
        part = layout.partition(int(wanted))
        if part is None:
            raise TuneError(f"the manifest's root hint {hint!r} names partition {wanted}, which {layout.disk} "
                            "does not have; fix [tune] root in the manifest")
        return part
    matches = [p for p in layout.partitions
               if wanted.lower() in {p.name.lower(), (p.fs.label or "").lower()}]
    if len(matches) != 1:
        what = "no partition" if not matches else f"{len(matches)} partitions"
        raise TuneError(f"the manifest's root hint {hint!r} matches {what} of {layout.disk} by partition name or "
                        "filesystem label; fix [tune] root in the manifest (a number, name or label)")
    return matches[0]


def choose_root(layout: DiskLayout, hint: str | None = None, arch: str | None = None) -> RootChoice | NoRoot:
    """The root filesystem: by the manifest's hint, else Discoverable Partitions type (this
    machine's architecture first), else partition name or filesystem label (root, rootfs), else
    the only Linux filesystem on the disk; an unpartitioned disk may itself hold it."""
    choice = _choose(layout, hint, arch or platform.machine())
    if isinstance(choice, NoRoot) or layout.table is None:
        return choice
    root = layout.partition(choice.number)
    root_arch = ROOT_TYPES.get(root.type_id) if root else None
    for part in layout.partitions:
        if part.type_id in USR_TYPES and (root_arch is None or USR_TYPES[part.type_id] == root_arch) \
                and part.fs.fstype in LINUX_FSTYPES:
            return RootChoice(choice.number, choice.device, choice.fstype, choice.found_by, part.device,
                              part.fs.fstype)
    return choice


def _choose(layout: DiskLayout, hint: str | None, arch: str) -> RootChoice | NoRoot:
    if layout.table is None:
        fs = layout.whole_disk_fs
        if fs is not None and fs.fstype in LINUX_FSTYPES:
            return RootChoice(0, layout.disk, fs.fstype, "whole disk")
        return NoRoot(f"{layout.disk} has no partition table and holds {_describe(fs or FsInfo(None))}: "
                      "no Linux root filesystem")
    if hint:
        return _usable(_by_hint(layout, hint), "hint")
    roots = [p for p in layout.partitions if p.type_id in ROOT_TYPES]
    if roots:
        roots.sort(key=lambda p: ROOT_TYPES[p.type_id] != arch)
        return _usable(roots[0], "type")
    named = [p for p in layout.partitions
             if {p.name.strip().lower(), (p.fs.label or "").strip().lower()} & _ROOT_NAMES]
    if named:
        return _usable(named[0], "label")
    linux = [p for p in layout.partitions if p.fs.fstype in LINUX_FSTYPES]
    if len(linux) == 1:
        return RootChoice(linux[0].number, linux[0].device, linux[0].fs.fstype or "", "only Linux filesystem")
    held = "; ".join(f"partition {p.number} ({p.type_name}): {_describe(p.fs)}"
                     for p in layout.partitions) or "no partitions"
    if linux:
        return NoRoot(f"{len(linux)} partitions hold Linux filesystems and none is marked as root (by type, "
                      f"name or label; {held}); name it with [tune] root in the manifest")
    return NoRoot(f"no Linux root filesystem on {layout.disk} ({held})")


# -- mounting --------------------------------------------------------------------------------------


def mounted_devices() -> dict[str, str]:
    """device (major:minor) -> mount point, from /proc/self/mountinfo."""
    found: dict[str, str] = {}
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        fields = line.split()
        if len(fields) > 4:
            found.setdefault(fields[2], fields[4])
    return found


def _devnum(device: str) -> str:
    rdev = os.stat(device).st_rdev
    return f"{os.major(rdev)}:{os.minor(rdev)}"


def _unmount(path: Path, problems: list[str]) -> None:
    os.sync()
    for argv in (["umount", str(path)], ["umount", "--lazy", str(path)]):
        try:
            run(argv)
        except ToolError as exc:
            problems.append(f"{' '.join(argv)}: {exc}")
            continue
        return


@dataclass
class MountedTarget:
    root: Path
    mounts: list[Path]
    #: what went wrong while unmounting (filled in when the context ends)
    unmount_problems: list[str]


@contextmanager
def mounted_target(choice: RootChoice, api_mounts: bool = True) -> Iterator[MountedTarget]:
    """Mount the root (and /usr) on a private temp dir, plus /proc, /sys and /dev for chroot steps.

    Everything mounted here is unmounted in reverse order when the context ends, whatever
    happened; an unmount that fails is retried lazily and reported in `unmount_problems`.
    """
    in_use = mounted_devices()
    for device in filter(None, (choice.device, choice.usr_device)):
        where = in_use.get(_devnum(device))
        if where is not None:
            raise TuneError(f"{device} is already mounted at {where}: not tuning a filesystem in use; unmount it")
    problems: list[str] = []
    workdir = Path(tempfile.mkdtemp(prefix="bty-tune-"))
    root = workdir / "root"
    root.mkdir(mode=0o755)
    target = MountedTarget(root, [], problems)

    def remove(directory: Path) -> None:
        try:
            directory.rmdir()
        except OSError as exc:
            problems.append(f"{directory} cannot be removed ({exc.strerror})")

    with ExitStack() as stack:
        stack.callback(remove, workdir)
        stack.callback(remove, root)

        def mount(argv: list[str], where: Path, what: str) -> None:
            try:
                run([*argv, str(where)])
            except ToolError as exc:
                raise TuneError(f"cannot mount {what} at {where} ({exc})") from exc
            target.mounts.append(where)
            stack.callback(_unmount, where, problems)

        mount(_mount_argv(choice.device, choice.fstype), root, f"the target's root filesystem {choice.device}")
        if choice.usr_device and choice.usr_fstype:
            usr = root / "usr"
            if usr.is_dir():
                mount(_mount_argv(choice.usr_device, choice.usr_fstype), usr, f"the target's /usr {choice.usr_device}")
        if api_mounts:
            for fstype, source, name in (("proc", "proc", "proc"), ("sysfs", "sysfs", "sys")):
                directory = root / name
                if directory.is_dir() and not directory.is_symlink():
                    mount(["mount", "-t", fstype, "-o", "nosuid,nodev,noexec", source], directory, f"/{name}")
            dev = root / "dev"
            if dev.is_dir() and not dev.is_symlink():
                mount(["mount", "--bind", "/dev"], dev, "/dev")
        yield target


def _mount_argv(device: str, fstype: str) -> list[str]:
    options = ",".join(filter(None, ("rw", _MOUNT_OPTIONS.get(fstype))))
    return ["mount", "-t", fstype, "-o", options, device]


def describe_partitions(layout: DiskLayout) -> list[Mapping[str, object]]:
    """The partitions as the CIJOE config lists them (`[[bty.target.partitions]]`)."""
    return [
        {
            "number": p.number,
            "device": p.device,
            "start": p.start,
            "size": p.size,
            "type": p.type_id,
            "type_name": p.type_name,
            "name": p.name,
            "fstype": p.fs.fstype or "",
            "label": p.fs.label or "",
            "uuid": p.fs.uuid or "",
        }
        for p in layout.partitions
    ]
