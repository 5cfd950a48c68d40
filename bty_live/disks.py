"""Disk discovery: which block devices exist, what is on them, and what is using them.

pyudev enumerates the block devices. Everything the udev database would add (serials, WWNs,
by-id links) may be missing -- the appliance can run without udevd -- so each attribute is read
from sysfs, /proc and `blkid -p` (which probes the device itself, not the udev database).
Nothing here decides whether a disk may be written: that is `bty_live.eligibility`.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import pyudev

from bty_live.errors import SelectorError, TargetVanishedError
from bty_live.run import run
from bty_live.units import format_size

#: (major, minor) of a block device node
Devnum = tuple[int, int]

SYS_DEV_BLOCK = Path("/sys/dev/block")
SYS_CLASS_BLOCK = Path("/sys/class/block")
DEV_DISK = Path("/dev/disk")
MOUNTINFO = Path("/proc/self/mountinfo")
PROC_SWAPS = Path("/proc/swaps")
PROC = Path("/proc")

#: sysfs sizes are always counted in 512-byte sectors, whatever the device's sector size
_SYSFS_SECTOR = 512
_VIRTUAL_NAME = re.compile(r"^(?:zram\d+|ram\d+|dm-\d+|md\d+|md_\w+)$")
_EXT_FAMILY = frozenset({"ext2", "ext3", "ext4"})


@dataclass(frozen=True, kw_only=True)
class Partition:
    """One partition of a disk. Sizes and offsets are in bytes."""

    name: str
    path: str
    devnum: Devnum
    number: int
    start: int
    size: int
    fstype: str | None = None
    label: str | None = None
    uuid: str | None = None
    partlabel: str | None = None
    mountpoints: tuple[str, ...] = ()
    holders: tuple[str, ...] = ()
    swap: bool = False
    used_bytes: int | None = None


@dataclass(frozen=True)
class DiskIdentity:
    """What must not change between planning a flash and its first write.

    `diskseq` is the kernel's per-disk sequence number: it changes when a different medium or
    backing file appears under the same device name, which catches swaps that serial-less sticks
    and loop devices would otherwise hide.
    """

    path: str
    devnum: Devnum
    size: int
    serial: str | None
    wwn: str | None
    model: str | None
    loop_backing_file: str | None
    diskseq: int | None = None

    def differences(self, other: DiskIdentity) -> tuple[str, ...]:
        """Human lines naming each field that differs, e.g. "size: 2 GiB -> 1 GiB"."""
        changes = []
        for f in fields(self):
            before, after = getattr(self, f.name), getattr(other, f.name)
            if before != after:
                if f.name == "size":
                    before, after = format_size(before), format_size(after)
                changes.append(f"{f.name}: {before} -> {after}")
        return tuple(changes)


@dataclass(frozen=True)
class BackingFile:
    """A loop device's backing file, with the file's (st_dev, st_ino) when it could be stat'ed."""

    loop: str
    path: str
    inode: tuple[int, int] | None = None
    #: the whole disk, when the backing "file" is a block device node (a loop over /dev/sdb1)
    device: Devnum | None = None


@dataclass(frozen=True)
class Opener:
    """A process holding a disk or one of its partitions open for writing (as `fuser` sees it)."""

    pid: int
    command: str
    node: str


