"""Unattended capture: `bty.capture=SELECTOR` on the kernel command line reads a disk into
NAME.img.zst and its manifest on the stick's images partition; anything unclear refuses without
reading or writing, a golden image is never replaced, and a stick left in the machine does not
capture again. Real loop devices; the images partition is a directory, or a small ext4 mounted.
"""

from __future__ import annotations

import random
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bty_live import cli
from bty_live.disk.model import Disk
from bty_live.errors import TargetIOError, UsageError
from bty_live.image.manifest import load_manifest
from bty_live.stick import unattended_capture
from bty_live.stick.unattended import After, CaptureRequest, Consoles, UnattendedRequest, parse_cmdline
from bty_live.stick.unattended_capture import default_capture_name, run_unattended_capture
from tests.conftest import LoopDevice
from tests.imagekit import MiB, build_gpt_image
from tests.integration.test_unattended import Recorder, _machine

IMAGE_SIZE = 32 * MiB
NOW = datetime(2026, 12, 3, 23, 30, tzinfo=UTC)


@pytest.fixture(scope="module")
def raw_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_gpt_image(tmp_path_factory.mktemp("img") / "golden.img", IMAGE_SIZE, files_bytes=2 * MiB)


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """The directory standing in for the stick's images partition."""
    directory = tmp_path / "images"
    directory.mkdir()
    return directory


@pytest.fixture
def golden(raw_image: Path, make_loop: Callable[..., LoopDevice]) -> LoopDevice:
    """The golden machine's disk: the image written onto a loop device of its size."""
    loop = make_loop(IMAGE_SIZE)
    subprocess.run(["dd", f"if={raw_image}", f"of={loop.path}", "bs=4M", "oflag=direct", "status=none"], check=True)
    return loop


def capture_request(cmdline: str) -> CaptureRequest:
    request = parse_cmdline(cmdline)
    assert isinstance(request, CaptureRequest)
    return request


def run(request: CaptureRequest, images: Path, recorder: Recorder, log: Path | None = None) -> int:
    consoles = Consoles(devices=[], log=log)
    try:
        return run_unattended_capture(request, images_dir=images, consoles=consoles, actions=recorder.actions(),
                                      machine=_machine(), now=NOW)
    finally:
        consoles.close()


