"""bty-images: find the boot stick's BTY_IMAGES partition, grow it to the end of the stick when the
stick is larger than the image written to it, and mount it at /run/bty/images (read-write: bty
writes receipts, logs and its ledger there).

  python -m bty_live.stick.images_partition start    grow if needed, check, mount
  python -m bty_live.stick.images_partition stop     unmount
  python -m bty_live.stick.images_partition status   what start would do, changing nothing

On the stick, bty-images.service runs /usr/lib/bty-live/images-mount (bash: the cheap common
path, nothing to grow or resume), which execs /usr/lib/bty-live/images-partition, a wrapper that
runs this module.

Which partition: the one on the disk holding the running root (the stick), never a BTY_IMAGES
found on another disk (a second stick, or a target that holds a copy of a stick).

Growing exFAT without losing images. No Linux tool resizes exFAT, so the partition is rebuilt:
  1. the partition must be the last one, with at least 64 MiB unused after it, and the space
     after it must hold a full copy of it, with room to spare for the new file system's files;
     otherwise nothing changes and the reason is logged (the images stay where they are);
  2. the old file system is copied block for block to the end of the stick, and both copies are
     read back with O_DIRECT and compared;
  3. one partition-table write makes the partition span the stick and renames it
     "bty-grow:<copy start>:<copy sectors>": from here on the name is the journal;
  4. a new exFAT is made on the partition (mkfs.exfat writes only its first megabytes), the files
     are copied from the block copy (mounted read-only through a loop device; new files are
     allocated from the front of the partition, the copy sits at its end) and compared after
     dropping the page cache;
  5. the partition is renamed BTY_IMAGES again.
A power cut at any point leaves either the old file system untouched (before 3) or a verified
copy that the next boot resumes from (3-5): images are never lost. Add bty-live.grow=0 to the
kernel command line to never grow.

The decisions (worth it? safe? where does the copy go? the journal) are pure, in
`bty_live.stick.images_growth`; this module reads the disk and acts. It runs early at boot on
slow machines: it imports the standard library, images_growth and bty_live.system only.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from bty_live.stick.images_growth import (
    LABEL,
    MIB,
    GrowthPlan,
    Journal,
    Partition,
    Refused,
    Table,
    backup_gpt_misplaced,
    edit_dump,
    exfat_dirty,
    growing_disabled,
    is_journal_name,
    parse_journal,
    parse_table,
    plan_growth,
    refuse_unless_files_fit,
    refuse_unless_last,
    worth_growing,
)
from bty_live.system import blkid, sysfs
from bty_live.system.run import run

MOUNTPOINT = Path("/run/bty/images")
WORK = Path("/run/bty/grow")
PROC_CMDLINE = Path("/proc/cmdline")
MOUNT_OPTIONS = {
    "exfat": "rw,noatime,uid=0,gid=0,fmask=0022,dmask=0022,iocharset=utf8,errors=remount-ro",
    "vfat": "rw,noatime,uid=0,gid=0,fmask=0022,dmask=0022,utf8,flush",
}
#: read size of the O_DIRECT comparisons
CHUNK = 4 * MIB


def log(msg: str) -> None:
    print(f"bty-images: {msg}", flush=True)


def tool(argv: Sequence[str], *, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """`bty_live.system.run` without a time limit: copying and formatting a large partition on a
    slow stick takes as long as it takes. Raises ToolError ("dd failed: <its last words>")."""
    return run(argv, check=check, input=input.encode() if input is not None else None, timeout=None)


def disk_dir(disk: str) -> Path:
    return sysfs.SYS_CLASS_BLOCK / disk


# --------------------------------------------------------------------------- finding it


def root_disk(root: str = "/") -> str | None:
    """The whole disk holding the file system of `root` (the running root: the stick), e.g. "sda";
    None when that file system is not on a block device.

    Narrower than `bty_live.disk.boot_medium` on purpose: that walk collects every disk a path
    depends on (through dm/md slaves, loop backing files, overlay sources) so that none of them is
    written; here exactly one disk is wanted, the one whose partition table may be rewritten, and
    only the disk the root's own partition is on qualifies.
    """
    sysdir = sysfs.block_dir(sysfs.devnum_of(os.stat(root).st_dev))
    if not sysdir.exists():
        return None
    if (sysdir / "partition").exists():
        sysdir = sysdir.parent
    return sysdir.name


def sysfs_partitions(disk: str) -> list[Partition]:
    """The partitions of `disk` as the kernel has them (sysfs: no partition-table read; 512-byte
    units; the names the kernel read at boot)."""
    parts = []
    for sysdir in sysfs.partition_dirs(disk_dir(disk)):
        number, start, size = (sysfs.read_int(sysdir / attr) for attr in ("partition", "start", "size"))
        if number is None or start is None or size is None:
            continue  # gone meanwhile
        parts.append(Partition(node=sysfs.node_path(sysdir, sysdir.name), number=number,
                               name=sysfs.uevent(sysdir).get("PARTNAME", ""), start=start, size=size))
    return parts


def growth_possible(disk: str, node: str) -> bool:
    """Cheap test (sysfs only): is `node` the last partition with MIN_GAIN unused after it?"""
    return worth_growing(sysfs_partitions(disk), node, sysfs.read_int(disk_dir(disk) / "size") or 0)


def probe(node: str) -> dict[str, str]:
    """blkid's view of a partition: TYPE, LABEL, ... (empty when it finds nothing)."""
    return blkid.probe_one(node)[1]