@dataclass(frozen=True, kw_only=True)
class Disk:
    """A whole disk as discovered. Sizes are in bytes.

    `mountpoints`, `holders` and `swap` describe the whole-disk node itself; each partition has
    its own. `mounts()`, `holder_pairs()` and `swap_nodes()` combine the disk and its partitions.
    `fstype`/`label`/`uuid`/`used_bytes` are set for a "superfloppy" (a filesystem on the whole disk).
    """

    name: str
    path: str
    devnum: Devnum
    size: int
    transport: str
    logical_sector_size: int = 512
    physical_sector_size: int = 512
    vendor: str | None = None
    model: str | None = None
    serial: str | None = None
    wwn: str | None = None
    by_id: tuple[str, ...] = ()
    by_path: tuple[str, ...] = ()
    removable: bool = False
    rotational: bool = False
    read_only: bool = False
    pttype: str | None = None
    partitions: tuple[Partition, ...] = ()
    mountpoints: tuple[str, ...] = ()
    holders: tuple[str, ...] = ()
    swap: bool = False
    loop_backing_file: str | None = None
    fstype: str | None = None
    label: str | None = None
    uuid: str | None = None
    used_bytes: int | None = None
    diskseq: int | None = None
    #: every loop backing file that writing this disk writes into, nested loops resolved
    #: (a loop whose backing file lives on a filesystem on another loop, ...), outermost first
    backing_chain: tuple[BackingFile, ...] = ()
    #: other processes holding the disk or a partition open for writing (read-only openers,
    #: such as blkid, are left out)
    writers: tuple[Opener, ...] = ()
    #: why the contents (partition table, filesystems) could not be probed, if they could not
    probe_error: str | None = None

    def identity(self) -> DiskIdentity:
        return DiskIdentity(
            path=self.path,
            devnum=self.devnum,
            size=self.size,
            serial=self.serial,
            wwn=self.wwn,
            model=self.model,
            loop_backing_file=self.loop_backing_file,
            diskseq=self.diskseq,
        )

    def mounts(self) -> tuple[tuple[str, str], ...]:
        """(node name, mount point) for the disk and every partition."""
        pairs = [(self.name, mp) for mp in self.mountpoints]
        pairs += [(p.name, mp) for p in self.partitions for mp in p.mountpoints]
        return tuple(pairs)

    def holder_pairs(self) -> tuple[tuple[str, str], ...]:
        """(node name, holder name) for the disk and every partition."""
        pairs = [(self.name, h) for h in self.holders]
        pairs += [(p.name, h) for p in self.partitions for h in p.holders]
        return tuple(pairs)

    def swap_nodes(self) -> tuple[str, ...]:
        """Names of the disk or partitions that are active swap."""
        nodes = [self.name] if self.swap else []
        return tuple(nodes + [p.name for p in self.partitions if p.swap])


# --------------------------------------------------------------------------- small sysfs readers


def _read(path: Path) -> str | None:
    """A sysfs/proc attribute, stripped; None when absent, unreadable or empty."""
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return None
    return text or None


def _read_int(path: Path) -> int | None:
    text = _read(path)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _read_flag(path: Path) -> bool:
    return _read(path) == "1"


def _parse_devnum(text: str | None) -> Devnum | None:
    if not text or ":" not in text:
        return None
    major, _, minor = text.partition(":")
    return int(major), int(minor)


def _devnum_of(st_dev: int) -> Devnum:
    return os.major(st_dev), os.minor(st_dev)


def _listdir(path: Path) -> tuple[str, ...]:
    try:
        return tuple(sorted(os.listdir(path)))
    except OSError:
        return ()


