"""Virtual disks (qcow2, VMDK, VHDX, VDI, VHD) read through QEMU's block layer, not a parser of ours.

`qemu-img info` says what the file is (its virtual size, backing file, extents); the disk's bytes
come from `qemu-nbd --read-only` serving the file to `nbdcopy` (libnbd's copier), which writes them
in order to a pipe the engine reads like any decompressed stream. Unallocated and zero clusters
arrive as zeroes, which the engine turns into BLKZEROOUT ranges as for every image. Compressed
qcow2 clusters are decompressed by QEMU.

A crafted virtual disk is an attack on the tool that opens it (KubeVirt and Nova run qemu-img under
limits for this reason), so every QEMU tool runs under `prlimit`: address space and CPU time.
`qemu-img info` gets the tight limits Nova uses; the copy gets CPU time in proportion to the size.
The format is always given (`-f`): the file's first bytes never pick QEMU's driver. A backing file
or an external data file would make QEMU open another file the user never named: both are refused,
as are VMDK descriptors whose extents live in other files. QEMU reads the clusters of a cut-short
file as zeroes without a word, so before the copy `qemu-img check` (qcow2, VDI, VHDX) and the
allocation map (every format) must show all data inside the file.

The live stick carries `qemu-utils` (qemu-img, qemu-nbd) and `libnbd-bin` (nbdcopy) for this.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bty_live.errors import ImageError, SourceCorruptError, ToolError
from bty_live.system.run import ToolStream, run
from bty_live.units import format_size

#: bty's name of the format -> QEMU's driver
QEMU_DRIVERS = {"qcow2": "qcow2", "vmdk": "vmdk", "vhdx": "vhdx", "vdi": "vdi", "vhd": "vpc"}
#: qemu-img info: Nova's limits for inspecting untrusted images (1 GiB address space, 30 s CPU)
INFO_LIMITS = ("--as=1073741824", "--cpu=30")
#: the copy: a fixed address space; CPU seconds: a base plus some per GiB of virtual disk
COPY_ADDRESS_SPACE = 2 << 30
COPY_CPU_BASE = 60
COPY_CPU_PER_GIB = 20


@dataclass(frozen=True)
class VirtualDisk:
    path: Path
    format: str  # bty's name: qcow2, vmdk, vhdx, vdi, vhd
    virtual_size: int


def inspect_virtual_disk(path: Path, fmt: str) -> VirtualDisk:
    """What `qemu-img info` says of the file, refusing what would make QEMU open other files.
    Listing, planning, the head, the partition table and the copy all ask: the qemu-img runs are
    made once per version of the file (its size and mtime); a refusal is not remembered."""
    try:
        st = path.stat()
    except OSError:
        return _inspect(path, fmt)
    return _inspected(path, fmt, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _inspected(path: Path, fmt: str, size: int, mtime_ns: int) -> VirtualDisk:
    return _inspect(path, fmt)


def _inspect(path: Path, fmt: str) -> VirtualDisk:
    info = _qemu_img_info(path, fmt)
    name = path.name
    backing = info.get("backing-filename") or info.get("full-backing-filename")
    if backing:
        raise ImageError(f"image {name} is a {fmt} overlay on the backing file {backing}, which bty will not open "
                         f"behind your back; flatten it first: qemu-img convert -O {QEMU_DRIVERS[fmt]} {name} "
                         f"{path.stem}-flat.{fmt}")
    specific = (info.get("format-specific") or {}).get("data") or {}
    if specific.get("data-file"):
        raise ImageError(f"image {name} keeps its data in another file ({specific['data-file']}); convert it to a "
                         f"self-contained image: qemu-img convert -O {QEMU_DRIVERS[fmt]} {name} {path.stem}-flat.{fmt}")
    if specific.get("corrupt"):
        raise ImageError(f"image {name} is marked corrupt by QEMU; repair a copy with `qemu-img check -r all` "
                         "or re-copy it")
    for extent in specific.get("extents") or []:
        extent_file = Path(str(extent.get("filename", ""))).name
        if extent_file and extent_file != name:
            raise ImageError(f"image {name} is a VMDK descriptor whose data is in {extent_file}; convert it to one "
                             f"file: qemu-img convert -O vmdk -o subformat=streamOptimized {name} {path.stem}-one.vmdk")
    size = info.get("virtual-size")
    if not isinstance(size, int) or size <= 0:
        raise ImageError(f"image {name}: qemu-img reports no virtual size; the file is damaged, re-copy it")
    _check_within_file(path, fmt)
    return VirtualDisk(path=path, format=fmt, virtual_size=size)


#: formats `qemu-img check` knows (it walks every table, compressed clusters included)
CHECKED_FORMATS = frozenset({"qcow2", "vdi", "vhdx"})


def _check_within_file(path: Path, fmt: str) -> None:
    """SourceCorruptError when the disk's data lies past the end of the file. QEMU reads a cut-short
    file's missing clusters as zeroes without a word, so a truncated download would flash as a disk
    with holes: `qemu-img check` finds it (where it can), and the allocation map must stay inside
    the file. Only metadata is read: fast even for large disks."""
    file_size = path.stat().st_size
    if fmt in CHECKED_FORMATS:
        found = _json_of(path, ["qemu-img", "check", "--output=json", "-f", QEMU_DRIVERS[fmt], str(path)])
        corruptions = found.get("corruptions", 0) if isinstance(found, dict) else 0
        if corruptions:
            raise SourceCorruptError(f"image {path.name} is corrupt or truncated: QEMU's check finds {corruptions} "
                                     "damaged or missing cluster(s); re-copy it")
    extents = _json_of(path, ["qemu-img", "map", "--output=json", "-f", QEMU_DRIVERS[fmt], str(path)])
    for extent in extents if isinstance(extents, list) else []:
        offset, length = extent.get("offset"), extent.get("length")
        if extent.get("data") and isinstance(offset, int) and isinstance(length, int) and offset + length > file_size:
            raise SourceCorruptError(f"image {path.name} is truncated: its data reaches byte {offset + length} of "
                                     f"a {format_size(file_size)} file; re-copy it")


def _json_of(path: Path, argv: list[str]) -> Any:
    """The JSON a qemu-img command prints (under the inspection limits), whatever its exit status
    (`check` exits 2 when it finds corruptions, and says so in its JSON)."""
    try:
        out = run(["prlimit", *INFO_LIMITS, "--", *argv], check=False, timeout=120).stdout
    except ToolError as exc:
        raise ImageError(f"image {path.name}: {argv[1]} failed ({_tool_words(exc)})") from exc
    try:
        return json.loads(out)
    except ValueError as exc:
        raise ImageError(f"image {path.name} is not a readable disk: `qemu-img {argv[1]}` cannot read it; "
                         "re-copy it") from exc


def _qemu_img_info(path: Path, fmt: str) -> dict[str, Any]:
    argv = ["prlimit", *INFO_LIMITS, "--", "qemu-img", "info", "--output=json", "-f", QEMU_DRIVERS[fmt],
            str(path)]
    try:
        out = run(argv, timeout=60).stdout
    except ToolError as exc:
        raise ImageError(f"image {path.name} is not a readable {fmt} disk ({_tool_words(exc)}); re-copy it") from exc
    try:
        info = json.loads(out)
    except ValueError as exc:
        raise ImageError(f"image {path.name}: qemu-img info printed something that is not JSON; is qemu-utils "
                         "installed properly?") from exc
    if not isinstance(info, dict):
        raise ImageError(f"image {path.name}: qemu-img info printed no description")
    return info


def _tool_words(exc: ToolError) -> str:
    text = str(exc)
    return text.split(": ", 1)[1] if ": " in text else text


def copy_limits(virtual_size: int) -> tuple[str, ...]:
    cpu = COPY_CPU_BASE + COPY_CPU_PER_GIB * -(-virtual_size // (1 << 30))
    return (f"--as={COPY_ADDRESS_SPACE}", f"--cpu={cpu}")


def open_virtual_disk(disk: VirtualDisk) -> ToolStream:
    """The virtual disk's bytes, front to back: nbdcopy reading from a private qemu-nbd (started by
    nbdcopy on a socket of its own, read-only, the format given) and writing to our pipe."""
    argv = ["prlimit", *copy_limits(disk.virtual_size), "--",
            "nbdcopy", "--", "[", "qemu-nbd", "--read-only", "--format", QEMU_DRIVERS[disk.format], str(disk.path),
            "]", "-"]
    return ToolStream(argv)
