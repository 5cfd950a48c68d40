"""Small real disk images for tests: GPT + ext4 with files, made with sfdisk and mkfs.ext4.

No mounting: `mkfs.ext4 -d DIR -E offset=N` writes a populated filesystem straight into the
image file at the partition's offset.
"""

from __future__ import annotations

import gzip
import lzma
import os
import random
import shutil
import struct
import subprocess
from pathlib import Path

import zstandard

MiB = 1 << 20
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
ROOT_X86_64 = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"


def run(*argv: str, input: bytes | None = None) -> str:
    return subprocess.run(argv, check=True, capture_output=True, input=input).stdout.decode()


def build_gpt_image(path: Path, size: int = 64 * MiB, *, seed: int = 1, files_bytes: int = 8 * MiB) -> Path:
    """A GPT disk image: a 4 MiB 'ESP' (raw random bytes) and an ext4 root with some files.

    The rest of the image is zeros, as in real images.
    """
    rng = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
    table = f"label: gpt\nstart=2048, size=8192, type={ESP_TYPE}, name=esp\n" \
            f"start=10240, type={ROOT_X86_64}, name=root\n"
    run("sfdisk", "-q", str(path), input=table.encode())
    with open(path, "r+b") as f:  # "ESP" content: non-zero bytes so zero-detection has work to do
        f.seek(2048 * 512)
        f.write(rng.randbytes(2 * MiB))
    tree = path.with_suffix(".tree")
    tree.mkdir(exist_ok=True)
    (tree / "hello.txt").write_text("bty-live test image\n")
    (tree / "random.bin").write_bytes(rng.randbytes(files_bytes))
    (tree / "text.txt").write_text("".join(f"line {i} of a compressible file\n" for i in range(20000)))
    root_start = 10240 * 512
    root_size = size - root_start - 1 * MiB
    run("mkfs.ext4", "-q", "-F", "-L", "rootfs", "-d", str(tree), "-E", f"offset={root_start}",
        str(path), f"{root_size // 1024}k")
    return path


#: compress() kind -> the file suffix it makes
COMPRESSED_SUFFIX = {"zst": ".zst", "zst-frames": ".zst", "xz": ".xz", "gz": ".gz", "bz2": ".bz2", "lz4": ".lz4",
                     "zip": ".zip", "zip-xz": ".zip", "qcow2": ".qcow2", "qcow2-c": ".qcow2", "vmdk": ".vmdk",
                     "vhdx": ".vhdx", "vdi": ".vdi", "vhd": ".vhd", "vhd-fixed": ".vhd"}
#: virtual disk kinds -> qemu-img convert's output options (made by the real qemu-img; VHD with
#: force_size, else qemu rounds the disk up to a CHS geometry, as Hyper-V and Azure do not)
VIRTUAL_DISK_KINDS = {"qcow2": ["-O", "qcow2"], "qcow2-c": ["-O", "qcow2", "-c"],
                      "vmdk": ["-O", "vmdk", "-o", "subformat=streamOptimized"], "vhdx": ["-O", "vhdx"],
                      "vdi": ["-O", "vdi"], "vhd": ["-O", "vpc", "-o", "force_size=on"],
                      "vhd-fixed": ["-O", "vpc", "-o", "subformat=fixed,force_size=on"]}


def compress(raw: Path, kind: str, out: Path | None = None) -> Path:
    """A compressed copy of `raw`: zstd (one frame), zstd-frames (bty-packed, many frames), xz,
    gz; bz2, lz4 and zip made by the real `bzip2`, `lz4` and `zip` tools (zip: `raw` as the one
    member, stored under its own name; zip-xz: `raw`.xz as the member); virtual disks (qcow2,
    qcow2 with compressed clusters, VMDK, VHDX, VDI, VHD dynamic and fixed) made by `qemu-img`."""
    out = out or raw.with_name(raw.name + COMPRESSED_SUFFIX[kind])
    data = raw.read_bytes() if kind in ("zst", "zst-frames", "xz", "gz") else b""
    if kind == "zst":
        out.write_bytes(zstandard.ZstdCompressor(level=3, write_checksum=True).compress(data))
    elif kind == "zst-frames":
        cctx = zstandard.ZstdCompressor(level=3, write_checksum=True, write_content_size=True)
        with open(out, "wb") as f:
            for i in range(0, len(data), 8 * MiB):
                f.write(cctx.compress(data[i : i + 8 * MiB]))
    elif kind == "xz":
        out.write_bytes(lzma.compress(data, preset=0))
    elif kind == "gz":
        out.write_bytes(gzip.compress(data, compresslevel=1))
    elif kind == "bz2":
        out.write_bytes(subprocess.run(["bzip2", "-1", "-c", str(raw)], check=True, capture_output=True).stdout)
    elif kind == "lz4":
        subprocess.run(["lz4", "-q", "-f", str(raw), str(out)], check=True)
    elif kind in ("zip", "zip-xz"):
        member = compress(raw, "xz", out.with_name(raw.name + ".xz")) if kind == "zip-xz" else raw
        out.unlink(missing_ok=True)  # zip adds to an existing archive
        subprocess.run(["zip", "-q", "-j", str(out), str(member)], check=True)
        if member != raw:
            member.unlink()
    elif kind in VIRTUAL_DISK_KINDS:
        subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", *VIRTUAL_DISK_KINDS[kind], str(raw), str(out)],
                       check=True)
    else:
        raise ValueError(kind)
    return out


