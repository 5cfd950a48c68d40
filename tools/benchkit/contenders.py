"""The tools measured, one row each: bty, its peers and the stages bty is made of.

Rows of the raw image (one each per size and setup): dd-raw (dd of the whole image, O_DIRECT),
and the stages alone, timed by tools/benchkit/stages.py: hash, write-data, zeroout. Rows of each
format (key suffix: "" zst, -packed, -xz, -gz, -qcow2): bty-readback, bty-stream (and bty-off
for the zstd files), the format's own `X -dc | dd` (zstd-dd, zstd-dd-packed, xz-dd, gzip-dd),
bmaptool (and bmaptool-noverify for the zstd files), py-decompress (the decompressor bty uses,
alone) and `X -dc > /dev/null` (zstd-null, zstd-null-packed, xz-null, gzip-null).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tools.benchkit.artifacts import Artifacts

TARGET = "{target}"  # placeholder in a command for the loop device of the run
RECEIPT = "{receipt}"  # placeholder in a bty command for the run's receipt file
STAGES = str(Path(__file__).with_name("stages.py"))  # the stages alone (tools/benchkit/stages.py)
PEER_DD = ("dd", f"of={TARGET}", "bs=4M", "iflag=fullblock", "oflag=direct", "status=none")

#: the formats, in table order: (--formats key, row key suffix, label)
FORMATS = (("zst", "", "single-frame .zst"), ("packed", "-packed", "packed .zst"), ("xz", "-xz", ".xz"),
           ("gz", "-gz", ".gz"), ("qcow2", "-qcow2", "qcow2 (compressed)"))
FORMAT_KEYS = tuple(key for key, _, _ in FORMATS)


@dataclass(frozen=True)
class Format:
    """One compressed file of the image and how its own CLI decompresses it."""

    key: str  # zst, packed, xz, gz, qcow2
    suffix: str  # of its rows' keys ("" for zst: the keys the bench had before the other formats)
    label: str
    path: Path
    cli: tuple[str, ...]  # decompress to stdout: the format's own peer (`X -dc | dd`)
    py: str | None  # the in-process decompressor, as stages.py names it
    peer_key: str  # its `X -dc | dd` row
    null_key: str  # its `X -dc > /dev/null` row

    @property
    def cli_text(self) -> str:
        return " ".join(self.cli)


def formats_of(art: Artifacts, chosen: Sequence[str]) -> list[Format]:
    """The chosen formats that the artifacts have a file for (qcow2 has no CLI peer rows here:
    see qcow2_contenders)."""
    files = {"zst": art.zst, "packed": art.packed, "xz": art.xz, "gz": art.gz, "qcow2": art.qcow2}
    tools: dict[str, tuple[tuple[str, ...], str | None, str]] = {
        "zst": (("zstd", "-dc"), "zst", "zstd"), "packed": (("zstd", "-dc"), "zst-frames", "zstd"),
        "xz": (("xz", "-dc", "-T0"), None, "xz"), "gz": ((art.gz_tool, "-dc"), "gz", "gzip"),
        "qcow2": ((), None, "qemu-img")}
    out = []
    for key, suffix, label in FORMATS:
        path = files[key]
        if key not in chosen or path is None:
            continue
        cli, py, name = tools[key]
        tail = suffix if key in ("packed", "qcow2") else ""  # zstd-dd, zstd-dd-packed, xz-dd, gzip-dd
        out.append(Format(key, suffix, label, path, cli, py, f"{name}-dd{tail}", f"{name}-null{tail}"))
    return out


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
    fmt: str | None = None  # the format (Format.key) it reads; None: the raw image
    #: the command prints `seconds=X` as its last line: its own timing of the stage, used
    #: instead of the process's wall time (stages.py)
    self_timed: bool = False
    check_target: bool = True  # compare the target with the image afterwards


def contenders(art: Artifacts, bty: Path, formats: Sequence[Format]) -> list[Contender]:
    """Every row for these formats: the raw-image stages first, then each format's rows."""
    image, size = str(art.image), str(art.image_size)
    py = sys.executable
    rows = [
        Contender("dd-raw", "dd raw image, O_DIRECT (whole image)",
                  (("dd", f"if={image}", f"of={TARGET}", "bs=4M", "oflag=direct", "status=none"),), "peer"),
        Contender("hash", "stage: blake3 of the raw image, 1 thread", ((py, STAGES, "hash", image),), "stage",
                  needs_target=False, self_timed=True),
        Contender("write-data", "stage: O_DIRECT write of the data", ((py, STAGES, "write-data", image, TARGET),),
                  "stage", self_timed=True),
        Contender("zeroout", "stage: BLKZEROOUT of the zero runs", ((py, STAGES, "zeroout", image, TARGET),),
                  "stage", self_timed=True, check_target=False),
    ]
    for fmt in formats:
        if fmt.key == "qcow2":
            rows += qcow2_contenders(fmt.path, bty)
            continue
        path, variant, suffix = str(fmt.path), fmt.label, fmt.suffix
        flash = (str(bty), "flash", path, TARGET, "--yes", "--receipt", RECEIPT, "--verify")
        bmap = ("bmaptool", "copy", "--bmap", str(art.bmap), path, TARGET)
        rows += [
            Contender(f"bty-readback{suffix}", f"bty --verify readback, {variant}", ((*flash, "readback"),), "bty",
                      gpt_fixups=True, fmt=fmt.key),
            Contender(f"bty-stream{suffix}", f"bty --verify stream, {variant}", ((*flash, "stream"),), "bty",
                      gpt_fixups=True, fmt=fmt.key),
        ]
        if fmt.key in ("zst", "packed"):
            rows.append(Contender(f"bty-off{suffix}", f"bty --verify off, {variant}", ((*flash, "off"),), "bty",
                                  gpt_fixups=True, fmt=fmt.key))
        rows += [
            Contender(fmt.peer_key, f"{fmt.cli_text} | dd, {variant}", ((*fmt.cli, path), PEER_DD), "peer",
                      fmt=fmt.key),
            Contender(f"bmaptool{suffix}", f"bmaptool copy, {variant}", (bmap,), "peer", fmt=fmt.key),
        ]
        if fmt.key in ("zst", "packed"):
            rows.append(Contender(f"bmaptool-noverify{suffix}", f"bmaptool --no-verify, {variant}",
                                  ((*bmap[:2], "--no-verify", *bmap[2:]),), "peer", fmt=fmt.key))
        if fmt.py is not None:
            what = {"zst": "zstandard", "zst-frames": "zstandard frames, threads", "gz": "python gzip"}[fmt.py]
            rows.append(Contender(f"py-decompress{suffix}", f"stage: {what}, {variant}",
                                  ((py, STAGES, "decompress", fmt.py, path, size),), "stage", needs_target=False,
                                  fmt=fmt.key, self_timed=True))
        rows.append(Contender(fmt.null_key, f"stage: {fmt.cli_text} >/dev/null, {variant}", ((*fmt.cli, path),),
                              "stage", needs_target=False, stdout_to_null=True, fmt=fmt.key))
    return rows


