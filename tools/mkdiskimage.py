#!/usr/bin/env python3
"""Build a realistic raw disk image without mounting anything (stdlib only).

The image is what a real OS image looks like to a flasher: a GPT made by sfdisk, an optional
64 MiB EFI System Partition (FAT32 made with `mkfs.vfat --offset`, a file put in it with mtools)
and a Linux x86-64 root partition (Discoverable Partitions type) filling the rest, holding an ext4
filesystem made with `mkfs.ext4 -d DIR -E offset=BYTES` and populated with real files copied from
this host's /usr, up to about `fill` of the partition. Everything else stays zero and sparse.

    python tools/mkdiskimage.py OUT.img --size 2G --fill 0.5 [--no-esp] [--label rootfs] [--seed N]

From code: `from tools.mkdiskimage import build_disk_image`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30
SECTOR = 512
FS_BLOCK = 4096
ALIGN = MIB  # partitions start on 1 MiB boundaries
ESP_SIZE = 64 * MIB
MIN_ROOT_SIZE = 16 * MIB
GPT_TAIL = 33 * SECTOR  # backup partition entries + backup header at the end of the disk
MAX_FILE_SIZE = 64 * MIB  # files larger than this are skipped: keep the content varied

ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
ROOT_X86_64_TYPE = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"

#: where the real files come from, walked in this order (each tree in sorted order)
SOURCE_ROOTS: tuple[str, ...] = ("/usr/lib", "/usr/share", "/usr/bin", "/usr/sbin", "/usr/libexec",
                                 "/usr/include")
#: a real EFI binary to put into the ESP when the host has one
EFI_LOADERS: tuple[str, ...] = ("/usr/lib/systemd/boot/efi/systemd-bootx64.efi",
                                "/usr/lib/shim/shimx64.efi.signed", "/usr/lib/shim/shimx64.efi")
#: namespace for the deterministic GUIDs derived from --seed
UUID_NAMESPACE = uuid.UUID("6c1b5d0e-4f0a-4d7e-9c55-2b0d1d8f4a11")


LABEL_RE = re.compile(r"^[A-Za-z0-9._-]{1,16}$")


class ImageBuildError(RuntimeError):
    """A tool failed or the requested geometry is impossible."""


@dataclass(frozen=True)
class Partition:
    number: int
    name: str
    type_guid: str
    uuid: str
    start: int  # bytes from the start of the image
    size: int  # bytes
    filesystem: str  # "vfat" or "ext4"

    @property
    def end(self) -> int:
        return self.start + self.size


@dataclass(frozen=True)
class ImageInfo:
    path: Path
    size: int
    partitions: tuple[Partition, ...]
    fill: float
    label: str
    seed: int
    data_bytes: int  # bytes of file content copied into the root filesystem
    file_count: int
    build_seconds: float

    def partition(self, name: str) -> Partition:
        for part in self.partitions:
            if part.name == name:
                return part
        raise KeyError(name)

    @property
    def root(self) -> Partition:
        return next(p for p in self.partitions if p.type_guid == ROOT_X86_64_TYPE)

    @property
    def esp(self) -> Partition | None:
        return next((p for p in self.partitions if p.type_guid == ESP_TYPE), None)

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["path"] = str(self.path)
        return data


@dataclass(frozen=True)
class SourceFile:
    path: Path  # absolute path on the host
    size: int

    @cached_property
    def cost(self) -> int:
        """Bytes the file occupies in the filesystem: its whole blocks but those all zero, which
        `mke2fs -d` leaves as holes (about a tenth of a host's /usr, which would otherwise leave
        the filesystem that much emptier than --fill asks)."""
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except OSError:  # unreadable since the walk: staging will skip it too
            return 0
        zero = bytes(FS_BLOCK)
        used = sum(1 for at in range(0, len(data), FS_BLOCK) if data[at : at + FS_BLOCK] != zero[: len(data) - at])
        return used * FS_BLOCK


@dataclass
class Selection:
    """The files chosen so far and what they cost in filesystem blocks (data and directories)."""

    files: list[SourceFile] = field(default_factory=list)
    data_bytes: int = 0
    cost: int = 0
    dir_bytes: dict[Path, int] = field(default_factory=dict)  # directory -> bytes of its entries

    def cost_of(self, candidate: SourceFile) -> tuple[int, dict[Path, int]]:
        """Blocks (in bytes) adding candidate costs, and the directory sizes it leads to."""
        grown: dict[Path, int] = {}
        extra = candidate.cost
        child, child_is_new = candidate.path, True
        for directory in candidate.path.parents:
            if directory == Path("/") or not child_is_new:
                break  # an existing directory already has its entry in its parent
            before = self.dir_bytes.get(directory)
            after = (before if before is not None else 24) + dirent_size(child.name)  # 24: "." and ".."
            grown[directory] = after
            extra += (blocks(after) - (blocks(before) if before is not None else 0)) * FS_BLOCK
            child, child_is_new = directory, before is None
        return extra, grown

    def add(self, candidate: SourceFile, extra: int, grown: dict[Path, int]) -> None:
        self.files.append(candidate)
        self.data_bytes += candidate.size
        self.cost += extra
        self.dir_bytes.update(grown)

    @property
    def inodes(self) -> int:
        return len(self.files) + len(self.dir_bytes)


def dirent_size(name: str) -> int:
    """Bytes an ext4 directory entry for `name` takes (8-byte header, name padded to 4)."""
    return 8 + -(-len(name.encode()) // 4) * 4


def blocks(nbytes: int) -> int:
    return max(1, -(-nbytes // FS_BLOCK))


# --- small helpers --------------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"mkdiskimage: {message}", file=sys.stderr, flush=True)


def run(argv: Sequence[str], *, stdin: str | None = None, env: dict[str, str] | None = None) -> str:
    """Run a tool without a shell; raise ImageBuildError with its own words when it fails."""
    if shutil.which(argv[0]) is None:
        raise ImageBuildError(f"{argv[0]} is not installed (apt install it, or run `make setup`)")
    proc = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, check=False,
                          env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip()
        raise ImageBuildError(f"{' '.join(argv)} failed (exit {proc.returncode}): {detail}")
    return proc.stdout


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'2G', '256M', '128MiB', '4096' -> bytes (binary units)."""
    match = _SIZE_RE.match(text)
    if not match:
        raise ValueError(f"not a size: {text!r} (use e.g. 2G, 256M, 128MiB)")
    number, unit = float(match.group(1)), match.group(2).lower()
    scale = {"": 1, "k": KIB, "m": MIB, "g": GIB, "t": 1 << 40}[unit]
    return int(number * scale)