def files_under(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


# -- the command line -----------------------------------------------------------------------------


def test_the_capture_keys_are_parsed_with_their_defaults() -> None:
    assert capture_request("quiet bty.capture=serial=S3Z1NB0K console=ttyS0") == CaptureRequest(
        disk="serial=S3Z1NB0K", name=None, trim=False, after=After.POWEROFF, dry_run=False)
    assert capture_request("bty.capture=tran=nvme bty.capture_name=golden-2026-12.img.zst bty.capture_trim=1 "
                           "bty.after=reboot bty.dry_run=1") == CaptureRequest(
        disk="tran=nvme", name="golden-2026-12", trim=True, after=After.REBOOT, dry_run=True)


@pytest.mark.parametrize("cmdline,problem", [
    ("bty.capture=serial=X bty.capture_nmae=golden", "unknown kernel command-line key bty.capture_nmae="),
    ("bty.capture=serial=X bty.image=demo", "bty.capture= and bty.image= are both set"),
    ("bty.capture=serial=X bty.disk=serial=Y", "bty.disk= is for flashing, not for bty.capture="),
    ("bty.capture=serial=X bty.verify=off", "bty.verify= is for flashing"),
    ("bty.capture=", "bty.capture= needs a disk selector"),
    ("bty.capture=serial=X bty.capture_name=../etc/passwd", "is not a usable file name"),
    ("bty.capture=serial=X bty.capture_name=.hidden", "is not a usable file name"),
    ("bty.capture=serial=X bty.capture_trim=maybe", "bty.capture_trim=maybe is neither 1 nor 0"),
    ("bty.capture=serial=X bty.after=explode", "bad value"),
    ("bty.capture_name=golden", "bty.capture_name= is set but bty.capture= is not"),
    ("bty.image=demo bty.disk=serial=X bty.capture_trim=1", "bty.capture_trim= is set but bty.capture= is not"),
])
def test_a_mistyped_or_mixed_capture_command_line_refuses(cmdline: str, problem: str) -> None:
    with pytest.raises(UsageError, match=problem):
        parse_cmdline(cmdline)


def test_a_flash_command_line_still_gives_a_flash_request() -> None:
    assert isinstance(parse_cmdline("bty.image=demo bty.disk=serial=X"), UnattendedRequest)


def test_the_default_name_is_the_disks_model_and_serial_and_the_utc_date() -> None:
    disk = Disk(name="sdb", path="/dev/sdb", devnum=(8, 16), size=1 << 40, transport="sata",
                model="Samsung SSD 870 EVO 1TB", serial="S3Z1NB0K/01")
    assert default_capture_name(disk, NOW) == "Samsung_SSD_870_EVO_1TB-S3Z1NB0K_01-2026-12-03"
    bare = Disk(name="loop7", path="/dev/loop7", devnum=(7, 7), size=1 << 30, transport="loop")
    assert default_capture_name(bare, datetime(2026, 12, 4, 1, 0, tzinfo=UTC)) == "loop7-2026-12-04"


# -- capturing --------------------------------------------------------------------------------------


def test_a_capture_request_writes_the_image_and_its_manifest_into_the_images_partition(
        tmp_path: Path, images: Path, raw_image: Path, golden: LoopDevice) -> None:
    recorder = Recorder()
    request = capture_request(f"bty.capture=name={golden.name} bty.capture_name=golden-2026-12")

    code = run(request, images, recorder, log=images / "logs" / "run.log")

    assert code == 0 and recorder.calls == ["poweroff"]
    image = images / "golden-2026-12.img.zst"
    manifest = load_manifest(image)
    assert manifest is not None and manifest.name == "golden-2026-12" and manifest.size == IMAGE_SIZE
    assert manifest.extra["captured"]["disk"] == golden.path
    raw = tmp_path / "decompressed.img"
    subprocess.run(["zstd", "-q", "-d", str(image), "-o", str(raw)], check=True)
    assert raw.read_bytes() == raw_image.read_bytes()
    assert len(list((images / "receipts").glob("*-capture-golden-2026-12-*.json"))) == 1
    assert len(list((images / "unattended").glob("uuid-1-*.json"))) == 1
    log = (images / "logs" / "run.log").read_text()
    assert "capture: done" in log and "bty unattended: done; poweroff" in log


def test_a_second_boot_with_the_same_request_captures_nothing(images: Path, golden: LoopDevice,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    request = capture_request(f"bty.capture=name={golden.name} bty.after=reboot")  # the default name
    first = Recorder()
    assert run(request, images, first) == 0 and first.calls == ["reboot"]
    image = images / f"{golden.name}-2026-12-03.img.zst"
    before = image.stat()

    second = Recorder()
    code = run(request, images, second)

    assert code == 0 and second.calls == []  # no second capture, and no reboot: no loop
    assert "already captured" in capsys.readouterr().out
    after = image.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    for marker in (images / "unattended").glob("*.json"):  # without the marker, the name is taken
        marker.unlink()
    with pytest.raises(UsageError, match=f"an image named {golden.name}-2026-12-03 is already on the images"):
        run(request, images, Recorder())


def test_an_existing_image_of_that_name_is_never_replaced(images: Path, golden: LoopDevice) -> None:
    (images / "golden.img").write_bytes(b"last year's golden image")
    request = capture_request(f"bty.capture=name={golden.name} bty.capture_name=golden")

    with pytest.raises(UsageError, match=r"already on the images partition \(golden.img\).*pick another name "
                                         "with bty.capture_name="):
        run(request, images, Recorder())

    assert files_under(images) == ["golden.img"]
    assert (images / "golden.img").read_bytes() == b"last year's golden image"


def test_capture_and_image_together_are_refused_with_nothing_written(images: Path, golden: LoopDevice,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["unattended", "--no-consoles", "--images", str(images), "--cmdline",
                     f"bty.capture=name={golden.name} bty.image=demo bty.disk=name={golden.name}"])

    assert code == 2
    assert "bty.capture= and bty.image= are both set" in capsys.readouterr().err
    assert files_under(images) == []


def test_an_unknown_key_fails_closed(images: Path, golden: LoopDevice, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["unattended", "--no-consoles", "--images", str(images), "--cmdline",
                     f"bty.capture=name={golden.name} bty.capture_nmae=golden"])

    assert code == 2
    assert "unknown kernel command-line key bty.capture_nmae=" in capsys.readouterr().err
    assert files_under(images) == []


def test_dry_run_shows_the_plan_and_writes_nothing(images: Path, golden: LoopDevice,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["unattended", "--no-consoles", "--images", str(images), "--cmdline",
                     f"bty.capture=name={golden.name} bty.capture_name=golden bty.dry_run=1"])

    assert code == 0
    out = capsys.readouterr().out
    assert f"capture {golden.path}" in out and "dry run" in out
    assert [f for f in files_under(images) if not f.startswith("logs")] == []


# -- where the output may go ----------------------------------------------------------------------------


@pytest.fixture
def small_partition(tmp_path: Path, make_loop: Callable[..., LoopDevice]) -> Path:
    """An 8 MiB ext4 mounted as the images partition (make_loop unmounts it at the end)."""
    loop = make_loop(8 * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", loop.path], check=True)
    mountpoint = tmp_path / "small-images"
    mountpoint.mkdir()
    subprocess.run(["mount", loop.path, str(mountpoint)], check=True)
    return mountpoint


def test_an_images_partition_smaller_than_the_disks_data_is_refused_naming_the_sizes_and_the_fix(
        tmp_path: Path, small_partition: Path, make_loop: Callable[..., LoopDevice],
        capsys: pytest.CaptureFixture[str]) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "data.bin").write_bytes(random.Random(7).randbytes(24 * MiB))  # does not compress
    disk = make_loop(48 * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), disk.path], check=True)
    before = files_under(small_partition)
    request = capture_request(f"bty.capture=name={disk.name} bty.capture_name=big")

    with pytest.raises(TargetIOError) as refused:
        run(request, small_partition, Recorder())

    message = str(refused.value)
    assert message.startswith("only ") and "MiB free for the output, less than the" in message
    assert "MiB the disk's filesystems hold" in message
    assert f"the images partition {small_partition} is too small: use a larger stick" in message
    assert files_under(small_partition) == before  # no image, no partial file, no marker


def test_the_sticks_images_directory_is_refused_when_the_partition_is_not_mounted(
        images: Path, golden: LoopDevice, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(unattended_capture, "LIVE_IMAGES_DIR", images.resolve())  # a plain directory: memory
    request = capture_request(f"bty.capture=name={golden.name}")

    with pytest.raises(UsageError, match="images partition is not mounted at .*the live system's memory"):
        run(request, images, Recorder())

    assert files_under(images) == []
