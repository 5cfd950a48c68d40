"""`bty images`: list the catalog; `bty images add` writes manifests; `bty images pack` recompresses."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn, TransferSpeedColumn
from rich.text import Text

from bty_live.errors import ImageError
from bty_live.flash.known_good import BADGE_UNVERIFIED, known_good_for_entry, unverified_models
from bty_live.flash.ledger import default_ledger_path, read_ledger
from bty_live.image.block_index import BlockIndex
from bty_live.image.catalog import CatalogEntry, compute_digests, image_stem, list_images, resolve_images_dir
from bty_live.image.formats import RAW_SUFFIXES, detect_compression
from bty_live.image.manifest import Manifest, load_manifest, write_manifest
from bty_live.image.pack import DEFAULT_LEVEL, pack_image
from bty_live.image.partition_table import parse_partition_table
from bty_live.image.source import read_head
from bty_live.render.tables import print_table
from bty_live.units import format_size

DESCRIPTION = """\
List the images in the images directory (--images DIR, else $BTY_IMAGES, else the live stick's
images partition, else ./images) with their format, sizes and digest status:
  manifest    a manifest (IMAGE.toml) gives the blake3 the written disk must have
  unverified  no manifest: the image can be flashed, but nothing says what it should hash to
Subcommands: add (write manifests), pack (recompress as parallel-friendly multi-frame zstd).
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("images", help="list images; add manifests; pack images",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    _list_options(parser)
    sub = parser.add_subparsers(dest="images_command", metavar="SUBCOMMAND")
    _list_options(sub.add_parser("list", help="list the images (the default)"))

    add = sub.add_parser(
        "add",
        help="compute and write manifests (IMAGE.toml) for image files",
        description="Decompress each image once to compute its size and blake3 (and the file's sha256), "
        "then write IMAGE.toml beside it. An existing manifest keeps its name, description, os, arch "
        "and tuning fields; only the digests are replaced.",
    )
    add.add_argument("files", nargs="+", type=Path, metavar="FILE")
    _manifest_options(add)
    add.set_defaults(func=run_add)

    pack = sub.add_parser(
        "pack",
        help="recompress an image as multi-frame zstd (fastest to flash) with a manifest",
        description="Recompress SOURCE (any format bty reads: raw, zstd, xz, gzip, bzip2, lz4, zip) as zstd "
        "made of independent 2 MiB frames that declare their sizes: bty decompresses such frames on all cores, "
        "which makes flashing faster than any single-stream decompressor. Any zstd tool still reads the result. "
        "Writes OUTPUT (default: SOURCE's name with .zst) and its manifest.",
    )
    pack.add_argument("source", type=Path, metavar="SOURCE")
    pack.add_argument("-o", "--output", type=Path, metavar="OUTPUT")
    pack.add_argument("--level", type=int, default=DEFAULT_LEVEL, help=f"zstd level (default {DEFAULT_LEVEL})")
    _manifest_options(pack)
    pack.set_defaults(func=run_pack)


def _list_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", metavar="DIR", help="images directory")
    parser.add_argument("--json", action="store_true", help="print the list as JSON")
    parser.set_defaults(func=run_list)


def _manifest_options(parser: argparse.ArgumentParser) -> None:
    """What a manifest says about an image beyond its digests."""
    parser.add_argument("--name", help="image name (default: the file name without its suffixes)")
    parser.add_argument("--description", help="one-line description")
    parser.add_argument("--os", dest="os_name", help="operating system, e.g. debian-12, windows-11, freebsd-14")
    parser.add_argument("--arch", help="architecture (default: from the image's partition types, if any)")


# -- list ---------------------------------------------------------------------------------------


def entry_json(entry: CatalogEntry, known_good_on: list[str] | None = None) -> dict[str, Any]:
    m = entry.manifest
    return {
        "name": entry.name,
        "file": str(entry.path),
        "format": str(entry.compression) if entry.compression else None,
        "file_size": entry.file_size,
        "size": entry.size,
        "digest_status": entry.digest_status,
        "blake3": m.blake3 if m else None,
        "description": m.description if m else "",
        "os": m.os if m else "",
        "arch": m.arch if m else "",
        "bmap": str(entry.bmap_path) if entry.bmap_path else None,
        "problem": entry.problem,
        "known_good_on": known_good_on or [],
    }


IMAGE_COLUMNS = ("NAME", "OS", "FORMAT", "SIZE", "FILE", "DIGEST", "KNOWN-GOOD ON", "DESCRIPTION")


def _known_good_cell(known_good_on: list[str], unverified_on: list[str]) -> str | Text:
    """The models this file is known-good on; "unverified (...)" when the manifest's digest is
    known-good there but no passing run hashed this file's bytes (a copy may be corrupt)."""
    if known_good_on or not unverified_on:
        return ", ".join(known_good_on)
    return Text(f"{BADGE_UNVERIFIED} ({', '.join(unverified_on)})", style="yellow")


def _image_row(e: CatalogEntry, known_good_on: list[str], unverified_on: list[str]) -> list[str | Text]:
    """One row of `bty images`: a table row on a terminal, one plain line into a pipe."""
    if e.problem:
        status = Text(e.problem, style="red")
    elif e.digest_status == "manifest":
        status = Text.assemble(("manifest", "green"), f" {e.manifest.blake3[:12] if e.manifest else ''}")
    else:
        status = Text("unverified", style="yellow")
    return [
        e.name,
        e.manifest.os if e.manifest else "",
        str(e.compression or "?") + (" +bmap" if e.bmap_path else ""),
        format_size(e.size) if e.size is not None else "?",
        e.path.name,
        status,
        _known_good_cell(known_good_on, unverified_on),
        e.manifest.description if e.manifest else "",
    ]


def run_list(args: argparse.Namespace) -> int:
    directory = resolve_images_dir(args.images)
    entries = list_images(directory)
    ledger = read_ledger(default_ledger_path(directory))
    for skipped in ledger.skipped:
        print(f"bty: warning: {ledger.path}: line {skipped.number} is damaged ({skipped.reason}) and was skipped",
              file=sys.stderr)
    known = {e.path: known_good_for_entry(ledger.records, e, directory) for e in entries}
    if args.json:
        print(json.dumps([entry_json(e, known[e.path]) for e in entries], indent=2))
        return 0
    console = Console()
    if not entries:
        console.print(f"no images in {directory}; copy some there, then `bty images add FILE`")
        return 0
    rows = [_image_row(e, known[e.path], unverified_models(ledger.records, e, directory)) for e in entries]
    print_table(IMAGE_COLUMNS, rows, title=f"images in {directory}")
    return 0


# -- add ------------------------------------------------------------------------------------------


def _progress_bar() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        console=Console(stderr=True),
        transient=True,
        disable=not sys.stderr.isatty(),
    )


