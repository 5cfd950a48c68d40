"""`bty flash IMAGE DISK`: plan, confirm, flash, verify, fix up, print the receipt."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bty_live.disk.contents import describe_contents
from bty_live.errors import BtyError, Cancelled, UsageError
from bty_live.flash import engine
from bty_live.flash.plan import FlashOptions, FlashPlan, VerifyMode
from bty_live.flash.prepare import prepare_plan
from bty_live.image.oci import is_oci_reference
from bty_live.image.remote import UrlOptions, check_blake3, is_image_url
from bty_live.image.source import ImageSource
from bty_live.render.events import JsonLines, make_renderer

DESCRIPTION = """\
Write IMAGE onto DISK and prove it landed.

IMAGE is a path, or a name / file name / blake3 prefix from the images directory (`bty images`),
an http:// or https:// URL, or an oci:// reference to an image in an OCI registry. Formats: raw
(.img .raw .iso), zstd (.zst, multi-frame frames decompressed in parallel), xz, gzip, bzip2,
lz4, a zip holding one disk image, detected by their first bytes; virtual disks (.qcow2, .vmdk,
.vhdx, .vdi, .vhd; local files only), read through QEMU (qemu-img, qemu-nbd, nbdcopy, under
resource limits; backing files are refused).

Images from the network (IMAGE = https://HOST/PATH/disk.img.zst):
  The image is streamed straight onto the disk (no temporary file); a dropped connection is
  resumed where it stopped (HTTP Range; the server must support it, and the file must not change
  meanwhile). Certificates are verified against the system's CAs; --ca-file FILE adds a CA bundle.
  The digest the image must have: --blake3 HEX, else the manifest beside it, URL.toml (the file
  `bty images add` writes; none if the server answers 404), else none: the image is flashed
  UNVERIFIED. Unverified means the disk is read back against what was downloaded, not against a
  known digest: a damaged or wrong download would be written and pass. The plan, the last line,
  the receipt (stream_check "unverified (no digest)") say so, and the run never makes the image
  known-good in the ledger. A presigned URL (S3, CDN: credentials in the query string) needs
  --blake3: its manifest's URL cannot be derived. The query string is never shown or recorded;
  the receipt names the URL without it, with the download's resumes and bytes.
  Without a manifest the size of a compressed image is known only once decompressed: a disk too
  small for it is found while writing, and then wiped.

Images in OCI registries (IMAGE = oci://HOST[:PORT]/REPO@sha256:DIGEST, or oci://HOST/REPO:TAG):
  An artifact pushed with `oras push HOST/REPO:TAG disk.img.zst [disk.img.zst.toml]`. A tag
  (default: latest) is resolved to the manifest's digest first; the manifest's bytes must hash
  to it, and the receipt and ledger name oci://HOST/REPO@sha256:..., never the tag. The layer
  flashed is the one whose title has an image suffix; several: choose with #FILE
  (oci://HOST/REPO:TAG#disk.img.zst). The blob streams like a URL's (resume, redirects to the
  registry's storage followed to https:// only, without the registry's credentials), and the
  file is checked against the layer's sha256 digest as it arrives: the run is verified (receipt
  file_check "match"; a mismatch wipes the disk). A layer titled IMAGE.toml (from `bty images
  add`) adds its size and blake3, checked as for a local image; --blake3 overrides it.
  oci:// is https (--ca-file honoured), plain http for localhost, 127.0.0.0/8 and ::1 only;
  oci+http://HOST forces plain http. Public images are pulled anonymously (the registry's token
  dance); a login is read from REGISTRY_AUTH_FILE, $DOCKER_CONFIG/config.json or
  ~/.docker/config.json (docker login, oras login). Tokens and passwords are never shown.

DISK is a device node (/dev/sdb), a /dev/disk/by-* link, a name (sdb), or a selector that must
match exactly one eligible disk: serial=S, wwn=W, path=P, model=M, vendor=V, tran=nvme|sata|usb|
virtio|scsi|mmc|loop, size>=100G, size<=2T, comma-combined, plus largest / smallest.