def _natural_key(name: str) -> list[str | int]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _unescape_octal(text: str) -> str:
    r"""Undo the kernel's \040-style escaping in /proc/self/mountinfo and /proc/swaps."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


# --------------------------------------------------------------------------- system-wide state


@dataclass(frozen=True)
class _MountEntry:
    devnum: Devnum
    mountpoint: str
    fstype: str
    source: str
    superopts: str


def _read_mountinfo() -> list[_MountEntry]:
    entries = []
    for line in (_read(MOUNTINFO) or "").splitlines():
        head, sep, tail = line.partition(" - ")
        left, right = head.split(), tail.split()
        devnum = _parse_devnum(left[2]) if len(left) > 4 else None
        if not sep or devnum is None or len(right) < 2:
            continue
        entries.append(_MountEntry(
            devnum=devnum,
            mountpoint=_unescape_octal(left[4]),
            fstype=right[0],
            source=_unescape_octal(right[1]),
            superopts=right[2] if len(right) > 2 else "",
        ))
    return entries


def _block_devnum(path: str) -> Devnum | None:
    """The devnum of a block device node (following links), or None for anything else."""
    if not path.startswith("/"):
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return _devnum_of(st.st_rdev) if stat.S_ISBLK(st.st_mode) else None


def _mounts_by_devnum(entries: Iterable[_MountEntry]) -> dict[Devnum, tuple[str, ...]]:
    """Mount points per devnum. Also matched through the mount source, because btrfs (and other
    multi-device filesystems) report an anonymous 0:N devnum in mountinfo."""
    found: dict[Devnum, list[str]] = {}
    for entry in entries:
        source = _block_devnum(entry.source)
        for key in {entry.devnum} if source is None else {entry.devnum, source}:
            points = found.setdefault(key, [])
            if entry.mountpoint not in points:
                points.append(entry.mountpoint)
    return {key: tuple(points) for key, points in found.items()}


def _swap_devnums() -> frozenset[Devnum]:
    """Devnums of block devices in active swap. Swap files are left out: their filesystem is
    mounted, which the mount rule already catches."""
    found = set()
    for line in (_read(PROC_SWAPS) or "").splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 2 and parts[1] == "partition":
            devnum = _block_devnum(_unescape_octal(parts[0]))
            if devnum is not None:
                found.add(devnum)
    return frozenset(found)


def _disk_links() -> dict[tuple[str, str], tuple[str, ...]]:
    """(category, resolved node) -> links, for every symlink in /dev/disk/by-*/."""
    found: dict[tuple[str, str], list[str]] = {}
    for directory in sorted(DEV_DISK.glob("by-*")):
        for link in sorted(directory.glob("*")):
            if link.is_symlink():
                key = (directory.name, os.path.realpath(link))
                found.setdefault(key, []).append(str(link))
    return {key: tuple(links) for key, links in found.items()}


_O_ACCMODE = 0o3


def _fd_writes(fdinfo: Path) -> bool:
    """Whether the fd described by /proc/PID/fdinfo/FD was opened for writing (O_WRONLY or O_RDWR)."""
    for line in (_read(fdinfo) or "").splitlines():
        key, _, value = line.partition(":")
        if key == "flags":
            try:
                return int(value.strip(), 8) & _O_ACCMODE != os.O_RDONLY
            except ValueError:
                return True  # unreadable flags: assume the worst
    return True


def _block_writers() -> dict[Devnum, tuple[tuple[int, str], ...]]:
    """(pid, command) of every other process holding a block device open for writing, per devnum.

    What `fuser` does: readlink/stat each /proc/PID/fd/N (psutil's open_files leaves block
    devices out) and compare st_rdev; the access mode comes from /proc/PID/fdinfo/N. Our own
    process is skipped: the engine holds the target itself when it checks again.
    """
    own = os.getpid()
    found: dict[Devnum, list[tuple[int, str]]] = {}
    for entry in _listdir(PROC):
        if not entry.isdigit() or int(entry) == own:
            continue
        pid = int(entry)
        fd_dir = PROC / entry / "fd"
        for fd in _listdir(fd_dir):
            try:
                if not os.readlink(fd_dir / fd).startswith("/"):
                    continue  # socket:, pipe:, anon_inode:
                st = os.stat(fd_dir / fd)
            except OSError:
                continue  # closed, or the process exited
            if not stat.S_ISBLK(st.st_mode) or not _fd_writes(PROC / entry / "fdinfo" / fd):
                continue
            holders = found.setdefault(_devnum_of(st.st_rdev), [])
            if all(pid != known for known, _ in holders):
                holders.append((pid, _read(PROC / entry / "comm") or "?"))
    return {devnum: tuple(holders) for devnum, holders in found.items()}


@dataclass(frozen=True)
class _Snapshot:
    """What is read once per discovery and shared by every disk."""

    mounts: Mapping[Devnum, tuple[str, ...]] = field(default_factory=dict)
    swaps: frozenset[Devnum] = frozenset()
    links: Mapping[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    entries: tuple[_MountEntry, ...] = ()
    writers: Mapping[Devnum, tuple[tuple[int, str], ...]] = field(default_factory=dict)


def _snapshot() -> _Snapshot:
    entries = tuple(_read_mountinfo())
    return _Snapshot(mounts=_mounts_by_devnum(entries), swaps=_swap_devnums(), links=_disk_links(),
                     entries=entries, writers=_block_writers())


# --------------------------------------------------------------------------- identity attributes


def transport_of(name: str, sysdir: Path, props: Mapping[str, str]) -> str:
    """nvme, sata, usb, virtio, scsi, mmc, loop, virtual or unknown.

    The sysfs device path is authoritative (it exists without udev); ID_BUS is the fallback.
    USB is checked before SCSI/ATA because USB disks sit below a SCSI host.
    """
    parts = os.path.realpath(sysdir).split("/")
    if name.startswith("loop"):
        return "loop"
    if _VIRTUAL_NAME.match(name):
        return "virtual"
    if name.startswith("nvme") or "nvme" in parts:
        return "nvme"
    if any(re.fullmatch(r"usb\d+", p) for p in parts):
        return "usb"
    if any(re.fullmatch(r"ata\d+", p) for p in parts):
        return "sata"
    if name.startswith("mmcblk") or "mmc_host" in parts:
        return "mmc"
    if any(re.fullmatch(r"host\d+", p) for p in parts):
        return "scsi"
    if any(re.fullmatch(r"virtio\d+", p) for p in parts):
        return "virtio"
    by_bus = {"ata": "sata", "usb": "usb", "scsi": "scsi", "nvme": "nvme", "mmc": "mmc"}
    return by_bus.get(props.get("ID_BUS", ""), "unknown")


def _vpd_serial(path: Path) -> str | None:
    """The unit serial number from a SCSI VPD page 0x80 (4-byte header, then ASCII)."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if len(data) <= 4:
        return None
    length = int.from_bytes(data[2:4], "big")
    text = data[4 : 4 + length].decode("ascii", "replace").strip(" \x00")
    return text or None


