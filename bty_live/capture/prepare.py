"""Gather what a capture plan needs: the disk (refused by the read rules), the output (a new
.zst file, not on that disk), the disk's head and partition table, its filesystems, the free
space. The I/O half of planning; `plan.py` decides.
"""

from __future__ import annotations

import mmap
import os
import stat
from collections.abc import Mapping
from pathlib import Path

from bty_live.capture.plan import CaptureOptions, CapturePlan, make_capture_plan
from bty_live.capture.reader import DiskReader
from bty_live.disk.discovery import discover_disks, find_disk
from bty_live.disk.eligibility import Assessed, EligibilityContext, capture_context, read_reasons, require_readable
from bty_live.disk.model import Disk
from bty_live.disk.selector import parse_selector, select_disk
from bty_live.errors import BtyError, UsageError
from bty_live.flash.prepare import looks_like_selector
from bty_live.image.catalog import image_stem
from bty_live.image.formats import Compression
from bty_live.image.fsprobe import FsInfo, Region, probe_filesystems, probe_regions
from bty_live.image.os_guess import guess_os
from bty_live.image.partition_table import parse_partition_table
from bty_live.image.partitions import PartitionTable

HEAD_BYTES = 1 << 20


def prepare_capture(disk_spec: str, output: Path, options: CaptureOptions) -> CapturePlan:
    """Plan capturing the disk `disk_spec` (node, link, name or selector) into `output`."""
    output = check_output(output, options.force)
    ctx = capture_context(output)
    return plan_capture(choose_disk_to_read(disk_spec, ctx), output, options, ctx)


def plan_capture(disk: Disk, output: Path, options: CaptureOptions, ctx: EligibilityContext) -> CapturePlan:
    """Plan capturing `disk`, already chosen, into `output`, already checked (`check_output`)
    against the context `capture_context(output)`: for a front-end that names the output after
    the disk (unattended capture)."""
    require_readable(disk, ctx)
    with DiskReader.open(disk.path, exclusive=False) as reader:  # planning: the engine claims it
        disk_size = reader.size
        head = read_head(reader)
        table = read_table(reader, head, disk)
    notes: list[str] = []
    filesystems = _probe(disk, table, disk_size, notes)
    guessed = "" if options.os else guess_os(disk.path, table, filesystems)
    return make_capture_plan(
        disk=disk, disk_size=disk_size, output=output, options=options, head=head, table=table,
        filesystems=filesystems, guessed_os=guessed, name=image_stem(output), free=free_bytes(output.parent),
        notes=tuple(notes),
    )


def choose_disk_to_read(spec: str, ctx: EligibilityContext) -> Disk:
    """A device node, link or name picks that disk; a selector must match exactly one disk that
    may be captured (by the read rules)."""
    if looks_like_selector(spec):
        disks = discover_disks()
        return select_disk(parse_selector(spec), [Assessed(d, read_reasons(d, ctx)) for d in disks])
    return find_disk(spec)


def check_output(output: Path, force: bool) -> Path:
    """The output as an absolute path: a new .zst file in an existing, writable directory."""
    if not output.name.endswith(".zst"):
        raise UsageError(f"the capture is zstd: name the output NAME.img.zst, not {output.name}")
    output = Path(os.path.abspath(output))
    parent = output.parent
    if not parent.is_dir():
        raise UsageError(f"directory {parent} does not exist; create it first or choose another output")
    try:
        st = output.stat()
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise UsageError(f"{output} exists and is not a regular file; choose another output")
    if st is not None and not force:
        raise UsageError(f"{output} exists; pass --force to replace it (and its manifest) or choose another name")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"directory {parent} cannot be written (read-only, or no permission); choose another output")
    return output


def free_bytes(directory: Path) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def read_head(reader: DiskReader) -> bytes:
    """The disk's first MiB (all of a smaller disk), read with O_DIRECT."""
    length = min(HEAD_BYTES, reader.size)
    buffer = mmap.mmap(-1, max(HEAD_BYTES, reader.block))
    try:
        reader.read_exactly(memoryview(buffer)[: length + (-length) % reader.block], 0, length)
        return bytes(buffer[:length])
    finally:
        buffer.close()


def read_table(reader: DiskReader, head: bytes, disk: Disk) -> PartitionTable | None:
    """The partition table, EBRs beyond the head fetched one by one. Parsed without the disk's size:
    a backup GPT that is not at the disk's end (an image flashed without fix-ups) is no damage here."""
    table = parse_partition_table(head, None, disk.logical_sector_size)
    sectors: dict[int, bytes] = {}
    block = reader.block
    buffer = mmap.mmap(-1, max(block, 4096))
    try:
        while table is not None and table.missing_ebr is not None and table.missing_ebr not in sectors:
            offset = table.missing_ebr
            aligned = offset - offset % block
            if aligned + block > reader.size:
                break
            reader.read_exactly(memoryview(buffer)[:block], aligned, block)
            sectors[offset] = bytes(buffer[offset - aligned : offset - aligned + 512])
            table = parse_partition_table(head, None, disk.logical_sector_size, sectors=sectors)
    finally:
        buffer.close()
    return table


def _probe(disk: Disk, table: PartitionTable | None, size: int, notes: list[str]) -> Mapping[int, FsInfo]:
    """The filesystems (blkid on a copy of each partition's head), for the manifest and the os guess;
    a probe that fails is a note, not a refusal."""
    try:
        if table is not None:
            return probe_filesystems(Path(disk.path), table, Compression.RAW)
        return probe_regions(Path(disk.path), [Region(0, 0, size)], Compression.RAW)
    except (BtyError, OSError) as exc:
        notes.append(f"the filesystems could not be probed ({exc}); the manifest names none")
        return {}