def derived_uuid(seed: int, what: str) -> str:
    return str(uuid.uuid5(UUID_NAMESPACE, f"{seed}:{what}"))


def align_down(value: int, alignment: int) -> int:
    return value // alignment * alignment


# --- choosing the files ---------------------------------------------------------------------------


def walk_regular_files(roots: Sequence[str]) -> Iterator[SourceFile]:
    """Readable regular files under roots, in a deterministic (sorted) order."""
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                path = Path(dirpath, name)
                try:
                    st = path.lstat()
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode) and st.st_size <= MAX_FILE_SIZE and os.access(path, os.R_OK):
                    yield SourceFile(path, st.st_size)


def select_files(budget: int, seed: int, roots: Sequence[str] = SOURCE_ROOTS) -> Selection:
    """A seeded shuffle of the host's files, taken until `budget` filesystem bytes are used.

    The budget counts whole data blocks and the directory blocks the chosen paths need.
    """
    candidates = list(walk_regular_files(roots))
    random.Random(seed).shuffle(candidates)
    chosen = Selection()
    for candidate in candidates:
        if budget - chosen.cost < FS_BLOCK:
            break
        extra, grown = chosen.cost_of(candidate)
        if chosen.cost + extra <= budget:
            chosen.add(candidate, extra, grown)
    return chosen