def _arch_from_image(path: Path) -> str:
    try:
        head = read_head(path, detect_compression(path), None)
    except ImageError:
        return ""
    table = parse_partition_table(head, None)
    return (table.arch_hint if table else None) or ""


def build_manifest(path: Path, args: argparse.Namespace, size: int, blake3: str, sha256: str,
                   index: BlockIndex) -> Manifest:
    old = load_manifest(path)
    if old is not None:
        manifest = old.with_digests(size, blake3, sha256, index)
    else:
        manifest = Manifest(name=image_stem(path), size=size, blake3=blake3, sha256=sha256,
                            arch=_arch_from_image(path), index=index)
    updates = {"name": args.name, "description": args.description, "os": args.os_name, "arch": args.arch}
    from dataclasses import replace

    return replace(manifest, **{k: v for k, v in updates.items() if v})


def run_add(args: argparse.Namespace) -> int:
    if args.name and len(args.files) > 1:
        raise ImageError("--name applies to one image; add the images one at a time")
    for path in args.files:
        detect_compression(path)  # a clear error before a long pass
        file_size = path.stat().st_size
        with _progress_bar() as progress:
            task = progress.add_task(f"hashing {path.name}", total=file_size)

            def advance(read: int, _image_bytes: int, task: TaskID = task) -> None:
                progress.update(task, completed=read)

            digests = compute_digests(path, advance)
        old = load_manifest(path)
        manifest = build_manifest(path, args, digests.size, digests.blake3, digests.sha256, digests.index)
        written = write_manifest(path, manifest)
        change = ""
        if old is not None and old.blake3 != digests.blake3:
            change = f" (digest changed from {old.blake3[:12]}...)"
        print(f"{written}: {manifest.name}, {format_size(digests.size)}, blake3 {digests.blake3[:16]}...{change}")
    return 0


# -- pack -----------------------------------------------------------------------------------------


def run_pack(args: argparse.Namespace) -> int:
    source: Path = args.source
    detect_compression(source)
    output: Path = args.output or source.with_name(image_stem(source) + _raw_suffix(source) + ".zst")
    if output.resolve() == source.resolve():
        raise ImageError(f"pack would overwrite {source.name}; give another name with -o")
    with _progress_bar() as progress:
        task = progress.add_task(f"packing {source.name}", total=source.stat().st_size)
        result = pack_image(source, output, level=args.level,
                            progress=lambda read, _: progress.update(task, completed=read))
    manifest = build_manifest(output, args, result.size, result.blake3, result.sha256, result.index)
    written = write_manifest(output, manifest)
    ratio = result.compressed_size / result.size if result.size else 0
    print(f"{output}: {result.frames} frames, {format_size(result.size)} -> {format_size(result.compressed_size)} "
          f"({ratio:.0%}); manifest {written.name}")
    return 0


def _raw_suffix(source: Path) -> str:
    """demo.img.xz -> ".img"; disk.raw -> ".raw"; win.iso -> ".iso"; else ".img"."""
    for suffix in (s.lower() for s in reversed(source.suffixes)):
        if suffix in RAW_SUFFIXES:
            return suffix
    return ".img"