def _usb_serial(device: Path) -> str | None:
    """iSerial of the USB device above a disk: what udev's ID_SERIAL_SHORT holds for USB sticks."""
    node = Path(os.path.realpath(device))
    while str(node).startswith("/sys/devices/") and node != node.parent:
        if (node / "idVendor").exists():
            return _read(node / "serial")
        node = node.parent
    return None


def _wwn_from_wwid(wwid: str | None) -> str | None:
    """A WWN in udev's form ("0x5000c500...") from a sysfs wwid ("naa.5000c500...", "eui...")."""
    if not wwid:
        return None
    low = wwid.strip().lower()
    for prefix in ("naa.", "eui."):
        if low.startswith(prefix):
            return "0x" + low[len(prefix):]
    return None


@dataclass(frozen=True)
class _Ids:
    vendor: str | None
    model: str | None
    serial: str | None
    wwn: str | None


def _read_ids(sysdir: Path, props: Mapping[str, str], transport: str) -> _Ids:
    """Vendor, model, serial and WWN: udev's values when it has them, else sysfs.

    `discover_disks` and `read_identity` both come through here, so a disk's identity reads the
    same at planning time and right before the first write.
    """
    device = sysdir / "device"
    serial = (
        props.get("ID_SERIAL_SHORT")
        or _read(sysdir / "serial")  # virtio-blk
        or _read(device / "serial")  # nvme, mmc
        or (_usb_serial(device) if transport == "usb" else None)
        or _vpd_serial(device / "vpd_pg80")  # scsi, sata
    )
    wwid = _read(device / "wwid") or _read(sysdir / "wwid")
    wwn = (props.get("ID_WWN") or "").lower() or _wwn_from_wwid(wwid)
    model = _read(device / "model") or _read(device / "name") or _udev_text(props, "ID_MODEL")
    # virtio and nvme "vendor" files hold PCI ids, not names
    vendor = _read(device / "vendor") if transport in {"sata", "scsi", "usb"} else None
    return _Ids(vendor=vendor or _udev_text(props, "ID_VENDOR"), model=model, serial=serial, wwn=wwn)


def _udev_text(props: Mapping[str, str], key: str) -> str | None:
    value = props.get(key)
    return value.replace("_", " ").strip() if value else None


def _loop_backing_file(sysdir: Path) -> str | None:
    return _read(sysdir / "loop" / "backing_file")


def _udev_props(devnum: Devnum) -> dict[str, str]:
    """udev/uevent properties of a block device; empty when pyudev cannot find it."""
    try:
        device = pyudev.Devices.from_device_number(pyudev.Context(), "block", os.makedev(*devnum))
        return dict(device.properties)
    except (OSError, LookupError, ValueError):
        return {}


# --------------------------------------------------------------------------- probing contents


def _unescape_blkid(value: str) -> str:
    return re.sub(r"\\(.)", r"\1", value)


@dataclass(frozen=True)
class _Probe:
    values: Mapping[str, Mapping[str, str]]  # node -> {TYPE, LABEL, UUID, PTTYPE, ...}
    errors: Mapping[str, str]  # node -> why blkid could not read it