def find_partition(disk: str) -> tuple[Partition, dict[str, str]] | None:
    """(the partition, its blkid probe) of the images partition on `disk`: the partition named
    bty-grow:... (a growth in progress), else one whose file system is labelled BTY_IMAGES (the
    partition named BTY_IMAGES is probed first: usually one blkid call)."""
    parts = sysfs_partitions(disk)
    for part in parts:
        if is_journal_name(part.name):
            return part, probe(part.node)
    for part in sorted(parts, key=lambda p: p.name != LABEL):
        info = probe(part.node)
        if info.get("LABEL") == LABEL:
            return part, info
    return None


def partition_dirty(node: str) -> bool:
    """The exFAT VolumeDirty flag of the file system on `node` (False when unreadable)."""
    with contextlib.suppress(OSError), open(node, "rb") as f:
        return exfat_dirty(f.read(512))
    return False


# --------------------------------------------------------------------------- block-level helpers


def read_table(disk: str) -> Table:
    """The partition table on the disk (sfdisk), not the kernel's idea of it."""
    return parse_table(tool(["sfdisk", "--json", f"/dev/{disk}"]).stdout)


def table_entry(disk: str, number: int) -> Partition:
    entry = read_table(disk).entry(number)
    if entry is None:
        raise RuntimeError(f"partition {number} of /dev/{disk} vanished")
    return entry


def sector_size(disk: str) -> int:
    size = sysfs.read_int(disk_dir(disk) / "queue" / "logical_block_size")
    if size is None:
        raise RuntimeError(f"/dev/{disk} has no logical block size in sysfs (gone?)")
    return size


def range_digest(dev: str, offset: int, length: int) -> str:
    """sha256 of a byte range read with O_DIRECT (the device, not the page cache). `offset` and
    `length` are multiples of the device's logical sector size."""
    import hashlib

    digest = hashlib.sha256()
    buf = mmap.mmap(-1, CHUNK)  # page aligned, as O_DIRECT needs
    view = memoryview(buf)
    try:
        fd = os.open(dev, os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
        try:
            done = 0
            while done < length:
                got = os.preadv(fd, [view[:min(CHUNK, length - done)]], offset + done)
                if got <= 0:
                    raise OSError(f"end of device after {done} bytes")
                digest.update(view[:got])
                done += got
        finally:
            os.close(fd)
    except OSError as exc:
        raise RuntimeError(f"reading {dev} at {offset} failed: {exc}") from exc
    finally:
        view.release()
        buf.close()
    return digest.hexdigest()


def rewrite_partition(disk: str, number: int, *, size: int, name: str) -> None:
    """One partition-table write: partition `number` gets `size` sectors and `name`."""
    dump = tool(["sfdisk", "--dump", f"/dev/{disk}"]).stdout
    tool(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", "--wipe", "never",
          "--wipe-partitions", "never", f"/dev/{disk}"], input=edit_dump(dump, number, size=size, name=name))
    # Tell the kernel about this partition only: the disk is busy (the root is on it).
    tool(["partx", "--update", "--nr", str(number), f"/dev/{disk}"], check=False)
    tool(["udevadm", "settle", "--timeout=10"], check=False)


