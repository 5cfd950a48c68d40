#!/usr/bin/env python3
"""Demo: flash a small real disk image onto a loop device with `bty`, then prove what landed.

`make demo` runs it. Steps, each printed as it happens:
  1. build demo-out/demo.img (256 MiB: GPT, ESP, ext4 with host files) unless it exists
  2. compress it to demo-out/images/demo.img.zst and record it with `bty images add`
  3. attach a fresh 512 MiB sparse file (demo-out/target.img) as a loop device
  4. `bty flash demo-out/images/demo.img.zst /dev/loopN --yes` (read-back verify is the default)
  5. check the target: `sgdisk -v`, `sfdisk --json`, each partition byte-compared with the image,
     `e2fsck -fn` on the root filesystem, the ESP listed with mtools
  6. show where bty saved its receipt
The loop device is detached at the end whatever happens; re-running starts from a fresh target.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python tools/demo.py`: make `tools` importable
    sys.path.insert(0, str(REPO))

from tools.mkdiskimage import MIB, build_disk_image  # noqa: E402

OUT = Path("demo-out")  # relative to the repository, so the printed commands read naturally
IMAGE = OUT / "demo.img"
COMPRESSED = OUT / "images" / "demo.img.zst"
MANIFEST = COMPRESSED.with_name(COMPRESSED.name + ".toml")
TARGET_FILE = OUT / "target.img"
RECEIPTS = OUT / "receipts"
BTY = Path(".venv") / "bin" / "bty"
IMAGE_SIZE = 256 * MIB
TARGET_SIZE = 512 * MIB


class DemoError(RuntimeError):
    pass


@dataclass(frozen=True)
class PartitionRange:
    number: int
    name: str
    start: int  # bytes
    size: int  # bytes


# --- printing and running ----------------------------------------------------------------------------


def step(number: int, message: str) -> None:
    print(f"\n[{number}] {message}", flush=True)


def note(message: str) -> None:
    print(f"    {message}", flush=True)


def show(argv: Sequence[str], *, env: dict[str, str] | None = None) -> None:
    """Print the command, run it with its output going straight to the terminal."""
    print(f"    $ {' '.join(argv)}", flush=True)
    code = subprocess.run(list(argv), cwd=REPO, env=env, check=False).returncode
    if code != 0:
        raise DemoError(f"{argv[0]} exited with status {code}")


def capture(argv: Sequence[str], *, echo: bool = True,
            check: bool = True) -> subprocess.CompletedProcess[str]:
    if echo:
        print(f"    $ {' '.join(argv)}", flush=True)
    proc = subprocess.run(list(argv), cwd=REPO, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise DemoError(f"{argv[0]} failed: {(proc.stderr or proc.stdout).strip()}")
    return proc


def indent(text: str) -> str:
    return "\n".join(f"      {line}" for line in text.rstrip().splitlines())


# --- the steps ------------------------------------------------------------------------------------------


def build_image(rebuild: bool) -> None:
    step(1, f"a real disk image: {IMAGE} ({IMAGE_SIZE // MIB} MiB, GPT + ESP + ext4 with host files)")
    path = REPO / IMAGE
    if path.exists() and not rebuild:
        note(f"{IMAGE} exists; reusing it (--rebuild makes a new one)")
        return
    info = build_disk_image(path, IMAGE_SIZE, fill=0.5)
    for part in info.partitions:
        note(f"p{part.number} {part.name:<8} {part.filesystem:<5} at {part.start // MIB} MiB, "
             f"{part.size // MIB} MiB")
    note(f"{info.file_count} files, {info.data_bytes / MIB:.0f} MiB of data, "
         f"built in {info.build_seconds:.1f} s")


def compress_and_add() -> None:
    step(2, f"compress it and record it: {COMPRESSED}")
    image, compressed, manifest = REPO / IMAGE, REPO / COMPRESSED, REPO / MANIFEST
    compressed.parent.mkdir(parents=True, exist_ok=True)
    if not compressed.exists() or compressed.stat().st_mtime < image.stat().st_mtime:
        show(["zstd", "-T0", "-3", "-q", "-f", str(IMAGE), "-o", str(COMPRESSED)])
        manifest.unlink(missing_ok=True)
    else:
        note(f"{COMPRESSED} is up to date")
    note(f"{image.stat().st_size // MIB} MiB -> {compressed.stat().st_size / MIB:.1f} MiB")
    if not manifest.exists():
        show([str(BTY), "images", "add", str(COMPRESSED)])
    else:
        note(f"manifest {MANIFEST} is up to date")


def attach_target() -> str:
    step(3, f"a fresh {TARGET_SIZE // MIB} MiB target disk: {TARGET_FILE} on a loop device")
    backing = REPO / TARGET_FILE
    backing.unlink(missing_ok=True)
    with open(backing, "wb") as f:
        f.truncate(TARGET_SIZE)
    device = capture(["losetup", "-f", "--show", str(TARGET_FILE)]).stdout.strip()
    note(f"attached {device}")
    return device


def flash(device: str) -> float:
    step(4, f"flash: bty writes the image onto {device} and reads it back to verify")
    (REPO / RECEIPTS).mkdir(parents=True, exist_ok=True)
    started = time.time()
    show([str(BTY), "flash", str(COMPRESSED), device, "--yes"],
         env={**os.environ, "BTY_RECEIPTS": str(REPO / RECEIPTS)})
    return started


def check_target(device: str) -> None:
    step(5, f"what is on {device} now")
    problems: list[str] = []
    verify = capture(["sgdisk", "-v", device], check=False)
    print(indent(verify.stdout + verify.stderr))
    if verify.returncode != 0 or "No problems found" not in verify.stdout:
        problems.append("sgdisk -v found problems in the target's partition table")
    table = capture(["sfdisk", "--json", device]).stdout
    print(indent(table))
    problems += compare_partitions(device, read_partitions(str(IMAGE)))
    target_parts = read_partitions(device)
    root = target_parts[-1]
    fsck = capture(["e2fsck", "-fn", f"{device}?offset={root.start}"], check=False)
    summary = fsck.stdout.strip().splitlines()[-1] if fsck.stdout.strip() else fsck.stderr.strip()
    note(f"e2fsck -fn on the root filesystem: {summary}")
    if fsck.returncode != 0:
        problems.append("e2fsck found problems in the root filesystem")
    if len(target_parts) > 1:
        esp = target_parts[0]
        listing = subprocess.run(["mdir", "-i", f"{device}@@{esp.start}", "-/", "-b", "::/"], cwd=REPO,
                                 capture_output=True, text=True, check=False,
                                 env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})
        note("files on the ESP (mtools):")
        print(indent(listing.stdout or listing.stderr))
    if problems:
        raise DemoError("; ".join(problems))


def read_partitions(disk: str) -> list[PartitionRange]:
    table = json.loads(capture(["sfdisk", "--json", disk], echo=False).stdout)["partitiontable"]
    sector = int(table.get("sectorsize", 512))
    return [PartitionRange(i, str(p.get("name", "")), int(p["start"]) * sector, int(p["size"]) * sector)
            for i, p in enumerate(table["partitions"], 1)]


def compare_partitions(device: str, image_partitions: Sequence[PartitionRange]) -> list[str]:
    """Each partition of the image, byte for byte, at the same place on the target."""
    problems = []
    for part in image_partitions:
        proc = capture(["cmp", "-n", str(part.size), "-i", f"{part.start}:{part.start}", str(IMAGE), device],
                       echo=False, check=False)
        verdict = "identical to the image" if proc.returncode == 0 else f"DIFFERS: {proc.stdout.strip()}"
        note(f"p{part.number} {part.name:<8} {part.size // MIB:>4} MiB at {part.start // MIB:>3} MiB: "
             f"{verdict}")
        if proc.returncode != 0:
            problems.append(f"partition {part.number} on the target differs from the image")
    return problems


def show_receipt(since: float) -> None:
    step(6, "the receipt")
    directory = REPO / RECEIPTS
    fresh = sorted((p for p in directory.glob("*.json") if p.stat().st_mtime >= since - 1),
                   key=lambda p: p.stat().st_mtime)
    if not fresh:
        note(f"no new receipt in {RECEIPTS} (does this bty honour BTY_RECEIPTS?)")
        return
    receipt = fresh[-1]
    note(f"saved at {receipt.relative_to(REPO)}")
    try:
        data = json.loads(receipt.read_text())
    except (OSError, ValueError) as exc:
        note(f"unreadable: {exc}")
        return
    for key in ("result", "image_blake3", "stream_check", "readback_check", "fixups", "phases"):
        if key in data:
            note(f"{key}: {data[key]}")


# --- main --------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rebuild", action="store_true", help="build a new demo image even if one exists")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("demo: needs root for the loop device", file=sys.stderr)
        return 2
    if not (REPO / BTY).exists():
        print(f"demo: {BTY} is missing; run `make setup`", file=sys.stderr)
        return 2
    device = None
    try:
        build_image(args.rebuild)
        compress_and_add()
        device = attach_target()
        started = flash(device)
        check_target(device)
        show_receipt(started)
    except (DemoError, OSError, RuntimeError) as exc:
        print(f"\ndemo: FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        if device is not None:
            subprocess.run(["losetup", "-d", device], check=False, capture_output=True)
            print(f"\n    detached {device}", flush=True)
    print("\ndemo: done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