def qcow2_contenders(qcow2: Path, bty: Path) -> list[Contender]:
    """A cloud-style qcow2 (compressed clusters): bty (through qemu-nbd + nbdcopy) against
    `qemu-img convert` straight onto the device, and the two steps people take (convert, then dd)."""
    image = str(qcow2)
    flash = (str(bty), "flash", image, TARGET, "--yes", "--receipt", RECEIPT, "--verify")
    scratch = f"{qcow2.with_suffix('')}.scratch.raw"
    convert_then_dd = (f"qemu-img convert -f qcow2 -O raw {image} {scratch} && "
                       f"dd if={scratch} of={TARGET} bs=4M oflag=direct status=none; rm -f {scratch}")
    return [
        Contender("bty-readback-qcow2", "bty --verify readback, qcow2 (compressed)", ((*flash, "readback"),), "bty",
                  gpt_fixups=True, fmt="qcow2"),
        Contender("bty-stream-qcow2", "bty --verify stream, qcow2 (compressed)", ((*flash, "stream"),), "bty",
                  gpt_fixups=True, fmt="qcow2"),
        Contender("qemu-img-qcow2", "qemu-img convert -t none onto the device, qcow2",
                  (("qemu-img", "convert", "-f", "qcow2", "-O", "raw", "-t", "none", "-n", image, TARGET),), "peer",
                  fmt="qcow2"),
        Contender("qemu-img-dd-qcow2", "qemu-img convert to a file, then dd, qcow2",
                  (("sh", "-c", convert_then_dd),), "peer", fmt="qcow2"),
        Contender("nbdcopy-null-qcow2", "stage: nbdcopy from qemu-nbd > /dev/null, qcow2",
                  (("nbdcopy", "--", "[", "qemu-nbd", "--read-only", "--format", "qcow2", image, "]", "-"),),
                  "stage", needs_target=False, stdout_to_null=True, fmt="qcow2"),
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