@contextlib.contextmanager
def mounted(dev: str, where: Path, fstype: str, options: str) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    tool(["mount", "-t", fstype, "-o", options, dev, str(where)])
    try:
        yield where
    finally:
        tool(["umount", str(where)], check=False)


@contextlib.contextmanager
def loop(dev: str, offset: int, size: int) -> Iterator[str]:
    """A read-only loop device over a byte range of `dev`."""
    node = tool(["losetup", "--find", "--show", "--read-only", "--offset", str(offset),
                 "--sizelimit", str(size), dev]).stdout.strip()
    try:
        yield node
    finally:
        tool(["losetup", "-d", node], check=False)


def files_under(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def file_digest(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def drop_caches() -> None:
    os.sync()
    with contextlib.suppress(OSError):
        Path("/proc/sys/vm/drop_caches").write_text("3\n")


# --------------------------------------------------------------------------- growing


def plan_on_disk(disk: str, part: Partition, *, relocate: bool = True) -> GrowthPlan | None:
    """The growth of `part` (an entry of the disk's table) to the end of the stick; None when
    there is nothing to gain. Raises Refused when growing would not be safe. With `relocate`, a
    backup GPT left where the image ended is first moved to the end of the stick."""
    table = read_table(disk)
    ss = sector_size(disk)
    refuse_unless_last(table.partitions, part, disk)
    disk_sectors = sysfs.size_bytes(disk_dir(disk)) // ss
    if table.lastlba is None:
        raise RuntimeError(f"/dev/{disk} has no GPT (sfdisk reports no last usable LBA)")
    end = table.lastlba + 1
    if backup_gpt_misplaced(table.lastlba, disk_sectors):
        if relocate:
            tool(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", "--relocate", "gpt-bak-std",
                  f"/dev/{disk}"])
            lastlba = read_table(disk).lastlba
            end = (lastlba if lastlba is not None else table.lastlba) + 1
        else:
            end = disk_sectors - 33
    return plan_growth(part, end, ss)


def copy_to_end(disk: str, part: Partition, info: dict[str, str], *, work: Path = WORK) -> Journal | None:
    """Steps 1-3: check, copy the old file system block for block to the end of the stick, verify
    the copy, and write the journal (the partition spans the stick, named bty-grow:...). None
    when there is nothing to gain; Refused, with nothing changed on the disk but a relocated
    backup GPT, when growing would not be safe."""
    if info.get("TYPE") != "exfat":
        raise Refused(f"{part.node} is {info.get('TYPE', 'not formatted')}, not exFAT; not grown")
    growth = plan_on_disk(disk, part)
    if growth is None:
        return None
    ss = sector_size(disk)
    dev = f"/dev/{disk}"
    check = tool(["fsck.exfat", "-n", part.node], check=False)
    if check.returncode != 0:
        raise Refused(f"fsck.exfat reports problems on {part.node}; not grown: {check.stdout.strip()}")
    with mounted(part.node, work / "old", "exfat", "ro") as old:
        files = files_under(old)
        sizes = [(old / f).stat().st_size for f in files]
    refuse_unless_files_fit(growth, part, ss, sizes)
    log(f"growing {LABEL} on {dev} from {part.size * ss // MIB} MiB to {growth.new_size * ss // MIB} MiB "
        f"({len(files)} files; this takes a while, do not remove the stick)")
    t = time.monotonic()
    src, dst, length = part.start * ss, growth.copy_start * ss, growth.copy_size * ss
    tool(["dd", f"if={dev}", f"of={dev}", "bs=4M", "iflag=skip_bytes,count_bytes", "oflag=seek_bytes,direct",
          f"skip={src}", f"seek={dst}", f"count={length}", "conv=notrunc,fsync", "status=none"])
    tool(["blockdev", "--flushbufs", dev], check=False)
    if range_digest(dev, src, length) != range_digest(dev, dst, length):
        raise Refused("the block copy at the end of the stick does not read back equal; not grown "
                      "(the stick may be failing)")
    log(f"block copy verified at sector {growth.copy_start} ({time.monotonic() - t:.0f} s)")
    rewrite_partition(disk, part.number, size=growth.new_size, name=growth.journal.name)
    return growth.journal


def grow(disk: str, part: Partition, info: dict[str, str], *, work: Path = WORK) -> None:
    """Steps 1-5 (see the module's docstring)."""
    journal = copy_to_end(disk, part, info, work=work)
    if journal is not None:
        resume(disk, table_entry(disk, part.number), journal, work=work)


def resume(disk: str, part: Partition, journal: Journal, *, work: Path = WORK) -> None:
    """Steps 4-5: a new exFAT over the whole partition (`part`: its entry in the disk's table),
    the files back from the block copy the journal names, then the name BTY_IMAGES again."""
    dev = f"/dev/{disk}"
    ss = sector_size(disk)
    copy_start, copy_size = journal.copy_start, journal.copy_size
    with loop(dev, copy_start * ss, copy_size * ss) as copy_dev:
        if probe(copy_dev).get("TYPE") != "exfat" or tool(["fsck.exfat", "-n", copy_dev], check=False).returncode:
            raise Refused(f"the block copy at sector {copy_start} is not a clean exFAT; nothing was changed "
                          f"further. Recover it with: losetup -r -o {copy_start * ss} --sizelimit "
                          f"{copy_size * ss} -f --show {dev}")
        kernel_size = (sysfs.read_int(disk_dir(Path(part.node).name) / "size") or 0) * 512 // ss
        if kernel_size != part.size:
            tool(["partx", "--update", "--nr", str(part.number), dev], check=False)
        log(f"formatting {part.node} ({part.size * ss // MIB} MiB, exFAT, label {LABEL})")
        tool(["mkfs.exfat", "-L", LABEL, part.node])
        with mounted(copy_dev, work / "old", "exfat", "ro") as old, \
                mounted(part.node, work / "new", "exfat", MOUNT_OPTIONS["exfat"]) as new:
            files = files_under(old)
            for d in sorted({p.parent for p in files} | {p.relative_to(old) for p in old.rglob("*") if p.is_dir()}):
                (new / d).mkdir(parents=True, exist_ok=True)
            for i, rel in enumerate(files, 1):
                shutil.copyfile(old / rel, new / rel)
                log(f"copied back {rel} ({i}/{len(files)})")
            drop_caches()
            bad = [str(rel) for rel in files if file_digest(old / rel) != file_digest(new / rel)]
            if bad:
                raise Refused(f"files differ after copying back ({', '.join(bad)}); the block copy at "
                              f"sector {copy_start} is kept and the next boot tries again")
    rewrite_partition(disk, part.number, size=part.size, name=LABEL)
    log(f"{LABEL} now spans the stick: {part.size * ss // MIB} MiB, {len(files)} files kept")


# --------------------------------------------------------------------------- commands


def start(disk: str | None, *, mountpoint: Path = MOUNTPOINT, work: Path = WORK, cmdline: str | None = None) -> int:
    """Grow (or resume growing) the images partition of `disk` (the stick) if needed, check it and
    mount it. Never blocks the boot on a failed growth: the images stay where they were."""
    if disk is None:
        log("the root file system is not on a disk partition; no images partition to mount")
        return 0
    found = find_partition(disk)
    if found is None:
        log(f"no {LABEL} partition on the boot disk /dev/{disk}; bty will find no images there")
        return 0
    part, info = found
    if cmdline is None:
        cmdline = sysfs.read_text(PROC_CMDLINE) or ""
    if growing_disabled(cmdline):
        log("bty-live.grow=0: not growing")
    else:
        try:
            journal = parse_journal(part.name)
            if journal is not None:
                log(f"resuming an interrupted growth of {LABEL} from the copy at sector {journal.copy_start}")
                resume(disk, table_entry(disk, part.number), journal, work=work)
            elif growth_possible(disk, part.node):
                grow(disk, table_entry(disk, part.number), info, work=work)
        except Refused as exc:
            log(str(exc))
        except Exception as exc:  # never block the boot: the images stay where they were
            log(f"growing {LABEL} failed: {exc}")
        part, info = find_partition(disk) or (part, info)
    # The partition's name on the disk, not in sysfs: the kernel keeps the name it read at boot
    # (a growth renames the partition without a re-read of the busy disk's table).
    if is_journal_name(table_entry(disk, part.number).name):
        log(f"{LABEL} is mid-growth and was not mounted (its images are safe in the copy); "
            "see the messages above")
        return 1
    fstype = info.get("TYPE") or probe(part.node).get("TYPE", "")
    if fstype == "exfat" and partition_dirty(part.node):
        log(f"{part.node} was not unmounted cleanly: checking it (fsck.exfat -p)")
        fix = tool(["fsck.exfat", "-p", part.node], check=False)
        if fix.returncode not in (0, 1):
            log(f"fsck.exfat could not repair {part.node} (mounting it read-only): {fix.stdout.strip()}")
    options = MOUNT_OPTIONS.get(fstype, "rw,noatime")
    mountpoint.mkdir(parents=True, exist_ok=True)
    if tool(["mount", "-t", fstype, "-o", options, part.node, str(mountpoint)], check=False).returncode:
        tool(["mount", "-t", fstype, "-o", "ro", part.node, str(mountpoint)])
        log(f"{part.node} mounted READ-ONLY at {mountpoint}: receipts cannot be saved")
    else:
        for sub in ("receipts", "logs"):
            with contextlib.suppress(OSError):
                (mountpoint / sub).mkdir(exist_ok=True)
        usage = shutil.disk_usage(mountpoint)
        log(f"{part.node} ({fstype}, {usage.total // MIB} MiB, {usage.free // MIB} MiB free) "
            f"mounted at {mountpoint}")
    return 0


def stop(mountpoint: Path = MOUNTPOINT) -> int:
    tool(["umount", str(mountpoint)], check=False)
    return 0


def status(disk: str | None) -> int:
    """What start would do on `disk`, changing nothing."""
    found = find_partition(disk) if disk else None
    if not disk or not found:
        print(f"boot disk: {disk}; no {LABEL} partition")
        return 0
    part, info = found
    print(f"boot disk /dev/{disk}; {LABEL}: {part.node} ({info.get('TYPE')}), name {part.name!r}")
    try:
        entry = table_entry(disk, part.number)
        growth = None if is_journal_name(part.name) else plan_on_disk(disk, entry, relocate=False)
        print("growth: nothing to gain" if growth is None
              else f"growth: to {growth.new_size} sectors, copy at {growth.copy_start}")
    except Refused as exc:
        print(f"growth refused: {exc}")
    return 0


USAGE = "usage: images-partition [start|stop|status]"


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    command = args[0] if args else "start"
    if command == "stop":
        return stop()
    if command not in ("start", "status"):
        print(USAGE, file=sys.stderr)
        return 2
    disk = root_disk()
    return start(disk) if command == "start" else status(disk)


if __name__ == "__main__":
    sys.exit(main())
