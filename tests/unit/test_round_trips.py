"""Round trips through the whole engine onto regular files (the test-only file-target switch):
every format lands byte for byte, a bad image leaves a wiped target, and without the switch a
file is no disk at all. The same checks on real loop devices are in tests/integration/test_flash.py."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from bty_live import cli
from tests.imagekit import (
    COMPRESSED_SUFFIX,
    WINDOWS_ISO,
    MiB,
    build_gpt_image,
    compress,
    iso_head,
    set_declared_size,
)

IMAGE_SIZE = 24 * MiB
FORMATS = ["raw", "zst", "zst-frames", "xz", "gz", "bz2", "lz4", "zip", "zip-xz",
           "qcow2", "qcow2-c", "vmdk", "vhdx", "vdi", "vhd", "vhd-fixed"]


def bty(*args: str) -> int:
    return cli.main(list(args))


@pytest.fixture(scope="module")
def raw_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_gpt_image(tmp_path_factory.mktemp("img") / "disk.img", IMAGE_SIZE, files_bytes=2 * MiB)


def image_in(directory: Path, raw: Path, kind: str) -> Path:
    directory.mkdir(exist_ok=True)
    if kind == "raw":
        target = directory / "disk.img"
        target.write_bytes(raw.read_bytes())
        return target
    return compress(raw, kind, directory / f"disk.img{COMPRESSED_SUFFIX[kind]}")


def blank_file(path: Path, size: int, fill: bytes = b"\0") -> Path:
    path.write_bytes(fill * size if fill != b"\0" else b"")
    os.truncate(path, size)
    return path


def sha256(path: Path, length: int | None = None) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read(length) if length is not None else f.read()).hexdigest()


@pytest.mark.usefixtures("file_targets")
@pytest.mark.parametrize("kind", FORMATS)
def test_every_format_lands_byte_for_byte_and_reads_back(tmp_path: Path, raw_image: Path, kind: str) -> None:
    image = image_in(tmp_path / "images", raw_image, kind)
    target = blank_file(tmp_path / "target.img", IMAGE_SIZE, fill=b"\xa5")
    assert bty("flash", str(image), str(target), "--yes", "--receipt", str(tmp_path / "receipt.json")) == 0
    assert sha256(target) == sha256(raw_image)
    receipt = json.loads((tmp_path / "receipt.json").read_text())
    assert receipt["result"] == "ok" and receipt["readback_check"].startswith("match")
    assert receipt["target_transport"] == "file"


@pytest.mark.usefixtures("file_targets")
def test_a_larger_file_gets_the_backup_gpt_at_its_end(tmp_path: Path, raw_image: Path) -> None:
    image = image_in(tmp_path / "images", raw_image, "zst")
    target = blank_file(tmp_path / "target.img", IMAGE_SIZE + 8 * MiB)
    assert bty("flash", str(image), str(target), "--yes", "--receipt", str(tmp_path / "receipt.json")) == 0
    receipt = json.loads((tmp_path / "receipt.json").read_text())
    assert "moved the backup GPT to the end of the disk" in receipt["fixups"]
    with open(target, "rb") as f:
        f.seek(IMAGE_SIZE + 8 * MiB - 512)
        assert f.read(8) == b"EFI PART", "no backup GPT header in the last sector"
    with open(target, "rb") as f, open(raw_image, "rb") as raw:
        f.seek(MiB)
        raw.seek(MiB)
        assert f.read(IMAGE_SIZE - 2 * MiB) == raw.read(IMAGE_SIZE - 2 * MiB), "the data between the tables differs"


@pytest.mark.usefixtures("file_targets")
def test_an_image_that_is_not_what_its_manifest_says_leaves_a_wiped_target(tmp_path: Path, raw_image: Path) -> None:
    image = image_in(tmp_path / "images", raw_image, "zst")
    assert bty("images", "add", str(image)) == 0
    manifest = image.with_name(image.name + ".toml")
    text = manifest.read_text()
    digest = text.split('blake3 = "')[1][:64]
    manifest.write_text(text.replace(digest, "0" * 64))
    target = blank_file(tmp_path / "target.img", IMAGE_SIZE, fill=b"\xa5")
    assert bty("flash", str(image), str(target), "--yes") == 5
    with open(target, "rb") as f:
        assert not any(f.read(MiB)), "the first MiB of the failed target is not zeroed"
        f.seek(IMAGE_SIZE - MiB)
        assert not any(f.read(MiB)), "the last MiB (backup GPT) of the failed target is not zeroed"


@pytest.mark.usefixtures("file_targets")
def test_a_too_small_file_is_refused_before_anything_is_written(tmp_path: Path, raw_image: Path) -> None:
    image = image_in(tmp_path / "images", raw_image, "zst")
    target = blank_file(tmp_path / "target.img", IMAGE_SIZE - MiB, fill=b"\xa5")
    before = sha256(target)
    assert bty("flash", str(image), str(target), "--yes") == 7
    assert sha256(target) == before


@pytest.mark.usefixtures("file_targets")
def test_the_image_itself_is_never_its_own_target(tmp_path: Path, raw_image: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    image = image_in(tmp_path / "images", raw_image, "raw")
    before = sha256(image)
    assert bty("flash", str(image), str(image), "--yes") == 7
    assert "holds the image" in capsys.readouterr().err
    assert sha256(image) == before


def test_without_the_switch_a_regular_file_is_no_disk(tmp_path: Path, raw_image: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert "BTY_TEST_FILE_TARGETS" not in os.environ
    image = image_in(tmp_path / "images", raw_image, "zst")
    target = blank_file(tmp_path / "target.img", IMAGE_SIZE, fill=b"\xa5")
    before = sha256(target)
    assert bty("flash", str(image), str(target), "--yes") == 6
    assert "not a block device" in capsys.readouterr().err
    assert sha256(target) == before


# -- bzip2, lz4 and zip that are damaged or forged ---------------------------------------------------------


def wiped(target: Path, size: int) -> bool:
    """Nothing bootable is left: the first and last MiB (MBR, both GPTs) are zeros."""
    with open(target, "rb") as f:
        head = f.read(MiB)
        f.seek(size - MiB)
        return not any(head) and not any(f.read(MiB))


@pytest.mark.usefixtures("file_targets")
@pytest.mark.parametrize("kind", ["bz2", "lz4"])
def test_a_truncated_bzip2_or_lz4_image_fails_as_corrupt_and_leaves_a_wiped_target(
        tmp_path: Path, raw_image: Path, kind: str, capsys: pytest.CaptureFixture[str]) -> None:
    image = image_in(tmp_path / "images", raw_image, kind)
    image.write_bytes(image.read_bytes()[: image.stat().st_size * 3 // 4])
    target = blank_file(tmp_path / "target.img", IMAGE_SIZE, fill=b"\xa5")
    assert bty("flash", str(image), str(target), "--yes") == 4
    assert f"image {image.name} is truncated" in capsys.readouterr().err
    assert wiped(target, IMAGE_SIZE)


@pytest.mark.usefixtures("file_targets")
def test_a_truncated_zip_is_refused_before_the_target_is_touched(tmp_path: Path, raw_image: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    image = image_in(tmp_path / "images", raw_image, "zip")
    image.write_bytes(image.read_bytes()[:-4096])  # the zip directory is at the end
    target = blank_file(tmp_path / "target.img", IMAGE_SIZE, fill=b"\xa5")
    before = sha256(target)
    assert bty("flash", str(image), str(target), "--yes") == 4
    assert "image disk.img.zip is truncated: the zip directory at its end is missing" in capsys.readouterr().err
    assert sha256(target) == before


@pytest.mark.usefixtures("file_targets")
def test_a_zip_member_yielding_more_than_it_declares_is_not_written_past_its_declared_size(
        tmp_path: Path, raw_image: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = image_in(tmp_path / "images", raw_image, "zip")
    declared = IMAGE_SIZE - 8 * MiB
    set_declared_size(image, declared)
    target_size = IMAGE_SIZE + 8 * MiB
    target = blank_file(tmp_path / "target.img", target_size, fill=b"\xa5")
    assert bty("flash", str(image), str(target), "--yes") == 4
    assert "yields more than the 16 MiB its zip directory declares" in capsys.readouterr().err
    with open(target, "rb") as f:
        f.seek(declared)
        assert f.read(target_size - MiB - declared) == b"\xa5" * (target_size - MiB - declared), \
            "bytes beyond the declared size were written"
    assert wiped(target, target_size)


# -- ISO 9660 images that boot from a DVD drive only: a warning, not a refusal ------------------------------


@pytest.mark.usefixtures("file_targets")
def test_a_windows_install_iso_is_flashed_with_a_warning_and_a_hybrid_iso_without(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = tmp_path / "images"
    images.mkdir()
    windows = images / "win.iso"
    windows.write_bytes(iso_head(**WINDOWS_ISO) + bytes(4 * MiB))
    target = blank_file(tmp_path / "target.img", 8 * MiB)
    assert bty("flash", str(windows), str(target), "--yes", "--json") == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    warnings = [e["message"] for e in events if e.get("kind") == "info" and "warning" in e.get("message", "")]
    assert warnings == [f"warning: image win.iso is a Windows install ISO (volume {WINDOWS_ISO['volume']}), not a "
                        "disk image: it does not boot when written to a disk; to make a Windows installer stick "
                        "use Microsoft's Media Creation Tool, Rufus or woeusb, or flash a disk image captured "
                        "from an installed Windows"]
    assert sha256(target, windows.stat().st_size) == sha256(windows)

    hybrid = images / "live.iso"
    hybrid.write_bytes(iso_head(volume="Debian 12.5.0 amd64 n", hybrid=True) + bytes(4 * MiB))
    assert bty("flash", str(hybrid), str(target), "--dry-run") == 0
    assert "warning:" not in capsys.readouterr().err
    assert bty("flash", str(windows), str(target), "--dry-run") == 0
    assert "warning: image win.iso is a Windows install ISO" in capsys.readouterr().err
