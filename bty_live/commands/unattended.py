"""`bty unattended`: run the flash or capture the kernel command line asks for (or --cmdline, to test)."""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = """\
Flash without a person at the keyboard, as the kernel command line says:

  bty.image=NAME|BLAKE3-PREFIX   the image (from the images directory)
  bty.disk=SELECTOR              e.g. serial=ABC123, tran=nvme,size>=100G, path=/dev/disk/by-id/...
  bty.verify=readback|stream|off (default readback)
  bty.tune=TASK|off              post-flash tuning (default: the manifest's task)
  bty.after=reboot|poweroff|shell|tui   what to do once done (default poweroff)
  bty.dry_run=1                  show the plan and the target's contents; write nothing

Or capture a disk into the stick's images partition (the golden machine's image):

  bty.capture=SELECTOR           the disk to read, selected as by bty.disk=
  bty.capture_name=NAME          the image NAME.img.zst (default: the disk's model and serial and
                                 the UTC date, e.g. Samsung_SSD_870-S3Z1NB0K-2026-12-03)
  bty.capture_trim=1             up to the end of the last partition only (as bty capture --trim)
  bty.after=, bty.dry_run=1      as for a flash; bty.image=, bty.disk=, bty.verify=, bty.tune= are
                                 refused with bty.capture=
  e.g. bty.capture=serial=S3Z1NB0K bty.capture_name=golden-2026-12 bty.after=poweroff

The capture goes into the images partition only, never over an existing image of that name (pick
another name), and is refused when the partition has less room than the disk's filesystems hold.

Progress goes to every active console (serial included) and to a log on the images partition;
the receipt is saved there too. Anything wrong (unknown key, a selector matching zero or several
disks, a digest mismatch, an I/O error) stops with one clear line, writes nothing more and never
reboots; the exit code says why (see `bty --help`), and the live stick then starts the TUI.
A machine already flashed (or captured) by the same request is not flashed (captured) again:
no reboot loops when the stick stays in; delete the marker under unattended/ on the stick to
run it again. Without bty.image= or bty.capture= on the command line this does nothing and
exits 0.
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("unattended",
                                   help="flash or capture as the kernel command line says (bty.image=, bty.capture=)",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cmdline", metavar="TEXT", help="use TEXT instead of /proc/cmdline")
    parser.add_argument("--images", metavar="DIR", help="images directory")
    parser.add_argument("--no-consoles", action="store_true",
                        help="print only to stdout, not to the other active consoles")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bty_live.errors import BtyError
    from bty_live.image.catalog import resolve_images_dir
    from bty_live.stick.unattended import (
        CaptureRequest,
        Consoles,
        describe_failure,
        log_path,
        parse_cmdline,
        read_cmdline,
        run_unattended,
    )
    from bty_live.stick.unattended_capture import run_unattended_capture
    from bty_live.system.actions import systemd_actions

    cmdline = args.cmdline if args.cmdline is not None else read_cmdline()
    images_dir = resolve_images_dir(args.images)
    try:
        request = parse_cmdline(cmdline)
    except BtyError as exc:
        print(describe_failure(exc), file=sys.stderr)
        raise
    if request is None:
        print("bty unattended: no bty.image= or bty.capture= on the kernel command line; nothing to do")
        return 0
    log = log_path(images_dir) if images_dir.is_dir() else None
    consoles = Consoles(devices=[] if args.no_consoles else None, log=log)
    try:
        if isinstance(request, CaptureRequest):
            return run_unattended_capture(request, images_dir=images_dir, consoles=consoles,
                                          actions=systemd_actions())
        return run_unattended(request, images_dir=images_dir, consoles=consoles, actions=systemd_actions())
    except BtyError as exc:
        consoles.line(describe_failure(exc))
        raise
    finally:
        consoles.close()
