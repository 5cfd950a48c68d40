"""`bty flash` on real loop devices: every format lands byte for byte, every failure is refused
or wiped, and each failure class has its own exit code."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from bty_live import cli
from bty_live.errors import Cancelled, VerifyError, exit_code_for
from bty_live.events import Event, Kind, Phase
from bty_live.flash import engine
from bty_live.flash.plan import FlashOptions, VerifyMode
from bty_live.flash.prepare import prepare_plan
from bty_live.image.manifest import load_manifest
from tests.conftest import LoopDevice
from tests.imagekit import (
    MiB,
    build_gpt_image,
    compress,
    device_equals_file,
    images_dir_with,
    looks_blank,
    read_device,
    slow_gzip_image,
)

IMAGE_SIZE = 64 * MiB


@pytest.fixture(scope="module")
def raw_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_gpt_image(tmp_path_factory.mktemp("img") / "disk.img", IMAGE_SIZE)


@pytest.fixture
def images(tmp_path: Path, raw_image: Path) -> Path:
    """A fresh images directory holding a copy of the raw image."""
    return images_dir_with(tmp_path, raw_image)


def bty(*args: str) -> int:
    return cli.main(list(args))


def add_manifest(image: Path) -> None:
    assert bty("images", "add", str(image)) == 0


def fill_with_old_data(loop: LoopDevice) -> None:
    """Make the target look like a used disk: an old GPT and non-zero bytes everywhere."""
    subprocess.run(["dd", "if=/dev/urandom", f"of={loop.path}", "bs=1M", "count=4", "oflag=direct", "status=none"],
                   check=True)
    subprocess.run(["sfdisk", "-q", loop.path], input=b"label: gpt\n,,L\n", check=True, capture_output=True)


# -- formats -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["raw", "zst", "zst-frames", "xz", "gz", "bz2", "lz4", "zip", "zip-xz", "qcow2",
                                  "qcow2-c", "vmdk", "vhdx", "vdi", "vhd", "vhd-fixed"])
def test_every_format_lands_byte_for_byte_and_reads_back(kind: str, images: Path, raw_image: Path,
                                                          make_loop: Callable[..., LoopDevice]) -> None:
    image = images / "disk.img" if kind == "raw" else compress(images / "disk.img", kind)
    if kind != "raw":
        (images / "disk.img").unlink()
    add_manifest(image)
    loop = make_loop(IMAGE_SIZE)  # same size: no GPT fix-up changes the image's bytes
    fill_with_old_data(loop)
    receipt_path = images.parent / "receipt.json"

    assert bty("flash", str(image), loop.path, "--yes", "--receipt", str(receipt_path)) == 0

    assert device_equals_file(loop.path, raw_image)
    receipt = json.loads(receipt_path.read_text())
    assert receipt["result"] == "ok"
    assert receipt["stream_check"] == "match"
    assert receipt["readback_check"] == "match"
    assert receipt["image_blake3"] == load_manifest(image).blake3  # type: ignore[union-attr]
    assert receipt["parallel_frames"] == (kind == "zst-frames")
    assert receipt["bytes_written"] + receipt["bytes_zeroed"] >= IMAGE_SIZE


def test_zero_ranges_are_zeroed_on_the_target_not_left_stale(images: Path, raw_image: Path,
                                                             make_loop: Callable[..., LoopDevice]) -> None:
    # bmaptool leaves stale data in the image's holes; bty must not
    loop = make_loop(IMAGE_SIZE, fill=b"\xa5")
    assert bty("flash", str(images / "disk.img"), loop.path, "--yes", "--verify", "stream") == 0
    assert device_equals_file(loop.path, raw_image)


def test_unverified_image_without_manifest_is_flashed_and_says_so(images: Path, raw_image: Path,
                                                                  make_loop: Callable[..., LoopDevice],
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    loop = make_loop(IMAGE_SIZE)
    assert bty("flash", str(images / "disk.img"), loop.path, "--yes") == 0
    assert "stream digest: no manifest; read-back: match" in capsys.readouterr().out
    assert device_equals_file(loop.path, raw_image)


def test_json_mode_prints_events_then_the_receipt(images: Path, make_loop: Callable[..., LoopDevice],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    add_manifest(images / "disk.img")
    loop = make_loop(IMAGE_SIZE)
    capsys.readouterr()
    assert bty("flash", "disk", loop.path, "--images", str(images), "--yes", "--json") == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    events = [Event.from_dict(line) for line in lines[:-1]]
    phases = [(e.phase, e.kind) for e in events]
    assert (Phase.WRITE, Kind.START) in phases and (Phase.WRITE, Kind.END) in phases
    assert (Phase.VERIFY, Kind.END) in phases and (Phase.DONE, Kind.END) in phases
    write_end = next(e for e in events if e.phase == Phase.WRITE and e.kind == Kind.END)
    assert write_end.bytes_out == IMAGE_SIZE and write_end.total == IMAGE_SIZE
    receipt = lines[-1]["receipt"]
    assert receipt["image_name"] == "disk"
    done = next(e for e in events if e.phase == Phase.DONE and e.kind == Kind.END)
    assert done.digest == receipt["image_blake3"] == load_manifest(images / "disk.img").blake3  # type: ignore[union-attr]


# -- refusals: nothing written -----------------------------------------------------------------


def test_too_small_target_is_refused_before_writing(images: Path, make_loop: Callable[..., LoopDevice],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    loop = make_loop(IMAGE_SIZE // 2)
    fill_with_old_data(loop)
    before = read_device(loop.path, 0, MiB)
    assert bty("flash", str(images / "disk.img"), loop.path, "--yes") == 7
    assert "too small" in capsys.readouterr().err
    assert read_device(loop.path, 0, MiB) == before


def test_read_only_target_is_refused(images: Path, make_loop: Callable[..., LoopDevice],
                                     capsys: pytest.CaptureFixture[str]) -> None:
    loop = make_loop(IMAGE_SIZE, read_only=True)
    assert bty("flash", str(images / "disk.img"), loop.path, "--yes") == 7
    assert "read-only" in capsys.readouterr().err


def test_mounted_target_is_refused(images: Path, tmp_path: Path, make_loop: Callable[..., LoopDevice],
                                   capsys: pytest.CaptureFixture[str]) -> None:
    loop = make_loop(IMAGE_SIZE)
    subprocess.run(["mkfs.ext4", "-q", loop.path], check=True)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    subprocess.run(["mount", loop.path, str(mountpoint)], check=True)
    try:
        assert bty("flash", str(images / "disk.img"), loop.path, "--yes") == 7
        assert f"mounted: {loop.name} at {mountpoint}" in capsys.readouterr().err
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)


def test_ambiguous_selector_is_refused_and_lists_the_candidates(images: Path,
                                                                make_loop: Callable[..., LoopDevice],
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    first, second = make_loop(IMAGE_SIZE + 1 * MiB), make_loop(IMAGE_SIZE + 1 * MiB)
    size = IMAGE_SIZE + 1 * MiB
    selector = f"tran=loop,size>={size},size<={size}"
    assert bty("flash", str(images / "disk.img"), selector, "--yes") == 6
    err = capsys.readouterr().err
    assert first.name in err and second.name in err


def test_selector_matching_one_disk_flashes_it(images: Path, raw_image: Path,
                                               make_loop: Callable[..., LoopDevice]) -> None:
    size = IMAGE_SIZE + 3 * MiB  # a size no other test disk has
    loop = make_loop(size)
    assert bty("flash", str(images / "disk.img"), f"tran=loop,size>={size},size<={size}", "--yes") == 0
    # the disk is larger: the GPT at the start and end was fixed up, everything between is the image
    assert read_device(loop.path, MiB, IMAGE_SIZE - 2 * MiB) == raw_image.read_bytes()[MiB : IMAGE_SIZE - MiB]


def test_dry_run_writes_nothing_and_shows_what_the_disk_holds(images: Path, make_loop: Callable[..., LoopDevice],
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    loop = make_loop(IMAGE_SIZE)
    fill_with_old_data(loop)
    before = read_device(loop.path, 0, 4 * MiB)
    assert bty("flash", str(images / "disk.img"), loop.path, "--dry-run") == 0
    err = capsys.readouterr().err
    assert "dry run: nothing was written" in err and "gpt partition table" in err
    assert read_device(loop.path, 0, 4 * MiB) == before


def test_without_yes_and_without_a_terminal_nothing_is_written(images: Path, make_loop: Callable[..., LoopDevice],
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    loop = make_loop(IMAGE_SIZE)
    fill_with_old_data(loop)
    before = read_device(loop.path, 0, MiB)
    assert bty("flash", str(images / "disk.img"), loop.path) == 2
    assert "pass --yes" in capsys.readouterr().err
    assert read_device(loop.path, 0, MiB) == before


def test_truncated_single_frame_zstd_is_refused_before_the_disk_is_touched(
        images: Path, make_loop: Callable[..., LoopDevice], capsys: pytest.CaptureFixture[str]) -> None:
    image = compress(images / "disk.img", "zst")
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 2])
    loop = make_loop(IMAGE_SIZE)
    fill_with_old_data(loop)
    before = read_device(loop.path, 0, MiB)
    assert bty("flash", str(image), loop.path, "--yes") == 4
    assert "truncated" in capsys.readouterr().err
    assert read_device(loop.path, 0, MiB) == before


# -- failures after writing began: wiped, distinct codes ---------------------------------------


def test_digest_mismatch_fails_and_wipes_the_target(images: Path, make_loop: Callable[..., LoopDevice],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    image = images / "disk.img"
    add_manifest(image)
    manifest = image.with_name("disk.img.toml")
    text = manifest.read_text()
    digest = load_manifest(image).blake3  # type: ignore[union-attr]
    manifest.write_text(text.replace(digest, "0" * 64))
    loop = make_loop(IMAGE_SIZE + 8 * MiB)

    assert bty("flash", str(image), loop.path, "--yes") == 5
    err = capsys.readouterr().err
    assert "does not match its manifest" in err and "wiped" in err
    assert looks_blank(loop.path, IMAGE_SIZE + 8 * MiB)


def test_corrupt_zstd_stream_fails_with_its_own_code_and_wipes(images: Path, make_loop: Callable[..., LoopDevice],
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    image = compress(images / "disk.img", "zst-frames")
    data = bytearray(image.read_bytes())
    data[len(data) * 3 // 4] ^= 0xFF
    image.write_bytes(bytes(data))
    loop = make_loop(IMAGE_SIZE)
    fill_with_old_data(loop)
    before = read_device(loop.path, 0, MiB)
    assert bty("flash", str(image), loop.path, "--yes") == 4
    err = capsys.readouterr().err
    assert "corrupt" in err
    # stages overlap: the error may come before or after the first write, never a half-written disk
    if "wiped" in err:
        assert looks_blank(loop.path, IMAGE_SIZE)
    else:
        assert read_device(loop.path, 0, MiB) == before


def test_raw_image_shorter_than_its_manifest_is_reported_truncated(images: Path,
                                                                    make_loop: Callable[..., LoopDevice],
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    image = images / "disk.img"
    add_manifest(image)
    with open(image, "r+b") as f:
        f.truncate(IMAGE_SIZE // 2)
    loop = make_loop(IMAGE_SIZE)
    assert bty("flash", str(image), loop.path, "--yes") == 4
    err = capsys.readouterr().err
    assert "truncated: it ends at 32 MiB of 64 MiB" in err
    assert looks_blank(loop.path, IMAGE_SIZE)


def test_no_space_behind_the_target_fails_with_io_code_and_wipes(tmp_path: Path, images: Path,
                                                                  make_loop: Callable[..., LoopDevice],
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    # a loop device whose backing file lives on a filesystem too small to hold the image
    small_fs = tmp_path / "small.fs"
    subprocess.run(["mkfs.ext4", "-q", "-F", str(small_fs), "24M"], check=True, capture_output=True)
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    subprocess.run(["mount", "-o", "loop", str(small_fs), str(mountpoint)], check=True)
    try:
        random_image = images / "random.img"
        random_image.write_bytes(os.urandom(48 * MiB))
        loop = make_loop(64 * MiB, backing_dir=mountpoint)
        code = bty("flash", str(random_image), loop.path, "--yes")
        err = capsys.readouterr().err
        assert code == 8, err
        assert "no space left" in err or "I/O error" in err
        assert read_device(loop.path, 0, MiB) == bytes(MiB)
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)  # lazy: the loop still holds a file


# -- engine-level: read-back, cancel ------------------------------------------------------------


def test_read_back_catches_bytes_changed_between_write_and_verify(images: Path,
                                                                   make_loop: Callable[..., LoopDevice]) -> None:
    add_manifest(images / "disk.img")
    loop = make_loop(IMAGE_SIZE)
    plan = prepare_plan(str(images / "disk.img"), loop.path, FlashOptions(verify=VerifyMode.READBACK))

    def corrupt_when_verify_starts(event: Event) -> None:
        if event.phase == Phase.VERIFY and event.kind == Kind.START:
            with open(loop.backing_file, "r+b") as f:  # behind the device's back, as failing flash would
                f.seek(20 * MiB)
                f.write(b"\x00\x01bit rot")
                f.flush()

    with pytest.raises(VerifyError, match="does not match what was written"):
        engine.flash(plan, corrupt_when_verify_starts)
    assert looks_blank(loop.path, IMAGE_SIZE)


def test_stream_verify_alone_does_not_read_back(images: Path, make_loop: Callable[..., LoopDevice]) -> None:
    loop = make_loop(IMAGE_SIZE)
    plan = prepare_plan(str(images / "disk.img"), loop.path, FlashOptions(verify=VerifyMode.STREAM))
    events: list[Event] = []
    receipt = engine.flash(plan, events.append).receipt
    assert receipt.readback_check == "skipped"
    assert not any(e.phase == Phase.VERIFY and e.kind == Kind.START for e in events)


def test_cancel_mid_write_stops_and_wipes(tmp_path: Path, raw_image: Path,
                                          make_loop: Callable[..., LoopDevice]) -> None:
    image = _slow_gzip_image(tmp_path, raw_image)
    size = 2048 * MiB + IMAGE_SIZE
    loop = make_loop(size)
    plan = prepare_plan(str(image), loop.path, FlashOptions())
    cancel = threading.Event()

    def cancel_once_writing(event: Event) -> None:
        if event.phase == Phase.WRITE and event.kind == Kind.PROGRESS and event.bytes_out > IMAGE_SIZE:
            cancel.set()

    with pytest.raises(Cancelled):
        engine.flash(plan, cancel_once_writing, cancel)
    assert looks_blank(loop.path, size)


def test_ctrl_c_mid_write_exits_130_quickly_and_wipes(tmp_path: Path, raw_image: Path,
                                                       make_loop: Callable[..., LoopDevice]) -> None:
    import signal
    import sys
    import time

    image = _slow_gzip_image(tmp_path, raw_image)
    size = 2048 * MiB + IMAGE_SIZE
    loop = make_loop(size)
    proc = subprocess.Popen([sys.executable, "-m", "bty_live.cli", "flash", str(image), loop.path, "--yes",
                             "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        event = json.loads(line)
        if event.get("phase") == "write" and event.get("kind") == "progress" and event["bytes_out"] > IMAGE_SIZE:
            break
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    stopped = time.monotonic() - sent
    assert proc.returncode == 130, err
    assert stopped < 5, f"took {stopped:.1f} s to stop"  # generous: the 1 s goal is measured by hand
    assert "cancelled" in err and "wiped" in err
    assert looks_blank(loop.path, size)


def _slow_gzip_image(tmp_path: Path, raw_image: Path) -> Path:
    return slow_gzip_image(tmp_path / "long.img.gz", raw_image)


# -- partition-table fix-ups ----------------------------------------------------------------------


def _sgdisk_verify(device: str) -> str:
    return subprocess.run(["sgdisk", "-v", device], capture_output=True, text=True).stdout


def test_backup_gpt_moves_to_the_end_of_a_larger_disk(images: Path, make_loop: Callable[..., LoopDevice]) -> None:
    import parted

    loop = make_loop(IMAGE_SIZE * 2)
    assert bty("flash", str(images / "disk.img"), loop.path, "--yes") == 0
    assert "No problems found" in _sgdisk_verify(loop.path)
    disk = parted.newDisk(parted.getDevice(loop.path))
    sectors = IMAGE_SIZE * 2 // 512
    # the usable area now runs to the end of the disk (34 sectors are left for the backup GPT)
    assert disk.getFreeSpaceRegions()[-1].end == sectors - 34
    last = max(disk.partitions, key=lambda p: p.geometry.end)
    assert last.geometry.end < IMAGE_SIZE // 512  # without --grow the partitions stay as imaged


def test_grow_extends_the_last_partition_to_the_end_of_the_disk(images: Path,
                                                                make_loop: Callable[..., LoopDevice]) -> None:
    import parted

    loop = make_loop(IMAGE_SIZE * 2)
    assert bty("flash", str(images / "disk.img"), loop.path, "--yes", "--grow") == 0
    assert "No problems found" in _sgdisk_verify(loop.path)
    disk = parted.newDisk(parted.getDevice(loop.path))
    last = max(disk.partitions, key=lambda p: p.geometry.end)
    end_bytes = (last.geometry.end + 1) * 512
    assert IMAGE_SIZE * 2 - end_bytes < 2 * MiB  # up to the last whole MiB before the backup GPT
    assert last.geometry.start == 10240  # the start does not move


def test_same_size_disk_needs_no_fixups(images: Path, raw_image: Path, make_loop: Callable[..., LoopDevice],
                                        tmp_path: Path) -> None:
    loop = make_loop(IMAGE_SIZE)
    receipt = tmp_path / "r.json"
    assert bty("flash", str(images / "disk.img"), loop.path, "--yes", "--receipt", str(receipt)) == 0
    assert json.loads(receipt.read_text())["fixups"] == ["sgdisk -v: no problems found"]
    assert device_equals_file(loop.path, raw_image)


# -- bmap sidecars ----------------------------------------------------------------------------------


def _bmap_for(image: Path) -> Path:
    bmap = image.with_name(image.name + ".bmap")
    subprocess.run(["bmaptool", "create", "-o", str(bmap), str(image)], check=True, capture_output=True)
    return bmap


def test_bmap_sidecar_checks_an_image_that_has_no_manifest(images: Path, raw_image: Path,
                                                           make_loop: Callable[..., LoopDevice],
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    _bmap_for(images / "disk.img")
    loop = make_loop(IMAGE_SIZE, fill=b"\x5a")  # stale bytes where the bmap says "unmapped"
    assert bty("flash", str(images / "disk.img"), loop.path, "--yes") == 0
    assert "range checksums" in capsys.readouterr().err
    assert device_equals_file(loop.path, raw_image)  # unmapped ranges were zeroed, not skipped


def test_bmap_range_checksum_catches_a_damaged_image(images: Path, make_loop: Callable[..., LoopDevice],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    image = images / "disk.img"
    _bmap_for(image)
    with open(image, "r+b") as f:  # damage a mapped block (the "ESP" bytes at 1 MiB)
        f.seek(MiB + 4096)
        byte = f.read(1)
        f.seek(MiB + 4096)
        f.write(bytes([byte[0] ^ 0xFF]))
    loop = make_loop(IMAGE_SIZE)
    assert bty("flash", str(image), loop.path, "--yes") == 5
    assert "the image or its bmap is damaged" in capsys.readouterr().err


def test_bmap_of_another_image_is_refused(images: Path, tmp_path: Path, make_loop: Callable[..., LoopDevice],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "other.img"
    other.write_bytes(bytes(2 * MiB))
    bmap = _bmap_for(other)
    bmap.rename(images / "disk.img.bmap")
    loop = make_loop(IMAGE_SIZE)
    assert bty("flash", str(images / "disk.img"), loop.path, "--yes") == 3
    assert "regenerate it with bmaptool create" in capsys.readouterr().err


def test_a_target_detached_after_planning_is_reported_vanished_and_nothing_is_written(
        images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # attached by hand (not make_loop): the test detaches it itself, and make_loop's teardown
    # must never detach a number some other process may have taken in between
    backing = tmp_path / "gone.img"
    backing.write_bytes(b"\x42" * IMAGE_SIZE)
    device = subprocess.run(["losetup", "-f", "--show", str(backing)], check=True, capture_output=True,
                            text=True).stdout.strip()
    try:
        plan = prepare_plan(str(images / "disk.img"), device, FlashOptions())
    finally:
        subprocess.run(["losetup", "-d", device], check=True)
    from bty_live.errors import TargetVanishedError

    with pytest.raises(TargetVanishedError, match="unplugged or detached"):
        engine.flash(plan)
    assert backing.read_bytes()[: 1 << 20] == b"\x42" * (1 << 20)
    assert exit_code_for(TargetVanishedError("x")) == 9