def _probe(paths: Sequence[str]) -> _Probe:
    """`blkid -p -o export` for several nodes in one call.

    -p probes the device itself (no cache, no udev). blkid exits non-zero when one node has
    nothing on it; the others are still printed, so the exit status is ignored. Nodes it could
    not open are reported on stderr as "blkid: error: NODE: WHY".
    """
    proc = run(["blkid", "-p", "-o", "export", *paths], check=False, timeout=60)
    values: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in proc.stdout.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            current = None
        elif key == "DEVNAME":
            current = values.setdefault(value, {})
        elif current is not None:
            current[key] = _unescape_blkid(value)
    errors = {m.group(1): m.group(2) for m in re.finditer(r"error: (/\S+): (.*)", proc.stderr)}
    return _Probe(values=values, errors=errors)


def _ext_used_bytes(path: str) -> int | None:
    """Used bytes of an unmounted ext2/3/4 filesystem, from its superblock."""
    proc = run(["dumpe2fs", "-h", path], check=False, timeout=30)
    if proc.returncode != 0:
        return None
    values: dict[str, int] = {}
    for line in proc.stdout.splitlines():
        key, _, value = line.partition(":")
        if key in ("Block count", "Free blocks", "Block size") and value.strip().isdigit():
            values[key] = int(value)
    if len(values) < 3:
        return None
    return (values["Block count"] - values["Free blocks"]) * values["Block size"]


def _used_bytes(path: str, fstype: str | None, mountpoints: Sequence[str]) -> int | None:
    """Used bytes when cheaply known: statvfs when mounted, the superblock for ext*, else None."""
    if mountpoints:
        try:
            st = os.statvfs(mountpoints[0])
        except OSError:
            return None
        return (st.f_blocks - st.f_bfree) * st.f_frsize
    if fstype in _EXT_FAMILY:
        return _ext_used_bytes(path)
    return None


# --------------------------------------------------------------------------- building dataclasses


def _node_path(sysdir: Path, name: str) -> str:
    for line in (_read(sysdir / "uevent") or "").splitlines():
        if line.startswith("DEVNAME="):
            return "/dev/" + line.removeprefix("DEVNAME=")
    return f"/dev/{name}"


def _partition_dirs(sysdir: Path) -> list[Path]:
    dirs = [sysdir / name for name in _listdir(sysdir) if (sysdir / name / "partition").is_file()]
    return sorted(dirs, key=lambda d: _read_int(d / "partition") or 0)


def _build_partition(pdir: Path, probe: Mapping[str, str], snap: _Snapshot) -> Partition:
    path = _node_path(pdir, pdir.name)
    devnum = _parse_devnum(_read(pdir / "dev"))
    if devnum is None:
        raise FileNotFoundError(pdir / "dev")
    mountpoints = snap.mounts.get(devnum, ())
    fstype = probe.get("TYPE")
    return Partition(
        name=pdir.name,
        path=path,
        devnum=devnum,
        number=_read_int(pdir / "partition") or 0,
        start=(_read_int(pdir / "start") or 0) * _SYSFS_SECTOR,
        size=(_read_int(pdir / "size") or 0) * _SYSFS_SECTOR,
        fstype=fstype,
        label=probe.get("LABEL"),
        uuid=probe.get("UUID"),
        partlabel=probe.get("PART_ENTRY_NAME"),
        mountpoints=mountpoints,
        holders=_listdir(pdir / "holders"),
        swap=devnum in snap.swaps,
        used_bytes=_used_bytes(path, fstype, mountpoints),
    )


