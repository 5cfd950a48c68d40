"""`bty inspect IMAGE`: what an image file holds, before anything is written.

Gathering (`inspect_image`) is separate from rendering (`render`, `to_json`) so the TUI can
show the same `Inspection` without the terminal code.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from bty_live.errors import ImageError
from bty_live.image.bmap import Bmap, find_bmap_sidecar, load_bmap
from bty_live.image.formats import (
    Compression,
    ZippedImage,
    detect_compression,
    open_zipped_image,
    probe_decompressed_size,
    suffix_list,
)
from bty_live.image.fsprobe import FsInfo, Region, probe_filesystems, probe_regions
from bty_live.image.manifest import load_manifest
from bty_live.image.optical import optical_only_warning
from bty_live.image.partition_table import is_iso9660
from bty_live.image.partitions import Partition, PartitionTable
from bty_live.image.source import HEAD_BYTES, read_head, read_partition_table
from bty_live.units import format_size

DESCRIPTION = """\
Show what an image file holds without writing it anywhere: its compression, its compressed
and decompressed sizes, whether a manifest records its digest, its bmap sidecar, and its
partition table with the filesystem in each partition.

Only the start of the image is decompressed: up to the first MiB of the last partition
(and the last logical partition's EBR on MBR disks).
The digest is not recomputed (`bty images add` does that).
"""

EPILOG = """\
examples:
  bty inspect images/debian-12.img.zst
  bty inspect --json images/debian-12.img.zst | jq '.partition_table.partitions'
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="show an image's format, sizes, digest status, bmap and partitions",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("image", metavar="IMAGE", type=Path,
                        help=f"image file ({suffix_list()})")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.set_defaults(func=run)


# --- gathering ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ManifestSummary:
    """The two manifest facts inspect shows."""

    size: int | None
    blake3: str | None


def read_manifest_summary(image: Path) -> ManifestSummary | None:
    """The manifest IMAGE.toml beside the image, or None; a broken one raises ImageError."""
    manifest = load_manifest(image)
    if manifest is None:
        return None
    return ManifestSummary(size=manifest.size, blake3=manifest.blake3)


@dataclass(frozen=True)
class BmapSummary:
    path: Path
    bmap: Bmap | None
    error: str | None = None  # why the sidecar cannot be used
    problems: tuple[str, ...] = ()  # it parses, but does not fit this image


@dataclass(frozen=True)
class Inspection:
    path: Path
    compression: Compression
    compressed_size: int
    decompressed_size: int | None
    size_source: str | None  # "manifest", "header" (zstd/xz/zip/raw metadata), "stream" (image < 1 MiB)
    manifest: ManifestSummary | None
    bmap: BmapSummary | None
    table: PartitionTable | None
    #: partition number -> filesystem; key 0 is the whole image when there is no partition table
    filesystems: dict[int, FsInfo] = field(default_factory=dict)
    iso9660: bool = False
    #: a zip's one disk image
    zipped: ZippedImage | None = None
    #: what flashing it would warn about (bty_live.image.optical)
    warnings: tuple[str, ...] = ()

    @property
    def digest_status(self) -> str:
        if self.manifest is None or self.manifest.blake3 is None:
            return "unverified (no manifest)"
        return (f"manifest: blake3 {self.manifest.blake3[:16]}..., not re-checked "
                "(use `bty images add` to recompute)")


def inspect_image(path: Path) -> Inspection:
    """Everything `bty inspect` shows. Raises ImageError (missing, unknown format) and
    SourceCorruptError (the start of the stream is damaged)."""
    compression = detect_compression(path)
    zipped = open_zipped_image(path) if compression == Compression.ZIP else None
    manifest = read_manifest_summary(path)
    head = read_head(path, compression, None)
    size, source = _decompressed_size(path, compression, manifest, head)
    table = read_partition_table(path, compression, head, size)
    if table is not None:
        filesystems = probe_filesystems(path, table, compression)
    else:
        filesystems = probe_regions(path, [Region(0, 0, size)], compression)
    return Inspection(
        path=path,
        compression=compression,
        compressed_size=path.stat().st_size,
        decompressed_size=size,
        size_source=source,
        manifest=manifest,
        bmap=_bmap_summary(path, size),
        table=table,
        filesystems=filesystems,
        iso9660=is_iso9660(head),
        zipped=zipped,
        warnings=tuple(w for w in (optical_only_warning(head, path.name),) if w),
    )


def _decompressed_size(
    path: Path, compression: Compression, manifest: ManifestSummary | None, head: bytes
) -> tuple[int | None, str | None]:
    if manifest is not None and manifest.size is not None:
        return manifest.size, "manifest"
    probed = probe_decompressed_size(path, compression)
    if probed is not None:
        return probed, "header"
    if len(head) < HEAD_BYTES:
        return len(head), "stream"  # the whole image fit in the head
    return None, None


def _bmap_summary(path: Path, image_size: int | None) -> BmapSummary | None:
    sidecar = find_bmap_sidecar(path)
    if sidecar is None:
        return None
    try:
        bmap = load_bmap(sidecar)
    except ImageError as exc:
        return BmapSummary(sidecar, None, error=str(exc))
    problems: tuple[str, ...] = ()
    if image_size is not None and bmap.image_size != image_size:
        problems = (f"it describes a {bmap.image_size}-byte image, this one has {image_size} bytes: "
                    "it belongs to another image",)
    return BmapSummary(sidecar, bmap, problems=problems)


# --- JSON ---------------------------------------------------------------------------------


def _fs_json(info: FsInfo | None) -> dict[str, Any] | None:
    if info is None:
        return None
    return {"type": info.fstype, "label": info.label, "uuid": info.uuid, "version": info.version,
            "usage": info.usage, "ambivalent": info.ambivalent}


def _table_json(table: PartitionTable, filesystems: dict[int, FsInfo]) -> dict[str, Any]:
    labels = {n: fs.label for n, fs in filesystems.items()}
    root = table.find_root(labels)
    return {
        "scheme": table.scheme,
        "sector_size": table.sector_size,
        "disk_guid": table.disk_guid,
        "first_usable_lba": table.first_usable,
        "last_usable_lba": table.last_usable,
        "backup_lba": table.backup_lba,
        "entry_count": table.entry_count,
        "entry_size": table.entry_size,
        "valid": table.valid,
        "problems": list(table.problems),
        "notes": list(table.notes),
        "arch_hint": table.arch_hint,
        "root_partition": root.number if root else None,
        "end_of_partitions": table.end_of_partitions,
        "partitions": [
            {
                "number": p.number,
                "start": p.start,
                "size": p.size,
                "end": p.end,
                "kind": p.kind,
                "type_id": p.type_id,
                "type_name": p.type_name,
                "name": p.name,
                "uuid": p.uuid,
                "attributes": p.attributes,
                "bootable": p.bootable,
                "filesystem": _fs_json(filesystems.get(p.number)),
            }
            for p in table.partitions
        ],
    }


def _bmap_json(summary: BmapSummary) -> dict[str, Any]:
    data: dict[str, Any] = {
        "path": str(summary.path), "error": summary.error, "problems": list(summary.problems)
    }
    if summary.bmap is not None:
        b = summary.bmap
        data.update(version=b.version, image_size=b.image_size, block_size=b.block_size,
                    blocks_count=b.blocks_count, mapped_blocks_count=b.mapped_blocks_count,
                    mapped_bytes=b.mapped_bytes, ranges=len(b.ranges), checksum_type=b.checksum_type)
    return data


def to_json(ins: Inspection) -> dict[str, Any]:
    return {
        "file": str(ins.path),
        "format": str(ins.compression),
        "zip_member": ({"name": ins.zipped.member.name, "format": str(ins.zipped.compression)}
                       if ins.zipped else None),
        "compressed_size": ins.compressed_size,
        "decompressed_size": ins.decompressed_size,
        "decompressed_size_source": ins.size_source,
        "digest": {
            "status": "manifest" if ins.manifest and ins.manifest.blake3 else "unverified",
            "blake3": ins.manifest.blake3 if ins.manifest else None,
            "text": ins.digest_status,
        },
        "bmap": _bmap_json(ins.bmap) if ins.bmap else None,
        "iso9660": ins.iso9660,
        "warnings": list(ins.warnings),
        "partition_table": _table_json(ins.table, ins.filesystems) if ins.table else None,
        "filesystem": _fs_json(ins.filesystems.get(0)) if ins.table is None else None,
    }


# --- terminal -----------------------------------------------------------------------------


def _size_text(ins: Inspection) -> str:
    if ins.decompressed_size is None:
        return "unknown until decompressed"
    return f"{format_size(ins.decompressed_size)} ({ins.decompressed_size:,} bytes, from {ins.size_source})"


def _bmap_text(summary: BmapSummary | None) -> str:
    if summary is None:
        return "none"
    if summary.bmap is None:
        return f"{summary.path.name}: unusable: {summary.error}"
    b = summary.bmap
    share = 100 * b.mapped_blocks_count / b.blocks_count if b.blocks_count else 0.0
    text = (f"{summary.path.name}: format {b.version}, {format_size(b.mapped_bytes)} mapped of "
            f"{format_size(b.image_size)} ({share:.1f}%) in {len(b.ranges)} ranges, "
            f"checksums: {b.checksum_type or 'none'}")
    return "; ".join((text, *summary.problems))


def _fs_text(info: FsInfo | None) -> tuple[str, str]:
    if info is None:
        return "", ""
    if info.ambivalent:
        return "ambivalent", ""
    return info.fstype or "-", info.label or ""


class _Grid:
    """Two-column key/value grid; values are plain text, never rich markup (names come from images)."""

    def __init__(self) -> None:
        self.table = Table.grid(padding=(0, 2))
        self.table.add_column(style="bold")
        self.table.add_column()

    def add_row(self, key: str, value: str, style: str = "") -> None:
        self.table.add_row(Text(key, style=style), Text(value))


def _summary_grid(ins: Inspection) -> Table:
    grid = _Grid()
    grid.add_row("file", str(ins.path))
    grid.add_row("format", str(ins.compression))
    if ins.zipped is not None:
        grid.add_row("zip member", f"{ins.zipped.member.name} ({ins.zipped.compression})")
    grid.add_row("compressed size", f"{format_size(ins.compressed_size)} ({ins.compressed_size:,} bytes)")
    grid.add_row("decompressed size", _size_text(ins))
    grid.add_row("digest", ins.digest_status)
    grid.add_row("bmap", _bmap_text(ins.bmap))
    for warning in ins.warnings:
        grid.add_row("warning", warning, style="red")
    if ins.table is None:
        fstype, label = _fs_text(ins.filesystems.get(0))
        grid.add_row("partition table", "none" + (" (ISO 9660 image)" if ins.iso9660 else ""))
        grid.add_row("filesystem", f"{fstype} {label}".strip() or "none found")
        return grid.table
    table = ins.table
    grid.add_row("partition table", f"{table.scheme}, {table.sector_size}-byte sectors, "
                 + ("valid" if table.valid else f"{len(table.problems)} problem(s)"))
    if table.disk_guid:
        grid.add_row("disk id", table.disk_guid)
    root = table.find_root({n: fs.label for n, fs in ins.filesystems.items()})
    grid.add_row("root partition", str(root.number) if root else "not found")
    if table.arch_hint:
        grid.add_row("architecture", f"{table.arch_hint} (from the root partition type)")
    for problem in table.problems:
        grid.add_row("problem", problem, style="red")
    for note in table.notes:
        grid.add_row("note", note)
    return grid.table


def _flags(p: Partition, root: Partition | None) -> str:
    flags = ["root"] if root is not None and root.number == p.number else []
    if p.bootable:
        flags.append("boot")
    if p.kind in ("extended", "logical"):
        flags.append(p.kind)
    return ",".join(flags)


def _partitions_table(table: PartitionTable, filesystems: dict[int, FsInfo]) -> Table:
    root = table.find_root({n: fs.label for n, fs in filesystems.items()})
    out = Table(title="partitions", title_justify="left")
    for name, justify in (("#", "right"), ("start", "right"), ("size", "right"), ("type", "left"),
                          ("name", "left"), ("fs", "left"), ("label", "left"), ("flags", "left")):
        out.add_column(name, justify=justify)  # type: ignore[arg-type]
    for p in table.partitions:
        fstype, label = _fs_text(filesystems.get(p.number))
        cells = (str(p.number), format_size(p.start), format_size(p.size), p.type_name, p.name, fstype, label,
                 _flags(p, root))
        out.add_row(*(Text(cell) for cell in cells))
    return out


def render(ins: Inspection, console: Console) -> None:
    console.print(_summary_grid(ins))
    if ins.table is not None and ins.table.partitions:
        console.print(_partitions_table(ins.table, ins.filesystems))


def run(args: argparse.Namespace) -> int:
    ins = inspect_image(args.image)
    if args.json:
        print(json.dumps(to_json(ins), indent=2))
    else:
        render(ins, Console(highlight=False))
    return 0
