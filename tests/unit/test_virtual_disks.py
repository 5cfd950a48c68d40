"""Virtual disks (qcow2, VMDK, VHDX, VDI, VHD) made by the real qemu-img, flashed through QEMU's
block layer onto regular-file targets: what QEMU would open behind the user's back (a backing
file, a data file, a descriptor's extents) is refused before anything is written, a damaged disk
leaves a wiped target, and the QEMU tools run under resource limits. The byte-for-byte round trip
of every format is in test_round_trips.py; a loop device in tests/integration/test_formats.py."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import blake3
import pytest

from bty_live import cli
from bty_live.errors import ImageError, SourceCorruptError, exit_code_for
from bty_live.image.formats import Compression, detect_compression
from bty_live.image.virtual_disk import INFO_LIMITS, copy_limits, inspect_virtual_disk
from tests.imagekit import MiB, build_gpt_image, compress

IMAGE_SIZE = 24 * MiB
IMAGE_ERROR = exit_code_for(ImageError("x"))
CORRUPT = exit_code_for(SourceCorruptError("x"))
pytestmark = pytest.mark.usefixtures("file_targets")


def bty(*args: str) -> int:
    return cli.main(list(args))


@pytest.fixture(scope="module")
def raw_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_gpt_image(tmp_path_factory.mktemp("img") / "disk.img", IMAGE_SIZE, files_bytes=2 * MiB)


@pytest.fixture
def target(tmp_path: Path) -> Path:
    path = tmp_path / "target.img"
    path.write_bytes(b"\xa5" * IMAGE_SIZE)
    return path


def untouched(target: Path) -> bool:
    return target.read_bytes() == b"\xa5" * IMAGE_SIZE


def wiped(target: Path) -> bool:
    data = target.read_bytes()
    return not any(data[:MiB]) and not any(data[-MiB:])


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def test_each_virtual_disk_is_recognised_by_its_first_bytes_whatever_its_name(tmp_path: Path,
                                                                              raw_image: Path) -> None:
    expected = {"qcow2": Compression.QCOW2, "vmdk": Compression.VMDK, "vhdx": Compression.VHDX,
                "vdi": Compression.VDI, "vhd": Compression.VHD, "vhd-fixed": Compression.VHD}
    for kind, compression in expected.items():
        made = compress(raw_image, kind, tmp_path / f"{kind}.bin")
        assert detect_compression(made) == compression, kind


def test_a_qcow2_overlay_on_a_backing_file_is_refused_before_anything_is_written(
        tmp_path: Path, raw_image: Path, target: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = compress(raw_image, "qcow2", tmp_path / "base.qcow2")
    overlay = tmp_path / "images" / "overlay.qcow2"
    overlay.parent.mkdir()
    qemu_img("create", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(overlay))
    assert bty("flash", str(overlay), str(target), "--yes") == IMAGE_ERROR
    err = capsys.readouterr().err
    assert "backing file" in err and str(base) in err and "qemu-img convert" in err, err
    assert untouched(target)
    assert bty("images", "--images", str(overlay.parent)) == 0  # listed, with the reason
    assert "backing file" in capsys.readouterr().out


def test_a_qcow2_with_an_external_data_file_is_refused(tmp_path: Path, target: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "data.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", f"data_file={tmp_path / 'data.raw'}", str(image), str(IMAGE_SIZE))
    assert bty("flash", str(image), str(target), "--yes") == IMAGE_ERROR
    assert "keeps its data in another file" in capsys.readouterr().err
    assert untouched(target)


def test_a_vmdk_descriptor_with_its_data_elsewhere_is_refused_with_the_conversion(
        tmp_path: Path, raw_image: Path, target: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "split.vmdk"
    qemu_img("convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=twoGbMaxExtentFlat", str(raw_image), str(image))
    assert bty("flash", str(image), str(target), "--yes") == IMAGE_ERROR
    err = capsys.readouterr().err
    assert "VMDK descriptor" in err and "streamOptimized" in err, err
    assert untouched(target)


@pytest.mark.parametrize("kind", ["qcow2", "qcow2-c", "vhdx", "vdi", "vmdk", "vhd"])
def test_a_virtual_disk_cut_short_is_refused_as_corrupt_and_leaves_nothing_bootable(
        tmp_path: Path, raw_image: Path, target: Path, capsys: pytest.CaptureFixture[str], kind: str) -> None:
    # QEMU itself reads the missing clusters as zeroes: without bty's checks this flashed "fine".
    # A streamOptimized VMDK's grains have no offsets in the map: its cut shows when QEMU reads it
    image = compress(raw_image, kind, tmp_path / f"cut.{kind.split('-')[0]}")
    with open(image, "r+b") as f:
        f.truncate(f.seek(0, 2) // 2)
    code = bty("flash", str(image), str(target), "--yes")
    err = capsys.readouterr().err
    assert code in (CORRUPT, IMAGE_ERROR) and image.name in err and "Traceback" not in err, err
    assert "truncated" in err or "corrupt" in err or "re-copy" in err, err
    if kind == "vmdk":
        assert code == CORRUPT and wiped(target)
    else:
        assert untouched(target), "refused when planned, before the first write"


def test_a_qcow2_with_a_garbage_cluster_table_is_refused_or_wiped_never_written_as_is(
        tmp_path: Path, raw_image: Path, target: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = compress(raw_image, "qcow2", tmp_path / "garbage.qcow2")
    header = image.read_bytes()[:104]
    l1_offset = int.from_bytes(header[40:48], "big")
    with open(image, "r+b") as f:  # every L1 entry points to an unaligned L2 table (QEMU: corrupt)
        f.seek(l1_offset)
        f.write((0x7FFF_FFFF_0200).to_bytes(8, "big") * 8)
    code = bty("flash", str(image), str(target), "--yes")
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err, err
    assert untouched(target) or wiped(target)


def test_qemu_tools_run_under_address_space_and_cpu_limits() -> None:
    assert INFO_LIMITS == ("--as=1073741824", "--cpu=30")  # what Nova uses for qemu-img info
    small, large = copy_limits(1 << 30), copy_limits(100 << 30)
    assert small[0] == large[0] == f"--as={2 << 30}"
    assert int(small[1].removeprefix("--cpu=")) < int(large[1].removeprefix("--cpu="))


def test_the_manifest_of_a_virtual_disk_holds_the_disks_digest_and_the_files_own(tmp_path: Path,
                                                                                raw_image: Path) -> None:
    image = compress(raw_image, "qcow2-c", tmp_path / "disk.qcow2")
    assert bty("images", "add", str(image)) == 0
    manifest = image.with_name(image.name + ".toml").read_text()
    assert f'blake3 = "{blake3.blake3(raw_image.read_bytes()).hexdigest()}"' in manifest
    assert hashlib.sha256(image.read_bytes()).hexdigest() in manifest  # the file as shipped, not the disk
    assert inspect_virtual_disk(image, "qcow2").virtual_size == IMAGE_SIZE