def _build_disk(name: str, sysdir: Path, props: Mapping[str, str], snap: _Snapshot) -> Disk:
    """Read one disk. Raises OSError when it vanishes halfway (another process detached it)."""
    devnum = _parse_devnum(_read(sysdir / "dev"))
    if devnum is None:
        raise FileNotFoundError(sysdir / "dev")
    path = props.get("DEVNAME") or _node_path(sysdir, name)
    size = (_read_int(sysdir / "size") or 0) * _SYSFS_SECTOR
    transport = transport_of(name, sysdir, props)
    ids = _read_ids(sysdir, props, transport)
    pdirs = _partition_dirs(sysdir)
    nodes = [path, *(_node_path(d, d.name) for d in pdirs)]
    probe = _probe(nodes) if size > 0 else _Probe(values={}, errors={})
    own = probe.values.get(path, {})
    partitions = tuple(_build_partition(pdir, probe.values.get(node, {}), snap)
                       for pdir, node in zip(pdirs, nodes[1:], strict=True))
    mountpoints = snap.mounts.get(devnum, ())
    real = os.path.realpath(path)
    return Disk(
        name=name,
        path=path,
        devnum=devnum,
        size=size,
        transport=transport,
        logical_sector_size=_read_int(sysdir / "queue" / "logical_block_size") or 512,
        physical_sector_size=_read_int(sysdir / "queue" / "physical_block_size") or 512,
        vendor=ids.vendor,
        model=ids.model,
        serial=ids.serial,
        wwn=ids.wwn,
        by_id=snap.links.get(("by-id", real), ()),
        by_path=snap.links.get(("by-path", real), ()),
        removable=_read_flag(sysdir / "removable"),
        rotational=_read_flag(sysdir / "queue" / "rotational"),
        read_only=_read_flag(sysdir / "ro"),
        pttype=own.get("PTTYPE"),
        partitions=partitions,
        mountpoints=mountpoints,
        holders=_listdir(sysdir / "holders"),
        swap=devnum in snap.swaps,
        loop_backing_file=_loop_backing_file(sysdir),
        fstype=own.get("TYPE"),
        label=own.get("LABEL"),
        uuid=own.get("UUID"),
        used_bytes=_used_bytes(path, own.get("TYPE"), mountpoints),
        diskseq=_read_int(sysdir / "diskseq"),
        backing_chain=backing_chain(devnum, snap.entries),
        writers=_writers(snap, [(name, devnum), *((p.name, p.devnum) for p in partitions)]),
        probe_error="; ".join(f"cannot read {node}: {why}" for node, why in probe.errors.items()) or None,
    )


def _writers(snap: _Snapshot, nodes: Iterable[tuple[str, Devnum]]) -> tuple[Opener, ...]:
    return tuple(Opener(pid=pid, command=command, node=node)
                 for node, devnum in nodes for pid, command in snap.writers.get(devnum, ()))


def _is_virtual(name: str, sysdir: Path) -> bool:
    """zram, ram, dm, md, unbound loop devices, hidden and size-0 devices: not flash targets."""
    if _VIRTUAL_NAME.match(name) or _read_flag(sysdir / "hidden"):
        return True
    if name.startswith("loop") and _loop_backing_file(sysdir) is None:
        return True
    return not _read_int(sysdir / "size")


def _enumerate() -> Iterator[tuple[str, Path, dict[str, str]]]:
    """(name, sysfs dir, properties) of every whole disk that pyudev sees."""
    for device in pyudev.Context().list_devices(subsystem="block", DEVTYPE="disk"):
        try:
            props = dict(device.properties)
        except (OSError, LookupError):
            continue  # vanished while we looked
        yield device.sys_name, Path(device.sys_path), props


def discover_disks(include_virtual: bool = False) -> list[Disk]:
    """Every whole disk, sorted by name; virtual ones (see `_is_virtual`) only when asked."""
    snap = _snapshot()
    disks = []
    for name, sysdir, props in _enumerate():
        if not include_virtual and _is_virtual(name, sysdir):
            continue
        try:
            disks.append(_build_disk(name, sysdir, props, snap))
        except OSError:
            continue  # detached or unplugged while we read it
    return sorted(disks, key=lambda d: _natural_key(d.name))


def _sysfs_dir(devnum: Devnum) -> Path:
    return Path(os.path.realpath(SYS_DEV_BLOCK / f"{devnum[0]}:{devnum[1]}"))


def find_disk(path_or_name: str) -> Disk:
    """One disk by name ("sda"), node ("/dev/sda") or link ("/dev/disk/by-id/..."), virtual or not."""
    text = path_or_name.strip()
    node = text if "/" in text else f"/dev/{text}"
    devnum = _block_devnum(node)
    if devnum is None:
        raise SelectorError(f"no such disk: {text} (not a block device node; see `bty disks`)")
    sysdir = _sysfs_dir(devnum)
    if (sysdir / "partition").is_file():
        raise SelectorError(f"{text} is partition {sysdir.name} of {sysdir.parent.name}; "
                            f"give the whole disk (/dev/{sysdir.parent.name})")
    try:
        return _build_disk(sysdir.name, sysdir, _udev_props(devnum), _snapshot())
    except OSError as exc:
        raise SelectorError(f"disk {text} vanished while it was being read") from exc