def stage_files(selection: Selection, staging: Path) -> None:
    """Copy the chosen files into staging/, keeping their host paths (usr/lib/...)."""
    for source in selection.files:
        target = staging / source.path.relative_to("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copy2(source.path, target)
        except OSError as exc:  # vanished or unreadable since the walk: leave it out
            log(f"skipping {source.path}: {exc.strerror}")


# --- the image ------------------------------------------------------------------------------------


def check_geometry(size: int, fill: float, esp: bool, label: str) -> None:
    if not 0.0 <= fill <= 0.95:
        raise ImageBuildError(f"--fill must be between 0 and 0.95, not {fill}")
    needed = ALIGN + (ESP_SIZE if esp else 0) + MIN_ROOT_SIZE + ALIGN
    if size < needed:
        raise ImageBuildError(f"image size {size} is too small; it needs at least {needed} bytes")
    if size % SECTOR:
        raise ImageBuildError(f"image size {size} is not a multiple of {SECTOR}")
    if not LABEL_RE.match(label):
        raise ImageBuildError(f"label {label!r} must be 1-16 characters of A-Z a-z 0-9 . _ -")


def sfdisk_script(size: int, esp: bool, label: str, seed: int) -> str:
    """GPT: optional ESP, then the root partition up to the last 1 MiB-aligned byte before the tail."""
    lines = ["label: gpt", f"label-id: {derived_uuid(seed, 'disk')}", "unit: sectors", "first-lba: 34"]
    start = ALIGN
    if esp:
        lines.append(f"start={start // SECTOR}, size={ESP_SIZE // SECTOR}, type={ESP_TYPE}, "
                     f"uuid={derived_uuid(seed, 'esp')}, name=\"ESP\"")
        start += ESP_SIZE
    root_size = align_down(size - GPT_TAIL - start, ALIGN)
    lines.append(f"start={start // SECTOR}, size={root_size // SECTOR}, type={ROOT_X86_64_TYPE}, "
                 f"uuid={derived_uuid(seed, 'root')}, name=\"{label}\"")
    return "\n".join(lines) + "\n"


def read_partitions(image: Path) -> list[dict[str, object]]:
    table = json.loads(run(["sfdisk", "--json", str(image)]))["partitiontable"]
    if table.get("sectorsize", SECTOR) != SECTOR:
        raise ImageBuildError(f"unexpected sector size in {image}: {table.get('sectorsize')}")
    parts: list[dict[str, object]] = table["partitions"]
    return parts


def make_esp(image: Path, part: Partition, seed: int) -> None:
    volume_id = derived_uuid(seed, "esp-fs").replace("-", "")[:8]
    run(["mkfs.vfat", "-F", "32", "-S", str(SECTOR), "-s", "1", "-n", "ESP", "-i", volume_id,
         f"--offset={part.start // SECTOR}", str(image), str(part.size // KIB)])
    target = f"{image}@@{part.start}"
    env = {"MTOOLS_SKIP_CHECK": "1"}
    run(["mmd", "-i", target, "::/EFI", "::/EFI/BOOT"], env=env)
    loader = next((Path(p) for p in EFI_LOADERS if Path(p).is_file()), None)
    if loader is not None:
        run(["mcopy", "-i", target, str(loader), "::/EFI/BOOT/BOOTX64.EFI"], env=env)
    note = f"made by bty-live tools/mkdiskimage.py, seed {seed}\n"
    run(["mcopy", "-i", target, "-", "::/bty-image.txt"], stdin=note, env=env)


def ext4_command(image: Path, size: int, offset: int = 0, inodes: int | None = None) -> list[str]:
    """mkfs.ext4 for a filesystem of `size` bytes at `offset` in image (4 KiB blocks, no discard)."""
    argv = ["mkfs.ext4", "-q", "-F", "-b", str(FS_BLOCK), "-I", "256",
            "-E", f"offset={offset},nodiscard,lazy_itable_init=1"]
    if inodes is not None:
        argv += ["-N", str(inodes)]
    return [*argv, str(image), f"{size // KIB}k"]


@dataclass(frozen=True)
class Ext4Baseline:
    used_bytes: int  # blocks an empty filesystem already uses: journal, inode tables, bitmaps...
    inodes: int


def ext4_baseline(scratch: Path, size: int) -> Ext4Baseline:
    """Make an empty filesystem of the same geometry in a sparse scratch file and measure it."""
    with open(scratch, "wb") as f:
        f.truncate(size)
    try:
        run(ext4_command(scratch, size))
        header = dumpe2fs_header(scratch)
    finally:
        scratch.unlink()
    block_size = int(header["Block size"])
    used = (int(header["Block count"]) - int(header["Free blocks"])) * block_size
    return Ext4Baseline(used_bytes=used, inodes=int(header["Inode count"]))


def dumpe2fs_header(device: Path | str, offset: int = 0) -> dict[str, str]:
    """`dumpe2fs -h` as a dict ("Block count" -> "15872"); offset for a filesystem inside an image."""
    target = f"{device}?offset={offset}" if offset else str(device)
    header: dict[str, str] = {}
    for line in run(["dumpe2fs", "-h", target]).splitlines():
        key, sep, value = line.partition(":")
        if sep:
            header[key.strip()] = value.strip()
    return header


def make_root(image: Path, part: Partition, staging: Path, label: str, seed: int,
              inodes: int | None) -> None:
    argv = ext4_command(image, part.size, offset=part.start, inodes=inodes)
    argv[1:1] = ["-L", label, "-U", derived_uuid(seed, "root-fs"), "-d", str(staging)]
    run(argv)


def build_disk_image(
    out: Path,
    size: int,
    fill: float = 0.5,
    esp: bool = True,
    label: str = "rootfs",
    seed: int = 0,
    roots: Sequence[str] = SOURCE_ROOTS,
) -> ImageInfo:
    """Write a GPT disk image to `out` (atomically: a partial build never sits at `out`)."""
    started = time.perf_counter()
    out = Path(out)
    check_geometry(size, fill, esp, label)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    staging = out.with_name(f".{out.name}.staging")
    scratch = out.with_name(f".{out.name}.probe")
    for leftover in (partial, staging, scratch):
        remove(leftover)
    try:
        with open(partial, "wb") as f:
            f.truncate(size)
        run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(partial)],
            stdin=sfdisk_script(size, esp, label, seed))
        partitions = tuple(to_partition(i, raw) for i, raw in enumerate(read_partitions(partial), 1))
        if esp:
            make_esp(partial, partitions[0], seed)
        root = partitions[-1]
        baseline = ext4_baseline(scratch, root.size)
        budget = max(0, int(root.size * fill) - baseline.used_bytes)
        selection = select_files(budget, seed, roots)
        if selection.cost < budget * 0.9:
            log(f"warning: the host has too few files to fill {fill:.0%}; the image will be emptier")
        log(f"copying {len(selection.files)} host files ({selection.data_bytes / MIB:.0f} MiB) "
            f"into a {root.size / MIB:.0f} MiB ext4 partition")
        staging.mkdir()
        stage_files(selection, staging)
        wanted_inodes = selection.inodes + 64
        make_root(partial, root, staging, label, seed,
                  inodes=wanted_inodes if wanted_inodes > baseline.inodes else None)
        os.replace(partial, out)
    finally:
        for leftover in (partial, staging, scratch):
            remove(leftover)
    return ImageInfo(path=out, size=size, partitions=partitions, fill=fill, label=label, seed=seed,
                     data_bytes=selection.data_bytes, file_count=len(selection.files),
                     build_seconds=time.perf_counter() - started)


def to_partition(number: int, raw: dict[str, object]) -> Partition:
    type_guid = str(raw["type"]).upper()
    return Partition(number=number, name=str(raw.get("name", "")), type_guid=type_guid,
                     uuid=str(raw.get("uuid", "")).lower(), start=int(str(raw["start"])) * SECTOR,
                     size=int(str(raw["size"])) * SECTOR,
                     filesystem="vfat" if type_guid == ESP_TYPE else "ext4")


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


# --- CLI ------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="image file to write (replaced if it exists)")
    parser.add_argument("--size", type=parse_size, default=parse_size("2G"), help="image size (default 2G)")
    parser.add_argument("--fill", type=float, default=0.5,
                        help="fraction of the root partition to fill with host files (default 0.5)")
    esp_group = parser.add_mutually_exclusive_group()
    esp_group.add_argument("--esp", dest="esp", action="store_true", default=True,
                           help="add a 64 MiB EFI System Partition (the default)")
    esp_group.add_argument("--no-esp", dest="esp", action="store_false", help="root partition only")
    parser.add_argument("--label", default="rootfs", help="ext4 label and GPT name of the root partition")
    parser.add_argument("--seed", type=int, default=0, help="selects the files and the GUIDs (default 0)")
    parser.add_argument("--json", action="store_true", help="print the ImageInfo as JSON on stdout")
    args = parser.parse_args(argv)
    try:
        info = build_disk_image(args.out, args.size, fill=args.fill, esp=args.esp, label=args.label,
                                seed=args.seed)
    except (ImageBuildError, ValueError) as exc:
        print(f"mkdiskimage: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(info.to_json(), indent=2))
    else:
        for part in info.partitions:
            print(f"  p{part.number} {part.name:<10} {part.filesystem:<5} start {part.start:>12} "
                  f"size {part.size:>12}  {part.type_guid}")
        print(f"{info.path}: {info.size / MIB:.0f} MiB, {info.file_count} files, "
              f"{info.data_bytes / MIB:.0f} MiB of data, built in {info.build_seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