def read_device(path: str, offset: int, length: int) -> bytes:
    """Read with O_DIRECT so the page cache of the device node cannot answer."""
    import mmap

    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        buf = mmap.mmap(-1, length + (-length) % 4096)
        start = offset - offset % 4096
        os.preadv(fd, [memoryview(buf)], start)
        return bytes(buf[offset - start : offset - start + length])
    finally:
        os.close(fd)


def device_equals_file(device: str, image: Path) -> bool:
    """cmp: the first len(image) bytes of the device equal the raw image."""
    size = image.stat().st_size
    return subprocess.run(["cmp", "-n", str(size), str(image), device], capture_output=True).returncode == 0


def looks_blank(device: str, size: int) -> bool:
    """No partition-table or filesystem signature at the start or end of the device."""
    head = read_device(device, 0, MiB)
    tail = read_device(device, size - MiB, MiB)
    return head == bytes(MiB) and tail == bytes(MiB)


def slow_gzip_image(path: Path, raw_image: Path, zeros: int = 2048 * MiB) -> Path:
    """The raw image followed by `zeros` bytes of zeros, as a multi-member gzip: cheap to make,
    seconds to decompress and write, so there is time to stop a flash mid-write."""
    member = gzip.compress(bytes(64 * MiB), compresslevel=1)
    with open(path, "wb") as f:
        f.write(gzip.compress(raw_image.read_bytes(), compresslevel=1))
        for _ in range(zeros // (64 * MiB)):
            f.write(member)
    return path


def images_dir_with(tmp_path: Path, image: Path, name: str | None = None, *, manifest: bool = False) -> Path:
    """tmp_path/images holding a copy of `image` (as `name`), with its manifest when asked
    (made by `bty images add`, as a user would)."""
    from bty_live import cli

    directory = tmp_path / "images"
    directory.mkdir(exist_ok=True)
    copy = directory / (name or image.name)
    shutil.copy(image, copy)
    if manifest:
        assert cli.main(["images", "add", str(copy)]) == 0
    return directory


def set_declared_size(path: Path, size: int) -> None:
    """Forge the member's uncompressed size in its local header and central directory entry."""
    data = bytearray(path.read_bytes())
    struct.pack_into("<I", data, 22, size)  # local file header: uncompressed size
    central = data.rindex(b"PK\x01\x02")
    struct.pack_into("<I", data, central + 24, size)
    path.write_bytes(bytes(data))


def iso_head(*, volume: str, publisher: str = "", application: str = "", hybrid: bool = False) -> bytes:
    """The first 64 KiB of an ISO 9660 image, built by hand (no xorriso/genisoimage on the test
    hosts): a primary volume descriptor at sector 16 (ECMA-119 8.4: type 1, "CD001", version 1,
    volume id at 40, publisher at 318, application at 574, space-padded), the set terminator at
    sector 17, and, for a hybrid image, an isohybrid-style MBR (one bootable 0x17 partition
    covering the image, signature 0x55AA) in the first sector."""
    head = bytearray(64 << 10)
    pvd = 0x8000
    head[pvd : pvd + 7] = b"\x01CD001\x01"
    for offset, length, text in ((40, 32, volume), (318, 128, publisher), (574, 128, application)):
        head[pvd + offset : pvd + offset + length] = text.encode().ljust(length)
    head[0x8800 : 0x8807] = b"\xffCD001\x01"
    if hybrid:
        head[0:3] = b"\x33\xed\xfa"  # boot code begins
        struct.pack_into("<B3sB3sII", head, 0x1BE, 0x80, b"\0\x01\0", 0x17, b"\xfe\xff\xff", 0, 2048)
        head[510:512] = b"\x55\xaa"
    return bytes(head)


#: the descriptor fields of a Windows 10/11 install ISO, as Microsoft's CDIMAGE writes them
WINDOWS_ISO = {"volume": "CCCOMA_X64FRE_EN-US_DV9", "publisher": "MICROSOFT CORPORATION",
               "application": "CDIMAGE 2.56 (01/01/2005 TM)"}
