"""Never the wrong disk: the disk holding the images, a loop device over a catalog file (nested
loops too), and a disk another process has open for writing are refused by `bty disks`, by the
plan and by the engine's check right before the first write. Real loop devices, real mounts."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from bty_live import cli
from bty_live.commands import disks as disks_command
from bty_live.disk.discovery import find_disk
from bty_live.disk.eligibility import context_for, reasons
from bty_live.errors import ImageError, TargetRefusedError
from bty_live.flash import engine
from bty_live.flash.plan import FlashOptions
from bty_live.flash.prepare import prepare_plan, prepare_plan_for, prepare_plan_for_entry
from bty_live.image.catalog import describe_image
from bty_live.image.source import load_image_source
from tests.conftest import LoopDevice
from tests.imagekit import MiB, build_gpt_image, images_dir_with, read_device

MakeLoop = Callable[..., LoopDevice]


@pytest.fixture(scope="module")
def raw_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_gpt_image(tmp_path_factory.mktemp("img") / "disk.img", 16 * MiB, files_bytes=MiB)


@pytest.fixture
def images(tmp_path: Path, raw_image: Path) -> Path:
    return images_dir_with(tmp_path, raw_image)


@pytest.fixture
def mount_loop(tmp_path: Path) -> Iterator[Callable[[LoopDevice, str], Path]]:
    """mount_loop(loop, name): an ext4 filesystem made on the loop device, mounted at tmp_path/name."""
    mounted: list[Path] = []

    def factory(loop: LoopDevice, name: str) -> Path:
        subprocess.run(["mkfs.ext4", "-q", "-F", loop.path], check=True, capture_output=True)
        point = tmp_path / name
        point.mkdir()
        subprocess.run(["mount", loop.path, str(point)], check=True)
        mounted.append(point)
        return point

    yield factory
    for point in reversed(mounted):
        subprocess.run(["umount", "-l", str(point)], check=False)


def bty_disks_reasons(capsys: pytest.CaptureFixture[str], images_dir: Path) -> dict[str, list[str]]:
    parser = argparse.ArgumentParser()
    disks_command.register(parser.add_subparsers())
    args = parser.parse_args(["disks", "--json", "--all", "--images", str(images_dir)])
    assert args.func(args) == 0
    return {d["name"]: d["reasons"] for d in json.loads(capsys.readouterr().out)}


# -- a loop device over a file in the images directory -------------------------------------------


def test_a_loop_device_backed_by_a_catalog_file_is_refused_in_bty_disks_naming_the_file(
        images: Path, make_loop: MakeLoop, capsys: pytest.CaptureFixture[str]) -> None:
    loop = make_loop(16 * MiB, backing_dir=images, name="other.img")
    listed = bty_disks_reasons(capsys, images)
    assert listed[loop.name] == [
        f"holds the images directory {images} (its backing file {images / 'other.img'} is in it)"]


def test_a_loop_device_backed_by_a_catalog_file_is_refused_by_the_plan(
        images: Path, make_loop: MakeLoop) -> None:
    loop = make_loop(16 * MiB, backing_dir=images, name="other.img")
    with pytest.raises(TargetRefusedError, match=r"holds the images directory .*other\.img is in it"):
        prepare_plan("disk.img", loop.path, FlashOptions(), images)


def test_bty_flash_onto_a_loop_over_a_catalog_file_exits_7_and_leaves_the_file_alone(
        images: Path, make_loop: MakeLoop, capsys: pytest.CaptureFixture[str]) -> None:
    other = images / "other.img"
    loop = make_loop(16 * MiB, backing_dir=images, name="other.img", fill=b"keep")
    before = other.read_bytes()
    assert cli.main(["flash", "disk.img", loop.path, "--images", str(images), "--yes"]) == 7
    assert "holds the images directory" in capsys.readouterr().err
    assert other.read_bytes() == before


def test_a_loop_device_backed_by_the_image_being_flashed_is_refused(tmp_path: Path, raw_image: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for loop devices")
    image = tmp_path / "elsewhere" / "disk.img"
    image.parent.mkdir()
    shutil.copy(raw_image, image)
    looped = subprocess.run(["losetup", "-f", "--show", str(image)], check=True, capture_output=True,
                            text=True).stdout.strip()
    try:
        with pytest.raises(TargetRefusedError, match=rf"holds the image {image} \(its backing file {image} is it\)"):
            prepare_plan(str(image), looped, FlashOptions(), tmp_path / "no-catalog")
    finally:
        subprocess.run(["losetup", "-d", looped], check=False)


def test_a_nested_loop_whose_file_lies_on_a_loop_over_a_catalog_file_is_refused_naming_both(
        images: Path, make_loop: MakeLoop, mount_loop: Callable[[LoopDevice, str], Path],
        capsys: pytest.CaptureFixture[str]) -> None:
    outer = make_loop(32 * MiB, backing_dir=images, name="outer.img")
    inner_fs = mount_loop(outer, "outer-fs")
    inner = make_loop(8 * MiB, backing_dir=inner_fs, name="inner.img")
    listed = bty_disks_reasons(capsys, images)
    assert listed[inner.name] == [
        f"holds the images directory {images} (through {outer.name}: its backing file "
        f"{images / 'outer.img'} is in it)"]
    assert listed[outer.name][0].startswith(f"holds the images directory {images} (its backing file")


def test_the_loop_holding_the_images_directory_and_its_backing_loop_are_boot_medium_naming_it(
        tmp_path: Path, raw_image: Path, make_loop: MakeLoop, mount_loop: Callable[[LoopDevice, str], Path],
        capsys: pytest.CaptureFixture[str]) -> None:
    """The images directory on a filesystem on loop B, whose backing file is on a filesystem on loop A."""
    lower = make_loop(64 * MiB)
    lower_fs = mount_loop(lower, "lower-fs")
    upper = make_loop(32 * MiB, backing_dir=lower_fs, name="upper.img")
    upper_fs = mount_loop(upper, "upper-fs")
    images = upper_fs / "images"
    images.mkdir()
    shutil.copy(raw_image, images / "disk.img")
    listed = bty_disks_reasons(capsys, images)
    for loop in (upper, lower):
        assert listed[loop.name][0] == f"boot medium: holds the images directory {images}", listed[loop.name]


def test_a_loop_over_a_file_outside_the_images_directory_stays_eligible(
        images: Path, make_loop: MakeLoop, capsys: pytest.CaptureFixture[str]) -> None:
    loop = make_loop(16 * MiB)  # tmp_path/disk0.img: next to the images directory, not in it
    assert bty_disks_reasons(capsys, images)[loop.name] == []


def test_the_engine_refuses_right_before_the_first_write_when_the_target_backs_a_catalog_file(
        images: Path, make_loop: MakeLoop) -> None:
    """Planned without the images directory; the engine's re-check sees the plan's protected paths."""
    loop = make_loop(16 * MiB, backing_dir=images, name="other.img", fill=b"keep")
    plan = prepare_plan_for(load_image_source(describe_image(images / "disk.img")), loop.path, FlashOptions())
    plan = replace(plan, protected_paths=(*plan.protected_paths, images))
    with pytest.raises(TargetRefusedError, match="holds the images directory"):
        engine.flash(plan)
    assert read_device(loop.path, 0, 4) == b"keep"


# -- a process holding the target open for writing ---------------------------------------------


def _holder(path: str, mode: str) -> subprocess.Popen[str]:
    """A child process that opens `path` ("r" or "r+", no O_EXCL) and waits to be killed."""
    code = f"import sys, time; f = open({path!r}, {mode + 'b'!r}, buffering=0); print('open', flush=True); " \
           "time.sleep(600)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "open"
    return proc


def test_a_process_holding_the_target_open_for_writing_is_named_and_refused(make_loop: MakeLoop) -> None:
    loop = make_loop(16 * MiB)
    proc = _holder(loop.path, "r+")
    try:
        found = reasons(find_disk(loop.path), context_for(["/"]))
    finally:
        proc.kill()
        proc.wait()
    assert found == (f"open for writing by PID {proc.pid} (python3): close it first",) or (
        found[0].startswith(f"open for writing by PID {proc.pid} (")), found


def test_a_read_only_opener_such_as_blkid_does_not_stop_a_flash(make_loop: MakeLoop) -> None:
    loop = make_loop(16 * MiB)
    proc = _holder(loop.path, "r")
    try:
        assert reasons(find_disk(loop.path), context_for(["/"])) == ()
    finally:
        proc.kill()
        proc.wait()


def test_bty_flash_onto_a_disk_open_for_writing_elsewhere_exits_7_and_writes_nothing(
        images: Path, make_loop: MakeLoop, capsys: pytest.CaptureFixture[str]) -> None:
    loop = make_loop(16 * MiB, fill=b"keep")
    proc = _holder(loop.path, "r+")
    try:
        code = cli.main(["flash", "disk.img", loop.path, "--images", str(images), "--yes"])
    finally:
        proc.kill()
        proc.wait()
    err = capsys.readouterr().err
    assert code == 7, err
    assert f"open for writing by PID {proc.pid}" in err
    assert read_device(loop.path, 0, 4) == b"keep"


def test_our_own_open_target_does_not_count_as_another_writer(make_loop: MakeLoop) -> None:
    loop = make_loop(16 * MiB)
    fd = os.open(loop.path, os.O_RDWR | os.O_EXCL)
    try:
        assert reasons(find_disk(loop.path), context_for(["/"])) == ()
    finally:
        os.close(fd)


def _loop_over(node: str) -> str:
    return subprocess.run(["losetup", "-f", "--show", node], check=True, capture_output=True, text=True).stdout.strip()


def test_a_loop_over_the_device_node_holding_the_images_directory_is_boot_medium(
        raw_image: Path, make_loop: MakeLoop, mount_loop: Callable[[LoopDevice, str], Path],
        capsys: pytest.CaptureFixture[str]) -> None:
    holder = make_loop(32 * MiB)
    images = mount_loop(holder, "images-fs") / "images"
    images.mkdir()
    shutil.copy(raw_image, images / "disk.img")
    alias = _loop_over(holder.path)  # /dev/loopM over /dev/loopN: writing it writes the images' filesystem
    try:
        listed = bty_disks_reasons(capsys, images)
    finally:
        subprocess.run(["losetup", "-d", alias], check=False)
    assert listed[os.path.basename(alias)] == [
        f"boot medium: holds the images directory {images} (through its backing device {holder.path})"]


def test_the_device_node_below_a_loop_holding_the_images_directory_is_boot_medium(
        raw_image: Path, make_loop: MakeLoop, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    below = make_loop(32 * MiB)
    upper = _loop_over(below.path)
    point = tmp_path / "upper-fs"
    point.mkdir()
    try:
        subprocess.run(["mkfs.ext4", "-q", "-F", upper], check=True, capture_output=True)
        subprocess.run(["mount", upper, str(point)], check=True)
        images = point / "images"
        images.mkdir()
        listed = bty_disks_reasons(capsys, images)
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False)
        subprocess.run(["losetup", "-d", upper], check=False)
    assert listed[below.name][0] == f"boot medium: holds the images directory {images}"


def test_a_plan_for_an_image_the_catalog_listed_reads_the_entry_once_and_refuses_a_vanished_file(
        images: Path, make_loop: MakeLoop) -> None:
    """The TUI plans from the entry it listed: the manifest is not read again (one description of
    the image, not three), but a file removed since the listing is refused by name."""
    size = (images / "disk.img").stat().st_size
    manifest = 'name = "{}"\nsize = ' + str(size) + '\nblake3 = "' + "0" * 64 + '"\n'
    (images / "disk.img.toml").write_text(manifest.format("listed"))
    entry = describe_image(images / "disk.img")
    (images / "disk.img.toml").write_text(manifest.format("renamed since"))
    loop = make_loop(32 * MiB)
    plan = prepare_plan_for_entry(entry, loop.path, FlashOptions(), images)
    assert plan.image.name == "listed"
    (images / "disk.img").unlink()
    with pytest.raises(ImageError, match="disk.img"):
        prepare_plan_for_entry(entry, loop.path, FlashOptions(), images)
