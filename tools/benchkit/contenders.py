"""The tools measured, one row each: bty, its peers and the stages bty is made of."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tools.benchkit.artifacts import Artifacts

TARGET = "{target}"  # placeholder in a command for the loop device of the run

#: the stage "zstandard decompression alone": what bty's reader does, minus hashing and writing
PY_DECOMPRESS = """\
import sys, zstandard
path, expected = sys.argv[1], int(sys.argv[2])
buf = memoryview(bytearray(4 << 20))
total = 0
with open(path, "rb", buffering=0) as raw:
    reader = zstandard.ZstdDecompressor(max_window_size=1 << 31).stream_reader(
        raw, read_size=4 << 20, read_across_frames=True)
    while n := reader.readinto(buf):
        total += n
if total != expected:
    sys.exit(f"decompressed {total} bytes, expected {expected}")
"""


#: the two compressed files every tool runs on: (key suffix, label suffix)
VARIANTS = (("", "single-frame .zst"), ("-packed", "packed .zst"))


@dataclass(frozen=True)
class Contender:
    """One row of the table: a command (or pipeline) run the same way every time."""

    key: str  # short name for --only and the JSON
    label: str  # shown in the table
    stages: tuple[tuple[str, ...], ...]  # argv of each process of the pipeline
    kind: str  # "bty", "peer" or "stage"
    needs_target: bool = True
    stdout_to_null: bool = False  # the last process writes its output to /dev/null
    gpt_fixups: bool = False  # moves the backup GPT to the end of the larger target (see target_matches)


def contenders(art: Artifacts, bty: Path) -> list[Contender]:
    image, size = str(art.image), str(art.image_size)
    rows = [Contender("dd-raw", "dd raw image, O_DIRECT (stage: write)",
                      (("dd", f"if={image}", f"of={TARGET}", "bs=4M", "oflag=direct", "status=none"),), "peer")]
    for suffix, variant in VARIANTS:
        zst = str(art.zst) if not suffix else str(art.packed) if art.packed else None
        if zst is None:
            continue
        flash = (str(bty), "flash", zst, TARGET, "--yes", "--verify")
        zstd_dd = (("zstd", "-dc", zst),
                   ("dd", f"of={TARGET}", "bs=4M", "iflag=fullblock", "oflag=direct", "status=none"))
        bmap = ("bmaptool", "copy", "--bmap", str(art.bmap), zst, TARGET)
        rows += [
            Contender(f"bty-readback{suffix}", f"bty --verify readback, {variant}", ((*flash, "readback"),), "bty",
                      gpt_fixups=True),
            Contender(f"bty-stream{suffix}", f"bty --verify stream, {variant}", ((*flash, "stream"),), "bty",
                      gpt_fixups=True),
            Contender(f"bty-off{suffix}", f"bty --verify off, {variant}", ((*flash, "off"),), "bty",
                      gpt_fixups=True),
            Contender(f"zstd-dd{suffix}", f"zstd -dc | dd, {variant}", zstd_dd, "peer"),
            Contender(f"bmaptool{suffix}", f"bmaptool copy, {variant}", (bmap,), "peer"),
            Contender(f"bmaptool-noverify{suffix}", f"bmaptool --no-verify, {variant}",
                      ((*bmap[:2], "--no-verify", *bmap[2:]),), "peer"),
            Contender(f"py-decompress{suffix}", f"stage: zstandard decompress, {variant}",
                      ((sys.executable, "-c", PY_DECOMPRESS, zst, size),), "stage", needs_target=False),
            Contender(f"zstd-null{suffix}", f"stage: zstd -dc > /dev/null, {variant}", (("zstd", "-dc", zst),),
                      "stage", needs_target=False, stdout_to_null=True),
        ]
    if art.qcow2 is not None:
        rows += qcow2_contenders(art.qcow2, bty)
    return rows


def qcow2_contenders(qcow2: Path, bty: Path) -> list[Contender]:
    """A cloud-style qcow2 (compressed clusters): bty (through qemu-nbd + nbdcopy) against
    `qemu-img convert` straight onto the device, and the two steps people take (convert, then dd)."""
    image = str(qcow2)
    flash = (str(bty), "flash", image, TARGET, "--yes", "--verify")
    scratch = f"{qcow2.with_suffix('')}.scratch.raw"
    convert_then_dd = (f"qemu-img convert -f qcow2 -O raw {image} {scratch} && "
                       f"dd if={scratch} of={TARGET} bs=4M oflag=direct status=none; rm -f {scratch}")
    return [
        Contender("bty-readback-qcow2", "bty --verify readback, qcow2 (compressed)", ((*flash, "readback"),), "bty",
                  gpt_fixups=True),
        Contender("bty-stream-qcow2", "bty --verify stream, qcow2 (compressed)", ((*flash, "stream"),), "bty",
                  gpt_fixups=True),
        Contender("qemu-img-qcow2", "qemu-img convert -t none onto the device, qcow2",
                  (("qemu-img", "convert", "-f", "qcow2", "-O", "raw", "-t", "none", "-n", image, TARGET),), "peer"),
        Contender("qemu-img-dd-qcow2", "qemu-img convert to a file, then dd, qcow2",
                  (("sh", "-c", convert_then_dd),), "peer"),
        Contender("nbdcopy-null-qcow2", "stage: nbdcopy from qemu-nbd > /dev/null, qcow2",
                  (("nbdcopy", "--", "[", "qemu-nbd", "--read-only", "--format", "qcow2", image, "]", "-"),),
                  "stage", needs_target=False, stdout_to_null=True),
    ]


def bty_flash_usable(bty: Path) -> str | None:
    """None when `bty flash --help` works, else why not."""
    if not bty.exists():
        return f"{bty} does not exist (run `make setup`)"
    try:
        proc = subprocess.run([str(bty), "flash", "--help"], capture_output=True, text=True, timeout=60,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`bty flash --help` did not run: {exc}"
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        return f"`bty flash --help` failed: {detail[-1] if detail else proc.returncode}"
    return None