What happens:
  1. plan: the image's size, digest and partition table; the disk's identity and eligibility
     (never the boot medium, the disk holding the images, a mounted, held, swapping, read-only
     or too-small disk). --dry-run stops here and shows what the disk holds now.
  2. confirm: type the disk's name (skipped with --yes).
  3. write: decompress and write with O_DIRECT in overlapping stages (and blake3-hash the
     stream, unless the read-back is to be compared with the manifest: step 4); all-zero
     ranges are zeroed by the device (BLKZEROOUT) instead of written, so holes read back as
     zeroes too. The disk is opened exclusively and its identity re-checked before the first write.
     Differential (the default when the manifest has a block index and the image is a packed
     zstd or raw file, local or on an HTTP server, e.g. reflashing a CI machine): each 2 MiB block of the disk is read
     and compared with the index first, and only the blocks that differ are decompressed and
     written (the pieces of them that differ); a disk that holds something else is seen from
     up to 64 blocks spread over it (16 MiB read when the first 8 all differ) and written whole.
     --full always writes the whole image.
  4. verify (default: readback): the disk is read back with O_DIRECT and its blake3 must equal
     the manifest's (or --blake3), which proves the image and the write at once; when it does
     not, the image is hashed again alone to say which of the two is wrong. Without a digest
     to match (no manifest), the read-back must equal the stream's blake3. A download keeps
     its stream check too. --verify stream: the stream's blake3 against the manifest's, no
     read-back; off: no comparison. The read-back runs behind the write: every 256 MiB
     written, the disk is flushed and that window read back while the next one is written
     (--readback-after: one pass after the whole write).
  5. fix-ups: a GPT image on a larger disk gets its backup GPT moved to the disk's end;
     --grow extends the last partition to the end of the disk (not its filesystem).
  6. tune: when the manifest names a CIJOE task (or --tune TASK), the written system's root
     filesystem is mounted and the task runs on it (hostname, keys, machine-id, ...).
  7. receipt: JSON saved under $BTY_RECEIPTS (default: receipts/ on the live stick's images
     partition, else ~/.local/state/bty-live/receipts) or --receipt; one record is appended to
     the known-good ledger (ledger.jsonl in the images directory, or --ledger).

