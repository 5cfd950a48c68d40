"""`bty capture DISK -o OUT.img.zst`: read a disk into a packed image with its manifest."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bty_live.capture import engine
from bty_live.capture.plan import CaptureOptions, CapturePlan
from bty_live.capture.prepare import prepare_capture
from bty_live.commands.flash import error_json
from bty_live.errors import BtyError, Cancelled
from bty_live.image.pack import DEFAULT_LEVEL
from bty_live.render.events import JsonLines, make_renderer

DESCRIPTION = """\
Read DISK into OUT (a packed image: zstd made of independent 2 MiB frames, which bty flashes on
every core) and write its manifest OUT.toml (name, size, blake3, sha256, os, arch, and where it
was captured from): the reference image the rest of the workflow flashes.

DISK is a device node (/dev/sdb), a /dev/disk/by-* link, a name (sdb), or a selector that must
match exactly one disk that may be captured (serial=S, model=M, tran=usb, size>=100G, ...; see
`bty flash --help`).

What happens:
  1. plan: the disk is refused when it could change while it is read: a filesystem of it is
     mounted, it is active swap, held by device-mapper/LVM/md, or open for writing by another
     program (each named, with the fix). The disk holding the output file is refused too.
     Reading the boot medium is allowed when nothing on it is in use. The output must be new
     (--force replaces it) and its filesystem must have room: less free space than the disk's
     filesystems use is refused (--force tries anyway); less than the worst case (data that
     does not compress) is a warning.
  2. confirm: on a terminal, the plan is shown and a yes is asked for (skipped with --yes; a
     capture changes nothing on the disk, so without a terminal it is not asked).
  3. capture: the disk is opened exclusively (O_EXCL: nobody can mount it until the end) and
     checked again, then read with O_DIRECT, blake3-hashed and compressed on all cores, in
     overlapping stages; all-zero frames cost a memcmp. The image is written to OUT.partial and
     renamed to OUT once complete and synced; then the manifest is written.
  4. receipt: JSON saved under $BTY_RECEIPTS (default: receipts/ on the live stick's images
     partition, else ~/.local/state/bty-live/receipts) or --receipt. No ledger record: the
     ledger is about images flashed onto machines.

--trim captures only up to the end of the last partition (rounded up to a MiB), so the image is
smaller than the disk; a GPT is kept valid: its backup header and entries are regenerated at the
new end and the primary header updated (both CRC32s), as `sgdisk -e` would. Flashing the image
onto a larger disk moves the backup GPT to that disk's end as usual. A disk without a partition
table (or with a damaged one) cannot be trimmed.

Any failure (an I/O error, no space left, Ctrl-C, SIGTERM, SIGHUP, SIGQUIT) removes OUT.partial:
no half-written file is left that looks like an image. Exit codes as for `bty flash`: 7 for a
refused disk, 8 for an I/O error reading the disk or writing OUT, 128+N when signal N stopped it.
With --json the last line is the receipt (failed runs too), or {"error": ...} before the disk
was opened.
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from bty_live.errors import exit_codes_help

    parser = subparsers.add_parser(
        "capture",
        help="read a disk into a packed image with its manifest (the reference image)",
        description=DESCRIPTION,
        epilog=exit_codes_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("disk", metavar="DISK", help="device node, by-id link, name, or selector")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.img.zst",
                        help="the image to write (its manifest goes beside it as OUT.img.zst.toml)")
    parser.add_argument("--trim", action="store_true",
                        help="capture up to the end of the last partition only (GPT kept valid)")
    parser.add_argument("--level", type=int, default=DEFAULT_LEVEL, help=f"zstd level 1..22 (default {DEFAULT_LEVEL})")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing OUT; capture even when the free space looks too small")
    parser.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    parser.add_argument("--json", action="store_true",
                        help="print progress events as JSON, one per line, then the receipt")
    parser.add_argument("--receipt", metavar="FILE", type=Path, help="where to save the JSON receipt")
    parser.add_argument("--name", help="image name (default: OUT's file name without its suffixes)")
    parser.add_argument("--description", help="one-line description (default: where and when it was captured)")
    parser.add_argument("--os", dest="os_name",
                        help="operating system, e.g. debian-12 (default: guessed from the root filesystem's "
                        "os-release, else the filesystems)")
    parser.add_argument("--arch", help="architecture (default: from the partition types, if any)")
    parser.set_defaults(func=run)


def options_from(args: argparse.Namespace) -> CaptureOptions:
    return CaptureOptions(trim=args.trim, level=args.level, force=args.force, name=args.name,
                          description=args.description, os=args.os_name, arch=args.arch, receipt=args.receipt)


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except BtyError as exc:
        if args.json:
            last = {"receipt": exc.receipt.to_dict()} if exc.receipt is not None else error_json(exc)
            print(json.dumps(last), flush=True)
        raise


def _run(args: argparse.Namespace) -> int:
    plan = prepare_capture(args.disk, args.output, options_from(args))
    if not args.json:
        for line in plan.describe():
            print(line, file=sys.stderr)
    if not args.yes and sys.stdin.isatty():
        confirm(plan)
    renderer = make_renderer(args.json)
    try:
        result = engine.capture(plan, renderer)
    finally:
        renderer.close()
    if isinstance(renderer, JsonLines):
        print(json.dumps({"receipt": result.receipt.to_dict()}))
    else:
        for line in result.receipt.summary():
            print(line)
    return 0


def confirm(plan: CapturePlan) -> None:
    try:
        answer = input(f"Capture {plan.disk.path} into {plan.output.name}? [y/N] ")
    except EOFError:
        answer = ""
    if answer.strip().lower() not in ("y", "yes"):
        raise Cancelled("not confirmed; nothing was captured")
