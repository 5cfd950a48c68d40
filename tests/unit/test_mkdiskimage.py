"""tools/mkdiskimage.py builds a real GPT + ESP + ext4 image, checked with the system's own tools."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

from tools.mkdiskimage import (  # noqa: E402
    ESP_TYPE,
    MIB,
    ROOT_X86_64_TYPE,
    ImageBuildError,
    ImageInfo,
    build_disk_image,
    parse_size,
)

SIZE = 128 * MIB
FILL = 0.5
LABEL = "testroot"
SEED = 7
MTOOLS_ENV = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}


def tool(*argv: str, env: dict[str, str] | None = None) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, env=env).stdout


def tool_bytes(*argv: str) -> bytes:
    return subprocess.run(argv, check=True, capture_output=True).stdout


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> ImageInfo:
    out = tmp_path_factory.mktemp("mkdiskimage") / "disk.img"
    return build_disk_image(out, SIZE, fill=FILL, esp=True, label=LABEL, seed=SEED)


def ext4_target(info: ImageInfo) -> str:
    return f"{info.path}?offset={info.root.start}"


def debugfs(info: ImageInfo, request: str) -> str:
    return tool("debugfs", "-R", request, ext4_target(info))


def dumpe2fs(info: ImageInfo) -> dict[str, str]:
    header = {}
    for line in tool("dumpe2fs", "-h", ext4_target(info)).splitlines():
        key, sep, value = line.partition(":")
        if sep:
            header[key.strip()] = value.strip()
    return header


def test_image_file_is_sparse_and_of_the_requested_size(image: ImageInfo) -> None:
    st = image.path.stat()
    assert st.st_size == SIZE == image.size
    allocated = st.st_blocks * 512
    assert allocated < SIZE * (FILL + 0.25), "the empty part of the image should stay sparse"
    assert not list(image.path.parent.glob(".*")), "no partial/staging leftovers"


def test_partition_table_is_gpt_with_esp_and_root(image: ImageInfo) -> None:
    table = json.loads(tool("sfdisk", "--json", str(image.path)))["partitiontable"]
    assert table["label"] == "gpt"
    parts = table["partitions"]
    assert [p["type"].upper() for p in parts] == [ESP_TYPE, ROOT_X86_64_TYPE]
    assert [p["name"] for p in parts] == ["ESP", LABEL]
    for raw, part in zip(parts, image.partitions, strict=True):
        assert raw["start"] * 512 == part.start
        assert raw["size"] * 512 == part.size
        assert raw["uuid"].lower() == part.uuid
        assert part.start % MIB == 0
    assert image.esp is not None and image.esp.size == 64 * MIB
    assert image.root.end <= (table["lastlba"] + 1) * 512
    assert image.root.end > SIZE - 2 * MIB, "root fills the rest of the disk"
    verify = subprocess.run(["sgdisk", "-v", str(image.path)], capture_output=True, text=True, check=False)
    assert verify.returncode == 0 and "No problems found" in verify.stdout, verify.stdout


def test_root_is_ext4_with_label_and_clean(image: ImageInfo) -> None:
    header = dumpe2fs(image)
    assert header["Filesystem volume name"] == LABEL
    assert int(header["Block count"]) * int(header["Block size"]) == image.root.size
    fsck = subprocess.run(["e2fsck", "-fn", ext4_target(image)], capture_output=True, text=True, check=False)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def test_fill_is_roughly_respected(image: ImageInfo) -> None:
    header = dumpe2fs(image)
    used = int(header["Block count"]) - int(header["Free blocks"])
    used_fraction = used / int(header["Block count"])
    assert FILL - 0.05 <= used_fraction <= FILL + 0.05, used_fraction
    assert image.data_bytes > 0.3 * FILL * image.root.size, "much of the used space is file content"


def first_regular_file(info: ImageInfo, directory: str = "/usr", depth: int = 8) -> str | None:
    """Depth-first through `debugfs ls -p` output (/inode/mode/uid/gid/name/size/) to a regular file."""
    subdirs = []
    for line in debugfs(info, f"ls -p {directory}").splitlines():
        fields = line.strip().split("/")[1:]  # "/13/040755/0/0/bin//" or "/14/100755/0/0/ls/1234/"
        if len(fields) < 6 or fields[4] in (".", ".."):
            continue
        mode, name = int(fields[1], 8), fields[4]
        if mode & 0o170000 == 0o100000 and int(fields[5] or 0) > 0:
            return f"{directory}/{name}"
        if mode & 0o170000 == 0o040000:
            subdirs.append(f"{directory}/{name}")
    for sub in subdirs[:3] if depth else []:
        found = first_regular_file(info, sub, depth - 1)
        if found:
            return found
    return None


def test_root_holds_real_host_files(image: ImageInfo) -> None:
    top = debugfs(image, "ls /usr")
    assert "lib" in top or "share" in top, top
    path = first_regular_file(image)
    assert path is not None, "no regular file found under /usr in the image"
    assert tool_bytes("debugfs", "-R", f"cat {path}", ext4_target(image)) == Path(path).read_bytes()
    assert image.file_count > 10


def test_esp_is_fat_and_holds_files(image: ImageInfo) -> None:
    assert image.esp is not None
    drive = f"{image.path}@@{image.esp.start}"
    listing = tool("mdir", "-i", drive, "-b", "-/", "::/", env=MTOOLS_ENV)
    assert "bty-image.txt" in listing.lower() or "bty-im" in listing.lower(), listing
    assert "mkdiskimage" in tool("mtype", "-i", drive, "::/bty-image.txt", env=MTOOLS_ENV)
    assert tool("minfo", "-i", drive, "::", env=MTOOLS_ENV)


def test_root_only_image_without_esp(tmp_path: Path) -> None:
    info = build_disk_image(tmp_path / "small.img", 32 * MIB, fill=0.2, esp=False, label="solo")
    table = json.loads(tool("sfdisk", "--json", str(info.path)))["partitiontable"]
    assert [p["type"].upper() for p in table["partitions"]] == [ROOT_X86_64_TYPE]
    assert info.esp is None and info.root.start == MIB
    assert dumpe2fs(info)["Filesystem volume name"] == "solo"


def test_same_seed_same_identity(image: ImageInfo, tmp_path: Path) -> None:
    again = build_disk_image(tmp_path / "again.img", SIZE, fill=0.1, esp=True, label=LABEL, seed=SEED)
    assert [p.uuid for p in again.partitions] == [p.uuid for p in image.partitions]
    assert dumpe2fs(again)["Filesystem UUID"] == dumpe2fs(image)["Filesystem UUID"]


@pytest.mark.parametrize(
    ("size", "fill", "label"),
    [(8 * MIB, 0.5, "rootfs"), (SIZE, 1.5, "rootfs"), (SIZE, 0.5, "bad label"), (SIZE + 1, 0.5, "rootfs")],
)
def test_bad_requests_are_refused_before_writing(tmp_path: Path, size: int, fill: float, label: str) -> None:
    with pytest.raises(ImageBuildError):
        build_disk_image(tmp_path / "x.img", size, fill=fill, label=label)
    assert not list(tmp_path.iterdir())


def test_parse_size() -> None:
    assert parse_size("2G") == 2 << 30
    assert parse_size("256M") == parse_size("256MiB") == 256 * MIB
    assert parse_size("4096") == 4096
    with pytest.raises(ValueError):
        parse_size("lots")