Any failure after the first write wipes the partition-table signatures at the start and end of
the disk, so a half-written disk never looks bootable, and prints one line naming the cause.
SIGTERM, SIGHUP and SIGQUIT stop a flash like Ctrl-C (wipe, one line, exit 128+N). Against a
power cut: the old partition tables are zeroed first and the image's first and last MiB are
written last, once the rest is written and verified. A closed output pipe does not stop a flash.
With --json the last line is the receipt (failed runs too), or {"error": ...} before the write.
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from bty_live.errors import exit_codes_help

    parser = subparsers.add_parser(
        "flash",
        help="write an image onto a disk, verified end to end",
        description=DESCRIPTION,
        epilog=exit_codes_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("image", metavar="IMAGE",
                        help="image path, name in the images directory, http(s) URL, or oci:// reference")
    parser.add_argument("disk", metavar="DISK", help="device node, by-id link, name, or selector")
    parser.add_argument("--images", metavar="DIR", help="images directory (default: $BTY_IMAGES, the stick's "
                        "images partition, else ./images)")
    parser.add_argument("--verify", choices=[m.value for m in VerifyMode], default=VerifyMode.READBACK.value,
                        help="readback (default): the disk read back with O_DIRECT against the manifest's blake3 "
                        "(else against the stream's); stream: digest of the decompressed stream only; "
                        "off: no comparison")
    parser.add_argument("--readback-after", action="store_true",
                        help="read the disk back in one pass after the whole write, instead of window by window "
                        "behind it (each window flushed first)")
    parser.add_argument("--full", action="store_true",
                        help="write the whole image, even when the disk could be compared with the manifest's "
                        "block index and only what differs written")
    parser.add_argument("--grow", action="store_true", help="grow the last partition to the end of the disk")
    parser.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    parser.add_argument("--dry-run", "-n", action="store_true",
                        help="print the plan and what the disk holds now; write nothing")
    parser.add_argument("--json", action="store_true",
                        help="print progress events as JSON, one per line, then the receipt")
    parser.add_argument("--receipt", metavar="FILE", type=Path, help="where to save the JSON receipt")
    parser.add_argument("--tune", metavar="TASK|off",
                        help="CIJOE task that tunes the written system (default: the manifest's [tune] task); "
                        "off skips tuning")
    parser.add_argument("--ledger", metavar="FILE", type=Path,
                        help="known-good ledger to append to (default: ledger.jsonl in the images directory)")
    parser.add_argument("--no-zeroout", action="store_true",
                        help="write zero ranges as data instead of asking the device to zero them")
    parser.add_argument("--no-preflight", action="store_true", help="skip the fake-capacity check of USB disks")
    parser.add_argument("--blake3", metavar="HEX",
                        help="a URL's or oci:// image's digest (blake3 of the decompressed image, 64 hex digits), "
                        "checked instead of URL.toml or the artifact's manifest; needed for a presigned URL")
    parser.add_argument("--ca-file", metavar="FILE", type=Path,
                        help="CA certificates (PEM) to verify an https:// image's server (or an OCI registry) "
                        "with, besides the system's")
    parser.set_defaults(func=run)


def build_plan(args: argparse.Namespace) -> FlashPlan:
    options = FlashOptions(
        verify=VerifyMode(args.verify),
        readback_behind=not args.readback_after,
        differential=not args.full,
        grow=args.grow,
        zeroout=False if args.no_zeroout else None,
        preflight=False if args.no_preflight else None,
        tune=args.tune,
        ledger=args.ledger,
        receipt=args.receipt,
    )
    return prepare_plan(args.image, args.disk, options, args.images, url_options(args))


def url_options(args: argparse.Namespace) -> UrlOptions | None:
    """--blake3 and --ca-file, which only an image given by URL (or oci:// reference) takes."""
    if not is_image_url(args.image) and not is_oci_reference(args.image):
        if args.blake3 or args.ca_file:
            raise UsageError("--blake3 and --ca-file are for an image given by URL; a local image's digest is "
                             "in its manifest (`bty images add`)")
        return None
    return UrlOptions(blake3=check_blake3(args.blake3) if args.blake3 else None, cafile=args.ca_file)


def plan_json(plan: FlashPlan, contents: list[str]) -> dict[str, object]:
    image: ImageSource = plan.image
    return {
        "plan": {
            "image": image.location,
            "name": image.name,
            "compression": str(image.compression),
            "size": image.size,
            "size_source": image.size_source,
            "blake3": image.expected_blake3,
            "file_digest": image.file_digest.text if image.file_digest else None,
            "target": plan.target.path,
            "target_size": plan.target.size,
            "serial": plan.target.serial,
            "model": plan.target.model,
            "verify": str(plan.options.verify),
            "relocate_backup_gpt": plan.relocate_backup_gpt,
            "grow_last_partition": plan.grow_last_partition,
            "notes": list(plan.notes),
            "warnings": list(plan.warnings),
            "target_contents": contents,
        }
    }


def confirm(plan: FlashPlan, contents: list[str]) -> None:
    name = plan.disk.name
    if not sys.stdin.isatty():
        raise UsageError(f"refusing to erase {plan.disk.path} without confirmation: stdin is not a terminal; "
                         "pass --yes")
    print(f"\nEverything on {plan.disk.path} will be destroyed:", file=sys.stderr)
    for line in contents:
        print(f"  {line}", file=sys.stderr)
    try:
        answer = input(f"Type the disk's name ({name}) to erase it and write {plan.image.name}: ")
    except EOFError:
        answer = ""
    if answer.strip() != name:
        raise Cancelled(f"not confirmed (expected {name!r}); nothing was written")


def error_json(exc: BtyError) -> dict[str, object]:
    """`--json`'s last line for a run that failed before the disk was opened."""
    from bty_live.errors import exit_code_for

    return {"error": {"kind": exc.kind, "message": exc.full_message(), "exit_code": exit_code_for(exc)}}


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except BtyError as exc:
        if args.json:  # a program reading the lines learns how it ended, whatever the phase
            last = {"receipt": exc.receipt.to_dict()} if exc.receipt is not None else error_json(exc)
            print(json.dumps(last), flush=True)
        raise


def _run(args: argparse.Namespace) -> int:
    plan = build_plan(args)
    contents = describe_contents(plan.disk)
    if args.json and args.dry_run:
        print(json.dumps(plan_json(plan, contents)))
        return 0
    if not args.json:
        for line in plan.describe():
            print(line, file=sys.stderr)
    if args.dry_run:
        print(f"\n{plan.disk.path} holds now (would be destroyed):", file=sys.stderr)
        for line in contents:
            print(f"  {line}", file=sys.stderr)
        print("dry run: nothing was written", file=sys.stderr)
        return 0
    if not args.yes:
        confirm(plan, contents)
    renderer = make_renderer(args.json)
    try:
        receipt = engine.flash(plan, renderer).receipt
    finally:
        renderer.close()
    if isinstance(renderer, JsonLines):
        print(json.dumps({"receipt": receipt.to_dict()}))
    else:
        for line in receipt.summary():
            print(line)
    return 0
