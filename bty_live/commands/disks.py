"""`bty disks`: list the disks and say which may be written, and why not."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from rich.text import Text

from bty_live.disk.discovery import discover_disks
from bty_live.disk.eligibility import Assessed, assess_all, eligibility_context
from bty_live.render.tables import print_table
from bty_live.units import format_size, parse_size

COLUMNS = ("NAME", "SIZE", "TRAN", "MODEL", "SERIAL", "ELIGIBLE")

DESCRIPTION = """\
List the disks bty could write, one per line, and whether each is eligible.

columns:
  NAME      kernel name (the device node is /dev/NAME)
  SIZE      capacity, in binary units (GiB = 2^30 bytes)
  TRAN      transport: usb, sata, nvme, scsi, virtio, mmc or loop
  MODEL     model string reported by the disk (a loop device shows its backing file)
  SERIAL    serial number, "-" when the disk reports none
  ELIGIBLE  "yes", or why the disk must not be written

a disk is not eligible when it is the boot medium (it holds / or the images directory,
also through loop devices and their backing files), is a loop device whose backing file
(nested loops resolved) is in the images directory, has a mounted filesystem, is held by
device-mapper/LVM/md, is open for writing by another process, is active swap, is read-only,
has no medium (size 0), or is smaller than --min-size.

Into a pipe or a file the list is plain: one line per disk, nothing wrapped, no colours.
Loop devices with a backing file are listed like other disks. Virtual devices (zram, ram,
dm, md, unbound loop devices, empty drives) are hidden unless --all is given.
"""


def _size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "disks",
        help="list disks and whether each may be written",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", action="store_true",
                        help="print a JSON list of disks with every field, plus `eligible` and `reasons`")
    parser.add_argument("--all", action="store_true", help="also list virtual and empty devices")
    parser.add_argument("--images", metavar="DIR",
                        help="images directory; the disk holding it counts as boot medium "
                             "(default: $BTY_IMAGES, else ./images)")
    parser.add_argument("--min-size", metavar="SIZE", type=_size_arg,
                        help="mark disks smaller than SIZE (e.g. 8G, 16GB) as too small")
    parser.set_defaults(func=run)


def resolve_images_dir(arg: str | None) -> Path:
    """The images directory: the catalog's rule when it exists, else arg, $BTY_IMAGES, ./images."""
    try:
        from bty_live.image.catalog import resolve_images_dir as catalog_rule
    except ImportError:
        return Path(arg or os.environ.get("BTY_IMAGES") or "images")
    return Path(catalog_rule(arg))


def assessed_to_json(item: Assessed) -> dict[str, Any]:
    data = dataclasses.asdict(item.disk)
    data["eligible"] = item.eligible
    data["reasons"] = list(item.reasons)
    return data


def _model_cell(item: Assessed) -> str:
    disk = item.disk
    if disk.loop_backing_file:
        return disk.loop_backing_file
    return " ".join(part for part in (disk.vendor, disk.model) if part) or "-"


def _render_table(assessed: list[Assessed]) -> None:
    rows: list[list[str | Text]] = []
    for item in assessed:
        disk = item.disk
        verdict = Text("yes", style="green") if item.eligible else Text("; ".join(item.reasons), style="red")
        rows.append([disk.name, format_size(disk.size), disk.transport, _model_cell(item), disk.serial or "-",
                     verdict])
    print_table(COLUMNS, rows, right=("SIZE",), boxed=False)


def run(args: argparse.Namespace) -> int:
    images_dir = resolve_images_dir(args.images)
    ctx = eligibility_context(images_dir=images_dir, image_size=args.min_size)
    assessed = assess_all(discover_disks(include_virtual=args.all), ctx)
    if args.json:
        print(json.dumps([assessed_to_json(item) for item in assessed], indent=2))
    elif not assessed:
        print("no disks found (use --all to include virtual and empty devices)")
    else:
        _render_table(assessed)
    return 0