def read_identity(path: str | os.PathLike[str]) -> DiskIdentity:
    """The identity of the disk at `path`, read fresh from sysfs (no blkid: cheap, no side effects).

    Raises TargetVanishedError when the node is gone, is no longer a block device, or has no
    medium (size 0: an emptied card reader or a detached loop device).
    """
    try:
        st = os.stat(path)
    except FileNotFoundError as exc:
        raise TargetVanishedError(f"{path} is gone: the disk was unplugged or detached") from exc
    if not stat.S_ISBLK(st.st_mode):
        raise TargetVanishedError(f"{path} is no longer a block device")
    devnum = _devnum_of(st.st_rdev)
    sysdir = _sysfs_dir(devnum)
    size = (_read_int(sysdir / "size") or 0) * _SYSFS_SECTOR
    if not sysdir.is_dir() or size == 0:
        raise TargetVanishedError(f"{path} has no medium (size 0): the disk was unplugged or detached")
    props = _udev_props(devnum)
    ids = _read_ids(sysdir, props, transport_of(sysdir.name, sysdir, props))
    return DiskIdentity(
        path=os.path.realpath(path),
        devnum=devnum,
        size=size,
        serial=ids.serial,
        wwn=ids.wwn,
        model=ids.model,
        loop_backing_file=_loop_backing_file(sysdir),
        diskseq=_read_int(sysdir / "diskseq"),
    )


# --------------------------------------------------------------------------- boot medium


def _overlay_dirs(superopts: str) -> list[str]:
    r"""lowerdir/upperdir paths from an overlay mount's options (":" separates, "\:" escapes)."""
    dirs = []
    for option in re.split(r"(?<!\\),", superopts):
        key, _, value = option.partition("=")
        if key in ("lowerdir", "upperdir", "lowerdir+", "datadir+") and value:
            dirs += [d.replace("\\:", ":").replace("\\,", ",") for d in re.split(r"(?<!\\):", value) if d]
    return dirs


def _walk_to_disks(devnum: Devnum, mounts: Sequence[_MountEntry], found: set[Devnum],
                   seen: set[Devnum], files: list[BackingFile] | None = None) -> None:
    """Add to `found` every whole disk that the filesystem or block device `devnum` lives on
    (and to `files`, when given, every loop backing file on the way)."""
    if devnum in seen:
        return
    seen.add(devnum)
    sysdir = _sysfs_dir(devnum)
    if devnum[0] == 0 or not (sysdir / "dev").is_file():
        _walk_mount_sources(devnum, mounts, found, seen, files)
        return
    if (sysdir / "partition").is_file():
        sysdir = sysdir.parent
    disk = _parse_devnum(_read(sysdir / "dev"))
    if disk is None:
        return
    found.add(disk)
    seen.add(disk)
    for slave in _listdir(sysdir / "slaves"):  # dm, md: the devices below
        slave_devnum = _parse_devnum(_read(SYS_CLASS_BLOCK / slave / "dev"))
        if slave_devnum is not None:
            _walk_to_disks(slave_devnum, mounts, found, seen, files)
    backing = _loop_backing_file(sysdir)
    if backing:
        path = backing.removesuffix(" (deleted)")
        if files is not None:
            files.append(BackingFile(loop=sysdir.name, path=path, inode=_inode(path), device=_whole_disk_of(path)))
        _walk_path(path, mounts, found, seen, files)


def _walk_mount_sources(devnum: Devnum, mounts: Sequence[_MountEntry], found: set[Devnum],
                        seen: set[Devnum], files: list[BackingFile] | None = None) -> None:
    """A filesystem without a block device of its own (overlay, tmpfs, btrfs's 0:N): follow the
    mount source and, for overlay, the lower and upper directories."""
    for entry in mounts:
        if entry.devnum != devnum:
            continue
        source = _block_devnum(entry.source)
        if source is not None:
            _walk_to_disks(source, mounts, found, seen, files)
        if entry.fstype == "overlay":
            for directory in _overlay_dirs(entry.superopts):
                _walk_path(directory, mounts, found, seen, files)


