"""fsprobe and `bty inspect` on real images: sfdisk tables, mkfs'd filesystems, compressed copies."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bty_live import cli
from bty_live.errors import SourceCorruptError
from bty_live.image.formats import VIRTUAL_DISKS, Compression, ImageReader
from bty_live.image.fsprobe import (
    ForwardReader,
    FsInfo,
    Region,
    blkid_probe,
    probe_filesystems,
    probe_regions,
)
from bty_live.image.partition_table import parse_partition_table
from bty_live.image.partitions import PartitionTable
from bty_live.image.virtual_disk import QEMU_DRIVERS
from bty_live.system.blkid import parse_export

MiB = 1 << 20
ROOT_X86_64 = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"
SFDISK_FILE_OPTIONS = ["-q", "--no-reread", "--no-tell-kernel", "--lock=no", "-w", "never", "-W", "never"]
#: the layout of `disk_image`: partition number -> (start MiB, size MiB)
LAYOUT = {1: (1, 16), 2: (17, 24), 3: (41, 4), 4: (45, 2)}
DISK_SIZE = 48 * MiB


def sh(*argv: str, stdin: str | None = None) -> None:
    subprocess.run(argv, input=stdin, text=True, check=True, capture_output=True)


def sparse_file(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def write_at(image: Path, offset: int, data: bytes) -> None:
    with open(image, "r+b") as f:
        f.seek(offset)
        f.write(data)


def mkfs_ext4(image: Path, start_mib: int, size_mib: int, label: str) -> None:
    sh("mkfs.ext4", "-q", "-F", "-L", label, "-E", f"offset={start_mib * MiB}", str(image),
       f"{size_mib * 1024}k")


def mkfs_vfat(image: Path, start_mib: int, size_mib: int, label: str) -> None:
    sh("mkfs.vfat", "-n", label, "--offset", str(start_mib * MiB // 512), str(image), str(size_mib * 1024))


def mkswap_at(image: Path, tmp: Path, start_mib: int, size_mib: int, label: str) -> None:
    """mkswap has no --offset: make the swap area in its own file and copy it in."""
    swap = sparse_file(tmp / f"swap-{label}", size_mib * MiB)
    sh("mkswap", "-L", label, str(swap))
    write_at(image, start_mib * MiB, swap.read_bytes())
    swap.unlink()


def compress(image: Path, compression: Compression) -> Path:
    """A compressed copy beside the raw image (the raw one is kept)."""
    if compression == Compression.RAW:
        return image
    tool, suffix = {Compression.ZSTD: ("zstd", ".zst"), Compression.XZ: ("xz", ".xz"),
                    Compression.GZIP: ("gzip", ".gz"), Compression.BZIP2: ("bzip2", ".bz2"),
                    Compression.LZ4: ("lz4", ".lz4"), Compression.ZIP: ("zip", ".zip"),
                    **{v: (v.value, f".{v.value}") for v in VIRTUAL_DISKS}}[compression]
    out = image.with_name(image.name + suffix)
    if compression == Compression.ZIP:
        out.unlink(missing_ok=True)
        subprocess.run(["zip", "-q", "-j", str(out), str(image)], check=True)
        return out
    if compression in VIRTUAL_DISKS:
        exact = ["-o", "force_size=on"] if compression == Compression.VHD else []  # no CHS rounding up
        subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", QEMU_DRIVERS[tool], *exact, str(image),
                        str(out)], check=True)
        return out
    with open(out, "wb") as f:
        subprocess.run([tool, "-1", "-c", str(image)], stdout=f, check=True)
    return out


def read_table(image: Path) -> PartitionTable:
    with open(image, "rb") as f:
        table = parse_partition_table(f.read(MiB), image.stat().st_size)
    assert table is not None
    return table


@pytest.fixture(scope="module")
def disk_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """GPT: 1 ESP vfat "EFI", 2 x86-64 root ext4 "rootfs", 3 swap "swap0", 4 nothing."""
    tmp = tmp_path_factory.mktemp("disk")
    image = sparse_file(tmp / "demo.img", DISK_SIZE)
    script = "label: gpt\n" + "".join(
        f"start={start * 2048}, size={size * 2048}, type={kind}{name}\n"
        for (start, size), kind, name in zip(LAYOUT.values(), ("U", ROOT_X86_64, "S", "L"),
                                              ("", ", name=root", "", ", name=empty"), strict=True)
    )
    sh("sfdisk", *SFDISK_FILE_OPTIONS, str(image), stdin=script)
    mkfs_vfat(image, *LAYOUT[1], "EFI")
    mkfs_ext4(image, *LAYOUT[2], "rootfs")
    mkswap_at(image, tmp, *LAYOUT[3], "swap0")
    return image


@pytest.fixture(scope="module")
def compressed_images(disk_image: Path) -> dict[Compression, Path]:
    return {c: compress(disk_image, c) for c in Compression}


def bty(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def inspect_json(capsys: pytest.CaptureFixture[str], image: Path) -> dict[str, Any]:
    code, out, err = bty(capsys, "inspect", "--json", str(image))
    assert code == 0, err
    data: dict[str, Any] = json.loads(out)
    return data


# --- fsprobe ------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", list(Compression))
def test_probe_finds_each_partitions_filesystem_type_and_label(
    disk_image: Path, compressed_images: dict[Compression, Path], compression: Compression
) -> None:
    found = probe_filesystems(compressed_images[compression], read_table(disk_image))
    assert set(found) == {1, 2, 3, 4}
    assert (found[1].fstype, found[1].label) == ("vfat", "EFI")
    assert (found[2].fstype, found[2].label, found[2].usage) == ("ext4", "rootfs", "filesystem")
    assert (found[3].fstype, found[3].label) == ("swap", "swap0")
    assert found[2].uuid is not None and len(found[2].uuid) == 36


def test_a_partition_without_a_filesystem_has_fstype_none(disk_image: Path) -> None:
    assert probe_filesystems(disk_image, read_table(disk_image))[4] == FsInfo(fstype=None)


def test_probe_reads_the_stream_only_up_to_the_last_partition_head(tmp_path: Path) -> None:
    """The compressed file is cut short after the last head: probing works, a full read fails."""
    image = sparse_file(tmp_path / "cut.img", 24 * MiB)
    sh("sfdisk", *SFDISK_FILE_OPTIONS, str(image), stdin="label: gpt\nstart=2048, size=8192, type=L\n")
    mkfs_ext4(image, 1, 4, "early")
    write_at(image, 8 * MiB, os.urandom(12 * MiB))  # incompressible tail after the partition
    packed = compress(image, Compression.ZSTD)
    with open(packed, "r+b") as f:
        f.truncate(packed.stat().st_size - MiB)
    with ImageReader(packed) as reader, pytest.raises(SourceCorruptError):
        while reader.readinto(memoryview(bytearray(4 * MiB))):
            pass
    found = probe_filesystems(packed, read_table(image))
    assert (found[1].fstype, found[1].label) == ("ext4", "early")


def test_mbr_extended_container_is_not_probed_but_its_logical_partitions_are(tmp_path: Path) -> None:
    image = sparse_file(tmp_path / "mbr.img", 40 * MiB)
    sh("sfdisk", *SFDISK_FILE_OPTIONS, str(image),
       stdin="label: dos\nstart=2048, size=16384, type=c\nstart=18432, type=5\n"
             "start=20480, size=16384, type=83\n")
    mkfs_vfat(image, 1, 8, "BOOT")
    mkfs_ext4(image, 10, 8, "root")
    with open(image, "rb") as f:
        table = parse_partition_table(f.read(), image.stat().st_size)  # the EBR is at 9 MiB
    assert table is not None
    found = probe_filesystems(compress(image, Compression.XZ), table)
    assert set(found) == {1, 5}
    assert (found[1].fstype, found[5].fstype, found[5].label) == ("vfat", "ext4", "root")
    root = table.find_root({n: fs.label for n, fs in found.items()})
    assert root is not None and root.number == 5


def test_forward_reader_reads_any_offset_of_a_compressed_image_even_going_back(disk_image: Path,
        compressed_images: dict[Compression, Path]) -> None:
    data = disk_image.read_bytes()
    for compression, path in compressed_images.items():
        with ForwardReader(path, compression) as reader:
            for offset in (17 * MiB + 1024, 512, 41 * MiB, DISK_SIZE - 100):
                assert reader.read_at(offset, 4096) == data[offset : offset + 4096], (compression, offset)


def copy_in(image: Path, offset: int, fs_file: Path) -> None:
    sh("dd", f"if={fs_file}", f"of={image}", "bs=1M", f"seek={offset // MiB}", "conv=notrunc,sparse",
       "status=none")


@pytest.mark.parametrize("compression", [Compression.RAW, Compression.ZSTD])
def test_fat32_and_exfat_labels_in_the_root_directory_beyond_the_first_mib_are_found(
    tmp_path: Path, compression: Compression
) -> None:
    image = sparse_file(tmp_path / "labels.img", 200 * MiB)
    sh("sfdisk", *SFDISK_FILE_OPTIONS, str(image),
       stdin="label: gpt\nstart=2048, size=131072, type=U\nstart=133120, size=131072, type=L\n")
    fat32 = sparse_file(tmp_path / "fat32", 64 * MiB)
    sh("mkfs.vfat", "-F", "32", "-n", "BIGESP", str(fat32))
    exfat = sparse_file(tmp_path / "exfat", 64 * MiB)
    sh("mkfs.exfat", "-L", "SHARED", str(exfat))
    for fs_file in (fat32, exfat):  # both keep their label in the root directory, past 1 MiB here
        head_only = sparse_file(tmp_path / "head-only", 64 * MiB)
        write_at(head_only, 0, fs_file.read_bytes()[:MiB])
        assert blkid_probe(head_only).label is None
    copy_in(image, 1 * MiB, fat32)
    copy_in(image, 65 * MiB, exfat)
    found = probe_filesystems(compress(image, compression), read_table(image))
    assert (found[1].fstype, found[1].version, found[1].label) == ("vfat", "FAT32", "BIGESP")
    assert (found[2].fstype, found[2].label) == ("exfat", "SHARED")


def test_labels_with_spaces_and_shell_characters_come_back_unescaped(tmp_path: Path) -> None:
    image = sparse_file(tmp_path / "fs.img", 8 * MiB)
    label = 'my $"root\\'
    mkfs_ext4(image, 0, 8, label)
    assert probe_regions(image, [Region(0, 0, 8 * MiB)])[0].label == label
    assert parse_export("LABEL=a\\ b\\$\\\"c\nTYPE=ext4\n") == {"LABEL": 'a b$"c', "TYPE": "ext4"}


# --- bty inspect --------------------------------------------------------------------------


def test_inspect_json_reports_format_sizes_digest_status_and_partitions(
    capsys: pytest.CaptureFixture[str], compressed_images: dict[Compression, Path]
) -> None:
    image = compressed_images[Compression.ZSTD]
    data = inspect_json(capsys, image)
    assert data["file"] == str(image)
    assert data["format"] == "zstd"
    assert data["compressed_size"] == image.stat().st_size
    assert (data["decompressed_size"], data["decompressed_size_source"]) == (DISK_SIZE, "header")
    assert data["digest"] == {"status": "unverified", "blake3": None, "text": "unverified (no manifest)"}
    assert data["bmap"] is None
    table = data["partition_table"]
    assert (table["scheme"], table["sector_size"], table["valid"]) == ("gpt", 512, True)
    assert (table["arch_hint"], table["root_partition"]) == ("x86_64", 2)
    parts = table["partitions"]
    assert [(p["number"], p["start"], p["size"]) for p in parts] == [
        (n, start * MiB, size * MiB) for n, (start, size) in LAYOUT.items()
    ]
    assert [p["type_name"] for p in parts] == ["EFI System", "Linux root (x86-64)", "Linux swap",
                                               "Linux filesystem"]
    assert [p["name"] for p in parts] == ["", "root", "", "empty"]
    assert [(p["filesystem"]["type"], p["filesystem"]["label"]) for p in parts] == [
        ("vfat", "EFI"), ("ext4", "rootfs"), ("swap", "swap0"), (None, None)
    ]


def test_inspect_lists_mbr_logical_partitions_whose_ebrs_lie_beyond_the_first_mib(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    image = sparse_file(tmp_path / "mbr.img", 40 * MiB)
    sh("sfdisk", *SFDISK_FILE_OPTIONS, str(image),
       stdin="label: dos\n,8M,c,*\n,,E\n,8M,83\n,8M,83\n")
    mkfs_vfat(image, 1, 8, "BOOT")
    mkfs_ext4(image, 10, 8, "root")  # logical 5: EBR at 9 MiB
    mkfs_ext4(image, 19, 8, "home")  # logical 6: EBR at 18 MiB
    table = inspect_json(capsys, compress(image, Compression.ZSTD))["partition_table"]
    parts = {p["number"]: p for p in table["partitions"]}
    assert [(n, p["kind"]) for n, p in parts.items()] == [(1, "primary"), (2, "extended"), (5, "logical"),
                                                          (6, "logical")]
    assert (parts[5]["start"], parts[6]["start"]) == (10 * MiB, 19 * MiB)
    assert [parts[n]["filesystem"]["label"] for n in (1, 5, 6)] == ["BOOT", "root", "home"]
    assert parts[2]["filesystem"] is None
    assert (table["root_partition"], table["notes"]) == (5, [])


def test_inspect_text_lists_partitions_with_types_filesystems_and_labels(
    capsys: pytest.CaptureFixture[str], compressed_images: dict[Compression, Path]
) -> None:
    code, out, _ = bty(capsys, "inspect", str(compressed_images[Compression.XZ]))
    assert code == 0
    for text in ("xz", "48 MiB", "unverified (no manifest)", "gpt, 512-byte sectors, valid", "EFI System",
                 "Linux root (x86-64)", "vfat", "rootfs", "swap0", "x86_64"):
        assert text in out


def test_inspect_takes_size_and_digest_from_the_manifest(
    capsys: pytest.CaptureFixture[str], disk_image: Path, tmp_path: Path
) -> None:
    image = tmp_path / "demo.img.gz"
    shutil.copy(compress(disk_image, Compression.GZIP), image)
    digest = "0123456789abcdef" * 4
    (tmp_path / "demo.img.gz.toml").write_text(f'name = "demo"\nsize = {DISK_SIZE}\nblake3 = "{digest}"\n')
    data = inspect_json(capsys, image)
    assert (data["decompressed_size"], data["decompressed_size_source"]) == (DISK_SIZE, "manifest")
    assert data["digest"]["status"] == "manifest"
    assert data["digest"]["text"] == (
        "manifest: blake3 0123456789abcdef..., not re-checked (use `bty images add` to recompute)"
    )


def test_inspect_says_a_gzip_images_size_is_unknown_until_decompressed(
    capsys: pytest.CaptureFixture[str], compressed_images: dict[Compression, Path]
) -> None:
    image = compressed_images[Compression.GZIP]
    assert inspect_json(capsys, image)["decompressed_size"] is None
    code, out, _ = bty(capsys, "inspect", str(image))
    assert code == 0 and "unknown until decompressed" in out


def test_inspect_of_a_zip_names_its_member_and_takes_the_size_from_the_zip_directory(
    capsys: pytest.CaptureFixture[str], compressed_images: dict[Compression, Path]
) -> None:
    data = inspect_json(capsys, compressed_images[Compression.ZIP])
    assert (data["format"], data["zip_member"]) == ("zip", {"name": "demo.img", "format": "raw"})
    assert (data["decompressed_size"], data["decompressed_size_source"]) == (DISK_SIZE, "header")
    assert data["partition_table"]["partitions"][1]["filesystem"]["label"] == "rootfs"


def test_inspect_warns_that_a_windows_install_iso_does_not_boot_from_a_disk(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from tests.imagekit import WINDOWS_ISO, iso_head

    iso = tmp_path / "win.iso"
    iso.write_bytes(iso_head(**WINDOWS_ISO) + bytes(MiB))
    data = inspect_json(capsys, iso)
    assert data["iso9660"] is True and data["partition_table"] is None
    assert len(data["warnings"]) == 1 and "is a Windows install ISO" in data["warnings"][0]
    code, out, _ = bty(capsys, "inspect", str(iso))
    assert code == 0 and "Media Creation Tool" in " ".join(out.split())  # rich wraps long values


def test_inspect_of_a_whole_small_gzip_image_knows_its_size_from_the_stream(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    image = tmp_path / "tiny.img.gz"
    image.write_bytes(gzip.compress(bytes(300_000)))
    data = inspect_json(capsys, image)
    assert (data["decompressed_size"], data["decompressed_size_source"]) == (300_000, "stream")
    assert data["partition_table"] is None
    assert data["filesystem"] == {"type": None, "label": None, "uuid": None, "version": None,
                                  "usage": None, "ambivalent": False}


def test_inspect_summarises_the_bmap_sidecar_named_without_the_compression_suffix(
    capsys: pytest.CaptureFixture[str], disk_image: Path, tmp_path: Path
) -> None:
    raw = tmp_path / "demo.img"
    sh("cp", "--sparse=always", str(disk_image), str(raw))  # bmaptool maps what the file system allocated
    sh("bmaptool", "create", "-o", str(tmp_path / "demo.img.bmap"), str(raw))
    packed = compress(raw, Compression.ZSTD)
    bmap = inspect_json(capsys, packed)["bmap"]
    assert bmap["path"] == str(tmp_path / "demo.img.bmap")
    assert (bmap["error"], bmap["problems"]) == (None, [])
    assert (bmap["image_size"], bmap["block_size"], bmap["checksum_type"]) == (DISK_SIZE, 4096, "sha256")
    assert 0 < bmap["mapped_bytes"] < DISK_SIZE
    code, out, _ = bty(capsys, "inspect", str(packed))
    assert "demo.img.bmap: format 2.0" in out and "checksums: sha256" in out


def test_inspect_shows_a_broken_or_foreign_bmap_instead_of_failing(
    capsys: pytest.CaptureFixture[str], disk_image: Path, tmp_path: Path
) -> None:
    image = Path(shutil.copy(disk_image, tmp_path / "demo.img"))
    sidecar = tmp_path / "demo.img.bmap"
    sidecar.write_text("<foo/>")
    assert "root element <foo>" in inspect_json(capsys, image)["bmap"]["error"]
    sidecar.write_text('<bmap version="2.0"><ImageSize>8192</ImageSize><BlockSize>4096</BlockSize>'
                       "<BlocksCount>2</BlocksCount><BlockMap/></bmap>")
    problems = inspect_json(capsys, image)["bmap"]["problems"]
    assert problems == [f"it describes a 8192-byte image, this one has {DISK_SIZE} bytes: "
                        "it belongs to another image"]


def test_inspect_reports_a_damaged_gpt_header_as_invalid_with_its_problem(
    capsys: pytest.CaptureFixture[str], disk_image: Path, tmp_path: Path
) -> None:
    image = Path(shutil.copy(disk_image, tmp_path / "damaged.img"))
    with open(image, "r+b") as f:
        f.seek(512 + 56)  # inside the disk GUID
        f.write(b"\x00\xff")
    table = inspect_json(capsys, image)["partition_table"]
    assert table["valid"] is False
    assert any("GPT header CRC32" in p for p in table["problems"])
    code, out, _ = bty(capsys, "inspect", str(image))
    assert code == 0 and "problem" in out and "1 problem(s)" in out


def test_inspect_of_an_unpartitioned_filesystem_image_shows_its_filesystem(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    image = sparse_file(tmp_path / "plain.img", 8 * MiB)
    mkfs_ext4(image, 0, 8, "data")
    data = inspect_json(capsys, compress(image, Compression.ZSTD))
    assert data["partition_table"] is None
    assert (data["filesystem"]["type"], data["filesystem"]["label"]) == ("ext4", "data")


def test_inspect_of_a_missing_file_fails_with_exit_code_3_and_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, err = bty(capsys, "inspect", str(tmp_path / "nope.img.zst"))
    assert code == 3
    assert out == ""
    assert err.count("\n") == 1 and "does not exist" in err


def test_inspect_of_a_damaged_qcow2_file_fails_with_exit_code_3_and_says_so(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    image = tmp_path / "vm.qcow2"
    image.write_bytes(b"QFI\xfb" + bytes(1020))  # the magic, then nothing QEMU can use
    code, _, err = bty(capsys, "inspect", str(image))
    assert code == 3 and "vm.qcow2 is not a readable qcow2 disk" in err and err.count("\n") == 1, err


def test_inspect_help_explains_the_command_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["inspect", "--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert "--json" in out and "IMAGE" in out and "partition table" in out