def _walk_path(path: str, mounts: Sequence[_MountEntry], found: set[Devnum], seen: set[Devnum],
               files: list[BackingFile] | None = None) -> None:
    try:
        st = os.stat(path)
    except OSError:
        return
    # a block device node (a loop over /dev/sdb1) stands for that device, not for /dev's filesystem
    _walk_to_disks(_devnum_of(st.st_rdev if stat.S_ISBLK(st.st_mode) else st.st_dev), mounts, found, seen, files)


def _whole_disk_of(path: str) -> Devnum | None:
    """The whole disk a block device node is (or is a partition of); None for anything else."""
    devnum = _block_devnum(path)
    if devnum is None:
        return None
    sysdir = _sysfs_dir(devnum)
    if (sysdir / "partition").is_file():
        return _parse_devnum(_read(sysdir.parent / "dev"))
    return devnum


def _inode(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def backing_chain(devnum: Devnum, mounts: Sequence[_MountEntry] | None = None) -> tuple[BackingFile, ...]:
    """Every loop backing file that writing the block device `devnum` writes into: its own, then
    (nested) the backing files of the loops below the filesystems those files live on."""
    files: list[BackingFile] = []
    _walk_to_disks(devnum, _read_mountinfo() if mounts is None else mounts, set(), set(), files)
    return tuple(files)


def boot_medium_devnums(paths: Iterable[Path | str]) -> frozenset[Devnum]:
    """Whole disks holding the given paths (the running system's / and the images directory).

    Follows partitions to their disk, dm/md to their slaves, loop devices to their backing
    file's disk, and overlay/tmpfs-style mounts to their sources. Missing paths are skipped.
    """
    mounts = _read_mountinfo()
    found: set[Devnum] = set()
    seen: set[Devnum] = set()
    for path in paths:
        _walk_path(str(path), mounts, found, seen)
    return frozenset(found)


# --------------------------------------------------------------------------- protected paths

#: at most this many files of a protected directory are remembered by inode (an images directory
#: holds a few dozen; the path test still covers the rest)
_PROTECTED_FILES_MAX = 10_000


@dataclass(frozen=True)
class Protected:
    """A path whose disks and files must never be written: "/", the images directory, the image.

    devnums: the whole disks it lives on (see `boot_medium_devnums`).
    files: (st_dev, st_ino) of the regular files in it (or of the file itself), so a loop device
        backed by one of them is caught through a bind mount or a hard link too.
    """

    path: str
    what: str
    devnums: frozenset[Devnum] = frozenset()
    files: frozenset[tuple[int, int]] = frozenset()
    is_dir: bool = False

    @property
    def is_system(self) -> bool:
        return self.path == "/"

    def contains(self, backing: BackingFile) -> bool:
        """Whether the backing file is this file, or lies inside this directory."""
        if self.is_system:
            return False  # everything is inside "/": its disks are what count
        if backing.inode is not None and backing.inode in self.files:
            return True
        path = os.path.normpath(backing.path)
        return path.startswith(self.path + "/") if self.is_dir else path == self.path


def _files_in(directory: str) -> frozenset[tuple[int, int]]:
    found: set[tuple[int, int]] = set()
    for root, _dirs, names in os.walk(directory):
        for name in names:
            inode = _inode(os.path.join(root, name))
            if inode is not None:
                found.add(inode)
            if len(found) >= _PROTECTED_FILES_MAX:
                return frozenset(found)
    return frozenset(found)


def protect(path: Path | str, what: str) -> Protected:
    """What the eligibility rules need to know about one protected path (a missing path protects nothing
    but its name)."""
    real = os.path.realpath(path)
    is_dir = os.path.isdir(real)
    if real == "/":
        files: frozenset[tuple[int, int]] = frozenset()
    elif is_dir:
        files = _files_in(real)
    else:
        inode = _inode(real)
        files = frozenset({inode}) if inode else frozenset()
    return Protected(path=real, what=what, devnums=boot_medium_devnums([real]), files=files, is_dir=is_dir)


# --------------------------------------------------------------------------- destroy preview


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
